//! The admin API's unit tests (over 600 lines: one fixture shared by every endpoint's tests).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};

use super::routing::percent_decode;
use super::*;
use crate::provider::Provider;
use crate::proxy::metrics;
use crate::refresh::{RefreshError, Refreshed, RetryPolicy};
use crate::token::{Secret, TokenSeed};

const ADMIN: &str = "ADMIN-SECRET-xyz";
const REFRESH: &str = "REFRESH-SECRET-abc";
const ACCESS: &str = "ACCESS-SECRET-def";
const NEW_ACCESS: &str = "NEW-ACCESS-SECRET-ghi";
const ROTATED: &str = "ROTATED-SECRET-jkl";
const SECRETS: [&str; 5] = [ADMIN, REFRESH, ACCESS, NEW_ACCESS, ROTATED];

use crate::refresh::scripted::{Script, Scripted};

struct Fixture {
    state: AdminState,
    script: Arc<Script>,
    ready: Arc<AtomicBool>,
    /// Every response body seen, for the no-secret check.
    bodies: Mutex<Vec<String>>,
}

fn fixture(admin_token: Option<&str>) -> Fixture {
    let script = Script::new(Refreshed {
        access_token: Secret::new(NEW_ACCESS),
        refresh_token: Some(Secret::new(ROTATED)),
        expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000)),
    });
    let tokens = Tokens::builder(Scripted(script.clone()))
        .retry(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .build();
    let ready = Arc::new(AtomicBool::new(true));
    let r = ready.clone();
    Fixture {
        state: AdminState {
            metrics: Metrics::new(tokens.clone()),
            tokens,
            admin_token: admin_token.map(Secret::new),
            ready: Arc::new(move || r.load(Ordering::SeqCst)),
            rate_limits: Default::default(),
        },
        script,
        ready,
        bodies: Mutex::new(Vec::new()),
    }
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }

    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap().to_string()
    }
}

impl Fixture {
    async fn send(&self, method: &str, path: &str, auth: Option<&str>, body: &str) -> Answer {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        self.send_req(req).await
    }

    async fn send_req<B>(&self, req: Request<B>) -> Answer
    where
        B: Body,
        B::Error: std::fmt::Display,
    {
        let resp = handle(&self.state, req).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(bytes.to_vec()).unwrap();
        self.bodies.lock().unwrap().push(body.clone());
        Answer {
            status,
            headers,
            body,
        }
    }

    fn assert_no_secrets(&self) {
        for body in self.bodies.lock().unwrap().iter() {
            for s in SECRETS {
                assert!(!body.contains(s), "secret {s} in response body {body}");
            }
        }
        let metrics = self.state.metrics.render();
        for s in SECRETS {
            assert!(!metrics.contains(s), "secret {s} in metrics");
        }
    }
}

fn bearer() -> Option<&'static str> {
    Some("Bearer ADMIN-SECRET-xyz")
}

#[tokio::test]
async fn health_ready_metrics() {
    let f = fixture(Some(ADMIN));
    let a = f.send("GET", "/healthz", None, "").await;
    assert_eq!((a.status, a.body.as_str()), (200, "ok"));
    let a = f.send("GET", "/readyz", None, "").await;
    assert_eq!((a.status, a.body.as_str()), (200, "ready"));
    f.ready.store(false, Ordering::SeqCst);
    let a = f.send("GET", "/readyz", None, "").await;
    assert_eq!((a.status, a.body.as_str()), (503, "not ready"));
    let a = f.send("GET", "/metrics", None, "").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["content-type"], metrics::CONTENT_TYPE);
    assert!(a
        .body
        .contains("orp_tokens{provider=\"google\",state=\"valid\"} 0"));
    for path in ["/healthz", "/readyz", "/metrics"] {
        let a = f.send("POST", path, None, "").await;
        assert_eq!(a.status, 405, "{path}");
        assert_eq!(a.headers["allow"], "GET");
        assert_eq!(a.code(), "method_not_allowed");
    }
}

