//! The sandboxes with real processes: each escape attempt from a
//! `sandbox: namespace` step is its own test, and the same step under
//! `process` is shown to behave as before (the attempt succeeds there).
//!
//! These tests need user namespaces; a kernel that refuses them makes them
//! fail with the setup error, never skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orchestrator_agent::exec::GroupChild;
use orchestrator_agent::sandbox::{cgroup, landlock, Dirs, Limits, Sandbox, SandboxConfig};
use orchestrator_core::api::SandboxSpec;
use orchestrator_core::spec::{CommandSpec, SandboxKind};
use tokio_util::sync::CancellationToken;

mod common;

use common::sandboxed::{
    assert_denied, assert_ok, bash, cancel_kills_the_tree, sh, spawn_cost, timeout_kills_the_tree,
    Project,
};

const NS: SandboxSpec = SandboxSpec {
    kind: Some(SandboxKind::Namespace),
    network: false,
    image: None,
};
const PROCESS: SandboxSpec = SandboxSpec {
    kind: Some(SandboxKind::Process),
    network: false,
    image: None,
};

#[tokio::test]
async fn namespace_step_writes_its_worktree_and_bundle_and_is_recorded() {
    let p = Project::new();
    let (job, out) = p
        .run(
            NS,
            sh("echo made > made.txt && echo kept > \"$ORCH_BUNDLE_DIR/kept.txt\""),
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
    assert_eq!(p.manifest(&job).sandbox, SandboxKind::Namespace);
    let (job, out) = p.run(PROCESS, sh("true")).await;
    assert_ok(&p, &job, &out);
    assert_eq!(p.manifest(&job).sandbox, SandboxKind::Process);
}

#[tokio::test]
async fn namespace_step_reads_its_repository_with_git_but_cannot_write_it() {
    let p = Project::new();
    let (job, out) = p.run(NS, sh("git log --format=%s -1")).await;
    assert_ok(&p, &job, &out);
    assert_eq!(p.log(&job, "cmd-000.stdout.log"), "first\n");
    // A tag in the step's own git stays there.
    let (job, out) = p.run(NS, sh("git tag mine && git rev-parse mine")).await;
    assert_ok(&p, &job, &out);
    let (job, out) = p
        .run(
            NS,
            sh(&format!(
                "git --git-dir={}/.git tag escaped",
                p.root().display()
            )),
        )
        .await;
    assert_denied(&p, &job, &out);
    assert!(common::git(&p.root(), &["tag", "--list"]).is_empty());
}

#[tokio::test]
async fn namespace_step_cannot_write_the_root_file_system() {
    let p = Project::new();
    let target = PathBuf::from(format!("/etc/orch-sandbox-{}", std::process::id()));
    let (job, out) = p.run(NS, sh(&format!("touch {}", target.display()))).await;
    assert_denied(&p, &job, &out);
    assert!(!target.exists(), "{} was written", target.display());
}

#[tokio::test]
async fn namespace_step_cannot_unmount_or_remount_its_way_out() {
    let p = Project::new();
    let secret = p.outside().join("secret.txt");
    fs::write(&secret, "s3cr3t\n").unwrap();
    let target = PathBuf::from(format!("/etc/orch-sandbox-remount-{}", std::process::id()));
    let script = format!(
        "umount -l /tmp; umount -l /proc; mount -o remount,bind,rw /; \
         cat {}; touch {}",
        secret.display(),
        target.display()
    );
    let (job, out) = p.run(NS, sh(&script)).await;
    assert_denied(&p, &job, &out);
    assert!(!target.exists(), "{} was written", target.display());
    assert!(!p.log(&job, "cmd-000.stdout.log").contains("s3cr3t"));
}

#[tokio::test]
async fn namespace_step_cannot_write_outside_its_worktree() {
    let p = Project::new();
    let target = p.outside().join("x");
    let script = format!("touch {}", target.display());
    let (job, out) = p.run(NS, sh(&script)).await;
    assert_denied(&p, &job, &out);
    assert!(!target.exists());
    let (job, out) = p.run(PROCESS, sh(&script)).await;
    assert_ok(&p, &job, &out);
    assert!(target.exists());
}

#[tokio::test]
async fn namespace_step_cannot_write_the_project_outside_its_worktree() {
    let p = Project::new();
    let target = p.root().join("README.md");
    // The project lies under the hidden /tmp here: the write lands in the
    // sandbox's private tmpfs (or fails), never in the host's file.
    let (_, out) = p
        .run(NS, sh(&format!("echo changed > {}", target.display())))
        .await;
    assert!(
        out.error
            .as_deref()
            .is_none_or(|e| e.contains("exited with code")),
        "{out:?}"
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "hello\n");
}

#[tokio::test]
async fn namespace_step_cannot_read_a_private_file_outside_its_worktree() {
    let p = Project::new();
    let secret = p.outside().join("secret.txt");
    fs::write(&secret, "s3cr3t\n").unwrap();
    let script = format!("cat {}", secret.display());
    let (job, out) = p.run(NS, sh(&script)).await;
    assert_denied(&p, &job, &out);
    assert!(!p.log(&job, "cmd-000.stdout.log").contains("s3cr3t"));
    let (job, out) = p.run(PROCESS, sh(&script)).await;
    assert_ok(&p, &job, &out);
    assert_eq!(p.log(&job, "cmd-000.stdout.log"), "s3cr3t\n");
}

#[tokio::test]
async fn namespace_step_cannot_follow_a_symlink_out_of_its_worktree() {
    let p = Project::new();
    std::os::unix::fs::symlink(p.outside(), p.worktree().join("out")).unwrap();
    let target = p.outside().join("f");
    let (job, out) = p.run(NS, sh("echo escaped > out/f")).await;
    assert_denied(&p, &job, &out);
    assert!(!target.exists());
    let (job, out) = p.run(PROCESS, sh("echo escaped > out/f")).await;
    assert_ok(&p, &job, &out);
    assert_eq!(fs::read_to_string(&target).unwrap(), "escaped\n");
}

#[tokio::test]
async fn namespace_step_cannot_connect_to_the_network_unless_allowed() {
    let p = Project::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
    let (job, out) = p.run(NS, bash(&script)).await;
    assert_denied(&p, &job, &out);
    let (job, out) = p.run(PROCESS, bash(&script)).await;
    assert_ok(&p, &job, &out);
    let allowed = SandboxSpec {
        network: true,
        ..NS.clone()
    };
    let (job, out) = p.run(allowed, bash(&script)).await;
    assert_ok(&p, &job, &out);
}

#[tokio::test]
async fn namespace_step_sees_its_own_pids_only() {
    let p = Project::new();
    let script = "echo $$; ls /proc | grep '^[0-9]*$' | sort -n | tr '\\n' ' '";
    let (job, out) = p.run(NS, sh(script)).await;
    assert_ok(&p, &job, &out);
    let stdout = p.log(&job, "cmd-000.stdout.log");
    let lines: Vec<&str> = stdout.lines().collect();
    // Pid 1 is the sandbox's init; the command is its first child.
    assert_eq!(lines.first(), Some(&"2"), "{stdout}");
    let pids: Vec<u32> = lines[1]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    // Init, the shell, and the pipeline's four processes.
    assert_eq!(pids[..2], [1, 2], "{stdout}");
    assert!(
        pids.len() <= 6 && pids.iter().all(|&p| p <= 6),
        "processes outside the sandbox are visible: {pids:?}"
    );
    let (job, out) = p.run(PROCESS, sh(script)).await;
    assert_ok(&p, &job, &out);
    assert_ne!(p.log(&job, "cmd-000.stdout.log").lines().next(), Some("2"));
}

/// Live processes whose command line is `sleep <secs>`.
#[tokio::test]
async fn namespace_step_is_killed_with_its_whole_tree_on_timeout() {
    timeout_kills_the_tree(&Project::new(), NS, "1234.5").await;
}

#[tokio::test]
async fn process_step_is_killed_with_its_group_on_timeout() {
    timeout_kills_the_tree(&Project::new(), PROCESS, "1234.6").await;
}

#[tokio::test]
async fn cancelling_a_namespace_step_kills_its_whole_tree() {
    cancel_kills_the_tree(&Project::new(), NS, "1234.7").await;
}

#[tokio::test]
async fn a_missing_program_is_still_the_workflow_fault_in_a_namespace() {
    let p = Project::new();
    let cmd = CommandSpec {
        argv: vec!["/no/such/program".into()],
        ..sh("")
    };
    let (_, out) = p.run(NS, cmd).await;
    assert!(!out.success);
    let error = out.error.unwrap_or_default();
    assert!(error.contains("not found"), "{error}");
}

/// Spawns `/bin/true` `n` times without isolation but each in a fresh
/// cgroup of its own (made, joined, emptied and removed); the mean cost.
async fn cgroup_spawn_cost(dir: &Path, n: u32) -> Duration {
    let root = cgroup::probe().expect("cgroups are available");
    let started = Instant::now();
    for _ in 0..n {
        let cg = root
            .create(Limits {
                memory_mb: Some(512),
                pids: Some(64),
            })
            .unwrap();
        let fds = cg.join_fds();
        let mut cmd = tokio::process::Command::new("/bin/true");
        cmd.current_dir(dir);
        // SAFETY: `join` makes only write(2) calls on descriptors open here.
        unsafe {
            cmd.pre_exec(move || cgroup::join(&fds));
        }
        let child = GroupChild::spawn(&mut cmd).unwrap().with_cgroup(cg);
        let ended = child.wait(None, &CancellationToken::new()).await.unwrap();
        assert!(ended.status.success());
        assert!(ended.cgroup.is_some());
    }
    started.elapsed() / n
}

/// The cost of a command under each sandbox (`cargo test -p
/// orchestrator-agent --test sandbox -- --nocapture cost` prints it). The
/// namespace sandbox makes a cgroup per command where the machine allows
/// (see the manifest's `limits`); `process + cgroup` shows that part alone.
#[tokio::test]
async fn per_command_cost_of_each_sandbox() {
    let p = Project::new();
    let dirs = Dirs {
        writable: vec![p.worktree()],
        readable: vec![p.root().join(".git")],
        hidden: vec![p.root().join(".orchestrator")],
        project: None,
        gateway: None,
        covers: Vec::new(),
    };
    let limits = Limits {
        memory_mb: Some(512),
        pids: Some(64),
    };
    let ns = Sandbox::new(&NS, &SandboxConfig::default(), dirs, limits).unwrap();
    let n = 30;
    let process = spawn_cost(&Sandbox::Process, &p.worktree(), n).await;
    let with_cgroup = cgroup_spawn_cost(&p.worktree(), n).await;
    let namespace = spawn_cost(&ns, &p.worktree(), n).await;
    println!(
        "per command (mean of {n}): process {process:?}, process + cgroup {with_cgroup:?}, namespace (with cgroup: {}, landlock: {}) {namespace:?}",
        cgroup::probe().is_ok(),
        landlock::abi().is_some()
    );
}

#[tokio::test]
async fn the_agents_own_binary_is_there_to_call_inside_a_namespace() {
    // Wherever the agent runs from (a home's ~/.cargo/bin, a build directory
    // under /tmp), `orch ask` must be callable inside; here the agent is this
    // test binary.
    let exe = std::env::current_exe().unwrap();
    let p = Project::new();
    let cmd = orchestrator_core::spec::CommandSpec {
        argv: vec!["test".into(), "-x".into(), exe.to_string_lossy().into()],
        ..sh("")
    };
    let (job, out) = p.run(NS, cmd).await;
    assert_ok(&p, &job, &out);
}

/// A private directory the agent was given relative to its own working
/// directory (`orch up --data-dir data`) is hidden all the same, and the
/// step runs.
#[tokio::test]
async fn a_private_directory_given_relative_is_hidden_and_the_step_runs() {
    let mut p = Project::new();
    let here = std::env::current_dir().unwrap();
    let private = tempfile::tempdir_in(&here).unwrap();
    fs::write(private.path().join("admin.token"), "secret").unwrap();
    let relative = private.path().strip_prefix(&here).unwrap().to_owned();
    assert!(relative.is_relative());
    p.cfg.private = vec![relative];
    let shown = private.path().canonicalize().unwrap();
    let (job, out) = p
        .run(NS, sh(&format!("ls -A {}; echo listed", shown.display())))
        .await;
    assert_ok(&p, &job, &out);
    assert_eq!(p.log(&job, "cmd-000.stdout.log"), "listed\n");
}
