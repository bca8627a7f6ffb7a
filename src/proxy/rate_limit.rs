//! Upstream rate limits in the sidecar (SPEC 4.10): what each API said about each account's
//! limits, and the check that answers `429 rate_limited` instead of sending a request the API
//! would refuse.
//!
//! # What is remembered, and for what
//!
//! State is kept per **upstream** — the route's upstream origin (`scheme://host:port`, lower
//! case, default port made explicit) with the route's provider — then per account. So
//! `/github` (`https://api.github.com`) and `/github-uploads` (`https://uploads.github.com`)
//! are limited apart, and two routes to the same origin share their limits. Per account there
//! are four slots ([`Scope`]): the whole upstream (GitHub's secondary limits, Google's 429) and
//! GitHub's `core`, `search` and `graphql` resources ([`Resource::of_path`]). The rules that
//! fill them are in [`learn`]; every wait is capped at [`MAX_WAIT`] (1 h).
//!
//! A request is refused when the upstream slot or its path's resource slot holds a deadline
//! still in the future; the answer ([`Blocked::response`]) carries `Retry-After` (whole seconds
//! left, at least 1) and the `x-ratelimit-*` headers of the answer that set the limit.
//!
//! # Cost and memory
//!
//! The maps are [`DashMap`]s (sharded locks). A check of an upstream that has no limit at all
//! is one atomic load; otherwise one hashed lookup by `&str`: no allocation either way.
//! Learning allocates only when an answer sets a limit. An entry whose limits have all ended is
//! removed when next looked at, and every [`SWEEP_EVERY`] a write sweeps the upstream's map,
//! so the maps hold at most the accounts limited within the last [`MAX_WAIT`].
//!
//! # Sharing between replicas
//!
//! With a Redis store, [`RateLimits::share`] publishes every limit this replica learns (see
//! [`sync`]) and applies the ones other replicas learn; checks stay local.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Uri};
use http_body_util::Full;

use super::errors::{error_response, Code};
use crate::Provider;

mod rules;
pub mod sync;

pub(crate) use rules::is_remaining;
pub use rules::{learn, now_ms, reset, retry_after, Learned, Resource, Scope, MAX_WAIT};

/// How often (at most) learning a limit also sweeps ended entries out of its upstream's map.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The rate-limit state of every upstream (cheap to clone; clones share it).
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use oauth_refresh_proxy::proxy::rate_limit::{RateLimits, Resource};
/// use oauth_refresh_proxy::Provider;
///
/// let limits = RateLimits::default();
/// let github = limits.upstream(&"https://api.github.com".parse().unwrap(), Provider::GitHub);
/// assert!(github.check("octo", Resource::Core).is_none());
///
/// let mut h = HeaderMap::new();
/// h.insert("retry-after", "30".parse().unwrap());
/// github.observe("octo", StatusCode::FORBIDDEN, &h);
/// let blocked = github.check("octo", Resource::Search).unwrap();
/// assert_eq!(blocked.response(Provider::GitHub, "octo").status(), 429);
/// assert!(limits.rate_limited_until(Provider::GitHub, "octo").is_some());
/// assert!(github.check("someone-else", Resource::Core).is_none());
/// ```
#[derive(Clone, Default)]
pub struct RateLimits {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tables = self.shared.tables.read().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("RateLimits")
            .field("upstreams", &tables)
            .field("shared", &self.shared.outbox.get().is_some())
            .finish()
    }
}

#[derive(Default)]
struct Shared {
    /// One table per upstream; added at set-up, read by the listing and by shared limits.
    tables: RwLock<Vec<Arc<Table>>>,
    /// Where learnt limits go to be published ([`RateLimits::share`]).
    outbox: OnceLock<tokio::sync::mpsc::Sender<sync::Note>>,
}

struct Table {
    origin: Box<str>,
    provider: Provider,
    accounts: DashMap<Arc<str>, Entry, foldhash::fast::RandomState>,
    /// How many entries `accounts` holds (an atomic, so that the common case — no limit
    /// known — costs no lock).
    live: AtomicUsize,
    last_sweep_ms: AtomicU64,
}

/// One account's limits on one upstream, by [`Scope::index`].
#[derive(Clone, Default)]
struct Entry {
    limits: [Option<Limit>; 4],
}

/// One limit: until when, and the headers of the answer that set it.
#[derive(Clone, Debug)]
struct Limit {
    until_ms: u64,
    headers: Arc<[(HeaderName, HeaderValue)]>,
}

