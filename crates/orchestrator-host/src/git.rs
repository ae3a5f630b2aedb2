//! Run worktrees and checkpoint commits: how a run's work ends up in the
//! project's git repository.
//!
//! Why a worktree per run: steps of a run must not write into the user's
//! checkout (they may be editing it), and parallel runs must not see each
//! other's half-done files. A linked worktree under
//! `<project>/.orchestrator/worktrees/<run_id>` shares the repository's objects,
//! so it costs one checkout, not a clone, and whatever is committed from it is
//! at once visible in the project.
//!
//! Why checkpoints are commits on `orch/run/<run_id>`: the branch is the
//! lasting record of a run, readable without the daemon, and it is what a
//! stage resumed on another machine starts from. A checkpoint runs after every
//! step, so it is made in process with libgit2 and never by a `git`
//! subprocess: blobs for the matched artifacts and the extra files, the
//! branch tip's tree updated at just those paths, a commit, and a
//! compare-and-swap of the branch ref. The worktree's HEAD and index are never
//! touched, so parallel stages of one run can checkpoint at the same time;
//! the one that loses the compare-and-swap redoes its tree on the new tip,
//! which keeps the history linear and loses nothing.
//!
//! Why a `git` subprocess still creates worktrees: libgit2 cannot add a
//! detached worktree, and a worktree is made once per run per machine, so the
//! cost does not matter there.
//!
//! Why repositories are pooled: opening a repository reads its config files
//! and probes its layout, a cost comparable to the rest of a checkpoint.
//! `git2::Repository` is `Send` but not `Sync`, so a handle is taken out of a
//! per-project pool for one checkpoint and put back after it, instead of one
//! handle behind a mutex that would serialize parallel stages. A handle whose
//! use failed is dropped rather than pooled, so a repository that was replaced
//! on disk is opened afresh.

mod checkpoint;
mod collect;
mod guard;
mod import;
mod land;
mod project;
mod show;
mod stepgit;
mod worktree;

use std::collections::HashMap;
use std::io;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use git2::{ErrorCode, Repository};
use orchestrator_core::RunId;

pub use checkpoint::{checkpoint, ArtifactRecord, CheckpointCommit, CheckpointRequest};
pub use guard::{git_command, guard, Guarded};
pub use land::{land, work_commits, LandError, LandMode, LandRequest, Landed};
pub use project::{log_oneline, new_project};
pub use show::{checkpoint_stat, diff_files, git_in, step_start, PLAIN_DIFF, WITHOUT_RECORDS};
pub use stepgit::{prepare_step_git, StepGit};
pub use worktree::{add_detached_worktree, ensure_worktree, RunWorktree};

/// Where the orchestrator keeps its own files in a run's worktree (what
/// humans handed a stage): never committed, and hidden from the step's git.
pub const RECORDS_DIR: &str = ".orch";

/// The commit header that holds a checkpoint's record (the step's manifest,
/// one line of JSON): `git cat-file commit <sha>` shows it, and `git log`
/// stays the work and the checkpoint messages.
pub const RECORD_HEADER: &str = "orch-manifest";

/// Name and email of the author and committer of checkpoint commits.
pub const COMMITTER_NAME: &str = "orchestrator";
/// See [`COMMITTER_NAME`].
pub const COMMITTER_EMAIL: &str = "orch@localhost";

