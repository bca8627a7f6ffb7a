//! What one upstream answer says about an account's rate limits (SPEC 4.10): GitHub's secondary
//! and primary limits, Google's `429`, and the parsing of `Retry-After` (seconds or an
//! HTTP-date) and `x-ratelimit-reset` (unix seconds), every wait capped at [`MAX_WAIT`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::Provider;

/// The longest wait an upstream can impose (1 hour): a `Retry-After` or `x-ratelimit-reset`
/// further away is cut to this, so a hostile or broken upstream cannot lock an account out for
/// longer. (GitHub's primary limits reset hourly; its secondary waits are minutes.)
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

static RETRY_AFTER: HeaderName = http::header::RETRY_AFTER;
static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static RESOURCE: HeaderName = HeaderName::from_static("x-ratelimit-resource");

/// A GitHub rate-limit resource the proxy maps to request paths.
///
/// ```
/// use oauth_refresh_proxy::proxy::rate_limit::Resource;
///
/// assert_eq!(Resource::of_path("/search/issues"), Resource::Search);
/// assert_eq!(Resource::of_path("/graphql"), Resource::Graphql);
/// assert_eq!(Resource::of_path("/user"), Resource::Core);
/// assert_eq!(Resource::of_path("/searchx"), Resource::Core);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// `core`: every path that is not one of the others.
    Core,
    /// `search`: paths under `/search/`.
    Search,
    /// `graphql`: `/graphql`.
    Graphql,
}

impl Resource {
    /// The resource of a request path (the path after the route's prefix).
    pub fn of_path(path: &str) -> Resource {
        if path.starts_with("/search/") {
            Resource::Search
        } else if path == "/graphql" || path == "/graphql/" {
            Resource::Graphql
        } else {
            Resource::Core
        }
    }

    /// The resource named by an `x-ratelimit-resource` value; `None` for the ones the proxy
    /// does not map to paths (`code_search`, `integration_manifest`, …).
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::rate_limit::Resource;
    /// assert_eq!(Resource::from_name("search"), Some(Resource::Search));
    /// assert_eq!(Resource::from_name("code_search"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Resource> {
        match name {
            "core" => Some(Resource::Core),
            "search" => Some(Resource::Search),
            "graphql" => Some(Resource::Graphql),
            _ => None,
        }
    }
}

/// What a limit covers: every request of the account to the upstream, or one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// GitHub's secondary limits and Google's `429`: the whole upstream.
    Upstream,
    /// GitHub's primary limit of one resource.
    Resource(Resource),
}

impl Scope {
    /// All scopes, in [`Scope::index`] order.
    pub const ALL: [Scope; 4] = [
        Scope::Upstream,
        Scope::Resource(Resource::Core),
        Scope::Resource(Resource::Search),
        Scope::Resource(Resource::Graphql),
    ];

    /// The slot of this scope in an account's limits.
    pub fn index(self) -> usize {
        match self {
            Scope::Upstream => 0,
            Scope::Resource(Resource::Core) => 1,
            Scope::Resource(Resource::Search) => 2,
            Scope::Resource(Resource::Graphql) => 3,
        }
    }

