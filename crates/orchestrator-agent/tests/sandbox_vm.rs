//! The vm sandbox with real QEMU, a real kernel and a real disk image: a
//! step's commands in a VM, their output, exit codes, the disk kept at a
//! checkpoint and rolled back after a failure, no network, and a timeout
//! that kills the VM. Each boot costs seconds under software emulation, so
//! the tests are few and each does much.
//!
//! They need `qemu-system-x86_64`, `qemu-img` and the assets of
//! `scripts/vm-assets.sh` (paths in ORCH_VM_KERNEL, ORCH_VM_INITRD and
//! ORCH_VM_IMAGE, else ~/.cache/orch/vm), so they are in the system tier:
//! `scripts/test` installs and builds them and runs these tests. A missing one
//! fails the test, never skips it. ORCH_VM_ACCEL (auto, kvm,
//! tcg) chooses the accelerator; auto by default.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_agent::sandbox::{Accel, Dirs, Limits, Sandbox, SandboxConfig, VmConfig};
use orchestrator_agent::{run_step_with, CancelReason, StepContext};
use orchestrator_core::api::{ClaimedJob, JobSpec, Manifest, SandboxSpec, StepOutcome};
use orchestrator_core::spec::{CommandSpec, DurationSpec, SandboxKind};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

mod common;

use common::sandboxed::vm_asset;

fn sh(script: &str) -> CommandSpec {
    CommandSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        run: None,
        cwd: None,
        env: BTreeMap::new(),
        timeout: None,
    }
}

const VM: SandboxSpec = SandboxSpec {
    kind: Some(SandboxKind::Vm),
    network: false,
    image: None,
};

fn context() -> StepContext {
    for tool in ["qemu-system-x86_64", "qemu-img"] {
        let found = std::process::Command::new(tool).arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "{tool} is missing: this system-tier test needs qemu-system-x86 (from \
             bookworm-backports) and qemu-utils; scripts/test installs them"
        );
    }
    let accel = std::env::var("ORCH_VM_ACCEL").map_or(Accel::Auto, |a| Accel::parse(&a).unwrap());
    let sandbox = SandboxConfig {
        vm: VmConfig {
            kernel: Some(vm_asset("ORCH_VM_KERNEL", "vmlinux")),
            initrd: Some(vm_asset("ORCH_VM_INITRD", "initrd.img")),
            image: Some(vm_asset("ORCH_VM_IMAGE", "base.qcow2")),
            accel,
            ..VmConfig::default()
        },
        ..SandboxConfig::default()
    };
    StepContext {
        agent_id: "agent-1".into(),
        hostname: None,
        cancel_reason: CancelReason::new(),
        asks: None,
        has_gpus: false,
        sandbox: Arc::new(sandbox),
        daemon_url: None,
    }
}

struct Project {
    dir: TempDir,
    head: String,
}

impl Project {
    fn new() -> Self {
        let (dir, head) = common::repo();
        Project { dir, head }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }

    fn worktree(&self) -> PathBuf {
        self.root().join(".orchestrator/worktrees/run-1")
    }

    fn job(&self, id: i64, step: u32, attempt: u32, commands: Vec<CommandSpec>) -> ClaimedJob {
        ClaimedJob {
            job_id: id.into(),
            lease_id: 7.into(),
            lease_token: "secret".into(),
            queued_at_ms: 0,
            lease_expires_at_ms: 0,
            grant: Default::default(),
            spec: JobSpec {
                run_id: "run-1".into(),
                stage_id: "build".into(),
                step,
                steps_total: 2,
                attempt,
                project_dir: self.dir.path().to_string_lossy().into_owned(),
                commands,
                base_commit: self.head.clone(),
                sandbox: VM,
                ..JobSpec::default()
            },
        }
    }

    fn log(&self, job: &ClaimedJob, name: &str) -> String {
        let bundle = self.root().join(job.spec.bundle_dir(job.job_id));
        fs::read_to_string(bundle.join(name)).unwrap_or_default()
    }

