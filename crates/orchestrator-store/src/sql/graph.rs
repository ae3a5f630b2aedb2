//! The run graph's write operations: submitting a run, the scheduler pass,
//! and stage events with their effects. Run by the writer inside a batch's
//! transaction; each loads the rows it needs, asks the core's machines what
//! the event does, writes the new state with its transition row, and applies
//! the effects.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::db::{params, Optional};
use orchestrator_core::api::{JobSpec, Submitted};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::machine::{
    job_on, run_on, stage_on, JobEffect, JobEvent, RunEffect, RunEvent, StageEffect, StageEvent,
};
use orchestrator_core::{Entity, JobState, RunState, StageState, Workflow};
use sha2::{Digest, Sha256};

use orchestrator_core::sched::{self, could_ever_fit, effective_priority, Limits, Needs};

use super::writer::Ctx;
use super::{human, loops, placement, policy, preempt, retry};
use crate::{ids, NewRun, Result, StoreError};

pub(super) fn conflict(e: impl std::fmt::Display) -> StoreError {
    StoreError::Conflict(e.to_string())
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Database(e.to_string()))
}

pub(super) fn stage_key(run_id: &str, stage_id: &str) -> String {
    format!("{run_id}/{stage_id}")
}

/// The parsed workflow of a run, from the cache or the `runs` row.
pub(super) fn workflow(ctx: &mut Ctx<'_>, run_id: &str) -> Result<Arc<Workflow>> {
    if let Some(w) = ctx.workflows.get(run_id) {
        return Ok(w.clone());
    }
    let spec: String = ctx
        .conn
        .prepare_cached("SELECT spec FROM run_specs WHERE run_id = ?1")?
        .query_row([run_id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            what: "run",
            id: run_id.to_owned(),
        })?;
    let wf: Workflow = serde_json::from_str(&spec)
        .map_err(|e| StoreError::Database(format!("run {run_id}: stored spec unreadable: {e}")))?;
    let wf = Arc::new(wf);
    ctx.workflows.insert(run_id.to_owned(), wf.clone());
    Ok(wf)
}

