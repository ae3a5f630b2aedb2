//! The run machine as the store applies it: a stage's end counted in its
//! run (which may end the run), a human's command to a run (cancel, pause,
//! resume, abort), the scheduler's admission, and the effects the core's
//! `run_on` asks for (cancel, pause, resume or abort the run's stages; admit
//! the project's next queued run when one ends).

use crate::db::{params, Optional};
use orchestrator_core::machine::{run_on, RunEffect, RunEvent, StageEvent};
use orchestrator_core::Actor;
use orchestrator_core::RunId;
use orchestrator_core::RunState;

use super::common::conflict;
use super::stage::stage_event;
use super::tx::Ctx;
use super::{human, policy};
use crate::{Result, StoreError};

pub(super) fn stage_ended(ctx: &mut Ctx<'_>, run_id: &RunId, succeeded: bool) -> Result<()> {
    let (state, total, ended, ok): (String, i64, i64, i64) = ctx
        .conn
        .prepare_cached(
            "UPDATE runs SET stages_ended = stages_ended + 1, stages_succeeded = stages_succeeded + ?2
             WHERE id = ?1 RETURNING state, stages_total, stages_ended, stages_succeeded",
        )?
        .query_row(params![run_id, succeeded as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    let from = RunState::parse(&state).unwrap_or(RunState::Running);
    if from.is_terminal() {
        return Ok(());
    }
    let open = (total - ended).max(0) as usize;
    let (to, effects) = run_on(
        from,
        RunEvent::StageEnded {
            open,
            unsuccessful: (ended - ok) as usize,
        },
    )
    .map_err(conflict)?;
    if to != from {
        ctx.conn
            .prepare_cached("UPDATE runs SET state = ?2 WHERE id = ?1")?
            .execute(params![run_id, to.as_str()])?;
        let reason = if to == RunState::Succeeded {
            format!("all {total} stages succeeded")
        } else {
            format!("{} of {total} stages did not succeed", ended - ok)
        };
        ctx.transition(
            run_id.to_string(),
            Some(run_id),
            Some(from),
            to,
            reason,
            &Actor::Scheduler,
        )?;
        run_effects(ctx, run_id, &effects, &Actor::Scheduler)?;
    }
    Ok(())
}

/// A human's command to a run: cancel, pause or resume. The run machine
/// decides whether the run's state allows it and what its stages must do.
pub fn command_run(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    event: RunEvent,
    actor: &Actor,
) -> Result<()> {
    let (verb, allowed) = match event {
        RunEvent::Cancel => ("cancelled", "a running or paused run"),
        RunEvent::Pause => ("paused", "a running run"),
        RunEvent::Resume => ("resumed", "a paused run"),
        RunEvent::Abort => ("aborted", "a queued, running or paused run"),
        RunEvent::StageEnded { .. } | RunEvent::Admit => {
            return Err(conflict(format!("{event:?} is not a command")))
        }
    };
    run_event(ctx, run_id, event, verb.into(), actor, |from| {
        let why = if from.is_terminal() {
            "has already ended"
        } else {
            "is"
        };
        conflict(format!(
            "run {run_id} {why} {from}; only {allowed} can be {verb}"
        ))
    })
}

/// Applies a scheduler event (admission) to a run.
pub(super) fn run_command(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    event: RunEvent,
    reason: String,
    actor: &Actor,
) -> Result<()> {
    run_event(ctx, run_id, event, reason, actor, |from| {
        conflict(format!("run {run_id} is {from}; cannot take {event:?}"))
    })
}

fn run_event(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    event: RunEvent,
    reason: String,
    actor: &Actor,
    refused: impl FnOnce(RunState) -> StoreError,
) -> Result<()> {
    let state: String = ctx
        .conn
        .prepare_cached("SELECT state FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            what: "run",
            id: run_id.to_string(),
        })?;
    let from = RunState::parse(&state).unwrap_or(RunState::Failed);
    let (to, effects) = run_on(from, event).map_err(|_| refused(from))?;
    ctx.conn
        .prepare_cached("UPDATE runs SET state = ?2 WHERE id = ?1")?
        .execute(params![run_id, to.as_str()])?;
    ctx.transition(
        run_id.to_string(),
        Some(run_id),
        Some(from),
        to,
        reason,
        actor,
    )?;
    run_effects(ctx, run_id, &effects, actor)
}

/// The run's stages in any of `states`, with their current step.
fn stages_in(ctx: &Ctx<'_>, run_id: &RunId, states: &str) -> Result<Vec<(String, u32)>> {
    let sql = format!(
        "SELECT stage_id, step FROM stage_runs WHERE run_id = ?1 AND state IN ({states}) ORDER BY ord"
    );
    Ok(ctx
        .conn
        .prepare_cached(&sql)?
        .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::db::Result<_>>()?)
}

/// Carries out what the run machine asked for.
fn run_effects(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    effects: &[RunEffect],
    actor: &Actor,
) -> Result<()> {
    for effect in effects {
        match effect {
            RunEffect::Ended => {
                let project: String = ctx
                    .conn
                    .prepare_cached(
                        "UPDATE runs SET ended_at = ?2, hold = NULL WHERE id = ?1 RETURNING project_dir",
                    )?
                    .query_row(params![run_id, ctx.now], |r| r.get(0))?;
                ctx.workflows.remove(run_id);
                policy::admit(ctx, &project)?;
            }
            RunEffect::Schedule => ctx.schedule = true,
            RunEffect::AbortStages => {
                for (stage, _) in stages_in(ctx, run_id, "'awaiting_decision'")? {
                    stage_event(
                        ctx,
                        run_id,
                        &stage,
                        StageEvent::Abort,
                        "aborted with its run".into(),
                        actor,
                    )?;
                }
            }
            RunEffect::CancelStages => {
                let open = stages_in(
                    ctx,
                    run_id,
                    "'pending', 'queued', 'running', 'paused', 'suspended', 'retrying', 'validating', 'awaiting_decision', 'awaiting_approval', 'awaiting_input'",
                )?;
                for (stage, _) in open {
                    stage_event(
                        ctx,
                        run_id,
                        &stage,
                        StageEvent::Cancel,
                        "run cancelled".into(),
                        actor,
                    )?;
                }
            }
            RunEffect::PauseStages => {
                // Running stages hold when their step ends; pending ones are
                // not scheduled while the run is paused.
                for (stage, _) in stages_in(ctx, run_id, "'queued'")? {
                    stage_event(
                        ctx,
                        run_id,
                        &stage,
                        StageEvent::Pause,
                        "held at its checkpoint: the run is paused".into(),
                        actor,
                    )?;
                }
            }
            RunEffect::ResumeStages => {
                for (stage, step) in stages_in(ctx, run_id, "'paused'")? {
                    let next = human::next_of(ctx, run_id, &stage, Some(step))?;
                    stage_event(
                        ctx,
                        run_id,
                        &stage,
                        StageEvent::Resume { next },
                        format!("the run was resumed; step {step} queued again"),
                        actor,
                    )?;
                }
                ctx.schedule = true;
            }
        }
    }
    Ok(())
}
