//! The schema each database holds, as a canonical text read back from the
//! database itself (SQLite's pragmas, PostgreSQL's catalogs): tables,
//! columns with their types, nullability and defaults, keys, unique and
//! foreign-key constraints, indexes. The tests compare it with the recorded
//! `snapshots/`, so any change to what a store is created with, however it
//! is written, shows as a reviewed diff; and they check that a store an
//! older orch made, migrated through every version, ends with exactly the
//! schema a new store is created with from `TABLES`.

use std::fmt::Write as _;

use rusqlite::Connection;

use super::location::Location;
use super::pg::{connect_pg, ScratchSchema};
use super::tables::TABLES;
use super::{schema, schema_pg};
use crate::db::Conn;

fn rows<T>(
    c: &Connection,
    sql: &str,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Vec<T> {
    c.prepare(sql)
        .unwrap()
        .query_map([], f)
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// One line per fact, whitespace collapsed.
fn squeeze(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// SQLite's schema: every table (its columns, key, rowid and
/// AUTOINCREMENT, foreign keys, indexes with their columns) as SQLite
/// reports them, not as the DDL was worded.
pub fn sqlite(c: &Connection) -> String {
    let mut out = String::new();
    let tables = rows(
        c,
        "SELECT t.name, t.wr, coalesce(m.sql, '') LIKE '%AUTOINCREMENT%'
         FROM pragma_table_list t LEFT JOIN sqlite_master m ON m.name = t.name
         WHERE t.schema = 'main' AND t.type = 'table' AND t.name <> 'sqlite_schema'
         ORDER BY t.name",
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, bool>(2)?,
            ))
        },
    );
    for (table, without_rowid, autoincrement) in tables {
        let _ = writeln!(
            out,
            "table {table}{}{}",
            if without_rowid { " WITHOUT ROWID" } else { "" },
            if autoincrement { " AUTOINCREMENT" } else { "" }
        );
        let columns = rows(
            c,
            &format!("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('{table}') ORDER BY cid"),
            |r| {
                let declared = format!("{} {}", r.get::<_, String>(0)?, r.get::<_, String>(1)?);
                Ok(format!(
                    "  column {}{}{}{}",
                    declared.trim_end(),
                    if r.get::<_, bool>(2)? { " NOT NULL" } else { "" },
                    r.get::<_, Option<String>>(3)?
                        .map(|d| format!(" DEFAULT {d}"))
                        .unwrap_or_default(),
                    match r.get::<_, i64>(4)? {
                        0 => String::new(),
                        n => format!(" key#{n}"),
                    },
                ))
            },
        );
        let fks = rows(
            c,
            &format!(
                "SELECT \"from\", \"table\", \"to\", on_update, on_delete, \"match\"
                 FROM pragma_foreign_key_list('{table}') ORDER BY id, seq"
            ),
            |r| {
                Ok(format!(
                    "  foreign key {} -> {}({}) on update {} on delete {} match {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            },
        );
        let indexes = rows(
            c,
            &format!(
                "SELECT l.name, l.\"unique\", l.origin, l.partial, coalesce(m.sql, '')
                 FROM pragma_index_list('{table}') l LEFT JOIN sqlite_master m ON m.name = l.name
                 ORDER BY l.name"
            ),
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, String>(4)?,
                ))
            },
        );
        for line in columns.into_iter().chain(fks) {
            let _ = writeln!(out, "{line}");
        }
        for (name, unique, origin, partial, sql) in indexes {
            let keys = rows(
                c,
                &format!(
                    "SELECT coalesce(name, '<expr>'), \"desc\", coll FROM pragma_index_xinfo('{name}')
                     WHERE key = 1 ORDER BY seqno"
                ),
                |r| {
                    Ok(format!(
                        "{}{} {}",
                        r.get::<_, String>(0)?,
                        if r.get::<_, bool>(1)? { " DESC" } else { "" },
                        r.get::<_, String>(2)?,
                    ))
                },
            );
            let _ = writeln!(
                out,
                "  index {name}{} origin {origin}{} ({})",
                if unique { " UNIQUE" } else { "" },
                if partial { " partial" } else { "" },
                keys.join(", ")
            );
            if !sql.is_empty() {
                let _ = writeln!(out, "    {}", squeeze(&sql));
            }
        }
    }
    out
}

