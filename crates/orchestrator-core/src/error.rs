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

/// Most attempts a stage gets after infrastructure failures (a system rule:
/// a workflow's `retry.attempts` may lower it, never raise it).
pub const MAX_INFRA_ATTEMPTS: u32 = 5;

/// How long a stage waits before its next attempt after an infrastructure
/// failure: `initial`, multiplied by `factor` for every further attempt, at
/// most `max`; half of it fixed, half random (jitter), so agents that lost
/// their work together do not all come back at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Backoff {
    pub initial_ms: u64,
    pub factor: u32,
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 1000,
            factor: 2,
            max_ms: 60_000,
        }
    }
}

/// The delay before attempt `next` (the first retry is attempt 2), with
/// `jitter` in [0, 1) choosing where in the random half it falls.
pub fn retry_delay_ms(next: u32, b: &Backoff, jitter: f64) -> u64 {
    let retries = next.saturating_sub(2);
    let mut base = b.initial_ms;
    for _ in 0..retries {
        base = base.saturating_mul(u64::from(b.factor.max(1)));
        if base >= b.max_ms {
            break;
        }
    }
    let base = base.min(b.max_ms);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let half = base / 2;
    half + ((base - half) as f64 * jitter) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_its_factor_up_to_its_max_with_half_of_it_jitter() {
        let b = Backoff {
            initial_ms: 1000,
            factor: 3,
            max_ms: 20_000,
        };
        // No jitter: the fixed half; full jitter: the whole delay.
        assert_eq!(retry_delay_ms(2, &b, 0.0), 500);
        assert_eq!(retry_delay_ms(2, &b, 1.0), 1000);
        assert_eq!(retry_delay_ms(3, &b, 1.0), 3000);
        assert_eq!(retry_delay_ms(4, &b, 1.0), 9000);
        assert_eq!(retry_delay_ms(5, &b, 1.0), 20_000, "capped at max");
        assert_eq!(retry_delay_ms(50, &b, 0.5), 15_000);
        assert_eq!(retry_delay_ms(u32::MAX, &b, f64::NAN), 10_000);
        let zero = Backoff { initial_ms: 0, ..b };
        assert_eq!(retry_delay_ms(3, &zero, 0.9), 0);
    }
}
