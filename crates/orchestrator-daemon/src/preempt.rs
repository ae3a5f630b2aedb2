//! The pre-emption loop: after work is queued (and at most every
//! `preempt_tick_ms` while anything waits), one pass asks lower-priority
//! stages to yield where higher-priority work cannot be placed. A pass is
//! a couple of index lookups when no priority inversion exists, so it runs
//! on events rather than per job.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::App;

pub async fn run(app: Arc<App>, stop: CancellationToken) {
    let tick = Duration::from_millis(app.config.preempt_tick_ms.max(10));
    let queued = app.store.jobs_queued();
    // A pass and its pause take at most a tick and a quarter.
    app.health.register("preempt", tick + tick / 4);
    loop {
        app.health.tick("preempt");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = queued.notified() => {}
            _ = tokio::time::sleep(tick) => {}
        }
        match app.store.preempt(app.config.online_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(asked = n, "stages asked to yield to higher-priority work"),
            Err(e) => tracing::error!(error = %e, "pre-emption pass failed"),
        }
        // Passes are cheap but not free: at most one per tick under a burst.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick / 4) => {}
        }
    }
}
