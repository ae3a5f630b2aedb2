//! The wire types of the HTTP API under `/v1`, shared by the daemon, the agent
//! and the CLI so that all three speak exactly the same language.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ErrorClass;
use crate::machine::{JobState, RunState, StageState};
use crate::plan::Plan;
use crate::rounds::RoundReason;
use crate::spec::CommandSpec;

mod cache;
mod human;
mod models;
mod sched;
mod tokens;

pub use cache::*;
pub use human::*;
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
}

/// The answer to a submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    pub run_id: String,
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
    pub id: String,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowView {
    pub project_dir: String,
    /// The definition's `name:`; the file's stem while no valid definition
    /// was ever loaded from it.
    pub name: String,
    pub file: String,
    /// The sha256 (hex) of the definition runs by this name start with;
    /// None while no valid definition was ever loaded from the file.
    pub hash: Option<String>,
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
    pub agent_id: Option<String>,
    /// The stage's caches, their keys as computed when the run was submitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<crate::spec::Cache>,
}

/// One job: an attempt at one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    pub id: i64,
    pub run_id: String,
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
    pub agent_id: Option<String>,
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
}

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
    pub agent_id: String,
    /// How long a lease lives without a heartbeat.
    pub lease_ttl_ms: u64,
    /// How often the agent should heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Leases the daemon still thinks this agent holds from before (after a
    /// restart of the agent they are stale: the agent must kill their commands).
    #[serde(default)]
    pub stale_jobs: Vec<i64>,
}

/// An agent as shown by the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentView {
    pub id: String,
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

/// A job handed to an agent under a lease, with everything needed to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimedJob {
    pub job_id: i64,
    pub lease_id: i64,
    /// Secret proving the holder; needed to heartbeat and complete.
    pub lease_token: String,
    /// When the job was queued (Unix ms): its dispatch latency is the
    /// time from then to the lease.
    #[serde(default)]
    pub queued_at_ms: i64,
    pub lease_expires_at_ms: i64,
    /// The memory and GPUs the step was given on this agent.
    #[serde(default)]
    pub grant: crate::sched::Grant,
    #[serde(flatten)]
    pub spec: JobSpec,
}

/// What a job runs: one step of one stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub run_id: String,
    pub stage_id: String,
    pub step: u32,
    pub steps_total: u32,
    pub attempt: u32,
    pub step_name: Option<String>,
    pub project_dir: String,
    /// Whether the workflow allows `run:` shell strings in this step.
    pub shell: bool,
    pub commands: Vec<CommandSpec>,
    /// Workflow and stage environment, merged (stage wins).
    pub env: BTreeMap<String, String>,
    /// Longest time the step may run (the stage's `timeout`, which bounds each step).
    pub timeout_ms: Option<u64>,
    /// The commit the run's branch starts from; the agent creates the branch
    /// and the run's worktree from it when they do not exist yet.
    pub base_commit: String,
    /// Globs of the files to commit at this step's checkpoint.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// A loop stage's check, run after the iteration's last step: exit 0
    /// ends the loop. Only set on that step.
    #[serde(default)]
    pub until: Option<CommandSpec>,
    /// Whether `until` may be a shell string.
    #[serde(default)]
    pub until_shell: bool,
    /// The loop iteration this step belongs to (0-based; 0 outside loops).
    #[serde(default)]
    pub iteration: u32,
    /// The step's index in its stage's `steps` (`steps.len()` for the
    /// validation): what a human sees as its number, from 0. `step` counts
    /// on across a loop's iterations; this does not. None from older daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_index: Option<u32>,
    /// Which run of this step it is, from 1: each time the step runs again
    /// (an answer, a rejection, a retry, a send-back, a loop's next
    /// iteration) is a new round.
    #[serde(default = "first_round")]
    pub round: u32,
    /// Why this round runs.
    #[serde(default)]
    pub round_reason: RoundReason,
    /// What a human said that this step must see: a rejection's feedback or
    /// an answer.
    #[serde(default)]
    pub handoff: Option<Handoff>,
    /// How the step's commands are isolated (the stage's `sandbox` and
    /// `network`); absent from older daemons, then `process`.
    #[serde(default)]
    pub sandbox: SandboxSpec,
    /// The stage's `mounts`: host paths bound read-only (see
    /// [`crate::spec::StageSpec::mounts`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<String>,
    /// The stage's caches, on the jobs that restore or may save them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CachePlan>,
    /// Secret values the step's commands get as variables, by name. The
    /// agent redacts the values (`***`) from the logs, manifest and errors
    /// it writes.
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secrets: Secrets,
    /// The job's key to the daemon's model gateway, minted when the job is
    /// handed out and never stored; the step gets it as `OPENAI_API_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKey>,
}

