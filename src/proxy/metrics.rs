//! The `orp_*` metric families of SPEC 4.6, rendered in the OpenMetrics text format.
//!
//! Request counts and the two latency histograms are recorded as they happen
//! ([`Metrics::observe_request`], [`Metrics::observe_upstream`], [`Metrics::observe_refresh`]).
//! The refresh, coalescing, cooldown and replay counters and the `orp_tokens` gauge are read from the
//! [`Tokens`] cache at render time, so they are exact and always present for both providers,
//! even at zero. `orp_connections{listener}` is a gauge the listeners move themselves
//! ([`Metrics::connections`]); `orp_webhook_total{outcome}` is counted by the webhooks
//! ([`Metrics::webhook`]). No token value and no account id is ever part of the output.

use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::provider::Provider;
use crate::tokens::{RefreshEvent, RefreshOutcome, Tokens};

/// The `Content-Type` of [`Metrics::render`]'s output (OpenMetrics text 1.0.0, which Prometheus
/// scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram buckets (seconds) shared by both latency histograms.
const BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The outcomes of `orp_webhook_total{outcome}`.
const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "failed", "dropped"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

/// The listeners of `orp_connections{listener}`.
const LISTENERS: [&str; 2] = ["proxy", "admin"];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Status codes with a slot in [`RouteMetrics`] (100 to 599); others go through the family.
const STATUS_SLOTS: usize = 500;

/// One route's request metrics (see [`Metrics::route`]); cheap to clone.
#[derive(Clone)]
pub struct RouteMetrics {
    route: String,
    upstream: Histogram,
    statuses: Arc<[std::sync::OnceLock<Counter>; STATUS_SLOTS]>,
    requests: Family<RequestLabels, Counter>,
    rate_limited: Counter,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .finish()
    }
}

impl RouteMetrics {
    /// Counts one request answered with `status`: `orp_requests_total{route,status}`.
    pub fn observe_request(&self, status: u16) {
        let labels = || RequestLabels {
            route: self.route.clone(),
            status,
        };
        match (status as usize).checked_sub(100) {
            Some(i) if i < STATUS_SLOTS => self.statuses[i]
                .get_or_init(|| self.requests.get_or_create(&labels()).clone())
                .inc(),
            _ => self.requests.get_or_create(&labels()).inc(),
        };
    }

    /// Records one upstream request's duration: `orp_upstream_request_duration_seconds{route}`.
    pub fn observe_upstream(&self, seconds: f64) {
        self.upstream.observe(seconds);
    }

    /// Counts one request answered `429 rate_limited` by the proxy:
    /// `orp_rate_limited_total{route}`.
    pub fn observe_rate_limited(&self) {
        self.rate_limited.inc();
    }
}

