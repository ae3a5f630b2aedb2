//! Starting the parts: `orch up` (daemon and a local agent in one process on
//! the embedded store), `orch daemon` and `orch agent` (its options are in
//! `agent_opts`; `orch demo` is in `demo`).
//! SIGINT/SIGTERM stop them cleanly: the agent kills its commands' process
//! groups and reports them, then the daemon drains and closes the store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use orchestrator_agent::run_agent;
use orchestrator_daemon::hooks::{ActionLinks, HooksConfig, OpenClawConfig, DEFAULT_LINK_TTL_MS};
use orchestrator_daemon::{Daemon, DaemonConfig, Tokens};
use orchestrator_store::{Location, SqlStore, Store, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::agent_opts::{agent_config, declared_gpus, hostname, AgentOpts};
use crate::client::CliError;
use crate::paths;

#[derive(clap::Args, Clone)]
pub struct DaemonArgs {
    /// Settings from a TOML file (`orch config defaults` lists them);
    /// a flag or an environment variable beats the file's value.
    #[arg(long, value_name = "FILE", env = "ORCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:7437", env = "ORCH_LISTEN")]
    pub listen: SocketAddr,
    /// The store: `sqlite:PATH`, or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`
    /// (several daemons may share one database). Default: orch.db in the
    /// data directory.
    #[arg(long, env = "ORCH_STORE")]
    pub store: Option<String>,
    /// Lease lifetime without a heartbeat, in milliseconds.
    #[arg(long, default_value_t = 30_000, env = "ORCH_LEASE_TTL_MS")]
    pub lease_ttl_ms: u64,
    /// Heartbeat interval agents are told to use, in milliseconds.
    #[arg(long, default_value_t = 10_000, env = "ORCH_HEARTBEAT_MS")]
    pub heartbeat_ms: u64,
    /// Longest a dashboard session lives from its login, in milliseconds;
    /// nothing extends it.
    #[arg(
        long,
        default_value_t = 12 * 60 * 60 * 1000,
        env = "ORCH_DASHBOARD_SESSION_MAX_MS",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub dashboard_session_max_ms: u64,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024, env = "ORCH_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,
    /// Most store commands committed in one transaction.
    #[arg(long, default_value_t = 256, env = "ORCH_BATCH_MAX_ITEMS")]
    pub batch_max_items: usize,
    /// Longest a store batch keeps taking waiting commands, in milliseconds.
    #[arg(long, default_value_t = 5, env = "ORCH_BATCH_MAX_MS")]
    pub batch_max_ms: u64,
    /// System rules (YAML): priority caps, limits per project and run,
    /// slots reserved for high priority, agent caps, ageing. Nothing a
    /// project or run says overrides them.
    #[arg(long, value_name = "FILE", env = "ORCH_RULES")]
    pub rules: Option<PathBuf>,
    /// A secret stages may name in `secrets:` (repeat). Kept in memory
    /// only; prefer --secrets-file, since a command line can be seen by others.
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    pub secrets: Vec<String>,
    /// A file of NAME=VALUE lines (mode 600), read at start.
    #[arg(long, value_name = "FILE", env = "ORCH_SECRETS_FILE")]
    pub secrets_file: Option<PathBuf>,
    /// The models the gateway serves (YAML: a list under `models:`, and
    /// `local:`, `switch:`, `aging:`), read at start.
    #[arg(long, value_name = "FILE", env = "ORCH_MODELS")]
    pub models: Option<PathBuf>,
    /// The script that starts a llama.cpp server for a `llama_cpp` model;
    /// default: scripts/llama-server.py of the checkout holding this binary.
    #[arg(long, value_name = "PATH", env = "ORCH_LLAMA_LAUNCHER")]
    pub llama_launcher: Option<PathBuf>,
    /// Export state for tools that read files into DIR: `current.json`
    /// (runs, agents, inbox; rewritten atomically after changes),
    /// `transitions.jsonl` (appended) and `metrics.json` (every 60 s).
    /// Default: no export.
    #[arg(long, value_name = "DIR", env = "ORCH_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Refuse the shared agent token (`agent.token`): every agent then needs
    /// a token of its own (`orch agent-token create NAME`). Default: the
    /// shared token is accepted for names no agent token binds.
    #[arg(long, env = "ORCH_NO_SHARED_AGENT_TOKEN")]
    pub no_shared_agent_token: bool,
    /// A project whose workflows (`.orchestrator/workflows/*.yaml|*.yml|*.json`)
    /// the daemon watches: edits reload them for new runs, which can then
    /// name them (`orch run NAME`). Repeat or comma-separate for several.
    /// Default: the current directory when it has `.orchestrator/workflows/`.
    #[arg(
        long = "project",
        value_name = "DIR",
        env = "ORCH_PROJECTS",
        value_delimiter = ','
    )]
    pub projects: Vec<PathBuf>,
    #[command(flatten)]
    pub hooks: HookArgs,
}

