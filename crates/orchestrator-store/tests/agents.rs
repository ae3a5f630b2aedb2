//! Lost agents, against the real SQLite store: an agent that stops
//! heartbeating is marked lost once, with why; heard from again it is back
//! online; its stale leases are revoked and its late completion refused.

mod common;

use common::open;
use common::{new_run, outcome};
use orchestrator_core::api::{CompleteRequest, LeaseRef, RegisterAgent, StepOutcome};
use orchestrator_core::AgentId;
use orchestrator_core::RunId;
use orchestrator_core::{Entity, Transition};
use orchestrator_host::now_ms;
use orchestrator_store::{SqlStore, StoreError};

const WF: &str = "name: w\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}]\n";
const TTL: u64 = 30_000;

async fn register(s: &SqlStore, name: &str) -> AgentId {
    s.register_agent(
        RegisterAgent {
            name: name.into(),
            slots: 1,
            ..Default::default()
        },
        TTL,
        10_000,
    )
    .await
    .unwrap()
    .agent_id
}

async fn submit(s: &SqlStore) -> RunId {
    s.submit_run(new_run(WF)).await.unwrap().run_id
}

async fn log(s: &SqlStore) -> Vec<Transition> {
    s.transitions_since(0, None, 1_000_000).await.unwrap()
}

/// The agent's presence as (from, to, reason), in order, after its registration.
async fn presence(s: &SqlStore, agent: &AgentId) -> Vec<(Option<String>, String, String)> {
    log(s)
        .await
        .into_iter()
        .filter(|t| {
            t.entity == Entity::Agent && t.entity_id == agent.as_str() && t.to != "registered"
        })
        .map(|t| (t.from.map(|f| f.to_string()), t.to.to_string(), t.reason))
        .collect()
}

fn ok_outcome() -> StepOutcome {
    outcome(true, None)
}

#[tokio::test]
async fn a_silent_agent_is_marked_lost_once_and_back_online_when_heard_from() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = register(&s, "a1").await;
    let b = register(&s, "b1").await;
    let run = submit(&s).await;
    let job = s.claim(&a, 1_000).await.unwrap().expect("a job for a1");

    // Heard from within the window: nobody is lost.
    assert_eq!(s.mark_lost_agents(now_ms(), 60_000).await.unwrap(), 0);
    assert!(presence(&s, &a).await.is_empty());

    // Two seconds of silence: the 1 s lease expires, then the agents are judged
    // by a 1 s window. b held nothing and is lost as well, with no leases.
    let later = now_ms() + 2_000;
    assert_eq!(s.expire_leases(later).await.unwrap(), 1);
    assert_eq!(s.mark_lost_agents(later, 1_000).await.unwrap(), 2);
    let p = presence(&s, &a).await;
    assert_eq!(p.len(), 1, "{p:?}");
    let (from, to, why) = &p[0];
    assert_eq!((from.as_deref(), to.as_str()), (Some("online"), "lost"));
    assert!(why.starts_with("no heartbeat for 2."), "{why}");
    assert!(why.contains("1 of its leases expired"), "{why}");
    let (_, _, why_b) = &presence(&s, &b).await[0];
    assert!(why_b.contains("0 of its leases expired"), "{why_b}");

    // Once: later passes leave a lost agent alone.
    let n = log(&s).await.len();
    assert_eq!(s.mark_lost_agents(later + 5_000, 1_000).await.unwrap(), 0);
    assert_eq!(log(&s).await.len(), n, "a lost agent is marked only once");

    // a comes back holding its stale lease: told to kill the job, and online again.
    let r = s
        .heartbeat(
            &a,
            vec![LeaseRef {
                job_id: job.job_id,
                lease_token: job.lease_token.clone(),
            }],
            TTL,
        )
        .await
        .unwrap();
    assert_eq!(r.revoked, vec![job.job_id], "{r:?}");
    assert!(r.extended.is_empty(), "{r:?}");
    let p = presence(&s, &a).await;
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(
        (p[1].0.as_deref(), p[1].1.as_str()),
        (Some("lost"), "online")
    );
    assert!(p[1].2.starts_with("heartbeat after "), "{}", p[1].2);
    // Heard from: a pass with its heartbeat inside the window marks nothing.
    assert_eq!(s.mark_lost_agents(now_ms(), 60_000).await.unwrap(), 0);

    // Its late completion of the expired attempt is refused, and the refusal logged.
    let late = CompleteRequest {
        agent_id: a.clone(),
        lease_token: job.lease_token.clone(),
        outcome: ok_outcome(),
        claim_next: false,
        claim_key: None,
    };
    assert!(matches!(
        s.complete(job.job_id, late, TTL).await,
        Err(StoreError::StaleLease { .. })
    ));
    let refusals: Vec<Transition> = s
        .transitions_since(0, Some(run), 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.reason.starts_with("completion refused"))
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    assert_eq!(refusals[0].entity, Entity::Job);
    assert_eq!(refusals[0].entity_id, job.job_id.to_string());

    // Silent again: lost a second time; b registering again is back online.
    assert_eq!(
        s.mark_lost_agents(now_ms() + 10_000, 1_000).await.unwrap(),
        1
    );
    assert_eq!(presence(&s, &a).await.len(), 3);
    assert_eq!(
        register(&s, "b1").await,
        b,
        "the same agent, registered again"
    );
    let p = presence(&s, &b).await;
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(
        (p[1].0.as_deref(), p[1].1.as_str()),
        (Some("lost"), "online")
    );
    assert!(p[1].2.starts_with("registered again after "), "{}", p[1].2);
    // list_agents still judges online by the heartbeat's age, as before.
    let views = s.list_agents(60_000).await.unwrap();
    assert!(views.iter().all(|v| v.online), "{views:?}");
}
