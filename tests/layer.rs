//! Black-box tests of the tower layer: a hyper-util client wrapped in `RefreshLayer`, talking
//! to real hyper servers on loopback standing in for Google's and GitHub's APIs and for a
//! Flashback-compatible refresh backend. Calls are counted at the fakes.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use oauth_refresh_proxy::{
    Account, Error, ErrorKind, Provider, RefreshLayer, RefreshOutcome, ReplayBody, RetryPolicy,
    TokenSeed, Tokens,
};
use support::*;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};

type Svc = BoxCloneService<Request<TestBody>, Response<Incoming>, Error>;

struct Setup {
    realm: Arc<Realm>,
    api: std::net::SocketAddr,
    tokens: Tokens,
    svc: Svc,
    /// One long-lived instance of `svc`, as an application that keeps its client calls it:
    /// [`Setup::send`] goes through it, so its lease memo is reused from request to request
    /// (a clone per request, `svc.clone().oneshot(..)`, starts from an empty one).
    kept: Arc<tokio::sync::Mutex<Svc>>,
    provider: Provider,
}

fn hyper_client<C>(connector: C) -> Client<C, ReplayBody<TestBody>>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector)
}

async fn setup_with(
    name: &str,
    provider: Provider,
    rotate: bool,
    tune: impl FnOnce(oauth_refresh_proxy::TokensBuilder) -> oauth_refresh_proxy::TokensBuilder,
    max_replay: usize,
) -> Setup {
    let (realm, backend, api) = start_fakes(name, rotate, provider).await;
    let refresher = backend_refresher(&backend, &realm).timeout(Duration::from_secs(5));
    let tokens =
        tune(Tokens::builder(refresher).retry(retry_policy(3, Duration::from_secs(5)))).build();
    let layer = RefreshLayer::new(tokens.clone())
        .default_account("alice")
        .max_replay_body(max_replay);
    let svc = layer.layer(hyper_client(HttpConnector::new()));
    let svc = tower::ServiceBuilder::new()
        .map_request(move |mut req: Request<TestBody>| {
            req.extensions_mut().insert(provider);
            req
        })
        .service(svc);
    let svc = BoxCloneService::new(svc);
    Setup {
        realm,
        api,
        tokens,
        kept: Arc::new(tokio::sync::Mutex::new(svc.clone())),
        svc,
        provider,
    }
}

async fn setup(name: &str, provider: Provider) -> Setup {
    setup_with(name, provider, provider == Provider::GitHub, |b| b, 1 << 20).await
}

impl Setup {
    /// Seeds "alice" with a fresh refresh token and an access token valid for `valid_for`
    /// (negative: already expired). Returns (refresh, access).
    fn seed(&self, valid_for: i64) -> (String, String) {
        seed_account(&self.tokens, &self.realm, self.provider, "alice", valid_for)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: TestBody,
    ) -> Result<Response<Incoming>, Error> {
        let req = Request::builder()
            .method(method)
            .uri(self.url(path))
            .body(body)
            .unwrap();
        // Called under the lock, awaited outside it: concurrent sends overlap as they would.
        let fut = {
            let mut svc = self.kept.lock().await;
            svc.ready().await?;
            svc.call(req)
        };
        fut.await
    }

    async fn get_ok(&self, path: &str) -> serde_json::Value {
        let resp = self.send("GET", path, empty()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        json(resp).await
    }

    fn finish(&self) {
        assert_no_secret_logged(&self.realm.secrets());
    }
}

async fn json(resp: Response<Incoming>) -> serde_json::Value {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null)
}

