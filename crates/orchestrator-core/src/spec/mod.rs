//! The workflow definition as a user writes it: a named DAG of stages, each a
//! sequence of steps, each step an exec block of structured commands.
//!
//! These types are the published contract (`orch schema` prints their JSON
//! Schema), so every field carries a doc comment and unknown fields are refused.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod bind;
mod cache;
mod duration;
mod errors;
mod expand;
mod inputs;
mod matrix;
mod on_failure;
mod size;
mod steps;
mod substitute;
mod until;

pub use bind::{bind_inputs, Given, GivenValue, InputError, InputErrors};
pub use cache::Cache;
pub use duration::DurationSpec;
pub use errors::{DurationError, UnknownSandbox};
pub use expand::{expand, ExpandError};
pub use inputs::{
    input_env_name, input_env_value, is_scalar, is_valid_input_name, same_value, InputType,
    WorkflowInput, MAX_INPUTS, MAX_INPUTS_BYTES, MAX_INPUT_NAME, MAX_INPUT_VALUE_BYTES,
};
pub use matrix::{
    instance_id, is_id_safe, matrix_stage_of, Matrix, MatrixError, MatrixInstance, MatrixValues,
    ID_VALUE_CHARS, MAX_COMBINATIONS,
};
pub use on_failure::{
    FeedbackKind, OnFailure, SendBack, StageOnFailure, DEFAULT_SEND_BACK_ROUNDS,
    MAX_SEND_BACK_ROUNDS,
};
pub use size::{human_mib, SizeError, SizeSpec};
pub use steps::VALIDATION_NAME;
pub use substitute::{
    substitute_command, substitute_commands, substitute_env, substitute_text, SubstError,
};
pub use until::{Until, UntilOutput, MAX_UNTIL_TEXT};

/// A workflow file: a DAG of stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// Name of the workflow, shown in `orch ps`. Letters, digits, `_`, `-`, `.`.
    pub name: String,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The parameters a run of this workflow takes, by name (letters,
    /// digits, `_`, `-`; at most 64 inputs): given with `orch run -p
    /// NAME=VALUE`, `--params-file` or the API, else their `default`. Each
    /// reaches every command as the environment variable `ORCH_INPUT_NAME`
    /// (uppercased, `-` as `_`) and is written `${{ inputs.NAME }}` in the
    /// workflow's text.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "inputs::unique_inputs"
    )]
    pub inputs: BTreeMap<String, WorkflowInput>,
    /// The priority this workflow's runs suggest (higher runs first) when
    /// `orch run --priority` does not say; the project's policy and the
    /// daemon's rules clamp it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Environment variables given to every command of every stage.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// What a stage does when it fails and is not retried (a stage's own
    /// `on_failure` wins). Default: `ask`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    /// Caches every stage restores and saves (a stage's own entry for the
    /// same `path` wins); see [`Cache`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<Cache>,
    /// The stages; order does not matter, `needs` decides it.
    pub stages: Vec<Stage>,
}

