//! The shared Redis store on a Redis Cluster (`store.cluster_urls`, `RedisNodes::Cluster`)
//! against three real `redis-server` masters joined by `redis-cli --cluster create`
//! ([`RedisCluster`]: own ports, own directories, AOF with `appendfsync always`, so a master
//! killed and restarted comes back with its slots and data).
//!
//! An account's keys are hash-tagged (`orp:acct:{github:alice}`, `orp:lock:{github:alice}`) so
//! they share a slot; the tests look at the master owning that slot with `redis-cli`.
//!
//! Replicas are in-process layer stacks (each its own `Tokens` cache and its own cluster
//! connection) or real sidecar processes (the crate's binary). The refresh backend and the API
//! are the in-process fakes of `oauth_refresh_proxy::demo`, which count calls; the realm
//! rotates GitHub refresh tokens, so a refresh token spent twice would be refused.
//!
//! Without `redis-server`/`redis-cli` on `PATH` the tests are skipped with a note on the
//! process's stderr; under `CI=true` they fail instead.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use oauth_refresh_proxy::store::redis::{RedisNodes, RedisOptions, RedisStore};
use oauth_refresh_proxy::{
    Account, BackendRefresher, Error, ErrorKind, Provider, RefreshLayer, ReplayBody, RetryPolicy,
    Secret, TokenSeed, Tokens,
};
use support::http_client::{http1_client, request, Answer, HttpClient};
use support::process::{Proxy, TempDir};
use support::redis_server::*;
use support::world::BACKEND_ENV;
use support::*;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

// ---------------------------------------------------------------------------------------------
// Keys and accounts
// ---------------------------------------------------------------------------------------------

/// The cluster key of a GitHub account's record.
fn acct_key(account: &str) -> String {
    format!("orp:acct:{{github:{account}}}")
}

/// The cluster key of a GitHub account's refresh lock.
fn lock_key(account: &str) -> String {
    format!("orp:lock:{{github:{account}}}")
}

/// Account ids `{prefix}{n}`, picked until every master owns `per_master` of them; in the
/// order found. Returns (id, owning master).
fn accounts_on_every_master(
    cluster: &RedisCluster,
    prefix: &str,
    per_master: usize,
) -> Vec<(String, usize)> {
    let mut count = [0usize; MASTERS];
    let mut picked = Vec::new();
    for n in 0..500 {
        let id = format!("{prefix}{n}");
        let owner = cluster.owner(&acct_key(&id));
        if count[owner] < per_master {
            count[owner] += 1;
            picked.push((id, owner));
        }
        if count.iter().all(|c| *c == per_master) {
            return picked;
        }
    }
    panic!("500 ids did not cover every master: {count:?}");
}

/// The rotated refresh tokens the backend issued, oldest first.
fn rotated(realm: &Realm) -> Vec<String> {
    realm
        .secrets()
        .into_iter()
        .filter(|s| s.starts_with("refresh-") && s.ends_with('r'))
        .collect()
}

