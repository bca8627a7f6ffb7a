//! The walkthrough that `oauth-refresh-proxy demo` runs (SPEC 4.7): the embedded default, no
//! credentials, no network. (The in-process fakes it drives are [`crate::demo`].)
//!
//! Starts, in-process on loopback, a fake Google API, a fake GitHub API and a fake refresh
//! backend ([`crate::demo`]), then the real sidecar in front of them, and drives a scripted
//! scenario — a valid token, an expired token, a revoked token (401 → refresh → replay), a
//! burst of concurrent requests on a revoked token, a GitHub refresh-token rotation with
//! requests of the old generation still in flight, and a dead refresh token — printing a table
//! of what happened. `--serve` keeps it running and prints curl lines to try.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use super::config::{AccountSeed, Config, Route};
use super::sidecar::Sidecar;
use crate::demo::{self as fakes, Realm};
use crate::{Provider, Secret};

type DemoClient = Client<HttpConnector, Full<Bytes>>;

struct Row {
    step: &'static str,
    requests: usize,
    ok: usize,
    statuses: String,
    refreshes: u64,
    replays: u64,
    p50: Duration,
    max: Duration,
}

struct Demo {
    client: DemoClient,
    proxy: std::net::SocketAddr,
    realm: Arc<Realm>,
    sidecar_tokens: crate::Tokens,
}

impl Demo {
    fn replays(&self) -> u64 {
        Provider::ALL
            .iter()
            .map(|p| self.sidecar_tokens.stats(*p).replayed)
            .sum()
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        account: &str,
        body: &'static [u8],
    ) -> (StatusCode, Duration) {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.proxy))
            .header("x-oauth-account", account)
            .body(Full::new(Bytes::from_static(body)))
            .expect("static request");
        let started = Instant::now();
        let status = match self.client.request(req).await {
            Ok(resp) => {
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                status
            }
            Err(_) => StatusCode::BAD_GATEWAY,
        };
        (status, started.elapsed())
    }

    /// Runs `n` concurrent requests and summarises them as a row.
    async fn step(
        &self,
        step: &'static str,
        n: usize,
        method: &str,
        path: &str,
        account: &str,
        body: &'static [u8],
    ) -> Row {
        let calls_before = self.realm.backend_calls.get();
        let replays_before = self.replays();
        let futures = (0..n).map(|_| self.request(method, path, account, body));
        let results = join_all(futures).await;
        let mut times: Vec<Duration> = results.iter().map(|r| r.1).collect();
        times.sort();
        let mut statuses: Vec<u16> = results.iter().map(|r| r.0.as_u16()).collect();
        statuses.sort();
        statuses.dedup();
        Row {
            step,
            requests: n,
            ok: results.iter().filter(|r| r.0.is_success()).count(),
            statuses: statuses
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
            refreshes: self.realm.backend_calls.get() - calls_before,
            replays: self.replays() - replays_before,
            p50: times[times.len() / 2],
            max: *times.last().expect("n > 0"),
        }
    }
}

/// Awaits all futures concurrently (on this task).
async fn join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let set: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    let mut set: Vec<_> = set.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in set.iter_mut().enumerate() {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(out) => {
                        outputs[i] = Some(out);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("completed")).collect()
}

fn seed(
    realm: &Realm,
    provider: Provider,
    id: &str,
    valid_for: Option<Duration>,
) -> (AccountSeed, String, String) {
    let refresh = realm.new_refresh_token();
    let access = realm.new_access_token(&refresh);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let expires_at = match valid_for {
        Some(d) => (now + d).as_secs(),
        None => now.as_secs().saturating_sub(60),
    };
    let seed = AccountSeed {
        provider,
        id: id.to_string(),
        refresh_token: Secret::new(refresh.as_str()),
        access_token: Some(Secret::new(access.as_str())),
        expires_at: Some(expires_at),
    };
    (seed, refresh, access)
}

