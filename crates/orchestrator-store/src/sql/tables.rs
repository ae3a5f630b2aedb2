//! The store's tables, once: every table's columns, keys, constraints and
//! indexes, in the order rows can be copied (a table after those it refers
//! to). A new store is created from these on SQLite and on PostgreSQL
//! alike (`ddl.rs` writes each one's SQL); `orch migrate` copies them in
//! this order and restarts PostgreSQL's identities past the copied rows.
//!
//! A store made by an older orch reaches the same schema through the
//! migrations of `schema.rs` and `schema_pg.rs`, which are its history: a
//! change here is a new migration there, and the schema tests
//! (`schema_dump.rs`) check that both roads give exactly the recorded schema.

use super::ddl::{index, int, serial, text, Table};

/// Every table, in copy order.
pub const TABLES: &[Table] = &[
    // A run's own state; its spec is in `run_specs`, out of the hot path.
    Table {
        name: "runs",
        columns: &[
            text("id"),
            text("workflow").not_null(),
            text("project_dir").not_null(),
            text("spec_hash").not_null(),
            text("state").not_null(),
            int("priority").not_null(),
            int("stages_total").not_null(),
            int("stages_succeeded").not_null().default("0"),
            int("stages_ended").not_null().default("0"),
            int("created_at").not_null(),
            int("ended_at"),
            text("base_commit"),
            // The effective priority's story, limits and fair-queue clock.
            int("suggested_priority"),
            text("priority_why"),
            text("limits"),
            int("clock").not_null().default("0"),
            text("hold"),
            // The values its inputs were bound to, a JSON object by name.
            text("inputs"),
        ],
        key: &["id"],
        unique: &[],
        indexes: &[
            index("runs_created", "created_at"),
            index("runs_project", "project_dir, state"),
        ],
    },
    // A run's workflow: tens of KiB for a wide DAG, kept apart so that
    // reading a run's state does not read through its overflow pages.
    Table {
        name: "run_specs",
        columns: &[
            text("run_id").references("runs(id)"),
            text("spec").not_null(),
        ],
        key: &["run_id"],
        unique: &[],
        indexes: &[],
    },
    Table {
        name: "stage_runs",
        columns: &[
            text("run_id").not_null().references("runs(id)"),
            text("stage_id").not_null(),
            int("ord").not_null(),
            text("state").not_null(),
            int("unmet").not_null(),
            int("step").not_null().default("0"),
            int("steps_total").not_null(),
            int("attempt").not_null().default("1"),
            int("started_at"),
            int("ended_at"),
            // What a stage holds while it waits for a human.
            int("resume_step"),
            int("waiting_since"),
            text("handoff"),
            // Scheduling: its pinned agent, why a limit holds it, what it
            // yielded to.
            text("agent_id"),
            text("hold"),
            text("yield_for"),
            int("yield_job"),
            text("reserved"),
            text("placement"),
            // The end of a lost attempt's backoff.
            int("retry_at"),
            // How often its failures sent its work back by themselves.
            int("sent_back").not_null().default("0"),
            // The values of a stage a matrix made, a JSON object by key.
            text("matrix"),
        ],
        key: &["run_id", "stage_id"],
        unique: &[],
        indexes: &[
            // Only runnable stages, so counting down `unmet` moves no entry.
            index("stage_runs_runnable", "run_id, ord").filter("state = 'pending' AND unmet = 0"),
            index("stage_runs_waiting", "waiting_since").filter("waiting_since IS NOT NULL"),
            index("stage_runs_suspended", "agent_id").filter("state = 'suspended'"),
            index("stage_runs_yield_job", "yield_job").filter("yield_job IS NOT NULL"),
            index("stage_runs_retry", "retry_at").filter("state = 'retrying'"),
        ],
    },
    // A stage's needs, keyed the way they are read: a stage's dependents.
    Table {
        name: "requires",
        columns: &[
            text("run_id").not_null(),
            text("required").not_null(),
            text("stage_id").not_null(),
        ],
        key: &["run_id", "required", "stage_id"],
        unique: &[],
        indexes: &[],
    },
    Table {
        name: "agents",
        columns: &[
            text("id"),
            text("name").not_null().unique(),
            text("labels").not_null(),
            int("slots").not_null(),
            text("hostname"),
            int("registered_at").not_null(),
            int("last_seen_at").not_null(),
            int("memory_mb").not_null().default("0"),
            text("gpus").not_null().default("'[]'"),
        ],
        key: &["id"],
        unique: &[],
        indexes: &[],
    },
    // A distinct (needs, pinned agent, high priority) triple: claim looks
    // at the head of each shape's queue that fits.
    Table {
        name: "shapes",
        columns: &[
            serial("id"),
            text("needs").not_null(),
            text("pin").not_null(),
            int("high").not_null(),
        ],
        key: &["id"],
        unique: &[&["pin", "needs", "high"]],
        indexes: &[],
    },
    Table {
        name: "jobs",
        columns: &[
            serial("id"),
            text("run_id").not_null(),
            text("stage_id").not_null(),
            int("step").not_null(),
            int("attempt").not_null(),
            text("state").not_null(),
            int("priority").not_null(),
            text("labels").not_null(),
            text("payload").not_null(),
            text("agent_id"),
            int("lease_id"),
            text("exit_codes"),
            text("error"),
            text("error_class"),
            text("bundle"),
            int("created_at").not_null(),
            int("started_at"),
            int("ended_at"),
            int("queue_key").not_null().default("0"),
            int("shape"),
            text("granted"),
            // The sandbox its commands ran in, as its agent reported it.
            text("sandbox"),
            // The round of its step and why it ran; a failure's output tail.
            int("round").not_null().default("1"),
            text("round_reason").not_null().default("'first'"),
            text("log_tail"),
        ],
        key: &["id"],
        unique: &[],
        indexes: &[
            index("jobs_queue", "priority DESC, id").filter("state = 'queued'"),
            index("jobs_stage", "run_id, stage_id"),
            index("jobs_shape_queue", "shape, queue_key, id").filter("state = 'queued'"),
            index("jobs_live", "priority").filter("state = 'leased'"),
        ],
    },
    Table {
        name: "leases",
        columns: &[
            serial("id"),
            int("job_id").not_null().references("jobs(id)"),
            text("agent_id").not_null(),
            text("token").not_null(),
            text("state").not_null(),
            int("expires_at").not_null(),
            int("created_at").not_null(),
            // What the agent named its claim, so a claim asked again after
            // a lost answer gets back this lease.
            text("claim_key"),
        ],
        key: &["id"],
        unique: &[],
        indexes: &[
            index("leases_active", "expires_at").filter("state = 'active'"),
            index("leases_agent", "agent_id, state"),
        ],
    },
    // The log: `seq` never goes back, even past a deleted last row.
    Table {
        name: "transitions",
        columns: &[
            serial("seq").autoincrement(),
            text("entity").not_null(),
            text("entity_id").not_null(),
            text("run_id"),
            text("from_state"),
            text("to_state").not_null(),
            text("reason").not_null(),
            text("actor").not_null(),
            int("at").not_null(),
        ],
        key: &["seq"],
        unique: &[],
        indexes: &[index("transitions_run", "run_id, seq")],
    },
    Table {
        name: "checkpoints",
        columns: &[
            text("run_id").not_null().references("runs(id)"),
            int("seq").not_null(),
            text("stage_id").not_null(),
            int("step").not_null(),
            int("job_id").not_null(),
            text("commit_sha").not_null(),
            text("artifacts").not_null(),
            int("created_at").not_null(),
            // The step's outputs, a JSON object of strings (NULL: none).
            text("outputs"),
        ],
        key: &["run_id", "seq"],
        unique: &[],
        indexes: &[],
    },
    Table {
        name: "questions",
        columns: &[
            serial("id"),
            text("run_id").not_null().references("runs(id)"),
            text("stage_id").not_null(),
            int("step").not_null(),
            int("job_id"),
            text("question").not_null(),
            text("choices").not_null(),
            text("state").not_null(),
            int("asked_at").not_null(),
            text("answer"),
            text("answered_by"),
            int("answered_at"),
            // A running step's wait (`orch ask --wait`): the key its agent
            // asked with, so asking again finds the same question.
            text("wait_key"),
        ],
        key: &["id"],
        unique: &[],
        indexes: &[
            index("questions_run", "run_id, id"),
            index("questions_open", "asked_at").filter("state = 'open'"),
            index("questions_job", "job_id").filter("wait_key IS NOT NULL"),
        ],
    },
    // Model calls through the gateway, per job and model; run and stage
    // are copied from the job so that a run's usage needs no join.
    Table {
        name: "model_usage",
        columns: &[
            int("job_id").not_null(),
            text("model").not_null(),
            text("run_id").not_null(),
            text("stage_id").not_null(),
            int("requests").not_null(),
            int("prompt_tokens").not_null(),
            int("completion_tokens").not_null(),
            int("queue_wait_ms").not_null(),
            int("latency_ms").not_null(),
            int("max_queue_wait_ms").not_null(),
            int("max_latency_ms").not_null(),
        ],
        key: &["job_id", "model"],
        unique: &[],
        indexes: &[index("model_usage_run", "run_id")],
    },
    // One-time credentials spent, kept until they would have expired.
    Table {
        name: "spent_credentials",
        columns: &[
            text("kind").not_null(),
            text("id").not_null(),
            int("expires_at").not_null(),
            int("spent_at").not_null(),
        ],
        key: &["kind", "id"],
        unique: &[],
        indexes: &[index("spent_credentials_expiry", "expires_at")],
    },
    // One credential per agent name, kept as the SHA-256 of its token.
    Table {
        name: "agent_tokens",
        columns: &[
            text("name"),
            text("token_hash").not_null().unique(),
            int("created_at").not_null(),
            int("revoked_at"),
        ],
        key: &["name"],
        unique: &[],
        indexes: &[],
    },
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::ddl::Ty;
    use super::*;

    #[test]
    fn every_table_is_well_formed_and_after_those_it_refers_to() {
        let mut earlier: BTreeSet<&str> = BTreeSet::new();
        let mut index_names = BTreeSet::new();
        for t in TABLES {
            let names: BTreeSet<&str> = t.column_names().collect();
            assert_eq!(names.len(), t.columns.len(), "{}: a column twice", t.name);
            assert!(!t.key.is_empty(), "{}: no key", t.name);
            for k in t.key.iter().chain(t.unique.iter().flat_map(|u| u.iter())) {
                assert!(names.contains(k), "{}: no column {k}", t.name);
            }
            for c in t.columns {
                if c.ty == Ty::Serial {
                    assert_eq!(t.key, [c.name], "{}: a serial column is the key", t.name);
                }
                assert!(
                    !c.autoincrement || c.ty == Ty::Serial,
                    "{}.{}",
                    t.name,
                    c.name
                );
                if let Some(target) = c.references {
                    let table = target.split('(').next().unwrap_or(target);
                    assert!(earlier.contains(table), "{} refers to {table}", t.name);
                }
            }
            for ix in t.indexes {
                assert!(index_names.insert(ix.name), "index {} twice", ix.name);
            }
            earlier.insert(t.name);
        }
    }
}
