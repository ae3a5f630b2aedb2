//! `orch bench --workloads sched`: the store's dispatch path alone, with
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

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use orchestrator_core::api::{ClaimedJob, CompleteRequest, RegisterAgent, StepOutcome};
use orchestrator_core::sched::{Gpu, Grant};
use orchestrator_store::{Location, NewRun, SqlStore, Store, StoreOptions};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

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

/// What `orch bench` passes in.
pub struct SchedOpts {
    pub jobs: usize,
    pub agents: usize,
    /// Runs the jobs are spread over (fewer when there are fewer jobs).
    pub runs: usize,
    /// Milliseconds between pre-emption passes; 0 runs none.
    pub preempt_ms: u64,
    pub repeat: usize,
    /// A PostgreSQL URL to measure instead of a SQLite file.
    pub store: Option<String>,
    /// Every job plain and every agent a 4-slot CPU agent: the claim path
    /// alone, for any number of agents (the mix needs ten or more).
    pub plain: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum AgentKind {
    Cpu,
    Big,
    Gpu,
}

/// 70% CPU-only, 20% `big`, 10% with GPUs, interleaved so any N of ten
/// or more has the mix; all CPU-only when `plain`.
fn agent_kind(i: usize, plain: bool) -> AgentKind {
    if plain {
        return AgentKind::Cpu;
    }
    match i % 10 {
        0..=6 => AgentKind::Cpu,
        7 | 8 => AgentKind::Big,
        _ => AgentKind::Gpu,
    }
}

struct AgentSpec {
    kind: AgentKind,
    slots: u32,
    memory_mb: u64,
    gpus: Vec<u64>,
}

fn agent_spec(kind: AgentKind) -> AgentSpec {
    match kind {
        AgentKind::Cpu => AgentSpec {
            kind,
            slots: 4,
            memory_mb: 16 * GIB,
            gpus: vec![],
        },
        AgentKind::Big => AgentSpec {
            kind,
            slots: 8,
            memory_mb: 64 * GIB,
            gpus: vec![],
        },
        AgentKind::Gpu => AgentSpec {
            kind,
            slots: 4,
            memory_mb: 64 * GIB,
            gpus: vec![24 * GIB, 24 * GIB],
        },
    }
}

/// A stage's resource shape; the stage id starts with its letter, so a
/// claimed job says what it needed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum JobShape {
    /// `resources: {gpus: 1, gpu_memory: 8G}`: GPU agents only.
    Gpu,
    /// `labels: [big]`: big agents only.
    Big,
    /// `resources: {memory: 24G}`: more than a CPU agent has.
    Huge,
    /// `resources: {memory: 4G}`: four fill a CPU agent.
    Mem,
    Plain,
}

/// 3% GPU, 10% big, 5% 24G, 25% 4G, 57% plain, interleaved.
/// All plain when `plain`.
fn job_shape(i: usize, plain: bool) -> JobShape {
    if plain {
        return JobShape::Plain;
    }
    match i % 100 {
        0..=2 => JobShape::Gpu,
        3..=12 => JobShape::Big,
        13..=17 => JobShape::Huge,
        18..=42 => JobShape::Mem,
        _ => JobShape::Plain,
    }
}

impl JobShape {
    fn letter(self) -> char {
        match self {
            JobShape::Gpu => 'g',
            JobShape::Big => 'b',
            JobShape::Huge => 'h',
            JobShape::Mem => 'm',
            JobShape::Plain => 'p',
        }
    }

    fn of_stage(id: &str) -> Option<Self> {
        Some(match id.chars().next()? {
            'g' => JobShape::Gpu,
            'b' => JobShape::Big,
            'h' => JobShape::Huge,
            'm' => JobShape::Mem,
            'p' => JobShape::Plain,
            _ => return None,
        })
    }

