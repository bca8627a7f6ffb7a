//! The shared Redis store over TLS (`rediss://`, `store.ca_file`) against a real
//! `redis-server` that speaks only TLS (`--port 0 --tls-port P`), with a CA and a server
//! certificate for `127.0.0.1`/`localhost` made by the test ([`RedisTlsServer`]).
//!
//! Replicas are either in-process layer stacks (each its own `Tokens` cache and its own
//! `RedisStore::open(RedisNodes::Single(…))`) or real sidecar processes (the crate's binary).
//! The refresh backend and the API are the in-process fakes of `oauth_refresh_proxy::demo`,
//! which count calls.
//!
//! Without `redis-server`/`redis-cli` on `PATH` the tests are skipped with a note on the
//! process's stderr; under `CI=true` they fail instead.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use http::StatusCode;
use oauth_refresh_proxy::store::redis::{RedisNodes, RedisOptions, RedisStore};
use oauth_refresh_proxy::Provider;
use support::http_client::{http1_client, request};
use support::process::{TempDir, BIN};
use support::redis_server::*;
use support::shared_store::*;
use support::world::BACKEND_ENV;
use support::*;

/// A sidecar config: `[store]` is `kind = "redis"`, `lock_ttl = "15s"` plus `store`; one
/// GitHub route to `api` (default account `alice`); `accounts` appended.
fn tls_sidecar_config(
    store: &str,
    backend: &str,
    api: std::net::SocketAddr,
    accounts: &str,
) -> String {
    let store = format!("lock_ttl = \"15s\"\n{store}");
    sidecar_config(
        "github",
        backend,
        api,
        "timeout = \"10s\"",
        &store,
        accounts,
    )
}

/// `store.url` and `store.ca_file` of `redis`.
fn tls_store(redis: &RedisTlsServer) -> String {
    store_url(&redis.url(), Some(&redis.ca_path()))
}

