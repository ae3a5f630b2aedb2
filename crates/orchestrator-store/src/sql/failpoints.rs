//! Failure points in the writer, for tests only (cargo feature `failpoints`).
//!
//! A test arms a point for the next batch: its k-th SQL statement (counted
//! from `BEGIN IMMEDIATE`, savepoints and `COMMIT` included) either fails, or
//! the process aborts right after that statement finishes. The statement is
//! counted by SQLite's trace hook and failed by its progress handler, which
//! interrupts it (`SQLITE_INTERRUPT`), so the failure is a real SQLite error
//! between two real statements of the batch, not an imitation in Rust.
//! Both hooks are installed only for an armed batch: a build with the feature
//! but no armed point runs exactly as production does.
//!
//! Beside that sweep, named points ([`Point`]) mark the moments of a batch
//! that matter whatever its statements are: just before its `COMMIT`, and
//! just after it, before any caller is answered or any transition published.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::trace::{TraceEvent, TraceEventCodes};
use rusqlite::Connection;

use super::SqlStore;
use crate::Result;

/// What happens at the armed statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// The statement fails with an interrupt error.
    Fail,
    /// The process aborts as soon as the statement has finished.
    Abort,
}

/// A named moment of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Every command ran; `COMMIT` is next. A failure here rolls the batch
    /// back whole.
    BeforeCommit,
    /// The batch is durable; its callers are not answered yet and its
    /// transitions not published. A failure here answers every caller with
    /// an error although their commands committed: the lost answer an agent
    /// must survive by asking again.
    AfterCommit,
}

/// What the last armed batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultReport {
    /// Statements it started, up to and including `COMMIT` or `ROLLBACK`.
    pub statements: u64,
    /// Whether the armed statement was really interrupted.
    pub fired: bool,
    /// Why the batch failed, when it did.
    pub error: Option<String>,
}

/// Shared between the store (which arms) and the writer (which installs).
#[derive(Default)]
pub struct Faults {
    armed: Mutex<Option<(u64, FaultMode)>>,
    named: Mutex<Option<(Point, FaultMode)>>,
    current: Mutex<Option<Arc<BatchFault>>>,
    last: Mutex<FaultReport>,
}

#[derive(Default)]
struct BatchFault {
    target: u64,
    abort: bool,
    started: AtomicU64,
    finished: AtomicU64,
    trip: AtomicBool,
    fired: AtomicBool,
}

impl Faults {
    /// The batch reached `point`: fails or aborts when it is armed (once).
    pub fn at(&self, point: Point) -> Result<()> {
        let mut named = match self.named.lock() {
            Ok(n) => n,
            Err(_) => return Ok(()),
        };
        match *named {
            Some((p, mode)) if p == point => {
                *named = None;
                if mode == FaultMode::Abort {
                    std::process::abort();
                }
                Err(crate::StoreError::Internal(format!(
                    "failure point {point:?} fired"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Installs the hooks on the write connection when a point is armed.
    pub fn begin_batch(&self, conn: &mut Connection) {
        let armed = self.armed.lock().ok().and_then(|mut a| a.take());
        let Some((target, mode)) = armed else {
            return;
        };
        let f = Arc::new(BatchFault {
            target,
            abort: mode == FaultMode::Abort,
            ..BatchFault::default()
        });
        let t = f.clone();
        let traced = conn.trace_v2(
            TraceEventCodes::SQLITE_TRACE_STMT | TraceEventCodes::SQLITE_TRACE_PROFILE,
            Some(move |ev: TraceEvent<'_>| match ev {
                TraceEvent::Stmt(..) => {
                    let n = t.started.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == t.target && !t.abort {
                        t.trip.store(true, Ordering::SeqCst);
                    }
                }
                TraceEvent::Profile(..) => {
                    let n = t.finished.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == t.target && t.abort {
                        std::process::abort();
                    }
                }
                _ => {}
            }),
        );
        let p = f.clone();
        let handled = conn.progress_handler(
            1,
            Some(move || {
                let interrupt = p.trip.swap(false, Ordering::SeqCst);
                if interrupt {
                    p.fired.store(true, Ordering::SeqCst);
                }
                interrupt
            }),
        );
        if let (Ok(()), Ok(()), Ok(mut c)) = (traced, handled, self.current.lock()) {
            *c = Some(f);
        }
    }

    /// Records what the batch did, before its callers are answered, and
    /// disarms a point that was reached but not delivered.
    pub fn record(&self, error: Option<String>) {
        let Some(f) = self.current.lock().ok().and_then(|c| c.clone()) else {
            return;
        };
        f.trip.store(false, Ordering::SeqCst);
        if let Ok(mut last) = self.last.lock() {
            *last = FaultReport {
                statements: f.started.load(Ordering::SeqCst),
                fired: f.fired.load(Ordering::SeqCst),
                error,
            };
        }
    }

    /// Removes the hooks, so the point never leaks into the next batch or
    /// the writer's checkpoint at shutdown.
    pub fn end_batch(&self, conn: &mut Connection) {
        if let Some(_f) = self.current.lock().ok().and_then(|mut c| c.take()) {
            let _ = conn.trace_v2(TraceEventCodes::empty(), None::<fn(TraceEvent<'_>)>);
            let _ = conn.progress_handler(0, None::<fn() -> bool>);
        }
    }
}

#[doc(hidden)]
impl SqlStore {
    /// Arms statement `k` (1-based) of the next batch the writer starts.
    pub fn arm_failpoint(&self, k: u64, mode: FaultMode) {
        if let Ok(mut a) = self.faults.armed.lock() {
            *a = Some((k, mode));
        }
    }

    /// Arms the named `point` of the next batch that reaches it.
    pub fn arm_point(&self, point: Point, mode: FaultMode) {
        if let Ok(mut n) = self.faults.named.lock() {
            *n = Some((point, mode));
        }
    }

    /// What the last armed batch did.
    pub fn failpoint_report(&self) -> FaultReport {
        self.faults
            .last
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Commands waiting in the writer's queue.
    pub fn queued_commands(&self) -> usize {
        self.tx
            .lock()
            .ok()
            .and_then(|t| t.as_ref().map(|t| t.max_capacity() - t.capacity()))
            .unwrap_or(0)
    }

    /// Runs `f` as a write command of its own, in a savepoint like any other.
    pub async fn exec_command<R: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::db::Conn) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.write(move |ctx| f(ctx.conn)).await
    }
}
