//! One run's failure never stops another: a run whose stored workflow is
//! broken fails alone, with a reason, while the other runs finish; a command
//! that panics fails alone while the rest of its batch commits.

mod common;

use common::open;

use orchestrator_core::{AgentId, RunId};
use std::sync::Arc;
use std::time::Duration;

use orchestrator_core::api::{ClaimedJob, CompleteRequest, RegisterAgent};
use orchestrator_core::sched::{parse_project_policy, ProjectPolicy};
use orchestrator_core::{RunState, StageState};
use orchestrator_store::{NewRun, SqlStore, StoreError};

const TTL: u64 = 30_000;

const CHAIN: &str = "name: chain\nstages:\n  - id: one\n    steps: [{commands: [{argv: [x]}]}]\n  - id: two\n    needs: [one]\n    steps: [{commands: [{argv: [y]}]}]\n";

fn new_run(project: &str, policy: ProjectPolicy) -> NewRun {
    NewRun {
        project_dir: project.into(),
        policy,
        ..common::new_run(CHAIN)
    }
}

async fn agent(s: &SqlStore) -> AgentId {
    let reg = RegisterAgent {
        name: "a".into(),
        slots: 8,
        ..Default::default()
    };
    s.register_agent(reg, TTL, 10_000).await.unwrap().agent_id
}

async fn claim_of(s: &SqlStore, agent: &AgentId, run: &RunId) -> ClaimedJob {
    let job = s.claim(agent, TTL).await.unwrap().expect("a queued job");
    assert_eq!(job.spec.run_id, *run, "claimed {:?}", job.spec);
    job
}

async fn done(s: &SqlStore, agent: &AgentId, job: &ClaimedJob) -> Result<(), StoreError> {
    let req = CompleteRequest {
        agent_id: agent.into(),
        lease_token: job.lease_token.clone(),
        outcome: common::outcome(true, None),
        claim_next: false,
        claim_key: None,
    };
    s.complete(job.job_id, req, TTL).await.map(|_| ())
}

