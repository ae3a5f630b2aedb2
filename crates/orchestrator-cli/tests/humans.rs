//! Humans at checkpoints, end to end through the CLI with real processes and
//! real git repositories: approval and rejection with feedback, questions
//! asked by a step (`orch ask`) and by an input step, loops, the run's
//! history on its branch, and a daemon restarted while a stage waits.

mod common;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn inbox(h: &Harness) -> Vec<Value> {
    let out = h.orch(&["inbox", "-o", "json"]);
    out.expect_code(0);
    out.json().as_array().unwrap().clone()
}

const REVIEWED: &str = r#"
name: reviewed
stages:
  - id: draft
    steps:
      - name: write
        approve: true
        artifacts: [draft.md]
        commands:
          - argv: [sh, -c, 'if [ -n "$ORCH_FEEDBACK" ]; then { echo "v2"; cat "$ORCH_FEEDBACK_FILE"; } > draft.md; else echo v1 > draft.md; fi']
      - name: publish
        artifacts: [final.md]
        commands:
          - argv: [sh, -c, 'cp draft.md final.md']
  - id: ship
    needs: [draft]
    steps:
      - commands:
          - argv: [sh, -c, 'test -f final.md']
"#;

#[test]
fn approval_waits_rejection_reruns_with_feedback_and_history_is_in_git() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let file = h.write("reviewed.yaml", REVIEWED);
    let run = h.submit(&file);

    let detail = wait_stage(&h, &run, "draft", "awaiting_approval");
    assert_eq!(stage(&detail, "ship")["state"], "pending");
    let items = inbox(&h);
    assert_eq!(items.len(), 1, "{items:#?}");
    assert_eq!(items[0]["kind"], "approval");
    assert_eq!(items[0]["stage_id"], "draft");
    let hint = items[0]["answer_with"].to_string();
    assert!(
        hint.contains(&format!("orch approve {run} draft")),
        "{hint}"
    );
    let text = h.orch(&["inbox"]);
    assert!(
        text.stdout
            .contains(&format!("$ orch reject {run} draft --feedback")),
        "{text}"
    );

    // Rejected: the same step runs again and sees the feedback.
    h.orch(&[
        "reject",
        &run,
        "draft",
        "--feedback",
        "add a title",
        "--by",
        "alice",
    ])
    .expect_code(0);
    wait_for("the step to run again and wait again", LONG, || {
        let d = h.show(&run);
        let ran = d["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["stage_id"] == "draft" && j["state"] == "succeeded")
            .count();
        (ran == 2 && stage(&d, "draft")["state"] == "awaiting_approval").then_some(())
    });
    let wt = h.worktree(&run);
    let draft = std::fs::read_to_string(wt.join("draft.md")).unwrap();
    assert!(
        draft.starts_with("v2") && draft.contains("add a title"),
        "{draft}"
    );
    assert!(
        draft.contains("alice"),
        "who rejected is in the feedback file: {draft}"
    );

    // Nothing else may approve what is not waiting.
    let early = h.orch(&["approve", &run, "ship"]);
    assert_eq!(early.code, 2, "{early}");
    assert!(early.stderr.contains("not awaiting_approval"), "{early}");

    h.orch(&[
        "approve",
        &run,
        "draft",
        "--comment",
        "good now",
        "--by",
        "bob",
    ])
    .expect_code(0);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    assert!(inbox(&h).is_empty());

    // Who did what is in the transitions log.
    let log = transitions(&d, &run);
    let by = |actor: &str, to: &str| {
        log.iter()
            .any(|t| t["actor"] == actor && t["to"] == to && t["entity"] == "stage")
    };
    assert!(
        by("user:admin (said: alice)", "queued"),
        "rejection recorded"
    );
    assert!(by("user:admin (said: bob)", "queued"), "approval recorded");
    assert!(log
        .iter()
        .any(|t| t["reason"].as_str().unwrap_or("").contains("good now")));

    // The run's history is in git: one checkpoint commit per step run.
    let branch = format!("orch/run/{run}");
    let subjects = git(&h.project, &["log", "--format=%s", &branch]);
    assert_eq!(subjects.lines().count(), 5, "{subjects}");
    let final_md = git(&h.project, &["show", &format!("{branch}:final.md")]);
    assert!(final_md.starts_with("v2"), "{final_md}");
    // The user's own branch and files are untouched.
    assert_eq!(git(&h.project, &["branch", "--show-current"]), "main");
    assert_eq!(git(&h.project, &["status", "--porcelain"]), "");

    // `orch artifacts` lists each checkpoint's files with size and sha256.
    let out = h.orch(&["artifacts", &run, "-o", "json"]);
    out.expect_code(0);
    let cps = out.json();
    let cps = cps.as_array().unwrap();
    assert_eq!(cps.len(), 4, "{cps:#?}");
    let first = &cps[0];
    assert_eq!(first["seq"], 1);
    assert_eq!(first["stage_id"], "draft");
    let art = &first["artifacts"][0];
    assert_eq!(art["path"], "draft.md");
    assert_eq!(art["size"], 3);
    assert_eq!(art["sha256"], format!("{:x}", Sha256::digest(b"v1\n")));
    let text = h.orch(&["artifacts", &run]);
    assert!(text.stdout.contains("draft.md"), "{text}");

    // `orch checkout` gives a worktree at the first checkpoint: draft v1.
    let dest = h.root().join("at-1");
    let out = h.orch(&[
        "checkout",
        &run,
        "--checkpoint",
        "1",
        "--dir",
        dest.to_str().unwrap(),
    ]);
    out.expect_code(0);
    assert_eq!(
        std::fs::read_to_string(dest.join("draft.md")).unwrap(),
        "v1\n"
    );
    let head = git(&dest, &["rev-parse", "HEAD"]);
    assert_eq!(head, first["commit"].as_str().unwrap());
    let missing = h.orch(&["checkout", &run, "--checkpoint", "99"]);
    assert_eq!(missing.code, 2, "{missing}");
    assert!(missing.stderr.contains("no checkpoint 99"), "{missing}");
}

