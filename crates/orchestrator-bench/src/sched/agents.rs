//! The simulated agents at work: each slot claims and completes as the real
//! agent's slot loop does, while beside them the pre-emption passes run, an
//! audit checks `list_agents` snapshots, and a watchdog fails a stalled run.
//! What each agent holds is tracked here, so an over-committed agent shows.

use orchestrator_core::{AgentId, JobId};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use orchestrator_core::api::{ClaimedJob, CompleteRequest, StepOutcome};
use orchestrator_core::sched::Grant;
use orchestrator_store::SqlStore;
use tokio_util::sync::CancellationToken;

use super::workload::{AgentSpec, JobShape};
use super::{CLAIM_WAIT, STALL, TTL_MS};

/// What the bench believes an agent holds: taken when a job is handed
/// out, given back just before its completion is sent. The store holds
/// at least this much at every moment, so exceeding the agent's capacity
/// here proves the store over-committed it (it never shows a false one).
#[derive(Default)]
pub(super) struct Held {
    pub(super) slots: u32,
    pub(super) memory_mb: u64,
    pub(super) gpu_mb: Vec<u64>,
}

pub(super) struct Agent {
    pub(super) id: AgentId,
    pub(super) spec: AgentSpec,
    pub(super) held: Mutex<Held>,
}

pub(super) struct Shared {
    pub(super) store: SqlStore,
    pub(super) agents: Vec<Agent>,
    pub(super) jobs: usize,
    pub(super) completed: AtomicUsize,
    /// When the last completion came back, in microseconds from the start.
    pub(super) last_done_us: AtomicU64,
    pub(super) empty_claims: AtomicUsize,
    pub(super) violations: Mutex<Vec<String>>,
    pub(super) done: CancellationToken,
    pub(super) start: Instant,
}

impl Shared {
    pub(super) fn violation(&self, what: String) {
        // A poisoned lock means another slot panicked; its error surfaces at join.
        if let Ok(mut v) = self.violations.lock() {
            v.push(what);
        }
    }

    pub(super) fn take(&self, a: usize, job: &ClaimedJob) {
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

    pub(super) fn give_back(&self, a: usize, g: &Grant) {
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

pub(super) fn success(agent_id: &AgentId, job: &ClaimedJob) -> CompleteRequest {
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
            outputs: Default::default(),
        },
        claim_next: true,
        claim_key: None,
    }
}

/// One agent slot: claim, then complete each job at once with
/// `claim_next`, until every job is done. Returns (job id, microseconds
/// from the request to the answer that handed it out) per dispatch.
pub(super) async fn slot(sh: Arc<Shared>, a: usize) -> Result<Vec<(JobId, u32)>> {
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
pub(super) async fn preempt_loop(
    sh: Arc<Shared>,
    every: Duration,
) -> Result<(usize, usize, f64, f64)> {
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
pub(super) async fn audit_loop(sh: Arc<Shared>) -> Result<usize> {
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
pub(super) async fn watchdog(sh: Arc<Shared>) -> Result<()> {
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
