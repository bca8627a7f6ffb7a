//! The rate-limit work on the sidecar's request path allocates nothing while no limit is
//! known, and checking an account that is not limited allocates nothing either: this binary
//! counts allocations around `UpstreamLimits::check` and `UpstreamLimits::observe` (which
//! `Proxy::route` runs on every request and answer). One test only, so no other test
//! allocates meanwhile.

use std::alloc::System;

use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use oauth_refresh_proxy::proxy::rate_limit::{RateLimits, Resource};
use oauth_refresh_proxy::Provider;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn checks_and_unlimited_answers_allocate_nothing() {
    let limits = RateLimits::default();
    let github = limits.upstream(
        &Uri::from_static("https://api.github.com"),
        Provider::GitHub,
    );
    let google = limits.upstream(
        &Uri::from_static("https://www.googleapis.com"),
        Provider::Google,
    );
    // What GitHub sends on every answer, and a permission 403.
    let mut ok = HeaderMap::new();
    ok.insert("x-ratelimit-limit", HeaderValue::from_static("5000"));
    ok.insert("x-ratelimit-remaining", HeaderValue::from_static("4999"));
    ok.insert("x-ratelimit-reset", HeaderValue::from_static("1700000000"));
    ok.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
    let denied = HeaderMap::new();

    let region = Region::new(GLOBAL);
    let mut passed = 0;
    for _ in 0..1000 {
        for r in [Resource::Core, Resource::Search, Resource::Graphql] {
            passed += usize::from(github.check("octo", r).is_none());
        }
        passed += usize::from(google.check("alice", Resource::Core).is_none());
        github.observe("octo", StatusCode::OK, &ok);
        github.observe("octo", StatusCode::FORBIDDEN, &denied);
        google.observe("alice", StatusCode::FORBIDDEN, &denied);
    }
    let stats = region.change();
    assert_eq!(passed, 4000, "no request was held back");
    assert_eq!(
        stats.allocations + stats.reallocations,
        0,
        "{stats:?} in 4000 checks and 3000 answers without a limit"
    );

    // With another account limited, checking the others still allocates nothing.
    let mut limited = HeaderMap::new();
    limited.insert("retry-after", HeaderValue::from_static("60"));
    github.observe("someone", StatusCode::FORBIDDEN, &limited);
    assert!(github.check("someone", Resource::Core).is_some());
    let region = Region::new(GLOBAL);
    for _ in 0..1000 {
        assert!(github.check("octo", Resource::Core).is_none());
    }
    let stats = region.change();
    assert_eq!(stats.allocations + stats.reallocations, 0, "{stats:?}");

    // The counter counts: learning a limit allocates.
    let region = Region::new(GLOBAL);
    github.observe("octo", StatusCode::TOO_MANY_REQUESTS, &limited);
    assert!(region.change().allocations > 0);
    assert!(github.check("octo", Resource::Core).is_some());
}
