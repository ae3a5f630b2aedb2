//! Agent identity: the admin's endpoints that issue, list and revoke agent
//! credentials, and the checks that keep each agent to its own name, its
//! own agent id and so its own leases.
//!
//! An agent token is bound to one name. The shared agent token (`agent.token`)
//! may act only under names no credential binds: once a name has a
//! credential, registering under it (which voids the agent's leases) or
//! acting for its agent id needs that credential.

use orchestrator_core::AgentId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use orchestrator_core::api::{AgentTokenCreated, NewAgentToken};

use crate::auth::Principal;
use crate::error::{ApiErr, JsonBody};
use crate::extract::Path;
use crate::App;

/// How long an identity read from the store is trusted before it is read
/// again: a credential issued or revoked by another daemon on a shared
/// store takes effect here within this time; one issued or revoked by this
/// daemon takes effect at once.
const FRESH_FOR: Duration = Duration::from_secs(5);

/// Entries kept at most; past this the cache starts afresh.
const CACHE_MAX: usize = 4096;

/// A name and a flag (revoked, or bound) read from the store, by key, with
/// when it was read; None when the store knew nothing.
type Kept = Mutex<HashMap<String, (Option<(String, bool)>, Instant)>>;

/// Identities read from the store, kept briefly: every claim, heartbeat and
/// completion needs them, and a store read each would be most of a step's
/// latency.
#[derive(Debug, Default)]
pub struct Identities {
    /// Agent token → its owner and whether it is revoked.
    tokens: Kept,
    /// Agent id → its name and whether that name is bound to a credential.
    agents: Kept,
}

impl Identities {
    /// Forgets everything: a credential was issued or revoked here.
    pub fn forget(&self) {
        lock(&self.tokens).clear();
        lock(&self.agents).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding it leaves a usable map.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `key`'s entry in `map` while fresh, else `read` and keep it.
async fn cached<F>(map: &Kept, key: &str, read: F) -> Result<Option<(String, bool)>, ApiErr>
where
    F: std::future::Future<Output = orchestrator_store::Result<Option<(String, bool)>>>,
{
    if let Some((v, at)) = lock(map).get(key) {
        if at.elapsed() < FRESH_FOR {
            return Ok(v.clone());
        }
    }
    let v = read.await?;
    let mut m = lock(map);
    if m.len() >= CACHE_MAX {
        m.clear();
    }
    m.insert(key.to_owned(), (v.clone(), Instant::now()));
    Ok(v)
}

/// The owner of agent token `token` and whether it is revoked.
pub async fn token_owner(app: &App, token: &str) -> Result<Option<(String, bool)>, ApiErr> {
    cached(&app.identities.tokens, token, async {
        Ok(app
            .store
            .agent_token_owner(token)
            .await?
            .map(|c| (c.name, c.revoked_at_ms.is_some())))
    })
    .await
}

fn forbidden(msg: String) -> ApiErr {
    ApiErr::new(StatusCode::FORBIDDEN, msg)
}

/// May `who` register, or report models, as the agent named `name`?
pub async fn check_name(app: &App, who: &Principal, name: &str) -> Result<(), ApiErr> {
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
pub async fn check_agent(app: &App, who: &Principal, agent_id: &AgentId) -> Result<(), ApiErr> {
    if matches!(who, Principal::Admin | Principal::Dashboard) {
        return Ok(());
    }
    let Some((name, bound)) = cached(
        &app.identities.agents,
        agent_id.as_str(),
        app.store.agent_name(agent_id),
    )
    .await?
    else {
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
pub async fn create(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    JsonBody(req): JsonBody<NewAgentToken>,
) -> Result<Response, ApiErr> {
    let token = app
        .store
        .issue_agent_token(&req.name, false, &who.actor(None))
        .await?;
    app.identities.forget();
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
pub async fn list(State(app): State<Arc<App>>) -> Result<Response, ApiErr> {
    Ok(Json(app.store.list_agent_tokens().await?).into_response())
}

/// `POST /v1/agent-tokens/{name}/revoke` (admin): refused from now on; the
/// agent's leases are not ended, they expire as its heartbeats stop.
pub async fn revoke(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiErr> {
    let view = app
        .store
        .revoke_agent_token(&name, &who.actor(None))
        .await?;
    app.identities.forget();
    tracing::info!(agent = %name, "agent token revoked");
    Ok(Json(view).into_response())
}
