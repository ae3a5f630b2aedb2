//! Residency in the daemon: which model servers run, started and stopped by
//! the core's [`residency::decide`] over the memory the models file lends
//! (`local:`) and the memory agents lend (`orch agent --model-ram`), and
//! the keepers that run each server on the daemon's machine. Servers on an
//! agent's machine are ordered through its long-poll ([`super::remote`]).
//!
//! The loop wakes on every change in the [`Pool`] (a request queued or
//! finished, a server ready or gone), applies the decision (stops, then
//! starts, then drains), and sleeps. While requests wait it also looks
//! again every [`WAITING_TICK`], because ageing changes which model is
//! most urgent; with none waiting it sleeps until the next idle instance
//! may be stopped.
//!
//! A stop is only ever given for an idle instance: it takes no new request
//! and keeps its memory counted until its process is gone. A server that
//! dies is forgotten and started again when its model is next wanted.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orchestrator_core::api::ModelMemory;
use orchestrator_core::fabric::hosts::{self, Host};
use orchestrator_core::fabric::residency::{
    self, Action, Demand, InstanceState, ModelFootprint, PlaceBudget,
};
use orchestrator_core::fabric::{LocalHost, ModelSpec, Runtime};
use orchestrator_host::model_server::Launcher;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::pool::{Instance, Pool};

/// How often residency looks again while requests wait.
const WAITING_TICK: Duration = Duration::from_millis(250);
/// How long a stopped server has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The place name of the daemon machine's RAM; its GPUs are `local/gpuN`.
pub const LOCAL: &str = "local";

/// The memory the daemon's machine lends to models, as places.
pub fn local_hosts(local: &LocalHost) -> Vec<Host> {
    let ram = local.ram.map_or_else(half_of_ram_mib, |r| r.as_mib());
    let mut out = vec![Host {
        place: LOCAL.into(),
        agent: LOCAL.into(),
        labels: Vec::new(),
        is_daemon_host: true,
        gpu: None,
        budget_mib: ram,
    }];
    for (n, g) in local.gpus.iter().enumerate() {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        out.push(Host {
            place: format!("{LOCAL}/gpu{n}"),
            agent: LOCAL.into(),
            labels: Vec::new(),
            is_daemon_host: true,
            gpu: Some(n),
            budget_mib: g.as_mib(),
        });
    }
    out
}

/// Half of this machine's memory (`MemTotal`, as an agent reads it), else 4 GiB.
fn half_of_ram_mib() -> u64 {
    orchestrator_host::Probe::default()
        .memory_mb()
        .map_or(4096, |mb| mb / 2)
}

/// The places models may occupy now, and the models in their terms.
pub(crate) struct Places {
    pub hosts: Vec<Host>,
    pub footprints: Vec<ModelFootprint>,
    pub budgets: Vec<PlaceBudget>,
}

impl Places {
    pub fn new(specs: &[ModelSpec], hosts: Vec<Host>) -> Self {
        Places {
            footprints: specs
                .iter()
                .filter_map(|m| hosts::footprint(m, &hosts))
                .collect(),
            budgets: hosts::budgets(&hosts),
            hosts,
        }
    }

    /// The agent a place belongs to ([`LOCAL`] for the daemon's machine).
    pub fn agent_of(&self, place: &str) -> Option<&str> {
        self.hosts
            .iter()
            .find(|h| h.place == place)
            .map(|h| h.agent.as_str())
    }
}

/// An agent that lends memory to model servers, as last heard.
pub(crate) struct LendingAgent {
    pub labels: Vec<String>,
    pub memory: ModelMemory,
    pub last_seen: std::time::Instant,
    /// Wakes its long-poll when its orders change.
    pub orders_changed: Arc<Notify>,
}

