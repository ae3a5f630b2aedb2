//! The agent's lifetime: register, run `slots` claim loops and one heartbeat
//! loop, react to revoked leases, and shut down without leaving work behind.
//!
//! It exists to hold the policy that ties the executor ([`crate::step`]) to
//! the daemon ([`crate::client`]): which errors are retried (network, 5xx: capped
//! exponential backoff, 100 ms doubling to 5 s), which re-register (an unknown
//! agent id after a daemon restart), which end the agent (401, 403, answers it
//! does not understand), and what happens to running jobs when a lease is
//! revoked (killed, not completed) or the agent stops (killed, completed as an
//! infrastructure failure so the daemon requeues them at once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use orchestrator_core::api::{
    AgentRegistered, ClaimedJob, CompleteRequest, LeaseRef, RegisterAgent, StepOutcome,
};
use orchestrator_core::sched::Gpu;
use orchestrator_core::spec::human_mib;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ask::AskBox;
use crate::client::{Client, ClientError};
use crate::resources::{describe_gpus, Probe, Resources};
use crate::sandbox::SandboxConfig;
use crate::step::{local_hostname, run_step_with, CancelReason, StepContext};

/// How long a claim long-polls the daemon.
pub const CLAIM_WAIT_MS: u64 = 30_000;
/// First delay before retrying a failed request.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest delay between retries.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a stopping agent keeps trying to report its killed jobs.
const SHUTDOWN_COMPLETE_WINDOW: Duration = Duration::from_secs(5);
/// Heartbeat interval used when the daemon gives none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// The error of jobs killed because the agent stops.
pub const SHUTTING_DOWN: &str = "agent shutting down";
/// The reason recorded in the manifest of a job whose lease was revoked.
pub const LEASE_REVOKED: &str = "lease revoked by the daemon";

/// How to run an agent.
#[derive(Clone)]
pub struct AgentConfig {
    /// The daemon, `http://host:port`.
    pub server: String,
    /// The bearer token sent with every request.
    pub token: String,
    /// A stable name; registering again under it reuses the agent's id.
    pub name: String,
    /// Capabilities offered to stages that ask for them.
    pub labels: Vec<String>,
    /// How many jobs run at once (at least 1).
    pub slots: u32,
    /// The machine's name; this machine's hostname when None.
    pub hostname: Option<String>,
    /// Memory offered to steps, in MiB; None detects the machine's total.
    pub memory_mb: Option<u64>,
    /// GPUs offered to steps; None asks `nvidia-smi`, `Some(vec![])` offers
    /// none without asking.
    pub gpus: Option<Vec<Gpu>>,
    /// How the agent isolates the steps it runs.
    pub sandbox: SandboxConfig,
    /// Memory lent to model servers the daemon orders here; None lends none.
    pub models: Option<crate::models::ModelHosting>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("slots", &self.slots)
            .field("hostname", &self.hostname)
            .field("memory_mb", &self.memory_mb)
            .field("gpus", &self.gpus)
            .field("sandbox", &self.sandbox)
            .field("models", &self.models)
            .finish()
    }
}

/// Why an agent stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration cannot work.
    #[error("invalid agent configuration: {0}")]
    Config(String),
    /// The daemon refused the agent for good (401, 403, a refused request,
    /// an answer the agent does not understand).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// One of the agent's own tasks panicked: a bug.
    #[error("an agent task failed: {0}")]
    Task(String),
}

