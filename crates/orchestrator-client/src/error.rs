//! What can go wrong on one request, by what the answer means.

use std::error::Error as _;

use orchestrator_core::api::ApiError;
use orchestrator_core::AgentId;
use reqwest::StatusCode;

/// Longest part of an unexpected answer body quoted in a message.
const BODY_QUOTE_MAX: usize = 300;

/// An answer that was not a success: its status and body as they came.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The path the request went to (query included).
    pub path: String,
    pub status: StatusCode,
    /// The body, when it is the daemon's error shape (`{"error", "details"}`).
    pub error: Option<ApiError>,
    /// The body as it came (lossy UTF-8).
    pub body: String,
}

impl Refusal {
    /// The daemon's `error` with its details, else the body's start, else
    /// the status's reason.
    pub fn message(&self) -> String {
        if let Some(api) = &self.error {
            return match &api.details {
                Some(details) => format!("{} ({details})", api.error),
                None => api.error.clone(),
            };
        }
        let text = self.body.trim();
        if text.is_empty() {
            return self
                .status
                .canonical_reason()
                .unwrap_or("no message")
                .to_owned();
        }
        let mut quoted: String = text.chars().take(BODY_QUOTE_MAX).collect();
        if quoted.len() < text.len() {
            quoted.push('…');
        }
        quoted
    }

    /// The daemon's `error` alone, else the whole body: the words a person
    /// reads for a refusal.
    pub fn error_text(&self) -> &str {
        match &self.error {
            Some(api) => &api.error,
            None => &self.body,
        }
    }
}

/// What can go wrong talking to the daemon (or to an agent's endpoint).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL cannot be used.
    #[error("invalid daemon address {server:?}: {message}")]
    Address { server: String, message: String },
    /// No answer: no connection, a broken one, a timeout. Worth retrying.
    #[error("could not reach the daemon at {base}{path}: {}", chain(source))]
    Unreachable {
        /// The base URL, `http://host:port`.
        base: String,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    /// 401: the token is missing, wrong or revoked.
    #[error("the daemon refused the token ({}): {}", .0.status, .0.message())]
    Unauthorized(Box<Refusal>),
    /// 403: the token may not do this.
    #[error("the daemon forbade the request ({}): {}", .0.status, .0.message())]
    Forbidden(Box<Refusal>),
    /// 409 on a request made under a lease (a completion, a running step's
    /// question): the lease expired or was taken over.
    #[error("the lease is no longer held ({}): {}", .0.status, .0.message())]
    StaleLease(Box<Refusal>),
    /// 404 on an agent's own endpoint: the daemon does not know this agent
    /// id (it restarted and forgot it); register again.
    #[error("the daemon does not know agent {agent_id} ({}): {}", refusal.status, refusal.message())]
    UnknownAgent {
        agent_id: AgentId,
        refusal: Box<Refusal>,
    },
    /// 404 elsewhere (an unknown run, job or route).
    #[error("{}: not found ({}): {}", .0.path, .0.status, .0.message())]
    NotFound(Box<Refusal>),
    /// Any other 4xx (and an unexpected 1xx or 3xx): the request was refused.
    #[error("{}: the daemon refused the request ({}): {}", .0.path, .0.status, .0.message())]
    Rejected(Box<Refusal>),
    /// 5xx: the daemon failed. Worth retrying.
    #[error("{}: the daemon failed ({}): {}", .0.path, .0.status, .0.message())]
    Server(Box<Refusal>),
    /// A success this client does not understand (a different version of
    /// the daemon, or not the daemon at all).
    #[error("{path}: unexpected answer from the daemon: {message}")]
    Protocol {
        path: String,
        message: String,
        #[source]
        source: Option<serde_json::Error>,
    },
}

