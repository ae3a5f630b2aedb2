//! `GET /v1/runs/{id}/diff[?commit=SHA]`: the change a run made, file by
//! file, as the dashboard shows it to a reviewer; with `commit`, one
//! checkpoint's step (its own commits and its artifacts). Only a
//! checkpoint of the run can be named: the endpoint shows the run's work,
//! not any object of the repository.

use orchestrator_core::RunId;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use orchestrator_core::api::RunDiff;
use serde::Deserialize;

use crate::error::ApiErr;
use crate::extract::{Path, Query, QueryParams};
use crate::App;

#[derive(Debug, Deserialize)]
pub struct DiffQuery {
    /// A checkpoint commit of the run (full, or a prefix of 7 or more).
    commit: Option<String>,
}

impl QueryParams for DiffQuery {
    const EXPECTED: &'static str =
        "`commit`: one of the run's checkpoint commits, full or a prefix of at least 7 hex digits (optional)";
}

pub async fn read(
    State(app): State<Arc<App>>,
    Path(run): Path<RunId>,
    Query(q): Query<DiffQuery>,
) -> Result<Json<RunDiff>, ApiErr> {
    let d = app.store.run_detail(&run).await?;
    let id = d.run.id.clone();
    let unprocessable = |m: String| ApiErr::new(StatusCode::UNPROCESSABLE_ENTITY, m);
    let (from, to) = match q.commit.as_deref() {
        Some(c) => {
            let hex = c.len() >= 7 && c.len() <= 40 && c.bytes().all(|b| b.is_ascii_hexdigit());
            let found = d
                .checkpoints
                .iter()
                .find(|x| hex && x.commit.starts_with(&c.to_ascii_lowercase()));
            let Some(cp) = found else {
                return Err(ApiErr::new(
                    StatusCode::NOT_FOUND,
                    format!("run {id} has no checkpoint {c:?}; see its checkpoints in GET /v1/runs/{id}"),
                ));
            };
            (None, cp.commit.clone())
        }
        None => {
            let base = d.run.base_commit.clone().ok_or_else(|| {
                unprocessable(format!(
                    "run {id} records no base commit: nothing to compare"
                ))
            })?;
            let tip = d
                .checkpoints
                .last()
                .map(|c| c.commit.clone())
                .unwrap_or_else(|| base.clone());
            (Some(base), tip)
        }
    };
    let project = PathBuf::from(&d.run.project_dir);
    let base = d.run.base_commit.clone();
    tokio::task::spawn_blocking(move || {
        let from = match from {
            Some(f) => f,
            None => orchestrator_host::git::step_start(&project, &to, base.as_deref())
                .unwrap_or_else(|| format!("{to}^")),
        };
        orchestrator_host::git::diff_files(&project, &from, &to)
    })
    .await
    .map_err(|e| ApiErr::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map(Json)
    .map_err(|e| {
        ApiErr::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("run {id}: cannot show its change: {e}"),
        )
    })
}
