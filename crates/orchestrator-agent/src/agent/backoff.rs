//! Capped exponential backoff between tries at the daemon: 100 ms, doubling, at most 5 s.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First delay before retrying a failed request.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest delay between retries.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Capped exponential backoff: 100 ms, doubling, at most 5 s.
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }

    pub(super) fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }

    /// Sleeps the next delay; false when `stop` fired first.
    pub(super) async fn sleep(&mut self, stop: &CancellationToken) -> bool {
        let d = self.next_delay();
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = stop.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new();
        let delays: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_FIRST);
    }
}
