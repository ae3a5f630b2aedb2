//! The scheduler pass: run at the end of a batch that released or ended a
//! stage or created a run (the writer calls it through its hook), it moves
//! every runnable stage on to its first job, highest run priority first.
//! It decides what is runnable and in what order; what a runnable stage
//! then does is the stage machine's (`stage.rs`).

use orchestrator_core::error::ErrorClass;
use orchestrator_core::machine::StageEvent;
use orchestrator_core::sched::{Limits, Needs};
use orchestrator_core::Actor;
use orchestrator_core::RunId;

use super::common::workflow;
use super::conditions::{self, Verdict};
use super::stage::stage_event;
use super::tx::Ctx;
use super::{policy, steps};
use crate::{Result, StoreError};

/// The scheduler pass: every pending stage whose needs have all succeeded
/// gets a job for its first step, highest run priority first.
///
/// Each stage is scheduled in its own savepoint: a stage that cannot be
/// scheduled (its run's stored spec unreadable, a step missing) fails alone,
/// as a daemon-side fault, and every other run goes on. Only a broken
/// transaction fails the pass, and with it the batch.
///
/// A stage that ends in the pass (bypassed or failed by its condition, or
/// a fault) may let others be decided: the pass goes again until none
/// ends, each round ending at least one stage, so it stops.
pub fn schedule(ctx: &mut Ctx<'_>) -> Result<()> {
    while schedule_once(ctx)? {}
    ctx.schedule = false;
    Ok(())
}

/// One round of the pass; whether it ended a stage.
fn schedule_once(ctx: &mut Ctx<'_>) -> Result<bool> {
    ctx.schedule = false;
    let mut ended = false;
    let ready: Vec<(RunId, String, i64, String, Option<String>)> = ctx
        .conn
        .prepare_cached(
            "SELECT s.run_id, s.stage_id, s.ord, r.project_dir, r.limits FROM stage_runs s JOIN runs r ON r.id = s.run_id
             WHERE s.state = 'pending' AND s.unmet = 0 AND r.state = 'running'
             ORDER BY r.priority DESC, r.created_at, s.ord",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?, r.get(3)?, r.get(4)?)))?
        .collect::<crate::db::Result<_>>()?;
    for (run_id, stage_id, ord, project_dir, limits) in ready {
        let scheduled = ctx.savepoint(|ctx| {
            schedule_stage(
                ctx,
                &run_id,
                &stage_id,
                ord,
                &project_dir,
                limits.as_deref(),
            )
        });
        match scheduled {
            Ok(Scheduled::Ended) => ended = true,
            Ok(Scheduled::Went | Scheduled::Held) => {}
            Err(e) => {
                ctx.healthy()?;
                ended |= stage_fault(ctx, &run_id, &stage_id, &e)?;
            }
        }
    }
    Ok(ended)
}

/// What one stage did in the pass.
enum Scheduled {
    /// Its first step is queued.
    Went,
    /// A limit of its run or project holds it.
    Held,
    /// Its condition ended it (bypassed or failed).
    Ended,
}

fn schedule_stage(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    ord: i64,
    project_dir: &str,
    limits: Option<&str>,
) -> Result<Scheduled> {
    let wf = workflow(ctx, run_id)?;
    let stage = steps::stage_spec(
        &wf,
        run_id,
        stage_id,
        usize::try_from(ord).unwrap_or(usize::MAX),
    )?;
    let mut runnable = None;
    if let Some(cond) = &stage.condition {
        // Decided before the limits: a bypassed stage takes no slot.
        let (event, reason) = match conditions::verdict(ctx, run_id, stage, cond)? {
            Verdict::Run(reason) => {
                runnable = Some(reason);
                (None, String::new())
            }
            Verdict::Bypass(reason) => (Some(StageEvent::Bypass), reason),
            Verdict::Fail(reason) => (Some(StageEvent::ConditionFailed), reason),
        };
        if let Some(event) = event {
            stage_event(ctx, run_id, stage_id, event, reason, &Actor::Scheduler)?;
            return Ok(Scheduled::Ended);
        }
    }
    let limits = policy::parse_limits(limits);
    if limits != Limits::default() {
        let needs = Needs::of_stage(stage);
        let hold = policy::stage_hold(ctx, run_id, project_dir, &limits, &needs)?;
        policy::set_stage_hold(ctx, run_id, stage_id, hold.as_deref())?;
        if hold.is_some() {
            return Ok(Scheduled::Held);
        }
    }
    let reason = match runnable {
        Some(reason) => reason,
        None => match &stage.needs[..] {
            [] => "runnable: needs nothing".to_owned(),
            [a] => format!("runnable: {a} succeeded"),
            [a, b] => format!("runnable: {a} and {b} succeeded"),
            [a, b, rest @ ..] => format!(
                "runnable: {a}, {b} and the {} other stages it needs succeeded",
                rest.len()
            ),
        },
    };
    stage_event(
        ctx,
        run_id,
        stage_id,
        StageEvent::NeedsMet,
        reason,
        &Actor::Scheduler,
    )?;
    Ok(Scheduled::Went)
}

/// Fails a stage the scheduler pass could not carry on: left pending, it
/// would hold its run open forever and be tried again at every pass.
/// Whether it ended.
fn stage_fault(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    error: &StoreError,
) -> Result<bool> {
    tracing::error!(run = %run_id, stage = stage_id, error = %error,
        "cannot schedule this stage; it fails (daemon-side fault, class infra)");
    let reason = format!(
        "daemon-side fault (class {}): the daemon could not schedule this stage: {error}",
        ErrorClass::Infra.as_str()
    );
    let ended = ctx.savepoint(|ctx| {
        stage_event(
            ctx,
            run_id,
            stage_id,
            StageEvent::Fault,
            reason,
            &Actor::Scheduler,
        )
    });
    if let Err(e) = ended {
        ctx.healthy()?;
        tracing::error!(run = %run_id, stage = stage_id, error = %e,
            "cannot fail this stage either; it stays pending until the next scheduler pass");
        return Ok(false);
    }
    Ok(true)
}
