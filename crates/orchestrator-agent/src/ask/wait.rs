//! `orch ask --wait` on the agent's side: the question goes to the daemon
//! at once, under the step's job and lease, and the step long-polls for the
//! answer through this endpoint, which long-polls the daemon in turn.
//!
//! The daemon may go away while a step waits (restarted, upgraded): the
//! question is in its store, so the agent keeps the step running, asks
//! again (the same key finds the same question) or polls again until it is
//! back, and the answer still reaches the step. A step's token names its
//! own questions only: it cannot read or withdraw another step's, and it
//! is void once the step ends.

use orchestrator_core::{AgentId, JobId};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use orchestrator_client::{Client, ClientError};
use orchestrator_core::api::{
    QuestionState, StepAskRequest, WaitAsk, WaitPoll, WaitRecord, WaitStatus,
};
use tokio::time::Instant;

use super::{bearer, lock, refuse, unknown_token, Asked, MAX_QUESTIONS};

/// The longest one poll of the daemon waits for an answer.
const MAX_POLL_MS: u64 = 25_000;
/// How long the agent waits before asking an unreachable daemon again,
/// at first and at most.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Tries at withdrawing before the step is told the daemon is out of reach.
const WITHDRAW_TRIES: u32 = 8;

/// How a running step's questions reach the daemon: its job, its lease,
/// and the agent's client.
#[derive(Clone)]
pub struct WaitVia {
    pub client: Client,
    pub agent_id: AgentId,
    pub job_id: JobId,
    pub lease_token: String,
}

impl std::fmt::Debug for WaitVia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The lease token stays out of logs.
        f.debug_struct("WaitVia")
            .field("agent_id", &self.agent_id)
            .field("job_id", &self.job_id)
            .finish_non_exhaustive()
    }
}

impl WaitVia {
    fn poll(&self, question_id: i64, wait_ms: u64) -> WaitPoll {
        WaitPoll {
            agent_id: self.agent_id.clone(),
            lease_token: self.lease_token.clone(),
            question_id,
            wait_ms,
        }
    }
}

/// A question the step waits (or waited) for, as last heard of.
#[derive(Debug)]
pub(super) struct Waited {
    question: String,
    since: Instant,
    /// When the step heard how it ended.
    ended: Option<Instant>,
    status: WaitStatus,
}

impl Waited {
    /// The manifest's record: a wait still open ended with the step.
    pub(super) fn record(self) -> WaitRecord {
        let waited = self.ended.unwrap_or_else(Instant::now) - self.since;
        WaitRecord {
            question_id: self.status.question_id,
            question: self.question,
            state: self.status.state,
            waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            answered_by: self.status.answered_by,
        }
    }
}

fn reply(status: &WaitStatus) -> (StatusCode, Json<serde_json::Value>) {
    match serde_json::to_value(status) {
        Ok(v) => (StatusCode::OK, Json(v)),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The daemon's refusal, told to the step in its own words.
fn refused_by_daemon(e: ClientError) -> (StatusCode, Json<serde_json::Value>) {
    match e {
        ClientError::StaleLease(r) => refuse(
            StatusCode::CONFLICT,
            format!(
                "refused: this step's lease is no longer live ({})",
                r.message()
            ),
        ),
        ClientError::Rejected(r) if r.status.is_client_error() => refuse(r.status, r.message()),
        ClientError::NotFound(r) => refuse(StatusCode::NOT_FOUND, r.message()),
        e => refuse(
            StatusCode::BAD_GATEWAY,
            format!("the agent could not reach its daemon: {e}"),
        ),
    }
}

fn running(asked: &Asked, token: &str) -> bool {
    lock(asked).contains_key(token)
}

/// `POST /v1/ask` with `wait`: forwards the question now; answers with it
/// (open), once the daemon has it.
pub(super) async fn ask(
    asked: Asked,
    token: String,
    req: StepAskRequest,
) -> (StatusCode, Json<serde_json::Value>) {
    let via = {
        let map = lock(&asked);
        let Some(entry) = map.get(&token).filter(|_| !token.is_empty()) else {
            return unknown_token();
        };
        let Some(via) = entry.via.clone() else {
            return refuse(
                StatusCode::CONFLICT,
                "this step's agent has no daemon to ask now; `orch ask` without --wait hands the question over when the step ends".into(),
            );
        };
        if entry.count() >= MAX_QUESTIONS {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("a step may ask at most {MAX_QUESTIONS} questions"),
            );
        }
        via
    };
    let mut bytes = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut bytes) {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("no key for the ask: {e}"),
        );
    }
    let wait_ask = WaitAsk {
        agent_id: via.agent_id.clone(),
        lease_token: via.lease_token.clone(),
        key: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        question: req.question.clone(),
        choices: req.choices,
    };
    let since = Instant::now();
    let mut delay = RETRY_FIRST;
    // Asked again with the same key until the daemon has it: a daemon that
    // restarts meanwhile finds the question the first try left, if it did.
    let status = loop {
        match via.client.ask_waiting(via.job_id, &wait_ask).await {
            Ok(s) => break s,
            Err(e) if e.is_retryable() && running(&asked, &token) => {
                tracing::warn!(job_id = %via.job_id, error = %e, "the daemon did not take a step's question yet; asking again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
            Err(e) => return refused_by_daemon(e),
        }
    };
    let mut map = lock(&asked);
    let Some(entry) = map.get_mut(&token) else {
        return unknown_token();
    };
    entry.waits.push(Waited {
        question: req.question,
        since,
        ended: None,
        status: status.clone(),
    });
    reply(&status)
}

/// The step's own question `question_id`, with how to reach the daemon.
#[allow(clippy::result_large_err)]
fn own(
    asked: &Asked,
    token: &str,
    question_id: i64,
) -> Result<(Arc<WaitVia>, WaitStatus), (StatusCode, Json<serde_json::Value>)> {
    let map = lock(asked);
    let Some(entry) = map.get(token).filter(|_| !token.is_empty()) else {
        return Err(unknown_token());
    };
    match (
        &entry.via,
        entry
            .waits
            .iter()
            .find(|w| w.status.question_id == question_id),
    ) {
        (Some(via), Some(w)) => Ok((via.clone(), w.status.clone())),
        _ => Err(refuse(
            StatusCode::NOT_FOUND,
            format!("this step asked no question {question_id} to wait for"),
        )),
    }
}

/// Keeps what the daemon said of a question; a final state is final.
fn heard(asked: &Asked, token: &str, status: &WaitStatus) {
    let mut map = lock(asked);
    let Some(entry) = map.get_mut(token) else {
        return;
    };
    if let Some(w) = entry
        .waits
        .iter_mut()
        .find(|w| w.status.question_id == status.question_id)
    {
        if w.status.state == QuestionState::Open {
            w.status = status.clone();
            if status.state != QuestionState::Open {
                w.ended = Some(Instant::now());
            }
        }
    }
}

/// The poll in `body`, for the step's own question, while it is open; the
/// reply to give at once otherwise (bad input, not its question, or its
/// state when it is answered or closed already).
#[allow(clippy::result_large_err)]
fn still_open(
    asked: &Asked,
    token: &str,
    body: &[u8],
) -> Result<(WaitPoll, Arc<WaitVia>, WaitStatus), Early> {
    let req = poll_of(body)?;
    let (via, known) = own(asked, token, req.question_id)?;
    if known.state != QuestionState::Open {
        return Err(reply(&known));
    }
    Ok((req, via, known))
}

/// A reply given in place of going on.
type Early = (StatusCode, Json<serde_json::Value>);

fn poll_of(body: &[u8]) -> Result<WaitPoll, Early> {
    serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"question_id\": N, \"wait_ms\": N}}: {e}"),
        )
    })
}

