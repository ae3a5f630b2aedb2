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
//! | 1 domain base | common, steps, substitute, placement, agents, credentials, spent, usage, outputs |
//! | 2 state machines | stage, conditions, job, run, lease_end, retry, loops, human, wait, preempt, policy |
//! | 3 domain commands | submit, schedule, claim, complete, leases, decide |
//! | 4 reads | reads, inbox, explain |
//! | 5 plumbing | pg, copy, open, schema_dump |
//! | 6 store API | mod, api |
//!
//! - 0: `Ctx` (what a command sees), savepoints and transition rows (`tx`);
//!   the writer thread and its batches (`writer`), which knows nothing of
//!   the domain: the end-of-batch scheduler pass and the PostgreSQL NOTIFY
//!   payload are handed to it as `writer::Hooks` when the store is built.
//!   The tables, defined once (`tables`) and written as either database's
//!   DDL (`ddl`); each database's schema versions and migrations (`schema`,
//!   `schema_pg`).
//! - 1: what the commands share and what changes no run state: helpers,
//!   a spec's steps, the `${{ }}` context and rendering of a job,
//!   placement, agents' presence, tokens, spent credentials, model usage,
//!   stage outputs.
//! - 2: the stage, job and run machines as the store applies them, and the
//!   rules their effects call, which apply events back (a retry later, a
//!   send-back, a question, a wait, a yield, an admission, a stage's `if:`). This recursion
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
mod api;
mod claim;
mod common;
mod complete;
mod conditions;
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
mod outputs;
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
mod substitute;
mod tables;
mod tx;
mod usage;
mod wait;
mod writer;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::db::Conn;
use orchestrator_core::sched::SystemRules;
use orchestrator_core::Transition;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use crate::{Result, StoreError};
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

/// The store: SQLite or PostgreSQL behind one writer and a read connection.
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
