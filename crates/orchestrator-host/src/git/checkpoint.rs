//! Checkpoint commits: the step's own commits and its artifacts onto the
//! run branch, with the step's record in the commit's header, in process,
//! without touching the worktree's files.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use git2::build::TreeUpdateBuilder;
use git2::{ErrorCode, FileMode, ObjectType, Oid, Repository};
use orchestrator_core::RunId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::collect::{collect, Found};
use super::import::{self, Taken};
use super::{
    run_ref, GitError, Pooled, RunWorktree, StepGit, COMMITTER_EMAIL, COMMITTER_NAME, RECORD_HEADER,
};

/// What one checkpoint commits.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointRequest<'a> {
    /// The run whose branch gets the commit.
    pub run_id: &'a RunId,
    /// Globs relative to the worktree root, e.g. `dist/**`, `report.md`,
    /// `**/*.txt`. `*` does not cross `/`; `**` as a whole component matches
    /// any number of directories; a glob matching a directory takes every
    /// file under it.
    pub artifacts: &'a [String],
    /// The step's record (its manifest), kept in the commit's
    /// [`RECORD_HEADER`] header; empty for none.
    pub record: &'a [u8],
    /// The step's own git directory, whose commits on the run branch come
    /// before the checkpoint's; None when the step had none.
    pub step_git: Option<&'a StepGit>,
    /// The commit message (its first line a summary; the caller adds trailers
    /// such as `Orch-Run: <id>`).
    pub message: &'a str,
}

/// One committed artifact file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// Path in the worktree and in the commit's tree, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

/// A checkpoint made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCommit {
    /// Full sha of the commit, now the tip of the run branch.
    pub commit: String,
    /// The committed artifacts, sorted by path.
    pub artifacts: Vec<ArtifactRecord>,
}

/// Files bigger than this are streamed into the object database instead of
/// being read into memory whole.
const IN_MEMORY_MAX: u64 = 8 << 20;

/// Tries at the compare-and-swap of the branch before giving up.
const MAX_ATTEMPTS: u32 = 200;

/// A writer holds a ref's lock file for microseconds. One older than this
/// was left by a writer that died holding it (an agent SIGKILLed mid-
/// checkpoint): nobody would ever remove it, and every later checkpoint of
/// the run would fail.
const STALE_LOCK: Duration = Duration::from_secs(2);

/// Takes in the step's own commits, then commits the files matched by
/// `req.artifacts` (read from `worktree`) on the run branch with the
/// step's record, and returns the commit and the artifacts.
///
/// The parent is the step's last commit (see `import`), or the branch tip
/// when it made none; the new tree is the parent's with the artifacts
/// added or replaced. The branch moves by compare-and-swap, and a
/// checkpoint that lost the race to another stage of the same run is redone
/// on the new tip, the step's commits replayed onto it. Only regular files are committed (mode 100755 when any
/// executable bit is set, else 100644); symlinks and anything under `.git` are
/// skipped, as are names that are not UTF-8, except that a symlink the globs
/// reach that resolves outside the worktree is an error
/// ([`GitError::SymlinkEscapes`]). A glob that is absolute or has a
/// `..` component is an error; a glob that matches nothing is not.
pub fn checkpoint(
    project: &Path,
    worktree: &RunWorktree,
    req: &CheckpointRequest<'_>,
) -> Result<CheckpointCommit, GitError> {
    let full_ref = run_ref(req.run_id)?;
    if full_ref.strip_prefix("refs/heads/") != Some(worktree.branch.as_str()) {
        return Err(GitError::WrongRun {
            path: worktree.path.clone(),
            branch: worktree.branch.clone(),
            run_id: req.run_id.clone(),
        });
    }
    let mut files = BTreeMap::new();
    for glob in req.artifacts {
        collect(&worktree.path, glob, &mut files)?;
    }
    let repo = Pooled::take(project)?;
    let made = match req.step_git {
        Some(sg) => import::take_in(&repo, project, sg),
        None => Ok(None),
    }
    .and_then(|taken| commit(&repo, project, &full_ref, &files, taken.as_ref(), req));
    if made.is_err() {
        repo.discard();
    }
    made
}

