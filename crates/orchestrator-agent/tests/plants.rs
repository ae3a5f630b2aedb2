//! Links a step plants where the agent writes afterwards: its bundle (the
//! next command's logs, the manifest's temporary file, the redaction's
//! temporary file), its handoff directory and the worktree's `.git`. Each
//! test plants, lets the agent do its writing, and checks that the host file
//! the link points at is untouched, under every backend that binds the
//! bundle writable (`namespace`, `bubblewrap`, `container`; `vm`, whose
//! guest writes the bundle over 9p, for the next command's log).
//!
//! A link resolves on the host, so its target needs to exist only there: the
//! step itself cannot see it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use orchestrator_core::api::{ClaimedJob, Handoff, Said, SandboxSpec, Secrets};
use orchestrator_core::spec::SandboxKind;
use tokio_util::sync::CancellationToken;

mod common;

use common::sandboxed::{project, sh, spec, Project};

const ORIGINAL: &str = "the host's own content\n";

fn backends() -> Vec<SandboxSpec> {
    common::sandboxed::backends(&[
        (SandboxKind::Bubblewrap, "bwrap", "bubblewrap"),
        (SandboxKind::Container, "runc", "runc"),
    ])
}

/// A host file outside everything the step may write.
fn host_file(p: &Project, name: &str) -> PathBuf {
    let path = p.outside().join(name);
    fs::write(&path, ORIGINAL).unwrap();
    path
}

fn assert_untouched(path: &Path) {
    assert_eq!(
        fs::read_to_string(path).unwrap(),
        ORIGINAL,
        "{} was written through a link the step planted",
        path.display()
    );
}

/// A step of `plant` and then a command that prints `PWNED` on both streams.
fn planting(p: &Project, sandbox: SandboxSpec, plant: &str) -> ClaimedJob {
    p.job(sandbox, vec![sh(plant), sh("echo PWNED; echo PWNED >&2")])
}

async fn run(p: &Project, job: &ClaimedJob) -> orchestrator_core::api::StepOutcome {
    p.run_job(job, CancellationToken::new()).await
}

#[tokio::test]
async fn a_symlinked_log_of_the_next_command_is_not_followed() {
    for sandbox in backends()
        .into_iter()
        .chain(cfg!(feature = "system-tests").then(|| spec(SandboxKind::Vm)))
    {
        let (p, _dirs) = project(&sandbox);
        let (out_target, err_target) = (host_file(&p, "stdout"), host_file(&p, "stderr"));
        let plant = format!(
            "ln -s {} \"$ORCH_BUNDLE_DIR/cmd-001.stdout.log\" && ln -s {} \"$ORCH_BUNDLE_DIR/cmd-001.stderr.log\"",
            out_target.display(),
            err_target.display()
        );
        let job = planting(&p, sandbox.clone(), &plant);
        let out = run(&p, &job).await;
        assert_untouched(&out_target);
        assert_untouched(&err_target);
        // The agent's own log took the link's place: the output is kept.
        assert!(out.success, "{sandbox:?}: {:?}", out.error);
        assert_eq!(p.log(&job, "cmd-001.stdout.log"), "PWNED\n");
        let meta = fs::symlink_metadata(p.bundle(&job).join("cmd-001.stdout.log")).unwrap();
        assert!(meta.file_type().is_file(), "{sandbox:?}: {meta:?}");
    }
}

#[tokio::test]
async fn a_symlink_into_the_projects_git_config_is_not_followed() {
    for sandbox in backends() {
        let (p, _dirs) = project(&sandbox);
        let config = p.root().join(".git/config");
        let before = fs::read_to_string(&config).unwrap();
        let plant = format!(
            "ln -s {} \"$ORCH_BUNDLE_DIR/cmd-001.stdout.log\"",
            config.display()
        );
        let job = p.job(
            sandbox.clone(),
            vec![
                sh(&plant),
                sh("printf '[core]\\n\\thooksPath = /tmp/planted-hooks\\n'"),
            ],
        );
        run(&p, &job).await;
        assert_eq!(fs::read_to_string(&config).unwrap(), before, "{sandbox:?}");
    }
}

#[tokio::test]
async fn a_hardlinked_log_does_not_write_the_file_it_shares() {
    for sandbox in backends() {
        let (p, _dirs) = project(&sandbox);
        let plant = "printf 'the host'\"'\"'s own content\\n' > \"$ORCH_BUNDLE_DIR/kept.txt\" && ln \"$ORCH_BUNDLE_DIR/kept.txt\" \"$ORCH_BUNDLE_DIR/cmd-001.stdout.log\"";
        let job = planting(&p, sandbox.clone(), plant);
        let out = run(&p, &job).await;
        assert!(out.success, "{sandbox:?}: {:?}", out.error);
        assert_untouched(&p.bundle(&job).join("kept.txt"));
        assert_eq!(p.log(&job, "cmd-001.stdout.log"), "PWNED\n");
    }
}

