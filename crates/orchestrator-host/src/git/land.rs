//! Landing a run: its work onto one of the project's branches, as one
//! squashed commit, a merge commit, or its commits replayed.
//!
//! The new commit is made in the object database first, whatever the mode,
//! and nothing else changes until it exists and merges cleanly: a conflict
//! with what the branch gained since the run started is reported with the
//! paths and changes nothing. The branch then moves by compare-and-swap, or,
//! when a checkout has it checked out, by a fast-forward merge in that
//! checkout (which updates its files and refuses to touch a file it would
//! overwrite); a checkout with changes to tracked files is refused before.
//! Runs made before records left the tree kept them in `.orch/`: landing
//! leaves that directory out.

use std::path::{Path, PathBuf};

use git2::build::TreeUpdateBuilder;
use git2::{Commit, MergeOptions, Oid, Repository, Signature, Sort, Tree};

use super::{open, show, GitError, COMMITTER_EMAIL, COMMITTER_NAME, RECORDS_DIR};

/// How a run's work lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LandMode {
    /// One commit with the run's whole change.
    #[default]
    Squash,
    /// A merge commit whose second parent is the run's branch.
    Merge,
    /// The run's commits that change something, replayed one by one.
    Rebase,
}

/// What to land.
#[derive(Debug, Clone, Copy)]
pub struct LandRequest<'a> {
    /// The commit the run started from.
    pub base: &'a str,
    /// The run's last commit (its branch's tip).
    pub tip: &'a str,
    /// The branch to land on (short name); None for the one the project's
    /// checkout is on.
    pub onto: Option<&'a str>,
    pub mode: LandMode,
    /// The message of the squashed or merge commit.
    pub message: &'a str,
    /// Make the commit but move nothing.
    pub dry_run: bool,
}

/// A landing done (or, with `dry_run`, prepared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landed {
    /// The branch, short name.
    pub branch: String,
    /// Its tip before.
    pub old: String,
    /// Its tip now (or, with `dry_run`, what it would be).
    pub new: String,
    /// The checkout whose files were updated, when the branch is checked out.
    pub checkout: Option<PathBuf>,
}

/// Why a run cannot land; every variant but `Git` is the caller's to fix,
/// and in every case nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum LandError {
    #[error("branch '{branch}' does not exist in {}; name an existing branch with --onto", project.display())]
    NoSuchBranch { project: PathBuf, branch: String },
    #[error("the checkout at {} is on no branch (detached HEAD); name the branch to land on with --onto", project.display())]
    Detached { project: PathBuf },
    #[error("the run changed nothing between {base} and {tip}: there is nothing to land")]
    NothingToLand { base: String, tip: String },
    #[error("the run's work conflicts with what branch '{branch}' gained since the run started, in {}; nothing changed (land it onto another branch, or merge by hand from the run's branch)", paths.join(", "))]
    Conflicts { branch: String, paths: Vec<String> },
    #[error("branch '{branch}' has the run's change already (landed before?): landing it again would change nothing")]
    AlreadyLanded { branch: String },
    #[error("commit {commit} of the run is a merge, which --rebase cannot replay; land with --squash or --merge")]
    MergeInRun { commit: String },
    #[error("the checkout at {} has branch '{branch}' checked out with uncommitted changes ({}); commit or stash them first, nothing changed", path.display(), files.join(", "))]
    DirtyCheckout {
        path: PathBuf,
        branch: String,
        files: Vec<String>,
    },
    #[error("branch '{branch}' moved while landing (to {now}); nothing changed, land again")]
    Moved { branch: String, now: String },
    #[error(transparent)]
    Git(#[from] GitError),
}

