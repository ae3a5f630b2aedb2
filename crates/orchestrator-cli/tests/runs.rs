//! Runs from end to end, as a user drives them: `orch run`, `show`, `ps`,
//! `logs`, the event stream, `orch up` and `orch demo`, each against the real
//! binary running as separate daemon and agent processes.

mod common;

use orchestrator_core::RunId;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

#[test]
fn a_diamond_workflow_runs_end_to_end_through_separate_daemon_and_agent() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 2);
    let file = h.example("diamond.yaml");
    let project = h.project.to_str().unwrap().to_owned();

    let out = h.orch(&[
        "run",
        file.to_str().unwrap(),
        "--project",
        &project,
        "--wait",
    ]);
    out.expect_code(0);
    let run = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .map(|id| id.trim().to_owned())
        .unwrap_or_else(|| panic!("`orch run --wait` printed no run id:\n{out}"));

    let detail = h.show(&run);
    assert_eq!(detail["run"]["id"], run.as_str());
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    assert_eq!(detail["run"]["project_dir"], project.as_str());
    assert_eq!(detail["run"]["stages_total"], 4);
    assert_eq!(detail["run"]["stages_succeeded"], 4);
    let stages: BTreeMap<&str, &str> = detail["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage_id"].as_str().unwrap(),
                s["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        BTreeMap::from([
            ("a", "succeeded"),
            ("b", "succeeded"),
            ("c", "succeeded"),
            ("d", "succeeded")
        ])
    );
    // The example's comment promises this path: c is estimated longer than b.
    assert_eq!(
        detail["plan"]["critical_path"],
        serde_json::json!(["a", "c", "d"])
    );

    // Every job left a bundle in the project: a manifest and its commands' logs.
    let expected_output = BTreeMap::from([
        ("a", "a: start"),
        ("b", "b: left branch"),
        ("c", "c: right branch"),
        ("d", "d: both branches done"),
    ]);
    let jobs = detail["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 4, "one job per single-step stage: {detail:#}");
    for job in jobs {
        let stage_id = job["stage_id"].as_str().unwrap();
        assert_eq!(job["state"], "succeeded", "{job:#}");
        let bundle = job["bundle"]
            .as_str()
            .expect("a finished job names its bundle");
        assert!(
            bundle.starts_with(&format!(".orchestrator/runs/{run}/{stage_id}/")),
            "bundle {bundle} is not under the run's and stage's directory"
        );
        let dir = h.project.join(bundle);
        let manifest: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("manifest.json"))
                .unwrap_or_else(|e| panic!("no manifest in {}: {e}", dir.display())),
        )
        .expect("manifest.json is JSON");
        assert_eq!(manifest["success"], true, "{manifest:#}");
        assert_eq!(manifest["run_id"], run.as_str());
        assert_eq!(manifest["stage_id"], stage_id);
        assert_eq!(manifest["job_id"], job["id"]);
        assert!(
            !manifest["commands"].as_array().unwrap().is_empty(),
            "{manifest:#}"
        );
        let stdout = std::fs::read_to_string(dir.join("cmd-000.stdout.log")).unwrap();
        assert_eq!(stdout.trim(), expected_output[stage_id]);
    }

    let listed = h.ps();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run.as_str())
        .unwrap_or_else(|| panic!("`orch ps` does not list {run}: {listed:#}"));
    assert_eq!(entry["state"], "succeeded");
    assert_eq!(entry["workflow"], "diamond");

    let logs = h.orch(&["logs", &run]);
    logs.expect_code(0);
    for text in expected_output.values() {
        assert!(
            logs.stdout.contains(text),
            "`orch logs` lacks {text:?}:\n{logs}"
        );
    }
    let only_d = h.orch(&["logs", &run, "d"]);
    only_d.expect_code(0);
    assert!(only_d.stdout.contains("d: both branches done"), "{only_d}");
    assert!(!only_d.stdout.contains("a: start"), "{only_d}");
}

