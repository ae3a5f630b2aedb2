//! Bearer tokens, and who each one proves the caller is (a [`Principal`]).
//! Admin tokens may do everything; a dashboard session (see
//! [`crate::dashboard::session`]) counts as one until it expires. An agent
//! token may only register, claim, heartbeat and complete, and only as the
//! agent it was issued to (see [`crate::ident`]). Only `/healthz`, `/readyz`
//! and the dashboard's static page need none (the model gateway takes a
//! job's key instead, a signed link is its own credential).
//!
//! Agent tokens are checked against the store on every request, so a
//! revoked one is refused at once, by every daemon sharing the store.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use orchestrator_core::Actor;

use crate::error::ApiErr;
use crate::App;

/// Who a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Agent,
}

/// The tokens the daemon accepts besides the agents' own (which live in
/// the store).
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub admin: Vec<String>,
    /// Shared agent tokens (`agent.token`): they may register and act only
    /// under a name no agent credential binds.
    pub agent: Vec<String>,
}

/// Who a request proved it is; handlers find it in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The admin token.
    Admin,
    /// A dashboard session, made from the admin token or a login link.
    Dashboard,
    /// The shared agent token: some agent, not a particular one.
    SharedAgent,
    /// The agent NAME's own token.
    Agent(String),
}

impl Principal {
    pub fn role(&self) -> Role {
        match self {
            Principal::Admin | Principal::Dashboard => Role::Admin,
            Principal::SharedAgent | Principal::Agent(_) => Role::Agent,
        }
    }

    /// The actor a transition records for a human acting as this principal:
    /// the principal itself, and what the request said its author is
    /// (`--by`) only as a note beside it, cleaned to one short line.
    pub fn actor(&self, said: Option<&str>) -> Actor {
        let who = match self {
            Principal::Admin => "admin".to_owned(),
            Principal::Dashboard => "dashboard".to_owned(),
            Principal::SharedAgent => "agent".to_owned(),
            Principal::Agent(name) => format!("agent {name}"),
        };
        let said = said
            .map(|s| orchestrator_core::quote::one_line(s, 64))
            .filter(|s| !s.is_empty() && *s != who);
        Actor::User { name: who, said }
    }
}

impl Tokens {
    fn role_of(&self, token: &str) -> Option<Role> {
        // Compare every token in full so timing does not reveal a prefix.
        let eq = |a: &str, b: &str| {
            a.len() == b.len()
                && a.bytes()
                    .zip(b.bytes())
                    .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                    == 0
        };
        if self.admin.iter().any(|t| eq(t, token)) {
            Some(Role::Admin)
        } else if self.agent.iter().any(|t| eq(t, token)) {
            Some(Role::Agent)
        } else {
            None
        }
    }
}

fn bearer(req: &Request) -> Result<String, ApiErr> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(ApiErr::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: send `Authorization: Bearer <token>` (orch up writes them to the data directory)",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiErr::new(
                StatusCode::UNAUTHORIZED,
                "malformed Authorization header: expected `Bearer <token>`",
            )
        })?;
    Ok(token.trim().to_owned())
}

/// Who `token` proves the caller is. Takes the token, not the request: a
/// request is not `Sync`, and this future must be `Send`.
async fn principal(app: &App, token: &str) -> Result<Principal, ApiErr> {
    match app.config.tokens.role_of(token) {
        Some(Role::Admin) => return Ok(Principal::Admin),
        Some(Role::Agent) => return Ok(Principal::SharedAgent),
        None => {}
    }
    if app.sessions.is_session(token, app.config.clock.now_ms()) {
        return Ok(Principal::Dashboard);
    }
    if let Some((name, revoked)) = crate::ident::token_owner(app, token).await? {
        return match revoked {
            false => Ok(Principal::Agent(name)),
            true => Err(ApiErr::new(
                StatusCode::UNAUTHORIZED,
                format!(
                    "the token of agent {name:?} was revoked; an admin issues a new one with `orch agent-token create {name}`"
                ),
            )),
        };
    }
    Err(ApiErr::new(
        StatusCode::UNAUTHORIZED,
        "unknown token: check the admin or agent token in use (a dashboard session ends at its maximum age, when it logs out, or when the admin revokes every session)",
    ))
}

/// Lets admin tokens and sessions through.
pub async fn admin_only(
    State(app): State<Arc<App>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiErr> {
    let token = bearer(&req)?;
    let who = principal(&app, &token).await?;
    match who.role() {
        Role::Admin => {
            req.extensions_mut().insert(who);
            Ok(next.run(req).await)
        }
        Role::Agent => Err(ApiErr::new(
            StatusCode::FORBIDDEN,
            "an agent token may only register, claim, heartbeat and complete; use an admin token",
        )),
    }
}

/// Lets agent and admin tokens through.
pub async fn agent_or_admin(
    State(app): State<Arc<App>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiErr> {
    let token = bearer(&req)?;
    let who = principal(&app, &token).await?;
    req.extensions_mut().insert(who);
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_whole_and_exactly() {
        let t = Tokens {
            admin: vec!["admin-secret".into()],
            agent: vec!["agent-secret".into()],
        };
        assert_eq!(t.role_of("admin-secret"), Some(Role::Admin));
        assert_eq!(t.role_of("agent-secret"), Some(Role::Agent));
        for wrong in ["admin-secre", "admin-secret2", "", "ADMIN-SECRET"] {
            assert_eq!(t.role_of(wrong), None, "{wrong:?}");
        }
    }

    #[test]
    fn the_actor_is_the_principal_and_by_only_a_note() {
        assert_eq!(Principal::Admin.actor(None), "user:admin");
        assert_eq!(Principal::Admin.actor(Some("  ")), "user:admin");
        assert_eq!(
            Principal::Admin.actor(Some("alice\nforged")),
            "user:admin (said: alice forged)"
        );
        assert_eq!(
            Principal::Dashboard.actor(Some("dashboard")),
            "user:dashboard"
        );
    }
}
