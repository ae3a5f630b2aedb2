//! The container sandbox: each command runs as `runc run` (runc 1.1 or
//! later) in an OCI container of its own.
//!
//! The container's root file system is the stage's `image` (or the agent's
//! `--container-image`), read-only: a directory used in place (runc creates
//! the mount points of the bound directories inside it, as empty
//! directories), or a `.tar`, `.tar.gz` or `.tgz` extracted once into the
//! agent's work directory, keyed by the tarball's sha256 (see [`image`]).
//! The run's worktree and the step's bundle are bound writable at their own
//! paths, the project's `.git` read-only; `/tmp` is a fresh tmpfs; `/proc`,
//! `/dev` and `/sys` are the container's own. New pid, mount, ipc, uts,
//! cgroup and (unless the stage allows `network`) network namespaces; runc's
//! default capability set; no new privileges; RLIMIT_NOFILE and
//! RLIMIT_NPROC no higher than the agent's own; the step's memory and pids
//! limits in the container's cgroup (see [`oci`]). Without network but with
//! the model gateway, runc is given no network namespace to make: it runs in
//! one made for it with the gateway's relay (see [`super::relay`]), which
//! the container shares.
//!
//! `runc run` leads the command's process group and passes its stdio (the
//! log files) to the command, whose exit status becomes its own. The
//! container's processes are not in that group: runc puts its init in a new
//! session, and killing `runc run` leaves the container running. So every
//! command has a watcher thread that waits (on a pidfd) for `runc run` to
//! end, however it ends, and then runs `runc delete --force`, which kills
//! whatever is left in the container and removes its state, and removes the
//! command's bundle directory. Container ids carry the agent's pid, so what
//! an agent killed before its watchers ran leaves behind is removed by the
//! next agent using the same work directory.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::libc;
use orchestrator_core::api::SandboxSpec;
use orchestrator_core::spec::SandboxKind;
use tokio::process::Command;

use super::relay::Relay;
use super::{wrap, Dirs, Limits, SandboxConfig, SandboxError};
use crate::exec::GroupChild;

mod image;
mod oci;

/// A step's container setup, shared by its commands.
#[derive(Debug, Clone)]
pub struct Container {
    runc: PathBuf,
    rootfs: PathBuf,
    /// runc's `--root`: the state of this agent's containers.
    state: PathBuf,
    /// Where each command's bundle directory is made.
    bundles: PathBuf,
    writable: Vec<PathBuf>,
    readable: Vec<PathBuf>,
    /// Files bound read-only over others: (what, over what).
    covers: Vec<(PathBuf, PathBuf)>,
    network: bool,
    /// The step socket the model gateway is relayed to, without network.
    gateway: Option<PathBuf>,
    limits: Limits,
}

fn unavailable(why: String) -> SandboxError {
    SandboxError::Unavailable {
        kind: SandboxKind::Container,
        why,
    }
}

fn setup(what: String, source: io::Error) -> SandboxError {
    SandboxError::Backend {
        kind: SandboxKind::Container,
        what,
        source,
    }
}

