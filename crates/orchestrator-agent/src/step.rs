//! The executor: runs one claimed step and says how it ended.
//!
//! It exists to keep "what a step does on this machine" apart from "how the
//! agent talks to the daemon": [`run_step`] needs no daemon, so it is tested
//! alone with real processes. It checks the exec spec again (defense in depth:
//! the daemon validated it too, but the agent is the one that runs it), makes
//! the bundle, runs the commands one after the other in their own process
//! groups under their timeouts, writes the manifest and returns a
//! [`StepOutcome`]. It never panics on bad input and never leaves a process
//! behind.
//!
//! Commands are numbered from 0 in messages, as in their log file names
//! (`cmd-000.stdout.log`) and in the workflow's field paths (`commands[0]`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use orchestrator_core::api::{ClaimedJob, CommandRecord, JobSpec, Manifest, StepOutcome};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::spec::{CommandSpec, DurationSpec};
use orchestrator_core::validate::check_command;
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bundle::{self, Bundle, BundleError};
use crate::exec::{EndReason, Ended, GroupChild};

/// Longest command description quoted in an error message, in characters.
const DESCRIBE_MAX: usize = 80;

/// Why a step was cancelled, set by whoever cancels it before cancelling;
/// the first reason set wins. It becomes the outcome's error text.
#[derive(Debug, Clone, Default)]
pub struct CancelReason(Arc<OnceLock<String>>);

impl CancelReason {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `reason` unless one was recorded already.
    pub fn set(&self, reason: impl Into<String>) {
        // A second reason is dropped on purpose: the first cause is the true one.
        let _ = self.0.set(reason.into());
    }

    /// The recorded reason, or `"step cancelled"`.
    pub fn get(&self) -> &str {
        self.0.get().map_or("step cancelled", String::as_str)
    }
}

/// Who runs the step, for the manifest, and why it would be cancelled.
#[derive(Debug, Clone, Default)]
pub struct StepContext {
    pub agent_id: String,
    pub hostname: Option<String>,
    pub cancel_reason: CancelReason,
}

/// The name of this machine, when it has a printable one.
pub fn local_hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
}

/// Runs one claimed step on this machine and returns how it ended; see the
/// module documentation. `cancel` kills the running command's process group
/// (the outcome is then an infrastructure failure, "step cancelled").
pub async fn run_step(job: &ClaimedJob, agent_id: &str, cancel: CancellationToken) -> StepOutcome {
    let ctx = StepContext {
        agent_id: agent_id.to_owned(),
        hostname: local_hostname(),
        cancel_reason: CancelReason::new(),
    };
    run_step_with(job, &ctx, cancel).await
}

/// [`run_step`] with the caller's context: the hostname to record and the
/// reason a cancellation reports.
pub async fn run_step_with(
    job: &ClaimedJob,
    ctx: &StepContext,
    cancel: CancellationToken,
) -> StepOutcome {
    let spec = &job.spec;
    let mut rec = Recorder::new(job, ctx, spec.bundle_dir(job.job_id));

    let project = match check_ids(spec).and_then(|()| check_project_dir(&spec.project_dir)) {
        Ok(p) => p,
        // No bundle can be written without a project directory.
        Err(msg) => return rec.outcome(Some(Failure::task(msg))),
    };
    let prepared = prepare(spec, &project);
    let bundle = match Bundle::create(&project, &rec.rel) {
        Ok(b) => b,
        Err(e) => {
            let failure = match prepared {
                // The refusal is the more useful message.
                Err(msg) => Failure::task(msg),
                Ok(_) if matches!(e, BundleError::Escapes { .. }) => Failure::task(e.to_string()),
                Ok(_) => Failure::infra(e.to_string()),
            };
            return rec.outcome(Some(failure));
        }
    };
    let failure = match prepared {
        Err(msg) => Some(Failure::task(msg)),
        Ok(commands) => run_commands(job, &commands, &bundle, &cancel, ctx, &mut rec).await,
    };
    rec.finish(&bundle, failure).await
}

/// A failed step's class and message.
#[derive(Debug)]
struct Failure {
    class: ErrorClass,
    message: String,
}

impl Failure {
    fn task(message: String) -> Self {
        Failure {
            class: ErrorClass::Task,
            message,
        }
    }
    fn infra(message: String) -> Self {
        Failure {
            class: ErrorClass::Infra,
            message,
        }
    }
}

