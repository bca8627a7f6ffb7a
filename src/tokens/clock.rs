//! The cache's clocks: a coarse wall clock for the per-request validity check, and the compact
//! times the entries keep ([`UnixMs`] for wall-clock times, [`MonoMs`] for monotonic ones; 8
//! bytes each, `Option` included, where `SystemTime` and `Instant` take 16 — at a million
//! cached accounts, 40 MB; [`UnixSecs`], 4 bytes, for the last refresh time, which is only
//! ever reported in whole seconds).
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

use std::num::{NonZeroU32, NonZeroU64};
use std::ops::{Add, Sub};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// A wall-clock time in unix milliseconds, as the cache entries keep their times: 8 bytes
/// where a `SystemTime` takes 16, and never zero, so an `Option<UnixMs>` takes 8 too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct UnixMs(NonZeroU64);

impl UnixMs {
    /// The exact time.
    pub(super) fn now() -> UnixMs {
        UnixMs::of(SystemTime::now())
    }

    /// The coarse time (see the module docs): for the per-request checks.
    pub(super) fn coarse() -> UnixMs {
        match UNIX_MS.get_or_init(start) {
            Some(ms) => UnixMs::from_ms(ms.load(Ordering::Relaxed)) + TICK,
            None => UnixMs::now(),
        }
    }

    /// `t`, to the millisecond (times before the epoch read as its first millisecond).
    pub(super) fn of(t: SystemTime) -> UnixMs {
        UnixMs::from_ms(unix_ms(t))
    }

    fn from_ms(ms: u64) -> UnixMs {
        UnixMs(NonZeroU64::new(ms).unwrap_or(NonZeroU64::MIN))
    }

    /// As a `SystemTime`.
    pub(super) fn time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.get())
    }

    /// Whole unix seconds, for listings and records.
    pub(super) fn unix_secs(self) -> u64 {
        self.0.get() / 1000
    }
}

/// A wall-clock time in whole unix seconds, never zero (the first second stands for any time
/// before it) and saturating in 2106: 4 bytes, `Option` included. For times that are only
/// reported in seconds (an entry's last refresh), so the entry fits a smaller allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct UnixSecs(NonZeroU32);

impl UnixSecs {
    /// `t`, truncated to the second.
    pub(super) fn of(t: UnixMs) -> UnixSecs {
        let secs = u32::try_from(t.unix_secs()).unwrap_or(u32::MAX);
        UnixSecs(NonZeroU32::new(secs).unwrap_or(NonZeroU32::MIN))
    }

    /// Whole unix seconds, for listings and records.
    pub(super) fn unix_secs(self) -> u64 {
        u64::from(self.0.get())
    }
}

/// A monotonic time in milliseconds since the cache's clock was first read (plus one: never
/// zero), as the entries keep their cooldown and last-refresh instants: 8 bytes where an
/// `Instant` takes 16, `Option` included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct MonoMs(NonZeroU64);

static ORIGIN: OnceLock<Instant> = OnceLock::new();

impl MonoMs {
    /// Now.
    pub(super) fn now() -> MonoMs {
        let ms = ORIGIN.get_or_init(Instant::now).elapsed().as_millis();
        MonoMs(NonZeroU64::MIN.saturating_add(u64::try_from(ms).unwrap_or(u64::MAX - 1)))
    }

    /// The time since `self` (zero when `self` is later).
    pub(super) fn elapsed(self) -> Duration {
        Duration::from_millis(MonoMs::now().0.get().saturating_sub(self.0.get()))
    }

    /// The time left until `self`; `None` when it has passed.
    pub(super) fn left(self) -> Option<Duration> {
        self.0
            .get()
            .checked_sub(MonoMs::now().0.get())
            .map(Duration::from_millis)
    }
}

impl Add<Duration> for MonoMs {
    type Output = MonoMs;

    fn add(self, d: Duration) -> MonoMs {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        MonoMs(self.0.saturating_add(ms))
    }
}

impl Add<Duration> for UnixMs {
    type Output = UnixMs;

    fn add(self, d: Duration) -> UnixMs {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        UnixMs::from_ms(self.0.get().saturating_add(ms))
    }
}

impl Sub<Duration> for UnixMs {
    type Output = UnixMs;

    fn sub(self, d: Duration) -> UnixMs {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        UnixMs::from_ms(self.0.get().saturating_sub(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_stays_within_a_few_ticks_of_the_exact_one() {
        for _ in 0..10_000 {
            let before = SystemTime::now();
            let coarse = UnixMs::coarse().time();
            let after = SystemTime::now();
            // Rounded up: at most a tick behind the real time (the tick itself may be late by
            // a scheduling delay; a second is far beyond any on a running test machine).
            assert!(coarse + Duration::from_secs(1) >= before);
            // And never more than a tick (plus the millisecond rounding) ahead.
            assert!(coarse <= after + TICK + Duration::from_millis(1));
        }
    }

    #[test]
    fn unix_ms_round_trips_and_saturates() {
        let t = UNIX_EPOCH + Duration::from_millis(1_767_229_200_123);
        assert_eq!(UnixMs::of(t).time(), t);
        assert_eq!(UnixMs::of(t).unix_secs(), 1_767_229_200);
        assert_eq!(
            (UnixMs::of(t) + Duration::from_secs(1)).time(),
            t + Duration::from_secs(1)
        );
        assert_eq!(
            (UnixMs::of(t) - Duration::from_secs(1)).time(),
            t - Duration::from_secs(1)
        );
        assert_eq!(
            UnixMs::of(UNIX_EPOCH) - Duration::from_secs(5),
            UnixMs::of(UNIX_EPOCH)
        );
        assert_eq!(UnixMs::of(t) + Duration::MAX, UnixMs::from_ms(u64::MAX));
        assert_eq!(std::mem::size_of::<Option<UnixMs>>(), 8);
    }

    #[test]
    fn unix_secs_truncate_and_saturate() {
        let t = UNIX_EPOCH + Duration::from_millis(1_767_229_200_999);
        assert_eq!(UnixSecs::of(UnixMs::of(t)).unix_secs(), 1_767_229_200);
        assert_eq!(UnixSecs::of(UnixMs::of(UNIX_EPOCH)).unix_secs(), 1);
        assert_eq!(
            UnixSecs::of(UnixMs::from_ms(u64::MAX)).unix_secs(),
            u64::from(u32::MAX)
        );
        assert_eq!(std::mem::size_of::<Option<UnixSecs>>(), 4);
    }

    #[test]
    fn mono_ms_counts_time_left_and_elapsed() {
        let now = MonoMs::now();
        let later = now + Duration::from_secs(60);
        assert!(later.left().unwrap() > Duration::from_secs(59));
        assert_eq!(now.left().map_or(Duration::ZERO, |d| d), Duration::ZERO);
        assert!(later.elapsed() == Duration::ZERO && now.elapsed() < Duration::from_secs(60));
        assert_eq!(std::mem::size_of::<Option<MonoMs>>(), 8);
    }
}
