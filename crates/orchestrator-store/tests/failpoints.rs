//! A batch is all or nothing, proven by failing each of its SQL statements
//! in turn (feature `failpoints`).
//!
//! The batch under test is realistic: two completions that move stages on
//! and release dependents, a submission, and a claim, committed together with
//! the scheduler pass that queues the released stages. For every statement k
//! of that batch, one sweep makes statement k fail, and another kills the
//! process right after statement k. Whatever k is, the store must hold either
//! the content from before the batch, or that content with only the failed
//! command missing (its savepoint), never a half-applied command; the
//! transitions log must replay to the stored states; and the store must
//! still take work afterwards.

mod common;

use orchestrator_core::{AgentId, JobId, RunId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_core::api::{ClaimedJob, CompleteRequest, RegisterAgent};
use orchestrator_store::{FaultMode, NewRun, SqlStore, StoreOptions};

const TTL: u64 = 30_000;
const DIAMOND: &str = "name: d\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}]\n  - id: b\n    needs: [a]\n    steps: [{commands: [{argv: [x]}]}]\n  - id: c\n    needs: [a]\n    steps: [{commands: [{argv: [x]}]}]\n  - id: d\n    needs: [b, c]\n    steps: [{commands: [{argv: [x]}]}]\n";
const CHAIN: &str = "name: c\nstages:\n  - id: one\n    steps: [{commands: [{argv: [x]}]}]\n  - id: two\n    needs: [one]\n    steps: [{commands: [{argv: [y]}]}]\n";
const SINGLE: &str = "name: s\nstages:\n  - id: only\n    steps: [{commands: [{argv: [x]}]}]\n";
/// Set in the child process of the crash sweep: the database, the point, the fixture.
const CHILD_ENV: &str = "ORCH_FAILPOINT_CHILD";
/// The sweeps take turns: a child forked by one briefly holds copies of the
/// other's open files, its store lock among them, until it execs.
static SWEEPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn new_run(yaml: &str, project: &str) -> NewRun {
    NewRun {
        project_dir: project.into(),
        ..common::new_run(yaml)
    }
}

/// The pre-batch database and what the batch needs to know about it.
#[derive(Clone)]
struct Fixture {
    db: PathBuf,
    agent: AgentId,
    /// The leased jobs the batch completes: stage `a` of the diamond, stage `one` of the chain.
    done: [(i64, String); 2],
    /// The queued job the batch's claim takes.
    queued: i64,
}

impl Fixture {
    fn encode(&self) -> String {
        let [(a, ta), (o, to)] = &self.done;
        format!(
            "{}\n{}\n{a}\n{ta}\n{o}\n{to}\n{}",
            self.db.display(),
            self.agent,
            self.queued
        )
    }

    fn decode(s: &str) -> Fixture {
        let f: Vec<&str> = s.split('\n').collect();
        Fixture {
            db: f[0].into(),
            agent: f[1].into(),
            done: [
                (f[2].parse().unwrap(), f[3].into()),
                (f[4].parse().unwrap(), f[5].into()),
            ],
            queued: f[6].parse().unwrap(),
        }
    }
}

fn open(db: &Path) -> Arc<SqlStore> {
    Arc::new(SqlStore::open(StoreOptions::new(db)).unwrap())
}

async fn fixture(dir: &Path) -> Fixture {
    let db = dir.join("template.db");
    let s = open(&db);
    let reg = RegisterAgent {
        name: "a".into(),
        slots: 16,
        ..Default::default()
    };
    let agent = s.register_agent(reg, TTL, 10_000).await.unwrap().agent_id;
    let diamond = s.submit_run(new_run(DIAMOND, "/p")).await.unwrap();
    s.submit_run(new_run(CHAIN, "/q")).await.unwrap();
    let mut leased: Vec<ClaimedJob> = Vec::new();
    for _ in 0..2 {
        leased.push(s.claim(&agent, TTL).await.unwrap().unwrap());
    }
    leased.sort_by_key(|j| j.spec.run_id != diamond.run_id);
    s.submit_run(new_run(SINGLE, "/r")).await.unwrap();
    let done = [0, 1].map(|i| (leased[i].job_id.get(), leased[i].lease_token.clone()));
    s.close().await;
    let queued = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT id FROM jobs WHERE state = 'queued'", [], |r| {
            r.get(0)
        })
        .unwrap();
    Fixture {
        db,
        agent,
        done,
        queued,
    }
}

