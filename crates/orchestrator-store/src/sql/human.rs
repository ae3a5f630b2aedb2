//! Where humans meet the run graph: a step's checkpoint and the questions it
//! asked, input steps, and the approve, reject and answer commands. Run by
//! the writer inside a batch's transaction, like the rest of the graph.

use crate::db::{params, Optional};
use orchestrator_core::api::{Answered, Ask, Handoff, QuestionState, Said, StepOutcome};
use orchestrator_core::machine::CheckpointState;
use orchestrator_core::machine::{After, Gate, StageEvent};
use orchestrator_core::spec::Stage;
use orchestrator_core::Actor;
use orchestrator_core::StageState;
use orchestrator_core::{JobId, RunId};

use super::common::{conflict, workflow};
use super::stage::{load_stage, stage_event, StageRow};
use super::steps::{parse_handoff, stage_spec, step_of};
use super::tx::Ctx;
use crate::{Result, StoreError};

/// A stage's position in its run's workflow, which `stage_spec` needs.
pub(super) fn stage_ord(ctx: &Ctx<'_>, run_id: &RunId, stage_id: &str) -> Result<usize> {
    let ord: i64 = ctx
        .conn
        .prepare_cached("SELECT ord FROM stage_runs WHERE run_id = ?1 AND stage_id = ?2")?
        .query_row(params![run_id, stage_id], |r| r.get(0))?;
    Ok(ord as usize)
}

/// The first step of the loop iteration that step `step` ends.
pub(super) fn last_iteration_start(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    step: u32,
) -> Result<u32> {
    let ord = stage_ord(ctx, run_id, stage_id)?;
    let wf = workflow(ctx, run_id)?;
    let stage = stage_spec(&wf, run_id, stage_id, ord)?;
    let per = u32::try_from(stage.steps.len()).unwrap_or(u32::MAX).max(1);
    Ok((step.saturating_add(1)).saturating_sub(per))
}

/// What a stage runs when it goes on at `step` (None: nothing is left).
pub(super) fn next_of(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    step: Option<u32>,
) -> Result<After> {
    let Some(step) = step else {
        return Ok(After::Done);
    };
    let ord = stage_ord(ctx, run_id, stage_id)?;
    let wf = workflow(ctx, run_id)?;
    let stage = stage_spec(&wf, run_id, stage_id, ord)?;
    Ok(if stage.validation_step() == Some(step) {
        After::Validate(step)
    } else {
        After::Step(step)
    })
}

