//! The rules of a stage's `if:` condition (docs/workflow-conditions.md):
//! what the end of a need does to a dependent, the [`Status`] its status
//! functions read, the `result` of a need, and the verdict with GitHub
//! Actions' implied `success() &&`.

use crate::expr::{eval, parse, parse_condition, truthy, Context, Expr, ExprError, Status};

use super::StageState;

/// What a pending dependent does when one of its needs ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeedEnded {
    /// The need counts as met: the dependent's condition (or, without one,
    /// its start) is decided once every need has been counted.
    Count,
    /// The dependent is blocked ([`super::StageEvent::UpstreamFailed`]).
    Block,
    /// The dependent is bypassed ([`super::StageEvent::Bypass`]).
    Bypass,
}

/// What a dependent does when a need ends in `need`; `uses_status`: the
/// dependent's condition calls a status function (`success()`,
/// `failure()`, `always()`, `cancelled()`). None while `need` has not
/// ended, and for a cancelled need (its whole run is being cancelled).
///
/// A need that succeeded, or that a human skipped, counts for everybody. A
/// need that failed, was blocked or was bypassed counts only for a
/// dependent whose condition calls a status function (it waits for all its
/// needs and then decides); any other dependent is blocked by a failure
/// and bypassed by a bypass, at once.
pub fn need_ended(need: StageState, uses_status: bool) -> Option<NeedEnded> {
    use StageState as S;
    match need {
        S::Succeeded | S::Skipped => Some(NeedEnded::Count),
        S::Failed | S::Blocked if uses_status => Some(NeedEnded::Count),
        S::Failed | S::Blocked => Some(NeedEnded::Block),
        S::Bypassed if uses_status => Some(NeedEnded::Count),
        S::Bypassed => Some(NeedEnded::Bypass),
        S::Pending
        | S::Queued
        | S::Running
        | S::Paused
        | S::Retrying
        | S::Suspended
        | S::AwaitingApproval
        | S::AwaitingInput
        | S::Validating
        | S::AwaitingDecision
        | S::Cancelled => None,
    }
}

/// The [`Status`] a stage's condition reads from how its needs ended:
/// `success()` needs every one to have succeeded or been skipped by a
/// human (a bypassed need makes it false, as a skipped job does in GitHub
/// Actions); `failure()` needs one to have failed or been blocked.
pub fn needs_status(needs: &[StageState], cancelled: bool) -> Status {
    Status {
        all_succeeded: needs
            .iter()
            .all(|s| matches!(s, StageState::Succeeded | StageState::Skipped)),
        any_failed: needs
            .iter()
            .any(|s| matches!(s, StageState::Failed | StageState::Blocked)),
        cancelled,
    }
}

/// `stages.<id>.result` of a need that ended in `s`, in GitHub Actions'
/// words: `success`, `failure` (failed or blocked), `skipped` (skipped by
/// a human or bypassed by its condition) or `cancelled`. None while it has
/// not ended.
pub fn need_result(s: StageState) -> Option<&'static str> {
    match s {
        StageState::Succeeded => Some("success"),
        StageState::Failed | StageState::Blocked => Some("failure"),
        StageState::Skipped | StageState::Bypassed => Some("skipped"),
        StageState::Cancelled => Some("cancelled"),
        _ => None,
    }
}

/// Parses a stage's `if:` (bare, or wrapped whole in `${{ }}`).
pub fn parse_stage_condition(text: &str) -> Result<Expr, ExprError> {
    parse_condition(text)
}

/// Whether a stage whose condition is `cond` runs, with `ctx` holding its
/// names and the [`Status`] of its needs. A condition that calls no status
/// function means `success() && (cond)`: it is not evaluated at all unless
/// every need succeeded.
pub fn condition_holds(cond: &Expr, ctx: &Context<'_>) -> Result<bool, ExprError> {
    if !cond.uses_status_function() {
        // A fixed text: parsing it cannot fail.
        let success = parse("success()")?;
        if !truthy(&eval(&success, ctx)?) {
            return Ok(false);
        }
    }
    Ok(truthy(&eval(cond, ctx)?))
}