/// Runs the demo. With `serve`, keeps the fakes and the proxy up until `shutdown`.
pub async fn run(serve: bool, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let realm = Realm::rotating("demo");
    let backend_url = fakes::start_backend(realm.clone()).await;
    let google = fakes::start_api(realm.clone(), Provider::Google).await;
    let github = fakes::start_api(realm.clone(), Provider::GitHub).await;

    let hour = Some(Duration::from_secs(3600));
    let (alice, _, _) = seed(&realm, Provider::Google, "alice", None); // expired
    let (octocat, _, octo_access) = seed(&realm, Provider::GitHub, "octocat", hour);
    let (bob, _, bob_access) = seed(&realm, Provider::Google, "bob", hour);
    let (mallory, mallory_refresh, mallory_access) =
        seed(&realm, Provider::GitHub, "mallory", hour);

    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("static address"),
        admin_listen: Some("127.0.0.1:0".parse().expect("static address")),
        ..Config::default()
    };
    config.refresh.backend_url = Some(backend_url);
    config.refresh.backend_token = realm.backend_token.clone().map(Secret::new);
    config.routes = vec![
        Route {
            prefix: "/google".into(),
            upstream: format!("http://{google}")
                .parse()
                .map_err(|e| format!("{e}"))?,
            provider: Provider::Google,
            default_account: Some("alice".into()),
            rate_limit: Default::default(),
            rewrite_body: true,
        },
        Route {
            prefix: "/github".into(),
            upstream: format!("http://{github}")
                .parse()
                .map_err(|e| format!("{e}"))?,
            provider: Provider::GitHub,
            default_account: None,
            rate_limit: Default::default(),
            rewrite_body: true,
        },
    ];
    config.accounts = vec![alice, octocat, bob, mallory];
    let sidecar = Sidecar::new(&config).await.map_err(|e| e.to_string())?;
    let tokens = sidecar.tokens().clone();
    let (proxy_listener, admin_listener) =
        Sidecar::bind(&config).await.map_err(|e| e.to_string())?;
    let proxy = proxy_listener.local_addr().map_err(|e| e.to_string())?;
    let admin = admin_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .ok_or("admin listener")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(sidecar.run(
        proxy_listener,
        admin_listener,
        stop_rx,
        Duration::from_secs(5),
    ));

    let demo = Demo {
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        proxy,
        realm: realm.clone(),
        sidecar_tokens: tokens.clone(),
    };

    println!("oauth-refresh-proxy demo: fake Google API {google}, fake GitHub API {github}, fake refresh backend, proxy {proxy}\n");
    let mut rows = Vec::new();
    rows.push(
        demo.step(
            "valid token injected (github/octocat)",
            1,
            "GET",
            "/github/user",
            "octocat",
            b"",
        )
        .await,
    );
    rows.push(
        demo.step(
            "expired token: refreshed before sending",
            1,
            "GET",
            "/google/drive/v3/files",
            "alice",
            b"",
        )
        .await,
    );
    realm.revoke_access(&bob_access);
    rows.push(
        demo.step(
            "revoked token: 401, refresh, replay POST",
            1,
            "POST",
            "/google/drive/v3/files",
            "bob",
            br#"{"name":"report.txt"}"#,
        )
        .await,
    );
    // Revoke bob's current token again and send a burst.
    if let Some(current) = realm.seen().last().and_then(|s| s.authorization.clone()) {
        realm.revoke_access(current.trim_start_matches("Bearer "));
    }
    rows.push(
        demo.step(
            "burst: 200 concurrent on a revoked token",
            200,
            "GET",
            "/google/drive/v3/about",
            "bob",
            b"",
        )
        .await,
    );
    // GitHub rotation: the refresh rotates the refresh token and kills the old access token;
    // requests still carrying it are replayed with the new one, never refreshed again.
    realm.revoke_access(&octo_access);
    rows.push(
        demo.step(
            "github rotation: 100 concurrent, old token",
            100,
            "GET",
            "/github/user/repos",
            "octocat",
            b"",
        )
        .await,
    );
    realm.revoke_refresh(&mallory_refresh);
    realm.revoke_access(&mallory_access);
    rows.push(
        demo.step(
            "dead refresh token: rejected",
            1,
            "GET",
            "/github/user",
            "mallory",
            b"",
        )
        .await,
    );
    rows.push(
        demo.step(
            "dead refresh token: fails fast, no refresh",
            20,
            "GET",
            "/github/user",
            "mallory",
            b"",
        )
        .await,
    );

    println!(
        "{:<44} {:>5} {:>5} {:>9} {:>9} {:>7} {:>9} {:>9}",
        "scenario", "reqs", "ok", "status", "refreshes", "replays", "p50", "max"
    );
    for r in &rows {
        println!(
            "{:<44} {:>5} {:>5} {:>9} {:>9} {:>7} {:>9.2?} {:>9.2?}",
            r.step, r.requests, r.ok, r.statuses, r.refreshes, r.replays, r.p50, r.max
        );
    }
    let octo = tokens.get(Provider::GitHub, "octocat");
    println!(
        "\noctocat's refresh token rotated: generation {}; mallory needs re-authorisation: {}",
        octo.map(|i| i.generation).unwrap_or_default(),
        tokens
            .get(Provider::GitHub, "mallory")
            .is_some_and(|i| i.needs_reauth),
    );
    let expected = [0, 1, 1, 1, 1, 1, 0];
    let healthy = rows.iter().zip(expected).all(|(r, e)| r.refreshes == e)
        && rows[..5].iter().all(|r| r.ok == r.requests)
        && rows[5..].iter().all(|r| r.ok == 0);
    println!(
        "{}",
        if healthy {
            "every scenario behaved as designed: one refresh per account and token generation"
        } else {
            "UNEXPECTED: some scenario did not behave as designed (see the table)"
        }
    );

    if serve {
        println!("\nThe demo keeps running; try (Ctrl-C to stop):");
        println!("  curl -s http://{proxy}/google/drive/v3/files -H 'x-oauth-account: alice'");
        println!("  curl -s http://{proxy}/github/user -H 'x-oauth-account: octocat'");
        println!("  curl -s http://{proxy}/github/user -H 'x-oauth-account: mallory'   # dead refresh token");
        println!(
            "  curl -s http://{proxy}/nowhere                                     # unknown route"
        );
        println!("  curl -s http://{admin}/tokens");
        println!("  curl -s -X POST http://{admin}/tokens/github/octocat/refresh");
        println!("  curl -s http://{admin}/metrics | grep orp_");
        shutdown.await;
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    if healthy {
        Ok(())
    } else {
        Err("the demo scenario did not behave as designed".into())
    }
}
