//! Running a step's prepared commands one after the other, each in its own
//! process group under its timeout, and judging how each ended.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use orchestrator_core::api::CommandRecord;
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::prepare::Prepared;
use super::{fmt_ms, millis, CancelReason, Failure, Recorder};
use crate::bundle::{self, Bundle};
use crate::exec::{CgroupEnd, EndReason, Ended};
use crate::sandbox::{Sandbox, SandboxError};

/// What every command of a step shares: where it logs, its environment and
/// deadline, and what cancels it.
pub(super) struct Runner<'a> {
    pub bundle: &'a Bundle,
    pub cancel: &'a CancellationToken,
    pub reason: &'a CancelReason,
    /// The workflow's and stage's variables (a command's own win over them).
    pub user_env: &'a BTreeMap<String, String>,
    /// The orchestrator's own variables, which win over all others.
    pub orch_env: Vec<(String, String)>,
    pub step_budget: Option<Duration>,
    pub step_deadline: Option<Instant>,
    /// Variables of the agent's own environment the commands inherit.
    inherited: Vec<(OsString, OsString)>,
    /// Secret values to mask in the command logs.
    secrets: Vec<String>,
    /// How the commands are isolated.
    sandbox: Sandbox,
    /// The most bytes kept of each log (0: no cap).
    log_cap: u64,
}

impl<'a> Runner<'a> {
    pub fn new(
        bundle: &'a Bundle,
        cancel: &'a CancellationToken,
        reason: &'a CancelReason,
        user_env: &'a BTreeMap<String, String>,
        orch_env: Vec<(String, String)>,
        step_budget: Option<Duration>,
        started: Instant,
    ) -> Self {
        Runner {
            bundle,
            cancel,
            reason,
            user_env,
            orch_env,
            step_budget,
            step_deadline: step_budget.map(|b| started + b),
            inherited: inherited_env(),
            secrets: Vec::new(),
            sandbox: Sandbox::Process,
            log_cap: super::logs::DEFAULT_LOG_CAP,
        }
    }

    /// Keeps at most `cap` bytes of each log (0: no cap).
    pub fn capping_logs(mut self, cap: u64) -> Self {
        self.log_cap = cap;
        self
    }

    /// Also keeps `names` of the agent's environment from the commands; a
    /// step that sets one itself still gets its own value.
    pub fn without_inherited(mut self, names: impl IntoIterator<Item = String>) -> Self {
        let names: Vec<OsString> = names.into_iter().map(Into::into).collect();
        self.inherited.retain(|(k, _)| !names.contains(k));
        self
    }

    /// Masks `values` (see [`super::redact::values`]) in every command log.
    pub fn redacting(mut self, values: Vec<String>) -> Self {
        self.secrets = values;
        self
    }

