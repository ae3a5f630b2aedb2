//! Scenarios against the real SQLite store: every state change through the
//! writer, read back through the read connection.

use std::sync::Arc;

use orchestrator_core::api::{CompleteRequest, LeaseRef, RegisterAgent};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::machine::RunEvent;
use orchestrator_core::{JobState, RunState, StageState};
use orchestrator_store::{HumanCommand, SqlStore, Store, StoreError, StoreOptions};

mod common;

use common::*;

const DIAMOND: &str = "name: d\nstages:\n  - id: a\n    steps: [{commands: [{argv: [x]}]}]\n  - id: b\n    needs: [a]\n    steps: [{commands: [{argv: [x]}]}, {commands: [{argv: [y]}]}]\n  - id: c\n    needs: [a]\n    steps: [{commands: [{argv: [x]}]}]\n  - id: d\n    needs: [b, c]\n    steps: [{commands: [{argv: [x]}]}]\n";

#[tokio::test]
async fn a_diamond_runs_to_success_and_its_log_replays_to_the_stored_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 4, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(stage_states(&d)["a"], StageState::Queued);
    assert_eq!(stage_states(&d)["d"], StageState::Pending);
    let mut order = Vec::new();
    while let Some(job) = s.claim(&a, TTL).await.unwrap() {
        order.push(format!("{}:{}", job.spec.stage_id, job.spec.step));
        complete_ok(&s, &a, &job).await;
    }
    assert_eq!(order.first().map(String::as_str), Some("a:0"));
    assert_eq!(order.last().map(String::as_str), Some("d:0"));
    assert_eq!(order.len(), 5, "a, b (2 steps), c, d: {order:?}");
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    assert!(d.stages.iter().all(|x| x.state == StageState::Succeeded));
    assert_eq!(d.run.stages_succeeded, 4);
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn a_completion_with_a_stale_token_is_refused_and_the_refusal_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    let job = s.claim(&a, TTL).await.unwrap().unwrap();
    let bad = CompleteRequest {
        agent_id: a.clone(),
        lease_token: "nope".into(),
        outcome: outcome(true, None),
        claim_next: false,
        claim_key: None,
    };
    match s.complete(job.job_id, bad, TTL).await {
        Err(StoreError::StaleLease { job_id, .. }) => assert_eq!(job_id, job.job_id),
        other => panic!("expected a stale lease refusal, got {other:?}"),
    }
    let log = s
        .transitions_since(0, Some(run.clone()), 10_000)
        .await
        .unwrap();
    assert!(log.iter().any(
        |t| t.reason.starts_with("completion refused") && t.entity_id == job.job_id.to_string()
    ));
    complete_ok(&s, &a, &job).await;
    // The same token again is the same completion sent twice (its answer
    // lost): acknowledged, and recorded once.
    let again = CompleteRequest {
        agent_id: a.clone(),
        lease_token: job.lease_token.clone(),
        outcome: outcome(true, None),
        claim_next: false,
        claim_key: None,
    };
    assert_eq!(
        s.complete(job.job_id, again, TTL).await.unwrap().job_id,
        job.job_id
    );
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(
        d.jobs
            .iter()
            .filter(|j| j.state == JobState::Succeeded)
            .count(),
        1
    );
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn a_task_failure_blocks_dependents_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    let ja = s.claim(&a, TTL).await.unwrap().unwrap();
    complete_ok(&s, &a, &ja).await;
    // b and c are queued; fail whichever is b, finish c.
    loop {
        let Some(j) = s.claim(&a, TTL).await.unwrap() else {
            break;
        };
        let ok = j.spec.stage_id != "b";
        let class = (!ok).then_some(ErrorClass::Task);
        s.complete(
            j.job_id,
            CompleteRequest {
                agent_id: a.clone(),
                lease_token: j.lease_token.clone(),
                outcome: outcome(ok, class),
                claim_next: false,
                claim_key: None,
            },
            TTL,
        )
        .await
        .unwrap();
    }
    // b waits for a human; c, which does not need it, finished; d waits.
    let d = s.run_detail(&run).await.unwrap();
    let st = stage_states(&d);
    assert_eq!(st["b"], StageState::AwaitingDecision);
    assert_eq!(st["c"], StageState::Succeeded);
    assert_eq!(st["d"], StageState::Pending);
    assert_eq!(d.run.state, RunState::Running);
    // Aborting the run fails b, which blocks d, and ends the run.
    s.human(
        &run,
        HumanCommand::Abort {
            stage_id: None,
            comment: Some("no".into()),
        },
        &orchestrator_core::Actor::user("ann"),
    )
    .await
    .unwrap();
    let d = s.run_detail(&run).await.unwrap();
    let st = stage_states(&d);
    assert_eq!(st["b"], StageState::Failed);
    assert_eq!(st["c"], StageState::Succeeded);
    assert_eq!(st["d"], StageState::Blocked);
    assert_eq!(d.run.state, RunState::Failed);
    let failed = d.jobs.iter().find(|j| j.state == JobState::Failed).unwrap();
    assert_eq!(failed.error_class, Some(ErrorClass::Task));
    assert_eq!(failed.exit_codes, vec![Some(1)]);
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn expired_leases_restart_the_stage_until_five_attempts_then_a_human_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    for attempt in 1..=5u32 {
        let j = s.claim(&a, 1).await.unwrap().expect("stage a requeued");
        assert_eq!(j.spec.stage_id, "a");
        assert_eq!(j.spec.attempt, attempt);
        assert_eq!(j.spec.step, 0);
        let n = s
            .expire_leases(orchestrator_host::now_ms() + 10)
            .await
            .unwrap();
        assert_eq!(n, 1);
        // The late completion of the lost attempt is refused.
        let late = CompleteRequest {
            agent_id: a.clone(),
            lease_token: j.lease_token.clone(),
            outcome: outcome(true, None),
            claim_next: false,
            claim_key: None,
        };
        assert!(matches!(
            s.complete(j.job_id, late, TTL).await,
            Err(StoreError::StaleLease { .. })
        ));
    }
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(stage_states(&d)["a"], StageState::AwaitingDecision);
    // The error a human reads says where the lost work was and when its
    // agent was last heard from.
    let first = d.jobs.iter().find(|j| j.attempt == 1).unwrap();
    let error = first.error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("lease expired")
            && error.contains(&format!(
                "[run {run}, stage a, step 0, attempt 1, agent {a} on "
            ))
            && error.contains("last heard from"),
        "{error}"
    );
    assert!(
        s.claim(&a, TTL).await.unwrap().is_none(),
        "no sixth attempt by itself"
    );
    s.human(
        &run,
        HumanCommand::Abort {
            stage_id: Some("a".into()),
            comment: None,
        },
        &orchestrator_core::Actor::user("ann"),
    )
    .await
    .unwrap();
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(stage_states(&d)["a"], StageState::Failed);
    assert!(["b", "c", "d"]
        .iter()
        .all(|x| stage_states(&d)[*x] == StageState::Blocked));
    assert_eq!(d.run.state, RunState::Failed);
    assert_eq!(
        d.jobs
            .iter()
            .filter(|j| j.state == JobState::Expired)
            .count(),
        5
    );
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn an_infra_failure_retries_the_stage_from_step_zero() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    let j = s.claim(&a, TTL).await.unwrap().unwrap();
    s.complete(
        j.job_id,
        CompleteRequest {
            agent_id: a.clone(),
            lease_token: j.lease_token.clone(),
            outcome: outcome(false, Some(ErrorClass::Infra)),
            claim_next: false,
            claim_key: None,
        },
        TTL,
    )
    .await
    .unwrap();
    let j2 = s.claim(&a, TTL).await.unwrap().unwrap();
    assert_eq!(
        (j2.spec.stage_id.as_str(), j2.spec.step, j2.spec.attempt),
        ("a", 0, 2)
    );
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn labels_and_slots_decide_what_an_agent_may_claim() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let plain = agent(&s, "plain", 1, &[]).await;
    let gpu = agent(&s, "gpu", 1, &["gpu", "linux"]).await;
    let wf = "name: l\nstages:\n  - id: g\n    labels: [gpu]\n    steps: [{commands: [{argv: [x]}]}]\n  - id: p\n    steps: [{commands: [{argv: [x]}]}]\n  - id: q\n    steps: [{commands: [{argv: [x]}]}]\n";
    s.submit_run(new_run(wf)).await.unwrap();
    let j = s.claim(&plain, TTL).await.unwrap().unwrap();
    assert_ne!(
        j.spec.stage_id, "g",
        "an agent without the label never gets the gpu stage"
    );
    assert!(
        s.claim(&plain, TTL).await.unwrap().is_none(),
        "one slot, one job"
    );
    let g = s.claim(&gpu, TTL).await.unwrap().unwrap();
    assert_eq!(
        g.spec.stage_id, "g",
        "the labelled stage goes first to the agent that can run it"
    );
}

