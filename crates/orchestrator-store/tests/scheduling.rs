//! Scheduling against the real SQLite store: placement by resources,
//! priorities and their authorities, fairness, project limits, pinning,
//! reserved capacity, cooperative pre-emption and `explain`.

mod common;

use orchestrator_core::api::{ClaimedJob, CompleteRequest, RegisterAgent, StepOutcome};
use orchestrator_core::sched::{
    parse_project_policy, parse_system_rules, Gpu, ProjectPolicy, SystemRules,
};
use orchestrator_core::{RunState, StageState};
use orchestrator_store::{NewRun, SqlStore, Store, StoreError};

const TTL: u64 = 30_000;

fn open(dir: &tempfile::TempDir, rules: SystemRules) -> SqlStore {
    let mut o = common::options(dir);
    o.rules = rules;
    SqlStore::open(o).unwrap()
}

fn run(yaml: &str, project: &str, priority: Option<i32>, policy: ProjectPolicy) -> NewRun {
    NewRun {
        workflow: yaml.to_owned(),
        file: Some("wf.yaml".into()),
        project_dir: project.into(),
        priority,
        policy,
        base_commit: "0123456789abcdef0123456789abcdef01234567".into(),
        tree: Vec::new(),
        actor: orchestrator_core::Actor::user("test"),
        on_failure: None,
    }
}

async fn agent(s: &SqlStore, name: &str, slots: u32, memory_mb: u64, gpus: &[u64]) -> String {
    s.register_agent(
        RegisterAgent {
            name: name.into(),
            slots,
            memory_mb,
            gpus: gpus
                .iter()
                .enumerate()
                .map(|(i, m)| Gpu {
                    index: i as u32,
                    name: "test".into(),
                    memory_mb: *m,
                })
                .collect(),
            ..Default::default()
        },
        TTL,
        10_000,
    )
    .await
    .unwrap()
    .agent_id
}

async fn done(s: &SqlStore, agent: &str, job: &ClaimedJob) {
    s.complete(
        job.job_id,
        CompleteRequest {
            agent_id: agent.into(),
            lease_token: job.lease_token.clone(),
            outcome: StepOutcome {
                timed_out: false,
                success: true,
                exit_codes: vec![Some(0)],
                error: None,
                error_class: None,
                bundle: "b".into(),
                duration_ms: 1,
                checkpoint: None,
                until_met: None,
                questions: Vec::new(),
                sandbox: None,
                log_tail: None,
            },
            claim_next: false,
            claim_key: None,
        },
        TTL,
    )
    .await
    .unwrap();
}

async fn claim(s: &SqlStore, agent: &str) -> Option<ClaimedJob> {
    s.claim(agent, TTL).await.unwrap()
}

async fn stage_state(s: &SqlStore, run: &str, stage: &str) -> StageState {
    s.run_detail(run)
        .await
        .unwrap()
        .stages
        .into_iter()
        .find(|x| x.stage_id == stage)
        .unwrap()
        .state
}

/// A workflow of independent one-step stages, each with `extra` lines of stage fields.
fn stages(ids: &[(&str, &str)]) -> String {
    let mut y = "name: w\nstages:\n".to_owned();
    for (id, extra) in ids {
        y += &format!("  - id: {id}\n{extra}    steps: [{{commands: [{{argv: [x]}}]}}]\n");
    }
    y
}

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
    let runs: Vec<String> = vec![j1.spec.run_id.clone(), j2.spec.run_id.clone()];
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
            .as_deref(),
        Some(a.as_str())
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

const LOOP: &str = "name: low\nstages:\n  - id: grind\n    repeat: {max: 3}\n    steps: [{commands: [{argv: [x]}]}]\n";

