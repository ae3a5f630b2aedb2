//! Agent identity: the admin's endpoints that issue, list and revoke agent
//! credentials, and the checks that keep each agent to its own name, its
//! own agent id and so its own leases.
//!
//! An agent token is bound to one name. The shared agent token (`agent.token`)
//! may act only under names no credential binds: once a name has a
//! credential, registering under it (which voids the agent's leases) or
//! acting for its agent id needs that credential.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use orchestrator_core::api::{AgentTokenCreated, NewAgentToken};
use orchestrator_store::Store;

use crate::auth::Principal;
use crate::error::{ApiErr, JsonBody};
use crate::extract::Path;
use crate::App;

fn forbidden(msg: String) -> ApiErr {
    ApiErr::new(StatusCode::FORBIDDEN, msg)
}

/// May `who` register, or report models, as the agent named `name`?
pub async fn check_name<S: Store>(app: &App<S>, who: &Principal, name: &str) -> Result<(), ApiErr> {
    match who {
        Principal::Admin | Principal::Dashboard => Ok(()),
        Principal::Agent(own) if own == name => Ok(()),
        Principal::Agent(own) => Err(forbidden(format!(
            "this token is agent {own:?}'s; it may register only as {own:?}, not as {name:?} (`orch agent --name {own}`)"
        ))),
        Principal::SharedAgent => {
            if app.store.agent_name_bound(name).await? {
                Err(forbidden(format!(
                    "agent {name:?} has a token of its own; the shared agent token may not register or act under its name"
                )))
            } else {
                Ok(())
            }
        }
    }
}

/// May `who` claim, heartbeat or complete for agent `agent_id`?
pub async fn check_agent<S: Store>(
    app: &App<S>,
    who: &Principal,
    agent_id: &str,
) -> Result<(), ApiErr> {
    if matches!(who, Principal::Admin | Principal::Dashboard) {
        return Ok(());
    }
    let Some((name, bound)) = app.store.agent_name(agent_id).await? else {
        return match who {
            // Unknown to everyone: the store answers as before (404).
            Principal::SharedAgent => Ok(()),
            _ => Err(forbidden(format!(
                "agent {agent_id:?} is not registered under this token; an agent acts only for the id its registration returned"
            ))),
        };
    };
    match who {
        Principal::Agent(own) if *own == name => Ok(()),
        Principal::Agent(own) => Err(forbidden(format!(
            "agent {agent_id:?} is {name:?}; this token is {own:?}'s, and an agent acts only for itself and its own leases"
        ))),
        Principal::SharedAgent if bound => Err(forbidden(format!(
            "agent {agent_id:?} ({name:?}) has a token of its own; the shared agent token may not act for it"
        ))),
        _ => Ok(()),
    }
}

/// `POST /v1/agent-tokens` (admin): issues NAME's credential, shown once.
pub async fn create<S: Store>(
    State(app): State<Arc<App<S>>>,
    Extension(who): Extension<Principal>,
    JsonBody(req): JsonBody<NewAgentToken>,
) -> Result<Response, ApiErr> {
    let token = app
        .store
        .issue_agent_token(&req.name, false, &who.actor(None))
        .await?;
    tracing::info!(agent = %req.name, "agent token issued");
    Ok((
        StatusCode::CREATED,
        Json(AgentTokenCreated {
            name: req.name,
            token,
        }),
    )
        .into_response())
}

/// `GET /v1/agent-tokens` (admin): every name's credential, never a token.
pub async fn list<S: Store>(State(app): State<Arc<App<S>>>) -> Result<Response, ApiErr> {
    Ok(Json(app.store.list_agent_tokens().await?).into_response())
}

/// `POST /v1/agent-tokens/{name}/revoke` (admin): refused from now on; the
/// agent's leases are not ended, they expire as its heartbeats stop.
pub async fn revoke<S: Store>(
    State(app): State<Arc<App<S>>>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiErr> {
    let view = app
        .store
        .revoke_agent_token(&name, &who.actor(None))
        .await?;
    tracing::info!(agent = %name, "agent token revoked");
    Ok(Json(view).into_response())
}
