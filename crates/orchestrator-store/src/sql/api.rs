//! The store's API: what the daemon asks of [`SqlStore`], each a write
//! command sent to the writer or a query on the read connection.

use std::sync::Arc;

use orchestrator_core::api::{
    AgentRegistered, AgentTokenView, AgentView, ClaimedJob, CompleteRequest, Completed,
    Explanation, HeartbeatResponse, InboxItem, LeaseRef, RegisterAgent, RunDetail, RunSummary,
    Submitted, WaitPoll, WaitStatus,
};
use orchestrator_core::{Actor, AgentId, JobId, LeaseId, RunId, Transition};
use tokio::sync::{broadcast, Notify};

use super::{
    agents, claim, complete, credentials, decide, explain, inbox, lease_end, leases, preempt,
    reads, run, spent, submit, usage, wait,
};
use super::{SqlStore, WriterStats};
use crate::{Counts, Credential, HumanCommand, LinkUse, NewRun, Refused, Result, Revocations};

/// What the daemon asks of the store: every state change is written with
/// its transition row in one transaction.
impl SqlStore {
    /// Validates, plans and writes a run with its stage runs and `requires`
    /// edges; runnable stages are queued in the same transaction.
    pub async fn submit_run(&self, run: NewRun) -> Result<Submitted> {
        self.write(move |ctx| submit::submit_run(ctx, run)).await
    }

    /// Registers an agent (again, under the same name, reusing its id). Leases
    /// an earlier incarnation held are void: their stages are requeued.
    pub async fn register_agent(
        &self,
        reg: RegisterAgent,
        lease_ttl_ms: u64,
        heartbeat_interval_ms: u64,
    ) -> Result<AgentRegistered> {
        self.write(move |ctx| leases::register_agent(ctx, reg, lease_ttl_ms, heartbeat_interval_ms))
            .await
    }

    /// Leases the best queued job this agent can run, if any.
    pub async fn claim(&self, agent_id: &AgentId, lease_ttl_ms: u64) -> Result<Option<ClaimedJob>> {
        self.claim_keyed(agent_id, lease_ttl_ms, None).await
    }

    /// [`SqlStore::claim`] under the agent's key for this claim: when a claim
    /// with that key already leased a job that is still held, that job is
    /// handed out again instead of another.
    pub async fn claim_keyed(
        &self,
        agent_id: &AgentId,
        lease_ttl_ms: u64,
        key: Option<String>,
    ) -> Result<Option<ClaimedJob>> {
        let agent_id = agent_id.clone();
        self.write(move |ctx| claim::claim(ctx, &agent_id, lease_ttl_ms, key.as_deref()))
            .await
    }

    /// Extends the leases the agent proves it holds; lists those it no longer holds.
    pub async fn heartbeat(
        &self,
        agent_id: &AgentId,
        leases: Vec<LeaseRef>,
        lease_ttl_ms: u64,
    ) -> Result<HeartbeatResponse> {
        let agent_id = agent_id.clone();
        self.write(move |ctx| leases::heartbeat(ctx, &agent_id, leases, lease_ttl_ms))
            .await
    }

    /// Completes a job under its live lease; with `claim_next`, also leases
    /// the agent its next job (for `lease_ttl_ms`) in the same transaction. A stale token is refused with
    /// [`StoreError::StaleLease`] and the refusal is recorded as a transition.
    /// The same completion sent again by its holder (its answer was lost) is
    /// acknowledged again, recording nothing, and hands back the next job
    /// that the request's `claim_key` leased.
    pub async fn complete(
        &self,
        job_id: JobId,
        req: CompleteRequest,
        lease_ttl_ms: u64,
    ) -> Result<Completed> {
        self.write(move |ctx| complete::complete(ctx, job_id, req, lease_ttl_ms))
            .await?
            .into_result(job_id)
    }