#[tokio::test]
async fn higher_priority_work_makes_a_loop_stage_yield_at_its_checkpoint_and_resume_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 1, 1024, &[]).await;
    let low = s
        .submit_run(run(LOOP, "/p", Some(1), Default::default()))
        .await
        .unwrap();
    let l0 = claim(&s, &a).await.unwrap();
    assert_eq!(s.preempt(TTL).await.unwrap(), 0, "nothing waits");
    let high = s
        .submit_run(run(
            &stages(&[("urgent", "")]),
            "/p",
            Some(9),
            Default::default(),
        ))
        .await
        .unwrap();
    assert!(claim(&s, &a).await.is_none(), "the only slot is busy");
    assert_eq!(s.preempt(TTL).await.unwrap(), 1);
    assert_eq!(s.preempt(TTL).await.unwrap(), 0, "asked once, not twice");
    let e = s.explain(&low.run_id, None, TTL).await.unwrap();
    assert!(
        e.stages[0]
            .lines
            .iter()
            .any(|l| l.contains("asked to yield")),
        "{:?}",
        e.stages[0].lines
    );
    // The step is never interrupted: it completes, then the stage suspends.
    done(&s, &a, &l0).await;
    assert_eq!(
        stage_state(&s, &low.run_id, "grind").await,
        StageState::Suspended
    );
    let e = s.explain(&low.run_id, None, TTL).await.unwrap();
    assert!(
        e.stages[0]
            .lines
            .iter()
            .any(|l| l.contains("yielded to job")),
        "{:?}",
        e.stages[0].lines
    );
    let h = claim(&s, &a).await.unwrap();
    assert_eq!(
        h.spec.run_id, high.run_id,
        "the slot goes to the waiting work"
    );
    assert_eq!(
        stage_state(&s, &low.run_id, "grind").await,
        StageState::Queued,
        "resumed once placed"
    );
    assert!(claim(&s, &a).await.is_none());
    done(&s, &a, &h).await;
    let l1 = claim(&s, &a).await.unwrap();
    assert_eq!(
        (l1.spec.run_id.as_str(), l1.spec.step),
        (low.run_id.as_str(), 1)
    );
    done(&s, &a, &l1).await;
    let l2 = claim(&s, &a).await.unwrap();
    done(&s, &a, &l2).await;
    assert_eq!(
        s.run_detail(&low.run_id).await.unwrap().run.state,
        RunState::Succeeded
    );
    let log = s
        .transitions_since(0, Some(low.run_id.clone()), 10_000)
        .await
        .unwrap();
    assert!(log.iter().any(|t| t.to == "suspended"));
    // Every iteration ran exactly once: rounds 1 to 3 of the loop's step.
    let d = s.run_detail(&low.run_id).await.unwrap();
    let mut rounds: Vec<(u32, u32)> = d
        .jobs
        .iter()
        .filter(|j| j.state == orchestrator_core::JobState::Succeeded)
        .map(|j| (j.step, j.round))
        .collect();
    rounds.sort();
    assert_eq!(rounds, vec![(0, 1), (0, 2), (0, 3)]);
}

#[tokio::test]
async fn yielded_capacity_is_kept_for_the_work_it_yielded_to() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 2, 1024, &[]).await;
    let lp = "    repeat: {max: 3}\n    resources: {memory: 512M}\n";
    let low = s
        .submit_run(run(
            &stages(&[("g1", lp), ("g2", lp)]),
            "/p",
            Some(1),
            Default::default(),
        ))
        .await
        .unwrap();
    let j1 = claim(&s, &a).await.unwrap();
    let j2 = claim(&s, &a).await.unwrap();
    // Needs all the agent's memory: both loop stages must yield.
    let high = s
        .submit_run(run(
            &stages(&[("urgent", "    resources: {memory: 1G}\n")]),
            "/p",
            Some(9),
            Default::default(),
        ))
        .await
        .unwrap();
    assert_eq!(s.preempt(TTL).await.unwrap(), 2);
    s.submit_run(run(
        &stages(&[("filler", "")]),
        "/p",
        Some(1),
        Default::default(),
    ))
    .await
    .unwrap();
    done(&s, &a, &j1).await;
    assert_eq!(
        stage_state(&s, &low.run_id, &j1.spec.stage_id).await,
        StageState::Suspended
    );
    assert!(
        claim(&s, &a).await.is_none(),
        "the freed slot is kept for the urgent stage, not the filler or the suspended loop"
    );
    done(&s, &a, &j2).await;
    let next = claim(&s, &a).await.unwrap();
    assert_eq!(next.spec.run_id, high.run_id);
    assert_eq!(stage_state(&s, &low.run_id, "g1").await, StageState::Queued);
    assert_eq!(stage_state(&s, &low.run_id, "g2").await, StageState::Queued);
}

