//! What `orch explain` shows: why each stage of a run runs where it does,
//! or why it waits.

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, RunId};
use crate::machine::{RunState, StageState};
use crate::sched::{Effective, Limits, Needs};

/// `GET /v1/runs/{id}/explain`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explanation {
    pub run_id: RunId,
    pub state: RunState,
    /// The effective priority and the rules that made it.
    pub priority: Option<Effective>,
    /// The limits that hold for this run, and who set them.
    pub limits: Limits,
    /// About the run as a whole (why it is queued, for instance).
    pub lines: Vec<String>,
    pub stages: Vec<StageExplanation>,
}

/// One stage's scheduling story.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageExplanation {
    pub stage_id: String,
    pub state: StageState,
    pub needs: Needs,
    /// The agent it is pinned to.
    pub agent_id: Option<AgentId>,
    pub lines: Vec<String>,
}