/// PostgreSQL's schema (the connection's current one): every table's
/// columns as `information_schema` reports them, its constraints and
/// indexes as the catalogs define them, the schema's name left out.
pub fn postgres(c: &Conn) -> String {
    let schema: String = c
        .query_row("SELECT current_schema()::text", [], |r| r.get(0))
        .unwrap();
    let text = |sql: &str, table: &str, n: usize| -> Vec<Vec<Option<String>>> {
        c.prepare_cached(sql)
            .unwrap()
            .query_map([table], |r| {
                (0..n).map(|i| r.get::<_, Option<String>>(i)).collect()
            })
            .unwrap()
            .collect::<crate::db::Result<_>>()
            .unwrap()
    };
    let tables: Vec<String> = c
        .prepare_cached(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() ORDER BY 1",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<crate::db::Result<_>>()
        .unwrap();
    let mut out = String::new();
    for table in tables {
        let _ = writeln!(out, "table {table}");
        let columns = text(
            "SELECT column_name::text, data_type::text, is_nullable::text, column_default::text,
                    is_identity::text, identity_generation::text
             FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = ?1 ORDER BY ordinal_position",
            &table,
            6,
        );
        for col in columns {
            let s = |i: usize| col[i].clone().unwrap_or_default();
            let _ = writeln!(
                out,
                "  column {} {}{}{}{}",
                s(0),
                s(1),
                if s(2) == "NO" { " NOT NULL" } else { "" },
                col[3]
                    .as_ref()
                    .map(|d| format!(" DEFAULT {d}"))
                    .unwrap_or_default(),
                if s(4) == "YES" {
                    format!(" GENERATED {} AS IDENTITY", s(5))
                } else {
                    String::new()
                },
            );
        }
        // NOT NULL is in the columns; newer servers list it as a
        // constraint too, which would make the text depend on the version.
        let constraints = text(
            "SELECT c.conname::text, pg_get_constraintdef(c.oid)
             FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
             WHERE c.connamespace = current_schema()::regnamespace AND t.relname = ?1
               AND c.contype IN ('p', 'u', 'f', 'c', 'x')
             ORDER BY 1",
            &table,
            2,
        );
        for con in constraints {
            let _ = writeln!(
                out,
                "  constraint {} {}",
                con[0].clone().unwrap_or_default(),
                con[1].clone().unwrap_or_default()
            );
        }
        let indexes = text(
            "SELECT indexname::text, indexdef FROM pg_indexes
             WHERE schemaname = current_schema() AND tablename = ?1 ORDER BY 1",
            &table,
            2,
        );
        for ix in indexes {
            let def = ix[1]
                .clone()
                .unwrap_or_default()
                .replace(&format!(" {schema}."), " ");
            let _ = writeln!(out, "  index {} {}", ix[0].clone().unwrap_or_default(), def);
        }
    }
    out
}

/// Fails at the first line where a migrated schema differs from a new one.
fn assert_same(migrated: &str, created: &str) {
    for (i, (m, c)) in migrated.lines().zip(created.lines()).enumerate() {
        assert_eq!(
            m,
            c,
            "line {}: migrated (left) and created (right) differ",
            i + 1
        );
    }
    assert_eq!(migrated.lines().count(), created.lines().count());
}

/// A connection to a schema of its own on the test server, dropped after.
pub fn scratch_postgres(prefix: &str) -> (ScratchSchema, Conn) {
    let url = std::env::var("ORCH_TEST_POSTGRES")
        .expect("ORCH_TEST_POSTGRES is not set: run scripts/postgres.sh (scripts/test does)");
    let scratch = ScratchSchema::new(&url, prefix);
    let Location::Postgres { url, schema } = Location::parse(&scratch.store()) else {
        panic!("a scratch schema's location is PostgreSQL's")
    };
    let conn = connect_pg(&url, schema.as_deref(), "test").unwrap();
    (scratch, conn)
}

#[test]
fn a_new_sqlite_store_has_the_recorded_schema() {
    let mut c = Connection::open_in_memory().unwrap();
    schema::migrate(&mut c).unwrap();
    insta::assert_snapshot!("sqlite", sqlite(&c));
}

#[test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs PostgreSQL: run scripts/test"
)]
fn a_new_postgres_store_has_the_recorded_schema() {
    let (_scratch, c) = scratch_postgres("schema_dump");
    schema_pg::migrate(&c).unwrap();
    insta::assert_snapshot!("postgres", postgres(&c));
}

