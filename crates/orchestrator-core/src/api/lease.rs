//! The lease protocol between an agent and the daemon: registration, claim,
//! heartbeat and completion, and the agents as the API shows them.

use serde::{Deserialize, Serialize};

use super::{ClaimedJob, ModelMemory, StepOutcome};
use crate::ids::{AgentId, JobId};
use crate::machine::{RunState, StageState};

/// `POST /v1/agents`: an agent introduces itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterAgent {
    /// A stable name; registering again under the same name reuses the agent's id.
    pub name: String,
    /// Capabilities it offers.
    #[serde(default)]
    pub labels: Vec<String>,
    /// How many jobs it runs at once.
    pub slots: u32,
    #[serde(default)]
    pub hostname: Option<String>,
    /// Memory it offers to steps, in MiB.
    #[serde(default)]
    pub memory_mb: u64,
    /// Its GPUs (detected with `nvidia-smi`, or declared).
    #[serde(default)]
    pub gpus: Vec<crate::sched::Gpu>,
    /// Memory it lends to model servers the daemon orders it to run.
    #[serde(default, skip_serializing_if = "ModelMemory::is_none")]
    pub model_memory: ModelMemory,
}

/// The answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRegistered {
    pub agent_id: AgentId,
    /// How long a lease lives without a heartbeat.
    pub lease_ttl_ms: u64,
    /// How often the agent should heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Leases the daemon still thinks this agent holds from before (after a
    /// restart of the agent they are stale: the agent must kill their commands).
    #[serde(default)]
    pub stale_jobs: Vec<JobId>,
}

/// An agent as shown by the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentView {
    pub id: AgentId,
    pub name: String,
    pub labels: Vec<String>,
    /// The slots it may use (its own, capped by the system rules).
    pub slots: u32,
    pub running: u32,
    pub hostname: Option<String>,
    pub last_seen_ms: i64,
    #[serde(default)]
    pub memory_mb: u64,
    #[serde(default)]
    pub gpus: Vec<crate::sched::Gpu>,
    /// What it has free now.
    #[serde(default)]
    pub free: crate::sched::Free,
    /// Heard from within its lease time.
    #[serde(default)]
    pub online: bool,
}

/// `POST /v1/agents/{id}/claim`: long-poll for a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// Longest time to wait for a job, in milliseconds (capped by the daemon).
    #[serde(default)]
    pub wait_ms: u64,
    /// Names this claim, so that asking again after a lost answer (a
    /// dropped connection, a daemon killed after it committed) gets back
    /// the job the first ask leased, instead of leaving that lease to
    /// expire and its stage to start over. Unique per agent and claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_key: Option<String>,
}

/// One lease an agent says it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRef {
    pub job_id: JobId,
    pub lease_token: String,
}

/// `POST /v1/agents/{id}/heartbeat`: the agent is alive and holds these leases.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub leases: Vec<LeaseRef>,
    /// When nothing is revoked, wait up to this long (milliseconds) for one
    /// of the agent's leases to be revoked before answering: cancellation
    /// reaches the agent at once without it polling.
    #[serde(default)]
    pub wait_ms: u64,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Leases extended, with their new expiry.
    pub extended: Vec<JobId>,
    pub lease_expires_at_ms: i64,
    /// Leases no longer held: the agent must kill these jobs' commands.
    pub revoked: Vec<JobId>,
}

/// `POST /v1/jobs/{id}/complete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub agent_id: AgentId,
    pub lease_token: String,
    pub outcome: StepOutcome,
    /// Also lease the agent its next job, in the same transaction, and
    /// return it in the answer: one round trip instead of two per job.
    #[serde(default)]
    pub claim_next: bool,
    /// The next claim's key (see [`ClaimRequest::claim_key`]). Sending the
    /// same completion again after a lost answer is acknowledged once more,
    /// with the job that the first one leased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_key: Option<String>,
}

/// The answer to a completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completed {
    pub job_id: JobId,
    pub stage_state: StageState,
    pub run_state: RunState,
    /// The agent's next job when it asked for one and one was queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ClaimedJob>,
    /// This completion had been recorded before: it was sent again after
    /// its answer was lost, and nothing was recorded this time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub again: bool,
}
