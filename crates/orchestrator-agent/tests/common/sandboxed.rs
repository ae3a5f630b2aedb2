//! Steps run in a sandbox, for the tests of each backend: a project with
//! the run's worktree, a private directory outside it, and the checks an
//! escape test makes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_agent::ask::AskBox;
use orchestrator_agent::exec::GroupChild;
use orchestrator_agent::sandbox::{Dirs, Sandbox};
use orchestrator_agent::{run_step_with, SandboxConfig, StepContext};
use orchestrator_core::api::{ApiKey, ClaimedJob, JobSpec, Manifest, SandboxSpec, StepOutcome};
use orchestrator_core::spec::{CommandSpec, SandboxKind};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub fn sh(script: &str) -> CommandSpec {
    CommandSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        run: None,
        cwd: None,
        env: BTreeMap::new(),
        timeout: None,
    }
}

pub fn bash(script: &str) -> CommandSpec {
    CommandSpec {
        argv: vec!["bash".into(), "-c".into(), script.into()],
        ..sh("")
    }
}

pub fn spec(kind: SandboxKind) -> SandboxSpec {
    SandboxSpec {
        kind: Some(kind),
        network: false,
        image: None,
    }
}

/// A busybox root file system: every applet linked in /bin, an
/// /etc/os-release of its own.
pub fn busybox_rootfs(root: &Path) {
    require("runc", "runc");
    require("busybox", "busybox-static");
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox is missing: this system-tier test needs the Debian package \
         busybox-static; scripts/test installs it"
    );
    for d in ["bin", "etc", "proc", "dev", "sys", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    fs::write(
        root.join("etc/os-release"),
        "ID=orch-test\nNAME=\"orch test image\"\n",
    )
    .unwrap();
}

/// The asset `var` names, or its default in the cache; fails when absent.
pub fn vm_asset(var: &str, file: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/orch/vm")
            .join(file)
    });
    assert!(
        path.is_file(),
        "{} is missing ({var}): this system-tier test needs the vm sandbox's assets; \
         scripts/test builds them (scripts/vm-assets.sh) and sets {var}",
        path.display()
    );
    path
}

/// Fails, naming the package and how to get it, when `program` is not on
/// PATH: a system-tier test never skips what it cannot run.
/// The backends a test that holds for every sandbox runs under: the
/// `namespace` sandbox, built in, in every tier; with the system tier also
/// `others` (each checked installed through `require`, `(program, package)`).
pub fn backends(others: &[(SandboxKind, &str, &str)]) -> Vec<SandboxSpec> {
    let mut out = vec![spec(SandboxKind::Namespace)];
    if cfg!(feature = "system-tests") {
        for (kind, program, package) in others {
            require(program, package);
            out.push(spec(*kind));
        }
    }
    out
}

pub fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()));
    assert!(
        found,
        "{program} is not installed: this system-tier test needs the Debian package {package}; \
         scripts/test installs it"
    );
}

/// A git repository with the run's worktree, a private directory outside
/// the project that no step should reach, and the agent's sandbox settings.
pub struct Project {
    dir: TempDir,
    head: String,
    outside: TempDir,
    pub cfg: SandboxConfig,
}