/// The refresh token each backend call spent, in order.
fn spent(realm: &Realm) -> Vec<String> {
    realm
        .backend_requests()
        .iter()
        .map(|(_, _, body)| {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            v["refresh_token"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Asserts that no refresh token was spent twice.
fn assert_none_spent_twice(realm: &Realm) {
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

/// Asserts that `account`'s record is on `owner` alone (hash-tagged key, no untagged key
/// anywhere) and holds `refresh`; returns its generation.
fn assert_stored_on(cluster: &RedisCluster, owner: usize, account: &str, refresh: &str) -> u64 {
    let key = acct_key(account);
    assert_eq!(cluster.owner(&key), owner);
    let data = cluster.cli(owner, &["HGET", &key, "data"]);
    assert!(
        data.contains(refresh),
        "{key} on master {owner} holds the newest refresh token"
    );
    let gen = cluster.cli(owner, &["HGET", &key, "gen"]);
    let untagged = format!("orp:acct:github:{account}");
    for i in 0..MASTERS {
        let keys: Vec<String> = cluster
            .scan(i, "orp:acct:*")
            .into_iter()
            .filter(|k| *k == key || *k == untagged)
            .collect();
        if i == owner {
            assert_eq!(keys, std::slice::from_ref(&key), "master {i}");
        } else {
            assert!(keys.is_empty(), "master {i} holds {keys:?}");
        }
    }
    gen.parse().unwrap_or_else(|_| panic!("{key} gen: {gen:?}"))
}

// ---------------------------------------------------------------------------------------------
// In-process replicas
// ---------------------------------------------------------------------------------------------

type Svc = BoxCloneService<Request<TestBody>, Response<Incoming>, Error>;

struct Replica {
    tokens: Tokens,
    svc: Svc,
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        timeout: Duration::from_secs(10),
        late_answer_window: Duration::from_secs(5),
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    }
}

/// A layer stack with its own cache and its own connection to the cluster.
async fn replica(
    cluster: &RedisCluster,
    lock_ttl: Duration,
    realm: &Realm,
    backend: &str,
) -> Replica {
    let store = RedisStore::open(
        RedisNodes::Cluster(cluster.urls()),
        lock_ttl,
        RedisOptions::default(),
    )
    .await
    .unwrap();
    let refresher = BackendRefresher::new(backend)
        .unwrap()
        .bearer(Secret::new(realm.backend_token.clone().unwrap()))
        .timeout(Duration::from_secs(10));
    let tokens = Tokens::builder(refresher)
        .retry(policy())
        .store(Arc::new(store))
        .build();
    let client: Client<HttpConnector, ReplayBody<TestBody>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(HttpConnector::new());
    let svc = RefreshLayer::new(tokens.clone())
        .default_account("alice")
        .layer(client);
    let svc = tower::ServiceBuilder::new()
        .map_request(move |mut req: Request<TestBody>| {
            req.extensions_mut().insert(Provider::GitHub);
            req
        })
        .service(svc);
    Replica {
        tokens,
        svc: BoxCloneService::new(svc),
    }
}

impl Replica {
    async fn get(&self, url: String, account: &str) -> Result<Response<Incoming>, Error> {
        let mut req = Request::get(url).body(empty()).unwrap();
        req.extensions_mut().insert(Account::new(account));
        tokio::time::timeout(WAIT, self.svc.clone().oneshot(req))
            .await
            .expect("an answer within WAIT")
    }

    async fn get_status(&self, url: String, account: &str) -> StatusCode {
        let resp = self.get(url, account).await.unwrap();
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        status
    }

    fn generation(&self, account: &str) -> Option<u64> {
        self.tokens
            .get(Provider::GitHub, account)
            .map(|a| a.generation)
    }

    async fn restore(&self, account: &str, seed: &TokenSeed) {
        self.tokens
            .restore(vec![(Provider::GitHub, account.to_string(), seed.clone())])
            .await
            .unwrap();
    }
}

/// Polls `cond` every 5 ms until it holds; panics after `WAIT`.
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "waited {WAIT:?} for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A seed the realm accepts, valid for an hour: (seed, refresh, access).
fn seed(realm: &Realm) -> (TokenSeed, String, String) {
    let refresh = realm.new_refresh_token();
    let access = realm.new_access_token(&refresh);
    let seed = TokenSeed::new(refresh.as_str())
        .access_token(access.as_str())
        .expires_at(SystemTime::now() + Duration::from_secs(3600));
    (seed, refresh, access)
}

/// The `Authorization` of the last request the API answered with 200, without `Bearer `.
fn last_ok_access(realm: &Realm) -> String {
    realm
        .seen()
        .iter()
        .rev()
        .find(|s| s.status == 200)
        .and_then(|s| s.authorization.clone())
        .expect("a request succeeded")
        .trim_start_matches("Bearer ")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Sidecar processes
// ---------------------------------------------------------------------------------------------

/// A sidecar config on `cluster_urls`, with `refresh_and_store` keys (`timeout` in
/// `[refresh]`, then `lock_ttl` in `[store]`); one GitHub route to `api` (default account
/// `alice`); `accounts` appended.
fn sidecar_config(
    urls: &[String],
    backend: &str,
    api: std::net::SocketAddr,
    timeout: &str,
    lock_ttl: &str,
    accounts: &str,
) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[refresh]
backend_url = "{backend}"
backend_token = "env:{BACKEND_ENV}"
timeout = "{timeout}"

[store]
kind = "redis"
cluster_urls = [{urls}]
lock_ttl = "{lock_ttl}"

[[route]]
prefix = "/github"
upstream = "http://{api}"
provider = "github"
default_account = "alice"

{accounts}"#,
        urls = urls.join(", ")
    )
}

fn account_toml(id: &str, refresh: &str, access: &str) -> String {
    format!(
        "[[account]]\nprovider = \"github\"\nid = \"{id}\"\nrefresh_token = \"{refresh}\"\n\
         access_token = \"{access}\"\nexpires_at = {}\n\n",
        now_secs() + 3600
    )
}

async fn start_sidecar(config: &str, realm: &Realm) -> Proxy {
    let token = realm.backend_token.clone().unwrap();
    Proxy::start(config, &[], &[(BACKEND_ENV, token.as_str())]).await
}

/// `GET /github/…` through `proxy` as `account`.
async fn get_as(client: &HttpClient, proxy: &Proxy, account: &str, path: &str) -> Answer {
    request(
        client,
        "GET",
        &proxy.url(&format!("/github/{path}")),
        &[("x-oauth-account", account)],
        empty(),
    )
    .await
}

/// `GET /readyz` of `proxy`'s admin listener: its status, 0 on a transport error or no answer
/// within 5 s.
async fn readyz(client: &HttpClient, proxy: &Proxy) -> u16 {
    let req = Request::get(proxy.admin_url("/readyz"))
        .body(empty())
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
        Ok(Ok(r)) => r.status().as_u16(),
        _ => 0,
    }
}

async fn wait_readyz(client: &HttpClient, proxy: &Proxy, status: u16) {
    wait_until(&format!("/readyz {status}"), || async {
        readyz(client, proxy).await == status
    })
    .await;
}

/// `serve --config` on `config` must fail: exit code 1 (bounded by `WAIT`), exactly one stderr
/// line holding every one of `needles`; returns it and how long the refusal took.
fn refused(config: &str, needles: &[&str]) -> (String, Duration) {
    let dir = TempDir::new("refused");
    let path = dir.write("proxy.toml", config);
    let started = Instant::now();
    let out = support::process::run_cli(
        &["serve", "--config", path.to_str().unwrap()],
        &[(BACKEND_ENV, "refused-backend-bearer")],
    );
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr);
    assert!(!out.stdout.contains("listening on"), "{}", out.stdout);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one stderr line: {}", out.stderr);
    for n in needles {
        assert!(
            lines[0].contains(n),
            "{n:?} not in the error line: {}",
            lines[0]
        );
    }
    assert!(!out.stderr.contains("hunter2") && !out.stderr.contains("refused-backend-bearer"));
    (lines[0].to_string(), took)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The rotating storm through two real sidecars on one cluster: the backend call is held until
/// every request has met the revoked token, so both sidecars contend for the same lock; one
/// backend call, 1 000 × 200, the record under the hash-tagged key on the master owning it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sidecars_on_a_cluster_a_thousand_revoked_token_requests_make_one_backend_call() {
    capture_logs();
    let Some(cluster) = RedisCluster::start(
        "two_sidecars_on_a_cluster_a_thousand_revoked_token_requests_make_one_backend_call",
    ) else {
        return;
    };
    let realm = Realm::new("clstorm", true);
    let backend = start_backend(realm.clone()).await;
    let api = start_api(realm.clone(), Provider::GitHub).await;
    let (_, refresh, access) = seed(&realm);
    let config = sidecar_config(
        &cluster.urls(),
        &backend,
        api,
        "10s",
        "15s",
        &account_toml("alice", &refresh, &access),
    );
    let s1 = start_sidecar(&config, &realm).await;
    let s2 = start_sidecar(&config, &realm).await;
    let client = http1_client();
    for s in [&s1, &s2] {
        assert_eq!(readyz(&client, s).await, 200);
    }
    let owner = cluster.owner(&acct_key("alice"));
    assert_eq!(cluster.owner(&lock_key("alice")), owner, "one slot");
    let gen0 = assert_stored_on(&cluster, owner, "alice", &refresh);

    realm.revoke_access(&access);
    realm.script([Reply::Gated]);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let url = if i % 2 == 0 { &s1 } else { &s2 }.url(&format!("/github/storm/{i}"));
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            request(&client, "GET", &url, &[], empty()).await.status
        }));
    }
    realm.backend_calls.wait_for(1).await;
    realm.api_calls.wait_for(1000).await;
    // The holder's lock: hash-tagged, on the account's master.
    let pttl = cluster.cli(owner, &["PTTL", &lock_key("alice")]);
    let pttl: i64 = pttl.parse().unwrap_or_else(|_| panic!("PTTL: {pttl}"));
    assert!(
        pttl > 0 && pttl <= 15_000,
        "the lock on master {owner}: pttl {pttl}"
    );
    assert_eq!(realm.backend_calls.get(), 1);
    realm.release_backend(1);
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap(),
            StatusCode::OK,
            "request {i}"
        );
    }
    assert_eq!(
        realm.backend_calls.get(),
        1,
        "one backend call for the fleet"
    );
    assert_eq!(
        realm.seen().iter().filter(|s| s.status == 200).count(),
        1000
    );
    assert_eq!(spent(&realm), std::slice::from_ref(&refresh));
    let newest = rotated(&realm).last().cloned().expect("a rotation");
    let gen1 = assert_stored_on(&cluster, owner, "alice", &newest);
    assert!(gen1 > gen0, "generation {gen0} → {gen1}");
    assert_eq!(
        cluster.cli(owner, &["EXISTS", &lock_key("alice")]),
        "0",
        "the lock is released"
    );

    // Both sidecars go on with the new token, without another refresh.
    let new_access = last_ok_access(&realm);
    for s in [&s1, &s2] {
        let a = request(&client, "GET", &s.url("/github/after"), &[], empty()).await;
        assert_eq!(a.status, 200);
        assert_eq!(
            realm.seen().last().unwrap().authorization,
            bearer(&new_access)
        );
    }
    assert_eq!(realm.backend_calls.get(), 1);
    let secrets = realm.secrets();
    s1.assert_no_secret_in_stderr(&secrets);
    s2.assert_no_secret_in_stderr(&secrets);
    assert_no_secret_logged(&secrets);
}

