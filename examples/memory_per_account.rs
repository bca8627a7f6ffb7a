//! Bytes per cached account: inserts 1 000 000 accounts with realistic token sizes into
//! `Tokens` and reports the growth of the process's resident memory.
//!
//! Run: `cargo run --release --example memory_per_account [ACCOUNTS]` (Linux: reads /proc).

use std::time::{Duration, SystemTime};

use oauth_refresh_proxy::refresh::{BoxFuture, Refreshed, Refresher};
use oauth_refresh_proxy::{Provider, RefreshError, Secret, TokenSeed, Tokens};

struct Never;

impl Refresher for Never {
    fn refresh<'a>(
        &'a self,
        _: Provider,
        _: &'a Secret,
    ) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
        Box::pin(async { Err(RefreshError::transient("not used")) })
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let tokens = Tokens::builder(Never).build();
    // Realistic sizes: a Google access token is ~180 bytes (ya29.…), a refresh token ~100.
    let access_pad = "a".repeat(170);
    let refresh_pad = "r".repeat(90);
    let expires = SystemTime::now() + Duration::from_secs(3600);
    let before = rss_bytes();
    for i in 0..n {
        let id = format!("user-{i:07}");
        tokens.insert(
            if i % 2 == 0 {
                Provider::Google
            } else {
                Provider::GitHub
            },
            id.as_str(),
            TokenSeed::new(format!("1//{refresh_pad}{i:07}"))
                .access_token(format!("ya29.{access_pad}{i:07}"))
                .expires_at(expires),
        );
    }
    let after = rss_bytes();
    let per = (after - before) as f64 / n as f64;
    println!("accounts: {n}");
    println!(
        "resident memory growth: {:.1} MiB",
        (after - before) as f64 / (1 << 20) as f64
    );
    println!("bytes per cached account: {per:.0} (access token 181 B, refresh token 100 B, id 12 B included)");
    assert_eq!(tokens.list().len(), n);
}
