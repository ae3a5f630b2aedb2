//! The lease reaper: expires leases whose agents stopped heartbeating, which
//! requeues their stages, and marks those agents lost. It sleeps until the
//! earliest lease could expire (at most `tick`), so an idle daemon does
//! almost nothing.
//!
//! Lease time counts only while the daemon could hear heartbeats. When the
//! reaper wakes much later than it asked to (the daemon was stopped with
//! SIGSTOP, the machine suspended, the wall clock jumped ahead), agents'
//! heartbeats went unheard for reasons of the daemon's own: every active
//! lease gets its full time again from now, and agents a new online window,
//! before anything is expired.

use std::sync::Arc;
use std::time::Duration;

use orchestrator_host::now_ms;
use orchestrator_store::Store;
use tokio_util::sync::CancellationToken;

use crate::App;

pub async fn run<S: Store>(app: Arc<App<S>>, stop: CancellationToken) {
    let tick = Duration::from_millis(app.config.reaper_tick_ms.max(10));
    // Agents get one online window to reach a daemon that just started, as
    // their leases do (`Store::resume`): silence while it was down is not theirs.
    let window = i64::try_from(app.config.online_ms()).unwrap_or(i64::MAX);
    let mut judge_agents_from = now_ms().saturating_add(window);
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
        let (mono, wall) = (std::time::Instant::now(), now_ms());
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = now_ms();
        let late = stalled_for(wait, mono.elapsed(), now - wall);
        if let Some(late) = late {
            match app.store.resume(app.config.lease_ttl_ms).await {
                Ok(n) => tracing::warn!(
                    stalled_ms = late.as_millis() as u64,
                    leases = n,
                    "the daemon did not run for a while (stopped, suspended, or the clock jumped); its leases get their full time again"
                ),
                Err(e) => tracing::error!(error = %e, "reaper could not give leases their time back after a stall"),
            }
            judge_agents_from = now.saturating_add(window);
            continue;
        }
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

/// How far past what it asked the reaper woke, when that is a stall rather
/// than scheduling noise: by the monotonic clock (the process was stopped)
/// or by the wall clock that leases are kept in (the machine was suspended,
/// or the clock jumped ahead).
fn stalled_for(asked: Duration, mono: Duration, wall_ms: i64) -> Option<Duration> {
    let wall = Duration::from_millis(u64::try_from(wall_ms).unwrap_or(0));
    let woke = mono.max(wall);
    woke.checked_sub(asked).filter(|late| *late >= STALL)
}

/// A wake-up this late is a stall. Far below any lease time that makes
/// sense, far above the scheduling delay of a loaded machine.
const STALL: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_wake_by_either_clock_is_a_stall_and_noise_is_not() {
        let s = Duration::from_secs;
        assert_eq!(stalled_for(s(1), Duration::from_millis(1_050), 1_040), None);
        assert_eq!(stalled_for(s(1), s(36), 36_000), Some(s(35)));
        // Suspended: the monotonic clock stood still, the wall clock did not.
        assert_eq!(stalled_for(s(1), s(1), 61_000), Some(s(60)));
        // The wall clock went back: not a stall.
        assert_eq!(stalled_for(s(1), s(1), -5_000), None);
    }
}
