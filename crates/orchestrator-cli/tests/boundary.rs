//! The sandbox as a boundary, attacked through the real binaries: a step
//! that swaps its logs for links to host files, a step that hunts for the
//! orchestrator's tokens wherever its data directories live, and a step
//! whose agent is SIGKILLed while it runs.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{http, jobs_of, process_gone, sandboxes, wait_for, Harness, LONG};

/// A host file holding `SECRET-OF-THE-HOST`, outside every project.
fn host_secret(h: &Harness) -> PathBuf {
    let path = h.root().join("host-secret.txt");
    std::fs::write(&path, "SECRET-OF-THE-HOST\n").unwrap();
    path
}

#[test]
fn a_log_a_step_swapped_for_a_link_is_never_served() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let secret = host_secret(&h);
    let file = h.write(
        "swap.yaml",
        &format!(
            r#"name: swap
stages:
  - id: swap
    steps:
      - commands:
          - argv: [sh, -c, 'echo honest; ln -sf {s} "$ORCH_BUNDLE_DIR/cmd-000.stdout.log"; ln -s {s} "$ORCH_BUNDLE_DIR/cmd-001.stdout.log"; ln -s {s} "$ORCH_BUNDLE_DIR/cmd-000.stderr.log.x"; touch swapped; while [ ! -e go ]; do sleep 0.05; done']
"#,
            s = secret.display()
        ),
    );
    let run = h.submit(&file);
    let worktree = h.worktree(&run);
    wait_for("the step to swap its logs", LONG, || {
        worktree.join("swapped").exists().then_some(())
    });
    let detail = common::run_detail(&d, &run);
    let job = jobs_of(&detail, "swap")[0]["id"].as_i64().unwrap();
    // While it runs: the API refuses the links, it never reads through them.
    for cmd in [0, 1] {
        let r = http(
            &d,
            "GET",
            &format!("/v1/runs/{run}/jobs/{job}/logs?cmd={cmd}"),
            Some(&d.admin_token),
            None,
        );
        assert!(
            !r.text().contains("SECRET-OF-THE-HOST"),
            "cmd {cmd}: {}",
            r.text()
        );
        assert_eq!(r.status, 422, "cmd {cmd}: {}", r.text());
        assert!(r.text().contains("not a regular file"), "{}", r.text());
    }
    let logs = h.orch(&["logs", &run]);
    assert!(!logs.stdout.contains("SECRET-OF-THE-HOST"), "{logs}");
    std::fs::write(worktree.join("go"), "").unwrap();
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    // Afterwards the agent's own log is back at its name.
    let logs = h.orch(&["logs", &run]);
    logs.expect_code(0);
    assert!(!logs.stdout.contains("SECRET-OF-THE-HOST"), "{logs}");
    assert!(logs.stdout.contains("honest"), "{logs}");
    let r = http(
        &d,
        "GET",
        &format!("/v1/runs/{run}/jobs/{job}/logs?cmd=0"),
        Some(&d.admin_token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["text"], "honest\n");
}

/// Removes a directory made outside the harness's temporary one.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_step_finds_no_token_wherever_the_data_directory_lives() {
    let unique = format!("orch-e2e-{}", std::process::id());
    let places = [
        ("/var/lib", "namespace"),
        ("/srv", "namespace"),
        ("/opt", "namespace"),
        ("/var/lib", "bubblewrap"),
        ("/srv", "bubblewrap"),
    ];
    let kept = sandboxes(&["namespace", "bubblewrap"]);
    for (parent, sandbox) in places.into_iter().filter(|(_, s)| kept.contains(s)) {
        let mut h = Harness::new();
        let data = Path::new(parent).join(&unique).join("data");
        let _cleanup = Cleanup(Path::new(parent).join(&unique));
        std::fs::create_dir_all(&data).unwrap();
        h.data = data.clone();
        let d = h.start_daemon(&[]);
        h.start_agent(&d, "worker", 1);
        let names = [
            "admin.token",
            "agent.token",
            "dashboard.secret",
            "job-keys.secret",
        ];
        let by_path: String = names
            .iter()
            .map(|n| format!("cat {}/{n}; ", data.display()))
            .collect();
        let file = h.write(
            "hunt.yaml",
            &format!(
                r#"name: hunt
stages:
  - id: hunt
    sandbox: {sandbox}
    steps:
      - commands:
          - argv: [sh, -c, '{by_path} ls -la {parent} {parent}/{unique} {data}; find / -xdev \( -name "*.token" -o -name "*.secret" \) 2>/dev/null | sed "s/^/FOUND /"; true']
"#,
                data = data.display()
            ),
        );
        let run = h.submit(&file);
        let detail = h.wait_run_end(&d, &run);
        assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
        let logs = h.orch(&["logs", &run]);
        logs.expect_code(0);
        for name in names {
            let value = std::fs::read_to_string(data.join(name)).unwrap();
            assert!(
                !logs.stdout.contains(value.trim()),
                "{parent} ({sandbox}): the step read {name}:\n{logs}"
            );
            assert!(
                !logs
                    .stdout
                    .contains(&format!("FOUND {}/{name}", data.display())),
                "{parent} ({sandbox}): the step found {name}:\n{logs}"
            );
        }
    }
}

