//! Run worktrees, against real repositories made with the `git` CLI: made
//! once and safely from several threads, kept apart from the user's checkout,
//! given back at the last checkpoint when a run resumes, and commits resolved
//! and checked out by name.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

use common::checkpoints::{request, strings, write};
use common::{empty_repo, git, repo};
use orchestrator_host::git::{
    add_detached_worktree, checkpoint, ensure_worktree, resolve_commit, GitError, RunWorktree,
};

mod common;

fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap()
}

#[test]
fn ensure_worktree_creates_branch_and_worktree_and_leaves_the_user_alone() {
    let (dir, base) = repo();
    let project = dir.path();
    // The user is busy: a modified file, a staged file, an untracked file.
    fs::write(project.join("README.md"), "edited\n").unwrap();
    fs::write(project.join("staged.txt"), "staged\n").unwrap();
    git(project, &["add", "staged.txt"]);
    fs::write(project.join("untracked.txt"), "mine\n").unwrap();
    let status_before = git(project, &["status", "--porcelain"]);

    let wt = ensure_worktree(project, &"r1".into(), "HEAD").unwrap();
    assert_eq!(
        wt.path,
        canonical(project).join(".orchestrator/worktrees/r1")
    );
    assert_eq!(wt.branch, "orch/run/r1");
    assert_eq!(git(project, &["rev-parse", "refs/heads/orch/run/r1"]), base);
    assert_eq!(git(&wt.path, &["rev-parse", "HEAD"]), base);
    assert_eq!(
        fs::read_to_string(wt.path.join("README.md")).unwrap(),
        "hello\n"
    );
    // Detached: HEAD is no branch, so the run branch can move under it.
    let symbolic = Command::new("git")
        .arg("-C")
        .arg(&wt.path)
        .args(["symbolic-ref", "-q", "HEAD"])
        .status()
        .unwrap();
    assert!(!symbolic.success(), "the run worktree must be detached");

    // The user's side: same branch, same index, same files, nothing new.
    assert_eq!(git(project, &["symbolic-ref", "HEAD"]), "refs/heads/main");
    assert_eq!(git(project, &["rev-parse", "HEAD"]), base);
    assert_eq!(git(project, &["status", "--porcelain"]), status_before);
    assert_eq!(
        fs::read_to_string(project.join("README.md")).unwrap(),
        "edited\n"
    );
    assert_eq!(
        fs::read_to_string(project.join(".orchestrator/.gitignore")).unwrap(),
        "*\n!policy.yaml\n"
    );
    git(
        project,
        &["check-ignore", "-q", ".orchestrator/worktrees/r1"],
    );

    // Again, with another base: a no-op that neither moves the branch nor
    // touches the worktree.
    fs::write(wt.path.join("work.txt"), "in progress\n").unwrap();
    git(project, &["commit", "--quiet", "-m", "second"]);
    let again = ensure_worktree(project, &"r1".into(), "main").unwrap();
    assert_eq!(again, wt);
    assert_eq!(git(project, &["rev-parse", "orch/run/r1"]), base);
    assert_eq!(
        fs::read_to_string(wt.path.join("work.txt")).unwrap(),
        "in progress\n"
    );
}

#[test]
fn a_clean_project_stays_clean() {
    let (dir, _) = repo();
    let project = dir.path();
    let wt = ensure_worktree(project, &"clean".into(), "HEAD").unwrap();
    write(&wt.path, "out.txt", "x");
    checkpoint(
        project,
        &wt,
        &request(&"clean".into(), &strings(&["out.txt"]), b"{}", "step 0"),
    )
    .unwrap();
    assert_eq!(git(project, &["status", "--porcelain"]), "");
}

#[test]
fn ensure_worktree_is_safe_to_call_from_several_threads_at_once() {
    let (dir, base) = repo();
    let project = dir.path().to_path_buf();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let project = project.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                ensure_worktree(&project, &"same".into(), "HEAD").unwrap()
            })
        })
        .collect();
    let worktrees: Vec<RunWorktree> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(worktrees.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(git(&worktrees[0].path, &["rev-parse", "HEAD"]), base);
    let list = git(&project, &["worktree", "list", "--porcelain"]);
    assert_eq!(list.matches("worktree ").count(), 2, "{list}");
}

