//! Questions a running step waits for inside (`orch ask --wait`). The
//! step's agent asks through the step's live lease; the question is then a
//! question like any other (inbox, events, `orch answer`), and the stage
//! shows `awaiting_input` while its job stays leased. The answer ends the
//! wait without a new round: the stage is running again and the same job
//! goes on. A wait the step gives up (`withdraw`) or leaves behind (its job
//! ends, is lost or cancelled) closes its question, so nothing dangles
//! answerable for a step that is gone.

use orchestrator_core::api::{Ask, QuestionState, WaitAsk, WaitStatus};
use orchestrator_core::machine::StageEvent;
use orchestrator_core::Actor;
use orchestrator_core::StageState;
use orchestrator_core::{AgentId, JobId, RunId};

use super::common::conflict;
use super::stage::{load_stage, stage_event};
use super::tx::Ctx;
use crate::db::{params, Conn, Optional};
use crate::{Result, StoreError};

/// Most questions one job may wait for, as the agent's endpoint also says.
pub const MAX_WAITS_PER_JOB: i64 = 16;
/// Longest question or choice, in bytes, as the agent's endpoint also says.
pub const MAX_TEXT: usize = 16 * 1024;
/// Most choices one question may offer.
const MAX_CHOICES: usize = 64;
/// Longest key an agent may name an ask with.
const MAX_KEY: usize = 128;

/// What a live lease proves: the job's place in its run.
struct Held {
    run_id: RunId,
    stage_id: String,
    step: u32,
}

