//! Where a stage that declares `model: NAME` may run: on an agent with the
//! label `model:NAME`, which the daemon adds when the agent registers, for
//! every external model (reachable from anywhere through the gateway) and
//! for every model the daemon runs when the agent is on the daemon's
//! machine and the model fits the memory lent there (`local:`).
//!
//! What it is not: model servers on other agents' machines. The daemon runs
//! them on its own machine only, so a models file that places a model on
//! agents is refused at start ([`check_supported`]).

use orchestrator_core::fabric::hosts::{self, Host};
use orchestrator_core::fabric::{LocalHost, ModelSpec};
use orchestrator_core::sched::resources::model_label;

/// Refuses what this daemon cannot do with its models.
pub fn check_supported(models: &[ModelSpec]) -> Result<(), String> {
    match models
        .iter()
        .find(|m| m.runtime.is_managed() && !m.placement.agents.is_empty())
    {
        Some(m) => Err(format!(
            "model {:?}: placement.agents {:?}: model servers run on the daemon's machine only; \
             remove placement.agents (a stage with `model: {}` then runs on agents of the daemon's machine)",
            m.name, m.placement.agents, m.name
        )),
        None => Ok(()),
    }
}

/// This machine's name, as agents report theirs.
pub fn daemon_hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
}

/// The `model:NAME` labels of an agent named `agent` with `labels`, on the
/// daemon's machine or not.
pub fn model_labels(
    models: &[ModelSpec],
    local: &LocalHost,
    agent: &str,
    labels: &[String],
    on_daemon_host: bool,
) -> Vec<String> {
    let here: Vec<Host> = if on_daemon_host {
        super::control::local_hosts(local)
            .into_iter()
            .map(|h| Host {
                agent: agent.to_owned(),
                labels: labels.to_vec(),
                ..h
            })
            .collect()
    } else {
        Vec::new()
    };
    models
        .iter()
        .filter(|m| hosts::stage_agents(m, &here).is_none_or(|a| a.iter().any(|x| x == agent)))
        .map(|m| model_label(&m.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODELS: &str = "models:\n\
        - {name: remote, runtime: {external: {url: 'http://x'}}}\n\
        - {name: small, runtime: {llama_cpp: {model: s.gguf}}, memory: 300M}\n\
        - {name: big, runtime: {llama_cpp: {model: b.gguf}}, memory: 4G}\n\
        - {name: gpu, runtime: {llama_cpp: {model: g.gguf}}, memory: 1G, on: gpu}\n";

    fn labels(local: &str, on_daemon_host: bool) -> Vec<String> {
        let ms = orchestrator_core::fabric::parse_models(MODELS, "m.yaml").unwrap();
        let local = orchestrator_core::fabric::parse_models_file(local, "m.yaml")
            .unwrap()
            .local;
        model_labels(&ms, &local, "a1", &[], on_daemon_host)
    }

    #[test]
    fn an_agent_on_the_daemons_machine_gets_the_models_that_fit_there() {
        assert_eq!(
            labels("local: {ram: 1G}", true),
            ["model:remote", "model:small"]
        );
        assert_eq!(
            labels("local: {ram: 8G, gpus: [2G]}", true),
            ["model:remote", "model:small", "model:big", "model:gpu"]
        );
    }

    #[test]
    fn an_agent_elsewhere_gets_only_external_models() {
        assert_eq!(
            labels("local: {ram: 8G, gpus: [2G]}", false),
            ["model:remote"]
        );
    }

    #[test]
    fn models_placed_on_agents_are_refused() {
        let ms = orchestrator_core::fabric::parse_models(
            "models:\n- {name: s, runtime: {llama_cpp: {model: s.gguf}}, memory: 1G, placement: {agents: [box]}}\n",
            "m.yaml",
        )
        .unwrap();
        let e = check_supported(&ms).unwrap_err();
        assert!(e.contains("\"s\"") && e.contains("placement.agents"), "{e}");
        let ok = orchestrator_core::fabric::parse_models(MODELS, "m.yaml").unwrap();
        assert!(check_supported(&ok).is_ok());
    }
}
