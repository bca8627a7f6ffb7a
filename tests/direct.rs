//! Direct mode and the served refresh API (SPEC 3, 4.9), black-box.
//!
//! Fake Google and GitHub token endpoints, built from `tests/fixtures/google_token_endpoint.json`
//! and `github_token_endpoint.json`, run as real hyper servers on 127.0.0.1 and count every call.
//! The refreshers are driven directly (and through [`Tokens`]); the served API, direct-mode
//! proxying and the backend → direct chain run the real `oauth-refresh-proxy` binary, whose
//! stderr at `RUST_LOG=trace` is checked for every secret.

mod support;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use oauth_refresh_proxy::refresh::{Refreshed, Refresher};
use oauth_refresh_proxy::{
    DirectRefresher, GitHubRefresher, GoogleRefresher, Provider, RefreshError, RetryPolicy, Secret,
    TokenSeed, Tokens,
};
use serde_json::{json, Value};
use support::process::{run_cli, CliOutput, Proxy, TempDir};
use support::*;
use tokio::sync::Semaphore;

// ---------------------------------------------------------------------------------------------
// Fake token endpoints, from the fixtures.
// ---------------------------------------------------------------------------------------------

/// How the fake token endpoint answers one call.
#[derive(Clone, Debug)]
enum TokenReply {
    /// Check the refresh token; issue (success fixture) or refuse (rejected fixture).
    Issue,
    /// Answer with this status and body.
    Raw(u16, String),
    /// Wait for `release`, then issue.
    Gated,
    /// Never answer.
    Hang,
}

/// What the endpoint received in one call.
#[derive(Clone, Debug)]
struct Received {
    method: String,
    content_type: Option<String>,
    accept: Option<String>,
    form: HashMap<String, String>,
}

#[derive(Default)]
struct EndpointState {
    /// valid refresh token → the access token last issued for it
    valid: HashMap<String, Option<String>>,
    replies: VecDeque<TokenReply>,
    received: Vec<Received>,
    secrets: Vec<String>,
    serial: u64,
    last_access: Option<String>,
}

/// A fake of Google's or GitHub's token endpoint. Access tokens it issues are made valid in
/// `realm` (so the realm's fake API accepts them); GitHub's rotate the refresh token and revoke
/// the previous access token at once, like the real one.
struct TokenEndpoint {
    provider: Provider,
    name: String,
    realm: Arc<Realm>,
    client_id: String,
    client_secret: String,
    state: Mutex<EndpointState>,
    calls: Count,
    gate: Semaphore,
    url: Mutex<String>,
}

impl TokenEndpoint {
    async fn start(provider: Provider, name: &str, realm: Arc<Realm>) -> Arc<TokenEndpoint> {
        let ep = Arc::new(TokenEndpoint {
            provider,
            name: name.to_string(),
            realm,
            client_id: format!("client-id-{provider}-{name}"),
            client_secret: format!("client-secret-{provider}-{name}"),
            state: Mutex::default(),
            calls: Count::default(),
            gate: Semaphore::new(0),
            url: Mutex::default(),
        });
        let handler_ep = ep.clone();
        let addr = serve(move |req: Request<Incoming>| {
            let ep = handler_ep.clone();
            async move { ep.answer(req).await }
        })
        .await;
        let path = match provider {
            Provider::Google => "/token",
            Provider::GitHub => "/login/oauth/access_token",
        };
        *ep.url.lock().unwrap() = format!("http://{addr}{path}");
        ep
    }

    fn url(&self) -> String {
        self.url.lock().unwrap().clone()
    }

    fn fixture(&self) -> Value {
        fixture(match self.provider {
            Provider::Google => "google_token_endpoint.json",
            Provider::GitHub => "github_token_endpoint.json",
        })
    }

