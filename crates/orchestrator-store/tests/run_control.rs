//! Cancelling and pausing a run against the real store: cancelling ends its
//! open stages, revokes its leases and refuses late completions; a paused run
//! holds each stage at its next checkpoint and resumes from there.

use orchestrator_core::api::{CompleteRequest, LeaseRef};
use orchestrator_core::machine::RunEvent;
use orchestrator_core::{JobState, RunState, StageState};
use orchestrator_store::StoreError;

mod common;

use common::*;

#[tokio::test]
async fn cancelling_a_run_cancels_its_open_stages_revokes_its_leases_and_refuses_late_completions()
{
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    let j = s.claim(&a, TTL).await.unwrap().unwrap();
    let summary = s
        .command_run(
            &run,
            RunEvent::Cancel,
            &orchestrator_core::Actor::user("test"),
        )
        .await
        .unwrap();
    assert_eq!(summary.state, RunState::Cancelled);
    assert!(summary.ended_at_ms.is_some());
    let d = s.run_detail(&run).await.unwrap();
    assert!(
        d.stages.iter().all(|x| x.state == StageState::Cancelled),
        "{:?}",
        d.stages
    );
    assert_eq!(
        d.jobs.iter().find(|x| x.id == j.job_id).unwrap().state,
        JobState::Cancelled
    );
    // The agent's lease is gone: a heartbeat reports it revoked, a completion is refused.
    let r = s
        .heartbeat(
            &a,
            vec![LeaseRef {
                job_id: j.job_id,
                lease_token: j.lease_token.clone(),
            }],
            TTL,
        )
        .await
        .unwrap();
    assert_eq!(r.revoked, vec![j.job_id]);
    let late = CompleteRequest {
        agent_id: a.clone(),
        lease_token: j.lease_token.clone(),
        outcome: outcome(true, None),
        claim_next: true,
        claim_key: None,
    };
    assert!(matches!(
        s.complete(j.job_id, late, TTL).await,
        Err(StoreError::StaleLease { .. })
    ));
    assert!(
        s.claim(&a, TTL).await.unwrap().is_none(),
        "nothing of a cancelled run is handed out"
    );
    match s
        .command_run(
            &run,
            RunEvent::Cancel,
            &orchestrator_core::Actor::user("test"),
        )
        .await
    {
        Err(StoreError::Conflict(msg)) => assert!(msg.contains("already ended"), "{msg}"),
        other => panic!("cancelling twice: {other:?}"),
    }
    assert!(matches!(
        s.command_run(
            &"rnope".into(),
            RunEvent::Cancel,
            &orchestrator_core::Actor::user("test")
        )
        .await,
        Err(StoreError::NotFound { .. })
    ));
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn a_paused_run_holds_each_stage_at_its_next_checkpoint_and_resumes_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 4, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    let ja = s.claim(&a, TTL).await.unwrap().unwrap();
    assert_eq!(
        s.command_run(
            &run,
            RunEvent::Pause,
            &orchestrator_core::Actor::user("test")
        )
        .await
        .unwrap()
        .state,
        RunState::Paused
    );
    // The running step is not interrupted; what it releases does not start.
    complete_ok(&s, &a, &ja).await;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(stage_states(&d)["a"], StageState::Succeeded);
    assert_eq!(stage_states(&d)["b"], StageState::Pending);
    assert!(
        s.claim(&a, TTL).await.unwrap().is_none(),
        "a paused run hands out nothing"
    );
    match s
        .command_run(
            &run,
            RunEvent::Pause,
            &orchestrator_core::Actor::user("test"),
        )
        .await
    {
        Err(StoreError::Conflict(msg)) => {
            assert!(msg.contains("only a running run can be paused"), "{msg}")
        }
        other => panic!("pausing twice: {other:?}"),
    }

    s.command_run(
        &run,
        RunEvent::Resume,
        &orchestrator_core::Actor::user("test"),
    )
    .await
    .unwrap();
    let j1 = s.claim(&a, TTL).await.unwrap().unwrap();
    let j2 = s.claim(&a, TTL).await.unwrap().unwrap();
    let (jb, jc) = if j1.spec.stage_id == "b" {
        (j1, j2)
    } else {
        (j2, j1)
    };
    assert_eq!((jb.spec.stage_id.as_str(), jb.spec.step), ("b", 0));
    s.command_run(
        &run,
        RunEvent::Pause,
        &orchestrator_core::Actor::user("test"),
    )
    .await
    .unwrap();
    complete_ok(&s, &a, &jb).await;
    complete_ok(&s, &a, &jc).await;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(
        stage_states(&d)["b"],
        StageState::Paused,
        "b holds before its step 1"
    );
    assert_eq!(stage_states(&d)["c"], StageState::Succeeded);
    assert_eq!(stage_states(&d)["d"], StageState::Pending);
    assert!(s.claim(&a, TTL).await.unwrap().is_none());

    s.command_run(
        &run,
        RunEvent::Resume,
        &orchestrator_core::Actor::user("test"),
    )
    .await
    .unwrap();
    let jb1 = s.claim(&a, TTL).await.unwrap().unwrap();
    assert_eq!(
        (jb1.spec.stage_id.as_str(), jb1.spec.step),
        ("b", 1),
        "b goes on from its checkpoint"
    );
    complete_ok(&s, &a, &jb1).await;
    let jd = s.claim(&a, TTL).await.unwrap().unwrap();
    complete_ok(&s, &a, &jd).await;
    assert_eq!(
        s.run_detail(&run).await.unwrap().run.state,
        RunState::Succeeded
    );
    match s
        .command_run(
            &run,
            RunEvent::Resume,
            &orchestrator_core::Actor::user("test"),
        )
        .await
    {
        Err(StoreError::Conflict(msg)) => assert!(msg.contains("already ended"), "{msg}"),
        other => panic!("resuming an ended run: {other:?}"),
    }
    assert_log_replays_to_state(&s, &run).await;
}
