//! Task failures escalate to a human, who retries, skips or aborts; stages
//! validate after their steps; workflows choose which failures retry.
//! A real SQLite store driven the way agents and humans drive it.

mod common;

use common::*;
use orchestrator_core::api::{ClaimedJob, CompleteRequest, InboxKind, StepOutcome};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::spec::OnFailure;
use orchestrator_core::{AgentId, RunId};
use orchestrator_core::{JobState, RunState, StageState};
use orchestrator_store::{HumanCommand, SqlStore, StoreError};

async fn claim(s: &SqlStore, agent: &AgentId) -> ClaimedJob {
    s.claim(agent, TTL).await.unwrap().expect("a queued job")
}

async fn finish(s: &SqlStore, agent: &AgentId, job: &ClaimedJob, o: StepOutcome) {
    s.complete(
        job.job_id,
        CompleteRequest {
            agent_id: agent.into(),
            lease_token: job.lease_token.clone(),
            outcome: o,
            claim_next: false,
            claim_key: None,
        },
        TTL,
    )
    .await
    .unwrap();
}

fn failed() -> StepOutcome {
    outcome(false, Some(ErrorClass::Task))
}

fn timed_out() -> StepOutcome {
    StepOutcome {
        timed_out: true,
        ..failed()
    }
}

async fn state(s: &SqlStore, run: &RunId, stage: &str) -> StageState {
    stage_states(&s.run_detail(run).await.unwrap())[stage]
}

async fn decide(s: &SqlStore, run: &RunId, cmd: HumanCommand) -> Result<(), StoreError> {
    s.human(run, cmd, &orchestrator_core::Actor::user("ann"))
        .await
        .map(|_| ())
}

fn retry(stage: &str) -> HumanCommand {
    HumanCommand::Retry {
        stage_id: stage.into(),
        comment: None,
        feedback: None,
    }
}

/// x has three steps; y does not need it; z needs x.
const THREE: &str = "name: t\nstages:\n  - id: x\n    steps: [{commands: [{argv: [a]}]}, {commands: [{argv: [b]}]}, {commands: [{argv: [c]}]}]\n  - id: y\n    steps: [{commands: [{argv: [y]}]}]\n  - id: z\n    needs: [x]\n    steps: [{commands: [{argv: [z]}]}]\n";