/// Records what a successful step left behind (its checkpoint commit and the
/// questions it asked) and says what the stage does next.
pub(super) fn step_succeeded(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    job_id: JobId,
    step: u32,
    o: &StepOutcome,
    actor: &Actor,
) -> Result<StageEvent> {
    let row = load_stage(ctx, run_id, stage_id)?;
    let wf = workflow(ctx, run_id)?;
    let stage = stage_spec(&wf, run_id, stage_id, row.ord)?;
    let validation = stage.validation_step() == Some(step);
    let name = stage.job_name(step);
    if let Some(cp) = &o.checkpoint {
        let seq: u32 = ctx
            .conn
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM checkpoints WHERE run_id = ?1")?
            .query_row([run_id], |r| r.get(0))?;
        let artifacts = crate::error::encode("a checkpoint's artifacts", &cp.artifacts)?;
        let outputs = super::outputs::encode(&o.outputs)?;
        ctx.conn
            .prepare_cached(
                "INSERT INTO checkpoints (run_id, seq, stage_id, step, job_id, commit_sha, artifacts, created_at, outputs)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![run_id, seq, stage_id, step, job_id, cp.commit, artifacts, ctx.now, outputs])?;
        let short = cp.commit.get(..12).unwrap_or(&cp.commit);
        ctx.transition(
            format!("{run_id}/{stage_id}/{seq}"),
            Some(run_id),
            None,
            CheckpointState::Committed,
            format!(
                "checkpoint {seq}: step {step}{} committed {short} with {} artifact{}",
                name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default(),
                cp.artifacts.len(),
                if cp.artifacts.len() == 1 { "" } else { "s" }
            ),
            actor,
        )?;
    }
    for ask in &o.questions {
        ask_question(ctx, run_id, stage_id, step, Some(job_id), ask, None, actor)?;
    }
    // What humans said was for this step; it has now seen it.
    ctx.conn
        .prepare_cached(
            "UPDATE stage_runs SET handoff = NULL
             WHERE run_id = ?1 AND stage_id = ?2 AND handoff IS NOT NULL",
        )?
        .execute(params![run_id, stage_id])?;
    if validation {
        return Ok(StageEvent::Validated);
    }
    let spec = step_of(stage, step)?;
    let gate = if !o.questions.is_empty() {
        Gate::Question
    } else if spec.approve {
        Gate::Approval
    } else {
        Gate::None
    };
    Ok(StageEvent::StepSucceeded {
        step,
        after: stage.after(step, o.until_met),
        gate,
    })
}

/// A question's entity id in the transitions log: `run/stage/id`.
pub(super) fn question_key(run_id: &RunId, stage_id: &str, id: i64) -> String {
    format!(
        "{}/{id}",
        orchestrator_core::StageKey::new(run_id.as_str(), stage_id)
    )
}

/// Records an open question. `wait_key`: its running step waits for the
/// answer inside (`orch ask --wait`), and its agent named the ask so.
#[allow(clippy::too_many_arguments)]
pub(super) fn ask_question(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    step: u32,
    job_id: Option<JobId>,
    ask: &Ask,
    wait_key: Option<&str>,
    actor: &Actor,
) -> Result<i64> {
    let choices = crate::error::encode("a question's choices", &ask.choices)?;
    let id: i64 = ctx.conn
        .prepare_cached(
            "INSERT INTO questions (run_id, stage_id, step, job_id, question, choices, state, asked_at, wait_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open', ?7, ?8) RETURNING id",
        )?
        .query_row(params![run_id, stage_id, step, job_id, ask.question, choices, ctx.now, wait_key], |r| r.get(0))?;
    ctx.transition(
        question_key(run_id, stage_id, id),
        Some(run_id),
        None,
        QuestionState::Open,
        ask.question.clone(),
        actor,
    )?;
    Ok(id)
}

/// An input step came up: ask its question instead of queuing a job.
pub(super) fn ask_input(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    stage: &Stage,
    step: u32,
) -> Result<()> {
    let spec = step_of(stage, step)?;
    let Some(input) = &spec.input else {
        return Err(StoreError::Internal(format!(
            "step {step} of stage {stage_id} is not an input step"
        )));
    };
    let ask = Ask {
        question: input.question.clone(),
        choices: input.choices.clone(),
    };
    let id = ask_question(
        ctx,
        run_id,
        stage_id,
        step,
        None,
        &ask,
        None,
        &Actor::Scheduler,
    )?;
    stage_event(
        ctx,
        run_id,
        stage_id,
        StageEvent::Asked {
            after: stage.after(step, None),
        },
        format!("step {step} asks question {id}: {}", input.question),
        &Actor::Scheduler,
    )?;
    Ok(())
}

/// The step a waiting stage resumes at (None: it is then done).
pub(super) fn resume_step(ctx: &Ctx<'_>, run_id: &RunId, stage_id: &str) -> Result<Option<u32>> {
    Ok(ctx
        .conn
        .prepare_cached("SELECT resume_step FROM stage_runs WHERE run_id = ?1 AND stage_id = ?2")?
        .query_row(params![run_id, stage_id], |r| r.get(0))?)
}

/// The stage, which must be waiting in `want`.
fn waiting_stage(
    ctx: &Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    want: StageState,
) -> Result<StageRow> {
    let row = load_stage(ctx, run_id, stage_id)?;
    if row.state != want {
        return Err(conflict(format!(
            "stage {stage_id} of run {run_id} is {}, not {want}; nothing to {}",
            row.state,
            if want == StageState::AwaitingApproval {
                "approve or reject"
            } else {
                "answer"
            }
        )));
    }
    Ok(row)
}

pub(super) fn set_handoff(
    ctx: &Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    h: &Handoff,
) -> Result<()> {
    let json = crate::error::encode("a human decision", h)?;
    ctx.conn
        .prepare_cached("UPDATE stage_runs SET handoff = ?3 WHERE run_id = ?1 AND stage_id = ?2")?
        .execute(params![run_id, stage_id, json])?;
    Ok(())
}

/// The handoff waiting for step `step` of a stage, if any.
pub(super) fn handoff_for(
    ctx: &Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    step: u32,
) -> Result<Option<Handoff>> {
    let json: Option<String> = ctx
        .conn
        .prepare_cached("SELECT handoff FROM stage_runs WHERE run_id = ?1 AND stage_id = ?2")?
        .query_row(params![run_id, stage_id], |r| r.get(0))?;
    Ok(parse_handoff(json.as_deref(), step))
}

/// `orch approve`: the held stage goes on.
pub fn approve(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    comment: Option<String>,
    actor: &Actor,
) -> Result<()> {
    waiting_stage(ctx, run_id, stage_id, StageState::AwaitingApproval)?;
    let resume = resume_step(ctx, run_id, stage_id)?;
    let next = next_of(ctx, run_id, stage_id, resume)?;
    let reason = match comment.as_deref().map(str::trim) {
        Some(c) if !c.is_empty() => format!("approved: {c}"),
        _ => "approved".to_owned(),
    };
    stage_event(
        ctx,
        run_id,
        stage_id,
        StageEvent::Approve { next },
        reason,
        actor,
    )?;
    Ok(())
}

/// `orch reject`: the held step runs again with the feedback.
pub fn reject(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    feedback: String,
    actor: &Actor,
) -> Result<()> {
    if feedback.trim().is_empty() {
        return Err(StoreError::Invalid(
            "empty feedback; say what the step must change".into(),
        ));
    }
    waiting_stage(ctx, run_id, stage_id, StageState::AwaitingApproval)?;
    let step: u32 = ctx
        .conn
        .prepare_cached("SELECT step FROM stage_runs WHERE run_id = ?1 AND stage_id = ?2")?
        .query_row(params![run_id, stage_id], |r| r.get(0))?;
    let handoff = Handoff {
        for_step: step,
        feedback: Some(Said {
            text: feedback.clone(),
            by: actor.to_string(),
        }),
        answers: Vec::new(),
        sent_back: None,
    };
    set_handoff(ctx, run_id, stage_id, &handoff)?;
    stage_event(
        ctx,
        run_id,
        stage_id,
        StageEvent::Reject { step },
        format!("rejected; step {step} runs again with feedback: {feedback}"),
        actor,
    )?;
    Ok(())
}

/// `orch answer`: records the answer; once the stage has no open question
/// left, it goes on and its next step receives the answers.
pub fn answer(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    question_id: i64,
    text: String,
    actor: &Actor,
) -> Result<()> {
    type Row = (String, String, String, String, Option<String>, i64);
    let q: Option<Row> = ctx
        .conn
        .prepare_cached(
            "SELECT stage_id, question, choices, state, answered_by,
                    CASE WHEN wait_key IS NULL THEN 0 ELSE 1 END
             FROM questions WHERE id = ?1 AND run_id = ?2",
        )?
        .query_row(params![question_id, run_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    let Some((stage_id, question, choices, state, answered_by, waited)) = q else {
        return Err(StoreError::NotFound {
            what: "question",
            id: format!("{question_id} of run {run_id}"),
        });
    };
    match QuestionState::parse(&state) {
        Some(QuestionState::Open) => {}
        Some(QuestionState::Answered) => {
            return Err(conflict(format!(
                "question {question_id} was already answered{}",
                answered_by.map(|b| format!(" by {b}")).unwrap_or_default()
            )))
        }
        _ => {
            return Err(conflict(format!(
                "question {question_id} is closed: its stage {stage_id} ended before an answer"
            )))
        }
    }
    let choices: Vec<String> = serde_json::from_str(&choices).unwrap_or_default();
    if text.trim().is_empty() {
        return Err(StoreError::Invalid(
            "empty answer; expected some text".into(),
        ));
    }
    if !choices.is_empty() && !choices.contains(&text) {
        return Err(StoreError::Invalid(format!(
            "answer {text:?} is not one of the offered choices: {}",
            choices.join(", ")
        )));
    }
    waiting_stage(ctx, run_id, &stage_id, StageState::AwaitingInput)?;
    ctx.conn
        .prepare_cached(
            "UPDATE questions SET state = 'answered', answer = ?2, answered_by = ?3, answered_at = ?4 WHERE id = ?1",
        )?
        .execute(params![question_id, text, actor.to_string(), ctx.now])?;
    ctx.transition(
        question_key(run_id, &stage_id, question_id),
        Some(run_id),
        Some(QuestionState::Open),
        QuestionState::Answered,
        text.clone(),
        actor,
    )?;
    if waited != 0 {
        // Its step is still running, waiting for this: no handoff, no new
        // round; the answer reaches the step where it runs.
        return super::wait::answered(ctx, run_id, &stage_id, question_id, actor);
    }
    let open: i64 = ctx
        .conn
        .prepare_cached(
            "SELECT COUNT(*) FROM questions WHERE run_id = ?1 AND stage_id = ?2 AND state = 'open'",
        )?
        .query_row(params![run_id, &stage_id], |r| r.get(0))?;
    let resume = resume_step(ctx, run_id, &stage_id)?;
    if let Some(step) = resume {
        let mut handoff = handoff_for(ctx, run_id, &stage_id, step)?.unwrap_or(Handoff {
            for_step: step,
            ..Handoff::default()
        });
        handoff.answers.push(Answered {
            question_id,
            question,
            answer: text.clone(),
            by: actor.to_string(),
        });
        set_handoff(ctx, run_id, &stage_id, &handoff)?;
    }
    if open == 0 {
        let next = next_of(ctx, run_id, &stage_id, resume)?;
        stage_event(
            ctx,
            run_id,
            &stage_id,
            StageEvent::Answer { next },
            format!("question {question_id} answered: {text}"),
            actor,
        )?;
    }
    Ok(())
}

/// Closes a stage's open questions: it ended and nobody can answer them.
pub(super) fn close_questions(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    reason: &str,
    actor: &Actor,
) -> Result<()> {
    let open: Vec<i64> = ctx
        .conn
        .prepare_cached(
            "SELECT id FROM questions WHERE run_id = ?1 AND stage_id = ?2 AND state = 'open'",
        )?
        .query_map(params![run_id, stage_id], |r| r.get(0))?
        .collect::<crate::db::Result<_>>()?;
    for id in open {
        ctx.conn
            .prepare_cached("UPDATE questions SET state = 'closed' WHERE id = ?1")?
            .execute([id])?;
        ctx.transition(
            question_key(run_id, stage_id, id),
            Some(run_id),
            Some(QuestionState::Open),
            QuestionState::Closed,
            reason.to_owned(),
            actor,
        )?;
    }
    Ok(())
}
