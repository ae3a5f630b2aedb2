//! The agent's local endpoint: how a running step talks back to its agent.
//!
//! Every step gets `ORCH_AGENT_URL` and a token of its own in
//! `ORCH_STEP_TOKEN`; `orch ask "QUESTION" --choice A --choice B` posts to
//! `{ORCH_AGENT_URL}/v1/ask` with it. The agent keeps the questions with the
//! step and hands them to the daemon when the step completes, in the same
//! transaction as its checkpoint: the step's process may exit right after
//! asking, and the stage then waits for the answer holding no slot. The
//! endpoint listens on loopback only, and a token is good only while its
//! step runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use orchestrator_core::api::Ask;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Longest question or choice accepted, in bytes.
const MAX_TEXT: usize = 16 * 1024;
/// Most questions one step may ask.
const MAX_QUESTIONS: usize = 16;

type Asked = Arc<Mutex<HashMap<String, Vec<Ask>>>>;

/// The running endpoint and the questions of the steps running now.
#[derive(Debug, Clone)]
pub struct AskBox {
    url: String,
    asked: Asked,
}

/// One running step's right to ask; its questions are taken when it ends.
pub struct StepAsk {
    pub token: String,
    asked: Asked,
}

impl StepAsk {
    /// Takes the step's questions and voids its token.
    pub fn finish(self) -> Vec<Ask> {
        let mut map = self.asked.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(&self.token).unwrap_or_default()
    }
}

impl AskBox {
    /// Starts the endpoint on a free loopback port; it stops with `shutdown`.
    pub async fn start(shutdown: CancellationToken) -> std::io::Result<AskBox> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let asked: Asked = Arc::default();
        let app = Router::new()
            .route("/v1/ask", post(ask))
            .with_state(asked.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the step endpoint stopped");
            }
        });
        Ok(AskBox { url, asked })
    }

    /// The address steps reach the endpoint at.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a step's right to ask, under a new random token.
    pub fn open(&self) -> StepAsk {
        let mut bytes = [0u8; 16];
        // A token that cannot be drawn leaves the step unable to ask, not
        // able to ask for another: an empty token matches no request.
        let token = match getrandom::fill(&mut bytes) {
            Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            Err(_) => String::new(),
        };
        if !token.is_empty() {
            self.asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(token.clone(), Vec::new());
        }
        StepAsk {
            token,
            asked: self.asked.clone(),
        }
    }
}

fn refuse(code: StatusCode, msg: String) -> (StatusCode, Json<serde_json::Value>) {
    (code, Json(json!({ "error": msg })))
}

async fn ask(
    State(asked): State<Asked>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<serde_json::Value>) {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let req: Ask = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"question\": TEXT, \"choices\": [..]}}: {e}"),
            )
        }
    };
    if req.question.trim().is_empty() || req.question.len() > MAX_TEXT {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("question: expected 1 to {MAX_TEXT} bytes of text"),
        );
    }
    if let Some(bad) = req
        .choices
        .iter()
        .find(|c| c.trim().is_empty() || c.len() > MAX_TEXT)
    {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("choice {bad:?}: expected 1 to {MAX_TEXT} bytes of text"),
        );
    }
    let mut map = asked.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(list) = map.get_mut(token).filter(|_| !token.is_empty()) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unknown step token: `orch ask` works only inside a running step".into(),
        );
    };
    if list.len() >= MAX_QUESTIONS {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("a step may ask at most {MAX_QUESTIONS} questions"),
        );
    }
    list.push(req);
    (
        StatusCode::OK,
        Json(json!({
            "asked": list.len(),
            "note": "recorded; when this step exits, its stage checkpoints and waits for the answer, which this step receives when it runs again"
        })),
    )
}
