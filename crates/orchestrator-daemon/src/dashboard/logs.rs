//! `GET /v1/runs/{id}/jobs/{job}/logs`: a piece of one command's output,
//! read from the job's bundle in the project directory, from an offset on.
//! The dashboard follows a running command by asking again from where the
//! last piece ended; `orch logs` reads the same files directly.

use orchestrator_core::{JobId, RunId};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use orchestrator_core::api::{exec_id, JobView};
use orchestrator_host::confined::{ConfinedDir, ConfinedError};
use serde::{Deserialize, Serialize};

use crate::error::ApiErr;
use crate::extract::{Path, Query, QueryParams};
use crate::App;

/// The most bytes one answer carries.
pub const MAX_PIECE: u64 = 256 * 1024;

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    /// The command's index within the step (0-based).
    #[serde(default)]
    cmd: u32,
    /// `stdout` or `stderr`.
    #[serde(default)]
    stream: Stream,
    /// Where to start, in bytes.
    #[serde(default)]
    offset: u64,
}

impl QueryParams for LogQuery {
    const EXPECTED: &'static str = "`cmd`: the command's index, from 0; `stream`: stdout or stderr; `offset`: a byte offset, from 0 (all optional)";
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Stream {
    #[default]
    Stdout,
    Stderr,
}

/// One piece of a log.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogPiece {
    /// The bytes from `offset` on, as text (invalid UTF-8 replaced); a
    /// character cut by the piece's end is left for the next one.
    pub text: String,
    /// Where the next piece starts.
    pub next: u64,
    /// The file's size when read.
    pub size: u64,
    /// Whether the log exists yet (a command not yet started has none).
    pub exists: bool,
    /// How many commands of the job have logs so far.
    pub commands: u32,
    /// Whether the job has ended: nothing more will be written.
    pub ended: bool,
}

/// The bundle directory of a job, inside the project. A bundle path the
/// agent reported that would leave the project is refused.
/// The bundle directory of a job, relative to its project.
fn bundle_rel(j: &JobView) -> Result<PathBuf, ApiErr> {
    match &j.bundle {
        Some(b) => {
            let rel = FsPath::new(b);
            if rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(ApiErr::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "job {}: its bundle path {b:?} is not inside the project",
                        j.id
                    ),
                ));
            }
            Ok(rel.to_owned())
        }
        None => Ok(PathBuf::from(".orchestrator/runs")
            .join(j.run_id.as_str())
            .join(&j.stage_id)
            .join(exec_id(j.step, j.round, j.id))),
    }
}

