//! An agent that stops heartbeating, against the real daemon and its reaper
//! on a real SQLite store, over HTTP: its lease expires, it is marked lost
//! once, and when it comes back its stale lease is revoked, its late
//! completion refused (and logged), and it is online again. The reaper keeps
//! time by the daemon's clock, and a jump of it is the daemon's absence.

use orchestrator_core::{AgentId, RunId};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_core::{Entity, Transition};
use orchestrator_daemon::{Daemon, DaemonConfig, Tokens};
use orchestrator_store::{NewRun, SqlStore, StoreOptions};
use serde_json::{json, Value};

const AGENT: &str = "agent-token";
const TTL_MS: u64 = 400;

async fn agent_log(store: &SqlStore, agent: &AgentId) -> Vec<Transition> {
    store
        .transitions_since(0, None, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.entity == Entity::Agent && t.entity_id == agent.as_str())
        .collect()
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = http
        .post(url)
        .bearer_auth(AGENT)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The daemon's settings with this test's tokens.
fn config() -> DaemonConfig {
    DaemonConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Tokens {
            admin: vec!["admin-token".into()],
            agent: vec![AGENT.into()],
        },
    )
}

/// A run of one stage in `project`.
async fn submit(store: &SqlStore, project: &std::path::Path) -> RunId {
    store
        .submit_run(NewRun {
            workflow: "name: w\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}]\n"
                .into(),
            file: Some("wf.yaml".into()),
            project_dir: project.display().to_string(),
            priority: None,
            policy: Default::default(),
            base_commit: "0123456789abcdef0123456789abcdef01234567".into(),
            tree: Vec::new(),
            actor: orchestrator_core::Actor::user("test"),
            on_failure: None,
            inputs: Default::default(),
        })
        .await
        .unwrap()
        .run_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_marked_lost_once_and_its_stale_lease_is_revoked_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqlStore::open(StoreOptions::new(dir.path().join("orch.db"))).unwrap());
    let mut cfg = config();
    cfg.lease_ttl_ms = TTL_MS;
    cfg.reaper_tick_ms = 20;
    let daemon = Daemon::start(cfg, store.clone()).await.unwrap();
    let base = format!("http://{}/v1", daemon.addr);
    let http = reqwest::Client::new();
    let run = submit(&store, dir.path()).await;
    let (s, reg) = post(
        &http,
        format!("{base}/agents"),
        json!({"name": "a1", "slots": 1}),
    )
    .await;
    assert_eq!(s, 200, "{reg}");
    let agent = AgentId::from(reg["agent_id"].as_str().unwrap());
    let (s, job) = post(
        &http,
        format!("{base}/agents/{agent}/claim"),
        json!({"wait_ms": 1000}),
    )
    .await;
    assert_eq!(s, 200, "{job}");
    let job_id = job["job_id"].as_i64().unwrap();
    let token = job["lease_token"].as_str().unwrap().to_owned();

    // Silent: the reaper expires the lease, then marks the agent lost.
    let started = Instant::now();
    let lost = loop {
        let log = agent_log(&store, &agent).await;
        if let Some(t) = log.iter().find(|t| t.to == "lost") {
            break t.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never marked lost: {log:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lost.from.map(|f| f.as_str()), Some("online"));
    assert_eq!(lost.actor, "reaper");
    assert!(
        lost.reason.starts_with("no heartbeat for "),
        "{}",
        lost.reason
    );
    assert!(
        lost.reason.contains("1 of its leases expired"),
        "{}",
        lost.reason
    );
    // Once, however long the silence goes on.
    tokio::time::sleep(Duration::from_millis(3 * TTL_MS)).await;
    let log = agent_log(&store, &agent).await;
    assert_eq!(log.iter().filter(|t| t.to == "lost").count(), 1, "{log:#?}");

    // Back, still holding the stale lease: told to kill the job, and online.
    let (s, hb) = post(
        &http,
        format!("{base}/agents/{agent}/heartbeat"),
        json!({"leases": [{"job_id": job_id, "lease_token": token}], "wait_ms": 0}),
    )
    .await;
    assert_eq!(s, 200, "{hb}");
    assert_eq!(hb["revoked"], json!([job_id]), "{hb}");
    let log = agent_log(&store, &agent).await;
    let back = log.last().unwrap();
    assert_eq!(
        (back.from.map(|f| f.as_str()), back.to.as_str()),
        (Some("lost"), "online")
    );

    // Its late completion is refused, and the refusal is in the run's log.
    let (s, err) = post(
        &http,
        format!("{base}/jobs/{job_id}/complete"),
        json!({"agent_id": agent, "lease_token": token, "claim_next": false,
            "outcome": {"success": true, "exit_codes": [0], "bundle": "b", "duration_ms": 1}}),
    )
    .await;
    assert_eq!(s, 409, "{err}");
    let refusals = store
        .transitions_since(0, Some(run), 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.reason.starts_with("completion refused"))
        .count();
    assert_eq!(refusals, 1);
    daemon.shutdown_token().cancel();
    daemon.wait().await.unwrap();
}

/// The leases' transitions to `to`, the reaper's.
async fn leases_to(store: &SqlStore, to: &str) -> usize {
    store
        .transitions_since(0, None, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.entity == Entity::Lease && t.to == to)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_keeps_time_by_the_daemons_clock_and_a_jump_ahead_gives_leases_their_time_back()
{
    let dir = tempfile::tempdir().unwrap();
    let clock = orchestrator_host::clock::ManualClock::at_now();
    let shared: Arc<dyn orchestrator_host::clock::Clock> = Arc::new(clock.clone());
    let opts = StoreOptions::new(dir.path().join("orch.db")).with_clock(shared.clone());
    let store = Arc::new(SqlStore::open(opts).unwrap());
    let mut cfg = config();
    cfg.lease_ttl_ms = 1_000;
    cfg.reaper_tick_ms = 20;
    cfg.clock = shared;
    let daemon = Daemon::start(cfg, store.clone()).await.unwrap();
    let base = format!("http://{}/v1", daemon.addr);
    let http = reqwest::Client::new();
    submit(&store, dir.path()).await;
    let (s, reg) = post(
        &http,
        format!("{base}/agents"),
        json!({"name": "a1", "slots": 1}),
    )
    .await;
    assert_eq!(s, 200, "{reg}");
    let agent = reg["agent_id"].as_str().unwrap().to_owned();
    let (s, job) = post(
        &http,
        format!("{base}/agents/{agent}/claim"),
        json!({"wait_ms": 1000}),
    )
    .await;
    assert_eq!(s, 200, "{job}");

    // Real time past the lease time while the daemon's clock stands still:
    // nothing expires.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(leases_to(&store, "expired").await, 0);

    // A minute's jump of the wall clock is the daemon's own absence, not the
    // agent's silence: the lease gets its full time again from the new now.
    clock.advance_ms(60_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(leases_to(&store, "expired").await, 0);

    // Past the lease time by the daemon's clock, short of a stall: expired.
    clock.advance_ms(1_500);
    let started = Instant::now();
    while leases_to(&store, "expired").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the lease never expired by the daemon's clock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(leases_to(&store, "expired").await, 1);
    daemon.shutdown_token().cancel();
    daemon.wait().await.unwrap();
}
