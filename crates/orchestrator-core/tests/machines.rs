//! The state machines of stage, job and run, checked exhaustively: every state
//! against every event (with representative parameters), against a table of
//! the allowed transitions written out here. Anything not in a table must be
//! refused.

use orchestrator_core::error::{ErrorClass, MAX_INFRA_ATTEMPTS};
use orchestrator_core::machine::{
    after_step, job_on, run_on, stage_on, After, Gate, JobEvent, RejectedTransition, RunEvent,
    StageEffect, StageEvent,
};
use orchestrator_core::{Entity, JobState, RunState, StageState, Transition};
use proptest::prelude::*;

use After as A;
use Gate as G;
use JobState as J;
use RunState as R;
use StageEffect as F;
use StageState as S;

// ================================================================ stage

/// The stage's own attempt number passed to `stage_on` in the table.
const ATTEMPT: u32 = 2;
const MAX: u32 = MAX_INFRA_ATTEMPTS;

/// Representative stage events: every variant, with the parameters that
/// matter on either side of each guard.
fn stage_events() -> Vec<StageEvent> {
    use StageEvent as E;
    let mut events = vec![E::NeedsMet, E::Started, E::Validated];
    let afters = [A::Step(1), A::Done, A::Exhausted, A::Validate(9)];
    for after in afters {
        for gate in [G::None, G::Approval, G::Question] {
            events.push(E::StepSucceeded {
                step: 0,
                after,
                gate,
            });
        }
        events.extend([
            E::Asked { after },
            E::RetryDue { next: after },
            E::Resume { next: after },
            E::Approve { next: after },
            E::Answer { next: after },
            E::Retry { next: after },
        ]);
    }
    for ask in [false, true] {
        for max_attempts in [1, ATTEMPT, ATTEMPT + 1] {
            for send_back in [false, true] {
                events.push(E::StepFailed {
                    step: 1,
                    max_attempts,
                    ask,
                    send_back,
                });
            }
        }
        for attempt in [1, MAX - 1, MAX, MAX + 1] {
            events.push(E::AttemptLost {
                attempt,
                max_attempts: MAX,
                ask,
            });
        }
    }
    events.extend([
        E::UpstreamFailed,
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
    for next in [A::Step(1), A::Done, A::Exhausted, A::Validate(9)] {
        events.push(E::SendBack { next });
    }
    // Fails to compile when a variant is added and not listed above.
    for e in &events {
        match e {
            E::NeedsMet
            | E::Started
            | E::StepSucceeded { .. }
            | E::Validated
            | E::StepFailed { .. }
            | E::AttemptLost { .. }
            | E::RetryDue { .. }
            | E::UpstreamFailed
            | E::Pause
            | E::Resume { .. }
            | E::Cancel
            | E::Yield
            | E::Asked { .. }
            | E::Approve { .. }
            | E::Reject { .. }
            | E::Answer { .. }
            | E::Retry { .. }
            | E::Skip
            | E::Abort
            | E::Fault
            | E::WaitForAnswer
            | E::WaitEnded
            | E::SendBack { .. }
            | E::Reset => {}
        }
    }
    events
}

type StageRow = (StageState, StageEvent, StageState, &'static [StageEffect]);

/// Every allowed stage transition (with `attempt` = [`ATTEMPT`]).
fn stage_table() -> Vec<StageRow> {
    use StageEvent as E;
    const ENDED_BADLY: &[StageEffect] = &[F::BlockDependents, F::StageEnded];
    const SUCCEEDED: &[StageEffect] = &[F::ReleaseDependents, F::StageEnded];
    const CANCELLED: &[StageEffect] = &[F::CancelJob, F::StageEnded];
    const NEXT: &[StageEffect] = &[F::EnqueueStep {
        step: 1,
        attempt: ATTEMPT,
    }];
    const VALIDATE: &[StageEffect] = &[F::EnqueueStep {
        step: 9,
        attempt: ATTEMPT,
    }];
    let ok = |after, gate| E::StepSucceeded {
        step: 0,
        after,
        gate,
    };
    let mut rows: Vec<StageRow> = vec![
        (
            S::Pending,
            E::NeedsMet,
            S::Queued,
            &[F::EnqueueStep {
                step: 0,
                attempt: ATTEMPT,
            }],
        ),
        (S::Pending, E::UpstreamFailed, S::Blocked, ENDED_BADLY),
        (S::Pending, E::Fault, S::Failed, ENDED_BADLY),
        (S::Queued, E::Started, S::Running, &[]),
        // A step that succeeds goes on, or holds for a human first.
        (S::Running, ok(A::Step(1), G::None), S::Queued, NEXT),
        (S::Running, ok(A::Done, G::None), S::Succeeded, SUCCEEDED),
        (
            S::Running,
            ok(A::Validate(9), G::None),
            S::Validating,
            VALIDATE,
        ),
        (
            S::Running,
            ok(A::Step(1), G::Approval),
            S::AwaitingApproval,
            &[F::AwaitHuman { resume: Some(1) }],
        ),
        (
            S::Running,
            ok(A::Done, G::Approval),
            S::AwaitingApproval,
            &[F::AwaitHuman { resume: None }],
        ),
        (
            S::Running,
            ok(A::Validate(9), G::Approval),
            S::AwaitingApproval,
            &[F::AwaitHuman { resume: Some(9) }],
        ),
        // A step that asked runs again with the answer.
        (
            S::Running,
            ok(A::Step(1), G::Question),
            S::AwaitingInput,
            &[F::AwaitHuman { resume: Some(0) }],
        ),
        (
            S::Running,
            ok(A::Done, G::Question),
            S::AwaitingInput,
            &[F::AwaitHuman { resume: Some(0) }],
        ),
        (
            S::Running,
            ok(A::Validate(9), G::Question),
            S::AwaitingInput,
            &[F::AwaitHuman { resume: Some(0) }],
        ),
        (
            S::Running,
            ok(A::Exhausted, G::Question),
            S::AwaitingInput,
            &[F::AwaitHuman { resume: Some(0) }],
        ),
        // The validation ran: the stage is done, or it failed like a step.
        (S::Validating, E::Started, S::Validating, &[]),
        (S::Validating, E::Validated, S::Succeeded, SUCCEEDED),
        // An input step asks without running anything.
        (
            S::Queued,
            E::Asked { after: A::Step(1) },
            S::AwaitingInput,
            &[F::AwaitHuman { resume: Some(1) }],
        ),
        (
            S::Queued,
            E::Asked { after: A::Done },
            S::AwaitingInput,
            &[F::AwaitHuman { resume: None }],
        ),
        (
            S::Queued,
            E::Asked {
                after: A::Validate(9),
            },
            S::AwaitingInput,
            &[F::AwaitHuman { resume: Some(9) }],
        ),
        (
            S::AwaitingApproval,
            E::Reject { step: 0 },
            S::Queued,
            &[F::EnqueueStep {
                step: 0,
                attempt: ATTEMPT,
            }],
        ),
        (
            S::AwaitingInput,
            E::Cancel,
            S::Cancelled,
            &[F::CancelJob, F::CloseQuestions, F::StageEnded],
        ),
        // A running step that waits inside for an answer (`orch ask
        // --wait`): the stage shows it waits, and goes on running once the
        // wait ends, with no new job and no new attempt.
        (S::Running, E::WaitForAnswer, S::AwaitingInput, &[]),
        (S::AwaitingInput, E::WaitEnded, S::Running, &[]),
        // Pausing holds a stage at its checkpoint, withdrawing the queued job.
        (S::Queued, E::Pause, S::Paused, &[F::CancelJob]),
        // Yielding at a checkpoint withdraws the step just queued; once the
        // work it yielded to is placed, the same step is queued again
        // (pinned to the agent with the worktree).
        (S::Queued, E::Yield, S::Suspended, &[F::CancelJob]),
        (S::Suspended, E::Pause, S::Paused, &[F::CancelJob]),
        (S::Retrying, E::Pause, S::Paused, &[]),
        // A human decides about a failed stage: skip it (dependents go on)
        // or let it fail (dependents are blocked).
        (S::AwaitingDecision, E::Skip, S::Skipped, SUCCEEDED),
        (S::AwaitingDecision, E::Abort, S::Failed, ENDED_BADLY),
    ];
    for from in [
        S::Pending,
        S::Queued,
        S::Running,
        S::Paused,
        S::Suspended,
        S::Retrying,
        S::Validating,
        S::AwaitingApproval,
        S::AwaitingDecision,
    ] {
        rows.push((from, E::Cancel, S::Cancelled, CANCELLED));
    }
    // Going on to a step or the validation (never to nothing, for those
    // that must run something).
    for (from, event) in [
        (S::AwaitingApproval, E::Approve { next: A::Done }),
        (S::AwaitingInput, E::Answer { next: A::Done }),
    ] {
        rows.push((from, event, S::Succeeded, SUCCEEDED));
    }
    for next in [A::Step(1), A::Validate(9)] {
        let (to, effects) = match next {
            A::Step(_) => (S::Queued, NEXT),
            _ => (S::Validating, VALIDATE),
        };
        rows.extend([
            (S::AwaitingApproval, E::Approve { next }, to, effects),
            (S::AwaitingInput, E::Answer { next }, to, effects),
            (S::Paused, E::Resume { next }, to, effects),
            (S::Suspended, E::Resume { next }, to, effects),
            (S::Retrying, E::RetryDue { next }, to, effects),
        ]);
    }
    // A human retry is a new attempt.
    rows.push((
        S::AwaitingDecision,
        E::Retry { next: A::Step(1) },
        S::Queued,
        &[F::EnqueueStep {
            step: 1,
            attempt: ATTEMPT + 1,
        }],
    ));
    rows.push((
        S::AwaitingDecision,
        E::Retry {
            next: A::Validate(9),
        },
        S::Validating,
        &[F::EnqueueStep {
            step: 9,
            attempt: ATTEMPT + 1,
        }],
    ));
    // A task failure retries the same step while attempts are left, then
    // asks a human or fails.
    for from in [S::Running, S::Validating] {
        for ask in [false, true] {
            let failed = |max_attempts| E::StepFailed {
                step: 1,
                max_attempts,
                ask,
                send_back: false,
            };
            let gave_up: (S, &'static [StageEffect]) = if ask {
                (S::AwaitingDecision, &[F::AwaitDecision { retry: 1 }])
            } else {
                (S::Failed, ENDED_BADLY)
            };
            rows.push((
                from,
                failed(ATTEMPT + 1),
                S::Retrying,
                &[F::AwaitRetry {
                    attempt: ATTEMPT + 1,
                    step: 1,
                }],
            ));
            rows.push((from, failed(ATTEMPT), gave_up.0, gave_up.1));
            rows.push((from, failed(1), gave_up.0, gave_up.1));
            // With rounds left to send the work back, that comes before a
            // human or the end (but after the stage's own retries).
            let failed = |max_attempts| E::StepFailed {
                step: 1,
                max_attempts,
                ask,
                send_back: true,
            };
            rows.push((
                from,
                failed(ATTEMPT + 1),
                S::Retrying,
                &[F::AwaitRetry {
                    attempt: ATTEMPT + 1,
                    step: 1,
                }],
            ));
            rows.push((from, failed(ATTEMPT), S::Pending, &[F::SendBackUpstream]));
            rows.push((from, failed(1), S::Pending, &[F::SendBackUpstream]));
        }
    }
    // Sent back: a stage that succeeded or awaits a decision runs its step
    // (or validation) again as a new attempt, and the stages after it run
    // again after it; an ended stage is open again.
    for (next, to, step) in [
        (A::Step(1), S::Queued, 1),
        (A::Validate(9), S::Validating, 9),
    ] {
        const AGAIN: u32 = ATTEMPT + 1;
        let (reopened, waiting): (&'static [StageEffect], &'static [StageEffect]) = if step == 1 {
            (
                &[
                    F::EnqueueStep {
                        step: 1,
                        attempt: AGAIN,
                    },
                    F::Reopen,
                    F::ResetDependents,
                ],
                &[
                    F::EnqueueStep {
                        step: 1,
                        attempt: AGAIN,
                    },
                    F::ResetDependents,
                ],
            )
        } else {
            (
                &[
                    F::EnqueueStep {
                        step: 9,
                        attempt: AGAIN,
                    },
                    F::Reopen,
                    F::ResetDependents,
                ],
                &[
                    F::EnqueueStep {
                        step: 9,
                        attempt: AGAIN,
                    },
                    F::ResetDependents,
                ],
            )
        };
        rows.push((S::Succeeded, E::SendBack { next }, to, reopened));
        rows.push((S::AwaitingDecision, E::SendBack { next }, to, waiting));
    }
    // Reset: back to waiting for its needs, whatever it was doing, letting
    // go of what it held.
    for from in [
        S::Pending,
        S::Retrying,
        S::AwaitingDecision,
        S::AwaitingApproval,
    ] {
        rows.push((from, E::Reset, S::Pending, &[]));
    }
    for from in [S::Succeeded, S::Skipped, S::Failed, S::Blocked] {
        rows.push((from, E::Reset, S::Pending, &[F::Reopen]));
    }
    rows.push((
        S::AwaitingInput,
        E::Reset,
        S::Pending,
        &[F::CancelJob, F::CloseQuestions],
    ));
    for from in [
        S::Queued,
        S::Running,
        S::Validating,
        S::Suspended,
        S::Paused,
    ] {
        rows.push((from, E::Reset, S::Pending, &[F::CancelJob]));
    }
    // A lost attempt, whether its job was still queued, suspended or already
    // running: wait out a backoff before the next attempt (from step 0), or
    // at the limit ask a human or fail.
    for from in [S::Queued, S::Running, S::Suspended, S::Validating] {
        for ask in [false, true] {
            let lost = |attempt| E::AttemptLost {
                attempt,
                max_attempts: MAX,
                ask,
            };
            let gave_up: (S, &'static [StageEffect]) = if ask {
                (S::AwaitingDecision, &[F::AwaitDecision { retry: 0 }])
            } else {
                (S::Failed, ENDED_BADLY)
            };
            rows.push((
                from,
                lost(1),
                S::Retrying,
                &[F::AwaitRetry {
                    attempt: 2,
                    step: 0,
                }],
            ));
            rows.push((
                from,
                lost(MAX - 1),
                S::Retrying,
                &[F::AwaitRetry {
                    attempt: MAX,
                    step: 0,
                }],
            ));
            rows.push((from, lost(MAX), gave_up.0, gave_up.1));
            rows.push((from, lost(MAX + 1), gave_up.0, gave_up.1));
        }
    }
    rows
}

#[test]
fn the_stage_machine_allows_exactly_the_transitions_of_its_table() {
    let table = stage_table();
    let events = stage_events();
    for (s, e, _, _) in &table {
        assert!(
            events.contains(e),
            "table row event {e:?} is not enumerated"
        );
        assert!(
            !s.is_terminal() || reopens(e),
            "table row leaves terminal state {s} on {e:?}"
        );
    }
    let mut allowed = 0;
    for &s in StageState::ALL {
        for &e in &events {
            let got = stage_on(s, ATTEMPT, e);
            match table.iter().find(|(from, ev, _, _)| *from == s && *ev == e) {
                Some((_, _, to, effects)) => {
                    allowed += 1;
                    assert_eq!(got, Ok((*to, effects.to_vec())), "{s} on {e:?}");
                }
                None => {
                    let err = got.expect_err(&format!("{s} on {e:?} should be refused"));
                    assert_eq!(err.entity, "stage");
                    assert_eq!(err.state, s.as_str());
                    assert_eq!(err.event, format!("{e:?}"));
                }
            }
        }
    }
    assert_eq!(allowed, table.len(), "every row was exercised once");
}

/// The events that may open an ended stage again: the work was sent back.
fn reopens(e: &StageEvent) -> bool {
    matches!(e, StageEvent::SendBack { .. } | StageEvent::Reset)
}

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

// ================================================================== job

fn job_events() -> Vec<JobEvent> {
    use JobEvent as E;
    let events = vec![E::Lease, E::Succeed, E::Fail, E::Expire, E::Cancel];
    for e in &events {
        match e {
            E::Lease | E::Succeed | E::Fail | E::Expire | E::Cancel => {}
        }
    }
    events
}

/// Every allowed job transition.
const JOB_TABLE: &[(JobState, JobEvent, JobState)] = &[
    (J::Queued, JobEvent::Lease, J::Leased),
    (J::Queued, JobEvent::Cancel, J::Cancelled),
    (J::Leased, JobEvent::Succeed, J::Succeeded),
    (J::Leased, JobEvent::Fail, J::Failed),
    (J::Leased, JobEvent::Expire, J::Expired),
    (J::Leased, JobEvent::Cancel, J::Cancelled),
];

#[test]
fn the_job_machine_allows_exactly_the_transitions_of_its_table() {
    for &s in JobState::ALL {
        for e in job_events() {
            let got = job_on(s, e).map(|(to, _)| to);
            match JOB_TABLE
                .iter()
                .find(|(from, ev, _)| *from == s && *ev == e)
            {
                Some((_, _, to)) => assert_eq!(got, Ok(*to), "{s} on {e:?}"),
                None => {
                    let err = got.expect_err(&format!("{s} on {e:?} should be refused"));
                    assert_eq!((err.entity, err.state.as_str()), ("job", s.as_str()));
                    assert_eq!(err.event, format!("{e:?}"));
                }
            }
        }
    }
}

#[test]
fn a_terminal_job_refuses_every_event() {
    let terminal: Vec<_> = JobState::ALL
        .iter()
        .copied()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(
        terminal,
        [J::Succeeded, J::Failed, J::Expired, J::Cancelled]
    );
    for s in terminal {
        for e in job_events() {
            assert!(job_on(s, e).is_err(), "{s} took {e:?}");
        }
    }
}

#[test]
fn a_job_completes_at_most_once() {
    let done = job_on(
        job_on(J::Queued, JobEvent::Lease).unwrap().0,
        JobEvent::Succeed,
    )
    .unwrap()
    .0;
    for e in job_events() {
        assert!(job_on(done, e).is_err(), "{e:?} after success");
    }
}

#[test]
fn a_queued_job_cannot_expire_or_complete_without_a_lease() {
    for e in [JobEvent::Succeed, JobEvent::Fail, JobEvent::Expire] {
        assert!(job_on(J::Queued, e).is_err(), "{e:?}");
    }
}

// ================================================================== run

fn run_events() -> Vec<RunEvent> {
    use RunEvent as E;
    let ended = |open, unsuccessful| E::StageEnded { open, unsuccessful };
    let events = vec![
        ended(3, 0),
        ended(1, 2),
        ended(0, 0),
        ended(0, 1),
        ended(0, 4),
        E::Cancel,
        E::Pause,
        E::Resume,
        E::Admit,
        E::Abort,
    ];
    for e in &events {
        match e {
            E::StageEnded { .. } | E::Cancel | E::Pause | E::Resume | E::Admit | E::Abort => {}
        }
    }
    events
}

/// Every allowed run transition.
fn run_table() -> Vec<(RunState, RunEvent, RunState)> {
    let ended = |open, unsuccessful| RunEvent::StageEnded { open, unsuccessful };
    let mut rows = Vec::new();
    // A paused run ends like a running one; while stages are open it keeps its state.
    for s in [R::Running, R::Paused] {
        rows.extend([
            (s, ended(3, 0), s),
            (s, ended(1, 2), s),
            (s, ended(0, 0), R::Succeeded),
            (s, ended(0, 1), R::Failed),
            (s, ended(0, 4), R::Failed),
            (s, RunEvent::Cancel, R::Cancelled),
            (s, RunEvent::Abort, R::Failed),
        ]);
    }
    rows.push((R::Running, RunEvent::Pause, R::Paused));
    rows.push((R::Paused, RunEvent::Resume, R::Running));
    // A queued run has no stage scheduled yet: it is admitted or cancelled.
    rows.push((R::Queued, RunEvent::Admit, R::Running));
    rows.push((R::Queued, RunEvent::Cancel, R::Cancelled));
    rows.push((R::Queued, RunEvent::Abort, R::Failed));
    rows
}

#[test]
fn the_run_machine_allows_exactly_the_transitions_of_its_table() {
    let table = run_table();
    let mut allowed = 0;
    for &s in RunState::ALL {
        for e in run_events() {
            let got = run_on(s, e).map(|(to, _)| to);
            match table.iter().find(|(from, ev, _)| *from == s && *ev == e) {
                Some((_, _, to)) => {
                    allowed += 1;
                    assert_eq!(got, Ok(*to), "{s} on {e:?}");
                }
                None => {
                    let err = got.expect_err(&format!("{s} on {e:?} should be refused"));
                    assert_eq!((err.entity, err.state.as_str()), ("run", s.as_str()));
                }
            }
        }
    }
    assert_eq!(allowed, table.len(), "every row was exercised once");
}

#[test]
fn admitting_a_queued_run_schedules_it_and_cancelling_it_ends_it() {
    use orchestrator_core::machine::RunEffect;
    assert_eq!(
        run_on(R::Queued, RunEvent::Admit),
        Ok((R::Running, vec![RunEffect::Schedule]))
    );
    assert_eq!(
        run_on(R::Queued, RunEvent::Cancel),
        Ok((
            R::Cancelled,
            vec![RunEffect::CancelStages, RunEffect::Ended]
        ))
    );
    // Admitted once is enough: a running or paused run refuses it.
    for s in [R::Running, R::Paused] {
        assert!(run_on(s, RunEvent::Admit).is_err(), "{s}");
    }
    // Nothing of a queued run has started, so nothing of it can end or pause.
    for e in [
        RunEvent::Pause,
        RunEvent::Resume,
        RunEvent::StageEnded {
            open: 0,
            unsuccessful: 0,
        },
    ] {
        assert!(run_on(R::Queued, e).is_err(), "{e:?}");
    }
}

#[test]
fn a_terminal_run_refuses_every_event() {
    let terminal: Vec<_> = RunState::ALL
        .iter()
        .copied()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(terminal, [R::Succeeded, R::Failed, R::Cancelled]);
    for s in terminal {
        for e in run_events() {
            assert!(run_on(s, e).is_err(), "{s} took {e:?}");
        }
    }
}

proptest! {
    #[test]
    fn a_run_ends_only_when_no_stage_is_open_and_fails_if_any_stage_did(
        open in prop_oneof![Just(0usize), 0usize..100, any::<usize>()],
        unsuccessful in prop_oneof![Just(0usize), 0usize..100, any::<usize>()],
    ) {
        let got = run_on(R::Running, RunEvent::StageEnded { open, unsuccessful }).unwrap().0;
        let expected = match (open, unsuccessful) {
            (o, _) if o > 0 => R::Running,
            (_, 0) => R::Succeeded,
            _ => R::Failed,
        };
        prop_assert_eq!(got, expected);
    }
}

// ============================================================ names

macro_rules! assert_names_round_trip {
    ($ty:ty) => {{
        let all = <$ty>::ALL;
        let mut names: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        for &s in all {
            assert_eq!(<$ty>::parse(s.as_str()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
            // The serde name is the same as the store's name.
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.as_str().to_owned())
            );
            assert_eq!(
                serde_json::from_value::<$ty>(serde_json::json!(s.as_str())).unwrap(),
                s
            );
            assert_eq!(<$ty>::parse(&s.as_str().to_uppercase()), None);
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len(), "names are unique");
        assert_eq!(<$ty>::parse(""), None);
        assert_eq!(<$ty>::parse("nonsense"), None);
    }};
}

#[test]
fn every_stage_state_name_round_trips() {
    assert_names_round_trip!(StageState);
    assert_eq!(StageState::ALL.len(), 15);
}

#[test]
fn every_job_state_name_round_trips() {
    assert_names_round_trip!(JobState);
    assert_eq!(JobState::ALL.len(), 6);
}

#[test]
fn every_run_state_name_round_trips() {
    assert_names_round_trip!(RunState);
    assert_eq!(RunState::ALL.len(), 6);
}

#[test]
fn every_entity_name_round_trips() {
    let all = [
        Entity::Run,
        Entity::Stage,
        Entity::Job,
        Entity::Lease,
        Entity::Agent,
        Entity::Question,
        Entity::Checkpoint,
    ];
    // Fails to compile when a variant is added and not listed above.
    for e in all {
        match e {
            Entity::Run
            | Entity::Stage
            | Entity::Job
            | Entity::Lease
            | Entity::Agent
            | Entity::Question
            | Entity::Checkpoint => {}
        }
    }
    let mut names: Vec<&str> = all.iter().map(|e| e.as_str()).collect();
    for e in all {
        assert_eq!(Entity::parse(e.as_str()), Some(e));
        assert_eq!(
            serde_json::to_value(e).unwrap(),
            serde_json::Value::String(e.as_str().to_owned())
        );
    }
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all.len());
    assert_eq!(Entity::parse("Run"), None);
    assert_eq!(Entity::parse("runs"), None);
}

#[test]
fn every_error_class_name_round_trips() {
    for c in [ErrorClass::Infra, ErrorClass::Task] {
        assert_eq!(ErrorClass::parse(c.as_str()), Some(c));
        assert_eq!(
            serde_json::to_value(c).unwrap(),
            serde_json::Value::String(c.as_str().to_owned())
        );
    }
    assert_eq!(ErrorClass::parse("other"), None);
}

#[test]
fn a_transition_row_serializes_with_store_names() {
    let t = Transition {
        seq: 7,
        entity: Entity::Stage,
        entity_id: "r1/build".into(),
        run_id: Some("r1".into()),
        from: Some(S::Running.into()),
        to: S::Succeeded.into(),
        reason: "last step succeeded".into(),
        actor: orchestrator_core::Actor::agent("a1"),
        at_ms: 1_700_000_000_000,
    };
    let v = serde_json::to_value(&t).unwrap();
    assert_eq!(v["entity"], "stage");
    assert_eq!(v["from"], "running");
    assert_eq!(v["to"], "succeeded");
    assert_eq!(serde_json::from_value::<Transition>(v).unwrap(), t);
}

#[test]
fn a_job_holds_a_lease_exactly_while_it_is_leased() {
    use orchestrator_core::machine::{JobEffect, LeaseEnd};
    for &s in JobState::ALL {
        for e in job_events() {
            let Ok((to, effects)) = job_on(s, e) else {
                continue;
            };
            let expected: Vec<JobEffect> = match (s, to) {
                (J::Queued, J::Leased) => vec![JobEffect::GrantLease],
                (J::Leased, J::Expired) => vec![JobEffect::EndLease(LeaseEnd::Expired)],
                (J::Leased, J::Cancelled) => vec![JobEffect::EndLease(LeaseEnd::Revoked)],
                (J::Leased, _) => vec![JobEffect::EndLease(LeaseEnd::Released)],
                _ => vec![],
            };
            assert_eq!(effects, expected, "{s} on {e:?}");
        }
    }
}

#[test]
fn a_run_that_ends_says_so_and_a_cancelled_one_cancels_its_stages() {
    use orchestrator_core::machine::RunEffect;
    let mut seen = 0;
    for &s in RunState::ALL {
        for e in run_events() {
            let Ok((to, effects)) = run_on(s, e) else {
                continue;
            };
            seen += 1;
            assert_eq!(
                effects.contains(&RunEffect::Ended),
                to.is_terminal(),
                "{s} on {e:?}"
            );
            assert_eq!(
                effects.contains(&RunEffect::CancelStages),
                matches!(e, RunEvent::Cancel | RunEvent::Abort),
                "{s} on {e:?}"
            );
            // An abort fails what awaits a decision before it cancels the rest.
            if e == RunEvent::Abort {
                assert_eq!(
                    effects,
                    [
                        RunEffect::AbortStages,
                        RunEffect::CancelStages,
                        RunEffect::Ended
                    ]
                );
            }
            assert_eq!(
                effects.contains(&RunEffect::Schedule),
                e == RunEvent::Admit,
                "{s} on {e:?}"
            );
        }
    }
    assert_eq!(seen, run_table().len());
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
