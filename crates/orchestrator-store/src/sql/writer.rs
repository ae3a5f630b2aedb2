//! The single writer: one thread owns the write connection and commits
//! commands in batches (group commit).
//!
//! It blocks for the first command, then drains whatever else is already
//! waiting, up to `max_items` or until `max_ms` has passed, and commits them
//! all at once. It never sleeps waiting for more work: under load commands
//! pile up while the previous commit is being synced, so batches form by
//! themselves; when idle, a lone command is committed at once.
//! Each command runs in its own savepoint, so one command's failure, or
//! panic, rolls back only that command. Callers are answered only after the
//! commit. When the transaction itself can no longer be trusted (a savepoint
//! statement failed, or SQLite rolled the transaction back on its own) the
//! whole batch is rolled back and every caller in it gets the error: a batch
//! is all or nothing, never a mix.
//!
//! This is infrastructure: it imports no domain module. What a batch must
//! do before it commits (the scheduler pass, when a command released or
//! ended a stage or created a run) and what its PostgreSQL NOTIFY says are
//! handed to it as [`Hooks`] by the store that builds it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::Conn;
use orchestrator_core::sched::SystemRules;
use orchestrator_core::{RunId, Transition, Workflow};
use tokio::sync::{broadcast, mpsc, Notify};

use super::tx::{panic_message, Ctx};
use crate::{Result, StoreError};

