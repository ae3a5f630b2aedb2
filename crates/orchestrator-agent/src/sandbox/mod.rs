//! How a step's commands are isolated from the agent's machine: one backend
//! per file, chosen by the stage's `sandbox`.
//!
//! - [`process`]: no isolation (each command leads its own process group and
//!   sees the machine as the agent does); chosen explicitly.
//! - [`namespace`] (Linux, the default there): each command runs in new user, mount, pid, ipc,
//!   uts and (unless the stage allows `network`) net namespaces, set up in
//!   the forked child before `exec`. The root file system is read-only; the
//!   run's worktree and the step's bundle are the only writable host
//!   directories; the project's `.git` stays readable (git works in the
//!   worktree, read-only); `/tmp`, `/var/tmp`, `/root`, `/home`, `/run`, `/dev/shm`
//!   and the project's `.orchestrator` directory (other runs' worktrees and
//!   bundles) are hidden behind empty tmpfs; `/proc` is the sandbox's own.
//!   Everything else of the host's file system (`/usr`, `/etc`, `/opt`, the
//!   project's sources outside `.orchestrator`, ...) stays readable.
//!
//!   The command runs under a minimal init (`reaper.rs`). Without network,
//!   the daemon's model gateway is relayed to `127.0.0.1` inside
//!   ([`relay`]). Each command
//!   gets a cgroup of its own with the step's memory and pids limits
//!   ([`cgroup`]), and where the kernel has Landlock its writes are
//!   restricted to the writable directories as well ([`landlock`]); the
//!   manifest's `limits` records what applied ([`applied`]).
//! - [`vm`]: each command boots its own QEMU virtual machine on the stage's
//!   disk (a qcow2 overlay kept at each checkpoint, discarded on failure);
//!   the worktree and bundle are shared over 9p; see the module.
//!
//! - [`bubblewrap`]: the same view as `namespace`, built by `bwrap`
//!   (bubblewrap) around each command.
//! - [`container`]: each command runs under `runc` in an OCI container
//!   whose read-only root file system is the stage's `image` (a directory or
//!   a tarball), with the worktree and the bundle bound writable, no network
//!   unless allowed, and the step's memory and pids limits in its cgroup.
//!
//! Whatever the backend, the spawned process leads a process group, so
//! [`GroupChild`]'s timeout and cancellation (the whole group signalled)
//! work the same: for `namespace` the group leader is a small reaper whose
//! death takes the whole pid namespace with it, and the command's cgroup is
//! emptied and removed when it ends.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use orchestrator_core::api::SandboxSpec;
use orchestrator_core::spec::SandboxKind;
use tokio::process::Command;

use crate::exec::GroupChild;

#[cfg(target_os = "linux")]
mod bubblewrap;
#[cfg(target_os = "linux")]
pub mod cgroup;
mod config;
#[cfg(target_os = "linux")]
mod container;
#[cfg(target_os = "linux")]
pub mod landlock;
#[cfg(target_os = "linux")]
mod limits;
#[cfg(target_os = "linux")]
mod namespace;
pub mod private;
mod process;
#[cfg(target_os = "linux")]
mod reaper;
#[cfg(target_os = "linux")]
mod relay;
mod vm;
#[cfg(feature = "args")]
mod vm_args;
#[cfg(target_os = "linux")]
mod wrap;

#[cfg(target_os = "linux")]
pub use cgroup::CommandCgroup;
pub use config::{platform_default, SandboxConfig, DEFAULT_PIDS_MAX};
#[cfg(target_os = "linux")]
pub use container::sweep_at_start as sweep_containers_at_start;
#[cfg(target_os = "linux")]
pub use limits::{applied, report_at_start};
#[cfg(target_os = "linux")]
pub use relay::{gateway_url, GATEWAY_PORT};
pub use vm::{
    Accel, UnknownAccel, VmConfig, VmError, VmUnavailable, DEFAULT_VM_MEMORY_MB, KVM_PROBE,
};
#[cfg(feature = "args")]
pub use vm_args::VmOpts;

