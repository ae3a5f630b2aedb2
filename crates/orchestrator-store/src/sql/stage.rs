//! The stage machine as the store applies it: a stage's row, and one event
//! applied to it (the core's `stage_on` decides the new state and effects;
//! this writes the state with its transition row and carries the effects
//! out: queue the next step, release or block dependents, end the stage in
//! its run, wait for a human or a retry, send work back).
//!
//! The effects are events to the other machines and rules (jobs, runs,
//! retries, loops, questions), which in turn apply stage events: this
//! module and those form the store's one recursive group (see `mod.rs`).

use crate::db::{params, Optional};
use orchestrator_core::machine::{holds_for_pause, stage_marks, stage_on, StageEffect, StageEvent};
use orchestrator_core::Actor;
use orchestrator_core::{AgentId, RunId};
use orchestrator_core::{RunState, StageState};

use super::common::{conflict, stage_key};
use super::job::{cancel_live_job, enqueue};
use super::run::stage_ended;
use super::tx::Ctx;
use super::{conditions, human, loops, retry};
use crate::{Result, StoreError};

pub(super) struct StageRow {
    pub(super) state: StageState,
    pub(super) ord: usize,
    pub(super) attempt: u32,
    pub(super) steps_total: u32,
    pub(super) priority: i32,
    pub(super) project_dir: String,
    pub(super) base_commit: String,
    /// What humans handed the stage for one of its steps (JSON `Handoff`).
    pub(super) handoff: Option<String>,
    /// Its run's state: a stage of a paused run holds at its checkpoint.
    pub(super) run_state: RunState,
    /// The agent it is pinned to.
    pub(super) agent_id: Option<AgentId>,
}

pub(super) fn load_stage(ctx: &Ctx<'_>, run_id: &RunId, stage_id: &str) -> Result<StageRow> {
    ctx.conn
        .prepare_cached(
            "SELECT s.state, s.ord, s.attempt, s.steps_total, r.priority, r.project_dir, r.state,
                    COALESCE(r.base_commit, ''), s.handoff, s.agent_id
             FROM stage_runs s JOIN runs r ON r.id = s.run_id WHERE s.run_id = ?1 AND s.stage_id = ?2",
        )?
        .query_row(params![run_id, stage_id], |r| {
            let state: String = r.get(0)?;
            Ok(StageRow {
                state: StageState::parse(&state).unwrap_or(StageState::Failed),
                ord: r.get::<_, i64>(1)? as usize,
                attempt: r.get(2)?,
                steps_total: r.get(3)?,
                priority: r.get(4)?,
                project_dir: r.get(5)?,
                run_state: RunState::parse(&r.get::<_, String>(6)?).unwrap_or(RunState::Running),
                base_commit: r.get(7)?,
                handoff: r.get(8)?,
                agent_id: r.get(9)?,
            })
        })
        .optional()?
        .ok_or_else(|| StoreError::NotFound { what: "stage", id: stage_key(run_id, stage_id) })
}

