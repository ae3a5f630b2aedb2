//! A stage's `if:` in the store: a `failure()` stage runs after a need
//! failed and is bypassed when it succeeded, `always()` runs either way, a
//! false condition bypasses the stage and its dependents without failing
//! the run, and a condition that cannot be evaluated fails its stage. Runs
//! on SQLite, and on PostgreSQL with `ORCH_TEST_STORE=postgres`.

mod common;

use common::*;
use orchestrator_core::api::{ClaimedJob, CompleteRequest};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::spec::Given;
use orchestrator_core::{AgentId, Entity, RunId, RunState, StageState};
use orchestrator_store::{NewRun, SqlStore};

use StageState as S;

/// `test` fails at once when told to (`on_failure: fail`); `notify` runs
/// on a failure, `report` always, `deploy` only on success and when asked.
const WF: &str = r#"name: cond
inputs:
  deploy: {type: boolean, default: false}
stages:
  - id: test
    on_failure: fail
    steps: [{commands: [{argv: [test]}]}]
  - id: notify
    needs: [test]
    if: failure()
    steps: [{commands: [{argv: [notify]}]}]
  - id: report
    needs: [test]
    if: ${{ always() && stages.test.result != 'cancelled' }}
    steps: [{commands: [{argv: [report]}]}]
  - id: deploy
    needs: [test]
    if: inputs.deploy == true
    steps: [{commands: [{argv: [deploy]}]}]
  - id: announce
    needs: [deploy]
    steps: [{commands: [{argv: [announce]}]}]
"#;

fn run_with(yaml: &str, deploy: Option<bool>) -> NewRun {
    let mut given = Given::new();
    if let Some(d) = deploy {
        given.text("deploy", if d { "true" } else { "false" });
    }
    NewRun {
        inputs: given,
        ..new_run(yaml)
    }
}

async fn finish(s: &SqlStore, a: &AgentId, job: &ClaimedJob, success: bool) {
    s.complete(
        job.job_id,
        CompleteRequest {
            agent_id: a.clone(),
            lease_token: job.lease_token.clone(),
            outcome: outcome(success, (!success).then_some(ErrorClass::Task)),
            claim_next: false,
            claim_key: None,
        },
        1_000_000,
    )
    .await
    .unwrap();
}

/// Claims and completes jobs until none is left; the stages that ran, in order.
async fn drain(s: &SqlStore, a: &AgentId, fail: &[&str]) -> Vec<String> {
    let mut ran = Vec::new();
    while let Some(j) = s.claim(a, 1_000_000).await.unwrap() {
        let id = j.spec.stage_id.clone();
        finish(s, a, &j, !fail.contains(&id.as_str())).await;
        ran.push(id);
    }
    ran
}

/// The reason of the transition that took `stage` to `to`.
async fn reason_to(s: &SqlStore, run: &RunId, stage: &str, to: &str) -> String {
    let log = s
        .transitions_since(0, Some(run.clone()), 10_000)
        .await
        .unwrap();
    log.iter()
        .rev()
        .find(|t| {
            t.entity == Entity::Stage && t.entity_id == format!("{run}/{stage}") && t.to == to
        })
        .map(|t| t.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_failure_stage_runs_after_a_failed_need_and_the_others_end_as_their_conditions_say() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a", 1, &[]).await;
    let run = s.submit_run(run_with(WF, Some(true))).await.unwrap().run_id;
    let mut ran = drain(&s, &a, &["test"]).await;
    ran.sort();
    assert_eq!(ran, ["notify", "report", "test"]);
    let d = s.run_detail(&run).await.unwrap();
    let st = stage_states(&d);
    assert_eq!(st["test"], S::Failed);
    assert_eq!(st["notify"], S::Succeeded);
    assert_eq!(st["report"], S::Succeeded);
    // No status function: `success() && ...`, so a failed need blocks it.
    assert_eq!(st["deploy"], S::Blocked);
    assert_eq!(st["announce"], S::Blocked);
    assert_eq!(d.run.state, RunState::Failed);
    assert!(reason_to(&s, &run, "notify", "queued")
        .await
        .contains("failure()"));
    assert_log_replays_to_state(&s, &run).await;
    s.close().await;
}

#[tokio::test]
async fn a_failure_stage_is_bypassed_when_its_needs_succeed_and_the_run_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a", 1, &[]).await;
    let run = s.submit_run(run_with(WF, Some(true))).await.unwrap().run_id;
    let mut ran = drain(&s, &a, &[]).await;
    ran.sort();
    assert_eq!(ran, ["announce", "deploy", "report", "test"]);
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(stage_states(&d)["notify"], S::Bypassed);
    assert_eq!(d.run.state, RunState::Succeeded);
    let why = reason_to(&s, &run, "notify", "bypassed").await;
    assert!(
        why.contains("bypassed") && why.contains("failure()"),
        "{why}"
    );
    assert_log_replays_to_state(&s, &run).await;
    s.close().await;
}