/// The same storm with library replicas on `RedisNodes::Cluster`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn library_replicas_on_a_cluster_a_thousand_revoked_token_requests_make_one_backend_call() {
    capture_logs();
    let Some(cluster) = RedisCluster::start(
        "library_replicas_on_a_cluster_a_thousand_revoked_token_requests_make_one_backend_call",
    ) else {
        return;
    };
    let realm = Realm::new("cllib", true);
    let backend = start_backend(realm.clone()).await;
    let api = start_api(realm.clone(), Provider::GitHub).await;
    let ttl = Duration::from_secs(15);
    let a = replica(&cluster, ttl, &realm, &backend).await;
    let b = replica(&cluster, ttl, &realm, &backend).await;
    let (seed, refresh, access) = seed(&realm);
    a.restore("alice", &seed).await;
    b.restore("alice", &seed).await;
    wait_until("both replicas ready", || async {
        a.tokens.ready().await && b.tokens.ready().await
    })
    .await;

    realm.revoke_access(&access);
    realm.script([Reply::Gated]);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let svc = if i % 2 == 0 { &a } else { &b }.svc.clone();
        let url = format!("http://{api}/burst/{i}");
        tasks.push(tokio::spawn(async move {
            let resp = svc
                .oneshot(Request::get(url).body(empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            status
        }));
    }
    realm.backend_calls.wait_for(1).await;
    realm.api_calls.wait_for(1000).await;
    realm.release_backend(1);
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap(),
            StatusCode::OK,
            "request {i}"
        );
    }
    assert_eq!(realm.backend_calls.get(), 1, "one backend call for both");
    assert_eq!(
        realm.seen().iter().filter(|s| s.status == 200).count(),
        1000
    );
    let (sa, sb) = (
        a.tokens.stats(Provider::GitHub),
        b.tokens.stats(Provider::GitHub),
    );
    assert_eq!(sa.refresh_success + sb.refresh_success, 1, "{sa:?} {sb:?}");
    assert_eq!(spent(&realm), [refresh]);
    let owner = cluster.owner(&acct_key("alice"));
    let gen = assert_stored_on(&cluster, owner, "alice", &rotated(&realm)[0]);
    wait_until("both replicas on the stored generation", || async {
        a.generation("alice") == Some(gen) && b.generation("alice") == Some(gen)
    })
    .await;
    assert_no_secret_logged(&realm.secrets());
}

