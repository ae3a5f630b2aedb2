//! The HTTP API under `/v1`: runs for users, the lease protocol for agents.

use orchestrator_core::{AgentId, JobId, LeaseId, RunId};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use orchestrator_core::api::{
    ClaimRequest, CompleteRequest, HeartbeatRequest, RegisterAgent, SubmitRun,
};
use orchestrator_core::machine::RunEvent;
use orchestrator_store::{NewRun, StoreError};
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::{ApiErr, JsonBody};
use crate::extract::{Path, Query, QueryParams};
use crate::App;

pub async fn submit_run(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    JsonBody(mut req): JsonBody<SubmitRun>,
) -> Result<Response, ApiErr> {
    let project_dir = std::path::PathBuf::from(&req.project_dir);
    let dir = project_dir.as_path();
    if !dir.is_absolute() || !dir.is_dir() {
        return Err(ApiErr::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "project_dir {:?}: expected the absolute path of an existing directory",
                req.project_dir
            ),
        ));
    }
    by_name(&app, dir, &mut req)?;
    let base_commit = crate::project::resolve_commit(dir, req.git_ref.as_deref())
        .map_err(|e| ApiErr::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let policy = crate::project::read_policy(dir)
        .map_err(|e| ApiErr::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    // A workflow that does not parse is refused by the store, with its own
    // errors; one that does is checked here against what only the daemon
    // knows: its secrets and the project's shell policy. Parsed once for both.
    let mut tree = Vec::new();
    if let Ok(wf) = orchestrator_core::validate::parse_workflow(&req.workflow, req.file.as_deref())
    {
        // A cache key that hashes files is computed by the store from the
        // base commit's files, listed here (the store runs no git).
        if orchestrator_core::cache::hashes_files(&wf) {
            tree = crate::project::list_tree(dir, &base_commit)
                .map_err(|e| ApiErr::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        }
        for st in &wf.stages {
            if let Some(m) = st
                .model
                .as_deref()
                .filter(|m| !app.config.models.iter().any(|x| x.name == *m))
            {
                return Err(ApiErr::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "stage {:?}: model {m:?} is not served by this daemon; expected one of its models file (`orch daemon --models`): {}",
                        st.id,
                        if app.config.models.is_empty() {
                            "it declares none".to_owned()
                        } else {
                            app.config.models.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(", ")
                        }
                    ),
                ));
            }
            if let Some(name) = st
                .secrets
                .iter()
                .find(|n| !app.config.secrets.contains_key(*n))
            {
                return Err(ApiErr::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "stage {:?} names secret {name:?}, which this daemon does not have; expected one declared with `orch daemon --secret NAME=VALUE` or `--secrets-file`",
                        st.id
                    ),
                ));
            }
        }
        if !policy.shell_allowed() {
            let policy_file = dir.join(crate::project::POLICY_FILE);
            orchestrator_core::sched::check_shell(&wf, false, &policy_file.display().to_string())
                .map_err(|e| ApiErr::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        }
    }
    let inputs = given_inputs(&req)?;
    let submitted = app
        .store
        .submit_run(NewRun {
            workflow: req.workflow,
            file: req.file,
            project_dir: req.project_dir,
            priority: req.priority,
            policy,
            base_commit,
            tree,
            actor: who.actor(None),
            on_failure: req.on_failure,
            inputs,
        })
        .await?;
    tracing::info!(run_id = %submitted.run_id, state = %submitted.state, "run submitted");
    for w in &submitted.warnings {
        tracing::warn!(run_id = %submitted.run_id, "{w}");
    }
    Ok((StatusCode::CREATED, Json(submitted)).into_response())
}

/// The values a submission gives the workflow's inputs: its JSON
/// `inputs`, then its `params` texts over them. The store binds them to
/// the workflow's declarations.
fn given_inputs(req: &SubmitRun) -> Result<orchestrator_core::spec::Given, ApiErr> {
    use orchestrator_core::spec::Given;
    let unprocessable = |e: orchestrator_core::spec::InputErrors| {
        ApiErr::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid inputs:\n{e}"),
        )
    };
    let mut given = Given::from_json(serde_json::Value::Object(
        req.inputs.clone().into_iter().collect(),
    ))
    .map_err(unprocessable)?;
    given.merge(Given::from_cli(&req.params).map_err(unprocessable)?);
    Ok(given)
}

