//! The three authorities over scheduling, strongest last: the run's own
//! suggestion, the project's policy file (`.orchestrator/policy.yaml`) and
//! the daemon's system rules. [`effective_priority`] and [`limits`] combine
//! them and keep every step of the combination, so `orch explain` can say
//! which rule decided.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::{DurationSpec, SizeSpec};

/// An inclusive range of priorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriorityRange {
    pub min: i32,
    pub max: i32,
}

/// Most resources a project's running stages may hold at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Slots (running steps) across all the project's runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// Memory reserved by the project's running steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<SizeSpec>,
    /// GPUs held by the project's running steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
}

impl Quotas {
    pub fn is_empty(&self) -> bool {
        self.slots.is_none() && self.memory.is_none() && self.gpus.is_none()
    }
}

/// A project's policy file, `.orchestrator/policy.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectPolicy {
    /// The priorities runs of this project may have; a suggestion outside
    /// is clamped into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<PriorityRange>,
    /// The priority of a run that suggests none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_priority: Option<i32>,
    /// Most runs of this project that run at once; later ones wait, queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_runs: Option<u32>,
    /// Most stages of one run queued or running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_stages: Option<u32>,
    /// Most resources the project's queued and running steps hold at once.
    #[serde(default, skip_serializing_if = "Quotas::is_empty")]
    pub quotas: Quotas,
    /// Whether workflows of this project may run shell strings (`run:` in
    /// a step, `repeat` or `validate` with `shell: true`). Unset means yes;
    /// `false` refuses such a workflow at submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_shell: Option<bool>,
    /// The sandbox of a stage whose workflow chooses none (`process`,
    /// `namespace`). Unset: `process`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<crate::spec::SandboxKind>,
    /// The weakest sandbox a stage may choose; a workflow with a weaker one
    /// is refused at submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sandbox: Option<crate::spec::SandboxKind>,
}

impl ProjectPolicy {
    /// Whether the project allows shell strings (`allow_shell`, default true).
    pub fn shell_allowed(&self) -> bool {
        self.allow_shell != Some(false)
    }
}

/// Slots of each agent kept for high-priority work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    /// How many of an agent's slots only high-priority work may take. An
    /// agent with no more slots than this keeps none back.
    pub slots: u32,
    /// The priority from which work counts as high.
    pub min_priority: i32,
}

/// The daemon's system rules: nothing a project or run says overrides them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemRules {
    /// The priorities any run may have.
    #[serde(default = "default_range")]
    pub priority: PriorityRange,
    /// Most runs of one project at once, whatever its policy says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_runs: Option<u32>,
    /// Most stages of one run at once, whatever its project says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_stages: Option<u32>,
    /// Capacity kept on every agent for high-priority work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<Reserve>,
    /// Most jobs one agent runs at once, whatever slots it declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_max_slots: Option<u32>,
    /// How long waiting work takes to gain one priority level, so nothing
    /// starves.
    #[serde(default = "default_aging")]
    pub aging: DurationSpec,
    /// Retries after infrastructure failures, for stages that say nothing:
    /// `attempts` caps every stage's, the backoff is the default one.
    #[serde(default, skip_serializing_if = "is_default_retry")]
    pub retry: crate::spec::Retry,
    /// Whether any run may use shell strings (`shell: true`); `false`
    /// refuses such workflows at submission, whatever a project says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_shell: Option<bool>,
}

fn is_default_retry(r: &crate::spec::Retry) -> bool {
    *r == crate::spec::Retry::default()
}

/// Priorities are clamped into this range unless the rules say otherwise.
pub const PRIORITY_LIMIT: i32 = 1000;

fn default_range() -> PriorityRange {
    PriorityRange {
        min: -PRIORITY_LIMIT,
        max: PRIORITY_LIMIT,
    }
}

fn default_aging() -> DurationSpec {
    DurationSpec::from_secs(60)
}

impl Default for SystemRules {
    fn default() -> Self {
        SystemRules {
            priority: default_range(),
            max_parallel_runs: None,
            max_parallel_stages: None,
            reserve: None,
            agent_max_slots: None,
            aging: default_aging(),
            retry: crate::spec::Retry::default(),
            allow_shell: None,
        }
    }
}

