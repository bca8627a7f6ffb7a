//! The metrics' unit tests.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use std::time::{Duration, SystemTime};

use super::*;
use crate::refresh::{RefreshError, Refreshed, RetryPolicy};
use crate::token::{Secret, TokenSeed};

const SECRETS: [&str; 4] = [
    "REFRESH-SECRET-1",
    "ACCESS-SECRET-1",
    "NEW-ACCESS-SECRET",
    "ROTATED-SECRET",
];

use crate::refresh::scripted::{Script, Scripted};

fn setup() -> (Tokens, Arc<Script>) {
    let script = Script::new(Refreshed {
        access_token: Secret::new("NEW-ACCESS-SECRET"),
        refresh_token: Some(Secret::new("ROTATED-SECRET")),
        expires_at: Some(SystemTime::now() + Duration::from_secs(3600)),
    });
    let tokens = Tokens::builder(Scripted(script.clone()))
        .retry(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .build();
    (tokens, script)
}

/// Sample lines (`name{labels}` → value), comments excluded.
fn samples(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("sample line");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn value(text: &str, key: &str) -> String {
    samples(text)
        .get(key)
        .cloned()
        .unwrap_or_else(|| panic!("no sample {key} in\n{text}"))
}

#[test]
fn metrics_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Metrics>();
}

#[tokio::test]
async fn fresh_registry_has_every_family_at_zero() {
    let (tokens, _) = setup();
    let m = Metrics::new(tokens);
    let text = m.render();
    let types: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect();
    // Families without any label set yet (requests, upstream) are left out entirely.
    for t in [
        "orp_refresh_duration_seconds histogram",
        "orp_refresh counter",
        "orp_refresh_coalesced counter",
        "orp_refresh_cooldown counter",
        "orp_replay counter",
        "orp_tokens gauge",
        "orp_connections gauge",
        "orp_webhook counter",
    ] {
        assert!(types.contains(&t), "missing TYPE {t} in\n{text}");
    }
    for p in ["google", "github"] {
        for o in ["success", "rejected", "transient_error"] {
            assert_eq!(
                value(
                    &text,
                    &format!("orp_refresh_total{{provider=\"{p}\",outcome=\"{o}\"}}")
                ),
                "0"
            );
        }
        assert_eq!(
            value(
                &text,
                &format!("orp_refresh_coalesced_total{{provider=\"{p}\"}}")
            ),
            "0"
        );
        assert_eq!(
            value(
                &text,
                &format!("orp_refresh_cooldown_total{{provider=\"{p}\"}}")
            ),
            "0"
        );
        for o in ["replayed", "not_replayable"] {
            assert_eq!(
                value(
                    &text,
                    &format!("orp_replay_total{{provider=\"{p}\",outcome=\"{o}\"}}")
                ),
                "0"
            );
        }
        for s in ["valid", "expired", "needs_reauth"] {
            assert_eq!(
                value(
                    &text,
                    &format!("orp_tokens{{provider=\"{p}\",state=\"{s}\"}}")
                ),
                "0"
            );
        }
        assert_eq!(
            value(
                &text,
                &format!("orp_refresh_duration_seconds_count{{provider=\"{p}\"}}")
            ),
            "0"
        );
    }
    // Every sample belongs to a contract family.
    let families = [
        "orp_requests_total",
        "orp_upstream_request_duration_seconds_",
        "orp_refresh_total",
        "orp_refresh_duration_seconds_",
        "orp_refresh_coalesced_total",
        "orp_refresh_cooldown_total",
        "orp_replay_total",
        "orp_tokens{",
        "orp_connections{",
        "orp_webhook_total{",
    ];
    for k in samples(&text).keys() {
        assert!(
            families.iter().any(|f| k.starts_with(f)),
            "unexpected sample {k}"
        );
    }
    for l in LISTENERS {
        assert_eq!(
            value(&text, &format!("orp_connections{{listener=\"{l}\"}}")),
            "0"
        );
    }
    for o in WEBHOOK_OUTCOMES {
        assert_eq!(
            value(&text, &format!("orp_webhook_total{{outcome=\"{o}\"}}")),
            "0"
        );
    }
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn connection_gauges_move_per_listener() {
    let (tokens, _) = setup();
    let m = Metrics::new(tokens);
    let proxy = m.connections("proxy");
    let admin = m.connections("admin");
    for _ in 0..3 {
        proxy.inc();
    }
    admin.inc();
    proxy.dec();
    let text = m.render();
    assert!(text.contains("# TYPE orp_connections gauge\n"), "{text}");
    assert_eq!(value(&text, "orp_connections{listener=\"proxy\"}"), "2");
    assert_eq!(value(&text, "orp_connections{listener=\"admin\"}"), "1");
    // A second handle moves the same gauge.
    m.connections("proxy").dec();
    assert_eq!(
        value(&m.render(), "orp_connections{listener=\"proxy\"}"),
        "1"
    );
}

#[tokio::test]
async fn requests_and_upstream_latency() {
    let (tokens, _) = setup();
    let m = Metrics::new(tokens);
    m.observe_request("/github", 200);
    m.observe_request("/github", 200);
    m.observe_request("/github", 401);
    m.observe_request("", 404);
    m.observe_request("/we\"ird\\", 200);
    m.observe_upstream("/github", 0.003);
    m.observe_upstream("/github", 0.7);
    let text = m.render();
    assert!(text.contains("# TYPE orp_requests counter\n"));
    assert!(text.contains("# TYPE orp_upstream_request_duration_seconds histogram\n"));
    assert_eq!(
        value(
            &text,
            "orp_requests_total{route=\"/github\",status=\"200\"}"
        ),
        "2"
    );
    assert_eq!(
        value(
            &text,
            "orp_requests_total{route=\"/github\",status=\"401\"}"
        ),
        "1"
    );
    assert_eq!(
        value(&text, "orp_requests_total{route=\"\",status=\"404\"}"),
        "1"
    );
    assert_eq!(
        value(
            &text,
            "orp_requests_total{route=\"/we\\\"ird\\\\\",status=\"200\"}"
        ),
        "1"
    );
    assert_eq!(
        value(
            &text,
            "orp_upstream_request_duration_seconds_count{route=\"/github\"}"
        ),
        "2"
    );
    assert_eq!(
        value(
            &text,
            "orp_upstream_request_duration_seconds_bucket{le=\"0.005\",route=\"/github\"}"
        ),
        "1"
    );
    assert_eq!(
        value(
            &text,
            "orp_upstream_request_duration_seconds_bucket{le=\"+Inf\",route=\"/github\"}"
        ),
        "2"
    );
}

#[tokio::test]
async fn refresh_counters_durations_and_gauges() {
    let (tokens, script) = setup();
    let m = Metrics::new(tokens.clone());
    m.spawn_event_listener();
    let future = SystemTime::now() + Duration::from_secs(3600);
    tokens.insert(
        Provider::Google,
        "alice",
        TokenSeed::new("REFRESH-SECRET-1")
            .access_token("ACCESS-SECRET-1")
            .expires_at(future),
    );
    tokens.insert(Provider::Google, "bob", TokenSeed::new("REFRESH-SECRET-1"));
    tokens.insert(Provider::GitHub, "octo", TokenSeed::new("REFRESH-SECRET-1"));
    tokens.insert(Provider::GitHub, "dead", TokenSeed::new("REFRESH-SECRET-1"));
    let text = m.render();
    assert_eq!(
        value(&text, "orp_tokens{provider=\"google\",state=\"valid\"}"),
        "1"
    );
    assert_eq!(
        value(&text, "orp_tokens{provider=\"google\",state=\"expired\"}"),
        "1"
    );
    assert_eq!(
        value(&text, "orp_tokens{provider=\"github\",state=\"expired\"}"),
        "2"
    );

    // google/bob: success; github/octo: transient; github/dead: rejected.
    tokens.refresh_now(Provider::Google, "bob").await.unwrap();
    script.push(Err(RefreshError::transient("backend down")));
    assert!(tokens.refresh_now(Provider::GitHub, "octo").await.is_err());
    script.push(Err(RefreshError::rejected("revoked")));
    assert!(tokens.refresh_now(Provider::GitHub, "dead").await.is_err());
    assert_eq!(script.calls.load(Ordering::SeqCst), 3);

    let text = m.render();
    let get = |k: &str| value(&text, k);
    assert_eq!(
        get("orp_refresh_total{provider=\"google\",outcome=\"success\"}"),
        "1"
    );
    assert_eq!(
        get("orp_refresh_total{provider=\"google\",outcome=\"rejected\"}"),
        "0"
    );
    assert_eq!(
        get("orp_refresh_total{provider=\"github\",outcome=\"transient_error\"}"),
        "1"
    );
    assert_eq!(
        get("orp_refresh_total{provider=\"github\",outcome=\"rejected\"}"),
        "1"
    );
    assert_eq!(
        get("orp_refresh_total{provider=\"github\",outcome=\"success\"}"),
        "0"
    );
    assert_eq!(get("orp_tokens{provider=\"google\",state=\"valid\"}"), "2");
    assert_eq!(
        get("orp_tokens{provider=\"google\",state=\"expired\"}"),
        "0"
    );
    assert_eq!(
        get("orp_tokens{provider=\"github\",state=\"expired\"}"),
        "1"
    );
    assert_eq!(
        get("orp_tokens{provider=\"github\",state=\"needs_reauth\"}"),
        "1"
    );
    assert_eq!(get("orp_tokens{provider=\"github\",state=\"valid\"}"), "0");

    // The listener task records the three durations.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = m.render();
        let g = value(
            &text,
            "orp_refresh_duration_seconds_count{provider=\"google\"}",
        );
        let h = value(
            &text,
            "orp_refresh_duration_seconds_count{provider=\"github\"}",
        );
        if g == "1" && h == "2" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "durations not recorded: {g} {h}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let text = m.render();
    for s in SECRETS {
        assert!(!text.contains(s), "secret {s} in metrics");
    }
    for account in ["alice", "bob", "octo", "dead"] {
        assert!(!text.contains(account), "account {account} in metrics");
    }
}

#[tokio::test]
async fn coalesced_and_replay_counters_come_from_stats() {
    let (tokens, _) = setup();
    let m = Metrics::new(tokens.clone());
    tokens.insert(Provider::GitHub, "octo", TokenSeed::new("r"));
    tokens.count_replay(Provider::GitHub, true);
    tokens.count_replay(Provider::GitHub, true);
    tokens.count_replay(Provider::Google, false);
    // Two concurrent forced refreshes: the second joins the first's flight.
    let (a, b) = tokio::join!(
        tokens.refresh_now(Provider::GitHub, "octo"),
        tokens.refresh_now(Provider::GitHub, "octo")
    );
    a.unwrap();
    b.unwrap();
    let text = m.render();
    let s = tokens.stats(Provider::GitHub);
    assert_eq!(
        value(&text, "orp_refresh_coalesced_total{provider=\"github\"}"),
        s.coalesced.to_string()
    );
    assert_eq!(s.coalesced, 1);
    assert_eq!(
        value(
            &text,
            "orp_replay_total{provider=\"github\",outcome=\"replayed\"}"
        ),
        "2"
    );
    assert_eq!(
        value(
            &text,
            "orp_replay_total{provider=\"google\",outcome=\"not_replayable\"}"
        ),
        "1"
    );
}

#[tokio::test]
async fn listener_ends_when_metrics_are_dropped() {
    let (tokens, _) = setup();
    let m = Metrics::new(tokens.clone());
    m.spawn_event_listener();
    let weak = Arc::downgrade(&m);
    drop(m);
    assert!(
        weak.upgrade().is_none(),
        "the task must not keep Metrics alive"
    );
}
