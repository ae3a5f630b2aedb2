//! Policy in the store: admitting runs under their project's
//! `max_parallel_runs`, holding runnable stages under `max_parallel_stages`
//! and the project's quotas, and giving each queued job its fair queue key.
//! The rules themselves are the core's; this applies them to the rows.

use crate::db::params;
use orchestrator_core::machine::RunEvent;
use orchestrator_core::sched::{queue_key, quota_allows, Limits, Needs, Usage};
use orchestrator_core::Actor;
use orchestrator_core::RunId;

use super::common::conflict;
use super::run::run_command;
use super::tx::Ctx;
use crate::{Result, StoreError};

/// Runs of a project that count against `max_parallel_runs`.
pub(super) fn active_runs(ctx: &Ctx<'_>, project_dir: &str) -> Result<u32> {
    count_active(ctx.conn, project_dir)
}

pub(super) fn count_active(conn: &crate::db::Conn, project_dir: &str) -> Result<u32> {
    Ok(conn
        .prepare_cached(
            "SELECT COUNT(*) FROM runs WHERE project_dir = ?1 AND state IN ('running', 'paused')",
        )?
        .query_row([project_dir], |r| r.get(0))?)
}

/// Why a new run of a project with `active` runs must wait, if it must.
pub(super) fn admission(limits: &Limits, active: u32, project_dir: &str) -> Option<String> {
    let l = limits.max_parallel_runs?;
    (u64::from(active) >= l.value).then(|| {
        format!(
            "queued: project {project_dir} already runs {active} runs; max_parallel_runs is {l}"
        )
    })
}

pub(super) fn parse_limits(text: Option<&str>) -> Limits {
    // Runs written before limits were recorded have none.
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// Admits queued runs of `project_dir`, best first, while its limit allows.
pub(super) fn admit(ctx: &mut Ctx<'_>, project_dir: &str) -> Result<()> {
    let queued: Vec<(RunId, Option<String>)> = ctx
        .conn
        .prepare_cached(
            "SELECT id, limits FROM runs WHERE project_dir = ?1 AND state = 'queued'
             ORDER BY priority DESC, created_at, id",
        )?
        .query_map([project_dir], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::db::Result<_>>()?;
    for (run_id, limits) in queued {
        let active = active_runs(ctx, project_dir)?;
        if admission(&parse_limits(limits.as_deref()), active, project_dir).is_some() {
            break;
        }
        ctx.conn
            .prepare_cached("UPDATE runs SET hold = NULL WHERE id = ?1")?
            .execute([&run_id])?;
        run_command(
            ctx,
            &run_id,
            RunEvent::Admit,
            format!("admitted: project {project_dir} has room ({active} runs running)"),
            &Actor::Scheduler,
        )?;
    }
    Ok(())
}

/// Why a runnable stage of `run_id` must wait under its run's limits, if it must.
pub(super) fn stage_hold(
    ctx: &Ctx<'_>,
    run_id: &RunId,
    project_dir: &str,
    limits: &Limits,
    needs: &Needs,
) -> Result<Option<String>> {
    if let Some(l) = limits.max_parallel_stages {
        let open: i64 = ctx
            .conn
            .prepare_cached(
                // A stage whose step waits inside for an answer still runs.
                "SELECT COUNT(*) FROM stage_runs s WHERE s.run_id = ?1
                 AND (s.state IN ('queued', 'running', 'suspended')
                      OR (s.state = 'awaiting_input' AND EXISTS (SELECT 1 FROM jobs j
                          WHERE j.run_id = s.run_id AND j.stage_id = s.stage_id AND j.state = 'leased')))",
            )?
            .query_row([run_id], |r| r.get(0))?;
        if open.max(0) as u64 >= l.value {
            return Ok(Some(format!(
                "held: {open} stages of this run are queued or running; max_parallel_stages is {l}"
            )));
        }
    }
    if limits.quota_slots.is_some()
        || limits.quota_memory_mb.is_some()
        || limits.quota_gpus.is_some()
    {
        let used = project_usage(ctx, project_dir)?;
        if let Err(why) = quota_allows(limits, used, needs) {
            return Ok(Some(format!("held: {why}")));
        }
    }
    Ok(None)
}

/// What a project's queued and running steps hold.
pub(super) fn project_usage(ctx: &Ctx<'_>, project_dir: &str) -> Result<Usage> {
    let (slots, memory, gpus): (i64, i64, i64) = ctx
        .conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(json_extract(s.needs, '$.memory_mb')), 0),
                    COALESCE(SUM(json_extract(s.needs, '$.gpus')), 0)
             FROM runs r JOIN jobs j ON j.run_id = r.id JOIN shapes s ON s.id = j.shape
             WHERE r.project_dir = ?1 AND r.state IN ('running', 'paused')
               AND j.state IN ('queued', 'leased')",
        )?
        .query_row([project_dir], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(Usage {
        slots: slots.max(0) as u64,
        memory_mb: memory.max(0) as u64,
        gpus: gpus.max(0) as u64,
    })
}

/// Records (or clears) why a runnable stage waits; writes only on change.
pub(super) fn set_stage_hold(
    ctx: &Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    hold: Option<&str>,
) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "UPDATE stage_runs SET hold = ?3 WHERE run_id = ?1 AND stage_id = ?2 AND hold IS NOT ?3",
        )?
        .execute(params![run_id, stage_id, hold])?;
    Ok(())
}

/// The queue key of a job of `run_id` queued now, moving the run's clock on.
pub(super) fn next_key(
    ctx: &Ctx<'_>,
    run_id: &RunId,
    project_dir: &str,
    priority: i32,
) -> Result<i64> {
    let clock: i64 = ctx
        .conn
        .prepare_cached("SELECT clock FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| r.get(0))
        .map_err(|e| match e {
            crate::db::Error::NoRows => conflict(format!("run {run_id} not found")),
            e => StoreError::from(e),
        })?;
    let runs = active_runs(ctx, project_dir)?;
    let (key, clock) = queue_key(ctx.now, clock, priority, runs, ctx.rules.aging.as_millis());
    ctx.conn
        .prepare_cached("UPDATE runs SET clock = ?2 WHERE id = ?1")?
        .execute(params![run_id, clock])?;
    Ok(key)
}