#[tokio::test]
async fn an_invalid_workflow_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let before = s.counts().await.unwrap().transitions;
    let err = s.submit_run(new_run("name: x\nstages:\n  - id: a\n    needs: [zz]\n    steps: [{commands: [{argv: [x]}]}]\n")).await;
    match err {
        Err(StoreError::InvalidWorkflow(e)) => assert!(e.to_string().contains("zz")),
        other => panic!("expected an invalid workflow error, got {other:?}"),
    }
    assert!(s.list_runs(10).await.unwrap().is_empty());
    assert_eq!(s.counts().await.unwrap().transitions, before);
}

#[tokio::test]
async fn unknown_agents_and_jobs_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    assert!(matches!(
        s.claim("nobody", TTL).await,
        Err(StoreError::NotFound { what: "agent", .. })
    ));
    assert!(matches!(
        s.heartbeat("nobody", vec![], TTL).await,
        Err(StoreError::NotFound { .. })
    ));
    let req = CompleteRequest {
        agent_id: "x".into(),
        lease_token: "y".into(),
        outcome: outcome(true, None),
        claim_next: false,
        claim_key: None,
    };
    assert!(matches!(
        s.complete(999, req, TTL).await,
        Err(StoreError::NotFound { what: "job", .. })
    ));
}

