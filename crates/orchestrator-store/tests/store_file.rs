//! The store's file: every run intact after a reopen, concurrent commands
//! group-committed, a second store on the same file refused while the first
//! is open, and a file written by a newer orch refused and left untouched.

use std::sync::Arc;

use orchestrator_core::{JobState, RunState, StageState};
use orchestrator_store::{SqlStore, StoreError, StoreOptions};

mod common;

use common::*;

#[tokio::test]
async fn the_store_survives_a_reopen_with_every_run_intact() {
    let dir = tempfile::tempdir().unwrap();
    let run;
    {
        let s = open(&dir);
        let a = agent(&s, "a1", 1, &[]).await;
        run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
        let j = s.claim(&a, TTL).await.unwrap().unwrap();
        complete_ok(&s, &a, &j).await;
        s.close().await;
    }
    let s = open(&dir);
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(stage_states(&d)["a"], StageState::Succeeded);
    assert_eq!(stage_states(&d)["b"], StageState::Queued);
    let a = agent(&s, "a1", 4, &[]).await;
    while let Some(j) = s.claim(&a, TTL).await.unwrap() {
        complete_ok(&s, &a, &j).await;
    }
    assert_eq!(
        s.run_detail(&run).await.unwrap().run.state,
        RunState::Succeeded
    );
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(&dir));
    let a = agent(&s, "a1", 64, &[]).await;
    let mut y = String::from("name: w\nstages:\n");
    for i in 0..200 {
        y.push_str(&format!(
            "  - id: s{i}\n    steps: [{{commands: [{{argv: [x]}}]}}]\n"
        ));
    }
    let run = s.submit_run(new_run(&y)).await.unwrap().run_id;
    let before = s.writer_stats();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (s, a) = (s.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(j) = s.claim(&a, TTL).await.unwrap() {
                complete_ok(&s, &a, &j).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = s.writer_stats();
    let commands = after.commands - before.commands;
    let batches = after.batches - before.batches;
    assert!(
        commands >= 400,
        "200 claims and 200 completions at least, got {commands}"
    );
    assert!(
        batches < commands,
        "{commands} commands in {batches} batches: some must share a commit"
    );
    assert!(after.max_batch > 1);
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!(
        d.jobs
            .iter()
            .filter(|j| j.state == JobState::Succeeded)
            .count(),
        200,
        "each stage completed exactly once"
    );
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn a_second_store_on_the_same_file_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let first = open_sqlite(&dir);
    let second = SqlStore::open(StoreOptions::new(dir.path().join("orch.db")));
    match second {
        Err(e @ StoreError::Locked { .. }) => {
            assert!(
                e.to_string().contains("in use by another orch daemon"),
                "{e}"
            )
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("two stores on one file"),
    }
    first.close().await;
    drop(first);
    // Once the first is gone the file opens again.
    let again = open_sqlite(&dir);
    assert!(again.list_runs(1).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_store_written_by_a_newer_orch_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orch.db");
    {
        let s = open_sqlite(&dir);
        s.submit_run(new_run(DIAMOND)).await.unwrap();
        s.close().await;
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    match SqlStore::open(StoreOptions::new(&path)) {
        Err(e @ StoreError::TooNew { found: 99, .. }) => {
            assert!(e.to_string().contains("schema version 99"), "{e}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let runs: i64 = conn
        .query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 1, "the refused store keeps its runs");
}
