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