/// Accounts on every master: a rotation on one replica reaches the other through pub/sub
/// (its next request carries the new token, no backend call of its own), whichever master
/// holds the account and whichever replica rotated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_of_accounts_on_every_master_reach_the_other_replica_through_pubsub() {
    capture_logs();
    let Some(cluster) = RedisCluster::start(
        "rotations_of_accounts_on_every_master_reach_the_other_replica_through_pubsub",
    ) else {
        return;
    };
    let realm = Realm::new("clpubsub", true);
    let backend = start_backend(realm.clone()).await;
    let api = start_api(realm.clone(), Provider::GitHub).await;
    let ttl = Duration::from_secs(15);
    let a = replica(&cluster, ttl, &realm, &backend).await;
    let b = replica(&cluster, ttl, &realm, &backend).await;
    let accounts = accounts_on_every_master(&cluster, "user", 2);
    let mut access = Vec::new();
    for (id, _) in &accounts {
        let (seed, _, acc) = seed(&realm);
        a.restore(id, &seed).await;
        b.restore(id, &seed).await;
        access.push(acc);
    }
    wait_until("both replicas ready", || async {
        a.tokens.ready().await && b.tokens.ready().await
    })
    .await;

    for (n, (id, owner)) in accounts.iter().enumerate() {
        // Alternate which replica rotates.
        let (from, to) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let before_gen = to.generation(id).unwrap();
        realm.revoke_access(&access[n]);
        assert_eq!(
            from.get_status(format!("http://{api}/rotate/{id}"), id)
                .await,
            StatusCode::OK,
            "{id} on master {owner}"
        );
        assert_eq!(realm.backend_calls.get(), n as u64 + 1, "{id}");
        let new_access = last_ok_access(&realm);
        let generation = from.generation(id).unwrap();
        assert!(generation > before_gen);
        wait_until(
            &format!("the other replica to apply {id}'s rotation"),
            || async { to.generation(id) == Some(generation) },
        )
        .await;
        let seen_before = realm.seen().len();
        assert_eq!(
            to.get_status(format!("http://{api}/follow/{id}"), id).await,
            StatusCode::OK,
            "{id}"
        );
        let seen = realm.seen();
        assert_eq!(
            seen.len(),
            seen_before + 1,
            "{id}: no 401 on the other replica"
        );
        assert_eq!(
            seen.last().unwrap().authorization,
            bearer(&new_access),
            "{id}"
        );
        assert_eq!(
            realm.backend_calls.get(),
            n as u64 + 1,
            "{id}: no second refresh"
        );
        let newest = rotated(&realm)[n].clone();
        let gen = assert_stored_on(&cluster, *owner, id, &newest);
        assert_eq!(gen, generation, "{id}");
    }
    assert_none_spent_twice(&realm);
    assert_no_secret_logged(&realm.secrets());
}

