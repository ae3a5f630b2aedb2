//! Bearer tokens. Admin tokens may do everything; agent tokens may only
//! register, claim, heartbeat and complete. A dashboard session (see
//! [`crate::dashboard::session`]) counts as an admin token until it expires.
//! Only `/healthz`, `/readyz` and the dashboard's static page need none (the
//! model gateway takes a job's key instead).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiErr;

/// Who a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Agent,
}

/// The tokens the daemon accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub admin: Vec<String>,
    pub agent: Vec<String>,
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

/// What the middleware checks a request's token against.
#[derive(Debug)]
pub struct Gate {
    pub tokens: Tokens,
    pub sessions: Arc<crate::dashboard::Sessions>,
}

fn role(gate: &Gate, req: &Request) -> Result<Role, ApiErr> {
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
    let token = token.trim();
    if let Some(role) = gate.tokens.role_of(token) {
        return Ok(role);
    }
    if gate
        .sessions
        .is_session(token, orchestrator_store::now_ms())
    {
        return Ok(Role::Admin);
    }
    Err(ApiErr::new(
        StatusCode::UNAUTHORIZED,
        "unknown token: check the admin or agent token in use (a dashboard session ends at its maximum age, when it logs out, or when the admin revokes every session)",
    ))
}

/// Lets admin tokens through.
pub async fn admin_only(
    State(gate): State<Arc<Gate>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiErr> {
    match role(&gate, &req)? {
        Role::Admin => Ok(next.run(req).await),
        Role::Agent => Err(ApiErr::new(
            StatusCode::FORBIDDEN,
            "an agent token may only register, claim, heartbeat and complete; use an admin token",
        )),
    }
}

/// Lets agent and admin tokens through.
pub async fn agent_or_admin(
    State(gate): State<Arc<Gate>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiErr> {
    role(&gate, &req)?;
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
}
