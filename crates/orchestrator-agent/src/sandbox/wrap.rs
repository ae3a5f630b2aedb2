//! Running a command through a wrapper program (`bwrap`, `runc`) without
//! losing what the caller set on its [`Command`].
//!
//! A tokio `Command`'s stdio cannot be read back, so a second `Command` for
//! the wrapper could not inherit the log files the caller opened. Instead the
//! caller's command is spawned as it is (stdio, working directory and process
//! group set by std as usual) and, in the forked child just before std's own
//! `exec`, the wrapper is executed in its place with an argument vector and
//! environment computed beforehand.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::libc::{self, c_char};
use orchestrator_core::spec::SandboxKind;
use tokio::process::Command;

use super::relay::Relay;
use super::SandboxError;
use crate::exec::GroupChild;

/// The program, argument vector and environment the child executes instead
/// of the caller's, as C strings with their NULL-terminated pointer arrays.
struct Exec {
    program: CString,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
}

// SAFETY: the pointers point into the CStrings the struct owns and never
// changes; they are only read, in the forked child.
unsafe impl Send for Exec {}
unsafe impl Sync for Exec {}

fn cstring(s: &OsStr) -> Result<CString, SandboxError> {
    CString::new(s.as_bytes()).map_err(|_| SandboxError::Path(PathBuf::from(s)))
}

impl Exec {
    fn new(
        program: &Path,
        argv: &[OsString],
        env: &[(OsString, OsString)],
    ) -> Result<Self, SandboxError> {
        let program = cstring(program.as_os_str())?;
        let argv: Vec<CString> = argv.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                cstring(&kv)
            })
            .collect::<Result<_, _>>()?;
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<*const c_char> = envp.iter().map(|e| e.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        Ok(Exec {
            program,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
        })
    }
}

impl Exec {
    /// Executes the program; returns only when that fails. Async-signal-safe.
    fn run(&self) -> io::Result<()> {
        // SAFETY: every pointer points into strings `self` owns, and both
        // arrays end with NULL.
        unsafe {
            libc::execve(
                self.program.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.envp_ptrs.as_ptr(),
            );
        }
        Err(io::Error::last_os_error())
    }
}

/// The caller's command line: its program and arguments.
pub(super) fn command_line(cmd: &Command) -> Vec<OsString> {
    let std = cmd.as_std();
    std::iter::once(std.get_program().to_owned())
        .chain(std.get_args().map(OsStr::to_owned))
        .collect()
}

/// The caller's environment. The step runner clears the agent's environment
/// (`env_clear`) and sets every variable, so what was set is all there is.
pub(super) fn command_env(cmd: &Command) -> Vec<(OsString, OsString)> {
    cmd.as_std()
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned())))
        .collect()
}

/// Spawns `cmd` as the leader of a new process group, executing `program`
/// (as `kind`'s wrapper) with `argv` and `env` instead of the command itself,
/// after joining the cgroups whose `cgroup.procs` are open at `join` and,
/// with a `relay`, in a network namespace of its own that has the model
/// gateway's relay (see [`super::relay`]).
pub(super) fn spawn(
    kind: SandboxKind,
    cmd: &mut Command,
    program: &Path,
    argv: &[OsString],
    env: &[(OsString, OsString)],
    join: Vec<RawFd>,
    relay: Option<Relay>,
) -> Result<GroupChild, SandboxError> {
    let exec = Exec::new(program, argv, env)?;
    let what = match relay {
        Some(_) => format!(
            "starting {} in a network namespace with the model gateway's relay",
            program.display()
        ),
        None => format!("starting {}", program.display()),
    };
    // SAFETY: the closure runs in the forked child before std's exec and
    // only makes system calls and calls execve on data prepared before the
    // fork (async-signal-safe, no allocation). When one fails its errno
    // goes back to the caller as the spawn's error.
    let agent = crate::leftovers::agent_pid();
    unsafe {
        cmd.pre_exec(move || {
            crate::leftovers::die_with_agent(agent)?;
            super::cgroup::join(&join)?;
            if let Some(relay) = &relay {
                // runc needs the host's root; bwrap runs unprivileged.
                relay.enter_own_network(kind != SandboxKind::Container)?;
            }
            exec.run()
        });
    }
    GroupChild::spawn(cmd).map_err(|source| SandboxError::Backend { kind, what, source })
}
