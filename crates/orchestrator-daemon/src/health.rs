//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`:
//! each component reports its own health). The store is ready when a write
//! commits through its writer within [`STORE_WITHIN`]; a looping component
//! (the reaper, the pre-emption loop) is ready while its last tick is no
//! older than three of its intervals and a second. Neither needs a token,
//! so that probes of a supervisor can ask.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use orchestrator_store::Store;
use serde::Serialize;

use crate::App;

/// Longest the store's probe write may take before the store counts as not ready.
pub const STORE_WITHIN: Duration = Duration::from_secs(5);

struct Tick {
    at: Instant,
    every: Duration,
}

/// The last tick of each looping component.
#[derive(Default)]
pub struct Health {
    ticks: Mutex<BTreeMap<&'static str, Tick>>,
}

impl Health {
    /// `component` ticks at least every `every`; counts as ticking from now.
    pub fn register(&self, component: &'static str, every: Duration) {
        self.lock().insert(
            component,
            Tick {
                at: Instant::now(),
                every,
            },
        );
    }

    /// `component` is alive now.
    pub fn tick(&self, component: &'static str) {
        if let Some(t) = self.lock().get_mut(component) {
            t.at = Instant::now();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Tick>> {
        self.ticks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One component's readiness.
#[derive(Debug, Serialize)]
pub struct ComponentHealth {
    pub ok: bool,
    pub detail: String,
    /// For a looping component: milliseconds since its last tick.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_tick_age_ms: Option<u64>,
}

/// The answer of `/readyz`.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub components: BTreeMap<&'static str, ComponentHealth>,
}

/// `GET /readyz`: 200 when every component is ready, else 503; the body
/// says each one's state either way.
pub async fn readyz<S: Store>(State(app): State<Arc<App<S>>>) -> Response {
    let mut components = BTreeMap::new();
    let started = Instant::now();
    let store = match tokio::time::timeout(STORE_WITHIN, app.store.probe_write()).await {
        Ok(Ok(())) => ComponentHealth {
            ok: true,
            detail: format!(
                "writable: a write committed in {:.1} ms",
                ms(started.elapsed())
            ),
            last_tick_age_ms: None,
        },
        Ok(Err(e)) => ComponentHealth {
            ok: false,
            detail: format!("a write failed: {e}"),
            last_tick_age_ms: None,
        },
        Err(_) => ComponentHealth {
            ok: false,
            detail: format!("a write did not commit within {}s", STORE_WITHIN.as_secs()),
            last_tick_age_ms: None,
        },
    };
    components.insert("store", store);
    for (name, t) in app.health.lock().iter() {
        let age = t.at.elapsed();
        let limit = t.every * 3 + Duration::from_secs(1);
        let ok = age <= limit && !app.shutdown.is_cancelled();
        let detail = if app.shutdown.is_cancelled() {
            "stopping".to_owned()
        } else if ok {
            format!("ticking: every {} ms at most", t.every.as_millis())
        } else {
            format!(
                "stalled: no tick for {:.0} ms (expected every {} ms)",
                ms(age),
                t.every.as_millis()
            )
        };
        components.insert(
            *name,
            ComponentHealth {
                ok,
                detail,
                last_tick_age_ms: Some(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            },
        );
    }
    let ready = components.values().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { ready, components })).into_response()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
