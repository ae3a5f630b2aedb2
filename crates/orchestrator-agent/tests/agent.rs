//! `run_agent` against a small hand-rolled HTTP/1.1 stub of the daemon (no
//! web framework): claim, run, complete, heartbeats, revocation, shutdown,
//! re-registration after a daemon restart, and a refused token.

use orchestrator_core::JobId;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orchestrator_agent::{run_agent, AgentConfig, AgentError, ClientError};
use orchestrator_core::api::{
    AgentRegistered, ClaimRequest, ClaimedJob, CompleteRequest, Completed, HeartbeatRequest,
    HeartbeatResponse, JobSpec, RegisterAgent,
};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::sched::Gpu;
use orchestrator_core::spec::CommandSpec;
use orchestrator_core::{RunState, StageState};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod common;

const TOKEN: &str = "tok";

#[derive(Default)]
struct State {
    /// Prefix of the agent ids this daemon hands out.
    prefix: String,
    registrations: u32,
    /// What each registration said.
    registered: Vec<RegisterAgent>,
    /// The agent id the daemon knows, if any.
    known_agent: Option<String>,
    jobs: VecDeque<ClaimedJob>,
    revoke_next: Vec<JobId>,
    heartbeats: Vec<HeartbeatRequest>,
    completions: Vec<(i64, CompleteRequest)>,
}

/// The daemon's side of the agent protocol, in memory.
struct Stub {
    state: Mutex<State>,
    job_added: Notify,
}

