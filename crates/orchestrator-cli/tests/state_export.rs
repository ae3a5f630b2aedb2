//! `orch daemon --state-dir DIR`: the files tools read instead of HTTP,
//! from a real daemon and agent, across a daemon killed and restarted.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn read_json(path: &std::path::Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The seqs of `transitions.jsonl`, every line whole JSON.
fn seqs(dir: &std::path::Path) -> Vec<i64> {
    std::fs::read_to_string(dir.join("transitions.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["seq"].as_i64().unwrap()
        })
        .collect()
}

/// Waits until `current.json` shows `run` in `state`.
fn wait_current(dir: &std::path::Path, run: &str, state: &str) -> Value {
    wait_for(&format!("current.json to show {run} {state}"), LONG, || {
        let doc = read_json(&dir.join("current.json"))?;
        let found = doc["runs"]
            .as_array()?
            .iter()
            .any(|r| r["id"] == run && r["state"] == state);
        found.then_some(doc)
    })
}

#[test]
fn the_state_directory_follows_runs_and_a_restart_neither_repeats_nor_skips() {
    let mut h = Harness::new();
    let dir = h.root().join("state");
    let state = dir.to_str().unwrap().to_owned();
    let first = h.start_daemon(&["--state-dir", &state]);
    h.start_agent(&first, "worker", 2);
    let run = h.submit(&h.example("diamond.yaml"));
    h.wait_run_end(&first, &run);
    let doc = wait_current(&dir, &run, "succeeded");
    assert!(
        doc["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "worker"),
        "{doc:#}"
    );
    let metrics = read_json(&dir.join("metrics.json")).expect("metrics.json at start");
    assert!(metrics["store"]["batches"].is_u64(), "{metrics:#}");

    // Every transition of the store, in order, once.
    let log = http(
        &first,
        "GET",
        &format!("/v1/runs/{run}/transitions"),
        Some(&first.admin_token),
        None,
    )
    .json();
    let last_of_run = log.as_array().unwrap().last().unwrap()["seq"]
        .as_i64()
        .unwrap();
    let before = wait_for("the log to reach the run's last transition", LONG, || {
        let s = seqs(&dir);
        (s.last().copied() >= Some(last_of_run)).then_some(s)
    });
    assert!(before.windows(2).all(|w| w[0] < w[1]), "{before:?}");
    assert_eq!(before[0], 1, "{before:?}");
    assert_eq!(doc["last_seq"].as_i64().unwrap(), *before.last().unwrap());

    // Killed mid-append (a half line left behind) and started again: the
    // half line is cut off and the log goes on after its last whole line.
    h.kill9(first.id);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("transitions.jsonl"))
            .unwrap();
        f.write_all(b"{\"seq\": 99999, \"enti").unwrap();
    }
    let second = h.start_daemon_on(
        &format!("127.0.0.1:{}", first.port),
        &["--state-dir", &state],
    );
    let again = h.submit(&h.example("diamond.yaml"));
    h.wait_run_end(&second, &again);
    wait_current(&dir, &again, "succeeded");
    let after = wait_for("the second run's transitions", LONG, || {
        let s = seqs(&dir);
        (s.len() > before.len()).then_some(s)
    });
    assert!(
        after.windows(2).all(|w| w[0] < w[1]),
        "a seq repeated or went back: {after:?}"
    );
    assert_eq!(&after[..before.len()], &before[..]);
    // No temporary file is left beside the atomic ones.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}
