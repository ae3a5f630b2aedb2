//! The model gateway, against the real daemon on a real SQLite store over
//! HTTP: a job's key opens it while the job is leased, and only then.

use std::sync::Arc;

use orchestrator_daemon::{Daemon, DaemonConfig, Tokens};
use orchestrator_store::{NewRun, SqliteStore, Store, StoreOptions};
use serde_json::{json, Value};

const AGENT: &str = "agent-token";

async fn send(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn models() -> Vec<orchestrator_core::fabric::ModelSpec> {
    orchestrator_core::fabric::parse_models(
        "models:\n  - name: remote\n    runtime: {external: {url: \"http://127.0.0.1:9\"}}\n",
        "models.yaml",
    )
    .unwrap()
}

fn assert_invalid_key(status: u16, body: &Value) {
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(body["error"]["message"].as_str().is_some(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_key_opens_the_gateway_while_the_job_is_leased_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(StoreOptions::new(dir.path().join("orch.db"))).unwrap());
    let mut cfg = DaemonConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Tokens {
            admin: vec!["admin-token".into()],
            agent: vec![AGENT.into()],
        },
    );
    cfg.models = models();
    let daemon = Daemon::start(cfg, store.clone()).await.unwrap();
    let base = format!("http://{}/v1", daemon.addr);
    let http = reqwest::Client::new();
    store
        .submit_run(NewRun {
            workflow: "name: w\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}]\n"
                .into(),
            file: Some("wf.yaml".into()),
            project_dir: dir.path().display().to_string(),
            priority: None,
            policy: Default::default(),
            base_commit: "0123456789abcdef0123456789abcdef01234567".into(),
            actor: "user:test".into(),
            on_failure: None,
        })
        .await
        .unwrap();
    let (s, reg) = send(
        http.post(format!("{base}/agents"))
            .bearer_auth(AGENT)
            .json(&json!({"name": "a1", "slots": 1})),
    )
    .await;
    assert_eq!(s, 200, "{reg}");
    let agent = reg["agent_id"].as_str().unwrap().to_owned();
    let (s, job) = send(
        http.post(format!("{base}/agents/{agent}/claim"))
            .bearer_auth(AGENT)
            .json(&json!({"wait_ms": 1000})),
    )
    .await;
    assert_eq!(s, 200, "{job}");
    let job_id = job["job_id"].as_i64().unwrap();
    let key = job["api_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("orch-job-{job_id}-")), "{key}");

    // Leased: the key lists the models.
    let (s, list) = send(http.get(format!("{base}/models")).bearer_auth(&key)).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], "remote", "{list}");

    // No key, another string, a forged signature, the agent's token: refused.
    let (s, b) = send(http.get(format!("{base}/models"))).await;
    assert_invalid_key(s, &b);
    let forged = format!("{}0", &key[..key.len() - 1]);
    let forged = if forged == key {
        format!("{}1", &key[..key.len() - 1])
    } else {
        forged
    };
    for bad in ["sk-nothing", AGENT, forged.as_str(), "orch-job-1-00"] {
        let (s, b) = send(http.get(format!("{base}/models")).bearer_auth(bad)).await;
        assert_invalid_key(s, &b);
    }

    // The job ends: its key no longer works.
    let (s, done) = send(
        http.post(format!("{base}/jobs/{job_id}/complete"))
            .bearer_auth(AGENT)
            .json(&json!({
                "agent_id": agent,
                "lease_token": job["lease_token"],
                "outcome": {"success": true, "exit_codes": [0], "error": null, "error_class": null, "bundle": "b", "duration_ms": 1},
            })),
    )
    .await;
    assert_eq!(s, 200, "{done}");
    let (s, b) = send(http.get(format!("{base}/models")).bearer_auth(&key)).await;
    assert_invalid_key(s, &b);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no longer running"),
        "{b}"
    );
    daemon.shutdown_token().cancel();
    daemon.wait().await.unwrap();
}