#[tokio::test]
async fn pre_emption_never_touches_equal_or_higher_priority_work() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 1, 1024, &[]).await;
    s.submit_run(run(LOOP, "/p", Some(5), Default::default()))
        .await
        .unwrap();
    let _l0 = claim(&s, &a).await.unwrap();
    s.submit_run(run(
        &stages(&[("same", "")]),
        "/p",
        Some(5),
        Default::default(),
    ))
    .await
    .unwrap();
    assert_eq!(s.preempt(TTL).await.unwrap(), 0);
}

#[tokio::test]
async fn a_lost_attempt_unpins_its_stage_so_any_agent_can_restart_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 1, 1024, &[]).await;
    let r = s
        .submit_run(run(&stages(&[("x", "")]), "/p", None, Default::default()))
        .await
        .unwrap();
    let j = claim(&s, &a).await.unwrap();
    assert_eq!(s.expire_leases(j.lease_expires_at_ms + 1).await.unwrap(), 1);
    let b = agent(&s, "b", 1, 1024, &[]).await;
    let again = claim(&s, &b).await.unwrap();
    assert_eq!(
        (again.spec.run_id.as_str(), again.spec.attempt),
        (r.run_id.as_str(), 2)
    );
}

#[tokio::test]
async fn a_stage_on_its_last_step_is_not_asked_to_yield() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 1, 1024, &[]).await;
    s.submit_run(run(
        &stages(&[("once", "")]),
        "/p",
        Some(1),
        Default::default(),
    ))
    .await
    .unwrap();
    let j = claim(&s, &a).await.unwrap();
    let high = s
        .submit_run(run(
            &stages(&[("urgent", "")]),
            "/p",
            Some(9),
            Default::default(),
        ))
        .await
        .unwrap();
    // Its slot frees at its checkpoint anyway: asking would change nothing.
    assert_eq!(s.preempt(TTL).await.unwrap(), 0);
    done(&s, &a, &j).await;
    assert_eq!(claim(&s, &a).await.unwrap().spec.run_id, high.run_id);
}

#[tokio::test]
async fn a_lost_attempt_waits_out_its_backoff_then_starts_again_from_step_zero() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, SystemRules::default());
    let a = agent(&s, "a", 1, 1024, &[]).await;
    let yaml = "name: w\nstages:\n  - id: x\n    retry: {attempts: 2, initial: 10s, max: 10s}\n    steps: [{commands: [{argv: [x]}]}, {commands: [{argv: [y]}]}]\n";
    let r = s
        .submit_run(run(yaml, "/p", None, Default::default()))
        .await
        .unwrap();
    let j = claim(&s, &a).await.unwrap();
    done(&s, &a, &j).await;
    // A lease of 1 ms runs out at once; the next attempt then waits 5 to
    // 10 s (half fixed, half jitter).
    let j1 = s.claim(&a, 1).await.unwrap().unwrap();
    assert_eq!(j1.spec.step, 1);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        s.expire_leases(orchestrator_host::now_ms()).await.unwrap(),
        1
    );
    assert_eq!(stage_state(&s, &r.run_id, "x").await, StageState::Retrying);
    assert!(
        claim(&s, &a).await.is_none(),
        "nothing to run during the backoff"
    );
    let e = s.explain(&r.run_id, Some("x".into()), TTL).await.unwrap();
    assert!(
        e.stages[0].lines[0].contains("attempt 2 starts at step 0"),
        "{:?}",
        e.stages[0].lines
    );
    let due = s.next_lease_expiry().await.unwrap().unwrap();
    let wait = due - orchestrator_host::now_ms();
    assert!((4_000..=10_500).contains(&wait), "backoff of {wait} ms");
    s.expire_leases(due).await.unwrap();
    let again = claim(&s, &a).await.unwrap();
    assert_eq!((again.spec.step, again.spec.attempt), (0, 2));
    // The workflow allows 2 attempts: after the second loss a human decides.
    s.expire_leases(again.lease_expires_at_ms + 1)
        .await
        .unwrap();
    assert_eq!(
        stage_state(&s, &r.run_id, "x").await,
        StageState::AwaitingDecision
    );
    assert_eq!(
        s.run_detail(&r.run_id).await.unwrap().run.state,
        RunState::Running
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
