//! What the store's integration tests share: a store on a temporary file,
//! runs, agents, outcomes, and the check that the transitions log replays
//! to the stored state.
#![allow(dead_code)]

use std::collections::HashMap;

use orchestrator_core::api::{CompleteRequest, RegisterAgent, StepOutcome};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::{AgentId, Entity, RunId, StageState};
use orchestrator_store::{Location, NewRun, SqlStore, StoreOptions};

pub mod outputs;
pub mod scheduling;

pub const TTL: u64 = 30_000;

/// Four stages: `a`, then `b` (two steps) and `c`, then `d`.
pub const DIAMOND: &str = "name: d\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}]\n  - id: b\n    needs: [a]\n    steps: [{commands: [{argv: [x]}]}, {commands: [{argv: [y]}]}]\n  - id: c\n    needs: [a]\n    steps: [{commands: [{argv: [x]}]}]\n  - id: d\n    needs: [b, c]\n    steps: [{commands: [{argv: [x]}]}]\n";

/// Where this run of the suite keeps a test's store: a SQLite file in
/// `dir`, or with `ORCH_TEST_STORE=postgres` a schema of its own in the
/// database at `ORCH_TEST_POSTGRES` (which `scripts/postgres.sh` prints),
/// named after `dir`, so a store opened again in `dir` finds its data.
pub fn location(dir: &tempfile::TempDir) -> Location {
    if std::env::var("ORCH_TEST_STORE").as_deref() != Ok("postgres") {
        return Location::Sqlite(dir.path().join("orch.db"));
    }
    let url = std::env::var("ORCH_TEST_POSTGRES")
        .expect("ORCH_TEST_STORE=postgres needs ORCH_TEST_POSTGRES: run scripts/postgres.sh");
    let name: String = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    Location::Postgres {
        url,
        schema: Some(format!("t_{}", name.to_ascii_lowercase())),
    }
}

/// Whether this run of the suite is on PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("ORCH_TEST_STORE").as_deref() == Ok("postgres")
}

pub fn options(dir: &tempfile::TempDir) -> StoreOptions {
    StoreOptions::at(location(dir))
}

pub fn open(dir: &tempfile::TempDir) -> SqlStore {
    open_with(options(dir))
}

/// A SQLite store in `dir` whatever the suite's backend, for what only a
/// SQLite file has (its lock, its schema version pragma, its migrations).
pub fn open_sqlite(dir: &tempfile::TempDir) -> SqlStore {
    open_with(StoreOptions::new(dir.path().join("orch.db")))
}

fn open_with(mut o: StoreOptions) -> SqlStore {
    // Lost attempts start again at once here; `scheduling_preemption.rs` covers backoff.
    o.rules = orchestrator_core::sched::parse_system_rules("retry: {initial: 0s}\n", "rules.yaml")
        .unwrap();
    SqlStore::open(o).unwrap()
}

pub fn new_run(yaml: &str) -> NewRun {
    NewRun {
        workflow: yaml.to_owned(),
        file: Some("wf.yaml".into()),
        project_dir: "/tmp".into(),
        priority: None,
        policy: Default::default(),
        base_commit: "0123456789abcdef0123456789abcdef01234567".into(),
        tree: Vec::new(),
        actor: orchestrator_core::Actor::user("test"),
        on_failure: None,
        inputs: Default::default(),
    }
}

pub async fn agent(s: &SqlStore, name: &str, slots: u32, labels: &[&str]) -> AgentId {
    s.register_agent(
        RegisterAgent {
            name: name.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            slots,
            hostname: None,
            ..Default::default()
        },
        TTL,
        10_000,
    )
    .await
    .unwrap()
    .agent_id
}

pub fn outcome(success: bool, class: Option<ErrorClass>) -> StepOutcome {
    StepOutcome {
        timed_out: false,
        success,
        exit_codes: vec![Some(if success { 0 } else { 1 })],
        error: (!success).then(|| "boom".to_owned()),
        error_class: class,
        bundle: "b".into(),
        duration_ms: 1,
        checkpoint: None,
        until_met: None,
        questions: Vec::new(),
        sandbox: None,
        log_tail: None,
        outputs: Default::default(),
    }
}

pub async fn complete_ok(
    s: &SqlStore,
    agent_id: &AgentId,
    job: &orchestrator_core::api::ClaimedJob,
) {
    s.complete(
        job.job_id,
        CompleteRequest {
            agent_id: agent_id.clone(),
            lease_token: job.lease_token.clone(),
            outcome: outcome(true, None),
            claim_next: false,
            claim_key: None,
        },
        TTL,
    )
    .await
    .unwrap();
}

pub fn stage_states(d: &orchestrator_core::api::RunDetail) -> HashMap<String, StageState> {
    d.stages
        .iter()
        .map(|s| (s.stage_id.clone(), s.state))
        .collect()
}

/// Replays the transitions log: the last `to` of every entity must be its stored state.
pub async fn assert_log_replays_to_state(s: &SqlStore, run_id: &RunId) {
    let log = s
        .transitions_since(0, Some(run_id.clone()), 1_000_000)
        .await
        .unwrap();
    let mut last: HashMap<(Entity, String), orchestrator_core::State> = HashMap::new();
    let mut prev_seq = 0;
    for t in &log {
        assert!(t.seq > prev_seq, "seq strictly increasing");
        prev_seq = t.seq;
        if let Some(from) = &t.from {
            if let Some(before) = last.get(&(t.entity, t.entity_id.clone())) {
                assert_eq!(
                    before, from,
                    "transition {t:?} starts where the previous one ended"
                );
            }
        }
        last.insert((t.entity, t.entity_id.clone()), t.to);
    }
    let d = s.run_detail(run_id).await.unwrap();
    assert_eq!(
        last[&(Entity::Run, run_id.to_string())],
        d.run.state.as_str()
    );
    for st in &d.stages {
        assert_eq!(
            last[&(Entity::Stage, format!("{run_id}/{}", st.stage_id))],
            st.state.as_str(),
            "stage {}",
            st.stage_id
        );
    }
    for j in &d.jobs {
        assert_eq!(
            last[&(Entity::Job, j.id.to_string())],
            j.state.as_str(),
            "job {}",
            j.id
        );
    }
}
