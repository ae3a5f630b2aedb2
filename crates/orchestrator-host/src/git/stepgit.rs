//! A step's own git directory: how `git status`, `git diff`, `git add` and
//! `git commit` work in the worktree inside a sandbox while the project's
//! repository stays unwritable.
//!
//! Why a directory of its own: the worktree's entry in the project's
//! repository (`.git/worktrees/<run>`) shares the project's objects and
//! refs, which a sandboxed step must not write. So before every step the
//! agent makes `<project>/.orchestrator/git/<run>/<stage>` afresh: a small
//! repository whose `HEAD` is the branch `orch/run/<run>` at the run's last
//! checkpoint, whose index is that commit's tree, and whose object
//! directory is its own, with the project's objects as an alternate
//! (readable, never written). Inside the sandbox the worktree's `.git` file
//! is covered, read-only, by one that points there, so git and the libraries
//! that read `.git` themselves (GitPython, libgit2) find it; outside, the
//! worktree's `.git` still points at the project's entry, which the guard
//! keeps so.
//!
//! A step without a sandbox (`process`) has no such covering: its git uses
//! the worktree's own entry, whose `HEAD` and index the agent sets the same
//! way, and its objects go straight into the project's repository.
//!
//! What the step committed on the run's branch is taken in at the
//! checkpoint (see `import`), which proves it is what it claims before any
//! of it reaches the project's branch; nothing else of the directory (its
//! config, hooks, other refs) is ever read.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use git2::{Oid, Repository};
use orchestrator_core::RunId;

use super::{run_branch, GitError, RunWorktree, RECORDS_DIR};
use crate::confined::ConfinedDir;

/// Where the step directories of a project live, relative to it.
const STEP_GIT: &str = ".orchestrator/git";

/// The longest `HEAD` or ref file read back from a step's directory.
const MAX_REF_FILE: u64 = 4096;
/// The longest `packed-refs` read back (a step may have made many refs).
const MAX_PACKED_REFS: u64 = 16 << 20;

/// A step's git directory, made by [`prepare_step_git`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepGit {
    /// The directory git uses inside the step.
    pub dir: PathBuf,
    /// The file that covers the worktree's `.git` inside the sandbox
    /// (`gitdir: <dir>`); None for a step without a sandbox, whose git uses
    /// the worktree's own entry.
    pub gitfile: Option<PathBuf>,
    /// The commit the step started from: the run branch's tip when the
    /// directory was made.
    pub started_at: Oid,
    /// The run's branch, short name.
    pub branch: String,
}

/// Held while the worktree's own entry is set up for an unsandboxed step.
static SHARED_ENTRY: Mutex<()> = Mutex::new(());

