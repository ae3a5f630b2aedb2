//! The bubblewrap sandbox: each command runs under `bwrap` (bubblewrap 0.8
//! or later), which builds the same view as the namespace backend with a
//! well-known setuid-free tool instead of the agent's own system calls.
//!
//! The command line given to `bwrap`, in the order it applies it (tmpfs
//! first, so the binds beneath them land on top):
//! `--unshare-all` (user, ipc, pid, net, uts, cgroup; `--share-net` when
//! the stage allows `network`), `--die-with-parent`, `--ro-bind / /`,
//! `--dev /dev`, `--proc /proc`, `--tmpfs` over each hidden directory
//! (`/tmp`, `/var/tmp`, `/root`, `/home`, `/run`, `/dev/shm` and the
//! project's `.orchestrator`), `--bind` each writable directory,
//! `--ro-bind` each readable one that exists, `--chdir` the command's
//! working directory.
//!
//! `bwrap` itself leads the command's process group. Its child, pid 1 of
//! the new pid namespace, gets SIGKILL when `bwrap` dies
//! (`--die-with-parent`), and its death ends every process in the
//! namespace: signalling the group (timeout, cancellation) takes the whole
//! sandbox down, as with the namespace backend.
//!
//! Without network and with a gateway socket, `bwrap` gets `--share-net`
//! of a network namespace made for it instead: the forked child enters a
//! new user and network namespace (its ids mapped to themselves) and starts
//! the model gateway's relay there before executing `bwrap` (see
//! [`super::relay`]); the sandbox then has loopback and the gateway, and
//! nothing else of the network.
//!
//! Limits (`Limits`) come from the command's own cgroup, as for the
//! namespace backend: the forked child joins it before executing `bwrap`,
//! so everything in the sandbox is inside, and the cgroup's end (emptied,
//! out-of-memory kills counted) is the same.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use orchestrator_core::spec::SandboxKind;
use tokio::process::Command;

use super::cgroup::{self, CommandCgroup};
use super::relay::Relay;
use super::{to_hide, wrap, Limits, SandboxError};
use crate::exec::GroupChild;

/// The `bwrap` binary: `configured`, or `bwrap` in the agent's PATH.
pub(super) fn locate(configured: Option<&Path>) -> Result<PathBuf, SandboxError> {
    let unavailable = |why: String| SandboxError::Unavailable {
        kind: SandboxKind::Bubblewrap,
        why,
    };
    match configured {
        Some(p) if super::is_executable(p) => Ok(p.to_owned()),
        Some(p) => Err(unavailable(format!(
            "{} (orch agent --bwrap, ORCH_BWRAP) is not an executable file; install bubblewrap (apt-get install bubblewrap) or pass the path of its bwrap",
            p.display()
        ))),
        None => super::which("bwrap").ok_or_else(|| {
            unavailable(
                "no bwrap in PATH; install bubblewrap (apt-get install bubblewrap) or pass orch agent --bwrap PATH"
                    .into(),
            )
        }),
    }
}

/// The arguments `bwrap` gets before the command's own command line.
fn arguments(
    cwd: Option<&Path>,
    writable: &[PathBuf],
    readable: &[PathBuf],
    hidden: &[PathBuf],
    covers: &[(PathBuf, PathBuf)],
    network: bool,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["bwrap".into(), "--unshare-all".into()];
    if network {
        args.push("--share-net".into());
    }
    for a in [
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
    ] {
        args.push(a.into());
    }
    for dir in to_hide(hidden) {
        args.push("--tmpfs".into());
        args.push(dir.into());
    }
    for file in super::files_to_hide(hidden) {
        args.extend(["--ro-bind".into(), "/dev/null".into(), file.into()]);
    }
    for dir in writable {
        args.extend(["--bind".into(), dir.into(), dir.into()]);
    }
    for dir in readable.iter().filter(|p| p.is_dir()) {
        args.extend(["--ro-bind".into(), dir.into(), dir.into()]);
    }
    for (what, over) in super::covers_to_make(covers) {
        args.extend(["--ro-bind".into(), what.into(), over.into()]);
    }
    if let Some(cwd) = cwd {
        args.extend(["--chdir".into(), cwd.into()]);
    }
    args.push("--".into());
    args
}

/// Spawns `cmd` under `bwrap`; see the module documentation.
// The arguments are the fields of `Sandbox::Bubblewrap`, passed as they are.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn(
    cmd: &mut Command,
    bwrap: &Path,
    writable: &[PathBuf],
    readable: &[PathBuf],
    hidden: &[PathBuf],
    covers: &[(PathBuf, PathBuf)],
    network: bool,
    gateway: Option<&Path>,
    limits: Limits,
) -> Result<GroupChild, SandboxError> {
    let relay = gateway.filter(|_| !network).map(Relay::new).transpose()?;
    let cwd = cmd.as_std().get_current_dir().map(Path::to_owned);
    // With the relay, the network namespace is the relay's, made before
    // `bwrap` runs: `bwrap` shares it.
    let share_net = network || relay.is_some();
    let mut argv = arguments(
        cwd.as_deref(),
        writable,
        readable,
        hidden,
        covers,
        share_net,
    );
    argv.extend(wrap::command_line(cmd));
    let env = wrap::command_env(cmd);
    // The same cgroup as a namespace command's: `bwrap` joins it before it
    // executes, so the sandbox and everything in it are inside.
    let cgroup = match cgroup::probe() {
        Ok(root) => Some(root.create(limits).map_err(|e| SandboxError::Backend {
            kind: SandboxKind::Bubblewrap,
            what: "creating the command's cgroup".into(),
            source: e.into(),
        })?),
        Err(_) => None,
    };
    let join = cgroup
        .as_ref()
        .map(CommandCgroup::join_fds)
        .unwrap_or_default();
    let spawned = wrap::spawn(
        SandboxKind::Bubblewrap,
        cmd,
        bwrap,
        &argv,
        &env,
        join,
        relay,
    )?;
    Ok(match cgroup {
        Some(cg) => spawned.with_cgroup(cg),
        None => spawned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_come_before_the_binds_beneath_them() {
        let tmp = std::env::temp_dir();
        let args = arguments(
            Some(&tmp),
            &[tmp.join("w")],
            std::slice::from_ref(&tmp),
            &[tmp.join("hidden")],
            &[],
            false,
        );
        let pos = |s: &str| args.iter().position(|a| a == s).unwrap();
        assert!(pos("--tmpfs") < pos("--bind"));
        assert!(!args.iter().any(|a| a == "--share-net"));
        // The hidden directory lies under /tmp, hidden already.
        assert!(!args.iter().any(|a| a == tmp.join("hidden").as_os_str()));
        assert_eq!(args.last().unwrap(), "--");
    }
}
