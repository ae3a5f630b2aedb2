//! Checkpoint commits, against real repositories made with the `git` CLI:
//! artifacts committed by glob with the record kept out of the tree, bad globs
//! and paths refused, concurrent checkpoints of one run in a linear history,
//! and what a checkpoint costs.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use common::checkpoints::{request, strings, write};
use common::{git, repo};
use orchestrator_host::git::{checkpoint, ensure_worktree, GitError, RunWorktree};
use sha2::{Digest, Sha256};

mod common;

fn git_bytes(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}");
    out.stdout
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The record a checkpoint commit holds in its header.
fn record_of(project: &Path, commit: &str) -> String {
    let raw = git(project, &["cat-file", "commit", commit]);
    raw.lines()
        .find_map(|l| l.strip_prefix("orch-manifest "))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn checkpoint_commits_artifacts_and_keeps_the_record_out_of_the_tree() {
    let (dir, base) = repo();
    let project = dir.path();
    let wt = ensure_worktree(project, &"run-7".into(), "HEAD").unwrap();
    let root = &wt.path;
    write(root, "dist/app.js", "console.log(1)\n");
    write(root, "dist/sub/deep.txt", "deep\n");
    write(root, "report.md", "# Report\n");
    write(root, "notes/a.txt", "a\n");
    write(root, "notes/b.md", "b\n");
    write(root, "run.sh", "#!/bin/sh\necho hi\n");
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    // Skipped: symlinks (to a file, to a directory) and anything in a .git.
    symlink("report.md", root.join("link.txt")).unwrap();
    symlink("dist", root.join("linkdir")).unwrap();
    write(root, "vendor/.git/hidden.txt", "not mine\n");
    write(root, "vendor/kept.txt", "kept\n");

    let artifacts = strings(&["dist", "report.md", "**/*.txt", "run.sh", "missing/**"]);
    // What humans handed the stage sits in `.orch/`: never committed.
    write(root, ".orch/build/feedback.md", "handed\n");
    let manifest = br#"{"step":0}"#.to_vec();
    let message = "build: step 0 succeeded\n\nOrch-Run: run-7\n";
    let artifacts = [artifacts, strings(&[".orch/**"])].concat();
    let made = checkpoint(
        project,
        &wt,
        &request(&"run-7".into(), &artifacts, &manifest, message),
    )
    .unwrap();

    let paths: Vec<&str> = made.artifacts.iter().map(|a| a.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "dist/app.js",
            "dist/sub/deep.txt",
            "notes/a.txt",
            "report.md",
            "run.sh",
            "vendor/kept.txt"
        ]
    );
    for record in &made.artifacts {
        let content = fs::read(root.join(&record.path)).unwrap();
        assert_eq!(record.size, content.len() as u64, "{}", record.path);
        assert_eq!(record.sha256, sha256_hex(&content), "{}", record.path);
        let committed = git_bytes(
            project,
            &["show", &format!("{}:{}", made.commit, record.path)],
        );
        assert_eq!(committed, content, "{}", record.path);
    }
    assert_eq!(record_of(project, &made.commit), r#"{"step":0}"#);
    let tree = git(project, &["ls-tree", "-r", "--name-only", &made.commit]);
    assert!(!tree.contains(".orch"), "{tree}");

    // The branch moved; its log shows the message and the orchestrator as author.
    assert_eq!(git(project, &["rev-parse", "orch/run/run-7"]), made.commit);
    assert_eq!(
        git(
            project,
            &[
                "log",
                "-1",
                "--format=%s|%an <%ae>|%cn <%ce>",
                "orch/run/run-7"
            ]
        ),
        "build: step 0 succeeded|orchestrator <orch@localhost>|orchestrator <orch@localhost>"
    );
    assert_eq!(
        git(project, &["log", "-1", "--format=%B", "orch/run/run-7"]),
        message.trim()
    );
    assert_eq!(
        git(project, &["rev-parse", &format!("{}^", made.commit)]),
        base
    );

    // Modes, and what was left out.
    let tree = git(project, &["ls-tree", "-r", &made.commit]);
    let mode_of = |path: &str| {
        tree.lines()
            .find(|l| l.ends_with(&format!("\t{path}")))
            .map(|l| l[..6].to_owned())
    };
    assert_eq!(mode_of("run.sh").as_deref(), Some("100755"));
    assert_eq!(mode_of("report.md").as_deref(), Some("100644"));
    assert_eq!(
        mode_of("README.md").as_deref(),
        Some("100644"),
        "base tree kept"
    );
    for absent in [
        "link.txt",
        "linkdir/app.js",
        "vendor/.git/hidden.txt",
        "notes/b.md",
    ] {
        assert_eq!(mode_of(absent), None, "{absent} must not be committed");
    }

    // The objects are well formed.
    git(project, &["fsck", "--strict", "--no-progress"]);

    // The worktree's HEAD and index are untouched.
    assert_eq!(git(root, &["rev-parse", "HEAD"]), base);
    git(root, &["diff", "--cached", "--quiet"]);
}

#[test]
fn glob_forms() {
    let (dir, _) = repo();
    let project = dir.path();
    let wt = ensure_worktree(project, &"globs".into(), "HEAD").unwrap();
    write(&wt.path, "dist/app.js", "1");
    write(&wt.path, "dist/.map", "2");
    write(&wt.path, "dist/sub/deep.js", "3");
    write(&wt.path, "top.md", "4");
    write(&wt.path, "docs/nested.md", "5");
    let paths = |globs: &[&str]| -> Vec<String> {
        let made = checkpoint(
            project,
            &wt,
            &request(&"globs".into(), &strings(globs), &[], "globs"),
        )
        .unwrap();
        made.artifacts.into_iter().map(|a| a.path).collect()
    };
    assert_eq!(
        paths(&["dist/**"]),
        ["dist/.map", "dist/app.js", "dist/sub/deep.js"]
    );
    assert_eq!(
        paths(&["dist/"]),
        ["dist/.map", "dist/app.js", "dist/sub/deep.js"]
    );
    assert_eq!(paths(&["dist/*.js"]), ["dist/app.js"]);
    assert_eq!(paths(&["*.md"]), ["README.md", "top.md"]);
    assert_eq!(
        paths(&["**/*.md"]),
        ["README.md", "docs/nested.md", "top.md"]
    );
    assert_eq!(paths(&["./top.md", "top.md"]), ["top.md"]);
    assert_eq!(
        paths(&["d*"]).len(),
        4,
        "a matched directory brings its files"
    );
    assert_eq!(paths(&["nothing/*", "none.txt"]), Vec::<String>::new());
}

#[test]
fn bad_globs_and_paths_are_refused_and_commit_nothing() {
    let (dir, base) = repo();
    let project = dir.path();
    let wt = ensure_worktree(project, &"bad".into(), "HEAD").unwrap();
    for glob in ["../outside/**", "/etc/passwd", "dist/../../x", "a/[b"] {
        let err = checkpoint(
            project,
            &wt,
            &request(&"bad".into(), &strings(&[glob]), &[], "x"),
        )
        .unwrap_err();
        assert!(
            matches!(err, GitError::InvalidGlob { .. }),
            "{glob}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&format!("'{glob}'")), "{text}");
    }
    let err = checkpoint(
        project,
        &wt,
        &request(&"bad".into(), &strings(&["/etc/passwd"]), &[], "x"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("absolute"), "{err}");
    let err = checkpoint(
        project,
        &wt,
        &request(&"bad".into(), &strings(&["../x"]), &[], "x"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("'..'"), "{err}");

    assert_eq!(git(project, &["rev-parse", "orch/run/bad"]), base);

    // Another run's worktree, and a run whose branch was never made.
    let err = checkpoint(project, &wt, &request(&"other".into(), &[], &[], "x")).unwrap_err();
    assert!(matches!(err, GitError::WrongRun { .. }), "{err:?}");
    let ghost = RunWorktree {
        path: wt.path,
        branch: "orch/run/ghost".into(),
    };
    let err = checkpoint(project, &ghost, &request(&"ghost".into(), &[], &[], "x")).unwrap_err();
    assert!(
        err.to_string().contains("'orch/run/ghost' does not exist"),
        "{err}"
    );
    let err = ensure_worktree(project, &"../up".into(), "HEAD").unwrap_err();
    assert!(err.to_string().contains("'../up'"), "{err}");
}

#[test]
fn concurrent_checkpoints_of_one_run_keep_every_file_in_a_linear_history() {
    let (dir, base) = repo();
    let project = dir.path().to_path_buf();
    let wt = ensure_worktree(&project, &"par".into(), "HEAD").unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let (project, wt, barrier) = (project.clone(), wt.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..50)
                    .map(|i| {
                        let out = format!("stage-{t}/out-{i:03}.txt");
                        write(&wt.path, &out, "x");
                        let record = format!("{{\"t\":{t},\"i\":{i}}}").into_bytes();
                        let msg = format!("stage-{t}: step {i}");
                        checkpoint(
                            &project,
                            &wt,
                            &request(&"par".into(), &[out], &record, &msg),
                        )
                        .unwrap()
                        .commit
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let made: BTreeSet<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(made.len(), 100);

    let history = git(
        &project,
        &[
            "rev-list",
            "--reverse",
            "--parents",
            &format!("{base}..orch/run/par"),
        ],
    );
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 100, "every checkpoint is on the branch");
    let mut parent = base;
    let mut seen = BTreeSet::new();
    for line in lines {
        let ids: Vec<&str> = line.split(' ').collect();
        assert_eq!(ids.len(), 2, "one parent each: {line}");
        assert_eq!(ids[1], parent, "linear history");
        assert!(made.contains(ids[0]));
        let files: BTreeSet<String> = git(&project, &["ls-tree", "-r", "--name-only", ids[0]])
            .lines()
            .filter(|l| l.starts_with("stage-"))
            .map(str::to_owned)
            .collect();
        assert!(files.is_superset(&seen), "nothing lost at {}", ids[0]);
        assert_eq!(files.len(), seen.len() + 1, "one new file at {}", ids[0]);
        seen = files;
        parent = ids[0].to_owned();
    }
    assert_eq!(seen.len(), 100);
}

/// Many checkpoints in a row all land, and what one costs is printed (not
/// asserted; `orch bench` measures the whole path). Raise `ORCH_CHECKPOINTS`
/// and build with `--release` for a meaningful figure.
#[test]
fn checkpoint_cost() {
    let (dir, _) = repo();
    let project = dir.path();
    let wt = ensure_worktree(project, &"bench".into(), "HEAD").unwrap();
    let n: usize = std::env::var("ORCH_CHECKPOINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut each = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let record = format!("{{\"step\":{i},\"exit\":0}}").into_bytes();
        let msg = format!("build: step {i}\n\nOrch-Run: bench\n");
        let t = Instant::now();
        checkpoint(project, &wt, &request(&"bench".into(), &[], &record, &msg)).unwrap();
        each.push(t.elapsed());
    }
    let total = start.elapsed();
    each.sort();
    eprintln!(
        "checkpoint cost, {n} checkpoints of one small record each in {}: mean {:?}, median {:?}, p99 {:?}",
        project.display(),
        total / n as u32,
        each[n / 2],
        each[n * 99 / 100],
    );
    // The floor on this filesystem: the files a checkpoint creates, without
    // git. Five loose objects (blob, three trees, commit), each a temporary
    // file linked to its name, and the branch's lock file renamed over it.
    let floor_dir = project.join(".git/floor");
    fs::create_dir_all(floor_dir.join("objects")).unwrap();
    let start = Instant::now();
    for i in 0..n {
        for k in 0..5 {
            let tmp = floor_dir.join("tmp");
            fs::write(&tmp, b"x\x01small object").unwrap();
            fs::hard_link(&tmp, floor_dir.join(format!("objects/{i}-{k}"))).unwrap();
            fs::remove_file(&tmp).unwrap();
        }
        let lock = floor_dir.join("ref.lock");
        fs::write(&lock, format!("{i:040}\n")).unwrap();
        fs::rename(&lock, floor_dir.join("ref")).unwrap();
    }
    eprintln!(
        "floor: the same 6 file creations without git: mean {:?}",
        start.elapsed() / n as u32
    );
    assert_eq!(
        git(project, &["rev-list", "--count", "orch/run/bench"]),
        (n + 1).to_string()
    );
}
