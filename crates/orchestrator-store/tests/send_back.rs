//! Feedback loops across stages: a human, or a failed stage's own
//! `on_failure`, sends the work back to a stage it needs; that stage runs
//! again with the feedback and everything after it runs again after it.
//! And rounds: each run of a step is numbered, with why it ran. A real
//! store (SQLite, or PostgreSQL with ORCH_TEST_STORE=postgres).

mod common;

use common::*;
use orchestrator_core::api::{ClaimedJob, CompleteRequest, StepOutcome};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::rounds::RoundReason;
use orchestrator_core::{AgentId, RunId};
use orchestrator_core::{Entity, RunState, StageState};
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

fn failed_with_tail() -> StepOutcome {
    StepOutcome {
        exit_codes: vec![Some(3)],
        error: Some("command 0 (sh -c test) exited with code 3".into()),
        log_tail: Some("--- last lines of stderr ---\nassertion failed: fixed.txt\n".into()),
        outputs: Default::default(),
        ..outcome(false, Some(ErrorClass::Task))
    }
}

fn send_back(stage: &str, feedback: &str) -> HumanCommand {
    HumanCommand::Retry {
        stage_id: stage.into(),
        comment: None,
        feedback: Some(feedback.into()),
    }
}

async fn states(s: &SqlStore, run: &RunId) -> std::collections::HashMap<String, StageState> {
    stage_states(&s.run_detail(run).await.unwrap())
}

async fn log_len(s: &SqlStore) -> usize {
    s.transitions_since(0, None, 1_000_000).await.unwrap().len()
}

/// implement, then test and docs after it (a diamond's two arms).
const WF: &str = "name: loop
stages:
  - id: implement
    steps: [{commands: [{argv: [a]}]}, {commands: [{argv: [b]}]}]
  - id: test
    needs: [implement]
    steps: [{commands: [{argv: [t]}]}]
  - id: docs
    needs: [implement]
    steps: [{commands: [{argv: [d]}]}]
";

/// Runs queued jobs, failing `test` with `fail_test`, until nothing is queued.
async fn drain(s: &SqlStore, a: &AgentId, fail_test: bool) -> Vec<ClaimedJob> {
    let mut ran = Vec::new();
    while let Some(j) = s.claim(a, TTL).await.unwrap() {
        let o = if fail_test && j.spec.stage_id == "test" {
            failed_with_tail()
        } else {
            outcome(true, None)
        };
        finish(s, a, &j, o).await;
        ran.push(j);
    }
    ran
}

