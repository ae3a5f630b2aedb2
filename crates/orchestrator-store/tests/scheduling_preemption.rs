//! Cooperative pre-emption against the real store: higher-priority work makes
//! a loop stage yield at its checkpoint and keeps what it freed, equal or
//! higher priority is never touched, a stage on its last step is not asked,
//! and a lost attempt unpins its stage and waits out its backoff.

use orchestrator_core::sched::SystemRules;
use orchestrator_core::{RunState, StageState};

mod common;

use common::scheduling::*;
use common::TTL;

const LOOP: &str = "name: low\nstages:\n  - id: grind\n    repeat: {max: 3}\n    steps: [{commands: [{argv: [x]}]}]\n";

#[tokio::test]
async fn higher_priority_work_makes_a_loop_stage_yield_at_its_checkpoint_and_resume_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 1, 1024, &[]).await;
    let low = s
        .submit_run(run(LOOP, "/p", Some(1), Default::default()))
        .await
        .unwrap();
    let l0 = claim(&s, &a).await.unwrap();
    assert_eq!(s.preempt(TTL).await.unwrap(), 0, "nothing waits");
    let high = s
        .submit_run(run(
            &stages(&[("urgent", "")]),
            "/p",
            Some(9),
            Default::default(),
        ))
        .await
        .unwrap();
    assert!(claim(&s, &a).await.is_none(), "the only slot is busy");
    assert_eq!(s.preempt(TTL).await.unwrap(), 1);
    assert_eq!(s.preempt(TTL).await.unwrap(), 0, "asked once, not twice");
    let e = s.explain(&low.run_id, None, TTL).await.unwrap();
    assert!(
        e.stages[0]
            .lines
            .iter()
            .any(|l| l.contains("asked to yield")),
        "{:?}",
        e.stages[0].lines
    );
    // The step is never interrupted: it completes, then the stage suspends.
    done(&s, &a, &l0).await;
    assert_eq!(
        stage_state(&s, &low.run_id, "grind").await,
        StageState::Suspended
    );
    let e = s.explain(&low.run_id, None, TTL).await.unwrap();
    assert!(
        e.stages[0]
            .lines
            .iter()
            .any(|l| l.contains("yielded to job")),
        "{:?}",
        e.stages[0].lines
    );
    let h = claim(&s, &a).await.unwrap();
    assert_eq!(
        h.spec.run_id, high.run_id,
        "the slot goes to the waiting work"
    );
    assert_eq!(
        stage_state(&s, &low.run_id, "grind").await,
        StageState::Queued,
        "resumed once placed"
    );
    assert!(claim(&s, &a).await.is_none());
    done(&s, &a, &h).await;
    let l1 = claim(&s, &a).await.unwrap();
    assert_eq!(
        (l1.spec.run_id.as_str(), l1.spec.step),
        (low.run_id.as_str(), 1)
    );
    done(&s, &a, &l1).await;
    let l2 = claim(&s, &a).await.unwrap();
    done(&s, &a, &l2).await;
    assert_eq!(
        s.run_detail(&low.run_id).await.unwrap().run.state,
        RunState::Succeeded
    );
    let log = s
        .transitions_since(0, Some(low.run_id.clone()), 10_000)
        .await
        .unwrap();
    assert!(log.iter().any(|t| t.to == "suspended"));
    // Every iteration ran exactly once: rounds 1 to 3 of the loop's step.
    let d = s.run_detail(&low.run_id).await.unwrap();
    let mut rounds: Vec<(u32, u32)> = d
        .jobs
        .iter()
        .filter(|j| j.state == orchestrator_core::JobState::Succeeded)
        .map(|j| (j.step, j.round))
        .collect();
    rounds.sort();
    assert_eq!(rounds, vec![(0, 1), (0, 2), (0, 3)]);
}

#[tokio::test]
async fn yielded_capacity_is_kept_for_the_work_it_yielded_to() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 2, 1024, &[]).await;
    let lp = "    repeat: {max: 3}\n    resources: {memory: 512M}\n";
    let low = s
        .submit_run(run(
            &stages(&[("g1", lp), ("g2", lp)]),
            "/p",
            Some(1),
            Default::default(),
        ))
        .await
        .unwrap();
    let j1 = claim(&s, &a).await.unwrap();
    let j2 = claim(&s, &a).await.unwrap();
    // Needs all the agent's memory: both loop stages must yield.
    let high = s
        .submit_run(run(
            &stages(&[("urgent", "    resources: {memory: 1G}\n")]),
            "/p",
            Some(9),
            Default::default(),
        ))
        .await
        .unwrap();
    assert_eq!(s.preempt(TTL).await.unwrap(), 2);
    s.submit_run(run(
        &stages(&[("filler", "")]),
        "/p",
        Some(1),
        Default::default(),
    ))
    .await
    .unwrap();
    done(&s, &a, &j1).await;
    assert_eq!(
        stage_state(&s, &low.run_id, &j1.spec.stage_id).await,
        StageState::Suspended
    );
    assert!(
        claim(&s, &a).await.is_none(),
        "the freed slot is kept for the urgent stage, not the filler or the suspended loop"
    );
    done(&s, &a, &j2).await;
    let next = claim(&s, &a).await.unwrap();
    assert_eq!(next.spec.run_id, high.run_id);
    assert_eq!(stage_state(&s, &low.run_id, "g1").await, StageState::Queued);
    assert_eq!(stage_state(&s, &low.run_id, "g2").await, StageState::Queued);
}