/// A master killed under two running sidecars: `/readyz` 503 on both; a refresh of an account
/// in its slots is a fast 503 with no backend call while a valid cached token (same master)
/// still works; after the restart `/readyz` is 200 again and the refresh succeeds with exactly
/// one more backend call that spends the newest refresh token, whose rotation is what the
/// master stores; the other sidecar follows without a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_down_fails_its_refreshes_fast_and_after_restart_no_rotation_is_lost() {
    capture_logs();
    let Some(mut cluster) = RedisCluster::start(
        "a_master_down_fails_its_refreshes_fast_and_after_restart_no_rotation_is_lost",
    ) else {
        return;
    };
    let realm = Realm::new("cldown", true);
    let backend = start_backend(realm.clone()).await;
    let api = start_api(realm.clone(), Provider::GitHub).await;
    // Two accounts on each master. The master killed is the last configured node, not the
    // first: a subscriber on the killed node must not be what makes `/readyz` fail.
    let accounts = accounts_on_every_master(&cluster, "acct", 2);
    let victim_master = MASTERS - 1;
    let on_victim: Vec<&String> = accounts
        .iter()
        .filter(|(_, o)| *o == victim_master)
        .map(|(id, _)| id)
        .collect();
    let (victim, steady) = (on_victim[0].clone(), on_victim[1].clone());
    let mut toml = String::new();
    let mut creds = std::collections::HashMap::new();
    for (id, _) in &accounts {
        let (_, r, a) = seed(&realm);
        toml += &account_toml(id, &r, &a);
        creds.insert(id.clone(), (r, a));
    }
    let config = sidecar_config(&cluster.urls(), &backend, api, "2s", "4s", &toml);
    let s1 = start_sidecar(&config, &realm).await;
    let s2 = start_sidecar(&config, &realm).await;
    let client = http1_client();
    for s in [&s1, &s2] {
        wait_readyz(&client, s, 200).await;
    }

    // A first rotation of the victim through s1.
    let (r0, a0) = creds[&victim].clone();
    realm.revoke_access(&a0);
    assert_eq!(get_as(&client, &s1, &victim, "one").await.status, 200);
    assert_eq!(realm.backend_calls.get(), 1);
    let a1 = last_ok_access(&realm);
    let r1 = rotated(&realm)[0].clone();
    assert_stored_on(&cluster, victim_master, &victim, &r1);

    // The master goes down.
    cluster.stop(victim_master);
    // A valid cached token of an account on that master needs no Redis.
    let ok = get_as(&client, &s1, &steady, "steady").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        realm.seen().last().unwrap().authorization,
        bearer(&creds[&steady].1)
    );
    // A refresh of the victim needs its master: refused fast, no backend call.
    realm.revoke_access(&a1);
    for s in [&s2, &s1] {
        let started = Instant::now();
        let down = get_as(&client, s, &victim, "down").await;
        assert_eq!(down.status, 503, "{}", down.text());
        assert_eq!(down.code(), "refresh_unavailable", "{}", down.text());
        assert!(
            down.text().contains("token store unavailable"),
            "{}",
            down.text()
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        realm.backend_calls.get(),
        1,
        "never a refresh without the lock"
    );
    // Not ready while a master is down.
    for s in [&s1, &s2] {
        wait_readyz(&client, s, 503).await;
    }

    // Back, with its slots and data (AOF).
    cluster.restart(victim_master);
    for s in [&s1, &s2] {
        wait_readyz(&client, s, 200).await;
    }
    assert_stored_on(&cluster, victim_master, &victim, &r1);
    let back = get_as(&client, &s2, &victim, "back").await;
    assert_eq!(back.status, 200, "{}", back.text());
    assert_eq!(
        realm.backend_calls.get(),
        2,
        "exactly one more backend call"
    );
    // The newest refresh token was spent (not the seed's), none twice, and the new rotation is
    // what the master stores.
    assert_eq!(spent(&realm), [r0, r1]);
    let r2 = rotated(&realm)[1].clone();
    assert_stored_on(&cluster, victim_master, &victim, &r2);
    let a2 = last_ok_access(&realm);
    // s1 follows without a call of its own.
    let follow = get_as(&client, &s1, &victim, "follow").await;
    assert_eq!(follow.status, 200, "{}", follow.text());
    assert_eq!(realm.seen().last().unwrap().authorization, bearer(&a2));
    assert_eq!(realm.backend_calls.get(), 2);
    assert_none_spent_twice(&realm);
    let secrets = realm.secrets();
    s1.assert_no_secret_in_stderr(&secrets);
    s2.assert_no_secret_in_stderr(&secrets);
    assert_no_secret_logged(&secrets);
}