#[tokio::test]
async fn heartbeats_extend_held_leases_and_revoke_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 2, &[]).await;
    s.submit_run(new_run(DIAMOND)).await.unwrap();
    let j = s.claim(&a, 1_000).await.unwrap().unwrap();
    let r = s
        .heartbeat(
            &a,
            vec![
                LeaseRef {
                    job_id: j.job_id,
                    lease_token: j.lease_token.clone(),
                },
                LeaseRef {
                    job_id: 4242,
                    lease_token: "x".into(),
                },
            ],
            60_000,
        )
        .await
        .unwrap();
    assert_eq!(r.extended, vec![j.job_id]);
    assert_eq!(r.revoked, vec![4242]);
    // Extended past the original 1 s: nothing expires 2 s from now.
    assert_eq!(
        s.expire_leases(orchestrator_host::now_ms() + 2_000)
            .await
            .unwrap(),
        0
    );
    // A heartbeat that crossed the job's completion neither extends nor revokes it.
    complete_ok(&s, &a, &j).await;
    let r = s
        .heartbeat(
            &a,
            vec![LeaseRef {
                job_id: j.job_id,
                lease_token: j.lease_token.clone(),
            }],
            60_000,
        )
        .await
        .unwrap();
    assert!(r.extended.is_empty() && r.revoked.is_empty(), "{r:?}");
}

#[tokio::test]
async fn an_agent_registering_again_voids_the_leases_of_its_earlier_run() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    s.submit_run(new_run(DIAMOND)).await.unwrap();
    let j = s.claim(&a, TTL).await.unwrap().unwrap();
    let again = s
        .register_agent(
            RegisterAgent {
                name: "a1".into(),
                labels: vec![],
                slots: 1,
                hostname: None,
                ..Default::default()
            },
            TTL,
            10_000,
        )
        .await
        .unwrap();
    assert_eq!(again.agent_id, a, "same name, same id");
    assert_eq!(again.stale_jobs, vec![j.job_id]);
    let j2 = s.claim(&a, TTL).await.unwrap().unwrap();
    assert_eq!(j2.spec.attempt, 2);
}

