//! Making worktrees: the run's own (once per run per machine) and a human's.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use git2::{ErrorCode, Repository};
use orchestrator_core::RunId;
use serde::{Deserialize, Serialize};

use super::{open, peel_commit, run_branch, GitError};

/// A run's worktree: `<project>/.orchestrator/worktrees/<run_id>`, a linked
/// git worktree with a detached HEAD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunWorktree {
    /// The worktree's top directory.
    pub path: PathBuf,
    /// The run's branch, short name: `orch/run/<run_id>`.
    pub branch: String,
}

/// Directory of the run worktrees, relative to the project.
const WORKTREES: &str = ".orchestrator/worktrees";

/// Makes sure run `run_id`'s branch and worktree exist, and returns the
/// worktree.
///
/// The branch `refs/heads/orch/run/<run_id>` is created at `base_commit` (any
/// ref [`super::resolve_commit`] accepts) when missing and never moved when it
/// exists. The worktree is created, detached at the branch's current tip, when
/// missing, so a stage resumed on a fresh machine sees every earlier
/// checkpoint; a registration left behind by a deleted worktree directory is
/// pruned first. `<project>/.orchestrator/.gitignore` (`*`) keeps the user's
/// `git status` clean. The user's branch, index and files are not touched.
///
/// Idempotent, and safe to call at the same time from several threads and
/// processes for the same run: the work is done under an exclusive file lock,
/// `<project>/.orchestrator/worktrees/<run_id>.lock`.
pub fn ensure_worktree(
    project: &Path,
    run_id: &RunId,
    base_commit: &str,
) -> Result<RunWorktree, GitError> {
    let branch = run_branch(run_id)?;
    let repo = open(project)?;
    // Canonical, so that the worktree path matches the one git records.
    let project = &fs::canonicalize(project).map_err(GitError::io("resolve", project))?;
    let orch_dir = project.join(".orchestrator");
    let dir = project.join(WORKTREES);
    // A symlink (`.orchestrator -> /elsewhere`) must not carry worktrees and
    // lock files out of the project.
    for p in [&orch_dir, &dir] {
        if fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(GitError::PathInTheWay {
                path: p.clone(),
                reason: "is a symlink; expected a plain directory inside the project",
            });
        }
    }
    fs::create_dir_all(&dir).map_err(GitError::io("create the worktrees directory", &dir))?;
    write_gitignore(&orch_dir)?;
    let path = dir.join(run_id.as_str());

    let lock_path = dir.join(format!("{run_id}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(GitError::io("open the worktree lock", &lock_path))?;
    lock.lock()
        .map_err(GitError::io("lock the worktree lock", &lock_path))?;

    let tip = ensure_branch(&repo, project, &branch, base_commit)?;
    // Made before: its `.git` is proved (and put back) rather than trusted,
    // since a step may have replaced it.
    if fs::symlink_metadata(&path).is_ok() && super::guard::admin_dir(project, &path).is_ok() {
        super::guard::guard(project, &path)?;
        drop(lock);
        return Ok(RunWorktree { path, branch });
    }
    if !missing_or_empty(&path)? {
        return Err(GitError::PathInTheWay {
            path,
            reason: "exists and is not a git worktree; move it away so the run's worktree can be created there",
        });
    }
    prune_missing(&repo, project, &path)?;
    git_worktree_add(project, &path, &tip.to_string())?;
    drop(lock);
    Ok(RunWorktree { path, branch })
}

/// Adds a worktree at `dest` for a human, detached at `commit` (any ref
/// [`super::resolve_commit`] accepts): what `orch checkout` gives. `dest` must
/// not exist or be an empty directory.
pub fn add_detached_worktree(project: &Path, commit: &str, dest: &Path) -> Result<(), GitError> {
    let repo = open(project)?;
    let sha = peel_commit(&repo, project, commit)?;
    if !missing_or_empty(dest)? {
        return Err(GitError::PathInTheWay {
            path: dest.to_path_buf(),
            reason: "exists and is not empty; expected a new or empty directory for the worktree",
        });
    }
    git_worktree_add(project, dest, &sha.to_string())
}

/// Whether `path` is free for a new worktree: missing, or an empty directory.
fn missing_or_empty(path: &Path) -> Result<bool, GitError> {
    match fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotADirectory => Ok(false),
        Err(e) => Err(GitError::io("read", path)(e)),
    }
}

/// Writes `<orch_dir>/.gitignore` unless it exists: everything the agent
/// keeps there is ignored, but the project's policy file can be committed.
fn write_gitignore(orch_dir: &Path) -> Result<(), GitError> {
    let path = orch_dir.join(".gitignore");
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(mut file) => file
            .write_all(b"*\n!policy.yaml\n")
            .map_err(GitError::io("write", &path)),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(GitError::io("create", &path)(e)),
    }
}

/// The tip of `branch`, created at `base` first when missing.
fn ensure_branch(
    repo: &Repository,
    project: &Path,
    branch: &str,
    base: &str,
) -> Result<git2::Oid, GitError> {
    let full = format!("refs/heads/{branch}");
    let existing = |repo: &Repository| -> Result<Option<git2::Oid>, GitError> {
        match repo.refname_to_id(&full) {
            Ok(id) => Ok(Some(id)),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(GitError::git(format!("read branch '{branch}'"), project)(e)),
        }
    };
    if let Some(id) = existing(repo)? {
        return Ok(id);
    }
    let base_id = peel_commit(repo, project, base)?;
    let message = format!("orchestrator: run branch at {base}");
    match repo.reference(&full, base_id, false, &message) {
        Ok(_) => Ok(base_id),
        // Another process created it meanwhile: theirs stands.
        Err(e) if e.code() == ErrorCode::Exists => existing(repo)?
            .ok_or_else(|| GitError::git(format!("create branch '{branch}'"), project)(e)),
        Err(e) => Err(GitError::git(format!("create branch '{branch}'"), project)(
            e,
        )),
    }
}

/// Prunes the registration of a worktree whose directory `path` is gone (a
/// worktree deleted by hand), so that `git worktree add` accepts the path
/// again. Other worktrees' registrations are left alone.
fn prune_missing(repo: &Repository, project: &Path, path: &Path) -> Result<(), GitError> {
    let names = repo
        .worktrees()
        .map_err(GitError::git("list worktrees", project))?;
    for name in names.iter().flatten() {
        let Ok(wt) = repo.find_worktree(name) else {
            continue;
        };
        if wt.path() == path && wt.validate().is_err() {
            let mut opts = git2::WorktreePruneOptions::new();
            opts.valid(false).working_tree(false);
            wt.prune(Some(&mut opts))
                .map_err(GitError::git(format!("prune worktree '{name}'"), project))?;
        }
    }
    Ok(())
}

/// `git worktree add --detach <path> <sha>`, run in `project`.
fn git_worktree_add(project: &Path, path: &Path, sha: &str) -> Result<(), GitError> {
    let mut cmd = super::guard::git_command();
    cmd.arg("-C")
        .arg(project)
        .args(["worktree", "add", "--quiet", "--detach"])
        .arg(path)
        .arg(sha)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let command = format!("git worktree add --detach {} {sha}", path.display());
    let output = cmd.output().map_err(|e| GitError::Command {
        command: command.clone(),
        project: project.to_path_buf(),
        detail: format!("could not start git: {e}"),
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(GitError::Command {
        command,
        project: project.to_path_buf(),
        detail: format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}
