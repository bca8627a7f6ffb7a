//! Criterion benchmarks of the layer. Every figure is read against a baseline measured in the
//! same run (see BENCHMARKS.md for the ratios and the targets):
//!
//! 1. `hot_path/*`: the layer with a valid cached token around an in-process inner service
//!    that answers at once, vs the bare inner service, vs tower-http's static
//!    `AddAuthorization` — for a bodiless GET and a 1 KiB POST; and around a real loopback round
//!    trip through the hyper-util client.
//! 2. `contention/*`: 64 tasks on 2 worker threads, over 1 hot account and over 100 000.
//! 3. `refresh_storm/*`: N concurrent requests on a revoked token, refresher with 5 ms latency:
//!    time until all complete (the refresher is asserted to be called exactly once).
//! 4. `replay/*`: a 401 → refresh → replay vs a plain 200, by body size.
//!
//! Run: `cargo bench --bench layer`.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use oauth_refresh_proxy::refresh::{BoxFuture, Refreshed, Refresher};
use oauth_refresh_proxy::{
    Account, Provider, RefreshError, RefreshLayer, ReplayBody, Secret, TokenSeed, Tokens,
};
use tower::{Layer, Service, ServiceExt};

use common::{now, Immediate, URI};

/// A refresher that answers after `latency` with a new token each time, counting calls.
struct FakeBackend {
    latency: Duration,
    calls: AtomicU64,
    current: Arc<Mutex<String>>,
}

impl Refresher for FakeBackend {
    fn refresh<'a>(
        &'a self,
        _: Provider,
        _: &'a Secret,
    ) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
        Box::pin(async move {
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
            let token = format!("fresh-{n}");
            *self.current.lock().unwrap() = format!("Bearer {token}");
            Ok(Refreshed {
                access_token: Secret::new(token),
                refresh_token: None,
                expires_at: Some(SystemTime::now() + Duration::from_secs(3600)),
            })
        })
    }
}

fn tokens_with(latency: Duration) -> (Tokens, Arc<FakeBackend>) {
    let backend = Arc::new(FakeBackend {
        latency,
        calls: AtomicU64::new(0),
        current: Arc::new(Mutex::new("Bearer seeded".into())),
    });
    let tokens = Tokens::builder_arc(backend.clone()).build();
    tokens.insert(
        Provider::Google,
        "alice",
        TokenSeed::new("refresh")
            .access_token("seeded")
            .expires_at(SystemTime::now() + Duration::from_secs(3600)),
    );
    (tokens, backend)
}

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let (tokens, _) = tokens_with(Duration::ZERO);
    let payload = Bytes::from(vec![7u8; 1024]);

    for (name, body) in [("get", Bytes::new()), ("post_1k", payload.clone())] {
        let mut group = c.benchmark_group(format!("hot_path/{name}"));
        let req = || {
            Request::builder()
                .method(if body.is_empty() { "GET" } else { "POST" })
                .uri(URI)
                .body(Full::new(body.clone()))
                .unwrap()
        };
        let mut bare = Immediate;
        group.bench_function("bare", |b| {
            b.iter(|| {
                now(ServiceExt::<Request<Full<Bytes>>>::ready(&mut bare)).unwrap();
                now(bare.call(req())).unwrap()
            })
        });
        let mut static_auth =
            tower_http::auth::AddAuthorizationLayer::bearer("seeded").layer(Immediate);
        group.bench_function("add_authorization", |b| {
            b.iter(|| {
                now(ServiceExt::<Request<Full<Bytes>>>::ready(&mut static_auth)).unwrap();
                now(static_auth.call(req())).unwrap()
            })
        });
        let mut layer = RefreshLayer::new(tokens.clone())
            .default_account("alice")
            .layer(Immediate);
        group.bench_function("refresh_layer", |b| {
            b.iter(|| {
                now(ServiceExt::<Request<Full<Bytes>>>::ready(&mut layer)).unwrap();
                now(layer.call(req())).unwrap()
            })
        });
        group.finish();
    }
}

fn loopback(c: &mut Criterion) {
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::TokioExecutor;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(oauth_refresh_proxy::demo::serve(|_req| async {
        Response::new(Full::new(Bytes::from_static(b"ok")))
    }));
    let uri = format!("http://{addr}/drive/v3/files");
    let _guard = rt.enter();
    let (tokens, _) = tokens_with(Duration::ZERO);
    let mut group = c.benchmark_group("hot_path/loopback_round_trip");
    let bare: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    group.bench_function("bare_client", |b| {
        b.to_async(&rt).iter(|| {
            let req = Request::get(uri.as_str())
                .body(Full::new(Bytes::new()))
                .unwrap();
            let client = bare.clone();
            async move {
                let resp = client.request(req).await.unwrap();
                resp.into_body().collect().await.unwrap()
            }
        })
    });
    let client: Client<_, ReplayBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let layered = RefreshLayer::new(tokens)
        .default_account("alice")
        .layer(client);
    group.bench_function("refresh_layer_client", |b| {
        b.to_async(&rt).iter(|| {
            let mut req = Request::get(uri.as_str())
                .body(Full::new(Bytes::new()))
                .unwrap();
            req.extensions_mut().insert(Provider::Google);
            let svc = layered.clone();
            async move {
                let resp = svc.oneshot(req).await.unwrap();
                resp.into_body().collect().await.unwrap()
            }
        })
    });
    group.finish();
}

