//! The layer around a hyper-util client with rustls, against in-process fakes.
//!
//! Run it with `cargo run --example embed_hyper_client`: no credentials, no network. It starts a
//! fake GitHub API and a fake Flashback-compatible refresh backend on loopback, wraps a real
//! hyper-util client (rustls, HTTP/1.1 + HTTP/2) in `RefreshLayer`, and prints what happened
//! at each step: tokens injected, refreshes, replays.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oauth_refresh_proxy::demo::{self, Realm};
use oauth_refresh_proxy::{
    BackendRefresher, Provider, RefreshLayer, RefreshOutcome, ReplayBody, Secret, TokenSeed, Tokens,
};
use tower::{Layer, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // In-process fakes: GitHub's API and a refresh backend that rotates refresh tokens like
    // GitHub does (the old refresh token and the old access token die at once).
    let realm = Realm::rotating("example");
    let backend_url = demo::start_backend(realm.clone()).await;
    let api = demo::start_api(realm.clone(), Provider::GitHub).await;

    // The token cache, refreshing through the backend.
    let refresher = BackendRefresher::new(&backend_url)?
        .bearer(Secret::new(realm.backend_token.clone().unwrap()));
    let tokens = Tokens::builder(refresher).build();
    let refresh = realm.new_refresh_token();
    let access = realm.new_access_token(&refresh);
    tokens.insert(
        Provider::GitHub,
        "octocat",
        TokenSeed::new(refresh)
            .access_token(access.as_str())
            .expires_at(SystemTime::now() + Duration::from_secs(3600)),
    );
    let mut events = tokens.events();

    // A real hyper-util client with rustls (https to real hosts, http to the fakes here).
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_platform_verifier()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    let client: Client<_, ReplayBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build(https);
    let client = RefreshLayer::new(tokens.clone())
        .default_account("octocat")
        .layer(client);

    // The fake listens on 127.0.0.1, so name the provider explicitly; against the real
    // api.github.com the host alone selects it.
    let send = |path: &str, body: &'static str| {
        let mut req = Request::post(format!("http://{api}{path}"))
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        req.extensions_mut().insert(Provider::GitHub);
        let client = client.clone();
        async move {
            let started = Instant::now();
            let resp = client.oneshot(req).await?;
            let status = resp.status();
            let _ = resp.into_body().collect().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, started.elapsed()))
        }
    };
    let report = |step: &str, status: http::StatusCode, took: Duration| {
        let st = tokens.stats(Provider::GitHub);
        println!(
            "{step:<44} {:>4} {:>8.2?}   backend calls {:>2}   refreshes {:>2}   replays {:>3}",
            status.as_u16(),
            took,
            realm.backend_calls.get(),
            st.refresh_success,
            st.replayed,
        );
    };

    println!("step                                       status     time");
    let (status, took) = send("/user", "").await?;
    report("1. valid cached token injected", status, took);

    realm.revoke_access(&access);
    let (status, took) = send("/repos/o/r/issues", r#"{"title":"hello"}"#).await?;
    report("2. token revoked: 401 -> refresh -> replay", status, took);

    let gen_before = tokens.get(Provider::GitHub, "octocat").unwrap().generation;
    let live = realm
        .seen()
        .last()
        .and_then(|s| s.authorization.clone())
        .unwrap_or_default();
    realm.revoke_access(live.trim_start_matches("Bearer "));
    let started = Instant::now();
    let burst: Vec<_> = (0..100).map(|_| tokio::spawn(send("/user", ""))).collect();
    let mut ok = 0;
    for t in burst {
        if t.await??.0.is_success() {
            ok += 1;
        }
    }
    report(
        &format!("3. 100 concurrent on a revoked token: {ok} ok"),
        http::StatusCode::OK,
        started.elapsed(),
    );
    let gen_after = tokens.get(Provider::GitHub, "octocat").unwrap().generation;
    println!("   generations {gen_before} -> {gen_after}: one refresh for the whole burst");

    while let Some(ev) = events.try_recv() {
        if let RefreshOutcome::Refreshed {
            rotated,
            refresh_token,
            ..
        } = ev.outcome
        {
            // The refresh token prints as [redacted]: persist `refresh_token.expose()` instead.
            println!(
                "   event: {}/{} refreshed in {:?}, refresh token rotated: {rotated} ({refresh_token})",
                ev.provider, ev.account, ev.duration
            );
        }
    }
    Ok(())
}
