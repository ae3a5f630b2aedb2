//! The agent's side of the lease protocol: an agent registers (voiding the
//! leases of its earlier incarnation) and heartbeats the leases it holds;
//! a restarted daemon extends every live lease by a grace period. Claiming
//! is `claim.rs`, completing `complete.rs`, ending a lease `lease_end.rs`.

use crate::db::{params, Optional};
use orchestrator_core::api::{AgentRegistered, HeartbeatResponse, LeaseRef, RegisterAgent};
use orchestrator_core::machine::AgentState;
use orchestrator_core::machine::LeaseEnd;
use orchestrator_core::Actor;
use orchestrator_core::{AgentId, JobId, LeaseId};
use orchestrator_host::ids;

use super::common::conflict;
use super::lease_end::lose_lease;
use super::placement;
use super::tx::Ctx;
use crate::{Result, StoreError};

pub fn register_agent(
    ctx: &mut Ctx<'_>,
    reg: RegisterAgent,
    lease_ttl_ms: u64,
    heartbeat_interval_ms: u64,
) -> Result<AgentRegistered> {
    if reg.name.trim().is_empty() || reg.name.len() > 128 {
        return Err(conflict("agent name must be 1 to 128 characters"));
    }
    if reg.slots == 0 || reg.slots > 4096 {
        return Err(conflict(format!(
            "slots = {}: expected 1 to 4096",
            reg.slots
        )));
    }
    if reg.gpus.len() > 64 {
        return Err(conflict(format!(
            "{} GPUs: expected at most 64",
            reg.gpus.len()
        )));
    }
    let mut indices: Vec<u32> = reg.gpus.iter().map(|g| g.index).collect();
    indices.sort_unstable();
    indices.dedup();
    if indices.len() != reg.gpus.len() {
        return Err(conflict(
            "gpus: two GPUs share one index; expected distinct indices",
        ));
    }
    let mut labels_sorted = reg.labels.clone();
    labels_sorted.sort();
    labels_sorted.dedup();
    let labels = crate::error::encode("an agent's labels", &labels_sorted)?;
    let gpus = crate::error::encode("an agent's GPUs", &reg.gpus)?;
    let described = describe_agent(&reg);
    let mem = i64::try_from(reg.memory_mb).unwrap_or(i64::MAX);
    let existing: Option<AgentId> = ctx
        .conn
        .prepare_cached("SELECT id FROM agents WHERE name = ?1")?
        .query_row([&reg.name], |r| r.get(0))
        .optional()?;
    let agent_id = match existing {
        Some(id) => {
            ctx.conn
                .prepare_cached(
                    "UPDATE agents SET labels = ?2, slots = ?3, hostname = ?4, last_seen_at = ?5, memory_mb = ?6, gpus = ?7 WHERE id = ?1",
                )?
                .execute(params![id, labels, reg.slots, reg.hostname, ctx.now, mem, gpus])?;
            super::agents::heard_from(ctx, &id, "registered again")?;
            id
        }
        None => {
            let id = AgentId::new(ids::new_id("a"));
            ctx.conn
                .prepare_cached(
                    "INSERT INTO agents (id, name, labels, slots, hostname, registered_at, last_seen_at, memory_mb, gpus)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
                )?
                .execute(params![id, reg.name, labels, reg.slots, reg.hostname, ctx.now, mem, gpus])?;
            ctx.transition(
                id.to_string(),
                None,
                None,
                AgentState::Registered,
                described,
                &Actor::agent(id.clone()),
            )?;
            id
        }
    };
    // A registering agent holds nothing: leases of an earlier incarnation are void.
    let stale: Vec<LeaseId> = ctx
        .conn
        .prepare_cached("SELECT id FROM leases WHERE agent_id = ?1 AND state = 'active'")?
        .query_map([&agent_id], |r| r.get(0))?
        .collect::<crate::db::Result<_>>()?;
    let mut stale_jobs = Vec::new();
    for lease_id in stale {
        stale_jobs.push(lose_lease(
            ctx,
            lease_id,
            "agent registered again; leases of its earlier run are void",
        )?);
    }
    Ok(AgentRegistered {
        agent_id,
        lease_ttl_ms,
        heartbeat_interval_ms,
        stale_jobs,
    })
}

