//! `cargo bench --bench sched`: the store's dispatch path alone, with
//! no HTTP and no processes. A fresh `SqlStore` gets N simulated agents
//! of three kinds and M queued one-step stages of five resource shapes in
//! runs of mixed priority; then every agent slot claims and completes as
//! fast as the store answers, the way the real agent's slot loop does
//! (`complete` with `claim_next`, `claim` when that hands out nothing).
//!
//! It reports dispatches per second, the latency of every answer that
//! handed out a job, what the writer batched, and what the pre-emption
//! passes cost, and it fails unless every job completed exactly once, no
//! agent was ever given more than it has, and every job went to an agent
//! of the kind it needs.

use orchestrator_core::JobId;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use orchestrator_core::api::RegisterAgent;
use orchestrator_core::sched::Gpu;
use orchestrator_store::{Location, NewRun, SqlStore, StoreOptions};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

mod agents;
mod host;
mod workload;

use agents::{audit_loop, preempt_loop, slot, watchdog, Agent, Held, Shared};
use host::{load_average, schedstat, writer_threads};
use workload::{agent_kind, agent_spec, workflows, AgentKind, AgentSpec};

/// Lease time and the "online" window of the pre-emption pass, as the
/// daemon's defaults. No reaper runs here, so no lease expires whatever it is.
const TTL_MS: u64 = 30_000;
/// A slot that got nothing waits this long (or until work is queued), as
/// the real agent's long-poll does; nothing is queued during dispatch, so
/// an idle slot costs the writer one command per wait, not a busy loop.
const CLAIM_WAIT: Duration = Duration::from_millis(orchestrator_agent::agent::CLAIM_WAIT_MS);
/// With every slot working, a minute without one completion is a stall
/// (a job no agent will take, capacity never given back): fail, do not hang.
const STALL: Duration = Duration::from_secs(60);
const GIB: u64 = 1024;

/// The sched bench's options.
#[derive(Debug, clap::Args)]
pub struct SchedOpts {
    /// Jobs queued before dispatch starts.
    #[arg(long, alias = "sched-jobs", default_value_t = 100_000)]
    pub jobs: usize,
    /// Simulated agents (70% CPU, 20% big, 10% GPU).
    #[arg(long, alias = "sched-agents", default_value_t = 1000)]
    pub agents: usize,
    /// Runs the jobs are spread over, priorities 0 to 9 in turn; each run is
    /// one workflow of jobs/runs independent stages (fewer runs when there
    /// are fewer jobs).
    #[arg(long, alias = "sched-runs", default_value_t = 100)]
    pub runs: usize,
    /// Milliseconds between pre-emption passes, as the daemon's tick; 0
    /// runs none.
    #[arg(long, alias = "sched-preempt-ms", default_value_t = 250)]
    pub preempt_ms: u64,
    /// Times the workload runs, each on a fresh store; medians are reported.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// The store to measure: a PostgreSQL URL (`postgres://USER@HOST/DB`);
    /// each repeat gets a schema of its own there, dropped afterwards.
    /// Default: a SQLite file in the bench's directory.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Every job plain and every agent a 4-slot CPU agent: the claim path
    /// alone, for any number of agents (the default mix of kinds needs ten
    /// or more).
    #[arg(long, alias = "sched-plain")]
    pub plain: bool,
}

/// One repeat's figures.
#[derive(Serialize, Clone)]
pub struct SchedSample {
    /// The 1-minute load average before submitting and after dispatch.
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    pub register_s: f64,
    pub submit_s: f64,
    pub dispatch_s: f64,
    pub dispatches_per_s: f64,
    pub claim_p50_ms: f64,
    pub claim_p99_ms: f64,
    pub claim_max_ms: f64,
    /// Claims that handed out nothing (a slot finding no job that fits).
    pub empty_claims: usize,
    pub preempt_passes: usize,
    pub yields_asked: usize,
    pub preempt_slowest_ms: f64,
    pub preempt_total_ms: f64,
    /// Store commands per transaction during dispatch.
    pub commands_per_commit: f64,
    /// Mean COMMIT time, fsync included.
    pub commit_ms: f64,
    pub largest_batch: u64,
    /// Snapshots of `list_agents` checked during dispatch.
    pub audits: usize,
    /// The writer thread's time per dispatch on a CPU, and runnable but
    /// waiting for one (Linux only).
    pub writer_cpu_ms_per_dispatch: Option<f64>,
    pub writer_runqueue_ms_per_dispatch: Option<f64>,
    /// COMMIT time (fsync) per dispatch.
    pub commit_ms_per_dispatch: f64,
}

