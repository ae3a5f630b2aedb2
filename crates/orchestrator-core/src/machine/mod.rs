//! The state machines of run, stage and job, as pure functions from
//! (state, event) to (state, effects). The store applies the effects and
//! writes a transition row for every change; nothing changes state any other way.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! states {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),* $(,)? } terminal: [$($t:ident),*]) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $v),* }
        impl $name {
            /// Every state, for exhaustive tests and metrics.
            pub const ALL: &'static [$name] = &[$($name::$v),*];
            /// The name used in the store, the API and the CLI.
            pub fn as_str(self) -> &'static str { match self { $($name::$v => $s),* } }
            /// Parses a name written by [`Self::as_str`].
            pub fn parse(s: &str) -> Option<Self> { match s { $($s => Some($name::$v),)* _ => None } }
            /// Whether no event leaves this state.
            pub fn is_terminal(self) -> bool { false $(|| self == $name::$t)* }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

states!(
    /// The state of a run.
    RunState {
        /// Waiting for a place under its project's `max_parallel_runs`;
        /// none of its stages is scheduled yet.
        Queued = "queued",
        /// Some stage has not ended.
        Running = "running",
        /// A human paused it: its stages stop at their next checkpoint.
        Paused = "paused",
        /// Every stage succeeded, was skipped by a human or was bypassed by
        /// its condition.
        Succeeded = "succeeded",
        /// Every stage ended and at least one failed or was blocked.
        Failed = "failed",
        /// A human cancelled it.
        Cancelled = "cancelled",
    } terminal: [Succeeded, Failed, Cancelled]
);

states!(
    /// The state of one stage of a run.
    StageState {
        /// Waiting for the stages it needs.
        Pending = "pending",
        /// A job for its next step waits for an agent.
        Queued = "queued",
        /// An agent holds the job of its current step.
        Running = "running",
        /// Held at a checkpoint because its run is paused; holds no slot.
        Paused = "paused",
        /// Its attempt was lost to an infrastructure failure; the next
        /// attempt starts from step 0 once its backoff has passed. Holds no slot.
        Retrying = "retrying",
        /// Yielded at a checkpoint to higher-priority work; holds no slot.
        /// Once that work is placed, its next step is queued again, pinned
        /// to the agent that holds its worktree.
        Suspended = "suspended",
        /// Held after a step's checkpoint until a human approves or rejects
        /// it; holds no slot.
        AwaitingApproval = "awaiting_approval",
        /// Held until a human answers a question. After a step that asked
        /// and exited, or an input step, it holds no slot; while its step
        /// waits inside (`orch ask --wait`) the step's job stays leased and
        /// holds its slot, and the answer goes to that running step.
        AwaitingInput = "awaiting_input",
        /// Its steps are done; a job runs its `validate:` commands.
        Validating = "validating",
        /// A task failure (or infrastructure failures past their retries)
        /// stopped it; it holds no slot and keeps what it produced until a
        /// human retries, skips or aborts it. Its dependents wait.
        AwaitingDecision = "awaiting_decision",
        /// Its last step (and its validation) succeeded.
        Succeeded = "succeeded",
        /// A human skipped it after a failure: its dependents go on without it.
        Skipped = "skipped",
        /// A step failed, and nobody was to be asked or a human aborted it.
        Failed = "failed",
        /// A stage it needs failed, so it cannot run.
        Blocked = "blocked",
        /// Its `if:` condition was false (or a stage it needs was bypassed
        /// and its condition does not ask to run anyway): it did not run,
        /// and that does not fail its run.
        Bypassed = "bypassed",
        /// Its run was cancelled.
        Cancelled = "cancelled",
    } terminal: [Succeeded, Skipped, Failed, Blocked, Bypassed, Cancelled]
);

states!(
    /// The state of a job: one attempt at one step.
    JobState {
        /// Waiting for an agent to claim it.
        Queued = "queued",
        /// An agent holds it under a live lease.
        Leased = "leased",
        /// The step's commands all exited 0.
        Succeeded = "succeeded",
        /// A command failed or the step could not run.
        Failed = "failed",
        /// Its lease ran out before it completed; the stage was requeued.
        Expired = "expired",
        /// Its run was cancelled.
        Cancelled = "cancelled",
    } terminal: [Succeeded, Failed, Expired, Cancelled]
);

/// An event refused by a state machine: the state did not allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entity} in state {state} cannot take event {event}")]
pub struct RejectedTransition {
    pub entity: &'static str,
    pub state: String,
    pub event: String,
}

fn reject<S: fmt::Display, E: fmt::Debug>(entity: &'static str, s: S, e: E) -> RejectedTransition {
    RejectedTransition {
        entity,
        state: s.to_string(),
        event: format!("{e:?}"),
    }
}

/// Where a stage goes after one of its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Run this step next (a step number counts on across a loop's iterations).
    Step(u32),
    /// No step is left: the stage succeeds.
    Done,
    /// No step is left, and the stage's `validate:` commands run next as
    /// job number `n` of the stage (the number after its last possible step).
    Validate(u32),
    /// A loop ran its last iteration and its `until` still failed.
    Exhausted,
}

