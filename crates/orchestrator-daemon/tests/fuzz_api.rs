//! Bad input for every API body, sent over HTTP to the real daemon on a real
//! SQLite store: arbitrary bytes and mutations of valid bodies. Each must be
//! answered with a 4xx and an `{"error": "..."}` that says something, and a
//! rejected body must leave the store as it was. Bodies that still fit their
//! request type may be accepted; then the store is read again.
//!
//! The cases come from a fixed seed, so a failure repeats. More cases:
//! `ORCH_FUZZ_CASES=2000 cargo test -p orchestrator-daemon --test fuzz_api`
//! (and `ORCH_FUZZ_SEED=<n>` for other ones).

use orchestrator_core::{AgentId, JobId, RunId};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use orchestrator_core::api::{
    ClaimRequest, CompleteRequest, HeartbeatRequest, RegisterAgent, SubmitRun,
};
use orchestrator_daemon::{Daemon, DaemonConfig, Tokens};
use orchestrator_store::{NewRun, SqlStore, StoreOptions};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token";
const AGENT: &str = "agent-token";
/// Small, so that a huge string crosses it without costing much.
const MAX_BODY: usize = 64 * 1024;

const WORKFLOW: &str = "name: w\nstages:\n  - id: build\n    steps: [{commands: [{argv: [make]}]}]\n  - id: ship\n    needs: [build]\n    steps: [{approve: true, commands: [{argv: [true]}]}]\n";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// splitmix64: a fixed seed gives the same cases on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ------------------------------------------------------------ mutations

fn weird_value(rng: &mut Rng) -> Value {
    match rng.below(14) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(i64::MIN),
        4 => json!(u64::MAX),
        5 => json!(-1.5e300),
        6 => json!(0.5),
        7 => json!(""),
        8 => json!("\u{0}\u{202E}é🦀"),
        9 => json!([]),
        10 => json!({}),
        11 => json!([1, "x", null, {"a": [{}]}]),
        12 => json!({"argv": {"$ref": "#"}, "__proto__": null}),
        _ => json!(String::from_utf8_lossy(&rng.bytes(40))),
    }
}

/// Every path to a value in `v`, objects and arrays alike.
fn paths(v: &Value, here: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                here.push(json!(k));
                paths(c, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                here.push(json!(i));
                paths(c, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match k {
        Value::String(k) => &mut v[k.as_str()],
        Value::Number(i) => &mut v[i.as_u64().unwrap() as usize],
        _ => unreachable!(),
    })
}

/// A valid body with one to three things wrong, as bytes.
fn mutate(valid: &Value, rng: &mut Rng) -> Vec<u8> {
    let mut v = valid.clone();
    for _ in 0..1 + rng.below(3) {
        let mut all = Vec::new();
        paths(&v, &mut Vec::new(), &mut all);
        let path = rng.pick(&all).clone();
        match rng.below(7) {
            // Drop a field (or an element).
            0 if !path.is_empty() => {
                let (last, parent) = path.split_last().unwrap();
                match (at(&mut v, parent), last) {
                    (Value::Object(m), Value::String(k)) => {
                        m.remove(k);
                    }
                    (Value::Array(a), Value::Number(i)) => {
                        a.remove(i.as_u64().unwrap() as usize);
                    }
                    _ => unreachable!(),
                }
            }
            // A value of the wrong type, or out of range.
            1 | 2 => *at(&mut v, &path) = weird_value(rng),
            // A field nobody asked for.
            3 => {
                if let Value::Object(m) = at(&mut v, &path) {
                    m.insert("unknown_field".into(), weird_value(rng));
                } else {
                    *at(&mut v, &path) = json!({"unknown_field": 1});
                }
            }
            // A string big enough to cross the body limit, or just under it.
            4 => *at(&mut v, &path) = json!("x".repeat(rng.below(2 * MAX_BODY))),
            // Nesting deeper than any parser should follow.
            5 => {
                let d = 1 + rng.below(5000);
                let deep = format!("{}1{}", "[".repeat(d), "]".repeat(d));
                let marker = "\"@@deep@@\"";
                *at(&mut v, &path) = json!("@@deep@@");
                return serde_json::to_string(&v)
                    .unwrap()
                    .replacen(marker, &deep, 1)
                    .into_bytes();
            }
            // Invalid UTF-8 inside the document.
            _ => {
                let mut b = serde_json::to_vec(&v).unwrap();
                let i = rng.below(b.len() + 1);
                b.splice(i..i, [0xff, 0xfe, 0xc3]);
                return b;
            }
        }
    }
    serde_json::to_vec(&v).unwrap()
}

fn garbage(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => rng.bytes(300),
        // JSON's own punctuation gets further into the parser than noise.
        1 => (0..rng.below(200))
            .map(|_| *rng.pick(b"{}[]:,\"\\ 0123456789.eE+-truefalsnul"))
            .collect(),
        2 => rng
            .pick(&[
                &b""[..],
                b"null",
                b"[]",
                b"0",
                b"\"\"",
                b"{}garbage",
                b"\xef\xbb\xbf{}",
            ])
            .to_vec(),
        _ => {
            let mut b = rng.bytes(60);
            b.insert(0, b'{');
            b
        }
    }
}