impl Entry {
    fn latest(&self) -> u64 {
        self.limits
            .iter()
            .flatten()
            .map(|l| l.until_ms)
            .max()
            .unwrap_or(0)
    }
}

/// The canonical origin of an upstream URI: `scheme://host:port`, lower case, default port
/// explicit (the key of its limits, here and between replicas).
///
/// ```
/// use oauth_refresh_proxy::proxy::rate_limit::origin_of;
///
/// assert_eq!(origin_of(&"https://API.github.com/api/v3".parse().unwrap()), "https://api.github.com:443");
/// assert_eq!(origin_of(&"http://127.0.0.1:8081".parse().unwrap()), "http://127.0.0.1:8081");
/// ```
pub fn origin_of(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
    let host = uri.host().unwrap_or("").to_ascii_lowercase();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "http" { 80 } else { 443 });
    format!("{scheme}://{host}:{port}")
}

impl RateLimits {
    /// The limits of the upstream at `uri`'s origin ([`origin_of`]) for `provider`'s
    /// accounts: created on first use, the same table afterwards.
    pub fn upstream(&self, uri: &Uri, provider: Provider) -> UpstreamLimits {
        let origin = origin_of(uri);
        let mut tables = self
            .shared
            .tables
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let table = match tables
            .iter()
            .find(|t| *t.origin == *origin && t.provider == provider)
        {
            Some(t) => t.clone(),
            None => {
                let t = Arc::new(Table {
                    origin: origin.into_boxed_str(),
                    provider,
                    accounts: DashMap::default(),
                    live: AtomicUsize::new(0),
                    last_sweep_ms: AtomicU64::new(now_ms()),
                });
                tables.push(t.clone());
                t
            }
        };
        UpstreamLimits {
            table,
            shared: self.shared.clone(),
        }
    }

    /// The latest deadline (unix seconds, rounded up) of `provider`'s `account`'s limits still
    /// in force on any upstream; `None` when none is (the `rate_limited_until` of `GET
    /// /tokens`).
    pub fn rate_limited_until(&self, provider: Provider, account: &str) -> Option<u64> {
        let now = now_ms();
        let tables = self.shared.tables.read().unwrap_or_else(|e| e.into_inner());
        tables
            .iter()
            .filter(|t| t.provider == provider && t.live.load(Ordering::Relaxed) > 0)
            .filter_map(|t| t.accounts.get(account).map(|e| e.latest()))
            .filter(|&until| until > now)
            .max()
            .map(|ms| ms.div_ceil(1000))
    }

    /// Applies a limit learnt elsewhere (another replica); not published again. Ignored when
    /// this replica has no route to that upstream.
    fn apply(&self, note: &sync::Note) {
        let table = {
            let tables = self.shared.tables.read().unwrap_or_else(|e| e.into_inner());
            tables
                .iter()
                .find(|t| *t.origin == *note.origin && t.provider == note.provider)
                .cloned()
        };
        if let Some(t) = table {
            t.record(&note.account, note.scope, note.limit.clone(), now_ms());
        }
    }
}

/// The limits of one upstream (see [`RateLimits::upstream`]); cheap to clone.
#[derive(Clone)]
pub struct UpstreamLimits {
    table: Arc<Table>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for UpstreamLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamLimits")
            .field("origin", &self.table.origin)
            .field("provider", &self.table.provider)
            .finish()
    }
}

impl UpstreamLimits {
    /// The limit that forbids a request of `account` for `resource` now, if any.
    pub fn check(&self, account: &str, resource: Resource) -> Option<Blocked> {
        let t = &self.table;
        if t.live.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = now_ms();
        let (blocking, ended) = {
            let entry = t.accounts.get(account)?;
            let slots = [Scope::Upstream.index(), Scope::Resource(resource).index()];
            let blocking = slots
                .iter()
                .filter_map(|&i| entry.limits[i].as_ref())
                .filter(|l| l.until_ms > now)
                .max_by_key(|l| l.until_ms)
                .cloned();
            (blocking, entry.latest() <= now)
        };
        if ended {
            t.remove_ended(account, now);
        }
        blocking.map(|l| Blocked {
            until_ms: l.until_ms,
            now_ms: now,
            headers: l.headers,
        })
    }