    /// Runs the commands inside `sandbox`.
    pub fn in_sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// Runs the prepared commands in order; the first failure ends the step.
    pub async fn run_all(
        &self,
        commands: &[Prepared<'_>],
        rec: &mut Recorder<'_>,
    ) -> Option<Failure> {
        for (i, cmd) in commands.iter().enumerate() {
            let (ended, limit) = match self.run_one(i, cmd, rec).await {
                Ok(x) => x,
                Err(failure) => return Some(failure),
            };
            if let Some(failure) = judge(cmd, ended, limit, self.reason) {
                return Some(failure);
            }
        }
        None
    }

    /// Runs command `i` to its end and records it; an error is a failure
    /// before or while it ran (cancelled, out of time, could not start).
    pub async fn run_one(
        &self,
        i: usize,
        cmd: &Prepared<'_>,
        rec: &mut Recorder<'_>,
    ) -> Result<(Ended, Option<Limit>), Failure> {
        if self.cancel.is_cancelled() {
            return Err(Failure::infra(self.reason.get().to_owned()));
        }
        let now = Instant::now();
        if let (Some(deadline), Some(budget)) = (self.step_deadline, self.step_budget) {
            if now >= deadline {
                return Err(Failure::task(format!(
                    "the step's timeout of {} ran out before {} started",
                    fmt_ms(budget),
                    cmd.label
                )));
            }
        }
        let (stdout, stderr) = self
            .bundle
            .open_logs(i)
            .map_err(|e| Failure::infra(e.to_string()))?;
        // The agent keeps its own descriptors: after the command it reads
        // back what was written through them, never through the names.
        let for_child = |f: &std::fs::File| {
            f.try_clone()
                .map_err(|e| Failure::infra(format!("{} could not get its log: {e}", cmd.label)))
        };
        let (child_out, child_err) = (for_child(&stdout)?, for_child(&stderr)?);
        let mut command = Command::new(&cmd.argv[0]);
        command
            .env_clear()
            .envs(self.inherited.iter().map(|(k, v)| (k, v)))
            .args(&cmd.argv[1..])
            .current_dir(&cmd.cwd_abs)
            .envs(self.user_env)
            .envs(&cmd.spec.env)
            .envs(self.orch_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(child_out))
            .stderr(Stdio::from(child_err));
        let child = self.sandbox.spawn(&mut command).map_err(|e| match e {
            SandboxError::Spawn(e) => spawn_failure(cmd, &e),
            e => Failure::infra(format!("{} could not start: {e}", cmd.label)),
        })?;
        // Command is dropped here so the log file handles close in the agent.
        drop(command);
        tracing::debug!(command = i, pgid = child.pgid(), "command started");

        let cmd_timeout = cmd
            .spec
            .timeout
            .map(|t| Duration::from_millis(t.as_millis()));
        let cmd_deadline = cmd_timeout.map(|t| now + t);
        let (deadline, by_step) = match (cmd_deadline, self.step_deadline) {
            (Some(c), Some(s)) if s < c => (Some(s), true),
            (Some(c), _) => (Some(c), false),
            (None, s) => (s, s.is_some()),
        };
        let ended = tokio::select! {
            ended = child.wait(deadline, self.cancel) => ended,
            never = super::logs::bound([&stdout, &stderr], self.log_cap) => match never {},
        };
        let duration = now.elapsed();
        let ended = ended
            .map_err(|e| Failure::infra(format!("{} could not be waited for: {e}", cmd.label)))?;
        for (name, log) in [
            (bundle::stdout_name(i), &stdout),
            (bundle::stderr_name(i), &stderr),
        ] {
            super::logs::seal(
                self.bundle.confined(),
                &name,
                log,
                &self.secrets,
                self.log_cap,
            )
            .map_err(|e| Failure::infra(format!("sealing the log {name}: {e}")))?;
        }
        let status = ended.status;
        rec.exit_codes.push(status.code());
        rec.commands.push(CommandRecord {
            argv: cmd.argv.clone(),
            cwd: cmd.cwd_rel.clone(),
            env_keys: cmd.env_keys.clone(),
            exit_code: status.code(),
            signal: status.signal(),
            timed_out: ended.reason == EndReason::TimedOut,
            duration_ms: millis(duration),
            stdout: bundle::stdout_name(i),
            stderr: bundle::stderr_name(i),
        });
        tracing::debug!(command = i, code = ?status.code(), signal = ?status.signal(), reason = ?ended.reason, "command ended");
        let limit = if by_step {
            self.step_budget.map(Limit::Step)
        } else {
            cmd_timeout.map(Limit::Command)
        };
        Ok((ended, limit))
    }
}

/// The only variables of the agent's own environment a step's commands
/// inherit (names ending in `*` are prefixes). Why an allowlist: the agent's
/// environment holds what its operator needed (tokens, cloud credentials,
/// proxies, an ssh-agent socket), and a workflow runs code the operator may
/// not have read; what a command needs beyond finding programs, a home, a
/// user name, a locale, a terminal and a temporary directory, the workflow
/// declares in `env:`. `CUDA_VISIBLE_DEVICES` is kept so that an operator's
/// restriction stands on an agent that detected no GPUs; on an agent with
/// GPUs the step's grant overrides it.
pub(super) const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_*",
    "TZ",
    "TERM",
    "TMPDIR",
    "SHELL",
    "CUDA_VISIBLE_DEVICES",
];

/// Whether the agent's variable `name` is in [`INHERITED_ENV`].
fn inherits(name: &str) -> bool {
    INHERITED_ENV
        .iter()
        .any(|allowed| match allowed.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *allowed,
        })
}

/// The agent's variables a command inherits: those [`INHERITED_ENV`] names.
fn inherited_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| k.to_str().is_some_and(inherits))
        .collect()
}

/// Which timeout a command ran under.
#[derive(Clone, Copy)]
pub(super) enum Limit {
    /// Its own `timeout`.
    Command(Duration),
    /// What was left of the step's timeout.
    Step(Duration),
}

