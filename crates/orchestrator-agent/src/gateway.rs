//! The model gateway, relayed through the agent's step socket.
//!
//! A step in a sandbox without network reaches nothing of the network, the
//! daemon included, but it can reach the step socket (see `crate::ask`),
//! and through the relay in its sandbox (`sandbox::relay`) a loopback port
//! that leads to it. So the socket also serves the gateway's paths
//! ([`GATEWAY_PATHS`]) by passing each request to the same path of the
//! daemon and its answer back: method, query, body and headers unchanged,
//! `Authorization` included. The daemon checks the step's key as for any
//! other caller; the relay adds no authority of its own. Only the gateway's
//! paths are relayed, not the rest of the daemon's `/v1` (its API, signed
//! action links): a step reaches the models and nothing else of the
//! daemon. Bodies stream both ways, so a streamed completion's events
//! arrive as the model produces them.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::json;

/// The daemon's model gateway, path by path: the routes the daemon's
/// router serves under a job's key (`orchestrator-daemon`, `router`).
pub const GATEWAY_PATHS: [&str; 4] = [
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
];

/// The routes that relay [`GATEWAY_PATHS`] to `up`.
pub(crate) fn routes(up: Upstream) -> Router {
    GATEWAY_PATHS
        .iter()
        .fold(Router::new(), |r, path| r.route(path, any(relay)))
        .with_state(up)
}

/// Where the gateway's requests go.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    /// The daemon's gateway, `<daemon>/v1`, without a trailing slash.
    base: String,
    client: reqwest::Client,
}

impl Upstream {
    /// The relay to the gateway of the daemon at `daemon_url`.
    pub(crate) fn new(daemon_url: &str) -> Result<Upstream, reqwest::Error> {
        let client = reqwest::Client::builder()
            // The daemon is reached directly, never through a proxy of the
            // agent's environment; and a streamed answer may take as long
            // as the model does, so there is no overall timeout.
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Upstream {
            base: format!("{}/v1", daemon_url.trim_end_matches('/')),
            client,
        })
    }
}

/// Headers that belong to one connection, not to the request or answer
/// (RFC 9110, 7.6.1), and `Host`, which names the relay.
fn per_connection(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name.as_str() == "keep-alive"
}

fn copy_headers(from: &HeaderMap) -> HeaderMap {
    from.iter()
        .filter(|(name, _)| !per_connection(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// An error the way OpenAI clients read one.
fn error(status: StatusCode, message: String) -> Response {
    let body = json!({ "error": { "message": message, "type": "gateway_relay_error" } });
    (status, axum::Json(body)).into_response()
}

/// Relays one request to the same path of the daemon's gateway.
async fn relay(State(up): State<Upstream>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // The routes are the gateway's own paths, all under `/v1`.
    let Some(rest) = parts.uri.path().strip_prefix("/v1") else {
        return error(
            StatusCode::NOT_FOUND,
            "only the model gateway is relayed".into(),
        );
    };
    let mut url = format!("{}{rest}", up.base);
    if let Some(query) = parts.uri.query() {
        url.push('?');
        url.push_str(query);
    }
    let sent = up
        .client
        .request(parts.method.clone(), &url)
        .headers(copy_headers(&parts.headers))
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    let answer = match sent {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, url = %url, "the model gateway could not be reached");
            return error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "the daemon's model gateway at {} could not be reached: {e}",
                    up.base
                ),
            );
        }
    };
    let status = answer.status();
    let headers = copy_headers(answer.headers());
    let mut response = Response::new(Body::from_stream(answer.bytes_stream()));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
