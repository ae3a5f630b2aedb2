//! From the declaration to residency's terms: which places (an agent's RAM,
//! or one of its GPUs) a model may occupy, and which agents a stage that
//! declares `model: NAME` may be placed on.

use super::config::{MemoryKind, ModelSpec};
use super::residency::{ModelFootprint, PlaceBudget};

/// A place models may occupy, as the daemon knows it from agents' reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Unique name of the place, e.g. `box-1` or `box-1/gpu0`.
    pub place: String,
    /// The agent it belongs to.
    pub agent: String,
    pub labels: Vec<String>,
    /// Whether the agent is the daemon's own machine.
    pub is_daemon_host: bool,
    /// `Some(index)` for a GPU's memory, `None` for the machine's RAM.
    pub gpu: Option<u32>,
    /// Memory models may use there.
    pub budget_mib: u64,
}

/// Whether `spec` may occupy `host`, whatever is resident there.
pub fn may_occupy(spec: &ModelSpec, host: &Host) -> bool {
    let p = &spec.placement;
    let memory = match (spec.on, host.gpu) {
        (MemoryKind::Ram, None) => true,
        (MemoryKind::Gpu, Some(g)) => p.gpus.is_empty() || p.gpus.contains(&g),
        _ => false,
    };
    memory
        && p.allows(&host.agent, &host.labels, host.is_daemon_host)
        && spec.memory.as_mib() <= host.budget_mib
}

/// The model as residency sees it; `None` for an external model, which
/// holds no memory here.
pub fn footprint(spec: &ModelSpec, hosts: &[Host]) -> Option<ModelFootprint> {
    if !spec.runtime.is_managed() {
        return None;
    }
    Some(ModelFootprint {
        model: spec.name.clone(),
        memory_mib: spec.memory.as_mib(),
        places: hosts
            .iter()
            .filter(|h| may_occupy(spec, h))
            .map(|h| h.place.clone())
            .collect(),
        idle_stop_ms: spec.idle_stop.map(|d| d.as_millis()),
    })
}

/// The budgets of the hosts, for [`super::residency::decide`].
pub fn budgets(hosts: &[Host]) -> Vec<PlaceBudget> {
    hosts
        .iter()
        .map(|h| PlaceBudget {
            place: h.place.clone(),
            budget_mib: h.budget_mib,
        })
        .collect()
}

/// The agents a stage declaring `model: spec.name` may be placed on, in
/// host order without repeats; `None` when any agent will do (an external
/// model). An empty list means the model can be resident nowhere.
pub fn stage_agents(spec: &ModelSpec, hosts: &[Host]) -> Option<Vec<String>> {
    if !spec.runtime.is_managed() {
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    for h in hosts.iter().filter(|h| may_occupy(spec, h)) {
        if !out.contains(&h.agent) {
            out.push(h.agent.clone());
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::config::parse_models;

    fn host(place: &str, agent: &str, labels: &[&str], gpu: Option<u32>, mib: u64) -> Host {
        Host {
            place: place.into(),
            agent: agent.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            is_daemon_host: agent == "daemon",
            gpu,
            budget_mib: mib,
        }
    }

    fn hosts() -> Vec<Host> {
        vec![
            host("daemon", "daemon", &[], None, 32_000),
            host("box-1", "box-1", &["gpu"], None, 64_000),
            host("box-1/gpu0", "box-1", &["gpu"], Some(0), 24_000),
            host("box-1/gpu1", "box-1", &["gpu"], Some(1), 8_000),
            host("box-2/gpu0", "box-2", &[], Some(0), 80_000),
        ]
    }

    const MODELS: &str = r#"
models:
  - name: gpu-any
    runtime: { llama_cpp: { model: a.gguf } }
    memory: 16G
    on: gpu
    placement: { agents: [gpu, box-2] }
  - name: gpu-one
    runtime: { llama_cpp: { model: b.gguf } }
    memory: 4G
    on: gpu
    placement: { agents: [gpu], gpus: [1] }
    idle_stop: 5m
  - name: local
    runtime: { llama_cpp: { model: c.gguf } }
    memory: 8G
  - name: remote
    runtime: { external: { url: "http://llm:8080/v1" } }
"#;

    #[test]
    fn places_follow_memory_kind_agents_gpus_and_budget() {
        let ms = parse_models(MODELS, "models.yaml").unwrap();
        let hs = hosts();
        let f = |n: usize| footprint(&ms[n], &hs).map(|f| f.places);
        // 16G does not fit gpu1's 8G.
        assert_eq!(f(0), Some(vec!["box-1/gpu0".into(), "box-2/gpu0".into()]));
        assert_eq!(f(1), Some(vec!["box-1/gpu1".into()]));
        assert_eq!(footprint(&ms[1], &hs).unwrap().idle_stop_ms, Some(300_000));
        // No agents listed: the daemon's machine, its RAM.
        assert_eq!(f(2), Some(vec!["daemon".into()]));
        assert_eq!(f(3), None);
        assert_eq!(budgets(&hs).len(), hs.len());
    }

    #[test]
    fn stage_agents_are_where_the_model_can_be_resident() {
        let ms = parse_models(MODELS, "models.yaml").unwrap();
        let hs = hosts();
        assert_eq!(
            stage_agents(&ms[0], &hs),
            Some(vec!["box-1".into(), "box-2".into()])
        );
        assert_eq!(stage_agents(&ms[2], &hs), Some(vec!["daemon".into()]));
        assert_eq!(stage_agents(&ms[3], &hs), None);
        let small = [host("box-1/gpu0", "box-1", &["gpu"], Some(0), 1000)];
        assert_eq!(stage_agents(&ms[0], &small), Some(vec![]));
    }
}
