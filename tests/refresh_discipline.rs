//! Black-box tests of the refresh discipline (SPEC 2): the real binary in front of the crate's
//! fakes, with backends that answer oddly, late, or not at all. Every count is taken at the
//! fake backend; every test ends with the secret check of the child's trace-level stderr.
//!
//! - a success whose `expiresAt` is malformed keeps its token and its rotated refresh token;
//! - an attempt that timed out after sending is never followed by a second one while its
//!   answer is awaited, and its late rotation is applied (the next refresh sends it);
//! - a failing backend costs at most `max_attempts` calls per cooldown window;
//! - a backend's `Retry-After` sets the cooldown, and the proxy's 503s count it down;
//! - a token that comes back already expired costs one refresh per `min_interval`, while a
//!   401 for it refreshes at once.

mod support;

use std::time::{Duration, Instant};

use support::world::*;
use support::*;

/// A success answer of the backend for tokens the realm accepts: (body, refresh, access).
fn issued(realm: &Realm, expires_at: &str) -> (String, String, String) {
    let refresh = realm.new_refresh_token();
    let access = realm.new_access_token(&refresh);
    let body = format!(
        r#"{{"success": true, "token": "{access}", "accessToken": "{access}", "refreshToken": "{refresh}", "expiresAt": {expires_at}}}"#
    );
    (body, refresh, access)
}

/// The refresh token sent in the backend's `n`-th call (from 1).
fn sent_refresh_token(realm: &Realm, n: usize) -> String {
    let (_, _, body) = realm.backend_requests()[n - 1].clone();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["refresh_token"].as_str().unwrap().to_string()
}

/// The `/tokens` entry of `provider/account`.
async fn entry(sc: &Sidecar, provider: &str, account: &str) -> serde_json::Value {
    let a = sc.admin("GET", "/tokens", None, "").await;
    assert_eq!(a.status, 200);
    a.json()
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["provider"] == provider && e["account"] == account)
        .cloned()
        .unwrap_or_else(|| panic!("{provider}/{account} not listed"))
}