/// Applies one event to a stage, writes the change and follows its effects.
pub fn stage_event(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    event: StageEvent,
    reason: String,
    actor: &Actor,
) -> Result<StageState> {
    let mut row = load_stage(ctx, run_id, stage_id)?;
    let (to, effects) = stage_on(row.state, row.attempt, event).map_err(conflict)?;
    let marks = stage_marks(event, to);
    ctx.conn
        .prepare_cached(
            "UPDATE stage_runs SET state = ?3,
                started_at = CASE WHEN ?4 AND started_at IS NULL THEN ?5 ELSE started_at END,
                ended_at = CASE WHEN ?6 THEN ?5 ELSE ended_at END,
                waiting_since = CASE WHEN ?7 THEN COALESCE(waiting_since, ?5) ELSE NULL END,
                agent_id = CASE WHEN ?8 THEN NULL ELSE agent_id END,
                placement = CASE WHEN ?8 THEN NULL ELSE placement END,
                yield_job = CASE WHEN ?9 THEN yield_job ELSE NULL END,
                yield_for = CASE WHEN ?9 THEN yield_for ELSE NULL END,
                reserved = CASE WHEN ?9 THEN reserved ELSE NULL END
             WHERE run_id = ?1 AND stage_id = ?2",
        )?
        .execute(params![
            run_id,
            stage_id,
            to.as_str(),
            marks.started,
            ctx.now,
            marks.ended,
            marks.waiting,
            marks.forget_placement,
            marks.keep_yield
        ])?;
    if marks.forget_placement {
        // The restarted attempt is queued for any agent.
        row.agent_id = None;
    }
    if to != row.state {
        ctx.transition(
            stage_key(run_id, stage_id),
            Some(run_id),
            Some(row.state),
            to,
            reason.clone(),
            actor,
        )?;
    }
    for effect in effects {
        match effect {
            StageEffect::EnqueueStep { step, attempt } => {
                enqueue(ctx, run_id, stage_id, &row, step, attempt, &event)?
            }
            StageEffect::ReleaseDependents => {
                ctx.conn
                    .prepare_cached(
                        "UPDATE stage_runs SET unmet = unmet - 1 WHERE run_id = ?1 AND stage_id IN
                         (SELECT stage_id FROM requires WHERE run_id = ?1 AND required = ?2)",
                    )?
                    .execute(params![run_id, stage_id])?;
                ctx.schedule = true;
            }
            StageEffect::BlockDependents | StageEffect::BypassDependents => {
                conditions::need_ended_for_dependents(ctx, run_id, stage_id, to)?
            }
            StageEffect::CancelJob => cancel_live_job(ctx, run_id, stage_id, &reason, actor)?,
            StageEffect::StageEnded => {
                // A limit of its run or project may have room now.
                ctx.schedule = true;
                // A skipped stage was let go by a human, a bypassed one's
                // condition said not to run: neither fails its run.
                stage_ended(
                    ctx,
                    run_id,
                    matches!(
                        to,
                        StageState::Succeeded | StageState::Skipped | StageState::Bypassed
                    ),
                )?
            }
            StageEffect::AwaitHuman { resume } => {
                ctx.schedule = true;
                ctx.conn
                    .prepare_cached(
                        "UPDATE stage_runs SET resume_step = ?3 WHERE run_id = ?1 AND stage_id = ?2",
                    )?
                    .execute(params![run_id, stage_id, resume])?;
            }
            StageEffect::AwaitRetry { attempt, step } => {
                retry::retry_later(ctx, run_id, stage_id, row.ord, attempt, step)?
            }
            StageEffect::SendBackUpstream => loops::after_failure(ctx, run_id, stage_id)?,
            StageEffect::Reopen => loops::reopen(ctx, run_id, stage_id, row.state)?,
            StageEffect::ResetDependents => {
                loops::reset_dependents(ctx, run_id, stage_id, &reason, actor)?
            }
            StageEffect::AwaitDecision { retry } => {
                ctx.conn
                    .prepare_cached(
                        "UPDATE stage_runs SET resume_step = ?3 WHERE run_id = ?1 AND stage_id = ?2",
                    )?
                    .execute(params![run_id, stage_id, retry])?;
            }
            StageEffect::CloseQuestions => {
                human::close_questions(ctx, run_id, stage_id, &reason, actor)?
            }
        }
    }
    // An input step moves a queued stage on at once, so the hold is decided
    // on the stage as its effects left it.
    if holds_for_pause(to, row.run_state)
        && holds_for_pause(load_stage(ctx, run_id, stage_id)?.state, row.run_state)
    {
        return stage_event(
            ctx,
            run_id,
            stage_id,
            StageEvent::Pause,
            "held at its checkpoint: the run is paused".into(),
            &Actor::Scheduler,
        );
    }
    Ok(to)
}
