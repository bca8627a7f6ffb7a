//! Rate limits in the sidecar (SPEC 4.10), black-box: the real binary in front of scripted
//! fake APIs (hyper servers on loopback that count every request and answer what the test
//! queued, else `200 {}`), and for the shared case two replicas on one real `redis-server`.
//!
//! Accounts are seeded with access tokens valid for a day, so no refresh ever happens; every
//! test ends by checking the tokens never show in the child's log.

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::http_client::Answer;
use support::process::Proxy;
use support::redis_server::RedisServer;
use support::world::metric;
use support::*;

// ---------------------------------------------------------------------------------------------
// A scripted fake API.
// ---------------------------------------------------------------------------------------------

/// One queued answer: status and headers (the body is `{}`).
type Reply = (u16, Vec<(&'static str, String)>);

#[derive(Default)]
struct Seen {
    /// The paths of every request, in order.
    paths: Vec<String>,
    queue: VecDeque<Reply>,
}

#[derive(Clone)]
struct FakeApi {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl FakeApi {
    async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let state = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, &req)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeApi { addr, seen }
    }

    /// Queues the answer to the next request.
    fn then(&self, status: u16, headers: &[(&'static str, String)]) {
        self.seen
            .lock()
            .unwrap()
            .queue
            .push_back((status, headers.to_vec()));
    }

    /// How many requests reached the fake.
    fn hits(&self) -> usize {
        self.seen.lock().unwrap().paths.len()
    }

    fn paths(&self) -> Vec<String> {
        self.seen.lock().unwrap().paths.clone()
    }
}

fn answer(state: &Mutex<Seen>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut seen = state.lock().unwrap();
    seen.paths.push(req.uri().path().to_string());
    let (status, headers) = seen
        .queue
        .pop_front()
        .unwrap_or((200, vec![("x-ratelimit-remaining", "4999".into())]));
    let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    for (k, v) in headers {
        resp.headers_mut().append(k, v.parse().unwrap());
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// The sidecar in front of the fakes.
// ---------------------------------------------------------------------------------------------

const GITHUB_ACCESS: &str = "ghu_ratelimit_access_secret";
const GITHUB_REFRESH: &str = "ghr_ratelimit_refresh_secret";
const GOOGLE_ACCESS: &str = "ya29.ratelimit_access_secret";
const GOOGLE_REFRESH: &str = "1//ratelimit_refresh_secret";

fn secrets() -> Vec<String> {
    [GITHUB_ACCESS, GITHUB_REFRESH, GOOGLE_ACCESS, GOOGLE_REFRESH]
        .map(String::from)
        .to_vec()
}

/// A config with `/github` (enforce) and `/github-pass` (`rate_limit = "pass"`) on `github`,
/// `/google` on `google`, accounts github `octo` and `other` and google `alice`, and `extra`
/// after the `[refresh]` keys (it may open further tables, e.g. `[store]`).
fn config(github: SocketAddr, google: SocketAddr, extra: &str) -> String {
    let at = now_secs() + 86_400;
    format!(
        r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[refresh]
backend_url = "http://127.0.0.1:1"
{extra}

[[route]]
prefix = "/github"
upstream = "http://{github}"
provider = "github"
default_account = "octo"

[[route]]
prefix = "/github-pass"
upstream = "http://{github}"
provider = "github"
default_account = "octo"
rate_limit = "pass"

[[route]]
prefix = "/google"
upstream = "http://{google}"
provider = "google"
default_account = "alice"

[[account]]
provider = "github"
id = "octo"
refresh_token = "{GITHUB_REFRESH}"
access_token = "{GITHUB_ACCESS}"
expires_at = {at}

[[account]]
provider = "github"
id = "other"
refresh_token = "{GITHUB_REFRESH}-2"
access_token = "{GITHUB_ACCESS}-2"
expires_at = {at}

[[account]]
provider = "google"
id = "alice"
refresh_token = "{GOOGLE_REFRESH}"
access_token = "{GOOGLE_ACCESS}"
expires_at = {at}
"#
    )
}

struct Setup {
    github: FakeApi,
    google: FakeApi,
    proxy: Proxy,
    client: support::http_client::HttpClient,
}

impl Setup {
    async fn start() -> Setup {
        let github = FakeApi::start().await;
        let google = FakeApi::start().await;
        let proxy = Proxy::start(&config(github.addr, google.addr, ""), &[], &[]).await;
        Setup {
            github,
            google,
            proxy,
            client: support::http_client::http1_client(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        get(&self.client, &self.proxy, path, &[]).await
    }

    async fn tokens(&self) -> serde_json::Value {
        tokens(&self.client, &self.proxy).await
    }

    async fn rate_limited_total(&self, route: &str) -> f64 {
        let text = self.admin_text("/metrics").await;
        metric(&text, "orp_rate_limited_total", &[("route", route)])
            .unwrap_or_else(|| panic!("no orp_rate_limited_total{{route={route:?}}}: {text}"))
    }

    async fn admin_text(&self, path: &str) -> String {
        let a = support::http_client::request(
            &self.client,
            "GET",
            &self.proxy.admin_url(path),
            &[],
            empty(),
        )
        .await;
        assert_eq!(a.status, 200);
        a.text()
    }

    fn finish(self) {
        self.proxy.assert_no_secret_in_stderr(&secrets());
    }
}

async fn get(
    client: &support::http_client::HttpClient,
    proxy: &Proxy,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    support::http_client::request(client, "GET", &proxy.url(path), headers, empty()).await
}

async fn tokens(client: &support::http_client::HttpClient, proxy: &Proxy) -> serde_json::Value {
    let a = support::http_client::request(client, "GET", &proxy.admin_url("/tokens"), &[], empty())
        .await;
    assert_eq!(a.status, 200);
    a.json()
}

fn entry<'a>(
    listing: &'a serde_json::Value,
    provider: &str,
    account: &str,
) -> &'a serde_json::Value {
    listing
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["provider"] == provider && e["account"] == account)
        .unwrap_or_else(|| panic!("no {provider}/{account} in {listing}"))
}

/// Asserts `a` is the proxy's own `429 rate_limited` with a `Retry-After` of 1 to `max`
/// seconds; returns that value.
fn assert_rate_limited(a: &Answer, max: u64) -> u64 {
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.code(), "rate_limited");
    let secs: u64 = a
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=max).contains(&secs), "Retry-After {secs}, max {max}");
    secs
}

/// `x-ratelimit-reset` `secs` from now.
fn reset_in(secs: u64) -> String {
    (now_secs() + secs).to_string()
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_limit_holds_every_request_back_until_it_ends() {
    let s = Setup::start().await;
    s.github.then(
        403,
        &[
            ("retry-after", "2".into()),
            ("x-ratelimit-limit", "5000".into()),
            ("x-ratelimit-remaining", "4000".into()),
            ("x-ratelimit-used", "1000".into()),
        ],
    );
    let first = s.get("/github/repos/o/r/issues").await;
    let limited_at = Instant::now();
    assert_eq!(
        first.status, 403,
        "the upstream's own 403 reaches the caller"
    );
    assert_eq!(s.github.hits(), 1);

    // 50 requests inside the window: none reaches the upstream.
    let mut answers = Vec::new();
    for i in 0..50 {
        let path = if i % 2 == 0 {
            "/github/user"
        } else {
            "/github/search/code"
        };
        answers.push(s.get(path).await);
    }
    assert!(
        limited_at.elapsed() < Duration::from_secs(2),
        "the burst took longer than the window"
    );
    for a in &answers {
        assert_rate_limited(a, 2);
        assert_eq!(a.header("x-ratelimit-limit"), Some("5000"));
        assert_eq!(a.header("x-ratelimit-remaining"), Some("4000"));
        assert_eq!(a.json()["error"]["provider"], "github");
        assert_eq!(a.json()["error"]["account"], "octo");
    }
    assert_eq!(s.github.hits(), 1, "nothing was sent during the limit");

    // Another account and another upstream are not held back.
    let other = get(
        &s.client,
        &s.proxy,
        "/github/user",
        &[("x-oauth-account", "other")],
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(s.get("/google/drive/v3/files").await.status, 200);
    assert_eq!(s.github.hits(), 2);

    // The listing shows the deadline while it lasts.
    let listing = s.tokens().await;
    let until = entry(&listing, "github", "octo")["rate_limited_until"]
        .as_u64()
        .expect("rate_limited_until while limited");
    assert!((now_secs()..=now_secs() + 3).contains(&until), "{until}");
    assert!(entry(&listing, "github", "other")["rate_limited_until"].is_null());
    assert!(entry(&listing, "google", "alice")["rate_limited_until"].is_null());

    // After the window the next request goes through: polled, bounded.
    let deadline = Instant::now() + WAIT;
    let mut refused = 50;
    let through = loop {
        let a = s.get("/github/user").await;
        if a.status == 200 {
            break a;
        }
        assert_rate_limited(&a, 2);
        refused += 1;
        assert!(Instant::now() < deadline, "still limited after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        limited_at.elapsed() >= Duration::from_millis(1900),
        "let through after {:?}, before the 2 s window ended",
        limited_at.elapsed()
    );
    assert_eq!(through.text(), "{}");
    assert_eq!(
        s.github.hits(),
        3,
        "exactly one more request reached the upstream"
    );
    assert_eq!(s.rate_limited_total("/github").await, refused as f64);
    assert_eq!(s.rate_limited_total("/google").await, 0.0);
    assert!(entry(&s.tokens().await, "github", "octo")["rate_limited_until"].is_null());
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_resource_blocks_its_paths_only() {
    let s = Setup::start().await;
    s.github.then(
        200,
        &[
            ("x-ratelimit-limit", "30".into()),
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", reset_in(30)),
            ("x-ratelimit-resource", "search".into()),
        ],
    );
    assert_eq!(s.get("/github/search/issues?q=x").await.status, 200);
    let a = s.get("/github/search/repositories?q=y").await;
    assert_rate_limited(&a, 31);
    assert_eq!(a.header("x-ratelimit-resource"), Some("search"));
    assert_eq!(a.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(s.github.hits(), 1);
    // core and graphql still go through.
    assert_eq!(s.get("/github/user").await.status, 200);
    assert_eq!(s.get("/github/graphql").await.status, 200);
    assert_eq!(
        s.github.paths(),
        ["/search/issues", "/user", "/graphql"],
        "the search request was held back"
    );

    // A graphql limit then blocks /graphql, not /user.
    s.github.then(
        200,
        &[
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", reset_in(30)),
            ("x-ratelimit-resource", "graphql".into()),
        ],
    );
    assert_eq!(s.get("/github/graphql").await.status, 200);
    assert_rate_limited(&s.get("/github/graphql").await, 31);
    assert_eq!(s.get("/github/user").await.status, 200);
    assert_eq!(s.github.hits(), 5);
    assert_eq!(s.rate_limited_total("/github").await, 2.0);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_without_limit_headers_blocks_nothing() {
    let s = Setup::start().await;
    // A permission error: retry-after absent, remaining above 0.
    s.github
        .then(403, &[("x-ratelimit-remaining", "4999".into())]);
    s.github.then(403, &[]);
    // A 404 with a retry-after is no limit either.
    s.github.then(404, &[("retry-after", "30".into())]);
    assert_eq!(s.get("/github/repos/o/private").await.status, 403);
    assert_eq!(s.get("/github/repos/o/private").await.status, 403);
    assert_eq!(s.get("/github/repos/o/gone").await.status, 404);
    assert_eq!(s.get("/github/user").await.status, 200);
    assert_eq!(s.github.hits(), 4);
    assert_eq!(s.rate_limited_total("/github").await, 0.0);
    assert!(entry(&s.tokens().await, "github", "octo")["rate_limited_until"].is_null());
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_route_forwards_while_its_upstream_is_limited() {
    let s = Setup::start().await;
    // Learnt through the pass route: its requests still go through, while the enforce route
    // to the same upstream holds them back.
    s.github.then(429, &[("retry-after", "60".into())]);
    assert_eq!(s.get("/github-pass/user").await.status, 429);
    assert_eq!(s.get("/github-pass/user").await.status, 200);
    assert_eq!(s.get("/github-pass/search/code").await.status, 200);
    assert_eq!(s.github.hits(), 3);
    assert_rate_limited(&s.get("/github/user").await, 60);
    assert_eq!(s.github.hits(), 3);
    assert_eq!(s.rate_limited_total("/github-pass").await, 0.0);
    assert_eq!(s.rate_limited_total("/github").await, 1.0);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_429_with_retry_after_holds_the_account_back() {
    let s = Setup::start().await;
    s.google.then(429, &[("retry-after", "30".into())]);
    let first = s.get("/google/drive/v3/files").await;
    assert_eq!(first.status, 429);
    assert!(first.header("content-type") == Some("application/json"));
    assert_eq!(s.google.hits(), 1);
    let a = s.get("/google/calendar/v3/calendars").await;
    let secs = assert_rate_limited(&a, 30);
    assert!(secs >= 29, "{secs}");
    assert_eq!(a.json()["error"]["provider"], "google");
    assert_eq!(a.json()["error"]["account"], "alice");
    assert_eq!(s.google.hits(), 1);
    // The GitHub account is unaffected.
    assert_eq!(s.get("/github/user").await.status, 200);
    let until = entry(&s.tokens().await, "google", "alice")["rate_limited_until"]
        .as_u64()
        .unwrap();
    assert!(
        (now_secs() + 28..=now_secs() + 31).contains(&until),
        "{until}"
    );

    // A Google 403 (quota, scope) with Retry-After is no limit.
    let s2 = Setup::start().await;
    s2.google.then(403, &[("retry-after", "30".into())]);
    assert_eq!(s2.get("/google/drive/v3/files").await.status, 403);
    assert_eq!(s2.get("/google/drive/v3/files").await.status, 200);
    assert_eq!(s2.google.hits(), 2);
    // Retry-After as an HTTP-date.
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(20));
    s2.google.then(429, &[("retry-after", date)]);
    assert_eq!(s2.get("/google/drive/v3/files").await.status, 429);
    let secs = assert_rate_limited(&s2.get("/google/drive/v3/files").await, 21);
    assert!(secs >= 18, "{secs}");
    assert_eq!(s2.google.hits(), 3);
    s.finish();
    s2.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_seen_by_one_replica_blocks_the_other() {
    let Some(redis) = RedisServer::start("a_limit_seen_by_one_replica_blocks_the_other") else {
        return;
    };
    let github = FakeApi::start().await;
    let google = FakeApi::start().await;
    let store = format!(
        "\n[store]\nkind = \"redis\"\nurl = \"{}\"\nlock_ttl = \"30s\"",
        redis.url()
    );
    let cfg = config(github.addr, google.addr, &store);
    let a = Proxy::start(&cfg, &[], &[]).await;
    let b = Proxy::start(&cfg, &[], &[]).await;
    let client = support::http_client::http1_client();

    github.then(403, &[("retry-after", "30".into())]);
    assert_eq!(get(&client, &a, "/github/user", &[]).await.status, 403);
    assert_rate_limited(&get(&client, &a, "/github/user", &[]).await, 30);
    assert_eq!(github.hits(), 1);

    // Replica B learns it through Redis: wait (bounded) until its listing shows it, without
    // sending requests that would reach the upstream meanwhile.
    let deadline = Instant::now() + WAIT;
    loop {
        let listing = tokens(&client, &b).await;
        if entry(&listing, "github", "octo")["rate_limited_until"].is_u64() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica B never learnt the limit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = get(&client, &b, "/github/user", &[]).await;
    let secs = assert_rate_limited(&held, 30);
    assert!(secs >= 25, "{secs}");
    assert_eq!(github.hits(), 1, "replica B sent nothing upstream");
    // Other accounts still go through on B.
    assert_eq!(
        get(&client, &b, "/github/user", &[("x-oauth-account", "other")])
            .await
            .status,
        200
    );
    assert_eq!(github.hits(), 2);

    // A replica started afterwards reads the limits still stored.
    let c = Proxy::start(&cfg, &[], &[]).await;
    let deadline = Instant::now() + WAIT;
    while !entry(&tokens(&client, &c).await, "github", "octo")["rate_limited_until"].is_u64() {
        assert!(
            Instant::now() < deadline,
            "replica C never read the stored limit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_rate_limited(&get(&client, &c, "/github/user", &[]).await, 30);
    assert_eq!(github.hits(), 2);

    // Redis gone: learning and enforcing limits goes on locally, no request fails for it.
    let mut redis = redis;
    redis.stop();
    github.then(429, &[("retry-after", "30".into())]);
    let other = [("x-oauth-account", "other")];
    assert_eq!(get(&client, &a, "/github/user", &other).await.status, 429);
    assert_rate_limited(&get(&client, &a, "/github/user", &other).await, 30);
    assert_eq!(
        get(&client, &a, "/google/drive/v3/files", &[]).await.status,
        200
    );
    assert_eq!(github.hits(), 3);

    for p in [a, b, c] {
        p.assert_no_secret_in_stderr(&secrets());
    }
}
