//! Model servers on agents' machines. An agent that lends memory
//! (`orch agent --model-ram`, `--model-gpu`) long-polls
//! `POST /v1/agents/{id}/models` with the servers it runs; the answer is
//! every server residency wants there, given at once when that differs
//! from the report, else when it changes or the wait ends. The agent starts
//! what it is told and stops the rest; the daemon sends requests to the
//! URLs it reports.
//!
//! Its places are `NAME` (RAM) and `NAME/gpuN`; a model may occupy them
//! when its `placement.agents` names the agent or one of its labels. An
//! agent not heard from for [`AGENT_GONE`] loses its places and servers.
//!
//! Lock order, as in [`super::control`]: places, then pool, then agents.

use orchestrator_core::AgentId;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orchestrator_core::api::{ModelMemory, ModelOrders, ModelReport, ServerOrder};
use orchestrator_core::fabric::hosts::Host;
use tokio::sync::Notify;

use super::control::{Fabric, LendingAgent, Places};
use crate::error::{ApiErr, JsonBody};
use crate::App;

/// How long an agent may go unheard before its servers are written off.
pub const AGENT_GONE: Duration = Duration::from_secs(90);

/// The places an agent lends to model servers.
pub fn agent_hosts(name: &str, labels: &[String], memory: &ModelMemory) -> Vec<Host> {
    let mut out = Vec::new();
    if memory.ram_mb > 0 {
        out.push(Host {
            place: name.to_owned(),
            agent: name.to_owned(),
            labels: labels.to_vec(),
            is_daemon_host: false,
            gpu: None,
            budget_mib: memory.ram_mb,
        });
    }
    for (n, mb) in memory.gpus_mb.iter().enumerate() {
        if *mb > 0 {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            out.push(Host {
                place: format!("{name}/gpu{n}"),
                agent: name.to_owned(),
                labels: labels.to_vec(),
                is_daemon_host: false,
                gpu: Some(n),
                budget_mib: *mb,
            });
        }
    }
    out
}