impl Container {
    /// The container `spec` asks for; extracts a tarball image on first use.
    pub fn new(
        spec: &SandboxSpec,
        cfg: &SandboxConfig,
        dirs: Dirs,
        limits: Limits,
    ) -> Result<Self, SandboxError> {
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            return Err(unavailable(format!(
                "runc runs the containers as root here (no rootless setup), and the agent runs as uid {euid}"
            )));
        }
        let runc = super::which("runc").ok_or_else(|| {
            unavailable("no runc in PATH; install runc (apt-get install runc)".into())
        })?;
        let work = cfg.work_dir.as_deref().ok_or_else(|| {
            unavailable("the agent has no work directory for container state".into())
        })?;
        let (image, shown) = match (&spec.image, &cfg.container_image) {
            (Some(i), _) => (PathBuf::from(i), i.clone()),
            (None, Some(i)) => (
                i.clone(),
                format!("{} (orch agent --container-image)", i.display()),
            ),
            (None, None) => {
                return Err(unavailable(
                    "the stage names no image and the agent has no default; set the stage's image or pass orch agent --container-image PATH".into(),
                ))
            }
        };
        let rootfs = image::rootfs(
            &image,
            &shown,
            dirs.project.as_deref(),
            &work.join("images"),
        )?;
        let state = work.join("runc");
        let bundles = work.join("bundles");
        for dir in [&state, &bundles] {
            fs::create_dir_all(dir).map_err(|e| setup(format!("creating {}", dir.display()), e))?;
        }
        sweep_once(&runc, &state, &bundles, &work.join("images"));
        Ok(Container {
            runc,
            rootfs,
            state,
            bundles,
            writable: dirs.writable,
            readable: dirs.readable,
            covers: dirs.covers,
            network: spec.network,
            gateway: dirs.gateway.filter(|_| !spec.network),
            limits,
        })
    }

    /// Whether the commands reach the model gateway through the relay.
    pub fn relays_gateway(&self) -> bool {
        self.gateway.is_some()
    }

    /// What runc enforces in each command's cgroup, for the manifest.
    pub fn applied(&self) -> orchestrator_core::api::AppliedLimits {
        // runc uses cgroup v2 exactly when /sys/fs/cgroup is the unified
        // hierarchy, whose root alone has cgroup.controllers.
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        orchestrator_core::api::AppliedLimits {
            memory_mb: self.limits.memory_mb,
            pids: self.limits.pids,
            cgroup: Some(if v2 { "v2" } else { "v1" }.to_owned()),
            landlock: false,
            note: None,
        }
    }

    /// Spawns `cmd` in a new container; see the module documentation.
    pub fn spawn(&self, cmd: &mut Command) -> Result<GroupChild, SandboxError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "orch-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let bundle = self.bundles.join(&id);
        fs::create_dir(&bundle)
            .map_err(|e| setup(format!("creating the bundle {}", bundle.display()), e))?;
        let removing = |e: SandboxError| {
            let _ = fs::remove_dir_all(&bundle);
            e
        };
        let relay = self
            .gateway
            .as_deref()
            .map(Relay::new)
            .transpose()
            .map_err(removing)?;
        let args = wrap::command_line(cmd);
        let env = wrap::command_env(cmd);
        let cwd = cmd.as_std().get_current_dir().map(Path::to_owned);
        let plan = oci::Plan {
            rootfs: &self.rootfs,
            args: &args,
            env: &env,
            cwd: cwd.as_deref(),
            writable: &self.writable,
            readable: &self.readable,
            covers: &self.covers,
            // With the relay, runc makes no network namespace: the
            // container shares runc's, made with the relay in it.
            network: self.network || relay.is_some(),
            limits: self.limits,
            cgroup: format!("/orch/{id}"),
        };
        let config = bundle.join("config.json");
        let json = plan
            .config()
            .map_err(|oci::NotUtf8(v)| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{v:?} is not UTF-8, which an OCI config.json must be"),
                )
            })
            .and_then(|c| serde_json::to_vec_pretty(&c).map_err(io::Error::other));
        json.and_then(|j| fs::write(&config, j))
            .map_err(|e| removing(setup(format!("writing {}", config.display()), e)))?;
        let argv: Vec<OsString> = vec![
            "runc".into(),
            "--root".into(),
            self.state.clone().into(),
            "run".into(),
            "--bundle".into(),
            bundle.clone().into(),
            id.clone().into(),
        ];
        let runc_env = [("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())];
        let child = wrap::spawn(
            SandboxKind::Container,
            cmd,
            &self.runc,
            &argv,
            &runc_env,
            Vec::new(),
            relay,
        )
        .map_err(removing)?;
        let leader = child.pgid();
        let janitor = Janitor {
            runc: self.runc.clone(),
            state: self.state.clone(),
            id,
            bundle,
        };
        let watched = std::thread::Builder::new()
            .name("runc-janitor".into())
            .spawn(move || janitor.after(leader));
        if let Err(e) = watched {
            // Dropping the child kills runc; the container would be left.
            return Err(setup("starting the container's watcher thread".into(), e));
        }
        Ok(child)
    }
}

