//! The time the rules see. Every expiry, grace and idle judgement, and every
//! timestamp written, takes its time from the [`Clock`] in `Services`, never
//! from `Utc::now()` directly, so tests can move time forward instead of
//! sleeping through a token's lifetime.
//!
//! A server always runs on [`Clock::system`]. [`ClockControl`] makes a clock
//! that reads the system time plus an offset that only grows: time still
//! passes, and a test can jump it ahead (an hour of refresh-token lifetime in
//! no time). The rate limiters refill on it too ([`Clock::elapsed`]); timers
//! (the purge and flush intervals) keep real time.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Duration as ChronoDuration, Utc};

/// A source of the current time (UTC). Cheap to clone; clones share the offset.
#[derive(Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the system time; `None` on a server.
    offset_ms: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Self { offset_ms: None }
    }

    /// Now.
    pub fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        match &self.offset_ms {
            None => now,
            Some(offset) => now + ChronoDuration::milliseconds(offset.load(Ordering::SeqCst)),
        }
    }

    /// How far ahead of the system clock this clock is, in microseconds (0 on a
    /// server): what a query that reads the database's clock adds to it.
    pub fn offset_micros(&self) -> i64 {
        self.offset_ms.as_ref().map_or(0, |offset| offset.load(Ordering::SeqCst).saturating_mul(1000))
    }

    /// Now, as Unix time in seconds (what JWT claims hold).
    pub fn unix(&self) -> i64 {
        self.now().timestamp()
    }

    /// Time since a fixed point early in the process, monotonic (never moved
    /// back by the system clock being set), plus the offset: what the rate
    /// limiters count their refills in.
    pub fn elapsed(&self) -> Duration {
        static START: OnceLock<Instant> = OnceLock::new();
        let monotonic = START.get_or_init(Instant::now).elapsed();
        match &self.offset_ms {
            None => monotonic,
            Some(offset) => monotonic + Duration::from_millis(offset.load(Ordering::SeqCst).max(0) as u64),
        }
    }
}

/// The rate limiters (governor) read the same clock, so their refill can be
/// tested by moving it too.
impl governor::clock::Clock for Clock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.elapsed()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.offset_ms {
            None => f.write_str("Clock::system"),
            Some(offset) => write!(f, "Clock::system+{}ms", offset.load(Ordering::SeqCst)),
        }
    }
}

/// Moves a clock forward (tests and benchmarks; a server has none).
#[derive(Clone, Default)]
pub struct ClockControl {
    offset_ms: Arc<AtomicI64>,
}

impl ClockControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// The clock this control moves.
    pub fn clock(&self) -> Clock {
        Clock { offset_ms: Some(self.offset_ms.clone()) }
    }

    /// Moves the clock `by` ahead (millisecond resolution).
    pub fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_controlled_clock_jumps_ahead_and_its_clones_follow() {
        let control = ClockControl::new();
        let clock = control.clock();
        let copy = clock.clone();
        let before = clock.now();
        control.advance(Duration::from_secs(3600));
        let after = copy.now();
        assert!(after - before >= ChronoDuration::seconds(3600), "{before} → {after}");
        assert!(after - before < ChronoDuration::seconds(3660));
        let system = Clock::system().now();
        assert!((system - before).num_seconds().abs() < 60);
    }
}
