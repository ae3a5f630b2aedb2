//! The model gateway, against the real daemon on a real SQLite store over
//! HTTP: a job's key opens it while the job is leased, and only then.

use std::sync::Arc;

use orchestrator_daemon::Daemon;
use serde_json::{json, Value};

mod common;

use common::{send, AGENT};

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

/// A daemon serving `models`, one run submitted and its job claimed: the
/// daemon, its `/v1` URL, the claimed job and the agent's id.
async fn leased_job(
    dir: &std::path::Path,
    models: Vec<orchestrator_core::fabric::ModelSpec>,
) -> (Daemon, String, Value, String) {
    let (daemon, base, mut jobs, agent) = leased_jobs(dir, models, &[None]).await;
    (daemon, base, jobs.remove(0), agent)
}

/// A daemon serving `models`, one run submitted per priority and every job
/// claimed by one agent: the daemon, its `/v1` URL, the jobs in the order
/// of `priorities` and the agent's id.
async fn leased_jobs(
    dir: &std::path::Path,
    models: Vec<orchestrator_core::fabric::ModelSpec>,
    priorities: &[Option<i32>],
) -> (Daemon, String, Vec<Value>, String) {
    let file = orchestrator_core::fabric::ModelsFile {
        models,
        ..Default::default()
    };
    let (daemon, addr, jobs, agent) = common::fabric_daemon(dir, file, priorities).await;
    (daemon, format!("{addr}/v1"), jobs, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_key_opens_the_gateway_while_the_job_is_leased_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base, job, agent) = leased_job(dir.path(), models()).await;
    let http = reqwest::Client::new();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs llama.cpp and the test model: run scripts/test"
)]
async fn a_leased_jobs_key_gets_real_completions_from_a_llama_cpp_model_started_on_first_use() {
    let model = common::env_path("ORCH_TEST_MODEL");
    common::env_path("ORCH_LLAMA_PYTHON");
    let models = orchestrator_core::fabric::parse_models(
        &format!(
            "models:\n  - name: smol\n    runtime: {{llama_cpp: {{model: {model:?}, ctx: 2048, threads: 1}}}}\n    memory: 1G\n    concurrency: 2\n"
        ),
        "models.yaml",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base, job, _agent) = leased_job(dir.path(), models).await;
    let key = job["api_key"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let chat = json!({
        "model": "smol",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
    });

    // Refused before anything starts: a wrong key, bad JSON, an unknown model.
    let (s, b) = send(
        http.post(format!("{base}/chat/completions"))
            .bearer_auth("orch-job-1-00")
            .json(&chat),
    )
    .await;
    assert_invalid_key(s, &b);
    let (s, b) = send(
        http.post(format!("{base}/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body("{\"model\": "),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["type"], "invalid_request_error", "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("JSON"),
        "{b}"
    );
    let (s, b) = send(
        http.post(format!("{base}/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "no-such-model", "messages": []})),
    )
    .await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(b["error"]["code"], "model_not_found", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-model"),
        "{b}"
    );

    // A real completion, through a llama.cpp server started on first use.
    let (s, b) = send(
        http.post(format!("{base}/chat/completions"))
            .bearer_auth(&key)
            .json(&chat),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(b["choices"][0]["message"]["content"].is_string(), "{b}");
    assert!(b["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{b}");

    // Streamed: Server-Sent Events pass through to the end.
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let r = http
        .post(format!("{base}/chat/completions"))
        .bearer_auth(&key)
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "{:?}",
        r.headers()
    );
    let text = r.text().await.unwrap();
    assert!(text.contains("data: {"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // Plain completions go through too.
    let (s, b) = send(
        http.post(format!("{base}/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "smol", "prompt": "Once upon", "max_tokens": 4})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(b["choices"][0]["text"].is_string(), "{b}");
    daemon.shutdown_token().cancel();
    daemon.wait().await.unwrap();
}

/// The metric of requests waiting for `model`'s slot.
async fn waiting(http: &reqwest::Client, base: &str, model: &str) -> u64 {
    let text = http
        .get(format!("{}/metrics", base.trim_end_matches("/v1")))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!("orch_model_requests_waiting{{model=\"{model}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs llama.cpp and the test model: run scripts/test"
)]
async fn with_one_slot_a_high_priority_request_is_served_before_a_low_one_queued_earlier() {
    let model = common::env_path("ORCH_TEST_MODEL");
    common::env_path("ORCH_LLAMA_PYTHON");
    let models = orchestrator_core::fabric::parse_models(
        &format!(
            "models:\n  - name: smol\n    runtime: {{llama_cpp: {{model: {model:?}, ctx: 4096, threads: 1}}}}\n    memory: 1G\n    concurrency: 1\n"
        ),
        "models.yaml",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base, jobs, _agent) =
        leased_jobs(dir.path(), models, &[Some(0), Some(0), Some(50)]).await;
    let key = |i: usize| jobs[i]["api_key"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();

    // The slot is taken by a long, low-priority streamed answer, read no further.
    let held = common::hold_slot(&http, &format!("{base}/chat/completions"), &key(0)).await;

    // Low, then high: both wait for the slot.
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ask = |name: &'static str, key: String| {
        let (http, base, order) = (http.clone(), base.clone(), order.clone());
        tokio::spawn(async move {
            let (s, b) = send(
                http.post(format!("{base}/chat/completions"))
                    .bearer_auth(key)
                    .json(&json!({
                        "model": "smol",
                        "messages": [{"role": "user", "content": "Say hi."}],
                        "max_tokens": 4,
                    })),
            )
            .await;
            assert_eq!(s, 200, "{b}");
            order.lock().unwrap().push(name);
        })
    };
    let low = ask("low", key(1));
    while waiting(&http, &base, "smol").await < 1 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let high = ask("high", key(2));
    while waiting(&http, &base, "smol").await < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // The long answer's client goes away: its slot goes to the high one first.
    drop(held);
    low.await.unwrap();
    high.await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["high", "low"]);
    daemon.shutdown_token().cancel();
    daemon.wait().await.unwrap();
}

/// An answer in OpenAI's error shape, with this status and code.
fn assert_openai_error(status: u16, body: &Value, want: u16, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["type"].as_str().is_some(), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_unknown_models_and_unknown_routes_get_openai_error_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base, job, _agent) = leased_job(dir.path(), models()).await;
    let key = job["api_key"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let post_raw = |path: &str, body: &'static str| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
    };

    // Refused before the (unreachable) upstream is ever asked, on every route.
    for path in ["/chat/completions", "/completions", "/embeddings"] {
        for bad in ["{\"model\": ", "not json", ""] {
            let (s, b) = send(post_raw(path, bad)).await;
            assert_openai_error(s, &b, 400, "invalid_json");
        }
        for nameless in ["{}", "[1, 2]", "{\"model\": null, \"prompt\": \"x\"}"] {
            let (s, b) = send(post_raw(path, nameless)).await;
            assert_openai_error(s, &b, 400, "missing_model");
        }
        for typed in ["{\"model\": 42}", "{\"model\": [\"remote\"]}"] {
            let (s, b) = send(post_raw(path, typed)).await;
            assert_openai_error(s, &b, 400, "invalid_model");
            assert!(
                b["error"]["message"].as_str().unwrap().contains("string"),
                "{b}"
            );
        }
        let (s, b) = send(post_raw(path, "{\"model\": \"nope\", \"prompt\": \"x\"}")).await;
        assert_openai_error(s, &b, 404, "model_not_found");
        assert!(
            b["error"]["message"].as_str().unwrap().contains("`nope`"),
            "{b}"
        );
    }

    // A wrong method or an unknown path in the gateway's namespace.
    for path in ["/chat/completions", "/completions", "/embeddings"] {
        let (s, b) = send(http.get(format!("{base}{path}")).bearer_auth(&key)).await;
        assert_openai_error(s, &b, 405, "method_not_allowed");
    }
    let (s, b) = send(http.post(format!("{base}/models")).bearer_auth(&key)).await;
    assert_openai_error(s, &b, 405, "method_not_allowed");
    for path in ["/audio/speech", "/models/remote/x", "/chat"] {
        let (s, b) = send(http.post(format!("{base}{path}")).bearer_auth(&key)).await;
        assert_openai_error(s, &b, 404, "unknown_url");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(path),
            "{b}"
        );
    }

    // The daemon's own API keeps its own shape: `error` is a string.
    let root = base.trim_end_matches("/v1");
    for url in [format!("{base}/runs/x/nope"), format!("{root}/nope")] {
        let (s, b) = send(http.get(&url).bearer_auth("admin-token")).await;
        assert_eq!(s, 404, "{url}: {b}");
        assert!(b["error"].is_string(), "{url}: {b}");
    }
    let (s, b) = send(
        http.get(format!("{base}/jobs/1/complete"))
            .bearer_auth(AGENT),
    )
    .await;
    assert_eq!(s, 405, "{b}");
    assert!(b["error"].is_string(), "{b}");
    daemon.shutdown_token().cancel();
    daemon.wait().await.unwrap();
}

/// Polls the waiting gauge of `model` until it reads `n`, for `secs` at most.
async fn wait_waiting(http: &reqwest::Client, base: &str, model: &str, n: u64, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if waiting(http, base, model).await == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!(
        "{model}: {} requests waiting after {secs} s, expected {n}",
        waiting(http, base, model).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs llama.cpp and the test model: run scripts/test"
)]
async fn a_client_gone_mid_answer_frees_its_slot_and_one_gone_while_queued_leaves_the_queue() {
    let model = common::env_path("ORCH_TEST_MODEL");
    common::env_path("ORCH_LLAMA_PYTHON");
    let models = orchestrator_core::fabric::parse_models(
        &format!(
            "models:\n  - name: smol\n    runtime: {{llama_cpp: {{model: {model:?}, ctx: 4096, threads: 1}}}}\n    memory: 1G\n    concurrency: 1\n"
        ),
        "models.yaml",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base, jobs, _agent) = leased_jobs(dir.path(), models, &[None, None, None]).await;
    let key = |i: usize| jobs[i]["api_key"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let short = json!({
        "model": "smol",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 4,
    });

    // A takes the only slot with a long streamed answer (minutes on one
    // thread) and reads one chunk.
    let a = common::hold_slot(&http, &format!("{base}/chat/completions"), &key(0)).await;

    // B queues behind A on a bare connection, then closes it unanswered.
    let body = short.to_string();
    let mut b = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut b,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: daemon\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            key(1),
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    wait_waiting(&http, &base, "smol", 1, 60).await;
    // Well before A's long answer could end on its own: had B stayed in the
    // queue, only A's end would empty it.
    drop(b);
    wait_waiting(&http, &base, "smol", 0, 10).await;

    // C queues behind A: B's leaving gave it no slot, A still holds the only one.
    let c = tokio::spawn({
        let (http, base, key, short) = (http.clone(), base.clone(), key(2), short.clone());
        async move {
            send(
                http.post(format!("{base}/chat/completions"))
                    .bearer_auth(key)
                    .json(&short),
            )
            .await
        }
    });
    wait_waiting(&http, &base, "smol", 1, 60).await;
    assert!(!c.is_finished());

    // A goes away mid-answer: C gets the slot (had B taken it, C would wait
    // for ever) and nothing is left waiting.
    drop(a);
    let (s, answer) = tokio::time::timeout(std::time::Duration::from_secs(120), c)
        .await
        .expect("C is served once A is gone")
        .unwrap();
    assert_eq!(s, 200, "{answer}");
    assert!(
        answer["choices"][0]["message"]["content"].is_string(),
        "{answer}"
    );
    assert_eq!(waiting(&http, &base, "smol").await, 0);
    daemon.shutdown_token().cancel();
    daemon.wait().await.unwrap();
}
