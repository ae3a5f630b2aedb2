//! Limits of namespace steps with real cgroups, real processes and the real
//! kernel: a fork bomb stops at pids.max, a command over its memory limit is
//! killed and reported as such, a timeout reaches processes that left the
//! process group, the command is not its namespace's pid 1, and Landlock
//! refuses writes outside the rules.
//!
//! These tests need a writable cgroup hierarchy with the memory and pids
//! controllers and a kernel with Landlock; where either is missing they fail
//! naming it, never skip.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_agent::exec::{EndReason, GroupChild};
use orchestrator_agent::sandbox::{cgroup, landlock, Limits, SandboxConfig};
use orchestrator_agent::{run_step_with, StepContext};
use orchestrator_core::api::{ClaimedJob, Manifest, SandboxSpec, StepOutcome};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::spec::{CommandSpec, SandboxKind};
use tokio_util::sync::CancellationToken;

mod common;

use common::sandboxed::{bash, require};

const NS: SandboxSpec = SandboxSpec {
    kind: Some(SandboxKind::Namespace),
    network: false,
    image: None,
};

/// The shared sandboxed project, its jobs in a namespace.
struct Project(common::sandboxed::Project);

impl Project {
    fn new() -> Self {
        Project(common::sandboxed::Project::new())
    }

    fn job(&self, commands: Vec<CommandSpec>) -> ClaimedJob {
        self.0.job(NS, commands)
    }

    fn log(&self, job: &ClaimedJob, name: &str) -> String {
        self.0.log(job, name)
    }

    fn manifest(&self, job: &ClaimedJob) -> Manifest {
        self.0.manifest(job)
    }
}

/// Runs `job` on an agent whose commands may have `pids_max` processes.
async fn run(job: &ClaimedJob, pids_max: Option<u64>) -> StepOutcome {
    let ctx = StepContext {
        agent_id: "agent-1".into(),
        sandbox: Arc::new(SandboxConfig {
            pids_max,
            ..SandboxConfig::default()
        }),
        ..StepContext::default()
    };
    run_step_with(job, &ctx, CancellationToken::new()).await
}

fn cgroups() -> &'static cgroup::CgroupRoot {
    match cgroup::probe() {
        Ok(root) => root,
        Err(why) => panic!("these tests need cgroups: {why}"),
    }
}

/// Live (not zombie) processes whose command line holds `marker`.
fn live_with(marker: &str) -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let hit = cmdline
                .windows(marker.len())
                .any(|w| w == marker.as_bytes());
            hit && !fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        })
        .count()
}

