//! Scheduling from end to end, with a real daemon and real agents: stages
//! that need a GPU wait for an agent that has one, a high-priority run makes
//! a low-priority loop stage yield at its checkpoint, a project's policy file
//! limits its runs and stages, and the authorities over a run's priority are
//! explained. Nothing here asserts a duration: orderings are read from the
//! jobs' recorded start and end times.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

// ---------------------------------------------------------------- helpers

/// Starts `orch agent --server URL --name NAME ARGS`.
fn start_agent_with(h: &mut Harness, d: &Daemon, name: &str, args: &[&str]) -> ProcId {
    let mut all = vec!["agent", "--server", d.url.as_str(), "--name", name];
    all.extend_from_slice(args);
    h.spawn(&format!("agent-{name}"), &all)
}

/// `orch agents -o json`.
fn agents(h: &Harness) -> Vec<Value> {
    let out = h.orch(&["agents", "-o", "json"]);
    out.expect_code(0);
    out.json().as_array().unwrap().clone()
}

/// Waits until the agent called `name` is registered and online; returns it.
fn wait_agent(h: &Harness, name: &str) -> Value {
    wait_for(&format!("agent {name} to register"), LONG, || {
        agents(h)
            .into_iter()
            .find(|a| a["name"] == name && a["online"] == true)
    })
}

