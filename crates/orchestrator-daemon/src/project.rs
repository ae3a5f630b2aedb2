//! The project a run is submitted for: a git repository, whose ref the run's
//! branch starts from. Resolved once, at submission, so the run is pinned to
//! a commit even if the branch moves on.

use std::path::Path;
use std::process::Command;

use orchestrator_core::cache::{TreeFile, TreeKind};
use orchestrator_core::sched::{parse_project_policy, ProjectPolicy};
use orchestrator_host::confined::{read_definition, Links, MAX_DEFINITION_BYTES};

/// Where a project keeps its scheduling policy.
pub const POLICY_FILE: &str = ".orchestrator/policy.yaml";

/// The project's policy file, read at submission; none means no limits.
/// It is repository content: a regular file of bounded size, never a link.
pub fn read_policy(dir: &Path) -> Result<ProjectPolicy, String> {
    let path = dir.join(POLICY_FILE);
    match read_definition(&path, MAX_DEFINITION_BYTES, Links::Refuse) {
        Ok(Some(text)) => {
            parse_project_policy(&text, &path.display().to_string()).map_err(|e| e.to_string())
        }
        Ok(None) => Ok(ProjectPolicy::default()),
        Err(e) => Err(e.to_string()),
    }
}

/// Resolves `reference` (default `HEAD`) in the repository at `dir` to a
/// full commit sha, or says why it cannot in words a user can act on.
pub fn resolve_commit(dir: &Path, reference: Option<&str>) -> Result<String, String> {
    let reference = reference.unwrap_or("HEAD");
    if reference.is_empty() || reference.starts_with('-') || reference.contains('\0') {
        return Err(format!(
            "ref {reference:?}: expected a branch, tag or commit of the project"
        ));
    }
    let inside = git(dir, &["rev-parse", "--is-inside-work-tree"]);
    if !matches!(inside.as_deref(), Ok("true")) {
        return Err(format!(
            "project_dir {}: not a git repository; a project must be one (`git init` and a first commit)",
            dir.display()
        ));
    }
    let spec = format!("{reference}^{{commit}}");
    git(
        dir,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &spec,
        ],
    )
    .map_err(|_| {
        if reference == "HEAD" {
            format!(
                "project_dir {}: the repository has no commits yet; commit something first",
                dir.display()
            )
        } else {
            format!(
                "ref {reference:?} is not a commit, branch or tag of the repository at {}",
                dir.display()
            )
        }
    })
}

/// Every file of `commit` in the repository at `dir`, with its object id
/// and kind, for cache keys that hash files. Read from git's objects, so
/// nothing in the working directory (a link, an untracked file) counts.
pub fn list_tree(dir: &Path, commit: &str) -> Result<Vec<TreeFile>, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "ls-tree",
            "-r",
            "-z",
            "--full-tree",
            "--end-of-options",
            commit,
        ])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| format!("cannot run git to list commit {commit}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "listing the files of commit {commit} for the cache keys: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_tree(&out.stdout))
}

/// `git ls-tree -r -z` records: `<mode> <type> <id>\t<path>\0`. Paths
/// that are not UTF-8 cannot be named by a pattern and are left out.
fn parse_tree(bytes: &[u8]) -> Vec<TreeFile> {
    bytes
        .split(|b| *b == 0)
        .filter_map(|rec| {
            let rec = std::str::from_utf8(rec).ok()?;
            let (meta, path) = rec.split_once('\t')?;
            let mut parts = meta.split(' ');
            let (mode, _, id) = (parts.next()?, parts.next()?, parts.next()?);
            let kind = match mode {
                "100644" | "100755" => TreeKind::File,
                "120000" => TreeKind::Symlink,
                _ => TreeKind::Other,
            };
            Some(TreeFile {
                path: path.to_owned(),
                id: id.to_owned(),
                kind,
            })
        })
        .collect()
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}