#[test]
fn a_failing_stage_blocks_its_dependents_and_fails_the_run_while_independent_stages_finish() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 2);
    let file = h.example("failing.yaml");
    let project = h.project.to_str().unwrap().to_owned();

    let out = h.orch(&[
        "run",
        file.to_str().unwrap(),
        "--project",
        &project,
        "--wait",
        // Unattended: fail at once instead of waiting for a human's decision.
        "--on-failure",
        "fail",
        "-o",
        "json",
    ]);
    out.expect_code(1);
    let detail = out.json();
    let run = detail["run"]["id"].as_str().unwrap().to_owned();
    assert_eq!(detail["run"]["state"], "failed");

    // What `orch show` says afterwards is the same story.
    let detail = h.show(&run);
    assert_eq!(detail["run"]["state"], "failed");
    assert_eq!(stage(&detail, "check")["state"], "failed");
    assert_eq!(stage(&detail, "publish")["state"], "blocked");
    assert_eq!(stage(&detail, "docs")["state"], "succeeded");
    assert!(
        jobs_of(&detail, "publish").is_empty(),
        "a blocked stage never runs: {detail:#}"
    );

    let check = jobs_of(&detail, "check");
    assert_eq!(check.len(), 1, "a task failure is not retried: {detail:#}");
    let job = check[0];
    assert_eq!(job["state"], "failed");
    assert_eq!(job["exit_codes"], serde_json::json!([0, 1]));
    assert_eq!(job["error_class"], "task");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("exited with code 1"),
        "{job:#}"
    );
    // The error a human reads says where it happened and how the machine was.
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains(", stage check, step 0, round 1, attempt 1, agent "),
        "{error}"
    );
    assert!(
        error.contains("load ") && error.contains("memory "),
        "{error}"
    );
    let bundle = h.project.join(job["bundle"].as_str().unwrap());
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["success"], false);
    assert_eq!(manifest["error_class"], "task");
    assert_eq!(
        manifest["commands"].as_array().unwrap().len(),
        2,
        "the command after the failing one never ran: {manifest:#}"
    );
    let stderr = std::fs::read_to_string(bundle.join("cmd-001.stderr.log")).unwrap();
    assert!(stderr.contains("release notes are missing"), "{stderr}");

    // The text view names the failure for a human.
    let text = h.orch(&["show", &run]);
    text.expect_code(0);
    assert!(text.stdout.contains("failures:"), "{text}");
    assert!(text.stdout.contains("exited with code 1"), "{text}");
}