impl Project {
    pub fn new() -> Self {
        let (dir, head) = super::repo();
        orchestrator_host::git::ensure_worktree(
            &dir.path().canonicalize().unwrap(),
            &"run-1".into(),
            &head,
        )
        .unwrap();
        Project {
            dir,
            head,
            outside: tempfile::tempdir().unwrap(),
            cfg: SandboxConfig::default(),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }

    pub fn worktree(&self) -> PathBuf {
        self.root().join(".orchestrator/worktrees/run-1")
    }

    pub fn outside(&self) -> PathBuf {
        self.outside.path().canonicalize().unwrap()
    }

    pub fn dirs(&self) -> Dirs {
        Dirs {
            writable: vec![self.worktree()],
            readable: vec![self.root().join(".git")],
            hidden: vec![self.root().join(".orchestrator")],
            project: Some(self.root()),
            gateway: None,
            covers: Vec::new(),
        }
    }

    pub fn job(&self, sandbox: SandboxSpec, commands: Vec<CommandSpec>) -> ClaimedJob {
        ClaimedJob {
            job_id: 42.into(),
            lease_id: 7.into(),
            lease_token: "secret".into(),
            queued_at_ms: 0,
            lease_expires_at_ms: 0,
            grant: Default::default(),
            spec: JobSpec {
                run_id: "run-1".into(),
                stage_id: "build".into(),
                step: 0,
                steps_total: 1,
                attempt: 1,
                project_dir: self.dir.path().to_string_lossy().into_owned(),
                commands,
                base_commit: self.head.clone(),
                sandbox,
                ..JobSpec::default()
            },
        }
    }

    pub fn bundle(&self, job: &ClaimedJob) -> PathBuf {
        self.root().join(job.spec.bundle_dir(job.job_id))
    }

    pub fn log(&self, job: &ClaimedJob, name: &str) -> String {
        fs::read_to_string(self.bundle(job).join(name)).unwrap_or_default()
    }

    pub fn stdout(&self, job: &ClaimedJob) -> String {
        self.log(job, "cmd-000.stdout.log")
    }

    pub fn manifest(&self, job: &ClaimedJob) -> Manifest {
        let text = fs::read_to_string(self.bundle(job).join("manifest.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Runs `job` on an agent with this project's sandbox settings.
    pub async fn run_job(&self, job: &ClaimedJob, cancel: CancellationToken) -> StepOutcome {
        let ctx = StepContext {
            agent_id: "agent-1".into(),
            sandbox: Arc::new(self.cfg.clone()),
            ..StepContext::default()
        };
        run_step_with(job, &ctx, cancel).await
    }

    /// Runs one step of `cmd` under `sandbox`.
    pub async fn run(&self, sandbox: SandboxSpec, cmd: CommandSpec) -> (ClaimedJob, StepOutcome) {
        let job = self.job(sandbox, vec![cmd]);
        let out = self.run_job(&job, CancellationToken::new()).await;
        (job, out)
    }
}

/// The step succeeded.
pub fn assert_ok(p: &Project, job: &ClaimedJob, out: &StepOutcome) {
    assert!(
        out.success,
        "the step failed: {:?}\nstderr: {}",
        out.error,
        p.log(job, "cmd-000.stderr.log")
    );
}

/// The step's command ran and failed (not the sandbox's setup: a wrapper
/// that fails to set up exits non-zero too, with its own message).
pub fn assert_denied(p: &Project, job: &ClaimedJob, out: &StepOutcome) {
    assert!(!out.success, "the escape succeeded: {out:?}");
    let error = out.error.as_deref().unwrap_or("");
    let stderr = p.log(job, "cmd-000.stderr.log");
    assert!(
        error.contains("exited with code"),
        "the command did not run (sandbox setup failed?): {error}\nstderr: {stderr}"
    );
    assert!(
        !stderr.starts_with("bwrap:") && !stderr.contains("level=error"),
        "the sandbox's wrapper failed, not the command: {stderr}"
    );
}

/// Live processes whose command line is `sleep <secs>`.
pub fn sleepers(secs: &str) -> usize {
    let wanted = format!("sleep\0{secs}\0");
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted.as_bytes())
                && !fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
        })
        .count()
}

/// Waits up to `within` for the `sleep <secs>` processes to be gone.
pub async fn assert_no_sleepers(secs: &str, within: Duration) {
    let until = Instant::now() + within;
    while sleepers(secs) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sleepers(secs), 0, "processes outlived the step");
}

