//! `orch migrate --from sqlite:PATH --to postgres://...`: a single-machine
//! installation moved to PostgreSQL without losing a run.

use std::process::ExitCode;

use anyhow::Result;
use orchestrator_store::Location;

use crate::client::CliError;
use crate::view::{self, Output};

pub async fn run(from: &str, to: &str, output: Output) -> Result<ExitCode> {
    let Location::Sqlite(path) = Location::parse(from) else {
        return Err(CliError::BadInput(format!(
            "--from {from:?}: expected a SQLite store, sqlite:PATH or a path"
        ))
        .into());
    };
    let (url, schema) = match Location::parse(to) {
        Location::Postgres { url, schema } => (url, schema),
        Location::Sqlite(_) => {
            return Err(CliError::BadInput(format!(
                "--to {to:?}: expected a PostgreSQL store, postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
            ))
            .into())
        }
    };
    let shown = Location::Postgres {
        url: url.clone(),
        schema: schema.clone(),
    }
    .shown();
    let report = tokio::task::spawn_blocking(move || {
        orchestrator_store::sqlite_to_postgres(&path, &url, schema.as_deref())
    })
    .await?
    .map_err(|e| CliError::BadInput(format!("nothing was copied: {e}")))?;
    match output {
        Output::Json => view::json(&serde_json::json!({
            "to": shown,
            "tables": report.tables.iter().map(|(t, n)| serde_json::json!({"table": t, "rows": n})).collect::<Vec<_>>(),
        }))?,
        Output::Text => {
            for (table, rows) in &report.tables {
                println!("{table:<12} {rows:>9} rows");
            }
            println!("copied into {shown}; start each daemon with --store and that URL");
        }
    }
    Ok(ExitCode::SUCCESS)
}