#[test]
fn events_stream_every_transition_of_a_run_in_order() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 2);
    let file = h.example("diamond.yaml");
    let project = h.project.to_str().unwrap().to_owned();
    let out = h.orch(&[
        "run",
        file.to_str().unwrap(),
        "--project",
        &project,
        "--wait",
        "-o",
        "json",
    ]);
    out.expect_code(0);
    let run = out.json()["run"]["id"].as_str().unwrap().to_owned();

    let is_run_end =
        |t: &Value| t["entity"] == "run" && t["to"] != "running" && t["from"] == "running";
    let events = events(
        &d,
        EventFilter::run(&RunId::from(&run), 0),
        LONG,
        is_run_end,
    );
    assert!(
        events.last().is_some_and(is_run_end),
        "the stream did not reach the run's end: {events:#?}"
    );

    let seqs: Vec<i64> = events.iter().map(|t| t["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs are not strictly increasing: {seqs:?}"
    );
    assert!(
        events.iter().all(|t| t["run_id"] == run.as_str()),
        "a transition of another run leaked into ?run={run}"
    );
    for t in &events {
        for field in ["entity", "entity_id", "to", "reason", "actor", "at_ms"] {
            assert!(!t[field].is_null(), "transition lacks {field}: {t}");
        }
    }

    let path = |entity: &str, id: &str| -> Vec<(Option<String>, String)> {
        events
            .iter()
            .filter(|t| t["entity"] == entity && t["entity_id"] == id)
            .map(|t| {
                (
                    t["from"].as_str().map(str::to_owned),
                    t["to"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let run_path = path("run", &run);
    assert_eq!(
        run_path.first(),
        Some(&(None, "running".to_owned())),
        "{run_path:?}"
    );
    assert_eq!(
        run_path.last(),
        Some(&(Some("running".to_owned()), "succeeded".to_owned())),
        "{run_path:?}"
    );
    let some = |s: &str| Some(s.to_owned());
    for s in ["a", "b", "c", "d"] {
        assert_eq!(
            path("stage", &format!("{run}/{s}")),
            [
                (None, "pending".to_owned()),
                (some("pending"), "queued".to_owned()),
                (some("queued"), "running".to_owned()),
                (some("running"), "succeeded".to_owned()),
            ],
            "stage {s}"
        );
    }
    // d starts only after both of its needs succeeded.
    let at = |id: &str, to: &str| {
        events
            .iter()
            .find(|t| t["entity_id"] == format!("{run}/{id}") && t["to"] == to)
            .and_then(|t| t["seq"].as_i64())
            .unwrap()
    };
    assert!(at("b", "succeeded") < at("d", "queued"));
    assert!(at("c", "succeeded") < at("d", "queued"));

    // Resuming with `since` gives what follows, and nothing before.
    let middle = seqs[seqs.len() / 2];
    let rest = common::events(
        &d,
        EventFilter::run(&RunId::from(&run), middle),
        LONG,
        is_run_end,
    );
    let rest_seqs: Vec<i64> = rest.iter().map(|t| t["seq"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = seqs.iter().copied().filter(|&s| s > middle).collect();
    assert_eq!(rest_seqs, expected);

    // `entities=` narrows the stream to the kinds asked for, in the same order.
    let narrowed = common::events(
        &d,
        EventFilter {
            entities: Some("run,stage".into()),
            ..EventFilter::run(&RunId::from(&run), 0)
        },
        LONG,
        is_run_end,
    );
    let expected: Vec<&Value> = events
        .iter()
        .filter(|t| t["entity"] == "run" || t["entity"] == "stage")
        .collect();
    assert_eq!(narrowed.iter().collect::<Vec<_>>(), expected);
}

#[test]
fn orch_up_runs_a_workflow_and_stops_cleanly_on_sigterm() {
    let mut h = Harness::new();
    let up = h.start_up(&["--slots", "2"]);
    let file = h.example("hello.yaml");
    let project = h.project.to_str().unwrap().to_owned();
    let out = h.orch(&[
        "run",
        file.to_str().unwrap(),
        "--project",
        &project,
        "--wait",
        "-o",
        "json",
    ]);
    out.expect_code(0);
    let run = out.json()["run"]["id"].as_str().unwrap().to_owned();

    h.signal(up.id, Signal::SIGTERM);
    let status = h.wait_exit(up.id, Duration::from_secs(10));
    assert!(
        status.success(),
        "`orch up` exited with {status}:\n{}",
        h.log(up.id)
    );
    assert!(
        !h.data.join("endpoint").exists(),
        "a stopped `orch up` leaves no endpoint behind"
    );
    let down = h.orch(&["ps"]);
    assert_eq!(down.code, 3, "with no daemon `orch ps` fails: {down}");
    assert!(
        down.stderr.contains("orch up"),
        "it says how to start one: {down}"
    );

    // The store outlives the process.
    let again = h.start_up(&["--slots", "1"]);
    let listed = h.ps();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run.as_str())
        .unwrap_or_else(|| panic!("the run is gone after a restart: {listed:#}"));
    assert_eq!(entry["state"], "succeeded");
    h.signal(again.id, Signal::SIGTERM);
    let status = h.wait_exit(again.id, Duration::from_secs(10));
    assert!(status.success(), "{}", h.log(again.id));
}

#[test]
fn orch_demo_runs_the_demo_workflow_to_success_in_a_project_of_its_own() {
    let h = Harness::new();
    let cwd = h.root().join("somewhere");
    std::fs::create_dir_all(cwd.join("examples")).unwrap();
    std::fs::copy(examples().join("demo.yaml"), cwd.join("examples/demo.yaml")).unwrap();
    let demo_dir = h.root().join("demo-data");

    let out = h.orch_in(
        &cwd,
        false,
        &[
            "demo",
            "examples/demo.yaml",
            "--demo-dir",
            demo_dir.to_str().unwrap(),
        ],
    );
    out.expect_code(0);
    assert!(out.stdout.contains("succeeded"), "{out}");
    let run = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .map(|id| id.trim().to_owned())
        .unwrap_or_else(|| panic!("the demo printed no run:\n{out}"));
    // The demo works in a repository of its own, never where it was started.
    assert!(!cwd.join(".orchestrator").exists(), "{out}");
    let project = demo_dir.join("project");
    assert!(
        project.join(".orchestrator/runs").join(&run).is_dir(),
        "{out}"
    );
    let branch = format!("orch/run/{run}");
    // Nine steps, nine checkpoint commits on the run's branch, over the first commit.
    let log = git(&project, &["log", "--format=%s", &branch]);
    assert_eq!(log.lines().count(), 10, "{log}");
    assert!(
        log.lines()
            .all(|l| l.contains("checkpoint") || l == "first commit"),
        "{log}"
    );
    let report = git(&project, &["show", &format!("{branch}:out/report.txt")]);
    assert!(report.starts_with("report: done at"), "{report}");
    assert!(
        out.stdout
            .contains("orch: report step 0 (summary) checkpoint"),
        "{out}"
    );
    assert!(
        !demo_dir.join("endpoint").exists(),
        "the demo stopped its daemon when it ended"
    );
    let stages: BTreeSet<String> = std::fs::read_dir(project.join(".orchestrator/runs").join(&run))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        stages,
        ["build", "fetch", "lint", "package", "report", "unit-tests"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}

#[test]
fn a_daemon_stops_cleanly_on_sigterm_and_removes_its_endpoint() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "idle", 1);
    let out = h.orch(&["agents", "-o", "json"]);
    out.expect_code(0);
    h.signal(d.id, Signal::SIGTERM);
    let status = h.wait_exit(d.id, Duration::from_secs(10));
    assert!(
        status.success(),
        "`orch daemon` exited with {status}:\n{}",
        h.log(d.id)
    );
    assert!(!h.data.join("endpoint").exists());
}

#[test]
fn logs_follow_prints_output_as_it_is_written_and_ends_with_the_run() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    // The step prints, then waits for the test's go-ahead, then prints again.
    let file = h.write(
        "follow.yaml",
        "name: follow\nstages:\n  - id: talk\n    steps:\n      - commands:\n          - argv: [sh, -c, 'echo first; while [ ! -e go ]; do sleep 0.05; done; echo second']\n",
    );
    let run = h.submit(&file);
    let (h, project, worktree) = (&h, h.project.clone(), h.worktree(&run));
    std::thread::scope(|s| {
        let follower = s.spawn(|| h.orch(&["logs", &run, "talk", "-f"]));
        // Let the follower see the first line before the second exists.
        wait_for("the first line in the bundle", LONG, || {
            let runs = project.join(".orchestrator/runs").join(&run).join("talk");
            let dir = std::fs::read_dir(runs).ok()?.next()?.ok()?.path();
            let out = std::fs::read_to_string(dir.join("cmd-000.stdout.log")).ok()?;
            out.contains("first").then_some(())
        });
        std::fs::write(worktree.join("go"), "").unwrap();
        let out = follower.join().unwrap();
        out.expect_code(0);
        assert_eq!(out.stdout.matches("first").count(), 1, "{out}");
        assert_eq!(out.stdout.matches("second").count(), 1, "{out}");
        assert!(
            out.stdout.find("first") < out.stdout.find("second"),
            "{out}"
        );
    });
}

#[test]
fn a_paused_run_stops_at_the_next_checkpoint_and_resumes_from_it() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let file = h.write(
        "pausable.yaml",
        r#"
name: pausable
stages:
  - id: work
    steps:
      - commands:
          - argv: [sh, -c, 'touch started; while [ ! -e go ]; do sleep 0.05; done']
      - commands:
          - argv: [sh, -c, 'echo second > second']
"#,
    );
    let run = h.submit(&file);
    // The run's commands work in its worktree.
    let project = h.worktree(&run);
    wait_for("the first step to start", LONG, || {
        project.join("started").exists().then_some(())
    });

    let out = h.orch(&["pause", &run]);
    out.expect_code(0);
    assert!(out.stdout.contains("paused"), "{out}");
    // The running step is not interrupted: it ends, and the stage holds.
    std::fs::write(project.join("go"), "").unwrap();
    wait_for("the stage to hold at its checkpoint", LONG, || {
        (stage(&h.show(&run), "work")["state"] == "paused").then_some(())
    });
    let detail = h.show(&run);
    assert_eq!(detail["run"]["state"], "paused", "{detail:#}");
    assert!(!project.join("second").exists(), "step 1 ran while paused");

    let out = h.orch(&["resume", &run]);
    out.expect_code(0);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    assert!(
        project.join("second").exists(),
        "step 1 ran after the resume"
    );
    let succeeded: Vec<u64> = jobs_of(&detail, "work")
        .iter()
        .filter(|j| j["state"] == "succeeded")
        .map(|j| j["step"].as_u64().unwrap())
        .collect();
    assert_eq!(succeeded, [0, 1], "each step ran once: {detail:#}");

    let again = h.orch(&["pause", &run]);
    assert_eq!(again.code, 2, "{again}");
    assert!(again.stderr.contains("already ended"), "{again}");
}
