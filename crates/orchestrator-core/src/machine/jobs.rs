//! The job and run machines.

use super::{reject, JobState, RejectedTransition, RunState};

/// What happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    /// An agent claimed it and got a lease.
    Lease,
    /// The agent completed it: all commands exited 0.
    Succeed,
    /// The agent completed it with a failure.
    Fail,
    /// Its lease ran out.
    Expire,
    /// Its run was cancelled.
    Cancel,
}

/// How a lease ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// Its job was completed under it.
    Released,
    /// Its time ran out, or its agent came back as a new process.
    Expired,
    /// Its job was cancelled.
    Revoked,
}

impl LeaseEnd {
    /// The lease's state name in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseEnd::Released => "released",
            LeaseEnd::Expired => "expired",
            LeaseEnd::Revoked => "revoked",
        }
    }
}

/// What the store must do after a job transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEffect {
    /// Give the claiming agent a lease on the job.
    GrantLease,
    /// End the job's live lease this way.
    EndLease(LeaseEnd),
}

/// The job machine. A job holds a lease exactly while it is `leased`, so every
/// way into that state grants one and every way out of it ends one.
pub fn job_on(s: JobState, e: JobEvent) -> Result<(JobState, Vec<JobEffect>), RejectedTransition> {
    use JobEffect as F;
    use JobEvent as E;
    use JobState as S;
    Ok(match (s, e) {
        (S::Queued, E::Lease) => (S::Leased, vec![F::GrantLease]),
        (S::Leased, E::Succeed) => (S::Succeeded, vec![F::EndLease(LeaseEnd::Released)]),
        (S::Leased, E::Fail) => (S::Failed, vec![F::EndLease(LeaseEnd::Released)]),
        (S::Leased, E::Expire) => (S::Expired, vec![F::EndLease(LeaseEnd::Expired)]),
        (S::Leased, E::Cancel) => (S::Cancelled, vec![F::EndLease(LeaseEnd::Revoked)]),
        (S::Queued, E::Cancel) => (S::Cancelled, vec![]),
        (s, e) => return Err(reject("job", s, e)),
    })
}

/// What happens to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEvent {
    /// A stage ended; `open` stages have not ended yet, `unsuccessful` ended
    /// without success (failed, blocked or cancelled).
    StageEnded { open: usize, unsuccessful: usize },
    /// A human cancelled the run.
    Cancel,
    /// A human paused the run.
    Pause,
    /// A human resumed the paused run.
    Resume,
    /// Its project has room for it under `max_parallel_runs`.
    Admit,
    /// A human aborted the run: it ends failed.
    Abort,
}

/// What the store must do after a run transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEffect {
    /// The run ended: record when, and let go of what it held.
    Ended,
    /// Cancel every stage that has not ended.
    CancelStages,
    /// Hold every stage that is at a checkpoint (queued).
    PauseStages,
    /// Queue again every held stage, and let runnable stages start.
    ResumeStages,
    /// Let the run's runnable stages start.
    Schedule,
    /// End every stage awaiting a decision as failed.
    AbortStages,
}

/// The run machine. A `StageEnded` that leaves stages open keeps the run running.
pub fn run_on(s: RunState, e: RunEvent) -> Result<(RunState, Vec<RunEffect>), RejectedTransition> {
    let to = run_next(s, e)?;
    let mut effects = Vec::new();
    match e {
        RunEvent::Cancel => effects.push(RunEffect::CancelStages),
        RunEvent::Pause => effects.push(RunEffect::PauseStages),
        RunEvent::Resume => effects.push(RunEffect::ResumeStages),
        RunEvent::Admit => effects.push(RunEffect::Schedule),
        RunEvent::Abort => effects.extend([RunEffect::AbortStages, RunEffect::CancelStages]),
        RunEvent::StageEnded { .. } => {}
    }
    if to.is_terminal() {
        effects.push(RunEffect::Ended);
    }
    Ok((to, effects))
}

fn run_next(s: RunState, e: RunEvent) -> Result<RunState, RejectedTransition> {
    use RunEvent as E;
    use RunState as S;
    Ok(match (s, e) {
        // A paused run stays paused while stages are open; it ends like a
        // running one when the last stage ends.
        (S::Running | S::Paused, E::StageEnded { open, .. }) if open > 0 => s,
        (
            S::Running | S::Paused,
            E::StageEnded {
                unsuccessful: 0, ..
            },
        ) => S::Succeeded,
        (S::Running | S::Paused, E::StageEnded { .. }) => S::Failed,
        (S::Running | S::Paused | S::Queued, E::Cancel) => S::Cancelled,
        (S::Running | S::Paused | S::Queued, E::Abort) => S::Failed,
        (S::Queued, E::Admit) => S::Running,
        (S::Running, E::Pause) => S::Paused,
        (S::Paused, E::Resume) => S::Running,
        (s, e) => return Err(reject("run", s, e)),
    })
}