/// `POST /v1/ask/wait`: where the step's question stands, once it is
/// answered or closed, or after `wait_ms`. While the daemon is out of
/// reach the question is still open, as far as the step can tell.
pub(super) async fn wait(
    State(asked): State<Asked>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<serde_json::Value>) {
    let token = bearer(&headers).to_owned();
    let (req, via, known) = match still_open(&asked, &token, &body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let wait_ms = req.wait_ms.min(MAX_POLL_MS);
    match via
        .client
        .wait_question(via.job_id, &via.poll(req.question_id, wait_ms))
        .await
    {
        Ok(status) => {
            heard(&asked, &token, &status);
            reply(&status)
        }
        Err(e) if e.is_retryable() => {
            tracing::warn!(job_id = %via.job_id, error = %e, "cannot reach the daemon for a step's answer; the step polls again");
            tokio::time::sleep(Duration::from_millis(wait_ms).min(RETRY_MAX)).await;
            reply(&known)
        }
        Err(e) => refused_by_daemon(e),
    }
}

/// `POST /v1/ask/withdraw`: the step stops waiting (its `--timeout`
/// passed). The question closes, unless it was answered first: then the
/// answer comes back, and the step may still use it.
pub(super) async fn withdraw(
    State(asked): State<Asked>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<serde_json::Value>) {
    let token = bearer(&headers).to_owned();
    let (req, via, _) = match still_open(&asked, &token, &body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut delay = RETRY_FIRST;
    for _ in 0..WITHDRAW_TRIES {
        match via
            .client
            .withdraw_question(via.job_id, &via.poll(req.question_id, 0))
            .await
        {
            Ok(status) => {
                heard(&asked, &token, &status);
                return reply(&status);
            }
            Err(e) if e.is_retryable() => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
            Err(e) => return refused_by_daemon(e),
        }
    }
    refuse(
        StatusCode::BAD_GATEWAY,
        format!(
            "the agent could not reach its daemon to withdraw question {}; it stays open until answered or until this step ends",
            req.question_id
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_still_open_is_recorded_as_open_with_its_time_so_far() {
        let w = Waited {
            question: "Q?".into(),
            since: Instant::now(),
            ended: None,
            status: WaitStatus {
                question_id: 7,
                state: QuestionState::Open,
                asked_at_ms: 0,
                answer: None,
                answered_by: None,
                answered_at_ms: None,
            },
        };
        let r = w.record();
        assert_eq!((r.question_id, r.state), (7, QuestionState::Open));
        assert_eq!(r.question, "Q?");
    }

    #[test]
    fn refusals_keep_the_daemons_words_and_status() {
        let refusal = |status: StatusCode, body: &str| {
            Box::new(orchestrator_client::Refusal {
                path: "/".into(),
                status,
                error: None,
                body: body.into(),
            })
        };
        let (code, Json(body)) = refused_by_daemon(ClientError::StaleLease(refusal(
            StatusCode::CONFLICT,
            "gone",
        )));
        assert_eq!(code, StatusCode::CONFLICT);
        assert!(body["error"].as_str().unwrap().contains("gone"));
        let (code, Json(body)) = refused_by_daemon(ClientError::Rejected(refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too long",
        )));
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"], "too long");
    }
}