    /// The name used when limits are shared between replicas.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Upstream => "upstream",
            Scope::Resource(Resource::Core) => "core",
            Scope::Resource(Resource::Search) => "search",
            Scope::Resource(Resource::Graphql) => "graphql",
        }
    }

    /// The scope named `name` ([`Scope::as_str`]).
    pub fn from_name(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// A limit learnt from one answer: what it covers, until when, and the answer's
/// `x-ratelimit-*` headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    /// What the limit covers.
    pub scope: Scope,
    /// When it ends, in unix milliseconds.
    pub until_ms: u64,
    /// The answer's `x-ratelimit-*` headers, passed on in the proxy's 429s.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// What an answer of `provider`'s API with `status` and `headers` says, at `now_ms` (unix
/// milliseconds): `None` when it sets no limit.
///
/// - GitHub: a `403` or `429` with a usable `retry-after` ⇒ the whole upstream for that long;
///   otherwise `x-ratelimit-remaining: 0` with a future `x-ratelimit-reset` ⇒ the resource
///   named by `x-ratelimit-resource` (`core` when absent) until the reset; a resource the
///   proxy does not map to paths sets nothing.
/// - Google: a `429` with a usable `Retry-After` ⇒ the whole upstream for that long.
///
/// A 403 with neither is a permission error and sets nothing.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use oauth_refresh_proxy::proxy::rate_limit::{learn, Scope};
/// use oauth_refresh_proxy::Provider;
///
/// let mut h = HeaderMap::new();
/// h.insert("retry-after", "2".parse().unwrap());
/// let l = learn(Provider::GitHub, StatusCode::FORBIDDEN, &h, 1_000).unwrap();
/// assert_eq!((l.scope, l.until_ms), (Scope::Upstream, 3_000));
/// assert!(learn(Provider::GitHub, StatusCode::FORBIDDEN, &HeaderMap::new(), 1_000).is_none());
/// ```
pub fn learn(
    provider: Provider,
    status: StatusCode,
    headers: &HeaderMap,
    now_ms: u64,
) -> Option<Learned> {
    learn_at(provider, status, headers, || now_ms)
}

/// A status `provider` answers a rate limit with: GitHub's 403 and 429, Google's 429.
fn limiting_status(provider: Provider, status: StatusCode) -> bool {
    match provider {
        Provider::GitHub => {
            status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS
        }
        Provider::Google => status == StatusCode::TOO_MANY_REQUESTS,
    }
}

/// Whether [`learn_at`] could learn anything from an answer with `status` whose headers do or
/// do not carry `x-ratelimit-remaining` (`remaining`): a limiting status, or a GitHub answer
/// with that header. For a caller that already knows the answer's header names, so that the
/// common answer costs no lookup.
pub(crate) fn may_learn(provider: Provider, status: StatusCode, remaining: bool) -> bool {
    limiting_status(provider, status) || (provider == Provider::GitHub && remaining)
}

/// Whether `name` is `x-ratelimit-remaining`.
pub(crate) fn is_remaining(name: &HeaderName) -> bool {
    *name == REMAINING
}

/// [`learn`], reading the clock (`now_ms`) only for an answer that can carry a limit: most
/// answers are neither a limiting status nor (GitHub) `x-ratelimit-remaining: 0`.
pub(crate) fn learn_at(
    provider: Provider,
    status: StatusCode,
    headers: &HeaderMap,
    now_ms: impl FnOnce() -> u64,
) -> Option<Learned> {
    let limited_status = limiting_status(provider, status);
    let exhausted = provider == Provider::GitHub
        && headers.get(&REMAINING).map(|v| v.as_bytes().trim_ascii()) == Some(b"0");
    if !(limited_status || exhausted) {
        return None;
    }
    let now_ms = now_ms();
    let secondary = limited_status
        .then(|| headers.get(&RETRY_AFTER))
        .flatten()
        .and_then(|v| retry_after(v, now_ms))
        .map(|wait| (Scope::Upstream, wait));
    let primary = || {
        if !exhausted {
            return None;
        }
        let resource = match headers.get(&RESOURCE) {
            None => Resource::Core,
            Some(v) => Resource::from_name(v.to_str().ok()?.trim())?,
        };
        let wait = reset(headers.get(&RESET)?, now_ms)?;
        Some((Scope::Resource(resource), wait))
    };
    let (scope, wait) = secondary.or_else(primary)?;
    let headers = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-ratelimit-"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    Some(Learned {
        scope,
        until_ms: now_ms.saturating_add(millis(wait)),
        headers,
    })
}

/// The wait a `Retry-After` value asks for, at `now_ms`: delta-seconds or an HTTP-date
/// (RFC 9110 §10.2.3), capped at [`MAX_WAIT`]. `None` for garbage, zero, or a date not in
/// the future.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::proxy::rate_limit::{retry_after, MAX_WAIT};
///
/// let v = |s: &'static str| http::HeaderValue::from_static(s);
/// assert_eq!(retry_after(&v("120"), 0), Some(Duration::from_secs(120)));
/// assert_eq!(retry_after(&v("99999999999999999999999"), 0), Some(MAX_WAIT));
/// assert_eq!(retry_after(&v("soon"), 0), None);
/// // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
/// assert_eq!(
///     retry_after(&v("Sun, 06 Nov 1994 08:49:37 GMT"), 784_111_767_000),
///     Some(Duration::from_secs(10)),
/// );
/// ```
pub fn retry_after(value: &HeaderValue, now_ms: u64) -> Option<Duration> {
    let s = value.to_str().ok()?.trim();
    let wait_ms = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long time": capped below.
        s.parse::<u64>().unwrap_or(u64::MAX).saturating_mul(1000)
    } else {
        let at = httpdate::parse_http_date(s).ok()?;
        let at_ms = millis(at.duration_since(UNIX_EPOCH).ok()?);
        at_ms.checked_sub(now_ms)?
    };
    capped(wait_ms)
}

