//! Reads of what humans see: a run's checkpoints and questions, and the
//! inbox of everything waiting for a human across runs.

use orchestrator_core::RunId;
use std::collections::HashMap;

use crate::db::{params, Conn, Optional, Row};
use orchestrator_core::api::{
    answer_commands, ArtifactRecord, CheckpointView, InboxItem, InboxKind, QuestionState,
    QuestionView,
};
use orchestrator_core::{StageState, Workflow};

use crate::{Result, StoreError};

/// Job number `step` of a stage as shown: its index in the stage's steps.
fn shown(wf: &Workflow, stage_id: &str, step: u32) -> u32 {
    wf.stages
        .iter()
        .find(|s| s.id == stage_id)
        .map_or(step, |s| s.step_index(step))
}

/// The name of step `step` (counted across a loop's iterations) of a stage.
fn step_name(wf: &Workflow, stage_id: &str, step: u32) -> Option<String> {
    let stage = wf.stages.iter().find(|s| s.id == stage_id)?;
    stage.job_name(step)
}

pub fn checkpoints(conn: &Conn, run_id: &RunId, wf: &Workflow) -> Result<Vec<CheckpointView>> {
    let rows = conn
        .prepare_cached(
            "SELECT seq, stage_id, step, job_id, commit_sha, artifacts, created_at
             FROM checkpoints WHERE run_id = ?1 ORDER BY seq",
        )?
        .query_map([run_id], |r| {
            let artifacts: String = r.get(5)?;
            let stage_id: String = r.get(1)?;
            let step: u32 = r.get(2)?;
            Ok(CheckpointView {
                run_id: run_id.to_owned(),
                seq: r.get(0)?,
                step_name: step_name(wf, &stage_id, step),
                step: shown(wf, &stage_id, step),
                stage_id,
                job_id: r.get(3)?,
                commit: r.get(4)?,
                artifacts: serde_json::from_str::<Vec<ArtifactRecord>>(&artifacts)
                    .unwrap_or_default(),
                created_at_ms: r.get(6)?,
            })
        })?
        .collect::<crate::db::Result<_>>()?;
    Ok(rows)
}

const QUESTION_COLS: &str =
    "id, run_id, stage_id, step, question, choices, state, asked_at, answer, answered_by, answered_at,
     CASE WHEN wait_key IS NULL THEN 0 ELSE 1 END";

fn question_view(r: &Row<'_>) -> crate::db::Result<QuestionView> {
    let choices: String = r.get(5)?;
    let state: String = r.get(6)?;
    Ok(QuestionView {
        id: r.get(0)?,
        run_id: r.get(1)?,
        stage_id: r.get(2)?,
        step: r.get(3)?,
        question: r.get(4)?,
        choices: serde_json::from_str(&choices).unwrap_or_default(),
        state: QuestionState::parse(&state).unwrap_or(QuestionState::Closed),
        asked_at_ms: r.get(7)?,
        answer: r.get(8)?,
        answered_by: r.get(9)?,
        answered_at_ms: r.get(10)?,
        waiting: r.get::<_, i64>(11)? != 0,
    })
}

pub fn questions(conn: &Conn, run_id: &RunId) -> Result<Vec<QuestionView>> {
    let sql = format!("SELECT {QUESTION_COLS} FROM questions WHERE run_id = ?1 ORDER BY id");
    let rows = conn
        .prepare_cached(&sql)?
        .query_map([run_id], question_view)?
        .collect::<crate::db::Result<_>>()?;
    Ok(rows)
}