impl SystemRules {
    /// The attempts and backoff of a stage that says `stage` (None: nothing).
    /// The stage may lower the system's attempts, never raise them.
    pub fn retry_of(&self, stage: Option<&crate::spec::Retry>) -> (u32, crate::error::Backoff) {
        let system = self
            .retry
            .attempts
            .unwrap_or(crate::error::MAX_INFRA_ATTEMPTS)
            .min(crate::error::MAX_INFRA_ATTEMPTS);
        let base = self.retry.backoff(crate::error::Backoff::default());
        match stage {
            Some(r) => (
                r.attempts.map_or(system, |a| a.min(system)).max(1),
                r.backoff(base),
            ),
            None => (system.max(1), base),
        }
    }

    /// The most attempts a stage gets for a failure of `class`
    /// (`timed_out` when a command ran out of time): its `retry:` limit when
    /// its `retry.on` (else the system rules') says that class retries, else 1.
    pub fn attempts_for(
        &self,
        stage: Option<&crate::spec::Retry>,
        class: crate::error::ErrorClass,
        timed_out: bool,
    ) -> u32 {
        let on = stage
            .and_then(|r| r.on.as_deref())
            .or(self.retry.on.as_deref());
        if crate::spec::retries(on, class, timed_out) {
            self.retry_of(stage).0
        } else {
            1
        }
    }

    /// The slots an agent that declares `declared` may use.
    pub fn agent_slots(&self, declared: u32) -> u32 {
        self.agent_max_slots.map_or(declared, |m| declared.min(m))
    }

    /// Whether work of `priority` may take a slot on an agent with
    /// `free_slots` of `total_slots` free.
    pub fn reserve_allows(
        &self,
        priority: i32,
        free_slots: u32,
        total_slots: u32,
    ) -> Result<(), super::Misfit> {
        match self.reserve {
            Some(r)
                if priority < r.min_priority && total_slots > r.slots && free_slots <= r.slots =>
            {
                Err(super::Misfit::Reserved {
                    slots: r.slots,
                    min_priority: r.min_priority,
                })
            }
            _ => Ok(()),
        }
    }

    /// Where work needing `needs` at `priority` fits on an agent with
    /// `labels` and `free`: the grant, or why not (its resources first,
    /// then the reserve).
    pub fn place(
        &self,
        needs: &super::Needs,
        labels: &[String],
        free: &super::Free,
        priority: i32,
    ) -> Result<super::Grant, super::Misfit> {
        let grant = super::fit(needs, labels, free)?;
        self.reserve_allows(priority, free.slots, free.slots_total)?;
        Ok(grant)
    }

    /// Whether `priority` counts as high under the reserve rule.
    pub fn is_high(&self, priority: i32) -> bool {
        self.reserve.is_some_and(|r| priority >= r.min_priority)
    }
}

/// Who set a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authority {
    /// The run's own suggestion (`orch run --priority`, or the workflow's `priority:`).
    Run,
    /// The project's policy file.
    Project,
    /// The daemon's system rules.
    System,
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Authority::Run => "run",
            Authority::Project => "project policy",
            Authority::System => "system rules",
        })
    }
}

/// One step of the combination that changed or set the priority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    pub by: Authority,
    /// The rule, as a person reads it: `priority range [0, 50]`.
    pub rule: String,
    pub from: i32,
    pub to: i32,
}

/// A run's effective priority and how it came about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effective {
    /// What the run asked for, if anything.
    pub suggested: Option<i32>,
    pub value: i32,
    /// Every rule that set or changed it, in order.
    pub steps: Vec<Adjustment>,
}

impl fmt::Display for Effective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.value)?;
        match self.suggested {
            Some(s) => write!(f, " (suggested {s}")?,
            None => f.write_str(" (none suggested")?,
        }
        for a in &self.steps {
            write!(f, "; {} {}: {} -> {}", a.by, a.rule, a.from, a.to)?;
        }
        f.write_str(")")
    }
}

