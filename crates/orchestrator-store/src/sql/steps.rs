//! A stage row's spec, one of its steps, and the handoff humans left for
//! it. The step arithmetic itself is the core's (`Stage::step_at`,
//! `Stage::after`, `Stage::job_name`).

use orchestrator_core::api::Handoff;
use orchestrator_core::spec::{Stage, Step};
use orchestrator_core::RunId;

use crate::{Result, StoreError};

/// The stage spec of a stage row, and step `step` of it (counted across a
/// loop's iterations).
pub(super) fn stage_spec<'w>(
    wf: &'w orchestrator_core::Workflow,
    run_id: &RunId,
    stage_id: &str,
    ord: usize,
) -> Result<&'w Stage> {
    wf.stages
        .get(ord)
        .filter(|s| s.id == stage_id)
        .ok_or_else(|| {
            StoreError::corrupt(
                format!("run {run_id}: stored spec unreadable"),
                format!("it has no stage {stage_id}"),
            )
        })
}

/// Step `step` of a stage (counted across a loop's iterations), where the
/// store's own rows say it exists.
pub(super) fn step_of(stage: &Stage, step: u32) -> Result<&Step> {
    stage
        .step_at(step)
        .ok_or_else(|| StoreError::Internal(format!("stage {} has no step {step}", stage.id)))
}

/// A stage's stored handoff, when it is for step `step`.
pub(super) fn parse_handoff(json: Option<&str>, step: u32) -> Option<Handoff> {
    json.and_then(|j| serde_json::from_str::<Handoff>(j).ok())
        .filter(|h| h.for_step == step)
}
