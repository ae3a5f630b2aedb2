//! Starting the parts: `orch up` (daemon and a local agent in one process on
//! the embedded store), `orch daemon`, `orch agent`, and `orch demo`.
//! SIGINT/SIGTERM stop them cleanly: the agent kills its commands' process
//! groups and reports them, then the daemon drains and closes the store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use orchestrator_agent::{run_agent, Accel, AgentConfig, SandboxConfig, VmConfig};
use orchestrator_core::sched::Gpu;
use orchestrator_core::spec::{SandboxKind, SizeSpec};
use orchestrator_daemon::hooks::{ActionLinks, HooksConfig, OpenClawConfig, DEFAULT_LINK_TTL_MS};
use orchestrator_daemon::{Daemon, DaemonConfig, Tokens};
use orchestrator_store::{SqliteStore, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::client::{CliError, Client};
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
    /// The store: `sqlite:PATH`. Default: orch.db in the data directory.
    #[arg(long, env = "ORCH_STORE")]
    pub store: Option<String>,
    /// Lease lifetime without a heartbeat, in milliseconds.
    #[arg(long, default_value_t = 30_000, env = "ORCH_LEASE_TTL_MS")]
    pub lease_ttl_ms: u64,
    /// Heartbeat interval agents are told to use, in milliseconds.
    #[arg(long, default_value_t = 10_000, env = "ORCH_HEARTBEAT_MS")]
    pub heartbeat_ms: u64,
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

#[derive(clap::Args, Clone)]
pub struct AgentOpts {
    /// Jobs the agent runs at once.
    #[arg(long, default_value_t = default_slots(), env = "ORCH_SLOTS")]
    pub slots: u32,
    /// Capabilities the agent offers (repeat or comma-separate).
    #[arg(long = "label", value_delimiter = ',', env = "ORCH_LABELS")]
    pub labels: Vec<String>,
    /// Agent name; default: `<hostname>-local` for `up`, `<hostname>` otherwise.
    #[arg(long, env = "ORCH_AGENT_NAME")]
    pub name: Option<String>,
    /// Memory offered to steps: `16G`, `512M`. Default: the machine's total
    /// memory (MemTotal in /proc/meminfo; none where it cannot be read).
    #[arg(long, value_name = "SIZE", env = "ORCH_AGENT_MEMORY", value_parser = SizeSpec::parse)]
    pub memory: Option<SizeSpec>,
    /// A GPU offered to steps, by its memory (`24G`); repeat or
    /// comma-separate, in device order (indices 0, 1, ...). `none` offers no
    /// GPU. Default: the GPUs `nvidia-smi` lists; none when it is missing,
    /// fails or does not answer within 10 s.
    #[arg(
        long = "gpu",
        value_name = "MEM",
        value_delimiter = ',',
        env = "ORCH_AGENT_GPUS",
        value_parser = parse_gpu
    )]
    pub gpus: Vec<GpuDecl>,
    /// The sandbox of a step whose stage and project choose none: process,
    /// namespace, bubblewrap, container or vm. Default: namespace on Linux.
    #[arg(long, value_name = "KIND", env = "ORCH_SANDBOX", value_parser = SandboxKind::parse)]
    pub sandbox: Option<SandboxKind>,
    /// The weakest sandbox this agent runs; a step asking for a weaker one
    /// fails with an error saying so. Default: none (any).
    #[arg(long, value_name = "KIND", env = "ORCH_MIN_SANDBOX", value_parser = SandboxKind::parse)]
    pub min_sandbox: Option<SandboxKind>,
    /// The most processes and threads one command of a namespace step may
    /// have at once (its cgroup's pids.max; a fork bomb stops there); 0: no
    /// limit. Default: 4096.
    #[arg(long, value_name = "N", env = "ORCH_PIDS_MAX")]
    pub pids_max: Option<u64>,
    /// The `bwrap` binary of `sandbox: bubblewrap`. Default: `bwrap` in PATH.
    #[arg(long, value_name = "PATH", env = "ORCH_BWRAP")]
    pub bwrap: Option<PathBuf>,
    /// The root file system of a `sandbox: container` stage that names no
    /// `image`: a directory, or a .tar, .tar.gz or .tgz of one.
    #[arg(long, value_name = "PATH", env = "ORCH_CONTAINER_IMAGE")]
    pub container_image: Option<PathBuf>,
    /// Boxed: the flags would make every subcommand as large.
    #[command(flatten)]
    pub vm: Box<VmOpts>,
    #[command(flatten)]
    pub models: Box<crate::agent_models::ModelOpts>,
}

