//! The SQL store (SQLite embedded, or PostgreSQL): one writer thread that
//! commits every change in batches, a read connection for queries, and
//! `SqlStore`, which implements [`Store`] over them.
//!
//! The modules form layers; a module imports only from its own layer or a
//! lower one, and only the state machines' layer has cycles, among its own
//! modules (`layers_hold` in `layers.rs` checks this against the sources):
//!
//! | layer | modules |
//! |---|---|
//! | 0 transaction | tx, writer, ddl, tables, schema, schema_pg, location, failpoints |
//! | 1 domain base | common, steps, placement, agents, credentials, spent, usage |
//! | 2 state machines | stage, job, run, lease_end, retry, loops, human, wait, preempt, policy |
//! | 3 domain commands | submit, schedule, claim, complete, leases, decide |
//! | 4 reads | reads, inbox, explain |
//! | 5 plumbing | pg, copy, open, schema_dump |
//! | 6 store API | mod |
//!
//! - 0: `Ctx` (what a command sees), savepoints and transition rows (`tx`);
//!   the writer thread and its batches (`writer`), which knows nothing of
//!   the domain: the end-of-batch scheduler pass and the PostgreSQL NOTIFY
//!   payload are handed to it as `writer::Hooks` when the store is built.
//!   The tables, defined once (`tables`) and written as either database's
//!   DDL (`ddl`); each database's schema versions and migrations (`schema`,
//!   `schema_pg`).
//! - 1: what the commands share and what changes no run state: helpers,
//!   a spec's steps, placement, agents' presence, tokens, spent
//!   credentials, model usage.
//! - 2: the stage, job and run machines as the store applies them, and the
//!   rules their effects call, which apply events back (a retry later, a
//!   send-back, a question, a wait, a yield, an admission). This recursion
//!   is the machines' own (an effect of one is an event to another), so it
//!   lives in one layer that nothing below reaches.
//! - 3: the commands the API sends the writer, split by what they change:
//!   submit a run, the scheduler pass, claim, complete, register and
//!   heartbeat, human decisions.
//! - 4: queries on the read connection.
//! - 5: opening a store, its PostgreSQL connections and listener, copying
//!   SQLite into PostgreSQL; the schema tests' canonical dump of what each
//!   database holds (`schema_dump`, tests only).

mod agents;
mod claim;
mod common;
mod complete;
mod copy;
mod credentials;
mod ddl;
mod decide;
mod explain;
#[cfg(feature = "failpoints")]
mod failpoints;
mod human;
mod inbox;
mod job;
#[cfg(test)]
mod layers;
mod lease_end;
mod leases;
mod location;
mod loops;
mod open;
mod pg;
mod placement;
mod policy;
mod preempt;
mod reads;
mod retry;
mod run;
mod schedule;
mod schema;
#[cfg(test)]
mod schema_dump;
mod schema_pg;
mod spent;
mod stage;
mod steps;
mod submit;
mod tables;
mod tx;
mod usage;
mod wait;
mod writer;

use orchestrator_core::{Actor, AgentId, JobId, LeaseId, RunId};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::db::Conn;
use orchestrator_core::api::{
    AgentRegistered, AgentTokenView, AgentView, ClaimedJob, CompleteRequest, Completed,
    Explanation, HeartbeatResponse, InboxItem, LeaseRef, RegisterAgent, RunDetail, RunSummary,
    Submitted, WaitPoll, WaitStatus,
};
use orchestrator_core::sched::SystemRules;
use orchestrator_core::Transition;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use crate::{
    Counts, Credential, HumanCommand, LinkUse, NewRun, Refused, Result, Revocations, Store,
    StoreError,
};
pub use copy::{sqlite_to_postgres, CopyReport};
pub use ddl::Table;
#[cfg(feature = "failpoints")]
pub use failpoints::{FaultMode, FaultReport, Point};
pub use location::Location;
pub use open::StoreOptions;
pub use pg::{drop_schema, ScratchSchema};
pub use tables::TABLES;
use tx::Ctx;
pub use writer::WriterStats;
use writer::{Command, Stats};