/// The wait until an `x-ratelimit-reset` value (unix seconds), at `now_ms`, capped at
/// [`MAX_WAIT`]. `None` for garbage or a reset not in the future.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::proxy::rate_limit::reset;
///
/// let v = |s: &'static str| http::HeaderValue::from_static(s);
/// assert_eq!(reset(&v("1700000060"), 1_700_000_000_000), Some(Duration::from_secs(60)));
/// assert_eq!(reset(&v("1600000000"), 1_700_000_000_000), None);
/// assert_eq!(reset(&v("-1"), 0), None);
/// ```
pub fn reset(value: &HeaderValue, now_ms: u64) -> Option<Duration> {
    let s = value.to_str().ok()?.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let at_ms = s.parse::<u64>().unwrap_or(u64::MAX).saturating_mul(1000);
    capped(at_ms.checked_sub(now_ms)?)
}

fn capped(wait_ms: u64) -> Option<Duration> {
    (wait_ms > 0).then(|| Duration::from_millis(wait_ms).min(MAX_WAIT))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Now, in unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn may_learn_holds_whenever_learning_finds_something() {
        let sets: [&[(&'static str, &'static str)]; 6] = [
            &[],
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1700000060"),
            ],
            &[("x-ratelimit-remaining", "5")],
            &[("retry-after", "30")],
            &[("retry-after", "30"), ("x-ratelimit-remaining", "0")],
            &[("x-ratelimit-reset", "1700000060")],
        ];
        for provider in [Provider::GitHub, Provider::Google] {
            for status in [200, 201, 304, 401, 403, 404, 429, 500, 503] {
                let status = StatusCode::from_u16(status).unwrap();
                for pairs in sets {
                    let h = headers(pairs);
                    let remaining = h.contains_key(&REMAINING);
                    if learn_at(provider, status, &h, || NOW).is_some() {
                        assert!(
                            may_learn(provider, status, remaining),
                            "{provider} {status} {pairs:?}"
                        );
                    }
                }
                // Neither a limiting status nor the header: nothing to look at.
                assert_eq!(
                    may_learn(provider, status, false),
                    status == StatusCode::TOO_MANY_REQUESTS
                        || (provider == Provider::GitHub && status == StatusCode::FORBIDDEN)
                );
            }
        }
        assert!(may_learn(Provider::GitHub, StatusCode::OK, true));
        assert!(!may_learn(Provider::Google, StatusCode::OK, true));
        assert!(is_remaining(&HeaderName::from_static(
            "x-ratelimit-remaining"
        )));
        assert!(!is_remaining(&HeaderName::from_static("x-ratelimit-reset")));
    }

    fn v(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn retry_after_seconds_dates_garbage_and_huge_values() {
        assert_eq!(retry_after(&v("2"), NOW), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(&v(" 7 "), NOW), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&v("0"), NOW), None);
        assert_eq!(retry_after(&v("3600"), NOW), Some(MAX_WAIT));
        assert_eq!(retry_after(&v("3601"), NOW), Some(MAX_WAIT));
        assert_eq!(retry_after(&v("18446744073709551615"), NOW), Some(MAX_WAIT));
        assert_eq!(
            retry_after(&v("999999999999999999999999999999"), NOW),
            Some(MAX_WAIT)
        );
        for garbage in [
            "",
            "-5",
            "1.5",
            "2s",
            "0x10",
            "tomorrow",
            "Sun, 99 Nov 1994",
        ] {
            assert_eq!(retry_after(&v(garbage), NOW), None, "{garbage:?}");
        }
        // Non-UTF-8 bytes.
        let raw = HeaderValue::from_bytes(b"\xff\xfe").unwrap();
        assert_eq!(retry_after(&raw, NOW), None);
        // HTTP-dates: IMF-fixdate, and the obsolete RFC 850 and asctime forms.
        let at = 784_111_777_000; // Sun, 06 Nov 1994 08:49:37 GMT
        for date in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                retry_after(&v(date), at - 30_000),
                Some(Duration::from_secs(30)),
                "{date}"
            );
            // A date in the past or now asks for no wait.
            assert_eq!(retry_after(&v(date), at), None);
            assert_eq!(retry_after(&v(date), at + 1), None);
        }
        // A date years ahead is capped.
        assert_eq!(
            retry_after(&v("Fri, 31 Dec 9999 23:59:59 GMT"), NOW),
            Some(MAX_WAIT)
        );
    }

    #[test]
    fn reset_is_unix_seconds_in_the_future_capped() {
        assert_eq!(reset(&v("1700000002"), NOW), Some(Duration::from_secs(2)));
        assert_eq!(reset(&v("1700000000"), NOW), None);
        assert_eq!(reset(&v("99999999999999999999"), NOW), Some(MAX_WAIT));
        assert_eq!(reset(&v("1700009999"), NOW), Some(MAX_WAIT));
        for garbage in ["", "soon", "1.7e9", "-1", "Sun, 06 Nov 1994 08:49:37 GMT"] {
            assert_eq!(reset(&v(garbage), NOW), None, "{garbage:?}");
        }
    }

    #[test]
    fn github_secondary_limits() {
        for status in [StatusCode::FORBIDDEN, StatusCode::TOO_MANY_REQUESTS] {
            let h = headers(&[
                ("retry-after", "60"),
                ("x-ratelimit-remaining", "12"),
                ("x-ratelimit-limit", "5000"),
                ("content-type", "application/json"),
            ]);
            let l = learn(Provider::GitHub, status, &h, NOW).unwrap();
            assert_eq!(l.scope, Scope::Upstream);
            assert_eq!(l.until_ms, NOW + 60_000);
            let names: Vec<&str> = l.headers.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names.len(), 2);
            assert!(names.contains(&"x-ratelimit-remaining"));
            assert!(names.contains(&"x-ratelimit-limit"));
        }
        // retry-after on a success or a 404 is no limit; nor is a garbage retry-after.
        let h = headers(&[("retry-after", "60")]);
        assert!(learn(Provider::GitHub, StatusCode::OK, &h, NOW).is_none());
        assert!(learn(Provider::GitHub, StatusCode::NOT_FOUND, &h, NOW).is_none());
        let h = headers(&[("retry-after", "later")]);
        assert!(learn(Provider::GitHub, StatusCode::FORBIDDEN, &h, NOW).is_none());
    }

    #[test]
    fn github_primary_limits_by_resource() {
        for (name, resource) in [
            ("search", Resource::Search),
            ("graphql", Resource::Graphql),
            ("core", Resource::Core),
        ] {
            let mut h = headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1700000030"),
            ]);
            h.insert("x-ratelimit-resource", HeaderValue::from_static(name));
            // The last allowed request (200) already says remaining 0.
            for status in [StatusCode::OK, StatusCode::FORBIDDEN] {
                let l = learn(Provider::GitHub, status, &h, NOW).unwrap();
                assert_eq!(l.scope, Scope::Resource(resource));
                assert_eq!(l.until_ms, NOW + 30_000);
                assert_eq!(l.headers.len(), 3);
            }
        }
        // No resource header: core.
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1700000030"),
        ]);
        let l = learn(Provider::GitHub, StatusCode::FORBIDDEN, &h, NOW).unwrap();
        assert_eq!(l.scope, Scope::Resource(Resource::Core));
        // Unmapped resource, remaining above 0, reset missing or past: nothing.
        for h in [
            headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1700000030"),
                ("x-ratelimit-resource", "code_search"),
            ]),
            headers(&[
                ("x-ratelimit-remaining", "1"),
                ("x-ratelimit-reset", "1700000030"),
            ]),
            headers(&[("x-ratelimit-remaining", "0")]),
            headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1600000000"),
            ]),
        ] {
            assert!(learn(Provider::GitHub, StatusCode::FORBIDDEN, &h, NOW).is_none());
        }
        // A 403 without retry-after and without remaining 0 is a permission error.
        let h = headers(&[("x-ratelimit-remaining", "4999")]);
        assert!(learn(Provider::GitHub, StatusCode::FORBIDDEN, &h, NOW).is_none());
        // Google has no primary-limit headers.
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1700000030"),
        ]);
        assert!(learn(Provider::Google, StatusCode::OK, &h, NOW).is_none());
    }

    #[test]
    fn google_429_with_retry_after() {
        let h = headers(&[("retry-after", "5")]);
        let l = learn(Provider::Google, StatusCode::TOO_MANY_REQUESTS, &h, NOW).unwrap();
        assert_eq!((l.scope, l.until_ms), (Scope::Upstream, NOW + 5_000));
        assert!(l.headers.is_empty());
        // A 403 (quota, scope) never blocks on Google; a 429 without Retry-After neither.
        assert!(learn(Provider::Google, StatusCode::FORBIDDEN, &h, NOW).is_none());
        let none = HeaderMap::new();
        assert!(learn(Provider::Google, StatusCode::TOO_MANY_REQUESTS, &none, NOW).is_none());
    }

    #[test]
    fn scope_names_round_trip() {
        for (i, s) in Scope::ALL.into_iter().enumerate() {
            assert_eq!(s.index(), i);
            assert_eq!(Scope::from_name(s.as_str()), Some(s));
        }
        assert_eq!(Scope::from_name("x"), None);
    }
}