#[tokio::test]
async fn the_store_survives_a_reopen_with_every_run_intact() {
    let dir = tempfile::tempdir().unwrap();
    let run;
    {
        let s = open(&dir);
        let a = agent(&s, "a1", 1, &[]).await;
        run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
        let j = s.claim(&a, TTL).await.unwrap().unwrap();
        complete_ok(&s, &a, &j).await;
        s.close().await;
    }
    let s = open(&dir);
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(stage_states(&d)["a"], StageState::Succeeded);
    assert_eq!(stage_states(&d)["b"], StageState::Queued);
    let a = agent(&s, "a1", 4, &[]).await;
    while let Some(j) = s.claim(&a, TTL).await.unwrap() {
        complete_ok(&s, &a, &j).await;
    }
    assert_eq!(
        s.run_detail(&run).await.unwrap().run.state,
        RunState::Succeeded
    );
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(&dir));
    let a = agent(&s, "a1", 64, &[]).await;
    let mut y = String::from("name: w\nstages:\n");
    for i in 0..200 {
        y.push_str(&format!(
            "  - id: s{i}\n    steps: [{{commands: [{{argv: [x]}}]}}]\n"
        ));
    }
    let run = s.submit_run(new_run(&y)).await.unwrap().run_id;
    let before = s.writer_stats();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (s, a) = (s.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(j) = s.claim(&a, TTL).await.unwrap() {
                complete_ok(&s, &a, &j).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = s.writer_stats();
    let commands = after.commands - before.commands;
    let batches = after.batches - before.batches;
    assert!(
        commands >= 400,
        "200 claims and 200 completions at least, got {commands}"
    );
    assert!(
        batches < commands,
        "{commands} commands in {batches} batches: some must share a commit"
    );
    assert!(after.max_batch > 1);
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!(
        d.jobs
            .iter()
            .filter(|j| j.state == JobState::Succeeded)
            .count(),
        200,
        "each stage completed exactly once"
    );
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn a_completion_can_hand_the_agent_its_next_job_including_stages_it_just_released() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    let mut job = s.claim(&a, TTL).await.unwrap().unwrap();
    let mut seen = vec![job.spec.stage_id.clone()];
    loop {
        let req = CompleteRequest {
            agent_id: a.clone(),
            lease_token: job.lease_token.clone(),
            outcome: outcome(true, None),
            claim_next: true,
            claim_key: None,
        };
        match s.complete(job.job_id, req, TTL).await.unwrap().next {
            Some(next) => {
                seen.push(next.spec.stage_id.clone());
                job = next;
            }
            None => break,
        }
    }
    // a released b and c, which were queued and handed out in the same commit.
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(
        s.run_detail(&run).await.unwrap().run.state,
        RunState::Succeeded
    );
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn a_second_store_on_the_same_file_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let first = open_sqlite(&dir);
    let second = SqlStore::open(StoreOptions::new(dir.path().join("orch.db")));
    match second {
        Err(e @ StoreError::Locked { .. }) => {
            assert!(
                e.to_string().contains("in use by another orch daemon"),
                "{e}"
            )
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("two stores on one file"),
    }
    first.close().await;
    drop(first);
    // Once the first is gone the file opens again.
    let again = open_sqlite(&dir);
    assert!(again.list_runs(1).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_store_written_by_a_newer_orch_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orch.db");
    {
        let s = open_sqlite(&dir);
        s.submit_run(new_run(DIAMOND)).await.unwrap();
        s.close().await;
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    match SqlStore::open(StoreOptions::new(&path)) {
        Err(e @ StoreError::TooNew { found: 99, .. }) => {
            assert!(e.to_string().contains("schema version 99"), "{e}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let runs: i64 = conn
        .query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 1, "the refused store keeps its runs");
}

#[tokio::test]
async fn cancelling_a_run_cancels_its_open_stages_revokes_its_leases_and_refuses_late_completions()
{
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 1, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    let j = s.claim(&a, TTL).await.unwrap().unwrap();
    let summary = s
        .command_run(
            &run,
            RunEvent::Cancel,
            &orchestrator_core::Actor::user("test"),
        )
        .await
        .unwrap();
    assert_eq!(summary.state, RunState::Cancelled);
    assert!(summary.ended_at_ms.is_some());
    let d = s.run_detail(&run).await.unwrap();
    assert!(
        d.stages.iter().all(|x| x.state == StageState::Cancelled),
        "{:?}",
        d.stages
    );
    assert_eq!(
        d.jobs.iter().find(|x| x.id == j.job_id).unwrap().state,
        JobState::Cancelled
    );
    // The agent's lease is gone: a heartbeat reports it revoked, a completion is refused.
    let r = s
        .heartbeat(
            &a,
            vec![LeaseRef {
                job_id: j.job_id,
                lease_token: j.lease_token.clone(),
            }],
            TTL,
        )
        .await
        .unwrap();
    assert_eq!(r.revoked, vec![j.job_id]);
    let late = CompleteRequest {
        agent_id: a.clone(),
        lease_token: j.lease_token.clone(),
        outcome: outcome(true, None),
        claim_next: true,
        claim_key: None,
    };
    assert!(matches!(
        s.complete(j.job_id, late, TTL).await,
        Err(StoreError::StaleLease { .. })
    ));
    assert!(
        s.claim(&a, TTL).await.unwrap().is_none(),
        "nothing of a cancelled run is handed out"
    );
    match s
        .command_run(
            &run,
            RunEvent::Cancel,
            &orchestrator_core::Actor::user("test"),
        )
        .await
    {
        Err(StoreError::Conflict(msg)) => assert!(msg.contains("already ended"), "{msg}"),
        other => panic!("cancelling twice: {other:?}"),
    }
    assert!(matches!(
        s.command_run(
            "rnope",
            RunEvent::Cancel,
            &orchestrator_core::Actor::user("test")
        )
        .await,
        Err(StoreError::NotFound { .. })
    ));
    assert_log_replays_to_state(&s, &run).await;
}

#[tokio::test]
async fn a_paused_run_holds_each_stage_at_its_next_checkpoint_and_resumes_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s, "a1", 4, &[]).await;
    let run = s.submit_run(new_run(DIAMOND)).await.unwrap().run_id;
    let ja = s.claim(&a, TTL).await.unwrap().unwrap();
    assert_eq!(
        s.command_run(
            &run,
            RunEvent::Pause,
            &orchestrator_core::Actor::user("test")
        )
        .await
        .unwrap()
        .state,
        RunState::Paused
    );
    // The running step is not interrupted; what it releases does not start.
    complete_ok(&s, &a, &ja).await;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(stage_states(&d)["a"], StageState::Succeeded);
    assert_eq!(stage_states(&d)["b"], StageState::Pending);
    assert!(
        s.claim(&a, TTL).await.unwrap().is_none(),
        "a paused run hands out nothing"
    );
    match s
        .command_run(
            &run,
            RunEvent::Pause,
            &orchestrator_core::Actor::user("test"),
        )
        .await
    {
        Err(StoreError::Conflict(msg)) => {
            assert!(msg.contains("only a running run can be paused"), "{msg}")
        }
        other => panic!("pausing twice: {other:?}"),
    }

    s.command_run(
        &run,
        RunEvent::Resume,
        &orchestrator_core::Actor::user("test"),
    )
    .await
    .unwrap();
    let j1 = s.claim(&a, TTL).await.unwrap().unwrap();
    let j2 = s.claim(&a, TTL).await.unwrap().unwrap();
    let (jb, jc) = if j1.spec.stage_id == "b" {
        (j1, j2)
    } else {
        (j2, j1)
    };
    assert_eq!((jb.spec.stage_id.as_str(), jb.spec.step), ("b", 0));
    s.command_run(
        &run,
        RunEvent::Pause,
        &orchestrator_core::Actor::user("test"),
    )
    .await
    .unwrap();
    complete_ok(&s, &a, &jb).await;
    complete_ok(&s, &a, &jc).await;
    let d = s.run_detail(&run).await.unwrap();
    assert_eq!(
        stage_states(&d)["b"],
        StageState::Paused,
        "b holds before its step 1"
    );
    assert_eq!(stage_states(&d)["c"], StageState::Succeeded);
    assert_eq!(stage_states(&d)["d"], StageState::Pending);
    assert!(s.claim(&a, TTL).await.unwrap().is_none());

    s.command_run(
        &run,
        RunEvent::Resume,
        &orchestrator_core::Actor::user("test"),
    )
    .await
    .unwrap();
    let jb1 = s.claim(&a, TTL).await.unwrap().unwrap();
    assert_eq!(
        (jb1.spec.stage_id.as_str(), jb1.spec.step),
        ("b", 1),
        "b goes on from its checkpoint"
    );
    complete_ok(&s, &a, &jb1).await;
    let jd = s.claim(&a, TTL).await.unwrap().unwrap();
    complete_ok(&s, &a, &jd).await;
    assert_eq!(
        s.run_detail(&run).await.unwrap().run.state,
        RunState::Succeeded
    );
    match s
        .command_run(
            &run,
            RunEvent::Resume,
            &orchestrator_core::Actor::user("test"),
        )
        .await
    {
        Err(StoreError::Conflict(msg)) => assert!(msg.contains("already ended"), "{msg}"),
        other => panic!("resuming an ended run: {other:?}"),
    }
    assert_log_replays_to_state(&s, &run).await;
}
