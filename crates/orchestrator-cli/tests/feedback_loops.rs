//! Feedback loops across stages, end to end with a real daemon, agent and
//! git repository: a human sends a failed test's work back to the stage
//! that implements it (`orch retry RUN implement --feedback`), a workflow
//! does it by itself (`on_failure: {retry_stage}`) within its bound, and
//! every run of a step is a visible round: in its environment, its logs'
//! headers, its bundle's name, its checkpoint's commit and `orch show`.

mod common;

use common::*;
use serde_json::Value;

/// (step, round, reason, state) of each job of a stage, in order.
fn rounds(detail: &Value, id: &str) -> Vec<(u64, u64, String, String)> {
    detail["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["stage_id"] == id)
        .map(|j| {
            (
                j["step"].as_u64().unwrap(),
                j["round"].as_u64().unwrap(),
                j["round_reason"].as_str().unwrap().to_owned(),
                j["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn r(step: u64, round: u64, reason: &str, state: &str) -> (u64, u64, String, String) {
    (step, round, reason.into(), state.into())
}

/// implement copies the feedback it was handed into fixed.txt; test fails
/// until fixed.txt exists. lint stands alone; deploy comes last.
const MANUAL: &str = r#"
name: manual
stages:
  - id: implement
    steps:
      - commands:
          - argv: [sh, -c, 'echo "implement step=$ORCH_STEP round=$ORCH_ROUND reason=$ORCH_ROUND_REASON attempt=$ORCH_ATTEMPT"; if [ -n "$ORCH_FEEDBACK_FILE" ]; then cp "$ORCH_FEEDBACK_FILE" fixed.txt; fi']
  - id: test
    needs: [implement]
    steps:
      - commands:
          - argv: [sh, -c, 'echo "test round=$ORCH_ROUND reason=$ORCH_ROUND_REASON"; test -f fixed.txt || { echo "fixed.txt is missing" >&2; exit 3; }']
  - id: lint
    steps:
      - commands:
          - argv: ['true']
  - id: deploy
    needs: [test]
    steps:
      - commands:
          - argv: ['true']
"#;

#[test]
fn a_human_sends_a_failed_tests_work_back_with_feedback_and_it_passes_in_round_two() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let file = h.write("manual.yaml", MANUAL);
    let run = h.submit(&file);
    let detail = wait_stage(&h, &run, "test", "awaiting_decision");
    wait_stage(&h, &run, "lint", "succeeded");
    assert_eq!(stage(&detail, "deploy")["state"], "pending");

    // What cannot be sent back is refused with exit 2, naming the stage and
    // what was expected, and changes nothing.
    let before = run_transitions(&d, &run).as_array().unwrap().len();
    for (target, said) in [
        ("deploy", "stage deploy of run"),
        ("lint", "no stage after it has ended or waits for a human"),
    ] {
        let out = h.orch(&["retry", &run, target, "--feedback", "x"]);
        out.expect_code(2);
        assert!(out.stderr.contains(said), "{out}");
        assert!(
            out.stderr.contains("succeeded"),
            "says what is expected: {out}"
        );
    }
    let out = h.orch(&["retry", &run, "deploy", "--feedback", "x"]);
    assert!(out.stderr.contains("has not run yet (pending)"), "{out}");
    assert_eq!(run_transitions(&d, &run).as_array().unwrap().len(), before);

    h.orch(&[
        "retry",
        &run,
        "implement",
        "--feedback",
        "create fixed.txt, it is checked by test",
    ])
    .expect_code(0);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    assert_eq!(
        rounds(&detail, "implement"),
        [
            r(0, 1, "first", "succeeded"),
            r(0, 2, "feedback", "succeeded")
        ]
    );
    assert_eq!(
        rounds(&detail, "test"),
        [r(0, 1, "first", "failed"), r(0, 2, "feedback", "succeeded")]
    );
    assert_eq!(rounds(&detail, "lint"), [r(0, 1, "first", "succeeded")]);
    assert_eq!(stage(&detail, "implement")["round"], 2);

    // The feedback reached the step as a rejection's would, and it is recorded.
    let fixed = std::fs::read_to_string(h.worktree(&run).join("fixed.txt")).unwrap();
    assert!(
        fixed.contains("create fixed.txt, it is checked by test"),
        "{fixed}"
    );
    assert!(
        fixed.contains("Sent back by a human by user:admin"),
        "{fixed}"
    );
    let log = run_transitions(&d, &run).to_string();
    assert!(
        log.contains(
            "sent back by a human: step 0 runs again as attempt 2 with feedback: create fixed.txt"
        ),
        "{log}"
    );

    // Rounds in the logs' headers, the environment and the bundles' names.
    let logs = h.orch(&["logs", &run, "implement"]);
    logs.expect_code(0);
    assert!(
        logs.stdout
            .contains("==> implement step 0 round 1 attempt 1"),
        "{logs}"
    );
    assert!(
        logs.stdout
            .contains("==> implement step 0 round 2 (feedback) attempt 2"),
        "{logs}"
    );
    assert!(
        logs.stdout
            .contains("implement step=0 round=2 reason=feedback attempt=2"),
        "{logs}"
    );
    let bundles = detail["jobs"].to_string();
    assert!(
        bundles.contains("/implement/step-000-round-2-job-"),
        "{bundles}"
    );
    // And in `orch show`, and in the checkpoint's commit.
    let show = h.orch(&["show", &run]);
    assert!(
        show.stdout
            .contains("test step 0: round 1 (first) failed, round 2 (feedback) succeeded"),
        "{show}"
    );
    let commits = git(
        &h.project,
        &["log", "--format=%B", &format!("orch/run/{run}")],
    );
    assert!(
        commits.contains("orch: implement step 0, round 2 (feedback) checkpoint"),
        "{commits}"
    );
    assert!(
        commits.contains("Orch-Round: 2\nOrch-Round-Reason: feedback"),
        "{commits}"
    );

    // The run ended: nothing more can be sent back.
    let out = h.orch(&["retry", &run, "implement", "--feedback", "x"]);
    out.expect_code(2);
    assert!(out.stderr.contains("has already ended succeeded"), "{out}");
}

/// test passes once implement has run `PASS_AT` times; it sends its work
/// back by itself at most twice.
const AUTO: &str = r#"
name: auto
stages:
  - id: implement
    steps:
      - commands:
          - argv: [sh, -c, 'n=$(cat count 2>/dev/null || echo 0); echo $((n + 1)) > count; if [ -n "$ORCH_FEEDBACK_FILE" ]; then cp "$ORCH_FEEDBACK_FILE" "feedback-$ORCH_ROUND.md"; fi']
  - id: test
    needs: [implement]
    on_failure: {retry_stage: implement, max_rounds: 2, feedback: log_tail}
    steps:
      - commands:
          - argv: [sh, -c, 'echo "checking"; [ "$(cat count)" -ge PASS_AT ] || { echo "count too low: $(cat count)" >&2; exit 4; }']
"#;

#[test]
fn a_failing_test_sends_its_work_back_by_itself_until_it_passes_or_its_rounds_run_out() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);

    // The loop shows in the plan.
    let file = h.write("auto.yaml", &AUTO.replace("PASS_AT", "2"));
    let plan = h.orch(&["plan", file.to_str().unwrap()]);
    plan.expect_code(0);
    assert!(
        plan.stdout.contains("feedback loop: when test fails, implement runs again with the failure as feedback, then test (at most 2 rounds, then ask)"),
        "{plan}"
    );

    // Passes in round 2: the failure was handed back as feedback.
    let run = h.submit(&file);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    assert_eq!(
        rounds(&detail, "test"),
        [r(0, 1, "first", "failed"), r(0, 2, "feedback", "succeeded")]
    );
    let fb = std::fs::read_to_string(h.worktree(&run).join("feedback-2.md")).unwrap();
    assert!(
        fb.contains("Sent back after stage test failed (round 1 of 2) by scheduler"),
        "{fb}"
    );
    assert!(fb.contains("Stage test failed at step 0:"), "{fb}");
    assert!(fb.contains("exited with code 4"), "{fb}");
    assert!(fb.contains("count too low: 1"), "the stderr's tail: {fb}");
    assert!(fb.contains("checking"), "the stdout's tail: {fb}");

    // Never passes: after two rounds, the usual human decision.
    let file = h.write("never.yaml", &AUTO.replace("PASS_AT", "99"));
    let run = h.submit(&file);
    let detail = wait_stage(&h, &run, "test", "awaiting_decision");
    assert_eq!(
        rounds(&detail, "implement"),
        [
            r(0, 1, "first", "succeeded"),
            r(0, 2, "feedback", "succeeded"),
            r(0, 3, "feedback", "succeeded")
        ]
    );
    assert_eq!(rounds(&detail, "test").len(), 3, "{detail:#}");
    let explain = h.orch(&["explain", &run]);
    explain.expect_code(0);
    assert!(
        explain
            .stdout
            .contains("(2 of 2 rounds used); then a human decides"),
        "{explain}"
    );
    h.orch(&["abort", &run]).expect_code(0);
}

#[test]
fn a_loop_target_that_is_not_an_ancestor_or_unbounded_is_refused_at_submission() {
    let h = Harness::new();
    for (bad, field) in [
        ("{retry_stage: test}", "stages[1].on_failure.retry_stage"),
        (
            "{retry_stage: implement, max_rounds: 0}",
            "stages[1].on_failure.max_rounds",
        ),
        (
            "{retry_stage: implement, max_rounds: 100000}",
            "stages[1].on_failure.max_rounds",
        ),
    ] {
        let text = AUTO.replace("PASS_AT", "2").replace(
            "{retry_stage: implement, max_rounds: 2, feedback: log_tail}",
            bad,
        );
        let file = h.write("bad.yaml", &text);
        let out = h.orch(&["validate", file.to_str().unwrap()]);
        out.expect_code(2);
        assert!(
            out.stdout.contains(field) || out.stderr.contains(field),
            "{out}"
        );
    }
}