    fn manifest(&self, job: &ClaimedJob) -> Manifest {
        let bundle = self.root().join(job.spec.bundle_dir(job.job_id));
        let text = fs::read_to_string(bundle.join("manifest.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    async fn run(&self, job: &ClaimedJob) -> StepOutcome {
        run_step_with(job, &context(), CancellationToken::new()).await
    }
}

fn ok(p: &Project, job: &ClaimedJob, out: &StepOutcome) {
    assert!(
        out.success,
        "the step failed: {:?}\nstdout: {}\nstderr: {}",
        out.error,
        p.log(job, "cmd-000.stdout.log") + &p.log(job, "cmd-001.stdout.log"),
        p.log(job, "cmd-000.stderr.log") + &p.log(job, "cmd-001.stderr.log")
    );
}

/// Commands in a VM: the worktree is shared, output reaches the logs, the
/// guest runs its own kernel with no network; the disk is kept at the
/// checkpoint, and a failed attempt's writes are rolled back; a failing
/// command's exit code fails the step.
#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs QEMU and the VM assets: run scripts/test"
)]
async fn a_vm_step_shares_the_worktree_keeps_its_disk_and_rolls_back() {
    let p = Project::new();
    let host_kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let wt = p.worktree();
    let first = p.job(
        1,
        0,
        1,
        vec![
            sh("echo from-the-vm > made-in-vm.txt && echo a > /disk-a && cat /orch-base"),
            sh("echo second; uname -r; echo to-stderr >&2; ls /sys/class/net; ip route; pwd"),
        ],
    );
    let started = Instant::now();
    let out = p.run(&first).await;
    let elapsed = started.elapsed();
    ok(&p, &first, &out);
    let manifest = p.manifest(&first);
    assert_eq!(manifest.sandbox, SandboxKind::Vm);
    let limits = manifest
        .limits
        .as_ref()
        .expect("the manifest records the VM's memory");
    assert_eq!(limits.memory_mb, Some(256));
    for c in &manifest.commands {
        println!(
            "vm command {:?}: {} ms (boot included)",
            c.argv[2], c.duration_ms
        );
    }
    println!("vm step of 2 commands: {} ms", elapsed.as_millis());
    assert_eq!(
        fs::read_to_string(wt.join("made-in-vm.txt")).unwrap(),
        "from-the-vm\n"
    );
    let base = p.log(&first, "cmd-000.stdout.log");
    assert!(
        base.contains("the base image of orch's vm sandbox"),
        "{base}"
    );
    let stdout = p.log(&first, "cmd-001.stdout.log");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "second", "{stdout}");
    assert_ne!(
        lines[1],
        host_kernel.trim(),
        "the guest runs its own kernel"
    );
    assert_eq!(p.log(&first, "cmd-001.stderr.log"), "to-stderr\n");
    // Without network: only loopback, and no route.
    assert_eq!(lines[2], "lo", "{stdout}");
    assert_eq!(
        lines[3],
        wt.to_str().unwrap(),
        "the cwd is the worktree's path: {stdout}"
    );
    assert!(out.checkpoint.is_some(), "{out:?}");

    // Attempt 1 of step 1 writes `b` on the disk and fails with code 3.
    let failing = p.job(
        2,
        1,
        1,
        vec![sh("test -f /disk-a || exit 9; echo b > /disk-b; exit 3")],
    );
    let out = p.run(&failing).await;
    assert!(!out.success);
    assert_eq!(out.exit_codes, vec![Some(3)], "{:?}", out.error);
    assert!(
        out.error.as_deref().unwrap().contains("exited with code 3"),
        "{:?}",
        out.error
    );

    // Attempt 2 sees the checkpoint's `a`, not the failed attempt's `b`.
    let retry = p.job(
        3,
        1,
        2,
        vec![sh("cat /disk-a; test -e /disk-b && echo b-survived; true")],
    );
    let out = p.run(&retry).await;
    ok(&p, &retry, &out);
    assert_eq!(p.log(&retry, "cmd-000.stdout.log"), "a\n");
}

/// Whether any process's command line names `needle`.
fn process_naming(needle: &Path) -> Option<String> {
    let needle = needle.to_str().unwrap();
    fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        text.contains(needle).then_some(text)
    })
}

/// A command's timeout kills its VM: no QEMU is left.
#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs QEMU and the VM assets: run scripts/test"
)]
async fn a_timeout_kills_the_vm() {
    let p = Project::new();
    let mut cmd = sh("echo started; sleep 600");
    cmd.timeout = Some(DurationSpec(15_000));
    let job = p.job(1, 0, 1, vec![cmd]);
    let started = Instant::now();
    let out = p.run(&job).await;
    assert!(!out.success);
    assert!(out.timed_out, "{:?}", out.error);
    assert!(p.manifest(&job).commands[0].timed_out, "{:?}", out.error);
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        process_naming(&p.root()),
        None,
        "a process outlived the VM's timeout"
    );
}

