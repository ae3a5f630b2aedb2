//! `${{ }}` when the store makes a job: the context its expressions read
//! (built in one place, [`expr_context`]), and a job's commands and
//! environment rendered with it, with the run's inputs added as
//! `ORCH_INPUT_*` variables. Rendering here, not on the agent, means the
//! agent runs concrete commands and the job's stored spec shows exactly
//! what ran.

use std::collections::BTreeMap;

use orchestrator_core::expr::{Context, Template};
use orchestrator_core::spec::{
    input_env_name, input_env_value, substitute_command, substitute_commands, substitute_env,
    substitute_text, CommandSpec, Stage, Step, SubstError,
};
use orchestrator_core::RunId;
use serde_json::Value;

use super::common::decode_inputs;
use super::tx::Ctx;
use crate::db::params;
use crate::{Result, StoreError};

/// What `${{ }}` reads in stage `stage_id`'s commands: `inputs` (the run's
/// bound inputs), `matrix` (the stage's values, only for a stage a matrix
/// made), `run` (`id`, `workflow`) and, with `with_stages`, `stages` (see
/// [`upstream`]: it reads every stage the stage needs, so a job whose
/// fields do not read it, most of them, goes without). The one place these
/// names are gathered for a job.
pub(super) fn expr_context(
    ctx: &Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    with_stages: bool,
) -> Result<Context<'static>> {
    let (workflow, inputs): (String, Option<String>) = ctx
        .conn
        .prepare_cached("SELECT workflow, inputs FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let matrix: Option<String> = ctx
        .conn
        .prepare_cached("SELECT matrix FROM stage_runs WHERE run_id = ?1 AND stage_id = ?2")?
        .query_row(params![run_id, stage_id], |r| r.get(0))?;
    let matrix = match matrix {
        Some(m) => Some(serde_json::from_str(&m).map_err(|e| {
            StoreError::corrupt(
                format!("run {run_id}: stage {stage_id}'s matrix values unreadable"),
                e,
            )
        })?),
        None => None,
    };
    let inputs = decode_inputs(run_id, inputs.as_deref())?;
    let mut c = context_of(run_id, &workflow, inputs, matrix);
    if with_stages {
        c.insert("stages", upstream(ctx, run_id, stage_id)?);
    }
    Ok(c)
}

/// `stages` for stage `stage_id`: every stage it needs, directly or through
/// others (the `requires` rows followed), by id, with its merged
/// `outputs` and its `result` as conditions read it (`success`, `failure`,
/// `skipped`, `cancelled`: `machine::need_result`).
/// Only needs are there: a stage reads nothing of a stage that may not
/// have ended.
fn upstream(ctx: &Ctx<'_>, run_id: &RunId, stage_id: &str) -> Result<Value> {
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![stage_id.to_owned()];
    let mut stmt = ctx
        .conn
        .prepare_cached("SELECT required FROM requires WHERE run_id = ?1 AND stage_id = ?2")?;
    while let Some(s) = todo.pop() {
        let needs: Vec<String> = stmt
            .query_map(params![run_id, s], |r| r.get(0))?
            .collect::<crate::db::Result<_>>()?;
        todo.extend(needs.into_iter().filter(|n| seen.insert(n.clone())));
    }
    drop(stmt);
    let mut stages = serde_json::Map::new();
    for id in seen {
        let state: String = ctx
            .conn
            .prepare_cached("SELECT state FROM stage_runs WHERE run_id = ?1 AND stage_id = ?2")?
            .query_row(params![run_id, id], |r| r.get(0))?;
        let outputs = super::outputs::of_stage(ctx.conn, run_id, &id)?;
        let result = orchestrator_core::StageState::parse(&state)
            .and_then(orchestrator_core::machine::need_result)
            .unwrap_or(state.as_str());
        stages.insert(
            id,
            serde_json::json!({"outputs": outputs, "result": result}),
        );
    }
    Ok(Value::Object(stages))
}

/// The context of a run's stage from its parts (see [`expr_context`]);
/// the submission renders every stage with it once, before anything is
/// written, so that a job's rendering cannot fail later for what it knew.
/// No stage has outputs yet: `stages` is empty, so a reference to an
/// output renders empty there (see [`check_stage`]).
pub(super) fn context_of(
    run_id: &RunId,
    workflow: &str,
    inputs: BTreeMap<String, Value>,
    matrix: Option<Value>,
) -> Context<'static> {
    let mut c = Context::new()
        .with("inputs", Value::Object(inputs.into_iter().collect()))
        .with(
            "run",
            serde_json::json!({"id": run_id.as_str(), "workflow": workflow}),
        )
        .with("stages", Value::Object(serde_json::Map::new()));
    if let Some(m) = matrix {
        c.insert("matrix", m);
    }
    c
}

