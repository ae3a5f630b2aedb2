//! What a daemon is told on its command line (`orch daemon`, and the daemon
//! half of `orch up`): where its store is, the limits it applies, its secrets,
//! models and watched projects, and where human-facing events go
//! ([`HookArgs`]); and how the hook options become the daemon's [`HooksConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use orchestrator_daemon::hooks::{ActionLinks, HooksConfig, OpenClawConfig, DEFAULT_LINK_TTL_MS};
use orchestrator_store::Location;

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
    pub(crate) fn default_projects(&mut self) {
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
    pub(crate) fn config(&self, data_dir: &Path) -> Result<HooksConfig> {
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

pub(crate) fn store_location(arg: Option<&str>, data_dir: &Path) -> Result<Location> {
    match arg {
        None => Ok(Location::Sqlite(data_dir.join("orch.db"))),
        Some(s) if s.starts_with("sqlite:") || s.starts_with("postgres") => Ok(Location::parse(s)),
        Some(s) => Err(CliError::BadInput(format!(
            "--store {s:?}: expected sqlite:PATH or postgres://USER@HOST[:PORT]/DATABASE"
        ))
        .into()),
    }
}
