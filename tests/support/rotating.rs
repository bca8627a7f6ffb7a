//! The fakes the durable-store tests share: a rotating realm (GitHub refreshes rotate the
//! refresh token), its refresh backend and a fake GitHub API, with the few questions those
//! tests ask of them, their config, requests to the proxy, and the steps of the `kill -9`
//! rounds. Test files add their own methods (`impl RotatingWorld` in the file).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::Request;
use http_body_util::BodyExt;
use oauth_refresh_proxy::Provider;

use super::config::{backend_refresh, octo_route};
use super::http_client::{http1_client, request};
use super::process::Proxy;
use super::shared_store::{rotated, sent_refresh_token};
use super::{empty, full, now_secs, start_fakes, Realm, WAIT};

/// A rotating realm, its backend and a fake GitHub API.
pub struct RotatingWorld {
    pub realm: Arc<Realm>,
    pub backend: String,
    pub api: SocketAddr,
}

impl RotatingWorld {
    pub async fn new(name: &str) -> RotatingWorld {
        let (realm, backend, api) = start_fakes(name, true, Provider::GitHub).await;
        RotatingWorld {
            realm,
            backend,
            api,
        }
    }

    /// A refresh token the backend accepts and an access token the API accepts.
    pub fn credentials(&self) -> (String, String) {
        let refresh = self.realm.new_refresh_token();
        let access = self.realm.new_access_token(&refresh);
        (refresh, access)
    }

    /// The `Authorization` of the last request the API answered with 200.
    pub fn last_ok_authorization(&self) -> String {
        super::shared_store::last_ok_authorization(&self.realm)
    }

    /// A config: the proxy on a loopback port (and an admin listener when `admin`), the backend
    /// with its bearer in `$token_env`, `[store]` with `store_table` as its body, and the API
    /// behind `/github` with the account `octo` seeded (valid for an hour).
    pub fn store_config(
        &self,
        token_env: &str,
        admin: bool,
        store_table: &str,
        refresh: &str,
        access: &str,
    ) -> String {
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"{admin}\"\n\n{refresh_table}\n[store]\n{store_table}\n{route}",
            admin = if admin { "127.0.0.1:0" } else { "" },
            refresh_table = backend_refresh(&self.backend, token_env),
            route = octo_route(
                &format!("http://{}", self.api),
                refresh,
                access,
                now_secs() + 3600
            ),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Requests to the proxy.
// ---------------------------------------------------------------------------------------------

/// A JSON request: (status, body).
pub async fn http(method: &str, url: &str, body: &str) -> (u16, String) {
    let headers = [("content-type", "application/json")];
    let a = request(
        &http1_client(),
        method,
        url,
        &headers,
        full(body.to_string()),
    )
    .await;
    (a.status.as_u16(), a.text())
}

/// `GET path` through the proxy: the status.
pub async fn proxied_get(p: &Proxy, path: &str) -> u16 {
    http("GET", &p.url(path), "").await.0
}

/// A request to the admin listener: (status, body).
pub async fn admin(p: &Proxy, method: &str, path: &str, body: &str) -> (u16, String) {
    http(method, &p.admin_url(path), body).await
}

// ---------------------------------------------------------------------------------------------
// `kill -9` rounds.
// ---------------------------------------------------------------------------------------------

/// The generator of a test's kill points, its seed printed (to replay a failing run).
pub fn kill_points() -> fastrand::Rng {
    let seed = fastrand::u64(..);
    eprintln!("kill points seeded with {seed}");
    fastrand::Rng::with_seed(seed)
}

/// Forces refreshes of `octo` through the admin API until the proxy goes away.
pub fn hammer(admin: SocketAddr) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = http1_client();
        loop {
            let req = Request::builder()
                .method("POST")
                .uri(format!("http://{admin}/tokens/github/octo/refresh"))
                .body(empty())
                .unwrap();
            match tokio::time::timeout(WAIT, client.request(req)).await {
                Ok(Ok(resp)) => {
                    let _ = resp.into_body().collect().await;
                }
                _ => break,
            }
        }
    })
}

/// Continuous refreshes (four [`hammer`]s), until the backend has seen `k` calls (drawn from
/// `rng`, 1 to 5) more than `calls_before`: the backend may issue (and rotate) before the proxy
/// can write the answer. The hammers go on until the proxy goes away.
pub async fn refresh_storm(p: &Proxy, realm: &Realm, rng: &mut fastrand::Rng, calls_before: u64) {
    let admin = p.admin_addr();
    let _hs: Vec<_> = (0..4).map(|_| hammer(admin)).collect();
    let k = rng.u64(1..6);
    realm.backend_calls.wait_for(calls_before + k).await;
}

/// `n` forced refreshes of `octo` through the admin API, each answered 200.
pub async fn refreshes(p: &Proxy, n: usize, round: usize) {
    for _ in 0..n {
        let (status, _) = admin(p, "POST", "/tokens/github/octo/refresh", "").await;
        assert_eq!(status, 200, "round {round}");
    }
}

/// After a kill: waits (bounded) until every call the dead process made has been recorded by
/// the backend (its body came with its headers), so the records are final; returns the refresh
/// token the last call spent.
pub async fn settled_last_spent(realm: &Realm, round: usize) -> Option<String> {
    let deadline = Instant::now() + WAIT;
    while realm.backend_requests().len() as u64 != realm.backend_calls.get() {
        assert!(Instant::now() < deadline, "round {round}: backend records");
        tokio::task::yield_now().await;
    }
    realm
        .backend_requests()
        .last()
        .map(|(_, _, b)| sent_refresh_token(b))
}

/// After a restart (`p`): the account refreshes with the newest refresh token the backend
/// issued (the first was `r0`) — or, only when the process was killed at `mid_refresh_point`
/// and died between the backend's rotation and the write of its answer, with the token that
/// rotation spent (`last_spent`); then the operator re-authorises the account and the rounds go
/// on from there.
pub async fn check_restart(
    p: &Proxy,
    realm: &Realm,
    r0: &str,
    round: usize,
    point: u8,
    mid_refresh_point: u8,
    last_spent: Option<String>,
) {
    let before = realm.backend_requests().len();
    let (status, body) = admin(p, "POST", "/tokens/github/octo/refresh", "").await;
    let requests = realm.backend_requests();
    assert_eq!(
        requests.len(),
        before + 1,
        "round {round}: one backend call"
    );
    let spent = sent_refresh_token(&requests[before].2);
    if status == 200 {
        // The newest issued token before this refresh (the one it rotated away).
        let chain = rotated(realm);
        let newest = if chain.len() >= 2 {
            chain[chain.len() - 2].clone()
        } else {
            r0.to_string()
        };
        assert_eq!(
            spent, newest,
            "round {round} (point {point}): an older token"
        );
    } else {
        assert_eq!(point, mid_refresh_point, "round {round}: {status} {body}");
        assert_eq!(status, 401, "round {round}: {body}");
        assert_eq!(Some(spent.clone()), last_spent, "round {round}");
        let fresh = realm.new_refresh_token();
        let put = format!(r#"{{"refresh_token": "{fresh}"}}"#);
        let (status, _) = admin(p, "PUT", "/tokens/github/octo", &put).await;
        assert_eq!(status, 200, "round {round}");
        let (status, _) = admin(p, "POST", "/tokens/github/octo/refresh", "").await;
        assert_eq!(status, 200, "round {round}");
    }
}
