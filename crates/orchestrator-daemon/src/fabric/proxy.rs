//! `POST /v1/chat/completions`, `/v1/completions` and `/v1/embeddings`:
//! checked (the job's key, the JSON, the model), then passed to the model's
//! server unchanged, and its answer streamed back unchanged (Server-Sent
//! Events included). A client that goes away drops the upstream request.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures_util::StreamExt;
use orchestrator_core::fabric::Runtime;

use super::{keys, OpenAiErr};
use crate::App;

/// What the gateway holds besides the keys: the models' queues and servers,
/// and the client that reaches them.
pub struct Upstreams {
    pub fabric: Arc<super::control::Fabric>,
    http: reqwest::Client,
}

impl Upstreams {
    pub fn new(fabric: super::control::Fabric) -> Self {
        Upstreams {
            fabric: Arc::new(fabric),
            // A fresh connection per request: llama.cpp may close a kept-alive
            // one after a streamed answer.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("a client with default TLS settings builds"),
        }
    }
}

fn upstream_err(message: String) -> OpenAiErr {
    let mut e = OpenAiErr::new(StatusCode::BAD_GATEWAY, "upstream_error", message);
    e.kind = "api_error";
    e
}

/// Forwards one request to its model's server.
pub async fn forward(
    State(app): State<Arc<App>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OpenAiErr> {
    let arrived = std::time::Instant::now();
    let holder = keys::authorize(&app, &headers).await?;
    let req: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        OpenAiErr::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    let name = match req.get("model") {
        Some(serde_json::Value::String(name)) => name.as_str(),
        None | Some(serde_json::Value::Null) => {
            return Err(OpenAiErr::new(
                StatusCode::BAD_REQUEST,
                "missing_model",
                "the request names no model; expected a string `model`, one of GET /v1/models",
            ))
        }
        Some(other) => {
            return Err(OpenAiErr::new(
                StatusCode::BAD_REQUEST,
                "invalid_model",
                format!("`model` must be a string naming one of GET /v1/models, not {other}"),
            ))
        }
    };
    let Some(model) = app.config.models.iter().find(|m| m.name == name) else {
        return Err(OpenAiErr::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("the model `{name}` does not exist on this daemon; GET /v1/models lists those it serves"),
        ));
    };
    let up = &app.upstreams;
    // Held until the answer's last byte is sent or its client goes away.
    let (permit, grant) = up
        .fabric
        .pool
        .acquire(&model.name, holder.priority)
        .await
        .map_err(|e| {
            app.usage.failed(holder.job_id, &model.name, arrived);
            upstream_err(format!("model `{name}`: {e}"))
        })?;
    // Counts the request when dropped: at its answer's end, or here on failure.
    let mut meter = app.usage.meter(holder.job_id, &model.name, arrived);
    let base = grant.url;
    let api_key = match &model.runtime {
        Runtime::External { api_key_env, .. } => {
            api_key_env.as_ref().and_then(|v| std::env::var(v).ok())
        }
        Runtime::LlamaCpp { .. } => None,
    };
    let path = uri.path().strip_prefix("/v1").unwrap_or(uri.path());
    let mut out = up
        .http
        .post(format!("{base}{path}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(k) = api_key {
        out = out.bearer_auth(k);
    }
    let resp = out
        .send()
        .await
        .map_err(|e| upstream_err(format!("model `{name}`: {e}")))?;
    meter.answer_type(
        resp.headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
    );
    let mut answer = Response::builder().status(resp.status().as_u16());
    for h in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(v) = resp.headers().get(&h) {
            answer = answer.header(h, v.as_bytes());
        }
    }
    answer
        .body(Body::from_stream(resp.bytes_stream().map(move |chunk| {
            let _held = &permit;
            if let Ok(c) = &chunk {
                meter.observe(c);
            }
            chunk
        })))
        .map_err(|e| upstream_err(e.to_string()))
}
