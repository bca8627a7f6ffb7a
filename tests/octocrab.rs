//! Black-box tests of a real `octocrab::Octocrab` built by `oauth_refresh_proxy::octocrab`,
//! against the crate's fake GitHub API and fake refresh backend on loopback (real hyper
//! servers). The fake's address is mapped to GitHub on the layer (`RefreshLayer::host`), as a
//! GitHub Enterprise Server host would be; nothing marks the requests. Calls are counted at the
//! fakes, and the trace-level logs are searched for every token.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use oauth_refresh_proxy::{
    BackendRefresher, ErrorKind, Provider, RefreshLayer, RetryPolicy, TokenSeed, Tokens,
};
use octocrab::{Octocrab, Page};
use serde::{Deserialize, Serialize};
use support::*;

/// octocrab's own `User-Agent` (octocrab 0.54: `prepare_config` sets `User-Agent: octocrab`).
const OCTOCRAB_USER_AGENT: &str = "octocrab";

struct Setup {
    realm: Arc<Realm>,
    api: SocketAddr,
    tokens: Tokens,
    github: Octocrab,
}

fn policy() -> RetryPolicy {
    retry_policy(2, Duration::from_secs(5))
}

/// A rotating realm (GitHub-style), its fakes, `Tokens` refreshing through the backend, and an
/// `Octocrab` whose base URI is the fake, mapped to GitHub on the layer.
async fn setup(name: &str) -> Setup {
    let (realm, backend, api) = start_fakes(name, true, Provider::GitHub).await;
    let refresher = backend_refresher(&backend, &realm).timeout(Duration::from_secs(5));
    let tokens = Tokens::builder(refresher).retry(policy()).build();
    let layer = RefreshLayer::new(tokens.clone())
        .default_account("octocat")
        .host(api.to_string().parse().unwrap(), Provider::GitHub);
    let github = oauth_refresh_proxy::octocrab::builder(layer)
        .base_uri(format!("http://{api}").parse().unwrap())
        .build()
        .unwrap();
    Setup {
        realm,
        api,
        tokens,
        github,
    }
}

impl Setup {
    /// Seeds "octocat" with a refresh token and an access token valid for an hour; returns the
    /// access token.
    fn seed(&self) -> String {
        seed_account(&self.tokens, &self.realm, Provider::GitHub, "octocat", 3600).1
    }

    /// The access token the cache holds now (the one the backend issued last).
    fn issued_access_token(&self) -> String {
        let issued = self
            .realm
            .secrets()
            .into_iter()
            .rev()
            .find(|s| s.starts_with("access-"))
            .unwrap();
        assert!(self.realm.is_valid_access(&issued));
        issued
    }

    /// Every request the fake saw carried octocrab's `User-Agent`, once.
    fn assert_octocrab_user_agent(&self) {
        let seen = self.realm.seen();
        assert!(!seen.is_empty());
        for s in &seen {
            let agents: Vec<_> = s.headers.get_all("user-agent").iter().collect();
            assert_eq!(
                agents,
                [OCTOCRAB_USER_AGENT],
                "{} {}",
                s.method,
                s.path_and_query
            );
        }
    }

    fn finish(&self) {
        self.assert_octocrab_user_agent();
        assert_no_secret_logged(&self.realm.secrets());
    }
}

/// `fut`, bounded by [`WAIT`].
async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("no answer within {WAIT:?}"))
}

#[derive(Debug, Deserialize, PartialEq)]
struct Repo {
    id: u64,
    name: String,
}

/// The fake's answer on most paths: the SHA-256 and length of the body it received.
#[derive(Debug, Deserialize, PartialEq)]
struct Digest {
    sha256: String,
    len: usize,
}

#[tokio::test]
async fn get_carries_the_cached_token_and_octocrabs_user_agent() {
    let s = setup("oc-get").await;
    let access = s.seed();

    let user: Digest = bounded(s.github.get("/user", None::<&()>)).await.unwrap();
    assert_eq!(
        user,
        Digest {
            sha256: sha256_hex(b""),
            len: 0
        }
    );

    let seen = s.realm.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path_and_query.as_str()),
        ("GET", "/user")
    );
    assert_eq!(seen[0].status, 200);
    let auth: Vec<_> = seen[0].headers.get_all("authorization").iter().collect();
    assert_eq!(auth, [format!("Bearer {access}").as_str()]);
    assert_eq!(s.realm.api_calls.get(), 1);
    assert_eq!(s.realm.backend_calls.get(), 0);
    s.finish();
}

#[tokio::test]
async fn all_pages_over_three_pages_with_the_token_revoked_midway_refreshes_once() {
    let s = setup("oc-pages").await;
    let access = s.seed();

    let first: Page<Repo> = bounded(s.github.get("/user/repos", None::<&()>))
        .await
        .unwrap();
    assert_eq!(first.items.len(), REPOS_PER_PAGE as usize);
    let next = first.next.clone().expect("a next page");
    assert_eq!(
        next.to_string(),
        format!("http://{}/user/repos?page=2", s.api)
    );

    // GitHub revokes the token between page 1 and page 2.
    s.realm.revoke_access(&access);
    let repos = bounded(s.github.all_pages(first)).await.unwrap();

    let ids: Vec<u64> = repos.iter().map(|r| r.id).collect();
    assert_eq!(ids, (1..=REPO_PAGES * REPOS_PER_PAGE).collect::<Vec<_>>());
    assert_eq!(repos[5].name, "repo-6");
    assert_eq!(s.realm.backend_calls.get(), 1, "exactly one refresh");
    let fresh = s.issued_access_token();
    let seen: Vec<_> = s
        .realm
        .seen()
        .into_iter()
        .map(|x| (x.path_and_query, x.status, x.authorization.unwrap()))
        .collect();
    let page = |n: &str| format!("/user/repos{n}");
    assert_eq!(
        seen,
        [
            (page(""), 200, format!("Bearer {access}")),
            (page("?page=2"), 401, format!("Bearer {access}")),
            (page("?page=2"), 200, format!("Bearer {fresh}")),
            (page("?page=3"), 200, format!("Bearer {fresh}")),
        ]
    );
    let stats = s.tokens.stats(Provider::GitHub);
    assert_eq!((stats.refresh_success, stats.replayed), (1, 1));
    s.finish();
}

