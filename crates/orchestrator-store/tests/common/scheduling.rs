//! What the scheduling tests share: a store under given system rules, runs
//! of a project with a priority and a policy, agents with memory and GPUs,
//! claims and completions, and workflows of independent stages.

use orchestrator_core::api::{ClaimedJob, CompleteRequest, RegisterAgent, StepOutcome};
use orchestrator_core::sched::{Gpu, ProjectPolicy, SystemRules};
use orchestrator_core::{AgentId, RunId, StageState};
use orchestrator_store::{NewRun, SqlStore};

use super::{options, TTL};

pub fn open(dir: &tempfile::TempDir, rules: SystemRules) -> SqlStore {
    let mut o = options(dir);
    o.rules = rules;
    SqlStore::open(o).unwrap()
}

pub fn run(yaml: &str, project: &str, priority: Option<i32>, policy: ProjectPolicy) -> NewRun {
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
        inputs: Default::default(),
    }
}

pub async fn agent(s: &SqlStore, name: &str, slots: u32, memory_mb: u64, gpus: &[u64]) -> AgentId {
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

pub async fn done(s: &SqlStore, agent: &AgentId, job: &ClaimedJob) {
    s.complete(
        job.job_id,
        CompleteRequest {
            agent_id: agent.clone(),
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
                outputs: Default::default(),
            },
            claim_next: false,
            claim_key: None,
        },
        TTL,
    )
    .await
    .unwrap();
}

pub async fn claim(s: &SqlStore, agent: &AgentId) -> Option<ClaimedJob> {
    s.claim(agent, TTL).await.unwrap()
}

pub async fn stage_state(s: &SqlStore, run: &RunId, stage: &str) -> StageState {
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
pub fn stages(ids: &[(&str, &str)]) -> String {
    let mut y = "name: w\nstages:\n".to_owned();
    for (id, extra) in ids {
        y += &format!("  - id: {id}\n{extra}    steps: [{{commands: [{{argv: [x]}}]}}]\n");
    }
    y
}