fn describe_agent(reg: &RegisterAgent) -> String {
    let mut s = format!(
        "agent {} with {} slots, {} memory",
        reg.name,
        reg.slots,
        orchestrator_core::spec::human_mib(reg.memory_mb)
    );
    for g in &reg.gpus {
        s += &format!(
            ", GPU{} {}",
            g.index,
            orchestrator_core::spec::human_mib(g.memory_mb)
        );
    }
    s += &format!(", labels [{}]", reg.labels.join(", "));
    s
}

pub fn heartbeat(
    ctx: &mut Ctx<'_>,
    agent_id: &AgentId,
    leases: Vec<LeaseRef>,
    lease_ttl_ms: u64,
) -> Result<HeartbeatResponse> {
    let n = ctx
        .conn
        .prepare_cached("UPDATE agents SET last_seen_at = ?2 WHERE id = ?1")?
        .execute(params![agent_id, ctx.now])?;
    if n == 0 {
        return Err(StoreError::NotFound {
            what: "agent",
            id: agent_id.to_string(),
        });
    }
    super::agents::heard_from(ctx, agent_id, "heartbeat")?;
    let expires = ctx.now + lease_ttl_ms as i64;
    let mut out = HeartbeatResponse {
        lease_expires_at_ms: expires,
        ..Default::default()
    };
    for l in leases {
        let lease: Option<(LeaseId, String)> = ctx
            .conn
            .prepare_cached(
                "SELECT l.id, l.state FROM jobs j JOIN leases l ON l.id = j.lease_id
                 WHERE j.id = ?1 AND l.token = ?2 AND l.agent_id = ?3",
            )?
            .query_row(params![l.job_id, l.lease_token, agent_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        match lease {
            Some((lease_id, state)) if state == "active" => {
                ctx.conn
                    .prepare_cached("UPDATE leases SET expires_at = ?2 WHERE id = ?1")?
                    .execute(params![lease_id, expires])?;
                out.extended.push(l.job_id);
            }
            // Completed by this agent while the heartbeat was on its way:
            // nothing to extend and nothing to kill.
            Some((_, state)) if state == LeaseEnd::Released.as_str() => {}
            _ => out.revoked.push(l.job_id),
        }
    }
    Ok(out)
}

pub fn resume(ctx: &mut Ctx<'_>, grace_ms: u64) -> Result<usize> {
    let n = ctx
        .conn
        .prepare_cached(
            "UPDATE leases SET expires_at = MAX(expires_at, ?1) WHERE state = 'active'",
        )?
        .execute([ctx.now + grace_ms as i64])?;
    reshape_legacy(ctx)?;
    // Anything runnable that was not queued before a crash is queued now.
    ctx.schedule = true;
    Ok(n)
}

/// Jobs queued by a version without shapes get their shape and queue key,
/// so an upgrade keeps its queue.
fn reshape_legacy(ctx: &mut Ctx<'_>) -> Result<()> {
    let legacy: Vec<(JobId, String, i32, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT id, labels, priority, created_at FROM jobs WHERE state = 'queued' AND shape IS NULL",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<crate::db::Result<_>>()?;
    for (id, labels, priority, created) in legacy {
        let mut labels: Vec<String> = serde_json::from_str(&labels).unwrap_or_default();
        labels.sort();
        labels.dedup();
        let needs = orchestrator_core::sched::Needs {
            labels,
            ..Default::default()
        };
        let shape = placement::shape_id(ctx, &needs, "", ctx.rules.is_high(priority))?;
        let (key, _) = orchestrator_core::sched::queue_key(
            created,
            created,
            priority,
            1,
            ctx.rules.aging.as_millis(),
        );
        ctx.conn
            .prepare_cached("UPDATE jobs SET shape = ?2, queue_key = ?3 WHERE id = ?1")?
            .execute(params![id, shape, key])?;
    }
    Ok(())
}
