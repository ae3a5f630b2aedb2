//! The store keeps time by the clock it is given: every row of a batch is
//! stamped with it, and leases expire by it, so time-bound behaviour is
//! tested by moving a clock, never by sleeping.

mod common;

use std::sync::Arc;

use common::*;
use orchestrator_host::clock::ManualClock;
use orchestrator_store::SqlStore;

const T0: i64 = 1_700_000_000_000;
const ONE: &str = "name: one\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}]\n";

#[tokio::test]
async fn rows_are_stamped_and_leases_expire_by_the_stores_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = SqlStore::open(options(&dir).with_clock(Arc::new(clock.clone()))).unwrap();
    let run = s.submit_run(new_run(ONE)).await.unwrap().run_id;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.created_at_ms, T0);
    let log = s
        .transitions_since(0, Some(run.clone()), 100)
        .await
        .unwrap();
    assert!(!log.is_empty());
    assert!(log.iter().all(|t| t.at_ms == T0), "{log:#?}");

    clock.advance_ms(5_000);
    let a = agent(&s, "a1", 1, &[]).await;
    let job = s.claim(&a, TTL).await.unwrap().expect("a job");
    let leased = s
        .transitions_since(0, Some(run.clone()), 100)
        .await
        .unwrap();
    assert_eq!(leased.last().map(|t| t.at_ms), Some(T0 + 5_000));

    // The lease lives TTL from its claim, by this clock alone.
    let due = T0 + 5_000 + i64::try_from(TTL).unwrap();
    assert_eq!(s.expire_leases(due - 1).await.unwrap(), 0);
    assert_eq!(s.next_lease_expiry().await.unwrap(), Some(due));
    clock.set(due);
    assert_eq!(s.expire_leases(due).await.unwrap(), 1);
    let d = s.run_detail(&run).await.unwrap();
    let j = d.jobs.iter().find(|j| j.id == job.job_id).unwrap();
    assert_ne!(j.state, orchestrator_core::JobState::Leased);
    s.close().await;
}
