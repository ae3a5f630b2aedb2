//! The agent's local endpoint: how a running step talks back to its agent.
//!
//! Every step gets the endpoint twice, `ORCH_AGENT_SOCKET` (a Unix socket)
//! and `ORCH_AGENT_URL` (loopback TCP), and a token of its own in
//! `ORCH_STEP_TOKEN`; `orch ask "QUESTION" --choice A --choice B` posts to
//! `/v1/ask` with it, through the socket when it has one. The socket is what
//! sandboxed steps use: a step without network has a loopback of its own,
//! where the agent's TCP port does not exist, while the socket's directory is
//! bound read-only into every sandbox (connecting needs no write access to
//! the mount). The agent keeps the questions with the
//! step and hands them to the daemon when the step completes, in the same
//! transaction as its checkpoint: the step's process may exit right after
//! asking, and the stage then waits for the answer holding no slot.
//! `orch ask --wait` asks differently: the agent forwards the question to
//! the daemon at once, under the step's lease, and the step waits for the
//! answer while it runs (see [`wait`]). The
//! endpoint listens on loopback and on a socket in a directory only the
//! agent's user may enter, and a token is good only while its step runs.
//! The socket also relays the daemon's model gateway, for the same steps
//! without network (see `crate::gateway`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use orchestrator_client::Client;
use orchestrator_core::api::{Ask, StepAskRequest, StepAsked, WaitRecord};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::gateway::{self, Upstream};

mod wait;

pub use wait::WaitVia;

/// Longest question or choice accepted, in bytes.
const MAX_TEXT: usize = 16 * 1024;
/// Most questions one step may ask, of both kinds together.
const MAX_QUESTIONS: usize = 16;

type Asked = Arc<Mutex<HashMap<String, Entry>>>;

/// What one running step asked so far.
#[derive(Debug, Default)]
struct Entry {
    /// Questions handed over when the step ends.
    asks: Vec<Ask>,
    /// Questions forwarded at once, that the step waits (or waited) for.
    waits: Vec<wait::Waited>,
    /// How to forward them: the step's job and lease, and the daemon.
    via: Option<Arc<WaitVia>>,
}

impl Entry {
    fn count(&self) -> usize {
        self.asks.len() + self.waits.len()
    }
}

fn lock(asked: &Asked) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
    asked.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The running endpoint and the questions of the steps running now.
#[derive(Debug, Clone)]
pub struct AskBox {
    url: String,
    /// The Unix socket, when one could be made.
    socket: Option<PathBuf>,
    /// Whether the socket relays the daemon's model gateway.
    gateway: bool,
    asked: Asked,
    /// The daemon, for the questions steps wait for (`orch ask --wait`).
    daemon: Option<Client>,
}

/// One running step's right to ask; its questions are taken when it ends.
pub struct StepAsk {
    pub token: String,
    asked: Asked,
}

/// What a finished step asked.
#[derive(Debug, Default)]
pub struct Finished {
    /// Questions for the daemon, answered when the step runs again.
    pub questions: Vec<Ask>,
    /// Questions the step waited for while it ran, for its manifest.
    pub waits: Vec<WaitRecord>,
}

impl StepAsk {
    /// Takes the step's questions and voids its token: a wait still going
    /// on is answered no more (its question closes when the job ends).
    pub fn finish(self) -> Finished {
        let entry = lock(&self.asked).remove(&self.token).unwrap_or_default();
        Finished {
            questions: entry.asks,
            waits: entry.waits.into_iter().map(wait::Waited::record).collect(),
        }
    }
}

