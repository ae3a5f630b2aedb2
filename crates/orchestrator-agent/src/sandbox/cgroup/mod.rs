//! A cgroup per command: its memory and pids limits, the kernel's count of
//! out-of-memory kills in it, and a kill that reaches every process of the
//! command, those that left its process group (`setsid`) included.
//!
//! Each command gets `<the agent's own cgroup>/orch-<agent pid>/cmd-<n>`:
//! one directory in the cgroup v2 hierarchy when it has the memory and pids
//! controllers, otherwise one in each v1 hierarchy the limits need (memory,
//! pids). The agent opens each join file before forking and the forked
//! child writes "0" to them first thing ([`join`]), so the command and
//! everything it starts are inside from their first instruction.
//!
//! The join file is v1's `tasks`, not `cgroup.procs`: moving a whole
//! process takes the kernel's global threadgroup lock for writing, which
//! waits out an RCU grace period (measured here at 7 to 17 ms a command
//! when commands are a few milliseconds apart), while moving the calling
//! thread alone does not (0.07 ms). The child of a fork has one thread, so
//! moving it moves the process. Cgroup v2 moves processes through
//! `cgroup.procs` only (its `cgroup.threads` stays inside a threaded
//! subtree), and pays the grace period.
//!
//! Where none of this can be done (no writable hierarchy, no controllers)
//! [`probe`] says why, once per process; commands then run without a cgroup
//! and the manifest says their limits were not applied.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use nix::libc;

use super::Limits;

mod discover;
use discover::{cgroup_mounts, cgroup_path, dir_of, sweep_stale};

