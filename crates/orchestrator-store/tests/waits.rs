//! Questions a running step waits for inside (`orch ask --wait`): the stage
//! shows `awaiting_input` while its job stays leased, the answer ends the
//! wait without a new round, and a step that stops waiting, ends, is lost
//! or cancelled takes its open questions with it. Only the job's live
//! lease may ask or read. Runs on SQLite, and on PostgreSQL with
//! `ORCH_TEST_STORE=postgres`.

mod common;

use common::{agent, assert_log_replays_to_state, complete_ok, new_run, stage_states, TTL};
use orchestrator_core::api::{ClaimedJob, QuestionState, WaitAsk, WaitPoll};
use orchestrator_core::{AgentId, RunId};
use orchestrator_core::{Entity, JobState, RunState, StageState};
use orchestrator_store::{HumanCommand, SqlStore, StoreError};

const ONE: &str = "name: w\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}]\n";

fn ask(agent: &AgentId, job: &ClaimedJob, key: &str, question: &str) -> WaitAsk {
    WaitAsk {
        agent_id: agent.into(),
        lease_token: job.lease_token.clone(),
        key: key.into(),
        question: question.into(),
        choices: Vec::new(),
    }
}

fn poll(agent: &AgentId, job: &ClaimedJob, question_id: i64) -> WaitPoll {
    WaitPoll {
        agent_id: agent.into(),
        lease_token: job.lease_token.clone(),
        question_id,
        wait_ms: 0,
    }
}

async fn stage(s: &SqlStore, run: &RunId) -> StageState {
    stage_states(&s.run_detail(run).await.unwrap())["a"]
}

/// A run of one stage, its job claimed by a fresh agent.
async fn running(s: &SqlStore) -> (AgentId, RunId, ClaimedJob) {
    let a = agent(s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(ONE)).await.unwrap().run_id;
    let job = s.claim(&a, TTL).await.unwrap().unwrap();
    (a, run, job)
}

