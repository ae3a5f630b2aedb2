//! The two processes of the namespace sandbox that never exec: the *reaper*
//! in the agent's pid namespace (the process group leader the agent waits
//! for) and the namespace's *init* (pid 1), whose child is the command.
//!
//! Why an init of our own: the kernel ignores, in pid 1, every signal it has
//! no handler for, so a command that were pid 1 could not be killed by
//! `kill $$` or by its own children, and orphans inside would never be
//! reaped. Why the status travels on a pipe: init cannot die of the
//! command's signal (it would ignore it too), so it writes the command's
//! wait status for the reaper, which re-raises the signal on itself; the
//! agent then sees the command's own exit code or signal.
//!
//! Everything here runs between fork and exec: async-signal-safe system
//! calls only, no allocation.

use nix::libc::{self, c_int};

use super::relay::Relay;

/// The signals whose handlers the agent installed: its copies must not run
/// in a forked process that never execs.
const RESET: [c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGCHLD,
    libc::SIGPIPE,
];

pub(super) unsafe fn reset_signals() {
    unsafe {
        for sig in RESET {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// Closes every descriptor but `keep` (the report pipe, std's exec pipe, the
/// log files), or the agent would wait on its pipes for as long as the
/// command runs.
pub(super) unsafe fn close_all_but(keep: c_int) {
    unsafe {
        close_all_but_two(keep, keep);
    }
}

/// Closes every descriptor but `a` and `b` (which may be equal).
pub(super) unsafe fn close_all_but_two(a: c_int, b: c_int) {
    unsafe {
        let (lo, hi) = (a.min(b), a.max(b));
        let mut failed = false;
        let mut from: c_int = 0;
        for keep in [lo, hi] {
            if keep > from {
                failed |= libc::syscall(libc::SYS_close_range, from, keep - 1, 0) < 0;
            }
            from = from.max(keep.saturating_add(1));
        }
        failed |= libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0) < 0;
        if failed {
            // No close_range (before Linux 5.9): one by one.
            for fd in 0..65_536 {
                if fd != a && fd != b {
                    libc::close(fd);
                }
            }
        }
    }
}

/// Waits for `pid`, reaping whatever else ends meanwhile; its wait status.
pub(super) unsafe fn wait_for(pid: libc::pid_t, any: bool) -> c_int {
    unsafe {
        let mut status: c_int = 0;
        loop {
            let r = libc::waitpid(if any { -1 } else { pid }, &mut status, 0);
            if r == pid {
                return status;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
    }
}

/// The namespace's pid 1 once the command (`command`, pid 2) is started:
/// reaps every orphan, and when the command ends writes its wait status to
/// `status_fd` and exits (which kills what is left in the namespace).
/// Meanwhile it serves the model gateway's port with `relay`, when the
/// sandbox has one (see [`super::relay`]).
pub(super) unsafe fn init(
    command: libc::pid_t,
    status_fd: c_int,
    relay: Option<(&Relay, c_int)>,
) -> ! {
    unsafe {
        reset_signals();
        let status = match relay {
            Some((relay, listener)) => {
                close_all_but_two(status_fd, listener);
                relay.serve_until(command, listener)
            }
            None => {
                close_all_but(status_fd);
                wait_for(command, true)
            }
        };
        let bytes = status.to_ne_bytes();
        libc::write(status_fd, bytes.as_ptr().cast(), bytes.len());
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        libc::_exit(128 + libc::WTERMSIG(status))
    }
}

/// The reaper: waits for the namespace's pid 1 and ends as the command did
/// (the status init wrote to `status_fd`, or init's own when it wrote none,
/// killed before the command ended). Never returns.
pub(super) unsafe fn reap(child: libc::pid_t, status_fd: c_int) -> ! {
    unsafe {
        // The group's SIGTERM must end the reaper (and with it the namespace).
        reset_signals();
        close_all_but(status_fd);
        let mut status = wait_for(child, false);
        let mut bytes = [0u8; 4];
        if libc::read(status_fd, bytes.as_mut_ptr().cast(), bytes.len()) == 4 {
            status = c_int::from_ne_bytes(bytes);
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        let sig = libc::WTERMSIG(status);
        // Die of the same signal, without a core dump of the reaper.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig)
    }
}
