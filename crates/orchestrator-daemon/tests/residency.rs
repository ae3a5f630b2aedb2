//! Residency for real: two llama.cpp models whose memory the daemon's
//! budget holds only one of. They take turns at request boundaries, every
//! request is answered, and the two are never resident together.

use std::sync::Arc;

use orchestrator_daemon::Daemon;

mod common;

use common::{metrics, test_model};
use serde_json::{json, Value};

/// A daemon with `models_yaml` (a whole models file), one run submitted
/// and its job claimed: the daemon, its base URL and the job's key.
async fn daemon_with_key(dir: &std::path::Path, models_yaml: &str) -> (Daemon, String, String) {
    let (daemon, base, jobs, _) =
        common::fabric_daemon(dir, common::models_file(models_yaml), &[None]).await;
    let key = jobs[0]["api_key"].as_str().unwrap().to_owned();
    (daemon, base, key)
}

fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// The instance lines of `/metrics`: one per model server, serving or not.
fn resident(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("orch_model_instances{"))
        .map(str::to_owned)
        .collect()
}

async fn complete(http: &reqwest::Client, base: &str, key: &str, model: &str) -> Value {
    let r = http
        .post(format!("{base}/v1/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "prompt": "Once upon a time", "max_tokens": 6}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "model {model}: {body}");
    assert!(body["choices"][0]["text"].is_string(), "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs llama.cpp and the test model: run scripts/test"
)]
async fn two_models_that_do_not_fit_together_take_turns_and_no_request_fails() {
    let model = test_model();
    // Each holds 300 MiB of a 400 MiB budget: one at a time.
    let yaml = format!(
        "local: {{ram: 400M}}\nswitch: 500ms\nmodels:\n\
         - {{name: left, runtime: {{llama_cpp: {{model: {model:?}, ctx: 512, threads: 1}}}}, memory: 300M, concurrency: 2}}\n\
         - {{name: right, runtime: {{llama_cpp: {{model: {model:?}, ctx: 512, threads: 1}}}}, memory: 300M, concurrency: 2}}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base, key) = daemon_with_key(dir.path(), &yaml).await;
    let http = reqwest::Client::new();

    // One after the other: each request displaces the idle other model.
    for m in ["left", "right", "left", "right"] {
        complete(&http, &base, &key, m).await;
        let text = metrics(&http, &base).await;
        let now = resident(&text);
        assert_eq!(now.len(), 1, "{now:?}");
        assert!(now[0].contains(&format!("model=\"{m}\"")), "{now:?}");
    }
    let text = metrics(&http, &base).await;
    assert_eq!(metric(&text, "orch_model_starts_total{model=\"left\"} "), 2);
    assert_eq!(
        metric(&text, "orch_model_starts_total{model=\"right\"} "),
        2
    );

    // Both at once, many requests each: every one is answered, and a
    // watcher never sees the two resident together.
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (http, base, watching) = (http.clone(), base.clone(), watching.clone());
        tokio::spawn(async move {
            let mut most = 0usize;
            let mut looks = 0u32;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(resident(&metrics(&http, &base).await).len());
                looks += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            (most, looks)
        })
    };
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..12 {
        let (http, base, key) = (http.clone(), base.clone(), key.clone());
        let m = if n % 2 == 0 { "left" } else { "right" };
        calls.spawn(async move { complete(&http, &base, &key, m).await });
    }
    let mut answered = 0;
    while let Some(r) = calls.join_next().await {
        r.unwrap();
        answered += 1;
    }
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let (most, looks) = watcher.await.unwrap();
    assert_eq!(answered, 12);
    assert!(looks > 5, "the watcher looked {looks} times");
    assert_eq!(most, 1, "two models were resident together");
    let text = metrics(&http, &base).await;
    assert!(metric(&text, "orch_model_starts_total{model=\"left\"} ") >= 2);
    assert!(metric(&text, "orch_model_starts_total{model=\"right\"} ") >= 2);
    assert_eq!(
        metric(&text, "orch_model_requests_waiting{model=\"left\"} "),
        0
    );
    daemon.shutdown_token().cancel();
    daemon.wait().await.unwrap();
}

/// Waits until `/metrics` lists `n` model servers.
async fn until_resident(http: &reqwest::Client, base: &str, n: usize) {
    for _ in 0..200 {
        if resident(&metrics(http, base).await).len() == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{n} model servers never listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs llama.cpp and the test model: run scripts/test"
)]
async fn an_idle_server_is_stopped_and_a_dead_one_starts_again_when_next_wanted() {
    let model = test_model();
    let yaml = format!(
        "models:\n\
         - {{name: phoenix-idle, runtime: {{llama_cpp: {{model: {model:?}, ctx: 512, threads: 1}}}}, memory: 300M, idle_stop: 1s}}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base, key) = daemon_with_key(dir.path(), &yaml).await;
    let http = reqwest::Client::new();

    complete(&http, &base, &key, "phoenix-idle").await;
    assert_eq!(resident(&metrics(&http, &base).await).len(), 1);
    // Idle past `idle_stop` with nothing waiting: stopped.
    until_resident(&http, &base, 0).await;
    let gone = std::process::Command::new("pgrep")
        .args(["-f", "--", "--alias phoenix-idle"])
        .output()
        .unwrap();
    assert!(gone.stdout.is_empty(), "the stopped server still runs");

    // Started again on the next request; then killed behind the daemon's back.
    complete(&http, &base, &key, "phoenix-idle").await;
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", "--", "--alias phoenix-idle"])
        .status()
        .unwrap();
    assert!(killed.success(), "no server to kill");
    until_resident(&http, &base, 0).await;
    complete(&http, &base, &key, "phoenix-idle").await;
    let text = metrics(&http, &base).await;
    assert_eq!(
        metric(&text, "orch_model_starts_total{model=\"phoenix-idle\"} "),
        3
    );
    daemon.shutdown_token().cancel();
    daemon.wait().await.unwrap();
    // Stopping the daemon stops its servers.
    let left = std::process::Command::new("pgrep")
        .args(["-f", "--", "--alias phoenix-idle"])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "a server outlived the daemon");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_a_model_no_place_can_hold_is_answered_at_once_saying_why() {
    // Never started: no file is needed.
    let yaml = "local: {ram: 400M}\nmodels:\n\
         - {name: huge, runtime: {llama_cpp: {model: huge.gguf}}, memory: 64G}\n\
         - {name: far, runtime: {llama_cpp: {model: far.gguf}}, memory: 1G, placement: {agents: [gpu-box]}}\n";
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base, key) = daemon_with_key(dir.path(), yaml).await;
    let http = reqwest::Client::new();
    for (model, needs) in [
        ("huge", "65536 MiB of RAM on the daemon's machine"),
        ("far", "an agent named or labelled gpu-box"),
    ] {
        let r = http
            .post(format!("{base}/v1/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": model, "prompt": "x", "max_tokens": 1}))
            .timeout(std::time::Duration::from_secs(20))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 502, "{body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("resident nowhere") && msg.contains(needs),
            "{msg}"
        );
    }
    assert_eq!(
        metric(
            &metrics(&http, &base).await,
            "orch_model_requests_waiting{model=\"huge\"} "
        ),
        0
    );
    daemon.shutdown_token().cancel();
    daemon.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs llama.cpp and the test model: run scripts/test"
)]
async fn a_server_that_cannot_start_fails_its_requests_and_readyz_names_it() {
    test_model();
    let yaml = "local: {ram: 400M}\nmodels:\n\
         - {name: gone, runtime: {llama_cpp: {model: /nonexistent/gone.gguf}}, memory: 100M}\n";
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base, key) = daemon_with_key(dir.path(), yaml).await;
    let http = reqwest::Client::new();
    let ready: Value = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["components"]["fabric"]["ok"], true, "{ready:#}");
    let r = http
        .post(format!("{base}/v1/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gone", "prompt": "x", "max_tokens": 1}))
        .timeout(std::time::Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 502, "{body}");
    // The fabric says what failed; the daemon stays ready for everything else.
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ready: Value = r.json().await.unwrap();
    let fabric = &ready["components"]["fabric"];
    assert_eq!(fabric["ok"], false, "{ready:#}");
    assert_eq!(fabric["required"], false, "{ready:#}");
    let detail = fabric["detail"].as_str().unwrap();
    assert!(
        detail.contains("failed to start") && detail.contains("gone:"),
        "{detail}"
    );
    assert_eq!(ready["ready"], true, "{ready:#}");
    daemon.shutdown_token().cancel();
    daemon.wait().await.unwrap();
}