/// A node of the workflow graph: a sequence of steps that runs once every
/// stage it `needs` has succeeded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Unique id within the workflow. Letters, digits, `_`, `-`, `.`; at most 64.
    pub id: String,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Ids of the stages that must succeed before this one starts. Naming
    /// a matrix stage means every stage its matrix makes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Runs this stage only when this condition holds (an expression, bare
    /// or in `${{ }}`; docs/workflow-conditions.md). It reads `inputs`,
    /// `matrix`, `run`, `stages.<need>.result` and `stages.<need>.outputs`,
    /// and the status functions `success()`, `failure()`, `always()` and
    /// `cancelled()` over the stages it needs. Without a status function it
    /// means `success() && (condition)`. A stage whose condition is false is
    /// `bypassed`, which does not fail its run.
    #[serde(rename = "if", default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Runs this stage once for each combination of these values, each run
    /// a stage of its own with the id `ID[KEY=VALUE,...]` (keys in the order
    /// written) and the values as `${{ matrix.KEY }}`: `{py: ["3.11",
    /// "3.12"], os: [linux, mac]}` makes four. `exclude:` entries take
    /// combinations out, `include:` entries add some. At most 256
    /// combinations; each shares this stage's needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<Matrix>,
    /// The matrix stage and combination this stage was made from; set by
    /// [`expand`], never written in a workflow.
    #[serde(skip)]
    #[schemars(skip)]
    pub instance: Option<MatrixInstance>,
    /// Capabilities an agent must have (all of them) to run this stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// What each step of this stage needs on its agent beyond one slot:
    /// memory, GPUs and GPU memory. The stage runs only where they are free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Longest time each step of this stage may run, e.g. `30s`, `10m`, `2h`;
    /// the step's commands are killed (whole process groups) when it is exceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// Expected duration, used only by the planner's critical path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<DurationSpec>,
    /// Environment variables for every command of this stage (over the workflow's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The steps, run in order; a checkpoint follows each.
    pub steps: Vec<Step>,
    /// How attempts lost to infrastructure failures (agent lost, lease
    /// expired, spawn failure) are retried: from step 0, after a backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Makes this a loop stage: its steps run again and again, each run an
    /// iteration whose steps checkpoint like any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<Repeat>,
    /// Commands run in the worktree after the last step (the stage is then
    /// `validating`); a failure is a task failure of the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<Validate>,
    /// Names of the daemon's secrets (`orch daemon --secret`,
    /// `--secrets-file`) this stage's commands get as environment variables.
    /// Their values never reach the store, and the agent masks them as `***`
    /// in logs, manifests and errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// What this stage does when it fails and is not retried: `ask` (wait
    /// for `orch retry`, `orch skip` or `orch abort`), `fail` (end failed
    /// at once, blocking its dependents), or a map that sends the work back
    /// to a stage before it with the failure as feedback, at most
    /// `max_rounds` times (`{retry_stage: implement, feedback: log_tail,
    /// max_rounds: 3, then: ask}`). Default: the workflow's, else `ask`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<StageOnFailure>,
    /// How this stage's commands are isolated on their agent: `process`
    /// (none), `namespace`, `bubblewrap`, `container` or `vm`; see
    /// [`SandboxKind`]. Default: the project's policy (`sandbox:` in
    /// `.orchestrator/policy.yaml`), else the agent's own default
    /// (`namespace` on Linux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxKind>,
    /// Whether a sandboxed stage's commands may use the network. Default
    /// false (a `process` stage always shares the agent's network).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
    /// The userland of a `container` stage: a root file system directory or
    /// an image tarball, absolute or relative to the project directory.
    /// Default: the agent's (`orch agent --container-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Host paths a sandboxed stage's commands may read, bound read-only at
    /// their own paths: absolute, or `~/...` in the agent's home (which the
    /// step's own home then links to). Each must lie under a path the agent
    /// allows (`orch agent --allow-mount`); the orchestrator's own data
    /// directories never can be mounted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<String>,
    /// Directories kept between runs of the project on the agent's machine:
    /// restored before the stage's first step, saved when its last step
    /// succeeds; see [`Cache`]. With the workflow's `cache:`, at most
    /// [`crate::cache::MAX_CACHES`] in all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<Cache>,
    /// The model (a name from the daemon's models file) this stage's steps
    /// call through the gateway: the stage runs only on an agent where that
    /// model can be resident. An agent has the label `model:NAME` for each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// How a stage's commands are isolated from the agent's machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// No isolation: each command leads its own process group and sees the
    /// machine as the agent does. For development; chosen explicitly.
    Process,
    /// New user, mount, pid, ipc, uts and (unless `network`) net namespaces
    /// set up by the agent itself: the root file system read-only, the run's
    /// worktree and the step's bundle writable, `/tmp`, `/var/tmp`, `/root`,
    /// `/home`, `/run`, `/dev/shm` and the project's `.orchestrator`
    /// directory hidden behind empty tmpfs, a fresh `/proc`, memory and pids
    /// limits in a cgroup of its own. Linux only; the default there.
    Namespace,
    /// The same view of the machine as `namespace`, built by `bwrap`
    /// (bubblewrap) where it is installed: an audited alternative.
    Bubblewrap,
    /// An OCI container run by `runc`, with another userland (the stage's
    /// `image` or the agent's) and the worktree bound in.
    Container,
    /// A QEMU virtual machine: the agent's kernel and base image, the stage's
    /// disk a copy-on-write overlay kept at each checkpoint and discarded
    /// back to the last checkpoint's on a retry, the worktree shared over 9p.
    Vm,
}

