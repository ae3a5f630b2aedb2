//! A job on the wire: what a claimed job carries to its agent (the step, its
//! secrets, its sandbox, its key to the model gateway), how its step ended, and
//! its model calls so far.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{first_round, Ask, CachePlan, CheckpointMade, Handoff};
use crate::error::ErrorClass;
use crate::ids::{JobId, LeaseId, RunId};
use crate::rounds::RoundReason;
use crate::spec::CommandSpec;

/// A job handed to an agent under a lease, with everything needed to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimedJob {
    pub job_id: JobId,
    pub lease_id: LeaseId,
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
    pub run_id: RunId,
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
    /// A loop stage's marker, on the iteration's last step: the loop ends
    /// when the stdout of one of this step's commands contains it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_output: Option<String>,
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
    pub fn bundle_dir(&self, job_id: JobId) -> String {
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
pub fn exec_id(step: u32, round: u32, job_id: JobId) -> String {
    format!("step-{step:03}-round-{round}-job-{job_id}")
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
    /// What the step wrote to `$ORCH_OUTPUT`, parsed and checked by the
    /// agent (and checked again by the store).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: crate::outputs::Outputs,
}

/// `GET /v1/usage`, asked with a job's key: that job's model calls so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUsage {
    pub job_id: JobId,
    /// Model name to the job's totals with it.
    #[serde(default)]
    pub models: BTreeMap<String, crate::fabric::Usage>,
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