/// What the vm sandbox boots (scripts/vm-assets.sh builds the three files).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VmOpts {
    /// The kernel of the vm sandbox's VMs (a bzImage, or an uncompressed
    /// vmlinux, which boots faster under software emulation).
    #[arg(long, value_name = "PATH", env = "ORCH_VM_KERNEL")]
    pub vm_kernel: Option<PathBuf>,
    /// The initramfs holding orch's VM init.
    #[arg(long, value_name = "PATH", env = "ORCH_VM_INITRD")]
    pub vm_initrd: Option<PathBuf>,
    /// The base disk image (qcow2) each stage's VM disk starts from.
    #[arg(long, value_name = "PATH", env = "ORCH_VM_IMAGE")]
    pub vm_image: Option<PathBuf>,
    /// A VM's memory, unless the stage was granted more. Default: 256M.
    #[arg(long, value_name = "SIZE", env = "ORCH_VM_MEMORY", value_parser = SizeSpec::parse)]
    pub vm_memory: Option<SizeSpec>,
    /// KVM, software emulation (tcg), or auto: KVM when a test boot under it
    /// works. Default: auto.
    #[arg(long, value_name = "ACCEL", env = "ORCH_VM_ACCEL", value_parser = Accel::parse)]
    pub vm_accel: Option<Accel>,
    /// The QEMU system emulator; qemu-img is taken from its directory.
    /// Default: qemu-system-x86_64 from PATH.
    #[arg(long, value_name = "PATH", env = "ORCH_QEMU")]
    pub qemu: Option<PathBuf>,
}

/// One `--gpu` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuDecl {
    /// `none`: the agent offers no GPU and does not look for any.
    None,
    /// A GPU with this much memory.
    Memory(SizeSpec),
}

fn parse_gpu(text: &str) -> Result<GpuDecl, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(GpuDecl::None);
    }
    match SizeSpec::parse(text)? {
        SizeSpec(0) => Err(format!(
            "GPU memory {text:?} is zero; expected a size such as 24G, or none"
        )),
        size => Ok(GpuDecl::Memory(size)),
    }
}

/// The GPUs `--gpu` declares, indexed in order; None (detect them) when
/// there is no `--gpu`.
fn declared_gpus(decls: &[GpuDecl]) -> Result<Option<Vec<Gpu>>, CliError> {
    if decls.is_empty() {
        return Ok(None);
    }
    if decls.contains(&GpuDecl::None) {
        if decls.len() > 1 {
            return Err(CliError::BadInput(
                "--gpu none declares that the agent has no GPU; it cannot go with GPU sizes".into(),
            ));
        }
        return Ok(Some(Vec::new()));
    }
    let gpus = (0u32..)
        .zip(decls)
        .filter_map(|(index, d)| match d {
            GpuDecl::Memory(size) => Some(Gpu {
                index,
                name: String::new(),
                memory_mb: size.as_mib(),
            }),
            GpuDecl::None => None,
        })
        .collect();
    Ok(Some(gpus))
}

fn default_slots() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u32)
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

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The workflow to run.
    #[arg(default_value = "examples/demo.yaml")]
    pub file: PathBuf,
    /// Where the demo keeps its store; default: a fresh temporary directory.
    #[arg(long)]
    pub demo_dir: Option<PathBuf>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
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

fn store_path(arg: Option<&str>, data_dir: &Path) -> Result<PathBuf> {
    match arg {
        None => Ok(data_dir.join("orch.db")),
        Some(s) => s
            .strip_prefix("sqlite:")
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("--store {s:?}: expected sqlite:PATH")),
    }
}

