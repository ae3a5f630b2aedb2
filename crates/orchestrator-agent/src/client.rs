//! The agent's side of the daemon's HTTP API: register, claim, heartbeat,
//! complete, with every answer turned into a typed result.
//!
//! It exists so that the loops in [`crate::agent`] decide on meanings
//! (unauthorized, stale lease, unknown agent, worth retrying) instead of status
//! codes. One [`reqwest::Client`] is shared by all loops so that connections
//! are kept alive and reused; each request carries the bearer token. This
//! module does not retry: retry policy belongs to the callers, who know what
//! a request is for.

use std::error::Error as _;
use std::time::Duration;

use orchestrator_core::api::{
    AgentRegistered, ApiError, ClaimRequest, ClaimedJob, CompleteRequest, Completed,
    HeartbeatRequest, HeartbeatResponse, LeaseRef, ModelOrders, ModelReport, RegisterAgent,
    WaitAsk, WaitPoll, WaitStatus,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Time allowed for requests that do not long-poll.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Slack added to a claim's `wait_ms` before the request itself times out.
const CLAIM_SLACK: Duration = Duration::from_secs(10);
/// Longest part of an unexpected answer body quoted in an error.
const BODY_QUOTE_MAX: usize = 300;

/// What can go wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// 401: the token is missing or wrong. Fatal for the agent.
    #[error("the daemon refused the agent's token (401 Unauthorized): {0}")]
    Unauthorized(String),
    /// 403: the token may not do this. Fatal for the agent.
    #[error("the daemon forbade the request (403 Forbidden): {0}")]
    Forbidden(String),
    /// 409 on completion: the lease expired or was taken over.
    #[error("the lease is no longer held (409 Conflict): {0}")]
    StaleLease(String),
    /// 404 on an agent's own endpoint: the daemon does not know this agent id
    /// (it restarted and forgot it); register again.
    #[error("the daemon does not know agent {agent_id} (404): {message}")]
    UnknownAgent { agent_id: String, message: String },
    /// 404 elsewhere (an unknown job).
    #[error("{path}: not found (404): {message}")]
    NotFound { path: String, message: String },
    /// Any other 4xx: the request itself was refused.
    #[error("{path}: the daemon refused the request ({status}): {message}")]
    Rejected {
        path: String,
        status: u16,
        message: String,
    },
    /// 5xx: the daemon failed; worth retrying.
    #[error("{path}: the daemon failed ({status}): {message}")]
    Server {
        path: String,
        status: u16,
        message: String,
    },
    /// The daemon could not be reached or the connection broke; worth retrying.
    #[error("could not reach the daemon at {url}: {message}")]
    Network { url: String, message: String },
    /// An answer this agent does not understand (a different version of the
    /// daemon, or not the daemon at all).
    #[error("{path}: unexpected answer from the daemon: {message}")]
    Protocol { path: String, message: String },
    /// The client could not be built (bad server address).
    #[error("invalid daemon address {server:?}: {message}")]
    Config { server: String, message: String },
}

impl ClientError {
    /// Whether trying again later may succeed: network trouble, 5xx, 408, 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Network { .. } | ClientError::Server { .. } => true,
            ClientError::Rejected { status, .. } => matches!(*status, 408 | 429),
            _ => false,
        }
    }

    /// Whether the agent cannot go on at all (its credentials are refused).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ClientError::Unauthorized(_) | ClientError::Forbidden(_)
        )
    }
}

/// The daemon's API, as the agent uses it.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `http://host:port`, without a trailing slash.
    base: String,
    /// The `Authorization` header value.
    auth: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Which kind of endpoint a request went to, to read a 404 right.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// `/v1/agents/{id}/...`: a 404 means the agent id is unknown.
    Agent(&'a str),
    Other,
}