    /// [`observe`](Self::observe) for an answer whose header names were already looked at:
    /// `remaining` when it carries `x-ratelimit-remaining`. An answer with neither a limiting
    /// status nor that header (almost every answer) is passed over without a lookup.
    pub(crate) fn observe_scanned(
        &self,
        account: &str,
        status: StatusCode,
        headers: &HeaderMap,
        remaining: bool,
    ) {
        if rules::may_learn(self.table.provider, status, remaining) {
            self.observe(account, status, headers);
        }
    }

    /// Learns from one answer to a request of `account` ([`learn`]'s rules); a limit that is
    /// new or later than the one known is kept and, when shared, published.
    pub fn observe(&self, account: &str, status: StatusCode, headers: &HeaderMap) {
        let t = &self.table;
        let mut now = 0;
        let Some(l) = rules::learn_at(t.provider, status, headers, || {
            now = now_ms();
            now
        }) else {
            return;
        };
        let limit = Limit {
            until_ms: l.until_ms,
            headers: l.headers.into(),
        };
        if !t.record(account, l.scope, limit.clone(), now) {
            return;
        }
        tracing::info!(
            provider = %t.provider,
            account,
            upstream = %t.origin,
            scope = l.scope.as_str(),
            wait_ms = l.until_ms.saturating_sub(now),
            "upstream rate limit: requests of this account are held back"
        );
        if let Some(outbox) = self.shared.outbox.get() {
            let note = sync::Note {
                origin: t.origin.to_string(),
                provider: t.provider,
                account: account.to_string(),
                scope: l.scope,
                limit,
            };
            if outbox.try_send(note).is_err() {
                tracing::debug!(account, "rate-limit sharing queue full: not shared");
            }
        }
    }
}

/// Puts `limit` in `slot` unless the limit there ends later; whether it did.
fn keep_later(slot: &mut Option<Limit>, limit: Limit) -> bool {
    if slot.as_ref().is_some_and(|l| l.until_ms >= limit.until_ms) {
        return false;
    }
    *slot = Some(limit);
    true
}

impl Table {
    /// Keeps `limit` for `account`'s `scope` unless a later one is known; whether it did.
    fn record(&self, account: &str, scope: Scope, limit: Limit, now: u64) -> bool {
        if limit.until_ms <= now {
            return false;
        }
        let i = scope.index();
        // Learning is rare: the key's allocation is no concern here.
        let kept = match self.accounts.entry(Arc::from(account)) {
            dashmap::Entry::Occupied(mut o) => keep_later(&mut o.get_mut().limits[i], limit),
            dashmap::Entry::Vacant(v) => {
                let mut e = Entry::default();
                e.limits[i] = Some(limit);
                v.insert(e);
                self.live.fetch_add(1, Ordering::Relaxed);
                true
            }
        };
        self.maybe_sweep(now);
        kept
    }

