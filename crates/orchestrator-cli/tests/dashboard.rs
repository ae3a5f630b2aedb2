//! The web dashboard, end to end: a real `orch up` serves it, and Debian's
//! Chromium, driven by Playwright (`tests/dashboard/drive.mjs`), logs in
//! through the link `orch dashboard` prints, reads a run's graph and a
//! running command's log as it writes, approves the waiting stage by clicking, and sees the run
//! finish through live updates. Its screenshots are kept as test artifacts
//! (`$CARGO_TARGET_TMPDIR/artifacts/`, or `ORCH_TEST_ARTIFACTS`).
//!
//! Needs node, `npm ci` in tests/dashboard and /usr/bin/chromium, which
//! `scripts/test` installs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

const WORKFLOW: &str = r#"
name: dashboard
stages:
  - id: build
    steps:
      - name: compile
        artifacts: [build.txt]
        commands:
          - argv: [sh, -c, 'echo "compiled 3 units"; echo ok > build.txt; echo "version=1.2.3" >> "$ORCH_OUTPUT"']
  - id: lint
    steps:
      - commands:
          - argv: [sh, -c, 'echo lint clean']
  - id: test
    needs: [build]
    steps:
      - commands:
          - argv: [sh, -c, 'echo tests pass']
  - id: review
    needs: [test, lint]
    steps:
      - name: summary
        approve: true
        commands:
          - argv: [sh, -c, 'echo ready for review']
  - id: ship
    needs: [review]
    steps:
      - commands:
          - argv: [sh, -c, 'echo shipped']
  - id: serve
    steps:
      - commands:
          - argv: [sh, -c, 'echo waiting for release; while [ ! -e release ]; do sleep 0.05; done; echo released']
"#;

fn artifacts() -> PathBuf {
    std::env::var_os("ORCH_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts"))
}

fn driver_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

/// Node, Playwright and Chromium, or a panic saying how to get them.
fn check_tools() {
    require("node", "nodejs");
    let chromium = std::env::var("ORCH_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/test, which installs Debian's chromium"
    );
    assert!(
        driver_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run scripts/test (npm ci in {})",
        driver_dir().display()
    );
}

#[test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs Chromium, node and playwright-core: run scripts/test"
)]
fn a_browser_sees_the_graph_approves_by_clicking_and_watches_the_run_finish() {
    check_tools();
    let mut h = Harness::new();
    let d = h.start_up(&["--slots", "2"]);
    let file = h.write("dashboard.yaml", WORKFLOW);
    let run = h.submit(&file);
    // The command looks for it in its own worktree, which its sandbox shares.
    let release = h.worktree(&run).join("release");
    wait_for("review to await approval", LONG, || {
        let detail = h.show(&run);
        (stage(&detail, "review")["state"] == "awaiting_approval").then_some(())
    });
    let link = h.orch(&["dashboard"]);
    link.expect_code(0);
    let link = link.stdout.trim().to_owned();
    assert!(
        link.starts_with(&format!("{}/ui/#ticket=", d.url)),
        "{link}"
    );

    let seen = drive(
        "drive.mjs",
        &[
            &link,
            &run,
            artifacts().to_str().unwrap(),
            release.to_str().unwrap(),
        ],
    );
    eprintln!(
        "screenshots: {}",
        artifacts().join("dashboard-*.png").display()
    );

    assert_eq!(seen["ticket_left_url"], true, "{seen}");
    assert_eq!(seen["nodes"], 6, "{seen}");
    // build->test, test->review, lint->review, review->ship.
    assert_eq!(seen["edges"], 4, "{seen}");
    assert_eq!(
        seen["critical_nodes"],
        serde_json::json!(["build", "test", "review", "ship"]),
        "{seen}"
    );
    assert_eq!(seen["critical_edges"], 3, "{seen}");
    assert_eq!(seen["states_before"]["review"], "awaiting_approval");
    assert_eq!(seen["states_before"]["ship"], "pending");
    assert!(
        seen["build_log"]
            .as_str()
            .is_some_and(|l| l.contains("compiled 3 units")),
        "{seen}"
    );
    assert_eq!(seen["build_checkpoints"], 1, "{seen}");
    assert_eq!(seen["build_outputs"], "version 1.2.3", "{seen}");
    assert_eq!(seen["serve_log_before"], "waiting for release", "{seen}");
    assert_eq!(
        seen["serve_log_after"], "waiting for release\nreleased",
        "{seen}"
    );
    assert_eq!(seen["serve_state_before"], "running", "{seen}");
    for id in ["build", "lint", "test", "review", "ship", "serve"] {
        assert_eq!(seen["states_after"][id], "succeeded", "{id}: {seen}");
    }
    assert_eq!(seen["agents"], 1, "{seen}");
    assert_eq!(seen["inbox_empty"], 1, "{seen}");
    assert_eq!(seen["problems"], serde_json::json!([]), "{seen}");
    for shot in [
        "dashboard-awaiting-approval.png",
        "dashboard-run-succeeded.png",
        "dashboard-agents.png",
    ] {
        let len = std::fs::metadata(artifacts().join(shot)).map_or(0, |m| m.len());
        assert!(len > 10_000, "{shot}: {len} bytes");
    }

    // The click went through the same API as `orch approve`, and the run
    // records who approved.
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded");
    let log = http(
        &d,
        "GET",
        &format!("/v1/runs/{run}/transitions"),
        Some(&d.admin_token),
        None,
    )
    .json();
    assert!(
        log.as_array().is_some_and(
            |t| t.iter().any(|t| t["entity_id"] == format!("{run}/review")
                && t["actor"] == "user:dashboard"
                && t["from"] == "awaiting_approval")
        ),
        "no approval by the dashboard in {log}"
    );
}