const SLEEPS: &str = r#"
name: sleeps
stages:
  - id: nap
    sandbox: SANDBOX
    steps:
      - commands:
          - argv: [sh, -c, 'sleep 3600 & echo $! > bg.tmp; mv bg.tmp bg; ls /proc > /dev/null; wait']
"#;

/// The cgroup directories (v1 hierarchies) the agent made for process
/// `pid`'s command: `.../orch-<agent pid>/cmd-<n>`.
fn command_cgroups(pid: i32) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            (path.contains("/orch-") && !controllers.is_empty()).then(|| {
                Path::new("/sys/fs/cgroup")
                    .join(controllers)
                    .join(path.trim_start_matches('/'))
            })
        })
        .collect()
}

/// The pid, as the host numbers it, of the step's `sleep 3600`.
fn host_pid_of_sleep(run: &str) -> Option<i32> {
    let wanted = b"sleep\x003600\x00";
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let mine = env
            .split(|&b| b == 0)
            .any(|v| v == format!("ORCH_RUN_ID={run}").as_bytes());
        (cmdline == wanted && mine && !process_gone(pid)).then_some(pid)
    })
}

/// The agent's watchdog: its child with its own command line.
fn watchdog_of(agent: i32) -> Option<i32> {
    let cmdline = std::fs::read(format!("/proc/{agent}/cmdline")).ok()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let ppid: i32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == agent && std::fs::read(e.path().join("cmdline")).ok()? == cmdline).then_some(pid)
    })
}

#[test]
fn a_sigkilled_agents_step_dies_with_it_or_when_it_starts_again() {
    for sandbox in sandboxes(&["namespace", "bubblewrap", "process"]) {
        let mut h = Harness::new();
        let d = h.start_daemon(&["--lease-ttl-ms", "3000", "--heartbeat-ms", "300"]);
        let a = h.start_agent(&d, "doomed", 1);
        let file = h.write("sleeps.yaml", &SLEEPS.replace("SANDBOX", sandbox));
        let run = h.submit(&file);
        let worktree = h.worktree(&run);
        wait_for("the step to start its sleep", LONG, || {
            worktree.join("bg").exists().then_some(())
        });
        let pid = wait_for("the sleep's host pid", LONG, || host_pid_of_sleep(&run));
        h.stray(pid, &run);
        let cgroups = command_cgroups(pid);
        if sandbox == "namespace" {
            assert!(
                !cgroups.is_empty(),
                "the namespace step has no cgroup of its own"
            );
        }
        // The step, background children included, dies with its agent.
        h.kill9(a);
        wait_for(
            &format!("the {sandbox} step to die with its agent"),
            Duration::from_secs(10),
            || process_gone(pid).then_some(()),
        );

        // When even the agent's watchdog is killed first, the agent started
        // again kills what was left before it claims.
        std::fs::remove_file(worktree.join("bg")).unwrap();
        let b = h.start_agent(&d, "doomed", 1);
        wait_for("the retry to start its sleep", LONG, || {
            worktree.join("bg").exists().then_some(())
        });
        let pid = wait_for("the retry's host pid", LONG, || host_pid_of_sleep(&run));
        h.stray(pid, &run);
        let watchdog = watchdog_of(h.pid(b)).expect("the agent has a watchdog");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(watchdog),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        h.kill9(b);
        h.start_agent(&d, "doomed", 1);
        wait_for(
            &format!("the {sandbox} step's sleep to be killed by the agent started again"),
            Duration::from_secs(20),
            || process_gone(pid).then_some(()),
        );
        // The dead agents' cgroups are emptied and removed too.
        wait_for(
            "the dead agent's command cgroups to be removed",
            Duration::from_secs(20),
            || cgroups.iter().all(|c| !c.exists()).then_some(()),
        );
        // The retry cannot end (it sleeps too): the run is cancelled.
        h.orch(&["cancel", &run]).expect_code(0);
    }
}

#[test]
fn a_daemon_stopped_past_the_lease_time_loses_no_running_step() {
    let mut h = Harness::new();
    let d = h.start_daemon(&["--lease-ttl-ms", "2000", "--heartbeat-ms", "200"]);
    h.start_agent(&d, "healthy", 1);
    let file = h.write(
        "long.yaml",
        "name: long\nstages:\n  - id: work\n    steps:\n      - commands:\n          - argv: [sh, -c, 'touch started; while [ ! -e go ]; do sleep 0.05; done; echo done']\n",
    );
    let run = h.submit(&file);
    let worktree = h.worktree(&run);
    wait_for("the step to start", LONG, || {
        worktree.join("started").exists().then_some(())
    });
    // Frozen for three lease times, as a laptop's suspend or `kill -STOP`.
    h.signal(d.id, nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(6));
    h.signal(d.id, nix::sys::signal::Signal::SIGCONT);
    // The healthy agent's lease stands: the step goes on and ends.
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(worktree.join("go"), "").unwrap();
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let jobs = jobs_of(&detail, "work");
    assert_eq!(jobs.len(), 1, "the step ran again: {detail:#}");
    assert_eq!(jobs[0]["attempt"], 1, "{detail:#}");
    assert_eq!(jobs[0]["state"], "succeeded", "{detail:#}");
}