/// Called after the batch commits (None) or fails to (Some(error)).
pub type Reply = Box<dyn FnOnce(Option<&StoreError>) + Send>;
/// A write command: runs inside the batch's transaction, returns its reply.
pub type Command = Box<dyn FnOnce(&mut Ctx<'_>) -> Reply + Send>;

/// What the writer runs for the domain, given when the store is built.
pub struct Hooks {
    /// The end-of-batch scheduler pass, run inside the batch's transaction
    /// before COMMIT when a command set `Ctx::schedule`: a completion and
    /// the jobs it unlocks commit together.
    pub schedule: fn(&mut Ctx<'_>) -> Result<()>,
    /// PostgreSQL: what every batch NOTIFYs. Transitions are then published
    /// by the listener, which hears every daemon's, not here.
    pub notify: Option<PgNotify>,
}

/// The NOTIFY a PostgreSQL batch ends with.
pub struct PgNotify {
    /// The channel every daemon of the store LISTENs on.
    pub channel: String,
    /// The payload, given whether the batch left a job queued.
    pub payload: Box<dyn Fn(bool) -> String + Send>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub commands: AtomicU64,
    pub commit_micros: AtomicU64,
    pub max_batch: AtomicU64,
    pub failed_batches: AtomicU64,
}

/// A copy of the writer's counters.
#[derive(Debug, Clone, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub batches: u64,
    /// Commands committed in them.
    pub commands: u64,
    /// Total time spent in COMMIT, in microseconds.
    pub commit_micros: u64,
    /// Largest batch seen.
    pub max_batch: u64,
    pub failed_batches: u64,
}

impl Stats {
    pub fn snapshot(&self) -> WriterStats {
        WriterStats {
            batches: self.batches.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            commit_micros: self.commit_micros.load(Ordering::Relaxed),
            max_batch: self.max_batch.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
        }
    }
}

pub struct Writer {
    pub conn: Conn,
    pub rx: mpsc::Receiver<Command>,
    pub max_items: usize,
    pub max_wait: Duration,
    pub events: broadcast::Sender<Arc<[Transition]>>,
    pub jobs_queued: Arc<Notify>,
    pub stats: Arc<Stats>,
    pub rules: Arc<SystemRules>,
    /// Stamps each batch: every row of one batch carries the same time.
    pub clock: Arc<dyn orchestrator_host::clock::Clock>,
    pub hooks: Hooks,
    #[cfg(feature = "failpoints")]
    pub faults: Arc<super::failpoints::Faults>,
}

impl Writer {
    /// The writer thread's loop; returns when every sender is gone.
    pub fn run(mut self) {
        let mut workflows = HashMap::new();
        let mut batch: Vec<Command> = Vec::with_capacity(self.max_items);
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            let started = Instant::now();
            while batch.len() < self.max_items && started.elapsed() < self.max_wait {
                match self.rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch, &mut workflows);
        }
        // Checkpoint the WAL so a clean shutdown leaves one tidy file.
        if !self.conn.is_postgres() {
            let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        }
    }

    fn commit(&mut self, batch: &mut Vec<Command>, workflows: &mut HashMap<RunId, Arc<Workflow>>) {
        let n = batch.len() as u64;
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
        #[cfg(feature = "failpoints")]
        if let Some(c) = self.conn.sqlite_mut() {
            self.faults.begin_batch(c);
        }
        let mut ctx = Ctx {
            conn: &self.conn,
            now: self.clock.now_ms(),
            workflows,
            transitions: Vec::new(),
            schedule: false,
            queued: false,
            rules: &self.rules,
            broken: None,
        };
        let outcome = (|| -> Result<()> {
            if ctx.conn.is_postgres() {
                // One batch at a time across every daemon on the database.
                ctx.conn
                    .execute_batch(&format!("BEGIN; {}", super::schema_pg::WRITE_LOCK))?;
            } else {
                ctx.conn.execute_batch("BEGIN IMMEDIATE")?;
            }
            for cmd in batch.drain(..) {
                // `Ctx::savepoint` turns a command's panic into its own error;
                // a panic outside it (a bug in the writer's plumbing) leaves a
                // savepoint of unknown state, so the batch is rolled back, its
                // callers see the store error, and the next batch goes on.
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cmd(&mut ctx))) {
                    Ok(reply) => replies.push(reply),
                    Err(panic) => {
                        return Err(StoreError::Internal(format!(
                            "a store command panicked: {}",
                            panic_message(panic.as_ref())
                        )));
                    }
                }
                ctx.healthy()?;
            }
            if ctx.schedule {
                (self.hooks.schedule)(&mut ctx)?;
            }
            if ctx.queued {
                // Completions may have handed every new job out already;
                // waking idle claimers for nothing would cost each a round trip.
                ctx.queued = ctx
                    .conn
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'queued')")?
                    .query_row([], |r| r.get(0))?;
            }
            ctx.healthy()?;
            if let Some(n) = &self.hooks.notify {
                if !ctx.transitions.is_empty() || ctx.queued {
                    // Delivered to every listener when, and only if, the batch commits.
                    ctx.conn.query_row(
                        "SELECT pg_notify(?1, ?2)",
                        crate::db::params![n.channel, (n.payload)(ctx.queued)],
                        |_| Ok(()),
                    )?;
                }
            }
            #[cfg(feature = "failpoints")]
            self.faults.at(super::failpoints::Point::BeforeCommit)?;
            let t = Instant::now();
            ctx.conn.execute_batch("COMMIT")?;
            self.stats
                .commit_micros
                .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            Ok(())
        })();
        batch.clear();
        #[cfg(feature = "failpoints")]
        self.faults
            .record(outcome.as_ref().err().map(ToString::to_string));
        match outcome {
            Ok(()) => {
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.commands.fetch_add(n, Ordering::Relaxed);
                self.stats.max_batch.fetch_max(n, Ordering::Relaxed);
                let queued = ctx.queued;
                let transitions = std::mem::take(&mut ctx.transitions);
                #[cfg(feature = "failpoints")]
                let lost = self.faults.at(super::failpoints::Point::AfterCommit).err();
                #[cfg(not(feature = "failpoints"))]
                let lost: Option<crate::StoreError> = None;
                for r in replies {
                    r(lost.as_ref());
                }
                if !transitions.is_empty() && self.hooks.notify.is_none() {
                    // No subscriber is not an error.
                    let _ = self.events.send(transitions.into());
                }
                if queued {
                    self.jobs_queued.notify_waiters();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, commands = n, "store batch failed; rolled back");
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                // SQLite may have rolled back already (then there is no
                // transaction to end, and the error says so harmlessly).
                let _ = ctx.conn.execute_batch("ROLLBACK");
                // Cached workflows may describe runs the rollback removed.
                ctx.workflows.clear();
                for r in replies {
                    r(Some(&e));
                }
            }
        }
        #[cfg(feature = "failpoints")]
        if let Some(c) = self.conn.sqlite_mut() {
            self.faults.end_batch(c);
        }
    }
}