/// With `cluster-require-full-coverage no` the live masters keep serving their slots while one
/// (not the first configured node) is down: a library replica refreshes the accounts on them
/// (one backend call each), refuses the down master's account at once (`RefreshUnavailable`,
/// no call), is not ready, and once the master is back refreshes that account too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_on_the_live_masters_keep_refreshing_while_one_master_is_down() {
    capture_logs();
    let Some(mut cluster) = RedisCluster::start_with(
        "accounts_on_the_live_masters_keep_refreshing_while_one_master_is_down",
        &["--cluster-require-full-coverage", "no"],
    ) else {
        return;
    };
    let realm = Realm::new("clpartial", true);
    let backend = start_backend(realm.clone()).await;
    let api = start_api(realm.clone(), Provider::GitHub).await;
    let a = replica(&cluster, Duration::from_secs(4), &realm, &backend).await;
    let accounts = accounts_on_every_master(&cluster, "p", 1);
    let mut access = Vec::new();
    for (id, _) in &accounts {
        let (seed, _, acc) = seed(&realm);
        a.restore(id, &seed).await;
        access.push(acc);
    }
    wait_until("ready", || async { a.tokens.ready().await }).await;

    let down = 1;
    cluster.stop(down);
    let mut calls = 0;
    for (n, (id, owner)) in accounts.iter().enumerate() {
        realm.revoke_access(&access[n]);
        if *owner == down {
            let started = Instant::now();
            let err = a
                .get(format!("http://{api}/down/{id}"), id)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::RefreshUnavailable, "{id}: {err}");
            assert!(err.to_string().contains("token store unavailable"), "{err}");
            assert!(started.elapsed() < Duration::from_secs(5), "bounded");
        } else {
            assert_eq!(
                a.get_status(format!("http://{api}/live/{id}"), id).await,
                StatusCode::OK,
                "{id} on live master {owner}"
            );
            calls += 1;
        }
        assert_eq!(realm.backend_calls.get(), calls, "{id}");
    }
    wait_until("not ready while a master is down", || async {
        !a.tokens.ready().await
    })
    .await;

    cluster.restart(down);
    wait_until("ready again", || async { a.tokens.ready().await }).await;
    let (id, _) = accounts.iter().find(|(_, o)| *o == down).unwrap();
    assert_eq!(
        a.get_status(format!("http://{api}/back/{id}"), id).await,
        StatusCode::OK
    );
    assert_eq!(realm.backend_calls.get(), calls + 1);
    let newest = rotated(&realm).last().cloned().unwrap();
    assert_stored_on(&cluster, down, id, &newest);
    assert_none_spent_twice(&realm);
    assert_no_secret_logged(&realm.secrets());
}

