//! The stage events the state machine tests share: every variant with the
//! parameters that matter on either side of each guard, and the events that
//! may open an ended stage again.

use orchestrator_core::error::MAX_INFRA_ATTEMPTS;
use orchestrator_core::machine::{After as A, Gate as G, StageEvent};

/// The stage's own attempt number passed to `stage_on` in the table.
pub const ATTEMPT: u32 = 2;
pub const MAX: u32 = MAX_INFRA_ATTEMPTS;

/// Representative stage events: every variant, with the parameters that
/// matter on either side of each guard.
pub fn stage_events() -> Vec<StageEvent> {
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
        E::Bypass,
        E::ConditionFailed,
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
            | E::Bypass
            | E::ConditionFailed
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

/// The events that may open an ended stage again: the work was sent back.
pub fn reopens(e: &StageEvent) -> bool {
    matches!(e, StageEvent::SendBack { .. } | StageEvent::Reset)
}
