//! The model fabric's own health, for `/readyz`: whether residency still
//! runs, when it last decided, what serves, and the last model server that
//! failed to start (a model file that moved, a port taken, an agent that
//! could not run it), for a minute after it happened.

use std::time::{Duration, Instant};

use super::control::Fabric;

/// How long a failed start keeps the fabric reported unhealthy.
pub const FAILURE_SHOWN: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct FabricHealth {
    pub(crate) looping: bool,
    pub(crate) last_step: Instant,
    pub(crate) last_failure: Option<(String, Instant)>,
}

impl Default for FabricHealth {
    fn default() -> Self {
        FabricHealth {
            looping: false,
            last_step: Instant::now(),
            last_failure: None,
        }
    }
}

/// What `/readyz` says of the fabric.
pub struct Report {
    pub ok: bool,
    pub detail: String,
    pub last_step_age: Duration,
}

impl Fabric {
    pub(crate) fn lock_health(&self) -> std::sync::MutexGuard<'_, FabricHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A model server did not start: kept for [`FAILURE_SHOWN`].
    pub(crate) fn start_failed(&self, model: &str, why: &str) {
        self.lock_health().last_failure = Some((format!("{model}: {why}"), Instant::now()));
    }

    /// The fabric's state in one line, and whether it is healthy: its
    /// residency loop runs and no server failed to start in the last minute.
    pub fn report(&self) -> Report {
        let (looping, last_step, failure) = {
            let h = self.lock_health();
            (
                h.looping,
                h.last_step,
                h.last_failure
                    .as_ref()
                    .filter(|(_, at)| at.elapsed() < FAILURE_SHOWN)
                    .map(|(why, at)| (why.clone(), at.elapsed())),
            )
        };
        let (serving, starting) = {
            let st = self.pool.lock();
            let serving = st
                .instances
                .iter()
                .filter(|i| i.url.is_some() && !i.stopping)
                .count();
            (serving, st.instances.len() - serving)
        };
        let waiting: usize = self.pool.waiting_all().iter().map(|(_, n)| n).sum();
        let mut detail = format!(
            "{} models; {serving} servers serving, {starting} starting or stopping; {waiting} requests waiting",
            self.specs.len()
        );
        if !looping {
            detail = format!("residency is not running; {detail}");
        }
        if let Some((why, ago)) = &failure {
            detail.push_str(&format!(
                "; a server failed to start {}s ago: {why}",
                ago.as_secs()
            ));
        }
        Report {
            ok: looping && failure.is_none(),
            detail,
            last_step_age: last_step.elapsed(),
        }
    }
}