impl Fabric {
    fn lock_agents(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, LendingAgent>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the long-poll of `agent` (a place's owner) when it is remote.
    pub(crate) fn wake_agent(&self, agent: Option<&str>) {
        if let Some(a) = self.lock_agents().get(agent.unwrap_or_default()) {
            a.orders_changed.notify_one();
        }
    }

    /// Rebuilds the places from the daemon's machine and every agent heard.
    fn rebuild_places(&self) {
        let mut hosts = self.local_hosts.clone();
        for (name, a) in self.lock_agents().iter() {
            hosts.extend(agent_hosts(name, &a.labels, &a.memory));
        }
        let fresh = Places::new(&self.specs, hosts);
        *self.lock_places() = fresh;
    }

    /// Writes off agents not heard from for [`AGENT_GONE`].
    pub(crate) fn forget_silent_agents(&self) {
        let gone: Vec<String> = {
            let mut agents = self.lock_agents();
            let gone: Vec<String> = agents
                .iter()
                .filter(|(_, a)| a.last_seen.elapsed() > AGENT_GONE)
                .map(|(n, _)| n.clone())
                .collect();
            for n in &gone {
                agents.remove(n);
            }
            gone
        };
        if gone.is_empty() {
            return;
        }
        tracing::warn!(agents = ?gone, "agents lending model memory went silent; their servers are written off");
        let places: HashSet<String> = {
            let p = self.lock_places();
            p.hosts
                .iter()
                .filter(|h| gone.contains(&h.agent))
                .map(|h| h.place.clone())
                .collect()
        };
        self.pool
            .lock()
            .instances
            .retain(|i| !places.contains(&i.place));
        self.rebuild_places();
    }

    /// What `agent` should run now: its instances that are not stopping.
    fn orders_for(&self, agent: &str) -> ModelOrders {
        let places = self.lock_places();
        let st = self.pool.lock();
        let run = st
            .instances
            .iter()
            .filter(|i| !i.stopping && places.agent_of(&i.place) == Some(agent))
            .filter_map(|i| {
                let spec = self.specs.iter().find(|s| s.name == i.model)?.clone();
                let gpu = places
                    .hosts
                    .iter()
                    .find(|h| h.place == i.place)
                    .and_then(|h| h.gpu);
                Some(ServerOrder {
                    instance: i.id,
                    spec,
                    gpu,
                })
            })
            .collect();
        ModelOrders { run }
    }

    /// Takes `agent`'s report: servers ready, failed, stopped or dead.
    fn apply_report(&self, agent: &str, report: &ModelReport) {
        let mut ready = Vec::new();
        let mut failed = Vec::new();
        let mut gone = Vec::new();
        {
            let places = self.lock_places();
            let st = self.pool.lock();
            for i in st
                .instances
                .iter()
                .filter(|i| places.agent_of(&i.place) == Some(agent))
            {
                match report.servers.iter().find(|s| s.instance == i.id) {
                    Some(s) if s.error.is_some() => {
                        failed.push((i.id, i.model.clone(), s.error.clone().unwrap_or_default()))
                    }
                    Some(s) if i.url.is_none() => {
                        if let Some(url) = &s.url {
                            ready.push((i.id, i.model.clone(), url.clone()));
                        }
                    }
                    Some(_) => {}
                    // Ran, and runs no more: stopped as ordered, or died.
                    None if i.url.is_some() || i.stopping => gone.push((i.id, i.model.clone())),
                    // Ordered, not yet started there.
                    None => {}
                }
            }
        }
        for (id, model, url) in ready {
            tracing::info!(%agent, %model, %url, "model server ready on agent");
            self.ready(id, &model, url);
        }
        for (id, model, error) in failed {
            tracing::warn!(%agent, %model, %error, "model server did not start on agent");
            self.start_failed(&model, &format!("on agent {agent}: {error}"));
            self.forget(id);
            self.pool
                .fail_waiting(&model, &format!("on agent {agent}: {error}"));
        }
        for (id, _) in gone {
            self.forget(id);
        }
        self.pool.changed.notify_one();
    }

    /// One long-poll of `agent`: records it, takes its report and answers
    /// with its orders once they differ from the report or `wait` passes.
    pub async fn agent_poll(
        &self,
        agent: &str,
        labels: &[String],
        memory: &ModelMemory,
        report: &ModelReport,
        wait: Duration,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> ModelOrders {
        let (notify, changed) = {
            let mut agents = self.lock_agents();
            let a = agents
                .entry(agent.to_owned())
                .or_insert_with(|| LendingAgent {
                    labels: Vec::new(),
                    memory: ModelMemory::default(),
                    last_seen: Instant::now(),
                    orders_changed: Arc::new(Notify::new()),
                });
            a.last_seen = Instant::now();
            let changed = a.labels != labels || &a.memory != memory;
            a.labels = labels.to_vec();
            a.memory = memory.clone();
            (a.orders_changed.clone(), changed)
        };
        if changed {
            self.rebuild_places();
        }
        self.apply_report(agent, report);
        let running: HashSet<u64> = report
            .servers
            .iter()
            .filter(|s| s.error.is_none())
            .map(|s| s.instance)
            .collect();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let orders = self.orders_for(agent);
            let wanted: HashSet<u64> = orders.run.iter().map(|o| o.instance).collect();
            if wanted != running || tokio::time::Instant::now() >= deadline {
                return orders;
            }
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.cancelled() => return orders,
            }
        }
    }
}

/// `POST /v1/agents/{id}/models` (agent token).
pub async fn agent_models(
    State(app): State<Arc<App>>,
    axum::Extension(who): axum::Extension<crate::auth::Principal>,
    Path(agent_id): Path<AgentId>,
    JsonBody(req): JsonBody<ModelReport>,
) -> Result<Response, ApiErr> {
    // Model orders go by name: another agent's would start its servers here.
    crate::ident::check_name(&app, &who, &req.name).await?;
    let wait = Duration::from_millis(req.wait_ms.min(app.config.max_claim_wait_ms));
    tracing::debug!(%agent_id, name = %req.name, "model long-poll");
    let name = req.name.clone();
    let orders = app
        .upstreams
        .fabric
        .agent_poll(&name, &req.labels, &req.memory, &req, wait, &app.shutdown)
        .await;
    Ok(Json(orders).into_response())
}