/// Removes a command's container and bundle once `runc run` has ended.
struct Janitor {
    runc: PathBuf,
    state: PathBuf,
    id: String,
    bundle: PathBuf,
}

impl Janitor {
    fn after(self, leader: i32) {
        wait_for_exit(leader);
        self.clean();
    }

    fn clean(self) {
        let deleted = std::process::Command::new(&self.runc)
            .arg("--root")
            .arg(&self.state)
            .args(["delete", "--force", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = deleted {
            tracing::warn!(container = %self.id, error = %e, "runc delete could not run");
        }
        match fs::remove_dir_all(&self.bundle) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(bundle = %self.bundle.display(), error = %e, "could not remove the container's bundle");
            }
            _ => {}
        }
    }
}

/// Once per agent process and work directory, in the background: removes
/// what an agent that is gone left behind (it was killed before its
/// watcher threads ran): containers and bundles named after its pid, and
/// half-extracted images.
fn sweep_once(runc: &Path, state: &Path, bundles: &Path, images: &Path) {
    static SWEPT: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    // A panic elsewhere while holding the lock leaves a usable set.
    if !SWEPT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(state.to_owned())
    {
        return;
    }
    let (runc, state, bundles, images) = (
        runc.to_owned(),
        state.to_owned(),
        bundles.to_owned(),
        images.to_owned(),
    );
    let swept = std::thread::Builder::new()
        .name("runc-sweep".into())
        .spawn(move || sweep(&runc, &state, &bundles, &images));
    if let Err(e) = swept {
        tracing::warn!(error = %e, "could not start sweeping old containers");
    }
}

fn names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `name` is `<prefix><pid>-<n>` of a process that no longer runs.
fn left_by_the_dead(name: &str, prefix: &str) -> bool {
    let pid = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.split('-').next())
        .and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

/// Blocks until process `pid` (the agent's unreaped child, so the pid is
/// not reused meanwhile) has ended.
fn wait_for_exit(pid: i32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if let Ok(fd) = libc::c_int::try_from(fd) {
        if fd >= 0 {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls the descriptor just opened, then closes it.
            unsafe {
                while libc::poll(&mut pfd, 1, -1) < 0
                    && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
                {
                }
                libc::close(fd);
            }
            return;
        }
    }
    // No pidfd (Linux before 5.3): poll. The pid stays a zombie until the
    // agent reaps it, and reaping comes only after the exit.
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() && !is_zombie(pid) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// Removes what agents that are gone left: their containers (killed by
/// `runc delete --force`), bundles and half-extracted images.
fn sweep(runc: &Path, state: &Path, bundles: &Path, images: &Path) {
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for dir in [state, bundles] {
        ids.extend(
            names(dir)
                .into_iter()
                .filter(|n| left_by_the_dead(n, "orch-")),
        );
    }
    for id in ids {
        Janitor {
            runc: runc.to_owned(),
            state: state.to_owned(),
            bundle: bundles.join(&id),
            id,
        }
        .clean();
    }
    for name in names(images) {
        if left_by_the_dead(&name, ".extracting-") {
            let _ = fs::remove_dir_all(images.join(name));
        }
    }
}

/// What a dead agent's containers left under this agent's work directory,
/// removed now: an agent calls it when it starts, before it claims
/// anything. Does nothing where containers cannot run.
pub fn sweep_at_start(cfg: &SandboxConfig) {
    let (Some(work), Some(runc)) = (cfg.work_dir.as_deref(), super::which("runc")) else {
        return;
    };
    if !nix::unistd::geteuid().is_root() || !work.join("runc").is_dir() {
        return;
    }
    sweep(
        &runc,
        &work.join("runc"),
        &work.join("bundles"),
        &work.join("images"),
    );
}
