//! The wire types of a stage's caches: what a job is told to do with them
//! and what its manifest says it did.

use serde::{Deserialize, Serialize};

/// What a job does with its stage's caches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePlan {
    /// The entries, keys computed at submission.
    pub entries: Vec<crate::spec::Cache>,
    /// Restore them before the commands: the stage's first step.
    #[serde(default)]
    pub restore: bool,
    /// Save them when this step succeeds (and a loop's `until` is met, when
    /// it has one): the step whose success ends the stage.
    #[serde(default)]
    pub save: bool,
}

/// What happened to one cache entry in a step, for its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The entry's `path`.
    pub path: String,
    /// Its computed key.
    pub key: String,
    /// `exact`, `prefix` (a restore key matched), `miss`, or `refused` with
    /// `note` saying why; None when this step did not restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<String>,
    /// The key of the entry restored, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_key: Option<String>,
    /// `saved`, `kept` (someone saved this key first), `skipped` (the
    /// exact key was restored), or `not saved` with `note` saying why;
    /// None when this step did not save.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved: Option<String>,
    /// Bytes copied by the restore or the save.
    #[serde(default)]
    pub bytes: u64,
    /// How long the copy took.
    #[serde(default)]
    pub ms: u64,
    /// What else there is to know: why nothing was saved, what was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}
