//! `orch land RUN [--onto BRANCH] [--squash|--merge|--rebase]`: a run's
//! work onto one of the project's branches, with a message that summarises
//! the run (see `orchestrator_host::git::land`).
//!
//! Only a run that succeeded lands unless `--force` says otherwise: a run
//! still going, or one that failed, may land half its work. Every refusal
//! (the run's state, a branch that does not exist, a conflict with what the
//! branch gained, a checkout with uncommitted changes) exits 2 and changes
//! nothing.

use orchestrator_core::RunId;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use orchestrator_core::api::RunDetail;
use orchestrator_core::machine::RunState;
use orchestrator_core::quote;
use orchestrator_host::git::{
    git_in, land as land_run, work_commits, LandError, LandMode, LandRequest, PLAIN_DIFF,
};

use crate::client::{CliError, Client};

#[derive(clap::Args)]
pub struct LandArgs {
    /// Run id (or an unambiguous prefix).
    run: RunId,
    /// The branch to land on; the one the project's checkout is on when
    /// left out.
    #[arg(long)]
    onto: Option<String>,
    /// One commit with the run's whole change (the default).
    #[arg(long, group = "mode")]
    squash: bool,
    /// A merge commit that keeps the run's branch as its second parent.
    #[arg(long, group = "mode")]
    merge: bool,
    /// The run's commits that change something, replayed one by one.
    #[arg(long, group = "mode")]
    rebase: bool,
    /// The first line of the message (the summary of the run follows).
    #[arg(short, long)]
    message: Option<String>,
    /// Land a run that has not succeeded (its last checkpoint).
    #[arg(long)]
    force: bool,
    /// Say what would land, and move nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn land(a: LandArgs, client: &Client) -> Result<ExitCode> {
    let d = client.run(&a.run).await?;
    let id = &d.run.id;
    let state = d.run.state;
    if state != RunState::Succeeded && !a.force {
        return Err(CliError::BadInput(format!(
            "run {id} is {state}, not succeeded: it may hold half its work; land it once it succeeds, or pass --force to land its last checkpoint"
        ))
        .into());
    }
    let base = d.run.base_commit.clone().ok_or_else(|| {
        CliError::BadInput(format!("run {id} records no base commit: nothing to land"))
    })?;
    let tip = d
        .run
        .branch
        .clone()
        .or_else(|| d.checkpoints.last().map(|c| c.commit.clone()))
        .ok_or_else(|| CliError::BadInput(format!("run {id} has no branch: nothing to land")))?;
    let project = Path::new(&d.run.project_dir);
    let mode = if a.merge {
        LandMode::Merge
    } else if a.rebase {
        LandMode::Rebase
    } else {
        LandMode::Squash
    };
    let commits = work_commits(project, &base, &tip)?;
    let message = message(&d, a.message.as_deref(), &commits);
    let req = LandRequest {
        base: &base,
        tip: &tip,
        onto: a.onto.as_deref(),
        mode,
        message: &message,
        dry_run: a.dry_run,
    };
    let landed = match land_run(project, &req) {
        Ok(l) => l,
        Err(LandError::Git(e)) => return Err(e.into()),
        Err(e) => return Err(CliError::BadInput(e.to_string()).into()),
    };
    let how = match mode {
        LandMode::Squash => "squashed",
        LandMode::Merge => "merged",
        LandMode::Rebase => "rebased",
    };
    let short = &landed.new[..landed.new.len().min(12)];
    if a.dry_run {
        println!(
            "would land run {id} on {} as {short} ({how}); nothing moved",
            landed.branch
        );
    } else {
        println!("landed run {id} on {} as {short} ({how})", landed.branch);
        if let Some(c) = &landed.checkout {
            println!("updated the checkout at {}", c.display());
        }
    }
    // What changed on the branch, as git counts it.
    let _ = git_in(project)
        .args(["diff", "--stat"])
        .args(PLAIN_DIFF)
        .arg(format!("{}..{}", landed.old, landed.new))
        .status();
    Ok(ExitCode::SUCCESS)
}

/// The landed commit's message: a summary line, the run's stages, the
/// step's own commit subjects, and trailers naming the run.
fn message(d: &RunDetail, first: Option<&str>, commits: &[String]) -> String {
    let id = &d.run.id;
    let mut text = match first {
        Some(f) => f.trim().to_owned(),
        None => match commits {
            [only] => quote::one_line(only, 200),
            _ => format!("{}: the work of run {id}", d.run.workflow),
        },
    };
    text.push_str("\n\n");
    text.push_str(&format!(
        "Landed from run {id} of workflow {} ({} of {} stages succeeded).\n",
        d.run.workflow, d.run.stages_succeeded, d.run.stages_total
    ));
    if !commits.is_empty() {
        text.push_str("\nCommits:\n");
        for c in commits {
            text.push_str(&format!("- {}\n", quote::one_line(c, 200)));
        }
    }
    text.push_str(&format!(
        "\nOrch-Run: {id}\nOrch-Workflow: {}\n",
        d.run.workflow
    ));
    text
}
