//! Showing a run's change as git prints it, for a human: without the
//! orchestrator's records and without anything the run's files could make
//! git run (the branch's `.gitattributes` is the step's to write).

use std::path::Path;
use std::process::Command;

/// Options that keep a diff to git's own plain output: no external diff
/// driver, no text conversion, no colour.
pub const PLAIN_DIFF: [&str; 3] = ["--no-ext-diff", "--no-textconv", "--no-color"];

/// The pathspec that leaves `.orch/` out: runs made before the checkpoints'
/// manifests moved into the commits' headers kept them there.
pub const WITHOUT_RECORDS: [&str; 3] = ["--", ".", ":(exclude).orch"];

/// `git -C project --no-pager` with hooks and the file system monitor off
/// (see [`super::git_command`]).
pub fn git_in(project: &Path) -> Command {
    let mut git = super::guard::git_command();
    git.arg("-C").arg(project).arg("--no-pager");
    git.env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_EXTERNAL_DIFF");
    git
}

/// The most commits looked through for the start of a step's work.
const MAX_STEP_COMMITS: usize = 10_000;

/// Where the step whose checkpoint is `commit` started: the first commit
/// before it, going back along first parents through the step's own
/// commits, that is a checkpoint (it holds a record) or has no parent. So
/// `<start>..<commit>` is exactly that step's change: its commits and its
/// artifacts. None when the repository cannot tell.
pub fn step_start(project: &Path, commit: &str) -> Option<String> {
    let repo = super::open(project).ok()?;
    let mut at = repo.revparse_single(commit).ok()?.peel_to_commit().ok()?;
    for _ in 0..MAX_STEP_COMMITS {
        let Ok(parent) = at.parent(0) else {
            return Some(at.id().to_string());
        };
        if is_checkpoint(&parent) {
            return Some(parent.id().to_string());
        }
        at = parent;
    }
    None
}

/// Whether `c` is a checkpoint commit: it holds a record (the import
/// refuses a step's commit that claims one), or, made before records left
/// the tree, the orchestrator committed it with the run's trailers.
pub(super) fn is_checkpoint(c: &git2::Commit) -> bool {
    c.header_field_bytes(super::RECORD_HEADER).is_ok()
        || (c.committer().email() == Some(super::COMMITTER_EMAIL)
            && c.message().is_some_and(|m| m.contains("\nOrch-Job: ")))
}

/// The files the step whose checkpoint is `commit` changed (its own
/// commits and its artifacts), as `git diff --stat` lists them (empty when
/// it changed nothing); None when git cannot tell.
pub fn checkpoint_stat(project: &Path, commit: &str) -> Option<String> {
    let start = step_start(project, commit)?;
    let out = git_in(project)
        .args(["diff", "--stat"])
        .args(PLAIN_DIFF)
        .arg(format!("{start}..{commit}"))
        .args(WITHOUT_RECORDS)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}
