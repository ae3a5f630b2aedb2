//! Webhooks and the OpenClaw adapter end to end: the real daemon on a real
//! SQLite store, transitions committed through the store, and real
//! HTTP listeners in the test as the receivers (a webhook endpoint, a fake
//! OpenClaw gateway). Every wait polls under a generous deadline.

mod common;

use orchestrator_core::RunId;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use orchestrator_core::api::{CompleteRequest, RegisterAgent, StepOutcome};
use orchestrator_daemon::hooks::sign::{verify_action, ActionKind};
use orchestrator_daemon::hooks::{
    signature, ActionLinks, HookStatus, HooksConfig, OpenClawConfig, RetryPolicy,
};
use orchestrator_daemon::{Daemon, DaemonConfig, Tokens};
use orchestrator_store::{NewRun, SqlStore, StoreOptions};
use serde_json::Value;

use common::stop;

const LONG: Duration = Duration::from_secs(30);
const ADMIN: &str = "admin-token";
const SECRET: &[u8] = b"webhook-secret";

// ------------------------------------------------------------ receivers

/// One request a receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Got {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
    answered: u16,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

#[derive(Default)]
struct Script {
    /// Statuses to answer with, in order; 200 once they run out.
    answers: VecDeque<u16>,
    got: Vec<Got>,
}

/// An HTTP server on 127.0.0.1 that records every request.
struct Receiver {
    url: String,
    script: Arc<Mutex<Script>>,
}

async fn record(
    State(script): State<Arc<Mutex<Script>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let mut s = script.lock().unwrap();
    let answered = s.answers.pop_front().unwrap_or(200);
    s.got.push(Got {
        method,
        path: uri.path().to_owned(),
        headers,
        body: body.to_vec(),
        answered,
    });
    (StatusCode::from_u16(answered).unwrap(), "receiver says no")
}

impl Receiver {
    async fn start(answers: &[u16]) -> Receiver {
        let script = Arc::new(Mutex::new(Script {
            answers: answers.iter().copied().collect(),
            got: Vec::new(),
        }));
        let app = axum::Router::new()
            .fallback(record)
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}"),
            script,
        }
    }

    fn got(&self) -> Vec<Got> {
        self.script.lock().unwrap().got.clone()
    }

    /// Waits until `n` requests have come in; returns them all.
    async fn wait_for(&self, n: usize) -> Vec<Got> {
        let got = eventually(&format!("{n} requests at {}", self.url), || async {
            let got = self.got();
            (got.len() >= n).then_some(got)
        })
        .await;
        assert_eq!(got.len(), n, "more requests than expected: {got:#?}");
        got
    }
}

/// Polls `f` until it gives a value; panics naming `what` after [`LONG`].
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------ the daemon

fn open_store(dir: &Path) -> Arc<SqlStore> {
    Arc::new(SqlStore::open(StoreOptions::new(dir.join("orch.db"))).unwrap())
}

/// Quick retries, so a test sees them all within a second.
fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        first_backoff_ms: 20,
        max_backoff_ms: 100,
        max_attempts: 3,
        timeout_ms: 2_000,
    }
}

fn webhooks(dir: &Path, urls: &[&str]) -> HooksConfig {
    HooksConfig {
        webhooks: urls.iter().map(|u| u.to_string()).collect(),
        webhook_secret: SECRET.to_vec(),
        state_file: Some(dir.join("hooks.json")),
        retry: fast_retry(),
        ..Default::default()
    }
}

async fn start(store: &Arc<SqlStore>, hooks: HooksConfig) -> Daemon {
    let mut cfg = DaemonConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Tokens {
            admin: vec![ADMIN.into()],
            agent: vec![],
        },
    );
    cfg.hooks = hooks;
    Daemon::start(cfg, store.clone()).await.unwrap()
}

