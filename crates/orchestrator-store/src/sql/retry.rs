//! Failures the stage tries again by itself: what a stage's `retry:` and
//! `on_failure` allow after a failure, the backoff before the next attempt,
//! and starting the attempts whose backoff has passed. Run by the writer
//! inside a batch's transaction.

use crate::db::params;
use orchestrator_core::machine::StageEvent;
use orchestrator_core::Actor;
use orchestrator_core::RunId;
use orchestrator_host::ids;

use super::common::workflow;
use super::stage::stage_event;
use super::tx::Ctx;
use super::{human, steps};
use crate::Result;

/// What a stage does after a failure of `class` (`timed_out` when a command
/// ran out of time): the most attempts it gets for it (its `retry:` within
/// the system rules, or 1 when that class does not retry), and whether a
/// human is then asked.
pub(super) fn failure_policy(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    class: orchestrator_core::error::ErrorClass,
    timed_out: bool,
) -> Result<(u32, bool)> {
    let ord = human::stage_ord(ctx, run_id, stage_id)?;
    let wf = workflow(ctx, run_id)?;
    let stage = steps::stage_spec(&wf, run_id, stage_id, ord)?;
    Ok((
        ctx.rules
            .attempts_for(stage.retry.as_ref(), class, timed_out),
        stage.asks_on_failure(&wf),
    ))
}

/// What follows failed attempt `attempt` of `max_attempts`, in words.
pub(super) fn what_follows(attempt: u32, max_attempts: u32, ask: bool, step: u32) -> String {
    if attempt < max_attempts {
        format!("retrying at step {step} after a backoff")
    } else if ask {
        "waiting for a human to retry, skip or abort it".to_owned()
    } else {
        "the stage fails".to_owned()
    }
}

/// Sets a stage to wait out its backoff before `attempt`, which goes on at
/// `step`; a zero wait starts the attempt at once.
pub(super) fn retry_later(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    ord: usize,
    attempt: u32,
    step: u32,
) -> Result<()> {
    let wf = workflow(ctx, run_id)?;
    let stage = steps::stage_spec(&wf, run_id, stage_id, ord)?;
    let (_, backoff) = ctx.rules.retry_of(stage.retry.as_ref());
    let jitter = f64::from(u32::from_le_bytes(ids::random_bytes::<4>())) / f64::from(u32::MAX);
    let delay = orchestrator_core::error::retry_delay_ms(attempt, &backoff, jitter);
    ctx.conn
        .prepare_cached(
            "UPDATE stage_runs SET attempt = ?3, step = ?5, retry_at = ?4 WHERE run_id = ?1 AND stage_id = ?2",
        )?
        .execute(params![run_id, stage_id, attempt, ctx.now + delay as i64, step])?;
    if delay == 0 {
        let next = human::next_of(ctx, run_id, stage_id, Some(step))?;
        stage_event(
            ctx,
            run_id,
            stage_id,
            StageEvent::RetryDue { next },
            format!("attempt {attempt} starts at step {step}"),
            &Actor::Scheduler,
        )?;
    }
    Ok(())
}

/// Starts the next attempt of every stage whose backoff has passed by `now`.
pub fn due_retries(ctx: &mut Ctx<'_>, now: i64) -> Result<usize> {
    let due: Vec<(RunId, String, u32, u32)> = ctx
        .conn
        .prepare_cached(
            "SELECT run_id, stage_id, attempt, step FROM stage_runs WHERE state = 'retrying' AND retry_at <= ?1",
        )?
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<crate::db::Result<_>>()?;
    for (run_id, stage_id, attempt, step) in &due {
        let next = human::next_of(ctx, run_id, stage_id, Some(*step))?;
        stage_event(
            ctx,
            run_id,
            stage_id,
            StageEvent::RetryDue { next },
            format!("backoff over: attempt {attempt} starts at step {step}"),
            &Actor::Scheduler,
        )?;
    }
    Ok(due.len())
}
