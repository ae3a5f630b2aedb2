//! Feedback loops across stages: a stage's work sent back to a stage it
//! needs, by a human (`orch retry RUN STAGE --feedback`) or by the failed
//! stage's own `on_failure: {retry_stage}`. The stage sent back runs its
//! last step again with the feedback (handed over as a rejection's is);
//! every stage after it that ran or waits goes back to waiting and runs
//! again after it. And the rounds of a step: which run of it a job is, and
//! why it runs. Run by the writer inside a batch's transaction.

use orchestrator_core::Actor;
use orchestrator_core::RunId;
use std::collections::BTreeSet;

use crate::db::{params, Optional};
use orchestrator_core::api::{Handoff, Said};
use orchestrator_core::machine::{After, StageEvent};
use orchestrator_core::quote;
use orchestrator_core::rounds::{next_round as round_of, round_cause, EarlierJob, RoundReason};
use orchestrator_core::spec::Stage;
use orchestrator_core::{RunState, StageState};

use super::common::{conflict, workflow};
use super::stage::{load_stage, stage_event};
use super::tx::Ctx;
use super::{human, steps};
use crate::{Result, StoreError};

/// The most characters of feedback a transition's reason repeats (the
/// handoff keeps all of it).
const SHOWN: usize = 300;

/// The round (and why) of the job about to run job number `position` of
/// a stage, made because of `event`.
pub(super) fn next_round(
    ctx: &Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    stage: &Stage,
    position: u32,
    event: &StageEvent,
) -> Result<(u32, RoundReason)> {
    let earlier: Vec<EarlierJob> = ctx
        .conn
        .prepare_cached(
            "SELECT step, started_at IS NOT NULL, round, round_reason FROM jobs
             WHERE run_id = ?1 AND stage_id = ?2 ORDER BY id",
        )?
        .query_map(params![run_id, stage_id], |r| {
            let reason: String = r.get(3)?;
            Ok(EarlierJob {
                index: stage.step_index(r.get(0)?),
                started: r.get(1)?,
                round: r.get(2)?,
                reason: RoundReason::parse(&reason).unwrap_or_default(),
            })
        })?
        .collect::<crate::db::Result<_>>()?;
    let cause = match *event {
        StageEvent::StepSucceeded {
            step,
            after: After::Step(next),
            ..
        } if stage.iteration_of(next) > stage.iteration_of(step) => Some(RoundReason::Loop),
        ref e => round_cause(e),
    };
    Ok(round_of(&earlier, stage.step_index(position), cause))
}

/// Every stage after `stage_id` (needing it, directly or through others),
/// in the workflow's order.
fn descendants(ctx: &Ctx<'_>, run_id: &RunId, stage_id: &str) -> Result<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![stage_id.to_owned()];
    let mut next = ctx
        .conn
        .prepare_cached("SELECT stage_id FROM requires WHERE run_id = ?1 AND required = ?2")?;
    while let Some(s) = todo.pop() {
        let found: Vec<String> = next
            .query_map(params![run_id, s.as_str()], |r| r.get(0))?
            .collect::<crate::db::Result<_>>()?;
        for d in found {
            if seen.insert(d.clone()) {
                todo.push(d);
            }
        }
    }
    drop(next);
    let mut ordered: Vec<(i64, String)> = Vec::with_capacity(seen.len());
    for d in seen {
        let ord: i64 = ctx
            .conn
            .prepare_cached("SELECT ord FROM stage_runs WHERE run_id = ?1 AND stage_id = ?2")?
            .query_row(params![run_id, d.as_str()], |r| r.get(0))?;
        ordered.push((ord, d));
    }
    ordered.sort();
    Ok(ordered.into_iter().map(|(_, d)| d).collect())
}

/// A stage that had ended is open again: its run counts it so, and it has
/// no end time.
pub(super) fn reopen(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    from: StageState,
) -> Result<()> {
    let counted_ok = i64::from(matches!(
        from,
        StageState::Succeeded | StageState::Skipped | StageState::Bypassed
    ));
    ctx.conn
        .prepare_cached(
            "UPDATE runs SET stages_ended = stages_ended - 1, stages_succeeded = stages_succeeded - ?2
             WHERE id = ?1",
        )?
        .execute(params![run_id, counted_ok])?;
    ctx.conn
        .prepare_cached(
            "UPDATE stage_runs SET ended_at = NULL WHERE run_id = ?1 AND stage_id = ?2",
        )?
        .execute(params![run_id, stage_id])?;
    Ok(())
}

