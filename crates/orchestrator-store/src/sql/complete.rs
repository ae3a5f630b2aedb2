//! Completing a job: only its holder under its live lease, once (the same
//! completion again is acknowledged, a stale one refused and recorded);
//! the job's outcome becomes a stage event (a step succeeded, failed, or
//! its attempt was lost), a checkpoint may yield to a pre-empting job, and
//! the agent may be handed its next job in the same command.

use crate::db::{params, Optional};
use orchestrator_core::api::{CompleteRequest, Completed};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::machine::{After, Gate, JobEvent, LeaseEnd, StageEvent};
use orchestrator_core::Actor;
use orchestrator_core::{AgentId, JobId, LeaseId, RunId};
use orchestrator_core::{JobState, RunState, StageState};

use super::claim::claim;
use super::job::{job_event, JobRef};
use super::retry::{failure_policy, what_follows};
use super::schedule::schedule;
use super::stage::stage_event;
use super::tx::Ctx;
use super::{human, loops, placement, preempt};
use crate::{Result, StoreError};

/// A job with its current lease, as a completion checks it.
struct JobLease {
    run_id: RunId,
    stage_id: String,
    state: String,
    step: u32,
    attempt: u32,
    holder: Option<AgentId>,
    lease_id: Option<LeaseId>,
    token: Option<String>,
    lease_state: Option<String>,
}

/// What a completion came to. A refusal is an outcome, not an error: it is
/// recorded as a transition, so its command must commit.
#[derive(Debug)]
pub enum Completion {
    /// Recorded now, or recorded before and acknowledged again.
    Recorded(Box<Completed>),
    /// No such job.
    UnknownJob,
    /// The sender does not hold the job's live lease; why, in words.
    Refused(String),
}

impl Completion {
    /// The caller's answer: a refusal becomes the error it is to the agent.
    pub fn into_result(self, job_id: JobId) -> Result<Completed> {
        match self {
            Completion::Recorded(c) => Ok(*c),
            Completion::UnknownJob => Err(StoreError::NotFound {
                what: "job",
                id: job_id.to_string(),
            }),
            Completion::Refused(reason) => Err(StoreError::StaleLease { job_id, reason }),
        }
    }
}

