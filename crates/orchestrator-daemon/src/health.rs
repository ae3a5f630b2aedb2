//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`:
//! each component reports its own health). The store is ready when a write
//! commits through its writer within [`STORE_WITHIN`]; a looping component
//! (the reaper, the pre-emption loop) is ready while its last tick is no
//! older than three of its intervals and a second. The model fabric and the
//! webhook targets report their health too, but do not gate readiness: a
//! model that cannot start or a chat that does not answer must not take the
//! daemon out of service for every run. Neither endpoint needs a token, so
//! that probes of a supervisor can ask.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
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
    /// Whether the daemon is ready only while this component is.
    pub required: bool,
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
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
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
            required: true,
        },
        Ok(Err(e)) => ComponentHealth {
            ok: false,
            required: true,
            detail: format!("a write failed: {e}"),
            last_tick_age_ms: None,
        },
        Err(_) => ComponentHealth {
            ok: false,
            required: true,
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
                required: true,
                detail,
                last_tick_age_ms: Some(age_ms(age)),
            },
        );
    }
    let fabric = app.upstreams.fabric.report();
    components.insert(
        "fabric",
        ComponentHealth {
            ok: fabric.ok,
            required: false,
            detail: fabric.detail,
            last_tick_age_ms: Some(age_ms(fabric.last_step_age)),
        },
    );
    let hooks = app.hooks.status();
    if !hooks.is_empty() {
        components.insert("webhooks", webhooks(&hooks, app.config.clock.now_ms()));
    }
    let ready = components.values().all(|c| c.ok || !c.required);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { ready, components })).into_response()
}

/// Healthy while no target is retrying an event or gave one up in the last
/// minute; the detail names each troubled target and its last error.
fn webhooks(targets: &[crate::hooks::HookStatus], now: i64) -> ComponentHealth {
    let troubled: Vec<String> = targets
        .iter()
        .filter(|t| t.retrying || t.last_error_ms.is_some_and(|at| now - at < 60_000))
        .map(|t| {
            format!(
                "{} {} (attempt {}, {} behind): {}",
                t.url,
                if t.retrying {
                    "retrying"
                } else {
                    "failed recently"
                },
                t.attempt,
                t.behind,
                t.last_error.as_deref().unwrap_or("no answer")
            )
        })
        .collect();
    let behind: u64 = targets.iter().map(|t| t.behind).sum();
    ComponentHealth {
        ok: troubled.is_empty(),
        required: false,
        detail: if troubled.is_empty() {
            format!(
                "{} targets delivering; {behind} events behind",
                targets.len()
            )
        } else {
            troubled.join("; ")
        },
        last_tick_age_ms: None,
    }
}

fn age_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{HookStatus, TargetKind};

    fn target(retrying: bool, last_error_ms: Option<i64>) -> HookStatus {
        HookStatus {
            url: "http://chat.example/hook".into(),
            kind: TargetKind::Webhook,
            delivered: 3,
            failed: 0,
            retries: 1,
            retrying,
            attempt: u32::from(retrying) * 2,
            behind: 4,
            last_status: Some(503),
            last_error: last_error_ms.map(|_| "503 Service Unavailable".into()),
            last_error_ms,
            last_attempt_ms: None,
            cursor: 10,
        }
    }

    #[test]
    fn webhooks_are_healthy_until_a_target_retries_or_failed_in_the_last_minute() {
        let now = orchestrator_host::now_ms();
        let fine = webhooks(&[target(false, Some(now - 120_000))], now);
        assert!(fine.ok && !fine.required, "{}", fine.detail);
        assert!(
            fine.detail
                .contains("1 targets delivering; 4 events behind"),
            "{}",
            fine.detail
        );
        let retrying = webhooks(&[target(true, Some(now - 1_000))], now);
        assert!(!retrying.ok);
        assert!(
            retrying
                .detail
                .contains("retrying (attempt 2, 4 behind): 503 Service Unavailable"),
            "{}",
            retrying.detail
        );
        let failed = webhooks(&[target(false, Some(now - 5_000))], now);
        assert!(!failed.ok);
        assert!(
            failed.detail.contains("failed recently"),
            "{}",
            failed.detail
        );
    }
}
