//! The llama.cpp servers the gateway starts: one per `llama_cpp` model, on
//! first use, through the launcher script (`scripts/llama-server.py`), on a
//! free loopback port. Each is kept running and killed when the daemon's
//! state is dropped at shutdown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use orchestrator_core::fabric::{ModelSpec, Runtime};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, OnceCell};

/// Longest a server may take to print `ready`.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// One running server.
struct Instance {
    /// Its OpenAI base URL, `http://127.0.0.1:PORT/v1`.
    url: String,
    _child: Child,
}

type Slot = Arc<OnceCell<Instance>>;

/// The servers started so far, by model name.
pub struct LlamaServers {
    launcher: PathBuf,
    python: PathBuf,
    started: Mutex<HashMap<String, Slot>>,
}

/// The launcher next to this binary's checkout (`<repo>/scripts/llama-server.py`
/// above the binary's directory), else the relative path.
pub fn default_launcher() -> PathBuf {
    let rel = PathBuf::from("scripts/llama-server.py");
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().map(|d| d.join(&rel)).find(|p| p.is_file()))
        .unwrap_or(rel)
}

impl LlamaServers {
    pub fn new(launcher: PathBuf) -> Self {
        let python = std::env::var_os("ORCH_LLAMA_PYTHON")
            .filter(|p| !p.is_empty())
            .map_or_else(|| PathBuf::from("python3"), PathBuf::from);
        LlamaServers {
            launcher,
            python,
            started: Mutex::default(),
        }
    }

    /// The base URL of `model`'s server, starting it if it is not running.
    pub async fn url(&self, model: &ModelSpec) -> Result<String, String> {
        let slot = self
            .started
            .lock()
            .await
            .entry(model.name.clone())
            .or_default()
            .clone();
        let inst = slot.get_or_try_init(|| self.start(model)).await?;
        Ok(inst.url.clone())
    }

    async fn start(&self, m: &ModelSpec) -> Result<Instance, String> {
        let Runtime::LlamaCpp {
            model,
            ctx,
            threads,
            extra_args,
        } = &m.runtime
        else {
            return Err(format!("model {:?} is not a llama_cpp model", m.name));
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut child = Command::new(&self.python)
            .arg(&self.launcher)
            .arg("--model")
            .arg(model)
            .args(["--port", &port.to_string(), "--alias", &m.name])
            .args(["--ctx", &ctx.to_string()])
            .args(["--parallel", &m.concurrency.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {} {}: {e}",
                    self.python.display(),
                    self.launcher.display()
                )
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_WITHIN, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.trim().strip_prefix("ready ") {
                    return Some(url.trim_end_matches('/').to_owned());
                }
            }
            None
        })
        .await;
        let url = match ready {
            Ok(Some(url)) => url,
            Ok(None) => {
                return Err(format!(
                    "the llama.cpp server for model {:?} exited before it was ready",
                    m.name
                ))
            }
            Err(_) => {
                return Err(format!(
                    "the llama.cpp server for model {:?} was not ready within {}s",
                    m.name,
                    READY_WITHIN.as_secs()
                ))
            }
        };
        // Keep reading, so that the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        tracing::info!(model = %m.name, %url, "llama.cpp server ready");
        Ok(Instance {
            url: format!("{url}/v1"),
            _child: child,
        })
    }
}
