//! The named moments of a batch (feature `failpoints`): a failure just
//! before `COMMIT` keeps nothing of the batch; a crash there keeps nothing
//! either; a crash just after it keeps all of it though no caller was
//! answered; and an answer lost after the commit is acknowledged again when
//! the agent asks again.

mod common;

use std::path::Path;

use common::*;
use orchestrator_core::api::CompleteRequest;
use orchestrator_store::{FaultMode, Point, SqlStore, StoreOptions};

const ONE: &str = "name: one\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}]\n";
/// Set in the child process: the database and the point to crash at.
const CHILD_ENV: &str = "ORCH_NAMED_POINT_CHILD";

fn open_at(db: &Path) -> SqlStore {
    SqlStore::open(StoreOptions::new(db)).unwrap()
}

#[tokio::test]
async fn a_failure_before_commit_keeps_nothing_of_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.arm_point(Point::BeforeCommit, FaultMode::Fail);
    let e = s.submit_run(new_run(ONE)).await.unwrap_err();
    assert!(e.to_string().contains("BeforeCommit"), "{e}");
    assert!(s.list_runs(10).await.unwrap().is_empty());
    // Fired once: the store goes on.
    s.submit_run(new_run(ONE)).await.unwrap();
    assert_eq!(s.list_runs(10).await.unwrap().len(), 1);
    s.close().await;
}

#[tokio::test]
async fn an_answer_lost_after_commit_is_acknowledged_when_asked_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let run = s.submit_run(new_run(ONE)).await.unwrap().run_id;
    let a = agent(&s, "a1", 1, &[]).await;
    let job = s.claim(&a, TTL).await.unwrap().unwrap();
    let req = CompleteRequest {
        agent_id: a.clone(),
        lease_token: job.lease_token.clone(),
        outcome: outcome(true, None),
        claim_next: false,
        claim_key: None,
    };
    s.arm_point(Point::AfterCommit, FaultMode::Fail);
    assert!(s.complete(job.job_id, req.clone(), TTL).await.is_err());
    // Committed all the same.
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, orchestrator_core::RunState::Succeeded);
    let again = s.complete(job.job_id, req, TTL).await.unwrap();
    assert!(again.again, "the second answer says it was recorded before");
    assert_log_replays_to_state(&s, &run).await;
    s.close().await;
}

/// The child side: a no-op unless the parent set `CHILD_ENV`.
#[test]
fn named_point_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (point, db) = spec.split_once('\n').unwrap();
    let point = match point {
        "before" => Point::BeforeCommit,
        _ => Point::AfterCommit,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = open_at(Path::new(db));
        s.arm_point(point, FaultMode::Abort);
        let _ = s.submit_run(new_run(ONE)).await;
        unreachable!("the store was to abort the process");
    });
}

/// Crashes a child at `point` while it submits a run; the runs left.
fn crash_at(point: &str) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orch.db");
    drop(open_at(&db));
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "named_point_child",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_ENV, format!("{point}\n{}", db.display()))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the child was to abort: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = rusqlite::Connection::open(&db).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let runs: i64 = c
        .query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    usize::try_from(runs).unwrap()
}

#[test]
fn a_crash_before_commit_keeps_nothing_and_after_it_keeps_everything() {
    assert_eq!(crash_at("before"), 0, "nothing of an uncommitted batch");
    assert_eq!(crash_at("after"), 1, "a committed batch, answered or not");
}
