//! Dashboard login links and sessions against replay and theft: the real
//! daemon on a real SQLite store, restarted on the same store and key as
//! `orch up` restarts it, spoken to over HTTP. A ticket works once even
//! across a restart; a session ends when it logs out, when the admin
//! revokes every session, or at its maximum age, and cannot make links.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use orchestrator_daemon::{Daemon, DaemonConfig, Tokens};
use orchestrator_store::{SqlStore, StoreOptions};
use serde_json::{json, Value};

use common::stop;

const ADMIN: &str = "admin-token";

async fn start(dir: &Path, session_max_ms: Option<u64>) -> Daemon {
    start_at(
        dir,
        session_max_ms,
        Arc::new(orchestrator_host::clock::SystemClock),
    )
    .await
}

/// A daemon and its store on `clock`.
async fn start_at(
    dir: &Path,
    session_max_ms: Option<u64>,
    clock: Arc<dyn orchestrator_host::clock::Clock>,
) -> Daemon {
    let opts = StoreOptions::new(dir.join("orch.db")).with_clock(clock.clone());
    let store = Arc::new(SqlStore::open(opts).unwrap());
    let mut cfg = DaemonConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Tokens {
            admin: vec![ADMIN.into()],
            agent: vec![],
        },
    );
    cfg.dashboard_secret = Some(b"dashboard-key".to_vec());
    if let Some(ms) = session_max_ms {
        cfg.dashboard_session_max_ms = ms;
    }
    cfg.clock = clock;
    Daemon::start(cfg, store).await.unwrap()
}

/// A request as `token` (none: no Authorization): status and JSON body.
async fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let c = reqwest::Client::new();
    let url = format!("http://{}{path}", d.addr);
    let mut r = match method {
        "GET" => c.get(url),
        _ => c.post(url).json(&body),
    };
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A fresh login link's ticket, made with `token`.
async fn ticket(d: &Daemon, token: &str) -> String {
    let (status, link) = call(d, "POST", "/v1/dashboard/links", Some(token), json!({})).await;
    assert_eq!(status, 200, "{link}");
    let url = link["url"].as_str().unwrap();
    url.split("#ticket=").nth(1).unwrap().to_owned()
}

async fn redeem(d: &Daemon, ticket: &str) -> (u16, Value) {
    call(
        d,
        "POST",
        "/v1/dashboard/session",
        None,
        json!({ "ticket": ticket }),
    )
    .await
}

/// A session from a fresh link.
async fn session(d: &Daemon) -> String {
    let (status, s) = redeem(d, &ticket(d, ADMIN).await).await;
    assert_eq!(status, 200, "{s}");
    s["token"].as_str().unwrap().to_owned()
}

async fn reads_runs(d: &Daemon, token: &str) -> bool {
    call(d, "GET", "/v1/runs", Some(token), Value::Null).await.0 == 200
}

#[tokio::test]
async fn a_used_login_link_stays_used_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), None).await;
    let t = ticket(&d, ADMIN).await;
    assert_eq!(redeem(&d, &t).await.0, 200);
    stop(d).await;

    let d = start(dir.path(), None).await;
    let (status, body) = redeem(&d, &t).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("already used"),
        "{body}"
    );
    stop(d).await;
}

#[tokio::test]
async fn logging_out_ends_the_session_on_the_server_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), None).await;
    let mine = session(&d).await;
    let other = session(&d).await;
    assert!(reads_runs(&d, &mine).await);
    let (status, body) = call(&d, "POST", "/v1/dashboard/logout", Some(&mine), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !reads_runs(&d, &mine).await,
        "a stolen copy of it is dead too"
    );
    assert!(reads_runs(&d, &other).await, "only that session ended");
    // The admin token is no session to log out of.
    let (status, body) = call(&d, "POST", "/v1/dashboard/logout", Some(ADMIN), json!({})).await;
    assert_eq!(status, 400, "{body}");
    stop(d).await;

    let d = start(dir.path(), None).await;
    assert!(!reads_runs(&d, &mine).await);
    assert!(reads_runs(&d, &other).await);
    stop(d).await;
}

#[tokio::test]
async fn the_admin_revokes_every_session_and_unused_link_and_it_holds_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), None).await;
    let (a, b) = (session(&d).await, session(&d).await);
    let unused = ticket(&d, ADMIN).await;
    // A session may not end everyone else's.
    let (status, body) = call(&d, "POST", "/v1/dashboard/revoke", Some(&a), json!({})).await;
    assert_eq!(status, 403, "{body}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, body) = call(&d, "POST", "/v1/dashboard/revoke", Some(ADMIN), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(!reads_runs(&d, &a).await && !reads_runs(&d, &b).await);
    let (status, body) = redeem(&d, &unused).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    stop(d).await;

    let d = start(dir.path(), None).await;
    assert!(!reads_runs(&d, &a).await);
    let fresh = session(&d).await;
    assert!(reads_runs(&d, &fresh).await, "links made after work");
    stop(d).await;
}

#[tokio::test]
async fn a_session_cannot_make_login_links_and_ends_at_its_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = orchestrator_host::clock::ManualClock::at_now();
    let d = start_at(dir.path(), Some(1_500), Arc::new(clock.clone())).await;
    let (status, s) = redeem(&d, &ticket(&d, ADMIN).await).await;
    assert_eq!(status, 200, "{s}");
    let token = s["token"].as_str().unwrap().to_owned();
    let now = orchestrator_host::clock::Clock::now_ms(&clock);
    assert_eq!(s["expires_at_ms"].as_i64().unwrap(), now + 1_500);

    // A session making itself a link would log in again, past its end.
    let (status, body) = call(&d, "POST", "/v1/dashboard/links", Some(&token), json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("session"),
        "{body}"
    );
    assert!(reads_runs(&d, &token).await);
    // Its last millisecond still reads; the next one does not.
    clock.advance_ms(1_499);
    assert!(reads_runs(&d, &token).await);
    clock.advance_ms(1);
    let (status, body) = call(&d, "GET", "/v1/runs", Some(&token), Value::Null).await;
    assert_eq!(status, 401, "{body}");
    stop(d).await;
}
