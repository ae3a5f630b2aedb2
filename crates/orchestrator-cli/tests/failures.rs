//! When things die: stale completions, agents killed mid-step or stopped
//! with SIGTERM, a daemon killed mid-run. Each test kills real processes and
//! checks what the store and the user see afterwards.

mod common;

use orchestrator_core::RunId;
use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

fn outcome(success: bool) -> Value {
    json!({
        "success": success,
        "exit_codes": [0],
        "error": null,
        "error_class": null,
        "bundle": ".orchestrator/runs/by-hand",
        "duration_ms": 1
    })
}

#[test]
fn a_completion_with_a_stale_lease_token_is_refused_and_recorded() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    let tok = d.agent_token.clone();
    // The agent's part, played by hand over HTTP.
    let r = post_json(
        &d,
        "/v1/agents",
        &tok,
        &json!({"name": "by-hand", "slots": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let agent_id = r.json()["agent_id"].as_str().unwrap().to_owned();
    let run = h.submit(&h.example("hello.yaml"));

    let job = wait_for("a job to claim", LONG, || {
        let r = post_json(
            &d,
            &format!("/v1/agents/{agent_id}/claim"),
            &tok,
            &json!({"wait_ms": 5000}),
        );
        match r.status {
            200 => Some(r.json()),
            204 => None,
            s => panic!("claim answered {s}: {}", r.text()),
        }
    });
    assert_eq!(job["run_id"], run.as_str());
    assert_eq!(job["stage_id"], "hello");
    let job_id = job["job_id"].as_i64().unwrap();
    let lease_token = job["lease_token"].as_str().unwrap().to_owned();
    let complete = |token: &str| {
        post_json(
            &d,
            &format!("/v1/jobs/{job_id}/complete"),
            &tok,
            &json!({"agent_id": agent_id, "lease_token": token, "outcome": outcome(true)}),
        )
    };

    let r = complete("0123456789abcdef0123456789abcdef");
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.error().contains("lease"), "{}", r.text());

    let refused = |t: &Value| {
        t["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("completion refused"))
    };
    let seen = events(&d, EventFilter::run(&RunId::from(&run), 0), LONG, refused);
    let t = seen
        .iter()
        .find(|t| refused(t))
        .unwrap_or_else(|| panic!("no refusal among the run's transitions: {seen:#?}"));
    assert_eq!(t["entity"], "job");
    assert_eq!(t["entity_id"], job_id.to_string());
    assert_eq!(t["from"], "leased");
    assert_eq!(t["to"], "leased", "a refusal changes nothing");
    // The refusal did not end the job: it is still the agent's.
    let detail = h.show(&run);
    assert_eq!(jobs_of(&detail, "hello")[0]["state"], "leased");

    let r = complete(&lease_token);
    assert_eq!(r.status, 200, "{}", r.text());
    let done = r.json();
    assert_eq!(done["job_id"], job_id);
    assert_eq!(done["stage_state"], "succeeded");
    assert_eq!(done["run_state"], "succeeded");

    // A job completes at most once: the same completion again (its answer
    // lost) is acknowledged as such and records nothing.
    let r = complete(&lease_token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["again"], true, "{}", r.text());
    // Under another token it is refused.
    let r = complete("fedcba9876543210fedcba9876543210");
    assert_eq!(r.status, 409, "{}", r.text());
    r.error();

    let detail = h.show(&run);
    assert_eq!(detail["run"]["state"], "succeeded");
    let jobs = jobs_of(&detail, "hello");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["state"], "succeeded");
    let metrics = http(&d, "GET", "/metrics", Some(&d.admin_token), None).text();
    assert!(
        metric(&metrics, "orch_stale_completions_total").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "orch_completions_total"),
        Some(1.0),
        "{metrics}"
    );
}

/// One stage whose first attempt hangs (recording its pid) and whose later
/// attempts finish at once.
const HANGS_ON_FIRST_ATTEMPT: &str = r#"
name: restartable
stages:
  - id: work
    steps:
      - commands:
          - argv:
              - sh
              - -c
              - |
                echo $$ > "attempt-$ORCH_ATTEMPT.pid"
                if [ "$ORCH_ATTEMPT" = 1 ]; then exec sleep 60; fi
                echo "attempt $ORCH_ATTEMPT finished"
"#;