/// Makes the git directory the step of `stage_id` uses; see the module
/// documentation. With `sandboxed` false the worktree's own entry in the
/// project's repository is set up instead.
pub fn prepare_step_git(
    project: &Path,
    worktree: &RunWorktree,
    run_id: &RunId,
    stage_id: &str,
    sandboxed: bool,
) -> Result<StepGit, GitError> {
    let branch = run_branch(run_id)?;
    let repo = super::Pooled::take(project)?;
    let tip = repo
        .refname_to_id(&format!("refs/heads/{branch}"))
        .map_err(|_| GitError::MissingBranch {
            project: project.to_owned(),
            branch: branch.clone(),
        })?;
    let tree = repo
        .find_commit(tip)
        .and_then(|c| c.tree())
        .map_err(GitError::git(
            format!("read the tip of '{branch}'"),
            project,
        ))?;
    if !sandboxed {
        // Parallel stages of a run without a sandbox share this entry: one
        // at a time writes its HEAD and index (the index's lock would
        // refuse the second writer).
        let _shared = SHARED_ENTRY.lock().unwrap_or_else(|e| e.into_inner());
        let admin = super::guard::admin_dir(project, &worktree.path)?;
        write_file(&admin.join("HEAD"), format!("{tip}\n").as_bytes())?;
        let index_path = admin.join("index");
        if !Written::unchanged(&index_path, tree.id().as_bytes()) {
            write_index(project, &index_path, &tree)?;
        }
        return Ok(StepGit {
            dir: admin,
            gitfile: None,
            started_at: tip,
            branch,
        });
    }
    let parent = project.join(STEP_GIT).join(run_id.as_str());
    fs::create_dir_all(&parent).map_err(GitError::io("create", &parent))?;
    let dir = parent.join(stage_id);
    // The directory stays from step to step (making it anew costs more than
    // the rest of a step), but a step wrote it: every name the agent writes
    // is reached without following a link and made afresh, and the objects
    // a step left (taken in at its checkpoint, or a failed step's) go.
    let at = |rel: &str, create: bool| {
        ConfinedDir::open(&parent, &Path::new(stage_id).join(rel), create)
            .map_err(|e| GitError::io("prepare", &dir.join(rel))(e.into()))
    };
    let root = at("", true)?;
    if !objects_empty(&dir) {
        let objects = dir.join("objects");
        match fs::remove_dir_all(&objects) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(GitError::io("remove the last step's objects", &objects)(e)),
        }
    }
    let (branch_dir, branch_name) = match branch.rsplit_once('/') {
        Some((d, n)) => (format!("refs/heads/{d}"), n.to_owned()),
        None => ("refs/heads".to_owned(), branch.clone()),
    };
    // A file still as the agent wrote it (its change time proves it) is
    // left alone: most steps never touch their git directory.
    let write = |d: &ConfinedDir, name: &str, bytes: &[u8]| {
        let path = d.path().join(name);
        if Written::unchanged(&path, bytes) {
            return Ok(());
        }
        let mut f = d
            .create(name)
            .map_err(|e| GitError::io("write", &path)(e.into()))?;
        f.write_all(bytes).map_err(GitError::io("write", &path))?;
        Written::record(&path, &f, bytes);
        Ok(())
    };
    write(
        &at(&branch_dir, true)?,
        &branch_name,
        format!("{tip}\n").as_bytes(),
    )?;
    at("refs/tags", true)?;
    // A packed copy of the run's ref would not win over the loose one, but
    // `git pack-refs` would fold it back: none is kept.
    let index_path = dir.join("index");
    let index_kept = Written::unchanged(&index_path, tree.id().as_bytes());
    for name in [
        "packed-refs",
        "index",
        "index.lock",
        "HEAD.lock",
        "FETCH_HEAD",
        "ORIG_HEAD",
        "MERGE_HEAD",
        "CHERRY_PICK_HEAD",
    ] {
        if (name == "index" && index_kept) || fs::symlink_metadata(dir.join(name)).is_err() {
            continue;
        }
        root.remove(name)
            .map_err(|e| GitError::io("prepare", &dir.join(name))(e.into()))?;
    }
    write(
        &root,
        "HEAD",
        format!("ref: refs/heads/{branch}\n").as_bytes(),
    )?;
    write(
        &root,
        "config",
        b"[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n",
    )?;
    let objects = repo.commondir().join("objects");
    write(
        &at("objects/info", true)?,
        "alternates",
        format!("{}\n", objects.display()).as_bytes(),
    )?;
    at("objects/pack", true)?;
    write(
        &at("info", true)?,
        "exclude",
        format!("/{RECORDS_DIR}/\n").as_bytes(),
    )?;
    if !index_kept {
        write_index(project, &index_path, &tree)?;
    }
    let gitfile = parent.join(format!("{stage_id}.git"));
    let want = format!("gitdir: {}\n", dir.display());
    if fs::read(&gitfile).ok().as_deref() != Some(want.as_bytes()) {
        write_file(&gitfile, want.as_bytes())?;
    }
    Ok(StepGit {
        dir,
        gitfile: Some(gitfile),
        started_at: tip,
        branch,
    })
}

/// What the agent last wrote in the step directories of this process: by
/// path, the file's identity and change time, and what it holds (for the
/// index, the tree it was made from). A file whose identity and change time
/// are the same was not written since: renaming, writing or replacing it
/// changes its change time, which no step can set.
struct Written;

type Stamp = (u64, u64, i64, i64, u64);
type Stamps = std::collections::HashMap<PathBuf, (Stamp, Vec<u8>)>;

static WRITTEN: std::sync::LazyLock<std::sync::Mutex<Stamps>> =
    std::sync::LazyLock::new(Default::default);

impl Written {
    fn stamp(meta: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        (
            meta.dev(),
            meta.ino(),
            meta.ctime(),
            meta.ctime_nsec(),
            meta.size(),
        )
    }

    fn unchanged(path: &Path, content: &[u8]) -> bool {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return false;
        };
        if !meta.is_file() {
            return false;
        }
        let map = WRITTEN.lock().unwrap_or_else(|e| e.into_inner());
        map.get(path)
            .is_some_and(|(stamp, held)| *stamp == Self::stamp(&meta) && held == content)
    }

    fn record(path: &Path, file: &fs::File, content: &[u8]) {
        if let Ok(meta) = file.metadata() {
            let mut map = WRITTEN.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(path.to_owned(), (Self::stamp(&meta), content.to_vec()));
        }
    }
}

