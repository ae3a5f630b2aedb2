//! Error kinds: how a failed attempt is classified. Infrastructure failures
//! are transient and retried; task failures are the step's own and go to a human.

use serde::{Deserialize, Serialize};

/// The class of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The machine, not the step: agent lost, lease expired, spawn or sandbox
    /// failure, resource exhaustion, network. Retried with backoff.
    Infra,
    /// The step's own failure: non-zero exit, timeout, failed validation.
    Task,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Infra => "infra",
            ErrorClass::Task => "task",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "infra" => Some(ErrorClass::Infra),
            "task" => Some(ErrorClass::Task),
            _ => None,
        }
    }
}

/// Most attempts a stage gets after infrastructure failures (a system rule).
pub const MAX_INFRA_ATTEMPTS: u32 = 5;
