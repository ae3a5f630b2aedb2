//! The embedded SQLite store: a writer thread for every change, a read
//! connection for queries.

mod agents;
mod copy;
mod credentials;
mod decide;
mod explain;
#[cfg(feature = "failpoints")]
mod failpoints;
mod graph;
mod human;
mod inbox;
mod leases;
mod listen;
mod location;
mod loops;
mod placement;
mod policy;
mod preempt;
mod reads;
mod retry;
mod schema;
mod schema_pg;
mod spent;
mod usage;
mod wait;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::db::Conn;
use orchestrator_core::api::{
    AgentRegistered, AgentTokenView, AgentView, ClaimedJob, CompleteRequest, Completed,
    Explanation, HeartbeatResponse, InboxItem, LeaseRef, RegisterAgent, RunDetail, RunSummary,
    Submitted, WaitPoll, WaitStatus,
};
use orchestrator_core::sched::SystemRules;
use orchestrator_core::Transition;
use rusqlite::Connection;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use crate::{
    Counts, Credential, HumanCommand, LinkUse, NewRun, Refused, Result, Revocations, Store,
    StoreError,
};
pub use copy::{sqlite_to_postgres, CopyReport};
use decide::Decision;
#[cfg(feature = "failpoints")]
pub use failpoints::{FaultMode, FaultReport};
pub use location::{drop_schema, Location};
pub use writer::WriterStats;
use writer::{Command, Ctx, Stats, Writer};

/// How the store batches and where it lives.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The database: a SQLite file (created with its directory when
    /// missing) or a PostgreSQL database.
    pub location: Location,
    /// Most commands committed in one transaction.
    pub max_items: usize,
    /// Longest time, in milliseconds, a batch keeps taking commands that are
    /// already waiting before it commits (the writer never waits for new ones).
    pub max_ms: u64,
    /// Capacity of the writer's command queue; senders wait when it is full.
    pub queue: usize,
    /// The daemon's system rules: priority caps, limits, reserved capacity.
    pub rules: SystemRules,
}

impl StoreOptions {
    /// A SQLite store in the file `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::at(Location::Sqlite(path.into()))
    }

    /// A store at `location`, with the default batching.
    pub fn at(location: Location) -> Self {
        StoreOptions {
            location,
            max_items: 256,
            max_ms: 5,
            queue: 4096,
            rules: SystemRules::default(),
        }
    }
}

/// The SQLite implementation of [`Store`].
pub struct SqlStore {
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    read: Arc<Mutex<Conn>>,
    events: broadcast::Sender<Arc<[Transition]>>,
    jobs_queued: Arc<Notify>,
    stats: Arc<Stats>,
    rules: Arc<SystemRules>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// PostgreSQL only: the thread that publishes every daemon's commits.
    listener: Mutex<Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>>,
    #[cfg(feature = "failpoints")]
    faults: Arc<failpoints::Faults>,
    /// SQLite only, held for the store's lifetime: one writer per database file.
    _lock: Option<std::fs::File>,
}

/// The connections a store opens, by backend.
struct Opened {
    write: Conn,
    read: Conn,
    lock: Option<std::fs::File>,
    /// PostgreSQL: the listener's connection and the writer's NOTIFY
    /// channel and payload prefix.
    pg: Option<(Conn, listen::Listener)>,
}

