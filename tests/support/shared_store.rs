//! What the shared-store tests (`store_redis`, `store_redis_tls`, `store_redis_cluster`, and in
//! part `store_file`, `store_encryption`) have in common:
//!
//! - the fakes of one test ([`fakes`]), seeds they accept ([`seed`]) and the questions asked of
//!   a rotating realm ([`rotated`], [`spent`], [`last_ok_access`], …);
//! - in-process replicas ([`Replica`]: a layer stack with its own `Tokens` cache and its own
//!   `RedisStore` on any [`RedisNodes`] and [`RedisOptions`]);
//! - the 1 000-request storm against the revoked token ([`start_gated_storm`],
//!   [`assert_storm_made_one_call`]);
//! - sidecar configs on a Redis store ([`sidecar_config`], [`store_url`], [`account_toml`], …),
//!   the sidecar itself ([`start_sidecar`], [`readyz`]) and its start-up refusals ([`refused`]).
//!
//! Every wait is bounded by [`WAIT`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use oauth_refresh_proxy::store::redis::{RedisNodes, RedisOptions, RedisStore};
use oauth_refresh_proxy::{
    Account, BackendRefresher, Error, Provider, RefreshLayer, ReplayBody, RetryPolicy, Secret,
    TokenSeed, Tokens,
};
use tokio::task::JoinHandle;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

use super::http_client::{request, Answer, HttpClient};
use super::process::{run_cli, Proxy, TempDir};
use super::redis_server::{RedisCluster, RedisServer, RedisTlsServer};
use super::world::BACKEND_ENV;
use super::{empty, now_secs, Realm, Reply, TestBody, WAIT};

// ---------------------------------------------------------------------------------------------
// Fakes, seeds, and what a rotating realm saw.
// ---------------------------------------------------------------------------------------------

/// A realm named `name` (rotating GitHub refresh tokens when `rotating`), its refresh backend
/// and an API of `provider`: (realm, backend URL, API address).
#[allow(unused_imports)]
pub use super::start_fakes as fakes;

/// A seed the realm accepts, its access token valid for `valid_for` seconds (negative:
/// expired). Returns (seed, refresh, access).
pub fn seed(realm: &Realm, valid_for: i64) -> (TokenSeed, String, String) {
    let refresh = realm.new_refresh_token();
    let access = realm.new_access_token(&refresh);
    let at = if valid_for >= 0 {
        SystemTime::now() + Duration::from_secs(valid_for as u64)
    } else {
        SystemTime::now() - Duration::from_secs((-valid_for) as u64)
    };
    let seed = TokenSeed::new(refresh.as_str())
        .access_token(access.as_str())
        .expires_at(at);
    (seed, refresh, access)
}

/// The rotated refresh tokens the backend issued, oldest first.
pub fn rotated(realm: &Realm) -> Vec<String> {
    realm
        .secrets()
        .into_iter()
        .filter(|s| s.starts_with("refresh-") && s.ends_with('r'))
        .collect()
}

/// The refresh token of a backend request body.
pub fn sent_refresh_token(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["refresh_token"].as_str().unwrap().to_string()
}

/// The refresh token each backend call spent, in order.
pub fn spent(realm: &Realm) -> Vec<String> {
    realm
        .backend_requests()
        .iter()
        .map(|(_, _, body)| sent_refresh_token(body))
        .collect()
}

/// Asserts that no refresh token was spent twice.
pub fn assert_none_spent_twice(realm: &Realm) {
    let spent = spent(realm);
    let mut unique = spent.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        spent.len(),
        "a refresh token spent twice: {spent:?}"
    );
}

/// The `Authorization` of the last request the API answered with 200.
pub fn last_ok_authorization(realm: &Realm) -> String {
    realm
        .seen()
        .iter()
        .rev()
        .find(|s| s.status == 200)
        .and_then(|s| s.authorization.clone())
        .expect("a request succeeded")
}

/// [`last_ok_authorization`] without `Bearer `.
pub fn last_ok_access(realm: &Realm) -> String {
    last_ok_authorization(realm)
        .trim_start_matches("Bearer ")
        .to_string()
}

/// Polls `cond` every 5 ms until it holds; panics after `WAIT`.
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "waited {WAIT:?} for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// In-process replicas
// ---------------------------------------------------------------------------------------------

/// A test's Redis, as a replica connects to it.
pub trait RedisUnderTest {
    fn nodes(&self) -> RedisNodes;
    fn options(&self) -> RedisOptions {
        RedisOptions::default()
    }
}

