//! Taking in what a step committed in its own git directory (see
//! `stepgit`), at its checkpoint.
//!
//! The step wrote that directory, so nothing in it is trusted: only the id
//! its run branch names is read (never followed through a link), its object
//! directory is proved to hold nothing but plain files and directories
//! before libgit2 reads a byte of it, the files that would point libgit2
//! elsewhere (`objects/info`: alternates, commit graphs) are removed, and
//! every object copied is verified against its id on the way in. Only what
//! the step's commits reach is copied: trees and blobs, never a submodule
//! link, never a path named `.git`; refs, config and hooks of the directory
//! are never looked at. The commits must descend from the checkpoint the
//! step started from: a step adds to the run's history, it does not
//! rewrite it.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use git2::{FileMode, ObjectType, Odb, Oid, Repository, Sort};

use super::stepgit::{step_head, StepGit};
use super::{GitError, RECORD_HEADER};

/// The most commits one step may add.
const MAX_COMMITS: usize = 10_000;
/// The most bytes a step's object directory may hold when taken in.
const MAX_OBJECT_BYTES: u64 = 2 << 30;
/// The most files it may hold.
const MAX_OBJECT_FILES: usize = 200_000;

/// The commits a step added, proved and copied into the project.
#[derive(Debug, Clone)]
pub(super) struct Taken {
    /// The step's last commit on the run branch.
    pub head: Oid,
    /// The commits from `started_at` (excluded) to `head`, oldest first,
    /// without those the branch held when they were taken in.
    pub commits: Vec<Oid>,
}

fn refused(reason: impl Into<String>) -> GitError {
    GitError::StepCommits {
        reason: reason.into(),
    }
}

/// Proves and copies into `repo` the commits the step of `sg` added on the
/// run's branch; None when it added none.
pub(super) fn take_in(
    repo: &Repository,
    project: &Path,
    sg: &StepGit,
) -> Result<Option<Taken>, GitError> {
    let Some(head) = step_head(repo, sg)? else {
        return Ok(None);
    };
    if head == sg.started_at {
        return Ok(None);
    }
    // The branch's tip now. Without a sandbox, parallel stages share the
    // worktree's entry, so its HEAD may name a checkpoint another stage made
    // since: what the branch holds already is not the step's to add.
    let tip = repo
        .refname_to_id(&format!("refs/heads/{}", sg.branch))
        .map_err(GitError::git("read the run's branch", project))?;
    let known = |id: Oid| id == tip || repo.graph_descendant_of(tip, id).unwrap_or(false);
    if repo.odb().is_ok_and(|o| o.exists(head)) && known(head) {
        return Ok(None);
    }
    let odb = repo
        .odb()
        .map_err(GitError::git("open the object database", project))?;
    let source = match &sg.gitfile {
        // The worktree's own entry (no sandbox): the objects are the
        // project's already.
        None => None,
        Some(_) => Some(step_objects(&sg.dir, project)?),
    };
    let mut copy = Copier {
        repo,
        project,
        odb: &odb,
        source: source.as_ref(),
        seen: HashSet::new(),
    };
    if copy.source.is_some() {
        // Copy first: until the objects are in the project, libgit2 cannot
        // tell how the step's commits relate to the run's.
        let mut stack = vec![head];
        let mut count = 0usize;
        while let Some(id) = stack.pop() {
            if !copy.seen.insert(id) || copy.has(id) {
                continue;
            }
            count += 1;
            if count > MAX_COMMITS {
                return Err(too_many());
            }
            copy.object(id, ObjectType::Commit)?;
            let commit = repo
                .find_commit(id)
                .map_err(|e| refused(format!("commit {id} cannot be read: {e}")))?;
            no_record(&commit)?;
            copy.tree(commit.tree_id())?;
            stack.extend(commit.parent_ids());
        }
    }
    let descends = repo
        .graph_descendant_of(head, sg.started_at)
        .map_err(GitError::git("compare the step's commits", project))?;
    if !descends {
        return Err(refused(format!(
            "the run branch in the step's git names {head}, which does not descend from the checkpoint the step started from ({}); a step may add commits to the run's history, not rewrite it",
            sg.started_at
        )));
    }
    let mut walk = repo
        .revwalk()
        .map_err(GitError::git("walk the step's commits", project))?;
    walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)
        .and_then(|()| walk.push(head))
        .and_then(|()| walk.hide(sg.started_at))
        .and_then(|()| walk.hide(tip))
        .map_err(GitError::git("walk the step's commits", project))?;
    let mut commits = Vec::new();
    for id in walk {
        let id = id.map_err(GitError::git("walk the step's commits", project))?;
        if commits.len() == MAX_COMMITS {
            return Err(too_many());
        }
        if copy.source.is_none() {
            // Without a sandbox nothing was copied, and so nothing proved.
            let commit = repo
                .find_commit(id)
                .map_err(|e| refused(format!("commit {id} cannot be read: {e}")))?;
            no_record(&commit)?;
            copy.tree(commit.tree_id())?;
        }
        commits.push(id);
    }
    Ok(Some(Taken { head, commits }))
}

