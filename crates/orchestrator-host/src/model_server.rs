//! Starting one llama.cpp server: the launcher script
//! (`scripts/llama-server.py`) on a free port, ready when it prints
//! `ready URL`. The daemon's model fabric decides when and where servers
//! run: on its own machine it uses this directly, on an agent's machine it
//! orders the agent to (`orchestrator_agent::models`), which uses this
//! too. Stopping a server is [`crate::process::terminate`].

use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use orchestrator_core::fabric::{ModelSpec, Runtime};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Longest a server may take to print `ready`.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// Why a model's server did not start; each names the model or the
/// program.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("model {model:?} is not a llama_cpp model")]
    NotLlamaCpp { model: String },
    #[error("no free port: {0}")]
    NoPort(#[source] io::Error),
    #[error("cannot start {} {}: {source}", .python.display(), .script.display())]
    Spawn {
        python: PathBuf,
        script: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the server's output was not piped")]
    NotPiped,
    #[error("the llama.cpp server for model {model:?} exited before it was ready")]
    Exited { model: String },
    #[error("the llama.cpp server for model {model:?} was not ready within {}s", .within.as_secs())]
    NotReady { model: String, within: Duration },
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

/// How the fabric starts a llama.cpp server: the launcher script and the
/// Python that has `xllamacpp` (`ORCH_LLAMA_PYTHON`, else `python3`).
#[derive(Debug, Clone)]
pub struct Launcher {
    pub script: PathBuf,
    pub python: PathBuf,
}

impl Launcher {
    pub fn new(script: PathBuf) -> Self {
        let python = std::env::var_os("ORCH_LLAMA_PYTHON")
            .filter(|p| !p.is_empty())
            .map_or_else(|| PathBuf::from("python3"), PathBuf::from);
        Launcher { script, python }
    }

    /// Starts `m`'s server listening on `host` (on GPU `gpu` when given) and
    /// waits until it is ready: its OpenAI base URL and its process, killed
    /// when dropped.
    pub async fn spawn(
        &self,
        m: &ModelSpec,
        host: &str,
        gpu: Option<u32>,
    ) -> Result<(String, Child), LaunchError> {
        let Runtime::LlamaCpp {
            model,
            ctx,
            threads,
            extra_args,
        } = &m.runtime
        else {
            return Err(LaunchError::NotLlamaCpp {
                model: m.name.clone(),
            });
        };
        let port = std::net::TcpListener::bind((host, 0))
            .and_then(|l| l.local_addr())
            .map_err(LaunchError::NoPort)?
            .port();
        let mut cmd = Command::new(&self.python);
        if let Some(g) = gpu {
            cmd.env("CUDA_VISIBLE_DEVICES", g.to_string());
        }
        let mut child = cmd
            .arg(&self.script)
            .arg("--model")
            .arg(model)
            .args([
                "--host",
                host,
                "--port",
                &port.to_string(),
                "--alias",
                &m.name,
            ])
            .args(["--ctx", &ctx.to_string()])
            .args(["--parallel", &m.concurrency.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                python: self.python.clone(),
                script: self.script.clone(),
                source,
            })?;
        let Some(stdout) = child.stdout.take() else {
            return Err(LaunchError::NotPiped);
        };
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
                return Err(LaunchError::Exited {
                    model: m.name.clone(),
                })
            }
            Err(_) => {
                return Err(LaunchError::NotReady {
                    model: m.name.clone(),
                    within: READY_WITHIN,
                })
            }
        };
        // Keep reading, so that the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        tracing::info!(model = %m.name, %url, "llama.cpp server ready");
        Ok((format!("{url}/v1"), child))
    }
}