/// One command, checked and resolved, ready to spawn.
#[derive(Debug)]
struct Prepared<'a> {
    spec: &'a CommandSpec,
    argv: Vec<String>,
    /// The cwd as written (`.` when none), for the manifest.
    cwd_rel: String,
    /// The canonical working directory.
    cwd_abs: PathBuf,
    /// Names of the variables the step sets for this command.
    env_keys: Vec<String>,
    /// For messages: `command N (argv0 args...)`.
    label: String,
}

/// What the step has done so far, turned into the manifest and the outcome.
struct Recorder<'a> {
    job: &'a ClaimedJob,
    ctx: &'a StepContext,
    rel: String,
    started: Instant,
    started_at_ms: i64,
    commands: Vec<CommandRecord>,
    exit_codes: Vec<Option<i32>>,
}

impl<'a> Recorder<'a> {
    fn new(job: &'a ClaimedJob, ctx: &'a StepContext, rel: String) -> Self {
        Recorder {
            job,
            ctx,
            rel,
            started: Instant::now(),
            started_at_ms: now_ms(),
            commands: Vec::new(),
            exit_codes: Vec::new(),
        }
    }

    fn outcome(self, failure: Option<Failure>) -> StepOutcome {
        let (error_class, error) = match failure {
            Some(f) => (Some(f.class), Some(f.message)),
            None => (None, None),
        };
        StepOutcome {
            success: error.is_none(),
            exit_codes: self.exit_codes,
            error,
            error_class,
            bundle: self.rel,
            duration_ms: millis(self.started.elapsed()),
        }
    }

    /// Writes the manifest, then returns the outcome. A step that succeeded
    /// but whose manifest cannot be written fails as an infrastructure fault.
    async fn finish(mut self, bundle: &Bundle, failure: Option<Failure>) -> StepOutcome {
        let spec = &self.job.spec;
        let manifest = Manifest {
            run_id: spec.run_id.clone(),
            stage_id: spec.stage_id.clone(),
            step: spec.step,
            step_name: spec.step_name.clone(),
            attempt: spec.attempt,
            job_id: self.job.job_id,
            agent_id: self.ctx.agent_id.clone(),
            hostname: self.ctx.hostname.clone(),
            started_at_ms: self.started_at_ms,
            ended_at_ms: now_ms(),
            success: failure.is_none(),
            error: failure.as_ref().map(|f| f.message.clone()),
            error_class: failure.as_ref().map(|f| f.class),
            commands: std::mem::take(&mut self.commands),
        };
        let failure = match (bundle.write_manifest(&manifest).await, failure) {
            (Ok(()), failure) => failure,
            (Err(e), None) => Some(Failure::infra(e.to_string())),
            (Err(e), Some(failure)) => {
                tracing::warn!(error = %e, "could not write the manifest of a failed step");
                Some(failure)
            }
        };
        self.outcome(failure)
    }
}

