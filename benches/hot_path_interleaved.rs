//! The hot-path target, measured interleaved: the bare inner service, tower-http's static
//! `AddAuthorization`, and the layer with a valid cached token alternate in short rounds, so
//! that drift on a shared machine hits all three alike. Prints the median ns per request of
//! each and the ratio of the layer's added cost to `AddAuthorization`'s.
//!
//! Run: `cargo bench --bench hot_path_interleaved` (optional args: ROUNDS ITERS_PER_ROUND).
//!
//! For instruction counts (callgrind), `HOT_PATH_ONLY=bare|auth|layer|floor` runs only that variant
//! (GET then POST, no loopback part): the difference of two runs' totals divided by the
//! requests is what a variant adds per request, free of the machine's noise. With
//! `HOT_PATH_STREAM=1` its POST body is the streamed one (below) instead of `Full`, and with
//! `HOT_PATH_HEADERS=1` every request carries [`CLIENT_HEADERS`].
//!
//! POST runs twice: with a `Full<Bytes>` body (whole in memory, as hyper-util's client is
//! usually fed) and with the same kilobyte as a streamed body (`StreamBody`, one frame, as the
//! sidecar's `Incoming` or a reqwest body arrives), which the layer records while it streams.
//! GET runs twice too: bare, and with the four headers a GitHub client typically sends
//! ([`CLIENT_HEADERS`]), which the layer keeps for a replay.
//!
//! A fourth variant, the *replay floor* ([`ReplayFloor`], `HOT_PATH_ONLY=floor`), is the least
//! any layer able to replay a request must add: `AddAuthorization`'s header insert plus a copy
//! of the request head (method, URI, the headers but `Authorization`) kept in the response
//! future until it completes. No token lookup, no body recording, no refresh: what the real
//! layer adds beyond the floor is its own work; what the floor adds beyond `AddAuthorization`
//! is the price of being able to replay at all (BENCHMARKS.md section 12).

mod common;

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use oauth_refresh_proxy::refresh::{BoxFuture, Refreshed, Refresher};
use oauth_refresh_proxy::{Provider, RefreshError, RefreshLayer, Secret, TokenSeed, Tokens};
use tower::{Layer, Service, ServiceExt};

use common::{now, Immediate, URI};

struct Unused;

impl Refresher for Unused {
    fn refresh<'a>(
        &'a self,
        _: Provider,
        _: &'a Secret,
    ) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
        Box::pin(async { Err(RefreshError::transient("not used")) })
    }
}

/// A streamed request body: the same bytes, one frame, not whole in memory.
type Streamed = StreamBody<
    futures_util::stream::Iter<
        std::option::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>,
    >,
>;

fn streamed(body: &Bytes) -> Streamed {
    StreamBody::new(futures_util::stream::iter(Some(Ok(Frame::data(
        body.clone(),
    )))))
}

fn full(body: &Bytes) -> Full<Bytes> {
    Full::new(body.clone())
}

/// The headers of a typical GitHub client's request (octocrab's, give or take).
const CLIENT_HEADERS: [(&str, &str); 4] = [
    ("user-agent", "octocrab/0.44"),
    ("accept", "application/vnd.github+json"),
    ("x-github-api-version", "2022-11-28"),
    ("accept-encoding", "gzip"),
];

/// The replay floor (module docs): inserts a static bearer and keeps the request head for a
/// replay that never comes, as cheaply as the head can be kept (the headers as a plain list of
/// reference-counted pairs).
#[derive(Clone)]
struct ReplayFloor<S> {
    inner: S,
    header: http::HeaderValue,
}

/// What [`ReplayFloor`] keeps: enough to send the request head again.
struct Head {
    _method: http::Method,
    _uri: http::Uri,
    _headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl<S> ReplayFloor<S> {
    fn new(inner: S) -> Self {
        ReplayFloor {
            inner,
            header: http::HeaderValue::from_static("Bearer seeded"),
        }
    }
}

impl<S, B> Service<Request<B>> for ReplayFloor<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = FloorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let headers = req.headers();
        let mut kept = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            if name != http::header::AUTHORIZATION {
                kept.push((name.clone(), value.clone()));
            }
        }
        let head = Head {
            _method: req.method().clone(),
            _uri: req.uri().clone(),
            _headers: kept,
        };
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, self.header.clone());
        FloorFuture {
            fut: self.inner.call(req),
            _head: head,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`ReplayFloor`]'s response future: the inner one, the head kept beside it.
    struct FloorFuture<F> {
        #[pin]
        fut: F,
        _head: Head,
    }
}