/// Lands the run's work on a branch of the repository at `project`; see the
/// module documentation.
pub fn land(project: &Path, req: &LandRequest<'_>) -> Result<Landed, LandError> {
    let repo = open(project)?;
    let git = |what: &str| GitError::git(what.to_owned(), project);
    let branch = match req.onto {
        Some(b) => b.trim_start_matches("refs/heads/").to_owned(),
        None => current_branch(&repo).ok_or_else(|| LandError::Detached {
            project: project.to_owned(),
        })?,
    };
    let refname = format!("refs/heads/{branch}");
    let old = repo
        .refname_to_id(&refname)
        .map_err(|_| LandError::NoSuchBranch {
            project: project.to_owned(),
            branch: branch.clone(),
        })?;
    let base = super::peel_commit(&repo, project, req.base)?;
    let tip = super::peel_commit(&repo, project, req.tip)?;
    let find = |id: Oid| repo.find_commit(id).map_err(git("read a commit"));
    let (base_c, tip_c, old_c) = (find(base)?, find(tip)?, find(old)?);
    let work = without_records(&repo, project, &tip_c)?;
    let base_tree = without_records(&repo, project, &base_c)?;
    if work.id() == base_tree.id() {
        return Err(LandError::NothingToLand {
            base: base.to_string(),
            tip: tip.to_string(),
        });
    }
    let checkout = checkout_of(project, &refname)?;
    if let Some(path) = &checkout {
        let files = dirty(path)?;
        if !files.is_empty() {
            return Err(LandError::DirtyCheckout {
                path: path.clone(),
                branch,
                files,
            });
        }
    }
    let sig = signature(&repo)?;
    let new = match req.mode {
        LandMode::Squash | LandMode::Merge => {
            let tree = merged(&repo, project, &branch, &base_tree, &old_c, &work)?;
            if old_c.tree_id() == tree {
                return Err(LandError::AlreadyLanded { branch });
            }
            let tree = repo.find_tree(tree).map_err(git("read the landed tree"))?;
            let parents: Vec<&Commit<'_>> = if req.mode == LandMode::Merge {
                vec![&old_c, &tip_c]
            } else {
                vec![&old_c]
            };
            repo.commit(None, &sig, &sig, req.message, &tree, &parents)
                .map_err(git("make the landed commit"))?
        }
        LandMode::Rebase => {
            let new = rebase(&repo, project, &branch, base, tip, &old_c, &sig)?;
            if new == old {
                return Err(LandError::AlreadyLanded { branch });
            }
            new
        }
    };
    let landed = Landed {
        branch: branch.clone(),
        old: old.to_string(),
        new: new.to_string(),
        checkout: checkout.clone(),
    };
    if req.dry_run {
        return Ok(landed);
    }
    match &checkout {
        Some(path) => {
            // Fast-forward in the checkout: its files follow, and git refuses
            // rather than overwrite one the user changed since the look above.
            let out = show::git_in(path)
                .args(["merge", "--ff-only", "--quiet"])
                .arg(new.to_string())
                .output()
                .map_err(|e| GitError::Command {
                    command: "git merge --ff-only".into(),
                    project: path.clone(),
                    detail: e.to_string(),
                })?;
            if !out.status.success() {
                let now = repo
                    .refname_to_id(&refname)
                    .map_err(git("read the branch"))?;
                if now != old {
                    return Err(LandError::Moved {
                        branch,
                        now: now.to_string(),
                    });
                }
                return Err(GitError::Command {
                    command: format!("git merge --ff-only {new}"),
                    project: path.clone(),
                    detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                }
                .into());
            }
        }
        None => {
            let log = format!("orch land: {}", req.message.lines().next().unwrap_or(""));
            if let Err(e) = repo.reference_matching(&refname, new, true, old, &log) {
                let now = repo
                    .refname_to_id(&refname)
                    .map_err(git("read the branch"))?;
                if now != old {
                    return Err(LandError::Moved {
                        branch,
                        now: now.to_string(),
                    });
                }
                return Err(git("move the branch")(e).into());
            }
        }
    }
    Ok(landed)
}

/// The subjects of the run's own commits between `base` and `tip`, oldest
/// first, without the checkpoints: what a squashed message lists.
pub fn work_commits(project: &Path, base: &str, tip: &str) -> Result<Vec<String>, GitError> {
    let repo = open(project)?;
    let git = |what: &str| GitError::git(what.to_owned(), project);
    let mut walk = repo.revwalk().map_err(git("walk the run"))?;
    walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)
        .map_err(git("walk the run"))?;
    let (tip, base) = (
        super::peel_commit(&repo, project, tip)?,
        super::peel_commit(&repo, project, base)?,
    );
    walk.push(tip)
        .and_then(|()| walk.hide(base))
        .map_err(git("walk the run"))?;
    let mut out = Vec::new();
    for id in walk {
        let c = repo
            .find_commit(id.map_err(git("walk the run"))?)
            .map_err(git("read a commit"))?;
        if !show::is_checkpoint(&c) {
            out.push(c.summary().unwrap_or("").to_owned());
        }
    }
    Ok(out)
}

/// The branch the project's checkout is on.
fn current_branch(repo: &Repository) -> Option<String> {
    let head = repo.find_reference("HEAD").ok()?;
    let target = head.symbolic_target()?;
    target.strip_prefix("refs/heads/").map(str::to_owned)
}

/// `c`'s tree without the `.orch/` that older runs committed.
fn without_records<'r>(
    repo: &'r Repository,
    project: &Path,
    c: &Commit<'_>,
) -> Result<Tree<'r>, GitError> {
    let tree = c
        .tree()
        .map_err(GitError::git("read a commit's tree", project))?;
    let tree = repo
        .find_tree(tree.id())
        .map_err(GitError::git("read a commit's tree", project))?;
    if tree.get_name(RECORDS_DIR).is_none() {
        return Ok(tree);
    }
    let id = TreeUpdateBuilder::new()
        .remove(RECORDS_DIR)
        .create_updated(repo, &tree)
        .map_err(GitError::git("leave the records out", project))?;
    repo.find_tree(id)
        .map_err(GitError::git("leave the records out", project))
}