    fn yaml(self) -> &'static str {
        match self {
            JobShape::Gpu => "    resources: {gpus: 1, gpu_memory: 8G}\n",
            JobShape::Big => "    labels: [big]\n",
            JobShape::Huge => "    resources: {memory: 24G}\n",
            JobShape::Mem => "    resources: {memory: 4G}\n",
            JobShape::Plain => "",
        }
    }

    /// Why a grant to an agent of `kind` is wrong for this shape, if it is.
    fn misplaced(self, kind: AgentKind, g: &Grant) -> Option<String> {
        let gpu_mem: Vec<u64> = g.gpus.iter().map(|x| x.memory_mb).collect();
        let ok = match self {
            JobShape::Gpu => kind == AgentKind::Gpu && gpu_mem == [8 * GIB],
            JobShape::Big => kind == AgentKind::Big && g.gpus.is_empty(),
            JobShape::Huge => kind != AgentKind::Cpu && g.memory_mb == 24 * GIB,
            JobShape::Mem => g.memory_mb == 4 * GIB && g.gpus.is_empty(),
            JobShape::Plain => g.gpus.is_empty(),
        };
        (!ok).then(|| {
            format!(
                "a {self:?} job went to a {kind:?} agent with grant {} MiB memory, GPU memory {gpu_mem:?}",
                g.memory_mb
            )
        })
    }
}

/// `runs` runs of `jobs` one-step stages in all, as even as they divide.
fn workflows(jobs: usize, runs: usize, plain: bool) -> Result<Vec<String>> {
    let runs = runs.min(jobs).max(1);
    let per = jobs.div_ceil(runs);
    if per > orchestrator_core::validate::MAX_STAGES {
        bail!(
            "--sched-jobs {jobs}: {per} stages per run over {runs} runs; a workflow takes at most {}",
            orchestrator_core::validate::MAX_STAGES
        );
    }
    let mut out = Vec::with_capacity(runs);
    let mut i = 0;
    for r in 0..runs {
        let n = jobs / runs + usize::from(r < jobs % runs);
        let mut y = format!("name: sched-{r}\nstages:\n");
        for _ in 0..n {
            let s = job_shape(i, plain);
            y.push_str(&format!("  - id: {}{i}\n", s.letter()));
            y.push_str(s.yaml());
            y.push_str("    steps: [{commands: [{argv: [/bin/true]}]}]\n");
            i += 1;
        }
        out.push(y);
    }
    Ok(out)
}

/// What the bench believes an agent holds: taken when a job is handed
/// out, given back just before its completion is sent. The store holds
/// at least this much at every moment, so exceeding the agent's capacity
/// here proves the store over-committed it (it never shows a false one).
#[derive(Default)]
struct Held {
    slots: u32,
    memory_mb: u64,
    gpu_mb: Vec<u64>,
}

struct Agent {
    id: String,
    spec: AgentSpec,
    held: Mutex<Held>,
}

struct Shared {
    store: SqlStore,
    agents: Vec<Agent>,
    jobs: usize,
    completed: AtomicUsize,
    /// When the last completion came back, in microseconds from the start.
    last_done_us: AtomicU64,
    empty_claims: AtomicUsize,
    violations: Mutex<Vec<String>>,
    done: CancellationToken,
    start: Instant,
}

impl Shared {
    fn violation(&self, what: String) {
        // A poisoned lock means another slot panicked; its error surfaces at join.
        if let Ok(mut v) = self.violations.lock() {
            v.push(what);
        }
    }

    fn take(&self, a: usize, job: &ClaimedJob) {
        let agent = &self.agents[a];
        match JobShape::of_stage(&job.spec.stage_id) {
            Some(s) => {
                if let Some(why) = s.misplaced(agent.spec.kind, &job.grant) {
                    self.violation(format!("job {}: {why}", job.job_id));
                }
            }
            None => self.violation(format!(
                "job {}: unknown stage {}",
                job.job_id, job.spec.stage_id
            )),
        }
        let Ok(mut h) = agent.held.lock() else { return };
        h.slots += 1;
        h.memory_mb += job.grant.memory_mb;
        for g in &job.grant.gpus {
            match h.gpu_mb.get_mut(g.index as usize) {
                Some(m) => *m += g.memory_mb,
                None => {
                    self.violation(format!(
                        "job {}: granted GPU {} the agent does not have",
                        job.job_id, g.index
                    ));
                }
            }
        }
        let over_gpu = h
            .gpu_mb
            .iter()
            .zip(&agent.spec.gpus)
            .any(|(held, has)| held > has);
        if h.slots > agent.spec.slots || h.memory_mb > agent.spec.memory_mb || over_gpu {
            let msg = format!(
                "agent {} ({:?}) held {} jobs, {} MiB memory, GPU memory {:?}: more than its {} slots, {} MiB, {:?}",
                agent.id,
                agent.spec.kind,
                h.slots,
                h.memory_mb,
                h.gpu_mb,
                agent.spec.slots,
                agent.spec.memory_mb,
                agent.spec.gpus
            );
            drop(h);
            self.violation(msg);
        }
    }

