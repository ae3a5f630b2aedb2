//! Helpers every domain command shares: the error a refused event becomes,
//! the keys transitions name stages by, and a run's parsed workflow from
//! the batch's cache. No state changes here.

use orchestrator_core::RunId;
use std::sync::Arc;

use crate::db::Optional;
use orchestrator_core::Workflow;

use super::tx::Ctx;
use crate::{Result, StoreError};

pub(super) fn conflict(e: impl std::fmt::Display) -> StoreError {
    StoreError::Conflict(e.to_string())
}

pub(super) fn stage_key(run_id: &RunId, stage_id: &str) -> String {
    orchestrator_core::StageKey::new(run_id.as_str(), stage_id).to_string()
}

/// The parsed workflow of a run, from the cache or the `runs` row.
pub(super) fn workflow(ctx: &mut Ctx<'_>, run_id: &RunId) -> Result<Arc<Workflow>> {
    if let Some(w) = ctx.workflows.get(run_id) {
        return Ok(w.clone());
    }
    let spec: String = ctx
        .conn
        .prepare_cached("SELECT spec FROM run_specs WHERE run_id = ?1")?
        .query_row([run_id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            what: "run",
            id: run_id.to_string(),
        })?;
    let wf: Workflow = serde_json::from_str(&spec)
        .map_err(|e| StoreError::corrupt(format!("run {run_id}: stored spec unreadable"), e))?;
    let wf = Arc::new(wf);
    ctx.workflows.insert(run_id.clone(), wf.clone());
    Ok(wf)
}

/// A run's bound inputs as the `runs.inputs` column holds them (NULL for a
/// run of an older store, or of a workflow without inputs: none).
pub(super) fn decode_inputs(
    run_id: &RunId,
    text: Option<&str>,
) -> Result<std::collections::BTreeMap<String, serde_json::Value>> {
    text.map_or(Ok(Default::default()), |t| {
        serde_json::from_str(t)
            .map_err(|e| StoreError::corrupt(format!("run {run_id}: stored inputs unreadable"), e))
    })
}