async fn answer(s: &SqlStore, run: &RunId, question_id: i64, text: &str) {
    s.human(
        run,
        HumanCommand::Answer {
            question_id,
            text: text.into(),
        },
        &orchestrator_core::Actor::user("admin"),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn an_answer_reaches_the_running_step_without_a_new_round() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::open(&dir);
    let (a, run, job) = running(&s).await;
    let q = s
        .ask_waiting(job.job_id, ask(&a, &job, "k1", "Which db?"))
        .await
        .unwrap();
    assert_eq!(stage(&s, &run).await, StageState::AwaitingInput);
    // Asked again under the same key (its answer was lost): the same question.
    let again = s
        .ask_waiting(job.job_id, ask(&a, &job, "k1", "Which db?"))
        .await
        .unwrap();
    assert_eq!(again, q);
    // Like any question: in the inbox, marked as waited for.
    let inbox = s.inbox().await.unwrap();
    let item = inbox.iter().find(|i| i.run_id == run).unwrap();
    let view = item.question.as_ref().unwrap();
    assert_eq!((view.id, view.waiting), (q, true));
    let open = s.wait_status(job.job_id, poll(&a, &job, q)).await.unwrap();
    assert_eq!((open.state, open.answer), (QuestionState::Open, None));

    // Hostile text is stored as given: nobody interprets it.
    let text = "$(rm -rf /); `id` \u{1b}[31m";
    answer(&s, &run, q, text).await;
    assert_eq!(stage(&s, &run).await, StageState::Running);
    let done = s.wait_status(job.job_id, poll(&a, &job, q)).await.unwrap();
    assert_eq!(done.state, QuestionState::Answered);
    assert_eq!(done.answer.as_deref(), Some(text));
    assert_eq!(done.answered_by.as_deref(), Some("user:admin"));

    complete_ok(&s, &a, &job).await;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!(d.jobs.len(), 1, "the answer started no new job");
    assert_eq!(d.jobs[0].attempt, 1);
    assert_log_replays_to_state(&s, &run).await;
    s.close().await;
}

#[tokio::test]
async fn only_the_live_lease_of_the_job_that_asked_may_ask_or_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::open(&dir);
    let two = "name: w\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}]\n  - id: b\n    steps: [{commands: [{argv: [x]}]}]\n";
    let a = agent(&s, "a1", 2, &[]).await;
    let run = s.submit_run(new_run(two)).await.unwrap().run_id;
    let j1 = s.claim(&a, TTL).await.unwrap().unwrap();
    let j2 = s.claim(&a, TTL).await.unwrap().unwrap();
    let mut forged = ask(&a, &j1, "k", "Q?");
    forged.lease_token = "not-the-token".into();
    let refused = s.ask_waiting(j1.job_id, forged).await;
    assert!(
        matches!(refused, Err(StoreError::StaleLease { .. })),
        "{refused:?}"
    );
    let refused = s
        .ask_waiting(j1.job_id, ask(&"someone-else".into(), &j1, "k", "Q?"))
        .await;
    assert!(matches!(refused, Err(StoreError::StaleLease { .. })));
    let q = s
        .ask_waiting(j1.job_id, ask(&a, &j1, "k", "Q?"))
        .await
        .unwrap();
    // The other job's lease, even of the same agent, cannot read it.
    let other = s.wait_status(j2.job_id, poll(&a, &j2, q)).await;
    assert!(
        matches!(other, Err(StoreError::NotFound { .. })),
        "{other:?}"
    );
    let other = s.withdraw_wait(j2.job_id, poll(&a, &j2, q)).await;
    assert!(matches!(other, Err(StoreError::NotFound { .. })));
    // Bad input changes nothing.
    for (question, key) in [
        ("  ", "k2"),
        ("Q?", ""),
        (&*"x".repeat(16 * 1024 + 1), "k3"),
    ] {
        let bad = s.ask_waiting(j2.job_id, ask(&a, &j2, key, question)).await;
        assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");
    }
    assert_eq!(
        stage_states(&s.run_detail(&run).await.unwrap())["b"],
        StageState::Running
    );
    // Once the job completed, its token is good for nothing.
    s.human(
        &run,
        HumanCommand::Answer {
            question_id: q,
            text: "yes".into(),
        },
        &orchestrator_core::Actor::user("admin"),
    )
    .await
    .unwrap();
    complete_ok(&s, &a, &j1).await;
    let late = s.wait_status(j1.job_id, poll(&a, &j1, q)).await;
    assert!(
        matches!(late, Err(StoreError::StaleLease { .. })),
        "{late:?}"
    );
    let late = s.ask_waiting(j1.job_id, ask(&a, &j1, "k9", "Q?")).await;
    assert!(matches!(late, Err(StoreError::StaleLease { .. })));
    assert_log_replays_to_state(&s, &run).await;
    s.close().await;
}

