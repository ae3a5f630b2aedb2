//! Bad path parameters and query strings for every route, sent as raw
//! HTTP/1.1 to the real daemon on a real SQLite store (raw, because an HTTP
//! client would resolve `..` and re-encode what it sends). Each must be
//! answered with a 4xx whose JSON `error` names the bad parameter and what it
//! expected, or a 2xx where the value is valid (a run id prefix, a filter
//! that matches nothing); never a 5xx, and never a change to the store.
//!
//! The cases come from a fixed seed, so a failure repeats. More cases:
//! `ORCH_FUZZ_CASES=2000 cargo test -p orchestrator-daemon --test fuzz_paths`
//! (and `ORCH_FUZZ_SEED=<n>` for other ones).

use std::collections::BTreeMap;
use std::sync::Arc;

use orchestrator_core::api::RegisterAgent;
use orchestrator_daemon::hooks::sign::{sign_action, Action, ActionKind};
use orchestrator_daemon::hooks::ActionLinks;
use orchestrator_daemon::{Daemon, DaemonConfig, Tokens};
use orchestrator_host::now_ms;
use orchestrator_store::{NewRun, SqlStore, StoreOptions};
use serde_json::{json, Value};

mod fuzz_http;

use fuzz_http::{decode, env_u64, query, query_problems, send, value, Answer, Kind, Rng};

const ADMIN: &str = "admin-token";
const AGENT: &str = "agent-token";
const WORKFLOW: &str = "name: w\nstages:\n  - id: build\n    steps: [{commands: [{argv: [make]}]}]\n  - id: ship\n    needs: [build]\n    steps: [{approve: true, commands: [{argv: [true]}]}]\n";

// ------------------------------------------------------------ the daemon

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqlStore>,
    daemon: Daemon,
    run_id: String,
    agent_id: String,
    job_id: i64,
    /// A signed link that approves `ship`, which is not waiting: refused.
    link: String,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqlStore::open(StoreOptions::new(dir.path().join("orch.db"))).unwrap());
    let mut cfg = DaemonConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Tokens {
            admin: vec![ADMIN.into()],
            agent: vec![AGENT.into()],
        },
    );
    cfg.max_claim_wait_ms = 20;
    // No lease expires and no agent is lost under the test: the reaper's
    // changes would look like changes made by a refused request.
    cfg.lease_ttl_ms = 3_600_000;
    let key = b"link-key".to_vec();
    cfg.hooks.links = Some(ActionLinks {
        public_url: "http://phone.example".into(),
        key: key.clone(),
        ttl_ms: 3_600_000,
    });
    let daemon = Daemon::start(cfg, store.clone()).await.unwrap();
    let run_id = store
        .submit_run(NewRun {
            workflow: WORKFLOW.into(),
            file: Some("wf.yaml".into()),
            project_dir: dir.path().display().to_string(),
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
    let reg = RegisterAgent {
        name: "a".into(),
        slots: 1,
        ..Default::default()
    };
    let agent_id = store
        .register_agent(reg, 3_600_000, 10_000)
        .await
        .unwrap()
        .agent_id;
    let job = store
        .claim(&agent_id, 3_600_000)
        .await
        .unwrap()
        .expect("a job");
    let action = Action {
        kind: ActionKind::Approve,
        run_id: run_id.clone(),
        stage_id: Some("ship".into()),
        question_id: None,
        text: None,
        to: None,
        round: 1,
    };
    let link = sign_action(&action, &key, now_ms() + 3_600_000);
    Fixture {
        _dir: dir,
        store,
        daemon,
        run_id: run_id.into_string(),
        agent_id: agent_id.into_string(),
        job_id: job.job_id.get(),
        link,
    }
}

/// What a refused request must not change.
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
        counts: format!("{:?}", (c.runs, c.stages, c.jobs, c.agents)),
        runs: serde_json::to_string(&store.list_runs(10_000).await.unwrap()).unwrap(),
        transitions: store
            .transitions_since(0, None, 1_000_000)
            .await
            .unwrap()
            .len(),
        // last_seen moves with every claim; what an agent is does not.
        agents: format!(
            "{:?}",
            agents
                .iter()
                .map(|a| (&a.id, &a.name, &a.labels, a.slots, a.running))
                .collect::<Vec<_>>()
        ),
    }
}

