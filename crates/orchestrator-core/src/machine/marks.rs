//! What a stage keeps and forgets beside its state when an event moves it
//! (when it started, ended and began waiting; where it ran; a request to
//! yield), and where a paused run holds it. The store writes these as they
//! are decided here.

use super::{RunState, StageEvent, StageState};

/// The bookkeeping of one stage transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageMarks {
    /// The stage starts now; a start recorded before is kept.
    pub started: bool,
    /// The stage ends now.
    pub ended: bool,
    /// The stage waits for a human from now; a wait already begun keeps its
    /// start. Any other state clears it.
    pub waiting: bool,
    /// Where it ran is forgotten (agent and placement): a lost attempt or a
    /// reset restarts from step 0 on any agent, because its worktree may be
    /// gone with its agent.
    pub forget_placement: bool,
    /// A request to yield to higher-priority work is kept. Only a stage still
    /// on its way to a checkpoint (queued, running, suspended, or a step
    /// waiting inside for an answer) keeps one; a lost or reset stage never.
    pub keep_yield: bool,
}

/// What the stage's row records when `event` moves it to `to`.
pub fn stage_marks(event: StageEvent, to: StageState) -> StageMarks {
    let lost = matches!(event, StageEvent::AttemptLost { .. } | StageEvent::Reset);
    StageMarks {
        started: matches!(event, StageEvent::Started),
        ended: to.is_terminal(),
        waiting: matches!(
            to,
            StageState::AwaitingApproval | StageState::AwaitingInput | StageState::AwaitingDecision
        ),
        forget_placement: lost,
        keep_yield: !lost
            && (matches!(
                to,
                StageState::Running | StageState::Queued | StageState::Suspended
            ) || matches!(event, StageEvent::WaitForAnswer)),
    }
}

/// Whether a stage now in `now`, of a run in `run`, holds at its checkpoint:
/// its next step is queued but not started, and its run is paused. Then the
/// store applies [`StageEvent::Pause`] to it.
pub fn holds_for_pause(now: StageState, run: RunState) -> bool {
    now == StageState::Queued && run == RunState::Paused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{stage_on, After, Gate};

    /// Every stage event variant, with a parameter on each side of its guards.
    fn events() -> Vec<StageEvent> {
        use StageEvent as E;
        let mut v = vec![E::NeedsMet, E::Started, E::Validated, E::UpstreamFailed];
        for after in [
            After::Step(1),
            After::Done,
            After::Exhausted,
            After::Validate(9),
        ] {
            for gate in [Gate::None, Gate::Approval, Gate::Question] {
                v.push(E::StepSucceeded {
                    step: 0,
                    after,
                    gate,
                });
            }
            v.extend([
                E::Asked { after },
                E::RetryDue { next: after },
                E::Resume { next: after },
                E::Approve { next: after },
                E::Answer { next: after },
                E::Retry { next: after },
                E::SendBack { next: after },
            ]);
        }
        for ask in [false, true] {
            for max_attempts in [1, 2, 3] {
                v.push(E::StepFailed {
                    step: 1,
                    max_attempts,
                    ask,
                    send_back: max_attempts == 2,
                });
                v.push(E::AttemptLost {
                    attempt: 2,
                    max_attempts,
                    ask,
                });
            }
        }
        v.extend([
            E::Pause,
            E::Cancel,
            E::Yield,
            E::Reject { step: 0 },
            E::Skip,
            E::Abort,
            E::Fault,
            E::WaitForAnswer,
            E::WaitEnded,
            E::Reset,
        ]);
        v
    }

    /// Every transition the stage machine allows, with its marks.
    fn allowed() -> Vec<(StageState, StageEvent, StageState, StageMarks)> {
        let mut out = Vec::new();
        for &from in StageState::ALL {
            for e in events() {
                if let Ok((to, _)) = stage_on(from, 2, e) {
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
        for e in events() {
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
                StageState::AwaitingApproval
                    | StageState::AwaitingInput
                    | StageState::AwaitingDecision
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
}
