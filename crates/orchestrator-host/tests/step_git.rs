//! Git inside steps: a step's own git directory, and how what it commits
//! there is proved and taken into the run branch at the checkpoint, driven
//! with the `git` CLI as a step would. Real steps in each sandbox doing the
//! same are the agent's tests (`orchestrator-agent/tests/step_git.rs`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{git, repo};
use orchestrator_host::git::{
    checkpoint, ensure_worktree, prepare_step_git, CheckpointRequest, GitError, RunWorktree,
    StepGit,
};

mod common;

/// Runs git as a step would inside its sandbox: the step's directory is
/// its repository and the worktree its work tree.
fn step_git(sg: &StepGit, wt: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .env("GIT_DIR", &sg.dir)
        .env("GIT_WORK_TREE", wt)
        .env("GIT_AUTHOR_NAME", "Agent")
        .env("GIT_AUTHOR_EMAIL", "agent@example.com")
        .env("GIT_COMMITTER_NAME", "Agent")
        .env("GIT_COMMITTER_EMAIL", "agent@example.com")
        .current_dir(wt)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn take(project: &Path, wt: &RunWorktree, run: &str, sg: &StepGit) -> Result<String, GitError> {
    checkpoint(
        project,
        wt,
        &CheckpointRequest {
            run_id: &run.into(),
            artifacts: &[],
            record: br#"{"step":0}"#,
            step_git: Some(sg),
            message: "orch: checkpoint\n",
        },
    )
    .map(|c| c.commit)
}

fn setup(run: &str) -> (tempfile::TempDir, PathBuf, RunWorktree, String) {
    let (dir, base) = repo();
    let project = dir.path().canonicalize().unwrap();
    let wt = ensure_worktree(&project, &run.into(), "HEAD").unwrap();
    (dir, project, wt, base)
}

#[test]
fn a_steps_commits_come_before_its_checkpoint_on_the_run_branch() {
    let (_dir, project, wt, base) = setup("r1");
    let sg = prepare_step_git(&project, &wt, &"r1".into(), "build", true).unwrap();
    assert_eq!(sg.started_at.to_string(), base);
    // The step sees the run's branch at its last checkpoint, clean.
    assert_eq!(step_git(&sg, &wt.path, &["status", "--porcelain"]), "");
    assert_eq!(
        step_git(&sg, &wt.path, &["symbolic-ref", "HEAD"]),
        "refs/heads/orch/run/r1"
    );
    fs::write(wt.path.join("feature.txt"), "new\n").unwrap();
    step_git(&sg, &wt.path, &["add", "feature.txt"]);
    step_git(&sg, &wt.path, &["commit", "-qm", "Add the feature"]);
    let step_commit = step_git(&sg, &wt.path, &["rev-parse", "HEAD"]);
    // The project's repository has not got it yet.
    assert!(Command::new("git")
        .arg("-C")
        .arg(&project)
        .args(["cat-file", "-e", &step_commit])
        .status()
        .is_ok_and(|s| !s.success()));

    let made = take(&project, &wt, "r1", &sg).unwrap();
    assert_eq!(git(&project, &["rev-parse", "orch/run/r1"]), made);
    assert_eq!(
        git(&project, &["rev-parse", &format!("{made}^")]),
        step_commit
    );
    assert_eq!(
        git(&project, &["log", "-1", "--format=%an %s", &step_commit]),
        "Agent Add the feature"
    );
    assert_eq!(
        git(&project, &["show", &format!("{made}:feature.txt")]),
        "new"
    );
    assert_eq!(git(&project, &["fsck", "--strict", "--no-dangling"]), "");

    // The next step starts from the checkpoint, with a fresh directory.
    let next = prepare_step_git(&project, &wt, &"r1".into(), "build", true).unwrap();
    assert_eq!(next.started_at.to_string(), made);
    assert_eq!(step_git(&next, &wt.path, &["status", "--porcelain"]), "");
    assert_eq!(
        step_git(&next, &wt.path, &["log", "-1", "--format=%s", "HEAD^"]),
        "Add the feature"
    );
}

#[test]
fn a_step_that_commits_nothing_checkpoints_on_the_tip() {
    let (_dir, project, wt, base) = setup("r2");
    let sg = prepare_step_git(&project, &wt, &"r2".into(), "build", true).unwrap();
    let made = take(&project, &wt, "r2", &sg).unwrap();
    assert_eq!(git(&project, &["rev-parse", &format!("{made}^")]), base);
}

#[test]
fn commits_of_parallel_stages_are_replayed_onto_each_other() {
    let (_dir, project, wt, base) = setup("r3");
    let a = prepare_step_git(&project, &wt, &"r3".into(), "a", true).unwrap();
    let b = prepare_step_git(&project, &wt, &"r3".into(), "b", true).unwrap();
    fs::write(wt.path.join("a.txt"), "a\n").unwrap();
    step_git(&a, &wt.path, &["add", "a.txt"]);
    step_git(&a, &wt.path, &["commit", "-qm", "a"]);
    fs::write(wt.path.join("b.txt"), "b\n").unwrap();
    step_git(&b, &wt.path, &["add", "b.txt"]);
    step_git(&b, &wt.path, &["commit", "-qm", "b"]);
    take(&project, &wt, "r3", &a).unwrap();
    let made = take(&project, &wt, "r3", &b).unwrap();
    let log = git(
        &project,
        &["log", "--format=%s", &format!("{base}..{made}")],
    );
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["orch: checkpoint", "b", "orch: checkpoint", "a"]
    );
    let files = git(&project, &["ls-tree", "--name-only", &made]);
    assert!(
        files.contains("a.txt") && files.contains("b.txt"),
        "{files}"
    );
}

