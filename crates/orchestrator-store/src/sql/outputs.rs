//! Stage outputs: each successful step's outputs are kept on its checkpoint
//! row (`checkpoints.outputs`, a JSON object of strings); a stage's outputs
//! are their merge in the order they were made
//! ([`orchestrator_core::outputs::merge`]: a step run again replaces what
//! its earlier run, and the steps after it, wrote).
//!
//! The agent checked the limits, but the API is public, so a completion's
//! outputs are checked again here ([`refused`]), the stage's merged outputs
//! with them: a stage whose steps together write too much fails at the step
//! that went over.

use std::collections::BTreeMap;

use orchestrator_core::outputs::{self, Outputs};
use orchestrator_core::RunId;

use crate::db::{params, Conn};
use crate::Result;

/// Checkpoint rows of a run (of one stage, when `stage_id` is given) in the
/// order they were made: stage, step (position) and outputs.
fn rows(
    conn: &Conn,
    run_id: &RunId,
    stage_id: Option<&str>,
) -> Result<Vec<(String, u32, Outputs)>> {
    let sql = match stage_id {
        Some(_) => {
            "SELECT stage_id, step, outputs FROM checkpoints
             WHERE run_id = ?1 AND stage_id = ?2 ORDER BY seq"
        }
        None => "SELECT stage_id, step, outputs FROM checkpoints WHERE run_id = ?1 ORDER BY seq",
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let row = |r: &crate::db::Row<'_>| -> crate::db::Result<(String, u32, Option<String>)> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    };
    let rows: Vec<(String, u32, Option<String>)> = match stage_id {
        Some(stage) => stmt
            .query_map(params![run_id, stage], row)?
            .collect::<crate::db::Result<_>>()?,
        None => stmt
            .query_map(params![run_id], row)?
            .collect::<crate::db::Result<_>>()?,
    };
    Ok(rows
        .into_iter()
        .map(|(stage, step, json)| {
            // Written by this store from a checked map; an unreadable one
            // counts as none rather than hiding the run.
            let out = json
                .and_then(|j| serde_json::from_str::<Outputs>(&j).ok())
                .unwrap_or_default();
            (stage, step, out)
        })
        .collect())
}

/// Every stage's outputs of a run; a stage with none is left out.
pub(super) fn of_run(conn: &Conn, run_id: &RunId) -> Result<BTreeMap<String, Outputs>> {
    let mut by_stage: BTreeMap<String, Vec<(u32, Outputs)>> = BTreeMap::new();
    for (stage, step, o) in rows(conn, run_id, None)? {
        by_stage.entry(stage).or_default().push((step, o));
    }
    Ok(by_stage
        .into_iter()
        .map(|(stage, rows)| (stage, outputs::merge(rows.iter().map(|(s, o)| (*s, o)))))
        .filter(|(_, o)| !o.is_empty())
        .collect())
}

/// One stage's outputs (empty when it has none), as [`of_run`] has them.
pub(super) fn of_stage(conn: &Conn, run_id: &RunId, stage_id: &str) -> Result<Outputs> {
    let rows = rows(conn, run_id, Some(stage_id))?;
    Ok(outputs::merge(rows.iter().map(|(_, s, o)| (*s, o))))
}

/// Why a completion's outputs are refused (the step then fails as a
/// task), or None: the step's own limits, then the stage's once they are
/// merged with what its earlier steps wrote.
pub(super) fn refused(
    conn: &Conn,
    run_id: &RunId,
    stage_id: &str,
    step: u32,
    new: &Outputs,
) -> Result<Option<String>> {
    if new.is_empty() {
        return Ok(None);
    }
    if let Err(e) = outputs::check_step(new) {
        return Ok(Some(format!("the step's outputs are refused: {e}")));
    }
    let mut rows = rows(conn, run_id, Some(stage_id))?;
    rows.push((stage_id.to_owned(), step, new.clone()));
    let merged = outputs::merge(rows.iter().map(|(_, s, o)| (*s, o)));
    Ok(outputs::check_stage(&merged)
        .err()
        .map(|e| format!("the stage's outputs with this step's are refused: {e}")))
}

/// The outputs as the checkpoint row keeps them (NULL when none).
pub(super) fn encode(new: &Outputs) -> Result<Option<String>> {
    if new.is_empty() {
        return Ok(None);
    }
    crate::error::encode("a step's outputs", new).map(Some)
}