/// Routes as templates; `{run}`, `{stage}`, `{qid}`, `{agent}`, `{job}` and
/// `{token}` are the parameters, each with axum's name for it.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/runs/{run}"),
    ("GET", "/v1/runs/{run}/stages"),
    ("GET", "/v1/runs/{run}/stages/{stage}"),
    ("GET", "/v1/runs/{run}/jobs"),
    ("GET", "/v1/runs/{run}/explain"),
    ("GET", "/v1/runs/{run}/transitions"),
    ("POST", "/v1/runs/{run}/cancel"),
    ("POST", "/v1/runs/{run}/pause"),
    ("POST", "/v1/runs/{run}/resume"),
    ("POST", "/v1/runs/{run}/stages/{stage}/approve"),
    ("POST", "/v1/runs/{run}/stages/{stage}/reject"),
    ("POST", "/v1/runs/{run}/questions/{qid}/answer"),
    ("POST", "/v1/runs/{run}/stages/{stage}/retry"),
    ("POST", "/v1/runs/{run}/stages/{stage}/skip"),
    ("POST", "/v1/runs/{run}/stages/{stage}/abort"),
    ("POST", "/v1/runs/{run}/abort"),
    ("POST", "/v1/agents/{agent}/claim"),
    ("POST", "/v1/agents/{agent}/heartbeat"),
    ("POST", "/v1/jobs/{job}/complete"),
    ("GET", "/v1/act/{token}"),
    ("POST", "/v1/act/{token}"),
];

fn axum_name(param: &str) -> &str {
    match param {
        "run" | "agent" | "job" => "id",
        p => p,
    }
}

impl Fixture {
    fn real(&self, param: &str) -> String {
        match param {
            "run" => self.run_id.clone(),
            "stage" => "ship".into(),
            "qid" => "1".into(),
            "agent" => self.agent_id.clone(),
            "job" => self.job_id.to_string(),
            _ => self.link.clone(),
        }
    }

    /// Whether a decoded value names something that exists, so that a 2xx
    /// (or, for a POST, a change) would be right.
    fn resolves(&self, param: &str, v: &str) -> bool {
        match param {
            "run" => !v.is_empty() && self.run_id.starts_with(v),
            "stage" => v == "build" || v == "ship",
            "agent" => v == self.agent_id,
            "job" => v.parse::<i64>() == Ok(self.job_id),
            "token" => v == self.link,
            _ => false,
        }
    }

    fn body(&self, template: &str) -> String {
        let v = match template.rsplit('/').next().unwrap_or_default() {
            "approve" => json!({"by": "me"}),
            "reject" => json!({"by": "me", "feedback": "again"}),
            "answer" => json!({"by": "me", "text": "yes"}),
            "retry" | "skip" | "abort" => json!({"by": "me", "comment": "why"}),
            "claim" => json!({"wait_ms": 0}),
            "heartbeat" => json!({"leases": [], "wait_ms": 0}),
            // A wrong lease token: the real job refuses it (and logs that).
            "complete" => json!({"agent_id": self.agent_id, "lease_token": "not-the-lease",
                "claim_next": false, "outcome": {"success": true, "exit_codes": [0], "error": null,
                    "error_class": null, "bundle": "b", "duration_ms": 1, "checkpoint": null,
                    "until_met": null, "questions": []}}),
            _ => return String::new(),
        };
        v.to_string()
    }
}

fn token_for(template: &str) -> Option<&'static str> {
    if template.starts_with("/v1/act/") {
        None
    } else if template.starts_with("/v1/agents/") || template.starts_with("/v1/jobs/") {
        Some(AGENT)
    } else {
        Some(ADMIN)
    }
}

/// The JSON error of a refusal, checked to say something.
fn error_of(what: &str, a: &Answer) -> String {
    assert!(
        a.content_type.starts_with("application/json"),
        "{what}: {} answered {:?}, not JSON: {:?}",
        a.status,
        a.content_type,
        a.body
    );
    let v: Value =
        serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{what}: {e}: {:?}", a.body));
    let msg = v["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        !msg.trim().is_empty(),
        "{what}: {} with no error: {}",
        a.status,
        a.body
    );
    msg
}

