//! Answers that never reached the agent: a daemon killed after it committed
//! a claim or a completion, a connection dropped on the way back. The agent
//! asks again with the same claim key (and the same lease token); the store
//! hands out the job it already leased rather than leaving that lease to
//! expire and its stage to start over at step 0. Runs on SQLite, and on
//! PostgreSQL with `ORCH_TEST_STORE=postgres`.

mod common;

use common::open;
use common::{agent, assert_log_replays_to_state, new_run, outcome, TTL};
use orchestrator_core::api::CompleteRequest;
use orchestrator_core::JobId;
use orchestrator_core::{Entity, JobState, RunState};
use orchestrator_store::{SqlStore, StoreError};

/// Two stages side by side, then one after both.
const WF: &str = "name: w\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}]\n  - id: b\n    steps: [{commands: [{argv: [x]}]}]\n  - id: c\n    needs: [a, b]\n    steps: [{commands: [{argv: [x]}]}]\n";

fn key(k: &str) -> Option<String> {
    Some(k.to_owned())
}

/// How often the log says job `job_id` went to `to`.
async fn times(s: &SqlStore, job_id: JobId, to: &str) -> usize {
    s.transitions_since(0, None, 1_000_000)
        .await
        .unwrap()
        .iter()
        .filter(|t| t.entity == Entity::Job && t.entity_id == job_id.to_string() && t.to == to)
        .count()
}

#[tokio::test]
async fn a_claim_asked_again_with_its_key_gets_the_job_the_lost_answer_carried() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 2, &[]).await;
    let other = agent(&s, "a2", 2, &[]).await;
    let run = s.submit_run(new_run(WF)).await.unwrap().run_id;

    let first = s.claim_keyed(&a, TTL, key("k1")).await.unwrap().unwrap();
    let again = s.claim_keyed(&a, TTL, key("k1")).await.unwrap().unwrap();
    assert_eq!(again.job_id, first.job_id);
    assert_eq!(again.lease_id, first.lease_id);
    assert_eq!(again.lease_token, first.lease_token);
    assert_eq!(again.spec, first.spec);
    assert!(again.lease_expires_at_ms >= first.lease_expires_at_ms);
    assert_eq!(times(&s, first.job_id, "leased").await, 1, "leased once");

    // Another key is another claim; another agent's same key is not this one's.
    let second = s.claim_keyed(&a, TTL, key("k2")).await.unwrap().unwrap();
    assert_ne!(second.job_id, first.job_id);
    assert!(s
        .claim_keyed(&other, TTL, key("k1"))
        .await
        .unwrap()
        .is_none());

    // Once completed, the key no longer names a held lease: a claim under it
    // is a new claim, and gets the stage the completions released.
    for job in [&first, &second] {
        common::complete_ok(&s, &a, job).await;
    }
    let third = s.claim_keyed(&a, TTL, key("k1")).await.unwrap().unwrap();
    assert_eq!(third.spec.stage_id, "c");
    common::complete_ok(&s, &a, &third).await;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!(d.jobs.len(), 3, "one job per stage: {:?}", d.jobs);
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn a_completion_sent_again_is_acknowledged_with_the_next_job_it_leased() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let other = agent(&s, "a2", 1, &[]).await;
    let run = s.submit_run(new_run(WF)).await.unwrap().run_id;
    let job = s.claim(&a, TTL).await.unwrap().unwrap();
    let req = CompleteRequest {
        agent_id: a.clone(),
        lease_token: job.lease_token.clone(),
        outcome: outcome(true, None),
        claim_next: true,
        claim_key: key("n1"),
    };
    let first = s.complete(job.job_id, req.clone(), TTL).await.unwrap();
    let next = first.next.clone().expect("the other first-layer stage");
    let again = s.complete(job.job_id, req.clone(), TTL).await.unwrap();
    assert_eq!(again.job_id, job.job_id);
    assert!(
        !first.again && again.again,
        "the answer says which was recorded"
    );
    assert_eq!(again.stage_state, first.stage_state);
    let handed = again.next.expect("the same next job again");
    assert_eq!(
        (handed.job_id, &handed.lease_token),
        (next.job_id, &next.lease_token)
    );
    assert_eq!(times(&s, job.job_id, "succeeded").await, 1, "recorded once");
    assert_eq!(times(&s, next.job_id, "leased").await, 1, "leased once");

    // Under another key, the replay claims afresh: the agent's one slot is
    // taken by `next`, so nothing more is leased.
    let other_key = CompleteRequest {
        claim_key: key("n2"),
        ..req.clone()
    };
    assert!(s
        .complete(job.job_id, other_key, TTL)
        .await
        .unwrap()
        .next
        .is_none());

    // Not the holder, or not its token: still refused.
    let stranger = CompleteRequest {
        agent_id: other.clone(),
        ..req.clone()
    };
    assert!(matches!(
        s.complete(job.job_id, stranger, TTL).await,
        Err(StoreError::StaleLease { .. })
    ));
    let forged = CompleteRequest {
        lease_token: "not-the-token".into(),
        ..req.clone()
    };
    assert!(matches!(
        s.complete(job.job_id, forged, TTL).await,
        Err(StoreError::StaleLease { .. })
    ));

    // The run goes on from `next` as if nothing had been lost.
    common::complete_ok(&s, &a, &next).await;
    let last = s.claim(&a, TTL).await.unwrap().unwrap();
    assert_eq!(last.spec.stage_id, "c");
    common::complete_ok(&s, &a, &last).await;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!(
        d.jobs
            .iter()
            .filter(|j| j.state == JobState::Succeeded)
            .count(),
        3
    );
    assert_eq!(d.jobs.len(), 3, "{:?}", d.jobs);
    assert_log_replays_to_state(&s, &run).await;
}
