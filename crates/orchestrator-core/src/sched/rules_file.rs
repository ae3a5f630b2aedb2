//! Reading the policy files: a project's `.orchestrator/policy.yaml` and
//! the daemon's system rules. Errors name the file, the line and the field.

use serde::de::DeserializeOwned;

use super::policy::{PriorityRange, ProjectPolicy, SystemRules};

/// Why a policy file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct PolicyError {
    pub file: String,
    pub message: String,
}

fn parse<T: DeserializeOwned + Default>(text: &str, file: &str) -> Result<T, PolicyError> {
    let err = |message: String| PolicyError {
        file: file.to_owned(),
        message,
    };
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("line {}, column {}: ", l.line(), l.column()))
            .unwrap_or_default();
        err(format!("{at}{e}"))
    })
}

fn check_range(r: &Option<PriorityRange>, out: &mut Vec<String>) {
    if let Some(r) = r {
        if r.min > r.max {
            out.push(format!(
                "priority: min {} is above max {}; expected min <= max",
                r.min, r.max
            ));
        }
    }
}

fn check_positive(name: &str, v: Option<u32>, out: &mut Vec<String>) {
    if v == Some(0) {
        out.push(format!(
            "{name}: 0 would let nothing run; expected at least 1"
        ));
    }
}

fn finish<T>(value: T, problems: Vec<String>, file: &str) -> Result<T, PolicyError> {
    if problems.is_empty() {
        Ok(value)
    } else {
        Err(PolicyError {
            file: file.to_owned(),
            message: problems.join("; "),
        })
    }
}

/// Parses and checks a project's policy file.
pub fn parse_project_policy(text: &str, file: &str) -> Result<ProjectPolicy, PolicyError> {
    let p: ProjectPolicy = parse(text, file)?;
    let mut problems = Vec::new();
    check_range(&p.priority, &mut problems);
    check_positive("max_parallel_runs", p.max_parallel_runs, &mut problems);
    check_positive("max_parallel_stages", p.max_parallel_stages, &mut problems);
    check_positive("quotas.slots", p.quotas.slots, &mut problems);
    if let (Some(d), Some(r)) = (p.default_priority, p.priority) {
        if d < r.min || d > r.max {
            problems.push(format!(
                "default_priority {d} is outside priority [{}, {}]",
                r.min, r.max
            ));
        }
    }
    finish(p, problems, file)
}

/// Parses and checks the daemon's system rules.
pub fn parse_system_rules(text: &str, file: &str) -> Result<SystemRules, PolicyError> {
    let r: SystemRules = parse(text, file)?;
    let mut problems = Vec::new();
    check_range(&Some(r.priority), &mut problems);
    check_positive("max_parallel_runs", r.max_parallel_runs, &mut problems);
    check_positive("max_parallel_stages", r.max_parallel_stages, &mut problems);
    check_positive("agent_max_slots", r.agent_max_slots, &mut problems);
    if r.aging.as_millis() == 0 {
        problems.push("aging: 0s would let age outrank any priority; expected at least 1ms".into());
    }
    finish(r, problems, file)
}
