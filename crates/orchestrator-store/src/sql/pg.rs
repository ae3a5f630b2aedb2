//! The PostgreSQL side of the store's plumbing: connecting (a store's
//! schema, its search path), dropping a scratch schema, and the listener
//! through which a daemon learns of other daemons' commits.
//!
//! The listener: every writer batch that wrote transitions or queued a job
//! sends a NOTIFY with its commit; one thread per store LISTENs, reads the
//! transitions committed since the last it published, in `seq` order, and
//! publishes them, its own daemon's included, so every subscriber sees one
//! ordered stream whichever daemon committed what. Writer batches hold one
//! advisory lock from `BEGIN` to `COMMIT`, so `seq` order is commit order
//! and "everything after the last seq read" never skips a row.
//!
//! A lost connection is opened again (after a second, then longer); the
//! first read after it catches up on whatever was committed meanwhile.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_core::Transition;
use postgres::fallible_iterator::FallibleIterator;
use tokio::sync::{broadcast, Notify};

use super::location::redact;
use super::reads;
use crate::db::pg::PgConn;
use crate::db::Conn;
use crate::{Result, StoreError};

/// A page of the transitions read after a notification.
const PAGE: u32 = 2000;
/// How often the thread looks at its stop flag while nothing arrives.
const STOP_CHECK: Duration = Duration::from_millis(500);
/// Reads the log even without a notification this often: a NOTIFY sent
/// while this thread's connection was being replaced is not delivered.
const CATCH_UP: Duration = Duration::from_secs(30);

/// The channel's name for the store in `schema`.
pub fn channel(schema: Option<&str>) -> String {
    format!("orch_commits_{}", schema.unwrap_or("public"))
}

/// The NOTIFY payload: the committing daemon and whether it queued a job.
pub fn payload(instance: &str, queued: bool) -> String {
    format!("{instance} {}", if queued { "q" } else { "-" })
}

pub struct Listener {
    pub url: String,
    pub schema: Option<String>,
    pub instance: String,
    pub events: broadcast::Sender<Arc<[Transition]>>,
    pub jobs_queued: Arc<Notify>,
    pub stop: Arc<AtomicBool>,
    /// The last seq published.
    pub last: i64,
}

impl Listener {
    /// The thread's loop: returns when `stop` is set.
    pub fn run(mut self, mut conn: Conn) {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.follow(&conn) {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "store listener lost its connection; reconnecting");
                }
            }
            loop {
                if self.stopped_during(backoff) {
                    return;
                }
                match connect_pg(&self.url, self.schema.as_deref(), "listener") {
                    Ok(c) => {
                        conn = c;
                        backoff = Duration::from_secs(1);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "store listener cannot reconnect");
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
    }

    fn stopped_during(&self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if self.stop.load(Ordering::Relaxed) {
                return true;
            }
            std::thread::sleep(STOP_CHECK.min(until - Instant::now()));
        }
        self.stop.load(Ordering::Relaxed)
    }

    /// LISTENs on `conn` and publishes until stopped (Ok) or the
    /// connection fails (Err).
    fn follow(&mut self, conn: &Conn) -> Result<()> {
        let Conn::Postgres(pg) = conn else {
            return Ok(());
        };
        conn.execute_batch(&format!("LISTEN \"{}\"", channel(self.schema.as_deref())))?;
        // Whatever was committed before LISTEN took effect, a queued job
        // among it: its NOTIFY went out before anyone here listened, so the
        // claimers are woken to look rather than left to their next poll.
        self.publish(conn)?;
        self.jobs_queued.notify_waiters();
        let mut last_read = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let mut heard = false;
            let mut others_queued = false;
            {
                let mut client = pg.client();
                let mut notes = client.notifications();
                let first = notes
                    .timeout_iter(STOP_CHECK)
                    .next()
                    .map_err(crate::db::Error::from)?;
                let mut seen = |n: &postgres::Notification| {
                    heard = true;
                    let (from, flag) = n.payload().split_once(' ').unwrap_or(("", ""));
                    if flag == "q" && from != self.instance {
                        others_queued = true;
                    }
                };
                if let Some(n) = first {
                    seen(&n);
                    // Take what is already waiting too, then read once.
                    let mut rest = notes.iter();
                    while let Some(n) = rest.next().map_err(crate::db::Error::from)? {
                        seen(&n);
                    }
                }
            }
            if heard || last_read.elapsed() >= CATCH_UP {
                self.publish(conn)?;
                last_read = Instant::now();
            }
            if others_queued {
                self.jobs_queued.notify_waiters();
            }
        }
        Ok(())
    }

    /// Publishes every transition after the last one published.
    fn publish(&mut self, conn: &Conn) -> Result<()> {
        loop {
            let page = reads::transitions_since(conn, self.last, None, PAGE)?;
            let Some(t) = page.last() else {
                return Ok(());
            };
            self.last = t.seq;
            let full = page.len() as u32 == PAGE;
            // No subscriber is not an error.
            let _ = self.events.send(page.into());
            if !full {
                return Ok(());
            }
        }
    }
}

