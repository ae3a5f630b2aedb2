//! The bundle's `manifest.json`: the immutable record of one attempt, its
//! commands, and the limits its sandbox applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{first_round, human, CacheRecord};
use crate::error::ErrorClass;
use crate::ids::{AgentId, JobId, RunId};
use crate::rounds::RoundReason;

/// The bundle's `manifest.json`: the immutable record of one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub run_id: RunId,
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
    pub job_id: JobId,
    pub agent_id: AgentId,
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
