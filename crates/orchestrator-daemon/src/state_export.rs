//! The `.state/` export, for tools that read files rather than HTTP
//! (`orch daemon --state-dir DIR`):
//!
//! - `transitions.jsonl`: every transition, one JSON object a line, in
//!   `seq` order, appended as batches commit. It is read from the store's
//!   own log by `seq`, so nothing is skipped when the live feed lags, and a
//!   restarted daemon goes on after the file's last line: no gap, no repeat.
//! - `current.json`: the runs, the online agents and what waits for humans,
//!   rewritten after changes (at most every [`FLUSH`]) atomically: written
//!   to a temporary file, synced, renamed over the old one.
//! - `metrics.json`: counts by state and the store's writer figures, every
//!   [`METRICS_EVERY`], atomically too.
//!
//! A failed write is logged and tried again at the next change; the export
//! never stops the daemon.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::App;

/// Longest a change waits before `current.json` shows it.
pub const FLUSH: Duration = Duration::from_millis(250);
/// How often `metrics.json` is written.
pub const METRICS_EVERY: Duration = Duration::from_secs(60);

/// Runs the export into `dir` until `stop`.
pub async fn run(app: Arc<App>, dir: PathBuf, stop: CancellationToken) {
    let mut live = app.store.subscribe();
    let mut last = match prepare(&dir) {
        Ok(seq) => seq,
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "state export disabled: cannot use its directory");
            return stop.cancelled().await;
        }
    };
    let mut metrics = tokio::time::interval(METRICS_EVERY);
    let mut dirty = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                export(&app, &dir, &mut last).await;
                return;
            }
            r = live.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => dirty = true,
                // The store closes only as the daemon stops.
                Err(RecvError::Closed) => return stop.cancelled().await,
            },
            _ = tokio::time::sleep(FLUSH), if dirty => {
                export(&app, &dir, &mut last).await;
                dirty = false;
            }
            _ = metrics.tick() => {
                if let Err(e) = write_metrics(&app, &dir).await {
                    tracing::warn!(error = %e, "cannot write metrics.json");
                }
            }
        }
    }
}

/// Makes the directory, cuts a line a crash left half-written off
/// `transitions.jsonl`, and finds the last seq it holds.
fn prepare(dir: &Path) -> std::io::Result<i64> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("transitions.jsonl");
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    else {
        return Ok(0);
    };
    cut_partial_line(&f)?;
    std::io::Seek::seek(&mut &f, std::io::SeekFrom::Start(0))?;
    let mut last = 0;
    for line in std::io::BufReader::new(f).lines() {
        if let Some(seq) = serde_json::from_str::<serde_json::Value>(&line?)
            .ok()
            .and_then(|v| v["seq"].as_i64())
        {
            last = last.max(seq);
        }
    }
    Ok(last)
}

/// Truncates `f` after its last newline, so that the next append starts a
/// line of its own.
fn cut_partial_line(mut f: &std::fs::File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = usize::try_from(end - start).unwrap_or(buf.len());
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        tracing::warn!(
            cut = len - end,
            "transitions.jsonl ended in a half-written line; cut it off"
        );
        f.set_len(end)?;
        f.sync_all()?;
    }
    Ok(())
}

async fn export(app: &App, dir: &Path, last: &mut i64) {
    if let Err(e) = append_transitions(app, dir, last).await {
        tracing::warn!(error = %e, "cannot append to transitions.jsonl");
    }
    if let Err(e) = write_current(app, dir, *last).await {
        tracing::warn!(error = %e, "cannot write current.json");
    }
}

/// Why an export was not written (the next tick tries again).
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error(transparent)]
    Store(#[from] orchestrator_store::StoreError),
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    #[error("{}: {source}", .path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Appends every transition after `last` from the store's log.
async fn append_transitions(app: &App, dir: &Path, last: &mut i64) -> Result<(), ExportError> {
    let path = dir.join("transitions.jsonl");
    loop {
        let page = app.store.transitions_since(*last, None, 1000).await?;
        if page.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for t in &page {
            text.push_str(&serde_json::to_string(t)?);
            text.push('\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(io(&path))?;
        *last = page.last().map_or(*last, |t| t.seq);
        if page.len() < 1000 {
            return Ok(());
        }
    }
}

async fn write_current(app: &App, dir: &Path, seq: i64) -> Result<(), ExportError> {
    let s = &app.store;
    let doc = json!({
        "at_ms": app.config.clock.now_ms(),
        "last_seq": seq,
        "runs": s.list_runs(1000).await?,
        "agents": s.list_agents(app.config.online_ms()).await?,
        "inbox": s.inbox().await?,
    });
    write_atomic(&dir.join("current.json"), &doc)
}

async fn write_metrics(app: &App, dir: &Path) -> Result<(), ExportError> {
    let c = app.store.counts().await?;
    let w = app.store.writer_stats();
    let map = |rows: &[(String, i64)]| -> serde_json::Map<String, serde_json::Value> {
        rows.iter().map(|(k, v)| (k.clone(), json!(v))).collect()
    };
    let doc = json!({
        "at_ms": app.config.clock.now_ms(),
        "runs": map(&c.runs),
        "stages": map(&c.stages),
        "jobs": map(&c.jobs),
        "agents": c.agents,
        "transitions": c.transitions,
        "retries": map(&c.retries),
        "store": {
            "batches": w.batches,
            "commands": w.commands,
            "max_batch": w.max_batch,
            "commit_seconds": w.commit_micros as f64 / 1e6,
            "failed_batches": w.failed_batches,
        },
    });
    write_atomic(&dir.join("metrics.json"), &doc)
}

/// Writes `doc` to a temporary file beside `path`, syncs it and renames it
/// over `path`: a reader sees the old file or the new one, never half.
fn write_atomic(path: &Path, doc: &serde_json::Value) -> Result<(), ExportError> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(doc)?;
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&text)
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(parent) = path.parent() {
        // The rename itself is durable once the directory is synced.
        let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(())
}
