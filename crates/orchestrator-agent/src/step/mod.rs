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

use orchestrator_core::AgentId;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use orchestrator_core::api::{ClaimedJob, StepOutcome};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::spec::{DurationSpec, SandboxKind};
use tokio_util::sync::CancellationToken;

use crate::ask::{AskBox, WaitVia};
use crate::bundle::{Bundle, BundleError};
use crate::exec::EndReason;
use crate::sandbox::{Dirs, Limits, Sandbox, SandboxConfig};

mod caches;
mod checkpoint;
mod commands;
mod grant;
mod home;
mod logs;
mod marker;
mod outputs;
mod prepare;
mod record;
mod redact;
mod tail;
mod usage;

pub use checkpoint::ORCH_DIR;
use commands::{judge, Runner};
pub use logs::DEFAULT_LOG_CAP;
use prepare::{check_ids, check_project_dir, describe, prepare, prepare_one};
use record::{Failure, Recorder};

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
    pub agent_id: AgentId,
    pub hostname: Option<String>,
    pub cancel_reason: CancelReason,
    /// The agent's local endpoint for `orch ask`; without it a step cannot ask.
    pub asks: Option<AskBox>,
    /// Whether the agent has GPUs: a step granted none is then kept from
    /// them (an empty `CUDA_VISIBLE_DEVICES`).
    pub has_gpus: bool,
    /// How the agent isolates steps.
    pub sandbox: Arc<SandboxConfig>,
    /// The daemon's URL: a step with a job key gets `OPENAI_BASE_URL`
    /// `<daemon>/v1`, the model gateway.
    pub daemon_url: Option<String>,
}

/// The directory of the running `orch` binary, when it can be told.
fn orch_dir() -> Option<std::path::PathBuf> {
    static DIR: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_owned))
    })
    .clone()
}