/// Every stage after `stage_id` goes back to waiting for its needs (its
/// live job cancelled, its questions closed, what humans handed it
/// dropped), and each one's count of unmet needs is taken again.
pub(super) fn reset_dependents(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    why: &str,
    actor: &Actor,
) -> Result<()> {
    let after = descendants(ctx, run_id, stage_id)?;
    for d in &after {
        stage_event(
            ctx,
            run_id,
            d,
            StageEvent::Reset,
            format!("runs again after {stage_id}, which was sent back: {why}"),
            actor,
        )?;
        ctx.conn
            .prepare_cached(
                "UPDATE stage_runs SET handoff = NULL, resume_step = NULL, retry_at = NULL, hold = NULL
                 WHERE run_id = ?1 AND stage_id = ?2",
            )?
            .execute(params![run_id, d.as_str()])?;
    }
    for d in &after {
        ctx.conn
            .prepare_cached(
                "UPDATE stage_runs SET unmet = (
                    SELECT COUNT(*) FROM requires q JOIN stage_runs s
                      ON s.run_id = q.run_id AND s.stage_id = q.required
                    WHERE q.run_id = ?1 AND q.stage_id = ?2 AND s.state NOT IN ('succeeded', 'skipped'))
                 WHERE run_id = ?1 AND stage_id = ?2",
            )?
            .execute(params![run_id, d.as_str()])?;
        super::conditions::recount_after_reset(ctx, run_id, d)?;
    }
    ctx.schedule = true;
    Ok(())
}

