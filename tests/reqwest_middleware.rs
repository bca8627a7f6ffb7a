//! Black-box tests of `oauth_refresh_proxy::reqwest::RefreshMiddleware` and
//! `Tokens::access_token`: a real `reqwest_middleware::ClientWithMiddleware` talking to the
//! crate's in-process fakes (hyper servers on loopback standing in for Google's and GitHub's APIs
//! and for a Flashback-compatible refresh backend). Calls are counted at the fakes; every test
//! captures trace-level logs and greps them for every token.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use oauth_refresh_proxy::reqwest::{refresh_error, RefreshMiddleware};
use oauth_refresh_proxy::{Account, ErrorKind, Provider, Tokens};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use support::*;

/// The fake API answers for this host too (the client resolves it to loopback), so requests to
/// it exercise the middleware's provider detection by host.
const GOOGLE_HOST: &str = "www.googleapis.com";

struct Setup {
    realm: Arc<Realm>,
    api: SocketAddr,
    tokens: Tokens,
    client: ClientWithMiddleware,
    provider: Provider,
}

/// A reqwest client that reaches the fake API at `api` under `www.googleapis.com` and
/// `api.github.com` as well as under its address, never through a proxy.
fn reqwest_client(api: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .resolve(GOOGLE_HOST, api)
        .resolve("api.github.com", api)
        .no_proxy()
        .timeout(WAIT)
        .build()
        .unwrap()
}

fn client_with(tokens: &Tokens, api: SocketAddr, default: Option<&str>) -> ClientWithMiddleware {
    let mut middleware = RefreshMiddleware::new(tokens.clone());
    if let Some(account) = default {
        middleware = middleware.default_account(account);
    }
    ClientBuilder::new(reqwest_client(api))
        .with(middleware)
        .build()
}

async fn setup(name: &str, provider: Provider) -> Setup {
    let (realm, backend, api) = start_fakes(name, provider == Provider::GitHub, provider).await;
    let refresher = backend_refresher(&backend, &realm).timeout(Duration::from_secs(10));
    let tokens = Tokens::builder(refresher)
        .retry(retry_policy(3, Duration::from_secs(10)))
        .build();
    let client = client_with(&tokens, api, Some("alice"));
    Setup {
        realm,
        api,
        tokens,
        client,
        provider,
    }
}

impl Setup {
    /// Seeds `account` with a fresh refresh token and an access token valid for `valid_for`
    /// seconds (negative: already expired). Returns (refresh, access).
    fn seed_account(&self, account: &str, valid_for: i64) -> (String, String) {
        seed_account(&self.tokens, &self.realm, self.provider, account, valid_for)
    }

    fn seed(&self, valid_for: i64) -> (String, String) {
        self.seed_account("alice", valid_for)
    }

    /// A URL on the fake API by its loopback address (no provider by host).
    fn addr_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// A URL on the fake API under the provider's real host name.
    fn host_url(&self, path: &str) -> String {
        let host = match self.provider {
            Provider::Google => GOOGLE_HOST,
            Provider::GitHub => "api.github.com",
        };
        format!("http://{host}:{}{path}", self.api.port())
    }

    /// Waits (bounded by [`WAIT`]) until `n` callers have joined a refresh someone else started.
    async fn wait_coalesced(&self, n: u64) {
        wait_coalesced(&self.tokens, self.provider, n, |have| {
            format!("waited {WAIT:?} for {n} coalesced callers, have {have}")
        })
        .await;
    }

    fn generation(&self, account: &str) -> u64 {
        self.tokens.get(self.provider, account).unwrap().generation
    }

    fn finish(&self) {
        assert_no_secret_logged(&self.realm.secrets());
    }
}

async fn json(resp: reqwest::Response) -> serde_json::Value {
    let b = tokio::time::timeout(WAIT, resp.bytes())
        .await
        .unwrap()
        .unwrap();
    serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null)
}

async fn send(req: reqwest_middleware::RequestBuilder) -> reqwest::Response {
    tokio::time::timeout(WAIT, req.send())
        .await
        .expect("no answer within WAIT")
        .expect("request failed")
}