/// The fabric's moving part: the pool of requests and the servers behind it.
pub struct Fabric {
    pub pool: Arc<Pool>,
    pub(crate) specs: Vec<ModelSpec>,
    /// The daemon machine's places, read once at start.
    pub(crate) local_hosts: Vec<Host>,
    pub(crate) places: Mutex<Places>,
    pub(crate) agents: Mutex<BTreeMap<String, LendingAgent>>,
    /// Whether any model may run somewhere; residency sleeps otherwise.
    any_managed: bool,
    switch_ms: u64,
    launcher: Launcher,
    next_instance: AtomicU64,
    /// How each running keeper is told to stop its server.
    stops: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// Servers started, by model.
    pub(crate) starts: Mutex<BTreeMap<String, u64>>,
    /// What `/readyz` reports ([`super::health`]).
    pub(crate) health: Mutex<super::health::FabricHealth>,
}

impl Fabric {
    pub fn new(
        models: &[ModelSpec],
        local: &LocalHost,
        switch_ms: u64,
        aging_ms: u64,
        launcher: Launcher,
    ) -> Self {
        let hosts = local_hosts(local);
        let pool = Arc::new(Pool::new(aging_ms));
        for m in models {
            pool.declare(&m.name, m.concurrency);
        }
        // Random high bits: an agent still running servers ordered by an
        // earlier daemon never reports an id this one hands out.
        let mut seed = [0u8; 4];
        let _ = getrandom::fill(&mut seed);
        let mut next = u64::from(u32::from_le_bytes(seed)) << 24 | 1;
        {
            let mut st = pool.lock();
            for m in models {
                // An external server is always there.
                if let Runtime::External { url, .. } = &m.runtime {
                    st.instances.push(Instance {
                        id: next,
                        model: m.name.clone(),
                        place: "external".into(),
                        url: Some(url.trim_end_matches('/').to_owned()),
                        in_flight: 0,
                        idle_since_ms: 0,
                        draining: false,
                        stopping: false,
                        permanent: true,
                    });
                    next += 1;
                }
            }
        }
        Fabric {
            pool,
            specs: models.to_vec(),
            places: Mutex::new(Places::new(models, hosts.clone())),
            local_hosts: hosts,
            agents: Mutex::default(),
            any_managed: models.iter().any(|m| m.runtime.is_managed()),
            switch_ms,
            launcher,
            next_instance: AtomicU64::new(next),
            stops: Mutex::default(),
            starts: Mutex::default(),
            health: Mutex::default(),
        }
    }

