//! `orch ask --wait`, end to end with a real daemon, agent, sandbox and git:
//! a step asks, waits while it runs (its stage `awaiting_input`, its job
//! still leased), and prints the answer, which it commits as an artifact;
//! the wait survives a daemon killed and restarted on the same store; a
//! step lost while waiting takes its question with it; bad input and
//! forged tokens are refused. The steps run in the default sandbox
//! (namespace, no network), so they reach the agent through its socket.

mod common;

use common::*;
use serde_json::Value;

/// Short leases, so that a lost agent is noticed quickly.
const FLAGS: &[&str] = &["--lease-ttl-ms", "3000", "--heartbeat-ms", "500"];

/// The one open question of the run, once asked.
fn open_question(h: &Harness, run: &str) -> Value {
    wait_for("the step's question", LONG, || {
        h.show(run)["questions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["state"] == "open")
            .cloned()
    })
}

fn asking_workflow() -> String {
    format!(
        r#"
name: waiting
stages:
  - id: pick
    steps:
      - artifacts: [answer.txt, via.txt]
        commands:
          - argv: [sh, -c, 'if [ -n "$ORCH_AGENT_SOCKET" ]; then echo socket > via.txt; fi; "$0" ask --wait "Which database?" > answer.txt', "{orch}"]
"#,
        orch = orch_bin()
    )
}

#[test]
fn a_step_waits_for_its_answer_while_it_runs_even_across_a_daemon_restart() {
    let mut h = Harness::new();
    let mut d = h.start_daemon(FLAGS);
    let listen = format!("127.0.0.1:{}", d.port);
    h.start_agent(&d, "worker", 1);
    let file = h.write("waiting.yaml", &asking_workflow());
    let run = h.submit(&file);

    let detail = wait_stage(&h, &run, "pick", "awaiting_input");
    let jobs = jobs_of(&detail, "pick");
    assert_eq!(jobs.len(), 1, "{detail:#}");
    assert_eq!(jobs[0]["state"], "leased", "the waiting step still runs");
    let job_id = jobs[0]["id"].clone();
    let q = open_question(&h, &run);
    assert_eq!(q["question"], "Which database?");
    assert_eq!(q["waiting"], true);
    let qid = q["id"].as_i64().unwrap().to_string();
    // Like any question: the inbox, `orch show`, the metrics.
    let items = h.orch(&["inbox", "-o", "json"]).json();
    assert_eq!(items[0]["question"]["id"], q["id"], "{items:#}");
    assert_eq!(items[0]["stage_state"], "awaiting_input");
    let shown = h.orch(&["show", &run]);
    assert!(shown.stdout.contains("its step waits, running"), "{shown}");
    let metrics = http(&d, "GET", "/metrics", Some(&d.admin_token), None).text();
    assert_eq!(
        metric(&metrics, "orch_stages{state=\"awaiting_input\"}"),
        Some(1.0),
        "{metrics}"
    );

    // The daemon dies and comes back on the same store: the step runs on.
    h.kill9(d.id);
    d = h.start_daemon_on(&listen, FLAGS);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let detail = wait_stage(&h, &run, "pick", "awaiting_input");
    let jobs = jobs_of(&detail, "pick");
    assert_eq!(jobs.len(), 1, "{detail:#}");
    assert_eq!(jobs[0]["id"], job_id);
    assert_eq!(jobs[0]["state"], "leased");

    // Hostile text: printed by the step as given, never run.
    let text = "post gres; $(touch pwned) `touch pwned2` \"quoted\"";
    h.orch(&["answer", &run, &qid, text, "--by", "carol"])
        .expect_code(0);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let branch = format!("orch/run/{run}");
    assert_eq!(
        git(&h.project, &["show", &format!("{branch}:answer.txt")]),
        text
    );
    assert_eq!(
        git(&h.project, &["show", &format!("{branch}:via.txt")]),
        "socket",
        "a step without network asks through the agent's socket"
    );
    let wt = h.worktree(&run);
    assert!(!wt.join("pwned").exists() && !wt.join("pwned2").exists());

    // No new round: one job, one attempt; the manifest records the wait.
    let jobs = jobs_of(&detail, "pick");
    assert_eq!(jobs.len(), 1, "{detail:#}");
    assert_eq!(jobs[0]["attempt"], 1);
    // The checkpoint commit keeps the manifest in its `orch-manifest` header.
    let commit = git(
        &h.project,
        &["log", "--format=%H", "--grep=^Orch-Stage: pick$", &branch],
    );
    let raw = git(&h.project, &["cat-file", "commit", commit.trim()]);
    let manifest: Value = serde_json::from_str(
        raw.lines()
            .find_map(|l| l.strip_prefix("orch-manifest "))
            .expect("a manifest header"),
    )
    .unwrap();
    let waits = &manifest["waits"];
    assert_eq!(waits[0]["question_id"].to_string(), qid, "{manifest:#}");
    assert_eq!(waits[0]["state"], "answered");
    assert_eq!(waits[0]["answered_by"], "user:admin (said: carol)");
    assert!(waits[0]["waited_ms"].as_u64().unwrap() >= 2000, "{waits:#}");
    // The stage went running -> awaiting_input -> running -> succeeded.
    let path: Vec<String> = transitions(&d, &run)
        .iter()
        .filter(|t| t["entity"] == "stage")
        .map(|t| t["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        path,
        [
            "pending",
            "queued",
            "running",
            "awaiting_input",
            "running",
            "succeeded"
        ],
        "{path:?}"
    );
}

#[test]
fn a_step_lost_while_waiting_closes_its_question() {
    let mut h = Harness::new();
    let d = h.start_daemon(FLAGS);
    let agent = h.start_agent(&d, "worker", 1);
    let file = h.write("waiting.yaml", &asking_workflow());
    let run = h.submit(&file);
    wait_stage(&h, &run, "pick", "awaiting_input");
    let q = open_question(&h, &run);
    let qid = q["id"].as_i64().unwrap().to_string();

    h.kill9(agent);
    // Its lease runs out: the attempt is lost like any other and the stage
    // waits to start again from step 0; the question is no longer open.
    let detail = wait_for("the lost attempt to close the question", LONG, || {
        let d = h.show(&run);
        (d["questions"][0]["state"] == "closed").then_some(d)
    });
    let jobs = jobs_of(&detail, "pick");
    assert_eq!(jobs[0]["state"], "expired", "{detail:#}");
    assert_ne!(stage(&detail, "pick")["state"], "awaiting_input");
    let late = h.orch(&["answer", &run, &qid, "sqlite"]);
    assert_eq!(late.code, 2, "{late}");
    assert!(late.stderr.contains("closed"), "{late}");
    let items = h.orch(&["inbox", "-o", "json"]).json();
    assert!(
        items
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["run_id"] != run.as_str()),
        "{items:#}"
    );
    h.orch(&["cancel", &run]).expect_code(0);
}

#[test]
fn orch_ask_wait_outside_a_step_bad_input_and_forged_tokens_are_refused() {
    let h = Harness::new();
    // Outside a step: exit 2, naming what is missing.
    let outside = h.orch(&["ask", "--wait", "hello?"]);
    assert_eq!(outside.code, 2, "{outside}");
    assert!(outside.stderr.contains("ORCH_STEP_TOKEN"), "{outside}");
    assert!(outside.stderr.contains("ORCH_AGENT_SOCKET"), "{outside}");
    let no_wait = h.orch(&["ask", "--timeout", "5s", "hello?"]);
    assert_eq!(no_wait.code, 2, "--timeout needs --wait: {no_wait}");

    let mut h = h;
    let d = h.start_daemon(FLAGS);
    h.start_agent(&d, "worker", 1);
    // Inside a step: each refusal's exit code and message, into files.
    let wf = format!(
        r#"
name: refusals
stages:
  - id: probe
    steps:
      - artifacts: [codes.txt, errors.txt]
        commands:
          - argv:
              - sh
              - -c
              - |
                o="$0"
                try() {{ "$@" 2>>errors.txt >/dev/null; echo "$?" >> codes.txt; }}
                try env ORCH_STEP_TOKEN=forged "$o" ask --wait "Q?"
                try "$o" ask --wait "   "
                try "$o" ask --wait "$(head -c 20000 /dev/zero | tr '\0' x)"
                try "$o" ask --wait "Q?" --choice ""
                try "$o" ask --wait --timeout 0s "Nobody answers this?"
                i=1; while [ $i -le 15 ]; do "$o" ask --wait --timeout 0s "Q$i?" 2>/dev/null; i=$((i+1)); done
                try "$o" ask --wait "One too many?"
              - "{orch}"
"#,
        orch = orch_bin()
    );
    let file = h.write("refusals.yaml", &wf);
    let run = h.submit(&file);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let branch = format!("orch/run/{run}");
    let codes = git(&h.project, &["show", &format!("{branch}:codes.txt")]);
    let errors = git(&h.project, &["show", &format!("{branch}:errors.txt")]);
    assert_eq!(
        codes.lines().collect::<Vec<_>>(),
        ["2", "2", "2", "2", "1", "2"],
        "{errors}"
    );
    for said in [
        "unknown step token",
        "question: expected 1 to 16384 bytes of text, got none",
        "got 20000 bytes",
        "choice \"\": expected 1 to 16384 bytes",
        "no answer within 0s; question 1 was withdrawn",
        "at most 16 questions",
    ] {
        assert!(errors.contains(said), "{said:?} not in:\n{errors}");
    }
    // The 16 questions that timed out were withdrawn: none is left open,
    // and the step never became a new round.
    let questions = detail["questions"].as_array().unwrap();
    assert_eq!(questions.len(), 16, "{detail:#}");
    assert!(questions.iter().all(|q| q["state"] == "closed"));
    assert_eq!(jobs_of(&detail, "probe").len(), 1);
}

/// Nanoseconds since the epoch: the clock `date +%s%N` reads in the step.
fn epoch_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

/// Waits for the run's open question (over HTTP, cheaply) and answers it;
/// returns when the answer was sent, in epoch nanoseconds.
fn answer_next(d: &Daemon, run: &str) -> i128 {
    let qid = wait_for(&format!("a question of run {run}"), LONG, || {
        let detail = http(
            d,
            "GET",
            &format!("/v1/runs/{run}"),
            Some(&d.admin_token),
            None,
        )
        .json();
        let q = detail["questions"]
            .as_array()?
            .iter()
            .find(|q| q["state"] == "open")?
            .clone();
        (stage(&detail, "pick")["state"] == "awaiting_input").then(|| q["id"].as_i64().unwrap())
    });
    let sent = epoch_ns();
    let r = post_json(
        d,
        &format!("/v1/runs/{run}/questions/{qid}/answer"),
        &d.admin_token,
        &serde_json::json!({"text": "yes"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    sent
}

fn summary(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    println!(
        "{label:<32} n={:<3} median {:>7.1} ms  p90 {:>7.1} ms  min {:>7.1} ms  max {:>7.1} ms",
        ms.len(),
        at(0.5),
        at(0.9),
        ms[0],
        ms[ms.len() - 1]
    );
}

/// One run whose step asks and waits `k` times: answer to stamp, in ms.
fn wait_round(h: &Harness, d: &Daemon, k: usize) -> Vec<f64> {
    let wf = format!(
        r#"
name: bench-wait
stages:
  - id: pick
    steps:
      - artifacts: [stamps.txt]
        commands:
          - argv: [sh, -c, 'i=0; while [ $i -lt {k} ]; do "$0" ask --wait "Q$i?" >/dev/null; date +%s%N >> stamps.txt; i=$((i+1)); done', "{orch}"]
"#,
        orch = orch_bin()
    );
    let run = h.submit(&h.write("bench-wait.yaml", &wf));
    let sent: Vec<i128> = (0..k)
        .map(|_| {
            let t = answer_next(d, &run);
            // The next question must not be mistaken for this one.
            wait_for("the step to take the answer", LONG, || {
                let detail = run_detail(d, &run);
                (stage(&detail, "pick")["state"] != "awaiting_input"
                    || detail["questions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|q| q["state"] != "open"))
                .then_some(())
            });
            t
        })
        .collect();
    let detail = h.wait_run_end(d, &run);
    assert_eq!(detail["run"]["state"], "succeeded");
    let stamps = git(&h.project, &["show", &format!("orch/run/{run}:stamps.txt")]);
    stamps
        .lines()
        .zip(&sent)
        .map(|(s, t)| (s.trim().parse::<i128>().unwrap() - t) as f64 / 1e6)
        .collect()
}

/// Figures for docs/benchmarks.md, no assertion on time: from an answer
/// sent to the API to the step having it, waiting inside (`orch ask
/// --wait`) and exiting and running again (`orch ask`). Run with
/// `cargo test -p orchestrator-cli --test ask_wait -- --ignored --nocapture`
/// (`ORCH_BENCH_N`, default 20, answers of each kind).
#[test]
#[ignore]
fn bench_answer_to_step() {
    let n: usize = std::env::var("ORCH_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);

    // Waiting inside: a step asks up to 16 times (a step's most) and
    // stamps each answer; as many runs as it takes for n answers.
    let mut waited = Vec::new();
    while waited.len() < n {
        let k = (n - waited.len()).min(16);
        waited.extend(wait_round(&h, &d, k));
    }
    // Exiting and running again: a run per answer.
    let wf = format!(
        r#"
name: bench-rerun
stages:
  - id: pick
    steps:
      - artifacts: [stamp.txt]
        commands:
          - argv: [sh, -c, 'if [ -z "$ORCH_ANSWER" ]; then exec "$0" ask "Q?"; fi; date +%s%N > stamp.txt', "{orch}"]
"#,
        orch = orch_bin()
    );
    let file = h.write("bench-rerun.yaml", &wf);
    let mut rerun = Vec::new();
    for _ in 0..n {
        let run = h.submit(&file);
        let t = answer_next(&d, &run);
        h.wait_run_end(&d, &run);
        let stamp = git(&h.project, &["show", &format!("orch/run/{run}:stamp.txt")]);
        rerun.push((stamp.trim().parse::<i128>().unwrap() - t) as f64 / 1e6);
    }
    println!("answer sent (POST .../answer) -> the step has it:");
    summary("orch ask --wait (step waits)", waited);
    summary("orch ask (step runs again)", rerun);
}