/// Runs a driver script in tests/dashboard; returns what it printed as JSON.
fn drive(script: &str, args: &[&str]) -> Value {
    let out = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(driver_dir())
        .output()
        .expect("cannot run node: run scripts/test, which installs it");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

#[test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs Chromium, node and playwright-core: run scripts/test"
)]
fn the_inbox_answers_skips_rejects_with_feedback_and_approves_by_clicking() {
    check_tools();
    let mut h = Harness::new();
    let d = h.start_up(&["--slots", "3"]);
    let wf = format!(
        r#"
name: inbox
stages:
  - id: pick
    # No network: the question reaches the agent through its socket.
    sandbox: namespace
    steps:
      - artifacts: [choice.txt]
        commands:
          - argv: [sh, -c, 'if [ -z "$ORCH_ANSWER" ]; then exec "$0" ask "Which database?" --choice sqlite --choice postgres; fi; echo "$ORCH_ANSWER" > choice.txt', "{orch}"]
  - id: flaky
    steps:
      - commands:
          - argv: [sh, -c, 'echo broken >&2; exit 3']
  - id: draft
    steps:
      - name: write
        approve: true
        artifacts: [draft.md]
        commands:
          - argv: [sh, -c, 'if [ -n "$ORCH_FEEDBACK" ]; then {{ echo v2; cat "$ORCH_FEEDBACK_FILE"; }} > draft.md; else echo v1 > draft.md; fi']
"#,
        orch = orch_bin()
    );
    let file = h.write("inbox.yaml", &wf);
    let run = h.submit(&file);
    wait_for("three items in the inbox", LONG, || {
        let detail = h.show(&run);
        (stage(&detail, "pick")["state"] == "awaiting_input"
            && stage(&detail, "flaky")["state"] == "awaiting_decision"
            && stage(&detail, "draft")["state"] == "awaiting_approval")
            .then_some(())
    });
    // The CLI numbers the waiting step as the page must.
    let inbox = h.orch(&["inbox"]);
    assert!(
        inbox.stdout.contains("stage draft step 0 (write)"),
        "{inbox}"
    );
    let artifacts = artifacts();
    let seen = drive(
        "inbox.mjs",
        &[&d.url, &d.admin_token, &run, artifacts.to_str().unwrap()],
    );
    assert_eq!(seen["wrong_token_refused"], true, "{seen}");
    assert_eq!(seen["items"], 3, "{seen}");
    assert_eq!(seen["question_quoted"], 1, "{seen}");
    assert_eq!(seen["error_quoted"], 1, "{seen}");
    let approval = seen["approval_text"].as_str().unwrap_or_default();
    assert!(approval.contains("step 0 write"), "{seen}");
    let patch = seen["approval_patch"].as_str().unwrap_or_default();
    assert!(patch.contains("+v1"), "{seen}");
    assert_eq!(seen["badge"], "3", "{seen}");
    assert_eq!(seen["commit_changed"], true, "{seen}");
    assert_eq!(seen["badge_after"], true, "{seen}");
    assert_eq!(seen["problems"], serde_json::json!([]), "{seen}");

    // Each click went through the API and did what the CLI's command does.
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(stage(&detail, "pick")["state"], "succeeded", "{detail}");
    assert_eq!(stage(&detail, "flaky")["state"], "skipped", "{detail}");
    assert_eq!(stage(&detail, "draft")["state"], "succeeded", "{detail}");
    let q = &detail["questions"][0];
    assert_eq!(q["answer"], "postgres", "{q}");
    assert_eq!(q["answered_by"], "user:admin", "{q}");
    let show = |path: &str| {
        let out = Command::new("git")
            .args(["show", &format!("orch/run/{run}:{path}")])
            .current_dir(&h.project)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(show("choice.txt"), "postgres\n");
    let draft = show("draft.md");
    assert!(
        draft.starts_with("v2\n") && draft.contains("say v2, please"),
        "{draft}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs Chromium, node and playwright-core: run scripts/test"
)]
fn a_catalog_workflow_is_started_from_its_form_with_its_inputs() {
    check_tools();
    let mut h = Harness::new();
    let dir = h.project.join(".orchestrator/workflows");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("release.yaml"),
        r#"name: release
inputs:
  version: {description: The release to build}
  count: {type: number, default: 1}
  fast: {type: boolean, default: false}
  target: {type: choice, choices: [linux, mac], default: linux}
  files: {type: list, required: false}
stages:
  - id: build
    steps:
      - commands:
          - argv: [sh, -c, 'printf "%s|%s|%s|%s|%s\n" "$1" "$ORCH_INPUT_COUNT" "$ORCH_INPUT_FAST" "$ORCH_INPUT_TARGET" "$ORCH_INPUT_FILES"', _, '${{ inputs.version }}']
"#,
    )
    .unwrap();
    let project = h.project.display().to_string();
    let d = h.start_up(&["--slots", "1", "--project", &project]);
    let seen = drive(
        "workflows.mjs",
        &[&d.url, &d.admin_token, artifacts().to_str().unwrap()],
    );
    assert_eq!(seen["fields"], 5, "{seen}");
    let refusal = seen["refusal"].as_str().unwrap_or_default();
    assert!(
        refusal.contains("missing required input 'version'"),
        "{seen}"
    );
    assert_eq!(seen["problems"], serde_json::json!([]), "{seen}");
    let run = seen["run_id"]
        .as_str()
        .expect("the page moved to a run")
        .to_owned();
    // The refused start left no run behind: only the one the form started.
    let runs: Value = serde_json::from_str(&h.orch(&["ps", "-o", "json"]).stdout).unwrap();
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    assert_eq!(
        detail["inputs"]["version"], "2.0; $(touch /tmp/orch-pwned)",
        "{detail}"
    );
    assert_eq!(
        detail["inputs"]["files"],
        serde_json::json!(["a.txt", "b.txt"]),
        "{detail}"
    );
    let logs = h.orch(&["logs", &run, "build"]);
    assert!(
        logs.stdout
            .contains(r#"2.0; $(touch /tmp/orch-pwned)|3|true|mac|["a.txt","b.txt"]"#),
        "{logs}"
    );
    assert!(!Path::new("/tmp/orch-pwned").exists());
}

#[test]
fn the_page_needs_no_token_but_its_data_does_and_a_link_works_once() {
    let mut h = Harness::new();
    let d = h.start_up(&["--slots", "1"]);

    let page = http(&d, "GET", "/ui/", None, None);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/ui/app.js"), "{}", page.text());
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let js = http(&d, "GET", "/ui/app.js", None, None);
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/javascript")));
    assert_eq!(http(&d, "GET", "/ui", None, None).status, 308);

    // The data behind it needs a token.
    assert_eq!(http(&d, "GET", "/v1/runs", None, None).status, 401);
    assert_eq!(
        http(&d, "POST", "/v1/dashboard/links", None, Some(b"{}")).status,
        401
    );

    // A link's ticket trades once for a session that reads like an admin token.
    let link = http(
        &d,
        "POST",
        "/v1/dashboard/links",
        Some(&d.admin_token),
        Some(b"{}"),
    );
    assert_eq!(link.status, 200, "{}", link.text());
    let url = link.json()["url"].as_str().unwrap().to_owned();
    let ticket = url.split("#ticket=").nth(1).unwrap().to_owned();
    let body = serde_json::json!({ "ticket": ticket }).to_string();
    let session = http(
        &d,
        "POST",
        "/v1/dashboard/session",
        None,
        Some(body.as_bytes()),
    );
    assert_eq!(session.status, 200, "{}", session.text());
    let token = session.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(http(&d, "GET", "/v1/runs", Some(&token), None).status, 200);
    let again = http(
        &d,
        "POST",
        "/v1/dashboard/session",
        None,
        Some(body.as_bytes()),
    );
    assert_eq!(again.status, 401);
    assert!(again.error().contains("already used"), "{}", again.error());
    let forged = http(
        &d,
        "POST",
        "/v1/dashboard/session",
        None,
        Some(br#"{"ticket":"t1.99999999999999.00.00"}"#),
    );
    assert_eq!(forged.status, 401);
    assert!(
        forged.error().contains("not from this daemon"),
        "{}",
        forged.error()
    );
    // A made-up session is refused.
    assert_eq!(
        http(&d, "GET", "/v1/runs", Some("ui1.99999999999999.00"), None).status,
        401
    );
}

#[test]
fn a_log_is_read_in_pieces_from_an_offset() {
    let mut h = Harness::new();
    let d = h.start_up(&["--slots", "1"]);
    let file = h.write(
        "logs.yaml",
        "name: logs\nstages:\n  - id: talk\n    steps:\n      - commands:\n          - argv: [sh, -c, 'printf \"h\\303\\251llo\\n\"; echo oops >&2']\n          - argv: [sh, -c, 'echo second']\n",
    );
    let run = h.submit(&file);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    let job = detail["jobs"][0]["id"].as_i64().unwrap();
    let get = |q: &str| {
        let r = http(
            &d,
            "GET",
            &format!("/v1/runs/{run}/jobs/{job}/logs?{q}"),
            Some(&d.admin_token),
            None,
        );
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        r.json()
    };
    let all = get("cmd=0&stream=stdout");
    assert_eq!(all["text"], "héllo\n");
    assert_eq!(all["commands"], 2);
    assert_eq!(all["ended"], true);
    assert_eq!(all["next"], 7);
    assert_eq!(get("cmd=0&stream=stdout&offset=3")["text"], "llo\n");
    assert_eq!(get("cmd=0&stream=stderr")["text"], "oops\n");
    assert_eq!(get("cmd=1")["text"], "second\n");
    assert_eq!(get("cmd=0&offset=99")["text"], "");
    assert_eq!(get("cmd=5")["exists"], false);
    let bad = http(
        &d,
        "GET",
        &format!("/v1/runs/{run}/jobs/{job}/logs?stream=both"),
        Some(&d.admin_token),
        None,
    );
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("stdout or stderr"), "{}", bad.error());
    let missing = http(
        &d,
        "GET",
        &format!("/v1/runs/{run}/jobs/999999/logs"),
        Some(&d.admin_token),
        None,
    );
    assert_eq!(missing.status, 404);
}
