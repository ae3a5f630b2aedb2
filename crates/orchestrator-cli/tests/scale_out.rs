//! Scale-out: two daemons on one PostgreSQL database, agents on each. A
//! workflow of 2,000 steps submitted through one daemon finishes with
//! every step completed exactly once, while that daemon is SIGKILLed and
//! started again mid-run; the other answers for the run throughout, and
//! its event stream carries the first daemon's commits. Needs the server
//! `scripts/postgres.sh` starts (ORCH_TEST_POSTGRES).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::Value;

const STAGES: usize = 20;
const STEPS_PER_STAGE: usize = 100;

/// Two layers of stages: the second layer's each needs one of the first.
fn workflow() -> String {
    let mut wf = String::from("name: scale\nstages:\n");
    for i in 0..STAGES {
        wf.push_str(&format!("  - id: s{i:02}\n"));
        if i >= STAGES / 2 {
            wf.push_str(&format!("    needs: [s{:02}]\n", i - STAGES / 2));
        }
        wf.push_str("    steps:\n");
        for _ in 0..STEPS_PER_STAGE {
            wf.push_str("      - commands:\n          - argv: [\"true\"]\n");
        }
    }
    wf
}

fn store_url() -> String {
    let url = std::env::var("ORCH_TEST_POSTGRES")
        .expect("ORCH_TEST_POSTGRES is not set: run scripts/postgres.sh (scripts/test does)");
    let schema = format!(
        "scale_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    format!("{url}?schema={schema}")
}

fn succeeded_jobs(detail: &Value) -> usize {
    detail["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "succeeded")
        .count()
}

/// Reads `/v1/events` of `d` in a thread, from the moment this returns;
/// returns the transitions' seqs, entity ids and new states.
fn follow_events(d: &Daemon) -> std::sync::mpsc::Receiver<(i64, String, String)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut events = block_on(d.admin().events(&EventFilter::default()))
        .unwrap_or_else(|e| panic!("/v1/events: {e}"));
    std::thread::spawn(move || {
        block_on(async move {
            while let Some(Ok(t)) = events.next().await {
                if tx.send((t.seq, t.entity_id, t.to.to_string())).is_err() {
                    return;
                }
            }
        })
    });
    rx
}

#[test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs PostgreSQL: run scripts/test"
)]
fn two_daemons_share_one_database_and_a_run_survives_one_being_killed() {
    let store = store_url();
    let flags = ["--store", store.as_str()];
    let mut h = Harness::new();
    let a = h.start_daemon(&flags);
    // The second daemon: a data directory of its own with the same tokens,
    // so agents and users present the same credentials to either.
    let data_a = h.data.clone();
    let data_b = h.root().join("data-b");
    std::fs::create_dir_all(&data_b).unwrap();
    for token in ["admin.token", "agent.token"] {
        std::fs::copy(data_a.join(token), data_b.join(token)).unwrap();
    }
    h.data = data_b;
    let b = h.start_daemon(&flags);
    h.data = data_a;
    let listen_a = format!("127.0.0.1:{}", a.port);

    let events_b = follow_events(&b);
    let _agents: Vec<ProcId> = vec![
        h.start_agent(&a, "a1", 2),
        h.start_agent(&a, "a2", 2),
        h.start_agent(&b, "b1", 2),
        h.start_agent(&b, "b2", 2),
    ];
    let file = h.project.join("scale.yaml");
    std::fs::write(&file, workflow()).unwrap();
    let started = Instant::now();
    let run = h.submit(&file);

    // Daemon B answers for a run submitted through A.
    let at_b = run_detail(&b, &run);
    assert_eq!(at_b["run"]["stages_total"], STAGES);

    // Kill A once a third of the steps are done; start it again at once.
    wait_for("a third of the steps", Duration::from_secs(600), || {
        (succeeded_jobs(&run_detail(&b, &run)) >= STAGES * STEPS_PER_STAGE / 3).then_some(())
    });
    h.kill9(a.id);
    let done_while_a_was_down = succeeded_jobs(&run_detail(&b, &run));
    std::thread::sleep(Duration::from_millis(500));
    let progressed = succeeded_jobs(&run_detail(&b, &run));
    let a = h.start_daemon_on(&listen_a, &flags);
    assert_eq!(a.port.to_string(), listen_a.rsplit(':').next().unwrap());

    let end = h.wait_run_end(&b, &run);
    let elapsed = started.elapsed();
    assert_eq!(end["run"]["state"], "succeeded", "{end:#}");
    assert!(
        progressed > done_while_a_was_down,
        "daemon B's agents went on while A was down ({done_while_a_was_down} -> {progressed})"
    );

    // Every step completed exactly once: one job per (stage, step), succeeded.
    let final_detail = run_detail(&a, &run);
    let mut by_step: BTreeMap<(String, u64), Vec<&Value>> = BTreeMap::new();
    for j in final_detail["jobs"].as_array().unwrap() {
        by_step
            .entry((
                j["stage_id"].as_str().unwrap().to_owned(),
                j["step"].as_u64().unwrap(),
            ))
            .or_default()
            .push(j);
    }
    assert_eq!(
        by_step.len(),
        STAGES * STEPS_PER_STAGE,
        "every step has a job"
    );
    for ((stage, step), jobs) in &by_step {
        let ok = jobs.iter().filter(|j| j["state"] == "succeeded").count();
        assert_eq!(ok, 1, "{stage} step {step} completed once: {jobs:#?}");
    }
    assert_eq!(succeeded_jobs(&final_detail), STAGES * STEPS_PER_STAGE);
    // Agents on both daemons did work.
    let mut by_agent: BTreeMap<String, usize> = BTreeMap::new();
    for j in final_detail["jobs"].as_array().unwrap() {
        *by_agent
            .entry(j["agent_id"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    assert!(by_agent.len() >= 3, "{by_agent:?}");

    // B's event stream carried the whole run, A's commits included, in seq order.
    let mut seqs = Vec::new();
    let mut run_ended = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run_ended {
        let left = deadline.saturating_duration_since(Instant::now());
        let (seq, id, to) = events_b
            .recv_timeout(left)
            .expect("daemon B's event stream goes on to the run's end");
        seqs.push(seq);
        run_ended = id == run && to == "succeeded";
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq order");
    let log = run_transitions(&b, &run);
    let submitted_at_a = log.as_array().unwrap()[0]["seq"].as_i64().unwrap();
    assert!(
        seqs.contains(&submitted_at_a),
        "A's first commit reached B's stream"
    );
    eprintln!(
        "scale-out: {} steps on 2 daemons and 4 agents in {:.1} s, daemon A killed at {done_while_a_was_down} steps; jobs by agent {by_agent:?}",
        STAGES * STEPS_PER_STAGE,
        elapsed.as_secs_f64()
    );
}

#[test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs PostgreSQL: run scripts/test"
)]
fn migrate_moves_a_single_machine_store_to_postgres_and_its_runs_go_on() {
    let mut h = Harness::new();
    let d = h.start_up(&[]);
    let done = h.submit(&h.example("diamond.yaml"));
    let end = h.wait_run_end(&d, &done);
    assert_eq!(end["run"]["state"], "succeeded", "{end:#}");
    h.signal(d.id, nix::sys::signal::Signal::SIGTERM);
    h.wait_exit(d.id, Duration::from_secs(60));

    let db = h.data.join("orch.db");
    let from = format!("sqlite:{}", db.display());
    // Bad input: named, nothing copied.
    let bad = h.orch(&["migrate", "--from", &from, "--to", "sqlite:/tmp/x.db"]);
    bad.expect_code(2);
    assert!(
        bad.stderr.contains("--to") && bad.stderr.contains("postgres://"),
        "{bad}"
    );
    let missing = h.orch(&[
        "migrate",
        "--from",
        "/nowhere/orch.db",
        "--to",
        &store_url(),
    ]);
    missing.expect_code(2);
    assert!(missing.stderr.contains("/nowhere/orch.db"), "{missing}");

    let to = store_url();
    let out = h.orch(&["migrate", "--from", &from, "--to", &to, "-o", "json"]);
    out.expect_code(0);
    let tables = out.json()["tables"].clone();
    let rows = |t: &str| {
        tables
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["table"] == t)
            .map(|r| r["rows"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("no {t} in {tables}"))
    };
    assert_eq!(rows("runs"), 1);
    assert_eq!(rows("stage_runs"), 4);
    // Into the same, no longer empty store: refused.
    let again = h.orch(&["migrate", "--from", &from, "--to", &to]);
    again.expect_code(2);
    assert!(again.stderr.contains("already holds 1 runs"), "{again}");

    // The daemon on PostgreSQL has the run as it was, and runs new ones.
    let pg = h.start_up(&["--store", &to]);
    let shown = h.show(&done);
    assert_eq!(shown["run"]["state"], "succeeded");
    assert_eq!(shown["stages"], end["stages"]);
    let next = h.submit(&h.example("diamond.yaml"));
    assert_eq!(h.wait_run_end(&pg, &next)["run"]["state"], "succeeded");
}