/// Checks one answer to a fuzzed path parameter; returns whether it was a 2xx.
fn check_path_answer(f: &Fixture, what: &str, param: &str, raw: &str, a: &Answer) -> bool {
    let decoded = String::from_utf8(decode(raw, false));
    let resolves = decoded.as_deref().is_ok_and(|v| f.resolves(param, v));
    assert!(a.status < 500, "{what}: {}: {}", a.status, a.body);
    if a.status < 300 {
        assert!(
            resolves,
            "{what}: accepted ({}) a value that names nothing: {}",
            a.status,
            &a.body[..a.body.len().min(300)]
        );
        return true;
    }
    assert!(
        (400..500).contains(&a.status),
        "{what}: {}: {}",
        a.status,
        a.body
    );
    // The signed link's own refusals are pages for a phone's browser.
    if a.content_type.starts_with("text/html") && param == "token" {
        assert!(
            ["does not work", "Not done"]
                .iter()
                .any(|p| a.body.contains(p)),
            "{what}: {} page says nothing: {}",
            a.status,
            a.body
        );
        return false;
    }
    let msg = error_of(what, a);
    // A raw `/` moves the value into other segments: another route judges it.
    if raw.contains('/') {
        return false;
    }
    match a.status {
        400 => {
            let key = format!("path parameter `{}`", axum_name(param));
            assert!(
                msg.contains(&key) && msg.contains("expected"),
                "{what}: 400 without naming {key} and what it expects: {msg}"
            );
            assert!(
                msg.len() < 1_000,
                "{what}: a {}-byte message quotes too much",
                msg.len()
            );
        }
        404 => assert!(
            msg.contains("not found") || msg.contains("no such endpoint"),
            "{what}: 404 that does not say what is missing: {msg}"
        ),
        // Conflicts: a stage not waiting, a lease that is not this one.
        _ => {}
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_path_parameters_get_a_4xx_naming_them_and_change_nothing() {
    let f = fixture().await;
    let addr = f.daemon.addr;
    let cases = env_u64("ORCH_FUZZ_CASES", 60) as usize;
    let mut rng = Rng(env_u64("ORCH_FUZZ_SEED", 20261121));
    let real = [
        f.run_id.clone(),
        f.agent_id.clone(),
        f.link.clone(),
        "ship".into(),
    ];
    let real: Vec<&str> = real.iter().map(String::as_str).collect();

    // Answers a client acts on, spelled out.
    let a = send(addr, "GET", "/v1/runs/%FF%FE", Some(ADMIN), "").await;
    let msg = error_of("invalid UTF-8", &a);
    assert_eq!(a.status, 400);
    assert!(
        msg.contains("`id`") && msg.contains("not UTF-8") && msg.contains("a run id"),
        "{msg}"
    );
    let a = send(
        addr,
        "POST",
        "/v1/jobs/12x/complete",
        Some(AGENT),
        &f.body("complete"),
    )
    .await;
    let msg = error_of("a job id that is no number", &a);
    assert_eq!(a.status, 400);
    assert!(
        msg.contains("`id` is \"12x\": expected a job id, a whole number"),
        "{msg}"
    );
    let a = send(
        addr,
        "POST",
        &format!("/v1/runs/{}/questions/1e99/answer", f.run_id),
        Some(ADMIN),
        &f.body("answer"),
    )
    .await;
    assert!(error_of("qid", &a).contains("`qid` is \"1e99\": expected a question id"));
    // `_` and `%` were LIKE wildcards in run id prefixes: `_` named the only run.
    for id in ["_", "%25", "%25%25", "_%25"] {
        let a = send(
            addr,
            "POST",
            &format!("/v1/runs/{id}/cancel"),
            Some(ADMIN),
            "",
        )
        .await;
        assert_eq!(a.status, 404, "{id}: {}", a.body);
        let a = send(addr, "GET", &format!("/v1/runs/{id}"), Some(ADMIN), "").await;
        assert_eq!(a.status, 404, "{id}: {}", a.body);
    }
    for (method, path) in [
        ("DELETE", "/v1/runs/x"),
        ("PUT", "/v1/agents"),
        ("GET", "/v1/runs/x/cancel"),
    ] {
        let a = send(addr, method, path, Some(ADMIN), "").await;
        assert_eq!(a.status, 405, "{method} {path}: {}", a.body);
        assert!(error_of(method, &a).contains("does not take that method"));
    }
    let upper = f.run_id.to_uppercase();
    let a = send(
        addr,
        "GET",
        &format!("/v1/runs/{}", &upper[..upper.len() - 2]),
        Some(ADMIN),
        "",
    )
    .await;
    assert_eq!(
        a.status, 404,
        "run id prefixes are case-sensitive: {}",
        a.body
    );

    let before = snapshot(&f.store).await;
    let (mut tried, mut accepted) = (0, 0);
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for (method, template) in ROUTES {
        let params: Vec<&str> = template
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for _ in 0..cases {
            let param = *rng.pick(&params);
            let mut raw = value(&mut rng, &real);
            // A POST to something that exists would change it, rightly.
            while *method == "POST"
                && String::from_utf8(decode(&raw, false)).is_ok_and(|v| f.resolves(param, &v))
            {
                raw = value(&mut rng, &real);
            }
            let mut target = template.to_string();
            for p in &params {
                let v = if *p == param { raw.clone() } else { f.real(p) };
                target = target.replace(&format!("{{{p}}}"), &v);
            }
            let what = format!("{method} {}", &target[..target.len().min(200)]);
            let a = send(
                addr,
                method,
                &target,
                token_for(template),
                &f.body(template),
            )
            .await;
            if check_path_answer(&f, &what, param, &raw, &a) {
                accepted += 1;
            }
            tried += 1;
            *statuses.entry(a.status).or_default() += 1;
            let after = snapshot(&f.store).await;
            assert_eq!(
                after, before,
                "{what}: answered {} but changed the store",
                a.status
            );
        }
    }
    eprintln!("{tried} bad path parameters sent, {accepted} of them naming something that exists; answers {statuses:?}");
    f.daemon.shutdown_token().cancel();
    f.daemon.wait().await.unwrap();
}

/// A query string's parameters and the kind of value each takes.
type Params = Vec<(&'static str, Kind)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_strings_get_a_400_naming_the_parameter_and_change_nothing() {
    let f = fixture().await;
    let addr = f.daemon.addr;
    let cases = 3 * env_u64("ORCH_FUZZ_CASES", 60) as usize;
    let mut rng = Rng(env_u64("ORCH_FUZZ_SEED", 20261121) ^ 0x51);
    let real = [f.run_id.as_str(), "build", "run,stage"];
    let explain = format!("/v1/runs/{}/explain", f.run_id);
    let routes: [(&str, Params, &str); 3] = [
        ("/v1/runs", vec![("limit", Kind::U32)], "limit=5"),
        (&explain, vec![("stage", Kind::Text)], "stage=build"),
        (
            "/v1/events",
            vec![
                ("since", Kind::I64),
                ("run", Kind::Text),
                ("entities", Kind::Text),
            ],
            "since=0&entities=run,stage",
        ),
    ];
    let a = send(addr, "GET", "/v1/runs?limit=-1", Some(ADMIN), "").await;
    let msg = error_of("limit=-1", &a);
    assert_eq!(a.status, 400);
    assert!(
        msg.contains("limit: invalid digit") && msg.contains("expected `limit`: a whole number"),
        "{msg}"
    );
    let a = send(
        addr,
        "GET",
        "/v1/events?since=9223372036854775808",
        Some(ADMIN),
        "",
    )
    .await;
    assert!(error_of("since", &a).contains("since: number too large"));

    let before = snapshot(&f.store).await;
    let (mut tried, mut accepted) = (0, 0);
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for (path, known, valid) in &routes {
        let a = send(addr, "GET", &format!("{path}?{valid}"), Some(ADMIN), "").await;
        assert_eq!(a.status, 200, "{path}?{valid}: {}", a.body);
        for _ in 0..cases {
            let q = query(&mut rng, known, &real);
            let what = format!("GET {path}?{}", &q[..q.len().min(200)]);
            let a = send(addr, "GET", &format!("{path}?{q}"), Some(ADMIN), "").await;
            let bad = query_problems(&q, known);
            assert!(a.status < 500, "{what}: {}: {}", a.status, a.body);
            if bad.is_empty() {
                // A filter that matches nothing is still a filter; only a
                // stage the run lacks is missing.
                let missing = a.status == 404 && error_of(&what, &a).contains("not found");
                assert!(
                    a.status < 300 || (*path == explain && missing),
                    "{what}: {}: {}",
                    a.status,
                    a.body
                );
                accepted += 1;
            } else {
                assert_eq!(
                    a.status, 400,
                    "{what}: bad {bad:?} answered {}: {}",
                    a.status, a.body
                );
                let msg = error_of(&what, &a);
                assert!(
                    bad.iter().any(|b| msg.contains(b.as_str())) && msg.contains("expected `"),
                    "{what}: 400 that names none of {bad:?}: {msg}"
                );
            }
            tried += 1;
            *statuses.entry(a.status).or_default() += 1;
            assert_eq!(
                snapshot(&f.store).await,
                before,
                "{what}: changed the store"
            );
        }
    }
    eprintln!(
        "{tried} query strings sent, {accepted} of them valid and answered; answers {statuses:?}"
    );
    f.daemon.shutdown_token().cancel();
    f.daemon.wait().await.unwrap();
}
