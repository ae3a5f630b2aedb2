//! The container backend with real processes: runc runs each command in a
//! container whose root file system is a tiny busybox image built here.
//! They need runc and a static busybox (Debian packages runc and
//! busybox-static), so they are in the system tier: `scripts/test` installs
//! both and runs them; without them they fail.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use orchestrator_agent::run_step_with;
use orchestrator_agent::sandbox::{Limits, Sandbox, GATEWAY_PORT};
use orchestrator_core::api::SandboxSpec;
use orchestrator_core::spec::SandboxKind;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

mod common;

use common::sandboxed::{
    assert_denied, assert_ok, busybox_rootfs, cancel_kills_the_tree, keyed, relaying, sh, sleepers,
    spawn_cost, spec, Project, NO_DAEMON,
};

fn container() -> SandboxSpec {
    spec(SandboxKind::Container)
}

/// A project whose agent runs containers from a fresh busybox image, with
/// its own work directory.
struct Fixture {
    p: Project,
    _image: TempDir,
    rootfs: PathBuf,
    work: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let image = tempfile::tempdir().unwrap();
        let rootfs = image.path().canonicalize().unwrap().join("rootfs");
        busybox_rootfs(&rootfs);
        let work = tempfile::tempdir().unwrap();
        let mut p = Project::new();
        p.cfg.container_image = Some(rootfs.clone());
        p.cfg.work_dir = Some(work.path().to_owned());
        Fixture {
            p,
            _image: image,
            rootfs,
            work,
        }
    }

    /// Entries of a directory under the work directory.
    fn entries(&self, sub: &str) -> Vec<String> {
        fs::read_dir(self.work.path().join(sub))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until every command's bundle and runc state are gone.
    async fn assert_cleaned_up(&self) {
        let until = Instant::now() + Duration::from_secs(5);
        while (!self.entries("bundles").is_empty() || !self.entries("runc").is_empty())
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            self.entries("bundles"),
            Vec::<String>::new(),
            "bundles left"
        );
        assert_eq!(
            self.entries("runc"),
            Vec::<String>::new(),
            "runc state left"
        );
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn container_step_sees_the_images_userland_and_writes_its_worktree() {
    let f = Fixture::new();
    let (job, out) = f
        .p
        .run(
            container(),
            sh("cat /etc/os-release && echo made > made.txt && echo kept > \"$ORCH_BUNDLE_DIR/kept.txt\" && pwd"),
        )
        .await;
    assert_ok(&f.p, &job, &out);
    let stdout = f.p.stdout(&job);
    assert!(stdout.contains("ID=orch-test"), "{stdout}");
    assert!(
        stdout.ends_with(&format!("{}\n", f.p.worktree().display())),
        "{stdout}"
    );
    assert_eq!(
        fs::read_to_string(f.p.worktree().join("made.txt")).unwrap(),
        "made\n"
    );
    assert_eq!(
        fs::read_to_string(f.p.bundle(&job).join("kept.txt")).unwrap(),
        "kept\n"
    );
    assert_eq!(f.p.manifest(&job).sandbox, SandboxKind::Container);
    f.assert_cleaned_up().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn container_step_cannot_write_its_root_file_system() {
    let f = Fixture::new();
    let (job, out) = f.p.run(container(), sh("touch /etc/escaped")).await;
    assert_denied(&f.p, &job, &out);
    assert!(!f.rootfs.join("etc/escaped").exists());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn container_step_cannot_read_the_hosts_files() {
    let f = Fixture::new();
    let secret = f.p.outside().join("secret.txt");
    fs::write(&secret, "s3cr3t\n").unwrap();
    let (job, out) =
        f.p.run(container(), sh(&format!("cat {}", secret.display())))
            .await;
    assert_denied(&f.p, &job, &out);
    assert!(!f.p.stdout(&job).contains("s3cr3t"));
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn container_step_exit_codes_come_back() {
    let f = Fixture::new();
    let (_, out) = f.p.run(container(), sh("exit 7")).await;
    let error = out.error.as_deref().unwrap_or("");
    assert!(error.contains("exited with code 7"), "{out:?}");
    let (job, out) = f.p.run(container(), sh("true")).await;
    assert_ok(&f.p, &job, &out);
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn container_step_has_no_network_unless_allowed() {
    let f = Fixture::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and hang up at once, so a connected nc ends.
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let script = format!("echo hi | nc -w 2 127.0.0.1 {port}");
    let (job, out) = f.p.run(container(), sh(&script)).await;
    assert_denied(&f.p, &job, &out);
    let allowed = SandboxSpec {
        network: true,
        ..container()
    };
    let (job, out) = f.p.run(allowed, sh(&script)).await;
    assert_ok(&f.p, &job, &out);
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn container_step_is_killed_with_everything_in_it_on_timeout() {
    let f = Fixture::new();
    let secs = "3456.5";
    let mut job = f.p.job(
        container(),
        vec![sh(&format!(
            "sleep {secs} & (sleep {secs} &) ; sleep {secs}"
        ))],
    );
    job.spec.timeout_ms = Some(1500);
    let started = Instant::now();
    let step = f.p.run_job(&job, CancellationToken::new());
    let watch = async {
        // The sleepers must be visible from the host while the step runs,
        // or the check after it would prove nothing.
        let mut seen = 0;
        while started.elapsed() < Duration::from_millis(1400) {
            seen = seen.max(sleepers(secs));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    };
    let (out, seen) = tokio::join!(step, watch);
    assert_eq!(seen, 3, "the container's sleeps were not seen running");
    let error = out.error.as_deref().unwrap_or("");
    assert!(!out.success && error.contains("timed out"), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let until = Instant::now() + Duration::from_secs(5);
    while sleepers(secs) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sleepers(secs), 0, "processes outlived the step");
    f.assert_cleaned_up().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn cancelling_a_container_step_kills_everything_in_it() {
    let f = Fixture::new();
    cancel_kills_the_tree(&f.p, container(), "3456.6").await;
    f.assert_cleaned_up().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn a_tarball_image_is_extracted_once_and_works_the_same() {
    let f = Fixture::new();
    let tarball = f.p.root().join("image.tar.gz");
    let tar = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&f.rootfs)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    let from_tarball = SandboxSpec {
        image: Some("image.tar.gz".into()),
        ..container()
    };
    let (job, out) =
        f.p.run(from_tarball.clone(), sh("cat /etc/os-release"))
            .await;
    assert_ok(&f.p, &job, &out);
    assert!(f.p.stdout(&job).contains("ID=orch-test"));
    let images = f.entries("images");
    assert_eq!(images.len(), 1, "{images:?}");
    let extracted = f.work.path().join("images").join(&images[0]);
    let first = fs::metadata(&extracted).unwrap();
    let (job, out) = f.p.run(from_tarball, sh("echo again > again.txt")).await;
    assert_ok(&f.p, &job, &out);
    assert_eq!(f.entries("images"), images);
    let second = fs::metadata(&extracted).unwrap();
    assert_eq!(
        (first.ino(), first.ctime(), first.ctime_nsec()),
        (second.ino(), second.ctime(), second.ctime_nsec()),
        "the image was extracted again"
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn a_bad_image_path_names_the_image_and_what_was_expected() {
    let f = Fixture::new();
    fs::write(f.p.root().join("notes.txt"), "not an image\n").unwrap();
    for (image, expected) in [
        ("no/such/rootfs.tar", "No such file"),
        ("notes.txt", "neither a directory nor a file ending in .tar"),
    ] {
        let bad = SandboxSpec {
            image: Some(image.into()),
            ..container()
        };
        let (_, out) = f.p.run(bad, sh("true")).await;
        let error = out.error.as_deref().unwrap_or("");
        assert!(
            !out.success && error.contains(&format!("image {image:?}")) && error.contains(expected),
            "{error}"
        );
        assert!(
            error.contains("expected a root file system directory"),
            "{error}"
        );
    }
}

/// Soft and hard limit of `name` in a /proc/<pid>/limits text.
fn limit(text: &str, name: &str) -> (u64, u64) {
    let line = text
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {text}"));
    let fields: Vec<u64> = line[name.len()..]
        .split_whitespace()
        .take(2)
        .map(|v| {
            if v == "unlimited" {
                u64::MAX
            } else {
                v.parse().unwrap()
            }
        })
        .collect();
    (fields[0], fields[1])
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn container_rlimits_stay_within_the_agents_hard_limits() {
    let f = Fixture::new();
    let (job, out) = f.p.run(container(), sh("cat /proc/self/limits")).await;
    assert_ok(&f.p, &job, &out);
    let inside = f.p.stdout(&job);
    let host = fs::read_to_string("/proc/self/limits").unwrap();
    for name in ["Max open files", "Max processes"] {
        let (soft, hard) = limit(&inside, name);
        let (_, host_hard) = limit(&host, name);
        assert!(
            soft <= hard && hard <= host_hard,
            "{name}: {soft} {hard} > {host_hard}"
        );
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn container_memory_and_pids_limits_are_in_its_cgroup() {
    let mut f = Fixture::new();
    f.p.cfg.pids_max = Some(123);
    let mut job = f.p.job(
        container(),
        vec![sh(
            "cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory/memory.limit_in_bytes",
        )],
    );
    job.grant.memory_mb = 200;
    let out = f.p.run_job(&job, CancellationToken::new()).await;
    assert_ok(&f.p, &job, &out);
    let stdout = f.p.stdout(&job);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["123", &(200u64 * 1024 * 1024).to_string()],
        "{stdout}"
    );
    let limits = f.p.manifest(&job).limits.unwrap();
    assert_eq!((limits.memory_mb, limits.pids), (Some(200), Some(123)));
}

/// The cost of a command in a container (`cargo test -p orchestrator-agent
/// --test sandbox_container -- --nocapture cost` prints it).
#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn per_command_cost_of_a_container() {
    let f = Fixture::new();
    let sandbox = Sandbox::new(&container(), &f.p.cfg, f.p.dirs(), Limits::default()).unwrap();
    let n = 10;
    let process = spawn_cost(&Sandbox::Process, &f.p.worktree(), n).await;
    let cost = spawn_cost(&sandbox, &f.p.worktree(), n).await;
    println!("per command (mean of {n}): process {process:?}, container {cost:?}");
    f.assert_cleaned_up().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn dropping_a_running_container_command_removes_the_container() {
    let f = Fixture::new();
    let secs = "3456.7";
    let sandbox = Sandbox::new(&container(), &f.p.cfg, f.p.dirs(), Limits::default()).unwrap();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args(["-c", &format!("sleep {secs} & sleep {secs}")])
        .current_dir(f.p.worktree())
        .env_clear()
        .env("PATH", "/bin");
    let child = sandbox.spawn(&mut cmd).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while sleepers(secs) < 2 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sleepers(secs), 2, "the container's sleeps did not start");
    // The agent tearing the step down: runc gets SIGKILL, nothing else.
    drop(child);
    let until = Instant::now() + Duration::from_secs(5);
    while sleepers(secs) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sleepers(secs), 0, "the container outlived its runc");
    f.assert_cleaned_up().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn what_a_dead_agent_left_is_swept_away() {
    let f = Fixture::new();
    let secs = "3456.9";
    // A pid that surely runs no more: a child that exited.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let id = format!("orch-{dead}-0");
    let bundle = f.work.path().join("bundles").join(&id);
    fs::create_dir_all(&bundle).unwrap();
    let spec = Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .status()
        .unwrap();
    assert!(spec.success());
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    config["root"]["path"] = f.rootfs.to_string_lossy().into_owned().into();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["sleep", secs]);
    fs::write(bundle.join("config.json"), config.to_string()).unwrap();
    let state = f.work.path().join("runc");
    let started = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["run", "--detach", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(started.success());
    // Whatever this test's outcome, the container goes.
    let _guard = Deleted(state.clone(), id.clone());
    let until = Instant::now() + Duration::from_secs(5);
    while sleepers(secs) == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sleepers(secs), 1, "the left-over container is not running");
    let half = f.work.path().join(format!("images/.extracting-{dead}-0"));
    fs::create_dir_all(half.join("bin")).unwrap();
    // The next step's sandbox sweeps, in the background.
    Sandbox::new(&container(), &f.p.cfg, f.p.dirs(), Limits::default()).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while (sleepers(secs) > 0 || half.exists()) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sleepers(secs), 0, "the left-over container still runs");
    assert!(!half.exists(), "the half-extracted image is still there");
    f.assert_cleaned_up().await;
}

/// Deletes container `.1` of runc state `.0` when dropped.
struct Deleted(PathBuf, String);

impl Drop for Deleted {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&self.0)
            .args(["delete", "--force", &self.1])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Without network, a container reaches the model gateway's port on its
/// own loopback, relayed by the agent (here to an address where no daemon
/// listens, so the relay's answer is what comes back), and still nothing
/// else.
#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs runc and busybox-static: run scripts/test"
)]
async fn container_step_without_network_reaches_the_gateway_port_and_nothing_else() {
    let f = Fixture::new();
    let (ctx, stop, _sockets) = relaying(&f.p).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // nc's input stays open a while: a client that half-closes before its
    // answer comes is hung up on by the HTTP server, relayed or not.
    let script = format!(
        "echo \"$OPENAI_BASE_URL\"; (printf 'GET /v1/models HTTP/1.0\\r\\n\\r\\n'; sleep 1) | nc -w 5 127.0.0.1 {GATEWAY_PORT}; echo; \
         if echo hi | nc -w 2 127.0.0.1 {port}; then echo reached; else echo unreachable; fi"
    );
    let job = keyed(&f.p, SandboxKind::Container, vec![sh(&script)]);
    let out = run_step_with(&job, &ctx, CancellationToken::new()).await;
    assert_ok(&f.p, &job, &out);
    let printed = f.p.stdout(&job);
    assert!(
        printed.starts_with(&format!("http://127.0.0.1:{GATEWAY_PORT}/v1\n")),
        "{printed}"
    );
    assert!(printed.contains(" 502 Bad Gateway"), "{printed}");
    assert!(printed.contains(&format!("{NO_DAEMON}/v1")), "{printed}");
    assert!(printed.trim_end().ends_with("unreachable"), "{printed}");
    drop(listener);
    stop.cancel();
    f.assert_cleaned_up().await;
}