/// [`refused`], its `needles` matched case-insensitively.
fn refused_any_case(config: &str, needles: &[&str], never: &[&str]) -> (String, Duration) {
    let (line, took) = refused(config, &[], never);
    for n in needles {
        assert!(
            line.to_lowercase().contains(&n.to_lowercase()),
            "{n:?} not in the error line: {line}"
        );
    }
    (line, took)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The rotating storm through two real sidecars sharing one TLS Redis (`rediss://` with
/// `store.ca_file`): the backend call is held until every request has met the revoked token,
/// so both sidecars contend for the same refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sidecars_on_a_tls_redis_a_thousand_revoked_token_requests_make_one_backend_call() {
    capture_logs();
    let Some(redis) = RedisTlsServer::start(
        "two_sidecars_on_a_tls_redis_a_thousand_revoked_token_requests_make_one_backend_call",
    ) else {
        return;
    };
    let (realm, backend, api) = fakes("tlsstorm", true, Provider::GitHub).await;
    let (_, refresh, access) = seed(&realm, 3600);
    let config = tls_sidecar_config(
        &tls_store(&redis),
        &backend,
        api,
        &github_account("alice", &refresh, &access),
    );
    let s1 = start_sidecar(&config, &realm).await;
    let s2 = start_sidecar(&config, &realm).await;
    let client = http1_client();
    // Ready once each subscriber is subscribed over TLS (it connects after the listeners open).
    for s in [&s1, &s2] {
        wait_readyz(&client, s, 200).await;
    }
    // The account is in the TLS Redis under its single-node key.
    assert_ne!(redis.cli(&["HGET", "orp:acct:github:alice", "gen"]), "");

    // Every request meets the revoked token while the one refresh is held.
    let tasks = start_gated_storm(&realm, &access, |i| {
        spawn_request(
            &client,
            if i % 2 == 0 { &s1 } else { &s2 }.url(&format!("/github/storm/{i}")),
        )
    })
    .await;
    let pttl = redis.cli(&["PTTL", "orp:lock:github:alice"]);
    let pttl: i64 = pttl.parse().unwrap_or_else(|_| panic!("PTTL: {pttl}"));
    assert!(
        pttl > 0,
        "the holder's lock is in the TLS Redis: pttl {pttl}"
    );
    assert_eq!(realm.backend_calls.get(), 1);
    realm.release_backend(1);
    assert_storm_made_one_call(&realm, tasks).await;
    assert_eq!(spent(&realm), std::slice::from_ref(&refresh));
    // The rotated refresh token is what the TLS Redis holds.
    let newest = rotated(&realm).last().cloned().expect("a rotation");
    let data = redis.cli(&["HGET", "orp:acct:github:alice", "data"]);
    assert!(
        data.contains(&newest),
        "the stored record holds the rotated token"
    );
    assert!(!data.contains(&refresh), "not the spent one");

    // Both sidecars go on with the new token, without another refresh.
    let new_access = realm.seen().last().unwrap().authorization.clone().unwrap();
    for s in [&s1, &s2] {
        let a = request(&client, "GET", &s.url("/github/after"), &[], empty()).await;
        assert_eq!(a.status, 200);
        assert_eq!(
            realm.seen().last().unwrap().authorization.as_deref(),
            Some(new_access.as_str())
        );
    }
    assert_eq!(realm.backend_calls.get(), 1);
    let secrets = realm.secrets();
    s1.assert_no_secret_in_stderr(&secrets);
    s2.assert_no_secret_in_stderr(&secrets);
    assert_no_secret_logged(&secrets);
}

/// The same storm with library replicas (`RedisStore::open` with `RedisOptions::
/// ca_certificates`), then a rotation on A reaching B through pub/sub over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn library_replicas_on_a_tls_redis_refresh_once_and_share_rotations() {
    capture_logs();
    let Some(redis) =
        RedisTlsServer::start("library_replicas_on_a_tls_redis_refresh_once_and_share_rotations")
    else {
        return;
    };
    let (realm, backend, api) = fakes("tlslib", true, Provider::GitHub).await;
    let ttl = Duration::from_secs(15);
    let a = github_replica(&redis, ttl, &realm, &backend).await;
    let b = github_replica(&redis, ttl, &realm, &backend).await;
    let (_, refresh, access) = seed_alice(&realm, &[&a, &b]).await;

    library_storm(&realm, api, &access, (&a, &b), true).await;
    wait_until("both replicas on one generation", || async {
        a.generation("alice") == b.generation("alice")
    })
    .await;

    // A rotation on A reaches B through the announcement (pub/sub over TLS).
    let current = realm.seen().last().unwrap().authorization.clone().unwrap();
    realm.revoke_access(current.trim_start_matches("Bearer "));
    assert_eq!(
        a.get_status(format!("http://{api}/a"), "alice").await,
        StatusCode::OK
    );
    assert_eq!(realm.backend_calls.get(), 2);
    let newest_access = realm.seen().last().unwrap().authorization.clone().unwrap();
    let generation = a.generation("alice").unwrap();
    wait_until("B to apply A's rotation", || async {
        b.generation("alice") == Some(generation)
    })
    .await;
    let before = realm.seen().len();
    assert_eq!(
        b.get_status(format!("http://{api}/b"), "alice").await,
        StatusCode::OK
    );
    let seen = realm.seen();
    assert_eq!(seen.len(), before + 1, "B's request went out once: no 401");
    assert_eq!(
        seen.last().unwrap().authorization.as_deref(),
        Some(newest_access.as_str())
    );
    assert_eq!(realm.backend_calls.get(), 2, "B never refreshed");
    // No refresh token was spent twice; each call spent the newest one.
    let chain = rotated(&realm);
    assert_eq!(spent(&realm), [refresh, chain[0].clone()]);
    let data = redis.cli(&["HGET", "orp:acct:github:alice", "data"]);
    assert!(data.contains(chain.last().unwrap().as_str()));
    assert_no_secret_logged(&realm.secrets());
}

