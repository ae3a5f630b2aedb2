//! Claiming a job: the agent's free capacity, the job placement picks for
//! it, a new lease with its token, the stage pinned to the agent; and a
//! claim asked again (its answer lost) handed the same job.

use crate::db::{params, Optional};
use orchestrator_core::api::{ClaimedJob, JobSpec};
use orchestrator_core::machine::LeaseState;
use orchestrator_core::machine::{job_on, JobEffect, JobEvent, StageEvent};
use orchestrator_core::sched::{free, Free, Grant};
use orchestrator_core::Actor;
use orchestrator_core::JobState;
use orchestrator_core::{AgentId, JobId, LeaseId, RunId};
use orchestrator_host::ids;

use super::common::conflict;
use super::stage::stage_event;
use super::tx::Ctx;
use super::{placement, preempt};
use crate::{Result, StoreError};

pub fn claim(
    ctx: &mut Ctx<'_>,
    agent_id: &AgentId,
    lease_ttl_ms: u64,
    key: Option<&str>,
) -> Result<Option<ClaimedJob>> {
    if let Some(key) = key {
        if let Some(job) = claimed_before(ctx, agent_id, key, lease_ttl_ms)? {
            return Ok(Some(job));
        }
    }
    let Some(cap) = placement::capacity(ctx.conn, ctx.rules, agent_id)? else {
        return Err(StoreError::NotFound {
            what: "agent",
            id: agent_id.to_string(),
        });
    };
    // A claim that finds nothing writes nothing, so an idle agent's
    // long-poll costs no commit; heartbeats keep `last_seen_at`.
    let free = free(&cap, placement::held(ctx.conn, agent_id)?.iter());
    if free.slots == 0 {
        return Ok(None);
    }
    let Some((job_id, grant)) = placement::pick(ctx, agent_id, &cap, &free)? else {
        return Ok(None);
    };
    let (payload, queued_at_ms): (String, i64) = ctx
        .conn
        .prepare_cached("SELECT payload, created_at FROM jobs WHERE id = ?1")?
        .query_row([job_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let spec: JobSpec = serde_json::from_str(&payload)
        .map_err(|e| StoreError::corrupt("a job's stored spec", e))?;
    ctx.conn
        .prepare_cached("UPDATE agents SET last_seen_at = ?2 WHERE id = ?1")?
        .execute(params![agent_id, ctx.now])?;
    super::agents::heard_from(ctx, agent_id, "claim")?;
    let (to, effects) = job_on(JobState::Queued, JobEvent::Lease).map_err(conflict)?;
    if effects != [JobEffect::GrantLease] {
        return Err(conflict(format!(
            "job {job_id}: leasing it grants no lease"
        )));
    }
    let token = ids::new_secret();
    let expires = ctx.now + lease_ttl_ms as i64;
    let lease_id: LeaseId = ctx.conn
        .prepare_cached(
            "INSERT INTO leases (job_id, agent_id, token, state, expires_at, created_at, claim_key) VALUES (?1, ?2, ?3, 'active', ?4, ?5, ?6) RETURNING id",
        )?
        .query_row(params![job_id, agent_id, token, expires, ctx.now, key], |r| r.get(0))?;
    let actor = Actor::agent(agent_id.clone());
    ctx.transition(
        lease_id.to_string(),
        Some(&spec.run_id),
        None,
        LeaseState::Active,
        format!("job {job_id} leased to agent {agent_id} for {lease_ttl_ms} ms"),
        &actor,
    )?;
    ctx.conn
        .prepare_cached("UPDATE jobs SET state = ?2, agent_id = ?3, lease_id = ?4, started_at = ?5, granted = ?6 WHERE id = ?1")?
        .execute(params![job_id, to.as_str(), agent_id, lease_id, ctx.now, grant_text(&grant)])?;
    ctx.transition(
        job_id.to_string(),
        Some(&spec.run_id),
        Some(JobState::Queued),
        to,
        format!("claimed by agent {agent_id}"),
        &actor,
    )?;
    pin(ctx, &spec.run_id, &spec.stage_id, agent_id, &grant, &free)?;
    stage_event(
        ctx,
        &spec.run_id,
        &spec.stage_id,
        StageEvent::Started,
        format!("step {} running on agent {agent_id}", spec.step),
        &actor,
    )?;
    preempt::release_yielders(ctx, job_id, &format!("on agent {agent_id}"))?;
    Ok(Some(ClaimedJob {
        job_id,
        lease_id,
        lease_token: token,
        queued_at_ms,
        lease_expires_at_ms: expires,
        grant,
        spec,
    }))
}

/// The job a claim named `key` already leased this agent, handed out again
/// (its lease extended) because the agent asks again: the first answer
/// never reached it. Nothing is recorded; the lease is the one it was.
fn claimed_before(
    ctx: &mut Ctx<'_>,
    agent_id: &AgentId,
    key: &str,
    lease_ttl_ms: u64,
) -> Result<Option<ClaimedJob>> {
    type Row = (LeaseId, JobId, String, String, i64, Option<String>);
    let row: Option<Row> = ctx
        .conn
        .prepare_cached(
            "SELECT l.id, l.job_id, l.token, j.payload, j.created_at, j.granted
             FROM leases l JOIN jobs j ON j.id = l.job_id AND j.lease_id = l.id
             WHERE l.agent_id = ?1 AND l.state = 'active' AND l.claim_key = ?2 AND j.state = 'leased'",
        )?
        .query_row(params![agent_id, key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })
        .optional()?;
    let Some((lease_id, job_id, token, payload, queued_at_ms, granted)) = row else {
        return Ok(None);
    };
    let spec: JobSpec = serde_json::from_str(&payload)
        .map_err(|e| StoreError::corrupt("a job's stored spec", e))?;
    let expires = ctx.now + lease_ttl_ms as i64;
    ctx.conn
        .prepare_cached("UPDATE leases SET expires_at = MAX(expires_at, ?2) WHERE id = ?1")?
        .execute(params![lease_id, expires])?;
    tracing::info!(
        %agent_id,
        %job_id,
        "claim asked again after its answer was lost; the same job handed out"
    );
    Ok(Some(ClaimedJob {
        job_id,
        lease_id,
        lease_token: token,
        queued_at_ms,
        lease_expires_at_ms: expires,
        grant: placement::parse_grant(granted.as_deref()),
        spec,
    }))
}

fn grant_text(g: &Grant) -> Option<String> {
    (g != &Grant::default()).then(|| serde_json::to_string(g).unwrap_or_default())
}

/// Pins a stage to the agent that runs its first step (its worktree will
/// be there) and records why it was placed there.
fn pin(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    agent_id: &AgentId,
    grant: &Grant,
    before: &Free,
) -> Result<()> {
    let gpus = match grant.gpus.as_slice() {
        [] => String::new(),
        g => format!(
            ", GPU {}",
            g.iter()
                .map(|x| x.index.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    let why = format!("placed on agent {agent_id}{gpus}: it fit ({before} before)");
    ctx.conn
        .prepare_cached(
            "UPDATE stage_runs SET agent_id = ?3, placement = ?4
             WHERE run_id = ?1 AND stage_id = ?2 AND agent_id IS NULL",
        )?
        .execute(params![run_id, stage_id, agent_id, why])?;
    Ok(())
}