/// With `network: true` the guest has a network device and a default route
/// (QEMU's user-mode NAT).
#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs QEMU and the VM assets: run scripts/test"
)]
async fn network_true_gives_the_vm_a_nic() {
    let p = Project::new();
    let mut job = p.job(1, 0, 1, vec![sh("ls /sys/class/net; ip route")]);
    job.spec.sandbox.network = true;
    let out = p.run(&job).await;
    ok(&p, &job, &out);
    let stdout = p.log(&job, "cmd-000.stdout.log");
    assert!(stdout.lines().any(|l| l == "eth0"), "{stdout}");
    assert!(stdout.contains("default via 10.0.2.2"), "{stdout}");
}

/// An agent without the VM's files refuses a vm step, naming the flag.
#[test]
fn a_missing_kernel_names_its_flag() {
    let cfg = SandboxConfig::default();
    let err = Sandbox::new(&VM, &cfg, Dirs::default(), Limits::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("--vm-kernel is not set"), "{text}");
    assert!(text.contains("sandbox: vm is not available"), "{text}");
}

/// An agent whose QEMU is missing refuses a vm step, naming `--qemu`.
#[test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs QEMU and the VM assets: run scripts/test"
)]
fn a_missing_qemu_names_its_flag() {
    let mut cfg = context().sandbox.as_ref().clone();
    cfg.vm.qemu = PathBuf::from("/nonexistent/qemu-system-x86_64");
    let err = Sandbox::new(&VM, &cfg, Dirs::default(), Limits::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("--qemu /nonexistent/qemu-system-x86_64: no such program"),
        "{text}"
    );
}

/// Root in the guest reaches the control share (init's root, through
/// /proc/1/root, outside the chroot), but what it plants there
/// (symlinks to host files in place of its output) reaches no log; a VM that
/// ends without a status fails the step with code 125.
#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs QEMU and the VM assets: run scripts/test"
)]
async fn the_guest_cannot_read_host_files_through_the_control_share() {
    let p = Project::new();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().canonicalize().unwrap().join("secret");
    fs::write(&secret, "host-secret\n").unwrap();
    let s = secret.to_str().unwrap();
    let job = p.job(
        1,
        0,
        1,
        vec![sh(&format!(
            "c=/proc/1/root/ctl; for f in stdout stderr status qemu.log console.log; \
             do rm -f $c/$f; ln -s {s} $c/$f; done; sync; poweroff -f"
        ))],
    );
    let out = p.run(&job).await;
    assert!(!out.success);
    assert_eq!(out.exit_codes, vec![Some(125)], "{:?}", out.error);
    let logs = p.log(&job, "cmd-000.stdout.log") + &p.log(&job, "cmd-000.stderr.log");
    assert!(!logs.contains("host-secret"), "{logs}");
    assert!(logs.contains("without the command's exit status"), "{logs}");
    let planted = p.root().join(".orchestrator/vm/run-1/build/ctl/status");
    assert!(
        fs::symlink_metadata(&planted).is_ok_and(|m| m.file_type().is_symlink()),
        "the guest did not plant its symlinks (so this test proved nothing): {logs}"
    );
}

/// Inside the guest the worktree's `.git` points at the step's own git
/// directory (shared writable), as in every other sandbox; the guest's
/// disk has no git, so the pointer and the directory are what is checked.
#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs QEMU and the VM assets: run scripts/test"
)]
async fn the_guests_worktree_git_file_points_at_the_steps_own_git() {
    let p = Project::new();
    let own = p.root().join(".orchestrator/git/run-1/build");
    let job = p.job(
        1,
        0,
        1,
        vec![sh(&format!(
            "cat .git && cat {}/HEAD && echo mine > {}/written-by-the-guest",
            own.display(),
            own.display()
        ))],
    );
    let out = p.run(&job).await;
    ok(&p, &job, &out);
    let stdout = p.log(&job, "cmd-000.stdout.log");
    assert_eq!(
        stdout,
        format!(
            "gitdir: {}\nref: refs/heads/orch/run/run-1\n",
            own.display()
        )
    );
    assert!(own.join("written-by-the-guest").is_file());
    // Outside, the worktree's `.git` is still the project's entry.
    let host = fs::read_to_string(p.worktree().join(".git")).unwrap();
    assert!(host.contains(".git/worktrees/"), "{host}");
}