    /// A human's command to a run (`Cancel`, `Pause`, `Resume`): refused when
    /// the run's state does not allow it. Cancelling cancels the open stages,
    /// their live jobs and leases; pausing holds each stage at its next
    /// checkpoint; resuming queues the held stages again.
    pub async fn command_run(
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

    /// A human's answer to a waiting stage: approve, reject with feedback,
    /// or answer a question. Refused, changing nothing, when the stage or
    /// question is not waiting for it. `run_id` may be a unique prefix.
    pub async fn human(
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

    /// [`SqlStore::human`] through a signed link: refused with
    /// [`StoreError::Refused`] when the link was used before or its request
    /// is no longer the latest of its entity; otherwise the command and the
    /// link's record as used commit together.
    pub async fn human_by_link(
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

    /// Why a signed link would be refused now (used, or its request
    /// superseded), without spending it; None when it would act.
    pub async fn link_refusal(&self, run_id: &RunId, link: LinkUse) -> Result<Option<Refused>> {
        let prefix = run_id.clone();
        self.read(move |c| {
            let id = reads::resolve_run(c, &prefix)?;
            spent::refusal(c, &id, &link)
        })
        .await
    }

    /// Records a one-time credential as spent until `expires_at_ms`;
    /// [`StoreError::Refused`] when it was spent before.
    pub async fn spend(&self, kind: Credential, id: String, expires_at_ms: i64) -> Result<()> {
        self.write(move |ctx| spent::spend(ctx, kind, &id, expires_at_ms))
            .await
    }

    /// Voids every dashboard session and login ticket made at or before `at_ms`.
    pub async fn revoke_sessions(&self, at_ms: i64) -> Result<()> {
        self.write(move |ctx| spent::revoke_sessions(ctx, at_ms))
            .await
    }

    /// The dashboard sessions ended before their time.
    pub async fn revocations(&self) -> Result<Revocations> {
        let now = self.clock.now_ms();
        self.read(move |c| spent::revocations(c, now)).await
    }

    /// A running step asks a question and waits for the answer inside
    /// (`orch ask --wait`): recorded once per `req.key`, under the job's
    /// live lease, and its stage shows `awaiting_input` while the job stays
    /// leased. Returns the question's id.
    pub async fn ask_waiting(
        &self,
        job_id: JobId,
        req: orchestrator_core::api::WaitAsk,
    ) -> Result<i64> {
        self.write(move |ctx| wait::ask(ctx, job_id, &req)).await
    }

    /// Where the question `poll.question_id` that job `job_id`'s step waits
    /// for stands. Refused ([`StoreError::StaleLease`]) unless
    /// `poll.agent_id` holds the job's live lease under `poll.lease_token`.
    pub async fn wait_status(&self, job_id: JobId, p: WaitPoll) -> Result<WaitStatus> {
        let (agent, token, q) = (p.agent_id, p.lease_token, p.question_id);
        self.read(move |c| wait::status(c, job_id, &agent, &token, q))
            .await
    }

    /// The step stops waiting for `poll.question_id` (checked as
    /// [`SqlStore::wait_status`]): an open question closes and its stage runs on.
    pub async fn withdraw_wait(&self, job_id: JobId, p: WaitPoll) -> Result<WaitStatus> {
        let (agent, token, q) = (p.agent_id, p.lease_token, p.question_id);
        self.write(move |ctx| wait::withdraw(ctx, job_id, &agent, &token, q))
            .await
    }

    /// Everything waiting for a human, oldest first.
    pub async fn inbox(&self) -> Result<Vec<InboxItem>> {
        self.read(inbox::inbox).await
    }

    /// The jobs of those of `lease_ids` that `agent_id` held.
    pub async fn lease_jobs(
        &self,
        agent_id: &AgentId,
        lease_ids: Vec<LeaseId>,
    ) -> Result<Vec<JobId>> {
        let agent_id = agent_id.clone();
        self.read(move |c| reads::lease_jobs(c, &agent_id, &lease_ids))
            .await
    }

    /// Expires every active lease whose time ran out before `now_ms` and
    /// starts the next attempt of every stage whose backoff has passed;
    /// returns how many leases expired.
    pub async fn expire_leases(&self, now_ms: i64) -> Result<usize> {
        self.write(move |ctx| lease_end::expire_leases(ctx, now_ms))
            .await
    }

    /// Records as lost (one `online -> lost` agent transition, with how long
    /// it has been silent and how many of its leases expired) every agent
    /// not heard from within `online_ms` of `now_ms` and not marked already;
    /// its next heartbeat or registration records `lost -> online`. Returns
    /// how many were marked.
    pub async fn mark_lost_agents(&self, now_ms: i64, online_ms: u64) -> Result<usize> {
        self.write(move |ctx| agents::mark_lost(ctx, now_ms, online_ms))
            .await
    }

    /// Gives every active lease `grace_ms` more, so agents can reach a daemon
    /// that just restarted before their leases are judged.
    pub async fn resume(&self, grace_ms: u64) -> Result<usize> {
        self.write(move |ctx| leases::resume(ctx, grace_ms)).await
    }

    /// The earliest moment the reaper has work: a lease expiry or the end
    /// of a stage's backoff.
    pub async fn next_lease_expiry(&self) -> Result<Option<i64>> {
        self.read(reads::next_lease_expiry).await
    }

    pub async fn list_runs(&self, limit: u32) -> Result<Vec<RunSummary>> {
        self.read(move |c| reads::list_runs(c, limit)).await
    }

    pub async fn run_detail(&self, run_id: &RunId) -> Result<RunDetail> {
        let id = run_id.clone();
        self.read(move |c| reads::run_detail(c, &id)).await
    }

    /// Issues agent NAME's token and returns it, the one time it is seen
    /// (only its hash is kept). `replace`: a live token of NAME is replaced
    /// instead of refusing.
    pub async fn issue_agent_token(
        &self,
        name: &str,
        replace: bool,
        actor: &Actor,
    ) -> Result<String> {
        let (name, actor) = (name.to_owned(), actor.to_owned());
        self.write(move |ctx| credentials::issue(ctx, &name, replace, &actor))
            .await
    }

    /// Revokes agent NAME's token; the name stays bound to it.
    pub async fn revoke_agent_token(&self, name: &str, actor: &Actor) -> Result<AgentTokenView> {
        let (name, actor) = (name.to_owned(), actor.to_owned());
        self.write(move |ctx| credentials::revoke(ctx, &name, &actor))
            .await
    }

    pub async fn list_agent_tokens(&self) -> Result<Vec<AgentTokenView>> {
        self.read(credentials::list).await
    }

    /// The agent credential `token` is, revoked or not; None when it is none.
    pub async fn agent_token_owner(&self, token: &str) -> Result<Option<AgentTokenView>> {
        let token = token.to_owned();
        self.read(move |c| credentials::owner(c, &token)).await
    }

    /// Whether agent NAME has a credential (live or revoked).
    pub async fn agent_name_bound(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.read(move |c| credentials::bound(c, &name)).await
    }

    /// The name agent `agent_id` registered under, and whether that name
    /// has a credential; None for an unknown agent.
    pub async fn agent_name(&self, agent_id: &AgentId) -> Result<Option<(String, bool)>> {
        let id = agent_id.clone();
        self.read(move |c| credentials::agent_name(c, &id)).await
    }

    /// Every agent with its capacity and what it has free now; `online`
    /// when heard from within `online_ms`.
    pub async fn list_agents(&self, online_ms: u64) -> Result<Vec<AgentView>> {
        let rules = self.rules.clone();
        let now = self.clock.now_ms();
        self.read(move |c| reads::list_agents(c, &rules, now, online_ms))
            .await
    }

    /// One pre-emption pass: asks running lower-priority stages to yield at
    /// their next checkpoint where waiting higher-priority work cannot be
    /// placed otherwise. Returns how many were asked.
    pub async fn preempt(&self, online_ms: u64) -> Result<usize> {
        self.write(move |ctx| preempt::preempt(ctx, online_ms))
            .await
    }

    /// Why each stage of a run (or only `stage`) runs where it does or waits.
    /// `run_id` may be a unique prefix.
    pub async fn explain(
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

    /// Transitions with `seq > after`, oldest first, at most `limit`; only
    /// those of run `run` when given.
    pub async fn transitions_since(
        &self,
        after: i64,
        run: Option<RunId>,
        limit: u32,
    ) -> Result<Vec<Transition>> {
        self.read(move |c| reads::transitions_since(c, after, run.as_ref(), limit))
            .await
    }

    /// Adds model usage, as (job id, model, totals) rows, to the jobs'
    /// runs and stages; one transaction for all. Returns how many rows named
    /// no known job and were dropped.
    pub async fn record_usage(
        &self,
        rows: Vec<(JobId, String, orchestrator_core::fabric::Usage)>,
    ) -> Result<usize> {
        self.write(move |ctx| usage::record(ctx, rows)).await
    }

    /// One job's model usage by model name.
    pub async fn job_usage(
        &self,
        job_id: JobId,
    ) -> Result<std::collections::BTreeMap<String, orchestrator_core::fabric::Usage>> {
        self.read(move |c| usage::job(c, job_id)).await
    }

    /// A job's state with its run's id and priority; None for an unknown
    /// job. Cheap whatever the run's size: the gateway asks it per request.
    pub async fn job_holder(&self, job_id: JobId) -> Result<Option<crate::JobHolder>> {
        self.read(move |c| usage::job_holder(c, job_id)).await
    }

    pub async fn counts(&self) -> Result<Counts> {
        self.read(reads::counts).await
    }

    /// Every committed batch's transitions, in commit order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[Transition]>> {
        self.events.subscribe()
    }

    /// Notified after every commit that queued at least one job.
    pub fn jobs_queued(&self) -> Arc<Notify> {
        self.jobs_queued.clone()
    }

    pub fn writer_stats(&self) -> WriterStats {
        self.stats.snapshot()
    }

    /// Commits an empty write through the writer: proof that it runs and
    /// that the database grants the write lock. Changes nothing.
    pub async fn probe_write(&self) -> Result<()> {
        // A command runs inside the batch's `BEGIN IMMEDIATE`, which holds
        // the write lock, and its answer comes after `COMMIT`.
        self.write(|_| Ok(())).await
    }

    /// Finishes the writer's work and closes the store cleanly.
    pub async fn close(&self) {
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