/// Where a stage goes after step `step` (0-based, counted across
/// iterations) of a stage with `per_iteration` steps that runs at most
/// `iterations` times (1 for a stage that does not loop). `until_met` is the
/// loop's `until` verdict when it ran after this step, None otherwise.
pub fn after_step(
    step: u32,
    per_iteration: u32,
    iterations: u32,
    until_met: Option<bool>,
) -> After {
    let per_iteration = u64::from(per_iteration.max(1));
    let total = per_iteration * u64::from(iterations.max(1));
    let next = u64::from(step) + 1;
    let iteration_ends = next % per_iteration == 0;
    if iteration_ends && until_met == Some(true) {
        return After::Done;
    }
    if next < total {
        // `next < total <= u32::MAX * u32::MAX` could still exceed u32; a
        // validated workflow keeps `total` small, so saturate rather than wrap.
        return After::Step(u32::try_from(next).unwrap_or(u32::MAX));
    }
    if until_met == Some(false) {
        After::Exhausted
    } else {
        After::Done
    }
}

/// What holds a stage after a step's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Nothing: go on.
    None,
    /// The step says `approve: true`.
    Approval,
    /// The step asked a question (`orch ask`) and exited: the answer is
    /// handed to the same step, run again.
    Question,
}

/// What happens to a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageEvent {
    /// Every stage it needs succeeded.
    NeedsMet,
    /// An agent leased the job of its current step.
    Started,
    /// Step `step` succeeded and checkpointed; `after` says what comes next
    /// and `gate` whether a human must act first.
    StepSucceeded { step: u32, after: After, gate: Gate },
    /// Its validation job succeeded.
    Validated,
    /// Step `step` (or its validation, or a loop whose `until` still fails
    /// after its last iteration, then `step` is that iteration's first step)
    /// failed with a task failure. It is retried after a backoff while the
    /// stage's attempt is below `max_attempts` (1 when its workflow does not
    /// retry that class); then a human is asked when `ask`, else it fails.
    /// `send_back`: its `on_failure` can still send the work back (rounds
    /// are left); that comes before a human or the end.
    StepFailed {
        step: u32,
        max_attempts: u32,
        ask: bool,
        send_back: bool,
    },
    /// The attempt was lost (lease expired, agent gone): retry from step 0
    /// after a backoff, unless `attempt` already reached `max_attempts`; then
    /// a human is asked when `ask`, else it fails.
    AttemptLost {
        attempt: u32,
        max_attempts: u32,
        ask: bool,
    },
    /// A retrying stage's backoff has passed: its next attempt goes on at `next`.
    RetryDue { next: After },
    /// A stage it needs failed or was blocked.
    UpstreamFailed,
    /// Its `if:` condition was false, or a stage it needs was bypassed and
    /// its condition calls no status function (see [`need_ended`]).
    Bypass,
    /// Its `if:` condition could not be evaluated (a type error): a task
    /// failure, decided before anything ran, so there is nothing to retry.
    ConditionFailed,
    /// Its run was paused: a stage at a checkpoint (its next step queued,
    /// not started) holds there.
    Pause,
    /// Its run was resumed, or the work it yielded to was placed: a held
    /// stage goes on at `next`.
    Resume { next: After },
    /// Its run was cancelled.
    Cancel,
    /// Asked to yield to higher-priority work, it reached a checkpoint with
    /// its next step queued: suspended there until capacity frees.
    Yield,
    /// Its queued step is an input step: ask the question and wait; `after`
    /// is where the answer leads.
    Asked { after: After },
    /// A human approved the held step; go on to `next`.
    Approve { next: After },
    /// A human rejected step `step`: run it again, with the feedback.
    Reject { step: u32 },
    /// A human answered the open question; go on to `next`.
    Answer { next: After },
    /// Its running step asked a question and waits inside for the answer
    /// (`orch ask --wait`): the stage waits for a human while its job stays
    /// leased.
    WaitForAnswer,
    /// The running step's wait ended: its questions were answered (the step
    /// receives the answer where it runs), or it stopped waiting (it gave
    /// up, ended or was lost). The job goes on, or ends, as a running one.
    WaitEnded,
    /// A human chose to try the failed stage again at `next`, as a new attempt.
    Retry { next: After },
    /// A human chose to go on without the failed stage.
    Skip,
    /// A human chose to let the failed stage fail.
    Abort,
    /// The daemon could not carry a runnable stage on (its run's stored spec
    /// unreadable, a step missing: a daemon-side fault of class infra), or
    /// the job of its next step cannot be made (a field reads an upstream
    /// output that does not render). It fails, like a failed step, so its
    /// run ends instead of waiting forever; nothing is retried, as the same
    /// spec and outputs would fail the same way.
    Fault,
    /// The work was sent back to this stage (by a human, or by a later
    /// stage's `on_failure`) while it had succeeded or awaited a decision:
    /// it runs again at `next` with the feedback, as a new attempt, and
    /// every stage after it runs again after it.
    SendBack { next: After },
    /// A stage it needs, directly or not, was sent back: it goes back to
    /// waiting for its needs, to run again after them. Its live job is
    /// cancelled, its open questions closed, and an ended stage is open again.
    Reset,
}