#[test]
fn an_agent_killed_mid_step_loses_its_lease_and_the_stage_restarts_on_another_agent() {
    let mut h = Harness::new();
    let d = h.start_daemon(&["--lease-ttl-ms", "1500", "--heartbeat-ms", "300"]);
    let a = h.start_agent(&d, "doomed", 1);
    let file = h.project.join("restartable.yaml");
    std::fs::write(&file, HANGS_ON_FIRST_ATTEMPT).unwrap();
    let run = h.submit(&file);

    // Running, and its command has started.
    let pid_file = h.worktree(&run).join("attempt-1.pid");
    let pid = wait_for("attempt 1 to start its command", LONG, || {
        let pid = std::fs::read_to_string(&pid_file)
            .ok()?
            .trim()
            .parse::<i32>()
            .ok()?;
        Some(pid)
    });
    h.stray(pid, &run);
    assert_eq!(stage(&h.show(&run), "work")["state"], "running");

    h.kill9(a);
    h.start_agent(&d, "rescuer", 1);

    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let work = stage(&detail, "work");
    assert_eq!(work["state"], "succeeded");
    assert_eq!(work["attempt"], 2, "{detail:#}");
    let jobs = jobs_of(&detail, "work");
    let by_attempt: BTreeMap<i64, &Value> = jobs
        .iter()
        .map(|j| (j["attempt"].as_i64().unwrap(), *j))
        .collect();
    assert_eq!(jobs.len(), 2, "{detail:#}");
    assert_eq!(by_attempt[&1]["state"], "expired", "{detail:#}");
    assert_eq!(by_attempt[&2]["state"], "succeeded", "{detail:#}");
    // The lost attempt counts as a retry of its class.
    assert_eq!(by_attempt[&1]["error_class"], "infra", "{detail:#}");
    let metrics = http(&d, "GET", "/metrics", Some(&d.admin_token), None).text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "orch_retries_total{class=\"infra\"} 1"),
        "{metrics}"
    );
    assert_ne!(
        by_attempt[&1]["agent_id"], by_attempt[&2]["agent_id"],
        "attempt 2 ran on the other agent"
    );
    let bundle = h.project.join(by_attempt[&2]["bundle"].as_str().unwrap());
    let out = std::fs::read_to_string(bundle.join("cmd-000.stdout.log")).unwrap();
    assert_eq!(out.trim(), "attempt 2 finished");
}

#[test]
fn sigterm_to_an_agent_kills_its_running_commands_and_requeues_the_job() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    let a = h.start_agent(&d, "stopping", 1);
    let file = h.project.join("sleepy.yaml");
    std::fs::write(
        &file,
        r#"
name: sleepy
stages:
  - id: nap
    # The test watches the command's pids as the host numbers them.
    sandbox: process
    steps:
      - commands:
          - argv: [sh, -c, 'sleep 60 & echo $$ $! > pids.tmp; mv pids.tmp pids; wait']
"#,
    )
    .unwrap();
    let run = h.submit(&file);

    let pids = sleepy_pids(&mut h, &run);

    h.signal(a, Signal::SIGTERM);
    let status = h.wait_exit(a, Duration::from_secs(10));
    assert!(
        status.success(),
        "the agent exited with {status}:\n{}",
        h.log(a)
    );
    for &p in &pids {
        // Killed with their process group; gone once the kernel has reaped them.
        wait_for(
            &format!("process {p} to be gone"),
            Duration::from_secs(10),
            || process_gone(p).then_some(()),
        );
    }

    // The lost attempt waits out its backoff (`retrying`), then its next
    // attempt is queued.
    let detail = wait_for("the next attempt to be queued", LONG, || {
        let d = h.show(&run);
        (stage(&d, "nap")["state"] == "queued").then_some(d)
    });
    assert_eq!(detail["run"]["state"], "running");
    let nap = stage(&detail, "nap");
    assert_eq!(
        nap["state"], "queued",
        "nobody is left to run it: {detail:#}"
    );
    assert_eq!(nap["attempt"], 2, "{detail:#}");
    let jobs = jobs_of(&detail, "nap");
    let first = jobs
        .iter()
        .find(|j| j["attempt"] == 1)
        .expect("the first attempt's job");
    assert_eq!(first["state"], "failed", "{detail:#}");
    assert_eq!(first["error_class"], "infra", "{detail:#}");
    assert!(
        first["error"].as_str().unwrap().contains("shutting down"),
        "{detail:#}"
    );
    let again = jobs
        .iter()
        .find(|j| j["attempt"] == 2)
        .expect("a new job for attempt 2");
    assert_eq!(again["state"], "queued");
}

