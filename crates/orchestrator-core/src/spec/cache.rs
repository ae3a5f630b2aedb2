//! A cache entry as a workflow declares it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A directory a stage keeps between runs of its project, on the agent's
/// machine, like a CI system's cache: restored before the stage's first
/// step (the entry saved under `key`, else the newest whose key starts
/// with one of `restore_keys`), saved under `key` when the stage's last
/// step succeeds unless `key` itself was restored. A saved entry never
/// changes. See [`crate::cache`] for the key syntax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// Where the step sees it: relative to the run's worktree (`.venv`,
    /// `node_modules`) or under the stage's home (`~/.cache/pip`). Plain
    /// names of letters, digits, `.`, `_` and `-`; never inside `.git` or
    /// `.orchestrator`.
    pub path: String,
    /// The entry's key: letters, digits, `.`, `_`, `-`, `+`, `=`, and
    /// `${{ hashFiles('requirements.txt', 'lib/**/*.lock') }}`, which stands
    /// for a digest of the named files of the run's base commit. Computed
    /// when the run is submitted; `orch show` prints it.
    pub key: String,
    /// Prefixes to fall back on when no entry has `key`, tried in order; the
    /// newest entry whose key starts with the first prefix that has any is
    /// restored. Same syntax as `key`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restore_keys: Vec<String>,
}
