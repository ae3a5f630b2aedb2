//! The store: where every run, stage run, job, lease, agent and transition lives.
//!
//! What it is: [`SqlStore`], the store the daemon talks to (one concrete
//! type: there is no second implementation to hide behind a trait), on the
//! embedded SQLite (WAL,
//! `synchronous=FULL`, versioned migrations; the default) or on PostgreSQL
//! (chosen by a [`Location`]; several daemons may share one database: their
//! write batches are serialised by an advisory lock, and every commit is
//! published to every daemon through LISTEN/NOTIFY in `seq` order). The
//! store's SQL is written once against a small connection seam (`db`) and
//! translated for PostgreSQL. [`sqlite_to_postgres`] copies a SQLite store
//! into an empty PostgreSQL one (`orch migrate`). One writer thread owns the write connection; every write is a
//! command sent to it over a bounded channel. The writer drains whatever
//! commands are waiting (up to `max_items`, for at most `max_ms`), runs each in
//! its own savepoint, commits them all in one transaction (group commit), and
//! only then answers each caller and publishes the batch's transitions. A
//! command that fails or panics rolls back alone; a batch whose transaction
//! breaks is rolled back whole, never committed in part. Reads use a separate
//! connection and never wait for the writer.
//!
//! Every state change goes through a state machine of `orchestrator-core` and
//! is written with its transition row in the same transaction. When a stage
//! succeeds, its dependents' count of unmet needs drops; at the end of each
//! batch that released stages (or submitted a run) the scheduler pass turns
//! every runnable stage into a queued job, inside the same transaction, so a
//! completion and the work it unlocks commit together. A stage the pass
//! cannot schedule fails alone, as a daemon-side fault; other runs go on.
//!
//! The cargo feature `failpoints` (tests only) adds hidden hooks that fail,
//! or abort the process at, a chosen SQL statement of the next batch.
//!
//! What it is not: it does no HTTP and no process handling, and it decides
//! nothing the core's machines do not allow.
//!
//! Main types: [`SqlStore`], [`StoreOptions`], [`Location`], [`NewRun`], [`StoreError`].

mod db;
mod error;
mod sql;

use orchestrator_core::{Actor, RunId};

pub use db::Error as DbError;
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub use db::Value;
pub use error::{Result, StoreError};
pub use sql::{
    drop_schema, sqlite_to_postgres, CopyReport, Location, ScratchSchema, SqlStore, StoreOptions,
    Table, WriterStats, TABLES,
};
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub use sql::{FaultMode, FaultReport, Point};

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The workflow file's text.
    pub workflow: String,
    /// The file's name for error messages.
    pub file: Option<String>,
    /// Absolute project directory.
    pub project_dir: String,
    /// The priority the run suggests (`orch run --priority`), if any.
    pub priority: Option<i32>,
    /// The project's policy file, as read at submission.
    pub policy: orchestrator_core::sched::ProjectPolicy,
    /// What every stage of this run does when it fails, over what the
    /// workflow says (`orch run --on-failure`).
    pub on_failure: Option<orchestrator_core::spec::OnFailure>,
    /// The commit the run's branch starts from.
    pub base_commit: String,
    /// The files of `base_commit`, listed by the daemon when a cache key
    /// hashes files (`hashFiles`); empty otherwise.
    pub tree: Vec<orchestrator_core::cache::TreeFile>,
    /// Who submitted it, for the transition row (`user:admin`).
    pub actor: Actor,
    /// The values given to the workflow's inputs; the store binds them (a
    /// missing, unknown or mistyped one refuses the run) and records the
    /// bound values with the run.
    pub inputs: orchestrator_core::spec::Given,
}

/// What a human says to a waiting stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HumanCommand {
    Approve {
        stage_id: String,
        comment: Option<String>,
    },
    /// The step runs again with the feedback.
    Reject {
        stage_id: String,
        feedback: String,
    },
    Answer {
        question_id: i64,
        text: String,
    },
    /// A failed stage runs again, as a new attempt, from where it failed.
    /// With feedback, the work is sent back to the stage instead (it
    /// succeeded, or awaits a decision): it runs its last step again with
    /// the feedback, and every stage after it runs again after it.
    Retry {
        stage_id: String,
        comment: Option<String>,
        feedback: Option<String>,
    },
    /// A failed stage is let go: its dependents go on without it.
    Skip {
        stage_id: String,
        comment: Option<String>,
    },
    /// A failed stage ends failed (its dependents are blocked); without a
    /// stage, the whole run ends failed: what awaits a decision fails, the
    /// rest is cancelled.
    Abort {
        stage_id: Option<String>,
        comment: Option<String>,
    },
}

/// A one-time credential the store remembers as spent until it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A signed action link (`/v1/act/...`), by the digest of its signed part.
    Link,
    /// A dashboard login ticket, by its nonce.
    Ticket,
    /// A dashboard session ended by its holder, by its id.
    Session,
}

impl Credential {
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::Link => "link",
            Credential::Ticket => "ticket",
            Credential::Session => "session",
        }
    }
}

/// What a signed link answers: the entity that asked and the transition
/// that asked it (its `seq`). The link acts only while that transition is
/// still the entity's latest, and only once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkUse {
    /// The link's id: the digest of its signed part.
    pub id: String,
    pub target: LinkTarget,
    /// The `seq` of the transition the link was sent for.
    pub round: i64,
    /// When the link stops working anyway; its record may go after that.
    pub expires_at_ms: i64,
}

/// The entity a link's request was made by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkTarget {
    Stage(String),
    Question(i64),
}

/// Why a one-time credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this link was already used (at {at_ms}, Unix ms); nothing was done again")]
    Used { at_ms: i64 },
    #[error("this link was sent for an earlier request of {what}, which has since been answered or replaced by a newer request; use the link of the newest message, or the `orch` command it names")]
    Superseded { what: String },
}

/// The dashboard sessions ended before their time, as the store keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    /// Every session and login ticket made at or before this time (Unix ms)
    /// is void (`orch dashboard --revoke`).
    pub before_ms: Option<i64>,
    /// Sessions logged out, by id, with when each would have expired.
    pub sessions: Vec<(String, i64)>,
}

/// What the model gateway checks of a job's key: is the job leased, and at
/// what priority its run's requests queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobHolder {
    pub state: orchestrator_core::JobState,
    pub run_id: RunId,
    pub priority: i32,
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// (state, count) of runs, stages and jobs.
    pub runs: Vec<(String, i64)>,
    pub stages: Vec<(String, i64)>,
    pub jobs: Vec<(String, i64)>,
    pub agents: i64,
    pub transitions: i64,
    /// (error class, count) of failed attempts that were tried again.
    pub retries: Vec<(String, i64)>,
}
