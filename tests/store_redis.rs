//! The shared Redis store (`store.kind = "redis"`) against a real `redis-server`, started by
//! each test on a free loopback port (`--save "" --appendonly no`) and killed on drop.
//!
//! Replicas are either in-process layer stacks (each its own `Tokens` cache and its own
//! `RedisStore` connection) or real sidecar processes (the crate's binary). The refresh backend
//! and the APIs are the in-process fakes of `oauth_refresh_proxy::demo`, which count calls.
//!
//! Without `redis-server` on `PATH` the Redis tests are skipped with a note on the process's
//! stderr (shown by a plain `cargo test`); under `CI=true` they fail instead.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use oauth_refresh_proxy::store::redis::RedisStore;
use oauth_refresh_proxy::{
    Account, BackendRefresher, Error, ErrorKind, Provider, RefreshLayer, ReplayBody, RetryPolicy,
    Secret, TokenSeed, Tokens,
};
use support::redis_server::*;
use support::*;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

const BIN: &str = env!("CARGO_BIN_EXE_oauth-refresh-proxy");
const BACKEND_ENV: &str = "ORP_TEST_BACKEND_TOKEN";

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
        timeout: Duration::from_secs(5),
        late_answer_window: Duration::from_secs(5),
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    }
}

/// A layer stack with its own cache and its own connection to the Redis at `url`.
async fn replica(
    url: &str,
    lock_ttl: Duration,
    realm: &Realm,
    backend: &str,
    provider: Provider,
) -> Replica {
    let store = RedisStore::connect(url, lock_ttl).await.unwrap();
    let refresher = BackendRefresher::new(backend)
        .unwrap()
        .bearer(Secret::new(realm.backend_token.clone().unwrap()))
        .timeout(Duration::from_secs(5));
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
            req.extensions_mut().insert(provider);
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
        self.svc.clone().oneshot(req).await
    }

    async fn get_status(&self, url: String, account: &str) -> StatusCode {
        let resp = self.get(url, account).await.unwrap();
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        status
    }

    fn generation(&self, provider: Provider, account: &str) -> Option<u64> {
        self.tokens.get(provider, account).map(|a| a.generation)
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

/// A seed the realm accepts, its access token valid for `valid_for` seconds (negative:
/// expired). Returns (seed, refresh, access).
fn seed(realm: &Realm, valid_for: i64) -> (TokenSeed, String, String) {
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

async fn restore(r: &Replica, provider: Provider, account: &str, seed: &TokenSeed) {
    r.tokens
        .restore(vec![(provider, account.to_string(), seed.clone())])
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Sidecar processes
// ---------------------------------------------------------------------------------------------

struct Sidecar {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    stderr: Arc<Mutex<Vec<u8>>>,
    dir: PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sidecar_config(
    redis_url: &str,
    backend: &str,
    api: SocketAddr,
    refresh_and_store: &str,
    accounts: &str,
) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[refresh]
backend_url = "{backend}"
backend_token = "env:{BACKEND_ENV}"
{refresh_and_store}
url = "{redis_url}"

[[route]]
prefix = "/google"
upstream = "http://{api}"
provider = "google"
default_account = "alice"

{accounts}"#
    )
}

fn account_toml(provider: &str, id: &str, refresh: &str, access: &str, valid_for: i64) -> String {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + valid_for;
    format!(
        "[[account]]\nprovider = \"{provider}\"\nid = \"{id}\"\nrefresh_token = \"{refresh}\"\n\
         access_token = \"{access}\"\nexpires_at = {at}\n\n"
    )
}

/// Starts `oauth-refresh-proxy serve` and waits for its listening lines.
async fn start_sidecar(config: &str, realm: &Realm) -> Sidecar {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "orp-redis-sidecar-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "trace")
        .env(BACKEND_ENV, realm.backend_token.clone().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 16384];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let (mut proxy, mut admin) = (None, None);
    while proxy.is_none() || admin.is_none() {
        let line = match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "the sidecar exited before listening: {}",
                String::from_utf8_lossy(&stderr.lock().unwrap())
            ),
            Err(_) => panic!("the sidecar did not report its addresses within {WAIT:?}"),
        };
        if let Some(a) = line.strip_prefix("proxy listening on http://") {
            proxy = Some(a.parse().unwrap());
        } else if let Some(a) = line.strip_prefix("admin listening on http://") {
            admin = Some(a.parse().unwrap());
        }
    }
    Sidecar {
        child,
        proxy: proxy.unwrap(),
        admin: admin.unwrap(),
        stderr,
        dir,
    }
}

