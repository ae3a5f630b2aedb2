//! The stage's state machine checked exhaustively: every state against every
//! event (with representative parameters), against a table of the allowed
//! transitions written out here. Anything not in the table must be refused.

use orchestrator_core::machine::{stage_on, After, Gate, StageEffect, StageEvent};
use orchestrator_core::StageState;

use After as A;
use Gate as G;
use StageEffect as F;
use StageState as S;

mod common;

use common::stage_events::{reopens, stage_events, ATTEMPT, MAX};

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
        (S::Queued, E::Fault, S::Failed, ENDED_BADLY),
        (S::Validating, E::Fault, S::Failed, ENDED_BADLY),
        // Its condition: false (or a need bypassed) bypasses it; an error
        // fails it before anything ran.
        (
            S::Pending,
            E::Bypass,
            S::Bypassed,
            &[F::BypassDependents, F::StageEnded],
        ),
        (S::Pending, E::ConditionFailed, S::Failed, ENDED_BADLY),
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
    for from in [S::Succeeded, S::Skipped, S::Failed, S::Blocked, S::Bypassed] {
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