/// Runs an agent until `shutdown` is cancelled (then returns Ok once its jobs
/// are killed and reported) or a fatal error.
pub async fn run_agent(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    if cfg.slots == 0 {
        return Err(AgentError::Config("slots must be at least 1".into()));
    }
    if cfg.name.trim().is_empty() {
        return Err(AgentError::Config("the agent needs a name".into()));
    }
    check_declared_gpus(cfg.gpus.as_deref().unwrap_or_default())?;
    #[cfg(target_os = "linux")]
    crate::sandbox::report_at_start();
    // Whatever this agent starts dies with it (the watchdog kills the
    // running groups when the agent is gone).
    if let Err(e) = crate::leftovers::start_watchdog() {
        tracing::warn!(error = %e, "cannot start the watchdog; a killed agent's commands are killed only when it starts again");
    }
    // Before anything is claimed: what an earlier agent here left running
    // dies, so no new attempt shares a worktree with an old one.
    if let Some(work) = &cfg.sandbox.work_dir {
        let records = work.join("running");
        let killed = crate::leftovers::kill_leftovers(&records);
        if killed > 0 {
            tracing::warn!(
                processes = killed,
                "killed what an earlier agent left running"
            );
        }
        #[cfg(target_os = "linux")]
        crate::sandbox::sweep_containers_at_start(&cfg.sandbox);
        if let Err(e) = crate::leftovers::record_in(&records) {
            tracing::warn!(dir = %records.display(), error = %e, "cannot record running commands; a restarted agent will not find what this one leaves");
        }
    }
    let client = Client::new(&cfg.server, &cfg.token)?;
    let hostname = cfg.hostname.clone().or_else(local_hostname);
    let resources = Resources::resolve(cfg.memory_mb, cfg.gpus.clone(), &Probe::default()).await;
    tracing::info!(
        slots = cfg.slots,
        memory = %human_mib(resources.memory_mb),
        gpus = %describe_gpus(&resources.gpus),
        labels = ?cfg.labels,
        "agent offers"
    );
    let register = RegisterAgent {
        name: cfg.name.clone(),
        labels: cfg.labels.clone(),
        slots: cfg.slots,
        hostname: hostname.clone(),
        memory_mb: resources.memory_mb,
        gpus: resources.gpus,
        model_memory: cfg
            .models
            .as_ref()
            .map(|m| m.memory.clone())
            .unwrap_or_default(),
    };
    // `stop` ends every loop: cancelled by `shutdown` or by a fatal error.
    let stop = shutdown.child_token();
    let Some(session) = register_until_done(&client, &register, &stop, None).await? else {
        return Ok(());
    };
    tracing::info!(
        agent_id = %session.agent_id,
        slots = cfg.slots,
        heartbeat = ?session.heartbeat,
        "agent registered"
    );
    let model_servers = cfg.models.clone().map(|hosting| {
        tokio::spawn(crate::models::host_models(
            client.clone(),
            session.agent_id.clone(),
            cfg.name.clone(),
            cfg.labels.clone(),
            hosting,
            stop.clone(),
        ))
    });
    // The endpoint lives as long as the slots (`stop`): a step still running
    // may ask until it is killed.
    let asks = AskBox::start(stop.clone(), &cfg.sandbox.socket_dir(), Some(&cfg.server))
        .await
        .map_err(|e| AgentError::Config(format!("cannot open the local step endpoint: {e}")))?
        .with_daemon(client.clone());
    let shared = Arc::new(Shared {
        client,
        register,
        hostname,
        asks,
        sandbox: Arc::new(cfg.sandbox.clone()),
        server: cfg.server.clone(),
        session: Mutex::new(Arc::new(session)),
        reregistering: tokio::sync::Mutex::new(()),
        leases: Mutex::new(HashMap::new()),
        stop,
        fatal: Mutex::new(None),
    });

    // Heartbeats go on until the last slot has reported its job, so that
    // leases stay alive while a stopping agent completes them.
    let slots_done = CancellationToken::new();
    let heartbeat = {
        let shared = shared.clone();
        let slots_done = slots_done.clone();
        tokio::spawn(async move {
            let result = heartbeat_loop(&shared, &slots_done).await;
            shared.end(result);
        })
    };
    let mut slots = JoinSet::new();
    for slot in 0..cfg.slots {
        let shared = shared.clone();
        slots.spawn(async move {
            let result = slot_loop(&shared, slot).await;
            shared.end(result);
        });
    }
    let mut panicked = None;
    while let Some(joined) = slots.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "agent slot task failed");
            shared.stop.cancel();
            panicked.get_or_insert_with(|| e.to_string());
        }
    }
    slots_done.cancel();
    if let Some(m) = model_servers {
        shared.stop.cancel();
        let _ = m.await;
    }
    if let Err(e) = heartbeat.await {
        tracing::error!(error = %e, "agent heartbeat task failed");
        panicked.get_or_insert_with(|| e.to_string());
    }
    if let Some(e) = lock(&shared.fatal).take() {
        return Err(AgentError::Client(e));
    }
    if let Some(e) = panicked {
        return Err(AgentError::Task(e));
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// Declared GPUs are named by index: two of one index would be one device
/// counted twice, and one without memory could never take a step.
fn check_declared_gpus(gpus: &[Gpu]) -> Result<(), AgentError> {
    for (i, g) in gpus.iter().enumerate() {
        if gpus[..i].iter().any(|h| h.index == g.index) {
            return Err(AgentError::Config(format!(
                "GPU {} is declared twice",
                g.index
            )));
        }
        if g.memory_mb == 0 {
            return Err(AgentError::Config(format!(
                "GPU {} is declared without memory",
                g.index
            )));
        }
    }
    Ok(())
}

/// What the loops share.
struct Shared {
    client: Client,
    register: RegisterAgent,
    hostname: Option<String>,
    /// The local endpoint steps ask their questions through.
    asks: AskBox,
    /// How steps are isolated.
    sandbox: Arc<SandboxConfig>,
    /// The daemon's URL, for the steps' model gateway.
    server: String,
    /// The current registration; replaced when the daemon forgets the agent.
    session: Mutex<Arc<Session>>,
    /// Held while re-registering, so that loops noticing together register once.
    reregistering: tokio::sync::Mutex<()>,
    /// Leases held now, by job id.
    leases: Mutex<HashMap<i64, Held>>,
    stop: CancellationToken,
    /// The first fatal error, returned by `run_agent`.
    fatal: Mutex<Option<ClientError>>,
}

/// One registration with the daemon.
#[derive(Debug)]
struct Session {
    agent_id: String,
    heartbeat: Duration,
    /// Counts registrations, to tell a stale view of the session from the current one.
    generation: u64,
}

/// A lease held by a running (or completing) job.
struct Held {
    lease_token: String,
    /// Kills the job's commands.
    kill: CancellationToken,
    reason: CancelReason,
    /// Set when the daemon took the lease back: the job is not completed.
    revoked: Arc<AtomicBool>,
}

impl Shared {
    fn session(&self) -> Arc<Session> {
        lock(&self.session).clone()
    }

    /// Records how a loop ended; a fatal error stops the whole agent.
    fn end(&self, result: Result<(), ClientError>) {
        if let Err(e) = result {
            tracing::error!(error = %e, "agent stopping on a fatal error");
            lock(&self.fatal).get_or_insert(e);
            self.stop.cancel();
        }
    }

    /// Kills a job whose lease the daemon no longer honours; it is not completed.
    fn revoke(&self, job_id: i64, why: &str) {
        if let Some(held) = lock(&self.leases).get(&job_id) {
            tracing::warn!(job_id, why, "lease revoked; killing the job");
            held.reason.set(LEASE_REVOKED);
            held.revoked.store(true, Ordering::SeqCst);
            held.kill.cancel();
        }
    }

    /// Registers again after the daemon answered 404 for the agent id `seen`
    /// had. Loops noticing together register once. Returns false when the
    /// agent is stopping.
    async fn reregister(&self, seen: &Session) -> Result<bool, ClientError> {
        let _one_at_a_time = self.reregistering.lock().await;
        if self.session().generation != seen.generation {
            return Ok(true);
        }
        tracing::warn!(agent_id = %seen.agent_id, "the daemon does not know this agent; registering again");
        let Some(mut session) =
            register_until_done(&self.client, &self.register, &self.stop, Some(self)).await?
        else {
            return Ok(false);
        };
        session.generation = seen.generation + 1;
        tracing::info!(agent_id = %session.agent_id, "agent registered again");
        *lock(&self.session) = Arc::new(session);
        Ok(true)
    }
}

/// Registers, retrying network trouble and 5xx until it works or `stop`
/// fires (then None). `shared`, when given, receives the stale jobs.
async fn register_until_done(
    client: &Client,
    req: &RegisterAgent,
    stop: &CancellationToken,
    shared: Option<&Shared>,
) -> Result<Option<Session>, ClientError> {
    let mut backoff = Backoff::new();
    loop {
        let answer = tokio::select! {
            answer = client.register(req) => answer,
            () = stop.cancelled() => return Ok(None),
        };
        match answer {
            Ok(reg) => {
                handle_stale_jobs(&reg, shared);
                let heartbeat = match reg.heartbeat_interval_ms {
                    0 if reg.lease_ttl_ms > 0 => Duration::from_millis(reg.lease_ttl_ms / 3),
                    0 => DEFAULT_HEARTBEAT,
                    ms => Duration::from_millis(ms),
                };
                return Ok(Some(Session {
                    agent_id: reg.agent_id,
                    heartbeat: heartbeat.max(Duration::from_millis(10)),
                    generation: 0,
                }));
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "could not register; retrying");
                if !backoff.sleep(stop).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The daemon lists leases it believes this agent held before registering.
/// Any still running here belongs to a registration the daemon has written
/// off, so it is killed and not completed; others are from an earlier process.
fn handle_stale_jobs(reg: &AgentRegistered, shared: Option<&Shared>) {
    if reg.stale_jobs.is_empty() {
        return;
    }
    tracing::warn!(stale_jobs = ?reg.stale_jobs, "the daemon lists stale leases of this agent");
    if let Some(shared) = shared {
        for &job_id in &reg.stale_jobs {
            shared.revoke(job_id, "stale after registering again");
        }
    }
}

/// One slot: claim, run, complete, again, until the agent stops.
async fn slot_loop(shared: &Shared, slot: u32) -> Result<(), ClientError> {
    let mut backoff = Backoff::new();
    // A job handed out with the previous completion, run without claiming.
    let mut handed: Option<ClaimedJob> = None;
    // Kept until a claim is answered, so asking again after an error gets
    // the job a lost answer carried.
    let mut key: Option<String> = None;
    loop {
        if shared.stop.is_cancelled() {
            return Ok(());
        }
        let session = shared.session();
        let answer = match handed.take() {
            Some(job) => Ok(Some(job)),
            None => {
                let key = key.get_or_insert_with(claim_key);
                tokio::select! {
                    answer = shared.client.claim(&session.agent_id, CLAIM_WAIT_MS, key) => answer,
                    () = shared.stop.cancelled() => return Ok(()),
                }
            }
        };
        if answer.is_ok() {
            key = None;
        }
        match answer {
            Ok(None) => backoff.reset(),
            Ok(Some(job)) => {
                backoff.reset();
                let span = tracing::info_span!(
                    "job",
                    run_id = %job.spec.run_id,
                    stage_id = %job.spec.stage_id,
                    job_id = job.job_id,
                    slot
                );
                handed = run_job(shared, &session, job).instrument(span).await?;
            }
            Err(ClientError::UnknownAgent { .. }) => {
                if !shared.reregister(&session).await? || !backoff.sleep(&shared.stop).await {
                    return Ok(());
                }
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(slot, error = %e, "claim failed; retrying");
                if !backoff.sleep(&shared.stop).await {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// A fresh key for one claim: unique among this agent's claims.
fn claim_key() -> String {
    let mut bytes = [0u8; 12];
    // Without randomness, time and a counter are unique enough within one
    // agent, which is all a key must be.
    if getrandom::fill(&mut bytes).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes[..8].copy_from_slice(&now.to_le_bytes());
        bytes[8..].copy_from_slice(&(COUNTER.fetch_add(1, Ordering::Relaxed) as u32).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs one claimed job under its lease and reports it, unless the lease was
/// revoked meanwhile. Returns the next job when the daemon handed one out
/// with the completion.
async fn run_job(
    shared: &Shared,
    session: &Session,
    job: ClaimedJob,
) -> Result<Option<ClaimedJob>, ClientError> {
    tracing::debug!(
        step = job.spec.step,
        attempt = job.spec.attempt,
        "job claimed"
    );
    let kill = CancellationToken::new();
    let reason = CancelReason::new();
    let revoked = Arc::new(AtomicBool::new(false));
    lock(&shared.leases).insert(
        job.job_id,
        Held {
            lease_token: job.lease_token.clone(),
            kill: kill.clone(),
            reason: reason.clone(),
            revoked: revoked.clone(),
        },
    );
    let ctx = StepContext {
        agent_id: session.agent_id.clone(),
        hostname: shared.hostname.clone(),
        cancel_reason: reason.clone(),
        asks: Some(shared.asks.clone()),
        has_gpus: !shared.register.gpus.is_empty(),
        sandbox: shared.sandbox.clone(),
        daemon_url: Some(shared.server.clone()),
    };
    let step = run_step_with(&job, &ctx, kill.clone());
    tokio::pin!(step);
    let outcome = tokio::select! {
        outcome = &mut step => outcome,
        () = shared.stop.cancelled() => {
            reason.set(SHUTTING_DOWN);
            kill.cancel();
            step.await
        }
    };
    let result = if revoked.load(Ordering::SeqCst) {
        tracing::warn!("job killed after its lease was revoked; not completing it");
        Ok(None)
    } else {
        log_outcome(&outcome);
        complete(shared, &job, &session.agent_id, outcome, &revoked).await
    };
    lock(&shared.leases).remove(&job.job_id);
    result
}

fn log_outcome(outcome: &StepOutcome) {
    if outcome.success {
        tracing::debug!(duration_ms = outcome.duration_ms, "step succeeded");
    } else {
        tracing::info!(
            duration_ms = outcome.duration_ms,
            error = outcome.error.as_deref().unwrap_or(""),
            error_class = outcome.error_class.map_or("", |c| c.as_str()),
            "step failed"
        );
    }
}

/// Reports a job's outcome. Network trouble and 5xx are retried (the lease
/// stays held and heartbeated meanwhile); once the agent is stopping, only
/// for a short window. A refused completion is logged and dropped.
async fn complete(
    shared: &Shared,
    job: &ClaimedJob,
    agent_id: &str,
    outcome: StepOutcome,
    revoked: &AtomicBool,
) -> Result<Option<ClaimedJob>, ClientError> {
    let req = CompleteRequest {
        agent_id: agent_id.to_owned(),
        lease_token: job.lease_token.clone(),
        outcome,
        // A stopping agent takes no new work.
        claim_next: !shared.stop.is_cancelled(),
        // The same for every retry below: one completion, one next job.
        claim_key: Some(claim_key()),
    };
    let mut backoff = Backoff::new();
    let mut give_up_at: Option<Instant> = None;
    loop {
        match shared.client.complete(job.job_id, &req).await {
            Ok(done) => {
                if done.again {
                    tracing::info!("the completion was recorded before its answer was lost");
                }
                tracing::debug!(stage_state = ?done.stage_state, run_state = ?done.run_state, "job completed");
                return Ok(done.next);
            }
            Err(ClientError::StaleLease(message)) => {
                tracing::warn!(%message, "completion refused: the lease is stale");
                return Ok(None);
            }
            Err(e) if e.is_auth() => return Err(e),
            Err(e) if e.is_retryable() => {
                if revoked.load(Ordering::SeqCst) {
                    tracing::warn!(error = %e, "lease revoked while completing; giving up");
                    return Ok(None);
                }
                let delay = backoff.next_delay();
                if shared.stop.is_cancelled() {
                    let until = *give_up_at
                        .get_or_insert_with(|| Instant::now() + SHUTDOWN_COMPLETE_WINDOW);
                    if Instant::now() + delay > until {
                        tracing::warn!(error = %e, "could not report the job before stopping; the daemon will requeue it when its lease expires");
                        return Ok(None);
                    }
                    tokio::time::sleep(delay).await;
                } else {
                    tracing::warn!(error = %e, "completion failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shared.stop.cancelled() => {}
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "completion refused");
                return Ok(None);
            }
        }
    }
}

/// One heartbeat per interval for all held leases (also when none are held:
/// it tells the daemon the agent is alive); revoked leases are killed. Ends
/// when the slots have ended, or on a fatal error.
async fn heartbeat_loop(
    shared: &Shared,
    slots_done: &CancellationToken,
) -> Result<(), ClientError> {
    let mut backoff = Backoff::new();
    let mut delay = Duration::ZERO;
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = slots_done.cancelled() => return Ok(()),
        }
        let session = shared.session();
        let leases: Vec<LeaseRef> = lock(&shared.leases)
            .iter()
            .filter(|(_, held)| !held.revoked.load(Ordering::SeqCst))
            .map(|(&job_id, held)| LeaseRef {
                job_id,
                lease_token: held.lease_token.clone(),
            })
            .collect();
        // The heartbeat long-polls for one interval: the daemon answers at
        // once when a lease is revoked (a cancelled run), so a cancellation
        // reaches the commands without waiting for the next beat.
        let sent = Instant::now();
        let answer = tokio::select! {
            answer = shared.client.heartbeat(&session.agent_id, leases, session.heartbeat) => answer,
            () = slots_done.cancelled() => return Ok(()),
        };
        match answer {
            Ok(resp) => {
                backoff.reset();
                let revoked = !resp.revoked.is_empty();
                for job_id in resp.revoked {
                    shared.revoke(job_id, "the heartbeat answered revoked");
                }
                // Beat again at once after a revocation or a full wait. A
                // daemon that answered early (it caps the wait, or is
                // stopping) is not hammered, nor left without beats for long.
                delay = if revoked {
                    Duration::ZERO
                } else {
                    session
                        .heartbeat
                        .saturating_sub(sent.elapsed())
                        .min(Duration::from_secs(1))
                };
            }
            Err(ClientError::UnknownAgent { .. }) => {
                if !shared.reregister(&session).await? {
                    return Ok(());
                }
                // Tell the daemon about the held leases right away.
                delay = Duration::ZERO;
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "heartbeat failed; retrying");
                delay = backoff.next_delay().min(session.heartbeat);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Capped exponential backoff: 100 ms, doubling, at most 5 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }

    /// Sleeps the next delay; false when `stop` fired first.
    async fn sleep(&mut self, stop: &CancellationToken) -> bool {
        let d = self.next_delay();
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = stop.cancelled() => false,
        }
    }
}

/// Locks a mutex, going on with the data when another thread panicked while
/// holding it (the maps here stay consistent at every step).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_stays_out_of_debug_output() {
        let cfg = AgentConfig {
            server: "http://127.0.0.1:1".into(),
            token: "s3cret".into(),
            name: "a".into(),
            labels: vec![],
            slots: 1,
            hostname: None,
            memory_mb: None,
            gpus: None,
            sandbox: SandboxConfig::default(),
            models: None,
        };
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    fn gpu(index: u32, memory_mb: u64) -> Gpu {
        Gpu {
            index,
            name: String::new(),
            memory_mb,
        }
    }

    #[test]
    fn declared_gpus_must_be_distinct_and_have_memory() {
        assert!(check_declared_gpus(&[]).is_ok());
        assert!(check_declared_gpus(&[gpu(0, 1024), gpu(1, 1024)]).is_ok());
        let twice = check_declared_gpus(&[gpu(0, 1024), gpu(0, 2048)]).unwrap_err();
        assert_eq!(
            twice.to_string(),
            "invalid agent configuration: GPU 0 is declared twice"
        );
        let empty = check_declared_gpus(&[gpu(2, 0)]).unwrap_err();
        assert_eq!(
            empty.to_string(),
            "invalid agent configuration: GPU 2 is declared without memory"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new();
        let delays: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_FIRST);
    }
}