/// What the store must do after a stage transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageEffect {
    /// Create a job for this step, with this attempt number.
    EnqueueStep { step: u32, attempt: u32 },
    /// The stage succeeded: dependents may have become runnable.
    ReleaseDependents,
    /// The stage ended without success: its pending dependents are blocked,
    /// except those whose condition calls a status function, which count
    /// it as ended (see [`need_ended`]).
    BlockDependents,
    /// The stage was bypassed: its pending dependents are bypassed too,
    /// except those whose condition calls a status function, which count
    /// it as ended (see [`need_ended`]).
    BypassDependents,
    /// Cancel the stage's live job, if any.
    CancelJob,
    /// The stage ended: re-evaluate the run.
    StageEnded,
    /// The stage waits for a human; remember `resume` (the step to run once
    /// they approve or answer; None: the stage is then done).
    AwaitHuman { resume: Option<u32> },
    /// Close the stage's open questions: nobody can answer them any more.
    CloseQuestions,
    /// Wait out the backoff before attempt `attempt`, which goes on at step
    /// `step` (0 after a lost attempt: its worktree may be gone).
    AwaitRetry { attempt: u32, step: u32 },
    /// The stage failed and waits for a human's decision; remember `retry`,
    /// the step a retry runs again.
    AwaitDecision { retry: u32 },
    /// The stage failed and its `on_failure` sends the work back: the stage
    /// it names runs again with the failure as feedback (and this one, reset,
    /// after it).
    SendBackUpstream,
    /// The stage had ended and is open again: its run counts it as open.
    Reopen,
    /// Every stage after this one goes back to waiting, to run again after it.
    ResetDependents,
}

