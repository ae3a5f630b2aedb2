//! Starting the parts: `orch up` (daemon and a local agent in one process on
//! the embedded store), `orch daemon` and `orch agent` (its options are in
//! `agent_opts`, the daemon's in `daemon_opts`; `orch demo` is in `demo`).
//! SIGINT/SIGTERM stop them cleanly: the agent kills its commands' process
//! groups and reports them, then the daemon drains and closes the store.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use orchestrator_agent::run_agent;
use orchestrator_daemon::{Daemon, DaemonConfig, Tokens};
use orchestrator_store::{SqlStore, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::agent_opts::{agent_config, declared_gpus, hostname, AgentOpts};
use crate::client::CliError;
use crate::daemon_opts::{store_location, DaemonArgs};
use crate::paths;

#[derive(clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    #[command(flatten)]
    pub agent: AgentOpts,
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Settings from a TOML file (`orch config defaults` lists them);
    /// a flag or an environment variable beats the file's value.
    #[arg(long, value_name = "FILE", env = "ORCH_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub agent: AgentOpts,
    /// Agent token; default: agent.token in the data directory.
    #[arg(long, env = "ORCH_AGENT_TOKEN", hide_env_values = true)]
    pub agent_token: Option<String>,
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn signals() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// Opens the store and starts the daemon; writes the endpoint file.
async fn start_daemon(a: &DaemonArgs, data_dir: &Path) -> Result<(Daemon, Tokens, Arc<SqlStore>)> {
    // Its tokens and secrets, hidden from every step on this machine.
    let mut private = vec![data_dir.to_owned()];
    private.extend(a.state_dir.clone());
    private.extend(a.secrets_file.clone());
    paths::register_private(&private);
    let tokens = Tokens {
        admin: vec![paths::ensure_token(data_dir, "admin.token")?],
        agent: if a.no_shared_agent_token {
            Vec::new()
        } else {
            vec![paths::ensure_token(data_dir, "agent.token")?]
        },
    };
    let hooks = a.hooks.config(data_dir)?;
    let location = store_location(a.store.as_deref(), data_dir)?;
    tracing::info!(store = %location.shown(), "opening the store");
    let mut opts = StoreOptions::at(location);
    opts.max_items = a.batch_max_items;
    opts.max_ms = a.batch_max_ms;
    if let Some(path) = &a.rules {
        let text = crate::read_definition(path)?;
        opts.rules =
            orchestrator_core::sched::parse_system_rules(&text, &path.display().to_string())
                .map_err(|e| CliError::BadInput(e.to_string()))?;
    }
    let models = match &a.models {
        Some(path) => {
            let text = crate::read_definition(path)?;
            orchestrator_core::fabric::parse_models_file(&text, &path.display().to_string())
                .map_err(|e| CliError::BadInput(e.to_string()))?
        }
        None => Default::default(),
    };
    let store = Arc::new(SqlStore::open(opts).context("cannot open the store")?);
    let mut cfg = DaemonConfig::new(a.listen, tokens.clone());
    cfg.lease_ttl_ms = a.lease_ttl_ms;
    cfg.heartbeat_interval_ms = a.heartbeat_ms;
    cfg.max_body_bytes = a.max_body_bytes;
    cfg.hooks = hooks;
    // Wrong input (exit code 2), shown as its message, which names its cause.
    cfg.secrets = crate::secrets::load(&a.secrets, a.secrets_file.as_deref())
        .map_err(|e| CliError::BadInput(e.to_string()))?;
    // Kept beside the tokens, so a running step's model key outlives a restart.
    cfg.job_key_secret = Some(paths::ensure_token(data_dir, "job-keys.secret")?.into_bytes());
    // Kept too, so a browser's dashboard session outlives a restart.
    cfg.dashboard_secret = Some(paths::ensure_token(data_dir, "dashboard.secret")?.into_bytes());
    cfg.dashboard_session_max_ms = a.dashboard_session_max_ms;
    cfg.model_switch_ms = models.switch_ms();
    cfg.model_aging_ms = models.aging_ms();
    cfg.model_local = models.local;
    cfg.models = models.models;
    if let Some(l) = &a.llama_launcher {
        cfg.llama_launcher = l.clone();
    }
    cfg.state_dir = a.state_dir.clone();
    cfg.watch = a.projects.clone();
    let daemon = Daemon::start(cfg, store.clone())
        .await
        .with_context(|| format!("cannot start the daemon on {}", a.listen))?;
    paths::write_atomic(
        &paths::endpoint_file(data_dir),
        &format!("http://{}\n", daemon.addr),
    )?;
    Ok((daemon, tokens, store))
}

/// Where the dashboard is, without a login: what a log may hold.
fn dashboard_hint(daemon: &Daemon) -> String {
    let link = daemon.dashboard_url();
    format!("dashboard: {link} (`orch dashboard` prints a link that logs a browser in)")
}

/// A live login link is a credential: it goes only to a person at a
/// terminal, never into a file or a service's log that others may read.
fn dashboard_banner(daemon: &Daemon) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println!(
            "dashboard: {} (this link works once, for 10 minutes; `orch dashboard` makes another)",
            daemon.dashboard_link().url
        );
    } else {
        eprintln!("{}", dashboard_hint(daemon));
    }
}

