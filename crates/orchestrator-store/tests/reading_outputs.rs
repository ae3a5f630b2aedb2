//! Dependents read upstream outputs: `${{ stages.ID.outputs.KEY }}` and
//! `${{ stages.ID.result }}` render, when the store makes a job, from what
//! the stages it needs (directly or through others) reported; a key never
//! written renders empty; a matrix expansion is read by its bracketed id; a
//! field that cannot render from the outputs fails its stage alone. On
//! SQLite, and on PostgreSQL with `ORCH_TEST_STORE=postgres`.

mod common;

use common::outputs::{finish, map, next, wrote};
use common::*;
use orchestrator_core::outputs::Outputs;
use orchestrator_core::{RunId, StageState};
use orchestrator_store::SqlStore;

async fn state_of(s: &SqlStore, run: &RunId, stage: &str) -> StageState {
    let d = s.run_detail(run).await.unwrap();
    d.stages
        .into_iter()
        .find(|st| st.stage_id == stage)
        .unwrap()
        .state
}

/// `c` needs `b`, which needs `a`: `c` reads both, and a key nobody wrote.
const CHAIN: &str = r#"name: chain
stages:
  - id: a
    steps: [{commands: [{argv: [x]}]}]
  - id: b
    needs: [a]
    steps: [{commands: [{argv: [y]}]}]
  - id: c
    needs: [b]
    steps:
      - commands:
          - argv: [deploy, "${{ stages.b.outputs.version }}", "${{ stages.a.outputs.digest }}", "<${{ stages.b.outputs.never }}>", "${{ stages.b.result }}"]
            env: {EVIL: "${{ stages.b.outputs.evil }}"}
"#;

#[tokio::test]
async fn a_dependent_reads_what_its_needs_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    // The submission renders every field with no outputs yet, and takes it.
    s.submit_run(new_run(CHAIN)).await.unwrap();
    let j = next(&s, &a).await;
    finish(&s, &a, &j, wrote(map(&[("digest", "sha256:ab")]))).await;
    let j = next(&s, &a).await;
    let evil = "$(touch /tmp/pwned) \"'\n${{ stages.b.outputs.version }}";
    finish(
        &s,
        &a,
        &j,
        wrote(map(&[("version", "1.2.3"), ("evil", evil)])),
    )
    .await;
    let j = next(&s, &a).await;
    assert_eq!(j.spec.stage_id, "c");
    let cmd = &j.spec.commands[0];
    assert_eq!(
        cmd.argv,
        ["deploy", "1.2.3", "sha256:ab", "<>", "success"],
        "a transitive need is read, a key never written renders empty"
    );
    assert_eq!(cmd.env["EVIL"], evil, "a value is never rendered again");
}

const MATRIX: &str = r#"name: m
stages:
  - id: test
    matrix: {py: ["3.12", "3.13"]}
    steps: [{commands: [{argv: [t]}]}]
  - id: report
    needs: [test]
    steps:
      - commands:
          - argv: [r, "${{ stages['test[py=3.12]'].outputs.cov }}", "${{ stages['test[py=3.13]'].outputs.cov }}", "${{ stages['test[py=3.13]'].result }}"]
"#;

#[tokio::test]
async fn a_matrix_expansion_is_read_by_its_bracketed_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    s.submit_run(new_run(MATRIX)).await.unwrap();
    for _ in 0..2 {
        let j = next(&s, &a).await;
        let py = if j.spec.stage_id.contains("3.12") {
            "91"
        } else {
            "87"
        };
        finish(&s, &a, &j, wrote(map(&[("cov", py)]))).await;
    }
    let j = next(&s, &a).await;
    assert_eq!(j.spec.stage_id, "report");
    assert_eq!(j.spec.commands[0].argv, ["r", "91", "87", "success"]);
}

/// `b`'s first step does not read the output; its second does, through
/// `fromJSON`, which an empty or malformed value cannot pass.
const TYPED: &str = r#"name: t
stages:
  - id: a
    steps: [{commands: [{argv: [x]}]}]
  - id: b
    needs: [a]
    steps:
      - commands: [{argv: [ok]}]
      - commands: [{argv: [n, "${{ fromJSON(stages.a.outputs.count) }}"]}]
  - id: c
    needs: [b]
    steps: [{commands: [{argv: [z]}]}]
"#;

#[tokio::test]
async fn a_field_the_outputs_cannot_render_fails_its_stage_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    // Accepted: `fromJSON('')` fails with no outputs, but only the job can tell.
    let run = s.submit_run(new_run(TYPED)).await.unwrap().run_id;
    let other = s.submit_run(new_run(TYPED)).await.unwrap().run_id;
    let j = next(&s, &a).await;
    assert_eq!(j.spec.run_id, run);
    finish(&s, &a, &j, wrote(map(&[("count", "{not json")]))).await;
    let j = next(&s, &a).await;
    assert_eq!(j.spec.run_id, other);
    finish(&s, &a, &j, wrote(map(&[("count", "41")]))).await;
    // `b`'s first step renders; its completion makes the second's job,
    // which cannot render: the stage fails, the completion stands.
    let j = next(&s, &a).await;
    assert_eq!(
        (j.spec.run_id.clone(), j.spec.stage_id.as_str()),
        (run.clone(), "b")
    );
    finish(&s, &a, &j, wrote(Outputs::new())).await;
    assert_eq!(state_of(&s, &run, "b").await, StageState::Failed);
    assert_eq!(state_of(&s, &run, "c").await, StageState::Blocked);
    let log = s
        .transitions_since(0, Some(run.clone()), 1000)
        .await
        .unwrap();
    let why = log
        .iter()
        .find(|t| t.entity_id.ends_with("b") && t.to == "failed")
        .map(|t| t.reason.clone())
        .unwrap_or_default();
    assert!(
        why.contains("task failure")
            && why.contains("steps[1].commands[0].argv[1]")
            && why.contains("fromJSON(stages.a.outputs.count)"),
        "{why}"
    );
    // The other run goes on and renders.
    let j = next(&s, &a).await;
    assert_eq!(j.spec.run_id, other);
    finish(&s, &a, &j, wrote(Outputs::new())).await;
    let j = next(&s, &a).await;
    assert_eq!(j.spec.commands[0].argv, ["n", "41"]);
}
