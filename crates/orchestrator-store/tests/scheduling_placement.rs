//! Placement against the real store: stages go where their resources are
//! (labels, memory, whole and shared GPUs) and never overcommit, a stage no
//! agent could run is reported and explained, a started stage stays pinned,
//! reserved slots wait for high-priority work, and the system caps slots.

use orchestrator_core::sched::{parse_system_rules, SystemRules};

mod common;

use common::scheduling::*;
use common::TTL;

#[tokio::test]
async fn a_gpu_stage_goes_only_to_the_gpu_agent_and_gets_its_device() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let cpu = agent(&s, "cpu", 4, 8192, &[]).await;
    let gpu = agent(&s, "gpu", 4, 8192, &[16384, 24576]).await;
    let yaml = stages(&[
        ("train", "    resources: {gpus: 1, gpu_memory: 20G}\n"),
        ("lint", ""),
    ]);
    let sub = s
        .submit_run(run(&yaml, "/p", None, Default::default()))
        .await
        .unwrap();
    assert!(sub.warnings.is_empty(), "{:?}", sub.warnings);
    let first = claim(&s, &cpu).await.unwrap();
    assert_eq!(first.spec.stage_id, "lint");
    assert!(
        claim(&s, &cpu).await.is_none(),
        "the CPU agent never gets the GPU stage"
    );
    let t = claim(&s, &gpu).await.unwrap();
    assert_eq!(t.spec.stage_id, "train");
    // Only GPU 1 has 20 GiB.
    assert_eq!(t.grant.gpu_indices(), vec![1]);
    assert_eq!(t.grant.gpus[0].memory_mb, 20480);
    let agents = s.list_agents(TTL).await.unwrap();
    let g = agents.iter().find(|a| a.id == gpu).unwrap();
    assert_eq!(g.running, 1);
    assert_eq!(g.free.gpus[1].free_mb, 24576 - 20480);
    assert_eq!(g.free.gpus[0].free_mb, 16384);
    assert!(g.online);
}

#[tokio::test]
async fn memory_and_shared_gpus_pack_and_never_overcommit() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 8, 8192, &[24576]).await;
    let yaml = stages(&[
        ("m1", "    resources: {memory: 3G, gpu_memory: 10G}\n"),
        ("m2", "    resources: {memory: 3G, gpu_memory: 10G}\n"),
        ("m3", "    resources: {memory: 3G, gpu_memory: 10G}\n"),
    ]);
    s.submit_run(run(&yaml, "/p", None, Default::default()))
        .await
        .unwrap();
    let j1 = claim(&s, &a).await.unwrap();
    let j2 = claim(&s, &a).await.unwrap();
    assert_eq!(j1.grant.gpu_indices(), vec![0]);
    assert_eq!(
        j2.grant.gpu_indices(),
        vec![0],
        "two share the GPU by memory"
    );
    assert!(
        claim(&s, &a).await.is_none(),
        "a third would exceed memory and GPU memory"
    );
    done(&s, &a, &j1).await;
    let j3 = claim(&s, &a).await.unwrap();
    assert_eq!(j3.grant.memory_mb, 3072);
}

#[tokio::test]
async fn a_stage_no_agent_could_ever_run_is_reported_at_submit_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    agent(&s, "cpu", 2, 4096, &[]).await;
    let yaml = stages(&[
        ("train", "    resources: {gpus: 2}\n"),
        ("big", "    resources: {memory: 64G}\n"),
    ]);
    let sub = s
        .submit_run(run(&yaml, "/p", None, Default::default()))
        .await
        .unwrap();
    assert_eq!(sub.warnings.len(), 2, "{:?}", sub.warnings);
    assert!(sub.warnings[0].contains("stage train needs 1 slot, 2 whole GPUs"));
    assert!(sub.warnings[0].contains("no registered agent could ever run it"));
    assert!(sub.warnings[1].contains("64 GiB memory"));
    let e = s
        .explain(&sub.run_id, Some("train".into()), TTL)
        .await
        .unwrap();
    assert_eq!(e.stages.len(), 1);
    let text = e.stages[0].lines.join("\n");
    assert!(
        text.contains("no registered agent could ever run it"),
        "{text}"
    );
    assert!(text.contains("the agent has 0 such GPUs"), "{text}");
}

#[tokio::test]
async fn a_started_stage_stays_pinned_to_its_agent() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 1, 1024, &[]).await;
    let b = agent(&s, "b", 1, 1024, &[]).await;
    let yaml = "name: w\nstages:\n  - id: two\n    steps: [{commands: [{argv: [x]}]}, {commands: [{argv: [y]}]}]\n";
    let r = s
        .submit_run(run(yaml, "/p", None, Default::default()))
        .await
        .unwrap();
    let j = claim(&s, &a).await.unwrap();
    done(&s, &a, &j).await;
    assert!(
        claim(&s, &b).await.is_none(),
        "step 1 belongs on agent a, where the worktree is"
    );
    let e = s.explain(&r.run_id, Some("two".into()), TTL).await.unwrap();
    assert!(e.stages[0]
        .lines
        .iter()
        .any(|l| l.contains(&format!("pinned to agent {a}"))));
    let j2 = claim(&s, &a).await.unwrap();
    assert_eq!(j2.spec.step, 1);
    assert_eq!(
        s.run_detail(&r.run_id).await.unwrap().stages[0]
            .agent_id
            .as_ref(),
        Some(&a)
    );
}

#[tokio::test]
async fn reserved_slots_are_kept_for_high_priority_work() {
    let dir = tempfile::tempdir().unwrap();
    let rules =
        parse_system_rules("reserve: {slots: 1, min_priority: 50}\n", "rules.yaml").unwrap();
    let s = open(&dir, rules);
    let a = agent(&s, "a", 2, 1024, &[]).await;
    s.submit_run(run(
        &stages(&[("l1", ""), ("l2", "")]),
        "/p",
        Some(1),
        Default::default(),
    ))
    .await
    .unwrap();
    assert!(claim(&s, &a).await.is_some());
    assert!(claim(&s, &a).await.is_none(), "the last slot is reserved");
    let high = s
        .submit_run(run(
            &stages(&[("h", "")]),
            "/p",
            Some(60),
            Default::default(),
        ))
        .await
        .unwrap();
    let h = claim(&s, &a).await.unwrap();
    assert_eq!(h.spec.run_id, high.run_id);
}

#[tokio::test]
async fn agent_max_slots_caps_what_an_agent_declares() {
    let dir = tempfile::tempdir().unwrap();
    let rules = parse_system_rules("agent_max_slots: 1\n", "rules.yaml").unwrap();
    let s = open(&dir, rules);
    let a = agent(&s, "a", 8, 1024, &[]).await;
    s.submit_run(run(
        &stages(&[("x", ""), ("y", "")]),
        "/p",
        None,
        Default::default(),
    ))
    .await
    .unwrap();
    assert!(claim(&s, &a).await.is_some());
    assert!(claim(&s, &a).await.is_none());
    assert_eq!(s.list_agents(TTL).await.unwrap()[0].slots, 1);
}