/// Why a command could not be started in its sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The command itself could not start (program missing, not
    /// executable, ...): the same errors as without a sandbox.
    #[error(transparent)]
    Spawn(io::Error),
    /// The sandbox could not be set up around the command.
    #[error("the namespace sandbox could not be set up: {step} failed: {source}{hint}", hint = hint(.step))]
    Setup {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// A path the sandbox needs cannot be passed to the kernel.
    #[error("the namespace sandbox cannot use the path {0:?}: it holds a NUL byte")]
    Path(PathBuf),
    /// The sandbox cannot exist on this operating system.
    #[error("the namespace sandbox needs Linux")]
    Unsupported,
    /// The step asks for a weaker sandbox than this agent runs.
    #[error("this agent runs no step in a sandbox weaker than {min} (orch agent --min-sandbox), but the stage asks for sandbox: {asked}; choose sandbox: {min} or stronger")]
    Refused {
        asked: SandboxKind,
        min: SandboxKind,
    },
    /// This agent cannot provide the backend the step asks for.
    #[error("sandbox: {kind} is not available on this agent: {why}")]
    Unavailable { kind: SandboxKind, why: String },
    /// The vm backend could not prepare or start the step's VM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// This agent's configuration lacks what a VM boots from.
    #[error("sandbox: {kind} is not available on this agent: {0}", kind = SandboxKind::Vm)]
    VmUnavailable(#[source] VmUnavailable),
    /// A wrapper backend (bubblewrap, container) could not set up.
    #[error("the {kind} sandbox could not be set up: {what}: {source}")]
    Backend {
        kind: SandboxKind,
        what: String,
        #[source]
        source: io::Error,
    },
    /// The stage's container image cannot be used.
    #[error("the stage's image {image:?} cannot be used: {why}")]
    Image { image: String, why: String },
}

/// Host directories every namespace-based sandbox hides behind an empty
/// tmpfs (when they exist): the host's temporary files, homes and runtime
/// sockets.
pub(crate) const HIDDEN: &[&str] = &["/tmp", "/var/tmp", "/root", "/home", "/run", "/dev/shm"];

/// The directories to cover with a tmpfs: [`HIDDEN`] and `extra` that
/// exist, outermost only (a hidden directory inside another is hidden
/// already, and its mount point would not exist in the outer tmpfs).
pub(crate) fn to_hide(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut hide: Vec<PathBuf> = HIDDEN
        .iter()
        .map(PathBuf::from)
        .chain(extra.iter().cloned())
        .filter(|p| p.is_dir())
        .collect();
    hide.sort();
    hide.dedup();
    let outermost: Vec<PathBuf> = hide
        .iter()
        .filter(|p| !hide.iter().any(|q| q != *p && p.starts_with(q)))
        .cloned()
        .collect();
    outermost
}

/// The files among `extra` to cover with an empty one (`/dev/null` bound
/// over them): the orchestrator's private files that live outside every
/// hidden directory (a daemon's `--secrets-file`, say).
pub(crate) fn files_to_hide(extra: &[PathBuf]) -> Vec<PathBuf> {
    let dirs = to_hide(extra);
    let mut files: Vec<PathBuf> = extra
        .iter()
        .filter(|p| p.is_file() && !dirs.iter().any(|d| p.starts_with(d)))
        .cloned()
        .collect();
    files.sort();
    files.dedup();
    files
}

/// The covers that can be made: both sides plain files (a missing or
/// replaced target is left uncovered rather than failing the command).
pub(crate) fn covers_to_make(covers: &[(PathBuf, PathBuf)]) -> Vec<(PathBuf, PathBuf)> {
    let plain = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    covers
        .iter()
        .filter(|(what, over)| plain(what) && plain(over))
        .cloned()
        .collect()
}

/// Finds `name` in the agent's PATH, as an absolute path.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Whether `path` is a file someone may execute.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Resource limits of a step's commands, each command in turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory, in MiB: what the scheduler granted the stage for its
    /// `resources.memory`; None when it declares none.
    pub memory_mb: Option<u64>,
    /// The most processes and threads at once.
    pub pids: Option<u64>,
}

