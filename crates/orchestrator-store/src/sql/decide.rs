//! Human decisions: a human's command to a run (approve, reject, answer,
//! retry with or without feedback, skip, abort) sent to what carries it
//! out, and the decision about a failed stage: retry it, skip it, or abort
//! it (or the whole run). Run by the writer inside a batch's transaction.

use crate::db::Optional;
use orchestrator_core::machine::{RunEvent, StageEvent};
use orchestrator_core::Actor;
use orchestrator_core::RunId;
use orchestrator_core::{RunState, StageState};

use super::common::conflict;
use super::run::run_command;
use super::stage::{load_stage, stage_event};
use super::tx::Ctx;
use super::{human, loops};
use crate::{HumanCommand, Result, StoreError};

/// What a human decided about a stage awaiting a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Retry,
    Skip,
    Abort,
}

/// With a comment, `verb: comment`; without, `verb`.
fn said(verb: &str, comment: Option<String>) -> String {
    match comment.as_deref().map(str::trim) {
        Some(c) if !c.is_empty() => format!("{verb}: {c}"),
        _ => verb.to_owned(),
    }
}

/// `orch retry|skip|abort RUN STAGE`.
pub fn decide(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    decision: Decision,
    comment: Option<String>,
    actor: &Actor,
) -> Result<()> {
    let row = load_stage(ctx, run_id, stage_id)?;
    if row.state != StageState::AwaitingDecision {
        return Err(conflict(format!(
            "stage {stage_id} of run {run_id} is {}, not awaiting_decision; only a failed stage waiting for a decision can be retried, skipped or aborted",
            row.state
        )));
    }
    let (event, reason) = match decision {
        Decision::Retry => {
            let step = human::resume_step(ctx, run_id, stage_id)?.unwrap_or(0);
            let next = human::next_of(ctx, run_id, stage_id, Some(step))?;
            let verb = format!(
                "retried: attempt {} goes on at step {step}",
                row.attempt.saturating_add(1)
            );
            (StageEvent::Retry { next }, said(&verb, comment))
        }
        Decision::Skip => (
            StageEvent::Skip,
            said("skipped: its dependents go on without it", comment),
        ),
        Decision::Abort => (StageEvent::Abort, said("aborted", comment)),
    };
    stage_event(ctx, run_id, stage_id, event, reason, actor)?;
    Ok(())
}

/// `orch abort RUN`: the run ends failed. Stages awaiting a decision fail;
/// the others are cancelled.
pub fn abort_run(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    comment: Option<String>,
    actor: &Actor,
) -> Result<()> {
    let state: Option<String> = ctx
        .conn
        .prepare_cached("SELECT state FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| r.get(0))
        .optional()?;
    let Some(state) = state else {
        return Err(StoreError::NotFound {
            what: "run",
            id: run_id.to_string(),
        });
    };
    let from = RunState::parse(&state).unwrap_or(RunState::Failed);
    if from.is_terminal() {
        return Err(conflict(format!(
            "run {run_id} has already ended {from}; only a queued, running or paused run can be aborted"
        )));
    }
    run_command(
        ctx,
        run_id,
        RunEvent::Abort,
        said("aborted", comment),
        actor,
    )
}

/// Carries out a human's command inside the writer's transaction.
pub fn human_command(
    ctx: &mut Ctx<'_>,
    id: &RunId,
    command: HumanCommand,
    actor: &Actor,
) -> Result<()> {
    match command {
        HumanCommand::Approve { stage_id, comment } => {
            human::approve(ctx, id, &stage_id, comment, actor)
        }
        HumanCommand::Reject { stage_id, feedback } => {
            human::reject(ctx, id, &stage_id, feedback, actor)
        }
        HumanCommand::Answer { question_id, text } => {
            human::answer(ctx, id, question_id, text, actor)
        }
        HumanCommand::Retry {
            stage_id,
            comment,
            feedback: Some(feedback),
        } => loops::by_human(ctx, id, &stage_id, &feedback, comment.as_deref(), actor),
        HumanCommand::Retry {
            stage_id,
            comment,
            feedback: None,
        } => decide(ctx, id, &stage_id, Decision::Retry, comment, actor),
        HumanCommand::Skip { stage_id, comment } => {
            decide(ctx, id, &stage_id, Decision::Skip, comment, actor)
        }
        HumanCommand::Abort {
            stage_id: Some(stage_id),
            comment,
        } => decide(ctx, id, &stage_id, Decision::Abort, comment, actor),
        HumanCommand::Abort {
            stage_id: None,
            comment,
        } => abort_run(ctx, id, comment, actor),
    }
}
