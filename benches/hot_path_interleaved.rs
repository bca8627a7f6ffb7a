//! The hot-path target, measured interleaved: the bare inner service, tower-http's static
//! `AddAuthorization`, and the layer with a valid cached token alternate in short rounds, so
//! that drift on a shared machine hits all three alike. Prints the median ns per request of
//! each and the ratio of the layer's added cost to `AddAuthorization`'s.
//!
//! Run: `cargo bench --bench hot_path_interleaved` (optional args: ROUNDS ITERS_PER_ROUND).
//!
//! For instruction counts (callgrind), `HOT_PATH_ONLY=bare|auth|layer` runs only that variant
//! (GET then POST, no loopback part): the difference of two runs' totals divided by the
//! requests is what a variant adds per request, free of the machine's noise.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
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

/// ns per request of `iters` calls of `svc`.
fn run<S>(svc: &mut S, body: &Bytes, iters: u32) -> f64
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let method = if body.is_empty() { "GET" } else { "POST" };
    let started = Instant::now();
    for _ in 0..iters {
        let req = Request::builder()
            .method(method)
            .uri(URI)
            .body(Full::new(body.clone()))
            .unwrap();
        now(ServiceExt::<Request<Full<Bytes>>>::ready(svc)).unwrap();
        black_box(now(svc.call(req)).unwrap());
    }
    started.elapsed().as_nanos() as f64 / iters as f64
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
        for body in [Bytes::new(), Bytes::from(vec![7u8; 1024])] {
            let layer = RefreshLayer::new(tokens.clone()).default_account("alice");
            for _ in 0..rounds {
                match only.as_str() {
                    "bare" => run(&mut Immediate, &body, iters),
                    "auth" => run(
                        &mut tower_http::auth::AddAuthorizationLayer::bearer("seeded")
                            .layer(Immediate),
                        &body,
                        iters,
                    ),
                    "layer" => run(&mut layer.layer(Immediate), &body, iters),
                    other => panic!("HOT_PATH_ONLY={other}: expected bare, auth or layer"),
                };
            }
        }
        return;
    }
    for (name, body) in [
        ("GET", Bytes::new()),
        ("POST 1KiB", Bytes::from(vec![7u8; 1024])),
    ] {
        let mut bare = Immediate;
        let mut auth = tower_http::auth::AddAuthorizationLayer::bearer("seeded").layer(Immediate);
        let mut layer = RefreshLayer::new(tokens.clone())
            .default_account("alice")
            .layer(Immediate);
        let (mut b, mut a, mut l) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            b.push(run(&mut bare, &body, iters));
            a.push(run(&mut auth, &body, iters));
            l.push(run(&mut layer, &body, iters));
        }
        let (b, a, l) = (median(b), median(a), median(l));
        let (added_auth, added_layer) = (a - b, l - b);
        println!(
            "{name:<10} {b:>8.1} {a:>18.1} {l:>14.1} {added_layer:>11.1} ns {:>22.1}",
            added_layer / added_auth.max(1.0)
        );
        println!("{:<10} AddAuthorization adds {added_auth:.1} ns", "");
    }
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
