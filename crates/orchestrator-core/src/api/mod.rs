//! The wire types of the HTTP API under `/v1`, shared by the daemon, the agent
//! and the CLI so that all three speak exactly the same language.
//!
//! Runs as users submit and read them are here; the lease protocol is in
//! `lease`, a job and its outcome in `job`, the bundle's manifest in
//! `manifest`, and each other part of the API in a module named for it.

use serde::{Deserialize, Serialize};

use crate::error::ErrorClass;
use crate::ids::{AgentId, JobId, RunId};
use crate::machine::{JobState, RunState, StageState};
use crate::plan::Plan;
use crate::rounds::RoundReason;

mod cache;
mod human;
mod job;
mod lease;
mod manifest;
mod models;
mod sched;
mod tokens;

pub use cache::*;
pub use human::*;
pub use job::*;
pub use lease::*;
pub use manifest::*;
pub use models::*;
pub use sched::*;
pub use tokens::*;

/// `POST /v1/runs`: submit a workflow to run in a project directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRun {
    /// The workflow file's text (YAML or JSON). Empty when the run names a
    /// workflow of the project's catalog instead (`workflow_name`).
    #[serde(default)]
    pub workflow: String,
    /// A workflow of the catalog of `project_dir` (the definitions the daemon
    /// watches in `.orchestrator/workflows/`), by its `name:`; the run then
    /// starts with exactly the catalog's current definition. Given instead
    /// of `workflow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_name: Option<String>,
    /// The file's name, used in error messages only.
    #[serde(default)]
    pub file: Option<String>,
    /// Absolute path of the project directory the run works in.
    pub project_dir: String,
    /// The run's suggested priority; higher runs first. Default: the
    /// workflow's `priority:`, else the project's default, else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// The git ref the run's branch starts from (branch, tag or commit);
    /// default: the project's HEAD.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// What every stage does when it fails, over what the workflow says:
    /// `ask` (wait for a human's decision) or `fail` (end failed at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<crate::spec::OnFailure>,
    /// Values of the workflow's `inputs:`, by name, each JSON of the input's
    /// own type (a params file's object). Null counts as not given.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub inputs: std::collections::BTreeMap<String, serde_json::Value>,
    /// Values of inputs as `orch run -p` gives them, each `NAME=VALUE` text
    /// read as the input's type (`count=3` is a number for a number
    /// input); over `inputs` for the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
}

/// The answer to a submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    pub run_id: RunId,
    pub plan: Plan,
    /// `running`, or `queued` when its project runs its most runs already.
    #[serde(default = "running")]
    pub state: RunState,
    /// The effective priority and how it came about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<crate::sched::Effective>,
    /// What the submitter should know: stages no registered agent could
    /// ever run, a run held by its project's limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn running() -> RunState {
    RunState::Running
}

/// A run as listed by `orch ps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: RunId,
    pub workflow: String,
    pub project_dir: String,
    pub state: RunState,
    /// The effective priority.
    pub priority: i32,
    /// What the run suggested, when it did.
    #[serde(default)]
    pub suggested_priority: Option<i32>,
    pub stages_total: u32,
    pub stages_succeeded: u32,
    pub stages_ended: u32,
    pub created_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// The commit the run's branch started from.
    #[serde(default)]
    pub base_commit: Option<String>,
    /// The run's branch, `orch/run/<id>`.
    #[serde(default)]
    pub branch: Option<String>,
    /// The sha256 of the workflow text the run started with (hex).
    #[serde(default)]
    pub spec_hash: Option<String>,
}

/// `GET /v1/workflows`: one workflow file of a watched project's catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowView {
    pub project_dir: String,
    /// The definition's `name:`; the file's stem while no valid definition
    /// was ever loaded from it.
    pub name: String,
    pub file: String,
    /// The sha256 (hex) of the definition runs by this name start with;
    /// None while no valid definition was ever loaded from the file.
    pub hash: Option<String>,
    /// The inputs that definition declares (what a run of it takes, as
    /// `inputs:` says them), for a form that starts one.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub inputs: std::collections::BTreeMap<String, crate::spec::WorkflowInput>,
    /// When that definition was loaded, in milliseconds since the epoch.
    pub loaded_at_ms: Option<i64>,
    /// Why the file's last reload failed (the definition in `hash` is
    /// kept); None when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One stage of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageView {
    pub stage_id: String,
    pub state: StageState,
    pub needs: Vec<String>,
    /// The current (or last) step: its index in the stage's steps, from 0.
    pub step: u32,
    /// How many steps the stage has (a loop's iterations run them again).
    pub steps_total: u32,
    pub attempt: u32,
    /// The round of its current (or last) step, from 1; 0 before it ran.
    #[serde(default)]
    pub round: u32,
    /// The loop iteration it is in, from 0 (0 outside loops).
    #[serde(default)]
    pub iteration: u32,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    /// The agent the stage is pinned to (its worktree is there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    /// The stage's caches, their keys as computed when the run was submitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<crate::spec::Cache>,
    /// Its outputs: what its steps wrote to `$ORCH_OUTPUT`, merged in step
    /// order (see [`crate::outputs::merge`]).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub outputs: crate::outputs::Outputs,
    /// Its `if:` condition, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Why a bypassed stage did not run: its condition and its value, or
    /// the need that was bypassed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypassed: Option<String>,
}

/// One job: an attempt at one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    pub id: JobId,
    pub run_id: RunId,
    pub stage_id: String,
    /// The step it runs: its index in the stage's steps, from 0 (a loop's
    /// iterations are rounds of the same steps).
    pub step: u32,
    pub attempt: u32,
    /// Which run of this step it is, from 1.
    #[serde(default = "first_round")]
    pub round: u32,
    /// Why this round ran.
    #[serde(default)]
    pub round_reason: RoundReason,
    pub state: JobState,
    pub agent_id: Option<AgentId>,
    pub exit_codes: Vec<Option<i32>>,
    pub error: Option<String>,
    pub error_class: Option<ErrorClass>,
    /// The sandbox its commands ran in, as its agent reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<crate::spec::SandboxKind>,
    /// Path of the bundle directory, relative to the project directory.
    pub bundle: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
}

/// `GET /v1/runs/{id}`: a run with its stages, jobs and plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunDetail {
    pub run: RunSummary,
    pub stages: Vec<StageView>,
    pub jobs: Vec<JobView>,
    pub plan: Plan,
    #[serde(default)]
    pub checkpoints: Vec<CheckpointView>,
    #[serde(default)]
    pub questions: Vec<QuestionView>,
    /// The run's model calls through the gateway, by stage and model; None
    /// when it made none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<crate::fabric::UsageSummary>,
    /// The values the run's inputs were bound to, by name (given, else
    /// their defaults); empty for a workflow without inputs.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub inputs: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The round of a job that says none (older daemons, older rows).
fn first_round() -> u32 {
    1
}

/// Every error answer of the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    /// Structured details where there are some (e.g. workflow errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}