/// A fresh copy of the pre-batch database.
fn copy(fx: &Fixture, dir: &Path) -> PathBuf {
    let db = dir.join("orch.db");
    std::fs::copy(&fx.db, &db).unwrap();
    db
}

async fn wait_queued(s: &SqlStore, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.queued_commands() < n {
        assert!(Instant::now() < deadline, "commands never queued");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What each command of the batch answered.
#[derive(Debug)]
struct Outcome {
    completed: [bool; 2],
    submitted: Option<RunId>,
    claimed: Option<JobId>,
    errors: usize,
    /// What the first failed command said, for the failure report.
    first_error: Option<String>,
}

/// Runs the batch as one transaction, with `k` armed in `mode`.
async fn run_batch(s: &Arc<SqlStore>, fx: &Fixture, k: u64, mode: FaultMode) -> Outcome {
    // Hold the writer until the whole batch is queued behind it.
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let (running, started) = tokio::sync::oneshot::channel::<()>();
    let held = {
        let s = s.clone();
        tokio::spawn(async move {
            s.exec_command(move |_| {
                let _ = running.send(());
                let _ = gate.recv();
                Ok(())
            })
            .await
        })
    };
    started.await.unwrap();
    let mut completions = Vec::new();
    for (job, token) in fx.done.clone() {
        let (store, agent) = (s.clone(), fx.agent.clone());
        completions.push(tokio::spawn(async move {
            let req = CompleteRequest {
                agent_id: agent,
                lease_token: token,
                outcome: common::outcome(true, None),
                claim_next: false,
                claim_key: None,
            };
            store.complete(job.into(), req, TTL).await
        }));
        wait_queued(s, completions.len()).await;
    }
    let submit = {
        let s = s.clone();
        tokio::spawn(async move { s.submit_run(new_run(SINGLE, "/s")).await })
    };
    wait_queued(s, 3).await;
    let claim = {
        let (s, agent) = (s.clone(), fx.agent.clone());
        tokio::spawn(async move { s.claim(&agent, TTL).await })
    };
    wait_queued(s, 4).await;
    s.arm_failpoint(k, mode);
    release.send(()).unwrap();
    held.await.unwrap().unwrap();
    let mut errors = 0;
    let mut first_error = None;
    let mut note = |e: String| {
        first_error.get_or_insert(e);
    };
    let mut completed = [false; 2];
    for (i, c) in completions.into_iter().enumerate() {
        match c.await.unwrap() {
            Ok(_) => completed[i] = true,
            Err(e) => note(e.to_string()),
        }
        errors += usize::from(!completed[i]);
    }
    let submitted = match submit.await.unwrap() {
        Ok(r) => Some(r.run_id),
        Err(e) => {
            note(e.to_string());
            None
        }
    };
    errors += usize::from(submitted.is_none());
    let claimed = match claim.await.unwrap() {
        Ok(job) => Some(job.expect("the batch's claim finds the queued job").job_id),
        Err(e) => {
            note(e.to_string());
            None
        }
    };
    errors += usize::from(claimed.is_none());
    Outcome {
        completed,
        submitted,
        claimed,
        errors,
        first_error,
    }
}

type Dump = BTreeMap<String, Vec<String>>;

/// Every table, every row, in a fixed order.
fn dump(c: &rusqlite::Connection) -> Dump {
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let mut out = Dump::new();
    for t in tables {
        let n = c
            .prepare(&format!("SELECT * FROM \"{t}\""))
            .unwrap()
            .column_count();
        let order: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
        let sql = format!("SELECT * FROM \"{t}\" ORDER BY {}", order.join(", "));
        let mut st = c.prepare(&sql).unwrap();
        let rows = st
            .query_map([], |r| {
                let vals: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get::<_, rusqlite::types::Value>(i).unwrap()))
                    .collect();
                Ok(vals.join("|"))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        out.insert(t, rows);
    }
    out
}

fn one<T: rusqlite::types::FromSql>(
    c: &rusqlite::Connection,
    sql: &str,
    p: impl rusqlite::Params,
) -> T {
    c.query_row(sql, p, |r| r.get(0)).unwrap()
}

/// The last transition of every run, stage, job and lease ends where its
/// stored state is, every transition starts where the one before it ended,
/// and every stored entity has a history.
fn assert_log_replays(c: &rusqlite::Connection) {
    let mut last: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut st = c
        .prepare("SELECT entity, entity_id, from_state, to_state FROM transitions ORDER BY seq")
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get(3)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (entity, id, from, to) = row.unwrap();
        let key = (entity, id);
        if let (Some(before), Some(from)) = (last.get(&key), from) {
            assert_eq!(before, &from, "{key:?} moves on from where it was");
        }
        last.insert(key, to);
    }
    for (entity, sql) in [
        ("run", "SELECT id, state FROM runs"),
        (
            "stage",
            "SELECT run_id || '/' || stage_id, state FROM stage_runs",
        ),
        ("job", "SELECT CAST(id AS TEXT), state FROM jobs"),
        ("lease", "SELECT CAST(id AS TEXT), state FROM leases"),
    ] {
        let mut st = c.prepare(sql).unwrap();
        let stored = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .unwrap();
        for row in stored {
            let (id, state) = row.unwrap();
            assert_eq!(
                last.get(&(entity.to_owned(), id.clone())),
                Some(&state),
                "{entity} {id}"
            );
        }
    }
    // A pending stage still waits exactly for the stages it needs that have not succeeded.
    let wrong: i64 = one(
        c,
        "SELECT COUNT(*) FROM stage_runs s WHERE s.state = 'pending' AND s.unmet <>
           (SELECT COUNT(*) FROM requires q JOIN stage_runs n ON n.run_id = q.run_id AND n.stage_id = q.required
            WHERE q.run_id = s.run_id AND q.stage_id = s.stage_id AND n.state <> 'succeeded')",
        [],
    );
    assert_eq!(wrong, 0, "unmet counts match the needs");
}

/// Each command's writes are there exactly when it said it succeeded.
fn assert_effects(c: &rusqlite::Connection, fx: &Fixture, pre: &Dump, o: &Outcome) {
    let job_state = |id: i64| one::<String>(c, "SELECT state FROM jobs WHERE id = ?1", [id]);
    for (i, (job, _)) in fx.done.iter().enumerate() {
        let want = if o.completed[i] {
            "succeeded"
        } else {
            "leased"
        };
        assert_eq!(job_state(*job), want, "completed job {job}, {o:?}");
    }
    let runs: i64 = one(c, "SELECT COUNT(*) FROM runs", []);
    assert_eq!(
        runs as usize,
        pre["runs"].len() + usize::from(o.submitted.is_some())
    );
    assert_eq!(
        o.claimed.is_some(),
        job_state(fx.queued) == "leased",
        "{o:?}"
    );
    if let Some(job) = o.claimed {
        assert_eq!(job, fx.queued);
    }
    // The stages the batch made runnable are queued, or (one of them at
    // most, when the fault hit the scheduler pass) failed as a daemon fault.
    let mut expect: Vec<(String, &str)> = Vec::new();
    let run_of = |job: i64| one::<String>(c, "SELECT run_id FROM jobs WHERE id = ?1", [job]);
    if o.completed[0] {
        let r = run_of(fx.done[0].0);
        expect.push((r.clone(), "b"));
        expect.push((r, "c"));
    }
    if o.completed[1] {
        expect.push((run_of(fx.done[1].0), "two"));
    }
    if let Some(r) = &o.submitted {
        expect.push((r.to_string(), "only"));
    }
    let mut faults = 0;
    for (run, stage) in expect {
        let state: String = one(
            c,
            "SELECT state FROM stage_runs WHERE run_id = ?1 AND stage_id = ?2",
            rusqlite::params![run, stage],
        );
        if state == "failed" {
            let why: String = one(
                c,
                "SELECT reason FROM transitions WHERE entity_id = ?1 AND to_state = 'failed'",
                [format!("{run}/{stage}")],
            );
            assert!(why.contains("daemon-side fault (class infra)"), "{why}");
            faults += 1;
        } else {
            assert_eq!(state, "queued", "{run}/{stage}");
            let jobs: i64 = one(
                c,
                "SELECT COUNT(*) FROM jobs WHERE run_id = ?1 AND stage_id = ?2 AND state = 'queued'",
                rusqlite::params![run, stage],
            );
            assert_eq!(jobs, 1, "{run}/{stage}");
        }
    }
    assert!(
        faults <= usize::from(o.errors == 0),
        "{faults} faulted stages, {o:?}"
    );
}

/// The store takes and commits new work.
async fn assert_still_works(db: &Path) {
    let s = open(db);
    let r = s.submit_run(new_run(SINGLE, "/later")).await.unwrap();
    assert_eq!(
        s.run_detail(&r.run_id).await.unwrap().stages[0].state,
        orchestrator_core::StageState::Queued
    );
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_any_statement_of_a_batch_rolls_back_the_batch_or_only_its_command() {
    let _turn = SWEEPS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture(dir.path()).await;
    let pre = dump(&rusqlite::Connection::open(&fx.db).unwrap());
    let (mut whole, mut single, mut scheduler) = (0, 0, 0);
    let mut k = 1;
    let statements = loop {
        let case = tempfile::tempdir().unwrap();
        let db = copy(&fx, case.path());
        let s = open(&db);
        let o = run_batch(&s, &fx, k, FaultMode::Fail).await;
        let report = s.failpoint_report();
        s.close().await;
        drop(s);
        let c = rusqlite::Connection::open(&db).unwrap();
        assert_log_replays(&c);
        assert_effects(&c, &fx, &pre, &o);
        if !report.fired {
            assert_eq!(
                o.errors, 0,
                "k = {k}: the point did not fire, yet {} commands failed; the first said: {:?}; the batch: {:?}",
                o.errors, o.first_error, report.error
            );
            if k > report.statements {
                break report.statements;
            }
            // Only a statement that gives the interrupt no chance to land
            // (COMMIT does its work in one step) may let the point pass.
            assert_eq!(k, report.statements, "k = {k}: the point was not delivered");
        } else if o.errors == 4 {
            assert_eq!(
                dump(&c),
                pre,
                "k = {k}: a failed batch leaves nothing behind"
            );
            whole += 1;
        } else {
            assert!(
                o.errors <= 1,
                "k = {k}: one command at most fails alone, {o:?}"
            );
            assert_ne!(dump(&c), pre, "k = {k}");
            if o.errors == 1 {
                single += 1;
            } else {
                scheduler += 1;
            }
        }
        assert_still_works(&db).await;
        k += 1;
    };
    eprintln!(
        "{statements} statements swept: {whole} rolled the batch back, {single} only their command, {scheduler} only one stage of the scheduler pass"
    );
    assert!(
        statements > 50,
        "the batch is realistic: {statements} statements"
    );
    assert!(whole > 0 && single > 0, "both kinds of rollback were seen");
}

/// The child side of the crash sweep: a no-op unless the parent set `CHILD_ENV`.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (k, fx) = spec.split_once('\n').unwrap();
    let (k, fx) = (k.parse().unwrap(), Fixture::decode(fx));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = open(&fx.db);
        run_batch(&s, &fx, k, FaultMode::Abort).await;
        s.close().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_any_statement_of_a_batch_leaves_all_of_it_or_none() {
    let _turn = SWEEPS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture(dir.path()).await;
    let pre = dump(&rusqlite::Connection::open(&fx.db).unwrap());
    let statements = {
        let case = tempfile::tempdir().unwrap();
        let s = open(&copy(&fx, case.path()));
        let o = run_batch(&s, &fx, u64::MAX, FaultMode::Fail).await;
        assert_eq!(o.errors, 0);
        s.failpoint_report().statements
    };
    let exe = std::env::current_exe().unwrap();
    let (mut none, mut all) = (0, 0);
    for k in 1..=statements {
        let case = tempfile::tempdir().unwrap();
        let db = copy(&fx, case.path());
        let child = Fixture {
            db: db.clone(),
            agent: fx.agent.clone(),
            done: fx.done.clone(),
            queued: fx.queued,
        };
        let out = std::process::Command::new(&exe)
            .args(["--exact", "crash_child", "--test-threads=1", "--nocapture"])
            .env(CHILD_ENV, format!("{k}\n{}", child.encode()))
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "k = {k}: the child was to abort: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let c = rusqlite::Connection::open(&db).unwrap();
        let check: String = one(&c, "PRAGMA integrity_check", []);
        assert_eq!(check, "ok", "k = {k}");
        let now = dump(&c);
        if now == pre {
            none += 1;
        } else {
            // Not the content from before: then all of the batch, to the last command.
            let submitted = c
                .query_row("SELECT id FROM runs WHERE project_dir = '/s'", [], |r| {
                    r.get::<_, String>(0).map(RunId::from)
                })
                .ok();
            let o = Outcome {
                completed: [true, true],
                submitted,
                claimed: Some(fx.queued.into()),
                errors: 0,
                first_error: None,
            };
            assert!(o.submitted.is_some(), "k = {k}: a mix of before and after");
            assert_effects(&c, &fx, &pre, &o);
            all += 1;
        }
        assert_log_replays(&c);
        drop(c);
        assert_still_works(&db).await;
    }
    eprintln!("{statements} crash points: {none} left the batch out, {all} kept all of it");
    assert!(none > 0 && all > 0, "both sides of the commit were seen");
}
