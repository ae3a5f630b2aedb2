//! Real git repositories in temporary directories, made with the `git` CLI,
//! and what the run worktree and checkpoint tests share.
//! The agent's tests use these too (`#[path]` from its `tests/common`).
// Each test binary uses a part of this.
#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

pub mod checkpoints;

/// Runs git in `dir`, asserts success, returns stdout trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// An empty repository on branch `main` with a local identity.
pub fn empty_repo() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "--quiet", "--initial-branch", "main"]);
    git(dir.path(), &["config", "user.name", "Test User"]);
    git(dir.path(), &["config", "user.email", "test@example.com"]);
    git(dir.path(), &["config", "commit.gpgsign", "false"]);
    dir
}

/// A repository with one commit (README.md) on `main`; returns it and the commit.
pub fn repo() -> (TempDir, String) {
    let dir = empty_repo();
    fs::write(dir.path().join("README.md"), "hello\n").unwrap();
    git(dir.path(), &["add", "README.md"]);
    git(dir.path(), &["commit", "--quiet", "-m", "first"]);
    let head = git(dir.path(), &["rev-parse", "HEAD"]);
    (dir, head)
}