/// Why this agent's commands get no cgroup.
#[derive(Debug, thiserror::Error)]
#[error("cgroup limits cannot be applied: {0}")]
pub struct Unavailable(#[source] ProbeError);

/// Why no parent for the commands' cgroups could be found or made.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("/proc/self/cgroup cannot be read: {0}")]
    OwnCgroup(#[source] io::Error),
    #[error("/proc/self/mountinfo: {0}")]
    Mounts(#[source] io::Error),
    #[error("no cgroup v2 hierarchy is mounted")]
    NoV2,
    /// The agent's v2 cgroup lacks the memory or the pids controller.
    #[error("cgroup v2 at {} offers no memory and pids controllers (it offers {offered:?})", .dir.display())]
    V2Controllers { dir: PathBuf, offered: String },
    /// The agent's v2 cgroup is not delegated to it (or holds its process).
    #[error("the memory and pids controllers cannot be enabled below the agent's cgroup {} ({source}); run the agent in a delegated cgroup of its own (systemd-run --scope -p Delegate=yes)", .dir.display())]
    NotDelegated {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} cannot be created: {source}", .dir.display())]
    MakeDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: enabling the controllers: {source}", .dir.display())]
    Enable {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// No v1 hierarchy has this controller.
    #[error("no cgroup v1 {0} hierarchy is mounted")]
    NoV1(&'static str),
    /// The agent is in no v1 cgroup of this controller.
    #[error("/proc/self/cgroup names no {0} cgroup")]
    NoV1Cgroup(&'static str),
    /// Neither v2 nor either v1 controller can be used.
    #[error("{v2}; {memory}; {pids}")]
    Neither {
        v2: Box<ProbeError>,
        memory: Box<ProbeError>,
        pids: Box<ProbeError>,
    },
}

/// A failure to set up or use one command's cgroup.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {what} failed: {source}")]
pub struct CgroupError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

impl From<CgroupError> for io::Error {
    fn from(e: CgroupError) -> Self {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Which cgroup interface the commands' cgroups use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// Where this agent makes its commands' cgroups.
#[derive(Debug)]
pub struct CgroupRoot {
    version: Version,
    /// v2: the agent's directory, both controllers enabled below it. v1:
    /// the agent's directory in the memory hierarchy, if there is one.
    memory: Option<PathBuf>,
    /// v1: the agent's directory in the pids hierarchy; v2: None.
    pids: Option<PathBuf>,
}

static ROOT: OnceLock<Result<CgroupRoot, Unavailable>> = OnceLock::new();
static NEXT: AtomicU64 = AtomicU64::new(0);

/// This process's parent of command cgroups, found (and made) on the first
/// call; the same answer afterwards.
pub fn probe() -> Result<&'static CgroupRoot, &'static Unavailable> {
    ROOT.get_or_init(|| CgroupRoot::find().map_err(Unavailable))
        .as_ref()
}

impl CgroupRoot {
    fn find() -> Result<Self, ProbeError> {
        let own = fs::read_to_string("/proc/self/cgroup").map_err(ProbeError::OwnCgroup)?;
        let mounts = cgroup_mounts().map_err(ProbeError::Mounts)?;
        let path_of = |controller: &str| cgroup_path(&own, controller);
        let name = format!("orch-{}", std::process::id());
        let mut why_not_v2 = ProbeError::NoV2;
        if let (Some(m), Some(path)) = (mounts.iter().find(|m| m.v2), path_of("")) {
            match Self::v2(&dir_of(m, &path), &name) {
                Ok(root) => return Ok(root),
                Err(why) => why_not_v2 = why,
            }
        }
        let v1 = |controller: &'static str| -> Result<PathBuf, ProbeError> {
            let mount = mounts
                .iter()
                .find(|m| !m.v2 && m.options.iter().any(|o| o == controller))
                .ok_or(ProbeError::NoV1(controller))?;
            let path = path_of(controller).ok_or(ProbeError::NoV1Cgroup(controller))?;
            let own = dir_of(mount, &path);
            sweep_stale(&own);
            let dir = own.join(&name);
            make_dir(&dir).map_err(|source| ProbeError::MakeDir {
                dir: dir.clone(),
                source,
            })?;
            Ok(dir)
        };
        match (v1("memory"), v1("pids")) {
            (Err(m), Err(p)) => Err(ProbeError::Neither {
                v2: Box::new(why_not_v2),
                memory: Box::new(m),
                pids: Box::new(p),
            }),
            (memory, pids) => {
                for e in [&memory, &pids]
                    .into_iter()
                    .filter_map(|r| r.as_ref().err())
                {
                    tracing::warn!("a cgroup v1 limit cannot be applied: {e}");
                }
                Ok(CgroupRoot {
                    version: Version::V1,
                    memory: memory.ok(),
                    pids: pids.ok(),
                })
            }
        }
    }

    /// The v2 parent under `own`, when v2 has both controllers and they can
    /// be enabled below the agent's cgroup.
    fn v2(own: &Path, name: &str) -> Result<Self, ProbeError> {
        let available = fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| available.split_whitespace().any(|a| a == c);
        if !has("memory") || !has("pids") {
            return Err(ProbeError::V2Controllers {
                dir: own.to_owned(),
                offered: available.trim().to_owned(),
            });
        }
        // The kernel refuses this while `own` holds processes of its own
        // (the agent): cgroup v2 keeps processes in leaves only.
        write_file(&own.join("cgroup.subtree_control"), "+memory +pids").map_err(|source| {
            ProbeError::NotDelegated {
                dir: own.to_owned(),
                source,
            }
        })?;
        sweep_stale(own);
        let dir = own.join(name);
        make_dir(&dir).map_err(|source| ProbeError::MakeDir {
            dir: dir.clone(),
            source,
        })?;
        write_file(&dir.join("cgroup.subtree_control"), "+memory +pids").map_err(|source| {
            ProbeError::Enable {
                dir: dir.clone(),
                source,
            }
        })?;
        Ok(CgroupRoot {
            version: Version::V2,
            memory: Some(dir),
            pids: None,
        })
    }

    /// The interface in use.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Which of `limits` this root can apply, and what it cannot.
    pub fn applies(&self, limits: Limits) -> (Limits, Option<String>) {
        let memory_ok = self.memory.is_some();
        let pids_ok = self.version == Version::V2 || self.pids.is_some();
        let mut missing = Vec::new();
        if limits.memory_mb.is_some() && !memory_ok {
            missing.push("memory (no v1 memory hierarchy)");
        }
        if limits.pids.is_some() && !pids_ok {
            missing.push("pids (no v1 pids hierarchy)");
        }
        let applied = Limits {
            memory_mb: limits.memory_mb.filter(|_| memory_ok),
            pids: limits.pids.filter(|_| pids_ok),
        };
        let note = (!missing.is_empty()).then(|| format!("not applied: {}", missing.join(", ")));
        (applied, note)
    }

    /// Makes a fresh cgroup for one command with `limits`, its
    /// join files open for [`join`].
    pub fn create(&self, limits: Limits) -> Result<CommandCgroup, CgroupError> {
        let name = format!("cmd-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut cg = CommandCgroup {
            version: self.version,
            dirs: Vec::new(),
            memory: None,
            procs: Vec::new(),
            memory_limit_mb: None,
            removed: false,
        };
        if let Some(parent) = &self.memory {
            let dir = parent.join(&name);
            make_dir(&dir).map_err(err("creating the directory", &dir))?;
            cg.dirs.push(dir.clone());
            cg.memory = Some(dir.clone());
            if self.version == Version::V1 {
                // A v1 cgroup inherits its parent's oom_kill_disable: with
                // the killer off, a command at its limit would hang instead
                // of being killed.
                let path = dir.join("memory.oom_control");
                write_file(&path, "0").map_err(err("enabling the out-of-memory killer", &path))?;
            }
            if let Some(mb) = limits.memory_mb {
                let bytes = (mb.saturating_mul(1024 * 1024)).to_string();
                let file = match self.version {
                    Version::V1 => "memory.limit_in_bytes",
                    Version::V2 => "memory.max",
                };
                let path = dir.join(file);
                write_file(&path, &bytes).map_err(err("setting the memory limit", &path))?;
                // No swap beyond the limit either; the file exists only
                // where swap accounting is on.
                let swap = match self.version {
                    Version::V1 => "memory.memsw.limit_in_bytes",
                    Version::V2 => "memory.swap.max",
                };
                let swap_value = if self.version == Version::V1 {
                    bytes.as_str()
                } else {
                    "0"
                };
                let _ = write_file(&dir.join(swap), swap_value);
                cg.memory_limit_mb = Some(mb);
            }
        }
        let pids_dir = match self.version {
            Version::V2 => cg.memory.clone(),
            Version::V1 => match &self.pids {
                Some(parent) => {
                    let dir = parent.join(&name);
                    make_dir(&dir).map_err(err("creating the directory", &dir))?;
                    cg.dirs.push(dir.clone());
                    Some(dir)
                }
                None => None,
            },
        };
        if let (Some(dir), Some(max)) = (&pids_dir, limits.pids) {
            let path = dir.join("pids.max");
            write_file(&path, &max.to_string()).map_err(err("setting pids.max", &path))?;
        }
        let join = match self.version {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.procs",
        };
        for dir in &cg.dirs {
            let path = dir.join(join);
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(err("opening the cgroup's join file", &path))?;
            cg.procs.push(OwnedFd::from(file));
        }
        Ok(cg)
    }
}

fn make_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// Moves the calling process into the cgroups whose join files (v1
/// `tasks`, v2 `cgroup.procs`) are open as `fds`; with `tasks`, the caller
/// must have one thread (a forked child does). For the forked child before
/// exec: async-signal-safe.
///
/// # Safety
///
/// `fds` must be open descriptors of join files.
pub unsafe fn join(fds: &[RawFd]) -> io::Result<()> {
    unsafe {
        for &fd in fds {
            // "0" means the writer itself.
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// How often the cgroup is looked at while it empties.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// How long removal keeps trying while dying processes remain.
const REMOVE_FOR: Duration = Duration::from_secs(2);

/// One command's cgroup. Dropping it kills what is inside and removes it.
#[derive(Debug)]
pub struct CommandCgroup {
    version: Version,
    /// Every directory made, one per hierarchy.
    dirs: Vec<PathBuf>,
    /// The one that counts memory, when there is one.
    memory: Option<PathBuf>,
    /// The join file of each of `dirs`, open until the command has started.
    procs: Vec<OwnedFd>,
    memory_limit_mb: Option<u64>,
    removed: bool,
}

impl CommandCgroup {
    /// The descriptors a forked child passes to [`join`].
    pub fn join_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Closes the agent's copies of the join descriptors, once the command
    /// has started.
    pub fn started(&mut self) {
        self.procs.clear();
    }

    /// The cgroup's directories, one per hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The memory limit set, in MiB.
    pub fn memory_limit_mb(&self) -> Option<u64> {
        self.memory_limit_mb
    }

    /// How many processes the kernel's out-of-memory killer took from this
    /// cgroup.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory else { return 0 };
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let text = fs::read_to_string(dir.join(file)).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether the cgroup's own memory limit was hit (rather than the
    /// machine running out): v1 counts failed charges at the limit in
    /// `memory.failcnt`, v2 the limit's out-of-memory events as `oom`.
    pub fn hit_memory_limit(&self) -> bool {
        let Some(dir) = &self.memory else {
            return false;
        };
        let count = match self.version {
            Version::V1 => fs::read_to_string(dir.join("memory.failcnt"))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok()),
            Version::V2 => fs::read_to_string(dir.join("memory.events"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("oom "))
                .and_then(|n| n.trim().parse().ok()),
        };
        self.memory_limit_mb.is_some() && count.unwrap_or(0) > 0
    }

    /// The processes in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        let Some(dir) = self.dirs.first() else {
            return Vec::new();
        };
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// SIGKILLs every process in the cgroup, once; true when there was one.
    /// A process forked meanwhile is caught by the next call.
    pub fn kill_all(&self) -> bool {
        if self.version == Version::V2 {
            if let Some(dir) = &self.memory {
                if write_file(&dir.join("cgroup.kill"), "1").is_ok() {
                    return !self.pids().is_empty();
                }
            }
        }
        let pids = self.pids();
        for &pid in &pids {
            // SAFETY: kill(2) with a pid read from the cgroup; a pid that
            // died meanwhile answers ESRCH.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        !pids.is_empty()
    }

    /// Kills what is left and removes the cgroup, retrying while dying
    /// processes keep it busy.
    pub async fn remove(mut self) {
        let until = tokio::time::Instant::now() + REMOVE_FOR;
        while !self.try_remove() && tokio::time::Instant::now() < until {
            tokio::time::sleep(PROBE_EVERY).await;
        }
        self.give_up();
    }

    /// One round of killing and removing; true once every directory is gone.
    fn try_remove(&mut self) -> bool {
        self.kill_all();
        self.dirs
            .retain(|d| fs::remove_dir(d).is_err_and(|e| e.kind() != io::ErrorKind::NotFound));
        self.dirs.is_empty()
    }

    fn give_up(&mut self) {
        self.removed = true;
        for d in &self.dirs {
            tracing::warn!(cgroup = %d.display(), "a command's cgroup could not be removed: processes remain in it");
        }
    }
}

impl Drop for CommandCgroup {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // Dropped without `remove` (the agent tearing down): a short
        // blocking attempt, since nothing may outlive the step.
        for _ in 0..40 {
            if self.try_remove() {
                return;
            }
            std::thread::sleep(PROBE_EVERY);
        }
        self.give_up();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_a_root_lacks_are_named() {
        let root = CgroupRoot {
            version: Version::V1,
            memory: None,
            pids: Some(PathBuf::from("/nowhere")),
        };
        let (applied, note) = root.applies(Limits {
            memory_mb: Some(64),
            pids: Some(10),
        });
        assert_eq!(
            applied,
            Limits {
                memory_mb: None,
                pids: Some(10)
            }
        );
        assert_eq!(
            note.as_deref(),
            Some("not applied: memory (no v1 memory hierarchy)")
        );
    }
}