/// The stage machine. `attempt` is the stage's current attempt (1-based).
pub fn stage_on(
    s: StageState,
    attempt: u32,
    e: StageEvent,
) -> Result<(StageState, Vec<StageEffect>), RejectedTransition> {
    use StageEffect as F;
    use StageEvent as E;
    use StageState as S;
    let moved = match (s, e) {
        (S::Pending, E::NeedsMet) => Some((S::Queued, vec![F::EnqueueStep { step: 0, attempt }])),
        (S::Queued, E::Started) => Some((S::Running, vec![])),
        // Its validation job started: it stays validating.
        (S::Validating, E::Started) => Some((S::Validating, vec![])),
        // The step it just queued has not started: withdrawing it loses nothing.
        (S::Queued, E::Yield) => Some((S::Suspended, vec![F::CancelJob])),
        (
            S::Running,
            E::StepSucceeded {
                step,
                gate: Gate::Question,
                ..
            },
        ) => Some((S::AwaitingInput, vec![F::AwaitHuman { resume: Some(step) }])),
        (
            S::Running,
            E::StepSucceeded {
                after,
                gate: Gate::Approval,
                ..
            },
        ) if after != After::Exhausted => Some((
            S::AwaitingApproval,
            vec![F::AwaitHuman {
                resume: resume_of(after),
            }],
        )),
        (
            S::Running,
            E::StepSucceeded {
                after,
                gate: Gate::None,
                ..
            },
        ) => go_on(after, attempt),
        (S::Validating, E::Validated) => Some(succeeded()),
        (S::Queued, E::Asked { after }) if after != After::Exhausted => Some((
            S::AwaitingInput,
            vec![F::AwaitHuman {
                resume: resume_of(after),
            }],
        )),
        // A step waiting inside is still the stage's running job: nothing
        // is queued or ended, and no new round starts when it goes on.
        (S::Running, E::WaitForAnswer) => Some((S::AwaitingInput, vec![])),
        (S::AwaitingInput, E::WaitEnded) => Some((S::Running, vec![])),
        (S::AwaitingApproval, E::Approve { next }) | (S::AwaitingInput, E::Answer { next }) => {
            go_on(next, attempt)
        }
        (S::AwaitingApproval, E::Reject { step }) => {
            Some((S::Queued, vec![F::EnqueueStep { step, attempt }]))
        }
        (
            S::Running | S::Validating,
            E::StepFailed {
                max_attempts,
                send_back: true,
                ..
            },
        ) if attempt >= max_attempts => Some((S::Pending, vec![F::SendBackUpstream])),
        (
            S::Running | S::Validating,
            E::StepFailed {
                step,
                max_attempts,
                ask,
                ..
            },
        ) => Some(failed(attempt, max_attempts, ask, step)),
        (
            S::Running | S::Queued | S::Suspended | S::Validating,
            E::AttemptLost {
                attempt: a,
                max_attempts,
                ask,
            },
        ) => Some(failed(a, max_attempts, ask, 0)),
        (S::Retrying, E::RetryDue { next }) => step_again(next, attempt),
        (S::AwaitingDecision, E::Retry { next }) => step_again(next, attempt.saturating_add(1)),
        (S::AwaitingDecision, E::Skip) => {
            Some((S::Skipped, vec![F::ReleaseDependents, F::StageEnded]))
        }
        (S::AwaitingDecision, E::Abort) => Some(ended_failed()),
        // Nothing runs while it waits: pausing holds it where it is.
        (S::Retrying, E::Pause) => Some((S::Paused, vec![])),
        (S::Pending, E::UpstreamFailed) => {
            Some((S::Blocked, vec![F::BlockDependents, F::StageEnded]))
        }
        // Its spec cannot be read, or its next job cannot be made (its
        // state then already says the job was queued): nothing can be
        // retried, so it fails.
        (S::Pending | S::Queued | S::Validating, E::Fault) => Some(ended_failed()),
        // Its condition cannot be evaluated: a task failure of the stage.
        (S::Pending, E::ConditionFailed) => Some(ended_failed()),
        (S::Pending, E::Bypass) => Some((S::Bypassed, vec![F::BypassDependents, F::StageEnded])),
        // The queued job has not started: withdrawing it loses nothing.
        (S::Queued | S::Suspended, E::Pause) => Some((S::Paused, vec![F::CancelJob])),
        (S::Paused | S::Suspended, E::Resume { next }) => step_again(next, attempt),
        (
            S::Pending
            | S::Queued
            | S::Running
            | S::Paused
            | S::Suspended
            | S::Retrying
            | S::Validating
            | S::AwaitingDecision
            | S::AwaitingApproval,
            E::Cancel,
        ) => Some((S::Cancelled, vec![F::CancelJob, F::StageEnded])),
        // Its step may be waiting inside for the answer: that job goes too.
        (S::AwaitingInput, E::Cancel) => Some((
            S::Cancelled,
            vec![F::CancelJob, F::CloseQuestions, F::StageEnded],
        )),
        (S::Succeeded, E::SendBack { next }) => {
            sent_back(next, attempt, &[F::Reopen, F::ResetDependents])
        }
        (S::AwaitingDecision, E::SendBack { next }) => {
            sent_back(next, attempt, &[F::ResetDependents])
        }
        (S::Pending | S::Retrying | S::AwaitingDecision | S::AwaitingApproval, E::Reset) => {
            Some((S::Pending, vec![]))
        }
        (S::Succeeded | S::Skipped | S::Failed | S::Blocked | S::Bypassed, E::Reset) => {
            Some((S::Pending, vec![F::Reopen]))
        }
        // Its step may be waiting inside for the answer: that job goes too.
        (S::AwaitingInput, E::Reset) => Some((S::Pending, vec![F::CancelJob, F::CloseQuestions])),
        (S::Queued | S::Running | S::Validating | S::Suspended | S::Paused, E::Reset) => {
            Some((S::Pending, vec![F::CancelJob]))
        }
        _ => None,
    };
    moved.ok_or_else(|| reject("stage", s, e))
}

