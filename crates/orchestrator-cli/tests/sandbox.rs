//! Which sandbox a step runs in, end to end: the agent's default, a stage's
//! own choice, the agent's floor, and what `orch show` says about each.

mod common;

use common::*;

#[test]
fn steps_run_in_the_agents_default_namespace_unless_a_stage_says_process_and_show_tells_which() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 2);
    let wf = h.write(
        "isolation.yaml",
        r#"
name: isolation
on_failure: fail
stages:
  - id: boxed
    steps:
      - commands:
          # It sees only its own few processes, and the host's /etc is
          # read-only.
          - argv: [sh, -c, 'test $(ls -d /proc/[0-9]* | wc -l) -lt 10 && ! touch /etc/orch-escape && echo boxed > where.txt']
        artifacts: [where.txt]
  - id: open
    sandbox: process
    steps:
      - commands:
          - argv: ['true']
"#,
    );
    let run = h.submit(&wf);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let escaped = std::path::Path::new("/etc/orch-escape").exists();
    let _ = std::fs::remove_file("/etc/orch-escape");
    assert!(!escaped, "a step wrote the host's /etc");
    assert_eq!(jobs_of(&detail, "boxed")[0]["sandbox"], "namespace");
    assert_eq!(jobs_of(&detail, "open")[0]["sandbox"], "process");

    let show = h.orch(&["show", &run]);
    show.expect_code(0);
    let line = |id: &str| {
        show.stdout
            .lines()
            .find(|l| l.get(1..).is_some_and(|l| l.starts_with(id)))
            .unwrap_or_else(|| panic!("no line for {id} in {show}"))
            .to_owned()
    };
    assert!(line("boxed").contains(" namespace "), "{show}");
    assert!(line("open").contains(" process! "), "{show}");
    assert!(
        show.stdout
            .contains("ran without isolation: sandbox: process"),
        "{show}"
    );
}

#[test]
fn an_agent_with_a_floor_refuses_a_weaker_stage_with_an_error_naming_both() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.spawn(
        "agent-strict",
        &[
            "agent",
            "--server",
            &d.url,
            "--name",
            "strict",
            "--min-sandbox",
            "namespace",
        ],
    );
    let wf = h.write(
        "weak.yaml",
        r#"
name: weak
on_failure: fail
stages:
  - id: open
    sandbox: process
    steps:
      - commands:
          - argv: ['true']
"#,
    );
    let run = h.submit(&wf);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "failed", "{detail:#}");
    let job = jobs_of(&detail, "open")[0];
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("weaker than namespace (orch agent --min-sandbox)")
            && error.contains("sandbox: process"),
        "{error}"
    );
    // Refused before anything ran: no command, not retried.
    assert_eq!(job["exit_codes"], serde_json::json!([]), "{job:#}");
    assert_eq!(job["error_class"], "task");
}

#[test]
fn contradictory_or_unknown_agent_sandbox_flags_are_refused_before_it_starts() {
    let h = Harness::new();
    let weaker = h.orch(&[
        "agent",
        "--server",
        "http://127.0.0.1:9",
        "--agent-token",
        "t",
        "--sandbox",
        "process",
        "--min-sandbox",
        "namespace",
    ]);
    assert_eq!(weaker.code, 2, "{weaker}");
    assert!(
        weaker
            .stderr
            .contains("--sandbox process is weaker than --min-sandbox namespace"),
        "{weaker}"
    );
    let unknown = h.orch(&[
        "agent",
        "--server",
        "http://127.0.0.1:9",
        "--agent-token",
        "t",
        "--sandbox",
        "docker",
    ]);
    assert_eq!(unknown.code, 2, "{unknown}");
    assert!(
        unknown.stderr.contains("unknown sandbox \"docker\"")
            && unknown
                .stderr
                .contains("namespace, bubblewrap, container, vm"),
        "{unknown}"
    );
}

#[test]
fn the_bench_runs_w1_in_a_sandbox() {
    let h = Harness::new();
    let out = h.orch(&[
        "bench",
        "--workloads",
        "w1",
        "--w1",
        "20",
        "--repeat",
        "1",
        "--sandbox",
        "namespace",
        "-o",
        "json",
    ]);
    out.expect_code(0);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    let w1 = rows.iter().find(|r| r["workload"] == "W1 independent");
    assert!(
        w1.is_some_and(|r| r["orch_tasks_per_s"].as_f64().unwrap() > 0.0),
        "{out}"
    );

    // What each backend adds to a step is the bench crate's, not orch's.
    for moved in ["sandbox", "sched", "gateway"] {
        let out = h.orch(&["bench", "--workloads", &format!("w1,{moved}")]);
        out.expect_code(2);
        assert!(
            out.stderr.contains(&format!(
                "cargo bench -p orchestrator-bench --bench {moved}"
            )),
            "{out}"
        );
        assert!(out.stdout.is_empty(), "{out}");
    }
}
