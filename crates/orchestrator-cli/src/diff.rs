//! `orch diff RUN [STAGE] [--checkpoint N] [--stat]`: the change a run made,
//! as git shows it, without the orchestrator's own records.
//!
//! A whole run is its branch against the commit it started from. A stage is
//! the change of each of its steps (other stages' commits interleave on
//! the branch, so one range would mix them in), and `--checkpoint N` is
//! one step's: its own commits and its checkpoint, from the checkpoint
//! before them (see `orchestrator_host::git::step_start`). `.orch/`, where
//! runs made by earlier versions kept their manifests, is left out. git
//! runs with no hooks, no file system monitor, no external diff driver and
//! no text conversion: the run branch's `.gitattributes` is the step's to
//! write.

use orchestrator_core::RunId;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use orchestrator_core::api::RunDetail;
use orchestrator_host::git::{git_in, step_start, PLAIN_DIFF, WITHOUT_RECORDS};

use crate::client::{CliError, Client};

#[derive(clap::Args)]
pub struct DiffArgs {
    /// Run id (or an unambiguous prefix).
    run: RunId,
    /// Only this stage's checkpoints.
    stage: Option<String>,
    /// Only this checkpoint (as `orch artifacts` numbers them).
    #[arg(long)]
    checkpoint: Option<u32>,
    /// A summary of the files changed instead of the patch.
    #[arg(long)]
    stat: bool,
}

/// What to show: a range, or steps' checkpoints (a heading and the commit).
enum Shown {
    Range(String, String),
    Checkpoints(Vec<(String, String)>),
}

pub async fn diff(a: DiffArgs, client: &Client) -> Result<ExitCode> {
    let d = client.run(&a.run).await?;
    let shown = choose(&d, a.stage.as_deref(), a.checkpoint)?;
    let project = Path::new(&d.run.project_dir);
    let ranges = match shown {
        Shown::Range(from, to) => vec![(None, format!("{from}..{to}"))],
        Shown::Checkpoints(cps) => cps
            .into_iter()
            .map(|(heading, commit)| {
                let start = step_start(project, &commit, d.run.base_commit.as_deref())
                    .unwrap_or_else(|| format!("{commit}^"));
                (Some(heading), format!("{start}..{commit}"))
            })
            .collect(),
    };
    let mut ok = true;
    for (heading, range) in ranges {
        if let Some(h) = heading {
            use std::io::Write;
            println!("{h}");
            std::io::stdout().flush()?;
        }
        let mut git = git_in(project);
        git.arg("diff").args(PLAIN_DIFF).arg(range);
        if a.stat {
            git.arg("--stat");
        }
        git.args(WITHOUT_RECORDS);
        let status = git
            .status()
            .with_context(|| "could not run git (is it installed and on PATH?)")?;
        ok &= status.success();
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The heading of one checkpoint's change.
fn heading(c: &orchestrator_core::api::CheckpointView) -> String {
    format!(
        "checkpoint {} (stage {}, step {}): {}",
        c.seq, c.stage_id, c.step, c.commit
    )
}

/// The commits or range `stage` and `checkpoint` pick out of run `d`.
fn choose(d: &RunDetail, stage: Option<&str>, checkpoint: Option<u32>) -> Result<Shown, CliError> {
    let id = &d.run.id;
    if let Some(n) = checkpoint {
        let cp = d
            .checkpoints
            .iter()
            .find(|c| c.seq == n && stage.is_none_or(|s| s == c.stage_id))
            .ok_or_else(|| {
                CliError::BadInput(format!(
                    "run {id} has no checkpoint {n}{}; it has {} (see `orch artifacts {id}`)",
                    stage
                        .map(|s| format!(" of stage {s:?}"))
                        .unwrap_or_default(),
                    d.checkpoints.len()
                ))
            })?;
        return Ok(Shown::Checkpoints(vec![(heading(cp), cp.commit.clone())]));
    }
    if let Some(s) = stage {
        if !d.stages.iter().any(|x| x.stage_id == s) {
            return Err(CliError::BadInput(format!(
                "run {id} has no stage {s:?}; its stages are {}",
                d.stages
                    .iter()
                    .map(|x| x.stage_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let commits: Vec<(String, String)> = d
            .checkpoints
            .iter()
            .filter(|c| c.stage_id == s)
            .map(|c| (heading(c), c.commit.clone()))
            .collect();
        if commits.is_empty() {
            return Err(CliError::BadInput(format!(
                "stage {s:?} of run {id} has no checkpoint yet: nothing to show"
            )));
        }
        return Ok(Shown::Checkpoints(commits));
    }
    let base = d.run.base_commit.clone().ok_or_else(|| {
        CliError::BadInput(format!(
            "run {id} records no base commit: nothing to compare"
        ))
    })?;
    let tip = match (d.checkpoints.last(), &d.run.branch) {
        (Some(c), _) => c.commit.clone(),
        (None, Some(b)) => b.clone(),
        (None, None) => base.clone(),
    };
    Ok(Shown::Range(base, tip))
}
