//! The bubblewrap backend with real processes: each escape attempt from a
//! `sandbox: bubblewrap` step is its own test. They need `bwrap` (Debian
//! package bubblewrap), so they are in the system tier: `scripts/test`
//! installs it and runs them; without it they fail.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use orchestrator_agent::sandbox::{Limits, Sandbox, SandboxConfig, SandboxError};
use orchestrator_core::api::SandboxSpec;
use orchestrator_core::spec::SandboxKind;

mod common;

use common::sandboxed::{
    assert_denied, assert_ok, bash, cancel_kills_the_tree, require, sh, spawn_cost, spec,
    timeout_kills_the_tree, Project,
};

fn bwrap() -> SandboxSpec {
    require("bwrap", "bubblewrap");
    spec(SandboxKind::Bubblewrap)
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap: run scripts/test"
)]
async fn bubblewrap_step_writes_its_worktree_and_bundle_and_is_recorded() {
    let p = Project::new();
    let (job, out) = p
        .run(
            bwrap(),
            sh("echo made > made.txt && echo kept > \"$ORCH_BUNDLE_DIR/kept.txt\" && pwd"),
        )
        .await;
    assert_ok(&p, &job, &out);
    assert_eq!(
        fs::read_to_string(p.worktree().join("made.txt")).unwrap(),
        "made\n"
    );
    assert_eq!(
        fs::read_to_string(p.bundle(&job).join("kept.txt")).unwrap(),
        "kept\n"
    );
    assert_eq!(p.stdout(&job).trim(), p.worktree().to_string_lossy());
    assert_eq!(p.manifest(&job).sandbox, SandboxKind::Bubblewrap);
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap: run scripts/test"
)]
async fn bubblewrap_step_reads_its_repository_with_git_but_cannot_write_it() {
    let p = Project::new();
    let (job, out) = p.run(bwrap(), sh("git log --format=%s -1")).await;
    assert_ok(&p, &job, &out);
    assert_eq!(p.stdout(&job), "first\n");
    // A tag in the step's own git stays there.
    let (job, out) = p
        .run(bwrap(), sh("git tag mine && git rev-parse mine"))
        .await;
    assert_ok(&p, &job, &out);
    let escape = format!("git --git-dir={}/.git tag escaped", p.root().display());
    let (job, out) = p.run(bwrap(), sh(&escape)).await;
    assert_denied(&p, &job, &out);
    assert!(common::git(&p.root(), &["tag", "--list"]).is_empty());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap: run scripts/test"
)]
async fn bubblewrap_step_cannot_write_the_root_file_system() {
    let p = Project::new();
    let target = PathBuf::from(format!("/etc/orch-bwrap-{}", std::process::id()));
    let (job, out) = p
        .run(bwrap(), sh(&format!("touch {}", target.display())))
        .await;
    assert_denied(&p, &job, &out);
    assert!(!target.exists(), "{} was written", target.display());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap: run scripts/test"
)]
async fn bubblewrap_step_cannot_write_outside_its_worktree() {
    let p = Project::new();
    let target = p.outside().join("x");
    let (job, out) = p
        .run(bwrap(), sh(&format!("touch {}", target.display())))
        .await;
    assert_denied(&p, &job, &out);
    assert!(!target.exists());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap: run scripts/test"
)]
async fn bubblewrap_step_cannot_read_a_private_file_outside_its_worktree() {
    let p = Project::new();
    let secret = p.outside().join("secret.txt");
    fs::write(&secret, "s3cr3t\n").unwrap();
    let (job, out) = p
        .run(bwrap(), sh(&format!("cat {}", secret.display())))
        .await;
    assert_denied(&p, &job, &out);
    assert!(!p.stdout(&job).contains("s3cr3t"));
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap: run scripts/test"
)]
async fn bubblewrap_step_cannot_read_another_runs_files() {
    let p = Project::new();
    let other = p.root().join(".orchestrator/worktrees/run-2");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("secret.txt"), "s3cr3t\n").unwrap();
    let (job, out) = p.run(bwrap(), sh("cat ../run-2/secret.txt")).await;
    assert_denied(&p, &job, &out);
    assert!(!p.stdout(&job).contains("s3cr3t"));
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap: run scripts/test"
)]
async fn bubblewrap_step_cannot_follow_a_symlink_out_of_its_worktree() {
    let p = Project::new();
    std::os::unix::fs::symlink(p.outside(), p.worktree().join("out")).unwrap();
    let (job, out) = p.run(bwrap(), sh("echo escaped > out/f")).await;
    assert_denied(&p, &job, &out);
    assert!(!p.outside().join("f").exists());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap: run scripts/test"
)]
async fn bubblewrap_step_cannot_connect_to_the_network_unless_allowed() {
    let p = Project::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
    let (job, out) = p.run(bwrap(), bash(&script)).await;
    assert_denied(&p, &job, &out);
    let allowed = SandboxSpec {
        network: true,
        ..bwrap()
    };
    let (job, out) = p.run(allowed, bash(&script)).await;
    assert_ok(&p, &job, &out);
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap: run scripts/test"
)]
async fn bubblewrap_step_sees_its_own_pids_only() {
    let p = Project::new();
    let (job, out) = p.run(bwrap(), sh("ls /proc | grep -c '^[0-9]'")).await;
    assert_ok(&p, &job, &out);
    let visible: u32 = p.stdout(&job).trim().parse().unwrap();
    assert!(visible <= 4, "{visible} processes visible in /proc");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap: run scripts/test"
)]
async fn bubblewrap_step_is_killed_with_its_whole_tree_on_timeout() {
    let p = Project::new();
    timeout_kills_the_tree(&p, bwrap(), "2345.5").await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap: run scripts/test"
)]
async fn cancelling_a_bubblewrap_step_kills_its_whole_tree() {
    let p = Project::new();
    cancel_kills_the_tree(&p, bwrap(), "2345.7").await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap: run scripts/test"
)]
async fn exit_codes_come_back_through_bwrap() {
    let p = Project::new();
    let (_, out) = p.run(bwrap(), sh("exit 7")).await;
    assert!(
        out.error
            .as_deref()
            .unwrap_or("")
            .contains("exited with code 7"),
        "{out:?}"
    );
}

