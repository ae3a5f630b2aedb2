//! Child processes in their own process groups: spawning, waiting under a
//! deadline or a cancellation, and killing the whole group.
//!
//! It exists because a command is rarely one process: `sh -c`, test runners and
//! coding agents start children of their own, and none of them may outlive the
//! step or the agent. Every command therefore leads a fresh process group
//! (`process_group(0)`), and every way a command can end (exit, timeout,
//! cancellation, the future being dropped) ends with the group signalled:
//! SIGTERM, a grace period, then SIGKILL.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use orchestrator_host::process::{drain_group, signal_group};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sandbox::CommandCgroup;

/// How long a process group gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Why a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// It exited (or died of a signal) by itself.
    Exited,
    /// Its deadline passed and its group was killed.
    TimedOut,
    /// The cancellation token fired and its group was killed.
    Cancelled,
}

/// How a command ended: its status and why.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    pub status: ExitStatus,
    pub reason: EndReason,
    /// What its cgroup saw; None when it ran without one.
    pub cgroup: Option<CgroupEnd>,
}

/// What a command's cgroup recorded by the time it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupEnd {
    /// Processes the kernel's out-of-memory killer took from it.
    pub oom_kills: u64,
    /// Its memory limit, in MiB.
    pub memory_limit_mb: Option<u64>,
    /// Whether that limit was hit (an out-of-memory kill without it: the
    /// machine ran out).
    pub hit_memory_limit: bool,
}

/// A running command leading its own process group. Dropping it before it
/// has finished SIGKILLs the whole group.
#[derive(Debug)]
pub struct GroupChild {
    child: Child,
    pgid: Pid,
    /// Set once the group has been dealt with; the drop guard then does nothing.
    done: bool,
    /// The command's own cgroup, when its sandbox made one: emptied and
    /// removed when the command ends, whatever ends it.
    cgroup: Option<CommandCgroup>,
    /// The group's record in the agent's work directory, which a restarted
    /// agent kills by (see [`crate::leftovers`]).
    _record: crate::leftovers::Record,
}

impl GroupChild {
    /// Spawns `cmd` as the leader of a new process group, with stdin closed
    /// and `kill_on_drop` set. The caller sets program, args, cwd, env and the
    /// stdout/stderr files.
    pub fn spawn(cmd: &mut Command) -> io::Result<Self> {
        cmd.process_group(0)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        let child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the child exited before its pid was read"))?;
        let pid = i32::try_from(pid).map_err(io::Error::other)?;
        Ok(GroupChild {
            child,
            pgid: Pid::from_raw(pid),
            done: false,
            cgroup: None,
            _record: crate::leftovers::Record::new(pid),
        })
    }

    /// Hands the command's cgroup (which it has joined) to this child, to be
    /// killed and removed with it; closes the agent's join descriptors.
    pub fn with_cgroup(mut self, mut cgroup: CommandCgroup) -> Self {
        cgroup.started();
        self.cgroup = Some(cgroup);
        self
    }

