//! Snapshots of the whole store after scripted scenarios: every row of the
//! run graph, the leases and the transitions log, in a canonical text (ids
//! renamed in order of appearance, times relative to a manual clock), so a
//! change to what the store writes shows as a reviewed diff of
//! `tests/snapshots/`. Run `cargo insta review` (or set `INSTA_UPDATE=always`)
//! to accept a deliberate change.

mod common;

use orchestrator_core::AgentId;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use common::*;
use orchestrator_core::api::{ClaimedJob, CompleteRequest};
use orchestrator_core::error::ErrorClass;
use orchestrator_host::clock::ManualClock;
use orchestrator_store::{SqlStore, Value};

const T0: i64 = 1_700_000_000_000;

/// Renames ids (runs, agents) in order of first appearance, so a dump does
/// not depend on random ids.
#[derive(Default)]
struct Names {
    seen: HashMap<String, String>,
}

impl Names {
    fn name(&mut self, prefix: &str, id: &str) -> String {
        let n = self.seen.values().filter(|v| v.starts_with(prefix)).count() + 1;
        self.seen
            .entry(id.to_owned())
            .or_insert_with(|| format!("{prefix}{n}"))
            .clone()
    }

    /// `text` with every id seen so far replaced by its name.
    fn scrub(&self, text: &str) -> String {
        let mut ids: Vec<(&String, &String)> = self.seen.iter().collect();
        // Longest first, so no id is replaced inside a longer one.
        ids.sort_by_key(|(id, _)| std::cmp::Reverse(id.len()));
        ids.into_iter().fold(text.to_owned(), |t, (id, name)| {
            t.replace(id.as_str(), name)
        })
    }
}

type Rows = Vec<Vec<Option<String>>>;