#[tokio::test]
async fn pre_emption_never_touches_equal_or_higher_priority_work() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 1, 1024, &[]).await;
    s.submit_run(run(LOOP, "/p", Some(5), Default::default()))
        .await
        .unwrap();
    let _l0 = claim(&s, &a).await.unwrap();
    s.submit_run(run(
        &stages(&[("same", "")]),
        "/p",
        Some(5),
        Default::default(),
    ))
    .await
    .unwrap();
    assert_eq!(s.preempt(TTL).await.unwrap(), 0);
}

#[tokio::test]
async fn a_lost_attempt_unpins_its_stage_so_any_agent_can_restart_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 1, 1024, &[]).await;
    let r = s
        .submit_run(run(&stages(&[("x", "")]), "/p", None, Default::default()))
        .await
        .unwrap();
    let j = claim(&s, &a).await.unwrap();
    assert_eq!(s.expire_leases(j.lease_expires_at_ms + 1).await.unwrap(), 1);
    let b = agent(&s, "b", 1, 1024, &[]).await;
    let again = claim(&s, &b).await.unwrap();
    assert_eq!(
        (again.spec.run_id.as_str(), again.spec.attempt),
        (r.run_id.as_str(), 2)
    );
}

#[tokio::test]
async fn a_stage_on_its_last_step_is_not_asked_to_yield() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 1, 1024, &[]).await;
    s.submit_run(run(
        &stages(&[("once", "")]),
        "/p",
        Some(1),
        Default::default(),
    ))
    .await
    .unwrap();
    let j = claim(&s, &a).await.unwrap();
    let high = s
        .submit_run(run(
            &stages(&[("urgent", "")]),
            "/p",
            Some(9),
            Default::default(),
        ))
        .await
        .unwrap();
    // Its slot frees at its checkpoint anyway: asking would change nothing.
    assert_eq!(s.preempt(TTL).await.unwrap(), 0);
    done(&s, &a, &j).await;
    assert_eq!(claim(&s, &a).await.unwrap().spec.run_id, high.run_id);
}

#[tokio::test]
async fn a_lost_attempt_waits_out_its_backoff_then_starts_again_from_step_zero() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 1, 1024, &[]).await;
    let yaml = "name: w\nstages:\n  - id: x\n    retry: {attempts: 2, initial: 10s, max: 10s}\n    steps: [{commands: [{argv: [x]}]}, {commands: [{argv: [y]}]}]\n";
    let r = s
        .submit_run(run(yaml, "/p", None, Default::default()))
        .await
        .unwrap();
    let j = claim(&s, &a).await.unwrap();
    done(&s, &a, &j).await;
    // A lease of 1 ms runs out at once; the next attempt then waits 5 to
    // 10 s (half fixed, half jitter).
    let j1 = s.claim(&a, 1).await.unwrap().unwrap();
    assert_eq!(j1.spec.step, 1);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        s.expire_leases(orchestrator_host::now_ms()).await.unwrap(),
        1
    );
    assert_eq!(stage_state(&s, &r.run_id, "x").await, StageState::Retrying);
    assert!(
        claim(&s, &a).await.is_none(),
        "nothing to run during the backoff"
    );
    let e = s.explain(&r.run_id, Some("x".into()), TTL).await.unwrap();
    assert!(
        e.stages[0].lines[0].contains("attempt 2 starts at step 0"),
        "{:?}",
        e.stages[0].lines
    );
    let due = s.next_lease_expiry().await.unwrap().unwrap();
    let wait = due - orchestrator_host::now_ms();
    assert!((4_000..=10_500).contains(&wait), "backoff of {wait} ms");
    s.expire_leases(due).await.unwrap();
    let again = claim(&s, &a).await.unwrap();
    assert_eq!((again.spec.step, again.spec.attempt), (0, 2));
    // The workflow allows 2 attempts: after the second loss a human decides.
    s.expire_leases(again.lease_expires_at_ms + 1)
        .await
        .unwrap();
    assert_eq!(
        stage_state(&s, &r.run_id, "x").await,
        StageState::AwaitingDecision
    );
    assert_eq!(
        s.run_detail(&r.run_id).await.unwrap().run.state,
        RunState::Running
    );
}
