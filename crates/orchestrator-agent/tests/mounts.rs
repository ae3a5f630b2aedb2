//! A stage's tools from the host: `mounts:` bound read-only when the agent
//! allows them, refused with a clear error when it does not or when they
//! would show the orchestrator's own directories; and the step's own
//! writable home, with a git identity and links to `~/...` mounts.

use std::fs;
use std::path::PathBuf;

use orchestrator_core::api::{ClaimedJob, SandboxSpec, StepOutcome};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::spec::SandboxKind;
use tokio_util::sync::CancellationToken;

mod common;

use common::sandboxed::{sh, spec, Project};

fn backends() -> Vec<SandboxSpec> {
    common::sandboxed::backends(&[(SandboxKind::Bubblewrap, "bwrap", "bubblewrap")])
}

/// A tool directory in the agent's home (hidden from steps by default),
/// removed when dropped.
struct Tool(PathBuf);

impl Tool {
    fn new(tag: &str) -> Self {
        let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
        let dir = home.join(format!(".orch-test-tool-{tag}-{}", std::process::id()));
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("bin/version"), "tool 1.2.3\n").unwrap();
        Tool(dir)
    }
    fn name(&self) -> String {
        self.0.file_name().unwrap().to_string_lossy().into_owned()
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

async fn run(p: &Project, job: &ClaimedJob) -> StepOutcome {
    p.run_job(job, CancellationToken::new()).await
}

#[tokio::test]
async fn an_allowed_mount_is_readable_at_its_path_and_through_the_steps_home() {
    for sandbox in backends() {
        let tool = Tool::new("ok");
        let mut p = Project::new();
        p.cfg.allow_mounts = vec![tool.0.clone()];
        let script = format!(
            "cat {t}/bin/version && cat \"$HOME/{n}/bin/version\" && ! touch {t}/bin/new",
            t = tool.0.display(),
            n = tool.name()
        );
        let mut job = p.job(sandbox.clone(), vec![sh(&script)]);
        job.spec.mounts = vec![format!("~/{}", tool.name())];
        let out = run(&p, &job).await;
        assert!(
            out.success,
            "{sandbox:?}: {:?}\n{}",
            out.error,
            p.log(&job, "cmd-000.stderr.log")
        );
        assert_eq!(p.stdout(&job), "tool 1.2.3\ntool 1.2.3\n", "{sandbox:?}");
        assert!(
            !tool.0.join("bin/new").exists(),
            "{sandbox:?}: the mount was writable"
        );

        // Without the mount the agent's home stays hidden.
        let job = p.job(
            sandbox.clone(),
            vec![sh(&format!("cat {}/bin/version", tool.0.display()))],
        );
        let out = run(&p, &job).await;
        assert!(!out.success, "{sandbox:?}: the hidden home was readable");
    }
}

#[tokio::test]
async fn a_mount_the_agent_does_not_allow_is_refused_naming_the_flag() {
    let tool = Tool::new("refused");
    let p = Project::new();
    let mut job = p.job(spec(SandboxKind::Namespace), vec![sh("true")]);
    job.spec.mounts = vec![tool.0.to_string_lossy().into_owned()];
    let out = run(&p, &job).await;
    assert!(!out.success);
    assert_eq!(out.error_class, Some(ErrorClass::Task), "{out:?}");
    let error = out.error.unwrap_or_default();
    assert!(error.contains("mounts[0]"), "{error}");
    assert!(error.contains("orch agent --allow-mount"), "{error}");
    assert!(out.exit_codes.is_empty(), "the command ran");
}

#[tokio::test]
async fn a_mount_that_would_show_a_data_directory_is_refused() {
    let tool = Tool::new("private");
    let data = tool.0.join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("admin.token"), "secret\n").unwrap();
    let mut p = Project::new();
    p.cfg.allow_mounts = vec![tool.0.clone()];
    p.cfg.private = vec![data.clone()];
    for mount in [tool.0.clone(), data.clone()] {
        let mut job = p.job(spec(SandboxKind::Namespace), vec![sh("true")]);
        job.spec.mounts = vec![mount.to_string_lossy().into_owned()];
        let out = run(&p, &job).await;
        assert!(!out.success, "{mount:?} was mounted");
        let error = out.error.unwrap_or_default();
        assert!(
            error.contains("a directory of the orchestrator's own"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_step_has_a_writable_home_with_a_git_identity_kept_across_its_steps() {
    for sandbox in backends() {
        let p = Project::new();
        let job = p.job(
            sandbox.clone(),
            vec![sh(
                "git config --global user.name && echo kept > \"$HOME/note\" && echo \"$HOME\"",
            )],
        );
        let out = run(&p, &job).await;
        assert!(
            out.success,
            "{sandbox:?}: {:?}\n{}",
            out.error,
            p.log(&job, "cmd-000.stderr.log")
        );
        let lines: Vec<String> = p.stdout(&job).lines().map(str::to_owned).collect();
        assert_eq!(lines[0], "orch step", "{sandbox:?}");
        assert!(
            lines[1].ends_with(".orchestrator/homes/run-1/build"),
            "{lines:?}"
        );
        // The next step of the stage finds what the last one left there.
        let mut job = p.job(sandbox.clone(), vec![sh("cat \"$HOME/note\"")]);
        job.job_id = 43.into();
        job.spec.step = 1;
        let out = run(&p, &job).await;
        assert!(out.success, "{sandbox:?}: {:?}", out.error);
        assert_eq!(p.stdout(&job), "kept\n");
    }
}
