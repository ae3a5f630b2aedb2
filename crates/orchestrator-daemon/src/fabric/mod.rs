//! The model gateway: an OpenAI-compatible API under `/v1` that steps reach
//! with their job's key ([`keys`]).
//!
//! What it is: `GET /v1/models`, the configured models in OpenAI's list
//! shape, and the completion and embedding routes passed through to each
//! model's server ([`proxy`]): an external one, or a llama.cpp server
//! (`orchestrator_host::model_server`) that residency ([`control`]) starts when its model is wanted
//! and stops when its memory is needed, between requests. Requests wait for
//! a slot of their model in their run's priority order ([`pool`]) and are
//! counted for their job's run, stage and model ([`usage`]; `GET /v1/usage`
//! reads the job's own). Every answer it refuses has OpenAI's error shape
//! (`{"error": {"message", "type", "code"}}`), so that OpenAI clients show
//! the reason.

pub mod control;
pub mod health;
pub mod keys;
pub mod placement;
pub mod pool;
pub mod proxy;
pub mod remote;
pub mod usage;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::App;

pub use keys::JobKeys;
pub use proxy::Upstreams;

/// An answer in OpenAI's error shape.
#[derive(Debug)]
pub struct OpenAiErr {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub code: &'static str,
}

impl OpenAiErr {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        OpenAiErr {
            status,
            message: message.into(),
            kind: "invalid_request_error",
            code,
        }
    }
}

impl IntoResponse for OpenAiErr {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "code": self.code,
        }});
        (self.status, Json(body)).into_response()
    }
}

/// `GET /v1/usage`: the model usage of the key's job so far, flushed to the
/// store first so that it counts every request that has ended. The agent
/// reads it for the step's manifest.
pub async fn job_usage(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, OpenAiErr> {
    let holder = keys::authorize(&app, &headers).await?;
    let store_err = |e: orchestrator_store::StoreError| {
        let mut err = OpenAiErr::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_error",
            e.to_string(),
        );
        err.kind = "api_error";
        err
    };
    app.usage.flush(&app.store).await.map_err(store_err)?;
    let models = app
        .store
        .job_usage(holder.job_id)
        .await
        .map_err(store_err)?;
    Ok(Json(orchestrator_core::api::JobUsage {
        job_id: holder.job_id,
        models,
    })
    .into_response())
}

/// The daemon's own resources under `/v1`; the rest of `/v1` is the gateway's.
const DAEMON_RESOURCES: &[&str] = &[
    "runs", "agents", "jobs", "inbox", "events", "webhooks", "act",
];

/// Whether an answer about `path` (one no route took) belongs to the gateway,
/// and so takes OpenAI's error shape: under `/v1` and none of the daemon's
/// own resources.
pub fn is_gateway_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return false;
    };
    let first = rest.split('/').next().unwrap_or_default();
    !DAEMON_RESOURCES.contains(&first)
}

/// `GET /v1/models`: the models this daemon serves.
pub async fn list_models(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, OpenAiErr> {
    keys::authorize(&app, &headers).await?;
    let data: Vec<_> = app
        .config
        .models
        .iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": "orchestrator"}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}
