//! The wall clock, in Unix milliseconds: the time every row, lease and
//! event is stamped with.
//!
//! [`now_ms`] reads the system clock. [`Clock`] is the same question asked
//! of a value, so that code which decides by the time (lease expiry,
//! agents going offline, retry delays) can be handed [`SystemClock`] in
//! production and a [`ManualClock`] in tests, which then move time on
//! instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds; 0 when the system clock is before 1970, and
/// `i64::MAX` past the year 292 million.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A source of the current time in Unix milliseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time in Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock ([`now_ms`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// A clock that stands still until it is set or advanced, for tests. Clones
/// share one time: hand a clone to the code under test and move the
/// original.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    ms: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock showing `ms` (Unix milliseconds).
    pub fn new(ms: i64) -> Self {
        ManualClock {
            ms: Arc::new(AtomicI64::new(ms)),
        }
    }

    /// A clock showing the system's time now, standing still from there.
    pub fn at_now() -> Self {
        ManualClock::new(now_ms())
    }

    /// Shows `ms` from now on (it may go back).
    pub fn set(&self, ms: i64) {
        self.ms.store(ms, Ordering::SeqCst);
    }

    /// Moves the time on by `by` and returns the new time.
    pub fn advance(&self, by: Duration) -> i64 {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.advance_ms(by)
    }

    /// Moves the time on by `ms` milliseconds (back, when negative) and
    /// returns the new time.
    pub fn advance_ms(&self, ms: i64) -> i64 {
        self.ms.fetch_add(ms, Ordering::SeqCst).saturating_add(ms)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.ms.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> i64 {
        (**self).now_ms()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now_ms(&self) -> i64 {
        (**self).now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_is_the_wall_clock() {
        let before = now_ms();
        let read = SystemClock.now_ms();
        assert!(read >= before && read - before < 60_000, "{before} {read}");
        // After 2020: a clock read in seconds or microseconds would be far off.
        assert!(
            read > 1_577_836_800_000 && read < 4_102_444_800_000,
            "{read}"
        );
    }

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_follow() {
        let clock = ManualClock::new(1_000);
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        assert_eq!(shared.now_ms(), 1_000);
        assert_eq!(clock.advance(Duration::from_secs(2)), 3_000);
        assert_eq!(shared.now_ms(), 3_000);
        assert_eq!(clock.advance_ms(-500), 2_500);
        clock.set(10);
        assert_eq!(shared.now_ms(), 10);
        let by_ref: &dyn Clock = &&clock;
        assert_eq!(by_ref.now_ms(), 10);
    }
}
