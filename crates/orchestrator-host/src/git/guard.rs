//! A run's worktree `.git` as the agent made it, and git that runs nothing a
//! step could plant.
//!
//! The step can write its worktree, so it can replace the worktree's `.git`
//! file (a link to the project's repository) with a repository of its own,
//! whose config names programs git runs (`core.fsmonitor`, hooks, filters).
//! Whoever ran git there next would run them: the agent, or a user looking
//! at the run's work. So before and after every step the agent proves that
//! `.git` is the plain file git wrote, pointing at the worktree's entry in
//! the project's repository (found from the repository's side, which the
//! step cannot write), and puts it back when it is not.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::GitError;

/// Options that keep a git the agent runs from running programs named by
/// configuration: hooks and the file system monitor.
const NO_PROGRAMS: &[&str] = &[
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
];

/// `git` with [`NO_PROGRAMS`] and without the variables that would point it
/// at another repository.
pub fn git_command() -> Command {
    let mut cmd = Command::new("git");
    cmd.args(NO_PROGRAMS);
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_COMMON_DIR",
        "GIT_CONFIG",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// What [`guard`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guarded {
    /// `.git` was as the agent made it.
    Intact,
    /// Something else stood there (described); the agent's `.git` is back.
    Restored(String),
}

/// Proves that `worktree/.git` is the file linking it to its entry in
/// `project`'s repository, and puts that file back when it is not; see the
/// module documentation. A worktree the repository has no entry for is an
/// error.
pub fn guard(project: &Path, worktree: &Path) -> Result<Guarded, GitError> {
    let admin = admin_dir(project, worktree)?;
    let want = format!("gitdir: {}\n", admin.display());
    let dot_git = worktree.join(".git");
    let found = match fs::symlink_metadata(&dot_git) {
        Ok(m) if m.file_type().is_file() => match fs::read(&dot_git) {
            Ok(bytes) if bytes == want.as_bytes() => return Ok(Guarded::Intact),
            Ok(bytes) => format!(
                "a file pointing elsewhere ({:?})",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
            Err(e) => format!("an unreadable file ({e})"),
        },
        Ok(m) if m.file_type().is_symlink() => format!(
            "a symlink to {}",
            fs::read_link(&dot_git).unwrap_or_default().display()
        ),
        Ok(m) if m.is_dir() => "a repository of the step's own".to_owned(),
        Ok(_) => "a special file".to_owned(),
        Err(e) if e.kind() == ErrorKind::NotFound => "nothing".to_owned(),
        Err(e) => return Err(GitError::io("inspect", &dot_git)(e)),
    };
    match fs::symlink_metadata(&dot_git) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&dot_git),
        Ok(_) => fs::remove_file(&dot_git),
        Err(_) => Ok(()),
    }
    .map_err(GitError::io("remove what replaced", &dot_git))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&dot_git)
        .map_err(GitError::io("put back", &dot_git))?;
    f.write_all(want.as_bytes())
        .map_err(GitError::io("write", &dot_git))?;
    tracing::warn!(worktree = %worktree.display(), found = %found, "the worktree's .git was replaced; put back the run's own");
    Ok(Guarded::Restored(found))
}

/// The worktree's entry in the repository (`.git/worktrees/<name>`): the one
/// whose `gitdir` file names `worktree/.git`.
pub(super) fn admin_dir(project: &Path, worktree: &Path) -> Result<PathBuf, GitError> {
    let want = worktree.join(".git");
    // The common case without opening the repository: `.git` is a
    // directory, and git named the entry after the worktree's directory.
    let dot_git = project.join(".git");
    let entries = if dot_git.is_dir() {
        dot_git.join("worktrees")
    } else {
        super::open(project)?.commondir().join("worktrees")
    };
    let names = |entry: &Path| {
        fs::read_to_string(entry.join("gitdir"))
            .is_ok_and(|text| Path::new(text.trim_end_matches('\n')) == want)
    };
    if let Some(guess) = worktree.file_name().map(|n| entries.join(n)) {
        if names(&guess) {
            return Ok(guess);
        }
    }
    // A taken name gets a number: look at every entry.
    let list = fs::read_dir(&entries).map_err(GitError::io("list", &entries))?;
    for entry in list.flatten() {
        if names(&entry.path()) {
            return Ok(entry.path());
        }
    }
    Err(GitError::PathInTheWay {
        path: worktree.to_owned(),
        reason: "is not a worktree the project's repository knows; expected one made by the agent",
    })
}