#[tokio::test]
async fn admin_token_guards_the_token_api() {
    let f = fixture(Some(ADMIN));
    for (method, path) in [
        ("GET", "/tokens"),
        ("PUT", "/tokens/google/alice"),
        ("DELETE", "/tokens/google/alice"),
        ("POST", "/tokens/google/alice/refresh"),
        ("GET", "/nope"),
    ] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer ADMIN-SECRET-xy"),
            Some("Bearer ADMIN-SECRET-xyzz"),
            Some("Basic ADMIN-SECRET-xyz"),
            Some("ADMIN-SECRET-xyz"),
            Some("Bearer "),
        ] {
            let a = f.send(method, path, auth, r#"{"refresh_token":"x"}"#).await;
            assert_eq!(a.status, 401, "{method} {path} {auth:?}");
            assert_eq!(a.headers["www-authenticate"], "Bearer");
            assert_eq!(a.code(), "unauthorized");
        }
    }
    assert!(f.state.tokens.list().is_empty(), "nothing was created");
    // The scheme is case-insensitive.
    let a = f
        .send("GET", "/tokens", Some("bearer ADMIN-SECRET-xyz"), "")
        .await;
    assert_eq!(a.status, 200);
    let a = f.send("GET", "/tokens", bearer(), "").await;
    assert_eq!((a.status, a.body.as_str()), (200, "[]"));
    // Public endpoints need no token.
    assert_eq!(f.send("GET", "/healthz", None, "").await.status, 200);
    f.assert_no_secrets();
}

#[tokio::test]
async fn no_admin_token_means_open() {
    let f = fixture(None);
    let a = f.send("GET", "/tokens", None, "").await;
    assert_eq!(a.status, 200);
    let a = f.send("GET", "/tokens", Some("Bearer anything"), "").await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn put_list_delete() {
    let f = fixture(Some(ADMIN));
    let body = format!(
        r#"{{"refresh_token": "{REFRESH}", "access_token": "{ACCESS}", "expires_at": 4000000000}}"#
    );
    let a = f.send("PUT", "/tokens/google/alice", bearer(), &body).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.headers["content-type"], "application/json");
    let entry = a.json();
    assert_eq!(
        entry,
        serde_json::json!({
            "provider": "google", "account": "alice", "expires_at": 4000000000u64,
            "generation": 1, "needs_reauth": false, "last_refresh_at": null, "last_error": null,
            "rate_limited_until": null,
        })
    );
    // Milliseconds are accepted; 0 means unknown.
    let ms = format!(
        r#"{{"refresh_token": "{REFRESH}", "access_token": "{ACCESS}", "expires_at": 4000000000000}}"#
    );
    let a = f.send("PUT", "/tokens/google/alice", bearer(), &ms).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["expires_at"], 4000000000u64);
    assert_eq!(a.json()["generation"], 2);
    let zero = format!(r#"{{"refresh_token": "{REFRESH}", "expires_at": 0}}"#);
    let a = f
        .send("PUT", "/tokens/github/octo%40home", bearer(), &zero)
        .await;
    assert_eq!(a.status, 201);
    assert_eq!(a.json()["account"], "octo@home");
    assert_eq!(a.json()["expires_at"], serde_json::Value::Null);

    // A secondary limit of octo@home on GitHub shows in its entry only.
    let mut h = http::HeaderMap::new();
    h.insert("retry-after", HeaderValue::from_static("60"));
    f.state
        .rate_limits
        .upstream(
            &http::Uri::from_static("https://api.github.com"),
            Provider::GitHub,
        )
        .observe("octo@home", StatusCode::FORBIDDEN, &h);
    let now = crate::proxy::rate_limit::now_ms() / 1000;

    let a = f.send("GET", "/tokens", bearer(), "").await;
    assert_eq!(a.status, 200);
    let list = a.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["provider"], "google");
    assert_eq!(list[1]["account"], "octo@home");
    assert_eq!(list[0]["rate_limited_until"], serde_json::Value::Null);
    let until = list[1]["rate_limited_until"].as_u64().unwrap();
    assert!((now + 59..=now + 61).contains(&until), "{until} vs {now}");
    for e in list {
        let mut keys: Vec<_> = e.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "account",
                "expires_at",
                "generation",
                "last_error",
                "last_refresh_at",
                "needs_reauth",
                "provider",
                "rate_limited_until"
            ]
        );
    }

    let a = f
        .send("DELETE", "/tokens/github/octo%40home", bearer(), "")
        .await;
    assert_eq!((a.status, a.body.as_str()), (204, ""));
    let a = f
        .send("DELETE", "/tokens/github/octo%40home", bearer(), "")
        .await;
    assert_eq!(a.status, 404);
    assert_eq!(a.code(), "unknown_account");
    assert_eq!(a.json()["error"]["account"], "octo@home");
    assert_eq!(f.state.tokens.list().len(), 1);
    f.assert_no_secrets();
}

