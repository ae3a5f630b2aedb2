//! `orch demo`, and the daemon and agent embedded in one process that it
//! and `orch bench` drive over HTTP.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use tokio_util::sync::CancellationToken;

use crate::agent_opts::{default_slots, AgentOpts};
use crate::client::Client;
use crate::daemon_opts::{DaemonArgs, HookArgs};
use crate::up::{run_up, UpArgs};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The workflow to run.
    #[arg(default_value = "examples/demo.yaml")]
    pub file: PathBuf,
    /// Where the demo keeps its store; default: a fresh temporary directory.
    #[arg(long)]
    pub demo_dir: Option<PathBuf>,
    #[command(flatten)]
    pub inputs: crate::params::InputArgs,
}

/// A daemon and one agent inside this process, on loopback and an embedded
/// store in `dir`: what `orch demo` and `orch bench` drive over HTTP.
pub struct Embedded {
    pub client: Client,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Embedded {
    /// `store`: as `--store` (default: orch.db in `dir`).
    pub async fn start(
        dir: &Path,
        agent: AgentOpts,
        banner: bool,
        store: Option<String>,
    ) -> Result<Embedded> {
        let args = UpArgs {
            daemon: DaemonArgs {
                config: None,
                listen: "127.0.0.1:0".parse()?,
                store,
                lease_ttl_ms: 30_000,
                heartbeat_ms: 10_000,
                dashboard_session_max_ms: orchestrator_daemon::dashboard::session::SESSION_MAX_MS,
                max_body_bytes: 64 * 1024 * 1024,
                batch_max_items: 256,
                batch_max_ms: 5,
                rules: None,
                secrets: Vec::new(),
                secrets_file: None,
                models: None,
                llama_launcher: None,
                state_dir: None,
                no_shared_agent_token: false,
                projects: Vec::new(),
                hooks: HookArgs::default(),
            },
            agent,
        };
        let stop = CancellationToken::new();
        let (ready, listening) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let (dir, stop) = (dir.to_path_buf(), stop.clone());
            async move { run_up(args, &dir, stop, banner, Some(ready)).await }
        });
        match listening.await {
            Ok(url) => {
                let token = std::fs::read_to_string(dir.join("admin.token"))?;
                Ok(Embedded {
                    client: Client::new(&url, token.trim())?,
                    stop,
                    task,
                })
            }
            // The daemon failed before listening: its error says why.
            Err(_) => Err(task
                .await?
                .err()
                .unwrap_or_else(|| anyhow!("the daemon did not start"))),
        }
    }

    /// Stops the agent, then the daemon, and closes the store.
    pub async fn stop(self) -> Result<()> {
        self.stop.cancel();
        self.task.await?
    }
}

/// `orch demo`: a daemon and agent on a fresh store, the demo workflow run to
/// its end with live progress, the result shown, and everything stopped.
pub async fn demo(a: DemoArgs) -> Result<ExitCode> {
    // A store made for the demo alone is removed after it; one the user named stays.
    let (dir, throwaway) = match a.demo_dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("orch-demo-{}", std::process::id())),
            true,
        ),
    };
    let agent = AgentOpts::with_slots(default_slots().max(2));
    // The demo's own project: a fresh repository, so its run's branch and
    // worktree land there and not in whatever directory the demo ran from.
    let project = dir.join("project");
    let workflow = std::fs::read_to_string(&a.file).map_err(|e| {
        crate::CliError::BadInput(format!("{}: cannot read: {e}", a.file.display()))
    })?;
    orchestrator_host::git::new_project(
        &project,
        &[
            (
                "README.md",
                "# demo project\n\nA project the demo workflow runs on.\n",
            ),
            ("demo.yaml", &workflow),
            ("notes.txt", "lint, test, build, package, report\n"),
        ],
    )?;
    let embedded = Embedded::start(&dir, agent, true, None).await?;
    let client = &embedded.client;
    let outcome = async {
        let submitted = crate::runcmd::submit(
            client,
            &a.file,
            Some(project.clone()),
            None,
            None,
            None,
            &a.inputs,
        )
        .await?;
        eprintln!(
            "run {} submitted ({} layers, critical path {})",
            submitted.run_id,
            submitted.plan.layers.len(),
            submitted.plan.critical_path.join(" -> ")
        );
        let state = crate::runcmd::wait(client, &submitted.run_id, true).await?;
        let detail = client.run(&submitted.run_id).await?;
        crate::view::run(&detail);
        let branch = format!("orch/run/{}", submitted.run_id);
        println!(
            "\nthe run's history, one checkpoint commit per step (git log --oneline {branch}):"
        );
        for line in orchestrator_host::git::log_oneline(&project, &branch)?.lines() {
            println!("  {line}");
        }
        println!(
            "\nbundles (manifest.json and each command's logs) are under {}/.orchestrator/runs/{}/",
            project.display(),
            submitted.run_id
        );
        anyhow::Ok(state)
    }
    .await;
    embedded.stop().await?;
    if throwaway {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(crate::runcmd::exit_code(outcome?))
}