/// `GET url` with HTTP/1.1; (status, body). Connection errors are returned as `Err`.
async fn http_get(url: String, headers: &[(&str, &str)]) -> Result<(u16, String), String> {
    let client: Client<HttpConnector, TestBody> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(empty()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn assert_no_secret_in(text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!text.contains(s.as_str()), "secret {s:?} found in: {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_a_thousand_revoked_token_requests_make_one_backend_call() {
    capture_logs();
    let Some(redis) =
        RedisServer::start("two_replicas_a_thousand_revoked_token_requests_make_one_backend_call")
    else {
        return;
    };
    // GitHub rotation: a second refresh with the spent refresh token would be rejected.
    let realm = Realm::new("rthousand", true);
    let backend = start_backend(realm.clone()).await;
    let api = start_api(realm.clone(), Provider::GitHub).await;
    let ttl = Duration::from_secs(10);
    let a = replica(&redis.url(), ttl, &realm, &backend, Provider::GitHub).await;
    let b = replica(&redis.url(), ttl, &realm, &backend, Provider::GitHub).await;
    let (seed, _, access) = seed(&realm, 3600);
    restore(&a, Provider::GitHub, "alice", &seed).await;
    restore(&b, Provider::GitHub, "alice", &seed).await;
    wait_until("both replicas ready", || async {
        a.tokens.ready().await && b.tokens.ready().await
    })
    .await;
    realm.revoke_access(&access);

    let mut tasks = Vec::new();
    for i in 0..1000 {
        let svc = if i % 2 == 0 {
            a.svc.clone()
        } else {
            b.svc.clone()
        };
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
    for t in tasks {
        assert_eq!(
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap(),
            StatusCode::OK
        );
    }
    assert_eq!(
        realm.backend_calls.get(),
        1,
        "one backend call for the fleet"
    );
    let ok = realm.seen().iter().filter(|s| s.status == 200).count();
    assert_eq!(ok, 1000);
    assert_eq!(
        a.generation(Provider::GitHub, "alice"),
        b.generation(Provider::GitHub, "alice")
    );
    // Exactly one replica refreshed; the other (if it had a flight) adopted the result.
    let (sa, sb) = (
        a.tokens.stats(Provider::GitHub),
        b.tokens.stats(Provider::GitHub),
    );
    assert_eq!(sa.refresh_success + sb.refresh_success, 1, "{sa:?} {sb:?}");
    assert_no_secret_logged(&realm.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_reaches_the_other_replica_through_pubsub() {
    capture_logs();
    let Some(redis) = RedisServer::start("a_rotation_reaches_the_other_replica_through_pubsub")
    else {
        return;
    };
    let realm = Realm::new("rrotation", true);
    let backend = start_backend(realm.clone()).await;
    let api = start_api(realm.clone(), Provider::GitHub).await;
    let ttl = Duration::from_secs(10);
    let a = replica(&redis.url(), ttl, &realm, &backend, Provider::GitHub).await;
    let b = replica(&redis.url(), ttl, &realm, &backend, Provider::GitHub).await;
    let (seed, old_refresh, access) = seed(&realm, 3600);
    restore(&a, Provider::GitHub, "alice", &seed).await;
    restore(&b, Provider::GitHub, "alice", &seed).await;
    wait_until("both replicas ready", || async {
        a.tokens.ready().await && b.tokens.ready().await
    })
    .await;
    let before = b.generation(Provider::GitHub, "alice").unwrap();

    // A finds the token revoked, refreshes (rotating refresh AND access token), replays.
    realm.revoke_access(&access);
    assert_eq!(
        a.get_status(format!("http://{api}/a"), "alice").await,
        StatusCode::OK
    );
    assert_eq!(realm.backend_calls.get(), 1);
    let new_access = realm.seen().last().unwrap().authorization.clone().unwrap();
    let generation = a.generation(Provider::GitHub, "alice").unwrap();
    assert!(generation > before);

    // B learns the new tokens from the announcement, without a request of its own.
    wait_until("B to apply A's refresh", || async {
        b.generation(Provider::GitHub, "alice") == Some(generation)
    })
    .await;
    let seen_before = realm.seen().len();
    assert_eq!(
        b.get_status(format!("http://{api}/b"), "alice").await,
        StatusCode::OK
    );
    let seen = realm.seen();
    assert_eq!(
        seen.len(),
        seen_before + 1,
        "B's request went out once: no 401"
    );
    assert_eq!(
        seen.last().unwrap().authorization.as_deref(),
        Some(new_access.as_str())
    );
    assert_eq!(realm.backend_calls.get(), 1, "B never refreshed");
    // The rotated refresh token is what the store holds; the old one is spent.
    let requests = realm.backend_requests();
    assert!(requests[0].2.contains(&old_refresh));
    assert_no_secret_logged(&realm.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_removals_and_rejections_are_shared() {
    capture_logs();
    let Some(redis) = RedisServer::start("puts_removals_and_rejections_are_shared") else {
        return;
    };
    let realm = Realm::new("rshared", false);
    let backend = start_backend(realm.clone()).await;
    let api = start_api(realm.clone(), Provider::Google).await;
    let ttl = Duration::from_secs(10);
    let a = replica(&redis.url(), ttl, &realm, &backend, Provider::Google).await;
    let b = replica(&redis.url(), ttl, &realm, &backend, Provider::Google).await;
    wait_until("both replicas ready", || async {
        a.tokens.ready().await && b.tokens.ready().await
    })
    .await;

    // An account created on A appears on B.
    let (seed, refresh, access) = seed(&realm, 3600);
    a.tokens.put(Provider::Google, "bob", seed).await.unwrap();
    wait_until("bob on B", || async {
        b.tokens.get(Provider::Google, "bob").is_some()
    })
    .await;
    assert_eq!(
        b.get_status(format!("http://{api}/x"), "bob").await,
        StatusCode::OK
    );
    assert_eq!(
        realm.seen().last().unwrap().authorization,
        Some(format!("Bearer {access}"))
    );

    // A rejected refresh on A: B fails fast without a backend call of its own.
    realm.revoke_access(&access);
    realm.revoke_refresh(&refresh);
    assert_eq!(
        a.get_status(format!("http://{api}/y"), "bob").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(realm.backend_calls.get(), 1);
    // B either already knows (announcement: fails before sending) or learns it from the store
    // while handling its own 401 (the upstream 401 comes back).
    match b.get(format!("http://{api}/z"), "bob").await {
        Ok(resp) => assert_eq!(resp.status(), StatusCode::UNAUTHORIZED),
        Err(e) => assert_eq!(e.kind(), ErrorKind::RefreshRejected),
    }
    assert_eq!(
        realm.backend_calls.get(),
        1,
        "B did not spend the dead token again"
    );
    assert!(b.tokens.get(Provider::Google, "bob").unwrap().needs_reauth);

    // Removal on A removes it on B.
    assert!(a.tokens.forget(Provider::Google, "bob").await.unwrap());
    wait_until("bob gone on B", || async {
        b.tokens.get(Provider::Google, "bob").is_none()
    })
    .await;
    let mut c = redis.conn().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg("orp:acct:google:bob")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!exists);
    assert_no_secret_logged(&realm.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_holder_killed_mid_refresh_is_taken_over_after_the_lock_expires() {
    capture_logs();
    let Some(redis) =
        RedisServer::start("a_lock_holder_killed_mid_refresh_is_taken_over_after_the_lock_expires")
    else {
        return;
    };
    let realm = Realm::new("rkilled", false);
    let backend = start_backend(realm.clone()).await;
    let api = start_api(realm.clone(), Provider::Google).await;
    let (seed, refresh, access) = seed(&realm, 3600);
    let lock_ttl = Duration::from_secs(4);
    let config = sidecar_config(
        &redis.url(),
        &backend,
        api,
        "timeout = \"3s\"\nmax_attempts = 1\n\n[store]\nkind = \"redis\"\nlock_ttl = \"4s\"",
        &account_toml("google", "alice", &refresh, &access, 3600),
    );
    let mut holder = start_sidecar(&config, &realm).await;
    let b = replica(&redis.url(), lock_ttl, &realm, &backend, Provider::Google).await;
    restore(&b, Provider::Google, "alice", &seed).await;
    wait_until("B ready", || async { b.tokens.ready().await }).await;

    // The sidecar meets the revoked token, takes the lock and calls the backend, which holds it.
    realm.revoke_access(&access);
    realm.script([Reply::Gated]);
    let via_holder = format!("http://{}/google/held", holder.proxy);
    let doomed = tokio::spawn(async move { http_get(via_holder, &[]).await });
    realm.backend_calls.wait_for(1).await;
    let mut c = redis.conn().await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg("orp:lock:google:alice")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 4000, "the holder's lock: pttl {pttl}");

    // Requests on replica B meet the same 401 and wait for the holder's lock.
    let mut waiting = Vec::new();
    for i in 0..20 {
        let svc = b.svc.clone();
        let url = format!("http://{api}/b/{i}");
        waiting.push(tokio::spawn(async move {
            let resp = svc
                .oneshot(Request::get(url).body(empty()).unwrap())
                .await
                .unwrap();
            resp.status()
        }));
    }
    realm.api_calls.wait_for(21).await; // the holder's 401 + B's 20
    assert_eq!(
        realm.backend_calls.get(),
        1,
        "B waits while the lock is held"
    );

    // The holder dies mid-refresh.
    let left: i64 = redis::cmd("PTTL")
        .arg("orp:lock:google:alice")
        .query_async(&mut c)
        .await
        .unwrap();
    holder.child.kill().unwrap();
    holder.child.wait().unwrap();
    let killed = Instant::now();
    let _ = tokio::time::timeout(WAIT, doomed).await;
    for t in waiting {
        assert_eq!(
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap(),
            StatusCode::OK,
            "no request on the surviving replica is lost"
        );
    }
    let took = killed.elapsed();
    assert!(
        took + Duration::from_millis(300) >= Duration::from_millis(left as u64),
        "B waited for the dead holder's lock to expire ({left} ms left), took {took:?}"
    );
    assert!(
        took <= lock_ttl + Duration::from_secs(2),
        "taken over within the lock's expiry, took {took:?}"
    );
    assert_eq!(realm.backend_calls.get(), 2, "exactly one more refresh");
    let requests = realm.backend_requests();
    assert!(requests.iter().all(|r| r.2.contains(&refresh)));
    assert_eq!(b.tokens.stats(Provider::Google).refresh_success, 1);
    let stderr = String::from_utf8_lossy(&holder.stderr.lock().unwrap()).into_owned();
    assert_no_secret_in(&stderr, &realm.secrets());
    assert_no_secret_logged(&realm.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_valid_tokens_work_refreshes_fail_fast_then_recover() {
    capture_logs();
    let Some(mut redis) =
        RedisServer::start("redis_outage_valid_tokens_work_refreshes_fail_fast_then_recover")
    else {
        return;
    };
    let realm = Realm::new("routage", false);
    let backend = start_backend(realm.clone()).await;
    let api = start_api(realm.clone(), Provider::Google).await;
    let a = replica(
        &redis.url(),
        Duration::from_secs(10),
        &realm,
        &backend,
        Provider::Google,
    )
    .await;
    let (alice, _, _) = seed(&realm, 3600);
    let (bob, _, _) = seed(&realm, -10);
    restore(&a, Provider::Google, "alice", &alice).await;
    restore(&a, Provider::Google, "bob", &bob).await;
    wait_until("ready", || async { a.tokens.ready().await }).await;

    redis.stop();
    assert!(!a.tokens.ready().await, "not ready while Redis is down");
    // A valid cached token does not need Redis.
    assert_eq!(
        a.get_status(format!("http://{api}/alice"), "alice").await,
        StatusCode::OK
    );
    // An expired one needs a refresh, which needs the lock: refused quickly and clearly.
    let started = Instant::now();
    let err = a.get(format!("http://{api}/bob"), "bob").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RefreshUnavailable);
    assert!(
        err.to_string().contains("token store unavailable"),
        "clear error: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "bounded");
    assert_eq!(
        realm.backend_calls.get(),
        0,
        "never a refresh without the lock"
    );

    // Back (empty: no persistence), without restarting anything here.
    redis.restart();
    wait_until("ready again", || async { a.tokens.ready().await }).await;
    assert_eq!(
        a.get_status(format!("http://{api}/bob2"), "bob").await,
        StatusCode::OK
    );
    assert_eq!(realm.backend_calls.get(), 1);
    let mut c = redis.conn().await;
    let gen: Option<String> = redis::cmd("HGET")
        .arg("orp:acct:google:bob")
        .arg("gen")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        gen.and_then(|g| g.parse::<u64>().ok()),
        a.generation(Provider::Google, "bob"),
        "the refreshed account is in the store again"
    );
    assert_no_secret_logged(&realm.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_readyz_follows_redis_and_recovers_without_restart() {
    capture_logs();
    let Some(mut redis) =
        RedisServer::start("sidecar_readyz_follows_redis_and_recovers_without_restart")
    else {
        return;
    };
    let realm = Realm::new("rreadyz", false);
    let backend = start_backend(realm.clone()).await;
    let api = start_api(realm.clone(), Provider::Google).await;
    let (_, r1, a1) = seed(&realm, 3600);
    let (_, r2, a2) = seed(&realm, -10);
    let accounts = account_toml("google", "alice", &r1, &a1, 3600)
        + &account_toml("google", "bob", &r2, &a2, -10);
    let config = sidecar_config(
        &redis.url(),
        &backend,
        api,
        "timeout = \"2s\"\n\n[store]\nkind = \"redis\"\nlock_ttl = \"5s\"",
        &accounts,
    );
    let sc = start_sidecar(&config, &realm).await;
    let readyz = format!("http://{}/readyz", sc.admin);
    let status = |url: String| async move { http_get(url, &[]).await.map(|(s, _)| s) };
    wait_until("readyz 200", || {
        let url = readyz.clone();
        async move { status(url).await == Ok(200) }
    })
    .await;

    redis.stop();
    assert_eq!(status(readyz.clone()).await, Ok(503));
    let (s, _) = http_get(format!("http://{}/google/a", sc.proxy), &[])
        .await
        .unwrap();
    assert_eq!(s, 200, "a valid cached token keeps working");
    let started = Instant::now();
    let (s, body) = http_get(
        format!("http://{}/google/b", sc.proxy),
        &[("x-oauth-account", "bob")],
    )
    .await
    .unwrap();
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("refresh_unavailable") && body.contains("token store unavailable"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(realm.backend_calls.get(), 0);

    redis.restart();
    wait_until("readyz 200 again", || {
        let url = readyz.clone();
        async move { status(url).await == Ok(200) }
    })
    .await;
    let (s, body) = http_get(
        format!("http://{}/google/b", sc.proxy),
        &[("x-oauth-account", "bob")],
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{body}");
    assert_eq!(realm.backend_calls.get(), 1);
    let stderr = String::from_utf8_lossy(&sc.stderr.lock().unwrap()).into_owned();
    assert_no_secret_in(&stderr, &realm.secrets());
}

/// Needs no redis-server: nothing listens on the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_refuses_to_start_when_redis_is_unreachable() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("orp-redis-down-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[refresh]\nbackend_url = \"http://127.0.0.1:1\"\n[store]\nkind = \"redis\"\n\
             url = \"redis://:hunter2-secret@127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let out = run_bounded(Command::new(BIN).arg("serve").arg("--config").arg(&path));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.0, Some(1), "stderr: {}", out.1);
    let lines: Vec<&str> = out.1.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", out.1);
    assert!(
        lines[0].contains(&format!("cannot reach Redis at 127.0.0.1:{port}")),
        "{}",
        lines[0]
    );
    assert!(!out.1.contains("hunter2"), "the password never shows");
}

/// Runs a command to its end (bounded by `WAIT`): (exit code, stderr).
fn run_bounded(cmd: &mut Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the command did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.code(), reader.join().unwrap())
}