impl DaemonArgs {
    /// With no `--project`, the current directory when it keeps workflows.
    fn default_projects(&mut self) {
        if self.projects.is_empty() {
            if let Ok(cwd) = std::env::current_dir() {
                if cwd
                    .join(orchestrator_daemon::catalog::WORKFLOWS_DIR)
                    .is_dir()
                {
                    self.projects.push(cwd);
                }
            }
        }
    }
}

/// Where human-facing events go (approvals, questions, failures, finished runs).
#[derive(clap::Args, Clone, Default)]
#[command(next_help_heading = "Webhooks and OpenClaw")]
pub struct HookArgs {
    /// POST every event as signed JSON to URL (repeat, or comma-separate in the variable).
    #[arg(
        long = "webhook",
        value_name = "URL",
        env = "ORCH_WEBHOOKS",
        value_delimiter = ','
    )]
    pub webhooks: Vec<String>,
    /// Key of the X-Orch-Signature-256 HMAC; default: webhook.secret in the data directory, made once.
    #[arg(long, env = "ORCH_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// OpenClaw gateway base URL: approvals, questions, failures and finished runs go to URL/hooks/agent.
    #[arg(long, value_name = "URL", env = "ORCH_OPENCLAW_URL")]
    pub openclaw_url: Option<String>,
    /// The gateway's hook token (its `hooks.token`).
    #[arg(long, env = "ORCH_OPENCLAW_TOKEN", hide_env_values = true)]
    pub openclaw_token: Option<String>,
    /// Chat channel the gateway delivers on (telegram, slack, whatsapp, ...); default: the gateway's.
    #[arg(long, env = "ORCH_OPENCLAW_CHANNEL")]
    pub openclaw_channel: Option<String>,
    /// Recipient on that channel (a chat id, a phone number); default: the gateway's.
    #[arg(long, env = "ORCH_OPENCLAW_TO")]
    pub openclaw_to: Option<String>,
    /// This daemon's URL as a phone reaches it: messages then carry signed one-click links.
    #[arg(long, value_name = "URL", env = "ORCH_PUBLIC_URL")]
    pub public_url: Option<String>,
}

impl HookArgs {
    /// The daemon's hook settings; secrets not given are read from (or made
    /// once in) the data directory, mode 0600, only when something needs them.
    fn config(&self, data_dir: &Path) -> Result<HooksConfig> {
        let given = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
        let mut h = HooksConfig {
            webhooks: self.webhooks.clone(),
            state_file: Some(data_dir.join("hooks.json")),
            ..Default::default()
        };
        match (&self.openclaw_url, given(&self.openclaw_token)) {
            (Some(url), Some(token)) => {
                h.openclaw = Some(OpenClawConfig {
                    url: url.clone(),
                    token,
                    channel: given(&self.openclaw_channel),
                    to: given(&self.openclaw_to),
                });
            }
            (Some(_), None) => {
                return Err(CliError::BadInput(
                    "--openclaw-url needs --openclaw-token (or ORCH_OPENCLAW_TOKEN): the gateway refuses hooks without its token".into(),
                )
                .into())
            }
            (None, _) if self.openclaw_channel.is_some() || self.openclaw_to.is_some() => {
                tracing::warn!("--openclaw-channel and --openclaw-to do nothing without --openclaw-url");
            }
            (None, _) => {}
        }
        // Bad URLs are refused before any secret is made for them.
        h.check().map_err(|e| CliError::BadInput(e.to_string()))?;
        if !h.webhooks.is_empty() {
            let secret = match given(&self.webhook_secret) {
                Some(s) => s,
                None => paths::ensure_token(data_dir, "webhook.secret")?,
            };
            h.webhook_secret = secret.into_bytes();
        }
        if let Some(url) = given(&self.public_url) {
            h.links = Some(ActionLinks {
                public_url: url,
                key: paths::ensure_token(data_dir, "action.secret")?.into_bytes(),
                ttl_ms: DEFAULT_LINK_TTL_MS,
            });
        }
        Ok(h)
    }
}

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

fn store_location(arg: Option<&str>, data_dir: &Path) -> Result<Location> {
    match arg {
        None => Ok(Location::Sqlite(data_dir.join("orch.db"))),
        Some(s) if s.starts_with("sqlite:") || s.starts_with("postgres") => Ok(Location::parse(s)),
        Some(s) => Err(CliError::BadInput(format!(
            "--store {s:?}: expected sqlite:PATH or postgres://USER@HOST[:PORT]/DATABASE"
        ))
        .into()),
    }
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
    cfg.secrets = crate::secrets::load(&a.secrets, a.secrets_file.as_deref())?;
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
        .issue_agent_token(&cfg.name, true, "daemon")
        .await
        .with_context(|| format!("cannot issue the local agent {:?} its token", cfg.name))?;
    let agent = tokio::spawn(run_agent(cfg, agent_stop.clone()));
    let daemon_stop = daemon.shutdown_token();
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
    daemon_task.await?.map_err(|e| anyhow!(e))?;
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
    daemon.wait().await.map_err(|e| anyhow!(e))?;
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