#[test]
fn a_commit_that_conflicts_with_a_parallel_stage_fails_the_step_naming_the_file() {
    let (_dir, project, wt, _) = setup("r4");
    let a = prepare_step_git(&project, &wt, &"r4".into(), "a", true).unwrap();
    let b = prepare_step_git(&project, &wt, &"r4".into(), "b", true).unwrap();
    fs::write(wt.path.join("README.md"), "a's\n").unwrap();
    step_git(&a, &wt.path, &["commit", "-qam", "a"]);
    fs::write(wt.path.join("README.md"), "b's\n").unwrap();
    step_git(&b, &wt.path, &["commit", "-qam", "b"]);
    let tip = take(&project, &wt, "r4", &a).unwrap();
    let err = take(&project, &wt, "r4", &b).unwrap_err();
    assert!(matches!(err, GitError::StepCommits { .. }), "{err:?}");
    assert!(err.to_string().contains("README.md"), "{err}");
    assert_eq!(git(&project, &["rev-parse", "orch/run/r4"]), tip);
}

#[test]
fn rewriting_the_runs_history_is_refused() {
    let (_dir, project, wt, base) = setup("r5");
    let sg = prepare_step_git(&project, &wt, &"r5".into(), "build", true).unwrap();
    step_git(
        &sg,
        &wt.path,
        &["commit", "-q", "--amend", "-m", "rewritten"],
    );
    let err = take(&project, &wt, "r5", &sg).unwrap_err();
    assert!(err.to_string().contains("does not descend"), "{err}");
    assert_eq!(git(&project, &["rev-parse", "orch/run/r5"]), base);
}

#[test]
fn a_link_in_the_steps_objects_is_refused_before_anything_is_read() {
    let (_dir, project, wt, base) = setup("r6");
    let sg = prepare_step_git(&project, &wt, &"r6".into(), "build", true).unwrap();
    fs::write(wt.path.join("x.txt"), "x\n").unwrap();
    step_git(&sg, &wt.path, &["add", "x.txt"]);
    step_git(&sg, &wt.path, &["commit", "-qm", "x"]);
    std::os::unix::fs::symlink("/etc/passwd", sg.dir.join("objects/ab")).unwrap();
    let err = take(&project, &wt, "r6", &sg).unwrap_err();
    assert!(err.to_string().contains("link or a special file"), "{err}");
    assert_eq!(git(&project, &["rev-parse", "orch/run/r6"]), base);
}

