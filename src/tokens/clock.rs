//! A coarse wall clock for the per-request validity check.
//!
//! Reading the system clock costs ~28 ns on the machines we measure on — an eighth of what the
//! layer adds to a request. The hot path only compares the time with an expiry at least `skew`
//! (default 60 s) away and with the refresh-ahead start, so it reads this clock instead: unix
//! milliseconds in an atomic, written every [`TICK`] by one background thread (`orp-clock`,
//! started on first use; should it not start, the exact clock is read).
//!
//! [`now`] returns the ticked time plus one tick, so while the thread keeps up it is within a
//! millisecond or so of the real time, rounded up rather than down: a token is taken for valid
//! no longer than with the exact clock (give or take that millisecond, against a `skew` of
//! seconds), and a refresh-ahead starts at most a tick early. A thread that falls behind (a
//! starved machine) delays both by as much; it would have to fall `skew` behind for a token to
//! go out expired, and then the API's 401 refreshes and replays it as usual. Refreshes,
//! cooldowns and everything off the hot path read the exact clocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the clock is written.
pub(super) const TICK: Duration = Duration::from_millis(5);

/// Unix milliseconds at the last tick, once the ticking thread runs.
static UNIX_MS: OnceLock<Option<&'static AtomicU64>> = OnceLock::new();

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn start() -> Option<&'static AtomicU64> {
    let ms: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(unix_ms(SystemTime::now()))));
    std::thread::Builder::new()
        .name("orp-clock".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            ms.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        })
        .ok()
        .map(|_| ms)
}

/// The current wall-clock time, rounded up by a tick (see the module docs).
pub(super) fn now() -> SystemTime {
    match UNIX_MS.get_or_init(start) {
        Some(ms) => UNIX_EPOCH + Duration::from_millis(ms.load(Ordering::Relaxed)) + TICK,
        None => SystemTime::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_stays_within_a_few_ticks_of_the_exact_one() {
        for _ in 0..10_000 {
            let before = SystemTime::now();
            let coarse = now();
            let after = SystemTime::now();
            // Rounded up: at most a tick behind the real time (the tick itself may be late by
            // a scheduling delay; a second is far beyond any on a running test machine).
            assert!(coarse + Duration::from_secs(1) >= before);
            // And never more than a tick (plus the millisecond rounding) ahead.
            assert!(coarse <= after + TICK + Duration::from_millis(1));
        }
    }
}
