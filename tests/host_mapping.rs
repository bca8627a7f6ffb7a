//! The host lookup of the layer's hot path allocates nothing, with or without mapped hosts:
//! this binary counts allocations around `RefreshLayer::provider_for` (the lookup
//! `Refresh::call` runs on every request). One test only, so no other test allocates meanwhile.

use std::alloc::System;

use http::Uri;
use oauth_refresh_proxy::{BackendRefresher, Provider, RefreshLayer, Tokens};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn the_host_lookup_allocates_nothing() {
    let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    let bare = RefreshLayer::new(tokens.clone());
    let mapped = RefreshLayer::new(tokens)
        .host("ghe.example.com".parse().unwrap(), Provider::GitHub)
        .host("127.0.0.1:4000".parse().unwrap(), Provider::GitHub)
        .host(
            "*.googleapis.internal.example".parse().unwrap(),
            Provider::Google,
        )
        .host("*.internal.example:443".parse().unwrap(), Provider::GitHub);
    let cases = [
        (
            "https://api.github.com/user/repos?page=2",
            Some(Provider::GitHub),
            Some(Provider::GitHub),
        ),
        (
            "https://www.googleapis.com/drive/v3/files",
            Some(Provider::Google),
            Some(Provider::Google),
        ),
        (
            "https://GHE.example.com./api/v3/user",
            None,
            Some(Provider::GitHub),
        ),
        ("http://127.0.0.1:4000/user", None, Some(Provider::GitHub)),
        (
            "https://storage.googleapis.internal.example/b",
            None,
            Some(Provider::Google),
        ),
        (
            "https://git.internal.example/api/v3",
            None,
            Some(Provider::GitHub),
        ),
        ("https://example.com/", None, None),
    ];
    let uris: Vec<(Uri, Option<Provider>, Option<Provider>)> = cases
        .iter()
        .map(|(u, b, m)| (u.parse().unwrap(), *b, *m))
        .collect();

    let region = Region::new(GLOBAL);
    let mut found = 0;
    for _ in 0..1000 {
        for (uri, by_default, by_mapping) in &uris {
            found += usize::from(bare.provider_for(uri) == *by_default);
            found += usize::from(mapped.provider_for(uri) == *by_mapping);
        }
    }
    let stats = region.change();
    assert_eq!(found, 14_000, "every lookup found the expected provider");
    assert_eq!(
        stats.allocations + stats.reallocations,
        0,
        "{stats:?} in 14 000 lookups"
    );

    // The counter counts: parsing a URI allocates.
    let region = Region::new(GLOBAL);
    let uri: Uri = "https://api.github.com/".parse().unwrap();
    assert!(region.change().allocations > 0);
    drop(uri);
}
