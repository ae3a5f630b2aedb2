//! The web dashboard, served by the daemon itself: one page and its script
//! and style, embedded in the binary, under `/ui/`. The page holds no data;
//! it reads and acts through the same `/v1` API as the CLI, with the admin
//! token typed at its login, or with a session traded for the ticket of a
//! short-lived link (`orch dashboard` makes one; `orch up` at a terminal
//! prints one).
//!
//! What it is not: a second API. The only routes it adds are the page, the
//! ticket trade, logging out and revoking sessions, and the log reader the
//! CLI does from the files directly.

pub mod diff;
pub mod logs;
pub mod session;

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use orchestrator_store::{Credential, Refused, StoreError};
use serde::{Deserialize, Serialize};

pub use session::{Sessions, TicketError};

use crate::error::{ApiErr, JsonBody};
use crate::App;

const INDEX: &str = include_str!("assets/index.html");
/// The page's one script, kept in files by what they draw: `app.js` first
/// (helpers, login, routing, live updates), the views, `start.js` last.
const APP_JS: &str = concat!(
    include_str!("assets/app.js"),
    include_str!("assets/runs.js"),
    include_str!("assets/changes.js"),
    include_str!("assets/inbox.js"),
    include_str!("assets/workflows.js"),
    include_str!("assets/start.js"),
);
const STYLE: &str = include_str!("assets/style.css");

/// Only the daemon's own script and style run on the page, and it may only
/// talk to the daemon: an injected string cannot load or send anything.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // A new binary brings new assets; the browser must not keep old ones.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui`: to the page, whose relative paths need the slash.
pub async fn root() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `GET /ui/`.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/app.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/style.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `POST /v1/dashboard/session`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redeem {
    pub ticket: String,
}

/// A session: its token works as an admin token until `expires_at_ms`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Session {
    pub token: String,
    pub expires_at_ms: i64,
}

/// `POST /v1/dashboard/session`: a link's ticket for a session. Needs no
/// token: the ticket is the credential, and works once: it is spent in the
/// store before the session is made, so a restart does not revive it.
pub async fn redeem(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    JsonBody(req): JsonBody<Redeem>,
) -> Result<Response, ApiErr> {
    let now = app.config.clock.now_ms();
    let refused = |e: TicketError| {
        tracing::warn!(error = %e, "a dashboard link was refused");
        ApiErr::new(StatusCode::UNAUTHORIZED, e.to_string())
    };
    let ticket = app
        .sessions
        .check_ticket(&req.ticket, now)
        .map_err(refused)?;
    match app
        .store
        .spend(Credential::Ticket, ticket.nonce, ticket.expires_at_ms)
        .await
    {
        Ok(()) => {}
        Err(StoreError::Refused(Refused::Used { .. })) => return Err(refused(TicketError::Used)),
        Err(e) => return Err(e.into()),
    }
    let (token, expires_at_ms) = app.sessions.session(now);
    Ok(Json(Session {
        token,
        expires_at_ms,
    })
    .into_response())
}

/// The session a request's bearer token is, if it is one: the admin gate
/// let it through, so a token that reads as a session is one.
fn session_of(app: &App, headers: &HeaderMap) -> Option<session::Session> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    app.sessions
        .session_of(token.trim(), app.config.clock.now_ms())
}

/// Refuses a dashboard session what only the admin token may do.
fn admin_token_only(app: &App, headers: &HeaderMap, what: &str) -> Result<(), ApiErr> {
    match session_of(app, headers) {
        Some(_) => Err(ApiErr::new(
            StatusCode::FORBIDDEN,
            format!("a dashboard session cannot {what}; use the admin token (`orch dashboard` on the daemon's machine)"),
        )),
        None => Ok(()),
    }
}

/// `POST /v1/dashboard/logout` (a session): ends the caller's session on
/// the server, for every copy of its token, across restarts.
pub async fn logout(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    let Some(s) = session_of(&app, &headers) else {
        return Err(ApiErr::new(
            StatusCode::BAD_REQUEST,
            "logout ends a dashboard session, and this token is not one; `orch dashboard --revoke` ends every session",
        ));
    };
    match app
        .store
        .spend(Credential::Session, s.id.clone(), s.expires_at_ms)
        .await
    {
        // Logged out already by a concurrent request: the same outcome.
        Ok(()) | Err(StoreError::Refused(Refused::Used { .. })) => {}
        Err(e) => return Err(e.into()),
    }
    app.sessions.revoke(&s);
    tracing::info!(session = %s.id, "a dashboard session logged out");
    Ok(Json(serde_json::json!({ "logged_out": true })).into_response())
}

/// What `POST /v1/dashboard/revoke` did.
#[derive(Debug, Serialize, Deserialize)]
pub struct Revoked {
    /// Every session and login link made at or before this time is void.
    pub revoked_before_ms: i64,
}

/// `POST /v1/dashboard/revoke` (admin token only): ends every dashboard
/// session and every login link not yet used.
pub async fn revoke(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<Revoked>, ApiErr> {
    admin_token_only(&app, &headers, "revoke sessions")?;
    let at = app.config.clock.now_ms();
    app.store.revoke_sessions(at).await?;
    app.sessions.revoke_before(at);
    tracing::info!(before_ms = at, "every dashboard session revoked");
    Ok(Json(Revoked {
        revoked_before_ms: at,
    }))
}

/// A link that logs a browser in.
#[derive(Debug, Serialize, Deserialize)]
pub struct Link {
    pub url: String,
    pub expires_at_ms: i64,
}

/// The dashboard's URL with a fresh ticket, on `base` (`http://host:port`),
/// made at `now_ms`.
pub fn link(sessions: &Sessions, base: &str, now_ms: i64) -> Link {
    let (ticket, expires_at_ms) = sessions.ticket(now_ms);
    Link {
        url: format!("{}/ui/#ticket={ticket}", base.trim_end_matches('/')),
        expires_at_ms,
    }
}

/// `POST /v1/dashboard/links` (admin token only: a session that made
/// links could log in again forever): a login link, on the address the
/// caller reached the daemon at (or the public URL, when one is set).
pub async fn new_link(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<Link>, ApiErr> {
    admin_token_only(&app, &headers, "make login links")?;
    let base = match &app.config.hooks.links {
        Some(l) => l.public_url.clone(),
        None => headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
            })
            .map_or_else(
                || format!("http://{}", app.config.listen),
                |h| format!("http://{h}"),
            ),
    };
    Ok(Json(link(&app.sessions, &base, app.config.clock.now_ms())))
}

/// How often a daemon reads the revocations again: what another daemon on
/// the same database revoked is honoured here within this long.
const REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps the sessions' copy of the store's revocations current until `stop`.
pub async fn refresh_revocations(app: Arc<App>, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REFRESH) => {}
        }
        match app.store.revocations().await {
            Ok(r) => app.sessions.load(&r, app.config.clock.now_ms()),
            Err(e) => tracing::warn!(error = %e, "cannot read the dashboard's revocations"),
        }
    }
}
