//! Model usage: the gateway's per-job totals, added to `model_usage` in
//! one command per flush, and read back per job or per run.

use orchestrator_core::{JobId, RunId};
use std::collections::BTreeMap;

use crate::db::{params, Conn};
use orchestrator_core::fabric::{Usage, UsageKey, UsageLedger, UsageSummary};

use super::tx::Ctx;
use crate::Result;

/// SQLite integers are signed; counts past i64::MAX stay at the maximum.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Adds each (job, model, usage) to its row. A job that does not exist
/// (never minted by this store) adds nothing; the count of rows that did
/// not land is returned.
pub fn record(ctx: &mut Ctx<'_>, rows: Vec<(JobId, String, Usage)>) -> Result<usize> {
    let mut stmt = ctx.conn.prepare_cached(
        "INSERT INTO model_usage (job_id, model, run_id, stage_id, requests, prompt_tokens,
             completion_tokens, queue_wait_ms, latency_ms, max_queue_wait_ms, max_latency_ms)
         SELECT id, ?2, run_id, stage_id, CAST(?3 AS BIGINT), CAST(?4 AS BIGINT), CAST(?5 AS BIGINT),
                CAST(?6 AS BIGINT), CAST(?7 AS BIGINT), CAST(?8 AS BIGINT), CAST(?9 AS BIGINT)
         FROM jobs WHERE id = ?1
         ON CONFLICT (job_id, model) DO UPDATE SET
             requests = model_usage.requests + excluded.requests,
             prompt_tokens = model_usage.prompt_tokens + excluded.prompt_tokens,
             completion_tokens = model_usage.completion_tokens + excluded.completion_tokens,
             queue_wait_ms = model_usage.queue_wait_ms + excluded.queue_wait_ms,
             latency_ms = model_usage.latency_ms + excluded.latency_ms,
             max_queue_wait_ms = MAX(model_usage.max_queue_wait_ms, excluded.max_queue_wait_ms),
             max_latency_ms = MAX(model_usage.max_latency_ms, excluded.max_latency_ms)",
    )?;
    let mut lost = 0;
    for (job, model, u) in rows {
        let n = stmt.execute(params![
            job,
            model,
            int(u.requests),
            int(u.prompt_tokens),
            int(u.completion_tokens),
            int(u.queue_wait_ms),
            int(u.latency_ms),
            int(u.max_queue_wait_ms),
            int(u.max_latency_ms),
        ])?;
        if n == 0 {
            lost += 1;
        }
    }
    Ok(lost)
}

const COLS: &str = "requests, prompt_tokens, completion_tokens, queue_wait_ms, latency_ms,
    max_queue_wait_ms, max_latency_ms";

fn usage_at(r: &crate::db::Row<'_>, at: usize) -> crate::db::Result<Usage> {
    let g = |i: usize| -> crate::db::Result<u64> { Ok(uint(r.get(at + i)?)) };
    Ok(Usage {
        requests: g(0)?,
        prompt_tokens: g(1)?,
        completion_tokens: g(2)?,
        queue_wait_ms: g(3)?,
        latency_ms: g(4)?,
        max_queue_wait_ms: g(5)?,
        max_latency_ms: g(6)?,
    })
}

/// One job's totals by model.
pub fn job(conn: &Conn, job_id: JobId) -> Result<BTreeMap<String, Usage>> {
    let sql = format!("SELECT model, {COLS} FROM model_usage WHERE job_id = ?1");
    let rows = conn
        .prepare_cached(&sql)?
        .query_map([job_id], |r| Ok((r.get::<_, String>(0)?, usage_at(r, 1)?)))?
        .collect::<crate::db::Result<_>>()?;
    Ok(rows)
}

/// A job's state and its run's id and priority, by one indexed lookup:
/// what the gateway checks of a key on every request.
pub fn job_holder(conn: &Conn, job_id: JobId) -> Result<Option<crate::JobHolder>> {
    use crate::db::Optional;
    let row = conn
        .prepare_cached(
            "SELECT j.state, j.run_id, r.priority FROM jobs j JOIN runs r ON r.id = j.run_id WHERE j.id = ?1",
        )?
        .query_row([job_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, RunId>(1)?, r.get(2)?))
        })
        .optional()?;
    Ok(row.and_then(|(state, run_id, priority)| {
        orchestrator_core::JobState::parse(&state).map(|state| crate::JobHolder {
            state,
            run_id,
            priority,
        })
    }))
}

/// One run's totals by stage and model; None when it made no model call.
pub fn run(conn: &Conn, run_id: &RunId) -> Result<Option<UsageSummary>> {
    let sql = format!("SELECT stage_id, model, {COLS} FROM model_usage WHERE run_id = ?1");
    let mut ledger = UsageLedger::default();
    let mut any = false;
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([run_id])?;
    while let Some(r) = rows.next()? {
        let key = UsageKey {
            run: run_id.clone(),
            stage: r.get(0)?,
            model: r.get(1)?,
        };
        ledger.add(key, &usage_at(&r, 2)?);
        any = true;
    }
    Ok(any.then(|| ledger.summary(run_id)))
}
