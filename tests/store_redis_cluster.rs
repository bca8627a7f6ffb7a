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

use std::time::{Duration, Instant};

use http::StatusCode;
use oauth_refresh_proxy::{ErrorKind, Provider};
use support::http_client::{http1_client, request};
use support::redis_server::*;
use support::shared_store::*;
use support::*;

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
// Replicas and sidecars
// ---------------------------------------------------------------------------------------------

/// A sidecar config on `cluster_urls`, with `timeout` in `[refresh]` and `lock_ttl` in
/// `[store]`; one GitHub route to `api` (default account `alice`); `accounts` appended.
fn cluster_sidecar_config(
    urls: &[String],
    backend: &str,
    api: std::net::SocketAddr,
    timeout: &str,
    lock_ttl: &str,
    accounts: &str,
) -> String {
    let refresh = format!("timeout = \"{timeout}\"");
    let store = format!("{}\nlock_ttl = \"{lock_ttl}\"", cluster_urls(urls));
    sidecar_config("github", backend, api, &refresh, &store, accounts)
}

/// [`refused`] with neither the URLs' password nor the backend bearer in stderr.
fn refused_in_one_line(config: &str, needles: &[&str]) -> (String, Duration) {
    refused(config, needles, &["hunter2", "refused-backend-bearer"])
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
    let (realm, backend, api) = fakes("clstorm", true, Provider::GitHub).await;
    let (_, refresh, access) = seed(&realm, 3600);
    let config = cluster_sidecar_config(
        &cluster.urls(),
        &backend,
        api,
        "10s",
        "15s",
        &github_account("alice", &refresh, &access),
    );
    let s1 = start_sidecar(&config, &realm).await;
    let s2 = start_sidecar(&config, &realm).await;
    let client = http1_client();
    for s in [&s1, &s2] {
        // Ready once its subscriber is subscribed (it connects after the listeners open).
        wait_readyz(&client, s, 200).await;
    }
    let owner = cluster.owner(&acct_key("alice"));
    assert_eq!(cluster.owner(&lock_key("alice")), owner, "one slot");
    let gen0 = assert_stored_on(&cluster, owner, "alice", &refresh);

    let tasks = start_gated_storm(&realm, &access, |i| {
        spawn_request(
            &client,
            if i % 2 == 0 { &s1 } else { &s2 }.url(&format!("/github/storm/{i}")),
        )
    })
    .await;
    // The holder's lock: hash-tagged, on the account's master.
    let pttl = cluster.cli(owner, &["PTTL", &lock_key("alice")]);
    let pttl: i64 = pttl.parse().unwrap_or_else(|_| panic!("PTTL: {pttl}"));
    assert!(
        pttl > 0 && pttl <= 15_000,
        "the lock on master {owner}: pttl {pttl}"
    );
    assert_eq!(realm.backend_calls.get(), 1);
    realm.release_backend(1);
    assert_storm_made_one_call(&realm, tasks).await;
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
    let (realm, backend, api) = fakes("cllib", true, Provider::GitHub).await;
    let ttl = Duration::from_secs(15);
    let a = github_replica(&cluster, ttl, &realm, &backend).await;
    let b = github_replica(&cluster, ttl, &realm, &backend).await;
    let (_, refresh, access) = seed_alice(&realm, &[&a, &b]).await;

    library_storm(&realm, api, &access, (&a, &b), true).await;
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
    let (realm, backend, api) = fakes("clpubsub", true, Provider::GitHub).await;
    let ttl = Duration::from_secs(15);
    let a = github_replica(&cluster, ttl, &realm, &backend).await;
    let b = github_replica(&cluster, ttl, &realm, &backend).await;
    let accounts = accounts_on_every_master(&cluster, "user", 2);
    let mut access = Vec::new();
    for (id, _) in &accounts {
        let (seed, _, acc) = seed(&realm, 3600);
        a.restore(id, &seed).await;
        b.restore(id, &seed).await;
        access.push(acc);
    }
    wait_ready("both replicas ready", &[&a, &b]).await;

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
    let (realm, backend, api) = fakes("cldown", true, Provider::GitHub).await;
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
        let (_, r, a) = seed(&realm, 3600);
        toml += &github_account(id, &r, &a);
        creds.insert(id.clone(), (r, a));
    }
    let config = cluster_sidecar_config(&cluster.urls(), &backend, api, "2s", "4s", &toml);
    let s1 = start_sidecar(&config, &realm).await;
    let s2 = start_sidecar(&config, &realm).await;
    let client = http1_client();
    for s in [&s1, &s2] {
        wait_readyz(&client, s, 200).await;
    }

    // A first rotation of the victim through s1.
    let (r0, a0) = creds[&victim].clone();
    realm.revoke_access(&a0);
    assert_eq!(
        get_as(&client, &s1, &victim, "/github/one").await.status,
        200
    );
    assert_eq!(realm.backend_calls.get(), 1);
    let a1 = last_ok_access(&realm);
    let r1 = rotated(&realm)[0].clone();
    assert_stored_on(&cluster, victim_master, &victim, &r1);

    // The master goes down.
    cluster.stop(victim_master);
    // A valid cached token of an account on that master needs no Redis.
    let ok = get_as(&client, &s1, &steady, "/github/steady").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        realm.seen().last().unwrap().authorization,
        bearer(&creds[&steady].1)
    );
    // A refresh of the victim needs its master: refused fast, no backend call.
    realm.revoke_access(&a1);
    for s in [&s2, &s1] {
        let started = Instant::now();
        let down = get_as(&client, s, &victim, "/github/down").await;
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
    let back = get_as(&client, &s2, &victim, "/github/back").await;
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
    let follow = get_as(&client, &s1, &victim, "/github/follow").await;
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
    let (realm, backend, api) = fakes("clpartial", true, Provider::GitHub).await;
    let a = github_replica(&cluster, Duration::from_secs(4), &realm, &backend).await;
    let accounts = accounts_on_every_master(&cluster, "p", 1);
    let mut access = Vec::new();
    for (id, _) in &accounts {
        let (seed, _, acc) = seed(&realm, 3600);
        a.restore(id, &seed).await;
        access.push(acc);
    }
    wait_ready("ready", &[&a]).await;

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
    wait_ready("ready again", &[&a]).await;
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
    refused_in_one_line(
        &store_only(
            "url = \"redis://127.0.0.1:7000\"\ncluster_urls = [\"redis://127.0.0.1:7001\"]",
        ),
        &["store.url", "store.cluster_urls"],
    );
    refused_in_one_line(
        &store_only(
            "cluster_urls = [\"redis://127.0.0.1:7001\"]\nca_file = \"/nonexistent/ca.pem\"",
        ),
        &["store.ca_file", "rediss://"],
    );
    refused_in_one_line(&store_only("cluster_urls = []"), &["store.cluster_urls"]);
    // A Redis without cluster support.
    let (line, took) = refused_in_one_line(
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
    let (line, took) = refused_in_one_line(
        &store_only(&format!(
            "cluster_urls = [\"redis://:hunter2-cluster@127.0.0.1:{p1}\", \
             \"redis://:hunter2-cluster@127.0.0.1:{p2}\"]"
        )),
        &["store.cluster_urls", "cannot reach"],
    );
    assert!(took < Duration::from_secs(10), "bounded: {took:?} ({line})");
}