    /// The process group id (the leader's pid).
    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Waits for the command to end, killing its group when `deadline` passes
    /// or `cancel` fires. Whatever ends it, processes it left behind in its
    /// group are terminated before this returns.
    pub async fn wait(
        mut self,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> io::Result<Ended> {
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let reason = tokio::select! {
            biased;
            status = self.child.wait() => {
                let status = status?;
                // The leader is gone; background processes it started in its
                // group must not outlive the step.
                self.sweep().await;
                let cgroup = self.empty_cgroup().await;
                return Ok(Ended { status, reason: EndReason::Exited, cgroup });
            }
            () = timer => EndReason::TimedOut,
            () = cancel.cancelled() => EndReason::Cancelled,
        };
        let status = self.terminate().await?;
        let cgroup = self.empty_cgroup().await;
        Ok(Ended {
            status,
            reason,
            cgroup,
        })
    }

    /// Reads what the cgroup recorded, then kills whatever is still in it
    /// (processes that left the group with `setsid`) and removes it.
    async fn empty_cgroup(&mut self) -> Option<CgroupEnd> {
        let cgroup = self.cgroup.take()?;
        let end = CgroupEnd {
            oom_kills: cgroup.oom_kills(),
            memory_limit_mb: cgroup.memory_limit_mb(),
            hit_memory_limit: cgroup.hit_memory_limit(),
        };
        if cgroup.kill_all() {
            tracing::debug!(
                pgid = self.pgid.as_raw(),
                "killed processes left in the command's cgroup"
            );
        }
        cgroup.remove().await;
        Some(end)
    }

    /// SIGTERM to the group, up to [`KILL_GRACE`] for it to end, then SIGKILL.
    /// Signals the group before reaping the leader, so the group id cannot
    /// have been reused by then.
    async fn terminate(&mut self) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + KILL_GRACE;
        signal_group(self.pgid, Signal::SIGTERM);
        let waited = tokio::time::timeout_at(deadline, self.child.wait()).await;
        let status = if let Ok(status) = waited {
            status?
        } else {
            signal_group(self.pgid, Signal::SIGKILL);
            self.child.wait().await?
        };
        drain_group(self.pgid, deadline).await;
        self.done = true;
        Ok(status)
    }

    /// After the leader exited by itself: terminate what is left in its group.
    /// The common case (nothing left) costs one `killpg` answering ESRCH.
    async fn sweep(&mut self) {
        if signal_group(self.pgid, Signal::SIGTERM) {
            tracing::debug!(
                pgid = self.pgid.as_raw(),
                "terminating processes left behind in the command's group"
            );
            drain_group(self.pgid, Instant::now() + KILL_GRACE).await;
        }
        self.done = true;
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        if !self.done {
            // The future was dropped mid-command (agent torn down): nothing may
            // outlive it. `kill_on_drop` handles the leader, this the rest.
            signal_group(self.pgid, Signal::SIGKILL);
            if let Some(cgroup) = &self.cgroup {
                cgroup.kill_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_host::process::live_members;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script);
        c
    }

    #[tokio::test]
    async fn exit_status_is_reported() {
        let child = GroupChild::spawn(&mut sh("exit 7")).unwrap();
        let ended = child.wait(None, &CancellationToken::new()).await.unwrap();
        assert_eq!(ended.reason, EndReason::Exited);
        assert_eq!(ended.status.code(), Some(7));
    }

    #[tokio::test]
    async fn background_leftovers_are_terminated_after_exit() {
        let child = GroupChild::spawn(&mut sh("sleep 30 & exit 0")).unwrap();
        let pgid = child.pgid();
        let ended = child.wait(None, &CancellationToken::new()).await.unwrap();
        assert_eq!(ended.status.code(), Some(0));
        assert_eq!(live_members(pgid), Some(0));
    }

    #[tokio::test]
    async fn a_group_ignoring_sigterm_gets_sigkill() {
        let mut cmd = sh("trap '' TERM; sleep 30 & sleep 30");
        let child = GroupChild::spawn(&mut cmd).unwrap();
        let pgid = child.pgid();
        let started = Instant::now();
        let deadline = Some(Instant::now() + Duration::from_millis(200));
        let ended = child
            .wait(deadline, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(ended.reason, EndReason::TimedOut);
        assert!(started.elapsed() >= KILL_GRACE);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(live_members(pgid), Some(0));
    }

    #[tokio::test]
    async fn dropping_a_running_child_kills_its_group() {
        let child = GroupChild::spawn(&mut sh("sleep 30 & sleep 30")).unwrap();
        let pgid = child.pgid();
        // Give sh time to start its background child.
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(child);
        let until = Instant::now() + Duration::from_secs(5);
        while live_members(pgid) != Some(0) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(live_members(pgid), Some(0));
    }
}