    fn give_back(&self, a: usize, g: &Grant) {
        let Ok(mut h) = self.agents[a].held.lock() else {
            return;
        };
        h.slots = h.slots.saturating_sub(1);
        h.memory_mb = h.memory_mb.saturating_sub(g.memory_mb);
        for x in &g.gpus {
            if let Some(m) = h.gpu_mb.get_mut(x.index as usize) {
                *m = m.saturating_sub(x.memory_mb);
            }
        }
    }
}

fn success(agent_id: &str, job: &ClaimedJob) -> CompleteRequest {
    CompleteRequest {
        agent_id: agent_id.to_owned(),
        lease_token: job.lease_token.clone(),
        outcome: StepOutcome {
            timed_out: false,
            success: true,
            exit_codes: vec![Some(0)],
            error: None,
            error_class: None,
            bundle: job.spec.bundle_dir(job.job_id),
            duration_ms: 0,
            checkpoint: None,
            until_met: None,
            questions: Vec::new(),
            sandbox: None,
            log_tail: None,
        },
        claim_next: true,
        claim_key: None,
    }
}

/// One agent slot: claim, then complete each job at once with
/// `claim_next`, until every job is done. Returns (job id, microseconds
/// from the request to the answer that handed it out) per dispatch.
async fn slot(sh: Arc<Shared>, a: usize) -> Result<Vec<(i64, u32)>> {
    let agent_id = sh.agents[a].id.clone();
    let queued = sh.store.jobs_queued();
    let mut out = Vec::new();
    'claim: while !sh.done.is_cancelled() {
        // Registered before claiming, as the daemon does, so work queued
        // in between still wakes the slot.
        let notified = queued.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut asked = Instant::now();
        let Some(mut job) = sh.store.claim(&agent_id, TTL_MS).await? else {
            sh.empty_claims.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(CLAIM_WAIT) => {}
                _ = sh.done.cancelled() => {}
            }
            continue;
        };
        loop {
            let us = u32::try_from(asked.elapsed().as_micros()).unwrap_or(u32::MAX);
            out.push((job.job_id, us));
            sh.take(a, &job);
            sh.give_back(a, &job.grant);
            asked = Instant::now();
            let c = sh
                .store
                .complete(job.job_id, success(&agent_id, &job), TTL_MS)
                .await
                .with_context(|| format!("completing job {}", job.job_id))?;
            let n = sh.completed.fetch_add(1, Ordering::AcqRel) + 1;
            sh.last_done_us.fetch_max(
                u64::try_from(sh.start.elapsed().as_micros()).unwrap_or(u64::MAX),
                Ordering::AcqRel,
            );
            if n >= sh.jobs {
                sh.done.cancel();
            }
            match c.next {
                Some(next) => job = next,
                None => continue 'claim,
            }
        }
    }
    Ok(out)
}

/// The pre-emption loop of the daemon, on a timer: (passes, stages asked
/// to yield, slowest pass in ms, total ms in passes).
async fn preempt_loop(sh: Arc<Shared>, every: Duration) -> Result<(usize, usize, f64, f64)> {
    let (mut passes, mut asked, mut slowest, mut total) = (0, 0, 0.0f64, 0.0);
    loop {
        tokio::select! {
            _ = sh.done.cancelled() => return Ok((passes, asked, slowest, total)),
            _ = tokio::time::sleep(every) => {}
        }
        let t = Instant::now();
        asked += sh.store.preempt(TTL_MS).await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        passes += 1;
        slowest = slowest.max(ms);
        total += ms;
    }
}