#[tokio::test]
async fn put_clears_needs_reauth() {
    let f = fixture(None);
    f.state
        .tokens
        .insert(Provider::GitHub, "dead", TokenSeed::new(REFRESH));
    f.script.push(Err(RefreshError::rejected("revoked")));
    let a = f
        .send("POST", "/tokens/github/dead/refresh", None, "")
        .await;
    assert_eq!(a.status, 401);
    assert!(
        f.state
            .tokens
            .get(Provider::GitHub, "dead")
            .unwrap()
            .needs_reauth
    );
    let a = f
        .send(
            "PUT",
            "/tokens/github/dead",
            None,
            &format!(r#"{{"refresh_token":"{ROTATED}"}}"#),
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["needs_reauth"], false);
    f.assert_no_secrets();
}

#[tokio::test]
async fn bad_put_bodies() {
    let f = fixture(Some(ADMIN));
    let cases = [
        "",
        "not json REFRESH-SECRET-abc",
        r#"{"refresh_token": "REFRESH-SECRET-abc""#,
        r#"{"access_token": "ACCESS-SECRET-def"}"#,
        r#"{"refresh_token": ""}"#,
        r#"{"refresh_token": 42}"#,
        r#"{"refresh_token": "REFRESH-SECRET-abc", "expires_at": "ACCESS-SECRET-def"}"#,
        r#"{"refresh_token": "REFRESH-SECRET-abc", "expires_at": 1.5}"#,
        r#"{"refresh_token": "REFRESH-SECRET-abc", "ACCESS-SECRET-def": 1}"#,
        r#"{"refresh_token": "REFRESH-SECRET-abc", "access_token": "ACCESS-SECRET-def\n"}"#,
        r#"["REFRESH-SECRET-abc"]"#,
    ];
    for body in cases {
        let a = f.send("PUT", "/tokens/google/alice", bearer(), body).await;
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert_eq!(a.code(), "bad_request");
        assert!(!a.body.contains("SECRET"), "echoed: {}", a.body);
    }
    // Path problems.
    for path in [
        "/tokens/gitlab/alice",
        "/tokens/google/a%2Fb",
        "/tokens/google/%ff",
        "/tokens/google/%zz",
        "/tokens/google/%4",
        "/tokens/google/",
    ] {
        let a = f
            .send("PUT", path, bearer(), r#"{"refresh_token":"r"}"#)
            .await;
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        assert_eq!(a.code(), "bad_request");
    }
    assert!(f.state.tokens.list().is_empty());
    f.assert_no_secrets();
}

#[tokio::test]
async fn body_limit() {
    let f = fixture(None);
    let big = format!(r#"{{"refresh_token": "{}"}}"#, "a".repeat(MAX_BODY));
    let a = f.send("PUT", "/tokens/google/alice", None, &big).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.code(), "payload_too_large");
    assert!(!a.body.contains("aaaa"));

    // Unknown length (a stream of frames) over the limit.
    let chunk = Bytes::from(vec![b' '; 16 * 1024]);
    let body = Chunked((0..5).map(|_| chunk.clone()).collect());
    let req = Request::put("/tokens/google/alice").body(body).unwrap();
    let a = f.send_req(req).await;
    assert_eq!(a.status, 413);

    // Exactly at the limit is fine.
    let prefix = r#"{"refresh_token": "r"}"#;
    let exact = format!("{prefix}{}", " ".repeat(MAX_BODY - prefix.len()));
    let a = f.send("PUT", "/tokens/google/alice", None, &exact).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(f.state.tokens.get(Provider::Google, "alice").is_some());
}

/// A body of unknown length, sent frame by frame.
struct Chunked(VecDeque<Bytes>);

impl Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn refresh_endpoint() {
    let f = fixture(Some(ADMIN));
    f.state.tokens.insert(
        Provider::Google,
        "alice",
        TokenSeed::new(REFRESH).access_token(ACCESS),
    );
    let a = f
        .send("POST", "/tokens/google/alice/refresh", bearer(), "")
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json(),
        serde_json::json!({"expires_at": 4000000000u64, "generation": 2})
    );
    assert_eq!(f.script.calls.load(Ordering::SeqCst), 1);

    // Transient → 503 refresh_unavailable with Retry-After.
    f.script.push(Err(RefreshError::transient("backend down")));
    let a = f
        .send("POST", "/tokens/google/alice/refresh", bearer(), "")
        .await;
    assert_eq!(a.status, 503);
    assert_eq!(a.code(), "refresh_unavailable");
    assert!(a.headers.contains_key("retry-after"));

    // The same without a usable access token.
    f.state
        .tokens
        .insert(Provider::GitHub, "octo", TokenSeed::new(REFRESH));
    f.script.push(Err(RefreshError::transient("backend down")));
    let a = f
        .send("POST", "/tokens/github/octo/refresh", bearer(), "")
        .await;
    assert_eq!(a.status, 503);
    assert_eq!(a.code(), "refresh_unavailable");
    // And a later success is 200 again.
    let a = f
        .send("POST", "/tokens/github/octo/refresh", bearer(), "")
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["generation"], 2);

    // Rejected → 401 refresh_rejected; then fail fast with no backend call.
    f.script.push(Err(RefreshError::rejected("revoked")));
    let a = f
        .send("POST", "/tokens/google/alice/refresh", bearer(), "")
        .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.code(), "refresh_rejected");
    assert_eq!(a.headers["x-oauth-refresh"], "rejected");
    assert!(a.headers.get("www-authenticate").is_none());
    let calls = f.script.calls.load(Ordering::SeqCst);
    let a = f
        .send("POST", "/tokens/google/alice/refresh", bearer(), "")
        .await;
    assert_eq!(a.status, 401);
    assert_eq!(f.script.calls.load(Ordering::SeqCst), calls);

    // Unknown account → 404.
    let a = f
        .send("POST", "/tokens/google/nobody/refresh", bearer(), "")
        .await;
    assert_eq!(a.status, 404);
    assert_eq!(a.code(), "unknown_account");

    let listed = f.send("GET", "/tokens", bearer(), "").await.json();
    assert_eq!(listed[0]["account"], "alice");
    assert_eq!(listed[0]["needs_reauth"], true);
    assert!(listed[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("revoked"));
    let metrics = f.send("GET", "/metrics", None, "").await.body;
    assert!(metrics.contains("orp_refresh_total{provider=\"google\",outcome=\"rejected\"} 1"));
    assert!(metrics.contains("orp_tokens{provider=\"google\",state=\"needs_reauth\"} 1"));
    f.assert_no_secrets();
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let f = fixture(None);
    for path in [
        "/",
        "/token",
        "/tokens/",
        "/tokens/google",
        "/tokens/google/a/b",
        "/healthz/",
        "/tokens/google/a/refresh/x",
    ] {
        let a = f.send("GET", path, None, "").await;
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(a.code(), "not_found");
    }
    for (method, path, allow) in [
        ("POST", "/tokens", "GET"),
        ("DELETE", "/tokens", "GET"),
        ("GET", "/tokens/google/alice", "PUT, DELETE"),
        ("POST", "/tokens/google/alice", "PUT, DELETE"),
        ("GET", "/tokens/google/alice/refresh", "POST"),
        ("PUT", "/tokens/google/alice/refresh", "POST"),
    ] {
        let a = f.send(method, path, None, "").await;
        assert_eq!(a.status, 405, "{method} {path}");
        assert_eq!(a.headers["allow"], allow);
        assert_eq!(a.code(), "method_not_allowed");
    }
}

