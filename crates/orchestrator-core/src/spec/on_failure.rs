//! What a stage does once a failure is not retried: ask a human, fail, or
//! send the work back to a stage before it with the failure as feedback.
//!
//! `on_failure` is written either as a word (`ask`, `fail`) or as a map
//! (`{retry_stage, feedback, max_rounds, then}`); both forms are kept in
//! the stored spec as the user wrote them.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most rounds a stage may send its work back automatically.
pub const MAX_SEND_BACK_ROUNDS: u32 = 20;

/// Rounds a send-back rule allows when it does not say.
pub const DEFAULT_SEND_BACK_ROUNDS: u32 = 3;

/// What a failed stage does once its retries, if any, are spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Wait for a human: `orch retry`, `orch skip` or `orch abort`.
    #[default]
    Ask,
    /// End failed at once; dependents are blocked.
    Fail,
}

impl OnFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Ask => "ask",
            OnFailure::Fail => "fail",
        }
    }
}

/// A stage's `on_failure`: a word, or a rule that sends the work back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StageOnFailure {
    /// `ask` or `fail`.
    Decide(OnFailure),
    /// `{retry_stage: implement, feedback: log_tail, max_rounds: 3, then: ask}`.
    SendBack(SendBack),
}

/// Sends a failed stage's work back to a stage before it (one it needs,
/// directly or through others): that stage runs its last step again with
/// the failure as feedback, then every stage after it runs again. At most
/// `max_rounds` times; then the failure goes to `then`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBack {
    /// The stage that runs again with the feedback: an ancestor of this
    /// stage through `needs`.
    pub retry_stage: String,
    /// What the feedback says. Default: `log_tail`.
    #[serde(default, skip_serializing_if = "FeedbackKind::is_default")]
    pub feedback: FeedbackKind,
    /// How many times at most the work is sent back automatically, 1 to 20.
    /// Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rounds: Option<u32>,
    /// What the failure does once the rounds are spent (or when the work
    /// cannot be sent back): `ask` or `fail`. Default: the workflow's
    /// `on_failure`, else `ask`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<OnFailure>,
}

impl SendBack {
    /// The most automatic rounds.
    pub fn rounds(&self) -> u32 {
        self.max_rounds.unwrap_or(DEFAULT_SEND_BACK_ROUNDS)
    }
}

/// What an automatic send-back hands the stage it sends the work back to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackKind {
    /// The failing command, its exit code and the last lines of its stderr
    /// and stdout (capped).
    #[default]
    LogTail,
    /// The failure's error message alone.
    Error,
}

impl FeedbackKind {
    fn is_default(&self) -> bool {
        *self == FeedbackKind::LogTail
    }
}

impl StageOnFailure {
    /// The rule that sends the work back, if this is one.
    pub fn send_back(&self) -> Option<&SendBack> {
        match self {
            StageOnFailure::SendBack(s) => Some(s),
            StageOnFailure::Decide(_) => None,
        }
    }

    /// What a failure finally does, when this says.
    pub fn then(&self) -> Option<OnFailure> {
        match self {
            StageOnFailure::Decide(d) => Some(*d),
            StageOnFailure::SendBack(s) => s.then,
        }
    }

    /// The same rule, its final word replaced by `on` (a submitter's
    /// `--on-failure`): a send-back rule keeps sending back first.
    pub fn with_then(self, on: OnFailure) -> Self {
        match self {
            StageOnFailure::Decide(_) => StageOnFailure::Decide(on),
            StageOnFailure::SendBack(s) => StageOnFailure::SendBack(SendBack {
                then: Some(on),
                ..s
            }),
        }
    }
}

impl From<OnFailure> for StageOnFailure {
    fn from(on: OnFailure) -> Self {
        StageOnFailure::Decide(on)
    }
}

// By hand rather than untagged: serde's untagged error ("did not match any
// variant") would hide which field of the map is wrong.
impl<'de> Deserialize<'de> for StageOnFailure {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StageOnFailure;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`ask`, `fail`, or a map {retry_stage, feedback, max_rounds, then}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StageOnFailure, E> {
                OnFailure::deserialize(serde::de::value::StrDeserializer::<E>::new(v))
                    .map(StageOnFailure::Decide)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<StageOnFailure, A::Error> {
                SendBack::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(StageOnFailure::SendBack)
            }
        }
        d.deserialize_any(V)
    }
}
