//! Priorities and project limits against the real store: the effective
//! priority clamped by project then system orders the queue, equal ones
//! interleave, parallel runs and stages and quotas hold work with a reason,
//! and the project chooses the default sandbox.

use orchestrator_core::sched::{parse_project_policy, parse_system_rules, SystemRules};
use orchestrator_core::RunId;
use orchestrator_core::{RunState, StageState};
use orchestrator_store::StoreError;

mod common;

use common::scheduling::*;
use common::TTL;

#[tokio::test]
async fn effective_priority_is_clamped_by_project_then_system_and_orders_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let rules = parse_system_rules("priority: {min: 0, max: 8}\n", "rules.yaml").unwrap();
    let s = open(&dir, rules);
    let a = agent(&s, "a", 1, 1024, &[]).await;
    let policy = parse_project_policy(
        "priority: {min: 0, max: 10}\ndefault_priority: 2\n",
        "policy.yaml",
    )
    .unwrap();
    let low = s
        .submit_run(run(
            &stages(&[("l1", ""), ("l2", "")]),
            "/p",
            None,
            policy.clone(),
        ))
        .await
        .unwrap();
    let high = s
        .submit_run(run(&stages(&[("h1", "")]), "/p", Some(50), policy.clone()))
        .await
        .unwrap();
    let lp = low.priority.unwrap();
    assert_eq!(lp.value, 2, "the project's default");
    let hp = high.priority.unwrap();
    assert_eq!(hp.suggested, Some(50));
    assert_eq!(hp.value, 8, "project clamps 50 to 10, the system to 8");
    assert_eq!(hp.steps.len(), 2);
    let first = claim(&s, &a).await.unwrap();
    assert_eq!(
        first.spec.run_id, high.run_id,
        "higher priority first, though submitted later"
    );
    let e = s.explain(&high.run_id, None, TTL).await.unwrap();
    assert!(
        e.lines[0].contains("priority range [0, 10]"),
        "{:?}",
        e.lines
    );
    assert!(e.lines[0].contains("system rules"), "{:?}", e.lines);
}

#[tokio::test]
async fn equal_priorities_interleave_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 1, 1024, &[]).await;
    let many: Vec<(String, &str)> = (0..20).map(|i| (format!("a{i}"), "")).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(i, e)| (i.as_str(), *e)).collect();
    let big = s
        .submit_run(run(&stages(&many), "/p1", None, Default::default()))
        .await
        .unwrap();
    let small = s
        .submit_run(run(
            &stages(&[("b0", ""), ("b1", ""), ("b2", "")]),
            "/p2",
            None,
            Default::default(),
        ))
        .await
        .unwrap();
    let mut order = Vec::new();
    while let Some(j) = claim(&s, &a).await {
        order.push(j.spec.run_id.clone());
        done(&s, &a, &j).await;
    }
    assert_eq!(order.len(), 23);
    let firsts: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(_, r)| **r == small.run_id)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(firsts.len(), 3);
    assert!(
        firsts[2] < 10,
        "the small run is not starved behind the big one: {firsts:?}"
    );
    assert!(order[..firsts[0]].iter().all(|r| *r == big.run_id));
}

