//! The end-to-end harness: runs the real `orch` binary as separate processes
//! (daemon, agents, CLI commands) in a private temporary directory, speaks
//! to the daemon through `orchestrator-client`, and kills every process it started when the
//! test ends, however it ends. When a test fails, the stderr of every
//! process it started is printed.
//!
//! Every wait polls a condition under a generous deadline: nothing here
//! asserts timing with a fixed sleep, so the tests hold on a loaded machine.

#![allow(dead_code)]

use orchestrator_core::RunId;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

mod http;
mod reads;
mod system;

// Each test binary uses a part of these.
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use reads::*;
#[allow(unused_imports)]
pub use system::*;

/// How long a test waits for anything before it gives up.
pub const LONG: Duration = Duration::from_secs(60);

/// The `orch` binary under test.
pub fn orch_bin() -> &'static str {
    env!("CARGO_BIN_EXE_orch")
}

/// The repository's `examples/` directory.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Polls `f` until it gives a value; panics naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a finished `orch` command printed, and how it exited.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Stdout as JSON; panics with the whole output when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }

    /// Panics with the whole output unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code:\n{self}");
        self
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A long-running process the harness started.
struct Proc {
    label: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

/// Which process, for signals and waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId(usize);

/// A daemon the harness started, and what it wrote to the data directory.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub id: ProcId,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
    pub admin_token: String,
    pub agent_token: String,
}

/// One test's world: a temporary directory holding the data directory and a
/// project directory, and the processes started in it.
pub struct Harness {
    root: tempfile::TempDir,
    /// The `--data-dir` of every command.
    pub data: PathBuf,
    /// The project directory runs work in.
    pub project: PathBuf,
    procs: Vec<Proc>,
    /// Processes that outlive the agent that started them (its commands after
    /// a SIGKILL), as (pid, run id); killed at the end if still that run's.
    strays: Vec<(i32, String)>,
    counter: AtomicUsize,
    /// Variables every `orch` started from now on gets.
    env: Vec<(String, String)>,
}

impl Harness {
    pub fn new() -> Harness {
        remember_failures();
        let root = tempfile::Builder::new()
            .prefix("orch-e2e-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let data = root.path().join("data");
        let project = root.path().join("project");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&project).unwrap();
        // Canonical, as the daemon records the project directory.
        let project = project.canonicalize().unwrap();
        init_repo(&project);
        Harness {
            root,
            data,
            project,
            procs: Vec::new(),
            strays: Vec::new(),
            counter: AtomicUsize::new(0),
            env: Vec::new(),
        }
    }

    /// Where run `run` runs its commands: its git worktree.
    pub fn worktree(&self, run: &str) -> PathBuf {
        self.project.join(".orchestrator/worktrees").join(run)
    }

    /// The temporary directory everything lives in.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Copies `examples/NAME` into the project directory; returns its path there.
    pub fn example(&self, name: &str) -> PathBuf {
        let to = self.project.join(name);
        std::fs::copy(examples().join(name), &to)
            .unwrap_or_else(|e| panic!("cannot copy example {name}: {e}"));
        to
    }

    /// Writes a file into the temporary directory (outside the project); returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.root().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn next(&self) -> usize {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// `orch` with a clean environment: no ORCH_* variable of the caller leaks in.
    fn command(&self) -> Command {
        let mut c = Command::new(orch_bin());
        for (k, _) in std::env::vars_os() {
            // The python that runs llama.cpp is the machine's, not a
            // setting under test.
            if k.to_string_lossy().starts_with("ORCH_") && k != "ORCH_LLAMA_PYTHON" {
                c.env_remove(k);
            }
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c.stdin(Stdio::null()).current_dir(self.root());
        c
    }

    /// Sets `name` for every `orch` started from now on; `None` stops setting it.
    pub fn set_env(&mut self, name: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != name);
        if let Some(v) = value {
            self.env.push((name.to_owned(), v.to_owned()));
        }
    }

    /// Runs `orch --data-dir DATA ARGS` to its end (at most two minutes).
    pub fn orch(&self, args: &[&str]) -> Out {
        self.orch_in(self.root(), true, args)
    }

