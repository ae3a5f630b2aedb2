//! Model usage in the store: per job and model rows that add up, read back
//! per job and per run by stage, and a store from before usage was kept
//! still opens.

mod common;

use common::*;
use orchestrator_core::fabric::Usage;
use orchestrator_store::{SqlStore, StoreOptions};

const TWO: &str = "name: w\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}]\n  - id: b\n    steps: [{commands: [{argv: [x]}]}]\n";

fn used(requests: u64, tin: u64, tout: u64, wait: u64, latency: u64) -> Usage {
    Usage {
        requests,
        prompt_tokens: tin,
        completion_tokens: tout,
        queue_wait_ms: wait,
        latency_ms: latency,
        max_queue_wait_ms: wait,
        max_latency_ms: latency,
    }
}

#[tokio::test]
async fn usage_rows_add_up_per_job_and_show_per_stage_in_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let run = s.submit_run(new_run(TWO)).await.unwrap().run_id;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.models, None, "no usage yet");
    let job = |stage: &str| d.jobs.iter().find(|j| j.stage_id == stage).unwrap().id;
    let (a, b) = (job("a"), job("b"));

    let lost = s
        .record_usage(vec![
            (a, "m".into(), used(1, 10, 2, 5, 100)),
            (b, "n".into(), used(2, 7, 3, 0, 40)),
            (i64::MAX.into(), "m".into(), used(1, 1, 1, 1, 1)),
        ])
        .await
        .unwrap();
    assert_eq!(lost, 1, "a job the store does not know adds nothing");
    s.record_usage(vec![(a, "m".into(), used(1, 20, 4, 50, 30))])
        .await
        .unwrap();

    let mine = s.job_usage(a).await.unwrap();
    assert_eq!(mine.len(), 1);
    let m = mine["m"];
    assert_eq!(
        (m.requests, m.prompt_tokens, m.completion_tokens),
        (2, 30, 6)
    );
    assert_eq!((m.queue_wait_ms, m.max_queue_wait_ms), (55, 50));
    assert_eq!((m.latency_ms, m.max_latency_ms), (130, 100));

    let summary = s.run_detail(&run).await.unwrap().models.unwrap();
    assert_eq!(summary.by_stage["a"]["m"], m);
    assert_eq!(summary.by_stage["b"]["n"].requests, 2);
    assert_eq!(summary.total.requests, 4);
    assert_eq!(summary.total.total_tokens(), 30 + 6 + 7 + 3);
    assert_eq!(s.job_usage(i64::MAX.into()).await.unwrap().len(), 0);
    s.close().await;
    drop(s);

    // Kept across a reopen.
    let s = open(&dir);
    assert_eq!(s.job_usage(a).await.unwrap()["m"], m);
    s.close().await;
}

#[tokio::test]
async fn a_jobs_holder_is_its_state_run_and_priority() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let mut r = new_run(TWO);
    r.priority = Some(7);
    let run = s.submit_run(r).await.unwrap().run_id;
    let d = s.run_detail(&run).await.unwrap();
    let job = d.jobs[0].id;
    let h = s.job_holder(job).await.unwrap().unwrap();
    assert_eq!(h.state, orchestrator_core::JobState::Queued);
    assert_eq!(
        (h.run_id.as_str(), h.priority),
        (run.as_str(), d.run.priority)
    );
    assert_eq!(s.job_holder(i64::MAX.into()).await.unwrap(), None);
    s.close().await;
}

#[tokio::test]
async fn a_store_from_before_usage_opens_and_counts_from_then_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orch.db");
    let run = {
        let s = open_sqlite(&dir);
        let run = s.submit_run(new_run(TWO)).await.unwrap().run_id;
        s.close().await;
        run
    };
    // Back to schema 7, as an orch without usage left it.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE model_usage; DROP TABLE spent_credentials; DROP TABLE agent_tokens; ALTER TABLE leases DROP COLUMN claim_key; DROP INDEX questions_job; ALTER TABLE questions DROP COLUMN wait_key; ALTER TABLE jobs DROP COLUMN round; ALTER TABLE jobs DROP COLUMN round_reason; ALTER TABLE jobs DROP COLUMN log_tail; ALTER TABLE stage_runs DROP COLUMN sent_back; ALTER TABLE checkpoints DROP COLUMN outputs; ALTER TABLE runs DROP COLUMN inputs; ALTER TABLE stage_runs DROP COLUMN matrix; PRAGMA user_version = 7;",
    )
    .unwrap();
    drop(conn);
    let s = SqlStore::open(StoreOptions::new(&path)).unwrap();
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.models, None);
    let a = d.jobs[0].id;
    s.record_usage(vec![(a, "m".into(), used(1, 1, 1, 1, 1))])
        .await
        .unwrap();
    assert_eq!(
        s.run_detail(&run)
            .await
            .unwrap()
            .models
            .unwrap()
            .total
            .requests,
        1
    );
    s.close().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 15);
}