/// The host directories a step's sandbox exposes.
#[derive(Debug, Clone, Default)]
pub struct Dirs {
    /// Bound writable at the same path (the worktree, the bundle).
    pub writable: Vec<PathBuf>,
    /// Bound read-only at the same path, visible even under a hidden one
    /// (the project's `.git`, which the worktree's `.git` file points to);
    /// those that do not exist are left out.
    pub readable: Vec<PathBuf>,
    /// Hidden behind an empty tmpfs, besides the fixed ones (the project's
    /// `.orchestrator`).
    pub hidden: Vec<PathBuf>,
    /// Files bound read-only over others: (what, over what). The step's
    /// git file covers the worktree's `.git` (see `orchestrator_host::git::StepGit`).
    pub covers: Vec<(PathBuf, PathBuf)>,
    /// The project's directory, which a relative container `image` is
    /// resolved against.
    pub project: Option<PathBuf>,
    /// The agent's step socket, which relays the daemon's model gateway: a
    /// `namespace` or `bubblewrap` sandbox without network reaches the
    /// gateway through it (see [`relay`]). None when the step has no
    /// gateway to reach.
    pub gateway: Option<PathBuf>,
}

fn hint(step: &str) -> &'static str {
    if step == namespace_steps::UNSHARE {
        " (does the kernel allow unprivileged user namespaces? see sysctl kernel.unprivileged_userns_clone and user.max_user_namespaces)"
    } else {
        ""
    }
}

/// Names of the setup steps that errors refer to.
pub(crate) mod namespace_steps {
    pub const UNSHARE: &str = "creating the namespaces (unshare)";
}

/// The isolation of one step's commands.
#[derive(Debug, Clone, Default)]
pub enum Sandbox {
    /// No isolation.
    #[default]
    Process,
    /// Linux namespaces; see the module documentation.
    Namespace {
        /// Host directories bound writable at the same path (the worktree,
        /// the bundle).
        writable: Vec<PathBuf>,
        /// Host directories bound read-only at the same path, visible even
        /// under a hidden one (the project's `.git`, which the worktree's
        /// `.git` file points to); those that do not exist are left out.
        readable: Vec<PathBuf>,
        /// Host directories hidden behind an empty tmpfs, besides the fixed
        /// ones (the project's `.orchestrator`).
        hidden: Vec<PathBuf>,
        /// Files bound read-only over others: (what, over what).
        covers: Vec<(PathBuf, PathBuf)>,
        /// Whether the commands keep the host's network.
        network: bool,
        /// The step socket the gateway is relayed to, without network.
        gateway: Option<PathBuf>,
        /// Each command's limits, applied through its own cgroup.
        limits: Limits,
    },
    /// A QEMU virtual machine per command; see [`vm`].
    Vm(Arc<vm::VmSandbox>),
    /// Bubblewrap; see the module documentation.
    Bubblewrap {
        /// The `bwrap` binary.
        bwrap: PathBuf,
        /// As for `Namespace`.
        writable: Vec<PathBuf>,
        /// As for `Namespace`.
        readable: Vec<PathBuf>,
        /// As for `Namespace`.
        hidden: Vec<PathBuf>,
        /// As for `Namespace`.
        covers: Vec<(PathBuf, PathBuf)>,
        /// Whether the commands keep the host's network.
        network: bool,
        /// The step socket the gateway is relayed to, without network.
        gateway: Option<PathBuf>,
        /// Each command's limits, applied through its own cgroup.
        limits: Limits,
    },
    /// An OCI container run by runc; see the module documentation.
    #[cfg(target_os = "linux")]
    Container(Box<container::Container>),
}

impl Sandbox {
    /// The sandbox `spec` asks for on an agent configured with `cfg`, for a
    /// step that sees the host's `dirs`.
    pub fn new(
        spec: &SandboxSpec,
        cfg: &SandboxConfig,
        dirs: Dirs,
        limits: Limits,
    ) -> Result<Self, SandboxError> {
        let kind = spec.kind.unwrap_or(cfg.default);
        if let Some(min) = cfg.min.filter(|m| kind.strength() < m.strength()) {
            return Err(SandboxError::Refused { asked: kind, min });
        }
        match kind {
            SandboxKind::Process => Ok(Sandbox::Process),
            SandboxKind::Namespace => Ok(Sandbox::Namespace {
                writable: dirs.writable,
                readable: dirs.readable,
                hidden: dirs.hidden,
                covers: dirs.covers,
                network: spec.network,
                gateway: dirs.gateway.filter(|_| !spec.network),
                limits,
            }),
            SandboxKind::Vm => vm::VmSandbox::new(
                &cfg.vm,
                dirs.writable,
                dirs.readable,
                dirs.covers,
                limits.memory_mb,
                spec.network,
            )
            .map(|v| Sandbox::Vm(Arc::new(v)))
            .map_err(SandboxError::VmUnavailable),
            #[cfg(target_os = "linux")]
            SandboxKind::Bubblewrap => Ok(Sandbox::Bubblewrap {
                bwrap: bubblewrap::locate(cfg.bwrap.as_deref())?,
                writable: dirs.writable,
                readable: dirs.readable,
                hidden: dirs.hidden,
                covers: dirs.covers,
                network: spec.network,
                gateway: dirs.gateway.filter(|_| !spec.network),
                limits,
            }),
            #[cfg(target_os = "linux")]
            SandboxKind::Container => Ok(Sandbox::Container(Box::new(container::Container::new(
                spec, cfg, dirs, limits,
            )?))),
            #[cfg(not(target_os = "linux"))]
            SandboxKind::Bubblewrap | SandboxKind::Container => Err(SandboxError::Unsupported),
        }
    }