/// Runs the prepared commands in order; the first failure ends the step.
async fn run_commands(
    job: &ClaimedJob,
    commands: &[Prepared<'_>],
    bundle: &Bundle,
    cancel: &CancellationToken,
    ctx: &StepContext,
    rec: &mut Recorder<'_>,
) -> Option<Failure> {
    let spec = &job.spec;
    let step_budget = spec.timeout_ms.map(Duration::from_millis);
    let step_deadline = step_budget.map(|b| rec.started + b);
    let orch_env = [
        ("ORCH_RUN_ID", spec.run_id.clone()),
        ("ORCH_STAGE_ID", spec.stage_id.clone()),
        ("ORCH_STEP", spec.step.to_string()),
        ("ORCH_ATTEMPT", spec.attempt.to_string()),
        ("ORCH_JOB_ID", job.job_id.to_string()),
        (
            "ORCH_BUNDLE_DIR",
            bundle.dir().to_string_lossy().into_owned(),
        ),
    ];
    let secrets = inherited_secrets();
    for (i, cmd) in commands.iter().enumerate() {
        if cancel.is_cancelled() {
            return Some(Failure::infra(ctx.cancel_reason.get().to_owned()));
        }
        let now = Instant::now();
        if let (Some(deadline), Some(budget)) = (step_deadline, step_budget) {
            if now >= deadline {
                return Some(Failure::task(format!(
                    "the step's timeout of {} ran out before {} started",
                    fmt_ms(budget),
                    cmd.label
                )));
            }
        }
        let (stdout, stderr) = match bundle.open_logs(i) {
            Ok(files) => files,
            Err(e) => return Some(Failure::infra(e.to_string())),
        };
        let mut command = Command::new(&cmd.argv[0]);
        for name in &secrets {
            command.env_remove(name);
        }
        command
            .args(&cmd.argv[1..])
            .current_dir(&cmd.cwd_abs)
            .envs(&spec.env)
            .envs(&cmd.spec.env)
            .envs(orch_env.iter().map(|(k, v)| (*k, v)))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        let child = match GroupChild::spawn(&mut command) {
            Ok(child) => child,
            Err(e) => return Some(spawn_failure(cmd, &e)),
        };
        // Command is dropped here so the log file handles close in the agent.
        drop(command);
        tracing::debug!(command = i, pgid = child.pgid(), "command started");

        let cmd_timeout = cmd
            .spec
            .timeout
            .map(|t| Duration::from_millis(t.as_millis()));
        let cmd_deadline = cmd_timeout.map(|t| now + t);
        let (deadline, by_step) = match (cmd_deadline, step_deadline) {
            (Some(c), Some(s)) if s < c => (Some(s), true),
            (Some(c), _) => (Some(c), false),
            (None, s) => (s, s.is_some()),
        };
        let ended = child.wait(deadline, cancel).await;
        let duration = now.elapsed();
        let ended = match ended {
            Ok(ended) => ended,
            Err(e) => {
                return Some(Failure::infra(format!(
                    "{} could not be waited for: {e}",
                    cmd.label
                )))
            }
        };
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
            step_budget.map(Limit::Step)
        } else {
            cmd_timeout.map(Limit::Command)
        };
        if let Some(failure) = judge(cmd, ended, limit, &ctx.cancel_reason) {
            return Some(failure);
        }
    }
    None
}

/// Names of the agent's own environment variables that hold the
/// orchestrator's secrets (`ORCH_TOKEN`, `ORCH_AGENT_TOKEN`, any `ORCH_…TOKEN…`):
/// commands inherit the rest of the agent's environment, not these. A step
/// that sets such a variable itself still gets its own value.
fn inherited_secrets() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            k.to_str()
                .is_some_and(|k| k.starts_with("ORCH_") && k.contains("TOKEN"))
        })
        .collect()
}

/// Which timeout a command ran under.
#[derive(Clone, Copy)]
enum Limit {
    /// Its own `timeout`.
    Command(Duration),
    /// What was left of the step's timeout.
    Step(Duration),
}

/// How a command's end bears on the step: None to go on with the next one.
fn judge(
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
        EndReason::Exited if status.success() => return None,
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

/// The project directory must be an existing absolute directory; returns it
/// canonicalized.
fn check_project_dir(dir: &str) -> Result<PathBuf, String> {
    let path = Path::new(dir);
    if !path.is_absolute() {
        return Err(format!(
            "project directory {dir:?} is not an absolute path; expected one"
        ));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("project directory {dir:?} is not a directory")),
        Err(e) => {
            return Err(format!(
                "project directory {dir:?} is not usable on this machine: {e}"
            ))
        }
    }
    path.canonicalize()
        .map_err(|e| format!("project directory {dir:?} cannot be resolved: {e}"))
}

/// Run and stage ids become path components of the bundle directory.
fn check_ids(spec: &JobSpec) -> Result<(), String> {
    for (what, id) in [("run id", &spec.run_id), ("stage id", &spec.stage_id)] {
        let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(format!(
                "{what} {id:?} is not usable in a path; expected letters, digits, '_', '-' or '.', starting with a letter or digit"
            ));
        }
    }
    Ok(())
}

