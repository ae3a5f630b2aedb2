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
/// commits, that is a checkpoint (it holds a record), the run's `base` (the
/// commit it started from; a run's first step stops there, not in the
/// project's history before it) or has no parent. So `<start>..<commit>` is
/// exactly that step's change: its commits and its artifacts. None when the
/// repository cannot tell.
pub fn step_start(project: &Path, commit: &str, base: Option<&str>) -> Option<String> {
    let repo = super::open(project).ok()?;
    let base = match base {
        Some(b) => Some(repo.revparse_single(b).ok()?.peel_to_commit().ok()?.id()),
        None => None,
    };
    let mut at = repo.revparse_single(commit).ok()?.peel_to_commit().ok()?;
    for _ in 0..MAX_STEP_COMMITS {
        let Ok(parent) = at.parent(0) else {
            return Some(at.id().to_string());
        };
        if Some(parent.id()) == base || is_checkpoint(&parent) {
            return Some(parent.id().to_string());
        }
        at = parent;
    }
    None
}

/// Whether `c` is a checkpoint commit: it holds a record (the import
/// refuses a step's commit that claims one), or, made before records left
/// the tree, the orchestrator committed it with the run's trailers.
pub(super) fn is_checkpoint(c: &git2::Commit<'_>) -> bool {
    c.header_field_bytes(super::RECORD_HEADER).is_ok()
        || (c.committer().email() == Some(super::COMMITTER_EMAIL)
            && c.message().is_some_and(|m| m.contains("\nOrch-Job: ")))
}

/// The files the step whose checkpoint is `commit` changed (its own
/// commits and its artifacts), as `git diff --stat` lists them (empty when
/// it changed nothing); None when git cannot tell. `base` is the commit the
/// run started from (see [`step_start`]).
pub fn checkpoint_stat(project: &Path, commit: &str, base: Option<&str>) -> Option<String> {
    let start = step_start(project, commit, base)?;
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

/// The most files a [`diff_files`] lists.
pub const MAX_DIFF_FILES: usize = 500;
/// The most bytes of patch kept per file.
pub const MAX_PATCH_BYTES: usize = 64 * 1024;

/// The change from `from` to `to` in the repository at `project`, file by
/// file, without `.orch/`; made by libgit2, which runs no diff driver or
/// text conversion the run's `.gitattributes` could name.
pub fn diff_files(
    project: &Path,
    from: &str,
    to: &str,
) -> Result<orchestrator_core::api::RunDiff, super::GitError> {
    use git2::{Delta, DiffOptions, Patch};
    let repo = super::open(project)?;
    let git = |what: &str| super::GitError::git(what.to_owned(), project);
    let tree = |rev: &str| -> Result<(git2::Oid, git2::Tree<'_>), super::GitError> {
        let c = super::peel_commit(&repo, project, rev)?;
        let t = repo
            .find_commit(c)
            .and_then(|c| c.tree())
            .map_err(git("read a tree"))?;
        Ok((c, t))
    };
    let ((from_id, old), (to_id, new)) = (tree(from)?, tree(to)?);
    let mut opts = DiffOptions::new();
    opts.context_lines(3);
    let mut diff = repo
        .diff_tree_to_tree(Some(&old), Some(&new), Some(&mut opts))
        .map_err(git("diff"))?;
    let mut find = git2::DiffFindOptions::new();
    find.renames(true);
    diff.find_similar(Some(&mut find)).map_err(git("diff"))?;
    let mut files = Vec::new();
    let mut left_out = 0u32;
    for i in 0..diff.deltas().len() {
        let Some(delta) = diff.get_delta(i) else {
            continue;
        };
        let path_of = |f: git2::DiffFile<'_>| f.path().map(|p| p.to_string_lossy().into_owned());
        let path = path_of(delta.new_file())
            .or_else(|| path_of(delta.old_file()))
            .unwrap_or_default();
        if path == super::RECORDS_DIR || path.starts_with(&format!("{}/", super::RECORDS_DIR)) {
            continue;
        }
        if files.len() == MAX_DIFF_FILES {
            left_out += 1;
            continue;
        }
        let status = match delta.status() {
            Delta::Added => "added",
            Delta::Deleted => "deleted",
            Delta::Renamed => "renamed",
            Delta::Typechange => "typechange",
            _ => "modified",
        };
        let old_path = (delta.status() == Delta::Renamed)
            .then(|| path_of(delta.old_file()))
            .flatten();
        let binary = delta.flags().is_binary();
        let (mut insertions, mut deletions, mut text, mut truncated) = (0, 0, String::new(), false);
        if let Some(mut patch) = Patch::from_diff(&diff, i).map_err(git("diff"))? {
            let (_, ins, del) = patch.line_stats().map_err(git("diff"))?;
            insertions = u32::try_from(ins).unwrap_or(u32::MAX);
            deletions = u32::try_from(del).unwrap_or(u32::MAX);
            if !binary {
                let buf = patch.to_buf().map_err(git("diff"))?;
                let whole = String::from_utf8_lossy(&buf);
                // The hunks only: the header repeats what the fields say.
                let hunks = whole.find("\n@@").map_or("", |at| &whole[at + 1..]);
                truncated = hunks.len() > MAX_PATCH_BYTES;
                let mut end = hunks.len().min(MAX_PATCH_BYTES);
                while !hunks.is_char_boundary(end) {
                    end -= 1;
                }
                text = hunks[..end].to_owned();
            }
        }
        files.push(orchestrator_core::api::FileDiff {
            path,
            old_path,
            status: status.to_owned(),
            insertions,
            deletions,
            binary,
            patch: text,
            truncated,
        });
    }
    Ok(orchestrator_core::api::RunDiff {
        from: from_id.to_string(),
        to: to_id.to_string(),
        files,
        files_left_out: left_out,
    })
}