/// Runs `next` again as a new attempt, then does `more`.
fn sent_back(
    next: After,
    attempt: u32,
    more: &[StageEffect],
) -> Option<(StageState, Vec<StageEffect>)> {
    let (to, mut effects) = step_again(next, attempt.saturating_add(1))?;
    effects.extend_from_slice(more);
    Some((to, effects))
}

/// After a failure of attempt `attempt`: another attempt after a backoff
/// while attempts are left, then a human's decision or the end.
fn failed(
    attempt: u32,
    max_attempts: u32,
    ask: bool,
    retry: u32,
) -> (StageState, Vec<StageEffect>) {
    if attempt < max_attempts {
        (
            StageState::Retrying,
            vec![StageEffect::AwaitRetry {
                attempt: attempt.saturating_add(1),
                step: retry,
            }],
        )
    } else if ask {
        (
            StageState::AwaitingDecision,
            vec![StageEffect::AwaitDecision { retry }],
        )
    } else {
        ended_failed()
    }
}

fn ended_failed() -> (StageState, Vec<StageEffect>) {
    (
        StageState::Failed,
        vec![StageEffect::BlockDependents, StageEffect::StageEnded],
    )
}

fn succeeded() -> (StageState, Vec<StageEffect>) {
    (
        StageState::Succeeded,
        vec![StageEffect::ReleaseDependents, StageEffect::StageEnded],
    )
}

/// A held stage's step to run next, or None when the stage is then done.
/// (A validation is a job like a step.)
pub fn resume_of(after: After) -> Option<u32> {
    match after {
        After::Step(n) | After::Validate(n) => Some(n),
        After::Done | After::Exhausted => None,
    }
}

/// Goes on to `next`: a step, the validation, or the end.
fn go_on(next: After, attempt: u32) -> Option<(StageState, Vec<StageEffect>)> {
    match next {
        After::Done => Some(succeeded()),
        next => step_again(next, attempt),
    }
}

/// Queues `next` (a step or the validation) as attempt `attempt`; a stage
/// that is done or exhausted has nothing to queue.
fn step_again(next: After, attempt: u32) -> Option<(StageState, Vec<StageEffect>)> {
    match next {
        After::Step(step) => Some((
            StageState::Queued,
            vec![StageEffect::EnqueueStep { step, attempt }],
        )),
        After::Validate(step) => Some((
            StageState::Validating,
            vec![StageEffect::EnqueueStep { step, attempt }],
        )),
        After::Done | After::Exhausted => None,
    }
}

mod conditions;
mod jobs;
mod log;
mod marks;

pub use conditions::{
    condition_holds, need_ended, need_result, needs_status, parse_stage_condition, NeedEnded,
};
pub use jobs::*;
pub use log::{
    Actor, AgentState, CheckpointState, Entity, LeaseState, StageKey, State, Transition,
};
pub use marks::{holds_for_pause, stage_marks, StageMarks};