/// Walks `GET /tokens?limit=N` along its `Link`s; returns the pages (as JSON arrays).
async fn walk(f: &Fixture, limit: usize) -> Vec<Vec<serde_json::Value>> {
    let mut pages = Vec::new();
    let mut uri = format!("/tokens?limit={limit}");
    loop {
        let a = f.send("GET", &uri, None, "").await;
        assert_eq!(a.status, 200, "{uri}: {}", a.body);
        assert_eq!(a.headers["content-type"], "application/json");
        pages.push(a.json().as_array().unwrap().clone());
        let Some(link) = a.headers.get("link") else {
            break;
        };
        let link = link.to_str().unwrap();
        let rest = link.strip_prefix('<').unwrap();
        let (target, rel) = rest.split_once('>').unwrap();
        assert_eq!(rel, "; rel=\"next\"");
        assert!(target.starts_with(&format!("/tokens?limit={limit}&after=")));
        uri = target.to_string();
        assert!(pages.len() < 1000, "no end");
    }
    pages
}

#[tokio::test]
async fn paging_follows_link_in_order() {
    let f = fixture(None);
    // Ids that need encoding in a query: space, '@', '&', '#', '+', '%', '/', non-ASCII.
    let odd = ["a b", "a@b", "a&b", "a#b", "a+b", "a%b", "a/b", "é", "x=y"];
    for id in odd {
        f.state.tokens.insert(
            Provider::GitHub,
            id,
            TokenSeed::new(REFRESH).access_token(ACCESS),
        );
    }
    for i in 0..250 {
        f.state.tokens.insert(
            Provider::Google,
            format!("g{i:03}"),
            TokenSeed::new(REFRESH),
        );
    }
    let expected: Vec<(String, String)> = f
        .state
        .tokens
        .list()
        .iter()
        .map(|a| (a.provider.to_string(), a.account.clone()))
        .collect();
    assert_eq!(expected.len(), 259);
    for limit in [1, 7, 100, 258, 259, 1000] {
        let pages = walk(&f, limit).await;
        assert_eq!(pages.len(), 259usize.div_ceil(limit), "limit {limit}");
        let mut seen = Vec::new();
        for p in &pages {
            assert!(p.len() <= limit);
            for e in p {
                seen.push((
                    e["provider"].as_str().unwrap().to_string(),
                    e["account"].as_str().unwrap().to_string(),
                ));
            }
        }
        assert_eq!(seen, expected, "limit {limit}");
    }
    // The default page is everything here (fewer than 1000), with no Link.
    let a = f.send("GET", "/tokens", None, "").await;
    assert_eq!(a.json().as_array().unwrap().len(), 259);
    assert!(a.headers.get("link").is_none());
    // The Link of a page ending on an odd id, exactly.
    let a = f
        .send("GET", "/tokens?limit=1&after=github/a%20b", None, "")
        .await;
    assert_eq!(a.json()[0]["account"], "a#b");
    assert_eq!(
        a.headers["link"],
        "</tokens?limit=1&after=github/a%23b>; rel=\"next\""
    );
    let a = f
        .send("GET", "/tokens?after=github/a%2Fb&limit=1", None, "")
        .await;
    assert_eq!(a.json()[0]["account"], "a@b");
    assert_eq!(
        a.headers["link"],
        "</tokens?limit=1&after=github/a%40b>; rel=\"next\""
    );
    f.assert_no_secrets();
}