impl AskBox {
    /// Starts the endpoint on a free loopback port and, on Unix, on a socket
    /// in a new directory under `socket_parent`; it stops with `shutdown`.
    /// Without the socket (its directory cannot be made) the endpoint still
    /// serves steps that share the agent's network, and the agent says why.
    ///
    /// With `daemon_url`, the socket also relays the daemon's model gateway
    /// (see `crate::gateway`), for steps whose sandbox has no network. The
    /// TCP endpoint does not: a step that can reach it can reach the daemon.
    pub async fn start(
        shutdown: CancellationToken,
        socket_parent: &Path,
        daemon_url: Option<&str>,
    ) -> std::io::Result<AskBox> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let asked: Asked = Arc::default();
        let app = Router::new()
            .route("/v1/ask", post(ask))
            .route("/v1/ask/wait", post(wait::wait))
            .route("/v1/ask/withdraw", post(wait::withdraw))
            .with_state(asked.clone());
        let upstream = daemon_url
            .map(Upstream::new)
            .transpose()
            .map_err(std::io::Error::other)?;
        let gateway = upstream.is_some();
        let socket = match bind_socket(socket_parent) {
            Ok((path, unix)) => {
                let app = match upstream {
                    Some(up) => app.clone().merge(gateway::routes(up)),
                    None => app.clone(),
                };
                let shutdown = shutdown.clone();
                let dir = path.parent().map(Path::to_owned);
                tokio::spawn(async move {
                    let served = axum::serve(unix, app)
                        .with_graceful_shutdown(shutdown.cancelled_owned())
                        .await;
                    if let Err(e) = served {
                        tracing::warn!(error = %e, "the step socket stopped");
                    }
                    if let Some(dir) = dir {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                });
                Some(path)
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %socket_parent.display(), "no step socket: `orch ask` works only in steps that share the agent's network");
                None
            }
        };
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the step endpoint stopped");
            }
        });
        Ok(AskBox {
            url,
            gateway: gateway && socket.is_some(),
            socket,
            asked,
            daemon: None,
        })
    }

    /// Lets steps ask and wait (`orch ask --wait`) through `client`.
    pub fn with_daemon(mut self, client: Client) -> Self {
        self.daemon = Some(client);
        self
    }

    /// The daemon steps' waited-for questions go to, when there is one.
    pub fn daemon(&self) -> Option<&Client> {
        self.daemon.as_ref()
    }

    /// The address steps reach the endpoint at over TCP.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The endpoint's Unix socket, when there is one.
    pub fn socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// Whether the socket relays the daemon's model gateway, so that a
    /// sandbox without network can reach it.
    pub fn relays_gateway(&self) -> bool {
        self.gateway
    }

    /// Opens a step's right to ask, under a new random token; with `via`,
    /// also to ask and wait (`orch ask --wait`) through the step's lease.
    pub fn open(&self, via: Option<WaitVia>) -> StepAsk {
        let mut bytes = [0u8; 16];
        // A token that cannot be drawn leaves the step unable to ask, not
        // able to ask for another: an empty token matches no request.
        let token = match getrandom::fill(&mut bytes) {
            Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            Err(_) => String::new(),
        };
        if !token.is_empty() {
            let entry = Entry {
                via: via.map(Arc::new),
                ..Entry::default()
            };
            lock(&self.asked).insert(token.clone(), entry);
        }
        StepAsk {
            token,
            asked: self.asked.clone(),
        }
    }
}

/// A fresh directory of the agent's alone (mode 700) under `parent`, and a
/// socket bound in it. A new directory each time: an agent restarted with
/// the same parent never meets a stale socket or a directory another user
/// prepared.
#[cfg(unix)]
fn bind_socket(parent: &Path) -> std::io::Result<(PathBuf, tokio::net::UnixListener)> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(parent) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    // A parent that another user made (in a shared /tmp) could be used to
    // swap the socket under the steps' feet.
    let meta = std::fs::symlink_metadata(parent)?;
    if !meta.is_dir() || meta.uid() != nix::unistd::getuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} must be a directory of this user's with mode 700",
            parent.display()
        )));
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let dir = parent.join(format!("agent-{}-{name}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let path = dir.join("ask.sock");
    let listener = tokio::net::UnixListener::bind(&path)?;
    Ok((path, listener))
}

#[cfg(not(unix))]
fn bind_socket(_: &Path) -> std::io::Result<(PathBuf, tokio::net::TcpListener)> {
    Err(std::io::Error::other("Unix sockets need Unix"))
}

fn refuse(code: StatusCode, msg: String) -> (StatusCode, Json<serde_json::Value>) {
    (code, Json(json!({ "error": msg })))
}

/// The step's token, from `Authorization: Bearer TOKEN`.
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
}

fn unknown_token() -> (StatusCode, Json<serde_json::Value>) {
    refuse(
        StatusCode::UNAUTHORIZED,
        "unknown step token: `orch ask` works only inside a running step, with the token its agent gave it".into(),
    )
}

async fn ask(
    State(asked): State<Asked>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<serde_json::Value>) {
    let token = bearer(&headers).to_owned();
    let req: StepAskRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"question\": TEXT, \"choices\": [..], \"wait\": BOOL}}: {e}"),
            )
        }
    };
    if req.question.trim().is_empty() || req.question.len() > MAX_TEXT {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "question: expected 1 to {MAX_TEXT} bytes of text, got {}",
                if req.question.trim().is_empty() {
                    "none".to_owned()
                } else {
                    format!("{} bytes", req.question.len())
                }
            ),
        );
    }
    if let Some(bad) = req
        .choices
        .iter()
        .find(|c| c.trim().is_empty() || c.len() > MAX_TEXT)
    {
        let shown: String = bad.chars().take(40).collect();
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("choice {shown:?}: expected 1 to {MAX_TEXT} bytes of text"),
        );
    }
    if req.wait {
        return wait::ask(asked, token, req).await;
    }
    let mut map = lock(&asked);
    let Some(entry) = map.get_mut(&token).filter(|_| !token.is_empty()) else {
        return unknown_token();
    };
    if entry.count() >= MAX_QUESTIONS {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("a step may ask at most {MAX_QUESTIONS} questions"),
        );
    }
    entry.asks.push(Ask {
        question: req.question,
        choices: req.choices,
    });
    let asked = StepAsked {
        asked: entry.count(),
        note: "recorded; when this step exits, its stage checkpoints and waits for the answer, which this step receives when it runs again".into(),
    };
    (StatusCode::OK, Json(json!(asked)))
}