/// Refuses a step's commit that claims to be a checkpoint: what the
/// orchestrator shows as one step's change starts after the last commit
/// holding a record.
fn no_record(commit: &git2::Commit<'_>) -> Result<(), GitError> {
    if commit.header_field_bytes(RECORD_HEADER).is_ok() {
        return Err(refused(format!(
            "commit {} carries the '{RECORD_HEADER}' header, which only checkpoints hold",
            commit.id()
        )));
    }
    Ok(())
}

fn too_many() -> GitError {
    refused(format!("the step added more than {MAX_COMMITS} commits"))
}

/// Proves `dir/objects` holds only plain files and directories, within the
/// caps, removes `objects/info`, and opens it as an object database.
fn step_objects(dir: &Path, project: &Path) -> Result<Odb<'static>, GitError> {
    let objects = dir.join("objects");
    let info = objects.join("info");
    match fs::symlink_metadata(&info) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&info),
        Ok(_) => fs::remove_file(&info),
        Err(_) => Ok(()),
    }
    .map_err(GitError::io("remove", &info))?;
    let mut files = 0usize;
    let mut bytes = 0u64;
    let mut dirs = vec![objects.clone()];
    while let Some(d) = dirs.pop() {
        let meta = fs::symlink_metadata(&d).map_err(GitError::io("inspect", &d))?;
        if !meta.is_dir() {
            return Err(refused(format!("{} is not a plain directory", d.display())));
        }
        for entry in fs::read_dir(&d).map_err(GitError::io("list", &d))? {
            let entry = entry.map_err(GitError::io("list", &d))?;
            // `DirEntry::metadata` does not follow links.
            let meta = entry
                .metadata()
                .map_err(GitError::io("inspect", &entry.path()))?;
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if meta.is_file() {
                files += 1;
                bytes += meta.len();
            } else {
                return Err(refused(format!(
                    "{} is a link or a special file; a git object directory holds plain files",
                    entry.path().display()
                )));
            }
        }
        if files > MAX_OBJECT_FILES || bytes > MAX_OBJECT_BYTES {
            return Err(refused(format!(
                "the step's objects exceed {MAX_OBJECT_FILES} files or {} MiB",
                MAX_OBJECT_BYTES >> 20
            )));
        }
    }
    let odb = Odb::new().map_err(GitError::git("open the step's objects", project))?;
    odb.add_disk_alternate(&objects.to_string_lossy())
        .map_err(GitError::git("open the step's objects", project))?;
    Ok(odb)
}

/// Copies objects from the step's database into the project's.
struct Copier<'a> {
    repo: &'a Repository,
    project: &'a Path,
    odb: &'a Odb<'a>,
    /// The step's objects; None when they are the project's already.
    source: Option<&'a Odb<'static>>,
    seen: HashSet<Oid>,
}