#[test]
fn a_step_asks_a_question_and_runs_again_with_the_answer() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let wf = format!(
        r#"
name: asking
stages:
  - id: pick
    # No network: the question reaches the agent through its socket.
    sandbox: namespace
    steps:
      - artifacts: [choice.txt]
        commands:
          - argv: [sh, -c, 'if [ -z "$ORCH_ANSWER" ]; then exec "$0" ask "Which database?" --choice sqlite --choice postgres; fi; echo "$ORCH_ANSWER" > choice.txt', "{orch}"]
"#,
        orch = orch_bin()
    );
    let file = h.write("asking.yaml", &wf);
    let run = h.submit(&file);
    wait_stage(&h, &run, "pick", "awaiting_input");
    let items = inbox(&h);
    assert_eq!(items.len(), 1, "{items:#?}");
    let q = &items[0]["question"];
    assert_eq!(q["question"], "Which database?");
    assert_eq!(q["choices"], serde_json::json!(["sqlite", "postgres"]));
    let qid = q["id"].as_i64().unwrap().to_string();
    let hint = items[0]["answer_with"].to_string();
    assert!(
        hint.contains(&format!("orch answer {run} {qid} postgres")),
        "{hint}"
    );

    // A wrong choice, an unknown question: clear errors, nothing changes.
    let wrong = h.orch(&["answer", &run, &qid, "mysql"]);
    assert_eq!(wrong.code, 2, "{wrong}");
    assert!(
        wrong
            .stderr
            .contains("not one of the offered choices: sqlite, postgres"),
        "{wrong}"
    );
    let unknown = h.orch(&["answer", &run, "9999", "sqlite"]);
    assert_ne!(unknown.code, 0, "{unknown}");
    assert!(unknown.stderr.contains("question"), "{unknown}");
    assert_eq!(stage(&h.show(&run), "pick")["state"], "awaiting_input");
    assert_eq!(inbox(&h).len(), 1);

    h.orch(&["answer", &run, &qid, "postgres", "--by", "carol"])
        .expect_code(0);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let branch = format!("orch/run/{run}");
    assert_eq!(
        git(&h.project, &["show", &format!("{branch}:choice.txt")]),
        "postgres"
    );
    let question = &detail["questions"][0];
    assert_eq!(question["state"], "answered");
    assert_eq!(question["answered_by"], "user:admin (said: carol)");
    let log = transitions(&d, &run);
    assert!(log.iter().any(|t| t["entity"] == "question"
        && t["to"] == "answered"
        && t["actor"] == "user:admin (said: carol)"
        && t["reason"] == "postgres"));

    // Answering again, or a run that is not waiting: refused.
    let again = h.orch(&["answer", &run, &qid, "sqlite"]);
    assert_eq!(again.code, 2, "{again}");
    assert!(again.stderr.contains("already answered"), "{again}");

    // `orch ask` outside a step says where it works.
    let outside = h.orch(&["ask", "hello?"]);
    assert_eq!(outside.code, 2, "{outside}");
    assert!(
        outside.stderr.contains("only inside a running step"),
        "{outside}"
    );
}

