//! Showing a run's change as git prints it, for a human: without the
//! orchestrator's records and without anything the run's files could make
//! git run (the branch's `.gitattributes` is the step's to write).

use std::path::Path;
use std::process::Command;

/// Options that keep a diff to git's own plain output: no external diff
/// driver, no text conversion, no colour.
pub const PLAIN_DIFF: [&str; 3] = ["--no-ext-diff", "--no-textconv", "--no-color"];

/// The pathspec that leaves the checkpoints' manifests (`.orch/`) out.
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

/// The files checkpoint `commit` of the repository at `project` changed,
/// as `git show --stat` lists them, without the manifests (empty when
/// nothing else changed); None when git cannot tell.
pub fn checkpoint_stat(project: &Path, commit: &str) -> Option<String> {
    let out = git_in(project)
        .args(["show", "--format=", "--stat"])
        .args(PLAIN_DIFF)
        .arg(commit)
        .args(WITHOUT_RECORDS)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}