#[test]
fn a_tree_holding_a_dot_git_or_a_submodule_is_refused() {
    let (_dir, project, wt, _) = setup("r7");
    for (entry, why) in [
        ("100644 blob {blob}\t.GIT", ".GIT"),
        ("160000 commit {commit}\tvendor", "submodules"),
    ] {
        let sg = prepare_step_git(&project, &wt, &"r7".into(), "build", true).unwrap();
        let blob = step_git(&sg, &wt.path, &["hash-object", "-w", "--stdin"]);
        let entry = entry
            .replace("{blob}", &blob)
            .replace("{commit}", &sg.started_at.to_string());
        let tree = {
            let mut child = Command::new("git")
                .env("GIT_DIR", &sg.dir)
                .args(["mktree", "--missing"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            writeln!(child.stdin.take().unwrap(), "{entry}").unwrap();
            let out = child.wait_with_output().unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        assert!(!tree.is_empty(), "mktree made no tree for {entry}");
        let commit = step_git(
            &sg,
            &wt.path,
            &["commit-tree", &tree, "-p", "HEAD", "-m", "planted"],
        );
        step_git(&sg, &wt.path, &["update-ref", "HEAD", &commit]);
        let err = take(&project, &wt, "r7", &sg).unwrap_err();
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
}

#[test]
fn without_a_sandbox_git_uses_the_worktrees_own_entry() {
    let (_dir, project, wt, base) = setup("r8");
    let sg = prepare_step_git(&project, &wt, &"r8".into(), "build", false).unwrap();
    assert!(sg.gitfile.is_none());
    fs::write(wt.path.join("p.txt"), "p\n").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("git")
            .current_dir(&wt.path)
            .args(["-c", "user.name=P", "-c", "user.email=p@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
    };
    run(&["add", "p.txt"]);
    run(&["commit", "-qm", "process step"]);
    let made = take(&project, &wt, "r8", &sg).unwrap();
    assert_eq!(
        git(
            &project,
            &["log", "--format=%s", &format!("{base}..{made}")]
        ),
        "orch: checkpoint\nprocess step"
    );
}

#[test]
fn parallel_unsandboxed_steps_set_up_the_shared_entry_without_failing_each_other() {
    let (_dir, project, wt, _base) = setup("r9");
    let (project, wt) = (std::sync::Arc::new(project), std::sync::Arc::new(wt));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (project, wt) = (project.clone(), wt.clone());
            std::thread::spawn(move || {
                for _ in 0..20 {
                    prepare_step_git(&project, &wt, &"r9".into(), &format!("s{i}"), false)
                        .expect("a parallel stage's setup of the shared entry");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// What git inside steps costs a step: making its git directory, and taking
/// in one small commit at the checkpoint, against a checkpoint that takes
/// nothing in. Prints medians; `cargo test -p orchestrator-host --test
/// step_git -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_step_git() {
    use std::time::{Duration, Instant};
    let (_dir, project, wt, _) = setup("bench");
    let n: usize = std::env::var("ORCH_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mut prep, mut plain, mut taking) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let t = Instant::now();
        let sg = prepare_step_git(&project, &wt, &"bench".into(), "build", true).unwrap();
        prep.push(t.elapsed());
        if i % 2 == 0 {
            let t = Instant::now();
            take(&project, &wt, "bench", &sg).unwrap();
            plain.push(t.elapsed());
        } else {
            fs::write(wt.path.join("f.txt"), format!("{i}\n")).unwrap();
            step_git(&sg, &wt.path, &["add", "f.txt"]);
            step_git(&sg, &wt.path, &["commit", "-qm", "step"]);
            let t = Instant::now();
            take(&project, &wt, "bench", &sg).unwrap();
            taking.push(t.elapsed());
        }
    }
    let files = git(&project, &["ls-files"]).lines().count();
    eprintln!(
        "step git, {n} steps on a {files}-file tree: make the directory: median {:?}; checkpoint taking nothing in: median {:?}; checkpoint taking in one commit: median {:?}",
        median(prep),
        median(plain),
        median(taking)
    );
}

/// Without a sandbox parallel stages share the worktree's own entry: a
/// stage whose step starts after another's sets its HEAD, and the first
/// stage's checkpoint must take none of the other's checkpoints for its own
/// commits, whether it committed or not.
#[test]
fn parallel_process_stages_share_the_worktree_entry_without_taking_each_others_checkpoints() {
    let (_dir, project, wt, base) = setup("r9");
    let run = |args: &[&str]| {
        let out = Command::new("git")
            .current_dir(&wt.path)
            .args(["-c", "user.name=P", "-c", "user.email=p@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
    };
    // a and b start; b checkpoints; c starts (HEAD now b's checkpoint);
    // a, which committed nothing, checkpoints.
    let a = prepare_step_git(&project, &wt, &"r9".into(), "a", false).unwrap();
    let b = prepare_step_git(&project, &wt, &"r9".into(), "b", false).unwrap();
    let after_b = take(&project, &wt, "r9", &b).unwrap();
    let c = prepare_step_git(&project, &wt, &"r9".into(), "c", false).unwrap();
    let after_a = take(&project, &wt, "r9", &a).unwrap();
    assert_eq!(
        git(&project, &["rev-parse", &format!("{after_a}^")]),
        after_b
    );
    // c commits on the shared HEAD (a's checkpoint is not under it) and
    // checkpoints: its commit goes on top of the branch, once.
    fs::write(wt.path.join("c.txt"), "c\n").unwrap();
    run(&["add", "c.txt"]);
    run(&["commit", "-qm", "c's work"]);
    let after_c = take(&project, &wt, "r9", &c).unwrap();
    let log = git(
        &project,
        &["log", "--format=%s", &format!("{base}..{after_c}")],
    );
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "orch: checkpoint",
            "c's work",
            "orch: checkpoint",
            "orch: checkpoint"
        ]
    );
}