pub fn submit_run(ctx: &mut Ctx<'_>, run: NewRun) -> Result<Submitted> {
    let mut wf = orchestrator_core::parse_workflow(&run.workflow, run.file.as_deref())
        .map_err(StoreError::InvalidWorkflow)?;
    if ctx.rules.allow_shell == Some(false) {
        sched::check_shell(&wf, false, "the daemon's --rules file")
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
    }
    orchestrator_core::sched::apply_sandbox_policy(
        &mut wf,
        run.policy.sandbox,
        run.policy.min_sandbox,
    )
    .map_err(|e| StoreError::Invalid(e.to_string()))?;
    // Keys are computed now, once, from the base commit: every attempt of
    // the run, on any agent, uses the same ones, and the stored spec says
    // which (the workflow's entries moved into each stage).
    orchestrator_core::cache::resolve(&mut wf, &run.tree, run.file.as_deref())
        .map_err(StoreError::InvalidWorkflow)?;
    if let Some(on) = run.on_failure {
        // The submitter's word wins over the workflow's, stage by stage; the
        // stored spec says what the run really does.
        wf.on_failure = Some(on);
        for st in &mut wf.stages {
            // A send-back rule still sends back first; the word is what it does last.
            st.on_failure = Some(st.on_failure.take().map_or(on.into(), |f| f.with_then(on)));
        }
    }
    let plan = orchestrator_core::plan(&wf).map_err(|cycle| {
        conflict(format!(
            "the needs of these stages form a cycle: {}",
            cycle.join(" -> ")
        ))
    })?;
    let run_id = ids::new_id("r");
    let spec = serde_json::to_string(&wf).map_err(|e| StoreError::Database(e.to_string()))?;
    let hash = format!("{:x}", Sha256::digest(run.workflow.as_bytes()));
    let eff = effective_priority(run.priority, wf.priority, &run.policy, ctx.rules);
    let limits = sched::limits(&run.policy, ctx.rules);
    let active = policy::active_runs(ctx, &run.project_dir)?;
    let hold = policy::admission(&limits, active, &run.project_dir);
    let state = if hold.is_some() {
        RunState::Queued
    } else {
        RunState::Running
    };
    ctx.conn
        .prepare_cached(
            "INSERT INTO runs (id, workflow, project_dir, spec_hash, state, priority, stages_total, created_at, base_commit,
                               suggested_priority, priority_why, limits, clock, hold)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?8, ?13)",
        )?
        .execute(params![
            run_id,
            wf.name,
            run.project_dir,
            hash,
            state.as_str(),
            eff.value,
            wf.stages.len() as i64,
            ctx.now,
            run.base_commit,
            eff.suggested,
            to_json(&eff)?,
            to_json(&limits)?,
            hold
        ])?;
    ctx.conn
        .prepare_cached("INSERT INTO run_specs (run_id, spec) VALUES (?1, ?2)")?
        .execute(params![run_id, spec])?;
    let mut reason = format!(
        "submitted workflow {} ({} stages, spec sha256 {}); priority {eff}",
        wf.name,
        wf.stages.len(),
        &hash[..12]
    );
    if let Some(h) = &hold {
        reason = format!("{reason}; {h}");
    }
    ctx.transition(
        Entity::Run,
        run_id.clone(),
        Some(&run_id),
        None,
        state.as_str(),
        reason,
        &run.actor,
    )?;
    {
        let mut ins_stage = ctx.conn.prepare_cached(
            "INSERT INTO stage_runs (run_id, stage_id, ord, state, unmet, steps_total) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (i, st) in wf.stages.iter().enumerate() {
            ins_stage.execute(params![
                run_id,
                st.id,
                i as i64,
                StageState::Pending.as_str(),
                st.needs.len() as i64,
                st.steps.len() as i64 * i64::from(st.iterations())
            ])?;
        }
        // In key order, so the B-tree only ever appends: a wide DAG has
        // tens of thousands of edges.
        let mut edges: Vec<(&str, &str)> = wf
            .stages
            .iter()
            .flat_map(|st| st.needs.iter().map(move |n| (n.as_str(), st.id.as_str())))
            .collect();
        edges.sort_unstable();
        let mut ins_req = ctx.conn.prepare_cached(
            "INSERT INTO requires (run_id, required, stage_id) VALUES (?1, ?2, ?3)",
        )?;
        for (required, stage) in edges {
            ins_req.execute(params![run_id, required, stage])?;
        }
    }
    for st in &wf.stages {
        ctx.transition(
            Entity::Stage,
            stage_key(&run_id, &st.id),
            Some(&run_id),
            None,
            StageState::Pending.as_str(),
            match st.needs.as_slice() {
                [] => "created".to_owned(),
                [a] => format!("created; needs {a}"),
                [a, b] => format!("created; needs {a} and {b}"),
                many => format!("created; needs {} stages", many.len()),
            },
            "scheduler",
        )?;
    }
    let mut warnings = never_fits(ctx, &wf)?;
    warnings.extend(hold);
    ctx.workflows.insert(run_id.clone(), Arc::new(wf));
    ctx.schedule = true;
    Ok(Submitted {
        run_id,
        plan,
        state,
        priority: Some(eff),
        warnings,
    })
}