/// The job number a stage sent back runs again: the step that failed when
/// it awaits a decision, else its last step (not its validation, which
/// follows it again).
fn last_step(ctx: &mut Ctx<'_>, run_id: &RunId, stage_id: &str, state: StageState) -> Result<u32> {
    if state == StageState::AwaitingDecision {
        return Ok(human::resume_step(ctx, run_id, stage_id)?.unwrap_or(0));
    }
    let ord = human::stage_ord(ctx, run_id, stage_id)?;
    let wf = workflow(ctx, run_id)?;
    let stage = steps::stage_spec(&wf, run_id, stage_id, ord)?;
    let validation = stage.validation_step().map_or(-1, i64::from);
    let last: Option<u32> = ctx
        .conn
        .prepare_cached(
            "SELECT MAX(step) FROM jobs WHERE run_id = ?1 AND stage_id = ?2 AND state = 'succeeded' AND step <> ?3",
        )?
        .query_row(params![run_id, stage_id, validation], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(last.unwrap_or(0))
}

/// Sends the work back to `target` with `feedback`: it runs its last step
/// (or the one that failed) again with the feedback, and what follows it
/// runs again after it. `why` says what sent it (`by a human`, `after
/// stage test failed (round 1 of 3)`).
fn send_back(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    target: &str,
    feedback: &str,
    why: &str,
    actor: &Actor,
) -> Result<()> {
    let row = load_stage(ctx, run_id, target)?;
    let step = last_step(ctx, run_id, target, row.state)?;
    let handoff = Handoff {
        for_step: step,
        feedback: Some(Said {
            text: feedback.to_owned(),
            by: actor.to_string(),
        }),
        answers: Vec::new(),
        sent_back: Some(why.to_owned()),
    };
    human::set_handoff(ctx, run_id, target, &handoff)?;
    let next = human::next_of(ctx, run_id, target, Some(step))?;
    let ord = human::stage_ord(ctx, run_id, target)?;
    let wf = workflow(ctx, run_id)?;
    let index = steps::stage_spec(&wf, run_id, target, ord)?.step_index(step);
    stage_event(
        ctx,
        run_id,
        target,
        StageEvent::SendBack { next },
        format!(
            "sent back {why}: step {index} runs again as attempt {} with feedback: {}",
            row.attempt.saturating_add(1),
            quote::one_line(feedback, SHOWN)
        ),
        actor,
    )?;
    Ok(())
}

/// The states of a stage after `target` that show it was worth sending
/// back: it ended, or it waits for a human.
const RAN: [StageState; 6] = [
    StageState::Succeeded,
    StageState::Skipped,
    StageState::Failed,
    StageState::AwaitingDecision,
    StageState::AwaitingApproval,
    StageState::AwaitingInput,
];

/// `orch retry RUN STAGE --feedback TEXT`: a human sends the work back.
pub fn by_human(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    target: &str,
    feedback: &str,
    comment: Option<&str>,
    actor: &Actor,
) -> Result<()> {
    if feedback.trim().is_empty() {
        return Err(StoreError::Invalid(
            "empty feedback; say what the stage must change".into(),
        ));
    }
    let run: Option<String> = ctx
        .conn
        .prepare_cached("SELECT state FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| r.get(0))
        .optional()?;
    let run = run.ok_or_else(|| StoreError::NotFound {
        what: "run",
        id: run_id.to_string(),
    })?;
    let run = RunState::parse(&run).unwrap_or(RunState::Failed);
    if run.is_terminal() {
        return Err(conflict(format!(
            "run {run_id} has already ended {run}; work can be sent back to stage {target} only while its run is queued, running or paused"
        )));
    }
    let row = load_stage(ctx, run_id, target)?;
    let expected = "--feedback sends the work back to a stage that succeeded (with a stage after it that ended or waits for a human) or awaits a decision";
    match row.state {
        StageState::AwaitingDecision => {}
        StageState::Succeeded => {
            let mut ran = Vec::new();
            for d in descendants(ctx, run_id, target)? {
                if RAN.contains(&load_stage(ctx, run_id, &d)?.state) {
                    ran.push(d);
                }
            }
            if ran.is_empty() {
                return Err(conflict(format!(
                    "stage {target} of run {run_id} succeeded, but no stage after it has ended or waits for a human, so nothing shows its work needs changing; {expected}"
                )));
            }
        }
        StageState::Pending => {
            return Err(conflict(format!(
                "stage {target} of run {run_id} has not run yet (pending); {expected}"
            )))
        }
        other => {
            return Err(conflict(format!(
                "stage {target} of run {run_id} is {other}; {expected}"
            )))
        }
    }
    let why = match comment.map(str::trim) {
        Some(c) if !c.is_empty() => format!("by a human ({})", quote::one_line(c, SHOWN)),
        _ => "by a human".to_owned(),
    };
    send_back(ctx, run_id, target, feedback, &why, actor)
}

/// Where a failure of `stage_id` would send its work (its `on_failure`
/// rule, with rounds left and its target succeeded), in words for the
/// failure's transition; None when it would not.
pub(super) fn send_back_plan(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
) -> Result<Option<String>> {
    let ord = human::stage_ord(ctx, run_id, stage_id)?;
    let wf = workflow(ctx, run_id)?;
    let stage = steps::stage_spec(&wf, run_id, stage_id, ord)?;
    let Some(rule) = stage.send_back() else {
        return Ok(None);
    };
    let done = rounds_done(ctx, run_id, stage_id)?;
    if done >= rule.rounds() {
        return Ok(None);
    }
    let target = load_stage(ctx, run_id, &rule.retry_stage)?;
    if target.state != StageState::Succeeded {
        return Ok(None);
    }
    Ok(Some(format!(
        "its work goes back to stage {} with the failure as feedback (round {} of {}); this stage runs again after it",
        rule.retry_stage,
        done + 1,
        rule.rounds()
    )))
}

/// How many times a stage's failures sent its work back automatically.
fn rounds_done(ctx: &Ctx<'_>, run_id: &RunId, stage_id: &str) -> Result<u32> {
    Ok(ctx
        .conn
        .prepare_cached("SELECT sent_back FROM stage_runs WHERE run_id = ?1 AND stage_id = ?2")?
        .query_row(params![run_id, stage_id], |r| r.get(0))?)
}

/// The failed stage's `on_failure` sends its work back: the feedback is
/// built from its last job (the failing command, its exit code, the tail
/// of its output).
pub(super) fn after_failure(ctx: &mut Ctx<'_>, run_id: &RunId, stage_id: &str) -> Result<()> {
    let ord = human::stage_ord(ctx, run_id, stage_id)?;
    let wf = workflow(ctx, run_id)?;
    let stage = steps::stage_spec(&wf, run_id, stage_id, ord)?;
    let rule = stage.send_back().ok_or_else(|| {
        StoreError::Internal(format!(
            "stage {stage_id} of run {run_id} has no on_failure rule to send its work back"
        ))
    })?;
    let round: u32 = ctx
        .conn
        .prepare_cached(
            "UPDATE stage_runs SET sent_back = sent_back + 1 WHERE run_id = ?1 AND stage_id = ?2
             RETURNING sent_back",
        )?
        .query_row(params![run_id, stage_id], |r| r.get(0))?;
    let (step, error, tail): (u32, Option<String>, Option<String>) = ctx
        .conn
        .prepare_cached(
            "SELECT step, error, log_tail FROM jobs WHERE run_id = ?1 AND stage_id = ?2
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row(params![run_id, stage_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let error = error
        .unwrap_or_else(|| "its loop's until check still failed after the last iteration".into());
    let feedback = orchestrator_core::feedback::failure_feedback(
        stage_id,
        stage.step_index(step),
        &error,
        tail.as_deref(),
        rule.feedback,
    );
    let why = format!(
        "after stage {stage_id} failed (round {round} of {})",
        rule.rounds()
    );
    let target = rule.retry_stage.clone();
    send_back(ctx, run_id, &target, &feedback, &why, &Actor::Scheduler)
}
