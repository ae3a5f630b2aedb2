//! `cargo bench --bench sandbox`: what each sandbox backend adds to a
//! step. The agent's own step runner runs a one-command step (`/bin/true`)
//! again and again under each backend in turn, rounds interleaved so that
//! the machine's noise falls on every backend alike; reported are the median
//! and p90 per step and the median's difference to `process` (no isolation)
//! measured in the same rounds. A step is what an agent does for a job:
//! prepare the worktree, write the bundle, run the command, commit the
//! checkpoint, so the difference is the backend's cost per step.

use orchestrator_core::{JobId, LeaseId};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use orchestrator_agent::sandbox::{Dirs, Limits, Sandbox, SandboxConfig, VmOpts};
use orchestrator_agent::{run_step_with, StepContext};
use orchestrator_core::api::{ClaimedJob, JobSpec, SandboxSpec};
use orchestrator_core::spec::{CommandSpec, SandboxKind};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// One backend's figures.
#[derive(Debug, Serialize)]
pub struct SandboxRow {
    pub workload: &'static str,
    pub sandbox: SandboxKind,
    /// Why the backend could not run here; no figures then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    pub steps: usize,
    pub median_ms_per_step: f64,
    pub p90_ms_per_step: f64,
    /// Median minus `process`'s median, measured in the same rounds.
    pub overhead_ms_per_step: f64,
}

/// Steps a backend that boots a machine per command runs, at most: each
/// costs seconds.
const VM_STEPS: usize = 5;

/// The sandbox bench's options: how many steps, and what the `vm` and
/// `container` backends need (as `orch agent` takes them).
#[derive(Debug, clap::Args)]
pub struct SandboxOpts {
    /// Steps under each backend (a `vm` runs 5 at most: each boots a machine).
    #[arg(long, alias = "sandbox-steps", default_value_t = 200)]
    pub steps: usize,
    #[command(flatten)]
    pub vm: VmOpts,
    /// The image the `container` steps run in (a root file system directory
    /// or tarball); without it `container` is reported unavailable.
    #[arg(long, value_name = "PATH", env = "ORCH_CONTAINER_IMAGE")]
    pub container_image: Option<PathBuf>,
}

impl SandboxOpts {
    /// The agent's sandbox configuration these options make, its backend
    /// state kept under `root`.
    pub fn config(&self, root: &Path) -> SandboxConfig {
        SandboxConfig {
            vm: self.vm.config(),
            container_image: self.container_image.clone(),
            work_dir: Some(root.join("sandbox-state")),
            ..SandboxConfig::default()
        }
    }
}

/// Runs `steps` steps per backend in `root` (a fresh directory) on an agent
/// configured as `cfg`.
pub async fn run(steps: usize, cfg: SandboxConfig, root: &Path) -> Result<Vec<SandboxRow>> {
    let project = root.join("sandbox-project");
    let head = orchestrator_host::git::new_project(
        &project,
        &[("README.md", "the sandbox bench's project\n")],
    )?;
    orchestrator_host::git::ensure_worktree(&project, &"bench".into(), &head)
        .context("cannot make the bench's worktree")?;
    let ctx = StepContext {
        agent_id: "bench".into(),
        sandbox: Arc::new(cfg),
        ..StepContext::default()
    };
    // Which backends can run here: the agent's own check, on a dry build.
    let mut kinds = Vec::new();
    let mut rows = Vec::new();
    for kind in SandboxKind::ALL {
        let spec = SandboxSpec {
            kind: Some(kind),
            ..SandboxSpec::default()
        };
        match Sandbox::new(&spec, &ctx.sandbox, Dirs::default(), Limits::default()) {
            Ok(_) => kinds.push(kind),
            Err(e) => rows.push(SandboxRow {
                workload: "sandbox",
                sandbox: kind,
                unavailable: Some(e.to_string()),
                steps: 0,
                median_ms_per_step: 0.0,
                p90_ms_per_step: 0.0,
                overhead_ms_per_step: 0.0,
            }),
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut job_id = 0;
    for round in 0..steps.max(1) {
        for (i, &kind) in kinds.iter().enumerate() {
            if kind == SandboxKind::Vm && round >= VM_STEPS {
                continue;
            }
            job_id += 1;
            let job = job(&project, &head, kind, JobId::new(job_id));
            let t = Instant::now();
            let out = run_step_with(&job, &ctx, CancellationToken::new()).await;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if !out.success {
                anyhow::bail!(
                    "a bench step under sandbox: {kind} failed: {}",
                    out.error.unwrap_or_default()
                );
            }
            samples[i].push(ms);
        }
    }
    let base = kinds
        .iter()
        .position(|k| *k == SandboxKind::Process)
        .map(|i| crate::stats::median(&samples[i]))
        .unwrap_or(0.0);
    for (kind, s) in kinds.into_iter().zip(samples) {
        let median = crate::stats::median(&s);
        rows.push(SandboxRow {
            workload: "sandbox",
            sandbox: kind,
            unavailable: None,
            steps: s.len(),
            median_ms_per_step: median,
            p90_ms_per_step: percentile(&s, 0.9),
            overhead_ms_per_step: median - base,
        });
    }
    rows.sort_by_key(|r| SandboxKind::ALL.iter().position(|k| *k == r.sandbox));
    Ok(rows)
}

fn job(project: &Path, head: &str, kind: SandboxKind, job_id: JobId) -> ClaimedJob {
    ClaimedJob {
        job_id,
        lease_id: LeaseId::new(job_id.get()),
        lease_token: String::new(),
        queued_at_ms: 0,
        lease_expires_at_ms: 0,
        grant: Default::default(),
        spec: JobSpec {
            run_id: "bench".into(),
            stage_id: kind.as_str().into(),
            step: 0,
            steps_total: 1,
            attempt: 1,
            project_dir: project.to_string_lossy().into_owned(),
            commands: vec![CommandSpec {
                argv: vec!["/bin/true".into()],
                run: None,
                cwd: None,
                env: Default::default(),
                timeout: None,
            }],
            base_commit: head.to_owned(),
            sandbox: SandboxSpec {
                kind: Some(kind),
                ..SandboxSpec::default()
            },
            ..JobSpec::default()
        },
    }
}

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => 0.0,
        n => s[((n as f64 - 1.0) * q).round() as usize],
    }
}

/// The figures as text: a line per backend.
pub fn render(rows: &[SandboxRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>6} {:>12} {:>12} {:>14}",
        "SANDBOX", "STEPS", "MEDIAN ms", "P90 ms", "VS PROCESS ms"
    );
    for r in rows {
        match &r.unavailable {
            Some(why) => {
                let _ = writeln!(out, "{:<12} unavailable: {why}", r.sandbox.as_str());
            }
            None => {
                let _ = writeln!(
                    out,
                    "{:<12} {:>6} {:>12.2} {:>12.2} {:>+14.2}",
                    r.sandbox.as_str(),
                    r.steps,
                    r.median_ms_per_step,
                    r.p90_ms_per_step,
                    r.overhead_ms_per_step
                );
            }
        }
    }
    out
}
