//! The git repository a bench's steps run in: a fresh one with a first
//! commit, since a step works on a run's worktree of its project.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=orch", "-c", "user.email=orch@localhost"])
        .args(args)
        .output()
        .context("cannot run git; the bench's project is a git repository")?;
    if !out.status.success() {
        bail!(
            "git {} in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Makes `dir` a git repository holding a README, committed; returns the commit.
pub fn init(dir: &Path, readme: &str) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    git(dir, &["init", "-q"])?;
    std::fs::write(dir.join("README.md"), readme)
        .with_context(|| format!("cannot write {}", dir.join("README.md").display()))?;
    git(dir, &["add", "--", "README.md"])?;
    git(dir, &["commit", "-q", "-m", "first commit"])?;
    git(dir, &["rev-parse", "HEAD"])
}