#[derive(Serialize)]
struct Issue {
    title: String,
    body: String,
    labels: Vec<&'static str>,
}

#[tokio::test]
async fn a_post_after_a_401_is_replayed_byte_identical() {
    let s = setup("oc-post").await;
    let access = s.seed();
    s.realm.revoke_access(&access);

    let issue = Issue {
        title: "Δ: replay me".into(),
        body: "line\n".repeat(2000) + "🦀 end",
        labels: vec!["bug", "good first issue"],
    };
    let sent = serde_json::to_string(&issue).unwrap();
    let answer: Digest = bounded(s.github.post("/repos/octocat/hello/issues", Some(&issue)))
        .await
        .unwrap();
    assert_eq!(
        answer,
        Digest {
            sha256: sha256_hex(sent.as_bytes()),
            len: sent.len()
        }
    );

    let seen = s.realm.seen();
    assert_eq!(seen.len(), 2);
    let fresh = s.issued_access_token();
    for (x, status, token) in [(&seen[0], 401, &access), (&seen[1], 200, &fresh)] {
        assert_eq!(
            (x.method.as_str(), x.path.as_str()),
            ("POST", "/repos/octocat/hello/issues")
        );
        assert_eq!(x.status, status);
        assert_eq!(x.authorization, bearer(token));
        assert_eq!(
            (x.body_sha256.as_str(), x.body_len),
            (answer.sha256.as_str(), sent.len())
        );
        assert_eq!(x.headers["content-type"], "application/json");
    }
    assert_eq!(s.realm.backend_calls.get(), 1);
    assert_eq!(s.tokens.stats(Provider::GitHub).replayed, 1);
    s.finish();
}

#[tokio::test]
async fn redirects_are_followed_through_the_layer() {
    let s = setup("oc-redirect").await;
    let access = s.seed();

    let after: Digest = bounded(s.github.get("/redirect", None::<&()>))
        .await
        .unwrap();
    assert_eq!(after.len, 0);
    let seen: Vec<_> = s
        .realm
        .seen()
        .into_iter()
        .map(|x| (x.path_and_query, x.status, x.authorization))
        .collect();
    assert_eq!(
        seen,
        [
            ("/redirect".to_string(), 200, bearer(&access)),
            (
                "/after-redirect?from=redirect".to_string(),
                200,
                bearer(&access)
            ),
        ]
    );
    s.finish();
}

#[tokio::test]
async fn a_failed_refresh_fails_the_call_once_without_octocrab_retrying_it() {
    let s = setup("oc-unavailable").await;
    // No access token yet: the first request must refresh, and the backend is down.
    s.tokens.insert(
        Provider::GitHub,
        "octocat",
        TokenSeed::new(s.realm.new_refresh_token()),
    );
    s.realm
        .script((0..policy().max_attempts).map(|_| Reply::Status(503, "{}".into())));

    let err = bounded(s.github.get::<Digest, _, ()>("/user", None))
        .await
        .unwrap_err();
    let octocrab::Error::Service { source, .. } = &err else {
        panic!("expected octocrab's Service error, got {err:?}");
    };
    let ours = source
        .downcast_ref::<oauth_refresh_proxy::Error>()
        .unwrap_or_else(|| panic!("source is not the layer's error: {source:?}"));
    assert_eq!(ours.kind(), ErrorKind::RefreshUnavailable);

    // The layer's refresh retried with backoff; octocrab's Simple(3) retry added nothing (each
    // of its retries would have been refused by the cooldown, counted in `cooldown`).
    assert_eq!(
        s.realm.backend_calls.get(),
        u64::from(policy().max_attempts)
    );
    let stats = s.tokens.stats(Provider::GitHub);
    assert_eq!((stats.refresh_transient_error, stats.cooldown), (1, 0));
    assert_eq!(s.realm.api_calls.get(), 0);
    assert_no_secret_logged(&s.realm.secrets());
}

#[tokio::test]
async fn build_refuses_a_base_uri_whose_host_gets_no_github_token() {
    let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    let layer = RefreshLayer::new(tokens)
        .default_account("octocat")
        .host("google.internal.example".parse().unwrap(), Provider::Google);
    let err = |base: &'static str| {
        oauth_refresh_proxy::octocrab::builder(layer.clone())
            .base_uri(http::Uri::from_static(base))
            .build()
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("https://google.internal.example/api/v3"),
        "octocrab client: the layer sends google tokens, not GitHub's, to google.internal.example \
         (the base URI's host): map it with \
         RefreshLayer::host(\"google.internal.example\".parse()?, Provider::GitHub)"
    );
    assert_eq!(
        err("https://ghe.example.com:8443/api/v3"),
        "octocrab client: the layer sends no GitHub token to ghe.example.com:8443 (the base \
         URI's host): map it with RefreshLayer::host(\"ghe.example.com:8443\".parse()?, \
         Provider::GitHub)"
    );
    assert_eq!(
        err("/api/v3"),
        "octocrab client: the base URI \"/api/v3\" needs a scheme and a host, as in \
         https://api.github.com"
    );
    // The default base URI is api.github.com, a GitHub host by default.
    assert!(oauth_refresh_proxy::octocrab::builder(layer)
        .build()
        .is_ok());
}
