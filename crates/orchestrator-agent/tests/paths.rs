//! Every path a step names stays inside the run's worktree: a `cwd` or an
//! artifact that is a symlink leading out is refused as the step's failure,
//! with the path and where it leads; symlinks that stay inside are harmless.
//! Real files, real git, real processes.

use std::fs;
use std::path::{Path, PathBuf};

use orchestrator_core::api::{ClaimedJob, JobSpec, StepOutcome};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::spec::CommandSpec;
use tempfile::TempDir;

mod common;

use common::{argv, step};

/// A project whose run `run-1` has its worktree, and a directory outside it
/// holding `secret.txt`.
struct Setup {
    project: TempDir,
    head: String,
    outside: TempDir,
}

impl Setup {
    fn new() -> Self {
        let (project, head) = common::repo();
        orchestrator_host::git::ensure_worktree(project.path(), &"run-1".into(), &head).unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret.txt"), "secret\n").unwrap();
        Setup {
            project,
            head,
            outside,
        }
    }

    fn worktree(&self) -> PathBuf {
        self.project
            .path()
            .canonicalize()
            .unwrap()
            .join(".orchestrator/worktrees/run-1")
    }

    fn outside(&self) -> PathBuf {
        self.outside.path().canonicalize().unwrap()
    }

    fn job(&self, commands: Vec<CommandSpec>, artifacts: &[&str]) -> ClaimedJob {
        ClaimedJob {
            job_id: 1.into(),
            lease_id: 1.into(),
            lease_token: "t".into(),
            queued_at_ms: 0,
            lease_expires_at_ms: 0,
            grant: Default::default(),
            spec: JobSpec {
                run_id: "run-1".into(),
                stage_id: "build".into(),
                step: 0,
                steps_total: 1,
                attempt: 1,
                project_dir: self.project.path().to_string_lossy().into_owned(),
                commands,
                base_commit: self.head.clone(),
                artifacts: artifacts.iter().map(|s| s.to_string()).collect(),
                ..JobSpec::default()
            },
        }
    }

    /// The files of the run branch's tip.
    fn committed(&self) -> String {
        common::git(
            self.project.path(),
            &["ls-tree", "-r", "--name-only", "orch/run/run-1"],
        )
    }
}

fn assert_refused(out: &StepOutcome, needles: &[&str]) {
    assert!(!out.success, "{out:?}");
    assert_eq!(out.error_class, Some(ErrorClass::Task), "{out:?}");
    assert!(out.checkpoint.is_none(), "{out:?}");
    let error = out.error.as_deref().unwrap_or("");
    for needle in needles {
        assert!(error.contains(needle), "error {error:?} lacks {needle:?}");
    }
}

fn link(target: &Path, at: PathBuf) {
    std::os::unix::fs::symlink(target, at).unwrap();
}

#[tokio::test]
async fn a_cwd_that_is_a_symlink_to_etc_is_refused() {
    let s = Setup::new();
    link(Path::new("/etc"), s.worktree().join("conf"));
    let mut cmd = argv(&["touch", "should-not-exist"]);
    cmd.cwd = Some("conf".into());
    let out = step(&s.job(vec![cmd], &[])).await;
    assert_refused(
        &out,
        &[
            "cwd \"conf\" resolves to /etc, outside the run's worktree",
            "symlinks must not lead out",
        ],
    );
    assert!(out.exit_codes.is_empty(), "nothing ran: {out:?}");
    assert!(!Path::new("/etc/should-not-exist").exists());
}

#[tokio::test]
async fn an_artifact_that_is_a_symlink_to_a_file_outside_is_refused() {
    let s = Setup::new();
    let secret = s.outside().join("secret.txt");
    let cmd = argv(&["ln", "-s", secret.to_str().unwrap(), "report.txt"]);
    let out = step(&s.job(vec![cmd], &["report.txt"])).await;
    let target = format!("is a symlink to {}", secret.display());
    assert_refused(
        &out,
        &[
            "artifact 'report.txt'",
            &target,
            "outside the run's worktree",
        ],
    );
    assert_eq!(out.exit_codes, [Some(0)], "the command ran: {out:?}");
}

#[tokio::test]
async fn an_artifact_glob_matching_a_symlinked_directory_outside_is_refused() {
    let s = Setup::new();
    let outside = s.outside();
    let cmds = vec![
        argv(&["mkdir", "dist"]),
        argv(&["sh", "-c", "echo app > dist/app.js"]),
        argv(&["ln", "-s", outside.to_str().unwrap(), "dist/vendor"]),
    ];
    // Matched by the glob itself, and inside a matched directory.
    for (i, glob) in ["dist/*", "dist", "dist/**/*.txt", "**"]
        .into_iter()
        .enumerate()
    {
        let mut job = s.job(cmds.clone(), &[glob]);
        job.job_id = (10 + i as i64).into();
        let out = step(&job).await;
        let target = format!("is a symlink to {}", outside.display());
        assert_refused(&out, &["artifact 'dist/vendor'", &target]);
        fs::remove_dir_all(s.worktree().join("dist")).unwrap();
    }
    // A symlinked directory in the glob's literal part is refused too.
    let cmd = argv(&["ln", "-s", outside.to_str().unwrap(), "out"]);
    let mut job = s.job(vec![cmd], &["out/secret.txt"]);
    job.job_id = 20.into();
    let out = step(&job).await;
    assert_refused(&out, &["artifact 'out' is a symlink to"]);
    assert!(!s.committed().contains("secret.txt"), "{}", s.committed());
}

#[tokio::test]
async fn symlinks_that_stay_inside_the_worktree_are_skipped_not_refused() {
    let s = Setup::new();
    let cmds = vec![
        argv(&["mkdir", "dist"]),
        argv(&["sh", "-c", "echo app > dist/app.js"]),
        argv(&["ln", "-s", "app.js", "dist/latest.js"]),
        argv(&["ln", "-s", "../README.md", "dist/readme"]),
        argv(&["ln", "-s", "/nonexistent/dangling", "dist/dangling"]),
    ];
    let out = step(&s.job(cmds, &["dist"])).await;
    assert!(out.success, "{out:?}");
    let committed = s.committed();
    assert!(committed.lines().any(|l| l == "dist/app.js"), "{committed}");
    assert!(!committed.contains("latest.js"), "{committed}");
    assert!(!committed.contains("dist/readme"), "{committed}");
}

#[tokio::test]
async fn a_handoff_directory_that_is_a_symlink_out_is_refused() {
    let s = Setup::new();
    link(&s.outside(), s.worktree().join(".orch"));
    let mut job = s.job(vec![argv(&["true"])], &[]);
    job.spec.handoff = Some(orchestrator_core::api::Handoff {
        for_step: 0,
        feedback: None,
        answers: Vec::new(),
        sent_back: None,
    });
    let out = step(&job).await;
    assert_refused(
        &out,
        &[".orch is a symlink to", "must be a plain directory"],
    );
    assert!(
        !s.outside().join("build").exists(),
        "nothing written outside"
    );
}