    /// Servers started so far, by model.
    pub fn starts(&self) -> BTreeMap<String, u64> {
        self.starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs residency until `shutdown`; every server is stopped then.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        self.lock_health().looping = true;
        if !self.any_managed {
            shutdown.cancelled().await;
            self.lock_health().looping = false;
            return;
        }
        loop {
            let wake = self.step(&shutdown);
            self.lock_health().last_step = std::time::Instant::now();
            tokio::select! {
                _ = self.pool.changed.notified() => {}
                _ = tokio::time::sleep(wake) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        // The keepers stop their servers on shutdown; the daemon is not
        // stopped until they are gone.
        let gone = async {
            loop {
                let changed = self.pool.changed.notified();
                if self.pool.lock().instances.iter().all(|i| i.permanent) {
                    return;
                }
                changed.await;
            }
        };
        self.lock_health().looping = false;
        let limit = STOP_GRACE + Duration::from_secs(2);
        if tokio::time::timeout(limit, gone).await.is_err() {
            tracing::warn!("model servers still stopping after {limit:?}");
        }
    }

    /// One decision, applied; returns how long to sleep at most.
    fn step(self: &Arc<Self>, shutdown: &CancellationToken) -> Duration {
        self.forget_silent_agents();
        self.fail_homeless();
        let places = self.lock_places();
        let pool = &self.pool;
        let mut st = pool.lock();
        let now = pool.now_ms();
        let seen: Vec<residency::Instance> = st
            .instances
            .iter()
            .filter(|i| !i.permanent)
            .map(|i| residency::Instance {
                model: i.model.clone(),
                place: i.place.clone(),
                state: if i.url.is_none() || i.stopping {
                    InstanceState::Starting
                } else if i.in_flight > 0 {
                    InstanceState::Busy {
                        in_flight: i.in_flight,
                    }
                } else {
                    InstanceState::Idle {
                        since_ms: i.idle_since_ms,
                    }
                },
            })
            .collect();
        let demand: BTreeMap<String, Demand> = st
            .models
            .iter()
            .filter_map(|(name, m)| {
                m.queue.best_key().map(|best_key| {
                    let waiting = u32::try_from(m.queue.waiting()).unwrap_or(u32::MAX);
                    (name.clone(), Demand { waiting, best_key })
                })
            })
            .collect();
        let actions = residency::decide(
            now,
            &places.budgets,
            &places.footprints,
            &seen,
            &demand,
            self.switch_ms,
        );
        for i in st.instances.iter_mut() {
            i.draining = false;
        }
        for a in actions {
            match a {
                Action::Stop { model, place } => {
                    let Some(i) = st.instances.iter_mut().find(|i| {
                        i.model == model && i.place == place && !i.stopping && i.in_flight == 0
                    }) else {
                        continue;
                    };
                    i.stopping = true;
                    tracing::info!(%model, %place, "stopping model server to free its memory");
                    let tx = self.lock_stops().remove(&i.id);
                    if let Some(tx) = tx {
                        let _ = tx.send(());
                    }
                    self.wake_agent(places.agent_of(&place));
                }
                Action::Start { model, place } => {
                    // The decision counts its stops as done; memory is free
                    // only once their processes are gone, and their exit
                    // brings the next decision.
                    if st.instances.iter().any(|i| i.place == place && i.stopping) {
                        continue;
                    }
                    let Some(spec) = self.specs.iter().find(|s| s.name == model).cloned() else {
                        continue;
                    };
                    let id = self.next_instance.fetch_add(1, Ordering::Relaxed);
                    st.instances.push(Instance {
                        id,
                        model: model.clone(),
                        place: place.clone(),
                        url: None,
                        in_flight: 0,
                        idle_since_ms: now,
                        draining: false,
                        stopping: false,
                        permanent: false,
                    });
                    tracing::info!(%model, %place, "starting model server");
                    let host = places.hosts.iter().find(|h| h.place == place);
                    if host.is_some_and(|h| h.agent != LOCAL) {
                        self.wake_agent(places.agent_of(&place));
                        continue;
                    }
                    let gpu = host.and_then(|h| h.gpu);
                    let (tx, rx) = oneshot::channel();
                    self.lock_stops().insert(id, tx);
                    tokio::spawn(self.clone().keep(id, spec, gpu, rx, shutdown.clone()));
                }
                Action::Drain { model, place } => {
                    for i in st
                        .instances
                        .iter_mut()
                        .filter(|i| i.model == model && i.place == place)
                    {
                        i.draining = true;
                    }
                }
            }
        }
        let names: Vec<String> = st.models.keys().cloned().collect();
        for n in &names {
            pool.dispatch(&mut st, n);
        }
        if st.models.values().any(|m| m.queue.waiting() > 0) {
            return WAITING_TICK;
        }
        // Otherwise until the first idle instance may be stopped.
        let next_idle_stop = st
            .instances
            .iter()
            .filter(|i| i.url.is_some() && i.in_flight == 0 && !i.stopping && !i.permanent)
            .filter_map(|i| {
                let fp = places.footprints.iter().find(|f| f.model == i.model)?;
                let at = i
                    .idle_since_ms
                    .saturating_add(i64::try_from(fp.idle_stop_ms?).unwrap_or(i64::MAX));
                Some(at.saturating_sub(now).max(1))
            })
            .min();
        next_idle_stop.map_or(Duration::from_secs(3600), |ms| {
            Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
        })
    }

    /// Answers the waiting requests of models that no place can hold now
    /// (none may run where memory is lent, or none lends enough), instead
    /// of leaving them to wait for their clients' timeouts.
    fn fail_homeless(&self) {
        let homeless: Vec<(String, String)> = {
            let places = self.lock_places();
            let st = self.pool.lock();
            places
                .footprints
                .iter()
                .filter(|f| f.places.is_empty())
                .filter(|f| st.models.get(&f.model).is_some_and(|m| m.queue.waiting() > 0))
                .filter_map(|f| {
                    let spec = self.specs.iter().find(|s| s.name == f.model)?;
                    let kind = match spec.on {
                        orchestrator_core::fabric::MemoryKind::Ram => "RAM",
                        orchestrator_core::fabric::MemoryKind::Gpu => "GPU memory",
                    };
                    let where_ = if spec.placement.agents.is_empty() {
                        "the daemon's machine (the models file's `local:`)".to_owned()
                    } else {
                        format!(
                            "an agent named or labelled {} lending memory (orch agent --model-ram, --model-gpu)",
                            spec.placement.agents.join(" or ")
                        )
                    };
                    Some((
                        f.model.clone(),
                        format!(
                            "it can be resident nowhere now: it needs {} MiB of {kind} on {where_}, and none lends that much",
                            f.memory_mib
                        ),
                    ))
                })
                .collect()
        };
        for (model, why) in homeless {
            tracing::warn!(%model, %why, "model requests refused");
            self.pool.fail_waiting(&model, &why);
        }
    }

    pub(crate) fn lock_places(&self) -> std::sync::MutexGuard<'_, Places> {
        self.places.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_stops(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<()>>> {
        self.stops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs instance `id`'s server until residency stops it, it dies or the
    /// daemon stops; then forgets the instance.
    async fn keep(
        self: Arc<Self>,
        id: u64,
        spec: ModelSpec,
        gpu: Option<u32>,
        stop: oneshot::Receiver<()>,
        shutdown: CancellationToken,
    ) {
        let started = tokio::select! {
            r = self.launcher.spawn(&spec, "127.0.0.1", gpu) => r.map_err(|e| e.to_string()),
            _ = shutdown.cancelled() => Err("the daemon is stopping".to_owned()),
        };
        let mut child = match started {
            Ok((url, child)) => {
                self.ready(id, &spec.name, url);
                child
            }
            Err(e) => {
                tracing::warn!(model = %spec.name, error = %e, "model server did not start");
                if !shutdown.is_cancelled() {
                    self.start_failed(&spec.name, &e);
                }
                self.forget(id);
                self.pool.fail_waiting(&spec.name, &e);
                self.pool.changed.notify_one();
                return;
            }
        };
        self.pool.changed.notify_one();
        tokio::select! {
            _ = stop => orchestrator_host::process::terminate(&mut child, STOP_GRACE).await,
            _ = shutdown.cancelled() => orchestrator_host::process::terminate(&mut child, STOP_GRACE).await,
            status = child.wait() => {
                tracing::warn!(model = %spec.name, status = ?status, "model server exited; it starts again when next needed");
            }
        }
        self.forget(id);
        self.pool.changed.notify_one();
    }

    /// Instance `id` of `model` answers at `url`: it takes requests.
    pub(crate) fn ready(&self, id: u64, model: &str, url: String) {
        let mut st = self.pool.lock();
        let now = self.pool.now_ms();
        if let Some(i) = st.instances.iter_mut().find(|i| i.id == id) {
            i.url = Some(url);
            i.idle_since_ms = now;
        }
        self.pool.dispatch(&mut st, model);
        drop(st);
        *self
            .starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(model.to_owned())
            .or_default() += 1;
    }

    pub(crate) fn forget(&self, id: u64) {
        self.lock_stops().remove(&id);
        self.pool.lock().instances.retain(|i| i.id != id);
    }
}