#[tokio::test]
async fn a_false_condition_bypasses_the_stage_and_its_dependents_and_the_run_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a", 1, &[]).await;
    let run = s.submit_run(run_with(WF, None)).await.unwrap().run_id;
    let mut ran = drain(&s, &a, &[]).await;
    ran.sort();
    assert_eq!(ran, ["report", "test"]);
    let d = s.run_detail(&run).await.unwrap();
    let st = stage_states(&d);
    assert_eq!(st["deploy"], S::Bypassed);
    assert_eq!(st["announce"], S::Bypassed);
    assert_eq!(d.run.state, RunState::Succeeded);
    let why = reason_to(&s, &run, "deploy", "bypassed").await;
    assert!(
        why.contains("inputs.deploy == true") && why.contains("false"),
        "{why}"
    );
    let why = reason_to(&s, &run, "announce", "bypassed").await;
    assert!(why.contains("deploy, which was bypassed"), "{why}");
    assert_log_replays_to_state(&s, &run).await;
    s.close().await;
}

#[tokio::test]
async fn always_runs_after_a_bypassed_need_and_success_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a", 1, &[]).await;
    let yaml = r#"name: by
stages:
  - id: gate
    if: "false"
    steps: [{commands: [{argv: [x]}]}]
  - id: after
    needs: [gate]
    if: always()
    steps: [{commands: [{argv: [x]}]}]
  - id: only
    needs: [gate]
    if: success()
    steps: [{commands: [{argv: [x]}]}]
"#;
    let run = s.submit_run(new_run(yaml)).await.unwrap().run_id;
    assert_eq!(drain(&s, &a, &[]).await, ["after"]);
    let st = stage_states(&s.run_detail(&run).await.unwrap());
    assert_eq!(st["gate"], S::Bypassed);
    assert_eq!(st["only"], S::Bypassed);
    s.close().await;
}

#[tokio::test]
async fn a_condition_that_cannot_be_evaluated_fails_its_stage() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a", 1, &[]).await;
    let yaml = r#"name: bad
inputs:
  n: {type: string, default: "x"}
stages:
  - id: a
    steps: [{commands: [{argv: [x]}]}]
  - id: b
    needs: [a]
    if: inputs.n < 3
    steps: [{commands: [{argv: [x]}]}]
"#;
    let run = s.submit_run(new_run(yaml)).await.unwrap().run_id;
    assert_eq!(drain(&s, &a, &[]).await, ["a"]);
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(stage_states(&d)["b"], S::Failed);
    assert_eq!(d.run.state, RunState::Failed);
    let why = reason_to(&s, &run, "b", "failed").await;
    assert!(
        why.contains("stage \"b\"") && why.contains("field `if`") && why.contains("column 10"),
        "{why}"
    );
    s.close().await;
}

#[tokio::test]
async fn a_stage_sent_back_past_a_bypassed_need_runs_again_after_its_other_needs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a", 1, &[]).await;
    let yaml = r#"name: back
stages:
  - id: implement
    steps: [{commands: [{argv: [x]}]}]
  - id: gate
    if: "false"
    steps: [{commands: [{argv: [x]}]}]
  - id: test
    needs: [implement, gate]
    if: always()
    on_failure: {retry_stage: implement, max_rounds: 1}
    steps: [{commands: [{argv: [x]}]}]
"#;
    let run = s.submit_run(new_run(yaml)).await.unwrap().run_id;
    let mut ran = Vec::new();
    let mut failed_once = false;
    while let Some(j) = s.claim(&a, 1_000_000).await.unwrap() {
        let id = j.spec.stage_id.clone();
        let fail = id == "test" && !failed_once;
        failed_once |= fail;
        finish(&s, &a, &j, !fail).await;
        ran.push(id);
    }
    assert_eq!(ran, ["implement", "test", "implement", "test"]);
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(stage_states(&d)["gate"], S::Bypassed);
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_log_replays_to_state(&s, &run).await;
    s.close().await;
}