/// A job's key to the model gateway. Its `Debug` hides the value, so that
/// no log line or panic message that prints a job can show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Secret values by name. Its `Debug` shows the names only, so that no log
/// line or panic message that prints a job can show a value.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(BTreeMap<String, String>);

impl Secrets {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// (name, value) pairs, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }
    pub fn values(&self) -> impl Iterator<Item = &String> {
        self.0.values()
    }
    /// The names a stage asks for, values not yet filled in: what the store
    /// keeps, so that no value is ever written to it.
    pub fn named<'a>(names: impl IntoIterator<Item = &'a String>) -> Self {
        Secrets(
            names
                .into_iter()
                .map(|n| (n.clone(), String::new()))
                .collect(),
        )
    }
    /// Fills in each name's value from `known`; returns the names it lacks.
    pub fn fill(&mut self, known: &BTreeMap<String, String>) -> Vec<String> {
        let mut missing = Vec::new();
        for (name, value) in &mut self.0 {
            match known.get(name) {
                Some(v) => v.clone_into(value),
                None => missing.push(name.clone()),
            }
        }
        missing
    }
}

impl From<BTreeMap<String, String>> for Secrets {
    fn from(m: BTreeMap<String, String>) -> Self {
        Secrets(m)
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "***")))
            .finish()
    }
}

/// A step's isolation, as the stage asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The backend; None leaves it to the agent's default (`namespace` on
    /// Linux unless the agent is configured otherwise).
    #[serde(default)]
    pub kind: Option<crate::spec::SandboxKind>,
    /// Whether the commands keep the network (a sandbox has none otherwise).
    #[serde(default)]
    pub network: bool,
    /// A `container` stage's image: a root file system directory or a
    /// tarball, absolute or relative to the project directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The round of a job that says none (older daemons, older rows).
fn first_round() -> u32 {
    1
}

impl JobSpec {
    /// The step's number as shown to humans: its index in its stage's steps.
    pub fn shown_step(&self) -> u32 {
        self.step_index.unwrap_or(self.step)
    }

    /// The values this job's logs, manifest and errors must never show:
    /// its secrets and its model key.
    pub fn hidden_values(&self) -> impl Iterator<Item = &String> {
        self.secrets
            .values()
            .chain(self.api_key.iter().map(|k| &k.0))
    }

    /// The bundle directory of this attempt, relative to the project directory.
    pub fn bundle_dir(&self, job_id: i64) -> String {
        format!(
            ".orchestrator/runs/{}/{}/{}",
            self.run_id,
            self.stage_id,
            exec_id(self.shown_step(), self.round, job_id)
        )
    }
}

/// The name of one round's bundle directory: step (its index in the
/// stage), round and job id.
pub fn exec_id(step: u32, round: u32, job_id: i64) -> String {
    format!("step-{step:03}-round-{round}-job-{job_id}")
}

/// One lease an agent says it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRef {
    pub job_id: i64,
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
    pub extended: Vec<i64>,
    pub lease_expires_at_ms: i64,
    /// Leases no longer held: the agent must kill these jobs' commands.
    pub revoked: Vec<i64>,
}

/// `POST /v1/jobs/{id}/complete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub agent_id: String,
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

