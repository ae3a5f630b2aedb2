//! The connection seam: the store's logic talks to a [`Conn`], not to a
//! database driver, so one body of SQL and logic can run on more than one
//! backend. The surface is the small part of rusqlite's that the store uses
//! (`prepare_cached`, `execute`, `query_row`, `query_map`, `optional()`,
//! `params!`), over owned and borrowed [`ValueRef`]s instead of a driver's
//! types. Each method matches on the backend once; a SQLite statement binds
//! and reads SQLite's values directly, so the seam costs the SQLite hot path
//! no copies. PostgreSQL ([`pg`]) gets the same SQL, translated.

pub mod pg;
mod value;

pub(crate) use value::params;
pub use value::{FromValue, Params, ToValue, Value, ValueRef};

/// What a statement can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `query_row` found no row ([`Optional::optional`] turns this into `None`).
    #[error("Query returned no rows")]
    NoRows,
    /// A parameter or a column did not fit the Rust type asked for.
    #[error("{0}")]
    Conversion(String),
    /// A statement was given more or fewer parameters than it has.
    #[error("wrong number of parameters: the statement has {want}, {got} given")]
    ParameterCount { want: usize, got: usize },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// A statement PostgreSQL would not prepare, with its text.
    #[error("{0}")]
    Prepare(String),
    #[error("{}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
}

/// What a failed statement means for its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Another writer held the database past the wait.
    Busy,
    /// No room on the disk or in the database.
    Full,
    /// A table's constraint refused the write.
    Constraint,
    /// The database cannot be read as written.
    Corrupt,
    Other,
}

impl Error {
    pub(crate) fn fault(&self) -> Fault {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                use rusqlite::ErrorCode as C;
                match f.code {
                    C::DatabaseBusy | C::DatabaseLocked => Fault::Busy,
                    C::DiskFull => Fault::Full,
                    C::ConstraintViolation => Fault::Constraint,
                    C::DatabaseCorrupt | C::NotADatabase => Fault::Corrupt,
                    _ => Fault::Other,
                }
            }
            Error::Postgres(e) => match e.code().map(|c| c.code()) {
                // Class 23: integrity constraint violation.
                Some(c) if c.starts_with("23") => Fault::Constraint,
                // Disk full, out of memory.
                Some("53100" | "53200") => Fault::Full,
                // Too many connections, serialization failure, deadlock,
                // lock not available, a statement cancelled by lock_timeout.
                Some("53300" | "40001" | "40P01" | "55P03" | "57014") => Fault::Busy,
                // Data or an index corrupted.
                Some("XX001" | "XX002") => Fault::Corrupt,
                _ => Fault::Other,
            },
            _ => Fault::Other,
        }
    }
}

/// PostgreSQL's own message, with its detail and hint where it gave them
/// (the driver's Display says only "db error").
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = db.message().to_owned();
            if let Some(d) = db.detail() {
                m.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!("; {h}"));
            }
            m
        }
        None => e.to_string(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `query_row(...).optional()`: no row is `Ok(None)`, not an error.
pub trait Optional<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> Optional<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// One database connection.
pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<pg::PgConn>),
}

impl Conn {
    /// A prepared statement from the connection's cache (prepared on first use).
    pub fn prepare_cached(&self, sql: &str) -> Result<Stmt<'_>> {
        match self {
            Conn::Sqlite(c) => Ok(Stmt::Sqlite(c.prepare_cached(sql)?)),
            Conn::Postgres(c) => Ok(Stmt::Postgres(c, c.prepare(sql)?)),
        }
    }

    /// Runs statements that take no parameters and return nothing
    /// (transaction control, savepoints).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(c) => c.execute_batch(sql),
        }
    }

    /// Runs one statement (not cached); returns how many rows it changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    /// Whether this is a PostgreSQL connection, for the few statements
    /// that differ by more than [`pg::translate`] rewrites.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Conn::Postgres(_))
    }

    /// One row of a statement run once (not cached).
    pub fn query_row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    /// Whether no transaction is open (SQLite ends one by itself after some errors).
    pub fn is_autocommit(&self) -> bool {
        match self {
            Conn::Sqlite(c) => c.is_autocommit(),
            Conn::Postgres(c) => !c.in_transaction(),
        }
    }

    /// The SQLite connection itself, for what only SQLite has (its
    /// schema's pragmas, the failure points' trace hooks).
    #[cfg(feature = "failpoints")]
    pub fn sqlite_mut(&mut self) -> Option<&mut rusqlite::Connection> {
        match self {
            Conn::Sqlite(c) => Some(c),
            Conn::Postgres(_) => None,
        }
    }
}