/// The SQLite implementation of [`Store`].
pub struct SqlStore {
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    read: Arc<Mutex<Conn>>,
    events: broadcast::Sender<Arc<[Transition]>>,
    jobs_queued: Arc<Notify>,
    stats: Arc<Stats>,
    rules: Arc<SystemRules>,
    /// The time reads judge by (revocations, agents online); the writer
    /// holds the same clock.
    clock: Arc<dyn orchestrator_host::clock::Clock>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// PostgreSQL only: the thread that publishes every daemon's commits.
    listener: Mutex<Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>>,
    #[cfg(feature = "failpoints")]
    faults: Arc<failpoints::Faults>,
    /// SQLite only, held for the store's lifetime: one writer per database file.
    _lock: Option<std::fs::File>,
}

impl SqlStore {
    /// The clock the store stamps rows with and judges time by.
    pub fn clock(&self) -> Arc<dyn orchestrator_host::clock::Clock> {
        self.clock.clone()
    }

    fn sender(&self) -> Result<mpsc::Sender<Command>> {
        self.tx
            .lock()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)
    }

    /// Sends `f` to the writer; answers after the batch holding it commits.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (reply, answer) = oneshot::channel::<Result<R>>();
        let cmd: Command = Box::new(move |ctx: &mut Ctx<'_>| {
            let r = ctx.savepoint(f);
            Box::new(move |commit_error: Option<&StoreError>| {
                let _ = reply.send(match commit_error {
                    Some(e) => Err(e.clone()),
                    None => r,
                });
            })
        });
        self.sender()?
            .send(cmd)
            .await
            .map_err(|_| StoreError::Closed)?;
        // The writer drops a command unanswered only when its batch failed
        // half-way (its transaction broke before this command ran); the
        // daemon log says why.
        answer.await.map_err(|_| {
            StoreError::Internal(
                "the store dropped this command with a failed batch; see the daemon log".into(),
            )
        })?
    }

    /// Runs a query on the read connection off the async threads.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let conn = self.read.clone();
        tokio::task::spawn_blocking(move || {
            let c = conn
                .lock()
                .map_err(|_| StoreError::Internal("read connection poisoned".into()))?;
            f(&c)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?
    }
}

impl Store for SqlStore {
    async fn submit_run(&self, run: NewRun) -> Result<Submitted> {
        self.write(move |ctx| submit::submit_run(ctx, run)).await
    }

    async fn register_agent(
        &self,
        reg: RegisterAgent,
        lease_ttl_ms: u64,
        heartbeat_interval_ms: u64,
    ) -> Result<AgentRegistered> {
        self.write(move |ctx| leases::register_agent(ctx, reg, lease_ttl_ms, heartbeat_interval_ms))
            .await
    }

    async fn claim_keyed(
        &self,
        agent_id: &AgentId,
        lease_ttl_ms: u64,
        key: Option<String>,
    ) -> Result<Option<ClaimedJob>> {
        let agent_id = agent_id.clone();
        self.write(move |ctx| claim::claim(ctx, &agent_id, lease_ttl_ms, key.as_deref()))
            .await
    }

    async fn heartbeat(
        &self,
        agent_id: &AgentId,
        leases: Vec<LeaseRef>,
        lease_ttl_ms: u64,
    ) -> Result<HeartbeatResponse> {
        let agent_id = agent_id.clone();
        self.write(move |ctx| leases::heartbeat(ctx, &agent_id, leases, lease_ttl_ms))
            .await
    }

    async fn complete(
        &self,
        job_id: JobId,
        req: CompleteRequest,
        lease_ttl_ms: u64,
    ) -> Result<Completed> {
        self.write(move |ctx| complete::complete(ctx, job_id, req, lease_ttl_ms))
            .await?
            .into_result(job_id)
    }

    async fn command_run(
        &self,
        run_id: &RunId,
        event: orchestrator_core::machine::RunEvent,
        actor: &Actor,
    ) -> Result<RunSummary> {
        let (id, actor) = (run_id.clone(), actor.to_owned());
        let read_id = id.clone();
        self.write(move |ctx| run::command_run(ctx, &id, event, &actor))
            .await?;
        self.read(move |c| reads::run_summary_by_id(c, &read_id))
            .await
    }