/// The tree of the branch with the run's change (`base` to `work`) merged
/// in; the branch's own when it has not moved since the run started.
fn merged(
    repo: &Repository,
    project: &Path,
    branch: &str,
    base: &Tree<'_>,
    onto: &Commit<'_>,
    work: &Tree<'_>,
) -> Result<Oid, LandError> {
    let onto_tree = onto
        .tree()
        .map_err(GitError::git("read the branch's tree", project))?;
    if onto_tree.id() == base.id() {
        return Ok(work.id());
    }
    let mut opts = MergeOptions::new();
    opts.fail_on_conflict(false);
    let mut index = repo
        .merge_trees(base, &onto_tree, work, Some(&opts))
        .map_err(GitError::git("merge the run's work", project))?;
    if index.has_conflicts() {
        return Err(LandError::Conflicts {
            branch: branch.to_owned(),
            paths: conflict_paths(&index),
        });
    }
    Ok(index
        .write_tree_to(repo)
        .map_err(GitError::git("write the landed tree", project))?)
}

/// The paths an index holds conflicts for, sorted.
pub(super) fn conflict_paths(index: &git2::Index) -> Vec<String> {
    let mut paths: Vec<String> = index
        .conflicts()
        .map(|c| {
            c.filter_map(Result::ok)
                .filter_map(|c| c.our.or(c.their).or(c.ancestor))
                .map(|e| String::from_utf8_lossy(&e.path).into_owned())
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths.dedup();
    paths
}

/// Replays the run's commits that change something onto `onto`.
fn rebase(
    repo: &Repository,
    project: &Path,
    branch: &str,
    base: Oid,
    tip: Oid,
    onto: &Commit<'_>,
    sig: &Signature<'_>,
) -> Result<Oid, LandError> {
    let git = |what: &str| GitError::git(what.to_owned(), project);
    let mut walk = repo.revwalk().map_err(git("walk the run"))?;
    walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)
        .and_then(|()| walk.push(tip))
        .and_then(|()| walk.hide(base))
        .map_err(git("walk the run"))?;
    let mut at = onto.clone();
    for id in walk {
        let id = id.map_err(git("walk the run"))?;
        let c = repo.find_commit(id).map_err(git("read a commit"))?;
        if c.parent_count() != 1 {
            return Err(LandError::MergeInRun {
                commit: id.to_string(),
            });
        }
        let parent = c.parent(0).map_err(git("read a commit"))?;
        let (before, after) = (
            without_records(repo, project, &parent)?,
            without_records(repo, project, &c)?,
        );
        if before.id() == after.id() {
            // A checkpoint that committed no artifact: nothing to replay.
            continue;
        }
        let at_tree = at.tree().map_err(git("read a commit's tree"))?;
        let mut index = repo
            .merge_trees(&before, &at_tree, &after, None)
            .map_err(git("replay the run's commits"))?;
        if index.has_conflicts() {
            return Err(LandError::Conflicts {
                branch: branch.to_owned(),
                paths: conflict_paths(&index),
            });
        }
        let tree = index
            .write_tree_to(repo)
            .map_err(git("replay the run's commits"))?;
        let tree = repo
            .find_tree(tree)
            .map_err(git("replay the run's commits"))?;
        let message = String::from_utf8_lossy(c.message_raw_bytes()).into_owned();
        let new = repo
            .commit(None, &c.author(), sig, &message, &tree, &[&at])
            .map_err(git("replay the run's commits"))?;
        at = repo
            .find_commit(new)
            .map_err(git("replay the run's commits"))?;
    }
    Ok(at.id())
}

/// The user's identity from the repository's configuration, else the
/// orchestrator's.
fn signature(repo: &Repository) -> Result<Signature<'static>, GitError> {
    repo.signature()
        .or_else(|_| Signature::now(COMMITTER_NAME, COMMITTER_EMAIL))
        .map_err(|e| GitError::git("make a signature", repo.path())(e))
}

/// The checkout that has `refname` checked out, if any.
fn checkout_of(project: &Path, refname: &str) -> Result<Option<PathBuf>, GitError> {
    let text = output(project, &["worktree", "list", "--porcelain", "-z"])?;
    let mut path = None;
    for field in text.split('\0') {
        if let Some(p) = field.strip_prefix("worktree ") {
            path = Some(PathBuf::from(p));
        } else if field.strip_prefix("branch ") == Some(refname) {
            return Ok(path);
        }
    }
    Ok(None)
}

/// The tracked files with changes in the checkout at `path`.
fn dirty(path: &Path) -> Result<Vec<String>, GitError> {
    let text = output(path, &["status", "--porcelain", "--untracked-files=no"])?;
    Ok(text
        .lines()
        .filter_map(|l| l.get(3..))
        .map(str::to_owned)
        .collect())
}

/// What hardened git prints for `args` in `dir`; its stderr in the error.
fn output(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    let failed = |detail: String| GitError::Command {
        command: format!("git {}", args.join(" ")),
        project: dir.to_owned(),
        detail,
    };
    let out = show::git_in(dir)
        .args(args)
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