/// The `sched` workload's row: medians of the repeats, and every sample.
#[derive(Serialize)]
pub struct SchedRow {
    pub workload: String,
    /// SQLite or PostgreSQL.
    pub store: String,
    pub jobs: usize,
    pub runs: usize,
    pub agents: usize,
    pub slots: u32,
    pub repeat: usize,
    pub preempt_ms: u64,
    pub submit_s: f64,
    pub dispatch_s: f64,
    pub dispatches_per_s: f64,
    pub claim_p50_ms: f64,
    pub claim_p99_ms: f64,
    pub claim_max_ms: f64,
    pub samples: Vec<SchedSample>,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

async fn once(o: &SchedOpts, dir: &Path) -> Result<SchedSample> {
    let load_before = load_average();
    let writers_before = writer_threads();
    let scratch = o
        .store
        .as_deref()
        .map(|url| orchestrator_store::ScratchSchema::new(url, "orch_bench_sched"));
    let location = match &scratch {
        Some(s) => Location::parse(&s.store()),
        None => Location::Sqlite(dir.join("orch.db")),
    };
    let store = SqlStore::open(StoreOptions::at(location))?;

    let t = Instant::now();
    let specs: Vec<AgentSpec> = (0..o.agents)
        .map(|i| agent_spec(agent_kind(i, o.plain)))
        .collect();
    // Registered concurrently so group commit takes them in batches; not timed as dispatch.
    let regs = futures_util::future::try_join_all(specs.iter().enumerate().map(|(i, s)| {
        store.register_agent(
            RegisterAgent {
                name: format!("sim-{i:05}"),
                slots: s.slots,
                memory_mb: s.memory_mb,
                gpus: s
                    .gpus
                    .iter()
                    .enumerate()
                    .map(|(g, m)| Gpu {
                        index: g as u32,
                        name: "sim".into(),
                        memory_mb: *m,
                    })
                    .collect(),
                labels: match s.kind {
                    AgentKind::Cpu => vec![],
                    AgentKind::Big => vec!["big".into()],
                    AgentKind::Gpu => vec!["gpu".into()],
                },
                hostname: Some("bench".into()),
                model_memory: Default::default(),
            },
            TTL_MS,
            TTL_MS / 3,
        )
    }))
    .await?;
    let register_s = t.elapsed().as_secs_f64();
    // Only now: the writer names itself when it starts, which may be after
    // `open` returns; it has certainly started once it answered.
    let writer = writer_threads()
        .into_iter()
        .find(|t| !writers_before.contains(t));
    let agents: Vec<Agent> = regs
        .into_iter()
        .zip(specs)
        .map(|(r, spec)| Agent {
            id: r.agent_id,
            held: Mutex::new(Held {
                gpu_mb: vec![0; spec.gpus.len()],
                ..Default::default()
            }),
            spec,
        })
        .collect();

    let wfs = workflows(o.jobs, o.runs, o.plain)?;
    let runs = wfs.len();
    let t = Instant::now();
    for (r, yaml) in wfs.into_iter().enumerate() {
        let s = store
            .submit_run(NewRun {
                workflow: yaml,
                file: Some(format!("sched-{r}.yaml")),
                project_dir: "/bench/sched".into(),
                priority: Some((r % 10) as i32),
                policy: Default::default(),
                base_commit: "0".repeat(40),
                tree: Vec::new(),
                actor: orchestrator_core::Actor::user("bench"),
                on_failure: None,
                inputs: Default::default(),
            })
            .await?;
        if !s.warnings.is_empty() {
            bail!("run {r} would wait forever: {}", s.warnings.join("; "));
        }
    }
    let submit_s = t.elapsed().as_secs_f64();
    let queued: i64 = store
        .counts()
        .await?
        .jobs
        .iter()
        .filter(|(s, _)| s == "queued")
        .map(|(_, n)| n)
        .sum();
    if queued != o.jobs as i64 {
        bail!("{queued} jobs queued after submitting {} stages", o.jobs);
    }

    let before = store.writer_stats();
    let sched_before = writer.as_deref().and_then(schedstat);
    let sh = Arc::new(Shared {
        store,
        agents,
        jobs: o.jobs,
        completed: AtomicUsize::new(0),
        last_done_us: AtomicU64::new(0),
        empty_claims: AtomicUsize::new(0),
        violations: Mutex::new(Vec::new()),
        done: CancellationToken::new(),
        start: Instant::now(),
    });
    let preempt = (o.preempt_ms > 0).then(|| {
        tokio::spawn(preempt_loop(
            sh.clone(),
            Duration::from_millis(o.preempt_ms),
        ))
    });
    let audit = tokio::spawn(audit_loop(sh.clone()));
    let watch = tokio::spawn(watchdog(sh.clone()));
    let mut slots = tokio::task::JoinSet::new();
    for (a, agent) in sh.agents.iter().enumerate() {
        for _ in 0..agent.spec.slots {
            slots.spawn(slot(sh.clone(), a));
        }
    }
    let mut dispatched: Vec<(JobId, u32)> = Vec::with_capacity(o.jobs);
    let mut failed = None;
    while let Some(r) = slots.join_next().await {
        match r.context("an agent slot panicked").and_then(|r| r) {
            Ok(v) => dispatched.extend(v),
            Err(e) => {
                // The others would wait for jobs that will never complete.
                sh.done.cancel();
                failed.get_or_insert(e);
            }
        }
    }
    let dispatch_s = sh.last_done_us.load(Ordering::Acquire) as f64 / 1e6;
    watch.await??;
    if let Some(e) = failed {
        return Err(e);
    }
    let after = sh.store.writer_stats();
    let sched_after = writer.as_deref().and_then(schedstat);
    let (preempt_passes, yields_asked, preempt_slowest_ms, preempt_total_ms) = match preempt {
        Some(p) => p.await??,
        None => (0, 0, 0.0, 0.0),
    };
    let audits = audit.await??;

    // Correctness, from the bench's records and the store's.
    let mut problems = sh
        .violations
        .lock()
        .map(|v| v.clone())
        .unwrap_or_else(|_| vec!["the violations list was poisoned".into()]);
    let distinct: HashSet<JobId> = dispatched.iter().map(|(j, _)| *j).collect();
    if dispatched.len() != o.jobs || distinct.len() != o.jobs {
        problems.push(format!(
            "{} dispatches of {} distinct jobs; expected {} of each",
            dispatched.len(),
            distinct.len(),
            o.jobs
        ));
    }
    let counts = sh.store.counts().await?;
    let expect = |what: &str, rows: &[(String, i64)], n: usize| {
        let want = vec![("succeeded".to_owned(), n as i64)];
        (rows != want.as_slice()).then(|| format!("{what} by state: {rows:?}, expected {want:?}"))
    };
    problems.extend(expect("jobs", &counts.jobs, o.jobs));
    problems.extend(expect("stages", &counts.stages, o.jobs));
    problems.extend(expect("runs", &counts.runs, runs));
    for v in sh.store.list_agents(TTL_MS).await? {
        if v.running != 0 {
            problems.push(format!("agent {} still runs {} jobs", v.id, v.running));
        }
    }
    if !problems.is_empty() {
        let shown: Vec<&str> = problems.iter().take(20).map(String::as_str).collect();
        bail!(
            "sched: {} correctness problems (the store is kept at {}):\n  {}",
            problems.len(),
            dir.display(),
            shown.join("\n  ")
        );
    }
    sh.store.close().await;

    let mut lat: Vec<u32> = dispatched.iter().map(|(_, us)| *us).collect();
    lat.sort_unstable();
    let batches = after.batches.saturating_sub(before.batches);
    let commands = after.commands.saturating_sub(before.commands);
    let commit_us = after.commit_micros.saturating_sub(before.commit_micros);
    let per_dispatch_ms = |ns: u64| ns as f64 / 1e6 / o.jobs as f64;
    let (writer_cpu, writer_wait) = match (sched_before, sched_after) {
        (Some(b), Some(a)) => (
            Some(per_dispatch_ms(a.0.saturating_sub(b.0))),
            Some(per_dispatch_ms(a.1.saturating_sub(b.1))),
        ),
        _ => (None, None),
    };
    Ok(SchedSample {
        load_before,
        load_after: load_average(),
        register_s,
        submit_s,
        dispatch_s,
        dispatches_per_s: o.jobs as f64 / dispatch_s.max(1e-9),
        claim_p50_ms: percentile(&lat, 50.0),
        claim_p99_ms: percentile(&lat, 99.0),
        claim_max_ms: lat.last().map_or(0.0, |us| f64::from(*us) / 1000.0),
        empty_claims: sh.empty_claims.load(Ordering::Relaxed),
        preempt_passes,
        yields_asked,
        preempt_slowest_ms,
        preempt_total_ms,
        commands_per_commit: commands as f64 / batches.max(1) as f64,
        commit_ms: commit_us as f64 / 1000.0 / batches.max(1) as f64,
        largest_batch: after.max_batch,
        audits,
        writer_cpu_ms_per_dispatch: writer_cpu,
        writer_runqueue_ms_per_dispatch: writer_wait,
        commit_ms_per_dispatch: commit_us as f64 / 1000.0 / o.jobs as f64,
    })
}

/// Runs the workload `o.repeat` times, each on a fresh store under `root`.
pub async fn run(o: &SchedOpts, root: &Path) -> Result<SchedRow> {
    if o.jobs == 0 || o.agents == 0 || o.runs == 0 {
        bail!("--jobs, --agents and --runs must be at least 1");
    }
    let mut samples = Vec::new();
    for i in 0..o.repeat.max(1) {
        let dir = root.join(format!("sched-{i}"));
        std::fs::create_dir_all(&dir)?;
        samples.push(once(o, &dir).await?);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let med = |f: fn(&SchedSample) -> f64| {
        crate::stats::median(&samples.iter().map(f).collect::<Vec<_>>())
    };
    Ok(SchedRow {
        workload: "sched".into(),
        store: store_name(o.store.as_deref()).into(),
        jobs: o.jobs,
        runs: o.runs.min(o.jobs).max(1),
        agents: o.agents,
        slots: (0..o.agents)
            .map(|i| agent_spec(agent_kind(i, o.plain)).slots)
            .sum(),
        repeat: samples.len(),
        preempt_ms: o.preempt_ms,
        submit_s: med(|s| s.submit_s),
        dispatch_s: med(|s| s.dispatch_s),
        dispatches_per_s: med(|s| s.dispatches_per_s),
        claim_p50_ms: med(|s| s.claim_p50_ms),
        claim_p99_ms: med(|s| s.claim_p99_ms),
        claim_max_ms: med(|s| s.claim_max_ms),
        samples,
    })
}

/// The figures as text, a line each.
pub fn render(r: &SchedRow) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "SCHED: {} jobs in {} runs, {} agents ({} slots), in process, {} store, {} repeat(s) (medians)",
        r.jobs, r.runs, r.agents, r.slots, r.store, r.repeat
    );
    let _ = writeln!(
        out,
        "  submit        {:>9.2} s   ({:.0} jobs/s queued)",
        r.submit_s,
        r.jobs as f64 / r.submit_s.max(1e-9)
    );
    let _ = writeln!(
        out,
        "  dispatch      {:>9.2} s   {:.0} dispatches/s",
        r.dispatch_s, r.dispatches_per_s
    );
    let _ = writeln!(
        out,
        "  claim latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.claim_p50_ms, r.claim_p99_ms, r.claim_max_ms
    );
    for (i, s) in r.samples.iter().enumerate() {
        let preempt = if r.preempt_ms == 0 {
            "no pre-emption passes".to_owned()
        } else {
            format!(
                "{} pre-emption passes (every {} ms; slowest {:.1} ms, {:.0} ms in all) asked {} to yield",
                s.preempt_passes,
                r.preempt_ms,
                s.preempt_slowest_ms,
                s.preempt_total_ms,
                s.yields_asked
            )
        };
        let load = |l: Option<f64>| l.map_or("?".to_owned(), |l| format!("{l:.2}"));
        let _ = writeln!(
        out,
            "  #{i}: load {} -> {}; submit {:.2} s, dispatch {:.2} s, p50 {:.2} ms, p99 {:.2} ms; store {:.1} commands/commit (largest {}), {:.3} ms/commit; {} empty claims",
            load(s.load_before),
            load(s.load_after),
            s.submit_s,
            s.dispatch_s,
            s.claim_p50_ms,
            s.claim_p99_ms,
            s.commands_per_commit,
            s.largest_batch,
            s.commit_ms,
            s.empty_claims,
        );
        let ms = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.3}"));
        let _ = writeln!(
        out,
            "      writer per dispatch: {} ms on a CPU, {} ms waiting for one, {:.3} ms in COMMIT; {preempt}",
            ms(s.writer_cpu_ms_per_dispatch),
            ms(s.writer_runqueue_ms_per_dispatch),
            s.commit_ms_per_dispatch
        );
    }
    out.push_str("  checked: every job dispatched and succeeded once; no agent over its slots, memory or GPU memory; every job on an agent of its kind\n");
    out
}

/// The store a bench measures, as its header says it.
fn store_name(store: Option<&str>) -> &'static str {
    if store.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    }
}
