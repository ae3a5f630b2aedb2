//! Projects the CLI makes for itself: the demo's and the bench's, each a
//! fresh git repository with a first commit, since a run works on a branch
//! of its project's history.

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
        .context("cannot run git; a project is a git repository, so orch needs git installed")?;
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

/// Makes `dir` a git repository holding `files`, committed.
pub fn init(dir: &Path, files: &[(&str, &str)]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    git(dir, &["init", "-q"])?;
    for (name, text) in files {
        std::fs::write(dir.join(name), text)
            .with_context(|| format!("cannot write {}", dir.join(name).display()))?;
        git(dir, &["add", "--", name])?;
    }
    git(
        dir,
        &["commit", "-q", "--allow-empty", "-m", "first commit"],
    )?;
    Ok(())
}

/// `git log --oneline` of a branch, for showing a run's history.
pub fn log(dir: &Path, branch: &str) -> Result<String> {
    git(dir, &["log", "--oneline", "--end-of-options", branch])
}