// ------------------------------------------------------------ the daemon

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<SqlStore>,
    daemon: Daemon,
    http: reqwest::Client,
    run_id: RunId,
    agent_id: AgentId,
    job_id: JobId,
    lease_token: String,
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "git {args:?}");
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir(&project).unwrap();
    git(&project, &["init", "-q"]);
    git(&project, &["commit", "-q", "--allow-empty", "-m", "first"]);
    let store = Arc::new(SqlStore::open(StoreOptions::new(dir.path().join("orch.db"))).unwrap());
    let mut cfg = DaemonConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Tokens {
            admin: vec![ADMIN.into()],
            agent: vec![AGENT.into()],
        },
    );
    cfg.max_body_bytes = MAX_BODY;
    cfg.max_claim_wait_ms = 50;
    // Long enough that no lease expires under a long run: the reaper's
    // changes would look like changes made by a refused body.
    cfg.lease_ttl_ms = 3_600_000;
    let daemon = Daemon::start(cfg, store.clone()).await.unwrap();
    let run_id = store
        .submit_run(NewRun {
            workflow: WORKFLOW.into(),
            file: Some("wf.yaml".into()),
            project_dir: project.display().to_string(),
            priority: None,
            policy: Default::default(),
            base_commit: "0123456789abcdef0123456789abcdef01234567".into(),
            tree: Vec::new(),
            actor: orchestrator_core::Actor::user("test"),
            on_failure: None,
            inputs: Default::default(),
        })
        .await
        .unwrap()
        .run_id;
    let agent_id = store
        .register_agent(
            RegisterAgent {
                name: "a".into(),
                slots: 1,
                ..Default::default()
            },
            3_600_000,
            10_000,
        )
        .await
        .unwrap()
        .agent_id;
    let job = store
        .claim(&agent_id, 600_000)
        .await
        .unwrap()
        .expect("a job");
    Fixture {
        dir,
        store,
        daemon,
        http: reqwest::Client::new(),
        run_id,
        agent_id,
        job_id: job.job_id,
        lease_token: job.lease_token,
    }
}

/// What a rejected body must not change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    counts: String,
    runs: String,
    transitions: usize,
    agents: String,
}

async fn snapshot(store: &SqlStore) -> Snapshot {
    let agents = store.list_agents(u64::MAX / 4).await.unwrap();
    let c = store.counts().await.unwrap();
    Snapshot {
        // The transitions are counted below, from the log itself.
        counts: format!("{:?}", (c.runs, c.stages, c.jobs, c.agents)),
        runs: serde_json::to_string(&store.list_runs(10_000).await.unwrap()).unwrap(),
        transitions: store
            .transitions_since(0, None, 1_000_000)
            .await
            .unwrap()
            .len(),
        // last_seen moves with every heartbeat; what an agent is does not.
        agents: format!(
            "{:?}",
            agents
                .iter()
                .map(|a| (&a.id, &a.name, &a.labels, a.slots, a.running, a.memory_mb))
                .collect::<Vec<_>>()
        ),
    }
}

