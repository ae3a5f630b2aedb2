//! `GET /v1/events`: every transition as Server-Sent Events. A client may
//! resume with `?since=SEQ` (or `Last-Event-ID`): the hub replays the log
//! from the store, then follows live commits, never skipping or repeating a seq.

use orchestrator_core::RunId;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::stream;
use orchestrator_core::Transition;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use crate::extract::{Query, QueryParams};
use crate::App;

#[derive(Deserialize)]
pub struct EventsQuery {
    /// Only transitions with a larger seq.
    since: Option<i64>,
    /// Only transitions of this run.
    run: Option<RunId>,
    /// Only these kinds of entity, comma-separated (`run,stage`).
    entities: Option<String>,
}

impl QueryParams for EventsQuery {
    const EXPECTED: &'static str = "`since`: a transition seq, a whole number from -9223372036854775808 to 9223372036854775807; `run`: a run id; `entities`: kinds of entity, comma-separated (all optional)";
}

pub async fn events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> impl IntoResponse {
    let since = q.since.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    });
    // Subscribe before replaying so nothing committed in between is missed.
    let live = app.store.subscribe();
    let (tx, rx) = mpsc::channel::<Event>(256);
    let shutdown = app.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = pump(app, live, tx, since, q.run, q.entities) => {}
            _ = shutdown.cancelled() => {}
        }
    });
    let body = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(body).keep_alive(KeepAlive::default())
}

fn event(t: &Transition) -> Option<Event> {
    Event::default()
        .id(t.seq.to_string())
        .event("transition")
        .json_data(t)
        .ok()
}

/// Sends transitions to one client until it goes away.
async fn pump(
    app: Arc<App>,
    mut live: broadcast::Receiver<Arc<[Transition]>>,
    tx: mpsc::Sender<Event>,
    since: Option<i64>,
    run: Option<RunId>,
    entities: Option<String>,
) {
    let kinds: Option<Vec<&str>> = entities
        .as_deref()
        .map(|e| e.split(',').map(str::trim).collect());
    let wanted = |t: &Transition| {
        run.as_ref().is_none_or(|r| t.run_id.as_ref() == Some(r))
            && kinds
                .as_ref()
                .is_none_or(|k| k.contains(&t.entity.as_str()))
    };
    // Without `since`, start from now: the last seq committed.
    let mut last = match since {
        Some(s) => s,
        None => app.store.counts().await.map(|c| c.transitions).unwrap_or(0),
    };
    loop {
        // Catch up from the log until it has nothing newer.
        loop {
            let page = match app.store.transitions_since(last, run.clone(), 1000).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "event replay failed");
                    return;
                }
            };
            let n = page.len();
            for t in page {
                last = t.seq;
                if wanted(&t) {
                    if let Some(ev) = event(&t) {
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if n < 1000 {
                break;
            }
        }
        // Follow live batches; on lag, go back to the log.
        loop {
            let next = tokio::select! {
                next = live.recv() => next,
                // The client went away while nothing happened.
                () = tx.closed() => return,
            };
            match next {
                Ok(batch) => {
                    for t in batch.iter() {
                        if t.seq <= last {
                            continue;
                        }
                        last = t.seq;
                        if wanted(t) {
                            if let Some(ev) = event(t) {
                                if tx.send(ev).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
