//! Signed one-click links against replay: the real daemon on a real SQLite
//! store, its OpenClaw messages caught by a real HTTP listener, and the
//! links in them clicked over HTTP. A link acts on the one request it was
//! sent for, once, and stays refused across a restart.

mod common;

use orchestrator_core::{AgentId, RunId};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use orchestrator_core::api::{CompleteRequest, RegisterAgent, StepOutcome};
use orchestrator_daemon::hooks::{ActionLinks, HooksConfig, OpenClawConfig, RetryPolicy};
use orchestrator_daemon::{Daemon, DaemonConfig, Tokens};
use orchestrator_store::{HumanCommand, NewRun, SqlStore, StoreOptions};
use serde_json::Value;

use common::stop;

const LONG: Duration = Duration::from_secs(30);

/// A stand-in OpenClaw gateway: keeps the message of every POST.
async fn gateway() -> (String, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route(
            "/hooks/agent",
            axum::routing::post(
                |State(got): State<Arc<Mutex<Vec<String>>>>, body: Bytes| async move {
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    got.lock()
                        .unwrap()
                        .push(v["message"].as_str().unwrap_or_default().to_owned());
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

fn hooks(dir: &Path, gateway: &str) -> HooksConfig {
    HooksConfig {
        openclaw: Some(OpenClawConfig {
            url: gateway.to_owned(),
            token: "gateway-token".into(),
            channel: None,
            to: None,
        }),
        links: Some(ActionLinks {
            public_url: "https://orch.example".into(),
            key: b"action-key".to_vec(),
            ttl_ms: 24 * 3600 * 1000,
        }),
        state_file: Some(dir.join("hooks.json")),
        retry: RetryPolicy {
            first_backoff_ms: 20,
            max_backoff_ms: 100,
            max_attempts: 3,
            timeout_ms: 2_000,
        },
        ..Default::default()
    }
}

async fn start(dir: &Path, gateway: &str) -> (Daemon, Arc<SqlStore>) {
    let store = Arc::new(SqlStore::open(StoreOptions::new(dir.join("orch.db"))).unwrap());
    let mut cfg = DaemonConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Tokens {
            admin: vec!["admin-token".into()],
            agent: vec![],
        },
    );
    cfg.hooks = hooks(dir, gateway);
    (Daemon::start(cfg, store.clone()).await.unwrap(), store)
}

/// Waits for the `n`th message that contains `word`; returns its
/// `/v1/act/...` path on the line that contains `line_word`.
async fn link_in(got: &Mutex<Vec<String>>, word: &str, n: usize, line_word: &str) -> String {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let found = got
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.contains(word))
            .nth(n - 1)
            .cloned();
        if let Some(m) = found {
            let line = m
                .lines()
                .find(|l| l.contains(line_word) && l.contains("/v1/act/"))
                .unwrap_or_else(|| panic!("no {line_word} link in {m}"));
            let at = line.find("/v1/act/").unwrap();
            return line[at..].trim().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message #{n} about {word}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Clicks the link's button: its status and page.
/// Opens a link as a browser does first: its page, nothing done.
async fn open(d: &Daemon, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{}{path}", d.addr))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn click(d: &Daemon, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{}{path}", d.addr))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

const GATED: &str = "name: gated\nstages:\n  - id: review\n    steps:\n      - approve: true\n        commands: [{argv: ['true']}]\n";

/// Runs the next queued job to success, as an agent would.
async fn run_next_step(store: &SqlStore, agent: &AgentId) {
    let job = store.claim(agent, 30_000).await.unwrap().expect("a job");
    store
        .complete(
            job.job_id,
            CompleteRequest {
                agent_id: agent.to_owned(),
                lease_token: job.lease_token,
                outcome: StepOutcome {
                    timed_out: false,
                    success: true,
                    exit_codes: vec![Some(0)],
                    error: None,
                    error_class: None,
                    bundle: "b".into(),
                    duration_ms: 1,
                    checkpoint: None,
                    until_met: None,
                    questions: Vec::new(),
                    sandbox: None,
                    log_tail: None,
                    outputs: Default::default(),
                },
                claim_next: false,
                claim_key: None,
            },
            30_000,
        )
        .await
        .unwrap();
}

async fn stage_state(store: &SqlStore, run: &RunId) -> String {
    let detail = serde_json::to_value(store.run_detail(run).await.unwrap()).unwrap();
    detail["stages"][0]["state"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_approve_link_acts_on_its_own_round_once_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, got) = gateway().await;
    let (d, store) = start(dir.path(), &gw).await;
    let run = store
        .submit_run(NewRun {
            workflow: GATED.into(),
            file: Some("gated.yaml".into()),
            project_dir: "/tmp".into(),
            priority: None,
            policy: Default::default(),
            on_failure: None,
            base_commit: "0123456789abcdef0123456789abcdef01234567".into(),
            tree: Vec::new(),
            actor: orchestrator_core::Actor::user("test"),
            inputs: Default::default(),
        })
        .await
        .unwrap()
        .run_id;
    let agent = store
        .register_agent(
            RegisterAgent {
                name: "a".into(),
                slots: 1,
                ..Default::default()
            },
            30_000,
            10_000,
        )
        .await
        .unwrap()
        .agent_id;

    // Round one: the step asks for approval; a link is sent, and not clicked.
    run_next_step(&store, &agent).await;
    let first = link_in(&got, "waits for your approval", 1, "Approve").await;
    // The reviewer rejects it another way; the step runs again and asks anew.
    store
        .human(
            &run,
            HumanCommand::Reject {
                stage_id: "review".into(),
                feedback: "not like this".into(),
            },
            &orchestrator_core::Actor::user("test"),
        )
        .await
        .unwrap();
    run_next_step(&store, &agent).await;
    let second = link_in(&got, "waits for your approval", 2, "Approve").await;
    assert_ne!(first, second);
    assert_eq!(stage_state(&store, &run).await, "awaiting_approval");

    // Its page already says so; the new link's page offers to approve.
    let (status, page) = open(&d, &first).await;
    assert_eq!(status, 409, "{page}");
    assert!(
        page.contains("does not work any more") && page.contains("newer request"),
        "{page}"
    );
    let (status, page) = open(&d, &second).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Do it"), "{page}");

    // The old link must not approve the new round's work.
    let (status, page) = click(&d, &first).await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("newer request"), "{page}");
    assert_eq!(stage_state(&store, &run).await, "awaiting_approval");

    // The new one does, once.
    let (status, page) = click(&d, &second).await;
    assert_eq!(status, 200, "{page}");
    let (status, page) = click(&d, &second).await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("already used"), "{page}");
    let (status, page) = open(&d, &second).await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("already used"), "{page}");

    // A restarted daemon still knows both.
    stop(d).await;
    drop(store);
    let (d, _store) = start(dir.path(), &gw).await;
    let (status, page) = click(&d, &second).await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("already used"), "{page}");
    let (status, page) = click(&d, &first).await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("newer request"), "{page}");
    stop(d).await;
}