/// A run that names a catalog workflow gets the catalog's text of it now,
/// so that the store records exactly the definition the run starts with.
fn by_name(app: &App, dir: &std::path::Path, req: &mut SubmitRun) -> Result<(), ApiErr> {
    let unprocessable = |msg: String| ApiErr::new(StatusCode::UNPROCESSABLE_ENTITY, msg);
    let Some(name) = req.workflow_name.as_deref() else {
        if req.workflow.is_empty() {
            return Err(unprocessable(
                "workflow: expected the workflow's text, or workflow_name: the name of a workflow of the project's catalog".into(),
            ));
        }
        return Ok(());
    };
    if !req.workflow.is_empty() {
        return Err(unprocessable(
            "workflow and workflow_name: expected one of them, not both".into(),
        ));
    }
    // The catalog knows projects by their canonical directory.
    let project = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let def = crate::watch::lock(&app.catalog)
        .resolve(&project, name)
        .map_err(|e| unprocessable(e.to_string()))?;
    tracing::info!(workflow = %def.name, file = %def.file.display(), "run of workflow {} from the catalog (sha256 {}…)", def.name, &def.hash[..12]);
    req.workflow = def.text;
    req.file = Some(def.file.display().to_string());
    Ok(())
}

/// `GET /v1/workflows`: the watched projects' workflow files, with the
/// definition each answers with and its last reload's error.
pub async fn list_workflows(
    State(app): State<Arc<App>>,
) -> Json<Vec<orchestrator_core::api::WorkflowView>> {
    Json(crate::watch::lock(&app.catalog).list())
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    100
}

impl QueryParams for ListQuery {
    const EXPECTED: &'static str = "`limit`: a whole number from 0 to 4294967295 (default 100)";
}

