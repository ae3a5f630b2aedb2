//! Why a store operation failed, typed by what the caller can do about it:
//! a refusal of the request (not found, stale lease, conflict, invalid), a
//! database that is busy, full, constrained or corrupt, a store that cannot
//! be opened, or a broken invariant. Database failures keep their cause.

use std::path::PathBuf;
use std::sync::Arc;

use orchestrator_core::{JobId, SpecErrors};

use crate::db::{self, Fault};
use crate::Refused;

/// Any error kept as a cause.
type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Why a store operation failed.
///
/// `Clone` because one failed batch answers every command in it; causes are
/// shared, not copied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("invalid workflow:\n{0}")]
    InvalidWorkflow(SpecErrors),
    /// The values given to a workflow's inputs do not bind to it.
    #[error("invalid inputs:\n{0}")]
    InvalidInputs(orchestrator_core::spec::InputErrors),
    #[error("lease of job {job_id} refused: {reason}")]
    StaleLease { job_id: JobId, reason: String },
    #[error("refused: {0}")]
    Conflict(String),
    /// The request itself is wrong (an answer that is not an offered choice).
    #[error("{0}")]
    Invalid(String),
    /// A one-time credential was spent already or no longer applies.
    #[error("{0}")]
    Refused(Refused),
    /// Another writer held the database past the wait (SQLite busy or
    /// locked; PostgreSQL lock timeout, serialization failure, deadlock, too
    /// many connections). Nothing was written; trying again may succeed.
    #[error("the store is busy: {0}")]
    Busy(#[source] Arc<db::Error>),
    /// The disk or the database is full. Nothing was written.
    #[error("the store is full: {0}")]
    Full(#[source] Arc<db::Error>),
    /// A write broke a table's constraint: a fault of the store, not of the
    /// request. Nothing was written.
    #[error("a store constraint refused a write: {0}")]
    Constraint(#[source] Arc<db::Error>),
    /// The database, or a value the store wrote into it, cannot be read back
    /// as written.
    #[error("the store is corrupt: {what}: {source}")]
    Corrupt {
        what: String,
        #[source]
        source: Cause,
    },
    /// Any other failure of a statement.
    #[error("store error: {0}")]
    Database(#[source] Arc<db::Error>),
    /// The store's file is locked by another daemon.
    #[error("the store {} is in use by another orch daemon (it holds {}); stop that one or use another data directory", .path.display(), .lock.display())]
    Locked { path: PathBuf, lock: PathBuf },
    /// The database was written by a newer orch.
    #[error("the database has schema version {found}, newer than this orch knows ({known}); use a newer orch")]
    TooNew { found: i64, known: i64 },
    /// The store could not be opened or started: a file, a server, a thread.
    #[error("{what}: {source}")]
    Open {
        what: String,
        #[source]
        source: Cause,
    },
    /// A value of the store's own could not be encoded for a column.
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// An invariant of the store broke: a panic in a command, a transaction
    /// the database rolled back on its own. A bug or a failing machine.
    #[error("store error: {0}")]
    Internal(String),
    #[error("the store is shut down")]
    Closed,
}

impl StoreError {
    /// A value read back from the store is not what the store wrote.
    pub(crate) fn corrupt(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            source: Arc::from(source.into()),
        }
    }

    /// The store could not be opened or started.
    pub(crate) fn open(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Open {
            what: what.into(),
            source: Arc::from(source.into()),
        }
    }

    /// Whether trying the same command again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Busy(_) | StoreError::Full(_))
    }
}

/// Encodes one of the store's own values as JSON for a column.
pub(crate) fn encode<T: serde::Serialize + ?Sized>(what: &'static str, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Encode {
        what,
        source: Arc::new(e),
    })
}

impl From<db::Error> for StoreError {
    fn from(e: db::Error) -> Self {
        let fault = e.fault();
        let e = Arc::new(e);
        match fault {
            Fault::Busy => StoreError::Busy(e),
            Fault::Full => StoreError::Full(e),
            Fault::Constraint => StoreError::Constraint(e),
            Fault::Corrupt => StoreError::Corrupt {
                what: "the database".to_owned(),
                source: e,
            },
            Fault::Other => StoreError::Database(e),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        db::Error::from(e).into()
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: rusqlite::ErrorCode) -> StoreError {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error {
                code,
                extended_code: 0,
            },
            None,
        )
        .into()
    }

    #[test]
    fn sqlite_failures_are_typed_by_what_can_be_done() {
        assert!(matches!(
            sqlite(rusqlite::ErrorCode::DatabaseBusy),
            StoreError::Busy(_)
        ));
        assert!(matches!(
            sqlite(rusqlite::ErrorCode::DatabaseLocked),
            StoreError::Busy(_)
        ));
        assert!(matches!(
            sqlite(rusqlite::ErrorCode::DiskFull),
            StoreError::Full(_)
        ));
        assert!(matches!(
            sqlite(rusqlite::ErrorCode::ConstraintViolation),
            StoreError::Constraint(_)
        ));
        assert!(matches!(
            sqlite(rusqlite::ErrorCode::DatabaseCorrupt),
            StoreError::Corrupt { .. }
        ));
        assert!(matches!(
            sqlite(rusqlite::ErrorCode::NotADatabase),
            StoreError::Corrupt { .. }
        ));
        assert!(matches!(
            sqlite(rusqlite::ErrorCode::ReadOnly),
            StoreError::Database(_)
        ));
        assert!(sqlite(rusqlite::ErrorCode::DatabaseBusy).is_transient());
        assert!(!sqlite(rusqlite::ErrorCode::ConstraintViolation).is_transient());
    }

    #[test]
    fn a_failure_keeps_its_cause() {
        let e = sqlite(rusqlite::ErrorCode::DiskFull);
        let cause = std::error::Error::source(&e).expect("a cause");
        assert!(
            cause.downcast_ref::<Arc<db::Error>>().is_some(),
            "{cause:?}"
        );
        let c = StoreError::corrupt("run r1: stored spec unreadable", "expected a map");
        assert_eq!(
            c.to_string(),
            "the store is corrupt: run r1: stored spec unreadable: expected a map"
        );
    }

    #[test]
    fn a_real_constraint_violation_is_a_constraint() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .unwrap();
        conn.execute("INSERT INTO t (id) VALUES (1)", []).unwrap();
        let e: StoreError = conn
            .execute("INSERT INTO t (id) VALUES (1)", [])
            .unwrap_err()
            .into();
        assert!(matches!(e, StoreError::Constraint(_)), "{e:?}");
    }
}
