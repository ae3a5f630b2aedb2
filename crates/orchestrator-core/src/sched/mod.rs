//! Scheduling policy as pure functions: what a stage needs and where it
//! fits ([`resources`]), who decides its priority and limits ([`policy`],
//! [`rules_file`]), the queue's fair order ([`fair`]), which running stages
//! yield to waiting higher-priority work ([`preempt`]) and why a step waits
//! ([`explain`]).
//!
//! The store applies these at enqueue, claim and scheduler passes; nothing
//! here reads a clock or a database, so every rule is tested exhaustively.

pub mod explain;
pub mod fair;
pub mod policy;
pub mod preempt;
pub mod resources;
pub mod rules_file;
pub mod sandbox;
pub mod shell;

pub use fair::queue_key;
pub use policy::{
    effective_priority, limits, quota_allows, Authority, Effective, Limits, ProjectPolicy,
    QuotaReached, Reserve, SystemRules, Usage,
};
pub use preempt::{plan_preemption, AgentState, RunningJob, Waiting, YieldOrder};
pub use resources::{
    could_ever_fit, fit, free, Capacity, Free, Gpu, GpuGrant, Grant, Misfit, Needs,
};
pub use rules_file::{parse_project_policy, parse_system_rules, PolicyError};
pub use sandbox::{apply_sandbox_policy, SandboxRefused};
pub use shell::{check_shell, ShellRefused, ShellUse};