#[test]
fn ensure_worktree_refuses_a_symlinked_orchestrator_directory() {
    let (dir, _) = repo();
    let outside = tempfile::tempdir().unwrap();
    symlink(outside.path(), dir.path().join(".orchestrator")).unwrap();
    let err = ensure_worktree(dir.path(), &"r".into(), "HEAD")
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a symlink"), "{err}");
    assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
}

#[test]
fn a_resumed_run_gets_its_worktree_back_at_the_last_checkpoint() {
    let (dir, _) = repo();
    let project = dir.path();
    let wt = ensure_worktree(project, &"resume".into(), "HEAD").unwrap();
    write(&wt.path, "out/result.txt", "result\n");
    let made = checkpoint(
        project,
        &wt,
        &request(&"resume".into(), &strings(&["out"]), b"{}", "step 0"),
    )
    .unwrap();

    // The worktree directory is gone (its registration is not).
    fs::remove_dir_all(&wt.path).unwrap();
    let back = ensure_worktree(project, &"resume".into(), "HEAD").unwrap();
    assert_eq!(back, wt);
    assert_eq!(git(&back.path, &["rev-parse", "HEAD"]), made.commit);
    assert_eq!(
        fs::read_to_string(back.path.join("out/result.txt")).unwrap(),
        "result\n"
    );

    // A fresh machine: a clone that has the run branch but no worktree.
    let machine = tempfile::tempdir().unwrap();
    let clone = machine.path().join("project");
    git(
        machine.path(),
        &["clone", "--quiet", project.to_str().unwrap(), "project"],
    );
    git(
        &clone,
        &["branch", "orch/run/resume", "origin/orch/run/resume"],
    );
    let there = ensure_worktree(&clone, &"resume".into(), "HEAD").unwrap();
    assert_eq!(git(&there.path, &["rev-parse", "HEAD"]), made.commit);
    assert_eq!(
        fs::read_to_string(there.path.join("out/result.txt")).unwrap(),
        "result\n"
    );
}

#[test]
fn resolve_commit_names_what_is_wrong() {
    let (dir, head) = repo();
    let project = dir.path();
    git(project, &["tag", "v1"]);
    assert_eq!(resolve_commit(project, "HEAD").unwrap(), head);
    assert_eq!(resolve_commit(project, "main").unwrap(), head);
    assert_eq!(resolve_commit(project, "v1").unwrap(), head);
    assert_eq!(resolve_commit(project, &head[..10]).unwrap(), head);

    let plain = tempfile::tempdir().unwrap();
    let err = resolve_commit(plain.path(), "HEAD").unwrap_err();
    assert!(matches!(err, GitError::NotARepository { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&plain.path().display().to_string()), "{text}");
    assert!(text.contains("is not a git repository"), "{text}");

    let err = resolve_commit(project, "no-such-branch")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ref 'no-such-branch' does not exist"), "{err}");
    assert!(err.contains(&project.display().to_string()), "{err}");

    let tree = git(project, &["rev-parse", "HEAD^{tree}"]);
    let err = resolve_commit(project, &tree).unwrap_err().to_string();
    assert!(err.contains("names a tree, not a commit"), "{err}");

    let empty = empty_repo();
    for reference in ["HEAD", "main"] {
        let err = resolve_commit(empty.path(), reference).unwrap_err();
        assert!(matches!(err, GitError::EmptyRepository { .. }), "{err:?}");
        assert!(err.to_string().contains("has no commits yet"), "{err}");
    }
    let err = ensure_worktree(empty.path(), &"r".into(), "HEAD").unwrap_err();
    assert!(err.to_string().contains("has no commits yet"), "{err}");
}

#[test]
fn add_detached_worktree_checks_out_the_commit() {
    let (dir, first) = repo();
    let project = dir.path();
    fs::write(project.join("README.md"), "second\n").unwrap();
    git(project, &["commit", "--quiet", "-am", "second"]);

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("at-first");
    add_detached_worktree(project, &first[..12], &dest).unwrap();
    assert_eq!(git(&dest, &["rev-parse", "HEAD"]), first);
    assert_eq!(
        fs::read_to_string(dest.join("README.md")).unwrap(),
        "hello\n"
    );
    assert_eq!(git(project, &["symbolic-ref", "HEAD"]), "refs/heads/main");

    let err = add_detached_worktree(project, "HEAD", &dest)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not empty"), "{err}");
    assert!(err.contains(&dest.display().to_string()), "{err}");
    let err = add_detached_worktree(project, "nope", &out.path().join("x"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("'nope'"), "{err}");
}