/// The job, when `agent_id` holds its live lease under `token`. Anything
/// else is refused: a step's right to ask ends with its lease.
fn held(conn: &Conn, job_id: JobId, agent_id: &AgentId, token: &str) -> Result<Held> {
    let row: Option<(RunId, String, u32, String, String)> = conn
        .prepare_cached(
            "SELECT j.run_id, j.stage_id, j.step, j.state, l.state
             FROM jobs j JOIN leases l ON l.id = j.lease_id
             WHERE j.id = ?1 AND l.token = ?2 AND l.agent_id = ?3",
        )?
        .query_row(params![job_id, token, agent_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let stale = |reason: String| StoreError::StaleLease { job_id, reason };
    match row {
        None => Err(stale(format!(
            "agent {agent_id} holds no lease of job {job_id} under this token"
        ))),
        Some((run_id, stage_id, step, job, lease)) if job == "leased" && lease == "active" => {
            Ok(Held {
                run_id,
                stage_id,
                step,
            })
        }
        Some((_, _, _, job, lease)) => Err(stale(format!(
            "the job is {job} and its lease {lease}: only a running step may ask or wait"
        ))),
    }
}

fn check_text(what: &str, text: &str) -> Result<()> {
    if text.trim().is_empty() || text.len() > MAX_TEXT {
        return Err(StoreError::Invalid(format!(
            "{what}: expected 1 to {MAX_TEXT} bytes of text, got {}",
            if text.trim().is_empty() {
                "none".to_owned()
            } else {
                format!("{} bytes", text.len())
            }
        )));
    }
    Ok(())
}

/// A running step asks and waits: the question is recorded (once per key)
/// and its stage shows `awaiting_input` while the job stays leased.
/// Returns the question's id.
pub fn ask(ctx: &mut Ctx<'_>, job_id: JobId, req: &WaitAsk) -> Result<i64> {
    let h = held(ctx.conn, job_id, &req.agent_id, &req.lease_token)?;
    if req.key.is_empty() || req.key.len() > MAX_KEY {
        return Err(StoreError::Invalid(format!(
            "key: expected 1 to {MAX_KEY} bytes naming this ask"
        )));
    }
    let known: Option<i64> = ctx
        .conn
        .prepare_cached("SELECT id FROM questions WHERE job_id = ?1 AND wait_key = ?2")?
        .query_row(params![job_id, req.key], |r| r.get(0))
        .optional()?;
    if let Some(id) = known {
        return Ok(id);
    }
    check_text("question", &req.question)?;
    if req.choices.len() > MAX_CHOICES {
        return Err(StoreError::Invalid(format!(
            "choices: at most {MAX_CHOICES}, got {}",
            req.choices.len()
        )));
    }
    for c in &req.choices {
        check_text("choice", c)?;
    }
    let asked: i64 = ctx
        .conn
        .prepare_cached(
            "SELECT COUNT(*) FROM questions WHERE job_id = ?1 AND wait_key IS NOT NULL",
        )?
        .query_row([job_id], |r| r.get(0))?;
    if asked >= MAX_WAITS_PER_JOB {
        return Err(StoreError::Invalid(format!(
            "a step may wait for at most {MAX_WAITS_PER_JOB} questions; this one asked {asked}"
        )));
    }
    let stage = load_stage(ctx, &h.run_id, &h.stage_id)?;
    if !matches!(stage.state, StageState::Running | StageState::AwaitingInput) {
        return Err(conflict(format!(
            "stage {} of run {} is {}: only a running step may wait for an answer (a stage's validation may not ask)",
            h.stage_id, h.run_id, stage.state
        )));
    }
    let actor = Actor::agent(req.agent_id.clone());
    let ask = Ask {
        question: req.question.clone(),
        choices: req.choices.clone(),
    };
    let id = super::human::ask_question(
        ctx,
        &h.run_id,
        &h.stage_id,
        h.step,
        Some(job_id),
        &ask,
        Some(&req.key),
        &actor,
    )?;
    if stage.state == StageState::Running {
        stage_event(
            ctx,
            &h.run_id,
            &h.stage_id,
            StageEvent::WaitForAnswer,
            format!(
                "step {} asks question {id} and waits for the answer while it runs",
                h.step
            ),
            &actor,
        )?;
    }
    Ok(id)
}

/// Where question `question_id` of the job stands, for the step that asked
/// it and only while that step runs.
pub fn status(
    conn: &Conn,
    job_id: JobId,
    agent_id: &AgentId,
    token: &str,
    question_id: i64,
) -> Result<WaitStatus> {
    held(conn, job_id, agent_id, token)?;
    read_status(conn, job_id, question_id)
}

fn read_status(conn: &Conn, job_id: JobId, question_id: i64) -> Result<WaitStatus> {
    type Row = (String, i64, Option<String>, Option<String>, Option<i64>);
    let row: Option<Row> = conn
        .prepare_cached(
            "SELECT state, asked_at, answer, answered_by, answered_at FROM questions
             WHERE id = ?1 AND job_id = ?2 AND wait_key IS NOT NULL",
        )?
        .query_row(params![question_id, job_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    // Another job's question is as unknown here as a missing one.
    let (state, asked_at_ms, answer, answered_by, answered_at_ms) =
        row.ok_or_else(|| StoreError::NotFound {
            what: "question",
            id: format!("{question_id} asked by job {job_id}"),
        })?;
    Ok(WaitStatus {
        question_id,
        state: QuestionState::parse(&state).unwrap_or(QuestionState::Closed),
        asked_at_ms,
        answer,
        answered_by,
        answered_at_ms,
    })
}

/// The step stopped waiting (its `--timeout` passed): its question closes,
/// unless a human answered it first, and the stage runs on.
pub fn withdraw(
    ctx: &mut Ctx<'_>,
    job_id: JobId,
    agent_id: &AgentId,
    token: &str,
    question_id: i64,
) -> Result<WaitStatus> {
    let h = held(ctx.conn, job_id, agent_id, token)?;
    let now = read_status(ctx.conn, job_id, question_id)?;
    if now.state == QuestionState::Open {
        let actor = Actor::agent(agent_id.clone());
        close(
            ctx,
            &h.run_id,
            &h.stage_id,
            question_id,
            "withdrawn: the step stopped waiting for an answer",
            &actor,
        )?;
        resume(
            ctx,
            &h.run_id,
            &h.stage_id,
            format!("question {question_id} withdrawn: the step stopped waiting and runs on"),
            &actor,
        )?;
    }
    read_status(ctx.conn, job_id, question_id)
}

/// Job `job_id` left its lease (it completed, failed, was lost or
/// cancelled): the questions its step still waited for close with it, and
/// a stage that showed the wait is running again, for the job's outcome to
/// be applied as to any running stage.
pub fn end_waits(
    ctx: &mut Ctx<'_>,
    job_id: JobId,
    run_id: &RunId,
    why: &str,
    actor: &Actor,
) -> Result<()> {
    let open: Vec<(i64, String)> = ctx
        .conn
        .prepare_cached(
            "SELECT id, stage_id FROM questions
             WHERE job_id = ?1 AND wait_key IS NOT NULL AND state = 'open'",
        )?
        .query_map([job_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::db::Result<_>>()?;
    let Some((_, stage_id)) = open.first().cloned() else {
        return Ok(());
    };
    for (id, stage) in &open {
        close(
            ctx,
            run_id,
            stage,
            *id,
            &format!("the step ended before an answer: {why}"),
            actor,
        )?;
    }
    resume(
        ctx,
        run_id,
        &stage_id,
        format!("its step stopped waiting: {why}"),
        actor,
    )
}

/// After an answer to a waited-for question: once the stage's step waits
/// for nothing more, it runs on and receives the answer where it runs.
pub fn answered(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    question_id: i64,
    actor: &Actor,
) -> Result<()> {
    resume(
        ctx,
        run_id,
        stage_id,
        format!("question {question_id} answered; the waiting step receives it and runs on"),
        actor,
    )
}

fn close(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    id: i64,
    reason: &str,
    actor: &Actor,
) -> Result<()> {
    ctx.conn
        .prepare_cached("UPDATE questions SET state = 'closed' WHERE id = ?1")?
        .execute([id])?;
    ctx.transition(
        super::human::question_key(run_id, stage_id, id),
        Some(run_id),
        Some(QuestionState::Open),
        QuestionState::Closed,
        reason.to_owned(),
        actor,
    )
}

/// A stage showing its step's wait runs again once no question its
/// running step waits for is open.
fn resume(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    reason: String,
    actor: &Actor,
) -> Result<()> {
    let open: i64 = ctx
        .conn
        .prepare_cached(
            "SELECT COUNT(*) FROM questions
             WHERE run_id = ?1 AND stage_id = ?2 AND wait_key IS NOT NULL AND state = 'open'",
        )?
        .query_row(params![run_id, stage_id], |r| r.get(0))?;
    if open == 0 && load_stage(ctx, run_id, stage_id)?.state == StageState::AwaitingInput {
        stage_event(ctx, run_id, stage_id, StageEvent::WaitEnded, reason, actor)?;
    }
    Ok(())
}
