//! Jobs as the store makes and ends them: a stage's next step queued as a
//! job (its spec, shape and queue key), a job event applied through the
//! core's job machine with its transition row, and a job's live lease
//! ended when the machine says so. Claiming a job is `claim.rs`.

use orchestrator_core::Actor;
use orchestrator_core::{AgentId, JobId, LeaseId, RunId};
use std::collections::BTreeMap;

use crate::db::params;
use orchestrator_core::api::JobSpec;
use orchestrator_core::machine::{job_on, JobEffect, JobEvent, StageEvent};
use orchestrator_core::sched::Needs;
use orchestrator_core::JobState;

use super::common::{conflict, workflow};
use super::lease_end::end_lease;
use super::stage::StageRow;
use super::tx::Ctx;
use super::{human, loops, placement, policy, preempt, steps, substitute};
use crate::{Result, StoreError};

pub(super) fn enqueue(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    row: &StageRow,
    step: u32,
    attempt: u32,
    event: &StageEvent,
) -> Result<()> {
    let wf = workflow(ctx, run_id)?;
    let stage = steps::stage_spec(&wf, run_id, stage_id, row.ord)?;
    ctx.conn
        .prepare_cached(
            "UPDATE stage_runs SET step = ?3, attempt = ?4 WHERE run_id = ?1 AND stage_id = ?2",
        )?
        .execute(params![run_id, stage_id, step, attempt])?;
    let (round, round_reason) = loops::next_round(ctx, run_id, stage_id, stage, step, event)?;
    let validation;
    let (st, field) = match (&stage.validate, stage.validation_step() == Some(step)) {
        (Some(v), true) => {
            // The validation runs like a step of its own, after the last one.
            validation = orchestrator_core::spec::Step {
                name: Some(orchestrator_core::spec::VALIDATION_NAME.into()),
                shell: v.shell,
                commands: v.commands.clone(),
                ..Default::default()
            };
            (&validation, "validate".to_owned())
        }
        _ => (
            steps::step_of(stage, step)?,
            format!("steps[{}]", stage.step_index(step)),
        ),
    };
    if st.is_input() {
        return human::ask_input(ctx, run_id, stage_id, stage, step);
    }
    let mut env: BTreeMap<String, String> = wf.env.clone();
    env.extend(stage.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let per_iteration = u32::try_from(stage.steps.len()).unwrap_or(u32::MAX).max(1);
    let ends_iteration = (u64::from(step) + 1) % u64::from(per_iteration) == 0;
    let repeat = stage.repeat.as_ref();
    let checks = repeat.filter(|_| ends_iteration && stage.validation_step() != Some(step));
    let until = checks.and_then(|r| r.until_command());
    let reads = substitute::job_reads_stages(st, until, &env);
    let expr = substitute::expr_context(ctx, run_id, stage_id, reads)?;
    // The submission rendered every field with the same context save the
    // outputs, so only what upstream stages reported can fail this.
    let rendered = match substitute::render_job(st, &field, until, &env, &expr) {
        Ok(r) => r,
        Err(e) => return unrenderable(ctx, run_id, stage_id, &e),
    };
    let spec = JobSpec {
        run_id: run_id.to_owned(),
        stage_id: stage_id.to_owned(),
        step,
        steps_total: row.steps_total,
        attempt,
        step_name: st.name.clone(),
        project_dir: row.project_dir.clone(),
        shell: st.shell,
        commands: rendered.step.commands,
        env: rendered.env,
        timeout_ms: stage.timeout.map(|d| d.as_millis()),
        base_commit: row.base_commit.clone(),
        artifacts: st.artifacts.clone(),
        until: rendered.until,
        until_shell: repeat.is_some_and(|r| r.shell),
        until_output: checks.and_then(|r| r.until_output()).map(str::to_owned),
        iteration: stage.iteration_of(step),
        step_index: Some(stage.step_index(step)),
        round,
        round_reason,
        handoff: steps::parse_handoff(row.handoff.as_deref(), step),
        sandbox: orchestrator_core::api::SandboxSpec {
            kind: stage.sandbox,
            network: stage.network,
            image: stage.image.clone(),
        },
        mounts: stage.mounts.clone(),
        cache: cache_plan(stage, step, ends_iteration),
        secrets: orchestrator_core::api::Secrets::named(&stage.secrets),
        api_key: None,
    };
    let payload = crate::error::encode("a job's spec", &spec)?;
    let labels = crate::error::encode("a stage's labels", &stage.labels)?;
    let needs = Needs::of_stage(stage);
    let pin = row.agent_id.as_ref().map_or("", AgentId::as_str);
    let shape = placement::shape_id(ctx, &needs, pin, ctx.rules.is_high(row.priority))?;
    let key = policy::next_key(ctx, run_id, &row.project_dir, row.priority)?;
    let job_id: JobId = ctx.conn
        .prepare_cached(
            "INSERT INTO jobs (run_id, stage_id, step, attempt, state, priority, labels, payload, created_at, queue_key, shape, round, round_reason)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING id",
        )?
        .query_row(params![run_id, stage_id, step, attempt, row.priority, labels, payload, ctx.now, key, shape, round, round_reason.as_str()], |r| r.get(0))?;
    ctx.transition(
        job_id.to_string(),
        Some(run_id),
        None,
        JobState::Queued,
        format!(
            "step {} of stage {stage_id}, round {round} ({round_reason}), attempt {attempt}",
            stage.step_index(step)
        ),
        &Actor::Scheduler,
    )?;
    ctx.queued = true;
    Ok(())
}

/// Fails a stage whose job cannot be rendered (a field reads an upstream
/// output that does not fit it, say through `fromJSON`): the workflow's
/// fault, not the daemon's, and the same outputs would fail it again, so
/// it fails at once, the field and the expression in its reason.
fn unrenderable(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    error: &orchestrator_core::spec::SubstError,
) -> Result<()> {
    tracing::info!(run = %run_id, stage = stage_id, error = %error,
        "cannot render this stage's job; it fails (class task)");
    super::stage::stage_event(
        ctx,
        run_id,
        stage_id,
        StageEvent::Fault,
        format!(
            "task failure (class {}): its job cannot be made: {error}",
            orchestrator_core::error::ErrorClass::Task.as_str()
        ),
        &Actor::Scheduler,
    )
    .map(|_| ())
}

/// What step `step` of `stage` does with the stage's caches: restore them
/// when it is the first step that runs commands, save them when its
/// success ends the stage (the validation, else the last step, of the last
/// iteration or of one whose `until` is met). None when neither.
fn cache_plan(
    stage: &orchestrator_core::spec::Stage,
    step: u32,
    ends_iteration: bool,
) -> Option<orchestrator_core::api::CachePlan> {
    if stage.cache.is_empty() {
        return None;
    }
    let first = stage.steps.iter().position(|s| !s.is_input());
    let restore = first.is_some_and(|f| u32::try_from(f).ok() == Some(step));
    let per = u32::try_from(stage.steps.len()).unwrap_or(u32::MAX).max(1);
    let save = match (&stage.validate, &stage.repeat) {
        (Some(_), _) => stage.validation_step() == Some(step),
        (None, Some(r)) if r.until.is_some() => ends_iteration,
        (None, _) => step / per + 1 == stage.iterations() && ends_iteration,
    };
    (restore || save).then(|| orchestrator_core::api::CachePlan {
        entries: stage.cache.clone(),
        restore,
        save,
    })
}

pub(super) fn cancel_live_job(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    reason: &str,
    actor: &Actor,
) -> Result<()> {
    let live: Vec<(JobId, String, Option<LeaseId>)> = ctx
        .conn
        .prepare_cached(
            "SELECT id, state, lease_id FROM jobs WHERE run_id = ?1 AND stage_id = ?2 AND state IN ('queued', 'leased')",
        )?
        .query_map(params![run_id, stage_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<crate::db::Result<_>>()?;
    for (job_id, state, lease_id) in live {
        let from = JobState::parse(&state).unwrap_or(JobState::Queued);
        let job = JobRef {
            id: job_id,
            run_id,
            lease_id,
        };
        job_event(ctx, &job, from, JobEvent::Cancel, reason.to_owned(), actor)?;
    }
    Ok(())
}

/// A job as a job event needs it.
pub(super) struct JobRef<'a> {
    pub(super) id: JobId,
    pub(super) run_id: &'a RunId,
    /// Its current lease, if it ever had one.
    pub(super) lease_id: Option<LeaseId>,
}

/// Applies one event to a job: writes the new state with its transition row
/// and ends the job's lease when the machine says so. (A lease is granted
/// only by a claim, which creates it.)
pub(super) fn job_event(
    ctx: &mut Ctx<'_>,
    job: &JobRef<'_>,
    from: JobState,
    event: JobEvent,
    reason: String,
    actor: &Actor,
) -> Result<JobState> {
    let (to, effects) = job_on(from, event).map_err(conflict)?;
    set_job_state(ctx, job.id, job.run_id, from, to, reason.clone(), actor)?;
    if from == JobState::Leased {
        // Whatever its step still waited for can no longer reach it.
        super::wait::end_waits(ctx, job.id, job.run_id, &reason, actor)?;
    }
    if from == JobState::Queued {
        preempt::release_yielders(ctx, job.id, "nowhere: it was withdrawn")?;
    }
    for effect in effects {
        match (effect, job.lease_id) {
            (JobEffect::EndLease(end), Some(lease)) => {
                end_lease(ctx, lease, job.run_id, end, reason.clone(), actor)?
            }
            (JobEffect::EndLease(_), None) => {
                return Err(StoreError::Internal(format!(
                    "job {} is leased without a lease",
                    job.id
                )))
            }
            (JobEffect::GrantLease, _) => {
                return Err(conflict(format!(
                    "job {}: a lease is granted only by a claim",
                    job.id
                )))
            }
        }
    }
    Ok(to)
}

pub(super) fn set_job_state(
    ctx: &mut Ctx<'_>,
    job_id: JobId,
    run_id: &RunId,
    from: JobState,
    to: JobState,
    reason: String,
    actor: &Actor,
) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "UPDATE jobs SET state = ?2, ended_at = CASE WHEN ?3 THEN ?4 ELSE ended_at END WHERE id = ?1",
        )?
        .execute(params![job_id, to.as_str(), to.is_terminal(), ctx.now])?;
    ctx.transition(
        job_id.to_string(),
        Some(run_id),
        Some(from),
        to,
        reason,
        actor,
    )
}