/// Why a git operation on a project failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `project` is not (the top of) a git repository.
    #[error("{} is not a git repository (expected the top directory of a git checkout, with a .git inside): {source}", project.display())]
    NotARepository {
        project: PathBuf,
        #[source]
        source: git2::Error,
    },
    /// The repository has no commit yet, so there is nothing to branch from.
    #[error("the git repository at {} has no commits yet; make a first commit before running a workflow in it", project.display())]
    EmptyRepository { project: PathBuf },
    /// The ref names nothing in the repository.
    #[error("ref '{reference}' does not exist in the git repository at {}; expected a branch, a tag, a commit sha or HEAD", project.display())]
    UnknownRef { project: PathBuf, reference: String },
    /// The ref names an object that is not a commit (a tree or a blob).
    #[error("ref '{reference}' in the git repository at {} names a {kind}, not a commit", project.display())]
    NotACommit {
        project: PathBuf,
        reference: String,
        kind: String,
    },
    /// The run id cannot be part of a branch name or a directory name.
    #[error("run id '{run_id}' cannot name a git branch and a worktree directory: {reason}")]
    InvalidRunId { run_id: RunId, reason: &'static str },
    /// An artifact glob is malformed or leads outside the worktree.
    #[error("artifact glob '{glob}' {reason}")]
    InvalidGlob { glob: String, reason: String },
    /// An artifact the globs reach is a symlink that resolves outside the
    /// run's worktree.
    #[error("artifact '{path}' is a symlink to {}, outside the run's worktree {}; artifacts must stay inside it", target.display(), worktree.display())]
    SymlinkEscapes {
        path: String,
        target: PathBuf,
        worktree: PathBuf,
    },
    /// What the step committed in its own git cannot be taken in.
    #[error("the step's commits cannot be taken into the run branch: {reason}")]
    StepCommits { reason: String },
    /// The worktree handed to `checkpoint` belongs to another run.
    #[error("worktree {} is on branch '{branch}', not on run {run_id}'s branch", path.display())]
    WrongRun {
        path: PathBuf,
        branch: String,
        run_id: RunId,
    },
    /// The run branch does not exist: `ensure_worktree` was not called first.
    #[error("branch '{branch}' does not exist in the git repository at {}; ensure_worktree creates it before the first checkpoint", project.display())]
    MissingBranch { project: PathBuf, branch: String },
    /// A path that must be a worktree (or free for one) is something else.
    #[error("{} {reason}", path.display())]
    PathInTheWay { path: PathBuf, reason: &'static str },
    /// The branch kept moving under the compare-and-swap.
    #[error("could not update branch '{branch}' in {} after {attempts} attempts: other writers kept moving it", project.display())]
    Contended {
        project: PathBuf,
        branch: String,
        attempts: u32,
    },
    /// A file or directory could not be read or written.
    #[error("could not {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A `git` subprocess could not be started or failed.
    #[error("`{command}` in {} failed: {detail}", project.display())]
    Command {
        command: String,
        project: PathBuf,
        detail: String,
    },
    /// libgit2 refused an operation.
    #[error("could not {what} in the git repository at {}: {source}", project.display())]
    Git {
        what: String,
        project: PathBuf,
        #[source]
        source: git2::Error,
    },
}

impl GitError {
    fn git(what: impl Into<String>, project: &Path) -> impl FnOnce(git2::Error) -> GitError {
        let what = what.into();
        let project = project.to_path_buf();
        move |source| GitError::Git {
            what,
            project,
            source,
        }
    }

    fn io(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> GitError {
        let path = path.to_path_buf();
        move |source| GitError::Io { what, path, source }
    }
}

/// Resolves a ref (branch, tag, sha, abbreviated sha, `HEAD`) of the
/// repository at `project` to the full sha of the commit it names.
pub fn resolve_commit(project: &Path, reference: &str) -> Result<String, GitError> {
    let repo = open(project)?;
    Ok(peel_commit(&repo, project, reference)?.to_string())
}

/// The commit `reference` names in `repo`, with errors that say which of
/// "empty repository", "no such ref" and "not a commit" it was.
fn peel_commit(repo: &Repository, project: &Path, reference: &str) -> Result<git2::Oid, GitError> {
    let object = match repo.revparse_single(reference) {
        Ok(object) => object,
        Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::UnbornBranch) => {
            // A fresh repository has no ref at all (its HEAD is unborn): say
            // so rather than "not found", whatever was asked for.
            // (`Repository::is_empty` only knows the default branch name.)
            let no_refs = repo
                .references()
                .map(|mut refs| refs.next().is_none())
                .unwrap_or(false);
            if no_refs {
                return Err(GitError::EmptyRepository {
                    project: project.to_path_buf(),
                });
            }
            return Err(GitError::UnknownRef {
                project: project.to_path_buf(),
                reference: reference.to_owned(),
            });
        }
        Err(e) if matches!(e.code(), ErrorCode::Ambiguous | ErrorCode::InvalidSpec) => {
            return Err(GitError::UnknownRef {
                project: project.to_path_buf(),
                reference: reference.to_owned(),
            })
        }
        Err(e) => return Err(GitError::git(format!("resolve '{reference}'"), project)(e)),
    };
    match object.peel_to_commit() {
        Ok(commit) => Ok(commit.id()),
        Err(_) => Err(GitError::NotACommit {
            project: project.to_path_buf(),
            reference: reference.to_owned(),
            kind: object
                .kind()
                .map_or_else(|| "object".to_owned(), |k| k.to_string()),
        }),
    }
}

/// Opens the repository whose top directory is `project` (no search upward:
/// the project is the repository, not something inside one).
fn open(project: &Path) -> Result<Repository, GitError> {
    Repository::open(project).map_err(|source| GitError::NotARepository {
        project: project.to_path_buf(),
        source,
    })
}

/// The full name of run `run_id`'s branch, after checking the id.
fn run_ref(run_id: &RunId) -> Result<String, GitError> {
    Ok(format!("refs/heads/{}", run_branch(run_id)?))
}

/// The short name of run `run_id`'s branch, `orch/run/<run_id>`, after
/// checking that the id is safe both in a ref name and as a directory name.
fn run_branch(id: &RunId) -> Result<String, GitError> {
    let invalid = |reason| GitError::InvalidRunId {
        run_id: id.clone(),
        reason,
    };
    let run_id = id.as_str();
    if run_id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if run_id.starts_with('.') || run_id.ends_with(".lock") {
        return Err(invalid("it must not start with '.' or end with '.lock'"));
    }
    if !run_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid("expected only letters, digits, '-', '_' and '.'"));
    }
    if run_id.contains("..") {
        return Err(invalid("it must not contain '..'"));
    }
    Ok(format!("orch/run/{run_id}"))
}

