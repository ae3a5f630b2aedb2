//! What only a PostgreSQL store does: several stores (daemons) on one
//! database, its schema version, and `orch migrate`'s copy from SQLite.
//! Needs the server `scripts/postgres.sh` starts (ORCH_TEST_POSTGRES).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use orchestrator_core::api::CompleteRequest;
use orchestrator_core::{RunState, StageState};
use orchestrator_store::{sqlite_to_postgres, Location, SqlStore, StoreError, StoreOptions};

fn url() -> String {
    std::env::var("ORCH_TEST_POSTGRES")
        .expect("ORCH_TEST_POSTGRES is not set: run scripts/postgres.sh (scripts/test does)")
}

/// A schema no other test uses.
fn fresh() -> Location {
    let n = u64::from_le_bytes(std::array::from_fn(|i| {
        (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            >> (i * 8)) as u8
    }));
    Location::Postgres {
        url: url(),
        schema: Some(format!("p_{n:x}_{}", std::process::id())),
    }
}

fn open_at(loc: &Location) -> SqlStore {
    let mut o = StoreOptions::at(loc.clone());
    o.rules = orchestrator_core::sched::parse_system_rules("retry: {initial: 0s}\n", "rules.yaml")
        .unwrap();
    SqlStore::open(o).unwrap()
}