/// Rewrites a run's stored workflow behind the store's back (no store
/// open on it: a store of its own, for this one write).
async fn set_spec(
    dir: &tempfile::TempDir,
    run: &RunId,
    edit: impl FnOnce(String) -> String + Send + 'static,
) {
    let s = open(dir);
    let run = run.to_owned();
    let n = s
        .exec_command(move |c| {
            let spec: String = c.query_row(
                "SELECT spec FROM run_specs WHERE run_id = ?1",
                [run.as_str()],
                |r| r.get(0),
            )?;
            Ok(c.execute(
                "UPDATE run_specs SET spec = ?2 WHERE run_id = ?1",
                [run.into_string(), edit(spec)],
            )?)
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    s.close().await;
}

/// The state of a run and of its stages, read straight from the database:
/// the store's own run view needs the spec these tests break.
async fn states(s: &SqlStore, run: &RunId) -> (String, Vec<(String, String)>) {
    let run = run.to_owned();
    s.exec_command(move |c| {
        let run_state = c.query_row(
            "SELECT state FROM runs WHERE id = ?1",
            [run.as_str()],
            |r| r.get(0),
        )?;
        let stages = c
            .prepare_cached(
                "SELECT stage_id, state FROM stage_runs WHERE run_id = ?1 ORDER BY ord",
            )?
            .query_map([run.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok((run_state, stages))
    })
    .await
    .unwrap()
}

/// The reason of the transition that took `stage` of `run` to `to`.
async fn reason_for(s: &SqlStore, run: &RunId, stage: &str, to: &str) -> String {
    let key = format!("{run}/{stage}");
    s.transitions_since(0, Some(run.to_owned()), 10_000)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.entity_id == key && t.to == to)
        .unwrap_or_else(|| panic!("no transition of {key} to {to}"))
        .reason
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

#[tokio::test]
async fn a_run_whose_spec_is_unreadable_fails_alone_when_admitted_and_the_other_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s).await;
    let one_at_a_time = parse_project_policy("max_parallel_runs: 1\n", "policy.yaml").unwrap();
    let first = s
        .submit_run(new_run("/p", one_at_a_time.clone()))
        .await
        .unwrap();
    let broken = s
        .submit_run(new_run("/p", one_at_a_time.clone()))
        .await
        .unwrap();
    assert_eq!(broken.state, RunState::Queued);
    let job = claim_of(&s, &a, &first.run_id).await;
    // Reopened, the store has no parsed copy of the broken spec to fall back on.
    s.close().await;
    drop(s);
    set_spec(&dir, &broken.run_id, |_| "{\"name\": ".to_owned()).await;
    let s = open(&dir);

    done(&s, &a, &job).await.unwrap();
    let job = claim_of(&s, &a, &first.run_id).await;
    // This completion ends the first run, which admits the broken one in the
    // same batch: its scheduling fails, and the completion must still commit.
    done(&s, &a, &job).await.unwrap();

    let d = s.run_detail(&first.run_id).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!(
        states(&s, &broken.run_id).await,
        (
            "failed".to_owned(),
            vec![pair("one", "failed"), pair("two", "blocked")]
        )
    );
    let why = reason_for(&s, &broken.run_id, "one", "failed").await;
    assert!(why.contains("daemon-side fault (class infra)"), "{why}");
    assert!(why.contains("stored spec unreadable"), "{why}");

    // The project's slot is free again and the store takes new work.
    let next = s.submit_run(new_run("/p", one_at_a_time)).await.unwrap();
    assert_eq!(next.state, RunState::Running);
    claim_of(&s, &a, &next.run_id).await;
    assert_eq!(s.writer_stats().failed_batches, 0);
}

#[tokio::test]
async fn a_stage_whose_step_is_missing_fails_alone_and_the_run_beside_it_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = agent(&s).await;
    let good = s
        .submit_run(new_run("/p", Default::default()))
        .await
        .unwrap();
    let job_good = claim_of(&s, &a, &good.run_id).await;
    let bad = s
        .submit_run(new_run("/q", Default::default()))
        .await
        .unwrap();
    let job_bad = claim_of(&s, &a, &bad.run_id).await;
    s.close().await;
    drop(s);
    set_spec(&dir, &bad.run_id, |spec| {
        let mut wf: serde_json::Value = serde_json::from_str(&spec).unwrap();
        wf["stages"][1]["steps"] = serde_json::json!([]);
        wf.to_string()
    })
    .await;
    let s = Arc::new(open(&dir));

    // Both completions release a second stage; only the broken run's fails.
    let (r_good, r_bad) = tokio::join!(done(&s, &a, &job_good), done(&s, &a, &job_bad));
    r_good.unwrap();
    r_bad.unwrap();
    let d = s.run_detail(&bad.run_id).await.unwrap();
    assert_eq!(d.run.state, RunState::Failed);
    let by_id = |id: &str| d.stages.iter().find(|x| x.stage_id == id).unwrap().state;
    assert_eq!(by_id("one"), StageState::Succeeded);
    assert_eq!(by_id("two"), StageState::Failed);
    let why = reason_for(&s, &bad.run_id, "two", "failed").await;
    assert!(why.contains("daemon-side fault (class infra)"), "{why}");
    assert!(why.contains("stage two has no step 0"), "{why}");

    let next = claim_of(&s, &a, &good.run_id).await;
    assert_eq!(next.spec.stage_id, "two");
    done(&s, &a, &next).await.unwrap();
    let d = s.run_detail(&good.run_id).await.unwrap();
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!(s.writer_stats().failed_batches, 0);
}

#[tokio::test]
async fn a_panicking_command_fails_alone_and_the_rest_of_its_batch_commits() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(&dir));
    // Hold the writer in a command of its own until the batch under test is
    // queued behind it, so the three commands share one transaction.
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let (running, started) = tokio::sync::oneshot::channel::<()>();
    let held = {
        let s = s.clone();
        tokio::spawn(async move {
            s.exec_command(move |_| {
                let _ = running.send(());
                let _ = gate.recv();
                Ok(())
            })
            .await
        })
    };
    started.await.unwrap();
    let before = s.writer_stats();
    let submit = |project: &'static str| {
        let s = s.clone();
        tokio::spawn(async move { s.submit_run(new_run(project, Default::default())).await })
    };
    let first = submit("/p");
    wait_queued(&s, 1).await;
    let panicking = {
        let s = s.clone();
        tokio::spawn(async move {
            s.exec_command(|c| -> Result<(), StoreError> {
                c.execute("UPDATE runs SET priority = 99", [])?;
                panic!("a bug in a command");
            })
            .await
        })
    };
    wait_queued(&s, 2).await;
    let last = submit("/q");
    wait_queued(&s, 3).await;
    release.send(()).unwrap();
    held.await.unwrap().unwrap();

    let first = first.await.unwrap().unwrap();
    let last = last.await.unwrap().unwrap();
    let err = panicking.await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("panicked: a bug in a command"),
        "{err}"
    );
    let after = s.writer_stats();
    assert_eq!(
        after.batches - before.batches,
        2,
        "the gate, then the batch"
    );
    assert!(after.max_batch >= 3, "{after:?}");
    assert_eq!(after.failed_batches, 0);
    for run in [&first.run_id, &last.run_id] {
        let d = s.run_detail(run).await.unwrap();
        assert_eq!(d.run.state, RunState::Running);
        assert_ne!(d.run.priority, 99, "the panicking command's write is gone");
        assert_eq!(d.stages[0].state, StageState::Queued);
    }
    // The writer is still there.
    s.submit_run(new_run("/r", Default::default()))
        .await
        .unwrap();
}

async fn wait_queued(s: &SqlStore, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.queued_commands() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "commands never queued"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