/// Every second, the store's own view: no agent runs more jobs than its
/// slots. Returns how many snapshots were taken.
async fn audit_loop(sh: Arc<Shared>) -> Result<usize> {
    let mut snapshots = 0;
    loop {
        tokio::select! {
            _ = sh.done.cancelled() => return Ok(snapshots),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        for v in sh.store.list_agents(TTL_MS).await? {
            if v.running > v.slots {
                sh.violation(format!(
                    "the store shows agent {} running {} jobs on {} slots",
                    v.id, v.running, v.slots
                ));
            }
        }
        snapshots += 1;
    }
}

/// Fails unless the stall watchdog stays quiet until every job is done.
async fn watchdog(sh: Arc<Shared>) -> Result<()> {
    let mut last = (0, Instant::now());
    loop {
        tokio::select! {
            _ = sh.done.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let n = sh.completed.load(Ordering::Acquire);
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > STALL {
            sh.done.cancel();
            bail!(
                "stalled: {n} of {} jobs completed, none in the last {} s",
                sh.jobs,
                STALL.as_secs()
            );
        }
    }
}

/// The 1-minute load average, where the system tells it: the machine is
/// shared, and a busy neighbour shows in every figure.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The store's writer threads by id, where the system tells: a new one
/// appears when a store opens.
fn writer_threads() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let p = e.ok()?.path();
        let comm = std::fs::read_to_string(p.join("comm")).ok()?;
        (comm.trim() == "store-writer").then(|| p.file_name()?.to_str().map(str::to_owned))?
    })
    .collect()
}

/// A thread's nanoseconds on a CPU and waiting for one (`schedstat`):
/// tells the store's own cost from what busy neighbours take from it.
fn schedstat(tid: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut f = text.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
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
        .map(|url| crate::bench::Scratch::new(url, "sched"));
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
                actor: "user:bench".into(),
                on_failure: None,
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
    let mut dispatched: Vec<(i64, u32)> = Vec::with_capacity(o.jobs);
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
    let distinct: HashSet<i64> = dispatched.iter().map(|(j, _)| *j).collect();
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
        bail!("--sched-jobs, --sched-agents and --sched-runs must be at least 1");
    }
    let mut samples = Vec::new();
    for i in 0..o.repeat.max(1) {
        let dir = root.join(format!("sched-{i}"));
        std::fs::create_dir_all(&dir)?;
        samples.push(once(o, &dir).await?);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let med = |f: fn(&SchedSample) -> f64| {
        crate::bench::median(&samples.iter().map(f).collect::<Vec<_>>())
    };
    Ok(SchedRow {
        workload: "sched".into(),
        store: crate::bench::store_name(o.store.as_deref()).into(),
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

pub fn print(r: &SchedRow) {
    println!(
        "SCHED: {} jobs in {} runs, {} agents ({} slots), in process, {} store, {} repeat(s) (medians)",
        r.jobs, r.runs, r.agents, r.slots, r.store, r.repeat
    );
    println!(
        "  submit        {:>9.2} s   ({:.0} jobs/s queued)",
        r.submit_s,
        r.jobs as f64 / r.submit_s.max(1e-9)
    );
    println!(
        "  dispatch      {:>9.2} s   {:.0} dispatches/s",
        r.dispatch_s, r.dispatches_per_s
    );
    println!(
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
        println!(
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
        println!(
            "      writer per dispatch: {} ms on a CPU, {} ms waiting for one, {:.3} ms in COMMIT; {preempt}",
            ms(s.writer_cpu_ms_per_dispatch),
            ms(s.writer_runqueue_ms_per_dispatch),
            s.commit_ms_per_dispatch
        );
    }
    println!("  checked: every job dispatched and succeeded once; no agent over its slots, memory or GPU memory; every job on an agent of its kind");
}
