//! `${{ }}` when the store makes a job: the context its expressions read
//! (built in one place, [`expr_context`]), and a job's commands and
//! environment rendered with it, with the run's inputs added as
//! `ORCH_INPUT_*` variables. Rendering here, not on the agent, means the
//! agent runs concrete commands and the job's stored spec shows exactly
//! what ran.

use std::collections::BTreeMap;

use orchestrator_core::expr::Context;
use orchestrator_core::spec::{
    input_env_name, input_env_value, substitute_command, substitute_commands, substitute_env,
    CommandSpec, Stage, Step, SubstError,
};
use orchestrator_core::RunId;
use serde_json::Value;

use super::common::decode_inputs;
use super::tx::Ctx;
use crate::db::params;
use crate::{Result, StoreError};

/// What `${{ }}` reads in stage `stage_id`'s commands: `inputs` (the run's
/// bound inputs), `matrix` (the stage's values, only for a stage a matrix
/// made) and `run` (`id`, `workflow`). The one place these names are
/// gathered for a job.
///
/// `stages.<id>.outputs.<key>` (what earlier stages reported) belongs here
/// too once stages report outputs: read them for the stages `stage_id`
/// needs and add them under `stages` with [`Context::insert`].
pub(super) fn expr_context(
    ctx: &Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
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
    Ok(context_of(run_id, &workflow, inputs, matrix))
}

/// The context of a run's stage from its parts (see [`expr_context`]);
/// the submission renders every stage with it once, before anything is
/// written, so that a job's rendering cannot fail later.
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
        );
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

/// Renders every job `stage` can make with `expr`, refusing the first
/// field that does not render: a run is refused at submission rather than
/// failing when its job is made.
pub(super) fn check_stage(
    stage: &Stage,
    env: &BTreeMap<String, String>,
    expr: &Context<'_>,
) -> Result<()> {
    let refuse = |e: SubstError| StoreError::Invalid(format!("stage {:?}: {e}", stage.id));
    for (k, st) in stage.steps.iter().enumerate() {
        render_job(st, &format!("steps[{k}]"), None, env, expr).map_err(refuse)?;
    }
    if let Some(v) = &stage.validate {
        let step = Step {
            commands: v.commands.clone(),
            ..Default::default()
        };
        render_job(&step, "validate", None, env, expr).map_err(refuse)?;
    }
    if let Some(u) = stage.repeat.as_ref().and_then(|r| r.until.as_ref()) {
        substitute_command(u, expr, "repeat.until").map_err(refuse)?;
    }
    Ok(())
}
