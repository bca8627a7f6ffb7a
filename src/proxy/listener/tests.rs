//! The listener's unit tests.

use http::Version;

use super::connection::{Expiry, Wait, Waiting};
use super::*;

#[test]
fn throttle_admits_one_line_a_second_and_counts_the_rest() {
    let mut t = Throttle::default();
    let t0 = Instant::now();
    assert_eq!(t.admit(t0), Some(0));
    for i in 1..=5 {
        assert_eq!(t.admit(t0 + Duration::from_millis(i * 100)), None);
    }
    assert_eq!(t.admit(t0 + Duration::from_millis(1000)), Some(5));
    assert_eq!(t.admit(t0 + Duration::from_millis(1500)), None);
    // The tail of a burst is reported once a line may be logged again.
    assert_eq!(t.held_back(t0 + Duration::from_millis(1900)), None);
    assert_eq!(t.held_back(t0 + Duration::from_millis(2000)), Some(1));
    assert_eq!(
        t.held_back(t0 + Duration::from_millis(3500)),
        None,
        "nothing held back"
    );
    assert_eq!(t.admit(t0 + Duration::from_millis(2500)), None);
    assert_eq!(t.admit(t0 + Duration::from_millis(3000)), Some(1));
}

#[test]
fn max_connections_fits_under_the_descriptor_limit() {
    assert_eq!(fit_max_connections(10_000, 1 << 20), 10_000);
    assert_eq!(fit_max_connections(10_000, 20_512), 10_000);
    assert_eq!(fit_max_connections(10_000, 20_511), 9_999);
    assert_eq!(fit_max_connections(50, 1_024), 50);
    assert_eq!(fit_max_connections(10_000, 1_024), 256);
    assert_eq!(fit_max_connections(10_000, 512), 1);
    assert_eq!(fit_max_connections(10_000, 0), 1);
    // RLIM_INFINITY.
    assert_eq!(fit_max_connections(10_000, u64::MAX), 10_000);
}

fn limits() -> Limits {
    Limits {
        listener: "proxy",
        header_read_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        max_connections: 1,
    }
}

#[tokio::test]
async fn waits_follow_requests_and_bytes() {
    let limits = limits();
    let secs = Duration::from_secs;
    let t0 = Instant::now();
    let a = Arc::new(Activity::new(t0, &limits));
    // A new connection waits for its first head.
    assert_eq!(
        a.wait(&limits),
        Some(Wait {
            waiting: Waiting::Head,
            since: t0,
            at: t0 + secs(2)
        })
    );
    // Bytes of the first head change nothing.
    a.read();
    assert_eq!(a.wait(&limits).unwrap().at, t0 + secs(2));
    let g1 = a.start(Version::HTTP_11);
    let g2 = a.start(Version::HTTP_11);
    assert_eq!(a.wait(&limits), None);
    drop(g1);
    assert_eq!(a.wait(&limits), None, "one still in flight");
    drop(g2);
    let w = a.wait(&limits).unwrap();
    assert_eq!(w.waiting, Waiting::Idle);
    assert_eq!(w.at, w.since + secs(5));
    assert!(w.since >= t0);
    // HTTP/1.1: the first byte of the next head starts the head clock, once.
    a.read();
    let head = a.wait(&limits).unwrap();
    assert_eq!(head.waiting, Waiting::Head);
    assert_eq!(head.at, head.since + secs(2));
    a.read();
    assert_eq!(a.wait(&limits), Some(head));

    // A blocked write while in flight: the client has idle_timeout to read.
    let g = a.start(Version::HTTP_11);
    assert_eq!(a.wait(&limits), None);
    a.wrote(false);
    assert_eq!(a.wait(&limits), None);
    a.wrote(true);
    let w = a.wait(&limits).unwrap();
    assert_eq!(w.waiting, Waiting::Reader);
    assert_eq!(w.at, w.since + secs(5));
    assert_eq!(a.due(&limits, Some(t0)), Some((w.at, Expiry::Stalled)));
    a.wrote(true);
    assert_eq!(a.wait(&limits), Some(w), "the first blocked write counts");
    a.wrote(false);
    assert_eq!(a.wait(&limits), None);
    drop(g);

    // HTTP/2: bytes on an idle connection (PING, WINDOW_UPDATE) are no activity.
    let a = Arc::new(Activity::new(t0, &limits));
    drop(a.start(Version::HTTP_2));
    a.read();
    assert_eq!(a.wait(&limits).unwrap().waiting, Waiting::Idle);
}