#[tokio::test]
async fn a_symlinked_manifest_temporary_is_not_followed() {
    for sandbox in backends() {
        let (p, _dirs) = project(&sandbox);
        let target = host_file(&p, "manifest");
        let plant = format!(
            "ln -s {} \"$ORCH_BUNDLE_DIR/manifest.json.tmp\" && ln -s {} \"$ORCH_BUNDLE_DIR/manifest.json\"",
            target.display(),
            target.display()
        );
        let job = planting(&p, sandbox.clone(), &plant);
        let out = run(&p, &job).await;
        assert_untouched(&target);
        assert!(out.success, "{sandbox:?}: {:?}", out.error);
        // The manifest is the agent's, a regular file.
        assert_eq!(p.manifest(&job).commands.len(), 2);
        let meta = fs::symlink_metadata(p.bundle(&job).join("manifest.json")).unwrap();
        assert!(meta.file_type().is_file());
    }
}

#[tokio::test]
async fn a_symlinked_redaction_temporary_is_not_followed() {
    for sandbox in backends() {
        let (p, _dirs) = project(&sandbox);
        let target = host_file(&p, "redacting");
        let plant = format!(
            "ln -s {} \"$ORCH_BUNDLE_DIR/cmd-001.stdout.redacting\" && ln -s {} \"$ORCH_BUNDLE_DIR/cmd-001.stderr.redacting\"",
            target.display(),
            target.display()
        );
        let mut job = p.job(
            sandbox.clone(),
            vec![sh(&plant), sh("echo \"token $API_TOKEN\"")],
        );
        let secrets: BTreeMap<String, String> =
            [("API_TOKEN".to_owned(), "hunter2-secret".to_owned())].into();
        job.spec.secrets = Secrets::from(secrets);
        let out = run(&p, &job).await;
        assert_untouched(&target);
        assert!(out.success, "{sandbox:?}: {:?}", out.error);
        assert_eq!(p.log(&job, "cmd-001.stdout.log"), "token ***\n");
    }
}

#[tokio::test]
async fn a_symlinked_handoff_file_is_not_followed() {
    for sandbox in backends() {
        let (p, _dirs) = project(&sandbox);
        let target = host_file(&p, "feedback");
        // The first step plants the link where the next step's feedback goes.
        let plant = format!(
            "mkdir -p .orch/build && ln -s {} .orch/build/feedback.md",
            target.display()
        );
        let job = p.job(sandbox.clone(), vec![sh(&plant)]);
        let out = run(&p, &job).await;
        assert!(out.success, "{sandbox:?}: {:?}", out.error);
        let mut job = p.job(sandbox.clone(), vec![sh("cat \"$ORCH_FEEDBACK_FILE\"")]);
        job.job_id = 43.into();
        job.spec.step = 1;
        job.spec.handoff = Some(Handoff {
            for_step: 1,
            feedback: Some(Said {
                text: "do better".into(),
                by: "admin".into(),
            }),
            answers: Vec::new(),
            sent_back: None,
        });
        let out = run(&p, &job).await;
        assert_untouched(&target);
        assert!(out.success, "{sandbox:?}: {:?}", out.error);
        assert!(p.stdout(&job).contains("do better"), "{}", p.stdout(&job));
    }
}

#[tokio::test]
async fn a_replaced_worktree_git_file_is_put_back_and_never_used() {
    for sandbox in backends() {
        let (p, _dirs) = project(&sandbox);
        let wt = p.worktree();
        let before = fs::read_to_string(wt.join(".git")).unwrap();
        let marker = p.outside().join("fsmonitor-ran");
        // A repository of the step's own whose config runs a program on
        // every `git status`: in place of the worktree's `.git` (made by
        // hand, as an image may have no git).
        let plant = format!(
            "rm .git && mkdir -p .git/objects .git/refs/heads && echo 'ref: refs/heads/main' > .git/HEAD && printf '[core]\\n\\trepositoryformatversion = 0\\n\\tfsmonitor = touch {}\\n\\thooksPath = /nonexistent\\n' > .git/config",
            marker.display()
        );
        let job = p.job(sandbox.clone(), vec![sh(&plant)]);
        let _ = run(&p, &job).await;
        // The agent put its own `.git` back: a user's git there is the run's.
        let meta = fs::symlink_metadata(wt.join(".git")).unwrap();
        assert!(meta.file_type().is_file(), "{sandbox:?}: .git is {meta:?}");
        assert_eq!(fs::read_to_string(wt.join(".git")).unwrap(), before);
        let status = std::process::Command::new("git")
            .arg("-C")
            .arg(&wt)
            .args(["status", "--porcelain"])
            .output()
            .unwrap();
        assert!(status.status.success());
        assert!(!marker.exists(), "{sandbox:?}: the planted fsmonitor ran");
        // The next step runs in the run's worktree as before.
        let mut job = p.job(sandbox.clone(), vec![sh("cat .git")]);
        job.job_id = 43.into();
        job.spec.step = 1;
        let out = run(&p, &job).await;
        assert!(out.success, "{sandbox:?}: {:?}", out.error);
        assert!(!marker.exists());
    }
}