impl RedisUnderTest for RedisServer {
    fn nodes(&self) -> RedisNodes {
        RedisNodes::Single(self.url())
    }
}

/// Over TLS, trusting the server's CA.
impl RedisUnderTest for RedisTlsServer {
    fn nodes(&self) -> RedisNodes {
        RedisNodes::Single(self.url())
    }
    fn options(&self) -> RedisOptions {
        trusting(self.ca_pem())
    }
}

impl RedisUnderTest for RedisCluster {
    fn nodes(&self) -> RedisNodes {
        RedisNodes::Cluster(self.urls())
    }
}

/// `RedisOptions` trusting `ca` (PEM).
pub fn trusting(ca: &str) -> RedisOptions {
    RedisOptions {
        ca_certificates: Some(ca.as_bytes().to_vec()),
        ..RedisOptions::default()
    }
}

pub type Svc = BoxCloneService<Request<TestBody>, Response<Incoming>, Error>;

/// A layer stack with its own cache and its own connection to Redis; its requests go to
/// `provider`, as `alice` unless another account is named.
pub struct Replica {
    pub tokens: Tokens,
    pub svc: Svc,
    provider: Provider,
}

impl Replica {
    /// Connects to `redis`, and builds the stack: the backend called with the realm's bearer,
    /// `timeout` for each refresh (and at most two attempts).
    pub async fn open(
        redis: &impl RedisUnderTest,
        lock_ttl: Duration,
        realm: &Realm,
        backend: &str,
        provider: Provider,
        timeout: Duration,
    ) -> Replica {
        let store = RedisStore::open(redis.nodes(), lock_ttl, redis.options())
            .await
            .unwrap();
        let refresher = BackendRefresher::new(backend)
            .unwrap()
            .bearer(Secret::new(realm.backend_token.clone().unwrap()))
            .timeout(timeout);
        let tokens = Tokens::builder(refresher)
            .retry(RetryPolicy {
                max_attempts: 2,
                timeout,
                late_answer_window: Duration::from_secs(5),
                base_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
            })
            .store(Arc::new(store))
            .build();
        let client: Client<HttpConnector, ReplayBody<TestBody>> =
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1024)
                .build(HttpConnector::new());
        let svc = RefreshLayer::new(tokens.clone())
            .default_account("alice")
            .layer(client);
        let svc = tower::ServiceBuilder::new()
            .map_request(move |mut req: Request<TestBody>| {
                req.extensions_mut().insert(provider);
                req
            })
            .service(svc);
        Replica {
            tokens,
            svc: BoxCloneService::new(svc),
            provider,
        }
    }

    /// `GET url` as `account`, bounded by `WAIT`.
    pub async fn get(&self, url: String, account: &str) -> Result<Response<Incoming>, Error> {
        let mut req = Request::get(url).body(empty()).unwrap();
        req.extensions_mut().insert(Account::new(account));
        tokio::time::timeout(WAIT, self.svc.clone().oneshot(req))
            .await
            .expect("an answer within WAIT")
    }

    /// [`Replica::get`]'s status; the body read to its end.
    pub async fn get_status(&self, url: String, account: &str) -> StatusCode {
        let resp = self.get(url, account).await.unwrap();
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        status
    }

    /// `GET url` as the default account, on a task: its status, the body read to its end.
    pub fn spawn_get(&self, url: String) -> JoinHandle<StatusCode> {
        let svc = self.svc.clone();
        tokio::spawn(async move {
            let resp = svc
                .oneshot(Request::get(url).body(empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            status
        })
    }

    /// The generation of `account` in this replica's cache.
    pub fn generation(&self, account: &str) -> Option<u64> {
        self.tokens
            .get(self.provider, account)
            .map(|a| a.generation)
    }

    /// Restores `account` from `seed`.
    pub async fn restore(&self, account: &str, seed: &TokenSeed) {
        self.tokens
            .restore(vec![(self.provider, account.to_string(), seed.clone())])
            .await
            .unwrap();
    }
}

/// A GitHub replica on `redis`, 10 s refreshes.
pub async fn github_replica(
    redis: &impl RedisUnderTest,
    lock_ttl: Duration,
    realm: &Realm,
    backend: &str,
) -> Replica {
    let timeout = Duration::from_secs(10);
    Replica::open(redis, lock_ttl, realm, backend, Provider::GitHub, timeout).await
}

/// Seeds `alice` (valid for an hour) into every one of `replicas` and waits (bounded) until
/// they are all ready: (seed, refresh, access).
pub async fn seed_alice(realm: &Realm, replicas: &[&Replica]) -> (TokenSeed, String, String) {
    let (seed, refresh, access) = seed(realm, 3600);
    for r in replicas {
        r.restore("alice", &seed).await;
    }
    wait_ready("both replicas ready", replicas).await;
    (seed, refresh, access)
}

/// Waits (bounded) until every one of `replicas` is ready.
pub async fn wait_ready(what: &str, replicas: &[&Replica]) {
    wait_until(what, || async {
        for r in replicas {
            if !r.tokens.ready().await {
                return false;
            }
        }
        true
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The storm
// ---------------------------------------------------------------------------------------------

/// How many requests a storm sends.
pub const STORM: usize = 1000;

/// Revokes `access`, holds the backend's next answer and starts [`STORM`] requests
/// (`spawn(i)` starts request `i`); returns once the one refresh is held and every request
/// has met the revoked token.
pub async fn start_gated_storm(
    realm: &Realm,
    access: &str,
    spawn: impl FnMut(usize) -> JoinHandle<StatusCode>,
) -> Vec<JoinHandle<StatusCode>> {
    realm.revoke_access(access);
    realm.script([Reply::Gated]);
    let tasks = (0..STORM).map(spawn).collect();
    realm.backend_calls.wait_for(1).await;
    realm.api_calls.wait_for(STORM as u64).await;
    tasks
}

/// Asserts that every request answers 200, each within `WAIT`.
pub async fn assert_all_ok(tasks: Vec<JoinHandle<StatusCode>>) {
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap(),
            StatusCode::OK,
            "request {i}"
        );
    }
}

/// [`assert_all_ok`], then: the fleet made exactly one backend call, and the API answered
/// [`STORM`] requests with 200.
pub async fn assert_storm_made_one_call(realm: &Realm, tasks: Vec<JoinHandle<StatusCode>>) {
    assert_all_ok(tasks).await;
    assert_eq!(
        realm.backend_calls.get(),
        1,
        "one backend call for the fleet"
    );
    let ok = realm.seen().iter().filter(|s| s.status == 200).count();
    assert_eq!(ok, STORM);
}

/// The storm through library replicas `a` and `b` (alternating, `GET http://{api}/burst/{i}`
/// as `alice`) against the revoked `access`; when `gated`, the one refresh is held until every
/// request has met the revoked token ([`start_gated_storm`]). Then
/// [`assert_storm_made_one_call`], and exactly one of the replicas refreshed.
pub async fn library_storm(
    realm: &Realm,
    api: SocketAddr,
    access: &str,
    (a, b): (&Replica, &Replica),
    gated: bool,
) {
    let spawn =
        |i: usize| if i % 2 == 0 { a } else { b }.spawn_get(format!("http://{api}/burst/{i}"));
    let tasks = if gated {
        let tasks = start_gated_storm(realm, access, spawn).await;
        realm.release_backend(1);
        tasks
    } else {
        realm.revoke_access(access);
        (0..STORM).map(spawn).collect()
    };
    assert_storm_made_one_call(realm, tasks).await;
    // Exactly one replica refreshed; the other (if it had a flight) adopted the result.
    let (sa, sb) = (a.tokens.stats(a.provider), b.tokens.stats(b.provider));
    assert_eq!(sa.refresh_success + sb.refresh_success, 1, "{sa:?} {sb:?}");
}

/// `GET path` through `proxy` as `account`.
pub async fn get_as(client: &HttpClient, proxy: &Proxy, account: &str, path: &str) -> Answer {
    request(
        client,
        "GET",
        &proxy.url(path),
        &[("x-oauth-account", account)],
        empty(),
    )
    .await
}

/// `GET url` with `client` on a task: its status.
pub fn spawn_request(client: &HttpClient, url: String) -> JoinHandle<StatusCode> {
    let client = client.clone();
    tokio::spawn(async move { request(&client, "GET", &url, &[], empty()).await.status })
}

// ---------------------------------------------------------------------------------------------
// Sidecar configs
// ---------------------------------------------------------------------------------------------

/// Both listeners on free loopback ports and the `[refresh]` table: `backend`, its bearer from
/// `$backend_env`.
pub fn listeners_and_refresh(backend: &str, backend_env: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[refresh]
backend_url = "{backend}"
backend_token = "env:{backend_env}"
"#
    )
}

/// One `[[route]]`: `/{provider}` to `api`, default account `default_account`.
pub fn route_toml(provider: &str, api: SocketAddr, default_account: &str) -> String {
    format!(
        r#"[[route]]
prefix = "/{provider}"
upstream = "http://{api}"
provider = "{provider}"
default_account = "{default_account}"
"#
    )
}

/// A sidecar config on a Redis store: [`listeners_and_refresh`] with the `refresh` keys added,
/// `[store]` with `kind = "redis"` and the `store` keys, one route to `api` for `provider`
/// (default account `alice`), `accounts` appended.
pub fn sidecar_config(
    provider: &str,
    backend: &str,
    api: SocketAddr,
    refresh: &str,
    store: &str,
    accounts: &str,
) -> String {
    format!(
        "{}{refresh}\n\n[store]\nkind = \"redis\"\n{store}\n\n{}\n{accounts}",
        listeners_and_refresh(backend, BACKEND_ENV),
        route_toml(provider, api, "alice"),
    )
}

/// `store.url`, and `store.ca_file` when given.
pub fn store_url(url: &str, ca_file: Option<&Path>) -> String {
    match ca_file {
        Some(ca) => format!("url = \"{url}\"\nca_file = \"{}\"", ca.display()),
        None => format!("url = \"{url}\""),
    }
}

/// `store.cluster_urls` of `urls`.
pub fn cluster_urls(urls: &[String]) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!("cluster_urls = [{}]", urls.join(", "))
}