#[tokio::test]
async fn paging_boundaries_and_bad_queries() {
    let f = fixture(Some(ADMIN));
    for id in ["a", "b", "c"] {
        f.state
            .tokens
            .insert(Provider::Google, id, TokenSeed::new(REFRESH));
    }
    // After the last account (existing or not): an empty array, no Link.
    for q in [
        "after=google/c",
        "after=github/zzz",
        "after=github/a&limit=10000",
    ] {
        let a = f.send("GET", &format!("/tokens?{q}"), bearer(), "").await;
        assert_eq!((a.status, a.body.as_str()), (200, "[]"), "{q}");
        assert!(a.headers.get("link").is_none(), "{q}");
    }
    // Exactly the rest: no Link.
    let a = f
        .send("GET", "/tokens?after=google/a&limit=2", bearer(), "")
        .await;
    assert_eq!(a.json().as_array().unwrap().len(), 2);
    assert!(a.headers.get("link").is_none());
    // One short: a Link.
    let a = f.send("GET", "/tokens?limit=2", bearer(), "").await;
    assert_eq!(
        a.headers["link"],
        "</tokens?limit=2&after=google/b>; rel=\"next\""
    );
    // Empty pieces are ignored.
    let a = f.send("GET", "/tokens?&limit=3&", bearer(), "").await;
    assert_eq!((a.status, a.json().as_array().unwrap().len()), (200, 3));
    for q in [
        "limit=0",
        "limit=10001",
        "limit=99999999999999999999999",
        "limit=-1",
        "limit=+5",
        "limit=",
        "limit",
        "limit=1.5",
        "limit=ten",
        "after=",
        "after=google",
        "after=google/",
        "after=gitlab/a",
        "after=/a",
        "after=google/%zz",
        "after=google/%ff",
        "after=google%2",
        "limit=1&limit=2",
        "after=google/a&after=google/b",
        "offset=5",
        "LIMIT=5",
    ] {
        let a = f.send("GET", &format!("/tokens?{q}"), bearer(), "").await;
        assert_eq!(a.status, 400, "{q}: {}", a.body);
        assert_eq!(a.code(), "bad_request", "{q}");
        assert!(a.headers.get("link").is_none());
    }
    let a = f.send("GET", "/tokens?limit=10001", bearer(), "").await;
    assert_eq!(
        a.json()["error"]["message"],
        "limit must be an integer from 1 to 10000"
    );
    // `after` is percent-decoded as a whole: the '/' may be encoded too.
    let a = f
        .send("GET", "/tokens?after=google%2Fa", bearer(), "")
        .await;
    assert_eq!(a.json()[0]["account"], "b");
    // The limit and the cursor are behind the admin token like the rest.
    let a = f.send("GET", "/tokens?limit=1", None, "").await;
    assert_eq!(a.status, 401);
    let a = f.send("GET", "/tokens?limit=0", None, "").await;
    assert_eq!(a.status, 401, "authorisation comes before validation");
    f.assert_no_secrets();
}

