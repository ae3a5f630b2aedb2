//! Where dashboard login links appear, and how the admin ends sessions,
//! with the real `orch` binary: a daemon run as a service (its output into
//! a log file) writes no login link anywhere, `orch dashboard` prints one to
//! whoever asked, and `orch dashboard --revoke` ends every session.

mod common;

use std::time::Duration;

use common::*;

/// The daemon's log once its start is written.
fn log_after_start(h: &Harness, d: &Daemon) -> String {
    wait_for("the daemon's start in its log", LONG, || {
        let log = h.log(d.id);
        log.contains("orch daemon on").then_some(log)
    })
}

#[test]
fn a_daemon_run_into_a_log_file_writes_no_login_link() {
    let mut h = Harness::new();
    let d = h.start_up(&["--slots", "1"]);
    let log = log_after_start(&h, &d);
    assert!(
        !log.contains("ticket="),
        "a live login link in the log:\n{log}"
    );
    assert!(
        log.contains("orch dashboard"),
        "the log says how to get one:\n{log}"
    );

    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    let log = log_after_start(&h, &d);
    assert!(
        !log.contains("ticket="),
        "a live login link in the log:\n{log}"
    );

    // Whoever asks gets one, on their own output.
    let out = h.orch(&["dashboard"]);
    out.expect_code(0);
    assert!(out.stdout.contains("/ui/#ticket="), "{out}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!h.log(d.id).contains("ticket="), "{}", h.log(d.id));
}

#[test]
fn orch_dashboard_revoke_ends_every_session() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    let session = |h: &Harness| {
        let out = h.orch(&["dashboard"]);
        out.expect_code(0);
        let ticket = out
            .stdout
            .trim()
            .split("#ticket=")
            .nth(1)
            .unwrap()
            .to_owned();
        let body = serde_json::json!({ "ticket": ticket }).to_string();
        let r = http(
            &d,
            "POST",
            "/v1/dashboard/session",
            None,
            Some(body.as_bytes()),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["token"].as_str().unwrap().to_owned()
    };
    let (a, b) = (session(&h), session(&h));
    assert_eq!(http(&d, "GET", "/v1/runs", Some(&a), None).status, 200);

    let out = h.orch(&["dashboard", "--revoke"]);
    out.expect_code(0);
    assert!(out.stdout.contains("revoked"), "{out}");
    assert!(!out.stdout.contains("ticket="), "{out}");
    for s in [&a, &b] {
        let r = http(&d, "GET", "/v1/runs", Some(s), None);
        assert_eq!(r.status, 401, "{}", r.text());
    }
    // The admin logs in again with a new link.
    let c = session(&h);
    assert_eq!(http(&d, "GET", "/v1/runs", Some(&c), None).status, 200);
}
