//! A stage's `if:` as the store applies it (docs/workflow-conditions.md):
//! what the end of a need that did not succeed does to each pending
//! dependent (the core's `need_ended`: count it, block it, bypass it), and
//! the verdict of a condition once every need it waits for has ended.

use orchestrator_core::machine::{
    condition_holds, need_ended, need_result, needs_status, parse_stage_condition, NeedEnded,
    StageEvent,
};
use orchestrator_core::spec::{matrix_stage_of, Stage};
use orchestrator_core::{Actor, RunId, StageState};

use super::common::workflow;
use super::stage::{load_stage, stage_event};
use super::steps::stage_spec;
use super::substitute::expr_context;
use super::tx::Ctx;
use crate::db::params;
use crate::Result;
use serde_json::Value;

/// `stage_id` ended in `to` (failed, blocked or bypassed): each pending
/// dependent counts it as ended when its condition calls a status
/// function, and is otherwise blocked (after a failure) or bypassed (after
/// a bypass) at once.
pub(super) fn need_ended_for_dependents(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    to: StageState,
) -> Result<()> {
    let dependents: Vec<String> = ctx
        .conn
        .prepare_cached(
            "SELECT q.stage_id FROM requires q JOIN stage_runs s
               ON s.run_id = q.run_id AND s.stage_id = q.stage_id
             WHERE q.run_id = ?1 AND q.required = ?2 AND s.state = 'pending'",
        )?
        .query_map(params![run_id, stage_id], |r| r.get(0))?
        .collect::<crate::db::Result<_>>()?;
    if dependents.is_empty() {
        return Ok(());
    }
    // A stage that ends because its run's spec is unreadable still ends its
    // dependents: each is then taken to call no status function.
    let wf = workflow(ctx, run_id).ok();
    for d in dependents {
        let row = load_stage(ctx, run_id, &d)?;
        // A diamond may reach a dependent twice; the second time it has ended.
        if row.state != StageState::Pending {
            continue;
        }
        let uses_status = wf
            .as_deref()
            .and_then(|wf| stage_spec(wf, run_id, &d, row.ord).ok())
            .and_then(|s| s.condition.as_deref())
            .and_then(|c| parse_stage_condition(c).ok())
            .is_some_and(|e| e.uses_status_function());
        match need_ended(to, uses_status) {
            Some(NeedEnded::Count) => {
                ctx.conn
                    .prepare_cached(
                        "UPDATE stage_runs SET unmet = unmet - 1 WHERE run_id = ?1 AND stage_id = ?2",
                    )?
                    .execute(params![run_id, d.as_str()])?;
                ctx.schedule = true;
            }
            Some(NeedEnded::Block) => {
                stage_event(
                    ctx,
                    run_id,
                    &d,
                    StageEvent::UpstreamFailed,
                    format!("blocked: it needs stage {stage_id}, which ended {to}"),
                    &Actor::Scheduler,
                )?;
            }
            Some(NeedEnded::Bypass) => {
                stage_event(
                    ctx,
                    run_id,
                    &d,
                    StageEvent::Bypass,
                    format!(
                        "bypassed: it needs stage {stage_id}, which was bypassed, and its condition calls no status function"
                    ),
                    &Actor::Scheduler,
                )?;
            }
            None => {}
        }
    }
    Ok(())
}

