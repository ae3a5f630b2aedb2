//! What every handler shares ([`App`]): the store, the settings and the
//! daemon's in-memory parts (metrics, hooks, gateway, sessions, catalog).

use orchestrator_store::SqlStore;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{catalog, dashboard, fabric, health, hooks, ident, metrics, DaemonConfig};

/// What every handler shares.
pub struct App {
    pub store: Arc<SqlStore>,
    pub config: DaemonConfig,
    pub metrics: metrics::Metrics,
    /// The looping components' last ticks, for `/readyz`.
    pub health: health::Health,
    /// Cancelled on shutdown: long-polls and event streams end.
    pub shutdown: CancellationToken,
    /// The outbound targets, for their status.
    pub hooks: hooks::Hooks,
    /// Mints and checks the jobs' keys to the model gateway.
    pub job_keys: fabric::JobKeys,
    /// The models' servers; llama.cpp ones are killed when this is dropped.
    pub upstreams: fabric::Upstreams,
    /// The gateway's requests counted, until flushed to the store.
    pub usage: Arc<fabric::usage::Accounting>,
    /// This machine's name: agents reporting it share the daemon's machine.
    pub daemon_hostname: Option<String>,
    /// The dashboard's links and sessions.
    pub sessions: Arc<dashboard::Sessions>,
    /// The watched projects' workflows, by name.
    pub catalog: Arc<std::sync::Mutex<catalog::Catalog>>,
    /// Agent identities read from the store, kept briefly.
    pub identities: ident::Identities,
}
