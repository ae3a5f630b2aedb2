//! Crash safety under fault injection: a workflow of thousands of steps runs
//! while the daemon and agents are SIGKILLed at random moments and started
//! again; afterwards every step must be recorded completed exactly once per
//! attempt of its stage, no stage may be lost, the run must succeed and its
//! transitions log must replay to the stored state.
//!
//! The defaults are the CI variant. The long one is the same test with more
//! steps and kills, e.g.
//! `ORCH_CRASH_STEPS=6000 ORCH_CRASH_KILLS=10 cargo test -p orchestrator-cli --test crash -- --nocapture`
//! (see docs/reliability.md). `ORCH_CRASH_SEED` picks the chaos schedule: the
//! same seed makes the same choices, though not at the same points of the run.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Steps per stage: long enough that kills land mid-stage, so restarts from
/// step 0 really happen.
const STEPS_PER_STAGE: usize = 50;
/// Stages per layer; each stage past the first layer needs two of the layer before.
const LAYER: usize = 10;
/// `MAX_INFRA_ATTEMPTS` of the core: a stage whose attempts are all lost fails.
const MAX_ATTEMPTS: u64 = 5;
const AGENTS: usize = 3;
const SLOTS: u32 = 2;
const DAEMON_FLAGS: &[&str] = &["--lease-ttl-ms", "1500", "--heartbeat-ms", "300"];

/// xorshift64*: the chaos schedule must be reproducible from its seed
/// without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform enough in `lo..=hi` for a test.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn stage_name(i: usize) -> String {
    format!("s{i:03}")
}

/// Layers of `LAYER` stages, `STEPS_PER_STAGE` cheap steps each.
fn workflow(stages: usize) -> String {
    let mut wf = String::from("name: crash\nstages:\n");
    for i in 0..stages {
        wf.push_str(&format!("  - id: {}\n", stage_name(i)));
        if i >= LAYER {
            let layer_start = (i / LAYER - 1) * LAYER;
            let a = i - LAYER;
            let b = layer_start + (a - layer_start + 1) % LAYER;
            wf.push_str(&format!(
                "    needs: [{}, {}]\n",
                stage_name(a),
                stage_name(b)
            ));
        }
        wf.push_str("    steps:\n");
        for _ in 0..STEPS_PER_STAGE {
            wf.push_str("      - commands:\n          - argv: [\"true\"]\n");
        }
    }
    wf
}

fn ended(detail: &Value) -> bool {
    ["succeeded", "failed", "cancelled"]
        .iter()
        .any(|s| detail["run"]["state"] == *s)
}