/// A step whose command backgrounds `sleep <secs>` twice and times out
/// after 500 ms: it must fail as timed out, soon, with nothing left.
pub async fn timeout_kills_the_tree(p: &Project, sandbox: SandboxSpec, secs: &str) {
    let mut job = p.job(
        sandbox,
        vec![sh(&format!(
            "sleep {secs} & (sleep {secs} &) ; sleep {secs}"
        ))],
    );
    job.spec.timeout_ms = Some(500);
    let started = Instant::now();
    let out = p.run_job(&job, CancellationToken::new()).await;
    let error = out.error.as_deref().unwrap_or("");
    assert!(!out.success && error.contains("timed out"), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_no_sleepers(secs, Duration::from_secs(5)).await;
}

/// The same step, cancelled after 300 ms instead: it must fail as
/// cancelled, soon, with nothing left.
pub async fn cancel_kills_the_tree(p: &Project, sandbox: SandboxSpec, secs: &str) {
    let job = p.job(
        sandbox,
        vec![sh(&format!(
            "sleep {secs} & (sleep {secs} &) ; sleep {secs}"
        ))],
    );
    let cancel = CancellationToken::new();
    let later = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        later.cancel();
    });
    let started = Instant::now();
    let out = p.run_job(&job, cancel).await;
    let error = out.error.as_deref().unwrap_or("");
    assert!(!out.success && error.contains("step cancelled"), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_no_sleepers(secs, Duration::from_secs(5)).await;
}

/// Spawns `/bin/true` `n` times under `sandbox` in `dir`; the mean cost of
/// one.
pub async fn spawn_cost(sandbox: &Sandbox, dir: &Path, n: u32) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        let mut cmd = tokio::process::Command::new("/bin/true");
        cmd.current_dir(dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        let child: GroupChild = sandbox.spawn(&mut cmd).unwrap();
        let ended = child.wait(None, &CancellationToken::new()).await.unwrap();
        assert!(ended.status.success());
    }
    started.elapsed() / n
}

/// Where the relay sends the gateway's requests: a port where nothing
/// listens, so that a relayed request is told apart from one answered by
/// the agent itself.
pub const NO_DAEMON: &str = "http://127.0.0.1:9";

/// An agent's context whose step socket relays the gateway (to
/// [`NO_DAEMON`]); the socket lives until the token is cancelled.
pub async fn relaying(p: &Project) -> (StepContext, CancellationToken, tempfile::TempDir) {
    let stop = CancellationToken::new();
    let sockets = tempfile::tempdir().unwrap();
    let asks = AskBox::start(stop.clone(), &sockets.path().join("orch"), Some(NO_DAEMON))
        .await
        .unwrap();
    assert!(asks.relays_gateway());
    let ctx = StepContext {
        agent_id: "agent-1".into(),
        sandbox: Arc::new(p.cfg.clone()),
        asks: Some(asks),
        daemon_url: Some(NO_DAEMON.into()),
        ..StepContext::default()
    };
    (ctx, stop, sockets)
}

/// A job of `commands` under `kind`, with a key to the model gateway.
pub fn keyed(p: &Project, kind: SandboxKind, commands: Vec<CommandSpec>) -> ClaimedJob {
    let mut job = p.job(spec(kind), commands);
    job.spec.api_key = Some(ApiKey("orch-job-42-00".into()));
    job
}

/// A project whose agent runs `sandbox`: a busybox image and a work
/// directory for containers, the VM assets for the vm (the directories
/// live as long as the project).
pub fn project(sandbox: &SandboxSpec) -> (Project, Vec<TempDir>) {
    let mut p = Project::new();
    let mut keep = Vec::new();
    match sandbox.kind {
        Some(SandboxKind::Container) => {
            let image = tempfile::tempdir().unwrap();
            let rootfs = image.path().canonicalize().unwrap().join("rootfs");
            busybox_rootfs(&rootfs);
            let work = tempfile::tempdir().unwrap();
            p.cfg.container_image = Some(rootfs);
            p.cfg.work_dir = Some(work.path().to_owned());
            keep.extend([image, work]);
        }
        Some(SandboxKind::Vm) => {
            require("qemu-system-x86_64", "qemu-system-x86");
            p.cfg.vm.kernel = Some(vm_asset("ORCH_VM_KERNEL", "vmlinux"));
            p.cfg.vm.initrd = Some(vm_asset("ORCH_VM_INITRD", "initrd.img"));
            p.cfg.vm.image = Some(vm_asset("ORCH_VM_IMAGE", "base.qcow2"));
        }
        _ => {}
    }
    (p, keep)
}