/// A prepared statement.
pub enum Stmt<'c> {
    Sqlite(rusqlite::CachedStatement<'c>),
    Postgres(&'c pg::PgConn, postgres::Statement),
}

fn bind_sqlite(st: &mut rusqlite::Statement<'_>, params: &dyn Params) -> Result<()> {
    let want = st.parameter_count();
    if params.len() != want {
        return Err(Error::ParameterCount {
            want,
            got: params.len(),
        });
    }
    params.each(&mut |i, v| {
        let v = match v {
            ValueRef::Null => rusqlite::types::ValueRef::Null,
            ValueRef::Integer(i) => rusqlite::types::ValueRef::Integer(i),
            ValueRef::Real(f) => rusqlite::types::ValueRef::Real(f),
            ValueRef::Text(s) => rusqlite::types::ValueRef::Text(s.as_bytes()),
            ValueRef::Blob(b) => rusqlite::types::ValueRef::Blob(b),
        };
        st.raw_bind_parameter(i, rusqlite::types::ToSqlOutput::Borrowed(v))?;
        Ok(())
    })
}

impl<'c> Stmt<'c> {
    /// Runs the statement; returns how many rows it changed.
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        match self {
            Stmt::Sqlite(st) => {
                bind_sqlite(st, &params)?;
                Ok(st.raw_execute()?)
            }
            Stmt::Postgres(c, st) => c.execute(st, &params),
        }
    }

    /// The first row, through `f`; [`Error::NoRows`] when there is none.
    pub fn query_row<T, P: Params>(
        &mut self,
        params: P,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        match self {
            Stmt::Sqlite(st) => {
                bind_sqlite(st, &params)?;
                let mut rows = st.raw_query();
                match rows.next()? {
                    Some(r) => f(&Row::Sqlite(r)),
                    None => Err(Error::NoRows),
                }
            }
            Stmt::Postgres(c, st) => match c.query(st, &params)?.first() {
                Some(r) => f(&Row::Postgres(r)),
                None => Err(Error::NoRows),
            },
        }
    }

    /// Every row, through `f`, as they are read.
    pub fn query_map<T, P: Params, F: FnMut(&Row<'_>) -> Result<T>>(
        &mut self,
        params: P,
        f: F,
    ) -> Result<MappedRows<'_, F>> {
        Ok(MappedRows {
            rows: self.query(params)?,
            f,
        })
    }

    /// Every row, read one at a time with [`Rows::next`].
    pub fn query<P: Params>(&mut self, params: P) -> Result<Rows<'_>> {
        match self {
            Stmt::Sqlite(st) => {
                bind_sqlite(st, &params)?;
                Ok(Rows::Sqlite(st.raw_query()))
            }
            Stmt::Postgres(c, st) => Ok(Rows::Postgres(c.query(st, &params)?, 0)),
        }
    }
}

/// The rows of a query, read one at a time.
pub enum Rows<'s> {
    Sqlite(rusqlite::Rows<'s>),
    /// PostgreSQL's rows, all read at once, and the next one's index.
    Postgres(Vec<postgres::Row>, usize),
}

impl Rows<'_> {
    /// The next row, or `None` after the last.
    // Not Iterator: a row borrows the cursor until the next call.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Row<'_>>> {
        match self {
            Rows::Sqlite(rows) => Ok(rows.next()?.map(Row::Sqlite)),
            Rows::Postgres(rows, next) => {
                let row = rows.get(*next).map(Row::Postgres);
                *next += 1;
                Ok(row)
            }
        }
    }
}

/// The rows of [`Stmt::query_map`], each through its function.
pub struct MappedRows<'s, F> {
    rows: Rows<'s>,
    f: F,
}

impl<T, F: FnMut(&Row<'_>) -> Result<T>> Iterator for MappedRows<'_, F> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        match self.rows.next() {
            Ok(Some(r)) => Some((self.f)(&r)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// A column's position; only `usize`, so that a literal index infers as one.
pub trait RowIndex {
    fn index(self) -> usize;
}

impl RowIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// One row of a result.
pub enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r postgres::Row),
}

impl Row<'_> {
    /// Column `idx` (from 0) as a `T`. Two type parameters, as rusqlite
    /// has, so that `get::<_, i64>(0)` reads the same over either.
    pub fn get<I: RowIndex, T: FromValue>(&self, idx: I) -> Result<T> {
        let idx = idx.index();
        let v = match self {
            Row::Sqlite(r) => match r.get_ref(idx)? {
                rusqlite::types::ValueRef::Null => ValueRef::Null,
                rusqlite::types::ValueRef::Integer(i) => ValueRef::Integer(i),
                rusqlite::types::ValueRef::Real(f) => ValueRef::Real(f),
                rusqlite::types::ValueRef::Text(t) => {
                    ValueRef::Text(std::str::from_utf8(t).map_err(|e| {
                        Error::Conversion(format!("column {idx}: text is not UTF-8: {e}"))
                    })?)
                }
                rusqlite::types::ValueRef::Blob(b) => ValueRef::Blob(b),
            },
            Row::Postgres(r) => r.try_get::<_, pg::Val<'_>>(idx)?.0,
        };
        T::from_value(v).map_err(|e| match e {
            Error::Conversion(m) => Error::Conversion(format!("column {idx}: {m}")),
            e => e,
        })
    }
}