/// How a step ended, as the agent saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepOutcome {
    pub success: bool,
    /// Exit code of each command that ran; None where a signal ended it.
    pub exit_codes: Vec<Option<i32>>,
    pub error: Option<String>,
    pub error_class: Option<ErrorClass>,
    /// Whether a command ran out of its time (a task failure that
    /// `retry: {on: [timeout]}` retries).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
    /// Bundle directory relative to the project directory.
    pub bundle: String,
    pub duration_ms: u64,
    /// The checkpoint commit made after a successful step.
    #[serde(default)]
    pub checkpoint: Option<CheckpointMade>,
    /// The loop's `until` verdict, when it ran after this step.
    #[serde(default)]
    pub until_met: Option<bool>,
    /// Questions the step asked (`orch ask`): the stage waits for an answer.
    #[serde(default)]
    pub questions: Vec<Ask>,
    /// The sandbox the commands ran in (None from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<crate::spec::SandboxKind>,
    /// After a failed command: its last lines of stderr and stdout, capped
    /// (see [`crate::feedback`]); what a send-back hands on as feedback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

/// The answer to a completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completed {
    pub job_id: i64,
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

/// The bundle's `manifest.json`: the immutable record of one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub run_id: String,
    pub stage_id: String,
    pub step: u32,
    pub step_name: Option<String>,
    pub attempt: u32,
    /// Which run of this step it is, from 1 (1 in older bundles).
    #[serde(default = "first_round")]
    pub round: u32,
    /// Why this round ran.
    #[serde(default)]
    pub round_reason: RoundReason,
    pub job_id: i64,
    pub agent_id: String,
    pub hostname: Option<String>,
    pub started_at_ms: i64,
    pub ended_at_ms: i64,
    pub success: bool,
    pub error: Option<String>,
    pub error_class: Option<ErrorClass>,
    pub commands: Vec<CommandRecord>,
    /// The isolation the commands ran under (`process` in older bundles).
    #[serde(default = "older_sandbox")]
    pub sandbox: crate::spec::SandboxKind,
    /// The limits and restrictions the sandbox applied to each command;
    /// None for a sandbox that applies none (`process`) and in older bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<AppliedLimits>,
    /// The step's model calls through the gateway, by model name, as the
    /// daemon counted them when the step ended; empty when it made none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, crate::fabric::Usage>,
    /// What the step did with its stage's caches; empty when nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caches: Vec<CacheRecord>,
    /// The questions the step waited for while it ran (`orch ask --wait`):
    /// no new round, but a record of how long it waited for whom.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waits: Vec<human::WaitRecord>,
}

/// `GET /v1/usage`, asked with a job's key: that job's model calls so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUsage {
    pub job_id: i64,
    /// Model name to the job's totals with it.
    #[serde(default)]
    pub models: BTreeMap<String, crate::fabric::Usage>,
}

/// What a sandbox enforced on each command of a step, beyond its isolation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedLimits {
    /// The memory limit of each command's cgroup, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// The most processes and threads of each command's cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// The cgroup interface the limits went through (`v1`, `v2`); None:
    /// the commands ran without a cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Whether writes outside the sandbox's writable directories were also
    /// refused by Landlock.
    #[serde(default)]
    pub landlock: bool,
    /// What was asked but not applied, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What a bundle written before sandboxes existed ran under.
fn older_sandbox() -> crate::spec::SandboxKind {
    crate::spec::SandboxKind::Process
}

/// One command of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// The argv that ran (for `run:`, `["/bin/sh", "-c", RUN]`).
    pub argv: Vec<String>,
    pub cwd: String,
    /// Names of the environment variables the step set (values are not recorded).
    pub env_keys: Vec<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    pub stdout: String,
    pub stderr: String,
}

/// Every error answer of the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    /// Structured details where there are some (e.g. workflow errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printed_job_names_its_secrets_and_never_shows_their_values() {
        let spec = JobSpec {
            secrets: BTreeMap::from([("API_KEY".to_owned(), "hunter2".to_owned())]).into(),
            ..Default::default()
        };
        let printed = format!("{spec:?}");
        assert!(printed.contains("\"API_KEY\": \"***\""), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
        // The wire form still carries the value to the agent.
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["secrets"]["API_KEY"], "hunter2");
    }
}