/// A schema name the store will quote into SQL: letters, digits and `_`.
fn check_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "schema name {schema:?}: expected letters, digits and '_' (not first a digit), at most 63"
        )))
    }
}

/// Opens a connection to a PostgreSQL store, creating its schema on first
/// use. Every connection of one store sets the same search path, so the
/// store's SQL names tables unqualified.
pub fn connect_pg(url: &str, schema: Option<&str>, role: &str) -> Result<Conn> {
    let shown = redact(url);
    let mut config = postgres::Config::from_str(url).map_err(|e| {
        StoreError::open(
            format!("store URL {shown} (expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)"),
            crate::db::Error::from(e),
        )
    })?;
    config.application_name(&format!("orch {role}"));
    if let Some(s) = schema {
        check_schema(s)?;
        config.options(&format!("-c search_path={s}"));
    }
    let client = config.connect(postgres::NoTls).map_err(|e| {
        StoreError::open(
            format!("cannot connect to the PostgreSQL store at {shown}"),
            crate::db::Error::from(e),
        )
    })?;
    let conn = Conn::Postgres(Box::new(PgConn::new(client)));
    if let Some(s) = schema {
        conn.execute_batch(&format!("CREATE SCHEMA IF NOT EXISTS {s}"))?;
    }
    Ok(conn)
}

/// Drops `schema` and every table in it: what a benchmark or a test made
/// for itself, never the store a daemon uses.
pub fn drop_schema(url: &str, schema: &str) -> Result<()> {
    check_schema(schema)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            let conn = connect_pg(url, None, "cleanup")?;
            conn.execute_batch(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
            Ok(())
        })
        .join()
        .map_err(|_| StoreError::Internal("dropping a schema panicked".into()))?
    })
}

/// A schema of a PostgreSQL database that one benchmark owns: named after
/// the process and a counter, so measurements running at once never share
/// one, and dropped with every table in it when this is dropped.
#[derive(Debug)]
pub struct ScratchSchema {
    url: String,
    schema: String,
}

impl ScratchSchema {
    /// A fresh schema in the database at `url` (a `?schema=` there is
    /// ignored), its name starting with `prefix`, which must be a valid
    /// schema name itself (letters, digits, underscores).
    pub fn new(url: &str, prefix: &str) -> ScratchSchema {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        ScratchSchema {
            url: url.split('?').next().unwrap_or(url).to_owned(),
            schema: format!(
                "{prefix}_{}_{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        }
    }

    /// The store location that opens it, as `--store` takes it.
    pub fn store(&self) -> String {
        format!("{}?schema={}", self.url, self.schema)
    }
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        if let Err(e) = drop_schema(&self.url, &self.schema) {
            tracing::warn!("cannot drop the schema {}: {e}", self.schema);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked_before_they_reach_sql() {
        assert!(check_schema("orch_test_1").is_ok());
        for bad in ["", "1abc", "a;drop", "a b", "x\"y"] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }
}