/// Opens the store and starts the daemon; writes the endpoint file.
async fn start_daemon(a: &DaemonArgs, data_dir: &Path) -> Result<(Daemon, Tokens)> {
    let tokens = Tokens {
        admin: vec![paths::ensure_token(data_dir, "admin.token")?],
        agent: vec![paths::ensure_token(data_dir, "agent.token")?],
    };
    let hooks = a.hooks.config(data_dir)?;
    let mut opts = StoreOptions::new(store_path(a.store.as_deref(), data_dir)?);
    opts.max_items = a.batch_max_items;
    opts.max_ms = a.batch_max_ms;
    if let Some(path) = &a.rules {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::BadInput(format!("{}: cannot read the rules: {e}", path.display()))
        })?;
        opts.rules =
            orchestrator_core::sched::parse_system_rules(&text, &path.display().to_string())
                .map_err(|e| CliError::BadInput(e.to_string()))?;
    }
    let models = match &a.models {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::BadInput(format!("{}: cannot read the models: {e}", path.display()))
            })?;
            orchestrator_core::fabric::parse_models_file(&text, &path.display().to_string())
                .map_err(|e| CliError::BadInput(e.to_string()))?
        }
        None => Default::default(),
    };
    let store = Arc::new(SqliteStore::open(opts).context("cannot open the store")?);
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
    cfg.model_switch_ms = models.switch_ms();
    cfg.model_aging_ms = models.aging_ms();
    cfg.model_local = models.local;
    cfg.models = models.models;
    if let Some(l) = &a.llama_launcher {
        cfg.llama_launcher = l.clone();
    }
    cfg.state_dir = a.state_dir.clone();
    cfg.watch = a.projects.clone();
    let daemon = Daemon::start(cfg, store)
        .await
        .with_context(|| format!("cannot start the daemon on {}", a.listen))?;
    paths::write_atomic(
        &paths::endpoint_file(data_dir),
        &format!("http://{}\n", daemon.addr),
    )?;
    Ok((daemon, tokens))
}

fn agent_config(
    o: &AgentOpts,
    data_dir: &Path,
    server: String,
    token: String,
    default_name: String,
) -> Result<AgentConfig, CliError> {
    Ok(AgentConfig {
        server,
        token,
        name: o.name.clone().unwrap_or(default_name),
        labels: o.labels.clone(),
        slots: o.slots,
        hostname: Some(hostname()),
        memory_mb: o.memory.map(SizeSpec::as_mib),
        gpus: declared_gpus(&o.gpus)?,
        sandbox: sandbox_config(o, data_dir)?,
        models: o.models.hosting(),
    })
}

/// The agent's sandbox choices. An explicit default weaker than the floor is
/// refused rather than silently raised; the platform's default is raised to
/// the floor. Backend state (container bundles, runc's state, extracted
/// images) lives in the data dir's `sandbox/`.
fn sandbox_config(o: &AgentOpts, data_dir: &Path) -> Result<SandboxConfig, CliError> {
    let mut cfg = SandboxConfig {
        min: o.min_sandbox,
        bwrap: o.bwrap.clone(),
        container_image: o.container_image.clone(),
        work_dir: Some(data_dir.join("sandbox")),
        ..SandboxConfig::default()
    };
    match (o.sandbox, cfg.min) {
        (Some(d), Some(min)) if d.strength() < min.strength() => {
            return Err(CliError::BadInput(format!(
                "--sandbox {d} is weaker than --min-sandbox {min}; expected --sandbox {min} or stronger"
            )))
        }
        (Some(d), _) => cfg.default = d,
        (None, Some(min)) if cfg.default.strength() < min.strength() => cfg.default = min,
        (None, _) => {}
    }
    if let Some(n) = o.pids_max {
        cfg.pids_max = Some(n).filter(|&n| n > 0);
    }
    cfg.vm = vm_config(&o.vm);
    Ok(cfg)
}

/// What the vm sandbox boots, from the `--vm-*` and `--qemu` flags.
pub fn vm_config(o: &VmOpts) -> VmConfig {
    let d = VmConfig::default();
    VmConfig {
        kernel: o.vm_kernel.clone(),
        initrd: o.vm_initrd.clone(),
        image: o.vm_image.clone(),
        memory_mb: o.vm_memory.map_or(d.memory_mb, SizeSpec::as_mib),
        qemu: o.qemu.clone().unwrap_or(d.qemu),
        accel: o.vm_accel.unwrap_or(d.accel),
    }
}

