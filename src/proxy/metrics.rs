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

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::provider::Provider;
use crate::tokens::{RefreshEvent, RefreshOutcome, Tokens};

mod collector;
#[cfg(test)]
mod tests;

use collector::TokensCollector;

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
        let connections: Family<ListenerLabels, Gauge> =
            family_with(LISTENERS.map(|listener| ListenerLabels { listener }));
        registry.register(
            "orp_connections",
            "Connections open now, by listener",
            connections.clone(),
        );
        let webhooks: Family<OutcomeLabels, Counter> =
            family_with(WEBHOOK_OUTCOMES.map(|outcome| OutcomeLabels { outcome }));
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

/// A family with a series for each of `labels`, present (at zero) from the start.
fn family_with<L, M>(labels: impl IntoIterator<Item = L>) -> Family<L, M>
where
    L: Clone + std::hash::Hash + Eq,
    M: Default,
{
    let family = Family::default();
    for l in labels {
        let _ = family.get_or_create(&l);
    }
    family
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