/// Writes the blobs, then commits on `full_ref` until the compare-and-swap
/// takes.
fn commit(
    repo: &Repository,
    project: &Path,
    full_ref: &str,
    files: &BTreeMap<String, Found>,
    taken: Option<&Taken>,
    req: &CheckpointRequest<'_>,
) -> Result<CheckpointCommit, GitError> {
    let mut updates = TreeUpdateBuilder::new();
    let mut artifacts = Vec::with_capacity(files.len());
    for (path, found) in files {
        let (id, size, sha256) = write_blob(repo, project, &found.abs)?;
        let mode = if found.executable {
            FileMode::BlobExecutable
        } else {
            FileMode::Blob
        };
        updates.upsert(path.as_str(), id, mode);
        artifacts.push(ArtifactRecord {
            path: path.clone(),
            size,
            sha256,
        });
    }
    let sig = signature();
    let odb = repo
        .odb()
        .map_err(GitError::git("open the object database", project))?;
    let summary = req.message.lines().next().unwrap_or("");
    let reflog = format!("checkpoint: {summary}");
    let branch = &full_ref["refs/heads/".len()..];
    let mut pause = Duration::from_micros(50);
    let lock = repo.commondir().join(format!("{full_ref}.lock"));
    // Waiting on a lock does not use up the tries, so that a lock left by a
    // dead writer has the time to become stale and be broken.
    let lock_deadline = std::time::Instant::now() + 2 * STALE_LOCK;
    let mut attempt = 0;
    while attempt < MAX_ATTEMPTS {
        let tip = match repo.refname_to_id(full_ref) {
            Ok(tip) => tip,
            Err(e) if e.code() == ErrorCode::NotFound => {
                return Err(GitError::MissingBranch {
                    project: project.to_path_buf(),
                    branch: branch.to_owned(),
                })
            }
            Err(e) => return Err(GitError::git(format!("read branch '{branch}'"), project)(e)),
        };
        let parent_id = match taken {
            None => tip,
            // What the step committed is on the branch already.
            Some(t) if tip == t.head || repo.graph_descendant_of(tip, t.head).unwrap_or(false) => {
                tip
            }
            // The step's commits stand on the tip: they go on as they are.
            Some(t) if repo.graph_descendant_of(t.head, tip).unwrap_or(false) => t.head,
            Some(t) => import::replay(repo, project, t, tip)?,
        };
        let parent = repo.find_commit(parent_id).map_err(GitError::git(
            format!("read the tip of '{branch}'"),
            project,
        ))?;
        let base = parent.tree().map_err(GitError::git(
            format!("read the tree of '{branch}'"),
            project,
        ))?;
        let tree_id = updates
            .create_updated(repo, &base)
            .map_err(GitError::git("build the checkpoint tree", project))?;
        let id = odb
            .write(
                ObjectType::Commit,
                commit_object(tree_id, parent_id, &sig, req.record, req.message).as_bytes(),
            )
            .map_err(GitError::git("write the checkpoint commit", project))?;
        match repo.reference_matching(full_ref, id, true, tip, &reflog) {
            Ok(_) => {
                return Ok(CheckpointCommit {
                    commit: id.to_string(),
                    artifacts,
                })
            }
            // Another stage moved the tip: redo the tree on the new one.
            Err(e) if e.code() == ErrorCode::Modified => attempt += 1,
            // Another writer holds the ref's lock file right now.
            Err(e) if e.code() == ErrorCode::Locked => {
                if break_stale_lock(repo.commondir(), &lock) {
                    continue;
                }
                if std::time::Instant::now() >= lock_deadline {
                    attempt += 1;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(GitError::git(format!("update branch '{branch}'"), project)(
                    e,
                ))
            }
        }
    }
    Err(GitError::Contended {
        project: project.to_path_buf(),
        branch: branch.to_owned(),
        attempts: MAX_ATTEMPTS,
    })
}

/// Removes `lock` when it is older than [`STALE_LOCK`]; whether it did.
fn break_stale_lock(git_dir: &Path, lock: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(lock) else {
        return false;
    };
    let stale = meta
        .modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|age| age >= STALE_LOCK);
    if !stale {
        return false;
    }
    // Moved aside (out of `refs/`, where it would read as a ref) before it
    // is removed: another agent may have broken it and a live writer taken
    // the lock afresh since the look above, and that lock is put back.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let aside = git_dir.join(format!("orch-stale-lock-{}-{nanos}", std::process::id()));
    if fs::rename(lock, &aside).is_err() {
        return false;
    }
    let same = fs::metadata(&aside).is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
    if !same {
        let _ = fs::hard_link(&aside, lock);
    }
    let _ = fs::remove_file(&aside);
    if same {
        tracing::warn!(lock = %lock.display(), "removed a stale lock left by a writer that died");
    }
    same
}