/// A stage reset by a send-back has had its unmet needs counted as those
/// that did not succeed. A need that ended otherwise and was not reset
/// with it (a bypassed one, or any ended one for a condition that calls a
/// status function) is settled here as [`need_ended_for_dependents`]
/// would have: counted, or the stage bypassed. A failed or blocked need
/// of a stage without such a condition is left as before.
pub(super) fn recount_after_reset(ctx: &mut Ctx<'_>, run_id: &RunId, stage_id: &str) -> Result<()> {
    let row = load_stage(ctx, run_id, stage_id)?;
    if row.state != StageState::Pending {
        return Ok(());
    }
    let needs: Vec<(String, String)> = ctx
        .conn
        .prepare_cached(
            "SELECT q.required, s.state FROM requires q JOIN stage_runs s
               ON s.run_id = q.run_id AND s.stage_id = q.required
             WHERE q.run_id = ?1 AND q.stage_id = ?2",
        )?
        .query_map(params![run_id, stage_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::db::Result<_>>()?;
    let wf = workflow(ctx, run_id).ok();
    let uses_status = wf
        .as_deref()
        .and_then(|wf| stage_spec(wf, run_id, stage_id, row.ord).ok())
        .and_then(|s| s.condition.as_deref())
        .and_then(|c| parse_stage_condition(c).ok())
        .is_some_and(|e| e.uses_status_function());
    let mut counted = 0i64;
    let mut bypassed_by = None;
    for (need, state) in &needs {
        let state = StageState::parse(state).unwrap_or(StageState::Pending);
        match (state, need_ended(state, uses_status)) {
            // Already counted as met by the recount.
            (StageState::Succeeded | StageState::Skipped, _) => {}
            (_, Some(NeedEnded::Count)) => counted += 1,
            (_, Some(NeedEnded::Bypass)) => bypassed_by = Some(need.clone()),
            _ => {}
        }
    }
    if counted > 0 {
        ctx.conn
            .prepare_cached(
                "UPDATE stage_runs SET unmet = unmet - ?3 WHERE run_id = ?1 AND stage_id = ?2",
            )?
            .execute(params![run_id, stage_id, counted])?;
    }
    if let Some(need) = bypassed_by {
        stage_event(
            ctx,
            run_id,
            stage_id,
            StageEvent::Bypass,
            format!(
                "bypassed: it needs stage {need}, which was bypassed, and its condition calls no status function"
            ),
            &Actor::Scheduler,
        )?;
    }
    Ok(())
}

/// What a stage with a condition does once the needs it waits for ended.
pub(super) enum Verdict {
    /// It runs; the reason for its transition.
    Run(String),
    /// It is bypassed; the reason says the condition and its value.
    Bypass(String),
    /// The condition could not be evaluated: a task failure of the stage.
    Fail(String),
}

/// Evaluates `stage`'s condition `cond` with its context (the one its
/// commands read, [`expr_context`]), `stages.<need>.result` of each need
/// and the status of its needs.
pub(super) fn verdict(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage: &Stage,
    cond: &str,
) -> Result<Verdict> {
    let mut names = expr_context(ctx, run_id, &stage.id, true)?;
    let mut states = Vec::with_capacity(stage.needs.len());
    let mut stages = match names.remove("stages") {
        Some(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    for need in &stage.needs {
        let state = load_stage(ctx, run_id, need)?.state;
        states.push(state);
        let result = need_result(state).unwrap_or("pending");
        add_result(&mut stages, need, result);
        // A matrix stage's name reads its instances together.
        if let Some(of) = matrix_stage_of(need) {
            let joined = match stages.get(of).and_then(|v| v.get("result")) {
                Some(Value::String(r)) => joined_result(r, result).to_owned(),
                _ => result.to_owned(),
            };
            set_result(&mut stages, of, &joined);
        }
    }
    names.insert("stages", Value::Object(stages));
    let names = names.with_status(needs_status(&states, false));
    let field = |column: usize, message: &str| {
        format!(
            "task failure: stage {:?}: field `if` ({cond:?}): column {column}: {message}",
            stage.id
        )
    };
    let expr = match parse_stage_condition(cond) {
        Ok(e) => e,
        Err(e) => return Ok(Verdict::Fail(field(e.column, &e.message))),
    };
    Ok(match condition_holds(&expr, &names) {
        Ok(true) => Verdict::Run(format!("runnable: its condition `{cond}` is true")),
        Ok(false) if expr.uses_status_function() => {
            Verdict::Bypass(format!("bypassed: its condition `{cond}` is false"))
        }
        Ok(false) => Verdict::Bypass(format!(
            "bypassed: its condition `{cond}` is false (it calls no status function, so it means `success() && ({cond})`)"
        )),
        Err(e) => Verdict::Fail(field(e.column, &e.message)),
    })
}

/// Sets `stages.<id>.result` unless the context already has it.
fn add_result(stages: &mut serde_json::Map<String, Value>, id: &str, result: &str) {
    let entry = stages
        .entry(id.to_owned())
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let Value::Object(m) = entry {
        m.entry("result".to_owned())
            .or_insert_with(|| Value::String(result.to_owned()));
    }
}

fn set_result(stages: &mut serde_json::Map<String, Value>, id: &str, result: &str) {
    let entry = stages
        .entry(id.to_owned())
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let Value::Object(m) = entry {
        m.insert("result".to_owned(), Value::String(result.to_owned()));
    }
}

/// A matrix stage's result from two of its instances': `failure` over
/// `cancelled` over `skipped` over `success`, so it reads `success` only
/// when every instance succeeded.
fn joined_result<'a>(a: &'a str, b: &'a str) -> &'a str {
    let rank = |r: &str| match r {
        "failure" => 4,
        "cancelled" => 3,
        "pending" => 2,
        "skipped" => 1,
        _ => 0,
    };
    if rank(a) >= rank(b) {
        a
    } else {
        b
    }
}