#[tokio::test]
async fn a_human_sends_the_work_back_and_everything_after_it_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(WF)).await.unwrap().run_id;
    drain(&s, &a, true).await;
    let st = states(&s, &run).await;
    assert_eq!(st["test"], StageState::AwaitingDecision);
    assert_eq!(st["docs"], StageState::Succeeded);
    assert_eq!(st["implement"], StageState::Succeeded);

    s.human(
        &run,
        send_back("implement", "handle the empty input"),
        &orchestrator_core::Actor::User {
            name: "ann".into(),
            said: Some("ann".into()),
        },
    )
    .await
    .unwrap();
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, RunState::Running);
    assert_eq!(d.run.stages_ended, 0, "the reopened stages count as open");
    assert_eq!(d.run.stages_succeeded, 0);
    let st = stage_states(&d);
    assert_eq!(st["implement"], StageState::Queued);
    assert_eq!(st["test"], StageState::Pending);
    assert_eq!(st["docs"], StageState::Pending);
    // Recorded: who sent it back, and with what.
    let log = s
        .transitions_since(0, Some(run.clone()), 1_000_000)
        .await
        .unwrap();
    let sent = log
        .iter()
        .rev()
        .find(|t| t.entity == Entity::Stage && t.entity_id.ends_with("/implement"))
        .unwrap();
    assert_eq!(sent.from.map(|f| f.as_str()), Some("succeeded"));
    assert_eq!(sent.to, "queued");
    assert_eq!(sent.actor, "user:ann (said: ann)");
    assert!(
        sent.reason
            .contains("sent back by a human: step 1 runs again")
            && sent.reason.contains("handle the empty input"),
        "{}",
        sent.reason
    );
    assert!(log.iter().any(|t| t.entity_id.ends_with("/docs")
        && t.from.map(|f| f.as_str()) == Some("succeeded")
        && t.to == "pending"
        && t.reason.contains("runs again after implement")));

    // The last step of implement runs again with the feedback, as round 2.
    let j = claim(&s, &a).await;
    assert_eq!((j.spec.stage_id.as_str(), j.spec.step), ("implement", 1));
    assert_eq!(
        (j.spec.round, j.spec.round_reason),
        (2, RoundReason::Feedback)
    );
    let h = j.spec.handoff.clone().expect("the feedback is handed over");
    assert_eq!(h.feedback.unwrap().text, "handle the empty input");
    assert_eq!(h.sent_back.as_deref(), Some("by a human"));
    finish(&s, &a, &j, outcome(true, None)).await;
    // Then both stages after it, in their second rounds.
    let after = drain(&s, &a, false).await;
    let mut seen: Vec<(String, u32, RoundReason)> = after
        .iter()
        .map(|j| (j.spec.stage_id.clone(), j.spec.round, j.spec.round_reason))
        .collect();
    seen.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        seen,
        [
            ("docs".into(), 2, RoundReason::Feedback),
            ("test".into(), 2, RoundReason::Feedback)
        ]
    );
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!((d.run.stages_ended, d.run.stages_succeeded), (3, 3));
    // Rounds show in the run's jobs: step 0 of implement ran once, step 1 twice.
    let rounds: Vec<(String, u32, u32)> = d
        .jobs
        .iter()
        .map(|j| (j.stage_id.clone(), j.step, j.round))
        .collect();
    assert!(rounds.contains(&("implement".into(), 0, 1)));
    assert!(rounds.contains(&("implement".into(), 1, 2)));
    assert!(!rounds.contains(&("implement".into(), 0, 2)));
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn sending_back_what_cannot_be_sent_back_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(WF)).await.unwrap().run_id;
    // implement's first step is queued; nothing after it ran.
    let before = log_len(&s).await;
    let refused = |r: Result<_, StoreError>, want: &[&str]| match r {
        Err(StoreError::Conflict(m)) | Err(StoreError::Invalid(m)) => {
            for w in want {
                assert!(m.contains(w), "{m:?} should say {w:?}");
            }
        }
        other => panic!("expected a refusal, got {other:?}"),
    };
    refused(
        s.human(
            &run,
            send_back("test", "x"),
            &orchestrator_core::Actor::user("ann"),
        )
        .await,
        &["stage test", "has not run yet (pending)", "succeeded"],
    );
    refused(
        s.human(
            &run,
            send_back("implement", "x"),
            &orchestrator_core::Actor::user("ann"),
        )
        .await,
        &["stage implement", "is queued"],
    );
    refused(
        s.human(
            &run,
            send_back("implement", "  "),
            &orchestrator_core::Actor::user("ann"),
        )
        .await,
        &["empty feedback"],
    );
    assert!(matches!(
        s.human(
            &run,
            send_back("nope", "x"),
            &orchestrator_core::Actor::user("ann")
        )
        .await,
        Err(StoreError::NotFound { .. })
    ));
    // implement succeeded, but nothing after it ended yet.
    let j = claim(&s, &a).await;
    finish(&s, &a, &j, outcome(true, None)).await;
    let j = claim(&s, &a).await;
    finish(&s, &a, &j, outcome(true, None)).await;
    let before2 = log_len(&s).await;
    refused(
        s.human(
            &run,
            send_back("implement", "x"),
            &orchestrator_core::Actor::user("ann"),
        )
        .await,
        &["stage implement", "no stage after it has ended"],
    );
    assert_eq!(log_len(&s).await, before2);
    drain(&s, &a, false).await;
    // The run ended: nothing can be sent back.
    assert_eq!(
        s.run_detail(&run).await.unwrap().run.state,
        RunState::Succeeded
    );
    let ended = log_len(&s).await;
    refused(
        s.human(
            &run,
            send_back("implement", "x"),
            &orchestrator_core::Actor::user("ann"),
        )
        .await,
        &["has already ended succeeded", "stage implement"],
    );
    assert_eq!(log_len(&s).await, ended);
    assert!(before < before2);
}

const AUTO: &str = "name: auto
stages:
  - id: implement
    steps: [{commands: [{argv: [a]}]}]
  - id: test
    needs: [implement]
    on_failure: {retry_stage: implement, max_rounds: 2}
    steps: [{commands: [{argv: [t]}]}]
";