/// Takes `<db>.lock` exclusively, so a second daemon on the same store is
/// refused instead of racing the first one's writer and reaper.
fn lock(db: &Path) -> Result<std::fs::File> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Database(format!(
            "the store {} is in use by another orch daemon (it holds {}); stop that one or use another data directory",
            db.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::Database(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| {
        StoreError::Database(format!("cannot open the store at {}: {e}", path.display()))
    })?;
    schema::configure(&conn)?;
    Ok(conn)
}

fn open_sqlite(path: &Path) -> Result<Opened> {
    location::ensure_parent(path)?;
    let lock = lock(path)?;
    let mut write = open_conn(path)?;
    schema::migrate(&mut write)?;
    let read = open_conn(path)?;
    Ok(Opened {
        write: Conn::Sqlite(write),
        read: Conn::Sqlite(read),
        lock: Some(lock),
        pg: None,
    })
}

fn open_postgres(
    url: &str,
    schema: Option<&str>,
    events: &broadcast::Sender<Arc<[Transition]>>,
    jobs_queued: &Arc<Notify>,
) -> Result<Opened> {
    let write = location::connect_pg(url, schema, "writer")?;
    schema_pg::migrate(&write)?;
    let read = location::connect_pg(url, schema, "reader")?;
    let listen = location::connect_pg(url, schema, "listener")?;
    // Subscribers hear of what is committed from now on, as on SQLite.
    let last: i64 = read.query_row("SELECT COALESCE(MAX(seq), 0) FROM transitions", [], |r| {
        r.get(0)
    })?;
    let listener = listen::Listener {
        url: url.to_owned(),
        schema: schema.map(str::to_owned),
        instance: crate::ids::new_id("d"),
        events: events.clone(),
        jobs_queued: jobs_queued.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        last,
    };
    Ok(Opened {
        write,
        read,
        lock: None,
        pg: Some((listen, listener)),
    })
}

impl SqlStore {
    /// Opens (creating and migrating when needed) the store and starts its
    /// writer, and on PostgreSQL the thread that follows other daemons' commits.
    pub fn open(opts: StoreOptions) -> Result<Self> {
        let rules = Arc::new(opts.rules.clone());
        let (events, _) = broadcast::channel(4096);
        let jobs_queued = Arc::new(Notify::new());
        let opened = match &opts.location {
            Location::Sqlite(path) => open_sqlite(path)?,
            // The driver runs a runtime of its own per connection, which
            // cannot start on a thread already inside one (a daemon opens
            // its store from async code).
            Location::Postgres { url, schema } => std::thread::scope(|s| {
                s.spawn(|| open_postgres(url, schema.as_deref(), &events, &jobs_queued))
                    .join()
                    .map_err(|_| StoreError::Database("opening the store panicked".into()))?
            })?,
        };
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let stats = Arc::new(Stats::default());
        #[cfg(feature = "failpoints")]
        let faults = Arc::new(failpoints::Faults::default());
        let notify = opened
            .pg
            .as_ref()
            .map(|(_, l)| (listen::channel(l.schema.as_deref()), l.instance.clone()));
        let w = Writer {
            conn: opened.write,
            rx,
            max_items: opts.max_items.max(1),
            max_wait: Duration::from_millis(opts.max_ms),
            events: events.clone(),
            jobs_queued: jobs_queued.clone(),
            stats: stats.clone(),
            rules: rules.clone(),
            notify,
            #[cfg(feature = "failpoints")]
            faults: faults.clone(),
        };
        let listener = match opened.pg {
            Some((conn, l)) => {
                let stop = l.stop.clone();
                let handle = std::thread::Builder::new()
                    .name("store-listener".into())
                    .spawn(move || l.run(conn))
                    .map_err(|e| {
                        StoreError::Database(format!("cannot start the store listener: {e}"))
                    })?;
                Some((stop, handle))
            }
            None => None,
        };
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || w.run())
            .map_err(|e| StoreError::Database(format!("cannot start the store writer: {e}")))?;
        Ok(SqlStore {
            tx: Mutex::new(Some(tx)),
            read: Arc::new(Mutex::new(opened.read)),
            events,
            jobs_queued,
            stats,
            rules,
            thread: Mutex::new(Some(thread)),
            listener: Mutex::new(listener),
            #[cfg(feature = "failpoints")]
            faults,
            _lock: opened.lock,
        })
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
            StoreError::Database(
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
                .map_err(|_| StoreError::Database("read connection poisoned".into()))?;
            f(&c)
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }
}

/// Carries out a human's command inside the writer's transaction.
fn human_command(ctx: &mut Ctx<'_>, id: &str, command: HumanCommand, actor: &str) -> Result<()> {
    match command {
        HumanCommand::Approve { stage_id, comment } => {
            human::approve(ctx, id, &stage_id, comment, actor)
        }
        HumanCommand::Reject { stage_id, feedback } => {
            human::reject(ctx, id, &stage_id, feedback, actor)
        }
        HumanCommand::Answer { question_id, text } => {
            human::answer(ctx, id, question_id, text, actor)
        }
        HumanCommand::Retry {
            stage_id,
            comment,
            feedback: Some(feedback),
        } => loops::by_human(ctx, id, &stage_id, &feedback, comment.as_deref(), actor),
        HumanCommand::Retry {
            stage_id,
            comment,
            feedback: None,
        } => decide::decide(ctx, id, &stage_id, Decision::Retry, comment, actor),
        HumanCommand::Skip { stage_id, comment } => {
            decide::decide(ctx, id, &stage_id, Decision::Skip, comment, actor)
        }
        HumanCommand::Abort {
            stage_id: Some(stage_id),
            comment,
        } => decide::decide(ctx, id, &stage_id, Decision::Abort, comment, actor),
        HumanCommand::Abort {
            stage_id: None,
            comment,
        } => decide::abort_run(ctx, id, comment, actor),
    }
}

impl Store for SqlStore {
    async fn submit_run(&self, run: NewRun) -> Result<Submitted> {
        self.write(move |ctx| graph::submit_run(ctx, run)).await
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
        agent_id: &str,
        lease_ttl_ms: u64,
        key: Option<String>,
    ) -> Result<Option<ClaimedJob>> {
        let agent_id = agent_id.to_owned();
        self.write(move |ctx| leases::claim(ctx, &agent_id, lease_ttl_ms, key.as_deref()))
            .await
    }

    async fn heartbeat(
        &self,
        agent_id: &str,
        leases: Vec<LeaseRef>,
        lease_ttl_ms: u64,
    ) -> Result<HeartbeatResponse> {
        let agent_id = agent_id.to_owned();
        self.write(move |ctx| leases::heartbeat(ctx, &agent_id, leases, lease_ttl_ms))
            .await
    }

    async fn complete(
        &self,
        job_id: i64,
        req: CompleteRequest,
        lease_ttl_ms: u64,
    ) -> Result<Completed> {
        self.write(move |ctx| leases::complete(ctx, job_id, req, lease_ttl_ms))
            .await?
    }

    async fn command_run(
        &self,
        run_id: &str,
        event: orchestrator_core::machine::RunEvent,
        actor: &str,
    ) -> Result<RunSummary> {
        let (id, actor) = (run_id.to_owned(), actor.to_owned());
        let read_id = id.clone();
        self.write(move |ctx| graph::command_run(ctx, &id, event, &actor))
            .await?;
        self.read(move |c| reads::run_summary_by_id(c, &read_id))
            .await
    }

    async fn human(&self, run_id: &str, command: HumanCommand, actor: &str) -> Result<RunSummary> {
        let prefix = run_id.to_owned();
        let id = self.read(move |c| reads::resolve_run(c, &prefix)).await?;
        let (read_id, actor) = (id.clone(), actor.to_owned());
        self.write(move |ctx| human_command(ctx, &id, command, &actor))
            .await?;
        self.read(move |c| reads::run_summary_by_id(c, &read_id))
            .await
    }

    async fn human_by_link(
        &self,
        run_id: &str,
        command: HumanCommand,
        actor: &str,
        link: LinkUse,
    ) -> Result<RunSummary> {
        let prefix = run_id.to_owned();
        let id = self.read(move |c| reads::resolve_run(c, &prefix)).await?;
        let (read_id, actor) = (id.clone(), actor.to_owned());
        self.write(move |ctx| {
            // "Used" first: a used link's round has moved on too, and the
            // human should hear the more precise reason.
            spent::spend(ctx, Credential::Link, &link.id, link.expires_at_ms)?;
            spent::check_round(ctx, &id, &link)?;
            human_command(ctx, &id, command, &actor)
        })
        .await?;
        self.read(move |c| reads::run_summary_by_id(c, &read_id))
            .await
    }

    async fn link_refusal(&self, run_id: &str, link: LinkUse) -> Result<Option<Refused>> {
        let prefix = run_id.to_owned();
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
        self.read(|c| spent::revocations(c, crate::now_ms())).await
    }

    async fn ask_waiting(&self, job_id: i64, req: orchestrator_core::api::WaitAsk) -> Result<i64> {
        self.write(move |ctx| wait::ask(ctx, job_id, &req)).await
    }

    async fn wait_status(&self, job_id: i64, p: WaitPoll) -> Result<WaitStatus> {
        let (agent, token, q) = (p.agent_id, p.lease_token, p.question_id);
        self.read(move |c| wait::status(c, job_id, &agent, &token, q))
            .await
    }

    async fn withdraw_wait(&self, job_id: i64, p: WaitPoll) -> Result<WaitStatus> {
        let (agent, token, q) = (p.agent_id, p.lease_token, p.question_id);
        self.write(move |ctx| wait::withdraw(ctx, job_id, &agent, &token, q))
            .await
    }

    async fn inbox(&self) -> Result<Vec<InboxItem>> {
        self.read(inbox::inbox).await
    }

    async fn lease_jobs(&self, agent_id: &str, lease_ids: Vec<i64>) -> Result<Vec<i64>> {
        let agent_id = agent_id.to_owned();
        self.read(move |c| reads::lease_jobs(c, &agent_id, &lease_ids))
            .await
    }

    async fn expire_leases(&self, now_ms: i64) -> Result<usize> {
        self.write(move |ctx| leases::expire_leases(ctx, now_ms))
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

    async fn run_detail(&self, run_id: &str) -> Result<RunDetail> {
        let id = run_id.to_owned();
        self.read(move |c| reads::run_detail(c, &id)).await
    }

    async fn issue_agent_token(&self, name: &str, replace: bool, actor: &str) -> Result<String> {
        let (name, actor) = (name.to_owned(), actor.to_owned());
        self.write(move |ctx| credentials::issue(ctx, &name, replace, &actor))
            .await
    }

    async fn revoke_agent_token(&self, name: &str, actor: &str) -> Result<AgentTokenView> {
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

    async fn agent_name(&self, agent_id: &str) -> Result<Option<(String, bool)>> {
        let id = agent_id.to_owned();
        self.read(move |c| credentials::agent_name(c, &id)).await
    }

    async fn list_agents(&self, online_ms: u64) -> Result<Vec<AgentView>> {
        let rules = self.rules.clone();
        self.read(move |c| reads::list_agents(c, &rules, crate::now_ms(), online_ms))
            .await
    }

    async fn preempt(&self, online_ms: u64) -> Result<usize> {
        self.write(move |ctx| preempt::preempt(ctx, online_ms))
            .await
    }

    async fn explain(
        &self,
        run_id: &str,
        stage: Option<String>,
        online_ms: u64,
    ) -> Result<Explanation> {
        let rules = self.rules.clone();
        let id = run_id.to_owned();
        self.read(move |c| {
            let id = reads::resolve_run(c, &id)?;
            explain::explain(c, &rules, &id, stage.as_deref(), crate::now_ms(), online_ms)
        })
        .await
    }

    async fn transitions_since(
        &self,
        after: i64,
        run: Option<String>,
        limit: u32,
    ) -> Result<Vec<Transition>> {
        self.read(move |c| reads::transitions_since(c, after, run.as_deref(), limit))
            .await
    }

    async fn record_usage(
        &self,
        rows: Vec<(i64, String, orchestrator_core::fabric::Usage)>,
    ) -> Result<usize> {
        self.write(move |ctx| usage::record(ctx, rows)).await
    }

    async fn job_usage(
        &self,
        job_id: i64,
    ) -> Result<std::collections::BTreeMap<String, orchestrator_core::fabric::Usage>> {
        self.read(move |c| usage::job(c, job_id)).await
    }

    async fn job_holder(&self, job_id: i64) -> Result<Option<crate::JobHolder>> {
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