/// `RedisStore::open` refuses, bounded and clearly, a TLS server it cannot trust, an
/// unusable CA, a plain connection to the TLS port, and CAs for a plain URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_refuses_an_untrusted_tls_redis_and_plain_redis_on_the_tls_port() {
    capture_logs();
    let Some(redis) = RedisTlsServer::start(
        "the_library_refuses_an_untrusted_tls_redis_and_plain_redis_on_the_tls_port",
    ) else {
        return;
    };
    let ttl = Duration::from_secs(4);
    let addr = format!("127.0.0.1:{}", redis.port);
    let secret_url = format!("rediss://:hunter2-lib-secret@127.0.0.1:{}", redis.port);
    let other_ca = TestPki::new("another CA").ca_pem;
    let cases: Vec<(&str, RedisNodes, RedisOptions, &[&str])> = vec![
        (
            "system roots",
            RedisNodes::Single(secret_url.clone()),
            RedisOptions::default(),
            &["certificate"],
        ),
        (
            "another CA",
            RedisNodes::Single(secret_url.clone()),
            trusting(&other_ca),
            &["certificate"],
        ),
        (
            "plain redis:// on the TLS port",
            RedisNodes::Single(format!("redis://127.0.0.1:{}", redis.port)),
            RedisOptions::default(),
            &[],
        ),
        (
            "a CA for a plain URL",
            RedisNodes::Single(format!("redis://127.0.0.1:{}", redis.port)),
            trusting(redis.ca_pem()),
            &["rediss://"],
        ),
    ];
    for (what, nodes, options, needles) in cases {
        let started = Instant::now();
        let result = tokio::time::timeout(WAIT, RedisStore::open(nodes, ttl, options))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {WAIT:?}"));
        let took = started.elapsed();
        let err = match result {
            Ok(_) => panic!("{what}: connected"),
            Err(e) => e.to_string(),
        };
        assert!(took < Duration::from_secs(10), "{what}: took {took:?}");
        assert!(!err.contains('\n'), "{what}: one line: {err}");
        assert!(
            !err.contains("hunter2"),
            "{what}: the password shows: {err}"
        );
        if needles != ["rediss://"] {
            assert!(err.contains(&addr), "{what}: the address: {err}");
        }
        for n in needles {
            assert!(
                err.to_lowercase().contains(n),
                "{what}: {n:?} not in: {err}"
            );
        }
    }
    // The connect shorthand uses the system roots too.
    let err = RedisStore::connect(&redis.url(), ttl).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // Trusted, it connects.
    let store = RedisStore::open(
        RedisNodes::Single(redis.url()),
        ttl,
        trusting(redis.ca_pem()),
    )
    .await
    .unwrap();
    drop(store);
    assert_no_secret_logged(&["hunter2-lib-secret".to_string()]);
}

/// The sidecar refuses to start — exit code 1, one clear stderr line naming the store, no
/// hang — when the TLS server's CA is not trusted, when `store.ca_file` is missing or another
/// CA's, when a plain `redis://` URL points at the TLS port, and when `ca_file` is given with
/// a plain URL. The password in the URL never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_refuses_to_start_against_a_tls_redis_it_cannot_trust_or_speak_to() {
    let Some(redis) = RedisTlsServer::start(
        "the_sidecar_refuses_to_start_against_a_tls_redis_it_cannot_trust_or_speak_to",
    ) else {
        return;
    };
    let addr = format!("127.0.0.1:{}", redis.port);
    let dir = TempDir::new("tlsrefused");
    let missing = dir.path("no-such-ca.pem");
    let other_ca = dir.write("other-ca.pem", &TestPki::new("another CA").ca_pem);
    let secret_url = format!("rediss://:hunter2-sidecar-secret@127.0.0.1:{}", redis.port);
    let config = |store: String| {
        tls_sidecar_config(
            &store,
            "http://127.0.0.1:9",
            "127.0.0.1:9".parse().unwrap(),
            "",
        )
    };
    let never = ["hunter2", "refused-backend-bearer"];

    // No ca_file: the system's roots do not know the test CA.
    let (line, took) = refused_any_case(
        &config(store_url(&secret_url, None)),
        &["store", &addr, "certificate"],
        &never,
    );
    assert!(took < Duration::from_secs(10), "bounded: {took:?} ({line})");
    // A ca_file that does not exist.
    let (line, _) = refused_any_case(
        &config(store_url(&secret_url, Some(&missing))),
        &["store.ca_file", &missing.display().to_string()],
        &never,
    );
    eprintln!("missing ca_file: {line}");
    // Another CA's certificate.
    let (line, took) = refused_any_case(
        &config(store_url(&secret_url, Some(&other_ca))),
        &["store", &addr, "certificate"],
        &never,
    );
    assert!(took < Duration::from_secs(10), "bounded: {took:?} ({line})");
    // Plain redis:// at the TLS port: a clear failure, not a hang.
    let plain_url = format!("redis://:hunter2-plain@127.0.0.1:{}", redis.port);
    let (line, took) = refused_any_case(
        &config(store_url(&plain_url, None)),
        &["store.url", &addr],
        &never,
    );
    assert!(took < Duration::from_secs(10), "bounded: {took:?} ({line})");
    // ca_file with a plain URL: a configuration error.
    let plain_with_ca = config(store_url(
        &format!("redis://127.0.0.1:{}", redis.port),
        Some(&redis.ca_path()),
    ));
    refused_any_case(&plain_with_ca, &["store.ca_file", "rediss://"], &never);
    // check-config says the same about the last one.
    let path = dir.write("plain-with-ca.toml", &plain_with_ca);
    let out = Command::new(BIN)
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env(BACKEND_ENV, "refused-backend-bearer")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.ca_file"));

    // And with the CA, it starts.
    let (realm, backend, api) = fakes("tlsok", true, Provider::GitHub).await;
    let (_, refresh, access) = seed(&realm, 3600);
    let s = start_sidecar(
        &tls_sidecar_config(
            &tls_store(&redis),
            &backend,
            api,
            &github_account("alice", &refresh, &access),
        ),
        &realm,
    )
    .await;
    let a = request(&http1_client(), "GET", &s.url("/github/x"), &[], empty()).await;
    assert_eq!(a.status, 200);
    s.assert_no_secret_in_stderr(&realm.secrets());
}

