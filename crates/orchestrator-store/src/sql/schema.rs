//! The SQLite schema's versions, numbered by `PRAGMA user_version`. A new
//! database is created at the newest version from `TABLES`; one an older
//! orch made takes the migrations after its version, each once, in its own
//! transaction. A newer database than this binary knows is refused rather
//! than guessed at.

use rusqlite::Connection;

use super::ddl::{create_all, Dialect};
use super::tables::TABLES;
use crate::{Result, StoreError};

/// Every version's migration from the one before, from an empty database.
/// History: what the databases made by each orch hold, so never edited. A
/// change to the schema is a new migration here, one in `schema_pg.rs` and
/// the same change in `TABLES`; the schema tests check that running them
/// all gives what `TABLES` creates.
const MIGRATIONS: &[&str] = &[
    // 1: the walking skeleton.
    r#"
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    project_dir TEXT NOT NULL,
    spec TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    stages_total INTEGER NOT NULL,
    stages_succeeded INTEGER NOT NULL DEFAULT 0,
    stages_ended INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    ended_at INTEGER
);
CREATE INDEX runs_created ON runs(created_at);

CREATE TABLE stage_runs (
    run_id TEXT NOT NULL REFERENCES runs(id),
    stage_id TEXT NOT NULL,
    ord INTEGER NOT NULL,
    state TEXT NOT NULL,
    unmet INTEGER NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    steps_total INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    started_at INTEGER,
    ended_at INTEGER,
    PRIMARY KEY (run_id, stage_id)
) WITHOUT ROWID;
CREATE INDEX stage_runs_runnable ON stage_runs(state, unmet);

CREATE TABLE requires (
    run_id TEXT NOT NULL,
    stage_id TEXT NOT NULL,
    required TEXT NOT NULL,
    PRIMARY KEY (run_id, stage_id, required)
) WITHOUT ROWID;
CREATE INDEX requires_required ON requires(run_id, required);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    stage_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    labels TEXT NOT NULL,
    payload TEXT NOT NULL,
    agent_id TEXT,
    lease_id INTEGER,
    exit_codes TEXT,
    error TEXT,
    error_class TEXT,
    bundle TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    ended_at INTEGER
);
CREATE INDEX jobs_queue ON jobs(priority DESC, id) WHERE state = 'queued';
CREATE INDEX jobs_stage ON jobs(run_id, stage_id);

CREATE TABLE leases (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    agent_id TEXT NOT NULL,
    token TEXT NOT NULL,
    state TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX leases_active ON leases(expires_at) WHERE state = 'active';
CREATE INDEX leases_agent ON leases(agent_id, state);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    slots INTEGER NOT NULL,
    hostname TEXT,
    registered_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
);

CREATE TABLE transitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    run_id TEXT,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX transitions_run ON transitions(run_id, seq);
"#,
    // 2: the runnable index holds only runnable stages, so counting down a
    // stage's unmet needs no longer moves an index entry on every completion;
    // `requires` is keyed the way it is read (the dependents of a stage), so
    // it needs no second index.
    r#"
DROP INDEX stage_runs_runnable;
CREATE INDEX stage_runs_runnable ON stage_runs(run_id, ord) WHERE state = 'pending' AND unmet = 0;
CREATE TABLE requires_by_required (
    run_id TEXT NOT NULL,
    required TEXT NOT NULL,
    stage_id TEXT NOT NULL,
    PRIMARY KEY (run_id, required, stage_id)
) WITHOUT ROWID;
INSERT INTO requires_by_required (run_id, required, stage_id)
    SELECT run_id, required, stage_id FROM requires;
DROP TABLE requires;
ALTER TABLE requires_by_required RENAME TO requires;
"#,
    // 3: git-backed runs and humans: each run's base commit, checkpoints with
    // their artifacts, questions, and what a stage holds while it waits for
    // a human (the step to resume at, what to hand that step).
    r#"