#[test]
fn a_missing_bwrap_says_how_to_get_one() {
    let cfg = SandboxConfig {
        bwrap: Some("/no/such/bwrap".into()),
        ..SandboxConfig::default()
    };
    let p = Project::new();
    let err = Sandbox::new(
        &spec(SandboxKind::Bubblewrap),
        &cfg,
        p.dirs(),
        Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, SandboxError::Unavailable { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("/no/such/bwrap") && msg.contains("install bubblewrap"),
        "{msg}"
    );
}

/// The cost of a command under bubblewrap (`cargo test -p
/// orchestrator-agent --test sandbox_bwrap -- --nocapture cost` prints it).
#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap: run scripts/test"
)]
async fn per_command_cost_of_bubblewrap() {
    let p = Project::new();
    let cfg = SandboxConfig::default();
    let sandbox = Sandbox::new(&bwrap(), &cfg, p.dirs(), Limits::default()).unwrap();
    let n = 30;
    let process = spawn_cost(&Sandbox::Process, &p.worktree(), n).await;
    let cost = spawn_cost(&sandbox, &p.worktree(), n).await;
    println!("per command (mean of {n}): process {process:?}, bubblewrap {cost:?}");
    assert!(cost < Duration::from_secs(1));
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap and python3: run scripts/test"
)]
async fn a_bubblewrap_command_over_its_memory_limit_is_killed_as_out_of_memory() {
    require("python3", "python3");
    let p = Project::new();
    let mut job = p.job(
        bwrap(),
        vec![bash(
            "python3 -c 'b = b\"x\" * (256 << 20); print(len(b))'; echo after",
        )],
    );
    job.grant.memory_mb = 64;
    let out = p
        .run_job(&job, tokio_util::sync::CancellationToken::new())
        .await;
    assert!(!out.success, "{out:?}");
    assert_eq!(
        out.error_class,
        Some(orchestrator_core::error::ErrorClass::Infra),
        "{out:?}"
    );
    let error = out.error.unwrap_or_default();
    assert!(
        error.contains("out of memory") && error.contains("memory limit of 64 MiB"),
        "{error}"
    );
    let limits = p
        .manifest(&job)
        .limits
        .expect("the manifest records limits");
    assert_eq!(limits.memory_mb, Some(64));
    assert!(!limits.landlock, "bubblewrap applies no Landlock rules");
}