fn new_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The sidecar's metrics: a private registry (no global state) plus the live counters.
///
/// ```
/// use oauth_refresh_proxy::proxy::metrics::Metrics;
/// use oauth_refresh_proxy::{BackendRefresher, Tokens};
///
/// let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
/// let metrics = Metrics::new(tokens);
/// metrics.observe_request("/github", 200);
/// let text = metrics.render();
/// assert!(text.contains("orp_requests_total{route=\"/github\",status=\"200\"} 1"));
/// assert!(text.contains("orp_tokens{provider=\"google\",state=\"valid\"} 0"));
/// ```
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream: HistogramFamily<RouteLabels>,
    refresh: HistogramFamily<ProviderLabels>,
    connections: Family<ListenerLabels, Gauge>,
    rate_limited: Family<RouteLabels, Counter>,
    webhooks: Family<OutcomeLabels, Counter>,
    tokens: Tokens,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates the metric families for `tokens`' cache.
    ///
    /// ```
    /// use oauth_refresh_proxy::proxy::metrics::Metrics;
    /// use oauth_refresh_proxy::{BackendRefresher, Tokens};
    ///
    /// let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// let metrics = Metrics::new(tokens);
    /// assert!(metrics.render().contains("orp_refresh_total{provider=\"github\",outcome=\"success\"} 0"));
    /// ```
    pub fn new(tokens: Tokens) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let upstream: HistogramFamily<RouteLabels> = Family::new_with_constructor(new_histogram);
        let refresh: HistogramFamily<ProviderLabels> = Family::new_with_constructor(new_histogram);
        for p in Provider::ALL {
            // Present (at zero) for both providers from the start.
            let _ = refresh.get_or_create(&ProviderLabels {
                provider: p.as_str(),
            });
        }
        // Counters get `_total` appended by the encoder.
        registry.register(
            "orp_requests",
            "Requests answered by the proxy listener, by route prefix and status",
            requests.clone(),
        );
        registry.register(
            "orp_upstream_request_duration_seconds",
            "Time until the upstream's response head arrived, by route prefix",
            upstream.clone(),
        );
        registry.register(
            "orp_refresh_duration_seconds",
            "Duration of finished refreshes (retries included), by provider",
            refresh.clone(),
        );
        let rate_limited = Family::<RouteLabels, Counter>::default();
        registry.register(
            "orp_rate_limited",
            "Requests answered 429 rate_limited by the proxy (the upstream's limit in force), by route prefix",
            rate_limited.clone(),
        );
        let connections = Family::<ListenerLabels, Gauge>::default();
        for listener in LISTENERS {
            let _ = connections.get_or_create(&ListenerLabels { listener });
        }
        registry.register(
            "orp_connections",
            "Connections open now, by listener",
            connections.clone(),
        );
        let webhooks = Family::<OutcomeLabels, Counter>::default();
        for outcome in WEBHOOK_OUTCOMES {
            let _ = webhooks.get_or_create(&OutcomeLabels { outcome });
        }
        registry.register(
            "orp_webhook",
            "Webhook events by outcome: delivered, failed (refused or out of time) or dropped (queue full)",
            webhooks.clone(),
        );
        registry.register_collector(Box::new(TokensCollector {
            tokens: tokens.clone(),
        }));
        Arc::new(Metrics {
            registry,
            requests,
            upstream,
            refresh,
            connections,
            rate_limited,
            webhooks,
            tokens,
        })
    }

    /// The `orp_webhook_total{outcome}` counter of `outcome` (`"delivered"`, `"failed"` or
    /// `"dropped"`); any other outcome panics.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{proxy::metrics::Metrics, BackendRefresher, Tokens};
    /// # let metrics = Metrics::new(Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build());
    /// metrics.webhook("dropped").inc_by(2);
    /// assert!(metrics.render().contains("orp_webhook_total{outcome=\"dropped\"} 2"));
    /// assert!(metrics.render().contains("orp_webhook_total{outcome=\"delivered\"} 0"));
    /// ```
    pub fn webhook(&self, outcome: &'static str) -> Counter {
        assert!(
            WEBHOOK_OUTCOMES.contains(&outcome),
            "unknown webhook outcome {outcome:?}"
        );
        self.webhooks
            .get_or_create(&OutcomeLabels { outcome })
            .clone()
    }

    /// The `orp_connections{listener}` gauge of `listener` (`"proxy"` or `"admin"`): the
    /// listener increments it for each connection it keeps and decrements it when that
    /// connection closes.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{proxy::metrics::Metrics, BackendRefresher, Tokens};
    /// # let metrics = Metrics::new(Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build());
    /// let open = metrics.connections("proxy");
    /// open.inc();
    /// assert!(metrics.render().contains("orp_connections{listener=\"proxy\"} 1"));
    /// assert!(metrics.render().contains("orp_connections{listener=\"admin\"} 0"));
    /// ```
    pub fn connections(&self, listener: &'static str) -> Gauge {
        self.connections
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }

    /// Counts one answered request: `orp_requests_total{route, status}`; `route` is the matched
    /// route's prefix, `""` when no route matched.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{proxy::metrics::Metrics, BackendRefresher, Tokens};
    /// # let metrics = Metrics::new(Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build());
    /// metrics.observe_request("", 404);
    /// assert!(metrics.render().contains("orp_requests_total{route=\"\",status=\"404\"} 1"));
    /// ```
    pub fn observe_request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: escape_label(route),
                status,
            })
            .inc();
    }

    /// Handles for one route's request metrics, resolved once: recording through them costs
    /// an atomic increment, with no label allocation or hashing on the request path.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{proxy::metrics::Metrics, BackendRefresher, Tokens};
    /// # let metrics = Metrics::new(Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build());
    /// let github = metrics.route("/github");
    /// github.observe_request(200);
    /// github.observe_upstream(0.01);
    /// assert!(metrics.render().contains("orp_requests_total{route=\"/github\",status=\"200\"} 1"));
    /// assert!(metrics.render().contains("orp_rate_limited_total{route=\"/github\"} 0"));
    /// github.observe_rate_limited();
    /// assert!(metrics.render().contains("orp_rate_limited_total{route=\"/github\"} 1"));
    /// ```
    pub fn route(&self, route: &str) -> RouteMetrics {
        let route = escape_label(route);
        RouteMetrics {
            upstream: self
                .upstream
                .get_or_create(&RouteLabels {
                    route: route.clone(),
                })
                .clone(),
            statuses: Arc::new(std::array::from_fn(|_| std::sync::OnceLock::new())),
            requests: self.requests.clone(),
            rate_limited: self
                .rate_limited
                .get_or_create(&RouteLabels {
                    route: route.clone(),
                })
                .clone(),
            route,
        }
    }

    /// Records how long one upstream request took, in seconds:
    /// `orp_upstream_request_duration_seconds{route}`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{proxy::metrics::Metrics, BackendRefresher, Tokens};
    /// # let metrics = Metrics::new(Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build());
    /// metrics.observe_upstream("/google", 0.2);
    /// assert!(metrics.render().contains("orp_upstream_request_duration_seconds_count{route=\"/google\"} 1"));
    /// ```
    pub fn observe_upstream(&self, route: &str, seconds: f64) {
        self.upstream
            .get_or_create(&RouteLabels {
                route: escape_label(route),
            })
            .observe(seconds);
    }

    /// Records one finished refresh: `orp_refresh_duration_seconds{provider}`.
    ///
    /// Usually called by the task of [`Metrics::spawn_event_listener`].
    pub fn observe_refresh(&self, event: &RefreshEvent) {
        if matches!(event.outcome, RefreshOutcome::Replaced) {
            return; // new tokens without a refresh of this process: nothing was timed
        }
        self.refresh
            .get_or_create(&ProviderLabels {
                provider: event.provider.as_str(),
            })
            .observe(event.duration.as_secs_f64());
    }

    /// Spawns a task (on the current tokio runtime) that records every refresh event of the
    /// cache with [`Metrics::observe_refresh`]. It subscribes before returning, so no refresh
    /// finishing afterwards is missed, and ends once the cache is gone or the metrics are
    /// dropped. Call it once.
    pub fn spawn_event_listener(self: &Arc<Self>) {
        let mut events = self.tokens.events();
        let weak: Weak<Metrics> = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match weak.upgrade() {
                    Some(metrics) => metrics.observe_refresh(&event),
                    None => break,
                }
            }
        });
    }

    /// The OpenMetrics text exposition of every `orp_*` family (serve it with
    /// [`CONTENT_TYPE`]).
    ///
    /// ```
    /// # use oauth_refresh_proxy::{proxy::metrics::Metrics, BackendRefresher, Tokens};
    /// # let metrics = Metrics::new(Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build());
    /// let text = metrics.render();
    /// assert!(text.contains("orp_replay_total{provider=\"google\",outcome=\"replayed\"} 0"));
    /// assert!(text.ends_with("# EOF\n"));
    /// ```
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail, nor can our collector.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("encoding the metrics failed");
        }
        out
    }
}