impl SandboxKind {
    /// Every kind, weakest first.
    pub const ALL: [SandboxKind; 5] = [
        SandboxKind::Process,
        SandboxKind::Namespace,
        SandboxKind::Bubblewrap,
        SandboxKind::Container,
        SandboxKind::Vm,
    ];

    /// The name a workflow uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Process => "process",
            SandboxKind::Namespace => "namespace",
            SandboxKind::Bubblewrap => "bubblewrap",
            SandboxKind::Container => "container",
            SandboxKind::Vm => "vm",
        }
    }

    /// How much it isolates, to compare two: more is stronger. The three
    /// namespace-based kinds are equal; a VM is stronger (its own kernel).
    pub fn strength(self) -> u8 {
        match self {
            SandboxKind::Process => 0,
            SandboxKind::Namespace | SandboxKind::Bubblewrap | SandboxKind::Container => 1,
            SandboxKind::Vm => 2,
        }
    }

    /// The kind named `text`, or an error listing the names.
    pub fn parse(text: &str) -> Result<SandboxKind, UnknownSandbox> {
        SandboxKind::ALL
            .into_iter()
            .find(|k| k.as_str() == text.trim())
            .ok_or_else(|| UnknownSandbox {
                text: text.to_owned(),
            })
    }
}

impl fmt::Display for SandboxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Stage {
    /// Whether a failure of this stage waits for a human (in `wf`).
    pub fn asks_on_failure(&self, wf: &Workflow) -> bool {
        self.on_failure
            .as_ref()
            .and_then(StageOnFailure::then)
            .or(wf.on_failure)
            .unwrap_or_default()
            == OnFailure::Ask
    }

    /// The rule that sends this stage's failed work back, if it has one.
    pub fn send_back(&self) -> Option<&SendBack> {
        self.on_failure.as_ref()?.send_back()
    }

    /// Steps per iteration (at least 1).
    fn per_iteration(&self) -> u32 {
        u32::try_from(self.steps.len()).unwrap_or(u32::MAX).max(1)
    }

    /// Which of its steps job number `position` runs: the index in `steps`
    /// (a loop's iterations run the same steps again), or `steps.len()` for
    /// the validation. Steps are shown by this number, from 0.
    pub fn step_index(&self, position: u32) -> u32 {
        if self.validation_step() == Some(position) {
            return u32::try_from(self.steps.len()).unwrap_or(u32::MAX);
        }
        position % self.per_iteration()
    }

    /// The loop iteration (from 0) job number `position` belongs to.
    pub fn iteration_of(&self, position: u32) -> u32 {
        (position / self.per_iteration()).min(self.iterations().saturating_sub(1))
    }

    /// The job number of this stage's validation: the one after its last
    /// possible step. None when it has no `validate:`.
    pub fn validation_step(&self) -> Option<u32> {
        self.validate.as_ref()?;
        let per = u64::try_from(self.steps.len()).unwrap_or(u64::MAX).max(1);
        let total = per.saturating_mul(u64::from(self.iterations()));
        Some(u32::try_from(total).unwrap_or(u32::MAX))
    }

    /// How many times its steps run at most (1 for a stage that does not loop).
    pub fn iterations(&self) -> u32 {
        self.repeat.as_ref().map_or(1, |r| r.max.max(1))
    }
}

/// The checks a stage runs after its steps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Validate {
    /// The commands, run in order in the run's worktree; the first failure
    /// fails the validation.
    pub commands: Vec<CommandSpec>,
    /// Allows these commands to be `run:` shell strings.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shell: bool,
}

/// What a stage's steps need on their agent, besides one slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory the step may use (`512M`, `4G`); reserved on the agent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<SizeSpec>,
    /// How many GPUs (distinct devices) the step needs. With `gpu_memory`
    /// alone, 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// GPU memory the step needs on each of its GPUs. A GPU with enough free
    /// memory is shared with other stages; without it, each GPU is taken whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory: Option<SizeSpec>,
}