impl<F: Future> Future for FloorFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().fut.poll(cx)
    }
}

/// ns per request of `iters` calls of `svc`, each request's body made by `make`, each carrying
/// `headers`.
fn run<S, B>(
    svc: &mut S,
    body: &Bytes,
    make: fn(&Bytes) -> B,
    iters: u32,
    headers: &[(&'static str, &'static str)],
) -> f64
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    let method = if body.is_empty() { "GET" } else { "POST" };
    let started = Instant::now();
    for _ in 0..iters {
        let mut req = Request::builder();
        for &(name, value) in headers {
            req = req.header(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
        }
        let req = req.method(method).uri(URI).body(make(body)).unwrap();
        now(ServiceExt::<Request<B>>::ready(svc)).unwrap();
        black_box(now(svc.call(req)).unwrap());
    }
    started.elapsed().as_nanos() as f64 / iters as f64
}

/// The four variants alternated, `rounds` times; prints their medians and the ratios.
fn interleaved<B>(
    name: &str,
    tokens: &Tokens,
    body: &Bytes,
    make: fn(&Bytes) -> B,
    headers: &[(&'static str, &'static str)],
    rounds: usize,
    iters: u32,
) where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut bare = Immediate;
    let mut auth = tower_http::auth::AddAuthorizationLayer::bearer("seeded").layer(Immediate);
    let mut layer = RefreshLayer::new(tokens.clone())
        .default_account("alice")
        .layer(Immediate);
    let mut floor = ReplayFloor::new(Immediate);
    let (mut b, mut a, mut l, mut f) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        b.push(run(&mut bare, body, make, iters, headers));
        a.push(run(&mut auth, body, make, iters, headers));
        l.push(run(&mut layer, body, make, iters, headers));
        f.push(run(&mut floor, body, make, iters, headers));
    }
    let (b, a, l, f) = (median(b), median(a), median(l), median(f));
    let (added_auth, added_layer, added_floor) = (a - b, l - b, f - b);
    println!(
        "{name:<10} {b:>8.1} {a:>18.1} {l:>14.1} {added_layer:>11.1} ns {:>22.1}",
        added_layer / added_auth.max(1.0)
    );
    println!(
        "{:<10} AddAuthorization adds {added_auth:.1} ns; the replay floor adds {added_floor:.1} ns ({:.1}x)",
        "",
        added_floor / added_auth.max(1.0)
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with("--")).collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(31);
    let iters: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let tokens = Tokens::builder(Unused).build();
    tokens.insert(
        Provider::Google,
        "alice",
        TokenSeed::new("refresh")
            .access_token("seeded")
            .expires_at(SystemTime::now() + Duration::from_secs(86_400)),
    );
    println!(
        "hot path, interleaved: {rounds} rounds x {iters} requests per variant (median ns/request)"
    );
    println!(
        "{:<10} {:>8} {:>18} {:>14} {:>14} {:>22}",
        "request",
        "bare",
        "add_authorization",
        "refresh_layer",
        "layer added",
        "ratio vs AddAuthorization"
    );
    if let Ok(only) = std::env::var("HOT_PATH_ONLY") {
        let stream = std::env::var_os("HOT_PATH_STREAM").is_some_and(|v| !v.is_empty());
        let h: &[_] = if std::env::var_os("HOT_PATH_HEADERS").is_some_and(|v| !v.is_empty()) {
            &CLIENT_HEADERS
        } else {
            &[]
        };
        let layer = RefreshLayer::new(tokens.clone()).default_account("alice");
        let auth = tower_http::auth::AddAuthorizationLayer::bearer("seeded");
        let kib = Bytes::from(vec![7u8; 1024]);
        for _ in 0..rounds {
            match only.as_str() {
                "bare" => run(&mut Immediate, &Bytes::new(), full, iters, h),
                "auth" => run(&mut auth.layer(Immediate), &Bytes::new(), full, iters, h),
                "layer" => run(&mut layer.layer(Immediate), &Bytes::new(), full, iters, h),
                "floor" => run(
                    &mut ReplayFloor::new(Immediate),
                    &Bytes::new(),
                    full,
                    iters,
                    h,
                ),
                other => panic!("HOT_PATH_ONLY={other}: expected bare, auth, layer or floor"),
            };
        }
        for _ in 0..rounds {
            match (only.as_str(), stream) {
                ("bare", false) => run(&mut Immediate, &kib, full, iters, h),
                ("bare", true) => run(&mut Immediate, &kib, streamed, iters, h),
                ("auth", false) => run(&mut auth.layer(Immediate), &kib, full, iters, h),
                ("auth", true) => run(&mut auth.layer(Immediate), &kib, streamed, iters, h),
                ("layer", false) => run(&mut layer.layer(Immediate), &kib, full, iters, h),
                ("floor", false) => run(&mut ReplayFloor::new(Immediate), &kib, full, iters, h),
                ("floor", true) => run(&mut ReplayFloor::new(Immediate), &kib, streamed, iters, h),
                (_, _) => run(&mut layer.layer(Immediate), &kib, streamed, iters, h),
            };
        }
        return;
    }
    let kib = Bytes::from(vec![7u8; 1024]);
    let none: &[_] = &[];
    interleaved("GET", &tokens, &Bytes::new(), full, none, rounds, iters);
    let h = &CLIENT_HEADERS;
    interleaved("GET 4 hdrs", &tokens, &Bytes::new(), full, h, rounds, iters);
    interleaved("POST 1KiB", &tokens, &kib, full, none, rounds, iters);
    interleaved("STREAM 1KiB", &tokens, &kib, streamed, none, rounds, iters);
    drop(_guard);
    loopback(rounds.min(15), 2_000);
}

