//! What a step has done so far ([`Recorder`]: its commands, sandbox, caches,
//! waits) and how a failure is classed ([`Failure`]); at the end, the manifest
//! written to the bundle and the outcome returned to the agent, with the
//! step's secret values masked in both.

use std::path::Path;

use orchestrator_core::api::{AppliedLimits, ClaimedJob, CommandRecord, Manifest, StepOutcome};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::spec::SandboxKind;
use orchestrator_host::now_ms;
use tokio::time::Instant;

use super::{millis, redact, usage, StepContext};
use crate::bundle::Bundle;

/// A failed step's class and message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(super) class: ErrorClass,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn task(message: String) -> Self {
        Failure {
            class: ErrorClass::Task,
            message,
        }
    }
    pub(super) fn infra(message: String) -> Self {
        Failure {
            class: ErrorClass::Infra,
            message,
        }
    }
}

/// What the step has done so far, turned into the manifest and the outcome.
pub(crate) struct Recorder<'a> {
    pub(super) job: &'a ClaimedJob,
    pub(super) ctx: &'a StepContext,
    pub(super) rel: String,
    pub(super) started: Instant,
    pub(super) started_at_ms: i64,
    pub(super) commands: Vec<CommandRecord>,
    pub(super) exit_codes: Vec<Option<i32>>,
    /// The backend the commands run in, once chosen.
    pub(super) sandbox: SandboxKind,
    /// What that backend enforces on each command.
    pub(super) limits: Option<AppliedLimits>,
    /// What the step did with its stage's caches.
    pub(super) caches: Vec<orchestrator_core::api::CacheRecord>,
    /// The questions the step waited for while it ran.
    pub(super) waits: Vec<orchestrator_core::api::WaitRecord>,
    /// After a task failure, the end of the failing command's output.
    pub(super) log_tail: Option<String>,
    /// What the step wrote to `$ORCH_OUTPUT`, once read.
    pub(super) outputs: orchestrator_core::outputs::Outputs,
}

impl<'a> Recorder<'a> {
    pub(super) fn new(job: &'a ClaimedJob, ctx: &'a StepContext, rel: String) -> Self {
        Recorder {
            job,
            ctx,
            rel,
            started: Instant::now(),
            started_at_ms: now_ms(),
            commands: Vec::new(),
            exit_codes: Vec::new(),
            sandbox: job.spec.sandbox.kind.unwrap_or(ctx.sandbox.default),
            limits: None,
            caches: Vec::new(),
            waits: Vec::new(),
            log_tail: None,
            outputs: Default::default(),
        }
    }

    pub(super) fn outcome(self, failure: Option<Failure>) -> StepOutcome {
        let (error_class, error) = match failure {
            Some(f) => (
                Some(f.class),
                Some(self.hide(&format!("{} [{}]", f.message, self.context()))),
            ),
            None => (None, None),
        };
        let failed = error.is_some();
        StepOutcome {
            success: error.is_none(),
            timed_out: error.is_some() && self.commands.iter().any(|c| c.timed_out),
            exit_codes: self.exit_codes,
            error,
            error_class,
            bundle: self.rel,
            duration_ms: millis(self.started.elapsed()),
            checkpoint: None,
            until_met: None,
            questions: Vec::new(),
            sandbox: Some(self.sandbox),
            log_tail: self.log_tail.filter(|_| failed),
            outputs: if failed {
                Default::default()
            } else {
                self.outputs
            },
        }
    }

    /// `text` with the step's secret values and model key masked.
    pub(super) fn hide(&self, text: &str) -> String {
        let spec = &self.job.spec;
        redact::text(text, &redact::values(spec.hidden_values()))
    }

    /// Where a failure happened and what the machine looked like then:
    /// the human who reads the error needs both.
    pub(super) fn context(&self) -> String {
        let spec = &self.job.spec;
        let machine = crate::context::describe(Path::new(&spec.project_dir));
        format!(
            "run {}, stage {}, step {}, round {}, attempt {}, agent {} on {}{}{}",
            spec.run_id,
            spec.stage_id,
            spec.shown_step(),
            spec.round,
            spec.attempt,
            self.ctx.agent_id,
            self.ctx.hostname.as_deref().unwrap_or("an unknown host"),
            if machine.is_empty() { "" } else { "; " },
            machine
        )
    }

    /// Writes the manifest, then returns the outcome and the manifest's
    /// bytes. A step that succeeded but whose manifest cannot be written
    /// fails as an infrastructure fault.
    pub(super) async fn finish(
        mut self,
        bundle: &Bundle,
        failure: Option<Failure>,
    ) -> (StepOutcome, Option<Vec<u8>>) {
        let spec = &self.job.spec;
        let models = match (&spec.api_key, &self.ctx.daemon_url) {
            (Some(key), Some(url)) => usage::fetch(url, &key.0).await,
            _ => Default::default(),
        };
        let manifest = Manifest {
            run_id: spec.run_id.clone(),
            stage_id: spec.stage_id.clone(),
            step: spec.shown_step(),
            step_name: spec.step_name.clone(),
            attempt: spec.attempt,
            round: spec.round,
            round_reason: spec.round_reason,
            job_id: self.job.job_id,
            agent_id: self.ctx.agent_id.clone(),
            hostname: self.ctx.hostname.clone(),
            started_at_ms: self.started_at_ms,
            ended_at_ms: now_ms(),
            success: failure.is_none(),
            error: failure.as_ref().map(|f| self.hide(&f.message)),
            error_class: failure.as_ref().map(|f| f.class),
            // A copy: the outcome still reads them (whether one timed out).
            commands: self.commands.clone(),
            sandbox: self.sandbox,
            limits: self.limits.take(),
            models,
            caches: std::mem::take(&mut self.caches),
            waits: std::mem::take(&mut self.waits),
        };
        let written = bundle.write_manifest(&manifest).await;
        // One line: the checkpoint keeps it in a commit header.
        let bytes = written
            .as_ref()
            .ok()
            .and_then(|_| serde_json::to_vec(&manifest).ok());
        let failure = match (written, failure) {
            (Ok(_), failure) => failure,
            (Err(e), None) => Some(Failure::infra(e.to_string())),
            (Err(e), Some(failure)) => {
                tracing::warn!(error = %e, "could not write the manifest of a failed step");
                Some(failure)
            }
        };
        (self.outcome(failure), bytes)
    }
}
