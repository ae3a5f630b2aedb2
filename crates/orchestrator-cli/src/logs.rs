//! `orch logs RUN [STAGE] [-f]`: the output of a run's commands, read from
//! the bundles in the project directory, in job order. With `-f` it keeps
//! printing as commands write, until the run ends.

use orchestrator_core::RunId;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use orchestrator_core::api::{exec_id, JobView, RunDetail};
use orchestrator_host::confined::ConfinedDir;

use crate::client::Client;

#[derive(clap::Args)]
pub struct LogsArgs {
    /// Run id (or an unambiguous prefix).
    pub run: RunId,
    /// Only this stage.
    pub stage: Option<String>,
    /// Keep following new output until the run ends.
    #[arg(short, long)]
    pub follow: bool,
}

/// A job's bundle directory relative to its project.
fn bundle_rel(j: &JobView) -> PathBuf {
    match &j.bundle {
        Some(b) => PathBuf::from(b),
        None => PathBuf::from(".orchestrator/runs")
            .join(j.run_id.as_str())
            .join(&j.stage_id)
            .join(exec_id(j.step, j.round, j.id)),
    }
}

/// Prints what was added to each log since the last call; returns whether anything was.
fn drain(
    detail: &RunDetail,
    stage: Option<&str>,
    offsets: &mut HashMap<PathBuf, u64>,
) -> Result<bool> {
    let project = Path::new(&detail.run.project_dir);
    let mut printed = false;
    let out = std::io::stdout();
    let mut out = out.lock();
    for j in detail
        .jobs
        .iter()
        .filter(|j| stage.is_none_or(|s| s == j.stage_id))
    {
        // The bundle is the step's to write: its directory is walked
        // without following links, and only regular files are read.
        let rel = bundle_rel(j);
        let dir = match ConfinedDir::open(project, &rel, false) {
            Ok(dir) => dir,
            Err(e) if e.is_not_found() => continue,
            Err(e) => anyhow::bail!("job {}: its bundle cannot be read: {e}", j.id),
        };
        for i in 0.. {
            let mut any = false;
            for stream in ["stdout", "stderr"] {
                let name = format!("cmd-{i:03}.{stream}.log");
                let mut f = match dir.open_regular(&name) {
                    Ok(f) => f,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => {
                        any = true;
                        eprintln!("orch: job {}: skipping {name}: {e}", j.id);
                        continue;
                    }
                };
                any = true;
                let off = offsets.entry(dir.path().join(&name)).or_insert(0);
                let size = f.metadata()?.len();
                if size <= *off {
                    continue;
                }
                if *off == 0 {
                    writeln!(
                        out,
                        "==> {} step {} round {}{} attempt {} job {} cmd {i} {stream} <==",
                        j.stage_id,
                        j.step,
                        j.round,
                        // A first round needs no why.
                        if j.round > 1 {
                            format!(" ({})", j.round_reason)
                        } else {
                            String::new()
                        },
                        j.attempt,
                        j.id
                    )?;
                }
                // Copied in pieces up to the size seen now: a log of any
                // size takes constant memory.
                f.seek(SeekFrom::Start(*off))?;
                let copied = std::io::copy(&mut (&mut f).take(size - *off), &mut out)?;
                *off += copied;
                let mut last = [0u8; 1];
                if copied > 0
                    && f.seek(SeekFrom::Start(*off - 1)).is_ok()
                    && f.read_exact(&mut last).is_ok()
                    && last[0] != b'\n'
                {
                    writeln!(out)?;
                }
                printed = true;
            }
            if !any {
                break;
            }
        }
    }
    Ok(printed)
}

pub async fn logs(a: LogsArgs, client: &Client) -> Result<ExitCode> {
    let mut offsets = HashMap::new();
    loop {
        let detail = client.run(&a.run).await?;
        if let Some(s) = &a.stage {
            if !detail.stages.iter().any(|x| &x.stage_id == s) {
                anyhow::bail!("run {} has no stage {s:?}", detail.run.id);
            }
        }
        drain(&detail, a.stage.as_deref(), &mut offsets)?;
        if !a.follow || detail.run.state.is_terminal() {
            return Ok(ExitCode::SUCCESS);
        }
        // Output files are written by other processes; a short look-again
        // interval is what `tail -f` does too.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