/// Around a real loopback round trip through the hyper-util client: bare client vs the layer
/// around it, interleaved; prints the median µs per request and the layer's share.
fn loopback(rounds: usize, iters: u32) {
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::TokioExecutor;
    use oauth_refresh_proxy::ReplayBody;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = oauth_refresh_proxy::demo::serve(|_req| async {
            Response::new(Full::new(Bytes::from_static(b"ok")))
        })
        .await;
        let uri = format!("http://{addr}/drive/v3/files");
        let tokens = Tokens::builder(Unused).build();
        tokens.insert(
            Provider::Google,
            "alice",
            TokenSeed::new("refresh")
                .access_token("seeded")
                .expires_at(SystemTime::now() + Duration::from_secs(86_400)),
        );
        let bare: Client<_, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let inner: Client<_, ReplayBody<Full<Bytes>>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let layered = RefreshLayer::new(tokens).default_account("alice").layer(inner);
        let (mut b, mut l) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let started = Instant::now();
            for _ in 0..iters {
                let req = Request::get(uri.as_str()).body(Full::new(Bytes::new())).unwrap();
                let resp = bare.request(req).await.unwrap();
                black_box(resp.into_body().collect().await.unwrap());
            }
            b.push(started.elapsed().as_nanos() as f64 / iters as f64 / 1000.0);
            let started = Instant::now();
            for _ in 0..iters {
                let mut req = Request::get(uri.as_str()).body(Full::new(Bytes::new())).unwrap();
                req.extensions_mut().insert(Provider::Google);
                let resp = layered.clone().oneshot(req).await.unwrap();
                black_box(resp.into_body().collect().await.unwrap());
            }
            l.push(started.elapsed().as_nanos() as f64 / iters as f64 / 1000.0);
        }
        let (b, l) = (median(b), median(l));
        println!();
        println!("loopback round trip through the hyper-util client, interleaved: {rounds} rounds x {iters} requests");
        println!("bare client {b:.2} us, with the layer {l:.2} us: the layer adds {:+.2}%", (l - b) / b * 100.0);
    });
}