impl ClientError {
    /// The refused answer, when there was one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            ClientError::Unauthorized(r)
            | ClientError::Forbidden(r)
            | ClientError::StaleLease(r)
            | ClientError::NotFound(r)
            | ClientError::Rejected(r)
            | ClientError::Server(r)
            | ClientError::UnknownAgent { refusal: r, .. } => Some(r),
            _ => None,
        }
    }

    /// The answer's status, when there was an answer that was not a success.
    pub fn status(&self) -> Option<StatusCode> {
        self.refusal().map(|r| r.status)
    }

    /// Whether the same request may succeed later: no answer, 5xx, 408, 429.
    /// (Whether and when to try again is the caller's policy.)
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::Server(_) => true,
            ClientError::Rejected(r) => matches!(r.status.as_u16(), 408 | 429),
            _ => false,
        }
    }

    /// Whether the credentials themselves are refused (401, 403).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ClientError::Unauthorized(_) | ClientError::Forbidden(_)
        )
    }

    /// The error for a refused answer to `path`, by its status.
    pub(crate) fn refused(refusal: Refusal) -> ClientError {
        let refusal = Box::new(refusal);
        match refusal.status.as_u16() {
            401 => ClientError::Unauthorized(refusal),
            403 => ClientError::Forbidden(refusal),
            404 => ClientError::NotFound(refusal),
            500..=599 => ClientError::Server(refusal),
            _ => ClientError::Rejected(refusal),
        }
    }

    /// A 404 read as "this agent id is unknown".
    pub(crate) fn for_agent(self, agent_id: &AgentId) -> ClientError {
        match self {
            ClientError::NotFound(refusal) => ClientError::UnknownAgent {
                agent_id: agent_id.clone(),
                refusal,
            },
            e => e,
        }
    }

    /// A 409 read as "the lease is no longer held".
    pub(crate) fn under_lease(self) -> ClientError {
        match self {
            ClientError::Rejected(r) if r.status == StatusCode::CONFLICT => {
                ClientError::StaleLease(r)
            }
            e => e,
        }
    }
}

/// An error with its causes, `a: b: c` (reqwest's own message is terse).
pub(crate) fn chain(e: &reqwest::Error) -> String {
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

    fn refusal(status: u16, body: &str) -> Refusal {
        Refusal {
            path: "/v1/x".into(),
            status: StatusCode::from_u16(status).unwrap(),
            error: serde_json::from_str(body).ok(),
            body: body.into(),
        }
    }

    #[test]
    fn messages_are_read_from_the_body() {
        assert_eq!(
            refusal(401, r#"{"error":"bad token"}"#).message(),
            "bad token"
        );
        assert_eq!(
            refusal(422, r#"{"error":"bad","details":[1]}"#).message(),
            "bad ([1])"
        );
        assert_eq!(
            refusal(422, r#"{"error":"bad","details":[1]}"#).error_text(),
            "bad"
        );
        assert_eq!(refusal(502, "").message(), "Bad Gateway");
        assert_eq!(refusal(502, " oops \n").message(), "oops");
        assert_eq!(refusal(502, " oops \n").error_text(), " oops \n");
        let long = "x".repeat(BODY_QUOTE_MAX + 10);
        assert!(refusal(500, &long).message().ends_with('…'));
    }

    #[test]
    fn statuses_say_what_the_answer_means() {
        let e = |s| ClientError::refused(refusal(s, ""));
        assert!(matches!(e(401), ClientError::Unauthorized(_)));
        assert!(matches!(e(403), ClientError::Forbidden(_)));
        assert!(matches!(e(404), ClientError::NotFound(_)));
        assert!(matches!(e(409), ClientError::Rejected(_)));
        assert!(matches!(e(503), ClientError::Server(_)));
        assert!(matches!(e(409).under_lease(), ClientError::StaleLease(_)));
        assert!(matches!(e(422).under_lease(), ClientError::Rejected(_)));
        assert!(matches!(
            e(404).for_agent(&"a1".into()),
            ClientError::UnknownAgent { agent_id, .. } if agent_id == "a1"
        ));
        assert_eq!(e(422).status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    }

    #[test]
    fn retryable_and_fatal_errors_are_told_apart() {
        let e = |s| ClientError::refused(refusal(s, ""));
        assert!(e(503).is_retryable() && !e(503).is_auth());
        assert!(e(429).is_retryable() && e(408).is_retryable());
        assert!(!e(422).is_retryable());
        assert!(e(401).is_auth() && e(403).is_auth());
        assert!(!e(409).under_lease().is_retryable());
    }
}