/// The author and committer line of a checkpoint: the orchestrator, now, in UTC.
fn signature() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{COMMITTER_NAME} <{COMMITTER_EMAIL}> {secs} +0000")
}

/// The raw commit object, written straight into the object database:
/// `Repository::commit` would first read back the tree just written and the
/// parent, to check that they exist, which they do. The record goes in a
/// header of its own after the committer, as git's own extra headers do; a
/// line break in it continues on a line that starts with a space.
fn commit_object(tree: Oid, parent: Oid, signature: &str, record: &[u8], message: &str) -> String {
    let mut object =
        format!("tree {tree}\nparent {parent}\nauthor {signature}\ncommitter {signature}\n");
    if !record.is_empty() {
        let record = String::from_utf8_lossy(record);
        object.push_str(RECORD_HEADER);
        object.push(' ');
        object.push_str(&record.trim_end_matches('\n').replace('\n', "\n "));
        object.push('\n');
    }
    object.push('\n');
    object.push_str(message);
    object
}

/// Stores the file at `abs` as a blob; returns its id, size and SHA-256.
fn write_blob(
    repo: &Repository,
    project: &Path,
    abs: &Path,
) -> Result<(Oid, u64, String), GitError> {
    // O_NOFOLLOW: the walk saw a regular file; never follow a symlink that
    // replaced it since.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(abs)
        .map_err(GitError::io("open the artifact", abs))?;
    let len = file
        .metadata()
        .map_err(GitError::io("read the artifact", abs))?
        .len();
    let mut hasher = Sha256::new();
    let (id, size) = if len <= IN_MEMORY_MAX {
        let mut content = Vec::with_capacity(len as usize);
        file.read_to_end(&mut content)
            .map_err(GitError::io("read the artifact", abs))?;
        hasher.update(&content);
        let id = repo
            .blob(&content)
            .map_err(GitError::git(format!("store {}", abs.display()), project))?;
        (id, content.len() as u64)
    } else {
        stream_blob(repo, project, abs, &mut file, &mut hasher)?
    };
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((id, size, sha256))
}

/// Stores a big file as a blob in chunks, hashing as it goes.
fn stream_blob(
    repo: &Repository,
    project: &Path,
    abs: &Path,
    file: &mut File,
    hasher: &mut Sha256,
) -> Result<(Oid, u64), GitError> {
    use std::io::Write;
    let git = |e| GitError::git(format!("store {}", abs.display()), project)(e);
    let mut writer = repo.blob_writer(None).map_err(git)?;
    let mut buf = vec![0; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(GitError::io("read the artifact", abs)(e)),
        };
        hasher.update(&buf[..n]);
        writer
            .write_all(&buf[..n])
            .map_err(GitError::io("store the artifact", abs))?;
        size += n as u64;
    }
    let id = writer.commit().map_err(git)?;
    Ok((id, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lock_older_than_a_live_writer_would_hold_it_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("refs/heads/orch/run/r1.lock");
        fs::create_dir_all(lock.parent().unwrap()).unwrap();
        let f = File::create(&lock).unwrap();
        assert!(!break_stale_lock(dir.path(), &lock), "a fresh lock is held");
        assert!(lock.exists());
        f.set_modified(SystemTime::now() - STALE_LOCK * 2).unwrap();
        assert!(break_stale_lock(dir.path(), &lock));
        assert!(!lock.exists());
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "nothing but refs/ is left: {left:?}");
    }
}
