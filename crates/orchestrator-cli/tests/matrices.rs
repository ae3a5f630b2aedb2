//! Matrix stages from end to end, through the real daemon, agent and CLI:
//! each combination is a stage of its own in `orch show`, `orch ps` and
//! the logs, its values reach its commands, a stage that needs the matrix
//! waits for every combination, and a combination's bracketed id works in
//! `orch logs` and `orch retry`.

mod common;

use common::*;

#[test]
fn a_matrix_runs_each_combination_and_its_dependent_after_all_of_them() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "w", 2);
    let file = h.example("matrix.yaml");
    let run = h.submit(&file);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let ids: Vec<&str> = detail["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "test[py=3.11,os=linux]",
            "test[py=3.12,os=linux]",
            "test[py=3.12,os=mac]",
            "report"
        ]
    );
    assert_eq!(
        stage(&detail, "report")["needs"].as_array().unwrap().len(),
        3
    );
    // The dependent started after every combination ended.
    let report = jobs_of(&detail, "report")[0]["started_at_ms"]
        .as_i64()
        .unwrap();
    for id in &ids[..3] {
        let ended = stage(&detail, id)["ended_at_ms"].as_i64().unwrap();
        assert!(
            ended <= report,
            "{id} ended after report started: {detail:#}"
        );
    }
    for (id, (py, os)) in
        ids[..3]
            .iter()
            .zip([("3.11", "linux"), ("3.12", "linux"), ("3.12", "mac")])
    {
        let out = h.orch(&["logs", &run, id]);
        out.expect_code(0);
        assert!(
            out.stdout.contains(&format!("testing py{py} on {os}")),
            "{id}: {out}"
        );
        assert_eq!(out.stdout.matches("testing py").count(), 1, "{id}: {out}");
    }
    let show = h.orch(&["show", &run]);
    assert!(show.stdout.contains("test[py=3.12,os=mac]"), "{show}");
}

#[test]
fn a_failed_combination_is_retried_by_its_bracketed_id() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "w", 2);
    let flag = h.root().join("fixed");
    let wf = format!(
        r#"
name: mx
on_failure: ask
stages:
  - id: test
    sandbox: process
    matrix: {{py: ["3.12", "3.13"]}}
    steps:
      - commands:
          - argv: [sh, -c, 'test "$1" != 3.13 || test -f {flag}', sh, "${{{{ matrix.py }}}}"]
  - id: after
    needs: [test]
    steps: [{{commands: [{{argv: ['true']}}]}}]
"#,
        flag = flag.display()
    );
    let file = h.write("mx.yaml", &wf);
    let run = h.submit(&file);
    wait_stage(&h, &run, "test[py=3.13]", "awaiting_decision");
    std::fs::write(&flag, "").unwrap();
    h.orch(&["retry", &run, "test[py=3.13]"]).expect_code(0);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    assert_eq!(jobs_of(&detail, "test[py=3.13]").len(), 2, "{detail:#}");
    assert_eq!(jobs_of(&detail, "test[py=3.12]").len(), 1, "{detail:#}");
}