/// A config with no listener and no route: `[refresh]` and the `[store]` keys `store` (kind
/// redis).
pub fn store_only(store: &str) -> String {
    format!(
        "[refresh]\nbackend_url = \"http://127.0.0.1:9\"\nbackend_token = \
         \"env:{BACKEND_ENV}\"\n\n[store]\nkind = \"redis\"\n{store}\n"
    )
}

/// A GitHub `[[account]]` valid for an hour.
pub fn github_account(id: &str, refresh: &str, access: &str) -> String {
    account_toml("github", id, refresh, access, 3600)
}

/// One `[[account]]`, its access token valid for `valid_for` seconds (negative: expired).
pub fn account_toml(
    provider: &str,
    id: &str,
    refresh: &str,
    access: &str,
    valid_for: i64,
) -> String {
    let at = now_secs() as i64 + valid_for;
    format!(
        "[[account]]\nprovider = \"{provider}\"\nid = \"{id}\"\nrefresh_token = \"{refresh}\"\n\
         access_token = \"{access}\"\nexpires_at = {at}\n\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Sidecar processes
// ---------------------------------------------------------------------------------------------

/// `serve --config` on `config`, the realm's backend bearer in `BACKEND_ENV`.
pub async fn start_sidecar(config: &str, realm: &Realm) -> Proxy {
    let token = realm.backend_token.clone().unwrap();
    Proxy::start(config, &[], &[(BACKEND_ENV, token.as_str())]).await
}

/// `GET url`: its status, 0 on a transport error or no answer within 5 s.
pub async fn status_of(client: &HttpClient, url: String) -> u16 {
    let req = Request::get(url).body(empty()).unwrap();
    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
        Ok(Ok(r)) => r.status().as_u16(),
        _ => 0,
    }
}

/// `GET /readyz` of `proxy`'s admin listener (see [`status_of`]).
pub async fn readyz(client: &HttpClient, proxy: &Proxy) -> u16 {
    status_of(client, proxy.admin_url("/readyz")).await
}

/// Waits (bounded) until `proxy`'s `/readyz` answers `status`.
pub async fn wait_readyz(client: &HttpClient, proxy: &Proxy, status: u16) {
    wait_until(&format!("/readyz {status}"), || async {
        readyz(client, proxy).await == status
    })
    .await;
}

/// `serve --config` on `config` must fail: exit code 1 (bounded by `WAIT`), nothing listening,
/// exactly one stderr line, holding every one of `needles`, and none of `never` anywhere in
/// stderr. Returns the line and how long the refusal took.
pub fn refused(config: &str, needles: &[&str], never: &[&str]) -> (String, Duration) {
    let dir = TempDir::new("refused");
    let path = dir.write("proxy.toml", config);
    let started = Instant::now();
    let out = run_cli(
        &["serve", "--config", path.to_str().unwrap()],
        &[(BACKEND_ENV, "refused-backend-bearer")],
    );
    let took = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the sidecar must refuse to start; stderr: {}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("listening on"),
        "it never listened: {}",
        out.stdout
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one stderr line: {}", out.stderr);
    let line = lines[0].to_string();
    for n in needles {
        assert!(line.contains(n), "{n:?} not in the error line: {line}");
    }
    for n in never {
        assert!(!out.stderr.contains(n), "{n:?} shows: {line}");
    }
    (line, took)
}
