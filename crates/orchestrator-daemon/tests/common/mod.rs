//! What the daemon's tests share: for the model fabric's, a real daemon on
//! a real SQLite store serving a models file, with runs submitted and their
//! jobs claimed over HTTP, so that each job's key opens the gateway; for all,
//! stopping a daemon.

#![allow(dead_code)]

use std::sync::Arc;

use orchestrator_core::fabric::ModelsFile;
use orchestrator_daemon::{Daemon, DaemonConfig, Tokens};
use orchestrator_store::{NewRun, SqlStore, StoreOptions};
use serde_json::{json, Value};

pub const AGENT: &str = "agent-token";
pub const ADMIN: &str = "admin-token";

/// Stops a daemon and waits until it has, its store closed.
pub async fn stop(d: Daemon) {
    d.shutdown_token().cancel();
    d.wait().await.unwrap();
}

/// Sends a request: its status and its body as JSON (Null when it is not).
pub async fn send(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// An environment variable `scripts/test` sets for the model runtime.
pub fn env_path(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: scripts/test installs the model runtime and sets it \
             (or run `scripts/model-assets.sh` and export the lines it prints)"
        ),
    }
}

/// The real SmolLM2 model file; panics with how to get it when unset.
pub fn test_model() -> String {
    env_path("ORCH_LLAMA_PYTHON");
    env_path("ORCH_TEST_MODEL")
}

/// Parses a whole models file.
pub fn models_file(yaml: &str) -> ModelsFile {
    orchestrator_core::fabric::parse_models_file(yaml, "models.yaml").unwrap()
}

/// A daemon serving `models`, one run (of one stage, `think`) submitted per
/// priority and every job claimed by one agent: the daemon, its
/// `http://ADDR`, the jobs in the order of `priorities` and the agent's id.
pub async fn fabric_daemon(
    dir: &std::path::Path,
    models: ModelsFile,
    priorities: &[Option<i32>],
) -> (Daemon, String, Vec<Value>, String) {
    let store = Arc::new(SqlStore::open(StoreOptions::new(dir.join("orch.db"))).unwrap());
    let mut cfg = DaemonConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Tokens {
            admin: vec![ADMIN.into()],
            agent: vec![AGENT.into()],
        },
    );
    cfg.model_switch_ms = models.switch_ms();
    cfg.model_aging_ms = models.aging_ms();
    cfg.model_local = models.local;
    cfg.models = models.models;
    cfg.llama_launcher =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/llama-server.py");
    let daemon = Daemon::start(cfg, store.clone()).await.unwrap();
    let addr = format!("http://{}", daemon.addr);
    let mut runs = Vec::new();
    for priority in priorities {
        let run = store
            .submit_run(NewRun {
                workflow:
                    "name: w\nstages:\n  - id: think\n    steps: [{commands: [{argv: [x]}]}]\n"
                        .into(),
                file: Some("wf.yaml".into()),
                project_dir: dir.display().to_string(),
                priority: *priority,
                policy: Default::default(),
                base_commit: "0123456789abcdef0123456789abcdef01234567".into(),
                tree: Vec::new(),
                actor: orchestrator_core::Actor::user("test"),
                on_failure: None,
                inputs: Default::default(),
            })
            .await
            .unwrap();
        runs.push(run.run_id);
    }
    let http = reqwest::Client::new();
    let (s, reg) = send(
        http.post(format!("{addr}/v1/agents"))
            .bearer_auth(AGENT)
            .json(&json!({"name": "a1", "slots": priorities.len()})),
    )
    .await;
    assert_eq!(s, 200, "{reg}");
    let agent = reg["agent_id"].as_str().unwrap().to_owned();
    let mut jobs = Vec::new();
    for _ in priorities {
        let (s, job) = send(
            http.post(format!("{addr}/v1/agents/{agent}/claim"))
                .bearer_auth(AGENT)
                .json(&json!({"wait_ms": 1000})),
        )
        .await;
        assert_eq!(s, 200, "{job}");
        jobs.push(job);
    }
    let jobs = runs
        .iter()
        .map(|r| {
            jobs.iter()
                .find(|j| j["run_id"] == r.as_str())
                .unwrap()
                .clone()
        })
        .collect();
    (daemon, addr, jobs, agent)
}

/// The daemon's `/metrics` text.
pub async fn metrics(http: &reqwest::Client, addr: &str) -> String {
    http.get(format!("{addr}/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Starts a long streamed chat answer of model `smol` at `url` (a
/// `.../chat/completions`) with `key` and reads its first event: the
/// request holds its slot until the answer is dropped.
pub async fn hold_slot(http: &reqwest::Client, url: &str, key: &str) -> reqwest::Response {
    let mut held = http
        .post(url)
        .bearer_auth(key)
        .json(&json!({
            "model": "smol",
            "messages": [{"role": "user", "content": "Tell a very long story."}],
            "max_tokens": 3000, "ignore_eos": true, "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status().as_u16(), 200);
    held.chunk().await.unwrap().expect("a first event");
    held
}