#[tokio::test]
async fn the_listing_streams_in_chunks() {
    let f = fixture(None);
    for i in 0..(CHUNK * 3 + 5) {
        f.state.tokens.insert(
            Provider::GitHub,
            format!("acct-{i:04}"),
            TokenSeed::new(REFRESH).access_token(ACCESS),
        );
    }
    let req = Request::get("/tokens")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = handle(&f.state, req).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none());
    let mut body = resp.into_body();
    assert_eq!(body.size_hint().exact(), None);
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        frames.push(frame.unwrap().into_data().unwrap());
    }
    // '[' + 100, 100, 100, the last 5 + ']'.
    assert_eq!(frames.len(), 4, "{frames:?}");
    let text: String = frames
        .iter()
        .map(|f| std::str::from_utf8(f).unwrap())
        .collect();
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(list.len(), CHUNK * 3 + 5);
    for (i, e) in list.iter().enumerate() {
        assert_eq!(e["account"], format!("acct-{i:04}"));
    }
    assert!(!text.contains(ACCESS) && !text.contains(REFRESH));
    for frame in &frames {
        let entries = frame.windows(10).filter(|w| w == b"\"provider\"").count();
        assert!(entries <= CHUNK, "{entries}");
    }
}

#[tokio::test]
async fn bearer_scheme_in_any_case() {
    let f = fixture(Some(ADMIN));
    for auth in [
        "Bearer ADMIN-SECRET-xyz",
        "bearer ADMIN-SECRET-xyz",
        "BEARER ADMIN-SECRET-xyz",
        "bEaReR ADMIN-SECRET-xyz",
    ] {
        for (method, path) in [("GET", "/tokens"), ("GET", "/tokens?limit=5")] {
            let a = f.send(method, path, Some(auth), "").await;
            assert_eq!(a.status, 200, "{auth}");
        }
        let a = f
            .send("DELETE", "/tokens/google/nobody", Some(auth), "")
            .await;
        assert_eq!(a.status, 404, "{auth}: authorised, then unknown");
    }
    for auth in [
        "Bearer admin-secret-xyz",
        "Bearerx ADMIN-SECRET-xyz",
        "Bear ADMIN-SECRET-xyz",
    ] {
        let a = f.send("GET", "/tokens", Some(auth), "").await;
        assert_eq!(a.status, 401, "{auth}: the token itself is case-sensitive");
    }
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
    assert_eq!(percent_decode("%C3%A9t%c3%a9").as_deref(), Some("été"));
    assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
    assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
    assert_eq!(percent_decode("%"), None);
    assert_eq!(percent_decode("%4"), None);
    assert_eq!(percent_decode("%+1"), None);
    assert_eq!(percent_decode("%C3"), None);
}