fn contention(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let (tokens, _) = tokens_with(Duration::ZERO);
    let accounts: Arc<Vec<Account>> = Arc::new(
        (0..100_000)
            .map(|i| {
                let id = format!("acct-{i}");
                tokens.insert(
                    Provider::Google,
                    id.as_str(),
                    TokenSeed::new("r")
                        .access_token(format!("tok-{i}").as_str())
                        .expires_at(SystemTime::now() + Duration::from_secs(3600)),
                );
                Account::new(id)
            })
            .collect(),
    );
    let layer = RefreshLayer::new(tokens)
        .default_account("alice")
        .layer(Immediate);
    const TASKS: u64 = 64;
    let mut group = c.benchmark_group("contention");
    group.throughput(Throughput::Elements(1));
    for (name, spread) in [("1_hot_account", false), ("100k_accounts", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let per_task = iters.div_ceil(TASKS);
                let started = Instant::now();
                rt.block_on(async {
                    let handles: Vec<_> = (0..TASKS)
                        .map(|t| {
                            let mut svc = layer.clone();
                            let accounts = accounts.clone();
                            tokio::spawn(async move {
                                for i in 0..per_task {
                                    let mut req =
                                        Request::get(URI).body(Full::new(Bytes::new())).unwrap();
                                    if spread {
                                        let idx = ((t * 7919 + i * 104_729) % accounts.len() as u64)
                                            as usize;
                                        req.extensions_mut().insert(accounts[idx].clone());
                                    }
                                    ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
                                        .await
                                        .unwrap();
                                    svc.call(req).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for h in handles {
                        h.await.unwrap();
                    }
                });
                started
                    .elapsed()
                    .mul_f64(iters as f64 / (per_task * TASKS) as f64)
            })
        });
    }
    group.finish();
}

/// The inner service of the storm: 401 unless the request carries the current token.
#[derive(Clone)]
struct Api {
    current: Arc<Mutex<String>>,
}

impl<B> Service<Request<B>> for Api
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ok = req.headers().get("authorization").map(|v| v.as_bytes())
            == Some(self.current.lock().unwrap().as_bytes());
        Box::pin(async move {
            let _ = req.into_body().collect().await;
            let mut resp = Response::new(Empty::new());
            if !ok {
                *resp.status_mut() = StatusCode::UNAUTHORIZED;
            }
            Ok(resp)
        })
    }
}

fn refresh_storm(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("refresh_storm");
    group.sample_size(20);
    // The baseline of the storm target: the fake backend's own latency in this runtime (a
    // 5 ms tokio sleep lasts a little longer: the timer has a 1 ms granularity).
    group.bench_function("backend_latency_alone", |b| {
        b.iter_custom(|iters| {
            let (_, backend) = rt.block_on(async { tokens_with(Duration::from_millis(5)) });
            let refresh_token = Secret::new("r");
            let started = Instant::now();
            for _ in 0..iters {
                rt.block_on(backend.refresh(Provider::Google, &refresh_token))
                    .unwrap();
            }
            started.elapsed()
        })
    });
    for n in [1usize, 100, 10_000] {
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += rt.block_on(async {
                        let (tokens, backend) = tokens_with(Duration::from_millis(5));
                        // The seeded token is revoked: the API only accepts a refreshed one.
                        *backend.current.lock().unwrap() = "Bearer none-yet".into();
                        let api = Api {
                            current: backend.current.clone(),
                        };
                        let layer = RefreshLayer::new(tokens)
                            .default_account("alice")
                            .layer(api);
                        let started = Instant::now();
                        let handles: Vec<_> = (0..n)
                            .map(|_| {
                                let svc = layer.clone();
                                tokio::spawn(async move {
                                    let req =
                                        Request::get(URI).body(Full::new(Bytes::new())).unwrap();
                                    svc.oneshot(req).await.unwrap().status()
                                })
                            })
                            .collect();
                        for h in handles {
                            assert_eq!(h.await.unwrap(), StatusCode::OK);
                        }
                        let took = started.elapsed();
                        assert_eq!(
                            backend.calls.load(Ordering::Relaxed),
                            1,
                            "one refresh per storm"
                        );
                        took
                    });
                }
                total
            })
        });
    }
    group.finish();
}

fn replay(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("replay");
    for size in [0usize, 1024, 64 * 1024, 1024 * 1024] {
        group.throughput(Throughput::Bytes(size as u64));
        let body = Bytes::from(vec![1u8; size]);
        let (tokens, backend) = rt.block_on(async { tokens_with(Duration::ZERO) });
        *backend.current.lock().unwrap() = "Bearer seeded".into();
        let api = Api {
            current: backend.current.clone(),
        };
        let layer = RefreshLayer::new(tokens.clone())
            .default_account("alice")
            .layer(api);
        group.bench_with_input(BenchmarkId::new("plain_200", size), &size, |b, _| {
            b.to_async(&rt).iter(|| {
                let req = Request::post(URI).body(Full::new(body.clone())).unwrap();
                layer.clone().oneshot(req)
            })
        });
        group.bench_with_input(
            BenchmarkId::new("401_refresh_replay", size),
            &size,
            |b, _| {
                b.to_async(&rt).iter(|| {
                    // Revoke the current token so this request meets a 401.
                    *backend.current.lock().unwrap() = "Bearer revoked".into();
                    let req = Request::post(URI).body(Full::new(body.clone())).unwrap();
                    let svc = layer.clone();
                    async move {
                        let resp = svc.oneshot(req).await.unwrap();
                        assert_eq!(resp.status(), StatusCode::OK);
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(
    benches,
    hot_path,
    loopback,
    contention,
    refresh_storm,
    replay
);
criterion_main!(benches);