/// Stages that no registered agent could ever run, each with every agent's reason.
fn never_fits(ctx: &Ctx<'_>, wf: &Workflow) -> Result<Vec<String>> {
    let ids: Vec<String> = ctx
        .conn
        .prepare_cached("SELECT id FROM agents ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<crate::db::Result<_>>()?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut caps = Vec::new();
    for id in ids {
        if let Some(c) = placement::capacity(ctx.conn, ctx.rules, &id)? {
            caps.push((id, c));
        }
    }
    let mut out = Vec::new();
    let mut judged: BTreeMap<Needs, Vec<String>> = BTreeMap::new();
    for st in &wf.stages {
        let needs = Needs::of_stage(st);
        // Wide workflows repeat a few shapes many times: judge each once.
        let reasons = judged.entry(needs.clone()).or_insert_with(|| {
            caps.iter()
                .filter_map(|(id, c)| {
                    could_ever_fit(&needs, c)
                        .err()
                        .map(|m| format!("agent {id} {m}"))
                })
                .collect::<Vec<String>>()
        });
        if reasons.len() == caps.len() {
            let shown: Vec<&str> = reasons.iter().take(5).map(String::as_str).collect();
            out.push(format!(
                "stage {} needs {needs}: no registered agent could ever run it ({}{}); it waits until one registers",
                st.id,
                shown.join("; "),
                if reasons.len() > 5 { "; ..." } else { "" }
            ));
        }
    }
    Ok(out)
}

/// The scheduler pass: every pending stage whose needs have all succeeded
/// gets a job for its first step, highest run priority first.
///
/// Each stage is scheduled in its own savepoint: a stage that cannot be
/// scheduled (its run's stored spec unreadable, a step missing) fails alone,
/// as a daemon-side fault, and every other run goes on. Only a broken
/// transaction fails the pass, and with it the batch.
pub fn schedule(ctx: &mut Ctx<'_>) -> Result<()> {
    ctx.schedule = false;
    let ready: Vec<(String, String, i64, String, Option<String>)> = ctx
        .conn
        .prepare_cached(
            "SELECT s.run_id, s.stage_id, s.ord, r.project_dir, r.limits FROM stage_runs s JOIN runs r ON r.id = s.run_id
             WHERE s.state = 'pending' AND s.unmet = 0 AND r.state = 'running'
             ORDER BY r.priority DESC, r.created_at, s.ord",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?, r.get(3)?, r.get(4)?)))?
        .collect::<crate::db::Result<_>>()?;
    for (run_id, stage_id, ord, project_dir, limits) in ready {
        let scheduled = ctx.savepoint(|ctx| {
            schedule_stage(
                ctx,
                &run_id,
                &stage_id,
                ord,
                &project_dir,
                limits.as_deref(),
            )
        });
        if let Err(e) = scheduled {
            ctx.healthy()?;
            stage_fault(ctx, &run_id, &stage_id, &e)?;
        }
    }
    Ok(())
}

fn schedule_stage(
    ctx: &mut Ctx<'_>,
    run_id: &str,
    stage_id: &str,
    ord: i64,
    project_dir: &str,
    limits: Option<&str>,
) -> Result<()> {
    let wf = workflow(ctx, run_id)?;
    let stage = human::stage_spec(
        &wf,
        run_id,
        stage_id,
        usize::try_from(ord).unwrap_or(usize::MAX),
    )?;
    let limits = policy::parse_limits(limits);
    if limits != Limits::default() {
        let needs = Needs::of_stage(stage);
        let hold = policy::stage_hold(ctx, run_id, project_dir, &limits, &needs)?;
        policy::set_stage_hold(ctx, run_id, stage_id, hold.as_deref())?;
        if hold.is_some() {
            return Ok(());
        }
    }
    let reason = match &stage.needs[..] {
        [] => "runnable: needs nothing".to_owned(),
        [a] => format!("runnable: {a} succeeded"),
        [a, b] => format!("runnable: {a} and {b} succeeded"),
        [a, b, rest @ ..] => format!(
            "runnable: {a}, {b} and the {} other stages it needs succeeded",
            rest.len()
        ),
    };
    stage_event(
        ctx,
        run_id,
        stage_id,
        StageEvent::NeedsMet,
        reason,
        "scheduler",
    )?;
    Ok(())
}

/// Fails a stage the scheduler pass could not carry on: left pending, it
/// would hold its run open forever and be tried again at every pass.
fn stage_fault(ctx: &mut Ctx<'_>, run_id: &str, stage_id: &str, error: &StoreError) -> Result<()> {
    tracing::error!(run = run_id, stage = stage_id, error = %error,
        "cannot schedule this stage; it fails (daemon-side fault, class infra)");
    let reason = format!(
        "daemon-side fault (class {}): the daemon could not schedule this stage: {error}",
        ErrorClass::Infra.as_str()
    );
    let ended = ctx.savepoint(|ctx| {
        stage_event(
            ctx,
            run_id,
            stage_id,
            StageEvent::Fault,
            reason,
            "scheduler",
        )
    });
    if let Err(e) = ended {
        ctx.healthy()?;
        tracing::error!(run = run_id, stage = stage_id, error = %e,
            "cannot fail this stage either; it stays pending until the next scheduler pass");
    }
    Ok(())
}

pub(super) struct StageRow {
    pub(super) state: StageState,
    pub(super) ord: usize,
    pub(super) attempt: u32,
    pub(super) steps_total: u32,
    priority: i32,
    project_dir: String,
    base_commit: String,
    /// What humans handed the stage for one of its steps (JSON `Handoff`).
    handoff: Option<String>,
    /// Its run is paused: a stage reaching a checkpoint holds there.
    run_paused: bool,
    /// The agent it is pinned to.
    pub(super) agent_id: Option<String>,
}

pub(super) fn load_stage(ctx: &Ctx<'_>, run_id: &str, stage_id: &str) -> Result<StageRow> {
    ctx.conn
        .prepare_cached(
            "SELECT s.state, s.ord, s.attempt, s.steps_total, r.priority, r.project_dir, r.state = 'paused',
                    COALESCE(r.base_commit, ''), s.handoff, s.agent_id
             FROM stage_runs s JOIN runs r ON r.id = s.run_id WHERE s.run_id = ?1 AND s.stage_id = ?2",
        )?
        .query_row([run_id, stage_id], |r| {
            let state: String = r.get(0)?;
            Ok(StageRow {
                state: StageState::parse(&state).unwrap_or(StageState::Failed),
                ord: r.get::<_, i64>(1)? as usize,
                attempt: r.get(2)?,
                steps_total: r.get(3)?,
                priority: r.get(4)?,
                project_dir: r.get(5)?,
                run_paused: r.get(6)?,
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
    run_id: &str,
    stage_id: &str,
    event: StageEvent,
    reason: String,
    actor: &str,
) -> Result<StageState> {
    let mut row = load_stage(ctx, run_id, stage_id)?;
    let (to, effects) = stage_on(row.state, row.attempt, event).map_err(conflict)?;
    let started = matches!(event, StageEvent::Started);
    // A lost attempt restarts from step 0 anywhere: its worktree may be gone
    // with its agent. Only a stage still on its way keeps a request to yield.
    // So does a stage reset to run again after the stages it needs.
    let lost = matches!(event, StageEvent::AttemptLost { .. } | StageEvent::Reset);
    // A step waiting inside for an answer is still on its way to its
    // checkpoint, where it yields.
    let keeps_yield = !lost
        && (matches!(
            to,
            StageState::Running | StageState::Queued | StageState::Suspended
        ) || matches!(event, StageEvent::WaitForAnswer));
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
            started,
            ctx.now,
            to.is_terminal(),
            matches!(
                to,
                StageState::AwaitingApproval
                    | StageState::AwaitingInput
                    | StageState::AwaitingDecision
            ),
            lost,
            keeps_yield
        ])?;
    if lost {
        // The restarted attempt is queued for any agent.
        row.agent_id = None;
    }
    if to != row.state {
        ctx.transition(
            Entity::Stage,
            stage_key(run_id, stage_id),
            Some(run_id),
            Some(row.state.as_str()),
            to.as_str(),
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
                    .execute([run_id, stage_id])?;
                ctx.schedule = true;
            }
            StageEffect::BlockDependents => {
                let dependents: Vec<String> = ctx
                    .conn
                    .prepare_cached(
                        "SELECT q.stage_id FROM requires q JOIN stage_runs s
                           ON s.run_id = q.run_id AND s.stage_id = q.stage_id
                         WHERE q.run_id = ?1 AND q.required = ?2 AND s.state = 'pending'",
                    )?
                    .query_map([run_id, stage_id], |r| r.get(0))?
                    .collect::<crate::db::Result<_>>()?;
                for d in dependents {
                    // A diamond may reach a dependent twice; the second time it is already blocked.
                    if load_stage(ctx, run_id, &d)?.state == StageState::Pending {
                        stage_event(
                            ctx,
                            run_id,
                            &d,
                            StageEvent::UpstreamFailed,
                            format!("blocked: it needs stage {stage_id}, which ended {to}"),
                            "scheduler",
                        )?;
                    }
                }
            }
            StageEffect::CancelJob => cancel_live_job(ctx, run_id, stage_id, &reason, actor)?,
            StageEffect::StageEnded => {
                // A limit of its run or project may have room now.
                ctx.schedule = true;
                // A skipped stage was let go by a human: it does not fail its run.
                stage_ended(
                    ctx,
                    run_id,
                    matches!(to, StageState::Succeeded | StageState::Skipped),
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
    // An input step moves a queued stage on at once; only a stage still
    // queued is at a checkpoint where a paused run holds.
    if to == StageState::Queued
        && row.run_paused
        && load_stage(ctx, run_id, stage_id)?.state == StageState::Queued
    {
        // Its next step is queued but not started: a checkpoint, where a
        // paused run's stages hold.
        return stage_event(
            ctx,
            run_id,
            stage_id,
            StageEvent::Pause,
            "held at its checkpoint: the run is paused".into(),
            "scheduler",
        );
    }
    Ok(to)
}

pub(super) fn enqueue(
    ctx: &mut Ctx<'_>,
    run_id: &str,
    stage_id: &str,
    row: &StageRow,
    step: u32,
    attempt: u32,
    event: &StageEvent,
) -> Result<()> {
    let wf = workflow(ctx, run_id)?;
    let stage = human::stage_spec(&wf, run_id, stage_id, row.ord)?;
    ctx.conn
        .prepare_cached(
            "UPDATE stage_runs SET step = ?3, attempt = ?4 WHERE run_id = ?1 AND stage_id = ?2",
        )?
        .execute(params![run_id, stage_id, step, attempt])?;
    let (round, round_reason) = loops::next_round(ctx, run_id, stage_id, stage, step, event)?;
    let validation;
    let st = match (&stage.validate, stage.validation_step() == Some(step)) {
        (Some(v), true) => {
            // The validation runs like a step of its own, after the last one.
            validation = orchestrator_core::spec::Step {
                name: Some(human::VALIDATION_NAME.into()),
                shell: v.shell,
                commands: v.commands.clone(),
                ..Default::default()
            };
            &validation
        }
        _ => human::step_of(stage, step)?,
    };
    if st.is_input() {
        return human::ask_input(ctx, run_id, stage_id, stage, step);
    }
    let mut env: BTreeMap<String, String> = wf.env.clone();
    env.extend(stage.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let per_iteration = u32::try_from(stage.steps.len()).unwrap_or(u32::MAX).max(1);
    let ends_iteration = (u64::from(step) + 1) % u64::from(per_iteration) == 0;
    let repeat = stage.repeat.as_ref();
    let spec = JobSpec {
        run_id: run_id.to_owned(),
        stage_id: stage_id.to_owned(),
        step,
        steps_total: row.steps_total,
        attempt,
        step_name: st.name.clone(),
        project_dir: row.project_dir.clone(),
        shell: st.shell,
        commands: st.commands.clone(),
        env,
        timeout_ms: stage.timeout.map(|d| d.as_millis()),
        base_commit: row.base_commit.clone(),
        artifacts: st.artifacts.clone(),
        until: repeat
            .filter(|_| ends_iteration && stage.validation_step() != Some(step))
            .and_then(|r| r.until.clone()),
        until_shell: repeat.is_some_and(|r| r.shell),
        iteration: stage.iteration_of(step),
        step_index: Some(stage.step_index(step)),
        round,
        round_reason,
        handoff: human::parse_handoff(row.handoff.as_deref(), step),
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
    let payload = serde_json::to_string(&spec).map_err(|e| StoreError::Database(e.to_string()))?;
    let labels =
        serde_json::to_string(&stage.labels).map_err(|e| StoreError::Database(e.to_string()))?;
    let needs = Needs::of_stage(stage);
    let pin = row.agent_id.as_deref().unwrap_or("");
    let shape = placement::shape_id(ctx, &needs, pin, ctx.rules.is_high(row.priority))?;
    let key = policy::next_key(ctx, run_id, &row.project_dir, row.priority)?;
    let job_id: i64 = ctx.conn
        .prepare_cached(
            "INSERT INTO jobs (run_id, stage_id, step, attempt, state, priority, labels, payload, created_at, queue_key, shape, round, round_reason)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING id",
        )?
        .query_row(params![run_id, stage_id, step, attempt, row.priority, labels, payload, ctx.now, key, shape, round, round_reason.as_str()], |r| r.get(0))?;
    ctx.transition(
        Entity::Job,
        job_id.to_string(),
        Some(run_id),
        None,
        JobState::Queued.as_str(),
        format!(
            "step {} of stage {stage_id}, round {round} ({round_reason}), attempt {attempt}",
            stage.step_index(step)
        ),
        "scheduler",
    )?;
    ctx.queued = true;
    Ok(())
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
    run_id: &str,
    stage_id: &str,
    reason: &str,
    actor: &str,
) -> Result<()> {
    let live: Vec<(i64, String, Option<i64>)> = ctx
        .conn
        .prepare_cached(
            "SELECT id, state, lease_id FROM jobs WHERE run_id = ?1 AND stage_id = ?2 AND state IN ('queued', 'leased')",
        )?
        .query_map([run_id, stage_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
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
    pub(super) id: i64,
    pub(super) run_id: &'a str,
    /// Its current lease, if it ever had one.
    pub(super) lease_id: Option<i64>,
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
    actor: &str,
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
                end_lease(ctx, lease, job.run_id, end.as_str(), reason.clone(), actor)?
            }
            (JobEffect::EndLease(_), None) => {
                return Err(StoreError::Database(format!(
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

pub(super) fn stage_ended(ctx: &mut Ctx<'_>, run_id: &str, succeeded: bool) -> Result<()> {
    let (state, total, ended, ok): (String, i64, i64, i64) = ctx
        .conn
        .prepare_cached(
            "UPDATE runs SET stages_ended = stages_ended + 1, stages_succeeded = stages_succeeded + ?2
             WHERE id = ?1 RETURNING state, stages_total, stages_ended, stages_succeeded",
        )?
        .query_row(params![run_id, succeeded as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    let from = RunState::parse(&state).unwrap_or(RunState::Running);
    if from.is_terminal() {
        return Ok(());
    }
    let open = (total - ended).max(0) as usize;
    let (to, effects) = run_on(
        from,
        RunEvent::StageEnded {
            open,
            unsuccessful: (ended - ok) as usize,
        },
    )
    .map_err(conflict)?;
    if to != from {
        ctx.conn
            .prepare_cached("UPDATE runs SET state = ?2 WHERE id = ?1")?
            .execute(params![run_id, to.as_str()])?;
        let reason = if to == RunState::Succeeded {
            format!("all {total} stages succeeded")
        } else {
            format!("{} of {total} stages did not succeed", ended - ok)
        };
        ctx.transition(
            Entity::Run,
            run_id.to_owned(),
            Some(run_id),
            Some(from.as_str()),
            to.as_str(),
            reason,
            "scheduler",
        )?;
        run_effects(ctx, run_id, &effects, "scheduler")?;
    }
    Ok(())
}

/// A human's command to a run: cancel, pause or resume. The run machine
/// decides whether the run's state allows it and what its stages must do.
pub fn command_run(ctx: &mut Ctx<'_>, run_id: &str, event: RunEvent, actor: &str) -> Result<()> {
    let (verb, allowed) = match event {
        RunEvent::Cancel => ("cancelled", "a running or paused run"),
        RunEvent::Pause => ("paused", "a running run"),
        RunEvent::Resume => ("resumed", "a paused run"),
        RunEvent::Abort => ("aborted", "a queued, running or paused run"),
        RunEvent::StageEnded { .. } | RunEvent::Admit => {
            return Err(conflict(format!("{event:?} is not a command")))
        }
    };
    run_event(ctx, run_id, event, verb.into(), actor, |from| {
        let why = if from.is_terminal() {
            "has already ended"
        } else {
            "is"
        };
        conflict(format!(
            "run {run_id} {why} {from}; only {allowed} can be {verb}"
        ))
    })
}

/// Applies a scheduler event (admission) to a run.
pub(super) fn run_command(
    ctx: &mut Ctx<'_>,
    run_id: &str,
    event: RunEvent,
    reason: String,
    actor: &str,
) -> Result<()> {
    run_event(ctx, run_id, event, reason, actor, |from| {
        conflict(format!("run {run_id} is {from}; cannot take {event:?}"))
    })
}

fn run_event(
    ctx: &mut Ctx<'_>,
    run_id: &str,
    event: RunEvent,
    reason: String,
    actor: &str,
    refused: impl FnOnce(RunState) -> StoreError,
) -> Result<()> {
    let state: String = ctx
        .conn
        .prepare_cached("SELECT state FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            what: "run",
            id: run_id.to_owned(),
        })?;
    let from = RunState::parse(&state).unwrap_or(RunState::Failed);
    let (to, effects) = run_on(from, event).map_err(|_| refused(from))?;
    ctx.conn
        .prepare_cached("UPDATE runs SET state = ?2 WHERE id = ?1")?
        .execute(params![run_id, to.as_str()])?;
    ctx.transition(
        Entity::Run,
        run_id.to_owned(),
        Some(run_id),
        Some(from.as_str()),
        to.as_str(),
        reason,
        actor,
    )?;
    run_effects(ctx, run_id, &effects, actor)
}

/// The run's stages in any of `states`, with their current step.
fn stages_in(ctx: &Ctx<'_>, run_id: &str, states: &str) -> Result<Vec<(String, u32)>> {
    let sql = format!(
        "SELECT stage_id, step FROM stage_runs WHERE run_id = ?1 AND state IN ({states}) ORDER BY ord"
    );
    Ok(ctx
        .conn
        .prepare_cached(&sql)?
        .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::db::Result<_>>()?)
}

/// Carries out what the run machine asked for.
fn run_effects(ctx: &mut Ctx<'_>, run_id: &str, effects: &[RunEffect], actor: &str) -> Result<()> {
    for effect in effects {
        match effect {
            RunEffect::Ended => {
                let project: String = ctx
                    .conn
                    .prepare_cached(
                        "UPDATE runs SET ended_at = ?2, hold = NULL WHERE id = ?1 RETURNING project_dir",
                    )?
                    .query_row(params![run_id, ctx.now], |r| r.get(0))?;
                ctx.workflows.remove(run_id);
                policy::admit(ctx, &project)?;
            }
            RunEffect::Schedule => ctx.schedule = true,
            RunEffect::AbortStages => {
                for (stage, _) in stages_in(ctx, run_id, "'awaiting_decision'")? {
                    stage_event(
                        ctx,
                        run_id,
                        &stage,
                        StageEvent::Abort,
                        "aborted with its run".into(),
                        actor,
                    )?;
                }
            }
            RunEffect::CancelStages => {
                let open = stages_in(
                    ctx,
                    run_id,
                    "'pending', 'queued', 'running', 'paused', 'suspended', 'retrying', 'validating', 'awaiting_decision', 'awaiting_approval', 'awaiting_input'",
                )?;
                for (stage, _) in open {
                    stage_event(
                        ctx,
                        run_id,
                        &stage,
                        StageEvent::Cancel,
                        "run cancelled".into(),
                        actor,
                    )?;
                }
            }
            RunEffect::PauseStages => {
                // Running stages hold when their step ends; pending ones are
                // not scheduled while the run is paused.
                for (stage, _) in stages_in(ctx, run_id, "'queued'")? {
                    stage_event(
                        ctx,
                        run_id,
                        &stage,
                        StageEvent::Pause,
                        "held at its checkpoint: the run is paused".into(),
                        actor,
                    )?;
                }
            }
            RunEffect::ResumeStages => {
                for (stage, step) in stages_in(ctx, run_id, "'paused'")? {
                    let next = human::next_of(ctx, run_id, &stage, Some(step))?;
                    stage_event(
                        ctx,
                        run_id,
                        &stage,
                        StageEvent::Resume { next },
                        format!("the run was resumed; step {step} queued again"),
                        actor,
                    )?;
                }
                ctx.schedule = true;
            }
        }
    }
    Ok(())
}

pub(super) fn set_job_state(
    ctx: &mut Ctx<'_>,
    job_id: i64,
    run_id: &str,
    from: JobState,
    to: JobState,
    reason: String,
    actor: &str,
) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "UPDATE jobs SET state = ?2, ended_at = CASE WHEN ?3 THEN ?4 ELSE ended_at END WHERE id = ?1",
        )?
        .execute(params![job_id, to.as_str(), to.is_terminal(), ctx.now])?;
    ctx.transition(
        Entity::Job,
        job_id.to_string(),
        Some(run_id),
        Some(from.as_str()),
        to.as_str(),
        reason,
        actor,
    )
}

pub(super) fn end_lease(
    ctx: &mut Ctx<'_>,
    lease_id: i64,
    run_id: &str,
    to: &str,
    reason: String,
    actor: &str,
) -> Result<()> {
    ctx.conn
        .prepare_cached("UPDATE leases SET state = ?2 WHERE id = ?1")?
        .execute(params![lease_id, to])?;
    ctx.transition(
        Entity::Lease,
        lease_id.to_string(),
        Some(run_id),
        Some("active"),
        to,
        reason,
        actor,
    )
}
