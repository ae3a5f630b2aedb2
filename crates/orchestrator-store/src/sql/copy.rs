//! `orch migrate`: a single-machine SQLite store copied, whole, into an
//! empty PostgreSQL store. The SQLite file is locked as a daemon locks it
//! (so a running daemon is refused, not copied mid-write) and brought to
//! the newest schema first; the copy is one PostgreSQL transaction under
//! the writers' lock, checked row count by row count before it commits, so
//! it lands whole or not at all, and the SQLite file is never changed.

use std::path::Path;

use crate::db::{Conn, Value};
use crate::{Result, StoreError};

use super::tables::TABLES;
use super::{schema, schema_pg};

/// Rows copied, by table, in copy order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub tables: Vec<(String, u64)>,
}

impl CopyReport {
    pub fn rows(&self, table: &str) -> u64 {
        self.tables
            .iter()
            .find(|(t, _)| t == table)
            .map_or(0, |(_, n)| *n)
    }
}

/// Copies the SQLite store at `from` into the PostgreSQL store at `url`
/// (in `schema` when given), which must hold no runs yet.
pub fn sqlite_to_postgres(from: &Path, url: &str, schema: Option<&str>) -> Result<CopyReport> {
    if !from.is_file() {
        return Err(StoreError::Invalid(format!(
            "{}: no such store file (expected the SQLite file of a daemon's data directory, e.g. DATA_DIR/orch.db)",
            from.display()
        )));
    }
    let _lock = super::open::lock(from)?;
    let mut src = super::open::open_conn(from)?;
    schema::migrate(&mut src)?;
    let src = Conn::Sqlite(src);
    // The driver runs a runtime of its own, which cannot start inside one.
    std::thread::scope(|s| {
        s.spawn(move || copy(&src, url, schema))
            .join()
            .map_err(|_| StoreError::Internal("the copy panicked".into()))?
    })
}

fn copy(src: &Conn, url: &str, schema: Option<&str>) -> Result<CopyReport> {
    let dst = super::pg::connect_pg(url, schema, "migrate")?;
    schema_pg::migrate(&dst)?;
    dst.execute_batch(&format!("BEGIN; {}", schema_pg::WRITE_LOCK))?;
    match copy_tables(src, &dst) {
        Ok(report) => {
            dst.execute_batch("COMMIT")?;
            Ok(report)
        }
        Err(e) => {
            let _ = dst.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn copy_tables(src: &Conn, dst: &Conn) -> Result<CopyReport> {
    let runs: i64 = dst.query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))?;
    if runs > 0 {
        return Err(StoreError::Conflict(format!(
            "the PostgreSQL store already holds {runs} runs; migrate only into an empty one"
        )));
    }
    let mut report = CopyReport::default();
    for t in TABLES {
        let table = t.name;
        let list = t.column_names().collect::<Vec<_>>().join(", ");
        let marks: Vec<String> = (1..=t.columns.len()).map(|i| format!("?{i}")).collect();
        let insert = format!("INSERT INTO {table} ({list}) VALUES ({})", marks.join(", "));
        let mut ins = dst.prepare_cached(&insert)?;
        let mut read = src.prepare_cached(&format!("SELECT {list} FROM {table}"))?;
        let mut rows = read.query(())?;
        let mut n = 0u64;
        while let Some(row) = rows.next()? {
            let values = (0..t.columns.len())
                .map(|i| row.get::<_, Value>(i))
                .collect::<crate::db::Result<Vec<_>>>()?;
            ins.execute(values).map_err(|e| StoreError::Open {
                what: format!("copying a row of {table}"),
                source: std::sync::Arc::new(e),
            })?;
            n += 1;
        }
        let landed: i64 =
            dst.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
        if landed as u64 != n {
            return Err(StoreError::Internal(format!(
                "{table}: {n} rows read but {landed} landed; nothing was kept"
            )));
        }
        report.tables.push((table.to_owned(), n));
    }
    schema_pg::reset_identities(dst)?;
    Ok(report)
}