/// The effective priority: the run's suggestion (its own, else its
/// workflow's, else the project's default, else 0), clamped into the
/// project's range, then into the system's. The system has the last word.
pub fn effective_priority(
    run: Option<i32>,
    workflow: Option<i32>,
    project: &ProjectPolicy,
    system: &SystemRules,
) -> Effective {
    let suggested = run.or(workflow);
    let mut steps = Vec::new();
    let mut value = match (suggested, project.default_priority) {
        (Some(s), _) => s,
        (None, Some(d)) => {
            steps.push(Adjustment {
                by: Authority::Project,
                rule: format!("default_priority {d}"),
                from: 0,
                to: d,
            });
            d
        }
        (None, None) => 0,
    };
    let mut clamp = |by, range: PriorityRange, value: &mut i32| {
        // A range written upside down is refused when its file is read;
        // here it still must not panic.
        let (lo, hi) = (range.min.min(range.max), range.max.max(range.min));
        let to = (*value).clamp(lo, hi);
        if to != *value {
            steps.push(Adjustment {
                by,
                rule: format!("priority range [{lo}, {hi}]"),
                from: *value,
                to,
            });
            *value = to;
        }
    };
    if let Some(r) = project.priority {
        clamp(Authority::Project, r, &mut value);
    }
    clamp(Authority::System, system.priority, &mut value);
    Effective {
        suggested,
        value,
        steps,
    }
}

/// A limit and who set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub value: u64,
    pub by: Authority,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.value, self.by)
    }
}

/// The limits that hold for one run: the tighter of project and system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_parallel_runs: Option<Limit>,
    pub max_parallel_stages: Option<Limit>,
    pub quota_slots: Option<Limit>,
    pub quota_memory_mb: Option<Limit>,
    pub quota_gpus: Option<Limit>,
}

fn tighter(project: Option<u64>, system: Option<u64>) -> Option<Limit> {
    match (project, system) {
        (Some(p), Some(s)) if s < p => Some(Limit {
            value: s,
            by: Authority::System,
        }),
        (Some(p), _) => Some(Limit {
            value: p,
            by: Authority::Project,
        }),
        (None, Some(s)) => Some(Limit {
            value: s,
            by: Authority::System,
        }),
        (None, None) => None,
    }
}

/// The limits of a run of a project with `project` policy under `system`.
pub fn limits(project: &ProjectPolicy, system: &SystemRules) -> Limits {
    let p = |v: Option<u32>| v.map(u64::from);
    Limits {
        max_parallel_runs: tighter(p(project.max_parallel_runs), p(system.max_parallel_runs)),
        max_parallel_stages: tighter(
            p(project.max_parallel_stages),
            p(system.max_parallel_stages),
        ),
        quota_slots: tighter(p(project.quotas.slots), None),
        quota_memory_mb: tighter(project.quotas.memory.map(SizeSpec::as_mib), None),
        quota_gpus: tighter(p(project.quotas.gpus), None),
    }
}

/// What a project's queued and running steps hold, for its quotas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub slots: u64,
    pub memory_mb: u64,
    pub gpus: u64,
}

/// A project quota one more step would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("project quota {quota} {limit} reached: {used} in use, this step needs {needs}")]
pub struct QuotaReached {
    /// `slots`, `memory (MiB)` or `gpus`.
    pub quota: &'static str,
    pub limit: u64,
    /// What the project's queued and running steps hold.
    pub used: u64,
    /// What the step adds.
    pub needs: u64,
}

/// Whether one more step needing `needs` stays within the quotas, given
/// what the project already holds; the error names the quota.
pub fn quota_allows(
    limits: &Limits,
    used: Usage,
    needs: &super::Needs,
) -> Result<(), QuotaReached> {
    let checks = [
        ("slots", limits.quota_slots, used.slots, 1),
        (
            "memory (MiB)",
            limits.quota_memory_mb,
            used.memory_mb,
            needs.memory_mb,
        ),
        ("gpus", limits.quota_gpus, used.gpus, u64::from(needs.gpus)),
    ];
    for (name, limit, used, more) in checks {
        if let Some(l) = limit {
            if more > 0 && used.saturating_add(more) > l.value {
                return Err(QuotaReached {
                    quota: name,
                    limit: l.value,
                    used,
                    needs: more,
                });
            }
        }
    }
    Ok(())
}