#[test]
fn an_input_step_asks_without_running_and_hands_the_answer_on() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let file = h.write(
        "input.yaml",
        r#"
name: input
stages:
  - id: deploy
    steps:
      - input:
          question: "Deploy to which environment?"
          choices: [staging, production]
      - artifacts: [target.txt]
        commands:
          - argv: [sh, -c, 'echo "$ORCH_QUESTION -> $ORCH_ANSWER" > target.txt; cat "$ORCH_ANSWER_FILE" > answers.md']
"#,
    );
    let run = h.submit(&file);
    let detail = wait_stage(&h, &run, "deploy", "awaiting_input");
    assert!(
        detail["jobs"].as_array().unwrap().is_empty(),
        "an input step holds no job: {detail:#}"
    );
    let qid = detail["questions"][0]["id"].as_i64().unwrap().to_string();
    h.orch(&["answer", &run, &qid, "staging"]).expect_code(0);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let target = git(&h.project, &["show", &format!("orch/run/{run}:target.txt")]);
    assert_eq!(target, "Deploy to which environment? -> staging");
}

#[test]
fn a_loop_repeats_its_step_until_its_check_passes_each_with_a_checkpoint() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let file = h.write(
        "loop.yaml",
        r#"
name: loop
stages:
  - id: iterate
    repeat:
      max: 5
      until: {argv: [test, -f, done]}
    steps:
      - artifacts: [count]
        commands:
          - argv: [sh, -c, 'n=$(cat count 2>/dev/null || echo 0); n=$((n + 1)); echo $n > count; [ $n -lt 3 ] || touch done']
  - id: never
    on_failure: fail
    repeat:
      max: 2
      until: {argv: [false]}
    steps:
      - commands:
          - argv: ['true']
"#,
    );
    let run = h.submit(&file);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(
        stage(&detail, "iterate")["state"],
        "succeeded",
        "{detail:#}"
    );
    assert_eq!(stage(&detail, "never")["state"], "failed", "{detail:#}");
    assert_eq!(detail["run"]["state"], "failed");
    let iterations: Vec<&Value> = detail["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["stage_id"] == "iterate")
        .collect();
    assert_eq!(iterations.len(), 3, "{detail:#}");
    // Each iteration's count is in its own commit.
    for (i, cp) in iterations.iter().enumerate() {
        let commit = cp["commit"].as_str().unwrap();
        let count = git(&h.project, &["show", &format!("{commit}:count")]);
        assert_eq!(count, (i + 1).to_string());
    }
    let never = detail["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["stage_id"] == "never")
        .count();
    assert_eq!(never, 2, "max bounds the loop: {detail:#}");
}

#[test]
fn a_daemon_restarted_while_a_stage_awaits_approval_keeps_it_waiting() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    let agent = h.start_agent(&d, "worker", 1);
    let file = h.write("reviewed.yaml", REVIEWED);
    let run = h.submit(&file);
    wait_stage(&h, &run, "draft", "awaiting_approval");

    h.kill9(d.id);
    h.kill9(agent);
    let listen = format!("127.0.0.1:{}", d.port);
    let d = h.start_daemon_on(&listen, &[]);
    h.start_agent(&d, "worker", 1);
    assert_eq!(stage(&h.show(&run), "draft")["state"], "awaiting_approval");
    assert_eq!(inbox(&h).len(), 1);

    h.orch(&["approve", &run, "draft"]).expect_code(0);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    // Nothing was lost: both steps' checkpoints, then ship's.
    assert_eq!(detail["checkpoints"].as_array().unwrap().len(), 3);
}

#[test]
fn a_project_that_is_not_a_git_repository_is_refused_at_submission() {
    let mut h = Harness::new();
    h.start_daemon(&[]);
    let plain = h.root().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let file = h.write(
        "hello.yaml",
        "name: h\nstages:\n  - id: a\n    steps:\n      - commands:\n          - argv: ['true']\n",
    );
    let out = h.orch(&[
        "run",
        file.to_str().unwrap(),
        "--project",
        plain.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("not a git repository"), "{out}");
    let bad_ref = h.orch(&[
        "run",
        file.to_str().unwrap(),
        "--project",
        h.project.to_str().unwrap(),
        "--ref",
        "no-such-branch",
    ]);
    assert_eq!(bad_ref.code, 2, "{bad_ref}");
    assert!(bad_ref.stderr.contains("no-such-branch"), "{bad_ref}");
    assert_eq!(h.ps().as_array().unwrap().len(), 0, "nothing was submitted");
}
