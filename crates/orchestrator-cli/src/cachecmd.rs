//! `orch cache ls|rm`: the caches a project keeps on this machine
//! (`<project>/.orchestrator/caches`, written by the agents that run its
//! stages here). Local: it reads and removes files, no daemon needed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use orchestrator_agent::cache::{CacheStore, EntryMeta};
use serde::Serialize;

use crate::client::CliError;
use crate::view::{self, Output};

#[derive(Subcommand)]
pub enum CacheCmd {
    /// List the project's cache entries on this machine, newest first.
    Ls {
        /// The project directory. Default: the current directory.
        #[arg(long)]
        project: Option<PathBuf>,
        /// Output format: text for people, json for programs.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Remove cache entries: those whose key is one of KEYS (of any path,
    /// or only of `--path`), or every entry with `--all`. A run restoring
    /// one at that moment sees it whole or not at all.
    Rm {
        /// Keys of the entries to remove.
        keys: Vec<String>,
        /// Only the entries of this cache path (`.venv`, `~/.cache/pip`).
        #[arg(long)]
        path: Option<String>,
        /// Every entry of the project.
        #[arg(long, conflicts_with = "keys")]
        all: bool,
        /// The project directory. Default: the current directory.
        #[arg(long)]
        project: Option<PathBuf>,
    },
}

#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    meta: EntryMeta,
    slot: String,
}

fn store(project: Option<PathBuf>) -> Result<Option<CacheStore>> {
    let project = match project {
        Some(p) => p,
        None => std::env::current_dir()?,
    };
    let project = std::fs::canonicalize(&project)
        .map_err(|e| CliError::BadInput(format!("project directory {}: {e}", project.display())))?;
    Ok(CacheStore::open(&project, false).map_err(|e| CliError::BadInput(e.to_string()))?)
}

pub fn run(cmd: CacheCmd) -> Result<ExitCode> {
    match cmd {
        CacheCmd::Ls { project, output } => {
            let mut rows: Vec<Row> = match store(project)? {
                Some(s) => s
                    .list()?
                    .into_iter()
                    .map(|(slot, meta)| Row { meta, slot })
                    .collect(),
                None => Vec::new(),
            };
            rows.sort_by_key(|r| std::cmp::Reverse(r.meta.saved_at_ms));
            match output {
                Output::Json => view::json(&rows)?,
                Output::Text => {
                    println!(
                        "{:<24} {:<40} {:>10} {:>8}  SAVED BY",
                        "PATH", "KEY", "SIZE", "AGE"
                    );
                    let now = orchestrator_host::now_ms();
                    for r in &rows {
                        let m = &r.meta;
                        println!(
                            "{:<24} {:<40} {:>10} {:>8}  {}/{}",
                            m.path,
                            m.key,
                            size(m.bytes),
                            view::duration(now - m.saved_at_ms),
                            m.run_id,
                            m.stage_id
                        );
                    }
                }
            }
        }
        CacheCmd::Rm {
            keys,
            path,
            all,
            project,
        } => {
            if keys.is_empty() && !all {
                return Err(CliError::BadInput(
                    "expected the keys of the entries to remove, or --all".into(),
                )
                .into());
            }
            let Some(store) = store(project)? else {
                eprintln!("this project has no caches on this machine");
                return Ok(ExitCode::SUCCESS);
            };
            let mut removed = 0;
            for (slot, meta) in store.list()? {
                let wanted = (all || keys.contains(&meta.key))
                    && path.as_ref().is_none_or(|p| *p == meta.path);
                if wanted && store.remove(&slot, &meta.key)? {
                    println!("removed {} {}", meta.path, meta.key);
                    removed += 1;
                }
            }
            if removed == 0 && !all {
                return Err(CliError::BadInput(format!(
                    "no cache entry has the key {}; `orch cache ls` lists them",
                    keys.join(", ")
                ))
                .into());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{:.1}K", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}
