//! `/healthz` and `/readyz` against a real daemon on a real SQLite store:
//! ready while the store takes writes and the loops tick, and not ready,
//! saying which part and why, once the store stops taking writes.

use std::sync::Arc;

use orchestrator_daemon::{Daemon, DaemonConfig, Tokens};
use orchestrator_store::{SqlStore, StoreOptions};
use serde_json::Value;

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_while_the_store_takes_writes_and_the_loops_tick_and_not_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqlStore::open(StoreOptions::new(dir.path().join("orch.db"))).unwrap());
    let mut cfg = DaemonConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Tokens {
            admin: vec!["admin".into()],
            agent: vec!["agent".into()],
        },
    );
    cfg.reaper_tick_ms = 100;
    cfg.preempt_tick_ms = 100;
    let daemon = Daemon::start(cfg, store.clone()).await.unwrap();
    let base = format!("http://{}", daemon.addr);

    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // No token needed; every component named with its state.
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["ready"], true, "{body:#}");
    let c = &body["components"];
    assert_eq!(c["store"]["ok"], true, "{body:#}");
    assert!(
        c["store"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("writable"),
        "{body:#}"
    );
    // The fabric reports itself, without gating readiness.
    assert_eq!(c["fabric"]["ok"], true, "{body:#}");
    assert_eq!(c["fabric"]["required"], false, "{body:#}");
    assert!(
        c["fabric"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("0 models"),
        "{body:#}"
    );
    assert_eq!(c["store"]["required"], true, "{body:#}");
    for looping in ["reaper", "preempt"] {
        assert_eq!(c[looping]["ok"], true, "{body:#}");
        // The loops tick every 100 ms: the last tick is recent.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let (_, again) = get(&format!("{base}/readyz")).await;
        let age = again["components"][looping]["last_tick_age_ms"]
            .as_u64()
            .unwrap();
        assert!(age < 1_000, "{looping}: {again:#}");
    }

    // The writer gone: the store is not ready, and says so.
    store.close().await;
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body:#}");
    assert_eq!(body["ready"], false, "{body:#}");
    assert_eq!(body["components"]["store"]["ok"], false, "{body:#}");
    assert!(
        body["components"]["store"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("a write failed"),
        "{body:#}"
    );
    daemon.shutdown_token().cancel();
    let _ = daemon.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_each_agents_slots_and_a_claim_latency_histogram() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqlStore::open(StoreOptions::new(dir.path().join("orch.db"))).unwrap());
    let cfg = DaemonConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Tokens {
            admin: vec!["admin".into()],
            agent: vec!["agent".into()],
        },
    );
    let daemon = Daemon::start(cfg, store.clone()).await.unwrap();
    let base = format!("http://{}", daemon.addr);
    let http = reqwest::Client::new();
    let reg: Value = http
        .post(format!("{base}/v1/agents"))
        .bearer_auth("agent")
        .json(&serde_json::json!({"name": "box-1", "slots": 3, "memory_mb": 2048}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(reg["agent_id"].is_string(), "{reg}");
    let resp = http
        .get(format!("{base}/metrics"))
        .bearer_auth("admin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    // A scraper that asks for OpenMetrics gets it, the same samples.
    let resp = http
        .get(format!("{base}/metrics"))
        .bearer_auth("admin")
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{:?}",
        resp.headers()
    );
    let om = resp.text().await.unwrap();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.lines()
            .any(|l| l == "orch_agent_slots{agent=\"box-1\"} 3"),
        "{om}"
    );
    for line in [
        "orch_agent_slots{agent=\"box-1\"} 3",
        "orch_agent_slots_used{agent=\"box-1\"} 0",
        "orch_agent_memory_mb{agent=\"box-1\"} 2048",
        "# TYPE orch_claim_seconds histogram",
        "orch_claim_seconds_count 0",
        "# TYPE orch_inbox_items gauge",
        "# TYPE orch_retries_total counter",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    // A job queued and claimed: one claim and one dispatch observed.
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    for args in [
        &["init", "-q"][..],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "first",
        ],
    ] {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(&project)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }
    let submitted = http
        .post(format!("{base}/v1/runs"))
        .bearer_auth("admin")
        .json(&serde_json::json!({
            "workflow": "name: one\nstages:\n  - id: a\n    steps:\n      - commands:\n          - argv: [true]\n",
            "project_dir": project.canonicalize().unwrap(),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        submitted.status().as_u16(),
        201,
        "{:?}",
        submitted.text().await
    );
    let id = reg["agent_id"].as_str().unwrap();
    let claimed: Value = http
        .post(format!("{base}/v1/agents/{id}/claim"))
        .bearer_auth("agent")
        .json(&serde_json::json!({"wait_ms": 5000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(claimed["queued_at_ms"].as_i64().unwrap() > 0, "{claimed}");
    let text = http
        .get(format!("{base}/metrics"))
        .bearer_auth("admin")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "orch_claim_seconds_count 1",
        "orch_dispatch_seconds_count 1",
        "orch_dispatch_seconds_bucket{le=\"+Inf\"} 1",
        "orch_agent_slots_used{agent=\"box-1\"} 1",
        "orch_agent_slots_free{agent=\"box-1\"} 2",
        "orch_agent_memory_free_mb{agent=\"box-1\"} 2048",
        "# TYPE orch_agent_gpu_memory_free_mb gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    daemon.shutdown_token().cancel();
    daemon.wait().await.unwrap();
}