/// `orch run FILE --project PROJECT ARGS`, to its end.
fn run(h: &Harness, file: &Path, args: &[&str]) -> Out {
    let mut all = vec![
        "run",
        file.to_str().unwrap(),
        "--project",
        h.project.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    h.orch(&all)
}

/// Submits in text mode; returns the run id and what `orch run` printed.
fn submit_with(h: &Harness, file: &Path, args: &[&str]) -> (String, Out) {
    let out = run(h, file, args);
    out.expect_code(0);
    let id = out.stdout.trim().to_owned();
    assert!(!id.is_empty() && !id.contains('\n'), "no run id:\n{out}");
    (id, out)
}

/// `orch explain RUN [STAGE]` as text.
fn explain(h: &Harness, args: &[&str]) -> String {
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    let out = h.orch(&all);
    out.expect_code(0);
    out.stdout
}

/// A job's [start, end] in daemon milliseconds; panics unless it ran and ended.
fn span(job: &Value) -> (i64, i64) {
    match (job["started_at_ms"].as_i64(), job["ended_at_ms"].as_i64()) {
        (Some(s), Some(e)) if s <= e => (s, e),
        _ => panic!("job did not run from a start to an end: {job:#}"),
    }
}

/// The most spans open at one moment (a span ending when another starts
/// does not overlap it).
fn max_overlap(spans: &[(i64, i64)]) -> usize {
    let mut points: Vec<(i64, i32)> = spans.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    // At equal times ends (-1) come before starts (+1).
    points.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in points {
        open += d;
        most = most.max(open);
    }
    most as usize
}

fn id_of(agent: &Value) -> String {
    agent["id"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------- GPUs

const GPU_WORKFLOW: &str = r#"
name: gpu-train
stages:
  - id: lint
    steps:
      - commands:
          - argv: [echo, lint ok]
  - id: train
    resources: {gpus: 1}
    steps:
      - shell: true
        commands:
          - run: 'printf "%s\n%s\n" "$CUDA_VISIBLE_DEVICES" "$ORCH_GPUS" > gpu.txt'
"#;

#[test]
fn a_stage_that_needs_a_gpu_waits_for_an_agent_with_one_and_is_told_which() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    start_agent_with(
        &mut h,
        &d,
        "cpu",
        &["--slots", "2", "--gpu", "none", "--memory", "4G"],
    );
    let cpu = id_of(&wait_agent(&h, "cpu"));
    let file = h.write("gpu.yaml", GPU_WORKFLOW);

    // The submitter is warned at once: nothing registered could run `train`.
    let (run_id, out) = submit_with(&h, &file, &[]);
    let warning = out
        .stderr
        .lines()
        .find(|l| l.contains("no registered agent could ever run it"))
        .unwrap_or_else(|| panic!("no warning about train:\n{out}"));
    assert!(warning.starts_with("warning: stage train "), "{warning}");
    assert!(warning.contains("1 whole GPU"), "{warning}");
    assert!(
        !out.stderr.contains("stage lint"),
        "lint fits the agent:\n{out}"
    );

    // lint runs on the CPU agent; train stays queued, and explain says why.
    wait_stage(&h, &run_id, "lint", "succeeded");
    let detail = h.show(&run_id);
    assert_eq!(stage(&detail, "train")["state"], "queued", "{detail:#}");
    assert!(jobs_of(&detail, "train")
        .iter()
        .all(|j| j["state"] == "queued"));
    let why = explain(&h, &[&run_id, "train"]);
    assert!(
        why.contains("no registered agent could ever run it"),
        "{why}"
    );
    assert!(
        why.contains(&format!(
            "agent {cpu}: needs 1 whole GPU, the agent has 0 such GPUs"
        )),
        "{why}"
    );
    assert!(
        !why.contains("stage lint"),
        "only train is explained:\n{why}"
    );

    // An agent with two 24G GPUs comes: train runs there, on one of them.
    start_agent_with(
        &mut h,
        &d,
        "gpu",
        &[
            "--slots", "1", "--gpu", "24G", "--gpu", "24G", "--memory", "8G",
        ],
    );
    let detail = h.wait_run_end(&d, &run_id);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let listed = agents(&h);
    let by_name = |n: &str| {
        listed
            .iter()
            .find(|a| a["name"] == n)
            .unwrap_or_else(|| panic!("no agent {n}: {listed:#?}"))
            .clone()
    };
    let (cpu_view, gpu_view) = (by_name("cpu"), by_name("gpu"));
    let gpu = id_of(&gpu_view);
    let ran_on = |s: &str| {
        let jobs = jobs_of(&detail, s);
        assert_eq!(jobs.len(), 1, "{detail:#}");
        assert_eq!(jobs[0]["state"], "succeeded", "{detail:#}");
        jobs[0]["agent_id"].as_str().unwrap().to_owned()
    };
    assert_eq!(ran_on("lint"), cpu);
    assert_eq!(ran_on("train"), gpu);

    // The step was told its GPU, by index, in both variables.
    let told = std::fs::read_to_string(h.worktree(&run_id).join("gpu.txt")).unwrap();
    let lines: Vec<&str> = told.lines().collect();
    assert_eq!(lines.len(), 2, "{told:?}");
    assert!(
        lines[0] == "0" || lines[0] == "1",
        "CUDA_VISIBLE_DEVICES is one GPU of the agent: {told:?}"
    );
    assert_eq!(lines[1], lines[0], "ORCH_GPUS says the same: {told:?}");

    // `orch agents` shows what each agent declared.
    assert_eq!(cpu_view["memory_mb"], 4096, "{cpu_view:#}");
    assert_eq!(
        cpu_view["gpus"].as_array().unwrap().len(),
        0,
        "{cpu_view:#}"
    );
    let gpus = gpu_view["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2, "{gpu_view:#}");
    for (i, g) in gpus.iter().enumerate() {
        assert_eq!(g["index"], i as u64, "{gpu_view:#}");
        assert_eq!(g["memory_mb"], 24 * 1024, "{gpu_view:#}");
    }
    assert_eq!(gpu_view["memory_mb"], 8192, "{gpu_view:#}");
    assert_eq!(
        gpu_view["free"]["gpus"].as_array().unwrap().len(),
        2,
        "{gpu_view:#}"
    );
}

// ---------------------------------------------------------------- pre-emption

/// A loop stage of four iterations; each appends a line to `grind.txt` in
/// the worktree, then holds until the test creates RELEASE (bounded, so a
/// failed test leaves nothing running for long).
const LOW_WORKFLOW: &str = r#"
name: low
stages:
  - id: grind
    # Waits for a release file outside its worktree.
    sandbox: process
    repeat: {max: 4}
    steps:
      - shell: true
        commands:
          - run: 'echo line >> grind.txt; i=0; while [ ! -e "RELEASE" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; sleep 0.2'
"#;

const HIGH_WORKFLOW: &str = r#"
name: high
stages:
  - id: urgent
    steps:
      - commands:
          - argv: [echo, urgent]
"#;

#[test]
fn a_high_priority_run_makes_a_low_priority_loop_yield_at_its_checkpoint_and_it_resumes_after() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    start_agent_with(&mut h, &d, "solo", &["--slots", "1", "--gpu", "none"]);
    let solo = id_of(&wait_agent(&h, "solo"));
    let release = h.root().join("release");
    let low_file = h.write(
        "low.yaml",
        &LOW_WORKFLOW.replace("RELEASE", release.to_str().unwrap()),
    );
    let high_file = h.write("high.yaml", HIGH_WORKFLOW);

    let (low, _) = submit_with(&h, &low_file, &["--priority", "1"]);
    // Step 0 runs: its command has started.
    let grind_txt = h.worktree(&low).join("grind.txt");
    wait_for("grind's step 0 to start", LONG, || {
        std::fs::read_to_string(&grind_txt)
            .is_ok_and(|t| t.lines().count() == 1)
            .then_some(())
    });
    assert_eq!(stage(&h.show(&low), "grind")["state"], "running");

    let (high, _) = submit_with(&h, &high_file, &["--priority", "9"]);
    assert_eq!(h.show(&high)["run"]["priority"], 9);
    // The pre-emption pass asks grind to yield; step 0 goes on meanwhile.
    let asked = wait_for("grind to be asked to yield", LONG, || {
        transitions(&d, &low).into_iter().find(|t| {
            t["entity"] == "stage"
                && t["to"] == "running"
                && t["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("asked to yield"))
        })
    });
    assert!(
        asked["reason"].as_str().unwrap().contains("priority 9"),
        "{asked:#}"
    );
    let why = explain(&h, &[&low, "grind"]);
    assert!(
        why.contains("asked to yield at its next checkpoint"),
        "{why}"
    );
    let detail = h.show(&low);
    assert_eq!(stage(&detail, "grind")["state"], "running", "{detail:#}");
    assert_eq!(h.show(&high)["jobs"][0]["state"], "queued");

    // Step 0 ends: grind yields, urgent runs, then grind resumes.
    std::fs::write(&release, "").unwrap();
    let low_detail = h.wait_run_end(&d, &low);
    let high_detail = h.wait_run_end(&d, &high);
    assert_eq!(low_detail["run"]["state"], "succeeded", "{low_detail:#}");
    assert_eq!(high_detail["run"]["state"], "succeeded", "{high_detail:#}");

    let log = transitions(&d, &low);
    let suspended = log
        .iter()
        .position(|t| t["entity"] == "stage" && t["to"] == "suspended")
        .unwrap_or_else(|| panic!("grind never suspended: {log:#?}"));
    let reason = log[suspended]["reason"].as_str().unwrap();
    assert!(reason.contains("yield"), "{reason}");
    let resumed = log[suspended..]
        .iter()
        .find(|t| t["entity"] == "stage" && t["from"] == "suspended")
        .unwrap_or_else(|| panic!("grind never resumed: {log:#?}"));
    let urgent_job = high_detail["jobs"][0]["id"].as_i64().unwrap();
    assert_eq!(
        resumed["reason"].as_str().unwrap(),
        format!(
            "resumed: the work it yielded to (job {urgent_job}) was placed on agent {solo}; \
             step 1 queued on its agent"
        ),
        "{resumed:#}"
    );

    // Every iteration ran once, to its end, on the one agent: the step
    // running when the high run came was not interrupted. The step queued
    // when grind yielded was withdrawn unstarted and queued again on resume.
    let jobs = jobs_of(&low_detail, "grind");
    let done: Vec<&Value> = jobs
        .iter()
        .copied()
        .filter(|j| j["state"] == "succeeded")
        .collect();
    // A loop's iterations are rounds of its one step.
    let rounds: Vec<(u64, u64)> = done
        .iter()
        .map(|j| (j["step"].as_u64().unwrap(), j["round"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        rounds,
        vec![(0, 1), (0, 2), (0, 3), (0, 4)],
        "{low_detail:#}"
    );
    assert!(done.iter().all(|j| j["agent_id"] == solo.as_str()));
    for j in jobs.iter().filter(|j| j["state"] != "succeeded") {
        assert_eq!(j["state"], "cancelled", "{j:#}");
        assert_eq!((&j["step"], &j["round"]), (&0.into(), &2.into()), "{j:#}");
        assert!(j["started_at_ms"].is_null(), "{j:#}");
    }
    let text = std::fs::read_to_string(&grind_txt).unwrap();
    assert_eq!(text.lines().count(), 4, "{text:?}");

    // urgent ran between grind's step 0 and step 1.
    let urgent = jobs_of(&high_detail, "urgent");
    assert_eq!(urgent.len(), 1, "{high_detail:#}");
    assert_eq!(urgent[0]["agent_id"], solo.as_str());
    let (u_start, u_end) = span(urgent[0]);
    let (_, step0_end) = span(done[0]);
    let (step1_start, _) = span(done[1]);
    assert!(
        step0_end <= u_start,
        "urgent started before step 0 ended: {low_detail:#} {high_detail:#}"
    );
    assert!(
        u_end <= step1_start,
        "step 1 started before urgent ended: {low_detail:#} {high_detail:#}"
    );
}

// ---------------------------------------------------------------- policy

const POLICY: &str = "\
priority: {min: 0, max: 20}
max_parallel_runs: 1
max_parallel_stages: 2
";

const FOUR_STAGES: &str = r#"
name: four
stages:
  - id: s1
    steps: [{commands: [{argv: [sleep, "0.3"]}]}]
  - id: s2
    steps: [{commands: [{argv: [sleep, "0.3"]}]}]
  - id: s3
    steps: [{commands: [{argv: [sleep, "0.3"]}]}]
  - id: s4
    steps: [{commands: [{argv: [sleep, "0.3"]}]}]
"#;

#[test]
fn a_projects_policy_limits_its_runs_and_stages_and_caps_priority_under_the_system_rules() {
    let mut h = Harness::new();
    let policy = h.project.join(".orchestrator/policy.yaml");
    std::fs::create_dir_all(policy.parent().unwrap()).unwrap();
    std::fs::write(&policy, POLICY).unwrap();
    let rules = h.write("rules.yaml", "priority: {min: 0, max: 50}\n");
    let d = h.start_daemon(&["--rules", rules.to_str().unwrap()]);
    let file = h.write("four.yaml", FOUR_STAGES);

    // Three runs submitted before any agent: the first is admitted, the
    // others wait for it.
    let out = run(&h, &file, &["--priority", "99", "-o", "json"]);
    out.expect_code(0);
    let first = out.json();
    assert_eq!(first["state"], "running", "{first:#}");
    assert_eq!(first["priority"]["value"], 20, "{first:#}");
    let a = first["run_id"].as_str().unwrap().to_owned();
    let (b, out_b) = submit_with(&h, &file, &[]);
    assert!(
        out_b
            .stderr
            .lines()
            .any(|l| l.starts_with("warning: queued") && l.contains("max_parallel_runs")),
        "{out_b}"
    );
    let out = run(&h, &file, &["-o", "json"]);
    out.expect_code(0);
    let third = out.json();
    assert_eq!(third["state"], "queued", "{third:#}");
    let c = third["run_id"].as_str().unwrap().to_owned();
    let listed = h.ps();
    let state_of = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {listed:#}"))["state"]
            .clone()
    };
    assert_eq!(state_of(&a), "running");
    assert_eq!(state_of(&b), "queued");
    assert_eq!(state_of(&c), "queued");

    // The project's range caps the suggestion; the system's is wider.
    let detail = h.show(&a);
    assert_eq!(detail["run"]["priority"], 20, "{detail:#}");
    assert_eq!(detail["run"]["suggested_priority"], 99, "{detail:#}");
    assert_eq!(h.show(&b)["run"]["priority"], 0);
    let why = explain(&h, &[&a]);
    let line = why
        .lines()
        .find(|l| l.contains("effective priority"))
        .unwrap_or_else(|| panic!("{why}"));
    assert!(
        line.contains("effective priority 20 (suggested 99"),
        "{line}"
    );
    assert!(
        line.contains("project policy priority range [0, 20]"),
        "{line}"
    );
    assert!(!line.contains("system rules"), "{line}");
    // Two stages of A are queued; the other two are held by the policy.
    let held = wait_for("A's stages to be held", LONG, || {
        let why = explain(&h, &[&a]);
        (why.matches("max_parallel_stages is 2 (project policy)")
            .count()
            == 2)
            .then_some(why)
    });
    assert_eq!(held.matches("), needs 1 slot").count(), 4, "{held}");
    let why = explain(&h, &[&b]);
    assert!(why.contains("max_parallel_runs"), "{why}");

    start_agent_with(&mut h, &d, "big", &["--slots", "4", "--gpu", "none"]);
    let details: Vec<Value> = [&a, &b, &c].iter().map(|r| h.wait_run_end(&d, r)).collect();
    let mut spans = Vec::new();
    let mut most = 0;
    for detail in &details {
        assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
        let jobs = detail["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 4, "{detail:#}");
        let s: Vec<(i64, i64)> = jobs.iter().map(span).collect();
        let overlap = max_overlap(&s);
        assert!(
            overlap <= 2,
            "{overlap} stages of one run ran at once: {detail:#}"
        );
        most = most.max(overlap);
        spans.push((
            s.iter().map(|x| x.0).min().unwrap(),
            s.iter().map(|x| x.1).max().unwrap(),
        ));
    }
    assert_eq!(most, 2, "the agent's 4 slots let 2 stages run at once");
    // One run at a time, in the order submitted.
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "runs overlapped: {spans:?}");
    }

    // A policy file that is wrong refuses the run and says where and what.
    let before = h.ps().as_array().unwrap().len();
    for (text, field) in [
        ("max_parallel_runs: 0\n", "max_parallel_runs"),
        ("max_parallel_run: 2\n", "max_parallel_run"),
    ] {
        std::fs::write(&policy, text).unwrap();
        let out = run(&h, &file, &[]);
        out.expect_code(2);
        assert!(out.stdout.is_empty(), "{out}");
        assert!(out.stderr.contains(".orchestrator/policy.yaml"), "{out}");
        assert!(out.stderr.contains(field), "{out}");
    }
    assert_eq!(h.ps().as_array().unwrap().len(), before);
}
