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
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::App;

pub async fn run(app: Arc<App>, stop: CancellationToken) {
    let tick = Duration::from_millis(app.config.reaper_tick_ms.max(10));
    let clock = app.config.clock.clone();
    let now_ms = || clock.now_ms();
    // Agents get one online window to reach a daemon that just started, as
    // their leases do (`SqlStore::resume`): silence while it was down is not theirs.
    let window = i64::try_from(app.config.online_ms()).unwrap_or(i64::MAX);
    let mut judge_agents_from = now_ms().saturating_add(window);
    app.health.register("reaper", tick);
    // Both clocks as the last wake-up read them: a stall is measured from
    // there, so one that begins while the store is asked is seen too.
    let mut mark = (Instant::now(), now_ms());
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
        let slept = Instant::now();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = now_ms();
        let ahead =
            (now - mark.1) - i64::try_from(mark.0.elapsed().as_millis()).unwrap_or(i64::MAX);
        let late = stalled_for(wait, slept.elapsed(), ahead);
        mark = (Instant::now(), now);
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

/// How late the reaper woke, when that is a stall rather than scheduling
/// noise: by the monotonic clock over its sleep (the process was stopped),
/// or by how far the wall clock that leases are kept in ran ahead of the
/// monotonic one since the last wake-up (the machine was suspended, or the
/// clock jumped ahead, even while the store was being asked).
fn stalled_for(asked: Duration, slept: Duration, ahead_ms: i64) -> Option<Duration> {
    let ahead = Duration::from_millis(u64::try_from(ahead_ms).unwrap_or(0));
    let late = slept.saturating_sub(asked).max(ahead);
    (late >= STALL).then_some(late)
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
        assert_eq!(stalled_for(s(1), Duration::from_millis(1_050), 40), None);
        // Stopped: both clocks went on while it slept.
        assert_eq!(stalled_for(s(1), s(36), 0), Some(s(35)));
        // Suspended: the monotonic clock stood still, the wall clock did not.
        assert_eq!(stalled_for(s(1), s(1), 60_000), Some(s(60)));
        // The wall clock went back: not a stall.
        assert_eq!(stalled_for(s(1), s(1), -5_000), None);
    }
}