#[tokio::test]
async fn a_failed_stage_sends_its_work_back_by_itself_at_most_max_rounds_times() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(AUTO)).await.unwrap().run_id;
    for round in 1..=2u32 {
        let j = claim(&s, &a).await;
        assert_eq!(j.spec.stage_id, "implement");
        assert_eq!(j.spec.round, round);
        finish(&s, &a, &j, outcome(true, None)).await;
        let t = claim(&s, &a).await;
        assert_eq!((t.spec.stage_id.as_str(), t.spec.round), ("test", round));
        finish(&s, &a, &t, failed_with_tail()).await;
        let st = states(&s, &run).await;
        assert_eq!(st["test"], StageState::Pending, "round {round}");
        assert_eq!(st["implement"], StageState::Queued, "round {round}");
        let log = s
            .transitions_since(0, Some(run.clone()), 1_000_000)
            .await
            .unwrap();
        let failed = log
            .iter()
            .rev()
            .find(|t| {
                t.entity_id.ends_with("/test") && t.from.map(|f| f.as_str()) == Some("running")
            })
            .unwrap();
        assert!(
            failed.reason.contains(&format!(
                "its work goes back to stage implement with the failure as feedback (round {round} of 2)"
            )),
            "{}",
            failed.reason
        );
    }
    // Third time round: implement has the last failure as feedback.
    let j = claim(&s, &a).await;
    assert_eq!((j.spec.stage_id.as_str(), j.spec.round), ("implement", 3));
    assert_eq!(j.spec.round_reason, RoundReason::Feedback);
    let h = j.spec.handoff.clone().unwrap();
    let fb = h.feedback.unwrap();
    assert_eq!(fb.by, "scheduler");
    assert!(
        fb.text
            .starts_with("Stage test failed at step 0: command 0 (sh -c test) exited with code 3"),
        "{}",
        fb.text
    );
    assert!(
        fb.text.contains("assertion failed: fixed.txt"),
        "{}",
        fb.text
    );
    assert_eq!(
        h.sent_back.as_deref(),
        Some("after stage test failed (round 2 of 2)")
    );
    finish(&s, &a, &j, outcome(true, None)).await;
    // The bound is reached: this failure goes to a human, as usual.
    let t = claim(&s, &a).await;
    assert_eq!((t.spec.stage_id.as_str(), t.spec.round), ("test", 3));
    finish(&s, &a, &t, failed_with_tail()).await;
    let st = states(&s, &run).await;
    assert_eq!(st["test"], StageState::AwaitingDecision);
    assert_eq!(st["implement"], StageState::Succeeded);
    assert!(s.claim(&a, TTL).await.unwrap().is_none());
    // A human may still send it back by hand, past the automatic rounds.
    s.human(
        &run,
        send_back("implement", "try the other parser"),
        &orchestrator_core::Actor::user("ann"),
    )
    .await
    .unwrap();
    let j = claim(&s, &a).await;
    assert_eq!((j.spec.stage_id.as_str(), j.spec.round), ("implement", 4));
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn a_loops_iterations_are_rounds_of_its_steps_and_a_running_stage_after_is_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 2, &[]).await;
    let wf = "name: l
stages:
  - id: implement
    steps: [{commands: [{argv: [a]}]}]
  - id: spin
    needs: [implement]
    repeat: {max: 3}
    steps: [{commands: [{argv: [s]}]}]
  - id: test
    needs: [implement]
    steps: [{commands: [{argv: [t]}]}]
";
    let run = s.submit_run(new_run(wf)).await.unwrap().run_id;
    let j = claim(&s, &a).await;
    finish(&s, &a, &j, outcome(true, None)).await;
    // test fails while the loop runs its first iteration.
    let mut spin = None;
    for _ in 0..2 {
        let j = claim(&s, &a).await;
        if j.spec.stage_id == "test" {
            finish(&s, &a, &j, failed_with_tail()).await;
        } else {
            spin = Some(j);
        }
    }
    let spin = spin.unwrap();
    assert_eq!((spin.spec.step, spin.spec.round), (0, 1));
    // Sent back while spin runs: its job is withdrawn and it waits again.
    s.human(
        &run,
        send_back("implement", "again"),
        &orchestrator_core::Actor::user("ann"),
    )
    .await
    .unwrap();
    assert_eq!(states(&s, &run).await["spin"], StageState::Pending);
    let j = claim(&s, &a).await;
    assert_eq!(j.spec.stage_id, "implement");
    finish(&s, &a, &j, outcome(true, None)).await;
    let ran = drain(&s, &a, false).await;
    let spins: Vec<(u32, Option<u32>, u32, RoundReason)> = ran
        .iter()
        .filter(|j| j.spec.stage_id == "spin")
        .map(|j| {
            (
                j.spec.step,
                j.spec.step_index,
                j.spec.round,
                j.spec.round_reason,
            )
        })
        .collect();
    assert_eq!(
        spins,
        [
            (0, Some(0), 2, RoundReason::Feedback),
            (1, Some(0), 3, RoundReason::Loop),
            (2, Some(0), 4, RoundReason::Loop),
        ]
    );
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    let spin_view = d.stages.iter().find(|s| s.stage_id == "spin").unwrap();
    assert_eq!(
        (
            spin_view.step,
            spin_view.steps_total,
            spin_view.round,
            spin_view.iteration
        ),
        (0, 1, 4, 2)
    );
    assert!(d
        .jobs
        .iter()
        .filter(|j| j.stage_id == "spin")
        .all(|j| j.step == 0));
    assert_log_replays_to_state(&s, &run).await;
}