#[tokio::test]
async fn a_task_failure_waits_for_a_decision_and_a_retry_runs_the_failed_step_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(THREE)).await.unwrap().run_id;
    let mut ran = Vec::new();
    // Step 0 of x succeeds, step 1 fails; y runs in between.
    loop {
        let j = claim(&s, &a).await;
        ran.push((j.spec.stage_id.clone(), j.spec.step));
        if (j.spec.stage_id.as_str(), j.spec.step) == ("x", 1) {
            finish(&s, &a, &j, failed()).await;
            break;
        }
        finish(&s, &a, &j, outcome(true, None)).await;
    }
    // The independent stage goes on; the dependent waits; the run is open.
    while let Some(j) = s.claim(&a, TTL).await.unwrap() {
        assert_eq!(j.spec.stage_id, "y", "only y may still run");
        finish(&s, &a, &j, outcome(true, None)).await;
    }
    let d = s.run_detail(&run).await.unwrap();
    let st = stage_states(&d);
    assert_eq!(st["x"], StageState::AwaitingDecision);
    assert_eq!(st["y"], StageState::Succeeded);
    assert_eq!(st["z"], StageState::Pending);
    assert_eq!(d.run.state, RunState::Running);
    let inbox = s.inbox().await.unwrap();
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0].kind, InboxKind::Decision);
    assert_eq!((inbox[0].stage_id.as_str(), inbox[0].step), ("x", 1));
    assert_eq!(inbox[0].error.as_deref(), Some("boom"));
    assert_eq!(
        inbox[0].answer_with,
        [
            format!("orch retry {run} x"),
            format!("orch skip {run} x"),
            format!("orch abort {run}"),
        ]
    );

    // Decisions about stages that do not wait for one are refused and change nothing.
    let before = s.transitions_since(0, None, 100_000).await.unwrap().len();
    for (stage, cmd) in [
        ("y", retry("y")),
        (
            "z",
            HumanCommand::Skip {
                stage_id: "z".into(),
                comment: None,
            },
        ),
        (
            "y",
            HumanCommand::Abort {
                stage_id: Some("y".into()),
                comment: None,
            },
        ),
    ] {
        match decide(&s, &run, cmd).await {
            Err(StoreError::Conflict(m)) => assert!(
                m.contains(&format!("stage {stage} of run {run} is"))
                    && m.contains("not awaiting_decision"),
                "{m}"
            ),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert!(matches!(
        decide(&s, &run, retry("nope")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        s.transitions_since(0, None, 100_000).await.unwrap().len(),
        before
    );

    // The retry runs step 1 again as attempt 2, not step 0: its work is kept.
    decide(&s, &run, retry("x")).await.unwrap();
    assert_eq!(state(&s, &run, "x").await, StageState::Queued);
    let j = claim(&s, &a).await;
    assert_eq!(
        (j.spec.stage_id.as_str(), j.spec.step, j.spec.attempt),
        ("x", 1, 2)
    );
    finish(&s, &a, &j, outcome(true, None)).await;
    while let Some(j) = s.claim(&a, TTL).await.unwrap() {
        ran.push((j.spec.stage_id.clone(), j.spec.step));
        finish(&s, &a, &j, outcome(true, None)).await;
    }
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!(
        d.jobs
            .iter()
            .filter(|j| j.stage_id == "x" && j.step == 0)
            .count(),
        1,
        "step 0 ran once"
    );
    let log = s
        .transitions_since(0, Some(run.clone()), 100_000)
        .await
        .unwrap();
    let decided = log
        .iter()
        .find(|t| t.from.map(|f| f.as_str()) == Some("awaiting_decision"))
        .unwrap();
    assert_eq!(decided.actor, "user:ann");
    assert!(
        decided
            .reason
            .starts_with("retried: attempt 2 goes on at step 1"),
        "{}",
        decided.reason
    );
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn a_skipped_stage_lets_its_dependents_run_and_the_run_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(THREE)).await.unwrap().run_id;
    while let Some(j) = s.claim(&a, TTL).await.unwrap() {
        let o = if j.spec.stage_id == "x" {
            failed()
        } else {
            outcome(true, None)
        };
        finish(&s, &a, &j, o).await;
    }
    assert_eq!(state(&s, &run, "x").await, StageState::AwaitingDecision);
    decide(
        &s,
        &run,
        HumanCommand::Skip {
            stage_id: "x".into(),
            comment: Some("flaky, not needed today".into()),
        },
    )
    .await
    .unwrap();
    let j = claim(&s, &a).await;
    assert_eq!(j.spec.stage_id, "z");
    finish(&s, &a, &j, outcome(true, None)).await;
    let d = s.run_detail(&run).await.unwrap();
    let st = stage_states(&d);
    assert_eq!(st["x"], StageState::Skipped);
    assert_eq!(st["z"], StageState::Succeeded);
    assert_eq!(d.run.state, RunState::Succeeded);
    let log = s
        .transitions_since(0, Some(run.clone()), 100_000)
        .await
        .unwrap();
    assert!(log.iter().any(|t| t.to == "skipped"
        && t.reason == "skipped: its dependents go on without it: flaky, not needed today"));
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn aborting_a_run_fails_what_awaits_a_decision_and_cancels_what_runs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 2, &[]).await;
    let run = s.submit_run(new_run(THREE)).await.unwrap().run_id;
    let first = claim(&s, &a).await;
    let second = claim(&s, &a).await;
    let (x, y) = if first.spec.stage_id == "x" {
        (first, second)
    } else {
        (second, first)
    };
    finish(&s, &a, &x, failed()).await;
    assert_eq!(state(&s, &run, "y").await, StageState::Running);
    decide(
        &s,
        &run,
        HumanCommand::Abort {
            stage_id: None,
            comment: None,
        },
    )
    .await
    .unwrap();
    let d = s.run_detail(&run).await.unwrap();
    let st = stage_states(&d);
    assert_eq!(st["x"], StageState::Failed);
    assert_eq!(st["y"], StageState::Cancelled);
    assert_eq!(st["z"], StageState::Blocked);
    assert_eq!(d.run.state, RunState::Failed);
    let yj = d.jobs.iter().find(|j| j.id == y.job_id).unwrap();
    assert_eq!(yj.state, JobState::Cancelled, "the running step is stopped");
    // A run that ended cannot be aborted again.
    match decide(
        &s,
        &run,
        HumanCommand::Abort {
            stage_id: None,
            comment: None,
        },
    )
    .await
    {
        Err(StoreError::Conflict(m)) => assert!(m.contains("has already ended failed"), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_log_replays_to_state(&s, &run).await;
}

const VALIDATED: &str = "name: v\nstages:\n  - id: x\n    steps: [{commands: [{argv: [build]}]}]\n    validate:\n      commands: [{argv: [check, all]}]\n";

#[tokio::test]
async fn validation_runs_after_the_steps_and_its_failure_is_a_task_failure() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(VALIDATED)).await.unwrap().run_id;
    let j = claim(&s, &a).await;
    finish(&s, &a, &j, outcome(true, None)).await;
    assert_eq!(state(&s, &run, "x").await, StageState::Validating);
    let v = claim(&s, &a).await;
    assert_eq!(v.spec.step, 1, "the job after the last step");
    assert_eq!(v.spec.step_name.as_deref(), Some("validate"));
    assert_eq!(v.spec.commands[0].argv, ["check", "all"]);
    assert_eq!(state(&s, &run, "x").await, StageState::Validating);
    finish(&s, &a, &v, failed()).await;
    assert_eq!(state(&s, &run, "x").await, StageState::AwaitingDecision);
    let inbox = s.inbox().await.unwrap();
    assert_eq!(inbox[0].step_name.as_deref(), Some("validate"));
    // A retry validates again; the step is not run a second time.
    decide(&s, &run, retry("x")).await.unwrap();
    assert_eq!(state(&s, &run, "x").await, StageState::Validating);
    let again = claim(&s, &a).await;
    assert_eq!((again.spec.step, again.spec.attempt), (1, 2));
    assert_eq!(again.spec.step_name.as_deref(), Some("validate"));
    finish(&s, &a, &again, outcome(true, None)).await;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(stage_states(&d)["x"], StageState::Succeeded);
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!(d.jobs.iter().filter(|j| j.step == 0).count(), 1);
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn a_workflow_chooses_which_failures_retry_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let yaml = "name: r\nstages:\n  - id: flaky\n    retry: {on: [task], attempts: 3, initial: 0s}\n    steps: [{commands: [{argv: [a]}]}, {commands: [{argv: [b]}]}]\n  - id: slow\n    retry: {on: [timeout], attempts: 2, initial: 0s}\n    steps: [{commands: [{argv: [c]}]}]\n";
    let run = s.submit_run(new_run(yaml)).await.unwrap().run_id;
    let mut flaky_fails = 0;
    let mut slow = Vec::new();
    while let Some(j) = s.claim(&a, TTL).await.unwrap() {
        match (j.spec.stage_id.as_str(), j.spec.step) {
            ("flaky", 1) if flaky_fails < 2 => {
                flaky_fails += 1;
                finish(&s, &a, &j, failed()).await;
            }
            ("slow", _) => {
                slow.push(j.spec.attempt);
                // A timeout retries; the plain failure after it does not.
                let o = if j.spec.attempt == 1 {
                    timed_out()
                } else {
                    failed()
                };
                finish(&s, &a, &j, o).await;
            }
            _ => finish(&s, &a, &j, outcome(true, None)).await,
        }
    }
    let d = s.run_detail(&run).await.unwrap();
    let st = stage_states(&d);
    assert_eq!(st["flaky"], StageState::Succeeded);
    let attempts: Vec<(u32, u32)> = d
        .jobs
        .iter()
        .filter(|j| j.stage_id == "flaky")
        .map(|j| (j.step, j.attempt))
        .collect();
    // Retried in place: step 1 again, never step 0.
    assert_eq!(attempts, [(0, 1), (1, 1), (1, 2), (1, 3)]);
    assert_eq!(slow, [1, 2]);
    assert_eq!(st["slow"], StageState::AwaitingDecision);
    let log = s
        .transitions_since(0, Some(run.clone()), 100_000)
        .await
        .unwrap();
    assert!(
        log.iter().any(|t| t.to == "retrying"
            && t.reason.contains("(task, timeout)")
            && t.reason.contains("retrying at step 0 after a backoff")),
        "{log:#?}"
    );
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn on_failure_fail_ends_a_stage_at_once_from_the_workflow_or_the_submitter() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let in_workflow = THREE.replacen("name: t\n", "name: t\non_failure: fail\n", 1);
    // The stage asks, but the submitter's word wins.
    let asks = THREE.replacen("  - id: x\n", "  - id: x\n    on_failure: ask\n", 1);
    let mut forced = new_run(&asks);
    forced.on_failure = Some(OnFailure::Fail);
    for submitted in [new_run(&in_workflow), forced] {
        let run = s.submit_run(submitted).await.unwrap().run_id;
        while let Some(j) = s.claim(&a, TTL).await.unwrap() {
            let o = if j.spec.stage_id == "x" {
                failed()
            } else {
                outcome(true, None)
            };
            finish(&s, &a, &j, o).await;
        }
        let d = s.run_detail(&run).await.unwrap();
        let st = stage_states(&d);
        assert_eq!(st["x"], StageState::Failed);
        assert_eq!(st["z"], StageState::Blocked);
        assert_eq!(d.run.state, RunState::Failed);
        assert_log_replays_to_state(&s, &run).await;
    }
    assert!(s.inbox().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_loop_that_runs_out_escalates_and_a_retry_runs_its_last_iteration() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let yaml = "name: l\nstages:\n  - id: loop\n    repeat: {max: 2, until: {argv: [done]}}\n    steps: [{commands: [{argv: [a]}]}, {commands: [{argv: [b]}]}]\n";
    let run = s.submit_run(new_run(yaml)).await.unwrap().run_id;
    let not_yet = |step: u32| StepOutcome {
        until_met: (step % 2 == 1).then_some(false),
        ..outcome(true, None)
    };
    for step in 0..4 {
        let j = claim(&s, &a).await;
        assert_eq!(j.spec.step, step);
        finish(&s, &a, &j, not_yet(step)).await;
    }
    assert_eq!(state(&s, &run, "loop").await, StageState::AwaitingDecision);
    decide(&s, &run, retry("loop")).await.unwrap();
    let j = claim(&s, &a).await;
    assert_eq!((j.spec.step, j.spec.iteration, j.spec.attempt), (2, 1, 2));
    finish(&s, &a, &j, outcome(true, None)).await;
    let j = claim(&s, &a).await;
    assert_eq!(j.spec.step, 3);
    let met = StepOutcome {
        until_met: Some(true),
        ..outcome(true, None)
    };
    finish(&s, &a, &j, met).await;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn a_stage_awaiting_a_decision_survives_a_restart_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let run = {
        let s = open(&dir);
        let a = agent(&s, "a1", 1, &[]).await;
        let run = s.submit_run(new_run(VALIDATED)).await.unwrap().run_id;
        let j = claim(&s, &a).await;
        finish(&s, &a, &j, failed()).await;
        run
    };
    let s = open(&dir);
    assert_eq!(state(&s, &run, "x").await, StageState::AwaitingDecision);
    assert_eq!(s.inbox().await.unwrap().len(), 1);
    decide(&s, &run, retry("x")).await.unwrap();
    let a = agent(&s, "a1", 1, &[]).await;
    let j = claim(&s, &a).await;
    assert_eq!((j.spec.step, j.spec.attempt), (0, 2));
}