#[test]
fn a_daemon_killed_mid_run_resumes_from_its_store() {
    const STAGES: usize = 30;
    let mut h = Harness::new();
    let first = h.start_daemon(&[]);
    h.start_agent(&first, "survivor", 2);
    let mut wf = String::from("name: chain\nstages:\n");
    for i in 0..STAGES {
        wf.push_str(&format!("  - id: s{i:02}\n"));
        if i > 0 {
            wf.push_str(&format!("    needs: [s{:02}]\n", i - 1));
        }
        wf.push_str("    steps:\n      - commands:\n          - argv: [sleep, '0.1']\n");
    }
    let file = h.project.join("chain.yaml");
    std::fs::write(&file, wf).unwrap();
    let run = h.submit(&file);

    let done_before = wait_for("a few stages to succeed", LONG, || {
        let r = http(
            &first,
            "GET",
            &format!("/v1/runs/{run}"),
            Some(&first.admin_token),
            None,
        );
        let n = r.json()["run"]["stages_succeeded"].as_u64()?;
        (n >= 3).then_some(n)
    });
    h.kill9(first.id);
    assert!(
        (done_before as usize) < STAGES,
        "the run ended before the daemon was killed"
    );

    // Same data directory, same port: the agent keeps its --server URL.
    let second = h.start_daemon_on(&format!("127.0.0.1:{}", first.port), &[]);
    assert_eq!(second.url, first.url);
    assert_eq!(
        second.admin_token, first.admin_token,
        "tokens persist in the data dir"
    );

    let detail = h.wait_run_end(&second, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    assert_eq!(detail["run"]["stages_succeeded"], STAGES);
    let mut succeeded: BTreeMap<String, usize> = BTreeMap::new();
    for j in detail["jobs"].as_array().unwrap() {
        if j["state"] == "succeeded" {
            *succeeded
                .entry(j["stage_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    for s in detail["stages"].as_array().unwrap() {
        let id = s["stage_id"].as_str().unwrap();
        assert_eq!(s["state"], "succeeded", "stage {id}: {detail:#}");
        assert_eq!(
            succeeded.get(id).copied().unwrap_or(0),
            1,
            "stage {id} must be recorded succeeded exactly once: {detail:#}"
        );
    }
    assert_eq!(succeeded.len(), STAGES);
}

#[test]
fn cancelling_a_run_kills_its_running_commands_at_once_and_records_it() {
    let mut h = Harness::new();
    // Beats are two minutes apart and the daemon answers a waiting heartbeat
    // after 30 s at most: only the revocation answering the heartbeat at
    // once can stop the commands inside the 20 s allowed below.
    let d = h.start_daemon(&["--heartbeat-ms", "120000", "--lease-ttl-ms", "300000"]);
    let a = h.start_agent(&d, "worker", 1);
    let file = h.project.join("sleepy.yaml");
    std::fs::write(
        &file,
        r#"
name: sleepy
stages:
  - id: nap
    # The test watches the command's pids as the host numbers them.
    sandbox: process
    steps:
      - commands:
          - argv: [sh, -c, 'sleep 60 & echo $$ $! > pids.tmp; mv pids.tmp pids; wait']
  - id: after
    needs: [nap]
    steps:
      - commands:
          - argv: [echo, never]
"#,
    )
    .unwrap();
    let run = h.submit(&file);
    let pids = sleepy_pids(&mut h, &run);

    // A prefix of the id is enough for the CLI.
    let out = h.orch(&["cancel", &run[..6]]);
    out.expect_code(0);
    assert!(out.stdout.contains("cancelled"), "{out}");
    for &p in &pids {
        wait_for(
            &format!("process {p} to be killed"),
            Duration::from_secs(20),
            || process_gone(p).then_some(()),
        );
    }

    let detail = h.show(&run);
    assert_eq!(detail["run"]["state"], "cancelled", "{detail:#}");
    assert_eq!(stage(&detail, "nap")["state"], "cancelled", "{detail:#}");
    assert_eq!(stage(&detail, "after")["state"], "cancelled", "{detail:#}");
    let jobs = jobs_of(&detail, "nap");
    assert_eq!(jobs.len(), 1, "{detail:#}");
    assert_eq!(
        jobs[0]["state"], "cancelled",
        "a revoked job is not completed: {detail:#}"
    );
    assert!(
        h.exited(a).is_none(),
        "the agent goes on after a revocation:\n{}",
        h.log(a)
    );

    // A run that has ended cannot be cancelled; the refusal says why.
    let again = h.orch(&["cancel", &run]);
    assert_eq!(again.code, 2, "{again}");
    assert!(again.stderr.contains("already ended"), "{again}");
}

/// Waits for the sleepy step to write `pids` (its shell and its `sleep 60`)
/// and has the harness kill them at the end if they are still that run's.
fn sleepy_pids(h: &mut Harness, run: &str) -> Vec<i32> {
    let pids_file = h.worktree(run).join("pids");
    let pids: Vec<i32> = wait_for("the step to start its commands", LONG, || {
        let text = std::fs::read_to_string(&pids_file).ok()?;
        let pids: Vec<i32> = text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        (pids.len() == 2).then_some(pids)
    });
    for &p in &pids {
        h.stray(p, run);
    }
    pids
}