/// Checks every command and resolves its working directory. All problems are
/// reported together; nothing runs if there is one.
fn prepare<'a>(spec: &'a JobSpec, project: &Path) -> Result<Vec<Prepared<'a>>, String> {
    let mut problems = Vec::new();
    let mut out = Vec::with_capacity(spec.commands.len());
    if spec.commands.is_empty() {
        problems.push("the step has no commands; expected at least one".to_owned());
    }
    if let Err(msg) = check_env(&spec.env) {
        problems.push(format!("the step's env: {msg}"));
    }
    for (i, cmd) in spec.commands.iter().enumerate() {
        let label = format!("command {i} ({})", describe(cmd));
        let checked = check_command(cmd, spec.shell)
            .and_then(|()| check_env(&cmd.env))
            .and_then(|()| resolve_cwd(project, cmd.cwd.as_deref()));
        let cwd_abs = match checked {
            Ok(p) => p,
            Err(msg) => {
                problems.push(format!("command {i} is refused: {msg}"));
                continue;
            }
        };
        let argv = match &cmd.run {
            Some(run) => vec!["/bin/sh".to_owned(), "-c".to_owned(), run.clone()],
            None => cmd.argv.clone(),
        };
        let env_keys: BTreeSet<&String> = spec.env.keys().chain(cmd.env.keys()).collect();
        out.push(Prepared {
            spec: cmd,
            argv,
            cwd_rel: cmd.cwd.clone().unwrap_or_else(|| ".".to_owned()),
            cwd_abs,
            env_keys: env_keys.into_iter().cloned().collect(),
            label,
        });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.join("; "))
    }
}

/// Names and values the OS cannot carry (or that would mean something else).
fn check_env(env: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in env {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(format!(
                "invalid environment variable name {k:?}: expected letters, digits and '_'"
            ));
        }
        if v.contains('\0') {
            return Err(format!(
                "environment variable {k:?} holds a NUL byte; values must be plain strings"
            ));
        }
    }
    Ok(())
}

/// The working directory, which must resolve (symlinks followed) to a
/// directory inside the canonical project directory.
fn resolve_cwd(project: &Path, cwd: Option<&str>) -> Result<PathBuf, String> {
    let Some(cwd) = cwd else {
        return Ok(project.to_owned());
    };
    let resolved = project.join(cwd).canonicalize().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            format!("cwd {cwd:?} does not exist in the project directory")
        } else {
            format!("cwd {cwd:?} cannot be resolved: {e}")
        }
    })?;
    if !resolved.starts_with(project) {
        return Err(format!(
            "cwd {cwd:?} resolves to {}, outside the project directory {}; symlinks must not lead out of the project",
            resolved.display(),
            project.display()
        ));
    }
    if !resolved.is_dir() {
        return Err(format!("cwd {cwd:?} is not a directory"));
    }
    Ok(resolved)
}

/// A short human form of a command for messages: `sleep 10`, `sh -c "..."`.
fn describe(cmd: &CommandSpec) -> String {
    let text = match &cmd.run {
        Some(run) => run.clone(),
        None => cmd
            .argv
            .iter()
            .map(|a| {
                if a.is_empty() || a.contains(char::is_whitespace) || a.contains(['"', '\'']) {
                    format!("{a:?}")
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    };
    if text.chars().count() > DESCRIBE_MAX {
        let cut: String = text.chars().take(DESCRIBE_MAX - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// A duration as the workflow would write it: `300ms`, `1s`, `10m`.
fn fmt_ms(d: Duration) -> String {
    DurationSpec(millis(d)).to_string()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_quote_and_truncate() {
        let cmd = CommandSpec {
            argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
            run: None,
            cwd: None,
            env: BTreeMap::new(),
            timeout: None,
        };
        assert_eq!(describe(&cmd), r#"sh -c "exit 3""#);
        let long = CommandSpec {
            argv: vec!["x".repeat(200)],
            ..cmd
        };
        assert_eq!(describe(&long).chars().count(), DESCRIBE_MAX);
    }

    #[test]
    fn ids_that_would_leave_the_bundle_tree_are_refused() {
        let spec = |run_id: &str| JobSpec {
            run_id: run_id.into(),
            stage_id: "s".into(),
            step: 0,
            steps_total: 1,
            attempt: 1,
            step_name: None,
            project_dir: "/".into(),
            shell: false,
            commands: vec![],
            env: BTreeMap::new(),
            timeout_ms: None,
        };
        assert!(check_ids(&spec("01HX-run")).is_ok());
        assert!(check_ids(&spec("..")).is_err());
        assert!(check_ids(&spec("a/b")).is_err());
        assert!(check_ids(&spec("")).is_err());
    }

    #[test]
    fn cancel_reason_keeps_the_first() {
        let r = CancelReason::new();
        assert_eq!(r.get(), "step cancelled");
        r.set("agent shutting down");
        r.clone().set("lease revoked");
        assert_eq!(r.get(), "agent shutting down");
    }
}