/// Reads up to [`MAX_PIECE`] bytes of log `name` from `offset` on, and the
/// file's size; None when there is no such log (yet). The bundle is written
/// by the step, so its directory is walked without following links and only
/// a regular file is read: a link a step put at a log's name is refused.
fn read_piece(
    dir: Option<&ConfinedDir>,
    name: &str,
    offset: u64,
) -> Result<Option<(Vec<u8>, u64)>, ConfinedError> {
    let Some(dir) = dir else { return Ok(None) };
    let f = match dir.open_regular(name) {
        Ok(f) => f,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let io = |source| ConfinedError::Io {
        what: "read",
        path: dir.path().join(name),
        source,
    };
    let size = f.metadata().map_err(io)?.len();
    let start = offset.min(size);
    let mut f = f;
    f.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut buf = Vec::new();
    f.take(MAX_PIECE).read_to_end(&mut buf).map_err(io)?;
    Ok(Some((buf, size)))
}

/// The bundle directory, opened without following links; None when it does
/// not exist (yet).
fn open_bundle(project: &FsPath, rel: &FsPath) -> Result<Option<ConfinedDir>, ConfinedError> {
    match ConfinedDir::open(project, rel, false) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The longest prefix that does not end inside a UTF-8 character.
fn whole_chars(buf: &[u8]) -> usize {
    match std::str::from_utf8(buf) {
        Ok(_) => buf.len(),
        // An incomplete character at the end: stop before it.
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        // Invalid bytes inside are replaced, not held back.
        Err(_) => buf.len(),
    }
}

pub async fn read(
    State(app): State<Arc<App>>,
    Path((run, job)): Path<(RunId, JobId)>,
    Query(q): Query<LogQuery>,
) -> Result<Json<LogPiece>, ApiErr> {
    let detail = app.store.run_detail(&run).await?;
    let Some(j) = detail.jobs.iter().find(|j| j.id == job) else {
        return Err(ApiErr::new(
            StatusCode::NOT_FOUND,
            format!("run {} has no job {job}", detail.run.id),
        ));
    };
    let project = PathBuf::from(&detail.run.project_dir);
    let rel = bundle_rel(j)?;
    let ended = j.state.is_terminal();
    let stream = match q.stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    let (offset, cmd) = (q.offset, q.cmd);
    let piece = tokio::task::spawn_blocking(move || {
        let dir = open_bundle(&project, &rel)?;
        let commands = match &dir {
            None => 0,
            Some(dir) => (0u32..)
                .take_while(|i| {
                    ["stdout", "stderr"]
                        .iter()
                        .any(|s| dir.holds_name(&format!("cmd-{i:03}.{s}.log")))
                })
                .count() as u32,
        };
        read_piece(dir.as_ref(), &format!("cmd-{cmd:03}.{stream}.log"), offset)
            .map(|r| (r, commands))
    })
    .await
    .map_err(|e| ApiErr::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| match e {
        ConfinedError::Io { .. } => ApiErr::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("job {job}: cannot read its log: {e}"),
        ),
        // Something a step put in its bundle: refused, never followed.
        e => ApiErr::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("job {job}: its log cannot be served: {e}"),
        ),
    })?;
    Ok(Json(match piece {
        (None, commands) => LogPiece {
            text: String::new(),
            next: 0,
            size: 0,
            exists: false,
            commands,
            ended,
        },
        (Some((buf, size)), commands) => {
            let keep = whole_chars(&buf);
            LogPiece {
                text: String::from_utf8_lossy(&buf[..keep]).into_owned(),
                next: offset.min(size) + keep as u64,
                size,
                exists: true,
                commands,
                ended,
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_dir(project: &FsPath, j: &JobView) -> Result<PathBuf, ApiErr> {
        bundle_rel(j).map(|rel| project.join(rel))
    }

    #[test]
    fn a_cut_character_waits_for_the_next_piece() {
        let text = "héllo".as_bytes();
        assert_eq!(whole_chars(text), text.len());
        // "h" and the first byte of "é".
        assert_eq!(whole_chars(&text[..2]), 1);
        assert_eq!(whole_chars(b"a\xffb"), 3);
    }

    #[test]
    fn a_bundle_path_outside_the_project_is_refused() {
        let job = |bundle: Option<&str>| JobView {
            id: 7.into(),
            run_id: "r".into(),
            stage_id: "s".into(),
            step: 0,
            attempt: 1,
            round: 1,
            round_reason: Default::default(),
            state: orchestrator_core::JobState::Leased,
            agent_id: None,
            exit_codes: vec![],
            error: None,
            error_class: None,
            sandbox: None,
            bundle: bundle.map(str::to_owned),
            created_at_ms: 0,
            started_at_ms: None,
            ended_at_ms: None,
        };
        let p = FsPath::new("/p");
        assert_eq!(
            bundle_dir(p, &job(Some(".orchestrator/runs/r/s/x"))).ok(),
            Some(PathBuf::from("/p/.orchestrator/runs/r/s/x"))
        );
        assert!(bundle_dir(p, &job(Some("../etc"))).is_err());
        assert!(bundle_dir(p, &job(Some("/etc"))).is_err());
        assert_eq!(
            bundle_dir(p, &job(None)).ok(),
            Some(PathBuf::from(
                "/p/.orchestrator/runs/r/s/step-000-round-1-job-7"
            ))
        );
    }
}