fn text_of(v: Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Text(t) => t,
        Value::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

/// Every row of `sql`, each column as text.
async fn rows(s: &SqlStore, sql: &'static str, columns: usize) -> Rows {
    s.exec_command(move |c| {
        let mut st = c.prepare_cached(sql)?;
        let rows = st
            .query_map((), |r| {
                (0..columns)
                    .map(|i| r.get::<_, Option<Value>>(i).map(|v| v.map(text_of)))
                    .collect()
            })?
            .collect::<Result<Rows, _>>()?;
        Ok(rows)
    })
    .await
    .unwrap()
}

/// How a column is shown: its value, `label=value`, or a time relative to
/// the scenario's start.
#[derive(Clone, Copy)]
enum Col {
    Plain,
    Named(&'static str),
    At(&'static str),
}

/// One table's rows in the dump.
struct Section {
    title: &'static str,
    sql: &'static str,
    cols: &'static [Col],
}

const SECTIONS: &[Section] = {
    use Col::{At, Named, Plain};
    &[
        Section {
            title: "runs",
            sql: "SELECT id, workflow, state, priority, stages_succeeded, stages_ended, stages_total, created_at, ended_at FROM runs ORDER BY created_at, id",
            cols: &[Plain, Plain, Plain, Named("prio"), Named("succeeded"), Named("ended"), Named("of"), At("at"), At("ended")],
        },
        Section {
            title: "agents",
            sql: "SELECT id, name FROM agents ORDER BY name",
            cols: &[Plain, Plain],
        },
        Section {
            title: "stages",
            sql: "SELECT run_id || '/' || stage_id, state, unmet, step, attempt, started_at, ended_at FROM stage_runs ORDER BY run_id, ord",
            cols: &[Plain, Plain, Named("unmet"), Named("step"), Named("attempt"), At("started"), At("ended")],
        },
        Section {
            title: "jobs",
            sql: "SELECT id, run_id || '/' || stage_id, step, attempt, round, round_reason, state, agent_id, error_class FROM jobs ORDER BY id",
            cols: &[Named("job"), Plain, Named("step"), Named("attempt"), Named("round"), Plain, Plain, Named("agent"), Named("class")],
        },
        Section {
            title: "leases",
            sql: "SELECT id, job_id, agent_id, state, expires_at FROM leases ORDER BY id",
            cols: &[Named("lease"), Named("job"), Named("agent"), Plain, At("expires")],
        },
        Section {
            title: "transitions",
            sql: "SELECT seq, entity, entity_id, COALESCE(from_state, '-') || ' -> ' || to_state, actor, at, reason FROM transitions ORDER BY seq",
            cols: &[Plain, Plain, Plain, Plain, Named("by"), At("at"), Named("why")],
        },
    ]
};

/// The store as canonical text.
async fn dump(s: &SqlStore) -> String {
    let mut names = Names::default();
    for (prefix, sql) in [
        ("R", "SELECT id FROM runs ORDER BY created_at, id"),
        ("A", "SELECT id FROM agents ORDER BY name"),
    ] {
        for r in rows(s, sql, 1).await {
            names.name(prefix, r[0].as_deref().unwrap_or(""));
        }
    }
    let mut out = String::new();
    for sec in SECTIONS {
        writeln!(out, "{}:", sec.title).unwrap();
        for r in rows(s, sec.sql, sec.cols.len()).await {
            let cells: Vec<String> = sec
                .cols
                .iter()
                .zip(&r)
                .map(|(col, v)| {
                    let v = v.clone().unwrap_or_else(|| "-".to_owned());
                    match col {
                        Col::Plain => v,
                        Col::Named(l) => format!("{l}={v}"),
                        Col::At(l) => match v.parse::<i64>() {
                            Ok(t) => format!("{l}=+{}", t - T0),
                            Err(_) => format!("{l}=-"),
                        },
                    }
                })
                .collect();
            writeln!(out, "  {}", cells.join(" ")).unwrap();
        }
    }
    names.scrub(&out)
}

async fn store(dir: &tempfile::TempDir, clock: &ManualClock) -> SqlStore {
    // SQLite alone: PostgreSQL numbers its identities in steps of its own.
    let mut o = orchestrator_store::StoreOptions::new(dir.path().join("orch.db"))
        .with_clock(Arc::new(clock.clone()));
    o.rules = orchestrator_core::sched::parse_system_rules("retry: {initial: 0s}\n", "rules.yaml")
        .unwrap();
    SqlStore::open(o).unwrap()
}

async fn finish(
    s: &SqlStore,
    agent: &AgentId,
    job: &ClaimedJob,
    success: bool,
    class: Option<ErrorClass>,
) {
    s.complete(
        job.job_id,
        CompleteRequest {
            agent_id: agent.into(),
            lease_token: job.lease_token.clone(),
            outcome: outcome(success, class),
            claim_next: false,
            claim_key: None,
        },
        TTL,
    )
    .await
    .unwrap();
}

const DIAMOND: &str = "name: diamond\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}]\n  - id: b\n    needs: [a]\n    steps: [{commands: [{argv: [x]}]}, {commands: [{argv: [y]}]}]\n  - id: c\n    needs: [a]\n    steps: [{commands: [{argv: [x]}]}]\n  - id: d\n    needs: [b, c]\n    steps: [{commands: [{argv: [x]}]}]\n";

#[tokio::test]
async fn a_diamond_run_to_success() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = store(&dir, &clock).await;
    s.submit_run(new_run(DIAMOND)).await.unwrap();
    let a = agent(&s, "a1", 1, &[]).await;
    while let Some(job) = s.claim(&a, TTL).await.unwrap() {
        clock.advance_ms(100);
        finish(&s, &a, &job, true, None).await;
        clock.advance_ms(10);
    }
    insta::assert_snapshot!(dump(&s).await);
    s.close().await;
}

#[tokio::test]
async fn a_lost_attempt_then_a_failed_step_waits_for_a_decision() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = store(&dir, &clock).await;
    s.submit_run(new_run(
        "name: flaky\nstages:\n  - id: build\n    retry: {attempts: 2}\n    steps: [{commands: [{argv: [x]}]}, {commands: [{argv: [y]}]}]\n",
    ))
    .await
    .unwrap();
    let a = agent(&s, "a1", 1, &[]).await;
    // The first attempt's lease runs out: infra, tried again from step 0.
    let first = s.claim(&a, TTL).await.unwrap().expect("step 0");
    clock.advance_ms(i64::try_from(TTL).unwrap());
    assert_eq!(s.expire_leases(clock_now(&clock)).await.unwrap(), 1);
    // The second attempt's step 0 succeeds; step 1 fails its task, which
    // the workflow does not retry: it waits for a human.
    let again = s.claim(&a, TTL).await.unwrap().expect("step 0 again");
    assert_ne!(again.job_id, first.job_id);
    clock.advance_ms(50);
    finish(&s, &a, &again, true, None).await;
    let step1 = s.claim(&a, TTL).await.unwrap().expect("step 1");
    clock.advance_ms(50);
    finish(&s, &a, &step1, false, Some(ErrorClass::Task)).await;
    assert!(s.claim(&a, TTL).await.unwrap().is_none());
    insta::assert_snapshot!(dump(&s).await);
    s.close().await;
}

fn clock_now(c: &ManualClock) -> i64 {
    orchestrator_host::clock::Clock::now_ms(c)
}