#[test]
fn a_committed_policy_linked_to_dev_zero_is_refused_at_once() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    let orch_dir = h.project.join(".orchestrator");
    std::fs::create_dir_all(&orch_dir).unwrap();
    std::os::unix::fs::symlink("/dev/zero", orch_dir.join("policy.yaml")).unwrap();
    let file = h.write(
        "hello.yaml",
        "name: hello\nstages:\n  - id: a\n    steps:\n      - commands:\n          - argv: [true]\n",
    );
    let submit_refused = || {
        let project = h.project.to_str().unwrap();
        let out = h.orch(&["run", file.to_str().unwrap(), "--project", project]);
        assert_ne!(out.code, 0, "{out}");
        out
    };
    let out = submit_refused();
    assert!(out.stderr.contains("policy.yaml"), "{out}");
    assert!(out.stderr.contains("expected a regular file"), "{out}");
    // A FIFO, and a file past the limit, are refused the same way.
    std::fs::remove_file(orch_dir.join("policy.yaml")).unwrap();
    nix::unistd::mkfifo(
        &orch_dir.join("policy.yaml"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let out = submit_refused();
    assert!(
        out.stderr.contains("a FIFO; expected a regular file"),
        "{out}"
    );
    std::fs::remove_file(orch_dir.join("policy.yaml")).unwrap();
    std::fs::write(orch_dir.join("policy.yaml"), vec![b'#'; 2 << 20]).unwrap();
    let out = submit_refused();
    assert!(
        out.stderr.contains("expected at most 1048576 bytes"),
        "{out}"
    );
    // The daemon is unharmed: with the policy gone, the run goes through.
    std::fs::remove_file(orch_dir.join("policy.yaml")).unwrap();
    h.start_agent(&d, "worker", 1);
    let run = h.submit(&file);
    assert_eq!(h.wait_run_end(&d, &run)["run"]["state"], "succeeded");
    // A workflow file given on the command line must be a regular file too.
    let out = h.orch(&["validate", "/dev/zero"]);
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr.contains("a device; expected a regular file"),
        "{out}"
    );
}

#[test]
fn a_step_cannot_read_the_daemons_secrets_file_wherever_it_lives() {
    let dir = Path::new("/srv").join(format!("orch-e2e-secrets-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    std::fs::create_dir_all(&dir).unwrap();
    let secrets = dir.join("secrets.env");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&secrets)
            .unwrap();
        std::io::Write::write_all(&mut f, b"DEPLOY_KEY=topsecretvalue42\n").unwrap();
    }
    let mut h = Harness::new();
    let d = h.start_daemon(&["--secrets-file", secrets.to_str().unwrap()]);
    h.start_agent(&d, "worker", 1);
    for sandbox in sandboxes(&["namespace", "bubblewrap"]) {
        let file = h.write(
            "peek.yaml",
            &format!(
                "name: peek\nstages:\n  - id: peek\n    sandbox: {sandbox}\n    steps:\n      - commands:\n          - argv: [sh, -c, 'cat {} ; ls {}; echo END']\n",
                secrets.display(),
                dir.display()
            ),
        );
        let run = h.submit(&file);
        let detail = h.wait_run_end(&d, &run);
        assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
        let logs = h.orch(&["logs", &run]);
        assert!(logs.stdout.contains("END"), "{logs}");
        assert!(
            !logs.stdout.contains("topsecretvalue42"),
            "{sandbox}: the step read the secrets file:\n{logs}"
        );
    }
}

#[test]
fn an_agent_starting_beside_a_live_one_leaves_its_steps_alone() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "first", 1);
    let file = h.write("sleeps.yaml", &SLEEPS.replace("SANDBOX", "process"));
    let run = h.submit(&file);
    let pid = wait_for("the sleep's host pid", LONG, || host_pid_of_sleep(&run));
    h.stray(pid, &run);
    // A second agent on the same data directory sweeps only what dead
    // agents left.
    h.start_agent(&d, "second", 1);
    wait_for("the second agent to register", LONG, || {
        let agents = common::admin_get(&d, "/v1/agents");
        agents
            .as_array()?
            .iter()
            .any(|a| a["name"] == "second")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !process_gone(pid),
        "the second agent killed the first one's step"
    );
    h.orch(&["cancel", &run]).expect_code(0);
}
