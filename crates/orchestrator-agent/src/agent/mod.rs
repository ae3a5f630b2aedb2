//! The agent's lifetime: register, run `slots` claim loops and one heartbeat
//! loop, react to revoked leases, and shut down without leaving work behind.
//!
//! It exists to hold the policy that ties the executor ([`crate::step`]) to
//! the daemon ([`orchestrator_client::Client`]): which errors are retried (network, 5xx: capped
//! exponential backoff, 100 ms doubling to 5 s), which re-register (an unknown
//! agent id after a daemon restart), which end the agent (401, 403, answers it
//! does not understand), and what happens to running jobs when a lease is
//! revoked (killed, not completed) or the agent stops (killed, completed as an
//! infrastructure failure so the daemon requeues them at once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use orchestrator_client::{Client, ClientError};
use orchestrator_core::api::RegisterAgent;
use orchestrator_core::sched::Gpu;
use orchestrator_core::spec::human_mib;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ask::AskBox;
use crate::sandbox::SandboxConfig;
use orchestrator_host::local_hostname;
use orchestrator_host::resources::{describe_gpus, Probe, Resources};

mod backoff;
mod heartbeat;
mod session;
mod slot;

use heartbeat::heartbeat_loop;
use session::{register_until_done, Shared};
use slot::slot_loop;

/// How long a claim long-polls the daemon.
pub const CLAIM_WAIT_MS: u64 = 30_000;
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
}
