//! Steps that report outputs, for the outputs tests: a step's outcome with
//! a checkpoint and outputs, and the claim and completion around it.
#![allow(dead_code)]

use orchestrator_core::api::{CheckpointMade, ClaimedJob, CompleteRequest, StepOutcome};
use orchestrator_core::outputs::Outputs;
use orchestrator_core::AgentId;
use orchestrator_store::SqlStore;

use super::{outcome, TTL};

pub fn map(pairs: &[(&str, &str)]) -> Outputs {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A successful step with a checkpoint and `outputs`.
pub fn wrote(outputs: Outputs) -> StepOutcome {
    StepOutcome {
        checkpoint: Some(CheckpointMade {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            artifacts: Vec::new(),
        }),
        outputs,
        ..outcome(true, None)
    }
}

pub async fn next(s: &SqlStore, agent: &AgentId) -> ClaimedJob {
    s.claim(agent, TTL).await.unwrap().expect("a queued job")
}

pub async fn finish(s: &SqlStore, agent: &AgentId, job: &ClaimedJob, o: StepOutcome) {
    s.complete(
        job.job_id,
        CompleteRequest {
            agent_id: agent.clone(),
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
