//! The web dashboard, served by the daemon itself: one page and its script
//! and style, embedded in the binary, under `/ui/`. The page holds no data;
//! it reads and acts through the same `/v1` API as the CLI, with the admin
//! token typed at its login, or with a session traded for the ticket of a
//! short-lived link (`orch up` prints one, `orch dashboard` makes one).
//!
//! What it is not: a second API. The only routes it adds are the page, the
//! ticket trade, and the log reader the CLI does from the files directly.

pub mod logs;
pub mod session;

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use orchestrator_store::{now_ms, Store};
use serde::{Deserialize, Serialize};

pub use session::Sessions;

use crate::error::{ApiErr, JsonBody};
use crate::App;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
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
/// token: the ticket is the credential, and works once.
pub async fn redeem<S: Store>(
    axum::extract::State(app): axum::extract::State<Arc<App<S>>>,
    JsonBody(req): JsonBody<Redeem>,
) -> Result<Response, ApiErr> {
    match app.sessions.redeem(&req.ticket, now_ms()) {
        Ok((token, expires_at_ms)) => Ok(Json(Session {
            token,
            expires_at_ms,
        })
        .into_response()),
        Err(e) => {
            tracing::warn!(error = %e, "a dashboard link was refused");
            Err(ApiErr::new(StatusCode::UNAUTHORIZED, e.to_string()))
        }
    }
}

/// A link that logs a browser in.
#[derive(Debug, Serialize, Deserialize)]
pub struct Link {
    pub url: String,
    pub expires_at_ms: i64,
}

/// The dashboard's URL with a fresh ticket, on `base` (`http://host:port`).
pub fn link(sessions: &Sessions, base: &str) -> Link {
    let (ticket, expires_at_ms) = sessions.ticket(now_ms());
    Link {
        url: format!("{}/ui/#ticket={ticket}", base.trim_end_matches('/')),
        expires_at_ms,
    }
}

/// `POST /v1/dashboard/links` (admin): a login link, on the address the
/// caller reached the daemon at (or the public URL, when one is set).
pub async fn new_link<S: Store>(
    axum::extract::State(app): axum::extract::State<Arc<App<S>>>,
    headers: HeaderMap,
) -> Json<Link> {
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
    Json(link(&app.sessions, &base))
}