/// Whether `dir/objects` holds nothing a step wrote: only `info` and an
/// empty `pack`, as the agent makes it (anything else, a link included,
/// says no).
fn objects_empty(dir: &Path) -> bool {
    let objects = dir.join("objects");
    let Ok(entries) = fs::read_dir(&objects) else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let plain_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        match entry.file_name().to_str() {
            Some("info") if plain_dir => {}
            Some("pack") if plain_dir => {
                if fs::read_dir(entry.path()).map_or(true, |mut d| d.next().is_some()) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    // A link at `objects` itself reads as the directory it leads to.
    fs::symlink_metadata(&objects).is_ok_and(|m| m.is_dir())
}

/// Writes the index at `path` afresh with `tree`. Entries carry no file times, so
/// the step's first `git status` hashes the files once: the agent cannot
/// know which of them a step before changed.
fn write_index(project: &Path, path: &Path, tree: &git2::Tree<'_>) -> Result<(), GitError> {
    let mut index =
        git2::Index::open(path).map_err(GitError::git("open the step's index", project))?;
    index
        .read_tree(tree)
        .map_err(GitError::git("fill the step's index", project))?;
    index
        .write()
        .map_err(GitError::git("write the step's index", project))?;
    // Remembered by the tree it holds, so the next step keeps it unless a
    // step changed it or the tree moved.
    if let Ok(f) = fs::File::open(path) {
        Written::record(path, &f, tree.id().as_bytes());
    }
    Ok(())
}

/// Writes a file the agent owns afresh (the step cannot reach the
/// directory yet, or it is the agent's own).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), GitError> {
    // A name of this write's own: two writers of one file must not rename
    // each other's temporary away.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("orch-tmp-{}-{n}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(GitError::io("create", &tmp))?;
    f.write_all(bytes).map_err(GitError::io("write", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(GitError::io("replace", path))
}

/// The commit the run's branch names in the step's directory after the
/// step, or None when the step removed it. Read without following a link
/// and without trusting anything but the hexadecimal id; a name that is
/// not a commit id is the step's error.
pub(super) fn step_head(repo: &Repository, sg: &StepGit) -> Result<Option<Oid>, GitError> {
    if sg.gitfile.is_none() {
        // The worktree's own entry: its HEAD, which git moves on commit.
        return match read_ref_file(&sg.dir, "HEAD", MAX_REF_FILE)? {
            Some(text) if text.starts_with("ref: ") => {
                let name = text["ref: ".len()..].trim();
                match repo.refname_to_id(name) {
                    Ok(id) => Ok(Some(id)),
                    Err(_) => Ok(None),
                }
            }
            Some(text) => parse_id(&text, &sg.dir.join("HEAD")).map(Some),
            None => Ok(None),
        };
    }
    let rel = format!("refs/heads/{}", sg.branch);
    if let Some(text) = read_ref_file(&sg.dir, &rel, MAX_REF_FILE)? {
        return parse_id(&text, &sg.dir.join(&rel)).map(Some);
    }
    // `git pack-refs` (or `git gc`) moves loose refs into `packed-refs`.
    let Some(packed) = read_ref_file(&sg.dir, "packed-refs", MAX_PACKED_REFS)? else {
        return Ok(None);
    };
    for line in packed.lines() {
        if let Some((id, name)) = line.split_once(' ') {
            if name == rel {
                return parse_id(id, &sg.dir.join("packed-refs")).map(Some);
            }
        }
    }
    Ok(None)
}

fn parse_id(text: &str, path: &Path) -> Result<Oid, GitError> {
    let text = text.trim();
    if text.len() != 40 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(GitError::StepCommits {
            reason: format!(
                "{} holds {:?}, not a commit id",
                path.display(),
                &text[..text.len().min(80)]
            ),
        });
    }
    Oid::from_str(text).map_err(|_| GitError::StepCommits {
        reason: format!("{} does not hold a commit id", path.display()),
    })
}

/// The text of `dir/rel`, reached without following a link; None when it
/// does not exist.
fn read_ref_file(dir: &Path, rel: &str, max: u64) -> Result<Option<String>, GitError> {
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (Path::new(p), n),
        None => (Path::new(""), rel),
    };
    let confined = match ConfinedDir::open(dir, parent, false) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => {
            return Err(GitError::StepCommits {
                reason: format!("{}: {e}", dir.join(parent).display()),
            })
        }
    };
    let file = match confined.open_regular(name) {
        Ok(f) => f,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => {
            return Err(GitError::StepCommits {
                reason: format!("{}: {e}", dir.join(rel).display()),
            })
        }
    };
    let mut text = String::new();
    file.take(max)
        .read_to_string(&mut text)
        .map_err(GitError::io("read", &dir.join(rel)))?;
    Ok(Some(text))
}
