//! The store's tables, once: their names in the order rows can be copied
//! (a table after those it refers to), and the column each numbers its rows
//! by, when the database numbers them. The SQLite and PostgreSQL schemas
//! (`schema.rs`, `schema_pg.rs`) create exactly these tables with the same
//! columns, which the schema test checks; `orch migrate` copies them in
//! this order and restarts PostgreSQL's identities past the copied rows.

/// One table of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    /// The column the database numbers new rows by (SQLite's rowid alias,
    /// PostgreSQL's identity), if any.
    pub identity: Option<&'static str>,
}

const fn t(name: &'static str, identity: Option<&'static str>) -> Table {
    Table { name, identity }
}

/// Every table, in copy order.
pub const TABLES: &[Table] = &[
    t("runs", None),
    t("run_specs", None),
    t("stage_runs", None),
    t("requires", None),
    t("agents", None),
    t("shapes", Some("id")),
    t("jobs", Some("id")),
    t("leases", Some("id")),
    t("transitions", Some("seq")),
    t("checkpoints", None),
    t("questions", Some("id")),
    t("model_usage", None),
    t("spent_credentials", None),
    t("agent_tokens", None),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_sqlite_schema_has_exactly_these_tables_and_identities() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        let names: BTreeSet<String> = c
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let listed: BTreeSet<String> = TABLES.iter().map(|t| t.name.to_owned()).collect();
        assert_eq!(names, listed);
        for t in TABLES {
            // An INTEGER PRIMARY KEY is SQLite's rowid: numbered by the database.
            let pk: Vec<(String, String)> = c
                .prepare(&format!(
                    "SELECT name, type FROM pragma_table_info('{}') WHERE pk > 0",
                    t.name
                ))
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let rowid = match pk.as_slice() {
                [(name, ty)] if ty == "INTEGER" => Some(name.as_str()),
                _ => None,
            };
            assert_eq!(rowid, t.identity, "table {}", t.name);
        }
    }
}