/// Configuration and start-up refusals of `cluster_urls`: with `url` too, with `ca_file` for
/// `redis://` nodes, an empty list, and a Redis that is not a cluster. Exit code 1, one stderr
/// line naming the key, bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_refuses_bad_cluster_configs_and_a_redis_that_is_not_a_cluster() {
    let Some(plain) = RedisServer::start(
        "the_sidecar_refuses_bad_cluster_configs_and_a_redis_that_is_not_a_cluster",
    ) else {
        return;
    };
    refused(
        &store_only(
            "url = \"redis://127.0.0.1:7000\"\ncluster_urls = [\"redis://127.0.0.1:7001\"]",
        ),
        &["store.url", "store.cluster_urls"],
    );
    refused(
        &store_only(
            "cluster_urls = [\"redis://127.0.0.1:7001\"]\nca_file = \"/nonexistent/ca.pem\"",
        ),
        &["store.ca_file", "rediss://"],
    );
    refused(&store_only("cluster_urls = []"), &["store.cluster_urls"]);
    // A Redis without cluster support.
    let (line, took) = refused(
        &store_only(&format!("cluster_urls = [\"{}\"]", plain.url())),
        &["store.cluster_urls", &format!("127.0.0.1:{}", plain.port)],
    );
    assert!(took < Duration::from_secs(10), "bounded: {took:?} ({line})");
}

/// Needs no redis-server: nothing listens on the nodes' ports. Exit code 1 at once, exactly
/// one stderr line naming `store.cluster_urls` (as for one unreachable Redis), no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_refuses_to_start_when_no_cluster_node_answers_in_one_line() {
    let (p1, p2) = (free_port(), free_port());
    let (line, took) = refused(
        &store_only(&format!(
            "cluster_urls = [\"redis://:hunter2-cluster@127.0.0.1:{p1}\", \
             \"redis://:hunter2-cluster@127.0.0.1:{p2}\"]"
        )),
        &["store.cluster_urls", "cannot reach"],
    );
    assert!(took < Duration::from_secs(10), "bounded: {took:?} ({line})");
}

/// A config with `[refresh]` and the `[store]` keys `store` (kind redis).
fn store_only(store: &str) -> String {
    format!(
        "[refresh]\nbackend_url = \"http://127.0.0.1:9\"\nbackend_token = \
         \"env:{BACKEND_ENV}\"\n\n[store]\nkind = \"redis\"\n{store}\n"
    )
}