impl Stub {
    fn new(prefix: &str) -> Arc<Self> {
        Arc::new(Stub {
            state: Mutex::new(State {
                prefix: prefix.into(),
                ..State::default()
            }),
            job_added: Notify::new(),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    fn push_job(&self, job: ClaimedJob) {
        self.with(|s| s.jobs.push_back(job));
        self.job_added.notify_waiters();
    }

    async fn handle(&self, method: &str, path: &str, auth: &str, body: &[u8]) -> (u16, String) {
        if auth != format!("Bearer {TOKEN}") {
            return (401, r#"{"error":"bad token"}"#.into());
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            ("POST", ["v1", "agents"]) => {
                let req: RegisterAgent = serde_json::from_slice(body).unwrap();
                let id = self.with(|s| {
                    s.registered.push(req);
                    s.registrations += 1;
                    let id = format!("{}agent-{}", s.prefix, s.registrations);
                    s.known_agent = Some(id.clone());
                    id
                });
                let reg = AgentRegistered {
                    agent_id: id.into(),
                    lease_ttl_ms: 10_000,
                    heartbeat_interval_ms: 50,
                    stale_jobs: vec![],
                };
                (200, json(&reg))
            }
            ("POST", ["v1", "agents", id, what]) => {
                if self.with(|s| s.known_agent.as_deref() != Some(*id)) {
                    return (404, r#"{"error":"unknown agent"}"#.into());
                }
                match *what {
                    "claim" => {
                        let req: ClaimRequest = serde_json::from_slice(body).unwrap();
                        let until = Instant::now() + Duration::from_millis(req.wait_ms.min(200));
                        loop {
                            let added = self.job_added.notified();
                            if let Some(job) = self.with(|s| s.jobs.pop_front()) {
                                return (200, json(&job));
                            }
                            let left = until.saturating_duration_since(Instant::now());
                            if tokio::time::timeout(left, added).await.is_err() {
                                return (204, String::new());
                            }
                        }
                    }
                    "heartbeat" => {
                        let req: HeartbeatRequest = serde_json::from_slice(body).unwrap();
                        let revoked = self.with(|s| {
                            s.heartbeats.push(req);
                            std::mem::take(&mut s.revoke_next)
                        });
                        let resp = HeartbeatResponse {
                            extended: vec![],
                            lease_expires_at_ms: 0,
                            revoked,
                        };
                        (200, json(&resp))
                    }
                    _ => (404, r#"{"error":"no such route"}"#.into()),
                }
            }
            ("POST", ["v1", "jobs", id, "complete"]) => {
                let job_id: JobId = id.parse().unwrap();
                let req: CompleteRequest = serde_json::from_slice(body).unwrap();
                self.with(|s| s.completions.push((job_id.get(), req)));
                let done = Completed {
                    job_id,
                    stage_state: StageState::Succeeded,
                    run_state: RunState::Running,
                    next: None,
                    again: false,
                };
                (200, json(&done))
            }
            _ => (404, r#"{"error":"no such route"}"#.into()),
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

/// A running stub server; `stop` drops the listener and every connection,
/// as a daemon that dies would.
struct Server {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Server {
    async fn start(stub: Arc<Stub>, addr: &str) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let tasks = tasks.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let conn = tokio::spawn(serve(stream, stub.clone()));
                    tasks.lock().unwrap().push(conn);
                }
            })
        };
        tasks.lock().unwrap().push(accept);
        Server { addr, tasks }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One keep-alive HTTP/1.1 connection: requests with Content-Length bodies.
async fn serve(stream: TcpStream, stub: Arc<Stub>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or("").to_owned();
        let path = words.next().unwrap_or("").to_owned();
        let (mut len, mut auth) = (0usize, String::new());
        loop {
            let mut header = String::new();
            if r.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = value.trim().parse().unwrap(),
                    "authorization" => auth = value.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        let (status, text) = stub.handle(&method, &path, &auth, &body).await;
        let head = if status == 204 {
            "HTTP/1.1 204 No Content\r\n\r\n".to_owned()
        } else {
            format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                text.len()
            )
        };
        if w.write_all(format!("{head}{text}").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A git repository with one commit: a project.
fn git_project() -> tempfile::TempDir {
    common::repo().0
}

fn head(project: &Path) -> String {
    common::git(project, &["rev-parse", "HEAD"])
}

/// Where the jobs of run `run-1` run their commands.
fn worktree(project: &Path) -> std::path::PathBuf {
    project.join(".orchestrator/worktrees/run-1")
}

fn job(project: &Path, job_id: i64, argv: &[&str]) -> ClaimedJob {
    ClaimedJob {
        job_id: job_id.into(),
        lease_id: job_id.into(),
        lease_token: format!("lease-{job_id}"),
        queued_at_ms: 0,
        lease_expires_at_ms: 0,
        grant: Default::default(),
        spec: JobSpec {
            run_id: "run-1".into(),
            stage_id: format!("stage-{job_id}"),
            step: 0,
            steps_total: 1,
            attempt: 1,
            step_name: None,
            project_dir: project.to_string_lossy().into_owned(),
            shell: false,
            commands: vec![CommandSpec {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                run: None,
                cwd: None,
                env: BTreeMap::new(),
                timeout: None,
            }],
            env: BTreeMap::new(),
            base_commit: head(project),
            ..JobSpec::default()
        },
    }
}

fn config(server: &str, token: &str, slots: u32) -> AgentConfig {
    AgentConfig {
        server: server.into(),
        token: token.into(),
        name: "test-agent".into(),
        labels: vec!["linux".into()],
        slots,
        hostname: Some("box".into()),
        // Declared, so that the tests do not depend on this machine.
        memory_mb: Some(4096),
        gpus: Some(vec![]),
        sandbox: Default::default(),
        models: None,
    }
}

fn start_agent(cfg: AgentConfig) -> (CancellationToken, JoinHandle<Result<(), AgentError>>) {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(run_agent(cfg, shutdown.clone()));
    (shutdown, handle)
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Non-zombie processes left in group `pgid`.
fn live_in_group(pgid: i32) -> usize {
    orchestrator_host::process::live_members(pgid).unwrap()
}

async fn read_pgid(path: &Path) -> i32 {
    let mut pgid = None;
    eventually("the pgid file", || {
        pgid = std::fs::read_to_string(path)
            .ok()
            .filter(|t| t.ends_with('\n'))
            .and_then(|t| t.trim().parse().ok());
        pgid.is_some()
    })
    .await;
    pgid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_runs_and_completes_jobs_with_heartbeats() {
    let project = git_project();
    let stub = Stub::new("");
    let server = Server::start(stub.clone(), "127.0.0.1:0").await;
    stub.push_job(job(project.path(), 1, &["echo", "hello"]));
    stub.push_job(job(project.path(), 2, &["sh", "-c", "exit 3"]));
    let (shutdown, agent) = start_agent(config(&server.url(), TOKEN, 2));

    eventually("two completions and a heartbeat", || {
        stub.with(|s| s.completions.len() == 2 && !s.heartbeats.is_empty())
    })
    .await;
    shutdown.cancel();
    agent.await.unwrap().unwrap();

    let mut done = stub.with(|s| s.completions.clone());
    done.sort_by_key(|(id, _)| *id);
    let (id, ok) = &done[0];
    assert_eq!(*id, 1);
    assert_eq!(ok.agent_id, "agent-1");
    assert_eq!(ok.lease_token, "lease-1");
    assert!(ok.outcome.success, "{:?}", ok.outcome);
    assert_eq!(ok.outcome.exit_codes, vec![Some(0)]);
    let bundle = project.path().join(&ok.outcome.bundle);
    assert_eq!(
        std::fs::read_to_string(bundle.join("cmd-000.stdout.log")).unwrap(),
        "hello\n"
    );
    let failed = &done[1].1.outcome;
    assert!(!failed.success);
    assert_eq!(failed.error_class, Some(ErrorClass::Task));
    assert_eq!(failed.exit_codes, vec![Some(3)]);
    assert_eq!(stub.with(|s| s.registrations), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_running_jobs_and_reports_them_as_infra() {
    let project = git_project();
    let stub = Stub::new("");
    let server = Server::start(stub.clone(), "127.0.0.1:0").await;
    stub.push_job(job(
        project.path(),
        1,
        &["sh", "-c", "echo $$ > pgid; sleep 30 & sleep 30"],
    ));
    let (shutdown, agent) = start_agent(config(&server.url(), TOKEN, 1));
    let pgid = read_pgid(&worktree(project.path()).join("pgid")).await;

    let started = Instant::now();
    shutdown.cancel();
    agent.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(live_in_group(pgid), 0);
    let done = stub.with(|s| s.completions.clone());
    assert_eq!(done.len(), 1);
    let outcome = &done[0].1.outcome;
    assert!(!outcome.success);
    assert_eq!(outcome.error_class, Some(ErrorClass::Infra));
    let error = outcome.error.as_deref().unwrap();
    // What happened, then where and on what machine.
    assert!(error.starts_with("agent shutting down [run "), "{error}");
    assert!(error.contains(", attempt 1, agent "), "{error}");
    assert!(
        error.contains("memory ") && error.contains("disk "),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_kills_the_job_and_is_not_completed() {
    let project = git_project();
    let stub = Stub::new("");
    let server = Server::start(stub.clone(), "127.0.0.1:0").await;
    stub.push_job(job(
        project.path(),
        9,
        &["sh", "-c", "echo $$ > pgid; sleep 30 & sleep 30"],
    ));
    let (shutdown, agent) = start_agent(config(&server.url(), TOKEN, 1));
    let pgid = read_pgid(&worktree(project.path()).join("pgid")).await;
    // The heartbeat carries the lease before the daemon takes it back.
    eventually("a heartbeat with the lease", || {
        stub.with(|s| {
            s.heartbeats
                .iter()
                .any(|h| h.leases.iter().any(|l| l.job_id == 9))
        })
    })
    .await;
    stub.with(|s| s.revoke_next = vec![JobId::new(9)]);
    eventually("the job's group to die", || live_in_group(pgid) == 0).await;
    // The slot is free again: a next job runs and completes.
    stub.push_job(job(project.path(), 10, &["true"]));
    eventually("the next job's completion", || {
        stub.with(|s| !s.completions.is_empty())
    })
    .await;
    shutdown.cancel();
    agent.await.unwrap().unwrap();
    let done = stub.with(|s| s.completions.clone());
    assert_eq!(done.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_daemon_restart_and_registers_again() {
    let project = git_project();
    let first = Stub::new("a-");
    let server = Server::start(first.clone(), "127.0.0.1:0").await;
    let addr = server.addr.to_string();
    let (shutdown, agent) = start_agent(config(&server.url(), TOKEN, 2));
    eventually("a heartbeat", || first.with(|s| !s.heartbeats.is_empty())).await;

    // The daemon dies; the agent retries against a closed port for a while.
    server.stop();
    drop(server);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A new daemon on the same address has forgotten the agent.
    let second = Stub::new("b-");
    let _server = Server::start(second.clone(), &addr).await;
    second.push_job(job(project.path(), 5, &["true"]));
    eventually("the job's completion", || {
        second.with(|s| !s.completions.is_empty())
    })
    .await;
    shutdown.cancel();
    agent.await.unwrap().unwrap();
    let done = second.with(|s| s.completions.clone());
    assert_eq!(done[0].1.agent_id, "b-agent-1");
    assert!(done[0].1.outcome.success);
    // Loops noticing the unknown id together registered once.
    assert_eq!(second.with(|s| s.registrations), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_ends_the_agent_with_the_status_and_message() {
    let stub = Stub::new("");
    let server = Server::start(stub.clone(), "127.0.0.1:0").await;
    let (_shutdown, agent) = start_agent(config(&server.url(), "wrong", 1));
    let err = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::Client(ClientError::Unauthorized(r)) if r.message() == "bad token"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("401") && text.contains("bad token"), "{text}");
}

/// Not a check, a measure: `cargo test -p orchestrator-agent --release --test
/// agent -- --ignored --nocapture` prints how many `/bin/true` jobs per second
/// the agent runs against a stub daemon that answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_of_true_jobs() {
    const JOBS: i64 = 2000;
    let project = git_project();
    let stub = Stub::new("");
    let server = Server::start(stub.clone(), "127.0.0.1:0").await;
    for id in 0..JOBS {
        stub.push_job(job(project.path(), id, &["/bin/true"]));
    }
    let started = Instant::now();
    let (shutdown, agent) = start_agent(config(&server.url(), TOKEN, 8));
    eventually("every completion", || {
        stub.with(|s| s.completions.len() == JOBS as usize)
    })
    .await;
    let elapsed = started.elapsed();
    let stopping = Instant::now();
    shutdown.cancel();
    agent.await.unwrap().unwrap();
    println!("stopped in {:?}", stopping.elapsed());
    let t = Instant::now();
    drop(project);
    println!("tempdir removed in {:?}", t.elapsed());
    assert!(stub.with(|s| s.completions.iter().all(|(_, c)| c.outcome.success)));
    let t = Instant::now();
    drop(server);
    println!("server dropped in {:?}", t.elapsed());
    println!(
        "{JOBS} jobs in {elapsed:?}: {:.0} jobs/s",
        JOBS as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_resources_are_registered_and_hide_gpus_from_steps_granted_none() {
    let project = git_project();
    let stub = Stub::new("");
    let server = Server::start(stub.clone(), "127.0.0.1:0").await;
    let gpus: Vec<Gpu> = (0..2)
        .map(|index| Gpu {
            index,
            name: String::new(),
            memory_mb: 24_576,
        })
        .collect();
    let cfg = AgentConfig {
        memory_mb: Some(16_384),
        gpus: Some(gpus.clone()),
        sandbox: Default::default(),
        ..config(&server.url(), TOKEN, 1)
    };
    stub.push_job(job(
        project.path(),
        1,
        &[
            "sh",
            "-c",
            "printf '%s|' \"${CUDA_VISIBLE_DEVICES-unset}\" > cuda",
        ],
    ));
    let (shutdown, agent) = start_agent(cfg);
    eventually("the completion", || {
        stub.with(|s| !s.completions.is_empty())
    })
    .await;
    shutdown.cancel();
    agent.await.unwrap().unwrap();

    let reg = stub.with(|s| s.registered[0].clone());
    assert_eq!((reg.memory_mb, reg.gpus), (16_384, gpus));
    assert_eq!(reg.slots, 1);
    assert_eq!(reg.labels, ["linux"]);
    let done = stub.with(|s| s.completions.clone());
    assert!(done[0].1.outcome.success, "{:?}", done[0].1.outcome);
    assert_eq!(
        std::fs::read_to_string(worktree(project.path()).join("cuda")).unwrap(),
        "|"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_declared_twice_is_refused() {
    let gpu = Gpu {
        index: 0,
        name: String::new(),
        memory_mb: 1024,
    };
    let cfg = AgentConfig {
        gpus: Some(vec![gpu.clone(), gpu]),
        sandbox: Default::default(),
        ..config("http://127.0.0.1:1", TOKEN, 1)
    };
    let err = run_agent(cfg, CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, AgentError::Config(_)), "{err}");
}