#[test]
fn a_sqlite_store_migrated_through_every_version_has_the_schema_of_a_new_one() {
    let mut new = Connection::open_in_memory().unwrap();
    schema::migrate(&mut new).unwrap();
    let mut old = Connection::open_in_memory().unwrap();
    schema::upgrade(&mut old, 0).unwrap();
    assert_same(&sqlite(&old), &sqlite(&new));
    let version = |c: &Connection| -> i64 {
        c.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(version(&old), version(&new));

    // Exactly the listed tables, their columns in order, and the listed
    // identity as the rowid (an INTEGER PRIMARY KEY).
    let names = rows(
        &old,
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        |r| r.get::<_, String>(0),
    );
    let mut listed: Vec<String> = TABLES.iter().map(|t| t.name.to_owned()).collect();
    listed.sort();
    assert_eq!(names, listed);
    for t in TABLES {
        let columns = rows(
            &old,
            &format!(
                "SELECT name, type, pk FROM pragma_table_info('{}') ORDER BY cid",
                t.name
            ),
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        );
        let names: Vec<&str> = columns.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            t.column_names().collect::<Vec<_>>(),
            "table {}",
            t.name
        );
        let key: Vec<_> = columns.iter().filter(|(_, _, pk)| *pk > 0).collect();
        let rowid = match key.as_slice() {
            [(name, ty, _)] if ty == "INTEGER" => Some(name.as_str()),
            _ => None,
        };
        assert_eq!(rowid, t.identity(), "table {}", t.name);
    }
}

#[test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs PostgreSQL: run scripts/test"
)]
fn a_postgres_store_migrated_through_every_version_has_the_schema_of_a_new_one() {
    let (_new_schema, new) = scratch_postgres("schema_new");
    schema_pg::migrate(&new).unwrap();
    let (_old_schema, old) = scratch_postgres("schema_old");
    old.execute_batch(schema_pg::VERSIONS).unwrap();
    schema_pg::upgrade(&old, 0).unwrap();
    assert_same(&postgres(&old), &postgres(&new));
    let versions = |c: &Conn| -> Vec<i64> {
        c.prepare_cached("SELECT version FROM orch_schema ORDER BY 1")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<crate::db::Result<_>>()
            .unwrap()
    };
    assert_eq!(versions(&old), versions(&new));

    // The listed tables' columns in order, the listed identity numbered.
    for t in TABLES {
        let columns: Vec<(String, String)> = old
            .prepare_cached(
                "SELECT column_name::text, is_identity::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = ?1
                 ORDER BY ordinal_position",
            )
            .unwrap()
            .query_map([t.name], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<crate::db::Result<_>>()
            .unwrap();
        let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            t.column_names().collect::<Vec<_>>(),
            "table {}",
            t.name
        );
        let identity = columns
            .iter()
            .find(|(_, i)| i == "YES")
            .map(|(n, _)| n.as_str());
        assert_eq!(identity, t.identity(), "table {}", t.name);
    }
}