fn retry_after(a: &support::http_client::Answer) -> u64 {
    a.header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After on {} {}", a.status, a.text()))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_expires_at_never_loses_the_rotated_refresh_token() {
    let mut w = World::new("rdexp").await;
    let variants = [
        r#""1796197312""#,
        r#""2026-12-02T10:00:00Z""#,
        "true",
        r#"{"seconds": 1796197312}"#,
    ];
    let mut seeded = Vec::new();
    for i in 0..variants.len() {
        seeded.push(w.seed("github", &format!("octo{i}"), -60));
    }
    let sc = w.start(Opts::default()).await;
    for (i, expires) in variants.iter().enumerate() {
        let account = format!("octo{i}");
        let (old_refresh, _) = &seeded[i];
        let (body, rotated, access) = issued(&w.realm, expires);
        // A rotating backend: the old refresh token is dead once the answer is given.
        w.realm.revoke_refresh(old_refresh);
        w.realm.script([Reply::Status(200, body)]);
        let calls = w.realm.backend_calls.get();
        let a = sc.get_as(&account, "/github/user").await;
        assert_eq!(a.status, 200, "expiresAt {expires}: {}", a.text());
        assert_eq!(w.realm.backend_calls.get(), calls + 1);
        let e = entry(&sc, "github", &account).await;
        assert_eq!(e["needs_reauth"], false, "{e}");
        assert!(e["expires_at"].is_null(), "unknown expiry: {e}");

        // The token it answered with is used, and the next refresh sends the rotated one.
        w.realm.revoke_access(&access);
        let a = sc.get_as(&account, "/github/user").await;
        assert_eq!(
            a.status,
            200,
            "after revocation, expiresAt {expires}: {}",
            a.text()
        );
        let n = w.realm.backend_calls.get() as usize;
        assert_eq!(n as u64, calls + 2);
        assert_eq!(
            sent_refresh_token(&w.realm, n),
            rotated,
            "expiresAt {expires}"
        );
        assert_eq!(entry(&sc, "github", &account).await["needs_reauth"], false);
    }
    let logs = sc.finish_with_logs(&w.realm);
    assert!(
        logs.contains("expiresAt that is not a usable number"),
        "the malformed expiry is logged"
    );
    assert!(
        !logs.contains("1796197312"),
        "the value itself is not logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_attempt_is_never_repeated_and_its_late_rotation_is_kept() {
    let mut w = World::new("rdlate").await;
    let (r0, _) = w.seed("github", "octo", -60);
    let sc = w
        .start(Opts {
            refresh: "timeout = \"1s\"\nmax_attempts = 3",
            ..Opts::default()
        })
        .await;
    // The backend takes the request and answers only when the test lets it (after the 1 s
    // timeout has been observed by the caller): a slow, rotating backend.
    w.realm.script([Reply::Gated]);
    let started = Instant::now();
    let a = sc.get_as("octo", "/github/user").await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.code(), "refresh_unavailable");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(retry_after(&a) >= 1);
    assert_eq!(w.realm.backend_calls.get(), 1);
    assert_eq!(w.realm.api_calls.get(), 0);

    // While the answer is awaited, no new attempt: more requests, still one backend call.
    for _ in 0..20 {
        let a = sc.get_as("octo", "/github/user").await;
        assert_eq!(a.status, 503);
        assert!(retry_after(&a) >= 1);
    }
    assert_eq!(
        w.realm.backend_calls.get(),
        1,
        "the refresh token was sent once"
    );
    let m = sc.metrics().await;
    assert_eq!(
        metric(&m, "orp_refresh_cooldown_total", &[("provider", "github")]),
        Some(20.0)
    );

    // The backend answers (rotating: r0 is dead from now on). The late answer is applied.
    w.realm.release_backend(1);
    let deadline = Instant::now() + WAIT;
    while entry(&sc, "github", "octo").await["last_refresh_at"].is_null() {
        assert!(
            Instant::now() < deadline,
            "the late answer was never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // bounded polling
    }
    let a = sc.get_as("octo", "/github/user").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(w.realm.backend_calls.get(), 1, "served with the late token");

    // The next refresh sends the rotated refresh token, not r0: the account stays alive.
    let latest_access = w
        .realm
        .seen()
        .last()
        .and_then(|s| s.authorization.clone())
        .unwrap();
    w.realm
        .revoke_access(latest_access.strip_prefix("Bearer ").unwrap());
    let a = sc.get_as("octo", "/github/user").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(w.realm.backend_calls.get(), 2);
    let second = sent_refresh_token(&w.realm, 2);
    assert_ne!(
        second, r0,
        "the possibly spent refresh token was sent again"
    );
    assert!(
        second.ends_with('r'),
        "the rotated refresh token was sent: {second}"
    );
    assert_eq!(entry(&sc, "github", "octo").await["needs_reauth"], false);
    let logs = sc.finish_with_logs(&w.realm);
    assert!(
        logs.contains("late refresh answer arrived"),
        "late answer logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_for_60s_costs_max_attempts_calls_per_cooldown_window() {
    const ACCOUNTS: usize = 3;
    let mut w = World::new("rdstorm").await;
    for i in 0..ACCOUNTS {
        w.seed("google", &format!("acct{i}"), -60);
    }
    let sc = w
        .start(Opts {
            refresh: "max_attempts = 3\ntimeout = \"2s\"",
            ..Opts::default()
        })
        .await;
    let down = r#"{"success": false, "message": "internal error"}"#;
    w.realm
        .script((0..1000).map(|_| Reply::Status(500, down.into())));
    let run_for = Duration::from_secs(60);
    let started = Instant::now();
    let ask = |i: usize| {
        let sc = &sc;
        async move {
            let account = format!("acct{i}");
            let (mut answers, mut max_retry_after) = (0u64, 0u64);
            let mut pace = tokio::time::interval(Duration::from_millis(20));
            while started.elapsed() < run_for {
                pace.tick().await;
                let a = sc.get_as(&account, "/google/drive/v3/files").await;
                assert_eq!(a.status, 503, "{}", a.text());
                assert_eq!(a.code(), "refresh_unavailable");
                let after = retry_after(&a);
                assert!((1..=300).contains(&after), "Retry-After {after}");
                max_retry_after = max_retry_after.max(after);
                answers += 1;
            }
            (answers, max_retry_after)
        }
    };
    let (a0, a1, a2) = tokio::join!(ask(0), ask(1), ask(2));
    let results = [a0, a1, a2];
    assert_eq!(results.len(), ACCOUNTS);
    let calls = w.realm.backend_calls.get();
    // Cycles start at t = 0, then after cooldowns of 5, 10 and 20 s (+ up to 10% jitter, + the
    // cycles' own backoffs, under 1 s each): 4 cycles fit in 60 s, the 5th would start after
    // 75 s. Each cycle is max_attempts = 3 calls.
    assert_eq!(
        calls,
        (ACCOUNTS * 4 * 3) as u64,
        "backend calls in 60 s of failure for {ACCOUNTS} accounts"
    );
    for (answers, max_retry_after) in &results {
        assert!(*answers > 1000, "the callers kept asking: {answers}");
        assert!(
            (40..=44).contains(max_retry_after),
            "the cooldown doubled per cycle, 5, 10, 20, then 40 s: {max_retry_after}"
        );
    }
    assert_eq!(w.realm.api_calls.get(), 0);
    let m = sc.metrics().await;
    let cooldown = metric(&m, "orp_refresh_cooldown_total", &[("provider", "google")]).unwrap();
    let answered: u64 = results.iter().map(|(a, _)| a).sum();
    assert!(
        cooldown as u64 >= answered - (ACCOUNTS as u64 * 4),
        "every answer but the cycles' own came from the cooldown: {cooldown} of {answered}"
    );
    assert_eq!(
        metric(
            &m,
            "orp_refresh_total",
            &[("provider", "google"), ("outcome", "transient_error")]
        ),
        Some((ACCOUNTS * 4) as f64),
        "one failed cycle per cooldown window"
    );
    sc.finish(&w.realm);
}

/// A refresh backend that answers every call `503` with `Retry-After: 30`; returns its URL
/// and its call counter.
async fn busy_backend() -> (String, Count) {
    let calls = Count::default();
    let counted = calls.clone();
    let addr = serve(move |_req| {
        let counted = counted.clone();
        async move {
            counted.bump();
            http::Response::builder()
                .status(503)
                .header("retry-after", "30")
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    br#"{"success": false, "message": "busy"}"#,
                )))
                .unwrap()
        }
    })
    .await;
    (format!("http://{addr}"), calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_retry_after_sets_the_cooldown() {
    let mut w = World::new("rdbusy").await;
    w.seed("google", "alice", -60);
    let (busy, calls) = busy_backend().await;
    w.backend = busy;
    let sc = w
        .start(Opts {
            refresh: "max_attempts = 3",
            ..Opts::default()
        })
        .await;
    let a = sc.get_as("alice", "/google/drive/v3/files").await;
    assert_eq!(a.status, 503);
    let first = retry_after(&a);
    assert!((30..=33).contains(&first), "Retry-After {first}");
    // 30 s is more than the retry budget's backoff: the cycle ended after one call.
    assert_eq!(calls.get(), 1);
    let mut last = first;
    for _ in 0..50 {
        let a = sc.get_as("alice", "/google/drive/v3/files").await;
        assert_eq!(a.status, 503);
        let left = retry_after(&a);
        assert!(
            left <= last && left >= 1,
            "counts down: {left} after {last}"
        );
        last = left;
    }
    assert_eq!(calls.get(), 1, "no backend call during the cooldown");
    assert_eq!(w.realm.api_calls.get(), 0);
    sc.finish(&w.realm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_comes_back_expired_costs_one_refresh_per_min_interval() {
    let mut w = World::new("rdmin").await;
    w.seed("google", "alice", -60);
    let sc = w
        .start(Opts {
            refresh: "min_interval = \"3s\"\nskew = \"60s\"\nrefresh_ahead = \"5m\"",
            ..Opts::default()
        })
        .await;
    // Every answer is already expired, or inside skew, or inside refresh_ahead.
    let now = now_secs();
    let answers: Vec<(String, String, String)> = [now - 100, now + 30, now + 200, now - 5]
        .iter()
        .map(|t| issued(&w.realm, &t.to_string()))
        .collect();
    w.realm.script(
        answers
            .iter()
            .map(|(body, _, _)| Reply::Status(200, body.clone())),
    );
    let started = Instant::now();
    for i in 0..10 {
        let a = sc.get_as("alice", "/google/drive/v3/files").await;
        assert_eq!(a.status, 200, "request {i}: {}", a.text());
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the 10 requests took too long to mean anything"
    );
    assert_eq!(w.realm.backend_calls.get(), 1, "10 requests, one refresh");

    // Once min_interval has passed, the next request refreshes again (once).
    let deadline = Instant::now() + WAIT;
    while w.realm.backend_calls.get() < 2 {
        assert!(Instant::now() < deadline, "no second refresh");
        let a = sc.get_as("alice", "/google/drive/v3/files").await;
        assert_eq!(a.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await; // pacing
    }
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before min_interval"
    );
    for _ in 0..10 {
        assert_eq!(
            sc.get_as("alice", "/google/drive/v3/files").await.status,
            200
        );
    }
    assert_eq!(w.realm.backend_calls.get(), 2);

    // A 401 for the current generation refreshes at once, whatever min_interval says.
    w.realm.revoke_access(&answers[1].2);
    let a = sc.get_as("alice", "/google/drive/v3/files").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(w.realm.backend_calls.get(), 3);
    assert!(started.elapsed() < Duration::from_secs(6) + WAIT);
    sc.finish(&w.realm);
}
