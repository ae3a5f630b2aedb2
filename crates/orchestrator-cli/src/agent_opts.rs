//! What an agent is told on its command line (`orch agent`, `orch up`):
//! slots, labels, memory and GPUs it offers, its sandboxes and what the vm
//! sandbox boots, the memory it lends to models; and how those become an
//! [`AgentConfig`].

use std::path::{Path, PathBuf};

use orchestrator_agent::sandbox::VmOpts;
use orchestrator_agent::{AgentConfig, SandboxConfig};
use orchestrator_core::sched::Gpu;
use orchestrator_core::spec::{SandboxKind, SizeError, SizeSpec};

use crate::client::CliError;

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
    /// The most kept of each command's stdout and of its stderr (`32M`): past
    /// it the middle is cut and marked, the first and last halves kept; 0:
    /// no cap. Default: 32M.
    #[arg(long, value_name = "SIZE", env = "ORCH_LOG_CAP", value_parser = SizeSpec::parse)]
    pub log_cap: Option<SizeSpec>,
    /// A host directory under which stages may name read-only `mounts:`
    /// (repeat or comma-separate), such as `~/.cargo` or `/opt/venvs`; the
    /// orchestrator's own data directories never can be. Default: none.
    #[arg(
        long = "allow-mount",
        value_name = "PATH",
        value_delimiter = ',',
        env = "ORCH_ALLOW_MOUNTS"
    )]
    pub allow_mounts: Vec<PathBuf>,
    /// The most one saved cache entry (a stage's `cache:`) may hold (`4G`):
    /// a larger one is not saved, and the step's manifest says why; 0 saves
    /// none. Default: 4G.
    #[arg(long, value_name = "SIZE", env = "ORCH_CACHE_MAX", value_parser = SizeSpec::parse)]
    pub cache_max: Option<SizeSpec>,
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

impl AgentOpts {
    /// An agent of `slots` slots with every other option at its default, as
    /// the embedded agents of `orch demo` and `orch bench` start.
    pub fn with_slots(slots: u32) -> AgentOpts {
        AgentOpts {
            slots,
            labels: vec![],
            name: None,
            memory: None,
            gpus: vec![],
            sandbox: None,
            min_sandbox: None,
            pids_max: None,
            log_cap: None,
            allow_mounts: vec![],
            cache_max: None,
            vm: Default::default(),
            bwrap: None,
            container_image: None,
            models: Default::default(),
        }
    }
}

/// One `--gpu` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuDecl {
    /// `none`: the agent offers no GPU and does not look for any.
    None,
    /// A GPU with this much memory.
    Memory(SizeSpec),
}

/// Why a `--gpu` value declares no GPU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuDeclError {
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error("GPU memory {text:?} is zero; expected a size such as 24G, or none")]
    Zero { text: String },
}

pub fn parse_gpu(text: &str) -> Result<GpuDecl, GpuDeclError> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(GpuDecl::None);
    }
    match SizeSpec::parse(text)? {
        SizeSpec(0) => Err(GpuDeclError::Zero {
            text: text.to_owned(),
        }),
        size => Ok(GpuDecl::Memory(size)),
    }
}

/// The GPUs `--gpu` declares, indexed in order; None (detect them) when
/// there is no `--gpu`.
pub fn declared_gpus(decls: &[GpuDecl]) -> Result<Option<Vec<Gpu>>, CliError> {
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

/// This machine's name, for the agent's default name and the daemon's view.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub fn default_slots() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u32)
}

pub fn agent_config(
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
pub fn sandbox_config(o: &AgentOpts, data_dir: &Path) -> Result<SandboxConfig, CliError> {
    let mut cfg = SandboxConfig {
        min: o.min_sandbox,
        bwrap: o.bwrap.clone(),
        container_image: o.container_image.clone(),
        work_dir: Some(data_dir.join("sandbox")),
        // Its tokens: no step of this agent's ever sees them.
        private: vec![data_dir.to_owned()],
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
    if let Some(cap) = o.log_cap {
        cfg.log_cap = cap.as_mib() << 20;
    }
    cfg.allow_mounts = o.allow_mounts.clone();
    if let Some(max) = o.cache_max {
        cfg.cache_max = max.as_mib() << 20;
    }
    cfg.vm = o.vm.config();
    Ok(cfg)
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
            pids_max,
            ..AgentOpts::with_slots(1)
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
        use orchestrator_agent::{Accel, VmConfig};
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