async fn none_left(marker: &str) {
    let until = Instant::now() + Duration::from_secs(3);
    while live_with(marker) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(live_with(marker), 0, "processes outlived the step");
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit_and_dies_with_its_timeout() {
    cgroups();
    let p = Project::new();
    let marker = "bomb-5be1";
    // Builtins only after the bomb starts (no process is left to fork):
    // the peak is read with `read`, the pause is a `read -t` on a FIFO.
    let script = format!(
        r#": {marker}
cg=/sys/fs/cgroup/pids$(grep -m1 ':pids:' /proc/self/cgroup | cut -d: -f3)
read -r max < "$cg/pids.max"; echo "max $max"
mkfifo /tmp/pause; exec 9<>/tmp/pause
bomb() {{ bomb | bomb & }}; bomb &
read -t 2 -u 9
read -r peak < "$cg/pids.peak"; echo "peak $peak"
read -t 30 -u 9"#
    );
    let mut job = p.job(vec![bash(&script)]);
    job.spec.timeout_ms = Some(3000);
    let started = Instant::now();
    let out = run(&job, Some(64)).await;
    let stdout = p.log(&job, "cmd-000.stdout.log");
    let stderr = p.log(&job, "cmd-000.stderr.log");
    assert!(!out.success, "{out:?}");
    assert!(
        out.error.as_deref().unwrap_or("").contains("timed out"),
        "{out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(stdout.contains("max 64"), "stdout: {stdout}");
    let peak: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak in stdout: {stdout}\nstderr: {stderr}"));
    assert!(peak <= 64, "pids.peak {peak} is over the limit");
    assert!(
        stderr.contains("Resource temporarily unavailable"),
        "the bomb saw no failed fork: {stderr}"
    );
    none_left(marker).await;
    let limits = p
        .manifest(&job)
        .limits
        .expect("the manifest records limits");
    assert_eq!(limits.pids, Some(64));
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs python3: run scripts/test"
)]
async fn a_command_over_its_memory_limit_is_killed_as_out_of_memory() {
    require("python3", "python3");
    cgroups();
    let p = Project::new();
    let mut job = p.job(vec![bash(
        "python3 -c 'b = b\"x\" * (256 << 20); print(len(b))'; echo after",
    )]);
    job.grant.memory_mb = 64;
    let out = run(&job, None).await;
    assert!(!out.success, "{out:?}");
    assert_eq!(out.error_class, Some(ErrorClass::Infra), "{out:?}");
    let error = out.error.unwrap_or_default();
    assert!(
        error.contains("out of memory") && error.contains("memory limit of 64 MiB"),
        "{error}"
    );
    let stdout = p.log(&job, "cmd-000.stdout.log");
    assert_eq!(stdout.trim(), "after", "python was killed, bash went on");
    let limits = p
        .manifest(&job)
        .limits
        .expect("the manifest records limits");
    assert_eq!(limits.memory_mb, Some(64));
    assert!(limits.cgroup.is_some(), "{limits:?}");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs python3: run scripts/test"
)]
async fn a_command_killed_itself_at_its_memory_limit_is_out_of_memory_too() {
    require("python3", "python3");
    cgroups();
    let p = Project::new();
    let cmd = CommandSpec {
        argv: vec![
            "python3".into(),
            "-c".into(),
            "b = b'x' * (256 << 20)".into(),
        ],
        ..bash("")
    };
    let mut job = p.job(vec![cmd]);
    job.grant.memory_mb = 64;
    let out = run(&job, None).await;
    assert_eq!(out.error_class, Some(ErrorClass::Infra), "{out:?}");
    let error = out.error.unwrap_or_default();
    assert!(
        error.starts_with("out of memory: command 0") && error.contains("64 MiB"),
        "{error}"
    );
    assert_eq!(p.manifest(&job).commands[0].signal, Some(9));
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs python3: run scripts/test"
)]
async fn a_command_under_its_memory_limit_succeeds() {
    require("python3", "python3");
    cgroups();
    let p = Project::new();
    let mut job = p.job(vec![bash(
        "python3 -c 'b = b\"x\" * (16 << 20); print(len(b))'",
    )]);
    job.grant.memory_mb = 64;
    let out = run(&job, None).await;
    assert!(
        out.success,
        "{out:?}\n{}",
        p.log(&job, "cmd-000.stderr.log")
    );
    assert_eq!(p.log(&job, "cmd-000.stdout.log").trim(), "16777216");
}

