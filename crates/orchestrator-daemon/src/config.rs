//! The daemon's settings ([`DaemonConfig`]) and their defaults.

use std::net::SocketAddr;
use std::sync::Arc;

use orchestrator_host::clock::{Clock, SystemClock};

use crate::{dashboard, hooks, Tokens};

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    pub tokens: Tokens,
    /// How long a lease lives without a heartbeat, in milliseconds.
    pub lease_ttl_ms: u64,
    /// How often agents are told to heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Longest a claim long-polls, in milliseconds.
    pub max_claim_wait_ms: u64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest the reaper sleeps between looks at the leases, in milliseconds.
    pub reaper_tick_ms: u64,
    /// Webhooks and the OpenClaw gateway that hear of human-facing events.
    pub hooks: hooks::HooksConfig,
    /// Longest time between two pre-emption passes while work waits; a
    /// pass also follows every commit that queued work, at most this often.
    pub preempt_tick_ms: u64,
    /// Secret values by name: a stage that names one gets it when its job is
    /// claimed. Kept in memory only, never in the store.
    pub secrets: std::collections::BTreeMap<String, String>,
    /// The models the gateway under `/v1` serves (`orch daemon --models`).
    pub models: Vec<orchestrator_core::fabric::ModelSpec>,
    /// What the daemon's machine lends to the models (the models file's `local:`).
    pub model_local: orchestrator_core::fabric::LocalHost,
    /// The models file's `switch`, in milliseconds.
    pub model_switch_ms: u64,
    /// The models file's `aging`, in milliseconds.
    pub model_aging_ms: u64,
    /// The script that starts a llama.cpp server (`scripts/llama-server.py`).
    pub llama_launcher: std::path::PathBuf,
    /// Where the `.state/` export writes (`current.json`,
    /// `transitions.jsonl`, `metrics.json`); None: no export.
    pub state_dir: Option<std::path::PathBuf>,
    /// The secret that signs job keys for the gateway; None makes one for
    /// this process alone (keys then die with the daemon).
    pub job_key_secret: Option<Vec<u8>>,
    /// The key of the dashboard's links and sessions; None makes one for
    /// this process alone (browsers then log in again after a restart).
    pub dashboard_secret: Option<Vec<u8>>,
    /// The longest a dashboard session lives, in milliseconds, from the
    /// login that made it; nothing extends it.
    pub dashboard_session_max_ms: u64,
    /// Project directories whose `.orchestrator/workflows/` the daemon
    /// watches: their definitions form the catalog runs can name.
    pub watch: Vec<std::path::PathBuf>,
    /// What the daemon takes the time to be: sessions, links, leases and
    /// agents expire by it. The store given to the daemon should share it.
    pub clock: Arc<dyn Clock>,
}

impl DaemonConfig {
    pub fn new(listen: SocketAddr, tokens: Tokens) -> Self {
        DaemonConfig {
            listen,
            tokens,
            lease_ttl_ms: 30_000,
            heartbeat_interval_ms: 10_000,
            max_claim_wait_ms: 30_000,
            max_body_bytes: 8 * 1024 * 1024,
            reaper_tick_ms: 1_000,
            hooks: hooks::HooksConfig::default(),
            preempt_tick_ms: 1_000,
            secrets: Default::default(),
            models: Vec::new(),
            model_local: Default::default(),
            model_switch_ms: 10_000,
            model_aging_ms: 1_000,
            job_key_secret: None,
            dashboard_secret: None,
            dashboard_session_max_ms: dashboard::session::SESSION_MAX_MS,
            state_dir: None,
            watch: Vec::new(),
            llama_launcher: orchestrator_host::model_server::default_launcher(),
            clock: Arc::new(SystemClock),
        }
    }

    /// An agent heard from within this long is online: one lease's time.
    pub fn online_ms(&self) -> u64 {
        self.lease_ttl_ms
    }
}
