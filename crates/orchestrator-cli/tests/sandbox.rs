//! Which sandbox a step runs in, end to end: the agent's default, a stage's
//! own choice, the agent's floor, and what `orch show` says about each.

mod common;

use common::*;

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
