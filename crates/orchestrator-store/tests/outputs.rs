//! Stage outputs: each successful step's outputs are kept with its
//! checkpoint and a stage's are their merge in step order; a lost attempt's
//! steps run again and what they wrote before no longer counts; outputs
//! over the limits are refused here too (an agent could lie), failing the
//! step as a task. On SQLite, and on PostgreSQL with `ORCH_TEST_STORE=postgres`.

mod common;

use common::outputs::{finish, map, next, wrote};
use common::*;
use orchestrator_core::error::ErrorClass;
use orchestrator_core::outputs::Outputs;
use orchestrator_core::{JobState, RunId, StageState};
use orchestrator_store::SqlStore;

/// `a` has two steps; `b` needs it.
const TWO: &str = "name: o\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}, {commands: [{argv: [y]}]}]\n  - id: b\n    needs: [a]\n    steps: [{commands: [{argv: [z]}]}]\n";

async fn outputs_of(s: &SqlStore, run: &RunId, stage: &str) -> Outputs {
    let d = s.run_detail(run).await.unwrap();
    d.stages
        .into_iter()
        .find(|st| st.stage_id == stage)
        .unwrap()
        .outputs
}

#[tokio::test]
async fn a_stages_outputs_are_its_steps_merged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(TWO)).await.unwrap().run_id;
    let j = next(&s, &a).await;
    finish(&s, &a, &j, wrote(map(&[("version", "1"), ("kept", "yes")]))).await;
    assert_eq!(
        outputs_of(&s, &run, "a").await,
        map(&[("version", "1"), ("kept", "yes")])
    );
    let j = next(&s, &a).await;
    finish(&s, &a, &j, wrote(map(&[("version", "2")]))).await;
    assert_eq!(
        outputs_of(&s, &run, "a").await,
        map(&[("version", "2"), ("kept", "yes")])
    );
    let j = next(&s, &a).await;
    assert_eq!(j.spec.stage_id, "b");
    finish(&s, &a, &j, wrote(Outputs::new())).await;
    assert!(outputs_of(&s, &run, "b").await.is_empty());
    // The API's JSON leaves a stage without outputs bare.
    let d = s.run_detail(&run).await.unwrap();
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["stages"][0]["outputs"]["version"], "2");
    assert!(json["stages"][1].get("outputs").is_none());
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn a_lost_attempts_outputs_do_not_count() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(TWO)).await.unwrap().run_id;
    let j = next(&s, &a).await;
    finish(&s, &a, &j, wrote(map(&[("old", "1"), ("both", "old")]))).await;
    // Step 1 loses its attempt: the stage starts again from step 0.
    let j = next(&s, &a).await;
    assert_eq!((j.spec.stage_id.as_str(), j.spec.step), ("a", 1));
    finish(&s, &a, &j, outcome(false, Some(ErrorClass::Infra))).await;
    let j = next(&s, &a).await;
    assert_eq!(
        (j.spec.stage_id.as_str(), j.spec.step, j.spec.attempt),
        ("a", 0, 2)
    );
    finish(&s, &a, &j, wrote(map(&[("both", "new")]))).await;
    let j = next(&s, &a).await;
    finish(&s, &a, &j, wrote(map(&[("last", "1")]))).await;
    assert_eq!(
        outputs_of(&s, &run, "a").await,
        map(&[("both", "new"), ("last", "1")])
    );
}

#[tokio::test]
async fn outputs_over_the_limits_are_refused_by_the_store_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(TWO)).await.unwrap().run_id;
    // A key the agent would never have sent.
    let j = next(&s, &a).await;
    finish(&s, &a, &j, wrote(map(&[("bad key", "v")]))).await;
    let d = s.run_detail(&run).await.unwrap();
    let job = d.jobs.iter().find(|x| x.id == j.job_id).unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.error_class, Some(ErrorClass::Task));
    let err = job.error.as_deref().unwrap_or_default();
    assert!(
        err.contains("outputs are refused") && err.contains("\"bad key\""),
        "{err}"
    );
    assert!(d.checkpoints.is_empty());
    assert!(outputs_of(&s, &run, "a").await.is_empty());
    let st = d.stages.iter().find(|x| x.stage_id == "a").unwrap();
    assert_ne!(st.state, StageState::Succeeded);
}

#[tokio::test]
async fn a_stage_over_the_key_limit_fails_at_the_step_that_went_over() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(TWO)).await.unwrap().run_id;
    let keys = |from: usize, n: usize| -> Outputs {
        (from..from + n)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect()
    };
    let j = next(&s, &a).await;
    finish(&s, &a, &j, wrote(keys(0, 200))).await;
    let j = next(&s, &a).await;
    finish(&s, &a, &j, wrote(keys(200, 100))).await;
    let d = s.run_detail(&run).await.unwrap();
    let job = d.jobs.iter().find(|x| x.id == j.job_id).unwrap();
    assert_eq!(job.state, JobState::Failed);
    let err = job.error.as_deref().unwrap_or_default();
    assert!(
        err.contains("the stage's outputs") && err.contains("300; expected at most 256"),
        "{err}"
    );
    assert_eq!(outputs_of(&s, &run, "a").await, keys(0, 200));
}
