//! No attempt outlives its agent.
//!
//! A running command is the agent's child. These make sure that none
//! of its processes survives the agent, however the agent ends:
//!
//! - **Parent-death signal.** Every sandbox process the agent spawns for a
//!   step (the namespace sandbox's reaper, `bwrap`, `runc`, QEMU) asks the
//!   kernel for SIGKILL when the agent dies ([`die_with_agent`], between
//!   fork and exec). In the namespace and bubblewrap sandboxes that death
//!   takes the whole pid namespace down.
//! - **The watchdog.** A small process forked once when the agent starts
//!   ([`start_watchdog`]) is told every command's process group as it
//!   starts and ends, over a pipe only the agent holds the writing end of.
//!   When the agent dies the pipe ends, and the watchdog SIGKILLs every
//!   group still running, background children of a `process` command
//!   included. A `process` command is spawned without code between fork and
//!   exec, so it keeps the cheap `posix_spawn` path; the watchdog costs one
//!   8-byte write per command start and end.
//! - **Records, and a sweep at start.** What the signal does not reach (a
//!   `process` command's background children, a container, a cgroup's
//!   strays) is found again: every command's process group is recorded in
//!   the agent's work directory (`running/<agent pid>-<its start
//!   time>/<pgid>`, with the leader's start time) while it runs, and an
//!   agent that starts kills the recorded groups of every agent that is
//!   gone (never those of a live agent sharing the data directory), what is
//!   left in their cgroups, and their containers, before it claims anything
//!   ([`kill_leftovers`]). So a stage
//!   is never handed to a new attempt on this machine while an earlier
//!   attempt may still be writing its worktree.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where this agent records its running commands' groups, once set.
static RECORDS: OnceLock<PathBuf> = OnceLock::new();

/// The writing end of the watchdog's pipe, once it runs.
static WATCHDOG: OnceLock<OwnedFd> = OnceLock::new();

/// The most groups the watchdog keeps at once (a fixed array: it may not
/// allocate after the fork).
const WATCHED_MAX: usize = 16_384;

/// Starts the watchdog (once per process); see the module documentation.
pub fn start_watchdog() -> io::Result<()> {
    if WATCHDOG.get().is_some() {
        return Ok(());
    }
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    // SAFETY: the child runs only async-signal-safe system calls on a
    // fixed-size stack array (see `watch`) and never returns.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            drop(write);
            // SAFETY: in the forked child; `watch` never returns.
            unsafe { watch(read.as_raw_fd()) }
        }
        nix::unistd::ForkResult::Parent { .. } => {
            drop(read);
            // The agent never waits on the watchdog: a full pipe fails the
            // write instead.
            nix::fcntl::fcntl(
                &write,
                nix::fcntl::FcntlArg::F_SETFL(
                    nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
                ),
            )
            .map_err(io::Error::from)?;
            let _ = WATCHDOG.set(write);
            Ok(())
        }
    }
}

/// The watchdog's loop: reads (op, pgid) records until the pipe ends, then
/// kills every group it holds and exits.
///
/// # Safety
/// Only in a child just forked: async-signal-safe calls, no allocation.
unsafe fn watch(fd: RawFd) -> ! {
    // SAFETY: raw system calls on the child's own descriptors and stack.
    unsafe {
        // The fork copied every descriptor the agent had open, pipes whose
        // readers wait for their end included (a `git` whose output is
        // being read, a sandbox's setup report): keep only the watchdog's
        // own pipe, as stdin, and close everything else at once.
        let fd = if libc::dup2(fd, 0) == 0 { 0 } else { fd };
        if fd != 0 || libc::syscall(libc::SYS_close_range, 1u32, u32::MAX, 0u32) != 0 {
            for other in 1..65_536 {
                if other != fd {
                    libc::close(other);
                }
            }
        }
        // Out of the agent's group and deaf to its terminal's signals, so
        // that a Ctrl-C to the agent cannot take the watchdog first.
        libc::setpgid(0, 0);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let mut groups = [0 as libc::pid_t; WATCHED_MAX];
        let mut n = 0usize;
        let mut rec = [0u8; 8];
        loop {
            let mut got = 0usize;
            while got < rec.len() {
                let r = libc::read(fd, rec.as_mut_ptr().add(got).cast(), rec.len() - got);
                if r > 0 {
                    got += r as usize;
                } else if r < 0 && nix::errno::Errno::last_raw() == libc::EINTR {
                    continue;
                } else {
                    break;
                }
            }
            if got < rec.len() {
                break;
            }
            let op = i32::from_ne_bytes([rec[0], rec[1], rec[2], rec[3]]);
            let pgid = i32::from_ne_bytes([rec[4], rec[5], rec[6], rec[7]]);
            if op == 1 && n < WATCHED_MAX {
                groups[n] = pgid;
                n += 1;
            } else if op == 2 {
                if let Some(i) = groups[..n].iter().position(|&g| g == pgid) {
                    n -= 1;
                    groups[i] = groups[n];
                }
            }
        }
        for &g in &groups[..n] {
            if g > 1 {
                libc::kill(-g, libc::SIGKILL);
            }
        }
        libc::_exit(0)
    }
}

