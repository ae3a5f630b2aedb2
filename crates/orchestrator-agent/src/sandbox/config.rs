//! The agent's side of choosing a sandbox: its default backend for stages
//! that choose none, the weakest one it agrees to run, and what each backend
//! needs from the machine.

use std::path::PathBuf;

use orchestrator_core::spec::SandboxKind;

use super::VmConfig;

/// How an agent isolates the steps it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The backend of a step whose stage, project and workflow choose none.
    pub default: SandboxKind,
    /// The weakest backend this agent runs: a step asking for a weaker one
    /// fails with an error naming both, whatever its stage says.
    pub min: Option<SandboxKind>,
    /// The most processes and threads one command may have at once (a fork
    /// bomb stops there); None: no limit of the agent's own.
    pub pids_max: Option<u64>,
    /// What the vm backend boots.
    pub vm: VmConfig,
    /// The `bwrap` binary of the bubblewrap backend; None: `bwrap` in PATH.
    pub bwrap: Option<PathBuf>,
    /// The container backend's image for stages that name none: a root
    /// file system directory or a tarball of one.
    pub container_image: Option<PathBuf>,
    /// The agent's directory for backend state (runc's state, container
    /// bundles, extracted images); the container backend needs it.
    pub work_dir: Option<PathBuf>,
    /// The most bytes kept of each command's stdout and of its stderr: past
    /// it the middle is cut, the first and last halves kept (0: no cap).
    pub log_cap: u64,
    /// This agent's private directories (its data directory, its daemon's):
    /// hidden from every namespace-based sandbox, besides those registered
    /// on the machine (see [`super::private`]).
    pub private: Vec<PathBuf>,
    /// Host paths under which a stage's `mounts:` may name what it reads
    /// (`orch agent --allow-mount`); none by default.
    pub allow_mounts: Vec<PathBuf>,
    /// The most bytes one saved cache entry holds (`orch agent
    /// --cache-max`); a larger one is not saved. 0: no cache is saved.
    pub cache_max: u64,
}

/// The default of [`SandboxConfig::pids_max`].
pub const DEFAULT_PIDS_MAX: u64 = 4096;

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            default: platform_default(),
            min: None,
            pids_max: Some(DEFAULT_PIDS_MAX),
            vm: VmConfig::default(),
            bwrap: None,
            container_image: None,
            work_dir: None,
            log_cap: crate::step::DEFAULT_LOG_CAP,
            private: Vec::new(),
            allow_mounts: Vec::new(),
            cache_max: crate::cache::DEFAULT_CACHE_MAX,
        }
    }
}

/// `namespace` on Linux, `process` elsewhere.
pub fn platform_default() -> SandboxKind {
    if cfg!(target_os = "linux") {
        SandboxKind::Namespace
    } else {
        SandboxKind::Process
    }
}

impl SandboxConfig {
    /// Where the agent makes the directory of its step socket (`orch ask`):
    /// a directory of this user's under the system's temporary directory.
    pub fn socket_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("orch-{}", nix::unistd::getuid()))
    }
}