/// Whether some stage could still lose an attempt without failing. Agent
/// kills stop short of exhausting a stage: a failed stage would be the
/// documented outcome, not a crash-safety finding.
fn agent_kill_is_safe(detail: &Value) -> bool {
    detail["stages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "succeeded" || s["attempt"].as_u64().unwrap() < MAX_ATTEMPTS - 1)
}

#[test]
fn a_long_workflow_survives_daemon_and_agent_kills() {
    let steps = env_u64("ORCH_CRASH_STEPS", 2000) as usize;
    let kills = env_u64("ORCH_CRASH_KILLS", 3) as usize;
    let seed = env_u64("ORCH_CRASH_SEED", 0x0c0f_fee5_eed5);
    let stages = steps.div_ceil(STEPS_PER_STAGE).max(1);
    let steps = stages * STEPS_PER_STAGE;
    let mut rng = Rng::new(seed);

    let mut h = Harness::new();
    let mut d = h.start_daemon(DAEMON_FLAGS);
    let listen = format!("127.0.0.1:{}", d.port);
    let names: Vec<String> = (0..AGENTS).map(|i| format!("w{i}")).collect();
    let mut agents: Vec<ProcId> = names.iter().map(|n| h.start_agent(&d, n, SLOTS)).collect();
    let file = h.project.join("crash.yaml");
    std::fs::write(&file, workflow(stages)).unwrap();
    let started = Instant::now();
    let run = h.submit(&file);

    let (mut daemon_kills, mut agent_kills) = (0, 0);
    let deadline = started + Duration::from_secs(1800);
    loop {
        std::thread::sleep(Duration::from_millis(rng.range(200, 1500)));
        let detail = run_detail(&d, &run);
        if ended(&detail) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run {run} did not end: {detail:#}"
        );
        let daemon_due = daemon_kills < kills;
        let agent_due = agent_kills < kills && agent_kill_is_safe(&detail);
        let kill_daemon = match (daemon_due, agent_due) {
            (false, false) => continue,
            (true, false) => true,
            (false, true) => false,
            (true, true) => rng.next() & 1 == 0,
        };
        if kill_daemon {
            h.kill9(d.id);
            d = h.start_daemon_on(&listen, DAEMON_FLAGS);
            assert_eq!(d.port.to_string(), listen.rsplit(':').next().unwrap());
            daemon_kills += 1;
        } else {
            let i = rng.range(0, AGENTS as u64 - 1) as usize;
            h.kill9(agents[i]);
            // The same name: the agent keeps its id, so the daemon sees it
            // come back and ends its leases at once instead of at expiry.
            agents[i] = h.start_agent(&d, &names[i], SLOTS);
            agent_kills += 1;
        }
    }
    let elapsed = started.elapsed();
    assert!(
        daemon_kills >= kills && agent_kills >= kills,
        "the run ended after {daemon_kills} daemon and {agent_kills} agent kills of \
         {kills} each: give it more steps (ORCH_CRASH_STEPS)"
    );

    let detail = h.show(&run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    assert_eq!(detail["run"]["stages_total"], stages);
    assert_eq!(detail["run"]["stages_succeeded"], stages);
    let stage_list = detail["stages"].as_array().unwrap();
    assert_eq!(stage_list.len(), stages, "no stage lost");
    let mut final_attempt: HashMap<String, u64> = HashMap::new();
    for s in stage_list {
        let id = s["stage_id"].as_str().unwrap();
        assert_eq!(s["state"], "succeeded", "stage {id}: {s:#}");
        final_attempt.insert(id.to_owned(), s["attempt"].as_u64().unwrap());
    }

    // (stage, attempt) -> step -> jobs
    let mut jobs: BTreeMap<(String, u64), BTreeMap<u64, Vec<&Value>>> = BTreeMap::new();
    for j in detail["jobs"].as_array().unwrap() {
        let key = (
            j["stage_id"].as_str().unwrap().to_owned(),
            j["attempt"].as_u64().unwrap(),
        );
        jobs.entry(key)
            .or_default()
            .entry(j["step"].as_u64().unwrap())
            .or_default()
            .push(j);
    }
    let (mut recorded, mut lost, mut redone) = (0, 0, 0);
    let mut lost_why: BTreeMap<String, usize> = BTreeMap::new();
    for ((stage_id, attempt), by_step) in &jobs {
        let last = final_attempt[stage_id];
        assert!(*attempt <= last, "{stage_id} attempt {attempt} > {last}");
        for (step, js) in by_step {
            assert_eq!(
                js.len(),
                1,
                "{stage_id} attempt {attempt} step {step} has one job: {js:#?}"
            );
        }
        let states: Vec<(u64, &str)> = by_step
            .iter()
            .map(|(step, js)| (*step, js[0]["state"].as_str().unwrap()))
            .collect();
        if *attempt == last {
            // The attempt that finished the stage ran every step once.
            let want: Vec<(u64, &str)> = (0..STEPS_PER_STAGE as u64)
                .map(|s| (s, "succeeded"))
                .collect();
            assert_eq!(states, want, "{stage_id} attempt {attempt}");
            recorded += STEPS_PER_STAGE;
        } else {
            // A lost attempt: steps 0..k succeeded, step k was lost to infra.
            let (k, job) = by_step.iter().next_back().unwrap();
            let job = job[0];
            assert!(
                ["expired", "failed", "cancelled"].contains(&job["state"].as_str().unwrap()),
                "{stage_id} attempt {attempt} ends with a lost job: {job:#}"
            );
            if job["state"] == "failed" {
                assert_eq!(job["error_class"], "infra", "{job:#}");
            }
            for (step, state) in &states[..states.len() - 1] {
                assert_eq!(
                    *state, "succeeded",
                    "{stage_id} attempt {attempt} step {step}"
                );
            }
            assert_eq!(
                states.len() as u64,
                k + 1,
                "{stage_id} attempt {attempt}: {states:?}"
            );
            lost += 1;
            // The agent's id and the lateness vary; the cause is what counts.
            let why = job["error"].as_str().unwrap_or("");
            let why = why.split(" (agent").next().unwrap_or(why);
            let why = if why.starts_with("lease expired") {
                "lease expired"
            } else {
                why
            };
            *lost_why.entry(why.to_owned()).or_default() += 1;
            redone += *k as usize;
        }
    }
    assert_eq!(recorded, steps, "every step recorded completed once");
    for (stage_id, last) in &final_attempt {
        for attempt in 1..=*last {
            assert!(
                jobs.contains_key(&(stage_id.clone(), attempt)),
                "{stage_id} attempt {attempt} has no job"
            );
        }
    }

    assert_log_replays_to_state(&d, &run, &detail);

    eprintln!(
        "crash: seed {seed:#x}: {steps} steps in {stages} stages, {daemon_kills} daemon kills, \
         {agent_kills} agent kills, {lost} attempts lost ({redone} succeeded steps redone), \
         nothing lost, {:.1} s; attempts lost by cause: {lost_why:?}",
        elapsed.as_secs_f64()
    );
}

/// Replays the run's transitions: each starts where the entity's previous
/// one ended, and the last of each equals the state stored for it.
fn assert_log_replays_to_state(d: &Daemon, run: &str, detail: &Value) {
    let r = http(
        d,
        "GET",
        &format!("/v1/runs/{run}/transitions"),
        Some(&d.admin_token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let log = r.json();
    let mut last: HashMap<(String, String), String> = HashMap::new();
    let mut prev_seq = 0;
    for t in log.as_array().unwrap() {
        let seq = t["seq"].as_i64().unwrap();
        assert!(seq > prev_seq, "seq strictly increasing: {t}");
        prev_seq = seq;
        let key = (
            t["entity"].as_str().unwrap().to_owned(),
            t["entity_id"].as_str().unwrap().to_owned(),
        );
        if let (Some(from), Some(before)) = (t["from"].as_str(), last.get(&key)) {
            assert_eq!(before, from, "{t} starts where the previous one ended");
        }
        last.insert(key, t["to"].as_str().unwrap().to_owned());
    }
    let state_of = |entity: &str, id: String| {
        last.get(&(entity.to_owned(), id.clone()))
            .unwrap_or_else(|| panic!("no transition of {entity} {id}"))
            .clone()
    };
    assert_eq!(
        state_of("run", run.to_owned()),
        detail["run"]["state"].as_str().unwrap()
    );
    for s in detail["stages"].as_array().unwrap() {
        let id = s["stage_id"].as_str().unwrap();
        assert_eq!(
            state_of("stage", format!("{run}/{id}")),
            s["state"].as_str().unwrap(),
            "stage {id}"
        );
    }
    for j in detail["jobs"].as_array().unwrap() {
        let id = j["id"].as_i64().unwrap();
        assert_eq!(
            state_of("job", id.to_string()),
            j["state"].as_str().unwrap(),
            "job {id}"
        );
    }
}