/// A TLS Redis restarted (empty) under a running sidecar: `/readyz` 503 and refreshes 503
/// while it is down, then back over TLS without a restart of the sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_outage_is_survived_and_the_sidecar_reconnects_over_tls() {
    capture_logs();
    let Some(mut redis) =
        RedisTlsServer::start("a_tls_redis_outage_is_survived_and_the_sidecar_reconnects_over_tls")
    else {
        return;
    };
    let (realm, backend, api) = fakes("tlsoutage", true, Provider::GitHub).await;
    let (_, r1, a1) = seed(&realm, 3600);
    let (_, r2, a2) = seed(&realm, 3600);
    let s = start_sidecar(
        &tls_sidecar_config(
            &tls_store(&redis),
            &backend,
            api,
            &(github_account("alice", &r1, &a1) + &github_account("bob", &r2, &a2)),
        ),
        &realm,
    )
    .await;
    let client = http1_client();
    wait_readyz(&client, &s, 200).await;

    redis.stop();
    wait_readyz(&client, &s, 503).await;
    let ok = request(&client, "GET", &s.url("/github/alice"), &[], empty()).await;
    assert_eq!(ok.status, 200, "a valid cached token keeps working");
    realm.revoke_access(&a2);
    let started = Instant::now();
    let down = get_as(&client, &s, "bob", "/github/bob").await;
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(down.code(), "refresh_unavailable");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        realm.backend_calls.get(),
        0,
        "never a refresh without the lock"
    );

    redis.restart();
    wait_readyz(&client, &s, 200).await;
    let back = get_as(&client, &s, "bob", "/github/bob").await;
    assert_eq!(back.status, 200, "{}", back.text());
    assert_eq!(realm.backend_calls.get(), 1);
    assert_eq!(spent(&realm), [r2]);
    let newest = rotated(&realm).last().cloned().unwrap();
    let data = redis.cli(&["HGET", "orp:acct:github:bob", "data"]);
    assert!(data.contains(&newest), "the refresh was written over TLS");
    s.assert_no_secret_in_stderr(&realm.secrets());
    assert_no_secret_logged(&realm.secrets());
}

/// A `store.ca_file` that holds no PEM certificate is a mistake in the file, and the error
/// says so (naming `store.ca_file`), rather than blaming the server's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_without_a_certificate_is_refused_naming_store_ca_file() {
    let Some(redis) =
        RedisTlsServer::start("a_ca_file_without_a_certificate_is_refused_naming_store_ca_file")
    else {
        return;
    };
    let dir = TempDir::new("tlsnocert");
    let not_pem = dir.write("not-a-ca.pem", "not a certificate\n");
    // A key, not a certificate.
    let key_only = dir.write("key.pem", &TestPki::new("key only").key_pem);
    for path in [not_pem, key_only] {
        let (line, took) = refused_any_case(
            &tls_sidecar_config(
                &store_url(&redis.url(), Some(&path)),
                "http://127.0.0.1:9",
                "127.0.0.1:9".parse().unwrap(),
                "",
            ),
            &["store.ca_file", &path.display().to_string()],
            &["refused-backend-bearer"],
        );
        assert!(took < Duration::from_secs(10), "bounded: {took:?} ({line})");
    }
}
