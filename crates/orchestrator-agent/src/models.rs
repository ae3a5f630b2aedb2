//! Model servers on this agent's machine, run when the daemon orders them.
//!
//! An agent that lends memory to model servers (`--model-ram`,
//! `--model-gpu`) long-polls `POST /v1/agents/{id}/models` with the servers
//! it runs; the answer lists every server the daemon wants here. Those
//! missing are started through the launcher (`orchestrator_host::model_server`),
//! those not listed are stopped (SIGTERM, then SIGKILL), and every change
//! (a server ready, failed or dead) is reported at once by a new poll.
//! The daemon decides what runs where; the agent only obeys and reports.

use orchestrator_core::AgentId;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use orchestrator_client::Client;
use orchestrator_core::api::{ModelMemory, ModelOrders, ModelReport, ServerOrder, ServerReport};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use orchestrator_host::model_server::Launcher;
use orchestrator_host::process::terminate;

/// How long one long-poll waits for new orders.
const POLL_WAIT: Duration = Duration::from_secs(25);
/// How long a stopped server has to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What an agent lends to model servers and how it runs them.
#[derive(Debug, Clone)]
pub struct ModelHosting {
    pub memory: ModelMemory,
    /// The launcher script (`scripts/llama-server.py`).
    pub launcher: PathBuf,
    /// The address servers listen on, which the daemon must reach.
    pub listen: String,
}

enum Event {
    Ready { instance: u64, url: String },
    Failed { instance: u64, error: String },
    Exited { instance: u64 },
}

struct Server {
    url: Option<String>,
    /// Dropping it stops the server.
    _stop: oneshot::Sender<()>,
}

/// Runs the servers the daemon orders until `stop`; they are stopped then.
pub async fn host_models(
    client: Client,
    agent_id: AgentId,
    name: String,
    labels: Vec<String>,
    hosting: ModelHosting,
    stop: CancellationToken,
) {
    let launcher = Launcher::new(hosting.launcher.clone());
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut servers: BTreeMap<u64, Server> = BTreeMap::new();
    let mut failures: Vec<ServerReport> = Vec::new();
    loop {
        let report = ModelReport {
            name: name.clone(),
            labels: labels.clone(),
            memory: hosting.memory.clone(),
            servers: servers
                .iter()
                .map(|(id, s)| ServerReport {
                    instance: *id,
                    url: s.url.clone(),
                    error: None,
                })
                .chain(failures.iter().cloned())
                .collect(),
            wait_ms: u64::try_from(POLL_WAIT.as_millis()).unwrap_or(u64::MAX),
        };
        tokio::select! {
            r = client.models(&agent_id, &report) => match r {
                Ok(orders) => {
                    failures.clear();
                    obey(orders, &mut servers, &launcher, &hosting.listen, &tx);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the daemon for model orders; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => break,
                    }
                }
            },
            Some(ev) = rx.recv() => match ev {
                Event::Ready { instance, url } => {
                    if let Some(s) = servers.get_mut(&instance) {
                        tracing::info!(instance, %url, "model server ready");
                        s.url = Some(url);
                    }
                }
                Event::Failed { instance, error } => {
                    if servers.remove(&instance).is_some() {
                        tracing::warn!(instance, %error, "model server did not start");
                        failures.push(ServerReport { instance, url: None, error: Some(error) });
                    }
                }
                Event::Exited { instance } => {
                    if servers.remove(&instance).is_some() {
                        tracing::warn!(instance, "model server exited");
                    }
                }
            },
            _ = stop.cancelled() => break,
        }
    }
    // Dropping the handles stops every server.
    drop(servers);
}

/// Starts what the orders add and stops what they leave out.
fn obey(
    orders: ModelOrders,
    servers: &mut BTreeMap<u64, Server>,
    launcher: &Launcher,
    listen: &str,
    tx: &mpsc::UnboundedSender<Event>,
) {
    servers.retain(|id, _| orders.run.iter().any(|o| o.instance == *id));
    for o in orders.run {
        if servers.contains_key(&o.instance) {
            continue;
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        servers.insert(
            o.instance,
            Server {
                url: None,
                _stop: stop_tx,
            },
        );
        tracing::info!(instance = o.instance, model = %o.spec.name, "starting model server");
        tokio::spawn(keep(
            o,
            launcher.clone(),
            listen.to_owned(),
            stop_rx,
            tx.clone(),
        ));
    }
}

/// Runs one server until its handle is dropped or it dies.
async fn keep(
    o: ServerOrder,
    launcher: Launcher,
    listen: String,
    mut stop: oneshot::Receiver<()>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let instance = o.instance;
    let started = tokio::select! {
        r = launcher.spawn(&o.spec, &listen, o.gpu) => r,
        _ = &mut stop => return,
    };
    let mut child = match started {
        Ok((url, child)) => {
            let _ = tx.send(Event::Ready { instance, url });
            child
        }
        Err(e) => {
            let error = e.to_string();
            let _ = tx.send(Event::Failed { instance, error });
            return;
        }
    };
    tokio::select! {
        _ = &mut stop => terminate(&mut child, STOP_GRACE).await,
        _ = child.wait() => {
            let _ = tx.send(Event::Exited { instance });
        }
    }
}
