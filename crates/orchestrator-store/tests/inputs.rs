//! A run's inputs in the store: bound at submission (a run whose values do
//! not bind is refused and nothing is written), recorded with the run and
//! shown in its detail, and read by the jobs its stages make. Runs on
//! SQLite, and on PostgreSQL with `ORCH_TEST_STORE=postgres`.

mod common;

use common::*;
use orchestrator_core::spec::Given;
use orchestrator_store::{NewRun, StoreError};
use serde_json::json;

const INPUTS: &str = r#"name: inp
inputs:
  version: {type: string}
  count: {type: number, default: 3}
  files: {type: list, required: false}
stages:
  - id: a
    steps: [{commands: [{argv: [echo, "v=${{ inputs.version }}"]}]}]
"#;

fn with_inputs(yaml: &str, given: Given) -> NewRun {
    NewRun {
        inputs: given,
        ..new_run(yaml)
    }
}

#[tokio::test]
async fn a_run_records_its_bound_inputs_and_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let mut given = Given::new();
    given
        .text("version", "2.0")
        .json("files", json!(["a", "b"]));
    let run = s
        .submit_run(with_inputs(INPUTS, given))
        .await
        .unwrap()
        .run_id;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.inputs.get("version"), Some(&json!("2.0")));
    // Not given: its default.
    assert_eq!(d.inputs.get("count"), Some(&json!(3)));
    assert_eq!(d.inputs.get("files"), Some(&json!(["a", "b"])));
    s.close().await;
}

#[tokio::test]
async fn inputs_that_do_not_bind_refuse_the_run_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let mut given = Given::new();
    given.text("count", "abc").text("verison", "1");
    match s.submit_run(with_inputs(INPUTS, given)).await {
        Err(StoreError::InvalidInputs(e)) => {
            let m = e.to_string();
            assert!(
                m.contains("input 'count': expected a number, got 'abc'"),
                "{m}"
            );
            assert!(m.contains("did you mean 'version'?"), "{m}");
            assert!(m.contains("missing required input 'version'"), "{m}");
        }
        other => panic!("expected invalid inputs, got {other:?}"),
    }
    assert!(s.list_runs(10).await.unwrap().is_empty());
    s.close().await;
}

#[tokio::test]
async fn a_workflow_without_inputs_records_none() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    assert!(s.run_detail(&run).await.unwrap().inputs.is_empty());
    s.close().await;
}

#[tokio::test]
async fn a_store_from_before_inputs_is_migrated_and_its_runs_have_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orch.db");
    let old = {
        let s = open_sqlite(&dir);
        let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
        s.close().await;
        run
    };
    // Back to schema 14, as an orch without inputs left it.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "ALTER TABLE runs DROP COLUMN inputs; ALTER TABLE stage_runs DROP COLUMN matrix; PRAGMA user_version = 14;",
    )
    .unwrap();
    drop(conn);
    let s = open_sqlite(&dir);
    assert!(s.run_detail(&old).await.unwrap().inputs.is_empty());
    let mut given = Given::new();
    given.text("version", "9");
    let run = s
        .submit_run(with_inputs(INPUTS, given))
        .await
        .unwrap()
        .run_id;
    assert_eq!(
        s.run_detail(&run).await.unwrap().inputs.get("version"),
        Some(&json!("9"))
    );
    s.close().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 15);
}

#[tokio::test]
async fn a_job_gets_its_commands_rendered_and_the_inputs_as_variables() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let wf = r#"name: sub
inputs:
  version: {type: string}
  dry-run: {type: boolean, default: false}
stages:
  - id: t
    matrix: {py: ["3.12"]}
    env: {WHO: "${{ run.workflow }}"}
    steps:
      - commands:
          - argv: [echo, "${{ inputs.version }}", "py${{ matrix.py }}", "${{ run.id }}"]
            cwd: "d${{ matrix.py }}"
            env: {V: "${{ inputs.version }}"}
"#;
    let mut given = Given::new();
    given.text("version", "$(rm -rf /); ${{ inputs.version }}");
    let run = s.submit_run(with_inputs(wf, given)).await.unwrap().run_id;
    let a = agent(&s, "a1", 1, &[]).await;
    let job = s.claim(&a, TTL).await.unwrap().unwrap();
    assert_eq!(job.spec.stage_id, "t[py=3.12]");
    let c = &job.spec.commands[0];
    assert_eq!(
        c.argv,
        [
            "echo",
            "$(rm -rf /); ${{ inputs.version }}",
            "py3.12",
            run.as_str()
        ]
    );
    assert_eq!(c.cwd.as_deref(), Some("d3.12"));
    assert_eq!(c.env["V"], "$(rm -rf /); ${{ inputs.version }}");
    assert_eq!(job.spec.env["WHO"], "sub");
    assert_eq!(
        job.spec.env["ORCH_INPUT_VERSION"],
        "$(rm -rf /); ${{ inputs.version }}"
    );
    assert_eq!(job.spec.env["ORCH_INPUT_DRY_RUN"], "false");
    s.close().await;
}

#[tokio::test]
async fn a_substitution_that_cannot_render_refuses_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let wf = "name: bad\ninputs: {n: {type: number, default: 1}}\nstages:\n  - id: a\n    steps: [{commands: [{argv: [echo, \"${{ inputs.n > 'x' }}\"]}]}]\n";
    match s.submit_run(new_run(wf)).await {
        Err(StoreError::Invalid(m)) => {
            assert!(
                m.contains("stage \"a\": steps[0].commands[0].argv[1]"),
                "{m}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(s.list_runs(10).await.unwrap().is_empty());
    s.close().await;
}
