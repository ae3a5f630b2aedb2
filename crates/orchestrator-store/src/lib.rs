//! The store: where every run, stage run, job, lease, agent and transition lives.
//!
//! What it is: the [`Store`] trait the daemon talks to, and its one
//! implementation, [`SqlStore`], on the embedded SQLite (WAL,
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
//! Main types: [`Store`], [`SqlStore`], [`StoreOptions`], [`Location`], [`NewRun`], [`StoreError`].

mod db;
mod error;
mod sql;

use orchestrator_core::{Actor, AgentId, JobId, LeaseId, RunId};
use std::future::Future;
use std::sync::Arc;

use orchestrator_core::api::{
    AgentRegistered, AgentTokenView, AgentView, ClaimedJob, CompleteRequest, Completed,
    Explanation, HeartbeatResponse, InboxItem, LeaseRef, RegisterAgent, RunDetail, RunSummary,
    Submitted,
};
use orchestrator_core::Transition;
use tokio::sync::{broadcast, Notify};

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

/// Everything the daemon needs from a store. Implementations must write every
/// state change together with its transition row in one transaction.
pub trait Store: Send + Sync + 'static {
    /// Validates, plans and writes a run with its stage runs and `requires`
    /// edges; runnable stages are queued in the same transaction.
    fn submit_run(&self, run: NewRun) -> impl Future<Output = Result<Submitted>> + Send;
    /// Registers an agent (again, under the same name, reusing its id). Leases
    /// an earlier incarnation held are void: their stages are requeued.
    fn register_agent(
        &self,
        reg: RegisterAgent,
        lease_ttl_ms: u64,
        heartbeat_interval_ms: u64,
    ) -> impl Future<Output = Result<AgentRegistered>> + Send;
    /// Leases the best queued job this agent can run, if any.
    fn claim(
        &self,
        agent_id: &AgentId,
        lease_ttl_ms: u64,
    ) -> impl Future<Output = Result<Option<ClaimedJob>>> + Send {
        self.claim_keyed(agent_id, lease_ttl_ms, None)
    }
    /// [`Store::claim`] under the agent's key for this claim: when a claim
    /// with that key already leased a job that is still held, that job is
    /// handed out again instead of another.
    fn claim_keyed(
        &self,
        agent_id: &AgentId,
        lease_ttl_ms: u64,
        key: Option<String>,
    ) -> impl Future<Output = Result<Option<ClaimedJob>>> + Send;
    /// Extends the leases the agent proves it holds; lists those it no longer holds.
    fn heartbeat(
        &self,
        agent_id: &AgentId,
        leases: Vec<LeaseRef>,
        lease_ttl_ms: u64,
    ) -> impl Future<Output = Result<HeartbeatResponse>> + Send;
    /// Completes a job under its live lease; with `claim_next`, also leases
    /// the agent its next job (for `lease_ttl_ms`) in the same transaction. A stale token is refused with
    /// [`StoreError::StaleLease`] and the refusal is recorded as a transition.
    /// The same completion sent again by its holder (its answer was lost) is
    /// acknowledged again, recording nothing, and hands back the next job
    /// that the request's `claim_key` leased.
    fn complete(
        &self,
        job_id: JobId,
        req: CompleteRequest,
        lease_ttl_ms: u64,
    ) -> impl Future<Output = Result<Completed>> + Send;
    /// A human's command to a run (`Cancel`, `Pause`, `Resume`): refused when
    /// the run's state does not allow it. Cancelling cancels the open stages,
    /// their live jobs and leases; pausing holds each stage at its next
    /// checkpoint; resuming queues the held stages again.
    fn command_run(
        &self,
        run_id: &RunId,
        event: orchestrator_core::machine::RunEvent,
        actor: &Actor,
    ) -> impl Future<Output = Result<RunSummary>> + Send;
    /// A human's answer to a waiting stage: approve, reject with feedback,
    /// or answer a question. Refused, changing nothing, when the stage or
    /// question is not waiting for it. `run_id` may be a unique prefix.
    fn human(
        &self,
        run_id: &RunId,
        command: HumanCommand,
        actor: &Actor,
    ) -> impl Future<Output = Result<RunSummary>> + Send;
    /// [`Store::human`] through a signed link: refused with
    /// [`StoreError::Refused`] when the link was used before or its request
    /// is no longer the latest of its entity; otherwise the command and the
    /// link's record as used commit together.
    fn human_by_link(
        &self,
        run_id: &RunId,
        command: HumanCommand,
        actor: &Actor,
        link: LinkUse,
    ) -> impl Future<Output = Result<RunSummary>> + Send;
    /// Why a signed link would be refused now (used, or its request
    /// superseded), without spending it; None when it would act.
    fn link_refusal(
        &self,
        run_id: &RunId,
        link: LinkUse,
    ) -> impl Future<Output = Result<Option<Refused>>> + Send;
    /// Records a one-time credential as spent until `expires_at_ms`;
    /// [`StoreError::Refused`] when it was spent before.
    fn spend(
        &self,
        kind: Credential,
        id: String,
        expires_at_ms: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Voids every dashboard session and login ticket made at or before `at_ms`.
    fn revoke_sessions(&self, at_ms: i64) -> impl Future<Output = Result<()>> + Send;
    /// The dashboard sessions ended before their time.
    fn revocations(&self) -> impl Future<Output = Result<Revocations>> + Send;
    /// A running step asks a question and waits for the answer inside
    /// (`orch ask --wait`): recorded once per `req.key`, under the job's
    /// live lease, and its stage shows `awaiting_input` while the job stays
    /// leased. Returns the question's id.
    fn ask_waiting(
        &self,
        job_id: JobId,
        req: orchestrator_core::api::WaitAsk,
    ) -> impl Future<Output = Result<i64>> + Send;
    /// Where the question `poll.question_id` that job `job_id`'s step waits
    /// for stands. Refused ([`StoreError::StaleLease`]) unless
    /// `poll.agent_id` holds the job's live lease under `poll.lease_token`.
    fn wait_status(
        &self,
        job_id: JobId,
        poll: orchestrator_core::api::WaitPoll,
    ) -> impl Future<Output = Result<orchestrator_core::api::WaitStatus>> + Send;
    /// The step stops waiting for `poll.question_id` (checked as
    /// [`Store::wait_status`]): an open question closes and its stage runs on.
    fn withdraw_wait(
        &self,
        job_id: JobId,
        poll: orchestrator_core::api::WaitPoll,
    ) -> impl Future<Output = Result<orchestrator_core::api::WaitStatus>> + Send;
    /// Everything waiting for a human, oldest first.
    fn inbox(&self) -> impl Future<Output = Result<Vec<InboxItem>>> + Send;
    /// The jobs of those of `lease_ids` that `agent_id` held.
    fn lease_jobs(
        &self,
        agent_id: &AgentId,
        lease_ids: Vec<LeaseId>,
    ) -> impl Future<Output = Result<Vec<JobId>>> + Send;
    /// Expires every active lease whose time ran out before `now_ms` and
    /// starts the next attempt of every stage whose backoff has passed;
    /// returns how many leases expired.
    fn expire_leases(&self, now_ms: i64) -> impl Future<Output = Result<usize>> + Send;
    /// Records as lost (one `online -> lost` agent transition, with how long
    /// it has been silent and how many of its leases expired) every agent
    /// not heard from within `online_ms` of `now_ms` and not marked already;
    /// its next heartbeat or registration records `lost -> online`. Returns
    /// how many were marked.
    fn mark_lost_agents(
        &self,
        now_ms: i64,
        online_ms: u64,
    ) -> impl Future<Output = Result<usize>> + Send;
    /// Gives every active lease `grace_ms` more, so agents can reach a daemon
    /// that just restarted before their leases are judged.
    fn resume(&self, grace_ms: u64) -> impl Future<Output = Result<usize>> + Send;
    /// The earliest moment the reaper has work: a lease expiry or the end
    /// of a stage's backoff.
    fn next_lease_expiry(&self) -> impl Future<Output = Result<Option<i64>>> + Send;

    fn list_runs(&self, limit: u32) -> impl Future<Output = Result<Vec<RunSummary>>> + Send;
    fn run_detail(&self, run_id: &RunId) -> impl Future<Output = Result<RunDetail>> + Send;
    /// Every agent with its capacity and what it has free now; `online`
    /// when heard from within `online_ms`.
    fn list_agents(&self, online_ms: u64) -> impl Future<Output = Result<Vec<AgentView>>> + Send;
    /// One pre-emption pass: asks running lower-priority stages to yield at
    /// their next checkpoint where waiting higher-priority work cannot be
    /// placed otherwise. Returns how many were asked.
    fn preempt(&self, online_ms: u64) -> impl Future<Output = Result<usize>> + Send;
    /// Why each stage of a run (or only `stage`) runs where it does or waits.
    /// `run_id` may be a unique prefix.
    fn explain(
        &self,
        run_id: &RunId,
        stage: Option<String>,
        online_ms: u64,
    ) -> impl Future<Output = Result<Explanation>> + Send;
    /// Transitions with `seq > after`, oldest first, at most `limit`; only
    /// those of run `run` when given.
    fn transitions_since(
        &self,
        after: i64,
        run: Option<RunId>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Transition>>> + Send;
    /// Adds model usage, as (job id, model, totals) rows, to the jobs'
    /// runs and stages; one transaction for all. Returns how many rows named
    /// no known job and were dropped.
    fn record_usage(
        &self,
        rows: Vec<(JobId, String, orchestrator_core::fabric::Usage)>,
    ) -> impl Future<Output = Result<usize>> + Send;
    /// One job's model usage by model name.
    fn job_usage(
        &self,
        job_id: JobId,
    ) -> impl Future<
        Output = Result<std::collections::BTreeMap<String, orchestrator_core::fabric::Usage>>,
    > + Send;
    /// A job's state with its run's id and priority; None for an unknown
    /// job. Cheap whatever the run's size: the gateway asks it per request.
    fn job_holder(&self, job_id: JobId) -> impl Future<Output = Result<Option<JobHolder>>> + Send;

    /// Issues agent NAME's token and returns it, the one time it is seen
    /// (only its hash is kept). `replace`: a live token of NAME is replaced
    /// instead of refusing.
    fn issue_agent_token(
        &self,
        name: &str,
        replace: bool,
        actor: &Actor,
    ) -> impl Future<Output = Result<String>> + Send;
    /// Revokes agent NAME's token; the name stays bound to it.
    fn revoke_agent_token(
        &self,
        name: &str,
        actor: &Actor,
    ) -> impl Future<Output = Result<AgentTokenView>> + Send;
    fn list_agent_tokens(&self) -> impl Future<Output = Result<Vec<AgentTokenView>>> + Send;
    /// The agent credential `token` is, revoked or not; None when it is none.
    fn agent_token_owner(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<Option<AgentTokenView>>> + Send;
    /// Whether agent NAME has a credential (live or revoked).
    fn agent_name_bound(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;
    /// The name agent `agent_id` registered under, and whether that name
    /// has a credential; None for an unknown agent.
    fn agent_name(
        &self,
        agent_id: &AgentId,
    ) -> impl Future<Output = Result<Option<(String, bool)>>> + Send;
    fn counts(&self) -> impl Future<Output = Result<Counts>> + Send;

    /// Every committed batch's transitions, in commit order.
    fn subscribe(&self) -> broadcast::Receiver<Arc<[Transition]>>;
    /// Notified after every commit that queued at least one job.
    fn jobs_queued(&self) -> Arc<Notify>;
    fn writer_stats(&self) -> WriterStats;
    /// Commits an empty write through the writer: proof that it runs and
    /// that the database grants the write lock. Changes nothing.
    fn probe_write(&self) -> impl Future<Output = Result<()>> + Send;
    /// Finishes the writer's work and closes the store cleanly.
    fn close(&self) -> impl Future<Output = ()> + Send;
}
