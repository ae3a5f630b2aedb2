//! The stage's state machine, rule by rule: what reopens an ended stage,
//! what a terminal, waiting or suspended stage refuses, how steps and loops
//! follow each other, and properties over any numbers (waits, lost attempts,
//! failures, resets, send-backs).

use orchestrator_core::machine::{
    after_step, stage_on, After, Gate, RejectedTransition, StageEffect, StageEvent,
};
use orchestrator_core::StageState;
use proptest::prelude::*;

use After as A;
use Gate as G;
use StageEffect as F;
use StageState as S;

mod common;

use common::stage_events::{reopens, stage_events, ATTEMPT, MAX};

#[test]
fn only_a_send_back_opens_an_ended_stage_again_and_a_cancelled_one_never() {
    for &s in StageState::ALL.iter().filter(|s| s.is_terminal()) {
        for e in stage_events().iter().filter(|e| reopens(e)) {
            match stage_on(s, ATTEMPT, *e) {
                Ok((to, effects)) => {
                    assert!(!to.is_terminal(), "{s} on {e:?} went to {to}");
                    assert!(effects.contains(&F::Reopen), "{s} on {e:?}: {effects:?}");
                    assert_ne!(s, S::Cancelled);
                }
                Err(_) => assert!(
                    s == S::Cancelled || matches!(e, StageEvent::SendBack { .. }),
                    "{s} refused {e:?}"
                ),
            }
        }
    }
}

#[test]
fn a_terminal_stage_refuses_every_event() {
    let terminal: Vec<_> = StageState::ALL
        .iter()
        .copied()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(
        terminal,
        [
            S::Succeeded,
            S::Skipped,
            S::Failed,
            S::Blocked,
            S::Bypassed,
            S::Cancelled
        ]
    );
    for s in terminal {
        for e in stage_events().into_iter().filter(|e| !reopens(e)) {
            assert!(stage_on(s, ATTEMPT, e).is_err(), "{s} took {e:?}");
        }
    }
}

#[test]
fn every_live_stage_state_can_still_end() {
    for &s in StageState::ALL.iter().filter(|s| !s.is_terminal()) {
        let (to, effects) = stage_on(s, ATTEMPT, StageEvent::Cancel).unwrap();
        assert_eq!(to, S::Cancelled);
        assert!(effects.contains(&F::StageEnded), "{s}");
    }
}

/// A stage waiting for a human takes no job outcome. One whose step waits
/// inside (`orch ask --wait`) still has a leased job, but its wait ends
/// (`WaitEnded`, back to running) before that job's outcome is applied.
#[test]
fn a_stage_waiting_for_a_human_takes_no_job_outcome() {
    for s in [S::AwaitingApproval, S::AwaitingInput, S::AwaitingDecision] {
        assert!(!s.is_terminal());
        for e in [
            StageEvent::StepFailed {
                step: 0,
                max_attempts: 1,
                ask: true,
                send_back: false,
            },
            StageEvent::Validated,
            StageEvent::Started,
            StageEvent::Pause,
            StageEvent::StepSucceeded {
                step: 0,
                after: A::Step(1),
                gate: G::None,
            },
            StageEvent::AttemptLost {
                attempt: 1,
                max_attempts: MAX,
                ask: true,
            },
            StageEvent::WaitForAnswer,
        ] {
            assert!(stage_on(s, 1, e).is_err(), "{s} took {e:?}");
        }
    }
}

#[test]
fn a_suspended_stage_only_waits_to_be_resumed() {
    // It holds no job: nothing runs, so nothing can start, succeed, fail,
    // ask or yield a second time.
    for e in [
        StageEvent::Yield,
        StageEvent::Started,
        StageEvent::StepFailed {
            step: 0,
            max_attempts: 1,
            ask: true,
            send_back: false,
        },
        StageEvent::NeedsMet,
        StageEvent::UpstreamFailed,
        StageEvent::StepSucceeded {
            step: 0,
            after: A::Step(1),
            gate: G::None,
        },
        StageEvent::Asked { after: A::Step(1) },
    ] {
        assert!(stage_on(S::Suspended, ATTEMPT, e).is_err(), "took {e:?}");
    }
    // Only a stage at a checkpoint (its next step queued) can yield.
    for s in [S::Pending, S::Running, S::Paused, S::AwaitingApproval] {
        assert!(stage_on(s, ATTEMPT, StageEvent::Yield).is_err(), "{s}");
    }
    // Queued, suspended, resumed: the same step is queued again, same attempt.
    let (s, e1) = stage_on(S::Queued, ATTEMPT, StageEvent::Yield).unwrap();
    let (s, e2) = stage_on(s, ATTEMPT, StageEvent::Resume { next: A::Step(3) }).unwrap();
    assert_eq!(
        (s, e1, e2),
        (
            S::Queued,
            vec![StageEffect::CancelJob],
            vec![StageEffect::EnqueueStep {
                step: 3,
                attempt: ATTEMPT
            }]
        )
    );
}