impl Copier<'_> {
    fn has(&self, id: Oid) -> bool {
        self.odb.exists(id)
    }

    /// Copies object `id`, which must be of kind `kind`, unless the project
    /// has it.
    fn object(&self, id: Oid, kind: ObjectType) -> Result<(), GitError> {
        let Some(source) = self.source.filter(|_| !self.has(id)) else {
            let found = self
                .odb
                .read_header(id)
                .map_err(|e| refused(format!("object {id} is missing: {e}")))?
                .1;
            return expect_kind(id, found, kind);
        };
        // libgit2 checks the content against the id as it reads.
        let object = source
            .read(id)
            .map_err(|e| refused(format!("object {id} cannot be read: {e}")))?;
        expect_kind(id, object.kind(), kind)?;
        let written = self
            .odb
            .write(kind, object.data())
            .map_err(GitError::git("store the step's objects", self.project))?;
        if written != id {
            return Err(refused(format!("object {id} does not match its content")));
        }
        Ok(())
    }

    /// Copies tree `id` and what it reaches, proving every entry.
    fn tree(&mut self, id: Oid) -> Result<(), GitError> {
        if !self.seen.insert(id) || (self.source.is_some() && self.has(id)) {
            return Ok(());
        }
        self.object(id, ObjectType::Tree)?;
        let tree = self
            .repo
            .find_tree(id)
            .map_err(|e| refused(format!("tree {id} cannot be read: {e}")))?;
        let mut subtrees = Vec::new();
        for entry in tree.iter() {
            let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
            if name.is_empty()
                || name == "."
                || name == ".."
                || name.contains('/')
                || name.eq_ignore_ascii_case(".git")
            {
                return Err(refused(format!(
                    "tree {id} has an entry named {name:?}, which no checkout may hold"
                )));
            }
            let mode = entry.filemode();
            if mode == i32::from(FileMode::Tree) {
                subtrees.push(entry.id());
            } else if mode == i32::from(FileMode::Blob)
                || mode == i32::from(FileMode::BlobExecutable)
                || mode == i32::from(FileMode::Link)
            {
                if self.seen.insert(entry.id()) {
                    self.object(entry.id(), ObjectType::Blob)?;
                }
            } else {
                return Err(refused(format!(
                    "tree {id} has {name:?} with mode {mode:o}; a step's commits may hold files, links and directories, not submodules"
                )));
            }
        }
        for sub in subtrees {
            self.tree(sub)?;
        }
        Ok(())
    }
}

fn expect_kind(id: Oid, found: ObjectType, want: ObjectType) -> Result<(), GitError> {
    if found == want {
        Ok(())
    } else {
        Err(refused(format!(
            "object {id} is a {found}, expected a {want}"
        )))
    }
}

/// Replays the taken commits onto `onto` (the run branch moved since the
/// step started: a parallel stage checkpointed), keeping their authors and
/// messages; the last replayed commit.
pub(super) fn replay(
    repo: &Repository,
    project: &Path,
    taken: &Taken,
    onto: Oid,
) -> Result<Oid, GitError> {
    let git = |what: &str| GitError::git(format!("{what} the step's commits"), project);
    let mut base = repo.find_commit(onto).map_err(git("replay"))?;
    for id in &taken.commits {
        let commit = repo.find_commit(*id).map_err(git("read"))?;
        if commit.parent_count() != 1 {
            return Err(refused(format!(
                "merge commit {id} cannot be replayed onto the run branch, which another stage of the run moved while the step ran"
            )));
        }
        let mut index = repo
            .cherrypick_commit(&commit, &base, 0, None)
            .map_err(git("replay"))?;
        if index.has_conflicts() {
            return Err(refused(format!(
                "commit {id} conflicts with what another stage of the run checkpointed while the step ran ({})",
                super::land::conflict_paths(&index).join(", ")
            )));
        }
        let tree_id = index.write_tree_to(repo).map_err(git("replay"))?;
        let tree = repo.find_tree(tree_id).map_err(git("replay"))?;
        let message = String::from_utf8_lossy(commit.message_raw_bytes()).into_owned();
        let new = repo
            .commit(
                None,
                &commit.author(),
                &commit.committer(),
                &message,
                &tree,
                &[&base],
            )
            .map_err(git("replay"))?;
        base = repo.find_commit(new).map_err(git("replay"))?;
    }
    Ok(base.id())
}
