//! Whether an agent is lost, kept in the transition log rather than in a
//! column: an agent that stops heartbeating gets one `online -> lost`
//! transition saying how long it has been silent and how many of its
//! leases expired, and one `lost -> online` when it is heard from again.
//! `list_agents` still judges `online` from the heartbeat's age alone; these
//! rows record when that judgement changed, and why.

use crate::db::{params, Optional};
use orchestrator_core::machine::AgentState;
use orchestrator_core::Actor;
use orchestrator_core::AgentId;
use orchestrator_core::Entity;

use super::tx::Ctx;
use crate::Result;

/// The agent's last presence transition and when it was written: agent rows
/// carry no run, so the `run_id IS NULL` part of the run index finds them.
fn last_presence(ctx: &Ctx<'_>, agent_id: &AgentId) -> Result<Option<(String, i64)>> {
    Ok(ctx
        .conn
        .prepare_cached(
            "SELECT to_state, at FROM transitions
             WHERE run_id IS NULL AND entity = ?1 AND entity_id = ?2
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![Entity::Agent.as_str(), agent_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
}

fn seconds(ms: i64) -> String {
    format!("{:.1} s", ms.max(0) as f64 / 1000.0)
}

/// Marks lost every agent not heard from within `online_ms` of `now` (the
/// same rule as `list_agents`) that is not marked lost already. Returns how
/// many were marked.
pub fn mark_lost(ctx: &mut Ctx<'_>, now: i64, online_ms: u64) -> Result<usize> {
    let cutoff = now.saturating_sub(i64::try_from(online_ms).unwrap_or(i64::MAX));
    let silent: Vec<(AgentId, i64)> = ctx
        .conn
        .prepare_cached("SELECT id, last_seen_at FROM agents WHERE last_seen_at < ?1")?
        .query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::db::Result<_>>()?;
    let mut marked = 0;
    for (agent_id, last_seen) in silent {
        if matches!(last_presence(ctx, &agent_id)?, Some((state, _)) if state == AgentState::Lost.as_str())
        {
            continue;
        }
        // A lease the agent held at its last heartbeat ran at least until
        // then; one that expired after it was lost with the agent.
        let expired: i64 = ctx
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM leases WHERE agent_id = ?1 AND state = 'expired' AND expires_at > ?2",
            )?
            .query_row(params![agent_id, last_seen], |r| r.get(0))?;
        let reason = format!(
            "no heartbeat for {} (agents heard from within {} are online); {expired} of its leases expired since",
            seconds(now - last_seen),
            seconds(i64::try_from(online_ms).unwrap_or(i64::MAX)),
        );
        ctx.transition(
            agent_id.to_string(),
            None,
            Some(AgentState::Online),
            AgentState::Lost,
            reason,
            &Actor::Reaper,
        )?;
        marked += 1;
    }
    Ok(marked)
}

/// Records that a lost agent was heard from again (`how`: a heartbeat, a
/// registration); nothing for an agent that was not marked lost.
pub fn heard_from(ctx: &mut Ctx<'_>, agent_id: &AgentId, how: &str) -> Result<()> {
    let Some((state, lost_at)) = last_presence(ctx, agent_id)? else {
        return Ok(());
    };
    if state != AgentState::Lost.as_str() {
        return Ok(());
    }
    let reason = format!("{how} after {} marked lost", seconds(ctx.now - lost_at));
    ctx.transition(
        agent_id.to_string(),
        None,
        Some(AgentState::Lost),
        AgentState::Online,
        reason,
        &Actor::agent(agent_id.clone()),
    )
}