/// A job's step, loop check and environment, rendered.
pub(super) struct Rendered {
    pub(super) step: Step,
    pub(super) until: Option<CommandSpec>,
    pub(super) env: BTreeMap<String, String>,
}

/// Renders what a job runs. `st` is the step (or the
/// validation made a step), `field` its path in the stage (`steps[0]`,
/// `validate`); `env` is the workflow's and the stage's variables merged.
/// Every bound input is added to the environment as `ORCH_INPUT_<NAME>`,
/// over a variable of the same name.
pub(super) fn render_job(
    st: &Step,
    field: &str,
    until: Option<&CommandSpec>,
    env: &BTreeMap<String, String>,
    expr: &Context<'_>,
) -> std::result::Result<Rendered, SubstError> {
    let mut env = substitute_env(env, expr, "env")?;
    if let Some(Value::Object(inputs)) = expr.get("inputs") {
        for (name, value) in inputs {
            env.insert(input_env_name(name), input_env_value(value));
        }
    }
    Ok(Rendered {
        step: substitute_commands(st, expr, field)?,
        until: until
            .map(|u| substitute_command(u, expr, "repeat.until"))
            .transpose()?,
        env,
    })
}

/// Renders every field of every job `stage` can make with `expr`, refusing
/// the first that does not render: a run is refused at submission rather
/// than failing when its job is made. A field that reads `stages` is let
/// through when it does not render: no stage has outputs yet (an empty one
/// may not parse as JSON, say), so only its job can tell.
pub(super) fn check_stage(
    stage: &Stage,
    env: &BTreeMap<String, String>,
    expr: &Context<'_>,
) -> Result<()> {
    let check = |text: &str, field: String| -> Result<()> {
        match substitute_text(text, expr, &field) {
            Ok(_) => Ok(()),
            Err(e) if reads_stages(text) => {
                tracing::debug!(stage = %stage.id, error = %e, "left to job creation: it reads outputs");
                Ok(())
            }
            Err(e) => Err(StoreError::Invalid(format!("stage {:?}: {e}", stage.id))),
        }
    };
    let command = |cmd: &CommandSpec, field: String| -> Result<()> {
        for (i, a) in cmd.argv.iter().enumerate() {
            check(a, format!("{field}.argv[{i}]"))?;
        }
        for (k, v) in &cmd.env {
            check(v, format!("{field}.env.{k}"))?;
        }
        if let Some(c) = &cmd.cwd {
            check(c, format!("{field}.cwd"))?;
        }
        Ok(())
    };
    for (k, v) in env {
        check(v, format!("env.{k}"))?;
    }
    for (k, st) in stage.steps.iter().enumerate() {
        for (i, c) in st.commands.iter().enumerate() {
            command(c, format!("steps[{k}].commands[{i}]"))?;
        }
    }
    if let Some(v) = &stage.validate {
        for (i, c) in v.commands.iter().enumerate() {
            command(c, format!("validate.commands[{i}]"))?;
        }
    }
    if let Some(u) = stage.repeat.as_ref().and_then(|r| r.until_command()) {
        command(u, "repeat.until".to_owned())?;
    }
    Ok(())
}

/// Whether any field a job of step `st` renders (see [`render_job`]) reads
/// `stages`.
pub(super) fn job_reads_stages(
    st: &Step,
    until: Option<&CommandSpec>,
    env: &BTreeMap<String, String>,
) -> bool {
    let command = |c: &CommandSpec| {
        c.argv.iter().any(|a| reads_stages(a))
            || c.env.values().any(|v| reads_stages(v))
            || c.cwd.as_deref().is_some_and(reads_stages)
    };
    env.values().any(|v| reads_stages(v)) || st.commands.iter().chain(until).any(command)
}

/// Whether `text` reads `stages` (a text that does not parse does not).
fn reads_stages(text: &str) -> bool {
    Template::parse(text).is_ok_and(|t| {
        t.references()
            .iter()
            .any(|r| r.path.first().is_some_and(|n| n == "stages"))
    })
}