pub async fn list_runs(
    State(app): State<Arc<App>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiErr> {
    Ok(Json(app.store.list_runs(q.limit.min(10_000)).await?).into_response())
}

pub async fn get_run(
    State(app): State<Arc<App>>,
    Path(id): Path<RunId>,
) -> Result<Response, ApiErr> {
    // The run's model usage then counts every request that has ended.
    if let Err(e) = app.usage.flush(&app.store).await {
        tracing::warn!(error = %e, "model usage not written before a read");
    }
    Ok(Json(app.store.run_detail(&id).await?).into_response())
}

pub async fn get_stages(
    State(app): State<Arc<App>>,
    Path(id): Path<RunId>,
) -> Result<Response, ApiErr> {
    Ok(Json(app.store.run_detail(&id).await?.stages).into_response())
}

pub async fn get_stage(
    State(app): State<Arc<App>>,
    Path((id, stage)): Path<(RunId, String)>,
) -> Result<Response, ApiErr> {
    let detail = app.store.run_detail(&id).await?;
    let st = detail
        .stages
        .into_iter()
        .find(|s| s.stage_id == stage)
        .ok_or(StoreError::NotFound {
            what: "stage",
            id: format!("{id}/{stage}"),
        })?;
    Ok(Json(st).into_response())
}

pub async fn get_jobs(
    State(app): State<Arc<App>>,
    Path(id): Path<RunId>,
) -> Result<Response, ApiErr> {
    Ok(Json(app.store.run_detail(&id).await?.jobs).into_response())
}

/// `POST /v1/runs/{id}/cancel`: stops the run; agents holding its jobs learn
/// at once (their long-polling heartbeat answers) and kill the commands.
pub async fn cancel_run(
    state: State<Arc<App>>,
    who: Extension<Principal>,
    id: Path<RunId>,
) -> Result<Response, ApiErr> {
    command_run(state, who, id, RunEvent::Cancel).await
}

/// `POST /v1/runs/{id}/pause`: each stage holds at its next checkpoint.
pub async fn pause_run(
    state: State<Arc<App>>,
    who: Extension<Principal>,
    id: Path<RunId>,
) -> Result<Response, ApiErr> {
    command_run(state, who, id, RunEvent::Pause).await
}

/// `POST /v1/runs/{id}/resume`: held stages go on from where they stopped.
pub async fn resume_run(
    state: State<Arc<App>>,
    who: Extension<Principal>,
    id: Path<RunId>,
) -> Result<Response, ApiErr> {
    command_run(state, who, id, RunEvent::Resume).await
}

async fn command_run(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<RunId>,
    event: RunEvent,
) -> Result<Response, ApiErr> {
    let run = app.store.command_run(&id, event, &who.actor(None)).await?;
    tracing::info!(run_id = %run.id, state = %run.state, "run commanded");
    Ok(Json(run).into_response())
}

pub async fn list_agents(State(app): State<Arc<App>>) -> Result<Response, ApiErr> {
    Ok(Json(app.store.list_agents(app.config.online_ms()).await?).into_response())
}

#[derive(Deserialize)]
pub struct ExplainQuery {
    #[serde(default)]
    stage: Option<String>,
}

impl QueryParams for ExplainQuery {
    const EXPECTED: &'static str = "`stage`: a stage id of the run (optional)";
}

/// `GET /v1/runs/{id}/explain[?stage=S]`.
pub async fn explain(
    State(app): State<Arc<App>>,
    Path(id): Path<RunId>,
    Query(q): Query<ExplainQuery>,
) -> Result<Response, ApiErr> {
    Ok(Json(
        app.store
            .explain(&id, q.stage, app.config.online_ms())
            .await?,
    )
    .into_response())
}

pub async fn register_agent(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    JsonBody(mut req): JsonBody<RegisterAgent>,
) -> Result<Response, ApiErr> {
    // Registering voids the leases held under the name: only its owner may.
    crate::ident::check_name(&app, &who, &req.name).await?;
    let cfg = &app.config;
    // Where a stage with `model:` may run.
    let on_daemon_host = req.hostname.is_some() && req.hostname == app.daemon_hostname;
    let models = crate::fabric::placement::model_labels(
        &cfg.models,
        &app.upstreams.fabric.local_hosts,
        &req.name,
        &req.labels,
        on_daemon_host,
        &req.model_memory,
    );
    req.labels.extend(models);
    let reg = app
        .store
        .register_agent(req, cfg.lease_ttl_ms, cfg.heartbeat_interval_ms)
        .await?;
    tracing::info!(agent_id = %reg.agent_id, stale = reg.stale_jobs.len(), "agent registered");
    Ok(Json(reg).into_response())
}

/// Long-poll: answers with a job as soon as one this agent can run is
/// queued, or 204 when `wait_ms` passes first. No polling interval: it waits
/// on the store's "jobs queued" signal.
pub async fn claim(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path(agent_id): Path<AgentId>,
    JsonBody(req): JsonBody<ClaimRequest>,
) -> Result<Response, ApiErr> {
    crate::ident::check_agent(&app, &who, &agent_id).await?;
    let wait = Duration::from_millis(req.wait_ms.min(app.config.max_claim_wait_ms));
    let deadline = tokio::time::Instant::now() + wait;
    let queued = app.store.jobs_queued();
    loop {
        let notified = queued.notified();
        tokio::pin!(notified);
        // Registered before looking, so a job queued in between still wakes us.
        notified.as_mut().enable();
        let started = std::time::Instant::now();
        if let Some(mut job) = app
            .store
            .claim_keyed(&agent_id, app.config.lease_ttl_ms, req.claim_key.clone())
            .await?
        {
            let waited = app.config.clock.now_ms().saturating_sub(job.queued_at_ms);
            app.metrics.claim_granted(
                started.elapsed(),
                Duration::from_millis(waited.max(0) as u64),
            );
            with_secrets(&app, &mut job);
            return Ok(Json(job).into_response());
        }
        if tokio::time::Instant::now() >= deadline {
            app.metrics.claim_empty();
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = app.shutdown.cancelled() => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

pub async fn heartbeat(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path(agent_id): Path<AgentId>,
    JsonBody(req): JsonBody<HeartbeatRequest>,
) -> Result<Response, ApiErr> {
    crate::ident::check_agent(&app, &who, &agent_id).await?;
    // Subscribed before the heartbeat commits, so no revocation after it is missed.
    let mut live = app.store.subscribe();
    let mut r = app
        .store
        .heartbeat(&agent_id, req.leases, app.config.lease_ttl_ms)
        .await?;
    if r.revoked.is_empty() && req.wait_ms > 0 {
        r.revoked = wait_for_revocation(&app, &agent_id, &mut live, req.wait_ms).await?;
    }
    if !r.revoked.is_empty() {
        tracing::info!(agent_id = %agent_id, revoked = ?r.revoked, "agent told to stop jobs whose leases ended");
    }
    Ok(Json(r).into_response())
}

/// Waits until a lease this agent holds is revoked or expires (the jobs are
/// returned), or `wait_ms` passes (nothing is).
async fn wait_for_revocation(
    app: &App,
    agent_id: &AgentId,
    live: &mut tokio::sync::broadcast::Receiver<Arc<[orchestrator_core::Transition]>>,
    wait_ms: u64,
) -> Result<Vec<JobId>, ApiErr> {
    use tokio::sync::broadcast::error::RecvError;
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(wait_ms.min(app.config.max_claim_wait_ms));
    loop {
        let batch = tokio::select! {
            b = live.recv() => b,
            _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            _ = app.shutdown.cancelled() => return Ok(Vec::new()),
        };
        let batch = match batch {
            Ok(b) => b,
            // Missed batches are caught by the agent's next heartbeat.
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return Ok(Vec::new()),
        };
        let ended: Vec<LeaseId> = batch
            .iter()
            .filter(|t| t.entity == orchestrator_core::Entity::Lease)
            .filter(|t| t.to == "revoked" || t.to == "expired")
            .filter_map(|t| t.entity_id.parse().ok())
            .collect();
        if !ended.is_empty() {
            let jobs = app.store.lease_jobs(agent_id, ended).await?;
            if !jobs.is_empty() {
                return Ok(jobs);
            }
        }
    }
}

pub async fn complete(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path(job_id): Path<JobId>,
    JsonBody(req): JsonBody<CompleteRequest>,
) -> Result<Response, ApiErr> {
    crate::ident::check_agent(&app, &who, &req.agent_id).await?;
    let agent = req.agent_id.clone();
    match app
        .store
        .complete(job_id, req, app.config.lease_ttl_ms)
        .await
    {
        Ok(mut done) => {
            // Sent again after a lost answer: counted the first time.
            if !done.again {
                app.metrics.completed();
            }
            if let Some(job) = &mut done.next {
                with_secrets(&app, job);
            }
            Ok(Json(done).into_response())
        }
        Err(e @ StoreError::StaleLease { .. }) => {
            app.metrics.stale_completion();
            tracing::warn!(%job_id, agent_id = %agent, error = %e, "completion refused");
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Fills in the values of the secrets a claimed job's stage names.
/// Also mints the job's key to the model gateway, when the daemon serves
/// models: without a key the agent neither offers the gateway to the step
/// nor asks for its usage, a round trip per step saved.
fn with_secrets(app: &App, job: &mut orchestrator_core::api::ClaimedJob) {
    if !app.config.models.is_empty() {
        job.spec.api_key = Some(orchestrator_core::api::ApiKey(
            app.job_keys.mint(job.job_id, &job.spec.run_id),
        ));
    }
    let missing = job.spec.secrets.fill(&app.config.secrets);
    if !missing.is_empty() {
        // Checked at submission; only a daemon restarted without them gets here.
        tracing::warn!(job_id = %job.job_id, run_id = %job.spec.run_id, ?missing,
            "secrets the stage names are not configured; its commands get them empty");
    }
}

pub async fn healthz() -> &'static str {
    "ok\n"
}