    /// Runs `orch ARGS` in `cwd`, with `--data-dir DATA` when `data_dir`.
    pub fn orch_in(&self, cwd: &Path, data_dir: bool, args: &[&str]) -> Out {
        let n = self.next();
        let out_path = self.root().join(format!("cmd-{n}.stdout"));
        let err_path = self.root().join(format!("cmd-{n}.stderr"));
        let mut c = self.command();
        c.current_dir(cwd);
        if data_dir {
            c.arg("--data-dir").arg(&self.data);
        }
        c.args(args)
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap());
        let mut child = c.spawn().expect("cannot start orch");
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`orch {}` did not end within two minutes; stderr:\n{}",
                    args.join(" "),
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Out {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    /// Starts `orch --data-dir DATA ARGS` in the background, stderr and
    /// stdout to a log file.
    pub fn spawn(&mut self, label: &str, args: &[&str]) -> ProcId {
        let n = self.next();
        let log = self.root().join(format!("{label}-{n}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = self
            .command()
            .env("ORCH_LOG", "info")
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("cannot start orch");
        self.procs.push(Proc {
            label: format!("{label} (orch {})", args.join(" ")),
            child,
            log,
            exited: None,
        });
        ProcId(self.procs.len() - 1)
    }

    pub fn pid(&self, id: ProcId) -> i32 {
        self.procs[id.0].child.id() as i32
    }

    /// Whether the process has exited; reaps it when it has.
    pub fn exited(&mut self, id: ProcId) -> Option<ExitStatus> {
        let p = &mut self.procs[id.0];
        if p.exited.is_none() {
            p.exited = p.child.try_wait().unwrap();
        }
        p.exited
    }

    pub fn signal(&mut self, id: ProcId, sig: Signal) {
        if self.exited(id).is_none() {
            kill(Pid::from_raw(self.pid(id)), sig).unwrap();
        }
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, id: ProcId, timeout: Duration) -> ExitStatus {
        let label = self.procs[id.0].label.clone();
        wait_for(&format!("{label} to exit"), timeout, || self.exited(id))
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill9(&mut self, id: ProcId) {
        self.signal(id, Signal::SIGKILL);
        self.wait_exit(id, LONG);
    }

    /// The process's output so far.
    pub fn log(&self, id: ProcId) -> String {
        std::fs::read_to_string(&self.procs[id.0].log).unwrap_or_default()
    }

    /// Remembers a process a run's command started, so it is killed at the end.
    pub fn stray(&mut self, pid: i32, run_id: &str) {
        self.strays.push((pid, run_id.to_owned()));
    }

    /// Starts `orch daemon --listen 127.0.0.1:0 EXTRA` and waits until it listens.
    pub fn start_daemon(&mut self, extra: &[&str]) -> Daemon {
        self.start_daemon_on("127.0.0.1:0", extra)
    }

    /// Starts a daemon on `listen` and waits for it to write its endpoint. A
    /// daemon that cannot bind (the port of a daemon just killed) is retried.
    pub fn start_daemon_on(&mut self, listen: &str, extra: &[&str]) -> Daemon {
        let mut args = vec!["daemon", "--listen", listen];
        args.extend_from_slice(extra);
        self.start_server("daemon", &args)
    }

    /// Starts `orch up --listen 127.0.0.1:0 EXTRA` (daemon and local agent).
    pub fn start_up(&mut self, extra: &[&str]) -> Daemon {
        let mut args = vec!["up", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        self.start_server("up", &args)
    }

    /// Starts `orch ARGS` (a daemon or `up`) and waits for it to write its endpoint.
    pub fn start_server(&mut self, label: &str, args: &[&str]) -> Daemon {
        let endpoint = self.data.join("endpoint");
        let deadline = Instant::now() + LONG;
        loop {
            // A daemon killed before writes no endpoint away: remove its file
            // so that the one found below is the new daemon's.
            let _ = std::fs::remove_file(&endpoint);
            let id = self.spawn(label, args);
            let url = loop {
                if let Ok(s) = std::fs::read_to_string(&endpoint) {
                    break Some(s.trim().to_owned());
                }
                if self.exited(id).is_some() {
                    break None;
                }
                if Instant::now() >= deadline {
                    panic!("{label} did not start:\n{}", self.log(id));
                }
                std::thread::sleep(Duration::from_millis(25));
            };
            let Some(url) = url else {
                if Instant::now() >= deadline {
                    panic!("{label} did not start:\n{}", self.log(id));
                }
                std::thread::sleep(Duration::from_millis(250));
                continue;
            };
            let port = url
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("endpoint {url:?} has no port"));
            let token = |name: &str| {
                std::fs::read_to_string(self.data.join(name))
                    .unwrap_or_else(|e| panic!("no {name}: {e}"))
                    .trim()
                    .to_owned()
            };
            return Daemon {
                id,
                port,
                admin_token: token("admin.token"),
                agent_token: token("agent.token"),
                url,
            };
        }
    }

    /// Starts `orch agent --server URL --slots N --name NAME`.
    pub fn start_agent(&mut self, d: &Daemon, name: &str, slots: u32) -> ProcId {
        let slots = slots.to_string();
        self.spawn(
            &format!("agent-{name}"),
            &[
                "agent", "--server", &d.url, "--slots", &slots, "--name", name,
            ],
        )
    }

    /// `orch run FILE --project PROJECT` without waiting; returns the run id.
    pub fn submit(&self, file: &Path) -> String {
        let out = self.orch(&[
            "run",
            file.to_str().unwrap(),
            "--project",
            self.project.to_str().unwrap(),
        ]);
        out.expect_code(0);
        let id = out.stdout.trim().to_owned();
        assert!(!id.is_empty(), "no run id printed:\n{out}");
        id
    }

    /// `orch show RUN -o json`.
    pub fn show(&self, run: &str) -> Value {
        let out = self.orch(&["show", run, "-o", "json"]);
        out.expect_code(0);
        out.json()
    }

    /// `orch ps -o json`.
    pub fn ps(&self) -> Value {
        let out = self.orch(&["ps", "-o", "json"]);
        out.expect_code(0);
        out.json()
    }

    /// Polls the run (over HTTP) until it has ended; returns `orch show -o json` of it.
    pub fn wait_run_end(&self, d: &Daemon, run: &str) -> Value {
        let client = d.admin();
        wait_for(&format!("run {run} to end"), LONG, || {
            match block_on(client.run(&RunId::from(run))) {
                Ok(detail) => detail.run.state.is_terminal().then_some(()),
                // An answer that is not the run (yet): ask again.
                Err(e) if e.status().is_some() => None,
                Err(e) => panic!("run {run}: {e}"),
            }
        });
        self.show(run)
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

/// Whether the process is gone (or a zombie nobody reaped yet).
pub fn process_gone(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if p.exited.is_none() && p.child.try_wait().ok().flatten().is_none() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        for (pid, run) in &self.strays {
            // Only if that pid still runs a command of this run: pids are reused.
            let marker = format!("ORCH_RUN_ID={run}");
            let ours = std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == marker.as_bytes()));
            if ours {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
        if std::thread::panicking() {
            for p in &self.procs {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let mut cut = log.len().saturating_sub(6000);
                while !log.is_char_boundary(cut) {
                    cut += 1;
                }
                eprintln!("===== {} =====\n{}", p.label, &log[cut..]);
            }
            // Said again after the logs, so the failure is the last thing
            // printed and survives when only the output's tail is kept.
            let me = std::thread::current().id();
            let failures = FAILURES.lock().unwrap_or_else(|e| e.into_inner());
            for (_, what) in failures.iter().filter(|(t, _)| *t == me) {
                eprintln!("===== the test failed: {what}");
            }
        }
    }
}

/// Why each failing test thread panicked, as the panic hook saw it.
static FAILURES: Mutex<Vec<(ThreadId, String)>> = Mutex::new(Vec::new());

/// Keeps every panic's message (the default hook still prints it) for the
/// harness to repeat after the processes' logs.
fn remember_failures() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let what = info.to_string();
            FAILURES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((std::thread::current().id(), what));
            default(info);
        }));
    });
}

/// Runs git in `dir`; panics with its output on failure; returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("cannot run git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {out:?}",
        dir.display()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Makes `dir` a git repository with a first commit: a project.
pub fn init_repo(dir: &Path) {
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["config", "user.email", "e2e@example.com"]);
    git(dir, &["config", "user.name", "e2e"]);
    std::fs::write(dir.join("README.md"), "a project\n").unwrap();
    git(dir, &["add", "README.md"]);
    git(dir, &["commit", "-q", "-m", "first commit"]);
}

/// The real SmolLM2 model file `scripts/test` provides (with the Python
/// that runs llama.cpp); panics with how to get them when unset.
pub fn test_model() -> String {
    let var = |name: &str| match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: scripts/test installs the model runtime and sets it \
             (or run `scripts/model-assets.sh` and export the lines it prints)"
        ),
    };
    var("ORCH_LLAMA_PYTHON");
    var("ORCH_TEST_MODEL")
}