/// Runs one claimed step on this machine and returns how it ended; see the
/// module documentation. `cancel` kills the running command's process group
/// (the outcome is then an infrastructure failure, "step cancelled").
pub async fn run_step(
    job: &ClaimedJob,
    agent_id: &AgentId,
    cancel: CancellationToken,
) -> StepOutcome {
    let ctx = StepContext {
        agent_id: agent_id.to_owned(),
        hostname: orchestrator_host::local_hostname(),
        cancel_reason: CancelReason::new(),
        asks: None,
        has_gpus: false,
        sandbox: Arc::default(),
        daemon_url: None,
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
        Err(e) => return rec.outcome(Some(Failure::task(e.to_string()))),
    };
    let bundle = match Bundle::create(&project, &rec.rel) {
        Ok(b) => b,
        Err(e @ BundleError::Escapes { .. }) => {
            return rec.outcome(Some(Failure::task(e.to_string())))
        }
        Err(e) => return rec.outcome(Some(Failure::infra(e.to_string()))),
    };
    let (worktree, workdir) = match checkpoint::open_worktree(&project, spec).await {
        Ok(w) => w,
        Err(failure) => return rec.finish(&bundle, Some(failure)).await.0,
    };
    let sandboxed = spec.sandbox.kind.unwrap_or(ctx.sandbox.default) != SandboxKind::Process;
    let step_git = match checkpoint::step_git(&project, &worktree, spec, sandboxed).await {
        Ok(g) => g,
        Err(failure) => return rec.finish(&bundle, Some(failure)).await.0,
    };
    let handed = match checkpoint::hand_over(&workdir, spec) {
        Ok(env) => env,
        Err(failure) => return rec.finish(&bundle, Some(failure)).await.0,
    };
    let ask = ctx.asks.as_ref().map(|asks| {
        asks.open(asks.daemon().map(|client| WaitVia {
            client: client.clone(),
            agent_id: ctx.agent_id.clone(),
            job_id: job.job_id,
            lease_token: job.lease_token.clone(),
        }))
    });
    let mut orch_env: Vec<(String, String)> = vec![
        ("ORCH_RUN_ID".into(), spec.run_id.to_string()),
        ("ORCH_STAGE_ID".into(), spec.stage_id.clone()),
        ("ORCH_STEP".into(), spec.shown_step().to_string()),
        ("ORCH_ITERATION".into(), spec.iteration.to_string()),
        ("ORCH_ATTEMPT".into(), spec.attempt.to_string()),
        ("ORCH_ROUND".into(), spec.round.to_string()),
        (
            "ORCH_ROUND_REASON".into(),
            spec.round_reason.as_str().to_owned(),
        ),
        ("ORCH_JOB_ID".into(), job.job_id.to_string()),
        (
            "ORCH_BUNDLE_DIR".into(),
            bundle.dir().to_string_lossy().into_owned(),
        ),
        (
            "ORCH_OUTPUT".into(),
            outputs::path(bundle.confined())
                .to_string_lossy()
                .into_owned(),
        ),
        (
            "ORCH_WORKTREE".into(),
            workdir.to_string_lossy().into_owned(),
        ),
        (
            "ORCH_PROJECT_DIR".into(),
            project.to_string_lossy().into_owned(),
        ),
    ];
    if let (Some(asks), Some(ask)) = (&ctx.asks, &ask) {
        orch_env.push(("ORCH_AGENT_URL".into(), asks.url().to_owned()));
        if let Some(socket) = asks.socket() {
            orch_env.push((
                "ORCH_AGENT_SOCKET".into(),
                socket.to_string_lossy().into_owned(),
            ));
        }
        orch_env.push(("ORCH_STEP_TOKEN".into(), ask.token.clone()));
    }
    // The gateway's variables go here, once the sandbox says where the
    // gateway is: before the secrets and handed values, as ever.
    let gateway_at = orch_env.len();
    orch_env.extend(spec.secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
    orch_env.extend(handed);
    let granted = grant::grant_env(&job.grant, ctx.has_gpus);
    orch_env.extend(granted.set);
    // Absolute: a data directory given relative to the agent's directory
    // would be looked for in the command's.
    let private: Vec<std::path::PathBuf> = ctx
        .sandbox
        .private
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .chain(crate::sandbox::private::registered())
        .collect();
    let mounts = match home::resolve(&spec.mounts, &ctx.sandbox.allow_mounts, &private) {
        Ok(m) => m,
        Err(e) => {
            return rec
                .finish(&bundle, Some(Failure::task(e.to_string())))
                .await
                .0
        }
    };
    // A process step keeps the agent's home: it sees the machine as is.
    let step_home = if !sandboxed {
        None
    } else {
        match home::prepare(&project, &spec.run_id, &spec.stage_id, &mounts) {
            Ok(h) => Some(h),
            Err(e) => {
                return rec
                    .finish(&bundle, Some(Failure::infra(e.to_string())))
                    .await
                    .0
            }
        }
    };
    if let Some(h) = &step_home {
        orch_env.push(("HOME".into(), h.to_string_lossy().into_owned()));
    }
    let caches = caches::Caches::new(
        spec,
        &project,
        &workdir,
        step_home.as_deref(),
        ctx.sandbox.cache_max,
    );
    let (mut caches, restored) = caches.restore().await;
    if let Err(e) = restored {
        rec.caches = std::mem::take(&mut caches.records);
        return rec
            .finish(&bundle, Some(Failure::task(e.to_string())))
            .await
            .0;
    }
    let dirs = Dirs {
        writable: [workdir.clone(), bundle.dir().to_owned()]
            .into_iter()
            .chain(step_home.clone())
            .chain(step_git.gitfile.as_ref().map(|_| step_git.dir.clone()))
            .collect(),
        // The worktree's `.git` points at the step's own git directory.
        covers: step_git
            .gitfile
            .iter()
            .map(|f| (f.clone(), workdir.join(".git")))
            .collect(),
        // The step socket's directory, so that `orch ask` works without
        // network, and the directory of the agent's own `orch`, so that it is
        // there to call even when it lives under a hidden directory (a home's
        // ~/.cargo/bin, a build directory under /tmp).
        readable: std::iter::once(project.join(".git"))
            .chain(
                ctx.asks
                    .as_ref()
                    .and_then(|a| a.socket()?.parent().map(Path::to_owned)),
            )
            .chain(orch_dir())
            .chain(mounts.paths.iter().cloned())
            .collect(),
        // Other runs' worktrees and bundles, and every daemon's and
        // agent's data directory on the machine, wherever it lives.
        hidden: std::iter::once(project.join(".orchestrator"))
            .chain(private)
            .collect(),
        project: Some(project.clone()),
        // A step with a key reaches the gateway, even without network:
        // through the step socket, which relays it to the daemon.
        gateway: ctx
            .asks
            .as_ref()
            .filter(|a| a.relays_gateway() && spec.api_key.is_some())
            .and_then(|a| a.socket().map(Path::to_owned)),
    };
    let limits = Limits {
        memory_mb: Some(job.grant.memory_mb).filter(|&m| m > 0),
        pids: ctx.sandbox.pids_max,
    };
    let sandbox = match Sandbox::new(&spec.sandbox, &ctx.sandbox, dirs, limits) {
        Ok(s) => s,
        Err(e) => {
            return rec
                .finish(&bundle, Some(Failure::task(e.to_string())))
                .await
                .0
        }
    };
    rec.sandbox = sandbox.kind();
    if let (Some(key), Some(url)) = (&spec.api_key, &ctx.daemon_url) {
        let base = sandbox
            .relayed_gateway()
            .unwrap_or_else(|| format!("{}/v1", url.trim_end_matches('/')));
        orch_env.splice(
            gateway_at..gateway_at,
            [
                ("OPENAI_API_KEY".into(), key.0.clone()),
                ("OPENAI_BASE_URL".into(), base),
            ],
        );
    }
    #[cfg(target_os = "linux")]
    {
        rec.limits = crate::sandbox::applied(&sandbox);
    }
    let state = project
        .join(".orchestrator")
        .join("vm")
        .join(spec.run_id.as_str())
        .join(&spec.stage_id);
    if let Err(e) = sandbox.begin_step(&state).await {
        return rec
            .finish(&bundle, Some(Failure::infra(e.to_string())))
            .await
            .0;
    }
    let kept = sandbox.clone();
    let runner = Runner::new(
        &bundle,
        &cancel,
        &ctx.cancel_reason,
        &spec.env,
        orch_env,
        spec.timeout_ms.map(Duration::from_millis),
        rec.started,
    )
    .without_inherited(granted.unset)
    .in_sandbox(sandbox)
    .capping_logs(ctx.sandbox.log_cap)
    .redacting(redact::values(spec.hidden_values()));
    let mut failure = match prepare(spec, &workdir) {
        Err(e) => Some(Failure::task(e.to_string())),
        Ok(commands) => runner.run_all(&commands, &mut rec).await,
    };
    if failure
        .as_ref()
        .is_some_and(|f| f.class == ErrorClass::Task)
    {
        rec.log_tail = tail::of_last_command(&bundle, rec.commands.len());
    }
    let mut until_met = None;
    if let (None, Some(until)) = (&failure, &spec.until) {
        let label = format!("until ({})", describe(until));
        match prepare_one(until, spec.until_shell, &spec.env, &workdir, label) {
            Err(msg) => {
                failure = Some(Failure::task(format!("the loop's until is refused: {msg}")))
            }
            Ok(check) => match runner.run_one(spec.commands.len(), &check, &mut rec).await {
                Err(f) => failure = Some(f),
                // An out-of-memory kill is a failure, not an answer.
                Ok((ended, _))
                    if ended.reason == EndReason::Exited
                        && ended.cgroup.is_none_or(|c| c.oom_kills == 0) =>
                {
                    until_met = Some(ended.status.success())
                }
                Ok((ended, limit)) => failure = judge(&check, ended, limit, &ctx.cancel_reason),
            },
        }
    }
    drop(runner);
    if let (None, Some(text)) = (&failure, &spec.until_output) {
        let (dir, text, count) = (bundle.confined().clone(), text.clone(), spec.commands.len());
        match tokio::task::spawn_blocking(move || marker::printed(&dir, count, &text)).await {
            Ok(found) => until_met = Some(found),
            Err(e) => failure = Some(Failure::infra(format!("reading the step's logs: {e}"))),
        }
    }
    if failure.is_none() {
        let dir = bundle.confined().clone();
        match tokio::task::spawn_blocking(move || outputs::read(&dir)).await {
            Ok(Ok(out)) => rec.outputs = out,
            Ok(Err(msg)) => failure = Some(Failure::task(msg)),
            Err(e) => failure = Some(Failure::infra(format!("reading the step's outputs: {e}"))),
        }
    }
    // Whatever the step did to the worktree's `.git`, no git runs through
    // it: neither the agent's nor a user's looking at the run's work.
    let guarded = {
        let (project, path) = (project.clone(), worktree.path.clone());
        tokio::task::spawn_blocking(move || {
            orchestrator_host::git::guard(&project, &path).map(drop)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    };
    if let Err(e) = guarded {
        failure = failure.or(Some(Failure::infra(format!(
            "checking the worktree's .git: {e}"
        ))));
    }
    // Saved before the checkpoint, so that its manifest says so.
    if failure.is_none() && until_met != Some(false) {
        caches = caches.save(spec).await;
    }
    rec.caches = caches.records;
    let asked = ask.map(|a| a.finish()).unwrap_or_default();
    rec.waits = asked.waits;
    let questions = asked.questions;
    let (mut outcome, manifest) = rec.finish(&bundle, failure).await;
    let Some(manifest) = manifest.filter(|_| outcome.success) else {
        return outcome;
    };
    match checkpoint::commit(&project, worktree, step_git, spec, job.job_id, manifest).await {
        Ok(made) => {
            if let Err(e) = kept.keep().await {
                outcome.success = false;
                outcome.error = Some(e.to_string());
                outcome.error_class = Some(ErrorClass::Infra);
                return outcome;
            }
            outcome.checkpoint = Some(made);
            outcome.until_met = until_met;
            outcome.questions = questions;
        }
        Err(f) => {
            outcome.success = false;
            outcome.error = Some(f.message);
            outcome.error_class = Some(f.class);
        }
    }
    outcome
}
/// A duration as the workflow would write it: `300ms`, `1s`, `10m`.
fn fmt_ms(d: Duration) -> String {
    DurationSpec(millis(d)).to_string()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_reason_keeps_the_first() {
        let r = CancelReason::new();
        assert_eq!(r.get(), "step cancelled");
        r.set("agent shutting down");
        r.set("lease revoked");
        assert_eq!(r.get(), "agent shutting down");
    }
}