fn bearer(t: &str) -> Option<String> {
    Some(format!("Bearer {t}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injects_the_cached_token_replacing_the_callers() {
    let s = setup("inject", Provider::Google).await;
    let (_, access) = s.seed(3600);
    let req = Request::get(s.url("/drive/v3/files"))
        .header("authorization", "Bearer caller-supplied")
        .body(empty())
        .unwrap();
    let resp = s.svc.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = s.realm.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization, bearer(&access));
    assert_eq!(seen[0].headers.get_all("authorization").iter().count(), 1);
    assert_eq!(s.realm.backend_calls.get(), 0);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_comes_from_the_extension_else_the_default() {
    let s = setup("accounts", Provider::Google).await;
    let (_, alice) = s.seed(3600);
    let r2 = s.realm.new_refresh_token();
    let bob = s.realm.new_access_token(&r2);
    s.tokens.insert(
        Provider::Google,
        "bob",
        TokenSeed::new(r2.as_str()).access_token(bob.as_str()),
    );
    let mut req = Request::get(s.url("/x")).body(empty()).unwrap();
    req.extensions_mut().insert(Account::new("bob"));
    assert_eq!(s.svc.clone().oneshot(req).await.unwrap().status(), 200);
    s.get_ok("/y").await;
    let seen = s.realm.seen();
    assert_eq!(seen[0].authorization, bearer(&bob));
    assert_eq!(seen[1].authorization, bearer(&alice));

    let mut req = Request::get(s.url("/x")).body(empty()).unwrap();
    req.extensions_mut().insert(Account::new("nobody"));
    let err = s.svc.clone().oneshot(req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownAccount);
    assert_eq!(s.realm.api_calls.get(), 2);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_is_detected_from_the_host_and_other_hosts_pass_through() {
    let (realm, backend, api) = start_fakes("hosts", false, Provider::Google).await;
    let refresher = backend_refresher(&backend, &realm);
    let tokens = Tokens::builder(refresher).build();
    let refresh = realm.new_refresh_token();
    let google = realm.new_access_token(&refresh);
    tokens.insert(
        Provider::Google,
        "alice",
        TokenSeed::new(refresh.as_str()).access_token(google.as_str()),
    );
    let gh_refresh = realm.new_refresh_token();
    let github = realm.new_access_token(&gh_refresh);
    tokens.insert(
        Provider::GitHub,
        "alice",
        TokenSeed::new(gh_refresh.as_str()).access_token(github.as_str()),
    );
    // Every name resolves to the fake API, so real API host names reach it.
    let resolver = tower::service_fn(move |_name| async move {
        Ok::<_, std::convert::Infallible>(std::iter::once(api))
    });
    let client = hyper_client(HttpConnector::new_with_resolver(resolver));
    let svc = RefreshLayer::new(tokens)
        .default_account("alice")
        .layer(client);
    let port = api.port();
    for (host, expected) in [
        ("www.googleapis.com", bearer(&google)),
        ("sheets.googleapis.com", bearer(&google)),
        ("api.github.com", bearer(&github)),
        ("uploads.github.com", bearer(&github)),
        ("example.com", None),
        ("github.com", None),
    ] {
        let req = Request::get(format!("http://{host}:{port}/probe"))
            .header("authorization", "Bearer callers-own")
            .body(empty())
            .unwrap();
        let _ = svc.clone().oneshot(req).await.unwrap();
        let seen = realm.seen();
        let last = seen.last().unwrap();
        match expected {
            Some(auth) => assert_eq!(last.authorization, Some(auth), "{host}"),
            // Untouched: the caller's own header, never one of ours.
            None => assert_eq!(
                last.authorization.as_deref(),
                Some("Bearer callers-own"),
                "{host}"
            ),
        }
    }
    assert_eq!(realm.backend_calls.get(), 0);
    assert_no_secret_logged(&realm.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refreshed_before_sending() {
    let s = setup("proactive", Provider::Google).await;
    let (_, old) = s.seed(-10);
    s.get_ok("/a").await;
    assert_eq!(s.realm.backend_calls.get(), 1);
    let seen = s.realm.seen();
    assert_eq!(seen.len(), 1, "no 401 round trip: refreshed before sending");
    assert_ne!(seen[0].authorization, bearer(&old));
    // Within skew counts as expired too.
    let s2 = setup("proactive-skew", Provider::Google).await;
    s2.seed(30); // default skew 60 s
    s2.get_ok("/a").await;
    assert_eq!(s2.realm.backend_calls.get(), 1);
    assert_eq!(s2.realm.seen().len(), 1);
    // The backend got the documented request.
    let (path, auth, body) = s.realm.backend_requests()[0].clone();
    assert_eq!(path, "/auth/google/refresh");
    assert_eq!(auth, bearer(s.realm.backend_token.as_deref().unwrap()));
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(body["refresh_token"]
        .as_str()
        .unwrap()
        .starts_with("refresh-proactive-"));
    s.finish();
    s2.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_refreshes_in_the_background_while_requests_go_on() {
    let s = setup_with(
        "ahead",
        Provider::Google,
        false,
        |b| {
            b.skew(Duration::from_secs(60))
                .refresh_ahead(Duration::from_secs(600))
        },
        1 << 20,
    )
    .await;
    let (_, old) = s.seed(300); // inside the 10 min window, outside the 60 s skew
    s.realm.script([Reply::Gated]);
    let mut events = s.tokens.events();
    // While the backend holds the refresh, 50 requests complete with the still-valid token.
    for _ in 0..50 {
        s.get_ok("/a").await;
    }
    s.realm.backend_calls.wait_for(1).await;
    assert_eq!(
        s.realm.backend_calls.get(),
        1,
        "one background refresh, not one per request"
    );
    let seen = s.realm.seen();
    assert_eq!(seen.len(), 50);
    assert!(seen.iter().all(|x| x.authorization == bearer(&old)));
    s.realm.release_backend(1);
    let ev = tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ev.outcome, RefreshOutcome::Refreshed { .. }));
    s.get_ok("/b").await;
    let last = s.realm.seen().last().unwrap().clone();
    assert_ne!(last.authorization, bearer(&old));
    assert_eq!(s.realm.backend_calls.get(), 1);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_refreshes_once_and_replays_the_identical_body() {
    let s = setup("replay", Provider::Google).await;
    let (_, access) = s.seed(3600);
    s.realm.revoke_access(&access);
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let resp = s
        .send("POST", "/upload?x=1", full(payload.clone()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json(resp).await;
    assert_eq!(body["sha256"], sha256_hex(&payload));
    let seen = s.realm.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].status, 401);
    assert_eq!(seen[1].status, 200);
    assert_eq!(seen[0].body_sha256, seen[1].body_sha256);
    assert_eq!(seen[1].body_sha256, sha256_hex(&payload));
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[1].method, "POST");
    assert_eq!(s.realm.backend_calls.get(), 1);
    assert_eq!(s.tokens.stats(Provider::Google).replayed, 1);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_sends_the_callers_headers_again_but_never_their_authorization() {
    let s = setup("replay-headers", Provider::GitHub).await;
    let (_, access) = s.seed(3600);
    s.realm.revoke_access(&access);
    let req = Request::post(s.url("/upload"))
        .header("authorization", "Bearer caller-one")
        .header("x-trace", "a")
        .header("accept", "application/vnd.github+json")
        .header("x-trace", "b")
        .header("authorization", "Bearer caller-two")
        .header("user-agent", "orp-test")
        .body(full(b"payload".to_vec()))
        .unwrap();
    let resp = s.svc.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = s.realm.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!((seen[0].status, seen[1].status), (401, 200));
    assert_eq!(seen[0].authorization, bearer(&access));
    assert_ne!(seen[1].authorization, bearer(&access));
    for x in &seen {
        let auth: Vec<_> = x.headers.get_all("authorization").iter().collect();
        assert_eq!(auth.len(), 1, "one Authorization, the layer's");
        assert!(!auth[0].to_str().unwrap().contains("caller"));
        let trace: Vec<_> = x.headers.get_all("x-trace").iter().collect();
        assert_eq!(trace, ["a", "b"]);
        assert_eq!(x.headers["accept"], "application/vnd.github+json");
        assert_eq!(x.headers["user-agent"], "orp-test");
    }
    // Both attempts carry the same headers but Authorization, in the same order.
    let others = |h: &http::HeaderMap| {
        h.iter()
            .filter(|(n, _)| *n != "authorization")
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(others(&seen[0].headers), others(&seen[1].headers));
    assert_eq!(s.realm.backend_calls.get(), 1);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refreshed_before_sending_replaces_every_authorization_the_caller_sent() {
    let s = setup("proactive-auth", Provider::Google).await;
    let (_, old) = s.seed(-10);
    let req = Request::get(s.url("/drive/v3/files"))
        .header("authorization", "Bearer caller-one")
        .header("authorization", "Bearer caller-two")
        .body(empty())
        .unwrap();
    let resp = s.svc.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = s.realm.seen();
    assert_eq!(seen.len(), 1, "refreshed before sending: no 401 round trip");
    assert_eq!(seen[0].headers.get_all("authorization").iter().count(), 1);
    assert_ne!(seen[0].authorization, bearer(&old));
    assert!(!seen[0].authorization.as_deref().unwrap().contains("caller"));
    assert_eq!(s.realm.backend_calls.get(), 1);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_within_the_cap_is_replayed() {
    let s = setup("chunked", Provider::GitHub).await;
    let (_, access) = s.seed(3600);
    s.realm.revoke_access(&access);
    let (tx, body) = ChannelBody::new();
    let mut all = Vec::new();
    for i in 0..8u8 {
        let chunk = vec![i; 1000];
        all.extend_from_slice(&chunk);
        tx.send(Bytes::from(chunk)).unwrap();
    }
    drop(tx);
    let resp = s.send("PUT", "/chunked", body.boxed()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = s.realm.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body_sha256, sha256_hex(&all));
    assert_eq!(s.realm.backend_calls.get(), 1);
    s.finish();
}

async fn burst(s: &Setup, n: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let svc = s.svc.clone();
        let url = s.url(&format!("/burst/{i}"));
        tasks.push(tokio::spawn(async move {
            let req = Request::get(url).body(empty()).unwrap();
            let resp = svc.oneshot(req).await.unwrap();
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            status
        }));
    }
    for t in tasks {
        assert_eq!(
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap(),
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_on_a_revoked_token_make_one_backend_call() {
    let s = setup("burst-revoked", Provider::Google).await;
    let (_, access) = s.seed(3600);
    s.realm.revoke_access(&access);
    burst(&s, 1000).await;
    assert_eq!(s.realm.backend_calls.get(), 1);
    let ok = s.realm.seen().iter().filter(|x| x.status == 200).count();
    assert_eq!(ok, 1000);
    assert_eq!(s.tokens.stats(Provider::Google).refresh_success, 1);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_on_an_expired_token_make_one_backend_call() {
    let s = setup("burst-expired", Provider::GitHub).await;
    s.seed(-1);
    burst(&s, 1000).await;
    assert_eq!(s.realm.backend_calls.get(), 1);
    let seen = s.realm.seen();
    assert_eq!(seen.len(), 1000, "nobody sent the expired token");
    assert!(seen.iter().all(|x| x.status == 200));
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_rotation_in_flight_old_generation_401s_do_not_refresh_again() {
    let s = setup("rotation", Provider::GitHub).await;
    let (old_refresh, access) = s.seed(3600);
    let mut events = s.tokens.events();
    // 50 requests carrying the current token are held inside the API.
    let mut held = Vec::new();
    for i in 0..50 {
        let svc = s.svc.clone();
        let url = s.url(&format!("/hold/{i}"));
        held.push(tokio::spawn(async move {
            let resp = svc
                .oneshot(Request::get(url).body(empty()).unwrap())
                .await
                .unwrap();
            resp.status()
        }));
    }
    s.realm.held.wait_for(50).await;
    // The token dies; one request finds out, refreshes (rotating the refresh token, which
    // also kills the old access token at GitHub), and replays.
    s.realm.revoke_access(&access);
    s.get_ok("/now").await;
    assert_eq!(s.realm.backend_calls.get(), 1);
    // The held requests now get 401 for the old generation: replayed with the new token.
    s.realm.release_api(1000);
    for t in held {
        assert_eq!(
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap(),
            StatusCode::OK
        );
    }
    assert_eq!(
        s.realm.backend_calls.get(),
        1,
        "no second refresh for an old generation"
    );
    let ev = events.try_recv().unwrap();
    match ev.outcome {
        RefreshOutcome::Refreshed {
            refresh_token,
            rotated,
            ..
        } => {
            assert!(rotated);
            assert_ne!(refresh_token.expose(), old_refresh);
        }
        other => panic!("{other:?}"),
    }
    // The old refresh token was never sent again.
    let sent = s.realm.backend_requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(s.tokens.stats(Provider::GitHub).replayed, 51);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_at_in_milliseconds_and_seconds_is_read() {
    for (name, expiry) in [("ms", Expiry::Millis), ("secs", Expiry::Seconds)] {
        let s = setup(&format!("expiry-{name}"), Provider::GitHub).await;
        *s.realm.expiry.lock().unwrap() = expiry;
        *s.realm.lifetime.lock().unwrap() = Duration::from_secs(7200);
        s.seed(-1);
        let before = oauth_refresh_proxy::token::timestamp_to_system_time(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
        )
        .unwrap();
        s.get_ok("/a").await;
        let info = s.tokens.get(Provider::GitHub, "alice").unwrap();
        let expected = before
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 7200;
        let got = info.expires_at.unwrap();
        assert!(
            got >= expected && got <= expected + 5,
            "{name}: {got} vs {expected}"
        );
        // And the new token is used without another refresh.
        s.get_ok("/b").await;
        assert_eq!(s.realm.backend_calls.get(), 1);
        s.finish();
    }
    // Absent expiry: the default lifetime applies; the token is still used.
    let s = setup_with(
        "expiry-absent",
        Provider::Google,
        false,
        |b| b.default_lifetime(Duration::from_secs(3000)),
        1 << 20,
    )
    .await;
    *s.realm.expiry.lock().unwrap() = Expiry::Absent;
    s.seed(-1);
    s.get_ok("/a").await;
    s.get_ok("/b").await;
    assert_eq!(s.realm.backend_calls.get(), 1);
    assert_eq!(
        s.tokens.get(Provider::Google, "alice").unwrap().expires_at,
        None
    );
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_never_refreshes() {
    for provider in [Provider::Google, Provider::GitHub] {
        let s = setup(&format!("forbidden-{provider}"), provider).await;
        s.seed(3600);
        let resp = s.send("GET", "/forbidden", empty()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(s.realm.backend_calls.get(), 0);
        assert_eq!(s.realm.api_calls.get(), 1);
        s.finish();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_cap_streams_and_is_not_replayed() {
    let s = setup_with("overcap", Provider::Google, false, |b| b, 1024).await;
    let (_, access) = s.seed(3600);
    s.realm.revoke_access(&access);
    // Unknown length: recording stops at the cap while the body keeps streaming.
    let (tx, body) = ChannelBody::new();
    let mut all = Vec::new();
    for i in 0..4u8 {
        let chunk = vec![i; 1000];
        all.extend_from_slice(&chunk);
        tx.send(Bytes::from(chunk)).unwrap();
    }
    drop(tx);
    let resp = s.send("POST", "/big", body.boxed()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let seen = s.realm.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 4000, "streamed in full");
    assert_eq!(seen[0].body_sha256, sha256_hex(&all));
    // The refresh finished before the 401 came back: an immediate retry succeeds.
    assert_eq!(s.realm.backend_calls.get(), 1);
    let resp = s.send("POST", "/big", full(all.clone())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(s.realm.backend_calls.get(), 1);
    // Known length over the cap: passed through untouched, not replayed either.
    let access = s.tokens.get(Provider::Google, "alice").unwrap();
    assert_eq!(access.generation, 2);
    let st = s.tokens.stats(Provider::Google);
    assert_eq!((st.replayed, st.not_replayable), (0, 1));
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_before_the_body_was_sent_is_returned_after_the_refresh() {
    let s = setup("early", Provider::GitHub).await;
    let (_, access) = s.seed(3600);
    s.realm.revoke_access(&access);
    let (tx, body) = ChannelBody::new();
    tx.send(Bytes::from_static(b"first chunk")).unwrap();
    // The rest of the body never comes while the API answers.
    let resp = tokio::time::timeout(WAIT, s.send("POST", "/early401", body.boxed()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(s.realm.backend_calls.get(), 1);
    assert_eq!(s.tokens.stats(Provider::GitHub).not_replayable, 1);
    drop(tx);
    let resp = s.send("POST", "/early401", full("again")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(s.realm.backend_calls.get(), 1);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_first_waiter_does_not_cancel_the_refresh() {
    let s = setup("dropped", Provider::Google).await;
    s.seed(-1);
    s.realm.script([Reply::Gated]);
    let first = {
        let svc = s.svc.clone();
        let url = s.url("/first");
        tokio::spawn(async move { svc.oneshot(Request::get(url).body(empty()).unwrap()).await })
    };
    s.realm.backend_calls.wait_for(1).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let second = {
        let svc = s.svc.clone();
        let url = s.url("/second");
        tokio::spawn(async move { svc.oneshot(Request::get(url).body(empty()).unwrap()).await })
    };
    // The second waits on the refresh the first started.
    let coalesced = async {
        while s.tokens.stats(Provider::Google).coalesced < 1 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(WAIT, coalesced).await.unwrap();
    s.realm.release_backend(1);
    let resp = tokio::time::timeout(WAIT, second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(s.realm.backend_calls.get(), 1);
    assert_eq!(s.tokens.stats(Provider::Google).refresh_success, 1);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_then_succeed() {
    let s = setup("transient", Provider::Google).await;
    s.seed(-1);
    s.realm.script([
        Reply::Status(503, "{}".into()),
        Reply::Status(502, "<html>bad gateway</html>".into()),
    ]);
    s.get_ok("/a").await;
    assert_eq!(s.realm.backend_calls.get(), 3);
    let st = s.tokens.stats(Provider::Google);
    assert_eq!((st.refresh_success, st.refresh_transient_error), (1, 0));
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_2xx_answer_is_not_retried_with_the_same_refresh_token() {
    // The backend answered 2xx: it may have rotated the refresh token, so the proxy must not
    // send the same one again (SPEC 2); the cycle ends and the account cools down.
    let s = setup("broken-2xx", Provider::GitHub).await;
    s.seed(-1);
    s.realm.script([Reply::Status(200, "not json".into())]);
    let err = s.send("GET", "/a", empty()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RefreshUnavailable);
    assert_eq!(s.realm.backend_calls.get(), 1);
    let err = s.send("GET", "/b", empty()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RefreshUnavailable);
    assert!(err
        .retry_after()
        .is_some_and(|d| d <= Duration::from_secs(6)));
    assert_eq!(s.realm.backend_calls.get(), 1, "cooldown: no call");
    assert_eq!(s.tokens.stats(Provider::GitHub).cooldown, 1);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_exhaust_the_budget_then_fail_clearly() {
    let s = setup("transient-fail", Provider::GitHub).await;
    s.seed(-1);
    s.realm.script([
        Reply::Status(500, "{}".into()),
        Reply::Status(429, "{}".into()),
        Reply::Status(408, "{}".into()),
    ]);
    let err = s.send("GET", "/a", empty()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RefreshUnavailable);
    assert_eq!(s.realm.backend_calls.get(), 3);
    assert_eq!(s.realm.api_calls.get(), 0);
    // Not a rejection, but the account is in cooldown: the next request is refused at once,
    // with the time left, and makes no backend call.
    let err = s.send("GET", "/b", empty()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RefreshUnavailable);
    let left = err.retry_after().expect("the cooldown's time left");
    assert!(
        left > Duration::ZERO && left <= Duration::from_millis(5500),
        "{left:?}"
    );
    assert_eq!(s.realm.backend_calls.get(), 3);
    assert_eq!(s.tokens.stats(Provider::GitHub).cooldown, 1);
    assert!(
        !s.tokens
            .get(Provider::GitHub, "alice")
            .unwrap()
            .needs_reauth
    );
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_fails_fast_without_backend_calls_until_tokens_are_replaced() {
    let s = setup("rejected", Provider::Google).await;
    let (refresh, access) = s.seed(3600);
    s.realm.revoke_refresh(&refresh);
    s.realm.revoke_access(&access);
    // Handling a 401: the upstream 401 comes back, marked.
    let resp = s.send("GET", "/a", empty()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["x-oauth-refresh"], "rejected");
    assert_eq!(s.realm.backend_calls.get(), 1);
    let info = s.tokens.get(Provider::Google, "alice").unwrap();
    assert!(info.needs_reauth);
    assert!(info.last_error.unwrap().contains("400"));
    // Then: fail fast, no backend call, no upstream call.
    for _ in 0..20 {
        let err = s.send("GET", "/b", empty()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::RefreshRejected);
    }
    assert_eq!(s.realm.backend_calls.get(), 1);
    assert_eq!(s.realm.api_calls.get(), 1);
    // Replacing the tokens revives the account.
    let r2 = s.realm.new_refresh_token();
    s.tokens
        .insert(Provider::Google, "alice", TokenSeed::new(r2.as_str()));
    s.get_ok("/c").await;
    assert_eq!(s.realm.backend_calls.get(), 2);
    assert!(
        !s.tokens
            .get(Provider::Google, "alice")
            .unwrap()
            .needs_reauth
    );
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_before_sending_is_an_error() {
    let s = setup("rejected-early", Provider::GitHub).await;
    s.seed(-1);
    s.realm.script([Reply::Status(
        200,
        r#"{"success": false, "message": "refresh failed"}"#.into(),
    )]);
    let err = s.send("GET", "/a", empty()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RefreshRejected);
    assert_eq!(err.provider(), Some(Provider::GitHub));
    assert_eq!(err.account().unwrap().as_str(), "alice");
    assert_eq!(s.realm.api_calls.get(), 0);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_backend_is_bounded_by_the_timeout() {
    let s = setup_with(
        "hang",
        Provider::Google,
        false,
        |b| {
            b.retry(RetryPolicy {
                max_attempts: 2,
                timeout: Duration::from_millis(300),
                late_answer_window: Duration::from_secs(5),
                base_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(10),
            })
        },
        1 << 20,
    )
    .await;
    s.seed(-1);
    s.realm.script([Reply::Hang, Reply::Hang]);
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(WAIT, s.send("GET", "/a", empty()))
        .await
        .expect("bounded")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RefreshUnavailable);
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The attempt was sent: it is awaited in the background, never repeated (SPEC 2).
    assert_eq!(s.realm.backend_calls.get(), 1);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_refresh_and_listing_never_show_tokens() {
    let s = setup("listing", Provider::GitHub).await;
    let (refresh, access) = s.seed(3600);
    let info = s
        .tokens
        .refresh_now(Provider::GitHub, "alice")
        .await
        .unwrap();
    assert_eq!(info.generation, 2);
    assert!(info.last_refresh_at.is_some());
    assert_eq!(s.realm.backend_calls.get(), 1);
    let dump = format!("{:?} {:?}", s.tokens.list(), s.tokens);
    assert!(!dump.contains(&refresh) && !dump.contains(&access));
    for secret in s.realm.secrets() {
        assert!(!dump.contains(&secret));
    }
    s.finish();
}

#[test]
fn the_fakes_answer_with_the_shared_fixture_shapes() {
    for (answer, file) in [
        (&GOOGLE_401, "google_api_401.json"),
        (&GOOGLE_403, "google_api_403_insufficient_scope.json"),
        (&GITHUB_401, "github_api_401.json"),
        (&GITHUB_403, "github_api_403_rate_limit.json"),
    ] {
        let fx = fixture(file);
        assert_eq!(
            u64::from(answer.status),
            fx["status"].as_u64().unwrap(),
            "{file}"
        );
        let body: serde_json::Value = serde_json::from_str(answer.body).unwrap();
        assert_eq!(body, fx["body"], "{file}");
        for (k, v) in fx["headers"].as_object().unwrap() {
            let ours = answer.headers.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
            assert_eq!(ours, v.as_str(), "{file}: {k}");
        }
    }
}

/// A kept service reuses its last lease from request to request (issue 11), but never past a
/// change of the account: new tokens put, a forced refresh (rotated, with GitHub), a 401's
/// refresh, a removal, a rejected refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_service_sees_every_change_of_its_account() {
    for provider in [Provider::Google, Provider::GitHub] {
        let s = setup("memo", provider).await;
        let last = |s: &Setup| s.realm.seen().last().unwrap().authorization.clone();
        let (_, first) = s.seed(3600);
        for _ in 0..3 {
            s.get_ok("/a").await;
            assert_eq!(last(&s), bearer(&first));
        }
        // New tokens put by the application.
        let (_, second) = s.seed(3600);
        s.get_ok("/a").await;
        assert_eq!(last(&s), bearer(&second));
        // A forced refresh (GitHub rotates both tokens): its token from the next request on.
        let before = s.tokens.get(provider, "alice").unwrap().generation;
        let info = s.tokens.refresh_now(provider, "alice").await.unwrap();
        assert!(info.generation > before);
        s.get_ok("/a").await;
        let third = last(&s).unwrap();
        assert_ne!(Some(third.clone()), bearer(&second));
        assert_eq!(s.realm.backend_calls.get(), 1);
        // A 401 refreshes and replays; the next request goes out with the new token at once.
        s.realm
            .revoke_access(third.strip_prefix("Bearer ").unwrap());
        s.get_ok("/a").await;
        let fourth = last(&s);
        assert_ne!(fourth.as_deref(), Some(third.as_str()));
        s.get_ok("/a").await;
        assert_eq!(last(&s), fourth);
        assert_eq!(s.realm.backend_calls.get(), 2);
        let unauthorized = s.realm.seen().iter().filter(|x| x.status == 401).count();
        assert_eq!(unauthorized, 1);
        // Removed: unknown at once.
        assert!(s.tokens.remove(provider, "alice"));
        let err = s.send("GET", "/a", empty()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownAccount);
        // Put back, then its refresh token rejected while handling a 401: from then on the
        // account fails fast, its last lease never reused.
        let (refresh, fifth) = s.seed(3600);
        s.get_ok("/a").await;
        assert_eq!(last(&s), bearer(&fifth));
        s.realm.revoke_refresh(&refresh);
        s.realm.revoke_access(&fifth);
        let resp = s.send("GET", "/a", empty()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let api_calls = s.realm.api_calls.get();
        for _ in 0..3 {
            let err = s.send("GET", "/a", empty()).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::RefreshRejected);
        }
        assert_eq!(s.realm.api_calls.get(), api_calls);
        s.finish();
    }
}

/// A kept service sending for several accounts (each request's `Account` extension) hands each
/// its own token, whichever it sent for last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_service_shared_by_accounts_sends_each_its_own_token() {
    let s = setup("memo-accounts", Provider::Google).await;
    let (_, alice) = s.seed(3600);
    let (_, bob) = seed_account(&s.tokens, &s.realm, Provider::Google, "bob", 3600);
    let order = [
        "alice", "bob", "bob", "alice", "alice", "alice", "alice", "alice", "alice",
    ];
    let order = order
        .iter()
        .chain(["bob"; 8].iter())
        .chain(["alice", "bob"].iter());
    for (i, who) in order.enumerate() {
        let mut req = Request::get(s.url("/a")).body(empty()).unwrap();
        req.extensions_mut().insert(Account::new(*who));
        let fut = {
            let mut svc = s.kept.lock().await;
            svc.ready().await.unwrap();
            svc.call(req)
        };
        assert_eq!(fut.await.unwrap().status(), StatusCode::OK);
        let expected = if *who == "alice" { &alice } else { &bob };
        let seen = s.realm.seen();
        assert_eq!(
            seen[i].authorization,
            bearer(expected),
            "request {i} for {who}"
        );
    }
    s.finish();
}
