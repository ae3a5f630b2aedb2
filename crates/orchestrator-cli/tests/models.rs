//! `model:` on a stage: it runs only on an agent where the model can be
//! resident, an unknown model is refused at submission, and a models file
//! this daemon cannot honour is refused at start.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

fn models_file(h: &Harness) -> std::path::PathBuf {
    // Nothing calls the llama.cpp models here: their files are never opened.
    h.write(
        "models.yaml",
        "local: {ram: 1G}\nmodels:\n\
         - {name: remote, runtime: {external: {url: 'http://127.0.0.1:9'}}}\n\
         - {name: small, runtime: {llama_cpp: {model: small.gguf}}, memory: 300M}\n\
         - {name: big, runtime: {llama_cpp: {model: big.gguf}}, memory: 64G}\n",
    )
}

fn agent(d: &Daemon, name: &str) -> serde_json::Value {
    let r = http(d, "GET", "/v1/agents", Some(&d.admin_token), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let agents = r.json();
    agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no agent {name} in {agents:#}"))
        .clone()
}

fn labels_of(d: &Daemon, name: &str) -> Vec<String> {
    let a = agent(d, name);
    let mut l: Vec<String> = a["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    l.sort();
    l
}

#[test]
fn a_stage_with_a_model_runs_where_that_model_can_be_resident() {
    let mut h = Harness::new();
    let file = models_file(&h);
    let d = h.start_daemon(&["--models", file.to_str().unwrap()]);
    h.start_agent(&d, "here", 2);
    // An agent on another machine: only the external model reaches it.
    let r = post_json(
        &d,
        "/v1/agents",
        &d.agent_token,
        &json!({"name": "elsewhere", "slots": 1, "hostname": "another-machine", "labels": ["fast"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("the local agent", LONG, || {
        let r = http(&d, "GET", "/v1/agents", Some(&d.admin_token), None);
        r.text().contains("\"here\"").then_some(())
    });
    assert_eq!(labels_of(&d, "here"), ["model:remote", "model:small"]);
    assert_eq!(labels_of(&d, "elsewhere"), ["fast", "model:remote"]);

    let wf = h.write(
        "wf.yaml",
        "name: m\nstages:\n\
         - {id: small, model: small, steps: [{commands: [{argv: ['true']}]}]}\n\
         - {id: big, model: big, steps: [{commands: [{argv: ['true']}]}]}\n",
    );
    let run = h.submit(&wf);
    let detail = wait_for("stage small to succeed", LONG, || {
        let d = h.show(&run);
        (stage(&d, "small")["state"] == "succeeded").then_some(d)
    });
    assert!(agent(&d, "here")["id"].is_string());
    assert_eq!(
        jobs_of(&detail, "small")[0]["agent_id"],
        agent(&d, "here")["id"],
        "{detail:#}"
    );
    // No agent can hold 64G of model: the stage waits, and says why.
    assert_eq!(stage(&detail, "big")["state"], "queued", "{detail:#}");
    let out = h.orch(&["explain", &run, "big"]);
    out.expect_code(0);
    assert!(out.stdout.contains("model:big"), "{out}");
    h.orch(&["cancel", &run]).expect_code(0);

    // A model the daemon does not serve is refused, naming stage and model.
    let bad = h.write(
        "bad.yaml",
        "name: b\nstages:\n  - {id: x, model: nope, steps: [{commands: [{argv: ['true']}]}]}\n",
    );
    let out = h.orch(&[
        "run",
        bad.to_str().unwrap(),
        "--project",
        h.project.to_str().unwrap(),
    ]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("stage \"x\": model \"nope\" is not served by this daemon")
            && out.stderr.contains("remote, small, big"),
        "{out}"
    );
}

#[test]
fn a_models_file_placing_a_server_on_agents_is_refused_at_start() {
    let h = Harness::new();
    let file = h.write(
        "models.yaml",
        "models:\n- {name: s, runtime: {llama_cpp: {model: s.gguf}}, memory: 1G, placement: {agents: [gpu-box]}}\n",
    );
    let out = h.orch(&[
        "daemon",
        "--listen",
        "127.0.0.1:0",
        "--models",
        file.to_str().unwrap(),
    ]);
    assert_ne!(out.code, 0, "{out}");
    assert!(
        out.stderr.contains("model \"s\": placement.agents"),
        "{out}"
    );
}
