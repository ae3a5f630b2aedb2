//! What a stage's spec says about its steps: the stage of a row, step `n`
//! across a loop's iterations, its name, where the stage goes after it, and
//! the handoff humans left for it. Pure functions of the spec; no state.

use orchestrator_core::api::Handoff;
use orchestrator_core::machine::{after_step, After};
use orchestrator_core::spec::{Stage, Step};

use crate::{Result, StoreError};

/// The stage spec of a stage row, and step `step` of it (counted across a
/// loop's iterations).
pub(super) fn stage_spec<'w>(
    wf: &'w orchestrator_core::Workflow,
    run_id: &str,
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

/// What a stage's validation job is called, where a step's name would be.
pub(super) const VALIDATION_NAME: &str = "validate";

/// The name of job `step` of a stage: a step's own, or the validation's.
pub(super) fn step_name(stage: &Stage, step: u32) -> Option<String> {
    if stage.validation_step() == Some(step) {
        return Some(VALIDATION_NAME.to_owned());
    }
    step_of(stage, step).ok()?.name.clone()
}

/// Step `step` of a stage, counted across a loop's iterations.
pub(super) fn step_of(stage: &Stage, step: u32) -> Result<&Step> {
    let n = stage.steps.len().max(1);
    stage
        .steps
        .get(step as usize % n)
        .ok_or_else(|| StoreError::Internal(format!("stage {} has no step {step}", stage.id)))
}

/// Where a stage goes after step `step`: its validation comes after its
/// last step.
pub(super) fn after(stage: &Stage, step: u32, until_met: Option<bool>) -> After {
    match after_step(
        step,
        u32::try_from(stage.steps.len()).unwrap_or(u32::MAX),
        stage.iterations(),
        until_met,
    ) {
        After::Done => stage.validation_step().map_or(After::Done, After::Validate),
        after => after,
    }
}

/// A stage's stored handoff, when it is for step `step`.
pub(super) fn parse_handoff(json: Option<&str>, step: u32) -> Option<Handoff> {
    json.and_then(|j| serde_json::from_str::<Handoff>(j).ok())
        .filter(|h| h.for_step == step)
}