/// Runs a daemon and one agent until `stop` or a signal; agent first down.
/// `ready` learns the daemon's URL once it listens.
async fn run_up(
    a: UpArgs,
    data_dir: &Path,
    stop: CancellationToken,
    banner: bool,
    ready: Option<tokio::sync::oneshot::Sender<String>>,
) -> Result<()> {
    // A contradictory --gpu is refused before a daemon starts for nothing.
    declared_gpus(&a.agent.gpus)?;
    let (daemon, tokens) = start_daemon(&a.daemon, data_dir).await?;
    let url = format!("http://{}", daemon.addr);
    if banner {
        eprintln!("orch daemon on {url} (data in {})", data_dir.display());
        eprintln!(
            "dashboard: {} (this link works once, for 10 minutes; `orch dashboard` makes another)",
            daemon.dashboard_link().url
        );
        crate::workflows::banner(&a.daemon.projects, &daemon.workflows());
    }
    if let Some(r) = ready {
        let _ = r.send(url.clone());
    }
    let agent_stop = CancellationToken::new();
    let cfg = agent_config(
        &a.agent,
        data_dir,
        url,
        tokens.agent[0].clone(),
        format!("{}-local", hostname()),
    )?;
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
    let (daemon, _) = start_daemon(&a, data_dir).await?;
    eprintln!(
        "orch daemon on http://{} (data in {})",
        daemon.addr,
        data_dir.display()
    );
    eprintln!(
        "dashboard: {} (this link works once, for 10 minutes; `orch dashboard` makes another)",
        daemon.dashboard_link().url
    );
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
    let cfg = agent_config(&a.agent, data_dir, server, token, hostname())?;
    run_agent(cfg, stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// A daemon and one agent inside this process, on loopback and an embedded
/// store in `dir`: what `orch demo` and `orch bench` drive over HTTP.
pub struct Embedded {
    pub client: Client,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Embedded {
    pub async fn start(dir: &Path, agent: AgentOpts, banner: bool) -> Result<Embedded> {
        let args = UpArgs {
            daemon: DaemonArgs {
                config: None,
                listen: "127.0.0.1:0".parse()?,
                store: None,
                lease_ttl_ms: 30_000,
                heartbeat_ms: 10_000,
                max_body_bytes: 64 * 1024 * 1024,
                batch_max_items: 256,
                batch_max_ms: 5,
                rules: None,
                secrets: Vec::new(),
                secrets_file: None,
                models: None,
                llama_launcher: None,
                state_dir: None,
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
                    client: Client::new(url, token.trim().to_owned()),
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
    let agent = AgentOpts {
        slots: default_slots().max(2),
        labels: vec![],
        name: None,
        memory: None,
        gpus: vec![],
        sandbox: None,
        min_sandbox: None,
        pids_max: None,
        vm: Default::default(),
        bwrap: None,
        container_image: None,
        models: Default::default(),
    };
    // The demo's own project: a fresh repository, so its run's branch and
    // worktree land there and not in whatever directory the demo ran from.
    let project = dir.join("project");
    let workflow = std::fs::read_to_string(&a.file).map_err(|e| {
        crate::CliError::BadInput(format!("{}: cannot read: {e}", a.file.display()))
    })?;
    crate::project::init(
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
    let embedded = Embedded::start(&dir, agent, true).await?;
    let client = &embedded.client;
    let outcome = async {
        let submitted =
            crate::runcmd::submit(client, &a.file, Some(project.clone()), None, None, None).await?;
        eprintln!(
            "run {} submitted ({} layers, critical path {})",
            submitted.run_id,
            submitted.plan.layers.len(),
            submitted.plan.critical_path.join(" -> ")
        );
        let state = crate::runcmd::wait(client, &submitted.run_id, true).await?;
        let detail = client
            .get(&format!("/v1/runs/{}", submitted.run_id))
            .await?;
        crate::view::run(&detail);
        let branch = format!("orch/run/{}", submitted.run_id);
        println!(
            "\nthe run's history, one checkpoint commit per step (git log --oneline {branch}):"
        );
        for line in crate::project::log(&project, &branch)?.lines() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_values_are_sizes_or_none() {
        assert_eq!(parse_gpu("24G"), Ok(GpuDecl::Memory(SizeSpec(24 * 1024))));
        assert_eq!(parse_gpu("None"), Ok(GpuDecl::None));
        assert!(parse_gpu("0").is_err());
        assert!(parse_gpu("lots").is_err());
    }

    #[test]
    fn declared_gpus_are_indexed_in_order() {
        assert_eq!(declared_gpus(&[]).ok(), Some(None));
        assert_eq!(declared_gpus(&[GpuDecl::None]).ok(), Some(Some(vec![])));
        let m = |g: u64| GpuDecl::Memory(SizeSpec(g * 1024));
        let gpus = declared_gpus(&[m(24), m(48)])
            .ok()
            .flatten()
            .unwrap_or_default();
        let got: Vec<(u32, u64)> = gpus.iter().map(|g| (g.index, g.memory_mb)).collect();
        assert_eq!(got, [(0, 24 * 1024), (1, 48 * 1024)]);
        assert!(declared_gpus(&[GpuDecl::None, m(24)]).is_err());
    }

    #[derive(clap::Parser)]
    struct Agent {
        #[command(flatten)]
        opts: AgentOpts,
    }

    #[test]
    fn wrapper_backends_take_their_paths_from_flags_and_state_the_data_dir() {
        use clap::Parser;
        let a = Agent::parse_from([
            "orch",
            "--bwrap",
            "/opt/bwrap",
            "--container-image",
            "/images/base.tar.gz",
        ]);
        let cfg = sandbox_config(&a.opts, Path::new("/data"))
            .ok()
            .unwrap_or_default();
        assert_eq!(cfg.bwrap, Some(PathBuf::from("/opt/bwrap")));
        assert_eq!(
            cfg.container_image,
            Some(PathBuf::from("/images/base.tar.gz"))
        );
        assert_eq!(cfg.work_dir, Some(PathBuf::from("/data/sandbox")));
    }

    #[test]
    fn pids_max_sets_the_agents_limit_and_zero_lifts_it() {
        let opts = |pids_max| AgentOpts {
            slots: 1,
            labels: vec![],
            name: None,
            memory: None,
            gpus: vec![],
            sandbox: None,
            min_sandbox: None,
            pids_max,
            vm: Default::default(),
            bwrap: None,
            container_image: None,
            models: Default::default(),
        };
        let max = |o| {
            sandbox_config(&o, Path::new("/data"))
                .ok()
                .and_then(|c| c.pids_max)
        };
        assert_eq!(
            max(opts(None)),
            Some(orchestrator_agent::sandbox::DEFAULT_PIDS_MAX)
        );
        assert_eq!(max(opts(Some(64))), Some(64));
        assert_eq!(max(opts(Some(0))), None);
    }

    #[derive(clap::Parser)]
    struct Opts {
        #[command(flatten)]
        agent: AgentOpts,
    }

    #[test]
    fn vm_flags_reach_the_sandbox_config() {
        use clap::Parser;
        let o = Opts::try_parse_from([
            "orch",
            "--vm-kernel",
            "/k",
            "--vm-initrd",
            "/i",
            "--vm-image",
            "/b.qcow2",
            "--vm-memory",
            "1G",
            "--vm-accel",
            "tcg",
            "--qemu",
            "/q",
        ])
        .unwrap();
        let cfg = sandbox_config(&o.agent, Path::new("/data")).unwrap();
        assert_eq!(
            cfg.vm,
            VmConfig {
                kernel: Some("/k".into()),
                initrd: Some("/i".into()),
                image: Some("/b.qcow2".into()),
                memory_mb: 1024,
                qemu: "/q".into(),
                accel: Accel::Tcg,
            }
        );
        let bad = Opts::try_parse_from(["orch", "--vm-accel", "hvf"])
            .err()
            .unwrap();
        assert!(
            bad.to_string().contains("expected auto, kvm or tcg"),
            "{bad}"
        );
    }
}
