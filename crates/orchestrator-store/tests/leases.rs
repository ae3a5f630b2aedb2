//! Leases against the real store: a stale token refused and the refusal
//! recorded, expired leases restarting the stage until a human fails it,
//! heartbeats extending held leases and revoking the rest, and an agent that
//! registers again voiding the leases of its earlier run.

use orchestrator_core::api::{CompleteRequest, LeaseRef, RegisterAgent};
use orchestrator_core::{JobState, RunState, StageState};
use orchestrator_store::{HumanCommand, StoreError};

mod common;

use common::*;

#[tokio::test]
async fn a_completion_with_a_stale_token_is_refused_and_the_refusal_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    let job = s.claim(&a, TTL).await.unwrap().unwrap();
    let bad = CompleteRequest {
        agent_id: a.clone(),
        lease_token: "nope".into(),
        outcome: outcome(true, None),
        claim_next: false,
        claim_key: None,
    };
    match s.complete(job.job_id, bad, TTL).await {
        Err(StoreError::StaleLease { job_id, .. }) => assert_eq!(job_id, job.job_id),
        other => panic!("expected a stale lease refusal, got {other:?}"),
    }
    let log = s
        .transitions_since(0, Some(run.clone()), 10_000)
        .await
        .unwrap();
    assert!(log.iter().any(
        |t| t.reason.starts_with("completion refused") && t.entity_id == job.job_id.to_string()
    ));
    complete_ok(&s, &a, &job).await;
    // The same token again is the same completion sent twice (its answer
    // lost): acknowledged, and recorded once.
    let again = CompleteRequest {
        agent_id: a.clone(),
        lease_token: job.lease_token.clone(),
        outcome: outcome(true, None),
        claim_next: false,
        claim_key: None,
    };
    assert_eq!(
        s.complete(job.job_id, again, TTL).await.unwrap().job_id,
        job.job_id
    );
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(
        d.jobs
            .iter()
            .filter(|j| j.state == JobState::Succeeded)
            .count(),
        1
    );
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn expired_leases_restart_the_stage_until_five_attempts_then_a_human_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    for attempt in 1..=5u32 {
        let j = s.claim(&a, 1).await.unwrap().expect("stage a requeued");
        assert_eq!(j.spec.stage_id, "a");
        assert_eq!(j.spec.attempt, attempt);
        assert_eq!(j.spec.step, 0);
        let n = s
            .expire_leases(orchestrator_host::now_ms() + 10)
            .await
            .unwrap();
        assert_eq!(n, 1);
        // The late completion of the lost attempt is refused.
        let late = CompleteRequest {
            agent_id: a.clone(),
            lease_token: j.lease_token.clone(),
            outcome: outcome(true, None),
            claim_next: false,
            claim_key: None,
        };
        assert!(matches!(
            s.complete(j.job_id, late, TTL).await,
            Err(StoreError::StaleLease { .. })
        ));
    }
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(stage_states(&d)["a"], StageState::AwaitingDecision);
    // The error a human reads says where the lost work was and when its
    // agent was last heard from.
    let first = d.jobs.iter().find(|j| j.attempt == 1).unwrap();
    let error = first.error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("lease expired")
            && error.contains(&format!(
                "[run {run}, stage a, step 0, attempt 1, agent {a} on "
            ))
            && error.contains("last heard from"),
        "{error}"
    );
    assert!(
        s.claim(&a, TTL).await.unwrap().is_none(),
        "no sixth attempt by itself"
    );
    s.human(
        &run,
        HumanCommand::Abort {
            stage_id: Some("a".into()),
            comment: None,
        },
        &orchestrator_core::Actor::user("ann"),
    )
    .await
    .unwrap();
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(stage_states(&d)["a"], StageState::Failed);
    assert!(["b", "c", "d"]
        .iter()
        .all(|x| stage_states(&d)[*x] == StageState::Blocked));
    assert_eq!(d.run.state, RunState::Failed);
    assert_eq!(
        d.jobs
            .iter()
            .filter(|j| j.state == JobState::Expired)
            .count(),
        5
    );
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn heartbeats_extend_held_leases_and_revoke_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 2, &[]).await;
    s.submit_run(new_run(DIAMOND)).await.unwrap();
    let j = s.claim(&a, 1_000).await.unwrap().unwrap();
    let r = s
        .heartbeat(
            &a,
            vec![
                LeaseRef {
                    job_id: j.job_id,
                    lease_token: j.lease_token.clone(),
                },
                LeaseRef {
                    job_id: 4242.into(),
                    lease_token: "x".into(),
                },
            ],
            60_000,
        )
        .await
        .unwrap();
    assert_eq!(r.extended, vec![j.job_id]);
    assert_eq!(r.revoked, vec![4242]);
    // Extended past the original 1 s: nothing expires 2 s from now.
    assert_eq!(
        s.expire_leases(orchestrator_host::now_ms() + 2_000)
            .await
            .unwrap(),
        0
    );
    // A heartbeat that crossed the job's completion neither extends nor revokes it.
    complete_ok(&s, &a, &j).await;
    let r = s
        .heartbeat(
            &a,
            vec![LeaseRef {
                job_id: j.job_id,
                lease_token: j.lease_token.clone(),
            }],
            60_000,
        )
        .await
        .unwrap();
    assert!(r.extended.is_empty() && r.revoked.is_empty(), "{r:?}");
}

#[tokio::test]
async fn an_agent_registering_again_voids_the_leases_of_its_earlier_run() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    s.submit_run(new_run(DIAMOND)).await.unwrap();
    let j = s.claim(&a, TTL).await.unwrap().unwrap();
    let again = s
        .register_agent(
            RegisterAgent {
                name: "a1".into(),
                labels: vec![],
                slots: 1,
                hostname: None,
                ..Default::default()
            },
            TTL,
            10_000,
        )
        .await
        .unwrap();
    assert_eq!(again.agent_id, a, "same name, same id");
    assert_eq!(again.stale_jobs, vec![j.job_id]);
    let j2 = s.claim(&a, TTL).await.unwrap().unwrap();
    assert_eq!(j2.spec.attempt, 2);
}