    fn remove_ended(&self, account: &str, now: u64) {
        if self
            .accounts
            .remove_if(account, |_, e| e.latest() <= now)
            .is_some()
        {
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn maybe_sweep(&self, now: u64) {
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        let every = SWEEP_EVERY.as_millis() as u64;
        if now.saturating_sub(last) < every
            || self
                .last_sweep_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let mut removed = 0;
        self.accounts.retain(|_, e| {
            let keep = e.latest() > now;
            removed += usize::from(!keep);
            keep
        });
        self.live.fetch_sub(removed, Ordering::Relaxed);
    }
}

/// A request refused because of a limit in force.
#[derive(Clone, Debug)]
pub struct Blocked {
    until_ms: u64,
    now_ms: u64,
    headers: Arc<[(HeaderName, HeaderValue)]>,
}

impl Blocked {
    /// Whole seconds until the limit ends, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.until_ms
            .saturating_sub(self.now_ms)
            .div_ceil(1000)
            .max(1)
    }

    /// The proxy's `429 rate_limited` answer (SPEC 4.4): the JSON error, `Retry-After` and
    /// the `x-ratelimit-*` headers of the answer that set the limit.
    pub fn response(&self, provider: Provider, account: &str) -> Response<Full<Bytes>> {
        let secs = self.retry_after_secs();
        let mut resp = error_response(
            Code::RateLimited,
            &format!("the {provider} API rate limit of this account is in force for {secs} more seconds: the request was not sent"),
            Some(provider),
            Some(account),
        );
        let h = resp.headers_mut();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        for (name, value) in self.headers.iter() {
            h.append(name.clone(), value.clone());
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> (RateLimits, UpstreamLimits) {
        let l = RateLimits::default();
        let u = l.upstream(
            &Uri::from_static("https://api.github.com"),
            Provider::GitHub,
        );
        (l, u)
    }

    fn h(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn primary(resource: &'static str, secs: u64) -> HeaderMap {
        h(&[
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", (now_ms() / 1000 + secs).to_string()),
            ("x-ratelimit-resource", resource.into()),
            ("x-ratelimit-limit", "30".into()),
        ])
    }

    #[test]
    fn same_origin_same_table_other_origins_apart() {
        let (l, u) = limits();
        let again = l.upstream(
            &Uri::from_static("https://API.GITHUB.COM:443/api"),
            Provider::GitHub,
        );
        let uploads = l.upstream(
            &Uri::from_static("https://uploads.github.com"),
            Provider::GitHub,
        );
        u.observe(
            "octo",
            StatusCode::TOO_MANY_REQUESTS,
            &h(&[("retry-after", "10".into())]),
        );
        assert!(again.check("octo", Resource::Core).is_some());
        assert!(uploads.check("octo", Resource::Core).is_none());
        assert_eq!(l.shared.tables.read().unwrap().len(), 2);
    }

    #[test]
    fn resources_block_their_paths_only() {
        let (l, u) = limits();
        u.observe("octo", StatusCode::OK, &primary("search", 20));
        let b = u.check("octo", Resource::Search).unwrap();
        assert!((19..=20).contains(&b.retry_after_secs()));
        let resp = b.response(Provider::GitHub, "octo");
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["x-ratelimit-resource"], "search");
        assert_eq!(resp.headers()["x-ratelimit-limit"], "30");
        assert!(resp.headers().contains_key("retry-after"));
        assert!(u.check("octo", Resource::Core).is_none());
        assert!(u.check("octo", Resource::Graphql).is_none());
        let until = l.rate_limited_until(Provider::GitHub, "octo").unwrap();
        assert!(until >= now_ms() / 1000 + 19);
        assert_eq!(l.rate_limited_until(Provider::Google, "octo"), None);
    }

    /// An entry whose one limit ended just before `now`.
    fn ended(now: u64) -> Entry {
        let mut e = Entry::default();
        e.limits[0] = Some(Limit {
            until_ms: now - 1,
            headers: Arc::from(Vec::new()),
        });
        e
    }

    #[test]
    fn the_later_deadline_wins_and_ended_entries_go() {
        let (l, u) = limits();
        u.observe("octo", StatusCode::OK, &primary("core", 100));
        u.observe("octo", StatusCode::OK, &primary("core", 10));
        assert!(u.check("octo", Resource::Core).unwrap().retry_after_secs() > 90);
        // An ended limit: planted directly, then found ended and removed on check.
        let t = &u.table;
        let now = now_ms();
        t.accounts.insert(Arc::from("gone"), ended(now));
        t.live.fetch_add(1, Ordering::Relaxed);
        assert!(u.check("gone", Resource::Core).is_none());
        assert!(t.accounts.get("gone").is_none());
        assert_eq!(t.live.load(Ordering::Relaxed), 1);
        assert_eq!(l.rate_limited_until(Provider::GitHub, "gone"), None);
    }

    #[test]
    fn the_sweep_bounds_memory() {
        let (_, u) = limits();
        let t = &u.table;
        let now = now_ms();
        for i in 0..1000 {
            t.accounts.insert(Arc::from(format!("a{i}")), ended(now));
        }
        t.live.store(1000, Ordering::Relaxed);
        t.last_sweep_ms.store(0, Ordering::Relaxed);
        u.observe(
            "live",
            StatusCode::FORBIDDEN,
            &h(&[("retry-after", "5".into())]),
        );
        assert_eq!(t.accounts.len(), 1);
        assert_eq!(t.live.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn permission_403_blocks_nothing() {
        let (l, u) = limits();
        u.observe(
            "octo",
            StatusCode::FORBIDDEN,
            &h(&[("x-ratelimit-remaining", "4000".into())]),
        );
        assert!(u.check("octo", Resource::Core).is_none());
        assert_eq!(u.table.live.load(Ordering::Relaxed), 0);
        assert_eq!(l.rate_limited_until(Provider::GitHub, "octo"), None);
    }
}
