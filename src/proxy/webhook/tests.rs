//! The webhooks' unit tests.

use super::*;
use crate::{Account, BackendRefresher, Provider};

fn event(generation: u64) -> RefreshEvent {
    RefreshEvent {
        provider: Provider::Google,
        account: Account::new("alice"),
        generation,
        duration: Duration::ZERO,
        outcome: RefreshOutcome::Failed {
            reason: "backend answered 503".into(),
        },
        health: Some(HealthChange::Failing),
    }
}

#[tokio::test]
async fn queue_keeps_the_newest_and_counts_what_it_drops() {
    let q = Queue::new(QUEUE_CAPACITY);
    let dropped = (0..20_000u32).filter(|&i| q.push(i)).count();
    assert_eq!(dropped, 10_000);
    assert_eq!(q.len(), 10_000);
    // The oldest went first: what is left is 10 000 … 19 999, in order.
    for expected in 10_000..20_000u32 {
        assert_eq!(q.pop().await, expected);
    }
    assert!(q.is_empty());
}

#[tokio::test]
async fn twenty_thousand_events_with_nobody_delivering_keep_ten_thousand() {
    let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:1").unwrap()).build();
    let metrics = Metrics::new(tokens);
    let settings = WebhookSettings {
        url: "http://127.0.0.1:1/hook".into(),
        secret: Secret::new("s"),
        events: vec![HealthChange::Failing],
        max_backoff: Duration::from_secs(1),
    };
    // Not started: nothing delivers, as with a receiver that is down.
    let hooks = Webhooks::new(&[settings], None, &metrics).unwrap();
    for g in 0..20_000 {
        hooks.offer(&event(g));
    }
    // An event without a health change, or one the webhook did not subscribe to: ignored.
    hooks.offer(&RefreshEvent {
        health: None,
        ..event(1)
    });
    hooks.offer(&RefreshEvent {
        health: Some(HealthChange::Recovered),
        ..event(1)
    });
    assert_eq!(hooks.queued(0), QUEUE_CAPACITY);
    let text = metrics.render();
    assert!(
        text.contains("orp_webhook_total{outcome=\"dropped\"} 10000"),
        "{text}"
    );
    assert!(text.contains("orp_webhook_total{outcome=\"delivered\"} 0"));
    // The oldest kept is generation 10 000.
    let first = hooks.intake.hooks[0].queue.try_pop().unwrap();
    assert!(
        first.id.ends_with(":refresh_failing:google:alice:10000"),
        "{}",
        first.id
    );
}

#[test]
fn bodies_never_hold_an_error_on_recovery() {
    let v: serde_json::Value =
        serde_json::from_slice(&body(&event(3), HealthChange::Recovered, 1)).unwrap();
    assert_eq!(v["error"], serde_json::Value::Null);
    assert_eq!(v["event"], "refresh_recovered");
    let v: serde_json::Value =
        serde_json::from_slice(&body(&event(3), HealthChange::Failing, 1)).unwrap();
    assert_eq!(v["error"]["code"], "refresh_unavailable");
}