/// Runs a daemon and one agent until `stop` or a signal; agent first down.
/// `ready` learns the daemon's URL once it listens.
pub async fn run_up(
    a: UpArgs,
    data_dir: &Path,
    stop: CancellationToken,
    banner: bool,
    ready: Option<tokio::sync::oneshot::Sender<String>>,
) -> Result<()> {
    // A contradictory --gpu is refused before a daemon starts for nothing.
    declared_gpus(&a.agent.gpus)?;
    let (daemon, _, store) = start_daemon(&a.daemon, data_dir).await?;
    let url = format!("http://{}", daemon.addr);
    if banner {
        eprintln!("orch daemon on {url} (data in {})", data_dir.display());
        dashboard_banner(&daemon);
        crate::workflows::banner(&a.daemon.projects, &daemon.workflows());
    }
    if let Some(r) = ready {
        let _ = r.send(url.clone());
    }
    let agent_stop = CancellationToken::new();
    let mut cfg = agent_config(
        &a.agent,
        data_dir,
        url,
        String::new(),
        format!("{}-local", hostname()),
    )?;
    // The local agent gets a credential of its own, fresh at each start (the
    // last one's is replaced), so its name is bound and the shared agent
    // token cannot take it over.
    cfg.token = store
        .issue_agent_token(&cfg.name, true, &orchestrator_core::Actor::Daemon)
        .await
        .with_context(|| format!("cannot issue the local agent {:?} its token", cfg.name))?;
    let agent = tokio::spawn(run_agent(cfg, agent_stop.clone()));
    let daemon_stop = daemon.shutdown_token();
    // A failure becomes its message alone: `report` shows an error's causes
    // after it, and this message holds its cause already.
    let daemon_task = tokio::spawn(daemon.wait());
    tokio::select! {
        r = signals() => r?,
        _ = stop.cancelled() => {}
    }
    if banner {
        eprintln!("stopping: agent first, then the daemon");
    }
    agent_stop.cancel();
    match agent.await {
        Ok(Err(e)) => tracing::error!(error = %e, "agent failed"),
        Err(e) => tracing::error!(error = %e, "agent task failed"),
        Ok(Ok(())) => {}
    }
    daemon_stop.cancel();
    daemon_task.await?.map_err(|e| anyhow!(e.to_string()))?;
    let _ = std::fs::remove_file(paths::endpoint_file(data_dir));
    Ok(())
}

pub async fn up(mut a: UpArgs, data_dir: &Path) -> Result<ExitCode> {
    a.daemon.default_projects();
    run_up(a, data_dir, CancellationToken::new(), true, None).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn daemon(mut a: DaemonArgs, data_dir: &Path) -> Result<ExitCode> {
    a.default_projects();
    let (daemon, _, _) = start_daemon(&a, data_dir).await?;
    eprintln!(
        "orch daemon on http://{} (data in {})",
        daemon.addr,
        data_dir.display()
    );
    eprintln!("{}", dashboard_hint(&daemon));
    crate::workflows::banner(&a.projects, &daemon.workflows());
    let stop = daemon.shutdown_token();
    tokio::spawn(async move {
        let _ = signals().await;
        stop.cancel();
    });
    daemon.wait().await.map_err(|e| anyhow!(e.to_string()))?;
    let _ = std::fs::remove_file(paths::endpoint_file(data_dir));
    Ok(ExitCode::SUCCESS)
}

pub async fn agent(a: AgentArgs, server: Option<String>, data_dir: &Path) -> Result<ExitCode> {
    let server = match server {
        Some(s) => s,
        None => std::fs::read_to_string(paths::endpoint_file(data_dir))
            .map(|s| s.trim().to_owned())
            .map_err(|_| anyhow!("no daemon address: pass --server URL"))?,
    };
    let token = match a.agent_token {
        Some(t) => t,
        None => std::fs::read_to_string(data_dir.join("agent.token"))
            .map(|s| s.trim().to_owned())
            .map_err(|_| anyhow!("no agent token: pass --agent-token or set ORCH_AGENT_TOKEN"))?,
    };
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = signals().await;
        s.cancel();
    });
    paths::register_private(&[data_dir.to_owned()]);
    let cfg = agent_config(&a.agent, data_dir, server, token, hostname())?;
    run_agent(cfg, stop).await?;
    Ok(ExitCode::SUCCESS)
}
