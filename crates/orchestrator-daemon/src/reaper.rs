//! The lease reaper: expires leases whose agents stopped heartbeating, which
//! requeues their stages, and marks those agents lost. It sleeps until the
//! earliest lease could expire (at most `tick`), so an idle daemon does
//! almost nothing.

use std::sync::Arc;
use std::time::Duration;

use orchestrator_store::{now_ms, Store};
use tokio_util::sync::CancellationToken;

use crate::App;

pub async fn run<S: Store>(app: Arc<App<S>>, stop: CancellationToken) {
    let tick = Duration::from_millis(app.config.reaper_tick_ms.max(10));
    // Agents get one online window to reach a daemon that just started, as
    // their leases do (`Store::resume`): silence while it was down is not theirs.
    let window = i64::try_from(app.config.online_ms()).unwrap_or(i64::MAX);
    let judge_agents_from = now_ms().saturating_add(window);
    app.health.register("reaper", tick);
    loop {
        app.health.tick("reaper");
        let wait = match app.store.next_lease_expiry().await {
            Ok(Some(at)) => Duration::from_millis((at - now_ms()).max(0) as u64).min(tick),
            Ok(None) => tick,
            Err(e) => {
                tracing::warn!(error = %e, "reaper could not read leases");
                tick
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = now_ms();
        match app.store.expire_leases(now).await {
            Ok(0) => {}
            Ok(n) => {
                app.metrics.leases_expired(n);
                tracing::warn!(expired = n, "leases expired; their stages were requeued");
            }
            Err(e) => tracing::error!(error = %e, "reaper failed to expire leases"),
        }
        if now < judge_agents_from {
            continue;
        }
        match app
            .store
            .mark_lost_agents(now, app.config.online_ms())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(lost = n, "agents stopped heartbeating; marked lost"),
            Err(e) => tracing::error!(error = %e, "reaper failed to mark lost agents"),
        }
    }
}
