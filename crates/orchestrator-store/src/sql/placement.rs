//! Placement at claim time: what an agent has free, and which queued job it
//! gets. The queue is split into shapes (needs, pinned agent, high
//! priority); the agent looks at the head of every shape it could run and
//! takes the lowest queue key, so a claim costs O(shapes * log n).
//!
//! Capacity freed by stages that yielded is reserved for the work they
//! yielded to until that work is placed: only it may take it.

use crate::db::{params, Conn, Optional};
use orchestrator_core::sched::{fit, Capacity, Free, Gpu, Grant, Needs};
use orchestrator_core::{AgentId, JobId};

use super::tx::Ctx;
use crate::{Result, StoreError};

/// An agent's capacity (slots capped by the system rules), or None when
/// the agent is unknown.
pub(super) fn capacity(
    conn: &Conn,
    rules: &orchestrator_core::sched::SystemRules,
    agent_id: &AgentId,
) -> Result<Option<Capacity>> {
    let row: Option<(String, u32, i64, String)> = conn
        .prepare_cached("SELECT labels, slots, memory_mb, gpus FROM agents WHERE id = ?1")?
        .query_row([agent_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((labels, slots, memory_mb, gpus)) = row else {
        return Ok(None);
    };
    Ok(Some(Capacity {
        slots: rules.agent_slots(slots),
        memory_mb: memory_mb.max(0) as u64,
        gpus: serde_json::from_str::<Vec<Gpu>>(&gpus)
            .map_err(|e| StoreError::corrupt(format!("agent {agent_id}: stored GPUs"), e))?,
        labels: serde_json::from_str(&labels)
            .map_err(|e| StoreError::corrupt(format!("agent {agent_id}: stored labels"), e))?,
    }))
}

/// What the agent's live jobs hold.
pub(super) fn held(conn: &Conn, agent_id: &AgentId) -> Result<Vec<Grant>> {
    let rows: Vec<Option<String>> = conn
        .prepare_cached(
            "SELECT j.granted FROM leases l JOIN jobs j ON j.id = l.job_id
             WHERE l.agent_id = ?1 AND l.state = 'active'",
        )?
        .query_map([agent_id], |r| r.get(0))?
        .collect::<crate::db::Result<_>>()?;
    Ok(rows
        .into_iter()
        .map(|g| parse_grant(g.as_deref()))
        .collect())
}

pub(super) fn parse_grant(g: Option<&str>) -> Grant {
    // A job leased before grants were recorded holds one slot and nothing else.
    g.and_then(|g| serde_json::from_str(g).ok())
        .unwrap_or_default()
}

/// Capacity kept for the work suspended stages on this agent yielded to:
/// (the job it is kept for, what is kept).
pub(super) fn reservations(conn: &Conn, agent_id: &AgentId) -> Result<Vec<(JobId, Grant)>> {
    let rows: Vec<(JobId, Option<String>)> = conn
        .prepare_cached(
            "SELECT yield_job, reserved FROM stage_runs
             WHERE agent_id = ?1 AND state = 'suspended' AND yield_job IS NOT NULL
             ORDER BY yield_job",
        )?
        .query_map([agent_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::db::Result<_>>()?;
    Ok(rows
        .into_iter()
        .map(|(j, g)| (j, parse_grant(g.as_deref())))
        .collect())
}

/// The needs of a shape.
fn shape_needs(conn: &Conn, shape: i64) -> Result<Needs> {
    let text: String = conn
        .prepare_cached("SELECT needs FROM shapes WHERE id = ?1")?
        .query_row([shape], |r| r.get(0))?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::corrupt(format!("shape {shape}: stored needs"), e))
}

/// The shape of (needs, pinned agent, high priority), created on first use.
pub(super) fn shape_id(ctx: &Ctx<'_>, needs: &Needs, pin: &str, high: bool) -> Result<i64> {
    let key = needs.key();
    let found: Option<i64> = ctx
        .conn
        .prepare_cached("SELECT id FROM shapes WHERE pin = ?1 AND needs = ?2 AND high = ?3")?
        .query_row(params![pin, key, high], |r| r.get(0))
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    Ok(ctx
        .conn
        .prepare_cached("INSERT INTO shapes (needs, pin, high) VALUES (?1, ?2, ?3) RETURNING id")?
        .query_row(params![key, pin, high], |r| r.get(0))?)
}

/// The job `agent_id` should run next and what it gets, if any fits.
pub(super) fn pick(
    ctx: &Ctx<'_>,
    agent_id: &AgentId,
    cap: &Capacity,
    free_now: &Free,
) -> Result<Option<(JobId, Grant)>> {
    let reserved = reservations(ctx.conn, agent_id)?;
    // First the work that stages here yielded to: it may use what they freed.
    let mut waited_for: Vec<JobId> = reserved.iter().map(|(j, _)| *j).collect();
    waited_for.dedup();
    for w in &waited_for {
        let job: Option<(i64, String)> = ctx
            .conn
            .prepare_cached(
                "SELECT j.shape, s.pin FROM jobs j JOIN shapes s ON s.id = j.shape
                 WHERE j.id = ?1 AND j.state = 'queued'",
            )?
            .query_row([w], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((shape, pin)) = job else { continue };
        if !pin.is_empty() && pin != *agent_id {
            continue;
        }
        let mut f = free_now.clone();
        for (other, g) in &reserved {
            if other != w {
                f.take(g);
            }
        }
        if let Ok(g) = fit(&shape_needs(ctx.conn, shape)?, &cap.labels, &f) {
            return Ok(Some((*w, g)));
        }
    }
    let mut f = free_now.clone();
    for (_, g) in &reserved {
        f.take(g);
    }
    if f.slots == 0 {
        return Ok(None);
    }
    let shapes: Vec<(i64, String, bool)> = ctx
        .conn
        .prepare_cached("SELECT id, needs, high FROM shapes WHERE pin = '' OR pin = ?1")?
        .query_map([agent_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<crate::db::Result<_>>()?;
    let mut best: Option<((i64, JobId), Grant)> = None;
    let mut head = ctx.conn.prepare_cached(
        "SELECT queue_key, id FROM jobs WHERE shape = ?1 AND state = 'queued'
         ORDER BY queue_key, id LIMIT 1",
    )?;
    for (shape, needs, high) in shapes {
        let needs: Needs = serde_json::from_str(&needs)
            .map_err(|e| StoreError::corrupt("a shape's stored needs", e))?;
        let Ok(grant) = fit(&needs, &cap.labels, &f) else {
            continue;
        };
        if !high
            && ctx
                .rules
                .reserve_allows(i32::MIN, f.slots, f.slots_total)
                .is_err()
        {
            continue;
        }
        let top: Option<(i64, JobId)> = head
            .query_row([shape], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some(k) = top {
            if best.as_ref().is_none_or(|(b, _)| k < *b) {
                best = Some((k, grant));
            }
        }
    }
    Ok(best.map(|((_, id), g)| (id, g)))
}