    fn st(&self) -> std::sync::MutexGuard<'_, EndpointState> {
        self.state.lock().unwrap()
    }

    fn next_name(&self, kind: &str) -> String {
        let mut st = self.st();
        st.serial += 1;
        let t = match (self.provider, kind) {
            (Provider::Google, "refresh") => format!("1//04dX-{}-{}", self.name, st.serial),
            (Provider::GitHub, "refresh") => format!("ghr_{}-{}", self.name, st.serial),
            _ => unreachable!(),
        };
        st.secrets.push(t.clone());
        t
    }

    /// A refresh token the endpoint accepts.
    fn new_refresh_token(&self) -> String {
        let t = self.next_name("refresh");
        self.st().valid.insert(t.clone(), None);
        t
    }

    /// An access token of `refresh`'s lineage that the API no longer accepts.
    fn stale_access_token(&self, refresh: &str) -> String {
        let access = self.realm.new_access_token(refresh);
        self.realm.revoke_access(&access);
        access
    }

    /// Makes the endpoint refuse `refresh` from now on.
    fn revoke(&self, refresh: &str) {
        self.st().valid.remove(refresh);
    }

    /// Revokes the access token issued last (as if the provider had revoked it).
    fn revoke_last_access(&self) -> String {
        let access = self.st().last_access.clone().expect("issued one");
        self.realm.revoke_access(&access);
        access
    }

    fn script(&self, replies: impl IntoIterator<Item = TokenReply>) {
        self.st().replies.extend(replies);
    }

    fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    fn received(&self) -> Vec<Received> {
        self.st().received.clone()
    }

    /// The refresh tokens received, in order.
    fn refresh_tokens_received(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|r| r.form.get("refresh_token").cloned().unwrap_or_default())
            .collect()
    }

    /// Every secret: client secret, refresh tokens, and the realm's tokens.
    fn secrets(&self) -> Vec<String> {
        let mut v = self.st().secrets.clone();
        v.push(self.client_secret.clone());
        v.extend(self.realm.secrets());
        v
    }

    /// `policy(max_attempts)` run on [`TokenEndpoint::refresher`] for `provider` with `refresh`.
    async fn attempt(
        &self,
        max_attempts: u32,
        provider: Provider,
        refresh: &str,
    ) -> Result<Refreshed, RefreshError> {
        policy(max_attempts)
            .run(&*self.refresher(), provider, &Secret::new(refresh))
            .await
    }

    fn refresher(&self) -> Arc<dyn Refresher> {
        let secret = Secret::new(self.client_secret.clone());
        let timeout = Duration::from_secs(5);
        match self.provider {
            Provider::Google => Arc::new(
                GoogleRefresher::new(self.client_id.clone(), secret)
                    .token_url(&self.url())
                    .unwrap()
                    .timeout(timeout),
            ),
            Provider::GitHub => Arc::new(
                GitHubRefresher::new(self.client_id.clone(), secret)
                    .token_url(&self.url())
                    .unwrap()
                    .timeout(timeout),
            ),
        }
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.calls.bump();
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let content_type = header("content-type");
        let accept = header("accept");
        let method = req.method().to_string();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let form: HashMap<String, String> = form_urlencoded(&body);
        self.st().received.push(Received {
            method,
            content_type,
            accept,
            form: form.clone(),
        });
        let fx = self.fixture();
        let reply = self.st().replies.pop_front().unwrap_or(TokenReply::Issue);
        match reply {
            TokenReply::Raw(status, body) => return respond(status, body),
            TokenReply::Hang => std::future::pending::<()>().await,
            TokenReply::Gated => self.gate.acquire().await.unwrap().forget(),
            TokenReply::Issue => {}
        }
        let creds_ok = form.get("client_id") == Some(&self.client_id)
            && form.get("client_secret") == Some(&self.client_secret);
        if !creds_ok {
            return match self.provider {
                Provider::Google => respond(
                    401,
                    r#"{"error":"invalid_client","error_description":"The OAuth client was not found."}"#,
                ),
                Provider::GitHub => respond(
                    200,
                    r#"{"error":"incorrect_client_credentials","error_description":"The client_id and/or client_secret passed are incorrect."}"#,
                ),
            };
        }
        if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
            return respond(400, r#"{"error":"unsupported_grant_type"}"#);
        }
        let refresh = form.get("refresh_token").cloned().unwrap_or_default();
        let previous = self.st().valid.get(&refresh).cloned();
        let Some(previous) = previous else {
            let rejected = &fx["rejected"];
            return respond(
                rejected["status"].as_u64().unwrap() as u16,
                rejected["body"].to_string(),
            );
        };
        let mut body = fx["success"]["body"].clone();
        match self.provider {
            Provider::Google => {
                let access = self.realm.new_access_token(&refresh);
                let mut st = self.st();
                st.valid.insert(refresh, Some(access.clone()));
                st.last_access = Some(access.clone());
                body["access_token"] = access.into();
            }
            Provider::GitHub => {
                // Every refresh rotates: the old refresh token and the old access token die.
                let new_refresh = self.next_name("refresh");
                let access = self.realm.new_access_token(&new_refresh);
                if let Some(old) = previous {
                    self.realm.revoke_access(&old);
                }
                let mut st = self.st();
                st.valid.remove(&refresh);
                st.valid.insert(new_refresh.clone(), Some(access.clone()));
                st.last_access = Some(access.clone());
                body["access_token"] = access.into();
                body["refresh_token"] = new_refresh.into();
            }
        }
        respond(
            fx["success"]["status"].as_u64().unwrap() as u16,
            body.to_string(),
        )
    }
}

fn respond(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(body.into()))
        .unwrap()
}

/// Decodes an `application/x-www-form-urlencoded` body.
fn form_urlencoded(body: &[u8]) -> HashMap<String, String> {
    let decode = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    out.push(
                        u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16)
                            .unwrap(),
                    );
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    };
    std::str::from_utf8(body)
        .unwrap()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn policy(max_attempts: u32) -> RetryPolicy {
    retry_policy(max_attempts, Duration::from_secs(5))
}

fn secs_from_now(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 - now_secs() as i64
}

async fn endpoint(provider: Provider, name: &str) -> Arc<TokenEndpoint> {
    capture_logs();
    TokenEndpoint::start(provider, name, Realm::new(name)).await
}