    async fn human(
        &self,
        run_id: &RunId,
        command: HumanCommand,
        actor: &Actor,
    ) -> Result<RunSummary> {
        let prefix = run_id.clone();
        let id = self.read(move |c| reads::resolve_run(c, &prefix)).await?;
        let (read_id, actor) = (id.clone(), actor.to_owned());
        self.write(move |ctx| decide::human_command(ctx, &id, command, &actor))
            .await?;
        self.read(move |c| reads::run_summary_by_id(c, &read_id))
            .await
    }

    async fn human_by_link(
        &self,
        run_id: &RunId,
        command: HumanCommand,
        actor: &Actor,
        link: LinkUse,
    ) -> Result<RunSummary> {
        let prefix = run_id.clone();
        let id = self.read(move |c| reads::resolve_run(c, &prefix)).await?;
        let (read_id, actor) = (id.clone(), actor.to_owned());
        self.write(move |ctx| {
            // "Used" first: a used link's round has moved on too, and the
            // human should hear the more precise reason.
            spent::spend(ctx, Credential::Link, &link.id, link.expires_at_ms)?;
            spent::check_round(ctx, &id, &link)?;
            decide::human_command(ctx, &id, command, &actor)
        })
        .await?;
        self.read(move |c| reads::run_summary_by_id(c, &read_id))
            .await
    }

    async fn link_refusal(&self, run_id: &RunId, link: LinkUse) -> Result<Option<Refused>> {
        let prefix = run_id.clone();
        self.read(move |c| {
            let id = reads::resolve_run(c, &prefix)?;
            spent::refusal(c, &id, &link)
        })
        .await
    }

    async fn spend(&self, kind: Credential, id: String, expires_at_ms: i64) -> Result<()> {
        self.write(move |ctx| spent::spend(ctx, kind, &id, expires_at_ms))
            .await
    }

    async fn revoke_sessions(&self, at_ms: i64) -> Result<()> {
        self.write(move |ctx| spent::revoke_sessions(ctx, at_ms))
            .await
    }

    async fn revocations(&self) -> Result<Revocations> {
        let now = self.clock.now_ms();
        self.read(move |c| spent::revocations(c, now)).await
    }

    async fn ask_waiting(
        &self,
        job_id: JobId,
        req: orchestrator_core::api::WaitAsk,
    ) -> Result<i64> {
        self.write(move |ctx| wait::ask(ctx, job_id, &req)).await
    }

    async fn wait_status(&self, job_id: JobId, p: WaitPoll) -> Result<WaitStatus> {
        let (agent, token, q) = (p.agent_id, p.lease_token, p.question_id);
        self.read(move |c| wait::status(c, job_id, &agent, &token, q))
            .await
    }

    async fn withdraw_wait(&self, job_id: JobId, p: WaitPoll) -> Result<WaitStatus> {
        let (agent, token, q) = (p.agent_id, p.lease_token, p.question_id);
        self.write(move |ctx| wait::withdraw(ctx, job_id, &agent, &token, q))
            .await
    }

    async fn inbox(&self) -> Result<Vec<InboxItem>> {
        self.read(inbox::inbox).await
    }

    async fn lease_jobs(&self, agent_id: &AgentId, lease_ids: Vec<LeaseId>) -> Result<Vec<JobId>> {
        let agent_id = agent_id.clone();
        self.read(move |c| reads::lease_jobs(c, &agent_id, &lease_ids))
            .await
    }

    async fn expire_leases(&self, now_ms: i64) -> Result<usize> {
        self.write(move |ctx| lease_end::expire_leases(ctx, now_ms))
            .await
    }

    async fn mark_lost_agents(&self, now_ms: i64, online_ms: u64) -> Result<usize> {
        self.write(move |ctx| agents::mark_lost(ctx, now_ms, online_ms))
            .await
    }

    async fn resume(&self, grace_ms: u64) -> Result<usize> {
        self.write(move |ctx| leases::resume(ctx, grace_ms)).await
    }

    async fn next_lease_expiry(&self) -> Result<Option<i64>> {
        self.read(reads::next_lease_expiry).await
    }

