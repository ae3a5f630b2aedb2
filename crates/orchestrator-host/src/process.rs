//! Processes on this machine: signalling a whole process group, waiting for
//! it to empty, and stopping one child.
//!
//! A command is rarely one process (`sh -c`, test runners, servers start
//! children of their own), so what is started leads its own process group and
//! is stopped by signalling the group. Zombies hold nothing and cannot be
//! killed, so a group whose members are all zombies counts as empty.
//!
//! What it is not: a process runner. Spawning a step's commands, their
//! sandboxes and cgroups is the agent's (`orchestrator_agent::exec`).

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::time::Instant;

/// How often the group is probed while waiting for it to empty (only on the
/// kill path, never while a command runs normally).
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// How long to wait for the group to vanish after SIGKILL.
const AFTER_KILL: Duration = Duration::from_secs(1);

/// Sends `sig` to the group; true when the group still had members.
pub fn signal_group(pgid: Pid, sig: Signal) -> bool {
    match killpg(pgid, sig) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(e) => {
            tracing::warn!(pgid = pgid.as_raw(), signal = %sig, error = %e, "could not signal process group");
            false
        }
    }
}

/// Waits until the group has no live member or `deadline` passes, then
/// SIGKILLs whatever is left and waits briefly for it to go.
pub async fn drain_group(pgid: Pid, deadline: Instant) {
    while group_alive(pgid) {
        if Instant::now() >= deadline {
            signal_group(pgid, Signal::SIGKILL);
            let gone_by = Instant::now() + AFTER_KILL;
            while group_alive(pgid) && Instant::now() < gone_by {
                tokio::time::sleep(PROBE_EVERY).await;
            }
            return;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Whether the group has a member that is not a zombie. Orphaned members are
/// reaped by init, which may be slow (or never happen in some containers), so
/// zombies, which hold nothing and cannot be killed, are not counted.
pub fn group_alive(pgid: Pid) -> bool {
    if killpg(pgid, None::<Signal>).is_err() {
        return false;
    }
    match live_members(pgid.as_raw()) {
        Some(n) => n > 0,
        // No /proc to look into: trust the signal probe.
        None => true,
    }
}

/// Counts the non-zombie processes in group `pgid` from `/proc`; None when
/// `/proc` cannot be read.
pub fn live_members(pgid: i32) -> Option<usize> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let mut n = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Format: "pid (comm) state ppid pgrp ...": comm may hold spaces and
        // parentheses, so parse from the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        if pgrp == Some(pgid) && !matches!(state, Some("Z" | "X")) {
            n += 1;
        }
    }
    Some(n)
}

/// Stops one child (a server): SIGTERM, then SIGKILL after `grace`.
pub async fn terminate(child: &mut Child, grace: Duration) {
    // A pid from `id()` is one this process started and has not reaped.
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::process::Command;

    #[tokio::test]
    async fn a_group_is_drained_and_counted_empty() {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pgid = Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
        assert!(group_alive(pgid));
        assert!(signal_group(pgid, Signal::SIGTERM));
        drain_group(pgid, Instant::now() + Duration::from_secs(2)).await;
        let _ = child.wait().await;
        assert_eq!(live_members(pgid.as_raw()), Some(0));
        // Members may linger as zombies until init reaps them: not alive.
        assert!(!group_alive(pgid));
    }

    #[tokio::test]
    async fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "trap '' TERM; sleep 30"])
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Give sh time to install its trap.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        terminate(&mut child, Duration::from_millis(200)).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(child.try_wait().unwrap().is_some());
    }
}