ALTER TABLE runs ADD COLUMN base_commit TEXT;
ALTER TABLE stage_runs ADD COLUMN resume_step INTEGER;
ALTER TABLE stage_runs ADD COLUMN waiting_since INTEGER;
ALTER TABLE stage_runs ADD COLUMN handoff TEXT;
CREATE TABLE checkpoints (
    run_id TEXT NOT NULL REFERENCES runs(id),
    seq INTEGER NOT NULL,
    stage_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    job_id INTEGER NOT NULL,
    commit_sha TEXT NOT NULL,
    artifacts TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE questions (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id),
    stage_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    job_id INTEGER,
    question TEXT NOT NULL,
    choices TEXT NOT NULL,
    state TEXT NOT NULL,
    asked_at INTEGER NOT NULL,
    answer TEXT,
    answered_by TEXT,
    answered_at INTEGER
);
CREATE INDEX questions_run ON questions(run_id, id);
CREATE INDEX questions_open ON questions(asked_at) WHERE state = 'open';
CREATE INDEX stage_runs_waiting ON stage_runs(waiting_since) WHERE waiting_since IS NOT NULL;
"#,
    // 4: scheduling. Runs keep their effective priority's story, their
    // limits and their fair-queue clock; stages their pinned agent, why a
    // limit holds them, and what they yielded to; jobs their queue key,
    // resource shape and grant; agents their memory and GPUs. A shape is a
    // distinct (needs, pinned agent, high priority) triple: claim looks at
    // the head of each shape's queue that fits, so dispatch is O(log n).
    r#"
ALTER TABLE runs ADD COLUMN suggested_priority INTEGER;
ALTER TABLE runs ADD COLUMN priority_why TEXT;
ALTER TABLE runs ADD COLUMN limits TEXT;
ALTER TABLE runs ADD COLUMN clock INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN hold TEXT;
CREATE INDEX runs_project ON runs(project_dir, state);
ALTER TABLE stage_runs ADD COLUMN agent_id TEXT;
ALTER TABLE stage_runs ADD COLUMN hold TEXT;
ALTER TABLE stage_runs ADD COLUMN yield_for TEXT;
ALTER TABLE stage_runs ADD COLUMN yield_job INTEGER;
ALTER TABLE stage_runs ADD COLUMN reserved TEXT;
ALTER TABLE stage_runs ADD COLUMN placement TEXT;
CREATE INDEX stage_runs_suspended ON stage_runs(agent_id) WHERE state = 'suspended';
CREATE INDEX stage_runs_yield_job ON stage_runs(yield_job) WHERE yield_job IS NOT NULL;
ALTER TABLE jobs ADD COLUMN queue_key INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN shape INTEGER;
ALTER TABLE jobs ADD COLUMN granted TEXT;
CREATE INDEX jobs_shape_queue ON jobs(shape, queue_key, id) WHERE state = 'queued';
CREATE INDEX jobs_live ON jobs(priority) WHERE state = 'leased';
CREATE TABLE shapes (
    id INTEGER PRIMARY KEY,
    needs TEXT NOT NULL,
    pin TEXT NOT NULL,
    high INTEGER NOT NULL,
    UNIQUE (pin, needs, high)
);
ALTER TABLE agents ADD COLUMN memory_mb INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN gpus TEXT NOT NULL DEFAULT '[]';
"#,
    // 5: a run's workflow (tens of KiB for a wide DAG, on overflow pages)
    // moves out of `runs`: every column stored after it was read through
    // those pages, and the hot path reads a run's state and priority on
    // every claim and completion.
    r#"
CREATE TABLE run_specs (
    run_id TEXT PRIMARY KEY REFERENCES runs(id),
    spec TEXT NOT NULL
);
INSERT INTO run_specs (run_id, spec) SELECT id, spec FROM runs;
ALTER TABLE runs DROP COLUMN spec;
"#,
    // 6: a stage that lost an attempt waits out its backoff until `retry_at`.
    r#"
ALTER TABLE stage_runs ADD COLUMN retry_at INTEGER;
CREATE INDEX stage_runs_retry ON stage_runs(retry_at) WHERE state = 'retrying';
"#,
    // 7: the sandbox a job's commands ran in, as its agent reported it.
    r#"