// ---------------------------------------------------------------------------------------------
// The refreshers, driven directly.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn google_refresh_posts_the_form_and_reads_the_fixture() {
    let ep = endpoint(Provider::Google, "g-ok").await;
    let refresh = ep.new_refresh_token();
    let r = ep.refresher();
    let out = policy(3)
        .run(&*r, Provider::Google, &Secret::new(refresh.clone()))
        .await
        .unwrap();
    assert_eq!(ep.calls.get(), 1);
    let got = &ep.received()[0];
    assert_eq!(got.method, "POST");
    assert_eq!(
        got.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(got.accept.as_deref(), Some("application/json"));
    let expected: HashMap<String, String> = [
        ("client_id", ep.client_id.as_str()),
        ("client_secret", ep.client_secret.as_str()),
        ("refresh_token", refresh.as_str()),
        ("grant_type", "refresh_token"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(got.form, expected);
    assert!(ep.realm.is_valid_access(out.access_token.expose()));
    // Not rotated: keep the old refresh token.
    assert!(out.refresh_token.is_none());
    // expires_in 3599 ⇒ an absolute expiry about an hour away.
    let left = secs_from_now(out.expires_at.unwrap());
    assert!((3590..=3599).contains(&left), "{left}");
    assert_no_secret_logged(&ep.secrets());
}

#[tokio::test]
async fn google_keeps_a_refresh_token_it_returns() {
    let ep = endpoint(Provider::Google, "g-rot").await;
    let refresh = ep.new_refresh_token();
    let mut body = ep.fixture()["success"]["body"].clone();
    body["refresh_token"] = "1//04dX-g-rot-new".into();
    ep.script([TokenReply::Raw(200, body.to_string())]);
    let out = ep.attempt(1, Provider::Google, &refresh).await.unwrap();
    assert_eq!(out.refresh_token.unwrap().expose(), "1//04dX-g-rot-new");
    assert_eq!(out.access_token.expose(), "ya29.a0-example");
}

#[tokio::test]
async fn google_invalid_grant_is_rejected_and_not_retried() {
    let ep = endpoint(Provider::Google, "g-dead").await;
    let err = ep
        .attempt(3, Provider::Google, "1//04dX-unknown")
        .await
        .unwrap_err();
    assert!(err.is_rejected(), "{err}");
    assert_eq!(
        err.to_string(),
        "refresh token rejected: google token endpoint answered 400 Bad Request (invalid_grant)"
    );
    assert_eq!(ep.calls.get(), 1);
}

#[tokio::test]
async fn google_5xx_and_temporarily_unavailable_are_retried_then_succeed() {
    let ep = endpoint(Provider::Google, "g-5xx").await;
    let refresh = ep.new_refresh_token();
    let fx = ep.fixture();
    let transient: Vec<TokenReply> = fx["transient"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| TokenReply::Raw(t["status"].as_u64().unwrap() as u16, t["body"].to_string()))
        .collect();
    assert_eq!(transient.len(), 2);
    ep.script(transient.clone());
    let out = ep.attempt(3, Provider::Google, &refresh).await.unwrap();
    assert!(ep.realm.is_valid_access(out.access_token.expose()));
    assert_eq!(ep.calls.get(), 3);

    // `temporarily_unavailable` is transient whatever the status.
    ep.script([TokenReply::Raw(
        400,
        r#"{"error":"temporarily_unavailable"}"#.into(),
    )]);
    ep.attempt(2, Provider::Google, &refresh).await.unwrap();
    assert_eq!(ep.calls.get(), 5);

    // Out of attempts: transient, after exactly max_attempts calls.
    ep.script(transient.iter().cloned().chain(transient.iter().cloned()));
    let err = ep.attempt(3, Provider::Google, &refresh).await.unwrap_err();
    assert!(!err.is_rejected(), "{err}");
    assert!(err.to_string().contains("(after 3 attempts)"), "{err}");
    assert_eq!(ep.calls.get(), 8);
    assert_no_secret_logged(&ep.secrets());
}

#[tokio::test]
async fn a_hanging_token_endpoint_is_a_bounded_failure_and_never_re_sent() {
    let ep = endpoint(Provider::Google, "g-hang").await;
    ep.script([TokenReply::Hang, TokenReply::Hang]);
    let p = RetryPolicy {
        timeout: Duration::from_millis(200),
        late_answer_window: Duration::from_millis(300),
        ..policy(2)
    };
    let started = Instant::now();
    let err = p
        .run(&*ep.refresher(), Provider::Google, &Secret::new("1//x"))
        .await
        .unwrap_err();
    assert!(!err.is_rejected(), "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The request was sent and may have been acted upon: the refresh token is not sent again.
    assert_eq!(ep.calls.get(), 1);
}

#[tokio::test]
async fn github_refresh_rotates_and_the_old_refresh_token_is_never_sent_again() {
    let ep = endpoint(Provider::GitHub, "gh-rot").await;
    let r0 = ep.new_refresh_token();
    let tokens = Tokens::builder_arc(ep.refresher()).retry(policy(3)).build();
    tokens.insert(Provider::GitHub, "octocat", TokenSeed::new(r0.clone()));
    for round in 1..=3u64 {
        let info = tokens
            .refresh_now(Provider::GitHub, "octocat")
            .await
            .unwrap();
        assert_eq!(ep.calls.get(), round);
        // expires_in 28800 honoured.
        let left = info.expires_at.unwrap() as i64 - now_secs() as i64;
        assert!((28790..=28800).contains(&left), "{left}");
    }
    let sent = ep.refresh_tokens_received();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0], r0);
    let distinct: HashSet<_> = sent.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "a refresh token was sent twice: {sent:?}"
    );
    for r in &sent[1..] {
        assert!(r.starts_with("ghr_"), "{r}");
    }
    for got in ep.received() {
        assert_eq!(got.accept.as_deref(), Some("application/json"));
        assert_eq!(got.form["grant_type"], "refresh_token");
        assert_eq!(got.form["client_id"], ep.client_id);
    }
    assert_no_secret_logged(&ep.secrets());
}

#[tokio::test]
async fn github_200_with_an_error_is_a_rejection_not_a_success() {
    let ep = endpoint(Provider::GitHub, "gh-200err").await;
    // The fixture's rejection is an HTTP 200.
    assert_eq!(ep.fixture()["rejected"]["status"], 200);
    let err = ep
        .attempt(3, Provider::GitHub, "ghr_dead")
        .await
        .unwrap_err();
    assert!(err.is_rejected(), "{err}");
    assert_eq!(
        err.to_string(),
        "refresh token rejected: github token endpoint answered 200 OK with error bad_refresh_token"
    );
    assert_eq!(ep.calls.get(), 1);

    // Through the cache: the account needs re-authorisation, and no further call is made.
    let tokens = Tokens::builder_arc(ep.refresher()).retry(policy(3)).build();
    tokens.insert(Provider::GitHub, "octocat", TokenSeed::new("ghr_dead"));
    let e = tokens
        .refresh_now(Provider::GitHub, "octocat")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), oauth_refresh_proxy::ErrorKind::RefreshRejected);
    assert!(
        tokens
            .get(Provider::GitHub, "octocat")
            .unwrap()
            .needs_reauth
    );
    let _ = tokens
        .refresh_now(Provider::GitHub, "octocat")
        .await
        .unwrap_err();
    assert_eq!(ep.calls.get(), 2);
}