/// How a command's end bears on the step: None to go on with the next one.
pub(super) fn judge(
    cmd: &Prepared<'_>,
    ended: Ended,
    limit: Option<Limit>,
    reason: &CancelReason,
) -> Option<Failure> {
    let status = ended.status;
    let message = match ended.reason {
        EndReason::Cancelled => return Some(Failure::infra(reason.get().to_owned())),
        EndReason::TimedOut => match limit {
            Some(Limit::Step(budget)) => format!(
                "{} timed out: the step's timeout of {} ran out",
                cmd.label,
                fmt_ms(budget)
            ),
            Some(Limit::Command(t)) => format!("{} timed out after {}", cmd.label, fmt_ms(t)),
            None => format!("{} timed out", cmd.label),
        },
        // The kernel counted it: a process of the command went over the
        // memory limit (or the machine ran out). Whichever process it took,
        // the command's own status shows only the aftermath, even success
        // (a shell that went on after its child was killed).
        EndReason::Exited if ended.cgroup.is_some_and(|c| c.oom_kills > 0) => {
            return Some(Failure::infra(out_of_memory(cmd, ended.cgroup)));
        }
        EndReason::Exited if status.success() => return None,
        // Nothing here sent it: without a cgroup to ask, most likely the
        // kernel's out-of-memory killer took the machine's memory back. Not
        // the step's fault either way.
        EndReason::Exited if status.signal() == Some(Signal::SIGKILL as i32) => {
            let why = if ended.cgroup.is_some() {
                "not the out-of-memory killer (the command's cgroup counted no out-of-memory kill): an operator or another program"
            } else {
                "most likely the kernel's out-of-memory killer (resource exhaustion)"
            };
            return Some(Failure::infra(format!(
                "{} was killed by signal 9 (SIGKILL) from outside the step: {why}",
                cmd.label
            )));
        }
        EndReason::Exited => match (status.code(), status.signal()) {
            (Some(code), _) => format!("{} exited with code {code}", cmd.label),
            (None, Some(sig)) => format!(
                "{} was killed by signal {sig} ({})",
                cmd.label,
                Signal::try_from(sig).map_or("unknown", Signal::as_str)
            ),
            (None, None) => format!("{} ended abnormally ({status})", cmd.label),
        },
    };
    Some(Failure::task(message))
}

/// The message of a command the out-of-memory killer ended.
fn out_of_memory(cmd: &Prepared<'_>, cgroup: Option<CgroupEnd>) -> String {
    match cgroup
        .filter(|c| c.hit_memory_limit)
        .and_then(|c| c.memory_limit_mb)
    {
        Some(mb) => format!(
            "out of memory: {} was killed by the kernel because the step's commands used more than their memory limit of {mb} MiB (the stage's resources.memory); raise resources.memory",
            cmd.label
        ),
        None => format!(
            "out of memory: {} was killed by the kernel's out-of-memory killer: the machine ran out of memory{}",
            cmd.label,
            match cgroup.and_then(|c| c.memory_limit_mb) {
                Some(mb) => format!(" before the step's commands reached their memory limit of {mb} MiB (other processes of the machine used more than the scheduler granted them)"),
                None => " (the stage declares no resources.memory; declaring it reserves memory for the step)".to_owned(),
            }
        ),
    }
}

/// A command that could not start. A missing or non-executable program is the
/// workflow's fault; anything else (no memory, no processes left) is the machine's.
fn spawn_failure(cmd: &Prepared<'_>, e: &io::Error) -> Failure {
    let program = &cmd.argv[0];
    match e.kind() {
        io::ErrorKind::NotFound => Failure::task(format!(
            "{} could not start: program {program:?} not found ({e})",
            cmd.label
        )),
        io::ErrorKind::PermissionDenied => Failure::task(format!(
            "{} could not start: program {program:?} is not executable ({e})",
            cmd.label
        )),
        _ if e.raw_os_error() == Some(nix::errno::Errno::ENOEXEC as i32) => Failure::task(format!(
            "{} could not start: program {program:?} is not in an executable format ({e})",
            cmd.label
        )),
        io::ErrorKind::InvalidInput => Failure::task(format!("{} could not start: {e}", cmd.label)),
        _ => Failure::infra(format!(
            "{} could not start: program {program:?}: {e}",
            cmd.label
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_allowlist_is_inherited() {
        for name in ["PATH", "HOME", "LC_ALL", "LC_CTYPE", "TMPDIR", "LANG"] {
            assert!(inherits(name), "{name}");
        }
        for name in [
            "ORCH_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "SSH_AUTH_SOCK",
            "PATHX",
            "LD_PRELOAD",
        ] {
            assert!(!inherits(name), "{name}");
        }
    }
}
