//! How a lease ends: its row's state with a transition row (released by a
//! completion, expired, revoked), and a lease lost without a completion
//! (its agent restarted, or the reaper found it expired), which fails the
//! job as infrastructure and restarts its stage from step 0. The reaper's
//! command, `expire_leases`, is here too.

use crate::db::params;
use orchestrator_core::error::ErrorClass;
use orchestrator_core::machine::LeaseState;
use orchestrator_core::machine::{JobEvent, LeaseEnd, StageEvent};
use orchestrator_core::Actor;
use orchestrator_core::JobState;
use orchestrator_core::{AgentId, JobId, LeaseId, RunId};

use super::job::{job_event, JobRef};
use super::retry::{failure_policy, what_follows};
use super::stage::stage_event;
use super::tx::Ctx;
use crate::Result;

pub(super) fn end_lease(
    ctx: &mut Ctx<'_>,
    lease_id: LeaseId,
    run_id: &RunId,
    to: LeaseEnd,
    reason: String,
    actor: &Actor,
) -> Result<()> {
    ctx.conn
        .prepare_cached("UPDATE leases SET state = ?2 WHERE id = ?1")?
        .execute(params![lease_id, to.as_str()])?;
    ctx.transition(
        lease_id.to_string(),
        Some(run_id),
        Some(LeaseState::Active),
        to.into(),
        reason,
        actor,
    )
}

/// Ends an active lease without a completion (expiry, agent restart) and
/// requeues its stage from step 0. Returns the job id.
pub(super) fn lose_lease(ctx: &mut Ctx<'_>, lease_id: LeaseId, why: &str) -> Result<JobId> {
    type Lost = (
        JobId,
        AgentId,
        RunId,
        String,
        String,
        u32,
        u32,
        Option<String>,
        Option<i64>,
    );
    let (job_id, agent_id, run_id, stage_id, state, attempt, step, host, seen): Lost = ctx
        .conn
        .prepare_cached(
            "SELECT j.id, l.agent_id, j.run_id, j.stage_id, j.state, j.attempt, j.step, a.hostname, a.last_seen_at
             FROM leases l JOIN jobs j ON j.id = l.job_id LEFT JOIN agents a ON a.id = l.agent_id
             WHERE l.id = ?1",
        )?
        .query_row([lease_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
        })?;
    // The machine is out of reach: say where the work was and when it was
    // last heard of, which is what the human reading this can act on.
    let reason = format!(
        "{why} [run {run_id}, stage {stage_id}, step {step}, attempt {attempt}, agent {agent_id} on {}; last heard from {}]",
        host.as_deref().unwrap_or("an unknown host"),
        seen.map_or("never".to_owned(), |t| format!("{} ms before", (ctx.now - t).max(0)))
    );
    let from = JobState::parse(&state).unwrap_or(JobState::Leased);
    if from != JobState::Leased {
        // The job already left this lease behind; end the lease all the same.
        end_lease(
            ctx,
            lease_id,
            &run_id,
            LeaseEnd::Expired,
            reason,
            &Actor::Reaper,
        )?;
    } else {
        ctx.conn
            .prepare_cached("UPDATE jobs SET error = ?2, error_class = 'infra' WHERE id = ?1")?
            .execute(params![job_id, reason])?;
        let job = JobRef {
            id: job_id,
            run_id: &run_id,
            lease_id: Some(lease_id),
        };
        job_event(
            ctx,
            &job,
            from,
            JobEvent::Expire,
            reason.clone(),
            &Actor::Reaper,
        )?;
        let (max_attempts, ask) =
            failure_policy(ctx, &run_id, &stage_id, ErrorClass::Infra, false)?;
        stage_event(
            ctx,
            &run_id,
            &stage_id,
            StageEvent::AttemptLost {
                attempt,
                max_attempts,
                ask,
            },
            format!(
                "attempt {attempt} of {max_attempts} lost: {reason}; {}",
                what_follows(attempt, max_attempts, ask, 0)
            ),
            &Actor::Reaper,
        )?;
    }
    Ok(job_id)
}

pub fn expire_leases(ctx: &mut Ctx<'_>, now: i64) -> Result<usize> {
    let due: Vec<(LeaseId, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT id, expires_at FROM leases WHERE state = 'active' AND expires_at <= ?1",
        )?
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::db::Result<_>>()?;
    for (lease_id, at) in &due {
        lose_lease(
            ctx,
            *lease_id,
            &format!("lease expired {} ms ago without a heartbeat", now - at),
        )?;
    }
    super::retry::due_retries(ctx, now)?;
    Ok(due.len())
}
