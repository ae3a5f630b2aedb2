//! Why a sandbox name or a duration, as a user writes it, cannot be read.
//! Each error names the text as written and what was expected.

use super::SandboxKind;

/// A sandbox name that is none of [`SandboxKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown sandbox {text:?}; expected one of {}",
    SandboxKind::ALL.map(SandboxKind::as_str).join(", ")
)]
pub struct UnknownSandbox {
    pub text: String,
}

/// Why a text is no duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// No number leads the text (or it does not fit in 64 bits).
    #[error(
        "invalid duration {text:?}: expected a number with a unit such as 250ms, 30s, 10m or 2h"
    )]
    NotANumber { text: String },
    /// The number is followed by something other than ms, s, m or h.
    #[error("invalid duration {text:?}: unknown unit {unit:?}, expected ms, s, m or h")]
    UnknownUnit { text: String, unit: String },
}