    /// Which backend this is, for the manifest.
    pub fn kind(&self) -> SandboxKind {
        match self {
            Sandbox::Process => SandboxKind::Process,
            Sandbox::Namespace { .. } => SandboxKind::Namespace,
            Sandbox::Bubblewrap { .. } => SandboxKind::Bubblewrap,
            #[cfg(target_os = "linux")]
            Sandbox::Container(_) => SandboxKind::Container,
            Sandbox::Vm(_) => SandboxKind::Vm,
        }
    }

    /// The `OPENAI_BASE_URL` the step's commands reach the model gateway at
    /// when it is relayed into the sandbox (no network, a gateway socket);
    /// None when they reach the daemon directly.
    pub fn relayed_gateway(&self) -> Option<String> {
        match self {
            #[cfg(target_os = "linux")]
            Sandbox::Namespace {
                network: false,
                gateway: Some(_),
                ..
            }
            | Sandbox::Bubblewrap {
                network: false,
                gateway: Some(_),
                ..
            } => Some(gateway_url()),
            #[cfg(target_os = "linux")]
            Sandbox::Container(c) => c.relays_gateway().then(gateway_url),
            _ => None,
        }
    }

    /// Prepares what the step's commands share across commands: for `vm`,
    /// the step's disk in `state` (the stage's own directory) as a fresh copy
    /// of the last checkpoint's. Nothing for the other backends.
    pub async fn begin_step(&self, state: &Path) -> Result<(), SandboxError> {
        match self {
            Sandbox::Vm(v) => Ok(v.begin_step(state).await?),
            _ => Ok(()),
        }
    }

    /// Keeps what the step changed outside the worktree once its checkpoint
    /// is committed: for `vm`, its disk. Nothing for the other backends.
    pub async fn keep(&self) -> Result<(), SandboxError> {
        match self {
            Sandbox::Vm(v) => Ok(v.keep().await?),
            _ => Ok(()),
        }
    }

    /// Spawns `cmd` (program, args, cwd, env and stdio already set) inside
    /// this sandbox, as the leader of a new process group.
    pub fn spawn(&self, cmd: &mut Command) -> Result<GroupChild, SandboxError> {
        match self {
            Sandbox::Process => process::spawn(cmd),
            #[cfg(target_os = "linux")]
            Sandbox::Namespace {
                writable,
                readable,
                hidden,
                covers,
                network,
                gateway,
                limits,
            } => namespace::spawn(
                cmd,
                writable,
                readable,
                hidden,
                covers,
                *network,
                gateway.as_deref(),
                *limits,
            ),
            #[cfg(target_os = "linux")]
            Sandbox::Bubblewrap {
                bwrap,
                writable,
                readable,
                hidden,
                covers,
                network,
                gateway,
                limits,
            } => bubblewrap::spawn(
                cmd,
                bwrap,
                writable,
                readable,
                hidden,
                covers,
                *network,
                gateway.as_deref(),
                *limits,
            ),
            #[cfg(target_os = "linux")]
            Sandbox::Container(c) => c.spawn(cmd),
            #[cfg(not(target_os = "linux"))]
            Sandbox::Namespace { .. } | Sandbox::Bubblewrap { .. } => {
                Err(SandboxError::Unsupported)
            }
            Sandbox::Vm(v) => v.spawn(cmd),
        }
    }
}