fn wide(n: usize) -> String {
    let mut y = String::from("name: wide\nstages:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  - id: s{i}\n    steps: [{{commands: [{{argv: [x]}}]}}]\n"
        ));
    }
    y
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs PostgreSQL: run scripts/test"
)]
async fn two_stores_on_one_database_share_runs_claims_and_events() {
    let loc = fresh();
    let a = open_at(&loc);
    let b = open_at(&loc);
    let mut heard_by_a = a.subscribe();
    let queued_at_b = b.jobs_queued();
    let woken = queued_at_b.notified();
    let run = a.submit_run(new_run(&wide(3))).await.unwrap().run_id;
    // B's claimers hear of A's queued jobs.
    tokio::time::timeout(Duration::from_secs(10), woken)
        .await
        .expect("a job queued through one store wakes claimers of the other");
    let agent = agent(&b, "w1", 4, &[]).await;
    let mut claimed = Vec::new();
    while let Some(job) = b.claim(&agent, TTL).await.unwrap() {
        claimed.push(job);
    }
    assert_eq!(claimed.len(), 3);
    for job in &claimed {
        complete_ok(&b, &agent, job).await;
    }
    assert_eq!(
        a.run_detail(&run).await.unwrap().run.state,
        RunState::Succeeded
    );
    // A's subscribers see every transition, B's included, once and in order.
    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let batch = tokio::time::timeout_at(deadline, heard_by_a.recv())
            .await
            .expect("transitions reach the other store's subscribers")
            .unwrap();
        seqs.extend(batch.iter().map(|t| t.seq));
        let done = batch
            .iter()
            .any(|t| t.entity_id == run && t.to == "succeeded");
        if done {
            break;
        }
    }
    let logged = a
        .transitions_since(0, Some(run.clone()), 10_000)
        .await
        .unwrap();
    let logged: Vec<i64> = logged.iter().map(|t| t.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for s in &logged {
        assert!(
            seqs.contains(s),
            "seq {s} of the run never reached A's subscriber: {seqs:?}"
        );
    }
    a.close().await;
    b.close().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs PostgreSQL: run scripts/test"
)]
async fn claims_through_two_stores_never_hand_one_job_out_twice() {
    let loc = fresh();
    let stores = [Arc::new(open_at(&loc)), Arc::new(open_at(&loc))];
    let run = stores[0]
        .submit_run(new_run(&wide(120)))
        .await
        .unwrap()
        .run_id;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let agent = agent(&s, &format!("a{i}"), 1, &[]).await;
            let mut mine = Vec::new();
            while let Some(job) = s.claim(&agent, TTL).await.unwrap() {
                mine.push(job.job_id);
                complete_ok(&s, &agent, &job).await;
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for t in tasks {
        for job in t.await.unwrap() {
            total += 1;
            assert!(seen.insert(job), "job {job} was handed out twice");
        }
    }
    assert_eq!(total, 120);
    let d = stores[1].run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    assert!(d.stages.iter().all(|s| s.state == StageState::Succeeded));
    for s in stores {
        s.close().await;
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs PostgreSQL: run scripts/test"
)]
async fn a_database_from_a_newer_orch_is_refused() {
    let loc = fresh();
    let s = open_at(&loc);
    s.submit_run(new_run(&wide(1))).await.unwrap();
    s.exec_command(|c| {
        c.execute("INSERT INTO orch_schema (version) VALUES (99)", [])?;
        Ok(())
    })
    .await
    .unwrap();
    s.close().await;
    drop(s);
    match SqlStore::open(StoreOptions::at(loc.clone())) {
        Err(e @ StoreError::TooNew { found: 99, .. }) => {
            assert!(e.to_string().contains("schema version 99"), "{e}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs PostgreSQL: run scripts/test"
)]
async fn a_database_from_an_older_orch_is_migrated_and_keeps_its_runs() {
    let loc = fresh();
    let s = open_at(&loc);
    let run = s.submit_run(new_run(&wide(2))).await.unwrap().run_id;
    // Back to schema 1, as the first orch with PostgreSQL left it.
    s.exec_command(|c| {
        c.execute_batch(
            "ALTER TABLE runs DROP COLUMN inputs; ALTER TABLE stage_runs DROP COLUMN matrix; ALTER TABLE checkpoints DROP COLUMN outputs; ALTER TABLE jobs DROP COLUMN round; ALTER TABLE jobs DROP COLUMN round_reason; ALTER TABLE jobs DROP COLUMN log_tail; ALTER TABLE stage_runs DROP COLUMN sent_back; DROP INDEX questions_job; ALTER TABLE questions DROP COLUMN wait_key; ALTER TABLE leases DROP COLUMN claim_key; DROP TABLE spent_credentials; DROP TABLE agent_tokens; DELETE FROM orch_schema WHERE version > 1",
        )?;
        Ok(())
    })
    .await
    .unwrap();
    s.close().await;
    drop(s);
    let s = open_at(&loc);
    let a = agent(&s, "a1", 2, &[]).await;
    let job = s
        .claim_keyed(&a, TTL, Some("k".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.spec.run_id, run);
    let again = s.claim_keyed(&a, TTL, Some("k".into())).await.unwrap();
    assert_eq!(again.map(|j| j.job_id), Some(job.job_id));
    let version: i64 = s
        .exec_command(
            |c| Ok(c.query_row("SELECT MAX(version) FROM orch_schema", [], |r| r.get(0))?),
        )
        .await
        .unwrap();
    assert_eq!(version, 8);
    assert_eq!((job.spec.round, job.spec.step_index), (1, Some(0)));
    s.close().await;
}

#[tokio::test]
async fn a_bad_url_or_an_unreachable_server_is_named_in_the_error() {
    let bad = Location::Postgres {
        url: "postgres://orch:hunter2@127.0.0.1:1/nowhere".into(),
        schema: None,
    };
    match SqlStore::open(StoreOptions::at(bad)) {
        Err(e @ StoreError::Open { .. }) => {
            let m = e.to_string();
            assert!(m.contains("cannot connect to the PostgreSQL store at postgres://orch:***@127.0.0.1:1/nowhere"), "{m}");
            assert!(!m.contains("hunter2"), "{m}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a store on port 1"),
    }
    let garbled = Location::Postgres {
        url: "postgres://orch@127.0.0.1:notaport/x".into(),
        schema: None,
    };
    match SqlStore::open(StoreOptions::at(garbled)) {
        Err(e @ StoreError::Open { .. }) => assert!(e.to_string().contains("store URL"), "{e}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a garbled URL"),
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs PostgreSQL: run scripts/test"
)]
async fn migrate_copies_a_sqlite_store_mid_run_and_the_run_finishes_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orch.db");
    // A run half done: one stage succeeded, one leased, one queued.
    let (run, agent_id, held, before) = {
        let s = open_sqlite(&dir);
        let run = s.submit_run(new_run(&wide(3))).await.unwrap().run_id;
        let agent_id = agent(&s, "w1", 4, &[]).await;
        let first = s.claim(&agent_id, TTL).await.unwrap().unwrap();
        complete_ok(&s, &agent_id, &first).await;
        let held = s.claim(&agent_id, TTL).await.unwrap().unwrap();
        let before = s.run_detail(&run).await.unwrap();
        s.close().await;
        (run, agent_id, held, before)
    };
    // A daemon still running on the file is refused.
    {
        let open = open_sqlite(&dir);
        let loc = fresh();
        let Location::Postgres { url, schema } = &loc else {
            unreachable!()
        };
        let e = sqlite_to_postgres(&file, url, schema.as_deref()).unwrap_err();
        assert!(
            e.to_string().contains("in use by another orch daemon"),
            "{e}"
        );
        open.close().await;
    }
    let loc = fresh();
    let Location::Postgres { url, schema } = &loc else {
        unreachable!()
    };
    let report = sqlite_to_postgres(&file, url, schema.as_deref()).unwrap();
    assert_eq!(report.rows("runs"), 1);
    assert_eq!(report.rows("jobs"), 3);
    assert!(report.rows("transitions") > 5, "{report:?}");
    // Into a store that already has runs: refused, nothing added.
    let again = sqlite_to_postgres(&file, url, schema.as_deref()).unwrap_err();
    assert!(
        again.to_string().contains("already holds 1 runs"),
        "{again}"
    );

    let pg = open_at(&loc);
    let after = pg.run_detail(&run).await.unwrap();
    assert_eq!(
        serde_json::to_value(&after.stages).unwrap(),
        serde_json::to_value(&before.stages).unwrap()
    );
    assert_eq!(after.jobs.len(), before.jobs.len());
    // The lease taken on SQLite is honoured on PostgreSQL; new rows get
    // fresh ids past the copied ones.
    pg.complete(
        held.job_id,
        CompleteRequest {
            agent_id: agent_id.clone(),
            lease_token: held.lease_token.clone(),
            outcome: outcome(true, None),
            claim_next: false,
            claim_key: None,
        },
        TTL,
    )
    .await
    .unwrap();
    let last = pg.claim(&agent_id, TTL).await.unwrap().unwrap();
    assert!(last.job_id > held.job_id);
    complete_ok(&pg, &agent_id, &last).await;
    assert_eq!(
        pg.run_detail(&run).await.unwrap().run.state,
        RunState::Succeeded
    );
    let log = pg.transitions_since(0, None, 100_000).await.unwrap();
    let seqs: Vec<i64> = log.iter().map(|t| t.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_log_replays_to_state(&pg, &run).await;
    pg.close().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs PostgreSQL: run scripts/test"
)]
async fn both_databases_have_the_listed_tables_with_the_same_columns() {
    use orchestrator_store::TABLES;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqlStore::open(StoreOptions::new(dir.path().join("orch.db"))).unwrap();
    sqlite.close().await;
    drop(sqlite);
    let lite = rusqlite::Connection::open(dir.path().join("orch.db")).unwrap();
    let loc = fresh();
    let pg = open_at(&loc);
    for t in TABLES {
        let want: Vec<&str> = t.column_names().collect();
        let on_sqlite: Vec<String> = lite
            .prepare(&format!(
                "SELECT name FROM pragma_table_info('{}') ORDER BY cid",
                t.name
            ))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(on_sqlite, want, "table {} on SQLite", t.name);
        let name = t.name;
        let on_postgres: Vec<String> = pg
            .exec_command(move |c| {
                Ok(c.prepare_cached(
                    "SELECT column_name::text FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = ?1
                     ORDER BY ordinal_position",
                )?
                .query_map([name], |r| r.get(0))?
                .collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(on_postgres, want, "table {} on PostgreSQL", t.name);
    }
    pg.close().await;
}