/// Most repository handles kept per project; more are opened when more
/// checkpoints run at once, and dropped afterwards.
const POOL_PER_PROJECT: usize = 8;

/// Idle repository handles by canonical project path (see the module docs).
static POOL: LazyLock<Mutex<HashMap<PathBuf, Vec<Repository>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A repository handle taken from [`POOL`]; dropping it puts it back, unless
/// [`Pooled::discard`] was called.
struct Pooled {
    key: PathBuf,
    repo: Option<Repository>,
}

impl Pooled {
    /// A handle on the repository at `project`, from the pool when one is idle.
    fn take(project: &Path) -> Result<Pooled, GitError> {
        // Absolute but not canonical: canonicalizing costs a system call per
        // path component, and a project reached by two spellings merely gets
        // two pools.
        let key = std::path::absolute(project).map_err(|e| GitError::NotARepository {
            project: project.to_path_buf(),
            source: git2::Error::from_str(&e.to_string()),
        })?;
        let idle = POOL
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&key)
            .and_then(Vec::pop);
        let repo = match idle {
            Some(repo) => repo,
            None => open(&key)?,
        };
        Ok(Pooled {
            key,
            repo: Some(repo),
        })
    }

    /// Drops the handle instead of pooling it (after an error).
    fn discard(mut self) {
        self.repo = None;
    }
}

impl Deref for Pooled {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        // Only `discard` and `drop` empty the option, and both consume `self`.
        self.repo.as_ref().expect("pooled repository present")
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Repository {
        // As in `deref`.
        self.repo.as_mut().expect("pooled repository present")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(repo) = self.repo.take() {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            let idle = pool.entry(std::mem::take(&mut self.key)).or_default();
            if idle.len() < POOL_PER_PROJECT {
                idle.push(repo);
            }
        }
    }
}