ALTER TABLE jobs ADD COLUMN sandbox TEXT;
"#,
    // 8: model calls through the gateway, per job and model; a run's and a
    // stage's usage is their sum. Run and stage are copied from the job so
    // that reading a run's usage needs no join.
    r#"
CREATE TABLE model_usage (
    job_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    run_id TEXT NOT NULL,
    stage_id TEXT NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    queue_wait_ms INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    max_queue_wait_ms INTEGER NOT NULL,
    max_latency_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, model)
) WITHOUT ROWID;
CREATE INDEX model_usage_run ON model_usage(run_id);
"#,
    // 9: the key the agent named its claim with, so a claim asked again
    // after a lost answer gets back the lease the first one granted.
    r#"
ALTER TABLE leases ADD COLUMN claim_key TEXT;
"#,
    // 10: one-time credentials spent (action links, dashboard tickets,
    // logged-out sessions), kept until they would have expired anyway.
    r#"
CREATE TABLE spent_credentials (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    spent_at INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE INDEX spent_credentials_expiry ON spent_credentials(expires_at);
"#,
    // 11: one credential per agent name, kept as the SHA-256 of its token.
    r#"
CREATE TABLE agent_tokens (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
"#,
    // 12: questions a running step waits for inside (`orch ask --wait`):
    // the key its agent named the ask with, so that asking again after a
    // lost answer finds the same question. NULL for every other question.
    r#"
ALTER TABLE questions ADD COLUMN wait_key TEXT;
CREATE INDEX questions_job ON questions(job_id) WHERE wait_key IS NOT NULL;
"#,
    // 13: rounds. Each job is a round of its step (from 1) with why it ran;
    // a failed job keeps the tail of its output, which a send-back hands
    // on as feedback; a stage counts how often its failures sent its work
    // back automatically.
    r#"
ALTER TABLE jobs ADD COLUMN round INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN round_reason TEXT NOT NULL DEFAULT 'first';
ALTER TABLE jobs ADD COLUMN log_tail TEXT;
ALTER TABLE stage_runs ADD COLUMN sent_back INTEGER NOT NULL DEFAULT 0;
"#,
    // 14: a step's outputs (`$ORCH_OUTPUT`), kept with its checkpoint as a
    // JSON object of strings; NULL when it wrote none.
    r#"
ALTER TABLE checkpoints ADD COLUMN outputs TEXT;
"#,
    // 15: inputs and matrices. A run keeps the values its inputs were bound
    // to, a stage a matrix made keeps its values (JSON objects); both are
    // what `${{ inputs.* }}` and `${{ matrix.* }}` read when a job is made.
    r#"
ALTER TABLE runs ADD COLUMN inputs TEXT;
ALTER TABLE stage_runs ADD COLUMN matrix TEXT;
"#,
];

/// Connection settings every connection gets.
pub fn configure(conn: &Connection) -> Result<()> {
    // Small pages: a commit touches a few rows in many tables and indexes, and
    // WAL writes (and fsyncs) whole pages. Measured faster than 4 KiB on the
    // bench; it only takes effect when the database is created.
    conn.pragma_update(None, "page_size", 1024)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk before the writer answers anyone.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Plans stay fixed once prepared: without this, SQLite re-plans some
    // statements whenever their parameters are bound again, which the
    // statement cache does on every use (measured at 31% of a claim's CPU).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    // Every statement of the hot path stays prepared (the default keeps 16).
    conn.set_prepared_statement_cache_capacity(128);
    Ok(())
}

/// Brings the database up to the newest schema.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    if version == 0 {
        let tx = conn.transaction()?;
        tx.execute_batch(&create_all(TABLES, Dialect::Sqlite))?;
        tx.pragma_update(None, "user_version", known)?;
        tx.commit()?;
        tracing::info!(version = known, "store created");
        return Ok(());
    }
    upgrade(conn, version as usize)
}

/// Runs the migrations after `version`.
pub(super) fn upgrade(conn: &mut Connection, version: usize) -> Result<()> {
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "store migrated");
    }
    Ok(())
}
