//! Rounds: each run of one step of a stage is a round of that step,
//! numbered from 1. A step that runs again (after an answer, a rejection, a
//! retry, a send-back, a loop's next iteration) starts a new round, and the
//! round says why it ran again.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::machine::StageEvent;

/// Why a round of a step runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundReason {
    /// The step's first round.
    #[default]
    First,
    /// A human answered the question the step asked; it runs again with the answer.
    Answer,
    /// A human rejected the step, or the work was sent back (by a human's
    /// `orch retry --feedback` or a later stage's `on_failure`): the stage
    /// sent back runs with the feedback, and the stages after it run again.
    Feedback,
    /// The step failed (or its attempt was lost) and runs again as a new attempt.
    Retry,
    /// A loop stage's next iteration.
    Loop,
}

impl RoundReason {
    pub const ALL: [RoundReason; 5] = [
        RoundReason::First,
        RoundReason::Answer,
        RoundReason::Feedback,
        RoundReason::Retry,
        RoundReason::Loop,
    ];

    /// The name in the store, the API and `ORCH_ROUND_REASON`.
    pub fn as_str(self) -> &'static str {
        match self {
            RoundReason::First => "first",
            RoundReason::Answer => "answer",
            RoundReason::Feedback => "feedback",
            RoundReason::Retry => "retry",
            RoundReason::Loop => "loop",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for RoundReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why `event` makes a step that already ran run again; None for an event
/// that only goes on (the next step inherits the reason of the round that
/// led to it). A loop's next iteration is told by the step numbers, which
/// the event alone does not say: the caller passes [`RoundReason::Loop`].
pub fn round_cause(event: &StageEvent) -> Option<RoundReason> {
    use StageEvent as E;
    match event {
        E::Answer { .. } => Some(RoundReason::Answer),
        // A stage pending again after it ran was sent back with its
        // ancestors; the one sent back runs with the feedback.
        E::Reject { .. } | E::SendBack { .. } | E::NeedsMet => Some(RoundReason::Feedback),
        E::Retry { .. } | E::RetryDue { .. } => Some(RoundReason::Retry),
        _ => None,
    }
}

/// One earlier job of a stage, as [`next_round`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlierJob {
    /// The step (index in `steps`) it ran.
    pub index: u32,
    /// Whether it started (a job withdrawn while queued never ran).
    pub started: bool,
    pub round: u32,
    pub reason: RoundReason,
}

/// The round (and why) of a job of step `index`, given the stage's earlier
/// jobs in the order they were made and why this one is made (`cause`, see
/// [`round_cause`]). A job withdrawn before it started is taken over by the
/// next job of its step (same round, same reason); a step's first round is
/// always `first`.
pub fn next_round(
    earlier: &[EarlierJob],
    index: u32,
    cause: Option<RoundReason>,
) -> (u32, RoundReason) {
    let Some(last) = earlier.iter().rev().find(|j| j.index == index) else {
        return (1, RoundReason::First);
    };
    if !last.started {
        return (last.round, last.reason);
    }
    let reason = cause
        .or_else(|| earlier.iter().rev().find(|j| j.started).map(|j| j.reason))
        .filter(|r| *r != RoundReason::First)
        // Ran before, yet nothing says why: its stage started over.
        .unwrap_or(RoundReason::Retry);
    (last.round.saturating_add(1), reason)
}