async fn send_err(req: reqwest_middleware::RequestBuilder) -> reqwest_middleware::Error {
    tokio::time::timeout(WAIT, req.send())
        .await
        .expect("no answer within WAIT")
        .expect_err("the request should fail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_on_a_revoked_token_make_one_refresh() {
    let s = setup("rq-storm", Provider::Google).await;
    let (_, revoked) = s.seed(3600);
    s.realm.revoke_access(&revoked);
    // Hold the refresh until every request has had its 401 and joined it, so the figures
    // below are exact: 1000 × (401, refresh joined, replay).
    s.realm.script([Reply::Gated]);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let req = s.client.get(s.host_url(&format!("/burst/{i}")));
        tasks.push(tokio::spawn(async move {
            let resp = send(req).await;
            let status = resp.status();
            let body = json(resp).await;
            (status, body)
        }));
    }
    s.realm.backend_calls.wait_for(1).await;
    s.wait_coalesced(999).await;
    s.realm.release_backend(1);
    for t in tasks {
        let (status, body) = tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["len"], 0);
    }
    assert_eq!(s.realm.backend_calls.get(), 1, "exactly one refresh call");
    let stats = s.tokens.stats(Provider::Google);
    assert_eq!(stats.refresh_success, 1);
    assert_eq!(stats.coalesced, 999);
    assert_eq!(stats.replayed, 1000);
    assert_eq!(stats.not_replayable, 0);
    let seen = s.realm.seen();
    assert_eq!(seen.len(), 2000);
    let rejected: Vec<_> = seen.iter().filter(|x| x.status == 401).collect();
    let ok: Vec<_> = seen.iter().filter(|x| x.status == 200).collect();
    assert_eq!((rejected.len(), ok.len()), (1000, 1000));
    assert!(rejected.iter().all(|x| x.authorization == bearer(&revoked)));
    let fresh = ok[0].authorization.clone().unwrap();
    assert_ne!(Some(fresh.clone()), bearer(&revoked));
    assert!(ok
        .iter()
        .all(|x| x.authorization.as_deref() == Some(&*fresh)));
    // Every request replayed exactly once: each path once with the old token, once with the new.
    for i in 0..1000 {
        let path = format!("/burst/{i}");
        assert_eq!(seen.iter().filter(|x| x.path == path).count(), 2, "{path}");
    }
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_post_is_replayed_byte_identical_after_a_401() {
    let s = setup("rq-json", Provider::Google).await;
    let (_, revoked) = s.seed(3600);
    s.realm.revoke_access(&revoked);
    let doc = serde_json::json!({
        "name": "quarterly report.pdf",
        "parents": ["0AFolder"],
        "description": "ünïcödé, \"quotes\" and a long tail: ".to_string() + &"x".repeat(5000),
    });
    let expected = serde_json::to_vec(&doc).unwrap();
    let resp = send(
        s.client
            .post(s.host_url("/upload/drive/v3/files"))
            .header("x-request-id", "r-1")
            .json(&doc),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert_eq!(body["sha256"], sha256_hex(&expected));
    assert_eq!(body["len"], expected.len());
    let seen = s.realm.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!((seen[0].status, seen[1].status), (401, 200));
    assert_eq!(seen[0].authorization, bearer(&revoked));
    assert_ne!(seen[1].authorization, bearer(&revoked));
    for x in &seen {
        assert_eq!(x.method, "POST");
        assert_eq!(x.path, "/upload/drive/v3/files");
        assert_eq!(x.body_sha256, sha256_hex(&expected));
        assert_eq!(x.body_len, expected.len());
        assert_eq!(x.headers["content-type"], "application/json");
        assert_eq!(x.headers["x-request-id"], "r-1");
        assert_eq!(x.headers.get_all("authorization").iter().count(), 1);
    }
    assert_eq!(s.realm.backend_calls.get(), 1);
    let stats = s.tokens.stats(Provider::Google);
    assert_eq!((stats.refresh_success, stats.replayed), (1, 1));
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_body_is_not_replayed_and_its_401_comes_after_the_refresh() {
    let s = setup("rq-stream", Provider::Google).await;
    let (_, revoked) = s.seed(3600);
    s.realm.revoke_access(&revoked);
    let chunks: Vec<Bytes> = (0..8u8).map(|i| Bytes::from(vec![i; 1000])).collect();
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let body = reqwest::Body::wrap_stream(stream);
    assert!(
        body.as_bytes().is_none(),
        "a stream, which reqwest cannot clone"
    );
    let resp = send(s.client.put(s.host_url("/upload/stream")).body(body)).await;
    assert_eq!(resp.status(), 401, "not replayable: the 401 is returned");
    // The refresh the 401 triggered had finished when the response came back.
    let stats = s.tokens.stats(Provider::Google);
    assert_eq!(stats.refresh_success, 1);
    assert_eq!((stats.replayed, stats.not_replayable), (0, 1));
    assert_eq!(s.generation("alice"), 2);
    assert_eq!(s.realm.backend_calls.get(), 1);
    let seen = s.realm.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_sha256, sha256_hex(&all));
    assert_eq!(seen[0].authorization, bearer(&revoked));
    // So the caller's immediate retry succeeds, with no further refresh.
    let resp = send(s.client.put(s.host_url("/upload/stream")).body(all.clone())).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["sha256"], sha256_hex(&all));
    assert_eq!(s.realm.backend_calls.get(), 1);
    assert_eq!(s.realm.seen().len(), 2);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_under_a_thousand_concurrent_callers_makes_one_refresh() {
    let s = setup("rq-access", Provider::GitHub).await;
    s.seed(-1); // expired: every caller needs the refresh
    s.realm.script([Reply::Gated]);
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let tokens = s.tokens.clone();
        tasks.push(tokio::spawn(async move {
            tokens.access_token(Provider::GitHub, "alice").await
        }));
    }
    s.realm.backend_calls.wait_for(1).await;
    s.wait_coalesced(999).await;
    s.realm.release_backend(1);
    let got = joined_ok(tasks).await;
    assert_eq!(s.realm.backend_calls.get(), 1, "exactly one refresh call");
    assert!(got.iter().all(|t| *t == got[0]), "one token for everyone");
    assert!(s.realm.is_valid_access(got[0].expose()));
    let stats = s.tokens.stats(Provider::GitHub);
    assert_eq!((stats.refresh_success, stats.coalesced), (1, 999));
    // The token is cached now: more callers get it without a refresh.
    let again = s
        .tokens
        .access_token(Provider::GitHub, "alice")
        .await
        .unwrap();
    assert_eq!(again, got[0]);
    assert_eq!(s.realm.backend_calls.get(), 1);
    // And it is what the middleware sends.
    let resp = send(s.client.get(s.host_url("/user"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(s.realm.seen()[0].authorization, bearer(got[0].expose()));
    assert_eq!(s.realm.backend_calls.get(), 1);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_after_unauthorized_refreshes_once_per_stale_token() {
    let s = setup("rq-after401", Provider::Google).await;
    let (_, first) = s.seed(3600);
    let token = s
        .tokens
        .access_token(Provider::Google, "alice")
        .await
        .unwrap();
    assert_eq!(
        token.expose(),
        first,
        "valid by the clock: the cached token"
    );
    assert_eq!(s.realm.backend_calls.get(), 0);
    s.realm.revoke_access(&first);
    // 1000 callers report the same stale token: one refresh between them.
    s.realm.script([Reply::Gated]);
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (tokens, stale) = (s.tokens.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            tokens
                .access_token_after_unauthorized(Provider::Google, "alice", &stale)
                .await
        }));
    }
    s.realm.backend_calls.wait_for(1).await;
    s.wait_coalesced(999).await;
    s.realm.release_backend(1);
    let got = joined_ok(tasks).await;
    assert_eq!(s.realm.backend_calls.get(), 1);
    let fresh = got[0].clone();
    assert!(got.iter().all(|t| *t == fresh));
    assert_ne!(fresh.expose(), first);
    assert!(s.realm.is_valid_access(fresh.expose()));
    // A late report of the old token: the cache holds another one, no refresh.
    let late = s
        .tokens
        .access_token_after_unauthorized(Provider::Google, "alice", &token)
        .await
        .unwrap();
    assert_eq!(late, fresh);
    assert_eq!(s.realm.backend_calls.get(), 1);
    // The new token refused too: that is a new refresh.
    s.realm.revoke_access(fresh.expose());
    let third = s
        .tokens
        .access_token_after_unauthorized(Provider::Google, "alice", &fresh)
        .await
        .unwrap();
    assert_eq!(s.realm.backend_calls.get(), 2);
    assert_ne!(third, fresh);
    assert!(s.realm.is_valid_access(third.expose()));
    assert_eq!(s.tokens.stats(Provider::Google).refresh_success, 2);
    // Unknown accounts are an error, not a hang.
    let err = s
        .tokens
        .access_token_after_unauthorized(Provider::Google, "nobody", &third)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownAccount);
    let err = s
        .tokens
        .access_token(Provider::Google, "nobody")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownAccount);
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_by_host_or_extension_and_other_hosts_pass_through_untouched() {
    let s = setup("rq-hosts", Provider::Google).await;
    let (_, alice) = s.seed(3600);
    let (_, bob) = s.seed_account("bob", 3600);

    // By host, with the caller's own Authorization replaced.
    let resp = send(
        s.client
            .get(s.host_url("/drive/v3/files"))
            .header("authorization", "Bearer caller-supplied"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    // By extension on an address (GitHub Enterprise, private endpoints), account by extension.
    let resp = send(
        s.client
            .get(s.addr_url("/by-extension"))
            .with_extension(Provider::Google)
            .with_extension(Account::new("bob")),
    )
    .await;
    assert_eq!(resp.status(), 200);
    // Neither: untouched, the caller's header included, and no refresh on its 401.
    let resp = send(
        s.client
            .get(s.addr_url("/elsewhere"))
            .header("authorization", "Bearer caller-supplied"),
    )
    .await;
    assert_eq!(resp.status(), 401);
    let resp = send(s.client.get(s.addr_url("/no-auth"))).await;
    assert_eq!(resp.status(), 401);

    let seen = s.realm.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0].authorization, bearer(&alice));
    assert_eq!(seen[0].headers.get_all("authorization").iter().count(), 1);
    assert_eq!(seen[1].authorization, bearer(&bob));
    assert_eq!(seen[2].authorization, bearer("caller-supplied"));
    assert_eq!(seen[3].authorization, None);
    assert_eq!(s.realm.backend_calls.get(), 0);
    let stats = s.tokens.stats(Provider::Google);
    assert_eq!((stats.replayed, stats.not_replayable), (0, 0));
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_unknown_accounts_fail_before_sending() {
    let s = setup("rq-accounts", Provider::Google).await;
    s.seed(3600);
    let no_default = client_with(&s.tokens, s.api, None);
    let err = send_err(no_default.get(s.host_url("/x"))).await;
    assert!(err.is_middleware());
    assert_eq!(
        refresh_error(&err).unwrap().kind(),
        ErrorKind::AccountRequired
    );
    let err = send_err(
        s.client
            .get(s.host_url("/x"))
            .with_extension(Account::new("nobody")),
    )
    .await;
    let e = refresh_error(&err).unwrap();
    assert_eq!(e.kind(), ErrorKind::UnknownAccount);
    assert_eq!(e.provider(), Some(Provider::Google));
    assert_eq!(s.realm.api_calls.get(), 0, "nothing was sent");
    // A reqwest error is not the cache's.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = send_err(s.client.get(format!("http://{closed}/"))).await;
    assert!(refresh_error(&err).is_none());
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_refresh_token_returns_the_401_marked_then_fails_fast() {
    let s = setup("rq-rejected", Provider::GitHub).await;
    let (refresh, access) = s.seed(3600);
    s.realm.revoke_access(&access);
    s.realm.revoke_refresh(&refresh);
    let resp = send(s.client.post(s.host_url("/user/repos")).body("{}")).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["x-oauth-refresh"], "rejected");
    assert_eq!(s.realm.backend_calls.get(), 1);
    assert!(
        s.tokens
            .get(Provider::GitHub, "alice")
            .unwrap()
            .needs_reauth
    );
    let err = send_err(s.client.get(s.host_url("/user"))).await;
    assert_eq!(
        refresh_error(&err).unwrap().kind(),
        ErrorKind::RefreshRejected
    );
    assert_eq!(
        s.realm.backend_calls.get(),
        1,
        "fails fast: no backend call"
    );
    assert_eq!(s.realm.seen().len(), 1, "nor an API call");
    let stats = s.tokens.stats(Provider::GitHub);
    assert_eq!((stats.refresh_rejected, stats.replayed), (1, 0));
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_unavailable_after_a_401_is_an_error_not_the_401() {
    let s = setup("rq-unavailable", Provider::Google).await;
    let (_, access) = s.seed(3600);
    s.realm.revoke_access(&access);
    let unavailable = || Reply::Status(503, r#"{"success": false}"#.into());
    s.realm
        .script([unavailable(), unavailable(), unavailable()]);
    let err = send_err(s.client.get(s.host_url("/drive/v3/files"))).await;
    let e = refresh_error(&err).unwrap();
    assert_eq!(e.kind(), ErrorKind::RefreshUnavailable);
    assert!(e.retry_after().is_some(), "the account is in cooldown");
    assert_eq!(
        s.realm.backend_calls.get(),
        3,
        "the retry policy's 3 attempts"
    );
    assert_eq!(s.realm.seen().len(), 1, "not replayed");
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_middleware_and_access_token_share_one_engine() {
    let s = setup("rq-shared", Provider::Google).await;
    s.seed(-1);
    s.realm.script([Reply::Gated]);
    let mut requests = Vec::new();
    let mut callers = Vec::new();
    for i in 0..300 {
        let req = s.client.get(s.host_url(&format!("/mixed/{i}")));
        requests.push(tokio::spawn(async move { send(req).await.status() }));
        let tokens = s.tokens.clone();
        callers.push(tokio::spawn(async move {
            tokens.access_token(Provider::Google, "alice").await
        }));
    }
    s.realm.backend_calls.wait_for(1).await;
    s.wait_coalesced(599).await;
    s.realm.release_backend(1);
    for t in requests {
        assert_eq!(tokio::time::timeout(WAIT, t).await.unwrap().unwrap(), 200);
    }
    let got = joined_ok(callers).await;
    assert_eq!(
        s.realm.backend_calls.get(),
        1,
        "one refresh for both kinds of caller"
    );
    let seen = s.realm.seen();
    assert_eq!(seen.len(), 300, "nobody sent the expired token");
    assert!(seen
        .iter()
        .all(|x| x.status == 200 && x.authorization == bearer(got[0].expose())));
    assert!(got.iter().all(|t| *t == got[0]));
    s.finish();
}
