//! The human side of the API: the inbox, approve, reject and answer, and
//! the decisions about failures: retry, skip and abort.

use orchestrator_core::RunId;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use orchestrator_core::api::{AnswerRequest, ApproveRequest, DecideRequest, RejectRequest};
use orchestrator_store::HumanCommand;

use crate::auth::Principal;
use crate::error::{ApiErr, JsonBody};
use crate::extract::Path;
use crate::App;

/// `GET /v1/inbox`: everything waiting for a human, oldest first.
pub async fn inbox(State(app): State<Arc<App>>) -> Result<Response, ApiErr> {
    Ok(Json(app.store.inbox().await?).into_response())
}

/// `POST /v1/runs/{id}/stages/{stage}/approve`.
pub async fn approve(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path((id, stage_id)): Path<(RunId, String)>,
    JsonBody(req): JsonBody<ApproveRequest>,
) -> Result<Response, ApiErr> {
    let cmd = HumanCommand::Approve {
        stage_id,
        comment: req.comment,
    };
    let run = app
        .store
        .human(&id, cmd, &who.actor(req.by.as_deref()))
        .await?;
    Ok(Json(run).into_response())
}

/// `POST /v1/runs/{id}/stages/{stage}/reject`: the step runs again with the feedback.
pub async fn reject(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path((id, stage_id)): Path<(RunId, String)>,
    JsonBody(req): JsonBody<RejectRequest>,
) -> Result<Response, ApiErr> {
    let cmd = HumanCommand::Reject {
        stage_id,
        feedback: req.feedback,
    };
    let run = app
        .store
        .human(&id, cmd, &who.actor(req.by.as_deref()))
        .await?;
    Ok(Json(run).into_response())
}

/// `POST /v1/runs/{id}/questions/{qid}/answer`.
pub async fn answer(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path((id, question_id)): Path<(RunId, i64)>,
    JsonBody(req): JsonBody<AnswerRequest>,
) -> Result<Response, ApiErr> {
    let cmd = HumanCommand::Answer {
        question_id,
        text: req.text,
    };
    let run = app
        .store
        .human(&id, cmd, &who.actor(req.by.as_deref()))
        .await?;
    Ok(Json(run).into_response())
}

/// `POST /v1/runs/{id}/stages/{stage}/retry`: the failed stage runs again
/// from where it failed, as a new attempt; with `feedback`, the work is
/// sent back to the stage (succeeded, or awaiting a decision) and every
/// stage after it runs again after it.
pub async fn retry(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path((id, stage_id)): Path<(RunId, String)>,
    JsonBody(req): JsonBody<DecideRequest>,
) -> Result<Response, ApiErr> {
    let cmd = HumanCommand::Retry {
        stage_id,
        comment: req.comment,
        feedback: req.feedback,
    };
    let run = app
        .store
        .human(&id, cmd, &who.actor(req.by.as_deref()))
        .await?;
    Ok(Json(run).into_response())
}

/// `POST /v1/runs/{id}/stages/{stage}/skip`: the failed stage's dependents
/// go on without it.
pub async fn skip(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path((id, stage_id)): Path<(RunId, String)>,
    JsonBody(req): JsonBody<DecideRequest>,
) -> Result<Response, ApiErr> {
    let cmd = HumanCommand::Skip {
        stage_id,
        comment: req.comment,
    };
    let run = app
        .store
        .human(&id, cmd, &who.actor(req.by.as_deref()))
        .await?;
    Ok(Json(run).into_response())
}

/// `POST /v1/runs/{id}/stages/{stage}/abort`: the failed stage ends failed;
/// the rest of the run goes on.
pub async fn abort_stage(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path((id, stage_id)): Path<(RunId, String)>,
    JsonBody(req): JsonBody<DecideRequest>,
) -> Result<Response, ApiErr> {
    let cmd = HumanCommand::Abort {
        stage_id: Some(stage_id),
        comment: req.comment,
    };
    let run = app
        .store
        .human(&id, cmd, &who.actor(req.by.as_deref()))
        .await?;
    Ok(Json(run).into_response())
}

/// `POST /v1/runs/{id}/abort`: the run ends failed.
pub async fn abort_run(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<RunId>,
    JsonBody(req): JsonBody<DecideRequest>,
) -> Result<Response, ApiErr> {
    let cmd = HumanCommand::Abort {
        stage_id: None,
        comment: req.comment,
    };
    let run = app
        .store
        .human(&id, cmd, &who.actor(req.by.as_deref()))
        .await?;
    Ok(Json(run).into_response())
}

/// `GET /v1/runs/{id}/transitions`: the run's whole log, oldest first: who
/// did what and why.
pub async fn transitions(
    State(app): State<Arc<App>>,
    Path(id): Path<RunId>,
) -> Result<Response, ApiErr> {
    let run = app.store.run_detail(&id).await?.run.id;
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = app
            .store
            .transitions_since(after, Some(run.clone()), 10_000)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        all.extend(page);
    }
    Ok(Json(all).into_response())
}