/// How a stage retries failed attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Which failures retry: `infra` (agent lost, lease expired, spawn or
    /// sandbox failure), `task` (the step's own failure: non-zero exit,
    /// failed validation, timeout) or only `timeout`. Default: `[infra]`.
    /// An infrastructure retry starts again from step 0; a task retry runs
    /// the failed step again in the same worktree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<RetryOn>>,
    /// Most attempts in all, 1 to 5 (the system allows no more than 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Wait before the first retry (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<DurationSpec>,
    /// Each further retry waits this many times longer (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<u32>,
    /// Longest wait (default `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<DurationSpec>,
}

/// A class of failure that may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// Infrastructure failures.
    Infra,
    /// Every task failure, timeouts included.
    Task,
    /// Task failures where a command ran out of time.
    Timeout,
}

impl Retry {
    /// Whether a failure of `class` (`timed_out` when a command ran out of
    /// time) retries under this rule.
    pub fn retries(&self, class: crate::error::ErrorClass, timed_out: bool) -> bool {
        retries(self.on.as_deref(), class, timed_out)
    }

    /// The backoff this says, over `base` where it says nothing.
    pub fn backoff(&self, base: crate::error::Backoff) -> crate::error::Backoff {
        crate::error::Backoff {
            initial_ms: self
                .initial
                .map_or(base.initial_ms, DurationSpec::as_millis),
            factor: self.factor.unwrap_or(base.factor),
            max_ms: self.max.map_or(base.max_ms, DurationSpec::as_millis),
        }
    }
}

/// Whether a failure of `class` retries under `on` (None: the default, infra only).
pub fn retries(on: Option<&[RetryOn]>, class: crate::error::ErrorClass, timed_out: bool) -> bool {
    use crate::error::ErrorClass;
    let on = on.unwrap_or(&[RetryOn::Infra]);
    match class {
        ErrorClass::Infra => on.contains(&RetryOn::Infra),
        ErrorClass::Task => {
            on.contains(&RetryOn::Task) || (timed_out && on.contains(&RetryOn::Timeout))
        }
    }
}

/// How a loop stage repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Repeat {
    /// Most iterations, at least 1. Without `until`, exactly this many run.
    pub max: u32,
    /// What ends the loop, checked after each iteration's last step: met
    /// means done (the stage succeeds), not met runs another iteration.
    /// When `max` iterations ran and it is still not met, the stage fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Until>,
    /// Allows `until` to be a `run:` shell string.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shell: bool,
}

impl Repeat {
    /// The command `until` runs, when it is one.
    pub fn until_command(&self) -> Option<&CommandSpec> {
        match &self.until {
            Some(Until::Command(c)) => Some(c),
            _ => None,
        }
    }

    /// The text `until` looks for in the iteration's output, when it does.
    pub fn until_output(&self) -> Option<&str> {
        match &self.until {
            Some(Until::Output(o)) => Some(&o.output_contains),
            _ => None,
        }
    }
}

/// The unit of work between two checkpoints: an exec block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Optional name shown in `orch show` and the bundle manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Allows commands of this step to use `run:` (a shell string run by `/bin/sh -c`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub shell: bool,
    /// The commands, run one after the other; the first failure ends the step.
    /// A step has commands or an `input`, not both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<CommandSpec>,
    /// Files to commit on the run branch at this step's checkpoint: globs
    /// relative to the run's worktree (`dist/**`, `report.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// Hold the stage after this step's checkpoint until a human approves
    /// (`orch approve`) or rejects it (`orch reject --feedback`, which runs
    /// this step again with the feedback).
    #[serde(default, skip_serializing_if = "is_false")]
    pub approve: bool,
    /// Makes this an input step: instead of running commands, the stage asks
    /// a human this question and waits; the next step receives the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Input>,
}

impl Step {
    /// Whether this step asks a human instead of running commands.
    pub fn is_input(&self) -> bool {
        self.input.is_some()
    }
}

/// The fixed question of an input step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The question shown to the human.
    pub question: String,
    /// When given, the answer must be one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
}

/// One command of an exec block: either `argv` or, in a `shell: true` step, `run`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// Program and arguments, run directly without a shell.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// A shell string, allowed only in a step with `shell: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Working directory relative to the run's worktree (a checkout of the
    /// project); must stay inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Environment variables for this command (over the stage's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Longest time this command may run; its whole process group is killed after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The JSON Schema of a workflow file, as printed by `orch schema`.
pub fn workflow_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Workflow);
    serde_json::to_value(schema).unwrap_or(serde_json::Value::Null)
}
