//! A failed stage waits for a human: `orch retry`, `orch skip`, `orch abort`,
//! end to end with a real daemon, agent, git and child processes.

mod common;

use std::time::Duration;

use common::*;

/// The `to` states of a stage's transitions, in order.
fn path_of(d: &Daemon, run: &str, stage_id: &str) -> Vec<String> {
    transitions(d, run)
        .iter()
        .filter(|t| t["entity"] == "stage" && t["entity_id"] == format!("{run}/{stage_id}"))
        .map(|t| t["to"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_failed_stage_waits_across_a_daemon_restart_and_orch_retry_goes_on_from_where_it_failed() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    let agent = h.start_agent(&d, "worker", 2);
    let flag = h.root().join("fixed");
    let wf = format!(
        r#"
name: fix
stages:
  - id: build
    # Reads the flag the "fix" makes outside its worktree.
    sandbox: process
    steps:
      - artifacts: [out.txt]
        commands: [{{argv: [sh, -c, 'echo built > out.txt']}}]
      - commands: [{{argv: [sh, -c, 'test -f {flag} || {{ echo "the fix is missing" >&2; exit 3; }}']}}]
    validate:
      commands: [{{argv: [test, -f, out.txt]}}]
  - id: docs
    steps: [{{commands: [{{argv: ['true']}}]}}]
  - id: ship
    needs: [build]
    steps: [{{commands: [{{argv: [cat, out.txt]}}]}}]
"#,
        flag = flag.display()
    );
    let file = h.write("fix.yaml", &wf);
    let run = h.submit(&file);
    let detail = wait_stage(&h, &run, "build", "awaiting_decision");
    let detail = if stage(&detail, "docs")["state"] == "succeeded" {
        detail
    } else {
        wait_stage(&h, &run, "docs", "succeeded")
    };
    assert_eq!(stage(&detail, "ship")["state"], "pending", "{detail:#}");
    assert_eq!(detail["run"]["state"], "running");

    // The human sees what failed and what to type.
    let inbox = h.orch(&["inbox"]);
    inbox.expect_code(0);
    assert!(inbox.stdout.contains("failed · run"), "{inbox}");
    assert!(inbox.stdout.contains("exited with code 3"), "{inbox}");
    assert!(
        inbox.stdout.contains(&format!("$ orch retry {run} build")),
        "{inbox}"
    );
    let show = h.orch(&["show", &run]);
    assert!(
        show.stdout
            .contains(&format!("build failed at step 1: orch retry {run} build")),
        "{show}"
    );
    let explain = h.orch(&["explain", &run, "build"]);
    assert!(
        explain.stdout.contains("waits for a human's decision"),
        "{explain}"
    );
    // A stage that did not fail cannot be retried.
    let wrong = h.orch(&["retry", &run, "docs"]);
    wrong.expect_code(2);
    assert!(wrong.stderr.contains("not awaiting_decision"), "{wrong}");

    // The decision waits out a daemon killed outright.
    h.kill9(d.id);
    h.kill9(agent);
    let listen = format!("127.0.0.1:{}", d.port);
    let d = h.start_daemon_on(&listen, &[]);
    h.start_agent(&d, "worker", 2);
    assert_eq!(stage(&h.show(&run), "build")["state"], "awaiting_decision");

    std::fs::write(&flag, "").unwrap();
    h.orch(&[
        "retry",
        &run,
        "build",
        "--comment",
        "fixed it",
        "--by",
        "ann",
    ])
    .expect_code(0);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let build = jobs_of(&detail, "build");
    let steps: Vec<(u64, u64)> = build
        .iter()
        .map(|j| (j["step"].as_u64().unwrap(), j["attempt"].as_u64().unwrap()))
        .collect();
    // Step 0's work was kept: only the failed step ran again, then the validation.
    assert_eq!(steps, [(0, 1), (1, 1), (1, 2), (2, 2)], "{detail:#}");
    assert_eq!(
        path_of(&d, &run, "build"),
        [
            "pending",
            "queued",
            "running",
            "queued",
            "running",
            "awaiting_decision",
            "queued",
            "running",
            "validating",
            "succeeded"
        ]
    );
    let log = transitions(&d, &run);
    let retried = log
        .iter()
        .find(|t| t["from"] == "awaiting_decision")
        .unwrap();
    assert_eq!(retried["actor"], "user:admin (said: ann)");
    assert_eq!(
        retried["reason"],
        "retried: attempt 2 goes on at step 1: fixed it"
    );
}

#[test]
fn orch_skip_lets_dependents_go_on_and_orch_abort_ends_the_run_failed() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 2);
    let file = h.write(
        "two.yaml",
        r#"
name: two
stages:
  - id: lint
    steps: [{commands: [{argv: ['false']}]}]
  - id: report
    needs: [lint]
    steps: [{commands: [{argv: ['true']}]}]
  - id: test
    steps: [{commands: [{argv: [sh, -c, 'exit 4']}]}]
"#,
    );
    let project = h.project.to_str().unwrap().to_owned();
    let waiting = h.spawn(
        "run",
        &[
            "run",
            file.to_str().unwrap(),
            "--project",
            &project,
            "--wait",
        ],
    );
    let run = wait_for("the run to be listed", LONG, || {
        h.ps()
            .as_array()
            .unwrap()
            .first()
            .map(|r| r["id"].as_str().unwrap().to_owned())
    });
    wait_stage(&h, &run, "lint", "awaiting_decision");
    wait_stage(&h, &run, "test", "awaiting_decision");

    h.orch(&["skip", &run, "lint"]).expect_code(0);
    let detail = wait_stage(&h, &run, "report", "succeeded");
    assert_eq!(stage(&detail, "lint")["state"], "skipped");
    assert_eq!(detail["run"]["state"], "running", "test still waits");

    h.orch(&["abort", &run, "--comment", "giving up"])
        .expect_code(0);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "failed");
    assert_eq!(stage(&detail, "test")["state"], "failed");
    // `orch run --wait` told the human each time and ends with the run.
    let status = h.wait_exit(waiting, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1));
    let out = h.log(waiting);
    assert!(out.contains("stage lint failed"), "{out}");
    assert!(out.contains("it waits for your decision"), "{out}");
    assert!(out.contains(&format!("orch skip {run} test")), "{out}");
    // Nothing is left to decide.
    let again = h.orch(&["abort", &run]);
    again.expect_code(2);
    assert!(again.stderr.contains("has already ended failed"), "{again}");
}