#[test]
fn after_a_step_comes_the_next_one_then_the_end() {
    assert_eq!(after_step(0, 3, 1, None), A::Step(1));
    assert_eq!(after_step(1, 3, 1, None), A::Step(2));
    assert_eq!(after_step(2, 3, 1, None), A::Done);
}

#[test]
fn a_loop_runs_until_its_check_passes_or_its_iterations_run_out() {
    // One step per iteration, at most 3 iterations.
    assert_eq!(after_step(0, 1, 3, Some(false)), A::Step(1));
    assert_eq!(after_step(1, 1, 3, Some(true)), A::Done);
    assert_eq!(after_step(2, 1, 3, Some(false)), A::Exhausted);
    assert_eq!(after_step(2, 1, 3, Some(true)), A::Done);
    // Without `until`, exactly `max` iterations.
    assert_eq!(after_step(1, 1, 3, None), A::Step(2));
    assert_eq!(after_step(2, 1, 3, None), A::Done);
    // Two steps per iteration: `until` is judged only at an iteration's end.
    assert_eq!(after_step(0, 2, 2, None), A::Step(1));
    assert_eq!(after_step(1, 2, 2, Some(false)), A::Step(2));
    assert_eq!(after_step(3, 2, 2, Some(false)), A::Exhausted);
    assert_eq!(after_step(2, 2, 2, Some(true)), A::Step(3));
}

#[test]
fn a_refusal_reads_as_a_sentence() {
    let err: RejectedTransition = stage_on(S::Succeeded, 1, StageEvent::Started).unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage in state succeeded cannot take event Started"
    );
}

/// Every event a running stage's job can end with, for the property below.
fn job_outcomes() -> Vec<StageEvent> {
    stage_events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                StageEvent::StepSucceeded { .. }
                    | StageEvent::StepFailed { .. }
                    | StageEvent::AttemptLost { .. }
            )
        })
        .collect()
}

proptest! {
    /// Waiting inside a step for answers, any number of times, changes
    /// nothing about how the step ends: no job is queued, no attempt is
    /// counted, and its outcome then leads exactly where it would have led
    /// without the waits.
    #[test]
    fn waits_inside_a_step_never_change_where_it_leads(
        waits in 0usize..8,
        pick in any::<prop::sample::Index>(),
        attempt in 1u32..=MAX,
    ) {
        let outcomes = job_outcomes();
        let outcome = outcomes[pick.index(outcomes.len())];
        let mut s = S::Running;
        for _ in 0..waits {
            let (waiting, e1) = stage_on(s, attempt, StageEvent::WaitForAnswer).unwrap();
            prop_assert_eq!(waiting, S::AwaitingInput);
            prop_assert!(stage_on(waiting, attempt, outcome).is_err());
            let (back, e2) = stage_on(waiting, attempt, StageEvent::WaitEnded).unwrap();
            prop_assert!(e1.is_empty() && e2.is_empty());
            s = back;
        }
        prop_assert_eq!(
            stage_on(s, attempt, outcome),
            stage_on(S::Running, attempt, outcome)
        );
    }
}