/// One endpoint: where, which token, a valid body, and whether a body
/// passes its request type (the only bodies it may accept).
struct Endpoint {
    path: String,
    token: &'static str,
    valid: Value,
    fits: fn(&[u8]) -> bool,
    /// A well-formed completion with a stale lease is refused with a 409
    /// and, by design, the refusal is logged as one transition.
    logs_refusal: bool,
}

fn fits<T: serde::de::DeserializeOwned>(b: &[u8]) -> bool {
    serde_json::from_slice::<T>(b).is_ok()
}

fn nothing_fits(_: &[u8]) -> bool {
    false
}

fn endpoints(f: &Fixture) -> Vec<Endpoint> {
    let (run, agent, job) = (&f.run_id, &f.agent_id, f.job_id);
    let project = f.dir.path().join("project").display().to_string();
    vec![
        Endpoint {
            path: "/v1/runs".into(),
            token: ADMIN,
            valid: json!({"workflow": WORKFLOW, "file": "wf.yaml", "project_dir": project,
                          "priority": 1, "ref": "HEAD"}),
            fits: fits::<SubmitRun>,
            logs_refusal: false,
        },
        Endpoint {
            path: "/v1/agents".into(),
            token: AGENT,
            valid: json!({"name": "b", "labels": ["x"], "slots": 2, "hostname": "h",
                          "memory_mb": 1024, "gpus": []}),
            fits: fits::<RegisterAgent>,
            logs_refusal: false,
        },
        Endpoint {
            path: format!("/v1/agents/{agent}/claim"),
            token: AGENT,
            valid: json!({"wait_ms": 1}),
            fits: fits::<ClaimRequest>,
            logs_refusal: false,
        },
        Endpoint {
            path: format!("/v1/agents/{agent}/heartbeat"),
            token: AGENT,
            valid: json!({"leases": [{"job_id": job, "lease_token": f.lease_token}], "wait_ms": 0}),
            fits: fits::<HeartbeatRequest>,
            logs_refusal: false,
        },
        Endpoint {
            path: format!("/v1/jobs/{job}/complete"),
            token: AGENT,
            valid: json!({"agent_id": agent, "lease_token": "not-the-lease", "claim_next": false,
                "outcome": {"success": true, "exit_codes": [0, null], "error": null,
                    "error_class": null, "bundle": "b", "duration_ms": 5,
                    "checkpoint": null, "until_met": null, "questions": []}}),
            // A wrong lease token: even a well-formed body is refused.
            fits: nothing_fits,
            logs_refusal: true,
        },
        Endpoint {
            path: format!("/v1/runs/{run}/stages/ship/approve"),
            token: ADMIN,
            valid: json!({"by": "me", "comment": "ok"}),
            // The stage is not waiting for a human yet.
            fits: nothing_fits,
            logs_refusal: false,
        },
        Endpoint {
            path: format!("/v1/runs/{run}/stages/ship/reject"),
            token: ADMIN,
            valid: json!({"by": "me", "feedback": "again"}),
            fits: nothing_fits,
            logs_refusal: false,
        },
        // No stage of the run waits for a decision: each is refused.
        Endpoint {
            path: format!("/v1/runs/{run}/stages/ship/retry"),
            token: ADMIN,
            valid: json!({"by": "me", "comment": "again"}),
            fits: nothing_fits,
            logs_refusal: false,
        },
        Endpoint {
            path: format!("/v1/runs/{run}/stages/ship/skip"),
            token: ADMIN,
            valid: json!({"by": "me"}),
            fits: nothing_fits,
            logs_refusal: false,
        },
        Endpoint {
            path: format!("/v1/runs/{run}/stages/build/abort"),
            token: ADMIN,
            valid: json!({"comment": "no"}),
            fits: nothing_fits,
            logs_refusal: false,
        },
        Endpoint {
            path: "/v1/runs/no-such-run/abort".into(),
            token: ADMIN,
            valid: json!({"by": "me"}),
            fits: nothing_fits,
            logs_refusal: false,
        },
        Endpoint {
            path: format!("/v1/runs/{run}/questions/1/answer"),
            token: ADMIN,
            valid: json!({"by": "me", "text": "yes"}),
            fits: nothing_fits,
            logs_refusal: false,
        },
        // These read no body; on a run that does not exist each is a 404
        // whatever is sent.
        Endpoint {
            path: "/v1/runs/no-such-run/cancel".into(),
            token: ADMIN,
            valid: json!({}),
            fits: nothing_fits,
            logs_refusal: false,
        },
        Endpoint {
            path: "/v1/runs/no-such-run/pause".into(),
            token: ADMIN,
            valid: json!({}),
            fits: nothing_fits,
            logs_refusal: false,
        },
        Endpoint {
            path: "/v1/runs/no-such-run/resume".into(),
            token: ADMIN,
            valid: json!({}),
            fits: nothing_fits,
            logs_refusal: false,
        },
    ]
}