impl Client {
    /// A client for the daemon at `server` (`http://host:port`).
    pub fn new(server: &str, token: &str) -> Result<Self, ClientError> {
        let base = server.trim_end_matches('/').to_owned();
        let config = |message: String| ClientError::Config {
            server: server.to_owned(),
            message,
        };
        if base.starts_with("https://") {
            return Err(config(
                "https is not supported by this build of the agent; use http:// (on a trusted network or through a tunnel)".into(),
            ));
        }
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(config(
                "expected an address such as http://127.0.0.1:7777".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| config(error_chain(&e)))?;
        Ok(Client {
            http,
            base,
            auth: format!("Bearer {token}"),
        })
    }

    /// `POST /v1/agents`.
    pub async fn register(&self, req: &RegisterAgent) -> Result<AgentRegistered, ClientError> {
        self.post("/v1/agents".into(), req, REQUEST_TIMEOUT, Scope::Other)
            .await?
            .ok_or_else(|| no_content("/v1/agents"))
    }

    /// `POST /v1/agents/{id}/claim`: a job, or None when none came within
    /// `wait_ms`. Asked again with the same `key` after an error, it gets
    /// the job the lost answer carried.
    pub async fn claim(
        &self,
        agent_id: &str,
        wait_ms: u64,
        key: &str,
    ) -> Result<Option<ClaimedJob>, ClientError> {
        let path = format!("/v1/agents/{agent_id}/claim");
        let timeout = Duration::from_millis(wait_ms) + CLAIM_SLACK;
        self.post(
            path,
            &ClaimRequest {
                wait_ms,
                claim_key: Some(key.to_owned()),
            },
            timeout,
            Scope::Agent(agent_id),
        )
        .await
    }

    /// `POST /v1/agents/{id}/heartbeat`; with `wait`, the daemon answers
    /// early only when one of the agent's leases is revoked.
    pub async fn heartbeat(
        &self,
        agent_id: &str,
        leases: Vec<LeaseRef>,
        wait: Duration,
    ) -> Result<HeartbeatResponse, ClientError> {
        let path = format!("/v1/agents/{agent_id}/heartbeat");
        self.post(
            path.clone(),
            &HeartbeatRequest {
                leases,
                wait_ms: wait.as_millis() as u64,
            },
            wait + REQUEST_TIMEOUT,
            Scope::Agent(agent_id),
        )
        .await?
        .ok_or_else(|| no_content(&path))
    }

    /// `POST /v1/agents/{id}/models`: the model servers the daemon wants
    /// here; it answers early only when they differ from `report`.
    pub async fn models(
        &self,
        agent_id: &str,
        report: &ModelReport,
    ) -> Result<ModelOrders, ClientError> {
        let path = format!("/v1/agents/{agent_id}/models");
        let timeout = Duration::from_millis(report.wait_ms) + CLAIM_SLACK;
        self.post(path.clone(), report, timeout, Scope::Agent(agent_id))
            .await?
            .ok_or_else(|| no_content(&path))
    }

    /// `POST /v1/jobs/{id}/complete`; a 409 is [`ClientError::StaleLease`].
    pub async fn complete(
        &self,
        job_id: i64,
        req: &CompleteRequest,
    ) -> Result<Completed, ClientError> {
        let path = format!("/v1/jobs/{job_id}/complete");
        match self
            .post(path.clone(), req, REQUEST_TIMEOUT, Scope::Other)
            .await
        {
            Ok(Some(done)) => Ok(done),
            Ok(None) => Err(no_content(&path)),
            Err(ClientError::Rejected {
                status: 409,
                message,
                ..
            }) => Err(ClientError::StaleLease(message)),
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/jobs/{id}/questions`: a running step's question, asked
    /// now; a 409 is [`ClientError::StaleLease`] (the step's lease ended).
    pub async fn ask_waiting(&self, job_id: i64, req: &WaitAsk) -> Result<WaitStatus, ClientError> {
        let path = format!("/v1/jobs/{job_id}/questions");
        self.post_lease(path, req, REQUEST_TIMEOUT).await
    }

    /// `POST /v1/jobs/{id}/questions/{qid}/wait`: the question's state once
    /// it is answered or closed, or after `poll.wait_ms`.
    pub async fn wait_question(
        &self,
        job_id: i64,
        poll: &WaitPoll,
    ) -> Result<WaitStatus, ClientError> {
        let path = format!("/v1/jobs/{job_id}/questions/{}/wait", poll.question_id);
        let timeout = Duration::from_millis(poll.wait_ms) + CLAIM_SLACK;
        self.post_lease(path, poll, timeout).await
    }

    /// `POST /v1/jobs/{id}/questions/{qid}/withdraw`: the step stopped waiting.
    pub async fn withdraw_question(
        &self,
        job_id: i64,
        poll: &WaitPoll,
    ) -> Result<WaitStatus, ClientError> {
        let path = format!("/v1/jobs/{job_id}/questions/{}/withdraw", poll.question_id);
        self.post_lease(path, poll, REQUEST_TIMEOUT).await
    }

    /// A request under a job's lease: a 409 says the lease is no longer live.
    async fn post_lease<B: Serialize, T: DeserializeOwned>(
        &self,
        path: String,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        match self.post(path.clone(), body, timeout, Scope::Other).await {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(no_content(&path)),
            Err(ClientError::Rejected {
                status: 409,
                message,
                ..
            }) => Err(ClientError::StaleLease(message)),
            Err(e) => Err(e),
        }
    }

    /// Posts `body` as JSON; 204 is `None`, another 2xx is the decoded answer.
    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: String,
        body: &B,
        timeout: Duration,
        scope: Scope<'_>,
    ) -> Result<Option<T>, ClientError> {
        let url = format!("{}{path}", self.base);
        let network = |e: reqwest::Error| ClientError::Network {
            url: url.clone(),
            message: error_chain(&e),
        };
        let resp = self
            .http
            .post(&url)
            .header(reqwest::header::AUTHORIZATION, &self.auth)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(network)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(network)?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ClientError::Protocol {
                    path,
                    message: format!("{status} with a body that does not parse: {e}"),
                });
        }
        let message = error_message(status, &bytes);
        Err(match status.as_u16() {
            401 => ClientError::Unauthorized(message),
            403 => ClientError::Forbidden(message),
            404 => match scope {
                Scope::Agent(agent_id) => ClientError::UnknownAgent {
                    agent_id: agent_id.to_owned(),
                    message,
                },
                Scope::Other => ClientError::NotFound { path, message },
            },
            s @ 400..=499 => ClientError::Rejected {
                path,
                status: s,
                message,
            },
            s if status.is_server_error() => ClientError::Server {
                path,
                status: s,
                message,
            },
            s => ClientError::Protocol {
                path,
                message: format!("unexpected status {s}: {message}"),
            },
        })
    }
}

fn no_content(path: &str) -> ClientError {
    ClientError::Protocol {
        path: path.to_owned(),
        message: "204 No Content where an answer was expected".into(),
    }
}

/// The `error` of an [`ApiError`] body (with its details), or the body's
/// start, or the status's reason.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    if let Ok(api) = serde_json::from_slice::<ApiError>(body) {
        return match api.details {
            Some(details) => format!("{} ({details})", api.error),
            None => api.error,
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return status.canonical_reason().unwrap_or("no message").to_owned();
    }
    let mut quoted: String = text.chars().take(BODY_QUOTE_MAX).collect();
    if quoted.len() < text.len() {
        quoted.push('…');
    }
    quoted
}

/// An error with its causes, `a: b: c` (reqwest's own message is terse).
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_are_read_from_the_body() {
        let body = br#"{"error":"bad token"}"#;
        assert_eq!(error_message(StatusCode::UNAUTHORIZED, body), "bad token");
        assert_eq!(error_message(StatusCode::BAD_GATEWAY, b""), "Bad Gateway");
        assert_eq!(error_message(StatusCode::BAD_GATEWAY, b" oops \n"), "oops");
    }

    #[test]
    fn addresses_are_checked() {
        assert!(Client::new("http://127.0.0.1:1/", "t").is_ok());
        assert!(matches!(
            Client::new("https://x", "t"),
            Err(ClientError::Config { .. })
        ));
        assert!(matches!(
            Client::new("localhost:7777", "t"),
            Err(ClientError::Config { .. })
        ));
    }

    #[test]
    fn retryable_and_fatal_errors_are_told_apart() {
        let server = ClientError::Server {
            path: "/".into(),
            status: 503,
            message: String::new(),
        };
        assert!(server.is_retryable() && !server.is_auth());
        assert!(ClientError::Unauthorized("x".into()).is_auth());
        assert!(!ClientError::StaleLease("x".into()).is_retryable());
    }
}