/// Completes a job. An error rolls the command back; a refusal commits.
pub fn complete(
    ctx: &mut Ctx<'_>,
    job_id: JobId,
    mut req: CompleteRequest,
    lease_ttl_ms: u64,
) -> Result<Completion> {
    let row = ctx
        .conn
        .prepare_cached(
            "SELECT j.run_id, j.stage_id, j.state, j.step, j.attempt, j.agent_id, j.lease_id, l.token, l.state
             FROM jobs j LEFT JOIN leases l ON l.id = j.lease_id WHERE j.id = ?1",
        )?
        .query_row([job_id], |r| {
            Ok(JobLease {
                run_id: r.get(0)?,
                stage_id: r.get(1)?,
                state: r.get(2)?,
                step: r.get(3)?,
                attempt: r.get(4)?,
                holder: r.get(5)?,
                lease_id: r.get(6)?,
                token: r.get(7)?,
                lease_state: r.get(8)?,
            })
        })
        .optional()?;
    let Some(JobLease {
        run_id,
        stage_id,
        state,
        step,
        attempt,
        holder,
        lease_id,
        token,
        lease_state,
    }) = row
    else {
        return Ok(Completion::UnknownJob);
    };
    let actor = Actor::agent(req.agent_id.clone());
    let from = JobState::parse(&state).unwrap_or(JobState::Failed);
    // The same completion again, from the holder under the same token: the
    // first was recorded (a lease is released only by its completion) and
    // its answer lost. Acknowledged again, with the job it leased.
    if holder.as_ref() == Some(&req.agent_id)
        && token.as_deref() == Some(req.lease_token.as_str())
        && lease_state.as_deref() == Some(LeaseEnd::Released.as_str())
    {
        return completed_before(ctx, job_id, &run_id, &stage_id, &req, lease_ttl_ms)
            .map(|c| Completion::Recorded(Box::new(c)));
    }
    let refusal = if holder.as_ref() != Some(&req.agent_id) {
        Some(format!("agent {} does not hold job {job_id}", req.agent_id))
    } else if token.as_deref() != Some(req.lease_token.as_str()) {
        Some("the lease token is not the job's current lease".to_owned())
    } else if lease_state.as_deref() != Some("active") || from != JobState::Leased {
        Some(format!(
            "the lease is {} and the job is {from}; a late completion is not recorded",
            lease_state.as_deref().unwrap_or("missing")
        ))
    } else {
        None
    };
    if let Some(reason) = refusal {
        ctx.transition(
            job_id.to_string(),
            Some(&run_id),
            Some(from),
            from,
            format!("completion refused: {reason}"),
            &actor,
        )?;
        return Ok(Completion::Refused(reason));
    }
    if req.outcome.success {
        let refused =
            super::outputs::refused(ctx.conn, &run_id, &stage_id, step, &req.outcome.outputs)?;
        if let Some(why) = refused {
            let o = &mut req.outcome;
            o.success = false;
            o.error = Some(why);
            o.error_class = Some(ErrorClass::Task);
            o.checkpoint = None;
            o.until_met = None;
            o.questions.clear();
            o.outputs.clear();
        }
    }
    let o = &req.outcome;
    let exit_codes = crate::error::encode("exit codes", &o.exit_codes)?;
    ctx.conn
        .prepare_cached("UPDATE jobs SET exit_codes = ?2, error = ?3, error_class = ?4, bundle = ?5, sandbox = ?6, log_tail = ?7 WHERE id = ?1")?
        .execute(params![job_id, exit_codes, o.error, o.error_class.map(|c| c.as_str()), o.bundle, o.sandbox.map(|k| k.as_str()), o.log_tail.as_deref().map(orchestrator_core::feedback::tail)])?;
    let reason = match (&o.error, o.success) {
        (_, true) => format!("step {step} succeeded in {} ms", o.duration_ms),
        (Some(e), false) => e.clone(),
        (None, false) => "step failed".to_owned(),
    };
    let event = if o.success {
        JobEvent::Succeed
    } else {
        JobEvent::Fail
    };
    let job = JobRef {
        id: job_id,
        run_id: &run_id,
        lease_id,
    };
    job_event(ctx, &job, from, event, reason.clone(), &actor)?;
    let class = o.error_class.unwrap_or(ErrorClass::Task);
    // Where a task failure's work would go back to, once the stage's own
    // retries are spent: what the transition says.
    let send_back = if !o.success && class == ErrorClass::Task || o.until_met == Some(false) {
        loops::send_back_plan(ctx, &run_id, &stage_id)?
    } else {
        None
    };
    let mut event = if o.success {
        human::step_succeeded(ctx, &run_id, &stage_id, job_id, step, o, &actor)?
    } else {
        let (max_attempts, ask) = failure_policy(ctx, &run_id, &stage_id, class, o.timed_out)?;
        if class == ErrorClass::Infra {
            StageEvent::AttemptLost {
                attempt,
                max_attempts,
                ask,
            }
        } else {
            StageEvent::StepFailed {
                step,
                max_attempts,
                ask,
                send_back: send_back.is_some(),
            }
        }
    };
    let follows = |max_attempts, ask, step| match &send_back {
        Some(words) if attempt >= max_attempts => words.clone(),
        _ => what_follows(attempt, max_attempts, ask, step),
    };
    let mut why = match event {
        StageEvent::Validated => format!("validation (job {job_id}) succeeded"),
        _ if o.success => format!("step {step} succeeded"),
        StageEvent::StepFailed {
            max_attempts, ask, ..
        } => format!(
            "step {step} failed ({}{}): {reason}; {}",
            class.as_str(),
            if o.timed_out { ", timeout" } else { "" },
            follows(max_attempts, ask, step)
        ),
        StageEvent::AttemptLost {
            max_attempts, ask, ..
        } => format!(
            "step {step} failed ({}): {reason}; {}",
            class.as_str(),
            what_follows(attempt, max_attempts, ask, 0)
        ),
        _ => format!("step {step} failed: {reason}"),
    };
    // A loop whose `until` still fails after its last iteration failed its
    // task: like a failed step, it is retried (its last iteration) or
    // escalated, never silently ended.
    if let StageEvent::StepSucceeded {
        after: After::Exhausted,
        gate: Gate::None | Gate::Approval,
        ..
    } = event
    {
        let (max_attempts, ask) = failure_policy(ctx, &run_id, &stage_id, ErrorClass::Task, false)?;
        let last = human::last_iteration_start(ctx, &run_id, &stage_id, step)?;
        event = StageEvent::StepFailed {
            step: last,
            max_attempts,
            ask,
            send_back: send_back.is_some(),
        };
        why = format!(
            "step {step} succeeded, but the loop's until still fails after its last iteration (task); {}",
            follows(max_attempts, ask, last)
        );
    }
    let asked_to_yield = if o.success {
        preempt::yield_request(ctx, &run_id, &stage_id)?
    } else {
        None
    };
    let mut stage_state = stage_event(ctx, &run_id, &stage_id, event, why, &actor)?;
    if let (StageState::Queued, Some((_, why))) = (stage_state, asked_to_yield) {
        let held: Option<String> = ctx
            .conn
            .prepare_cached("SELECT granted FROM jobs WHERE id = ?1")?
            .query_row([job_id], |r| r.get(0))?;
        stage_state = preempt::yield_at_checkpoint(
            ctx,
            &run_id,
            &stage_id,
            &placement::parse_grant(held.as_deref()),
            &why,
            &actor,
        )?;
    }
    let run_state: String = ctx
        .conn
        .prepare_cached("SELECT state FROM runs WHERE id = ?1")?
        .query_row([&run_id], |r| r.get(0))?;
    let next = if req.claim_next {
        // Stages this completion released are queued first, so the agent
        // can be handed one of them at once.
        if ctx.schedule {
            schedule(ctx)?;
        }
        claim(ctx, &req.agent_id, lease_ttl_ms, req.claim_key.as_deref())?
    } else {
        None
    };
    Ok(Completion::Recorded(Box::new(Completed {
        job_id,
        stage_state,
        run_state: RunState::parse(&run_state).unwrap_or(RunState::Running),
        next,
        again: false,
    })))
}

/// The answer to a completion asked again: the stage and run as they are
/// now and, when asked for, the next job the first completion leased (or
/// one leased now, if it found none).
fn completed_before(
    ctx: &mut Ctx<'_>,
    job_id: JobId,
    run_id: &RunId,
    stage_id: &str,
    req: &CompleteRequest,
    lease_ttl_ms: u64,
) -> Result<Completed> {
    let stage: String = ctx
        .conn
        .prepare_cached("SELECT state FROM stage_runs WHERE run_id = ?1 AND stage_id = ?2")?
        .query_row(params![run_id, stage_id], |r| r.get(0))?;
    let run: String = ctx
        .conn
        .prepare_cached("SELECT state FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| r.get(0))?;
    tracing::info!(%job_id, agent_id = %req.agent_id, "completion sent again after its answer was lost; acknowledged again");
    let next = if req.claim_next {
        claim(ctx, &req.agent_id, lease_ttl_ms, req.claim_key.as_deref())?
    } else {
        None
    };
    Ok(Completed {
        job_id,
        stage_state: StageState::parse(&stage).unwrap_or(StageState::Running),
        run_state: RunState::parse(&run).unwrap_or(RunState::Running),
        next,
        again: true,
    })
}
