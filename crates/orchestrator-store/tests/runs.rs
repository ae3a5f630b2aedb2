//! A run's life against the real store, every state change through the
//! writer and read back through the read connection: a diamond to success
//! with a log that replays to the stored state, task and infrastructure
//! failures, what an agent may claim, invalid workflows, unknown ids, and a
//! completion that hands the agent its next job.

use orchestrator_core::api::CompleteRequest;
use orchestrator_core::error::ErrorClass;
use orchestrator_core::{JobState, RunState, StageState};
use orchestrator_store::{HumanCommand, StoreError};

mod common;

use common::*;

#[tokio::test]
async fn a_diamond_runs_to_success_and_its_log_replays_to_the_stored_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 4, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(stage_states(&d)["a"], StageState::Queued);
    assert_eq!(stage_states(&d)["d"], StageState::Pending);
    let mut order = Vec::new();
    while let Some(job) = s.claim(&a, TTL).await.unwrap() {
        order.push(format!("{}:{}", job.spec.stage_id, job.spec.step));
        complete_ok(&s, &a, &job).await;
    }
    assert_eq!(order.first().map(String::as_str), Some("a:0"));
    assert_eq!(order.last().map(String::as_str), Some("d:0"));
    assert_eq!(order.len(), 5, "a, b (2 steps), c, d: {order:?}");
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    assert!(d.stages.iter().all(|x| x.state == StageState::Succeeded));
    assert_eq!(d.run.stages_succeeded, 4);
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn a_task_failure_blocks_dependents_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    let ja = s.claim(&a, TTL).await.unwrap().unwrap();
    complete_ok(&s, &a, &ja).await;
    // b and c are queued; fail whichever is b, finish c.
    loop {
        let Some(j) = s.claim(&a, TTL).await.unwrap() else {
            break;
        };
        let ok = j.spec.stage_id != "b";
        let class = (!ok).then_some(ErrorClass::Task);
        s.complete(
            j.job_id,
            CompleteRequest {
                agent_id: a.clone(),
                lease_token: j.lease_token.clone(),
                outcome: outcome(ok, class),
                claim_next: false,
                claim_key: None,
            },
            TTL,
        )
        .await
        .unwrap();
    }
    // b waits for a human; c, which does not need it, finished; d waits.
    let d = s.run_detail(&run).await.unwrap();
    let st = stage_states(&d);
    assert_eq!(st["b"], StageState::AwaitingDecision);
    assert_eq!(st["c"], StageState::Succeeded);
    assert_eq!(st["d"], StageState::Pending);
    assert_eq!(d.run.state, RunState::Running);
    // Aborting the run fails b, which blocks d, and ends the run.
    s.human(
        &run,
        HumanCommand::Abort {
            stage_id: None,
            comment: Some("no".into()),
        },
        &orchestrator_core::Actor::user("ann"),
    )
    .await
    .unwrap();
    let d = s.run_detail(&run).await.unwrap();
    let st = stage_states(&d);
    assert_eq!(st["b"], StageState::Failed);
    assert_eq!(st["c"], StageState::Succeeded);
    assert_eq!(st["d"], StageState::Blocked);
    assert_eq!(d.run.state, RunState::Failed);
    let failed = d.jobs.iter().find(|j| j.state == JobState::Failed).unwrap();
    assert_eq!(failed.error_class, Some(ErrorClass::Task));
    assert_eq!(failed.exit_codes, vec![Some(1)]);
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn an_infra_failure_retries_the_stage_from_step_zero() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    let j = s.claim(&a, TTL).await.unwrap().unwrap();
    s.complete(
        j.job_id,
        CompleteRequest {
            agent_id: a.clone(),
            lease_token: j.lease_token.clone(),
            outcome: outcome(false, Some(ErrorClass::Infra)),
            claim_next: false,
            claim_key: None,
        },
        TTL,
    )
    .await
    .unwrap();
    let j2 = s.claim(&a, TTL).await.unwrap().unwrap();
    assert_eq!(
        (j2.spec.stage_id.as_str(), j2.spec.step, j2.spec.attempt),
        ("a", 0, 2)
    );
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn labels_and_slots_decide_what_an_agent_may_claim() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let plain = agent(&s, "plain", 1, &[]).await;
    let gpu = agent(&s, "gpu", 1, &["gpu", "linux"]).await;
    let wf = "name: l\nstages:\n  - id: g\n    labels: [gpu]\n    steps: [{commands: [{argv: [x]}]}]\n  - id: p\n    steps: [{commands: [{argv: [x]}]}]\n  - id: q\n    steps: [{commands: [{argv: [x]}]}]\n";
    s.submit_run(new_run(wf)).await.unwrap();
    let j = s.claim(&plain, TTL).await.unwrap().unwrap();
    assert_ne!(
        j.spec.stage_id, "g",
        "an agent without the label never gets the gpu stage"
    );
    assert!(
        s.claim(&plain, TTL).await.unwrap().is_none(),
        "one slot, one job"
    );
    let g = s.claim(&gpu, TTL).await.unwrap().unwrap();
    assert_eq!(
        g.spec.stage_id, "g",
        "the labelled stage goes first to the agent that can run it"
    );
}

#[tokio::test]
async fn an_invalid_workflow_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let before = s.counts().await.unwrap().transitions;
    let err = s.submit_run(new_run("name: x\nstages:\n  - id: a\n    needs: [zz]\n    steps: [{commands: [{argv: [x]}]}]\n")).await;
    match err {
        Err(StoreError::InvalidWorkflow(e)) => assert!(e.to_string().contains("zz")),
        other => panic!("expected an invalid workflow error, got {other:?}"),
    }
    assert!(s.list_runs(10).await.unwrap().is_empty());
    assert_eq!(s.counts().await.unwrap().transitions, before);
}

#[tokio::test]
async fn unknown_agents_and_jobs_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    assert!(matches!(
        s.claim(&"nobody".into(), TTL).await,
        Err(StoreError::NotFound { what: "agent", .. })
    ));
    assert!(matches!(
        s.heartbeat(&"nobody".into(), vec![], TTL).await,
        Err(StoreError::NotFound { .. })
    ));
    let req = CompleteRequest {
        agent_id: "x".into(),
        lease_token: "y".into(),
        outcome: outcome(true, None),
        claim_next: false,
        claim_key: None,
    };
    assert!(matches!(
        s.complete(999.into(), req, TTL).await,
        Err(StoreError::NotFound { what: "job", .. })
    ));
}

#[tokio::test]
async fn a_completion_can_hand_the_agent_its_next_job_including_stages_it_just_released() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    let mut job = s.claim(&a, TTL).await.unwrap().unwrap();
    let mut seen = vec![job.spec.stage_id.clone()];
    loop {
        let req = CompleteRequest {
            agent_id: a.clone(),
            lease_token: job.lease_token.clone(),
            outcome: outcome(true, None),
            claim_next: true,
            claim_key: None,
        };
        match s.complete(job.job_id, req, TTL).await.unwrap().next {
            Some(next) => {
                seen.push(next.spec.stage_id.clone());
                job = next;
            }
            None => break,
        }
    }
    // a released b and c, which were queued and handed out in the same commit.
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(
        s.run_detail(&run).await.unwrap().run.state,
        RunState::Succeeded
    );
    assert_log_replays_to_state(&s, &run).await;
}