#[tokio::test]
async fn github_form_encoded_answers_are_read_too() {
    let ep = endpoint(Provider::GitHub, "gh-form").await;
    ep.script([
        TokenReply::Raw(
            200,
            "access_token=ghu_form-1&expires_in=28800&refresh_token=ghr_form-2&refresh_token_expires_in=15811200&scope=&token_type=bearer".into(),
        ),
        TokenReply::Raw(
            200,
            "error=bad_refresh_token&error_description=The+refresh+token+passed+is+incorrect+or+expired.".into(),
        ),
    ]);
    let out = ep.attempt(1, Provider::GitHub, "ghr_form-1").await.unwrap();
    assert_eq!(out.access_token.expose(), "ghu_form-1");
    assert_eq!(out.refresh_token.unwrap().expose(), "ghr_form-2");
    let err = ep
        .attempt(3, Provider::GitHub, "ghr_form-2")
        .await
        .unwrap_err();
    assert!(err.is_rejected(), "{err}");
}

#[tokio::test]
async fn malformed_answers_are_transient_and_never_injected() {
    for provider in Provider::ALL {
        let ep = endpoint(provider, &format!("{provider}-malformed")).await;
        let huge = format!(r#"{{"access_token":"{}"}}"#, "a".repeat(1 << 20));
        let cases: Vec<(u16, String)> = vec![
            (200, String::new()),
            (200, "not json".into()),
            (200, "{".into()),
            (200, "[]".into()),
            (200, "{}".into()),
            (200, r#"{"access_token":""}"#.into()),
            (200, r#"{"access_token":null,"expires_in":3599}"#.into()),
            (200, r#"{"access_token":42}"#.into()),
            (200, r#"{"access_token":"ya29.a\r\nx-injected: 1"}"#.into()),
            (200, r#"{"access_token":"tab\tinside"}"#.into()),
            (200, huge),
            (302, String::new()),
            (503, "<html>busy</html>".into()),
        ];
        let n = cases.len() as u64;
        for (status, body) in cases {
            ep.script([TokenReply::Raw(status, body.clone())]);
            let err = ep.attempt(1, provider, "r").await.unwrap_err();
            assert!(
                !err.is_rejected(), // transient or unconfirmed: never a dead token
                "{provider} {status} {:.60}: {err}",
                body
            );
        }
        assert_eq!(ep.calls.get(), n);

        // A 4xx is decided by its status, whatever the body.
        ep.script([TokenReply::Raw(400, "<html>bad</html>".into())]);
        let err = ep.attempt(3, provider, "r").await.unwrap_err();
        assert!(err.is_rejected(), "{err}");

        // Through the cache, a CR/LF token is never injected: the request fails transiently.
        ep.script([TokenReply::Raw(
            200,
            r#"{"access_token":"bad\r\ntoken","expires_in":3599}"#.into(),
        )]);
        let tokens = Tokens::builder_arc(ep.refresher()).retry(policy(1)).build();
        tokens.insert(provider, "a", TokenSeed::new("r"));
        let e = tokens.refresh_now(provider, "a").await.unwrap_err();
        assert_eq!(e.kind(), oauth_refresh_proxy::ErrorKind::RefreshUnavailable);
        let info = tokens.get(provider, "a").unwrap();
        assert!(!info.valid && !info.needs_reauth);
    }
}

#[tokio::test]
async fn wrong_client_credentials_are_transient_not_a_dead_refresh_token() {
    for provider in Provider::ALL {
        let ep = endpoint(provider, &format!("{provider}-creds")).await;
        let refresh = ep.new_refresh_token();
        let wrong = Secret::new("not-the-client-secret");
        let r: Arc<dyn Refresher> = match provider {
            Provider::Google => Arc::new(
                GoogleRefresher::new(ep.client_id.clone(), wrong)
                    .token_url(&ep.url())
                    .unwrap(),
            ),
            Provider::GitHub => Arc::new(
                GitHubRefresher::new(ep.client_id.clone(), wrong)
                    .token_url(&ep.url())
                    .unwrap(),
            ),
        };
        let err = policy(2)
            .run(&*r, provider, &Secret::new(refresh))
            .await
            .unwrap_err();
        assert!(!err.is_rejected(), "{err}");
        assert!(
            err.to_string().contains(&format!(
                "check [refresh.{provider}] client_id and client_secret"
            )),
            "{err}"
        );
        assert!(!err.to_string().contains("not-the-client-secret"));
        assert_eq!(ep.calls.get(), 2);
    }
}

#[tokio::test]
async fn a_refresher_never_sends_a_token_to_another_providers_endpoint() {
    let google = endpoint(Provider::Google, "cross-g").await;
    let github = endpoint(Provider::GitHub, "cross-gh").await;
    let err = google
        .attempt(3, Provider::GitHub, "ghr_x")
        .await
        .unwrap_err();
    assert!(err.is_rejected(), "{err}");
    // DirectRefresher dispatches per provider; one without credentials is refused, unsent.
    let only_google = DirectRefresher::new().google(
        GoogleRefresher::new(
            google.client_id.clone(),
            Secret::new(google.client_secret.clone()),
        )
        .token_url(&google.url())
        .unwrap(),
    );
    let err = policy(3)
        .run(&only_google, Provider::GitHub, &Secret::new("ghr_x"))
        .await
        .unwrap_err();
    assert!(err.is_rejected(), "{err}");
    assert_eq!(
        err.to_string(),
        "refresh token rejected: no github client credentials for direct refresh (configure [refresh.github])"
    );
    assert_eq!(google.calls.get() + github.calls.get(), 0);
    let refresh = google.new_refresh_token();
    policy(1)
        .run(&only_google, Provider::Google, &Secret::new(refresh))
        .await
        .unwrap();
    assert_eq!(google.calls.get(), 1);
    let shown = format!("{only_google:?}");
    assert!(!shown.contains(&google.client_secret), "{shown}");
}

// ---------------------------------------------------------------------------------------------
// The real binary.
// ---------------------------------------------------------------------------------------------

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// The `[refresh.google]` / `[refresh.github]` tables for `eps`, secrets through `env:`.
fn credentials(eps: &[&TokenEndpoint]) -> (String, Vec<(String, String)>) {
    let mut toml = String::new();
    let mut env = Vec::new();
    for ep in eps {
        let var = format!(
            "ORP_TEST_{}_CLIENT_SECRET",
            ep.provider.as_str().to_uppercase()
        );
        toml.push_str(&format!(
            "\n[refresh.{p}]\nclient_id = \"{id}\"\nclient_secret = \"env:{var}\"\ntoken_url = \"{url}\"\n",
            p = ep.provider,
            id = ep.client_id,
            url = ep.url()
        ));
        env.push((var, ep.client_secret.clone()));
    }
    (toml, env)
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A realm's token endpoints at Google and at GitHub, and its fake Google and GitHub APIs.
async fn both_providers(
    name: &str,
) -> (
    Arc<TokenEndpoint>,
    Arc<TokenEndpoint>,
    SocketAddr,
    SocketAddr,
) {
    let realm = Realm::new(name);
    let google = TokenEndpoint::start(Provider::Google, name, realm.clone()).await;
    let github = TokenEndpoint::start(Provider::GitHub, name, realm.clone()).await;
    let google_api = start_api(realm.clone(), Provider::Google).await;
    let github_api = start_api(realm.clone(), Provider::GitHub).await;
    (google, github, google_api, github_api)
}

/// What both endpoints must never see logged.
fn both_secrets(google: &TokenEndpoint, github: &TokenEndpoint) -> Vec<String> {
    let mut secrets = google.secrets();
    secrets.extend(github.secrets());
    secrets
}

/// The head of a direct-mode config: loopback proxy, no admin listener, `creds`.
fn direct_config(creds: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
admin_listen = ""
[refresh]
mode = "direct"
{creds}"#
    )
}

/// `[refresh_api]`, enabled, with `token`.
fn refresh_api(token: &str) -> String {
    format!("[refresh_api]\nenabled = true\ntoken = \"{token}\"\n")
}

/// `/google` (default account `alice`) and `/github` (default account `octocat`) routes to the
/// fake APIs.
fn routes(google_api: SocketAddr, github_api: SocketAddr) -> String {
    format!(
        r#"[[route]]
prefix = "/google"
upstream = "http://{google_api}"
provider = "google"
default_account = "alice"

[[route]]
prefix = "/github"
upstream = "http://{github_api}"
provider = "github"
default_account = "octocat"
"#
    )
}

/// A JSON answer: status, selected headers, body.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn post_refresh(
    client: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Answer {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(body);
    if let Some(b) = bearer {
        req = req.header("authorization", format!("Bearer {b}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    Answer {
        status,
        headers,
        body,
    }
}

/// Asserts an error answer of the served API: status, `success: false`, `error_code`, a
/// non-empty `message`, nothing else.
fn assert_api_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.headers["content-type"], "application/json");
    let obj = a.body.as_object().unwrap();
    let keys: HashSet<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        HashSet::from(["success", "error_code", "message"]),
        "{}",
        a.body
    );
    assert_eq!(a.body["success"], false);
    assert_eq!(a.body["error_code"], code);
    assert!(!a.body["message"].as_str().unwrap().is_empty());
}

fn keys(v: &Value) -> HashSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

const API_TOKEN: &str = "refresh-api-bearer-direct-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_api_answers_the_seed_clients_request_unchanged() {
    let realm = Realm::new("seed");
    let google = TokenEndpoint::start(Provider::Google, "seed", realm.clone()).await;
    let github = TokenEndpoint::start(Provider::GitHub, "seed", realm.clone()).await;
    let dir = TempDir::new("seed-secret");
    // The Google client secret from a file, GitHub's from the environment.
    let secret_file = dir.write("google-secret", &format!("{}\n", google.client_secret));
    let config = format!(
        r#"listen = "127.0.0.1:0"
admin_listen = ""
client_token = "env:ORP_TEST_CLIENT_TOKEN"

[refresh]
mode = "direct"

[refresh.google]
client_id = "{gid}"
client_secret = "file:{file}"
token_url = "{gurl}"

[refresh.github]
client_id = "{hid}"
client_secret = "env:ORP_TEST_GITHUB_CLIENT_SECRET"
token_url = "{hurl}"

[refresh_api]
enabled = true
token = "env:ORP_TEST_REFRESH_API_TOKEN"
"#,
        gid = google.client_id,
        file = secret_file.display(),
        gurl = google.url(),
        hid = github.client_id,
        hurl = github.url(),
    );
    let a = Proxy::start(
        &config,
        &[],
        &[
            ("ORP_TEST_CLIENT_TOKEN", "client-token-seed"),
            ("ORP_TEST_GITHUB_CLIENT_SECRET", &github.client_secret),
            ("ORP_TEST_REFRESH_API_TOKEN", API_TOKEN),
        ],
    )
    .await;
    let client = client();

    // Google, exactly as the Flashback reference shows it (no Proxy-Authorization: client_token
    // does not apply to the refresh API).
    let g_refresh = google.new_refresh_token();
    let sent = json!({ "refresh_token": g_refresh }).to_string();
    let g = post_refresh(
        &client,
        &a.url("/auth/google/refresh"),
        Some(API_TOKEN),
        sent,
    )
    .await;
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(g.headers["content-type"], "application/json");
    assert_eq!(g.headers["cache-control"], "no-store");
    assert_eq!(
        keys(&g.body),
        HashSet::from(["success", "token", "refreshToken", "expiresAt"].map(String::from)),
        "{}",
        g.body
    );
    assert_eq!(g.body["success"], true);
    let token = g.body["token"].as_str().unwrap();
    assert!(realm.is_valid_access(token));
    // Google did not rotate: the refresh token sent comes back.
    assert_eq!(g.body["refreshToken"], g_refresh.as_str());
    // Unix seconds (not milliseconds), an hour away (expires_in 3599).
    let at = g.body["expiresAt"].as_u64().unwrap();
    assert!(at < 1_000_000_000_000);
    assert!(
        (3590..=3599).contains(&(at as i64 - now_secs() as i64)),
        "{at}"
    );
    assert_eq!(google.calls.get(), 1);

    // GitHub: `accessToken` too, and the rotated refresh token.
    let h_refresh = github.new_refresh_token();
    let sent = json!({ "refresh_token": h_refresh }).to_string();
    let h = post_refresh(
        &client,
        &a.url("/auth/github/refresh"),
        Some(API_TOKEN),
        sent,
    )
    .await;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(
        keys(&h.body),
        HashSet::from(
            [
                "success",
                "token",
                "accessToken",
                "refreshToken",
                "expiresAt"
            ]
            .map(String::from)
        ),
        "{}",
        h.body
    );
    assert_eq!(h.body["success"], true);
    assert_eq!(h.body["token"], h.body["accessToken"]);
    assert!(realm.is_valid_access(h.body["token"].as_str().unwrap()));
    let rotated = h.body["refreshToken"].as_str().unwrap();
    assert_ne!(rotated, h_refresh);
    assert!(rotated.starts_with("ghr_"), "{rotated}");
    let at = h.body["expiresAt"].as_u64().unwrap();
    assert!(
        (28790..=28800).contains(&(at as i64 - now_secs() as i64)),
        "{at}"
    );
    assert_eq!(github.calls.get(), 1);
    assert_eq!(github.refresh_tokens_received(), vec![h_refresh.clone()]);

    // The crate's own backend client reads the served answers (the chain test goes further).
    let backend = oauth_refresh_proxy::BackendRefresher::new(&a.url(""))
        .unwrap()
        .bearer(Secret::new(API_TOKEN));
    let r = policy(1)
        .run(
            &backend,
            Provider::GitHub,
            &Secret::new(rotated.to_string()),
        )
        .await
        .unwrap();
    assert!(realm.is_valid_access(r.access_token.expose()));
    assert!(r.refresh_token.unwrap().expose().starts_with("ghr_"));
    assert_eq!(github.calls.get(), 2);

    let mut secrets = both_secrets(&google, &github);
    secrets.extend([API_TOKEN.to_string(), "client-token-seed".to_string()]);
    a.assert_no_secret_in_stderr(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_api_refuses_bad_requests_with_the_documented_errors() {
    let realm = Realm::new("errors");
    let google = TokenEndpoint::start(Provider::Google, "errors", realm.clone()).await;
    let (creds, env) = credentials(&[&google]);
    // Backend mode for the proxy itself: the served API uses the credentials whatever the mode.
    let config = format!(
        r#"listen = "127.0.0.1:0"
admin_listen = ""
client_token = "client-token-errors"

[refresh]
mode = "backend"
backend_url = "http://127.0.0.1:9"
max_attempts = 2
{creds}
{api}"#,
        api = refresh_api(API_TOKEN)
    );
    let a = Proxy::start(&config, &[], &env_refs(&env)).await;
    let client = client();
    let url = a.url("/auth/google/refresh");
    let good = || json!({"refresh_token": "1//04dX-errors-unknown"}).to_string();

    // Bearer: missing, wrong, wrong scheme.
    let r = post_refresh(&client, &url, None, good()).await;
    assert_api_error(&r, 401, "UNAUTHORIZED");
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    assert_api_error(
        &post_refresh(
            &client,
            &url,
            Some("refresh-api-bearer-direct-tesT"),
            good(),
        )
        .await,
        401,
        "UNAUTHORIZED",
    );
    let r = client
        .post(&url)
        .header("authorization", format!("Basic {API_TOKEN}"))
        .body(good())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The client_token is not what the refresh API takes either.
    assert_api_error(
        &post_refresh(&client, &url, Some("client-token-errors"), good()).await,
        401,
        "UNAUTHORIZED",
    );

    // Only POST.
    let r = client
        .get(&url)
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert_eq!(body["error_code"], "METHOD_NOT_ALLOWED");

    // Malformed bodies.
    for bad in [
        "",
        "not json",
        "[]",
        "{}",
        r#"{"refresh_token": 5}"#,
        r#"{"refresh_token": ""}"#,
        r#"{"refreshToken": "1//x"}"#,
    ] {
        assert_api_error(
            &post_refresh(&client, &url, Some(API_TOKEN), bad).await,
            400,
            "INVALID_REQUEST",
        );
    }
    let huge = json!({"refresh_token": "x".repeat(70 * 1024)}).to_string();
    let too_large = post_refresh(&client, &url, Some(API_TOKEN), huge).await;
    assert_api_error(&too_large, 413, "PAYLOAD_TOO_LARGE");
    // The rest of the body is left unread: the client is told not to reuse the connection, so
    // its next request (below) goes out on a new one rather than on a closing one.
    assert_eq!(too_large.headers["connection"], "close");
    assert_eq!(
        google.calls.get(),
        0,
        "no provider call for a refused request"
    );

    // A dead refresh token (the provider's invalid_grant): 400, one call, no retry.
    let r = post_refresh(&client, &url, Some(API_TOKEN), good()).await;
    assert_api_error(&r, 400, "INVALID_REFRESH_TOKEN");
    assert!(r.body["message"]
        .as_str()
        .unwrap()
        .contains("invalid_grant"));
    assert_eq!(google.calls.get(), 1);

    // The provider down: 502 after max_attempts (2) calls, then a success on the next request.
    let refresh = google.new_refresh_token();
    let fx = google.fixture();
    let t = &fx["transient"][0];
    let down = TokenReply::Raw(t["status"].as_u64().unwrap() as u16, t["body"].to_string());
    google.script([down.clone(), down]);
    let sent = json!({"refresh_token": refresh}).to_string();
    let r = post_refresh(&client, &url, Some(API_TOKEN), sent.clone()).await;
    assert_api_error(&r, 502, "PROVIDER_UNAVAILABLE");
    assert_eq!(r.headers["retry-after"], "5");
    assert_eq!(google.calls.get(), 3);
    let r = post_refresh(&client, &url, Some(API_TOKEN), sent).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(google.calls.get(), 4);

    // A provider without credentials, and no such provider.
    let r = post_refresh(
        &client,
        &a.url("/auth/github/refresh"),
        Some(API_TOKEN),
        json!({"refresh_token": "ghr_x"}).to_string(),
    )
    .await;
    assert_api_error(&r, 404, "UNSUPPORTED_PROVIDER");
    assert!(r.body["message"]
        .as_str()
        .unwrap()
        .contains("[refresh.github]"));
    assert_api_error(
        &post_refresh(
            &client,
            &a.url("/auth/gitlab/refresh"),
            Some(API_TOKEN),
            good(),
        )
        .await,
        404,
        "UNSUPPORTED_PROVIDER",
    );

    // Everything else still goes through the proxy's own rules: client_token first.
    for path in [
        "/google/drive/v3/files",
        "/auth/google",
        "/auth/google/refresh/x",
    ] {
        let r = client.get(a.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 407, "{path}");
    }

    let mut secrets = google.secrets();
    secrets.extend([API_TOKEN.to_string(), "client-token-errors".to_string()]);
    a.assert_no_secret_in_stderr(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_served_requests_for_one_refresh_token_make_one_provider_call() {
    let realm = Realm::new("coalesce");
    let github = TokenEndpoint::start(Provider::GitHub, "coalesce", realm.clone()).await;
    let (creds, env) = credentials(&[&github]);
    let config = format!("{}{}", direct_config(&creds), refresh_api(API_TOKEN));
    let a = Proxy::start(&config, &[], &env_refs(&env)).await;
    let client = client();
    let url = a.url("/auth/github/refresh");
    let r0 = github.new_refresh_token();
    github.script([TokenReply::Gated]);
    let sent = json!({"refresh_token": r0}).to_string();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, sent) = (client.clone(), url.clone(), sent.clone());
            tokio::spawn(async move { post_refresh(&client, &url, Some(API_TOKEN), sent).await })
        })
        .collect();
    github.calls.wait_for(1).await;
    github.release(1);
    let mut answers = Vec::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        answers.push(a.body);
    }
    // One provider call; everyone got the same rotated tokens (late arrivals from the rotated
    // result kept for the replay window, never a second spend of the old refresh token).
    assert_eq!(github.calls.get(), 1);
    assert!(answers.iter().all(|b| *b == answers[0]));
    assert_ne!(answers[0]["refreshToken"], r0.as_str());
    // A repeat after the fact (a caller that lost its answer) is answered the same way.
    let again = post_refresh(&client, &url, Some(API_TOKEN), sent).await;
    assert_eq!(again.body, answers[0]);
    assert_eq!(github.calls.get(), 1);
    // The rotated refresh token is a new flight.
    let r1 = answers[0]["refreshToken"].as_str().unwrap();
    let next = post_refresh(
        &client,
        &url,
        Some(API_TOKEN),
        json!({"refresh_token": r1}).to_string(),
    )
    .await;
    assert_eq!(next.status, 200, "{}", next.body);
    assert_eq!(github.calls.get(), 2);
    assert_eq!(github.refresh_tokens_received(), vec![r0, r1.to_string()]);

    let mut secrets = github.secrets();
    secrets.push(API_TOKEN.to_string());
    let logs = a.assert_no_secret_in_stderr(&secrets);
    assert!(logs.contains("refresh API: refreshed"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_mode_sidecar_refreshes_at_the_providers() {
    let (google, github, google_api, github_api) = both_providers("direct").await;
    let (creds, env) = credentials(&[&google, &github]);
    let alice = google.new_refresh_token();
    let octocat = github.new_refresh_token();
    let dead = github.new_refresh_token();
    github.revoke(&dead);
    let stale = github.stale_access_token(&octocat);
    let config = format!(
        r#"{direct}{routes}
[[account]]
provider = "google"
id = "alice"
refresh_token = "{alice}"

[[account]]
provider = "github"
id = "octocat"
refresh_token = "{octocat}"
access_token = "{stale}"
expires_at = {exp}

[[account]]
provider = "github"
id = "dead"
refresh_token = "{dead}"
"#,
        direct = direct_config(&creds),
        routes = routes(google_api, github_api),
        exp = now_secs() + 3600
    );
    let sc = Proxy::start(&config, &[], &env_refs(&env)).await;
    let client = client();

    // Google: no access token yet ⇒ refresh before sending; a burst shares one refresh.
    // GitHub: a revoked access token ⇒ 401 ⇒ one refresh (rotation) ⇒ replay.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (client, url) = (
            client.clone(),
            sc.url(if i % 2 == 0 {
                "/google/x"
            } else {
                "/github/user"
            }),
        );
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .body(format!("body-{i}"))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(google.calls.get(), 1);
    assert_eq!(github.calls.get(), 1);
    assert_eq!(github.refresh_tokens_received(), vec![octocat.clone()]);

    // A dead refresh token: 401 refresh_rejected, one call, then no more calls.
    for _ in 0..2 {
        let r = client
            .get(sc.url("/github/user"))
            .header("x-oauth-account", "dead")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["x-oauth-refresh"], "rejected");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "refresh_rejected");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("bad_refresh_token"),
            "{body}"
        );
    }
    assert_eq!(github.calls.get(), 2);

    let secrets = both_secrets(&google, &github);
    sc.assert_no_secret_in_stderr(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_a_backend_sidecar_refreshes_through_a_direct_sidecars_api() {
    let (google, github, google_api, github_api) = both_providers("chain").await;

    // A: direct mode, serving the refresh API.
    let (creds, env) = credentials(&[&google, &github]);
    let a = Proxy::start(
        &format!(
            "{}{}",
            direct_config(&creds),
            refresh_api("env:ORP_TEST_A_API_TOKEN")
        ),
        &[],
        &[
            env_refs(&env).as_slice(),
            &[("ORP_TEST_A_API_TOKEN", API_TOKEN)],
        ]
        .concat(),
    )
    .await;

    // B: backend mode, its backend is A. Both accounts hold revoked access tokens.
    let alice = google.new_refresh_token();
    let alice_stale = google.stale_access_token(&alice);
    let octocat = github.new_refresh_token();
    let octocat_stale = github.stale_access_token(&octocat);
    let b = Proxy::start(
        &format!(
            r#"listen = "127.0.0.1:0"
admin_listen = ""
[refresh]
mode = "backend"
backend_url = "{a_url}"
backend_token = "env:ORP_TEST_B_BACKEND_TOKEN"

{routes}
[[account]]
provider = "google"
id = "alice"
refresh_token = "env:ORP_TEST_ALICE_REFRESH"
access_token = "env:ORP_TEST_ALICE_ACCESS"
expires_at = {exp}

[[account]]
provider = "github"
id = "octocat"
refresh_token = "env:ORP_TEST_OCTOCAT_REFRESH"
access_token = "env:ORP_TEST_OCTOCAT_ACCESS"
expires_at = {exp}
"#,
            a_url = a.url(""),
            routes = routes(google_api, github_api),
            exp = now_secs() + 3600
        ),
        &[],
        &[
            ("ORP_TEST_B_BACKEND_TOKEN", API_TOKEN),
            ("ORP_TEST_ALICE_REFRESH", &alice),
            ("ORP_TEST_ALICE_ACCESS", &alice_stale),
            ("ORP_TEST_OCTOCAT_REFRESH", &octocat),
            ("ORP_TEST_OCTOCAT_ACCESS", &octocat_stale),
        ],
    )
    .await;
    let client = client();

    let burst = |path: &'static str, n: usize| {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (client, url) = (client.clone(), b.url(path));
                tokio::spawn(async move {
                    let r = client
                        .put(url)
                        .body(format!("payload-{i}"))
                        .send()
                        .await
                        .unwrap();
                    (r.status().as_u16(), r.text().await.unwrap())
                })
            })
            .collect();
        async move {
            for t in tasks {
                let (status, body) = t.await.unwrap();
                assert_eq!(status, 200, "{body}");
            }
        }
    };

    // A revoked-token burst through B: every request succeeds, one provider call each.
    burst("/github/user/emails", 30).await;
    assert_eq!(github.calls.get(), 1);
    assert_eq!(github.refresh_tokens_received(), vec![octocat.clone()]);
    burst("/google/drive/v3/files", 30).await;
    assert_eq!(google.calls.get(), 1);
    assert_eq!(google.refresh_tokens_received(), vec![alice.clone()]);

    // Revoked again: B refreshes with the rotated refresh token; the old one is never sent again.
    github.revoke_last_access();
    burst("/github/user/emails", 30).await;
    assert_eq!(github.calls.get(), 2);
    let sent = github.refresh_tokens_received();
    assert_eq!(sent[0], octocat);
    assert_ne!(sent[1], octocat);
    assert!(sent[1].starts_with("ghr_"));
    google.revoke_last_access();
    burst("/google/drive/v3/files", 30).await;
    assert_eq!(google.calls.get(), 2);
    assert_eq!(
        google.refresh_tokens_received(),
        vec![alice.clone(), alice.clone()]
    );

    let mut secrets = both_secrets(&google, &github);
    secrets.push(API_TOKEN.to_string());
    b.assert_no_secret_in_stderr(&secrets);
    a.assert_no_secret_in_stderr(&secrets);
}

#[test]
fn direct_mode_config_errors_are_one_line() {
    let dir = TempDir::new("config");
    // An account of a provider without credentials: refused at start, by serve and check-config.
    let path = dir.write(
        "proxy.toml",
        r#"listen = "127.0.0.1:0"
admin_listen = ""
[refresh]
mode = "direct"
[refresh.github]
client_id = "Iv1.x"
client_secret = "env:ORP_TEST_UNUSED_SECRET"

[[account]]
provider = "google"
id = "alice"
refresh_token = "1//04dX-config-secret"
"#,
    );
    let p = path.to_str().unwrap();
    for cmd in ["serve", "check-config"] {
        let CliOutput {
            status,
            stdout,
            stderr,
        } = run_cli(
            &[cmd, "--config", p],
            &[("ORP_TEST_UNUSED_SECRET", "gh-client-secret-config")],
        );
        assert_eq!(status.code(), Some(1), "{cmd}: {stdout} {stderr}");
        assert_eq!(
            stderr,
            format!("error: {p}: account[0]: google account \"alice\" cannot be refreshed: refresh.mode = \"direct\" needs [refresh.google] credentials\n"),
            "{cmd}"
        );
        assert!(!stdout.contains("proxy listening"));
    }
    // A route under /auth while the refresh API is enabled.
    let path = dir.write(
        "auth-route.toml",
        r#"[refresh]
mode = "direct"
[refresh.google]
client_id = "c"
client_secret = "google-client-secret-config"
[refresh_api]
enabled = true
token = "t"
[[route]]
prefix = "/auth"
upstream = "https://www.googleapis.com"
provider = "google"
"#,
    );
    let CliOutput { status, stderr, .. } =
        run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("route[0].prefix: \"/auth\" conflicts with the refresh API"),
        "{stderr}"
    );
    assert!(!stderr.contains("google-client-secret-config"));
}

#[test]
fn the_direct_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/direct.toml");
    let CliOutput {
        status,
        stdout,
        stderr,
    } = run_cli(
        &["check-config", "--config", example],
        &[
            ("GOOGLE_CLIENT_SECRET", "example-google-client-secret"),
            ("GITHUB_CLIENT_SECRET", "example-github-client-secret"),
            ("ORP_REFRESH_API_TOKEN", "example-refresh-api-token"),
            ("ALICE_GOOGLE_REFRESH_TOKEN", "1//04dX-example-alice"),
            ("OCTOCAT_GITHUB_REFRESH_TOKEN", "ghr_example-octocat"),
        ],
    );
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("refresh:         direct"), "{stdout}");
    assert!(stdout.contains("refresh_api:     enabled"), "{stdout}");
    for secret in [
        "example-google-client-secret",
        "example-github-client-secret",
        "example-refresh-api-token",
        "1//04dX-example-alice",
        "ghr_example-octocat",
    ] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret}"
        );
    }
}