#[tokio::test]
async fn a_timeout_kills_what_left_the_process_group_through_the_cgroup() {
    // Outside any pid namespace: only the cgroup can find the escapee.
    let root = cgroups();
    let marker = "1234.81";
    let cg = root
        .create(Limits {
            memory_mb: None,
            pids: Some(64),
        })
        .unwrap();
    let fds = cg.join_fds();
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c")
        .arg(format!("setsid sleep {marker} & sleep {marker}"));
    // SAFETY: `join` makes only write(2) calls on descriptors open here.
    unsafe {
        cmd.pre_exec(move || cgroup::join(&fds));
    }
    let child = GroupChild::spawn(&mut cmd).unwrap().with_cgroup(cg);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(live_with(&format!("sleep\0{marker}")), 2, "both sleeps run");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
    let ended = child
        .wait(Some(deadline), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(ended.reason, EndReason::TimedOut);
    assert_eq!(ended.cgroup.map(|c| c.oom_kills), Some(0));
    none_left(marker).await;
}

#[tokio::test]
async fn a_namespace_step_timeout_kills_a_setsid_escapee() {
    cgroups();
    let p = Project::new();
    let marker = "1234.82";
    let mut job = p.job(vec![bash(&format!(
        "setsid sleep {marker} & sleep {marker}"
    ))]);
    job.spec.timeout_ms = Some(500);
    let out = run(&job, None).await;
    assert!(
        out.error.as_deref().unwrap_or("").contains("timed out"),
        "{out:?}"
    );
    none_left(marker).await;
}

#[tokio::test]
async fn the_command_is_pid_2_and_signals_from_inside_reach_it() {
    let p = Project::new();
    let job = p.job(vec![bash("echo $$; kill -USR1 $$")]);
    let out = run(&job, None).await;
    assert_eq!(p.log(&job, "cmd-000.stdout.log").trim(), "2");
    assert_eq!(out.error_class, Some(ErrorClass::Task), "{out:?}");
    assert!(
        out.error
            .unwrap_or_default()
            .contains("killed by signal 10 (SIGUSR1)"),
        "the reaper re-raises the command's signal"
    );
    assert_eq!(p.manifest(&job).commands[0].signal, Some(10));

    let job = p.job(vec![bash("kill -9 $$")]);
    let out = run(&job, None).await;
    assert_eq!(out.error_class, Some(ErrorClass::Infra), "{out:?}");
    let error = out.error.unwrap_or_default();
    assert!(
        error.contains("killed by signal 9 (SIGKILL) from outside the step")
            && error.contains("no out-of-memory kill"),
        "{error}"
    );
    assert_eq!(p.manifest(&job).commands[0].signal, Some(9));
}

#[tokio::test]
async fn init_reaps_orphans_and_exits_with_the_command_status() {
    let p = Project::new();
    // An orphan (its parent exits at once) must not stay a zombie.
    let script = "(sleep 0.2 &); sleep 0.5; \
        ps -o stat= -e 2>/dev/null | grep -c Z || true; exit 3";
    let job = p.job(vec![bash(script)]);
    let out = run(&job, None).await;
    assert_eq!(out.exit_codes, vec![Some(3)], "{out:?}");
    assert_eq!(p.log(&job, "cmd-000.stdout.log").trim(), "0");
}

#[test]
fn landlock_refuses_writes_outside_its_rules() {
    assert!(landlock::abi().is_some(), "this kernel has no Landlock");
    let base = tempfile::tempdir().unwrap();
    let allowed = base.path().join("a");
    let denied = base.path().join("b");
    fs::create_dir(&allowed).unwrap();
    fs::create_dir(&denied).unwrap();
    let rules =
        landlock::Rules::new(vec![CString::new(allowed.as_os_str().as_bytes()).unwrap()]).unwrap();
    // Landlock restricts the calling thread: a thread of its own keeps the
    // test runner's other threads free.
    let (a, b) = std::thread::spawn(move || {
        rules.apply().unwrap();
        let a = fs::write(allowed.join("f"), "ok");
        let b = fs::write(denied.join("f"), "no");
        (a, b)
    })
    .join()
    .unwrap();
    a.unwrap();
    let b = b.unwrap_err();
    assert_eq!(b.raw_os_error(), Some(nix::libc::EACCES), "{b}");
    assert!(!base.path().join("b/f").exists());
}

#[tokio::test]
async fn a_namespace_step_runs_under_landlock_and_says_so() {
    let p = Project::new();
    let job = p.job(vec![bash(
        "echo hi > out.txt && echo t > /tmp/t && cat /tmp/t > /dev/null && git status --short >/dev/null",
    )]);
    let out = run(&job, None).await;
    assert!(
        out.success,
        "{out:?}\n{}",
        p.log(&job, "cmd-000.stderr.log")
    );
    let limits = p
        .manifest(&job)
        .limits
        .expect("the manifest records limits");
    assert!(limits.landlock, "{limits:?}");
    assert_eq!(limits.pids, None);
}