proptest! {
    #[test]
    fn after_step_never_skips_or_overruns(
        step in 0u32..10_000,
        per in 1u32..20,
        iterations in 1u32..500,
        until in prop_oneof![Just(None), Just(Some(true)), Just(Some(false))],
    ) {
        let total = u64::from(per) * u64::from(iterations);
        prop_assume!(u64::from(step) < total);
        let ends = (u64::from(step) + 1) % u64::from(per) == 0;
        match after_step(step, per, iterations, until) {
            A::Step(n) => {
                prop_assert_eq!(n, step + 1);
                prop_assert!(u64::from(n) < total);
                prop_assert!(!(ends && until == Some(true)));
            }
            A::Done => prop_assert!(u64::from(step) + 1 == total || (ends && until == Some(true))),
            A::Exhausted => {
                prop_assert_eq!(u64::from(step) + 1, total);
                prop_assert_eq!(until, Some(false));
            }
            A::Validate(_) => prop_assert!(false, "after_step never validates"),
        }
    }

    #[test]
    fn attempt_lost_follows_its_rule_for_any_numbers(
        attempt in any::<u32>(),
        max_attempts in any::<u32>(),
        from in prop_oneof![Just(S::Queued), Just(S::Running), Just(S::Suspended), Just(S::Validating)],
        ask in any::<bool>(),
    ) {
        let got = stage_on(from, 1, StageEvent::AttemptLost { attempt, max_attempts, ask }).unwrap();
        if attempt >= max_attempts && ask {
            prop_assert_eq!(got, (S::AwaitingDecision, vec![F::AwaitDecision { retry: 0 }]));
        } else if attempt >= max_attempts {
            prop_assert_eq!(got, (S::Failed, vec![F::BlockDependents, F::StageEnded]));
        } else {
            prop_assert_eq!(got, (S::Retrying, vec![F::AwaitRetry { attempt: attempt + 1, step: 0 }]));
        }
    }

    #[test]
    fn a_task_failure_retries_then_asks_or_fails_for_any_numbers(
        attempt in any::<u32>(),
        max_attempts in any::<u32>(),
        step in any::<u32>(),
        from in prop_oneof![Just(S::Running), Just(S::Validating)],
        ask in any::<bool>(),
    ) {
        let got = stage_on(from, attempt, StageEvent::StepFailed { step, max_attempts, ask, send_back: false }).unwrap();
        if attempt < max_attempts {
            prop_assert_eq!(got, (S::Retrying, vec![F::AwaitRetry { attempt: attempt + 1, step }]));
        } else if ask {
            // Nothing is thrown away: the decision retries the failed step.
            prop_assert_eq!(got, (S::AwaitingDecision, vec![F::AwaitDecision { retry: step }]));
        } else {
            prop_assert_eq!(got, (S::Failed, vec![F::BlockDependents, F::StageEnded]));
        }
    }
}

proptest! {
    #[test]
    fn a_reset_stage_always_waits_for_its_needs_again(
        s in prop::sample::select(StageState::ALL.to_vec()),
        attempt in 1u32..10,
    ) {
        match stage_on(s, attempt, StageEvent::Reset) {
            Ok((to, effects)) => {
                prop_assert_eq!(to, S::Pending);
                // An ended stage counts as open again; a live job is let go.
                prop_assert_eq!(effects.contains(&F::Reopen), s.is_terminal());
                let runs_or_ends = effects.iter().any(|f| matches!(f, F::EnqueueStep { .. } | F::StageEnded));
                prop_assert!(!runs_or_ends);
            }
            Err(_) => prop_assert_eq!(s, S::Cancelled),
        }
    }

    #[test]
    fn a_send_back_runs_the_step_again_as_a_new_attempt_and_resets_what_follows(
        s in prop::sample::select(StageState::ALL.to_vec()),
        attempt in 1u32..10,
        step in 0u32..100,
    ) {
        let got = stage_on(s, attempt, StageEvent::SendBack { next: A::Step(step) });
        if matches!(s, S::Succeeded | S::AwaitingDecision) {
            let (to, effects) = got.unwrap();
            prop_assert_eq!(to, S::Queued);
            prop_assert_eq!(effects[0], F::EnqueueStep { step, attempt: attempt + 1 });
            prop_assert!(effects.contains(&F::ResetDependents));
            prop_assert_eq!(effects.contains(&F::Reopen), s == S::Succeeded);
        } else {
            prop_assert!(got.is_err());
        }
        // Nothing is left to run: refused, whatever the state.
        let nothing_left = stage_on(s, attempt, StageEvent::SendBack { next: A::Done });
        prop_assert!(nothing_left.is_err());
    }

    #[test]
    fn a_failure_with_rounds_left_retries_first_then_sends_the_work_back(
        from in prop::sample::select(vec![S::Running, S::Validating]),
        attempt in 1u32..10,
        max_attempts in 1u32..10,
        step in 0u32..100,
        ask in any::<bool>(),
    ) {
        let got = stage_on(from, attempt, StageEvent::StepFailed { step, max_attempts, ask, send_back: true }).unwrap();
        if attempt < max_attempts {
            prop_assert_eq!(got, (S::Retrying, vec![F::AwaitRetry { attempt: attempt + 1, step }]));
        } else {
            prop_assert_eq!(got, (S::Pending, vec![F::SendBackUpstream]));
        }
    }
}
