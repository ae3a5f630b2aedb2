//! The project a run is submitted for: a git repository, whose ref the run's
//! branch starts from. Resolved once, at submission, so the run is pinned to
//! a commit even if the branch moves on.

use std::path::{Path, PathBuf};
use std::process::Command;

use orchestrator_core::cache::{TreeFile, TreeKind};
use orchestrator_core::sched::{parse_project_policy, ProjectPolicy};
use orchestrator_host::confined::{read_definition, Links, MAX_DEFINITION_BYTES};

/// Why a project cannot take a run, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("ref {0:?}: expected a branch, tag or commit of the project")]
    BadRef(String),
    #[error("project_dir {}: not a git repository; a project must be one (`git init` and a first commit)", .0.display())]
    NotARepository(PathBuf),
    #[error("project_dir {}: the repository has no commits yet; commit something first", .0.display())]
    NoCommits(PathBuf),
    #[error("ref {reference:?} is not a commit, branch or tag of the repository at {}", .dir.display())]
    NotACommit { reference: String, dir: PathBuf },
    /// The policy file is unreadable (a link, too big, not a file).
    #[error(transparent)]
    PolicyUnreadable(#[from] orchestrator_host::confined::DefinitionError),
    #[error(transparent)]
    Policy(#[from] orchestrator_core::sched::PolicyError),
    #[error("cannot run git {what}: {source}")]
    Git {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listing the files of commit {commit} for the cache keys: {stderr}")]
    ListTree { commit: String, stderr: String },
}

/// Where a project keeps its scheduling policy.
pub const POLICY_FILE: &str = ".orchestrator/policy.yaml";

/// The project's policy file, read at submission; none means no limits.
/// It is repository content: a regular file of bounded size, never a link.
pub fn read_policy(dir: &Path) -> Result<ProjectPolicy, ProjectError> {
    let path = dir.join(POLICY_FILE);
    match read_definition(&path, MAX_DEFINITION_BYTES, Links::Refuse)? {
        Some(text) => Ok(parse_project_policy(&text, &path.display().to_string())?),
        None => Ok(ProjectPolicy::default()),
    }
}

/// Resolves `reference` (default `HEAD`) in the repository at `dir` to a
/// full commit sha, or says why it cannot in words a user can act on.
pub fn resolve_commit(dir: &Path, reference: Option<&str>) -> Result<String, ProjectError> {
    let reference = reference.unwrap_or("HEAD");
    if reference.is_empty() || reference.starts_with('-') || reference.contains('\0') {
        return Err(ProjectError::BadRef(reference.to_owned()));
    }
    let inside = git(dir, &["rev-parse", "--is-inside-work-tree"])?;
    if inside.as_deref() != Some("true") {
        return Err(ProjectError::NotARepository(dir.to_owned()));
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
    )?
    .ok_or_else(|| {
        if reference == "HEAD" {
            ProjectError::NoCommits(dir.to_owned())
        } else {
            ProjectError::NotACommit {
                reference: reference.to_owned(),
                dir: dir.to_owned(),
            }
        }
    })
}

/// Every file of `commit` in the repository at `dir`, with its object id
/// and kind, for cache keys that hash files. Read from git's objects, so
/// nothing in the working directory (a link, an untracked file) counts.
pub fn list_tree(dir: &Path, commit: &str) -> Result<Vec<TreeFile>, ProjectError> {
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
        .map_err(|source| ProjectError::Git {
            what: format!("to list commit {commit}"),
            source,
        })?;
    if !out.status.success() {
        return Err(ProjectError::ListTree {
            commit: commit.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
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

/// What git printed, or None when it said no (its message is not needed:
/// every caller says what the refusal means for the project).
fn git(dir: &Path, args: &[&str]) -> Result<Option<String>, ProjectError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|source| ProjectError::Git {
            what: args.first().copied().unwrap_or("").to_owned(),
            source,
        })?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}