#[tokio::test]
async fn max_parallel_runs_queues_runs_and_admits_them_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 4, 1024, &[]).await;
    let policy = parse_project_policy("max_parallel_runs: 1\n", "policy.yaml").unwrap();
    let one = s
        .submit_run(run(&stages(&[("x", "")]), "/p", None, policy.clone()))
        .await
        .unwrap();
    let two = s
        .submit_run(run(&stages(&[("y", "")]), "/p", None, policy.clone()))
        .await
        .unwrap();
    let other = s
        .submit_run(run(&stages(&[("z", "")]), "/q", None, policy.clone()))
        .await
        .unwrap();
    assert_eq!(one.state, RunState::Running);
    assert_eq!(two.state, RunState::Queued);
    assert!(two
        .warnings
        .iter()
        .any(|w| w.contains("max_parallel_runs is 1 (project policy)")));
    assert_eq!(other.state, RunState::Running, "the limit is per project");
    let e = s.explain(&two.run_id, None, TTL).await.unwrap();
    assert!(
        e.lines.iter().any(|l| l.contains("queued: project /p")),
        "{:?}",
        e.lines
    );
    let j1 = claim(&s, &a).await.unwrap();
    let j2 = claim(&s, &a).await.unwrap();
    assert!(claim(&s, &a).await.is_none(), "the queued run has no jobs");
    let runs: Vec<RunId> = vec![j1.spec.run_id.clone(), j2.spec.run_id.clone()];
    assert!(!runs.contains(&two.run_id));
    let j_one = if j1.spec.run_id == one.run_id {
        &j1
    } else {
        &j2
    };
    done(&s, &a, j_one).await;
    assert_eq!(
        s.run_detail(&one.run_id).await.unwrap().run.state,
        RunState::Succeeded
    );
    assert_eq!(
        s.run_detail(&two.run_id).await.unwrap().run.state,
        RunState::Running
    );
    let j3 = claim(&s, &a).await.unwrap();
    assert_eq!(j3.spec.run_id, two.run_id);
}

#[tokio::test]
async fn max_parallel_stages_and_quotas_hold_stages_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 8, 65536, &[24576, 24576]).await;
    let policy =
        parse_project_policy("max_parallel_stages: 2\nquotas: {gpus: 1}\n", "policy.yaml").unwrap();
    let yaml = stages(&[
        ("g1", "    resources: {gpus: 1}\n"),
        ("g2", "    resources: {gpus: 1}\n"),
        ("c1", ""),
        ("c2", ""),
    ]);
    let r = s.submit_run(run(&yaml, "/p", None, policy)).await.unwrap();
    let mut got = Vec::new();
    while let Some(j) = claim(&s, &a).await {
        got.push(j);
    }
    let ids: Vec<&str> = got.iter().map(|j| j.spec.stage_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "at most 2 stages at once: {ids:?}");
    assert_eq!(
        ids.iter().filter(|i| i.starts_with('g')).count(),
        1,
        "one GPU by quota: {ids:?}"
    );
    let e = s.explain(&r.run_id, None, TTL).await.unwrap();
    let held: Vec<String> = e
        .stages
        .iter()
        .filter(|x| x.state == StageState::Pending)
        .flat_map(|x| x.lines.clone())
        .collect();
    assert!(
        held.iter()
            .any(|l| l.contains("max_parallel_stages is 2 (project policy)")),
        "{held:?}"
    );
    for j in &got {
        done(&s, &a, j).await;
    }
    let mut rest = Vec::new();
    while let Some(j) = claim(&s, &a).await {
        done(&s, &a, &j).await;
        rest.push(j.spec.stage_id);
    }
    // Completing each frees its place, so the rest run too.
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert_eq!(
        s.run_detail(&r.run_id).await.unwrap().run.state,
        RunState::Succeeded
    );
}

#[tokio::test]
async fn the_project_chooses_the_default_sandbox_and_refuses_weaker_ones() {
    use orchestrator_core::spec::SandboxKind;
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 1, 1024, &[]).await;
    let policy = parse_project_policy(
        "sandbox: namespace\nmin_sandbox: namespace\n",
        "policy.yaml",
    )
    .unwrap();
    let weak = "name: w\nstages:\n  - id: x\n    sandbox: process\n    steps: [{commands: [{argv: [x]}]}]\n";
    match s.submit_run(run(weak, "/p", None, policy.clone())).await {
        Err(StoreError::Invalid(m)) => assert!(
            m.contains("min_sandbox: namespace")
                && m.contains("stage \"x\" chooses sandbox: process"),
            "{m}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(s.list_runs(10).await.unwrap().is_empty(), "nothing stored");
    let open_choice = "name: w\nstages:\n  - id: x\n    steps: [{commands: [{argv: [x]}]}]\n";
    s.submit_run(run(open_choice, "/p", None, policy))
        .await
        .unwrap();
    let j = claim(&s, &a).await.unwrap();
    assert_eq!(j.spec.sandbox.kind, Some(SandboxKind::Namespace));
}
