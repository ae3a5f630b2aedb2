//! The transaction layer's unit of work: what one write command sees while
//! it runs inside a writer batch (`Ctx`), its savepoint, and the transition
//! row every state change writes with it.
//!
//! It knows the database and the batch, not the run graph: nothing here
//! imports a domain module of the store. The domain's commands are written
//! against `Ctx`; the writer (`writer.rs`) owns the batches they run in.

use orchestrator_core::RunId;
use std::collections::HashMap;
use std::sync::Arc;

use crate::db::Conn;
use orchestrator_core::sched::SystemRules;
use orchestrator_core::{Actor, State, Transition, Workflow};

use crate::{Result, StoreError};

/// What a command sees while it runs.
pub struct Ctx<'c> {
    pub conn: &'c Conn,
    /// The time of the batch, in Unix milliseconds: one clock reading per batch.
    pub now: i64,
    /// Parsed workflows of running runs, so queuing a job never re-parses.
    pub workflows: &'c mut HashMap<RunId, Arc<Workflow>>,
    /// Transition rows written in this batch, published after commit.
    pub transitions: Vec<Transition>,
    /// Some stage became runnable or a run was created: run the scheduler pass.
    pub schedule: bool,
    /// A job was queued: wake agents waiting in claim.
    pub queued: bool,
    /// The daemon's system rules.
    pub rules: &'c SystemRules,
    /// Why the batch's transaction can no longer be committed: a savepoint
    /// could not be opened, released or rolled back. Checked after every command.
    pub broken: Option<StoreError>,
}

/// The text a panic carried, if it was a string.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

impl Ctx<'_> {
    /// Runs `f` in a savepoint: its writes and transitions stay only if it
    /// succeeds. A panic in `f` is rolled back like an error and returned as
    /// one, so it costs only this command. When the savepoint itself cannot be
    /// ended, the batch is marked broken and the writer rolls all of it back.
    pub fn savepoint<R>(&mut self, f: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        let mark = self.transitions.len();
        let (schedule, queued) = (self.schedule, self.queued);
        if let Err(e) = self.conn.execute_batch("SAVEPOINT cmd") {
            return Err(self.break_batch(e.into()));
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)))
            .unwrap_or_else(|panic| {
                // The cache may hold a workflow for rows the rollback removes.
                self.workflows.clear();
                Err(StoreError::Internal(format!(
                    "a store command panicked: {}",
                    panic_message(panic.as_ref())
                )))
            });
        match outcome {
            Ok(r) => match self.conn.execute_batch("RELEASE cmd") {
                Ok(()) => Ok(r),
                Err(e) => Err(self.break_batch(e.into())),
            },
            Err(e) => {
                if let Err(re) = self.conn.execute_batch("ROLLBACK TO cmd; RELEASE cmd") {
                    return Err(self.break_batch(re.into()));
                }
                self.transitions.truncate(mark);
                self.schedule = schedule;
                self.queued = queued;
                Err(e)
            }
        }
    }

    /// Marks the batch as not committable and returns the error for the caller.
    fn break_batch(&mut self, e: StoreError) -> StoreError {
        self.broken.get_or_insert_with(|| e.clone());
        e
    }

    /// Whether the batch's transaction can still be committed: no savepoint
    /// went wrong, and SQLite did not roll the transaction back by itself
    /// (it does on I/O errors, a full disk or an interrupt), after which later
    /// statements would each commit on their own.
    pub fn healthy(&mut self) -> Result<()> {
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        if self.conn.is_autocommit() {
            return Err(StoreError::Internal(
                "SQLite rolled the batch's transaction back after an error".into(),
            ));
        }
        Ok(())
    }

    /// Writes one transition row and keeps it for publishing after commit.
    /// The entity is the states' own; `from` is None for a creation.
    pub fn transition<S: Into<State>>(
        &mut self,
        entity_id: String,
        run_id: Option<&RunId>,
        from: Option<S>,
        to: S,
        reason: String,
        actor: &Actor,
    ) -> Result<()> {
        let (from, to) = (from.map(Into::into), to.into());
        let entity = to.entity();
        let mut st = self.conn.prepare_cached(
            "INSERT INTO transitions (entity, entity_id, run_id, from_state, to_state, reason, actor, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING seq",
        )?;
        let seq = st.query_row(
            crate::db::params![
                entity.as_str(),
                entity_id,
                run_id,
                from.map(State::as_str),
                to.as_str(),
                reason,
                actor.to_string(),
                self.now
            ],
            |r| r.get(0),
        )?;
        self.transitions.push(Transition {
            seq,
            entity,
            entity_id,
            run_id: run_id.cloned(),
            from,
            to,
            reason,
            actor: actor.clone(),
            at_ms: self.now,
        });
        Ok(())
    }
}
