//! Test support: the crate's in-process fakes (`oauth_refresh_proxy::demo`), request bodies, and
//! trace-level log capture to prove no secret is ever logged; [`process`]: the real binary as a
//! child process; [`http_client`]: requests to it, bounded and read to their end; [`config`]:
//! config text the tests share; [`redis_server`]: a real `redis-server` (TLS, cluster) for the
//! shared-store tests; [`shared_store`]: the replicas, configs and checks those tests share;
//! [`sdk`]: what the real-SDK tests share.
#![allow(dead_code)]

pub mod config;
#[cfg(feature = "sidecar")]
pub mod github_rest;
pub mod http_client;
#[cfg(feature = "sidecar")]
pub mod process;
#[cfg(feature = "sidecar")]
pub mod redis_server;
#[cfg(feature = "sidecar")]
pub mod rotating;
pub mod sdk;
#[cfg(feature = "sidecar")]
pub mod shared_store;
#[cfg(feature = "sidecar")]
pub mod world;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

pub use oauth_refresh_proxy::demo::*;

pub type TestBody = BoxBody<Bytes, Infallible>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// For a test whose outside prerequisite (`reason`: what is missing) is absent: under `CI=true`
/// it fails; otherwise it prints `SKIPPED: {test}: {reason} ({install})` straight to the
/// process's stderr (libtest captures `eprintln!` of passing tests, and the note must be
/// visible in a plain `cargo test`) and answers `true`: return.
pub fn skip_unless_ci(test: &str, reason: Option<String>, install: &str) -> bool {
    let Some(reason) = reason else {
        return false;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: {test} must not be skipped: {reason} ({install})");
    }
    let note = format!("\nSKIPPED: {test}: {reason} ({install})\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), note.as_bytes());
    true
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `valid_for` seconds from now (negative: that long ago).
pub fn expiry(valid_for: i64) -> std::time::SystemTime {
    let now = std::time::SystemTime::now();
    if valid_for >= 0 {
        now + std::time::Duration::from_secs(valid_for as u64)
    } else {
        now - std::time::Duration::from_secs((-valid_for) as u64)
    }
}

/// Log capture, a realm (`rotate`: its refreshes rotate the refresh token), its refresh backend
/// and the fake API of `provider`: (realm, backend URL, API address).
pub async fn start_fakes(
    name: &str,
    rotate: bool,
    provider: oauth_refresh_proxy::Provider,
) -> (std::sync::Arc<Realm>, String, std::net::SocketAddr) {
    capture_logs();
    let realm = if rotate {
        Realm::rotating(name)
    } else {
        Realm::new(name)
    };
    let backend = start_backend(realm.clone()).await;
    let api = start_api(realm.clone(), provider).await;
    (realm, backend, api)
}

/// Seeds `account` of `provider` in `tokens` with a fresh refresh token of `realm` and an access
/// token valid for `valid_for` seconds (negative: already expired). Returns (refresh, access).
pub fn seed_account(
    tokens: &oauth_refresh_proxy::Tokens,
    realm: &Realm,
    provider: oauth_refresh_proxy::Provider,
    account: &str,
    valid_for: i64,
) -> (String, String) {
    let refresh = realm.new_refresh_token();
    let access = realm.new_access_token(&refresh);
    tokens.insert(
        provider,
        account,
        oauth_refresh_proxy::TokenSeed::new(refresh.as_str())
            .access_token(access.as_str())
            .expires_at(expiry(valid_for)),
    );
    (refresh, access)
}

/// A refresher through the fake refresh `backend` of `realm`, with its bearer.
pub fn backend_refresher(backend: &str, realm: &Realm) -> oauth_refresh_proxy::BackendRefresher {
    oauth_refresh_proxy::BackendRefresher::new(backend)
        .unwrap()
        .bearer(oauth_refresh_proxy::Secret::new(
            realm.backend_token.clone().unwrap(),
        ))
}

/// `max_attempts`, each attempt (and its late answer) bounded by `timeout`, backing off from
/// 10 ms up to 50 ms.
pub fn retry_policy(
    max_attempts: u32,
    timeout: std::time::Duration,
) -> oauth_refresh_proxy::RetryPolicy {
    oauth_refresh_proxy::RetryPolicy {
        max_attempts,
        timeout,
        late_answer_window: timeout,
        base_backoff: std::time::Duration::from_millis(10),
        max_backoff: std::time::Duration::from_millis(50),
    }
}

/// Awaits each task in turn, each within [`WAIT`], and unwraps what it returned.
pub async fn joined_ok<T, E: std::fmt::Debug>(
    tasks: Vec<tokio::task::JoinHandle<Result<T, E>>>,
) -> Vec<T> {
    let mut got = Vec::new();
    for t in tasks {
        got.push(
            tokio::time::timeout(WAIT, t)
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    got
}

/// Polls (every 2 ms, at most [`WAIT`]) until `tokens` have counted `n` callers of `provider`
/// that joined a refresh in flight; `fail` (given the count then) says what is missing.
pub async fn wait_coalesced(
    tokens: &oauth_refresh_proxy::Tokens,
    provider: oauth_refresh_proxy::Provider,
    n: u64,
    fail: impl Fn(u64) -> String,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokens.stats(provider).coalesced < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            fail(tokens.stats(provider).coalesced)
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// `Some("Bearer {t}")`.
pub fn bearer(t: &str) -> Option<String> {
    Some(format!("Bearer {t}"))
}

/// The keys of an entry of the admin API's `/tokens` listing, sorted.
pub const LISTING_KEYS: [&str; 8] = [
    "account",
    "expires_at",
    "generation",
    "last_error",
    "last_refresh_at",
    "needs_reauth",
    "provider",
    "rate_limited_until",
];

/// A shared fixture file's JSON.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// A request body fed chunk by chunk by the test (unknown length, like a chunked upload).
pub struct ChannelBody {
    rx: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
}

impl ChannelBody {
    pub fn new() -> (tokio::sync::mpsc::UnboundedSender<Bytes>, ChannelBody) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (tx, ChannelBody { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// Captured log output of this test binary (every level).
pub fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let writer = move || LogWriter(buf);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(writer)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buf
    })
}

struct LogWriter(&'static Mutex<Vec<u8>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs trace-level capture; call first in every test.
pub fn capture_logs() {
    let _ = logs();
}

/// Asserts that no secret appears in the captured logs, and that the logs are not empty.
pub fn assert_no_secret_logged(secrets: &[String]) {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).to_string();
    assert!(!text.is_empty(), "log capture saw nothing");
    for s in secrets {
        assert!(!s.is_empty());
        assert!(!text.contains(s.as_str()), "secret {s:?} found in the logs");
    }
}
