//! `orch logs RUN [STAGE] [-f]`: the output of a run's commands, read from
//! the bundles in the project directory, in job order. With `-f` it keeps
//! printing as commands write, until the run ends.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use orchestrator_core::api::{exec_id, JobView, RunDetail};

use crate::client::Client;

#[derive(clap::Args)]
pub struct LogsArgs {
    /// Run id (or an unambiguous prefix).
    pub run: String,
    /// Only this stage.
    pub stage: Option<String>,
    /// Keep following new output until the run ends.
    #[arg(short, long)]
    pub follow: bool,
}

fn bundle_dir(project: &Path, j: &JobView) -> PathBuf {
    match &j.bundle {
        Some(b) => project.join(b),
        None => project
            .join(".orchestrator/runs")
            .join(&j.run_id)
            .join(&j.stage_id)
            .join(exec_id(j.step, j.attempt, j.id)),
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
        let dir = bundle_dir(project, j);
        for i in 0.. {
            let mut any = false;
            for stream in ["stdout", "stderr"] {
                let path = dir.join(format!("cmd-{i:03}.{stream}.log"));
                let Ok(mut f) = std::fs::File::open(&path) else {
                    continue;
                };
                any = true;
                let off = offsets.entry(path.clone()).or_insert(0);
                f.seek(SeekFrom::Start(*off))?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                if buf.is_empty() {
                    continue;
                }
                if *off == 0 {
                    writeln!(
                        out,
                        "==> {} step {} attempt {} cmd {i} {stream} <==",
                        j.stage_id, j.step, j.attempt
                    )?;
                }
                *off += buf.len() as u64;
                out.write_all(&buf)?;
                if !buf.ends_with(b"\n") {
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
        let detail: RunDetail = client.get(&format!("/v1/runs/{}", a.run)).await?;
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