    async fn list_runs(&self, limit: u32) -> Result<Vec<RunSummary>> {
        self.read(move |c| reads::list_runs(c, limit)).await
    }

    async fn run_detail(&self, run_id: &RunId) -> Result<RunDetail> {
        let id = run_id.clone();
        self.read(move |c| reads::run_detail(c, &id)).await
    }

    async fn issue_agent_token(&self, name: &str, replace: bool, actor: &Actor) -> Result<String> {
        let (name, actor) = (name.to_owned(), actor.to_owned());
        self.write(move |ctx| credentials::issue(ctx, &name, replace, &actor))
            .await
    }

    async fn revoke_agent_token(&self, name: &str, actor: &Actor) -> Result<AgentTokenView> {
        let (name, actor) = (name.to_owned(), actor.to_owned());
        self.write(move |ctx| credentials::revoke(ctx, &name, &actor))
            .await
    }

    async fn list_agent_tokens(&self) -> Result<Vec<AgentTokenView>> {
        self.read(credentials::list).await
    }

    async fn agent_token_owner(&self, token: &str) -> Result<Option<AgentTokenView>> {
        let token = token.to_owned();
        self.read(move |c| credentials::owner(c, &token)).await
    }

    async fn agent_name_bound(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.read(move |c| credentials::bound(c, &name)).await
    }

    async fn agent_name(&self, agent_id: &AgentId) -> Result<Option<(String, bool)>> {
        let id = agent_id.clone();
        self.read(move |c| credentials::agent_name(c, &id)).await
    }

    async fn list_agents(&self, online_ms: u64) -> Result<Vec<AgentView>> {
        let rules = self.rules.clone();
        let now = self.clock.now_ms();
        self.read(move |c| reads::list_agents(c, &rules, now, online_ms))
            .await
    }

    async fn preempt(&self, online_ms: u64) -> Result<usize> {
        self.write(move |ctx| preempt::preempt(ctx, online_ms))
            .await
    }

    async fn explain(
        &self,
        run_id: &RunId,
        stage: Option<String>,
        online_ms: u64,
    ) -> Result<Explanation> {
        let rules = self.rules.clone();
        let id = run_id.clone();
        let now = self.clock.now_ms();
        self.read(move |c| {
            let id = reads::resolve_run(c, &id)?;
            explain::explain(c, &rules, &id, stage.as_deref(), now, online_ms)
        })
        .await
    }

    async fn transitions_since(
        &self,
        after: i64,
        run: Option<RunId>,
        limit: u32,
    ) -> Result<Vec<Transition>> {
        self.read(move |c| reads::transitions_since(c, after, run.as_ref(), limit))
            .await
    }

    async fn record_usage(
        &self,
        rows: Vec<(JobId, String, orchestrator_core::fabric::Usage)>,
    ) -> Result<usize> {
        self.write(move |ctx| usage::record(ctx, rows)).await
    }

    async fn job_usage(
        &self,
        job_id: JobId,
    ) -> Result<std::collections::BTreeMap<String, orchestrator_core::fabric::Usage>> {
        self.read(move |c| usage::job(c, job_id)).await
    }

    async fn job_holder(&self, job_id: JobId) -> Result<Option<crate::JobHolder>> {
        self.read(move |c| usage::job_holder(c, job_id)).await
    }

    async fn counts(&self) -> Result<Counts> {
        self.read(reads::counts).await
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<[Transition]>> {
        self.events.subscribe()
    }

    fn jobs_queued(&self) -> Arc<Notify> {
        self.jobs_queued.clone()
    }

    fn writer_stats(&self) -> WriterStats {
        self.stats.snapshot()
    }

    async fn probe_write(&self) -> Result<()> {
        // A command runs inside the batch's `BEGIN IMMEDIATE`, which holds
        // the write lock, and its answer comes after `COMMIT`.
        self.write(|_| Ok(())).await
    }

    async fn close(&self) {
        // Dropping the last sender ends the writer's loop after its queue drains.
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        let listener = self.listener.lock().ok().and_then(|mut l| l.take());
        if let Some((stop, h)) = listener {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}
