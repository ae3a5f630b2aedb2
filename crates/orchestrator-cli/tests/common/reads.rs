//! What the tests read from a daemon, as the admin: a run's detail, its
//! stages, jobs and transitions, and a metric of an exposition.

use orchestrator_core::RunId;
use serde_json::Value;

use super::{block_on, http, wait_for, Daemon, Harness, LONG};

/// `GET /v1/runs/RUN` of daemon `d`, which must answer it, as JSON.
pub fn run_detail(d: &Daemon, run: &str) -> Value {
    let detail =
        block_on(d.admin().run(&RunId::from(run))).unwrap_or_else(|e| panic!("run {run}: {e}"));
    serde_json::to_value(detail).expect("a run detail is JSON")
}

/// `GET /v1/runs/{run}/transitions`: the run's log, oldest first, as JSON.
pub fn run_transitions(d: &Daemon, run: &str) -> Value {
    Value::Array(transitions(d, run))
}

/// `GET path` as the admin; the answer must be 200 and JSON.
pub fn admin_get(d: &Daemon, path: &str) -> Value {
    let r = http(d, "GET", path, Some(&d.admin_token), None);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

/// The value of a metric line `NAME VALUE` (no labels) in a Prometheus exposition.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The stages of a run detail, by id: (state, attempt).
pub fn stage<'a>(detail: &'a Value, id: &str) -> &'a Value {
    detail["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage_id"] == id)
        .unwrap_or_else(|| panic!("no stage {id} in {detail:#}"))
}

/// Waits until stage `id` of `run` is in `state`; returns the run's detail then.
pub fn wait_stage(h: &Harness, run: &str, id: &str, state: &str) -> Value {
    wait_for(&format!("stage {id} of {run} to be {state}"), LONG, || {
        let d = h.show(run);
        (stage(&d, id)["state"] == state).then_some(d)
    })
}

/// The jobs of one stage of a run detail.
pub fn jobs_of<'a>(detail: &'a Value, stage_id: &str) -> Vec<&'a Value> {
    detail["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["stage_id"] == stage_id)
        .collect()
}

/// The transitions log of a run.
pub fn transitions(d: &Daemon, run: &str) -> Vec<Value> {
    let log = block_on(d.admin().transitions(&RunId::from(run)))
        .unwrap_or_else(|e| panic!("run {run}'s log: {e}"));
    log.iter()
        .map(|t| serde_json::to_value(t).expect("a transition is JSON"))
        .collect()
}