/// Tells the watchdog that group `pgid` started (`op` 1) or ended (2).
fn tell_watchdog(op: i32, pgid: i32) {
    let Some(fd) = WATCHDOG.get() else {
        return;
    };
    let mut rec = [0u8; 8];
    rec[..4].copy_from_slice(&op.to_ne_bytes());
    rec[4..].copy_from_slice(&pgid.to_ne_bytes());
    // Eight bytes are written whole (under PIPE_BUF); a full pipe (a stuck
    // watchdog) must not block the agent.
    if let Err(e) = nix::unistd::write(fd, &rec) {
        tracing::warn!(error = %e, "cannot tell the watchdog about a command");
    }
}

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
    // A directory of this process's own (`<pid>-<start time>`): another
    // agent sharing the data directory tells it from a dead one's.
    let me = std::process::id() as i32;
    let own = dir.join(format!("{me}-{}", start_time(me).unwrap_or(0)));
    fs::create_dir_all(&own)?;
    let _ = RECORDS.set(own);
    Ok(())
}

/// Whether the agent that owns records directory `name` (`<pid>-<start>`)
/// is still running: a live process with that pid and start time.
fn owner_alive(name: &str) -> bool {
    let Some((pid, start)) = name.split_once('-') else {
        return false;
    };
    match (pid.parse::<i32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => start_time(pid) == Some(start),
        _ => false,
    }
}

/// A running command's group, recorded (and watched) until dropped.
#[derive(Debug)]
pub struct Record {
    pgid: i32,
    file: Option<PathBuf>,
}

impl Record {
    /// Records group `pgid` (its leader's pid) with the watchdog and, when
    /// records are kept, in the work directory.
    pub fn new(pgid: i32) -> Self {
        tell_watchdog(1, pgid);
        let file = RECORDS.get().and_then(|dir| {
            let start = start_time(pgid)?;
            let path = dir.join(pgid.to_string());
            match fs::write(&path, format!("{start}\n")) {
                Ok(()) => Some(path),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot record a running command");
                    None
                }
            }
        });
        Record { pgid, file }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        tell_watchdog(2, self.pgid);
        if let Some(path) = self.file.take() {
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
    let Ok(owners) = fs::read_dir(records) else {
        return 0;
    };
    let mut pending = Vec::new();
    for owner in owners.flatten() {
        let name = owner.file_name().to_string_lossy().into_owned();
        // Another agent, alive, sharing this data directory: its commands
        // are its own.
        if owner_alive(&name) {
            continue;
        }
        let dir = owner.path();
        let Ok(entries) = fs::read_dir(&dir) else {
            let _ = fs::remove_file(&dir);
            continue;
        };
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
        let _ = fs::remove_dir(&dir);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_watchdog_keeps_no_pipe_of_the_agents_open() {
        // A pipe whose reader waits for its end, open while the watchdog forks.
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        start_watchdog().unwrap();
        drop(write);
        let mut reader = std::fs::File::from(read);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = reader.read_to_end(&mut buf);
            let _ = tx.send(());
        });
        // The end comes at once: the watchdog closed its copy.
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the watchdog holds a copy of the agent's pipe");
    }

    #[test]
    fn a_live_agents_records_are_left_alone_and_a_dead_ones_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let me = std::process::id() as i32;
        let live = tmp.path().join(format!("{me}-{}", start_time(me).unwrap()));
        let dead = tmp.path().join("999999999-1");
        for d in [&live, &dead] {
            fs::create_dir_all(d).unwrap();
            // A group that does not exist: nothing to kill, only to forget.
            fs::write(d.join("999999998"), "0\n").unwrap();
        }
        assert_eq!(kill_leftovers(tmp.path()), 0);
        assert!(
            live.join("999999998").exists(),
            "a live agent's record was swept"
        );
        assert!(!dead.exists(), "a dead agent's records were kept");
    }

    #[test]
    fn start_times_and_groups_are_read_from_proc() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        let (pgid, state) = group_and_state(me).unwrap();
        assert_eq!(pgid, nix::unistd::getpgrp().as_raw());
        assert_ne!(state, 'Z');
    }
}
