//! No attempt outlives its agent.
//!
//! A running command is the agent's child. Two things make sure that none
//! of its processes survives the agent, however the agent ends:
//!
//! - **Parent-death signal.** Every process the agent spawns for a step (a
//!   `process` command, the namespace sandbox's reaper, `bwrap`, `runc`,
//!   QEMU) asks the kernel for SIGKILL when the agent dies
//!   ([`die_with_agent`], between fork and exec). In the namespace and
//!   bubblewrap sandboxes that death takes the whole pid namespace down.
//! - **Records, and a sweep at start.** What the signal does not reach (a
//!   `process` command's background children, a container, a cgroup's
//!   strays) is found again: every command's process group is recorded in
//!   the agent's work directory (`running/<pgid>`, with the leader's start
//!   time) while it runs, and an agent that starts kills every recorded
//!   group, what is left in the cgroups of agents that are gone, and their
//!   containers, before it claims anything ([`kill_leftovers`]). So a stage
//!   is never handed to a new attempt on this machine while an earlier
//!   attempt may still be writing its worktree.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where this agent records its running commands' groups, once set.
static RECORDS: OnceLock<PathBuf> = OnceLock::new();

/// How long a sweep waits for killed processes to be gone.
const GONE_WITHIN: Duration = Duration::from_secs(5);

/// Asks for SIGKILL when the agent (`agent`, its pid before the fork) dies,
/// and dies at once when it is already gone. Call only between fork and
/// exec: it makes async-signal-safe system calls only.
///
/// # Safety
/// Must run in a forked child before exec.
pub unsafe fn die_with_agent(agent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe system calls.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        // The agent died between the fork and the prctl: nobody would ever
        // send the signal.
        if libc::getppid() != agent {
            libc::_exit(137);
        }
    }
    Ok(())
}

/// The agent's own pid, taken before a fork for [`die_with_agent`].
pub fn agent_pid() -> libc::pid_t {
    // A pid always fits pid_t.
    std::process::id() as libc::pid_t
}

/// Records running commands' groups under `dir` from now on (the first
/// directory set wins: one agent per process).
pub fn record_in(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let _ = RECORDS.set(dir.to_owned());
    Ok(())
}

/// A running command's group, recorded until dropped.
#[derive(Debug)]
pub struct Record(Option<PathBuf>);

impl Record {
    /// Records group `pgid` (its leader's pid), when records are kept.
    pub fn new(pgid: i32) -> Self {
        let Some(dir) = RECORDS.get() else {
            return Record(None);
        };
        let Some(start) = start_time(pgid) else {
            return Record(None);
        };
        let path = dir.join(pgid.to_string());
        match fs::write(&path, format!("{start}\n")) {
            Ok(()) => Record(Some(path)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot record a running command");
                Record(None)
            }
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// A process's start time, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`); None when it is gone.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces and parentheses.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Process group and state of `pid`, from `/proc/PID/stat`.
fn group_and_state(pid: i32) -> Option<(i32, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let pgid = rest.nth(1)?.parse().ok()?;
    Some((pgid, state))
}

/// Live processes of group `pgid` started no earlier than `since`.
fn members(pgid: i32, since: u64) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            group_and_state(pid).is_some_and(|(g, s)| g == pgid && s != 'Z')
                && start_time(pid).is_some_and(|t| t >= since)
        })
        .collect()
}

/// Kills what an earlier agent left behind; see the module documentation.
/// `records` is the directory [`record_in`] is given. Returns how many
/// processes it killed.
pub fn kill_leftovers(records: &Path) -> usize {
    let mut killed = 0;
    let Ok(entries) = fs::read_dir(records) else {
        return 0;
    };
    let mut pending = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let pgid = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok());
        let since = fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        if let (Some(pgid), Some(since)) = (pgid, since) {
            for pid in members(pgid, since) {
                if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                    killed += 1;
                    pending.push(pid);
                }
            }
        }
        let _ = fs::remove_file(&path);
    }
    let deadline = Instant::now() + GONE_WITHIN;
    while Instant::now() < deadline
        && pending
            .iter()
            .any(|&p| group_and_state(p).is_some_and(|(_, s)| s != 'Z'))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    killed
}
