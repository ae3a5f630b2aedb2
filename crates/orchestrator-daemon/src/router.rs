//! The HTTP surface: every route, who may call it (admin, agent, or a
//! credential of its own), and the answers to paths and methods it does not serve.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use crate::{
    act, api, auth, dashboard, error, events, fabric, health, hooks, human, ident, metrics, wait,
    ApiErr, App,
};

pub(crate) fn router(app: Arc<App>) -> Router {
    let admin = Router::new()
        .route("/v1/runs", post(api::submit_run).get(api::list_runs))
        .route("/v1/runs/{id}", get(api::get_run))
        .route("/v1/runs/{id}/cancel", post(api::cancel_run))
        .route("/v1/runs/{id}/pause", post(api::pause_run))
        .route("/v1/runs/{id}/resume", post(api::resume_run))
        .route("/v1/runs/{id}/stages", get(api::get_stages))
        .route("/v1/runs/{id}/stages/{stage}", get(api::get_stage))
        .route("/v1/runs/{id}/jobs", get(api::get_jobs))
        .route("/v1/runs/{id}/explain", get(api::explain))
        .route("/v1/runs/{id}/stages/{stage}/approve", post(human::approve))
        .route("/v1/runs/{id}/stages/{stage}/reject", post(human::reject))
        .route("/v1/runs/{id}/questions/{qid}/answer", post(human::answer))
        .route("/v1/runs/{id}/stages/{stage}/retry", post(human::retry))
        .route("/v1/runs/{id}/stages/{stage}/skip", post(human::skip))
        .route(
            "/v1/runs/{id}/stages/{stage}/abort",
            post(human::abort_stage),
        )
        .route("/v1/runs/{id}/abort", post(human::abort_run))
        .route("/v1/inbox", get(human::inbox))
        .route("/v1/runs/{id}/transitions", get(human::transitions))
        .route("/v1/agents", get(api::list_agents))
        .route("/v1/workflows", get(api::list_workflows))
        .route("/v1/events", get(events::events))
        .route("/v1/webhooks", get(webhooks_handler))
        .route("/metrics", get(metrics_handler))
        .route("/v1/runs/{id}/jobs/{job}/logs", get(dashboard::logs::read))
        .route("/v1/runs/{id}/diff", get(dashboard::diff::read))
        .route("/v1/dashboard/links", post(dashboard::new_link))
        .route("/v1/dashboard/logout", post(dashboard::logout))
        .route("/v1/dashboard/revoke", post(dashboard::revoke))
        .route("/v1/agent-tokens", post(ident::create).get(ident::list))
        .route("/v1/agent-tokens/{name}/revoke", post(ident::revoke))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::admin_only,
        ));
    let agent = Router::new()
        .route("/v1/agents", post(api::register_agent))
        .route("/v1/agents/{id}/claim", post(api::claim))
        .route("/v1/agents/{id}/heartbeat", post(api::heartbeat))
        .route("/v1/agents/{id}/models", post(fabric::remote::agent_models))
        .route("/v1/jobs/{id}/complete", post(api::complete))
        .route("/v1/jobs/{id}/questions", post(wait::ask))
        .route("/v1/jobs/{id}/questions/{qid}/wait", post(wait::wait))
        .route(
            "/v1/jobs/{id}/questions/{qid}/withdraw",
            post(wait::withdraw),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::agent_or_admin,
        ));
    let limit = app.config.max_body_bytes;
    Router::new()
        .merge(admin)
        .merge(agent)
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(health::readyz))
        // The page holds no data: it asks for a token, then uses the API.
        .route("/ui", get(dashboard::root))
        .route("/ui/", get(dashboard::index))
        .route("/ui/app.js", get(dashboard::script))
        .route("/ui/style.css", get(dashboard::style))
        // The ticket is its own credential, good once.
        .route("/v1/dashboard/session", post(dashboard::redeem))
        // The model gateway: a job's own key is its credential. The agent
        // relays exactly these paths to sandboxes without network (its
        // `gateway::GATEWAY_PATHS`): a new gateway path belongs there too.
        .route("/v1/models", get(fabric::list_models))
        .route("/v1/usage", get(fabric::job_usage))
        .route("/v1/chat/completions", post(fabric::proxy::forward))
        .route("/v1/completions", post(fabric::proxy::forward))
        .route("/v1/embeddings", post(fabric::proxy::forward))
        // The signed link is its own credential: no bearer token.
        .route("/v1/act/{token}", get(act::show).post(act::act))
        // Under /v1, whatever is not one of the daemon's own resources is
        // OpenAI's namespace: an OpenAI client there reads OpenAI's shape.
        .fallback(|uri: axum::http::Uri| async move {
            let status = axum::http::StatusCode::NOT_FOUND;
            if fabric::is_gateway_path(uri.path()) {
                fabric::OpenAiErr::new(
                    status,
                    "unknown_url",
                    format!("no such endpoint: {}; the gateway serves GET /v1/models and POST /v1/chat/completions, /v1/completions and /v1/embeddings", uri.path()),
                )
                .into_response()
            } else {
                error::ApiErr::new(status, "no such endpoint; the API lives under /v1").into_response()
            }
        })
        // axum's own 405 has no body; a client should hear why.
        .method_not_allowed_fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            let status = axum::http::StatusCode::METHOD_NOT_ALLOWED;
            if fabric::is_gateway_path(uri.path()) {
                fabric::OpenAiErr::new(
                    status,
                    "method_not_allowed",
                    format!("{method} {} is not served: GET /v1/models lists, the others take POST", uri.path()),
                )
                .into_response()
            } else {
                error::ApiErr::new(
                    status,
                    "this endpoint does not take that method (GET reads, POST acts)",
                )
                .into_response()
            }
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

async fn metrics_handler(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    headers: axum::http::HeaderMap,
) -> Result<impl IntoResponse, ApiErr> {
    let scraped = metrics::Scraped {
        counts: app.store.counts().await?,
        writer: app.store.writer_stats(),
        fabric: metrics::FabricView::of(&app.upstreams.fabric),
        models: app.usage.by_model(),
        agents: app.store.list_agents(app.config.online_ms()).await?,
        inbox: app.store.inbox().await?,
    };
    let format = metrics::Format::accepted(
        headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    Ok((
        [(axum::http::header::CONTENT_TYPE, format.content_type())],
        app.metrics.render(scraped, format),
    ))
}

/// `GET /v1/webhooks`: every hook target's delivery status.
async fn webhooks_handler(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
) -> axum::Json<Vec<hooks::HookStatus>> {
    axum::Json(app.hooks.status())
}
