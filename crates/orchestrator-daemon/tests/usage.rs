//! Model accounting, against the real daemon on a real SQLite store and a
//! real llama.cpp server: what the gateway counts per job matches what the
//! model answered, shows in the run, the job's usage and `/metrics`, and
//! survives the daemon's shutdown.

use orchestrator_core::RunId;
use std::time::Duration;

use orchestrator_daemon::Daemon;
use orchestrator_store::{SqlStore, StoreOptions};
use serde_json::{json, Value};

mod common;

use common::{send, ADMIN, AGENT};

/// A daemon serving `smol` (llama.cpp, one slot) and `remote` (nothing
/// listens there), with one run's job claimed: the daemon, its address and
/// the job.
async fn leased_job(dir: &std::path::Path) -> (Daemon, String, Value) {
    let model = common::test_model();
    let models = common::models_file(&format!(
        "models:\n  - name: smol\n    runtime: {{llama_cpp: {{model: {model:?}, ctx: 4096, threads: 1}}}}\n    memory: 1G\n    concurrency: 1\n  - name: remote\n    runtime: {{external: {{url: \"http://127.0.0.1:9\"}}}}\n"
    ));
    let (daemon, addr, mut jobs, _) = common::fabric_daemon(dir, models, &[None]).await;
    (daemon, addr, jobs.remove(0))
}

/// `(prompt_tokens, completion_tokens)` of an answer's `usage`.
fn tokens(usage: &Value) -> (u64, u64) {
    let n = |k: &str| {
        usage[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {usage}"))
    };
    (n("prompt_tokens"), n("completion_tokens"))
}

/// The value of one sample of `/metrics`.
async fn metric(http: &reqwest::Client, addr: &str, sample: &str) -> Option<f64> {
    let text = common::metrics(http, addr).await;
    let prefix = format!("{sample} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs llama.cpp and the test model: run scripts/test"
)]
async fn a_jobs_model_calls_are_counted_per_stage_and_model_shown_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr, job) = leased_job(dir.path()).await;
    let run_id = RunId::from(job["run_id"].as_str().unwrap());
    let key = job["api_key"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let chat = |stream: bool| {
        json!({
            "model": "smol",
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "stream": stream,
            "stream_options": {"include_usage": true},
        })
    };

    // One answer whole, one streamed: each says what it cost.
    let (s, whole) = send(
        http.post(format!("{addr}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&chat(false)),
    )
    .await;
    assert_eq!(s, 200, "{whole}");
    let (p1, c1) = tokens(&whole["usage"]);
    let text = http
        .post(format!("{addr}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat(true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let last_usage = text
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| v.get("usage").cloned())
        .unwrap_or_else(|| panic!("no usage in the stream: {text}"));
    let (p2, c2) = tokens(&last_usage);
    assert!(p1 > 0 && c1 > 0 && p2 > 0 && c2 > 0, "{whole} {last_usage}");

    // The metrics count them at once; the job's usage, read with its key, too.
    assert_eq!(
        metric(&http, &addr, "orch_model_requests_total{model=\"smol\"}").await,
        Some(2.0)
    );
    assert_eq!(
        metric(
            &http,
            &addr,
            "orch_model_tokens_total{model=\"smol\",direction=\"in\"}"
        )
        .await,
        Some((p1 + p2) as f64)
    );
    assert_eq!(
        metric(
            &http,
            &addr,
            "orch_model_tokens_total{model=\"smol\",direction=\"out\"}"
        )
        .await,
        Some((c1 + c2) as f64)
    );
    let (s, mine) = send(http.get(format!("{addr}/v1/usage")).bearer_auth(&key)).await;
    assert_eq!(s, 200, "{mine}");
    assert_eq!(mine["job_id"], job["job_id"], "{mine}");
    let smol = &mine["models"]["smol"];
    assert_eq!(smol["requests"], 2, "{mine}");
    assert_eq!(tokens(smol), (p1 + p2, c1 + c2), "{mine}");
    assert!(smol["latency_ms"].as_u64().unwrap() > 0, "{mine}");
    let (s, b) = send(http.get(format!("{addr}/v1/usage")).bearer_auth(AGENT)).await;
    assert_eq!(s, 401, "{b}");

    // With the one slot held by an answer whose client stops reading, a
    // second request waits; the first, abandoned, still counts.
    let held = common::hold_slot(&http, &format!("{addr}/v1/chat/completions"), &key).await;
    let waiter = {
        let (http, addr, key) = (http.clone(), addr.clone(), key.clone());
        tokio::spawn(async move {
            send(
                http.post(format!("{addr}/v1/chat/completions"))
                    .bearer_auth(key)
                    .json(&json!({"model": "smol", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 2})),
            )
            .await
        })
    };
    while metric(&http, &addr, "orch_model_requests_waiting{model=\"smol\"}").await != Some(1.0) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(held);
    let (s, b) = waiter.await.unwrap();
    assert_eq!(s, 200, "{b}");

    // A model that cannot be reached: a request, no tokens.
    let (s, b) = send(
        http.post(format!("{addr}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "remote", "messages": []})),
    )
    .await;
    assert_eq!(s, 502, "{b}");

    // The run shows its stage's usage by model.
    let (s, detail) = send(
        http.get(format!("{addr}/v1/runs/{run_id}"))
            .bearer_auth(ADMIN),
    )
    .await;
    assert_eq!(s, 200, "{detail}");
    let models = &detail["models"];
    let smol = &models["by_stage"]["think"]["smol"];
    assert_eq!(smol["requests"], 4, "{models}");
    assert!(
        smol["prompt_tokens"].as_u64().unwrap() > p1 + p2,
        "{models}"
    );
    assert!(
        smol["max_queue_wait_ms"].as_u64().unwrap() >= 400,
        "the waiting request's wait: {models}"
    );
    let remote = &models["by_stage"]["think"]["remote"];
    assert_eq!(remote["requests"], 1, "{models}");
    assert_eq!(tokens(remote), (0, 0), "{models}");
    assert_eq!(models["total"]["requests"], 5, "{models}");

    // One more, then a clean shutdown: nothing counted is lost.
    let (s, _) = send(
        http.post(format!("{addr}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&chat(false)),
    )
    .await;
    assert_eq!(s, 200);
    daemon.shutdown_token().cancel();
    daemon.wait().await.unwrap();
    let store = SqlStore::open(StoreOptions::new(dir.path().join("orch.db"))).unwrap();
    let kept = store.run_detail(&run_id).await.unwrap().models.unwrap();
    assert_eq!(kept.by_stage["think"]["smol"].requests, 5);
    assert_eq!(kept.total.requests, 6);
    store.close().await;
}
