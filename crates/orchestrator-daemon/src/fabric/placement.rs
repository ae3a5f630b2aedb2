//! Where a stage that declares `model: NAME` may run: on an agent with the
//! label `model:NAME`, which the daemon adds when the agent registers, for
//! every external model (reachable from anywhere through the gateway), for
//! every model the daemon runs on its own machine when the agent is on that
//! machine and the model fits the memory lent there (`local:`), and for
//! every model placed on the agent (`placement.agents`) that fits the
//! memory the agent lends (`--model-ram`, `--model-gpu`).

use orchestrator_core::api::ModelMemory;
use orchestrator_core::fabric::hosts::{self, Host};
use orchestrator_core::fabric::ModelSpec;
use orchestrator_core::sched::resources::model_label;

/// The `model:NAME` labels of an agent named `agent` with `labels`, on the
/// daemon's machine (whose places are `local`) or not, lending `memory` to
/// model servers.
pub fn model_labels(
    models: &[ModelSpec],
    local: &[Host],
    agent: &str,
    labels: &[String],
    on_daemon_host: bool,
    memory: &ModelMemory,
) -> Vec<String> {
    let mut here: Vec<Host> = if on_daemon_host {
        local
            .iter()
            .map(|h| Host {
                agent: agent.to_owned(),
                labels: labels.to_vec(),
                ..h.clone()
            })
            .collect()
    } else {
        Vec::new()
    };
    here.extend(super::remote::agent_hosts(agent, labels, memory));
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
        let local = super::super::control::local_hosts(
            &orchestrator_core::fabric::parse_models_file(local, "m.yaml")
                .unwrap()
                .local,
        );
        model_labels(
            &ms,
            &local,
            "a1",
            &[],
            on_daemon_host,
            &ModelMemory::default(),
        )
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
    fn an_agent_lending_memory_gets_the_models_placed_on_it_that_fit() {
        let ms = orchestrator_core::fabric::parse_models(
            "models:\n\
             - {name: named, runtime: {llama_cpp: {model: s.gguf}}, memory: 1G, placement: {agents: [box]}}\n\
             - {name: labelled, runtime: {llama_cpp: {model: s.gguf}}, memory: 1G, placement: {agents: [fast]}}\n\
             - {name: huge, runtime: {llama_cpp: {model: s.gguf}}, memory: 64G, placement: {agents: [box]}}\n\
             - {name: card, runtime: {llama_cpp: {model: s.gguf}}, memory: 6G, on: gpu, placement: {agents: [box]}}\n\
             - {name: home, runtime: {llama_cpp: {model: s.gguf}}, memory: 1G}\n",
            "m.yaml",
        )
        .unwrap();
        let lends = ModelMemory {
            ram_mb: 4096,
            gpus_mb: vec![8192],
        };
        let got = model_labels(&ms, &[], "box", &["fast".into()], false, &lends);
        assert_eq!(got, ["model:named", "model:labelled", "model:card"]);
        // Lending nothing: none of them.
        let none = model_labels(&ms, &[], "box", &[], false, &ModelMemory::default());
        assert!(none.is_empty(), "{none:?}");
    }
}
