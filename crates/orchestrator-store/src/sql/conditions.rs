//! A stage's `if:` as the store applies it (docs/workflow-conditions.md):
//! what the end of a need that did not succeed does to each pending
//! dependent (the core's `need_ended`: count it, block it, bypass it), and
//! the verdict of a condition once every need it waits for has ended.

use orchestrator_core::machine::{need_ended, parse_stage_condition, NeedEnded, StageEvent};
use orchestrator_core::{Actor, RunId, StageState};

use super::common::workflow;
use super::stage::{load_stage, stage_event};
use super::steps::stage_spec;
use super::tx::Ctx;
use crate::db::params;
use crate::Result;

/// `stage_id` ended in `to` (failed, blocked or bypassed): each pending
/// dependent counts it as ended when its condition calls a status
/// function, and is otherwise blocked (after a failure) or bypassed (after
/// a bypass) at once.
pub(super) fn need_ended_for_dependents(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    to: StageState,
) -> Result<()> {
    let dependents: Vec<String> = ctx
        .conn
        .prepare_cached(
            "SELECT q.stage_id FROM requires q JOIN stage_runs s
               ON s.run_id = q.run_id AND s.stage_id = q.stage_id
             WHERE q.run_id = ?1 AND q.required = ?2 AND s.state = 'pending'",
        )?
        .query_map(params![run_id, stage_id], |r| r.get(0))?
        .collect::<crate::db::Result<_>>()?;
    if dependents.is_empty() {
        return Ok(());
    }
    // A stage that ends because its run's spec is unreadable still ends its
    // dependents: each is then taken to call no status function.
    let wf = workflow(ctx, run_id).ok();
    for d in dependents {
        let row = load_stage(ctx, run_id, &d)?;
        // A diamond may reach a dependent twice; the second time it has ended.
        if row.state != StageState::Pending {
            continue;
        }
        let uses_status = wf
            .as_deref()
            .and_then(|wf| stage_spec(wf, run_id, &d, row.ord).ok())
            .and_then(|s| s.condition.as_deref())
            .and_then(|c| parse_stage_condition(c).ok())
            .is_some_and(|e| e.uses_status_function());
        match need_ended(to, uses_status) {
            Some(NeedEnded::Count) => {
                ctx.conn
                    .prepare_cached(
                        "UPDATE stage_runs SET unmet = unmet - 1 WHERE run_id = ?1 AND stage_id = ?2",
                    )?
                    .execute(params![run_id, d.as_str()])?;
                ctx.schedule = true;
            }
            Some(NeedEnded::Block) => {
                stage_event(
                    ctx,
                    run_id,
                    &d,
                    StageEvent::UpstreamFailed,
                    format!("blocked: it needs stage {stage_id}, which ended {to}"),
                    &Actor::Scheduler,
                )?;
            }
            Some(NeedEnded::Bypass) => {
                stage_event(
                    ctx,
                    run_id,
                    &d,
                    StageEvent::Bypass,
                    format!(
                        "bypassed: it needs stage {stage_id}, which was bypassed, and its condition calls no status function"
                    ),
                    &Actor::Scheduler,
                )?;
            }
            None => {}
        }
    }
    Ok(())
}