/// Sends one body; checks the answer and, when refused, that nothing changed.
async fn send(f: &Fixture, e: &Endpoint, body: Vec<u8>, before: &mut Snapshot) -> u16 {
    let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    let resp = f
        .http
        .post(format!("http://{}{}", f.daemon.addr, e.path))
        .bearer_auth(e.token)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap_or_else(|err| panic!("POST {} {shown:?}: no answer: {err}", e.path));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    if (200..300).contains(&status) {
        assert!(
            (e.fits)(&body),
            "POST {} accepted ({status}) a body that does not fit: {shown:?}",
            e.path
        );
        *before = snapshot(&f.store).await;
        return status;
    }
    assert!(
        (400..500).contains(&status),
        "POST {} answered {status} to {shown:?}: {text}",
        e.path
    );
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("POST {} {status}: not JSON: {text:?}", e.path));
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(
        !msg.trim().is_empty(),
        "POST {} {status}: no error message: {text}",
        e.path
    );
    let after = snapshot(&f.store).await;
    if e.logs_refusal && status == 409 && fits::<CompleteRequest>(&body) {
        assert_eq!(
            after.transitions,
            before.transitions + 1,
            "POST {}: a stale completion must be logged once",
            e.path
        );
        before.transitions += 1;
    }
    assert_eq!(
        &after, before,
        "POST {} refused ({status}: {msg}) but changed the store; body {shown:?}",
        e.path
    );
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_a_4xx_with_a_message_and_change_nothing() {
    let f = fixture().await;
    let cases = env_u64("ORCH_FUZZ_CASES", 60) as usize;
    let mut rng = Rng(env_u64("ORCH_FUZZ_SEED", 20261121));
    let mut before = snapshot(&f.store).await;
    let mut tried = 0;
    let mut accepted = 0;
    for e in endpoints(&f) {
        // The valid body itself, first: a mutation is only as good as its
        // starting point, so it must get past the JSON layer.
        let status = send(&f, &e, serde_json::to_vec(&e.valid).unwrap(), &mut before).await;
        assert!(
            status != 400 && status != 422,
            "POST {}: the valid body was refused as malformed ({status})",
            e.path
        );
        for i in 0..cases {
            let body = if i % 2 == 0 {
                garbage(&mut rng)
            } else {
                mutate(&e.valid, &mut rng)
            };
            if send(&f, &e, body, &mut before).await < 300 {
                accepted += 1;
            }
            tried += 1;
        }
    }
    eprintln!("{tried} bad bodies sent, {accepted} of them still valid and accepted");
    f.daemon.shutdown_token().cancel();
    f.daemon.wait().await.unwrap();
}
