//! What a stage transition records beside its state (`stage_marks`) and
//! where a paused run holds it (`holds_for_pause`), over every transition
//! the stage machine allows.

use orchestrator_core::machine::{
    holds_for_pause, stage_marks, stage_on, After, StageEvent, StageMarks,
};
use orchestrator_core::{RunState, StageState};

mod common;

use common::stage_events::{stage_events, ATTEMPT};

/// Every transition the stage machine allows, with its marks.
fn allowed() -> Vec<(StageState, StageEvent, StageState, StageMarks)> {
    let mut out = Vec::new();
    for &from in StageState::ALL {
        for e in stage_events() {
            if let Ok((to, _)) = stage_on(from, ATTEMPT, e) {
                out.push((from, e, to, stage_marks(e, to)));
            }
        }
    }
    out
}

#[test]
fn the_table_reaches_every_state_and_every_event_is_taken_somewhere() {
    let all = allowed();
    for &s in StageState::ALL {
        if s != StageState::Pending {
            assert!(all.iter().any(|t| t.2 == s), "{s} is never reached");
        }
    }
    for e in stage_events() {
        let kind = std::mem::discriminant(&e);
        assert!(
            all.iter().any(|t| std::mem::discriminant(&t.1) == kind),
            "{e:?} is never allowed"
        );
    }
}

#[test]
fn an_ended_stage_keeps_no_request_to_yield_and_waits_for_nobody() {
    for (from, e, to, m) in allowed() {
        if to.is_terminal() {
            assert!(m.ended, "{from} --{e:?}--> {to}");
            assert!(!m.keep_yield && !m.waiting, "{from} --{e:?}--> {to}");
        } else {
            assert!(!m.ended, "{from} --{e:?}--> {to}");
        }
    }
}

#[test]
fn a_lost_or_reset_attempt_forgets_where_it_ran_and_any_yield() {
    for (from, e, to, m) in allowed() {
        let lost = matches!(e, StageEvent::AttemptLost { .. } | StageEvent::Reset);
        assert_eq!(m.forget_placement, lost, "{from} --{e:?}--> {to}");
        if lost {
            assert!(!m.keep_yield, "{from} --{e:?}--> {to}");
        }
    }
}

#[test]
fn only_a_stage_on_its_way_to_a_checkpoint_keeps_a_yield_request() {
    for (from, e, to, m) in allowed() {
        let on_its_way = matches!(
            to,
            StageState::Queued | StageState::Running | StageState::Suspended
        );
        if m.keep_yield {
            assert!(
                on_its_way || e == StageEvent::WaitForAnswer,
                "{from} --{e:?}--> {to}"
            );
        }
    }
    // A step waiting inside for an answer still holds its job: it keeps it.
    let m = stage_marks(StageEvent::WaitForAnswer, StageState::AwaitingInput);
    assert!(m.keep_yield && m.waiting);
    // A step that asked and exited reached its checkpoint: it does not.
    let asked = StageEvent::Asked {
        after: After::Step(1),
    };
    assert!(!stage_marks(asked, StageState::AwaitingInput).keep_yield);
}

#[test]
fn a_human_wait_is_marked_exactly_while_a_human_is_needed() {
    for (from, e, to, m) in allowed() {
        let human = matches!(
            to,
            StageState::AwaitingApproval | StageState::AwaitingInput | StageState::AwaitingDecision
        );
        assert_eq!(m.waiting, human, "{from} --{e:?}--> {to}");
        assert_eq!(
            m.started,
            e == StageEvent::Started,
            "{from} --{e:?}--> {to}"
        );
    }
}

#[test]
fn only_a_queued_stage_of_a_paused_run_holds() {
    for &s in StageState::ALL {
        for &r in RunState::ALL {
            let holds = holds_for_pause(s, r);
            assert_eq!(holds, s == StageState::Queued && r == RunState::Paused);
            if holds {
                let (to, _) = stage_on(s, 1, StageEvent::Pause).expect("a queued stage pauses");
                assert_eq!(to, StageState::Paused);
            }
        }
    }
}