/// Everything waiting for a human, oldest first: stages awaiting approval
/// or a decision, and open questions.
pub fn inbox(conn: &Conn) -> Result<Vec<InboxItem>> {
    let mut specs: HashMap<RunId, (String, Workflow)> = HashMap::new();
    let mut spec_of = |run_id: &RunId| -> Result<(String, Workflow)> {
        if let Some(x) = specs.get(run_id) {
            return Ok(x.clone());
        }
        let (name, spec): (String, String) = conn
            .prepare_cached(
                "SELECT r.workflow, s.spec FROM runs r JOIN run_specs s ON s.run_id = r.id WHERE r.id = ?1",
            )?
            .query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let wf: Workflow = serde_json::from_str(&spec)
            .map_err(|e| StoreError::corrupt(format!("run {run_id}: stored spec unreadable"), e))?;
        specs.insert(run_id.to_owned(), (name.clone(), wf.clone()));
        Ok((name, wf))
    };
    let mut items = Vec::new();
    let approvals: Vec<(RunId, String, u32, i64)> = conn
        .prepare_cached(
            "SELECT run_id, stage_id, step, waiting_since FROM stage_runs
             WHERE waiting_since IS NOT NULL AND state = 'awaiting_approval'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<crate::db::Result<_>>()?;
    for (run_id, stage_id, step, since) in approvals {
        let (workflow, wf) = spec_of(&run_id)?;
        let shown_step = shown(&wf, &stage_id, step);
        let commit: Option<String> = conn
            .prepare_cached(
                "SELECT commit_sha FROM checkpoints WHERE run_id = ?1 AND stage_id = ?2 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![run_id, stage_id], |r| r.get(0))
            .optional()?;
        items.push(InboxItem {
            kind: InboxKind::Approval,
            answer_with: answer_commands(InboxKind::Approval, &run_id, &stage_id, None),
            step_name: step_name(&wf, &stage_id, step),
            run_id,
            workflow,
            stage_id,
            stage_state: StageState::AwaitingApproval,
            step: shown_step,
            since_ms: since,
            commit,
            question: None,
            error: None,
        });
    }
    let decisions: Vec<(RunId, String, u32, i64)> = conn
        .prepare_cached(
            "SELECT run_id, stage_id, step, waiting_since FROM stage_runs
             WHERE waiting_since IS NOT NULL AND state = 'awaiting_decision'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<crate::db::Result<_>>()?;
    for (run_id, stage_id, step, since) in decisions {
        let (workflow, wf) = spec_of(&run_id)?;
        let shown_step = shown(&wf, &stage_id, step);
        let error: Option<String> = conn
            .prepare_cached(
                "SELECT error FROM jobs WHERE run_id = ?1 AND stage_id = ?2 AND error IS NOT NULL
                 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![run_id, stage_id], |r| r.get(0))
            .optional()?;
        items.push(InboxItem {
            kind: InboxKind::Decision,
            answer_with: answer_commands(InboxKind::Decision, &run_id, &stage_id, None),
            step_name: step_name(&wf, &stage_id, step),
            run_id,
            workflow,
            stage_id,
            stage_state: StageState::AwaitingDecision,
            step: shown_step,
            since_ms: since,
            commit: None,
            question: None,
            error,
        });
    }
    let sql =
        format!("SELECT {QUESTION_COLS} FROM questions WHERE state = 'open' ORDER BY asked_at, id");
    let open: Vec<QuestionView> = conn
        .prepare_cached(&sql)?
        .query_map([], question_view)?
        .collect::<crate::db::Result<_>>()?;
    for q in open {
        let (workflow, wf) = spec_of(&q.run_id)?;
        items.push(InboxItem {
            kind: InboxKind::Question,
            answer_with: answer_commands(
                InboxKind::Question,
                &q.run_id,
                &q.stage_id,
                Some((q.id, &q.choices)),
            ),
            run_id: q.run_id.clone(),
            workflow,
            stage_id: q.stage_id.clone(),
            stage_state: StageState::AwaitingInput,
            step: shown(&wf, &q.stage_id, q.step),
            step_name: step_name(&wf, &q.stage_id, q.step),
            since_ms: q.asked_at_ms,
            commit: None,
            question: Some(q),
            error: None,
        });
    }
    items.sort_by_key(|i| i.since_ms);
    Ok(items)
}