#[tokio::test]
async fn closing_caps_every_wait_at_the_grace() {
    let limits = limits();
    let secs = Duration::from_secs;
    let t0 = Instant::now();
    let a = Arc::new(Activity::new(t0, &limits));
    // Not closing: the head deadline.
    assert_eq!(a.due(&limits, None), Some((t0 + secs(2), Expiry::Head)));
    // Closing at once: the grace comes first.
    assert_eq!(
        a.due(&limits, Some(t0)),
        Some((t0 + CLOSE_GRACE, Expiry::Close))
    );
    // Closing late: the head deadline stays the bound.
    assert_eq!(
        a.due(&limits, Some(t0 + secs(5))),
        Some((t0 + secs(2), Expiry::Head))
    );
    // In flight: no deadline, closing or not.
    let g = a.start(Version::HTTP_11);
    assert_eq!(a.due(&limits, Some(t0)), None);
    drop(g);
    let idle = a.wait(&limits).unwrap();
    assert_eq!(a.due(&limits, None), Some((idle.at, Expiry::Idle)));
    // Asked to close before the request ended: the grace counts from its end.
    assert_eq!(
        a.due(&limits, Some(t0)),
        Some((idle.since + CLOSE_GRACE, Expiry::Close))
    );
}

/// Whether the watchdog was woken since last asked (consumes the wake-up).
fn woken(a: &Activity) -> bool {
    let notified = a.wake.notified();
    tokio::pin!(notified);
    notified.enable()
}

#[tokio::test]
async fn only_deadlines_earlier_than_the_watchdogs_timer_wake_it() {
    let limits = limits();
    let a = Arc::new(Activity::new(Instant::now(), &limits));
    // The watchdog sets its timer to the first head's deadline.
    let (first_head, expiry) = a.arm(&limits, None).unwrap();
    assert_eq!(expiry, Expiry::Head);
    // A busy keep-alive connection: each new wait ends later than the timer, nothing wakes it.
    for _ in 0..3 {
        drop(a.start(Version::HTTP_11));
        assert!(!woken(&a), "idle deadline after the timer");
        a.read();
        assert!(!woken(&a), "head deadline after the timer");
    }
    // When the timer fires, the watchdog finds the current wait not due and sets its timer to
    // it (the loop in `Connection::run`).
    let (head, expiry) = a.arm(&limits, None).unwrap();
    assert_eq!(expiry, Expiry::Head);
    assert!(head >= first_head);
    // Set to an idle deadline (5 s), a head (2 s) starting now is earlier: woken.
    drop(a.start(Version::HTTP_11));
    assert!(!woken(&a));
    assert_eq!(a.arm(&limits, None).unwrap().1, Expiry::Idle);
    a.read();
    assert!(woken(&a), "head deadline before the timer");
    // No timer while a request is in flight: its end, and a blocked write, wake it.
    let g = a.start(Version::HTTP_11);
    assert_eq!(a.arm(&limits, None), None);
    a.wrote(true);
    assert!(woken(&a), "blocked write");
    a.wrote(false);
    assert_eq!(a.arm(&limits, None), None);
    drop(g);
    assert!(woken(&a), "end of the request in flight");
    // Closing: every new wait wakes it (the grace counts from when the wait began).
    a.arm(&limits, Some(Instant::now()));
    drop(a.start(Version::HTTP_11));
    assert!(woken(&a), "closing");
}