async fn status(addr: SocketAddr) -> Vec<HookStatus> {
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/v1/webhooks"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// Waits until the first target's status satisfies `ok`.
async fn status_when(addr: SocketAddr, ok: impl Fn(&HookStatus) -> bool) -> HookStatus {
    eventually("the hook status", || async {
        let s = status(addr).await.remove(0);
        ok(&s).then_some(s)
    })
    .await
}

const ONE_STAGE: &str =
    "name: w\nstages:\n  - id: build\n    steps: [{commands: [{argv: [make]}]}]\n";

/// Submits a one-stage run with `on_failure: fail` and fails its only
/// step, as an agent would: the store commits `stage failed` then `run failed`.
async fn fail_a_run(store: &SqlStore) -> RunId {
    let run_id = store
        .submit_run(NewRun {
            workflow: ONE_STAGE.into(),
            file: Some("wf.yaml".into()),
            project_dir: "/tmp".into(),
            priority: None,
            policy: Default::default(),
            base_commit: "0123456789abcdef0123456789abcdef01234567".into(),
            tree: Vec::new(),
            actor: orchestrator_core::Actor::user("test"),
            // Ends at once: no human is asked to decide.
            on_failure: Some(orchestrator_core::spec::OnFailure::Fail),
            inputs: Default::default(),
        })
        .await
        .unwrap()
        .run_id;
    let agent = store
        .register_agent(
            RegisterAgent {
                name: "a".into(),
                labels: vec![],
                slots: 1,
                hostname: None,
                ..Default::default()
            },
            30_000,
            10_000,
        )
        .await
        .unwrap()
        .agent_id;
    let job = store.claim(&agent, 30_000).await.unwrap().expect("a job");
    assert_eq!(job.spec.run_id, run_id);
    store
        .complete(
            job.job_id,
            CompleteRequest {
                agent_id: agent,
                lease_token: job.lease_token,
                outcome: StepOutcome {
                    timed_out: false,
                    success: false,
                    exit_codes: vec![Some(2)],
                    error: Some("make exited 2".into()),
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
    run_id
}

/// The (event, run) of each request.
fn events(got: &[Got]) -> Vec<(String, String)> {
    got.iter()
        .map(|g| {
            let v = g.json();
            (
                v["event"].as_str().unwrap().to_owned(),
                v["run_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(run: &RunId) -> Vec<(String, String)> {
    vec![
        ("failure".into(), run.to_string()),
        ("run_finished".into(), run.to_string()),
    ]
}

// ------------------------------------------------------------ scenarios

#[tokio::test]
async fn a_webhook_receives_each_event_as_a_signed_post() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(&[]).await;
    let store = open_store(dir.path());
    let d = start(&store, webhooks(dir.path(), &[&rx.url])).await;
    let run = fail_a_run(&store).await;
    let got = rx.wait_for(2).await;
    assert_eq!(events(&got), pair(&run));
    for g in &got {
        assert_eq!((g.method.as_str(), g.path.as_str()), ("POST", "/"));
        assert_eq!(g.header("content-type"), "application/json");
        // The signature is the HMAC of the exact bytes received.
        assert_eq!(g.header("x-orch-signature-256"), signature(SECRET, &g.body));
        let v = g.json();
        assert_eq!(g.header("x-orch-event"), v["event"]);
        assert_eq!(g.header("x-orch-delivery"), v["seq"].to_string());
        assert_eq!(v["answer_with"], serde_json::json!([]));
    }
    let failure = got[0].json();
    assert_eq!(failure["stage_id"], "build");
    assert_eq!(failure["entity_id"], format!("{run}/build"));
    assert_eq!(
        (failure["from"].as_str(), failure["to"].as_str()),
        (Some("running"), Some("failed"))
    );
    let finished = got[1].json();
    assert_eq!(finished["to"], "failed");
    assert!(finished.get("stage_id").is_none(), "{finished}");
    assert!(finished["seq"].as_i64() > failure["seq"].as_i64());

    let s = status_when(d.addr, |s| {
        s.behind == 0 && s.cursor >= finished["seq"].as_i64().unwrap()
    })
    .await;
    assert_eq!(
        (s.kind.as_str(), s.url.as_str()),
        ("webhook", format!("{}/", rx.url).as_str())
    );
    assert_eq!(
        (s.delivered, s.failed, s.retries, s.retrying),
        (2, 0, 0, false)
    );
    assert_eq!((s.last_status, s.last_error), (Some(200), None));
    // The status needs the admin token.
    let anonymous = reqwest::get(format!("http://{}/v1/webhooks", d.addr))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    stop(d).await;
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_the_event_on_the_third_try() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(&[500, 500]).await;
    let store = open_store(dir.path());
    let d = start(&store, webhooks(dir.path(), &[&rx.url])).await;
    let run = fail_a_run(&store).await;
    let got = rx.wait_for(4).await;
    assert_eq!(
        got.iter().map(|g| g.answered).collect::<Vec<_>>(),
        [500, 500, 200, 200]
    );
    // The same event, byte for byte, until it is taken; then the next, in order.
    assert!(got[..3].iter().all(|g| g.body == got[0].body));
    assert_eq!(events(&[got[2].clone(), got[3].clone()]), pair(&run));
    let s = status_when(d.addr, |s| s.delivered == 2).await;
    assert_eq!(
        (s.failed, s.retries, s.retrying, s.attempt),
        (0, 2, false, 0)
    );
    assert_eq!(s.last_status, Some(200));
    assert_eq!(s.last_error.as_deref(), Some("HTTP 500: receiver says no"));
    assert!(s.last_error_ms.is_some() && s.last_attempt_ms >= s.last_error_ms);
    stop(d).await;
}

#[tokio::test]
async fn a_receiver_that_is_down_shows_as_failed_and_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was free a moment ago: nothing listens there.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let up = Receiver::start(&[]).await;
    let store = open_store(dir.path());
    let d = start(&store, webhooks(dir.path(), &[&down, &up.url])).await;
    let run = fail_a_run(&store).await;
    assert_eq!(events(&up.wait_for(2).await), pair(&run));
    let s = status_when(d.addr, |s| s.failed == 2).await;
    assert_eq!(s.url, down);
    assert_eq!(
        (s.delivered, s.retries, s.retrying, s.behind),
        (0, 4, false, 0)
    );
    assert_eq!(s.last_status, None);
    let err = s.last_error.unwrap();
    assert!(err.contains("connect"), "{err}");
    let all = status(d.addr).await;
    assert_eq!((all[1].delivered, all[1].failed), (2, 0));
    stop(d).await;
}

#[tokio::test]
async fn a_restarted_daemon_delivers_what_it_missed_and_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(&[]).await;
    let hooks = webhooks(dir.path(), &[&rx.url]);

    let store = open_store(dir.path());
    let d = start(&store, hooks.clone()).await;
    let first = fail_a_run(&store).await;
    rx.wait_for(2).await;
    stop(d).await;
    drop(store);

    // Committed while no daemon runs, by a process with only the store.
    let store = open_store(dir.path());
    let missed = fail_a_run(&store).await;
    store.close().await;
    drop(store);

    let store = open_store(dir.path());
    let d = start(&store, hooks).await;
    rx.wait_for(4).await;
    // Delivery is in order: a repeat of anything before would come first.
    let after = fail_a_run(&store).await;
    let got = rx.wait_for(6).await;
    let want: Vec<_> = [pair(&first), pair(&missed), pair(&after)].concat();
    assert_eq!(events(&got), want);
    let s = status_when(d.addr, |s| s.delivered == 6).await;
    assert_eq!(s.failed, 0);
    stop(d).await;
    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("hooks.json")).unwrap()).unwrap();
    let t = saved["targets"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(t["cursor"], got[5].json()["seq"]);
}

/// Writes a transition row the way the store writes one. Approvals and
/// questions are committed by parts of the store not in this crate yet;
/// the hub reads them from the log like any other transition.
fn append_transition(
    dir: &Path,
    entity: &str,
    id: &str,
    run: &RunId,
    from: Option<&str>,
    to: &str,
    reason: &str,
) {
    let c = rusqlite::Connection::open(dir.join("orch.db")).unwrap();
    c.execute(
        "INSERT INTO transitions (entity, entity_id, run_id, from_state, to_state, reason, actor, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'scheduler', 1)",
        rusqlite::params![entity, id, run.as_str(), from, to, reason],
    )
    .unwrap();
}

#[tokio::test]
async fn openclaw_hears_what_happened_and_how_to_answer() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Receiver::start(&[]).await;
    let hooks = HooksConfig {
        openclaw: Some(OpenClawConfig {
            url: format!("{}/", gw.url),
            token: "gateway-token".into(),
            channel: Some("telegram".into()),
            to: Some("12345".into()),
        }),
        links: Some(ActionLinks {
            public_url: "https://orch.example".into(),
            key: b"action-key".to_vec(),
            ttl_ms: 24 * 3600 * 1000,
        }),
        state_file: Some(dir.path().join("hooks.json")),
        retry: fast_retry(),
        ..Default::default()
    };
    let store = open_store(dir.path());
    let d = start(&store, hooks.clone()).await;
    let run = fail_a_run(&store).await;
    let got = gw.wait_for(2).await;
    for g in &got {
        assert_eq!(
            (g.method.as_str(), g.path.as_str()),
            ("POST", "/hooks/agent")
        );
        assert_eq!(g.header("authorization"), "Bearer gateway-token");
        let v = g.json();
        assert_eq!(v["name"], "orchestrator");
        assert_eq!(v["deliver"], true);
        assert_eq!(
            (v["channel"].as_str(), v["to"].as_str()),
            (Some("telegram"), Some("12345"))
        );
    }
    let failure = got[0].json()["message"].as_str().unwrap().to_owned();
    assert!(
        failure.contains(&format!("Stage build of run {run} failed")),
        "{failure}"
    );
    assert!(
        failure.contains(&format!("orch logs {run} build")),
        "{failure}"
    );
    let finished = got[1].json()["message"].as_str().unwrap().to_owned();
    assert!(
        finished.contains(&format!("Run {run} failed")),
        "{finished}"
    );
    let s = status(d.addr).await.remove(0);
    assert_eq!(
        (s.kind.as_str(), s.url.as_str()),
        ("openclaw", format!("{}/", gw.url).as_str())
    );
    stop(d).await;
    drop(store);

    // A stage awaits approval and a question is asked while the daemon is down.
    let stage = format!("{run}/build");
    append_transition(
        dir.path(),
        "stage",
        &stage,
        &run,
        Some("running"),
        "awaiting_approval",
        "step 1 checkpointed",
    );
    append_transition(
        dir.path(),
        "question",
        &format!("{stage}/7"),
        &run,
        None,
        "open",
        "Ship it to staging?",
    );
    // Not for OpenClaw: checkpoints and answers are for webhooks only.
    append_transition(
        dir.path(),
        "question",
        &format!("{stage}/7"),
        &run,
        Some("open"),
        "answered",
        "yes",
    );

    let store = open_store(dir.path());
    let d = start(&store, hooks).await;
    let got = gw.wait_for(4).await;
    let approval = got[2].json()["message"].as_str().unwrap().to_owned();
    assert!(
        approval.contains(&format!("Stage build of run {run} waits for your approval")),
        "{approval}"
    );
    assert!(
        approval.contains(&format!("orch approve {run} build")),
        "{approval}"
    );
    assert!(
        approval.contains(&format!("orch reject {run} build --feedback")),
        "{approval}"
    );
    let links: Vec<&str> = approval
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("https://orch.example/v1/act/"))
        .collect();
    assert_eq!(links.len(), 1, "{approval}");
    let action = verify_action(links[0], b"action-key", orchestrator_host::now_ms()).unwrap();
    assert_eq!(
        (
            action.kind,
            action.run_id.as_str(),
            action.stage_id.as_deref()
        ),
        (ActionKind::Approve, run.as_str(), Some("build"))
    );
    let question = got[3].json()["message"].as_str().unwrap().to_owned();
    assert!(
        question.contains("The step asks:\n> Ship it to staging?\n"),
        "{question}"
    );
    assert!(
        question.contains(&format!("orch answer {run} 7 ")),
        "{question}"
    );
    let s = status_when(d.addr, |s| s.delivered == 4 && s.behind == 0).await;
    assert_eq!(s.failed, 0);
    stop(d).await;
    assert_eq!(gw.got().len(), 4, "the answer is not sent to OpenClaw");
}
