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

use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use oauth_refresh_proxy::{ErrorKind, Provider};
use support::http_client::{http1_client, request};
use support::redis_server::*;
use support::shared_store::*;
use support::*;

/// A replica on `redis`, 5 s refreshes.
async fn replica(
    redis: &RedisServer,
    lock_ttl: Duration,
    realm: &Realm,
    backend: &str,
    provider: Provider,
) -> Replica {
    let timeout = Duration::from_secs(5);
    Replica::open(redis, lock_ttl, realm, backend, provider, timeout).await
}

/// A sidecar config on the Redis at `redis_url`: `refresh` keys, `lock_ttl`, one Google route.
fn google_sidecar_config(
    redis_url: &str,
    backend: &str,
    api: std::net::SocketAddr,
    refresh: &str,
    lock_ttl: &str,
    accounts: &str,
) -> String {
    let store = format!("lock_ttl = \"{lock_ttl}\"\n{}", store_url(redis_url, None));
    sidecar_config("google", backend, api, refresh, &store, accounts)
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
    let (realm, backend, api) = fakes("rthousand", true, Provider::GitHub).await;
    let ttl = Duration::from_secs(10);
    let a = replica(&redis, ttl, &realm, &backend, Provider::GitHub).await;
    let b = replica(&redis, ttl, &realm, &backend, Provider::GitHub).await;
    let (_, _, access) = seed_alice(&realm, &[&a, &b]).await;

    library_storm(&realm, api, &access, (&a, &b), false).await;
    assert_eq!(a.generation("alice"), b.generation("alice"));
    assert_no_secret_logged(&realm.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_reaches_the_other_replica_through_pubsub() {
    capture_logs();
    let Some(redis) = RedisServer::start("a_rotation_reaches_the_other_replica_through_pubsub")
    else {
        return;
    };
    let (realm, backend, api) = fakes("rrotation", true, Provider::GitHub).await;
    let ttl = Duration::from_secs(10);
    let a = replica(&redis, ttl, &realm, &backend, Provider::GitHub).await;
    let b = replica(&redis, ttl, &realm, &backend, Provider::GitHub).await;
    let (_, old_refresh, access) = seed_alice(&realm, &[&a, &b]).await;
    let before = b.generation("alice").unwrap();

    // A finds the token revoked, refreshes (rotating refresh AND access token), replays.
    realm.revoke_access(&access);
    assert_eq!(
        a.get_status(format!("http://{api}/a"), "alice").await,
        StatusCode::OK
    );
    assert_eq!(realm.backend_calls.get(), 1);
    let new_access = realm.seen().last().unwrap().authorization.clone().unwrap();
    let generation = a.generation("alice").unwrap();
    assert!(generation > before);

    // B learns the new tokens from the announcement, without a request of its own.
    wait_until("B to apply A's refresh", || async {
        b.generation("alice") == Some(generation)
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
    let (realm, backend, api) = fakes("rshared", false, Provider::Google).await;
    let ttl = Duration::from_secs(10);
    let a = replica(&redis, ttl, &realm, &backend, Provider::Google).await;
    let b = replica(&redis, ttl, &realm, &backend, Provider::Google).await;
    wait_ready("both replicas ready", &[&a, &b]).await;

    // An account created on A appears on B.
    let (seed, refresh, access) = seed(&realm, 3600);
    a.tokens.save(Provider::Google, "bob", seed).await.unwrap();
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
    assert!(a.tokens.delete(Provider::Google, "bob").await.unwrap());
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
    let (realm, backend, api) = fakes("rkilled", false, Provider::Google).await;
    let (seed, refresh, access) = seed(&realm, 3600);
    let lock_ttl = Duration::from_secs(4);
    let config = google_sidecar_config(
        &redis.url(),
        &backend,
        api,
        "timeout = \"3s\"\nmax_attempts = 1",
        "4s",
        &account_toml("google", "alice", &refresh, &access, 3600),
    );
    let mut holder = start_sidecar(&config, &realm).await;
    let b = replica(&redis, lock_ttl, &realm, &backend, Provider::Google).await;
    b.restore("alice", &seed).await;
    wait_ready("B ready", &[&b]).await;

    // The sidecar meets the revoked token, takes the lock and calls the backend, which holds it.
    realm.revoke_access(&access);
    realm.script([Reply::Gated]);
    let via_holder = Request::get(holder.url("/google/held"))
        .body(empty())
        .unwrap();
    let client = http1_client();
    let doomed = tokio::spawn(async move { client.request(via_holder).await.map(|r| r.status()) });
    realm.backend_calls.wait_for(1).await;
    let mut c = redis.conn().await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg("orp:lock:google:alice")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 4000, "the holder's lock: pttl {pttl}");

    // Requests on replica B meet the same 401 and wait for the holder's lock.
    let waiting: Vec<_> = (0..20)
        .map(|i| b.spawn_get(format!("http://{api}/b/{i}")))
        .collect();
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
    holder.kill9();
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
    holder.assert_no_secret_in_stderr(&realm.secrets());
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
    let (realm, backend, api) = fakes("routage", false, Provider::Google).await;
    let a = replica(
        &redis,
        Duration::from_secs(10),
        &realm,
        &backend,
        Provider::Google,
    )
    .await;
    let (alice, _, _) = seed(&realm, 3600);
    let (bob, _, _) = seed(&realm, -10);
    a.restore("alice", &alice).await;
    a.restore("bob", &bob).await;
    wait_ready("ready", &[&a]).await;

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
    wait_ready("ready again", &[&a]).await;
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
        a.generation("bob"),
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
    let (realm, backend, api) = fakes("rreadyz", false, Provider::Google).await;
    let (_, r1, a1) = seed(&realm, 3600);
    let (_, r2, a2) = seed(&realm, -10);
    let accounts = account_toml("google", "alice", &r1, &a1, 3600)
        + &account_toml("google", "bob", &r2, &a2, -10);
    let config = google_sidecar_config(
        &redis.url(),
        &backend,
        api,
        "timeout = \"2s\"",
        "5s",
        &accounts,
    );
    let sc = start_sidecar(&config, &realm).await;
    let client = http1_client();
    wait_readyz(&client, &sc, 200).await;

    redis.stop();
    assert_eq!(readyz(&client, &sc).await, 503);
    let a = request(&client, "GET", &sc.url("/google/a"), &[], empty()).await;
    assert_eq!(a.status, 200, "a valid cached token keeps working");
    let started = Instant::now();
    let b = get_as(&client, &sc, "bob", "/google/b").await;
    let body = b.text();
    assert_eq!(b.status, 503, "{body}");
    assert!(body.contains("refresh_unavailable") && body.contains("token store unavailable"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(realm.backend_calls.get(), 0);

    redis.restart();
    wait_readyz(&client, &sc, 200).await;
    let b = get_as(&client, &sc, "bob", "/google/b").await;
    assert_eq!(b.status, 200, "{}", b.text());
    assert_eq!(realm.backend_calls.get(), 1);
    sc.assert_no_secret_in_stderr(&realm.secrets());
}

/// Needs no redis-server: nothing listens on the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_refuses_to_start_when_redis_is_unreachable() {
    let port = free_port();
    let config = format!(
        "[refresh]\nbackend_url = \"http://127.0.0.1:1\"\n[store]\nkind = \"redis\"\n\
         url = \"redis://:hunter2-secret@127.0.0.1:{port}\"\n"
    );
    // Exit code 1, one stderr line naming the address; the password never shows.
    refused(
        &config,
        &[&format!("cannot reach Redis at 127.0.0.1:{port}")],
        &["hunter2"],
    );
}
