//! What every bench's command line has: where its files go and how it
//! prints its figures.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Common {
    /// Where the bench's files (stores, projects) live: a directory made
    /// under it. Default: a fresh directory under $TMPDIR.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Output format: text for people, json for programs.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
    /// What `cargo bench` passes to every bench target; nothing here.
    #[arg(long, hide = true)]
    pub bench: bool,
}

impl Common {
    /// A fresh directory for this run: under `--dir`, else under $TMPDIR.
    /// The caller removes it once the figures are in, and keeps it on an
    /// error, so what failed can be looked at.
    pub fn root(&self) -> Result<PathBuf> {
        let mut b = tempfile::Builder::new();
        b.prefix("orch-bench-");
        let dir = match &self.dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("cannot create {}", d.display()))?;
                b.tempdir_in(d)
            }
            None => b.tempdir(),
        }
        .context("cannot make the bench's directory")?;
        Ok(dir.keep())
    }

    /// Prints `rows`: as JSON, or as `text` renders them.
    pub fn print<T: Serialize + ?Sized>(
        &self,
        rows: &T,
        text: impl FnOnce(&T) -> String,
    ) -> Result<()> {
        match self.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(rows)?),
            Output::Text => print!("{}", text(rows)),
        }
        Ok(())
    }
}

/// Logs (the daemon's and the agent's, inside the bench) to stderr at
/// `ORCH_LOG`'s level, warnings by default, as `orch` does.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs `body` on a multi-threaded runtime, as `orch` runs its commands.
pub fn block_on<F: std::future::Future<Output = Result<()>>>(body: F) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(body)
}

/// The exit status of a bench: its error, if any, printed with its causes.
pub fn exit(r: Result<()>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