/// Label values are written verbatim by prometheus-client: escape them as the text formats
/// require.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Encodes the families read from the cache at scrape time.
#[derive(Debug)]
struct TokensCollector {
    tokens: Tokens,
}

impl TokensCollector {
    fn counter_family(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        samples: &[(Vec<(&'static str, &'static str)>, u64)],
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in samples {
            ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

impl Collector for TokensCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats: Vec<_> = Provider::ALL
            .iter()
            .map(|&p| (p.as_str(), self.tokens.stats(p)))
            .collect();

        let mut refresh = Vec::new();
        let mut coalesced = Vec::new();
        let mut cooldown = Vec::new();
        let mut replay = Vec::new();
        for (p, s) in &stats {
            for (outcome, v) in [
                ("success", s.refresh_success),
                ("rejected", s.refresh_rejected),
                ("transient_error", s.refresh_transient_error),
            ] {
                refresh.push((vec![("provider", *p), ("outcome", outcome)], v));
            }
            coalesced.push((vec![("provider", *p)], s.coalesced));
            cooldown.push((vec![("provider", *p)], s.cooldown));
            for (outcome, v) in [
                ("replayed", s.replayed),
                ("not_replayable", s.not_replayable),
            ] {
                replay.push((vec![("provider", *p), ("outcome", outcome)], v));
            }
        }
        Self::counter_family(
            &mut encoder,
            "orp_refresh",
            "Finished refreshes, by provider and outcome",
            &refresh,
        )?;
        Self::counter_family(
            &mut encoder,
            "orp_refresh_coalesced",
            "Requests that waited on a refresh another request had started",
            &coalesced,
        )?;
        Self::counter_family(
            &mut encoder,
            "orp_refresh_cooldown",
            "Requests answered refresh_unavailable without a backend call: the account was in cooldown after a failed refresh, or awaiting a timed-out attempt's answer",
            &cooldown,
        )?;
        Self::counter_family(
            &mut encoder,
            "orp_replay",
            "Upstream 401s, by whether the request was replayed",
            &replay,
        )?;

        // [valid, expired, needs_reauth] per provider.
        let mut states = [[0i64; 3]; 2];
        for a in self.tokens.list() {
            let i = Provider::ALL
                .iter()
                .position(|&p| p == a.provider)
                .unwrap_or(0);
            let s = if a.needs_reauth {
                2
            } else if a.valid {
                0
            } else {
                1
            };
            states[i][s] += 1;
        }
        let mut gauge = encoder.encode_descriptor(
            "orp_tokens",
            "Accounts by provider and token state",
            None,
            MetricType::Gauge,
        )?;
        for (i, p) in Provider::ALL.iter().enumerate() {
            for (j, state) in ["valid", "expired", "needs_reauth"].iter().enumerate() {
                let labels = [("provider", p.as_str()), ("state", *state)];
                ConstGauge::new(states[i][j]).encode(gauge.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
}