#[tokio::test]
async fn a_step_waits_for_at_most_sixteen_questions() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::open(&dir);
    let (a, run, job) = running(&s).await;
    for i in 0..16 {
        let q = s
            .ask_waiting(job.job_id, ask(&a, &job, &format!("k{i}"), "Q?"))
            .await
            .unwrap();
        answer(&s, &run, q, "ok").await;
    }
    let more = s.ask_waiting(job.job_id, ask(&a, &job, "k16", "Q?")).await;
    match more {
        Err(StoreError::Invalid(m)) => assert!(m.contains("at most 16"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(stage(&s, &run).await, StageState::Running);
    s.close().await;
}

#[tokio::test]
async fn a_withdrawn_wait_closes_its_question_and_the_stage_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::open(&dir);
    let (a, run, job) = running(&s).await;
    let q = s
        .ask_waiting(job.job_id, ask(&a, &job, "k", "Q?"))
        .await
        .unwrap();
    let st = s
        .withdraw_wait(job.job_id, poll(&a, &job, q))
        .await
        .unwrap();
    assert_eq!(st.state, QuestionState::Closed);
    assert_eq!(stage(&s, &run).await, StageState::Running);
    let late = s
        .human(
            &run,
            HumanCommand::Answer {
                question_id: q,
                text: "too late".into(),
            },
            &orchestrator_core::Actor::user("admin"),
        )
        .await;
    assert!(matches!(late, Err(StoreError::Conflict(_))), "{late:?}");
    assert!(s.inbox().await.unwrap().is_empty());
    assert_log_replays_to_state(&s, &run).await;
    s.close().await;
}

#[tokio::test]
async fn a_step_that_ends_or_is_lost_while_waiting_takes_its_question_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::open(&dir);
    // Ends while waiting (it exited without reading the answer).
    let (a, run, job) = running(&s).await;
    let q = s
        .ask_waiting(job.job_id, ask(&a, &job, "k", "Q?"))
        .await
        .unwrap();
    complete_ok(&s, &a, &job).await;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!(d.questions[0].state, QuestionState::Closed);
    assert_log_replays_to_state(&s, &run).await;

    // Lost while waiting (its agent died): the attempt is lost like any,
    // and its question is closed, not left answerable.
    let run = s.submit_run(new_run(ONE)).await.unwrap().run_id;
    let job = s.claim(&a, TTL).await.unwrap().unwrap();
    let q2 = s
        .ask_waiting(job.job_id, ask(&a, &job, "k", "Q?"))
        .await
        .unwrap();
    assert_ne!(q, q2);
    let expired = s
        .expire_leases(orchestrator_host::now_ms() + TTL as i64 + 1)
        .await
        .unwrap();
    assert_eq!(expired, 1);
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.questions[0].state, QuestionState::Closed);
    assert_eq!(d.jobs[0].state, JobState::Expired);
    // Retried from step 0 as a new attempt (backoff 0 in these tests).
    assert!(
        matches!(
            stage_states(&d)["a"],
            StageState::Queued | StageState::Retrying
        ),
        "{:?}",
        stage_states(&d)
    );
    let late = s
        .human(
            &run,
            HumanCommand::Answer {
                question_id: q2,
                text: "late".into(),
            },
            &orchestrator_core::Actor::user("admin"),
        )
        .await;
    assert!(matches!(late, Err(StoreError::Conflict(_))), "{late:?}");
    let log = s
        .transitions_since(0, Some(run.clone()), 10_000)
        .await
        .unwrap();
    let closed = log
        .iter()
        .find(|t| t.entity == Entity::Question && t.to == "closed")
        .unwrap();
    assert!(
        closed.reason.contains("the step ended before an answer"),
        "{}",
        closed.reason
    );
    assert_log_replays_to_state(&s, &run).await;

    // Cancelled while waiting: the job and the question go with the stage.
    let run = s.submit_run(new_run(ONE)).await.unwrap().run_id;
    let a2 = agent(&s, "a2", 1, &[]).await;
    let job = s.claim(&a2, TTL).await.unwrap().unwrap();
    s.ask_waiting(job.job_id, ask(&a2, &job, "k", "Q?"))
        .await
        .unwrap();
    s.command_run(
        &run,
        orchestrator_core::machine::RunEvent::Cancel,
        &orchestrator_core::Actor::user("admin"),
    )
    .await
    .unwrap();
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.jobs[0].state, JobState::Cancelled);
    assert_eq!(d.questions[0].state, QuestionState::Closed);
    assert_eq!(stage_states(&d)["a"], StageState::Cancelled);
    assert_log_replays_to_state(&s, &run).await;
    s.close().await;
}

#[tokio::test]
async fn a_stage_waiting_inside_its_step_still_counts_against_max_parallel_stages() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::open(&dir);
    let two = "name: w\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}]\n  - id: b\n    steps: [{commands: [{argv: [x]}]}]\n";
    let mut new = new_run(two);
    new.policy =
        orchestrator_core::sched::parse_project_policy("max_parallel_stages: 1\n", "policy.yaml")
            .unwrap();
    let a = agent(&s, "a1", 2, &[]).await;
    let run = s.submit_run(new).await.unwrap().run_id;
    let job = s.claim(&a, TTL).await.unwrap().unwrap();
    s.ask_waiting(job.job_id, ask(&a, &job, "k", "Q?"))
        .await
        .unwrap();
    // Another submission runs the scheduler pass over every runnable stage.
    s.submit_run(new_run(ONE)).await.unwrap();
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(
        d.jobs.len(),
        1,
        "the other stage must wait: the waiting step still runs"
    );
    assert_eq!(stage_states(&d)["b"], StageState::Pending);
    s.close().await;
}
