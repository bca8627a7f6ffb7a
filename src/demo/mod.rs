//! In-process fakes of Google's and GitHub's APIs and of a Flashback-compatible refresh
//! backend, each a real hyper server on `127.0.0.1:0`, sharing one [`Realm`] of valid tokens.
//!
//! They power `oauth-refresh-proxy demo`, the `embed_hyper_client` example and the black-box
//! tests. The API answers like the real providers (the 401 and 403 shapes of SPEC 3); the
//! backend speaks the contract of SPEC 2 and, in a rotating realm, rotates refresh tokens the
//! way GitHub does (the old refresh token and the old access token die at once).
//!
//! ```
//! use oauth_refresh_proxy::{demo::{self, Realm}, Provider};
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let realm = Realm::new("doc");
//! let backend_url = demo::start_backend(realm.clone()).await;
//! let api = demo::start_api(realm.clone(), Provider::Google).await;
//! let refresh = realm.new_refresh_token();
//! let access = realm.new_access_token(&refresh);
//! assert!(realm.is_valid_access(&access));
//! assert!(backend_url.starts_with("http://127.0.0.1:"));
//! # let _ = api;
//! # });
//! ```

mod servers;

pub use servers::{serve, serve_on, start_api, start_backend, REPOS_PER_PAGE, REPO_PAGES};

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Semaphore};

use crate::Provider;

/// The bound on every wait of the fakes' helpers.
pub const WAIT: Duration = Duration::from_secs(20);

/// The hex SHA-256 of `b` (the API reports it for each body it receives).
///
/// ```
/// assert_eq!(oauth_refresh_proxy::demo::sha256_hex(b"").len(), 64);
/// ```
pub fn sha256_hex(b: &[u8]) -> String {
    crate::token::hex(&crate::token::sha256(&[b]))
}

/// A canned API answer (status, headers, body), as in `tests/fixtures`.
#[derive(Debug)]
pub struct ApiAnswer {
    /// The status code.
    pub status: u16,
    /// The headers that matter.
    pub headers: &'static [(&'static str, &'static str)],
    /// The JSON body.
    pub body: &'static str,
}

/// Google rejecting an expired or invalid access token.
pub const GOOGLE_401: ApiAnswer = ApiAnswer {
    status: 401,
    headers: &[
        (
            "www-authenticate",
            r#"Bearer realm="https://accounts.google.com/", error="invalid_token""#,
        ),
        ("content-type", "application/json; charset=UTF-8"),
    ],
    body: r#"{"error":{"code":401,"message":"Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.","errors":[{"message":"Invalid Credentials","domain":"global","reason":"authError","location":"Authorization","locationType":"header"}],"status":"UNAUTHENTICATED"}}"#,
};

/// A Google 403 that must not trigger a refresh.
pub const GOOGLE_403: ApiAnswer = ApiAnswer {
    status: 403,
    headers: &[
        (
            "www-authenticate",
            r#"Bearer realm="https://accounts.google.com/", error="insufficient_scope", scope="https://www.googleapis.com/auth/drive""#,
        ),
        ("content-type", "application/json; charset=UTF-8"),
    ],
    body: r#"{"error":{"code":403,"message":"Request had insufficient authentication scopes.","errors":[{"message":"Insufficient Permission","domain":"global","reason":"insufficientPermissions"}],"status":"PERMISSION_DENIED"}}"#,
};

/// GitHub rejecting a token.
pub const GITHUB_401: ApiAnswer = ApiAnswer {
    status: 401,
    headers: &[("content-type", "application/json; charset=utf-8")],
    body: r#"{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest","status":"401"}"#,
};

/// A GitHub 403 (rate limit) that must not trigger a refresh.
pub const GITHUB_403: ApiAnswer = ApiAnswer {
    status: 403,
    headers: &[
        ("content-type", "application/json; charset=utf-8"),
        ("x-ratelimit-remaining", "0"),
    ],
    body: r#"{"message":"API rate limit exceeded for user ID 1.","documentation_url":"https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"}"#,
};

/// A counter others can wait on.
#[derive(Clone)]
pub struct Count(Arc<watch::Sender<u64>>);

impl Default for Count {
    fn default() -> Self {
        Count(Arc::new(watch::channel(0).0))
    }
}

impl Count {
    /// Adds one.
    pub fn bump(&self) {
        self.0.send_modify(|n| *n += 1);
    }
    /// The current count.
    pub fn get(&self) -> u64 {
        *self.0.borrow()
    }
    /// Waits (bounded by [`WAIT`]) until the count reaches `n`; panics past the bound.
    pub async fn wait_for(&self, n: u64) {
        let mut rx = self.0.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|v| *v >= n))
            .await
            .unwrap_or_else(|_| panic!("waited {WAIT:?} for count {n}, have {}", self.get()))
            .unwrap();
    }
}

/// How the fake backend answers one call.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Issue new tokens (the default).
    Issue,
    /// Answer with this status and body.
    Status(u16, String),
    /// Never answer.
    Hang,
    /// Wait for `Realm::release_backend`, then issue.
    Gated,
}

/// How the fake backend writes `expiresAt`.
#[derive(Clone, Copy, Debug)]
pub enum Expiry {
    /// Unix seconds.
    Seconds,
    /// Unix milliseconds.
    Millis,
    /// No `expiresAt`.
    Absent,
}

/// What the API saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The path and query.
    pub path_and_query: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// SHA-256 of the body received.
    pub body_sha256: String,
    /// Length of the body received.
    pub body_len: usize,
    /// The status answered.
    pub status: u16,
    /// The request headers.
    pub headers: http::HeaderMap,
}

#[derive(Default)]
struct RealmState {
    valid_access: HashSet<String>,
    /// refresh token → the access token last issued for it (its lineage)
    valid_refresh: HashMap<String, Option<String>>,
    secrets: Vec<String>,
    serial: u64,
    replies: VecDeque<Reply>,
    seen: Vec<Seen>,
    backend_requests: Vec<(String, Option<String>, String)>,
}

/// The shared world of the fakes: which tokens are valid, what was seen, and counters.
pub struct Realm {
    name: String,
    state: Mutex<RealmState>,
    /// Calls the backend received.
    pub backend_calls: Count,
    /// Requests the API received (any path).
    pub api_calls: Count,
    /// Requests that reached `/hold…` and are waiting.
    pub held: Count,
    backend_gate: Semaphore,
    api_gate: Semaphore,
    /// GitHub-style rotation: every GitHub refresh (`/auth/github/refresh`) rotates the refresh
    /// token and revokes the old access token at once. Google refreshes never rotate.
    pub rotate: bool,
    /// How `expiresAt` is written.
    pub expiry: Mutex<Expiry>,
    /// The lifetime of issued access tokens.
    pub lifetime: Mutex<Duration>,
    /// The bearer the backend requires (`None`: none).
    pub backend_token: Option<String>,
}

impl Realm {
    /// A realm whose tokens are named after `name`, whose refreshes never rotate the refresh
    /// token.
    pub fn new(name: &str) -> Arc<Realm> {
        Realm::build(name, false)
    }

    /// A realm whose GitHub refreshes rotate the refresh token (and revoke the old access token
    /// at once), as GitHub Apps with expiring tokens do.
    ///
    /// ```
    /// # use oauth_refresh_proxy::demo::Realm;
    /// assert!(Realm::rotating("doc").rotate && !Realm::new("doc").rotate);
    /// ```
    pub fn rotating(name: &str) -> Arc<Realm> {
        Realm::build(name, true)
    }

    fn build(name: &str, rotate: bool) -> Arc<Realm> {
        Arc::new(Realm {
            name: name.to_string(),
            state: Mutex::default(),
            backend_calls: Count::default(),
            api_calls: Count::default(),
            held: Count::default(),
            backend_gate: Semaphore::new(0),
            api_gate: Semaphore::new(0),
            rotate,
            expiry: Mutex::new(Expiry::Seconds),
            lifetime: Mutex::new(Duration::from_secs(3600)),
            backend_token: Some(format!("backend-bearer-{name}")),
        })
    }

    fn st(&self) -> std::sync::MutexGuard<'_, RealmState> {
        self.state.lock().unwrap()
    }

    /// A new refresh token the backend accepts.
    pub fn new_refresh_token(&self) -> String {
        let mut st = self.st();
        st.serial += 1;
        let t = format!("refresh-{}-{}", self.name, st.serial);
        st.valid_refresh.insert(t.clone(), None);
        st.secrets.push(t.clone());
        t
    }

    /// A new access token the API accepts, in the lineage of `refresh`.
    pub fn new_access_token(&self, refresh: &str) -> String {
        let mut st = self.st();
        st.serial += 1;
        let t = format!("access-{}-{}", self.name, st.serial);
        st.valid_access.insert(t.clone());
        st.valid_refresh
            .insert(refresh.to_string(), Some(t.clone()));
        st.secrets.push(t.clone());
        t
    }

    /// Makes the API refuse `access` from now on.
    pub fn revoke_access(&self, access: &str) {
        self.st().valid_access.remove(access);
    }

    /// Makes the backend refuse `refresh` from now on.
    pub fn revoke_refresh(&self, refresh: &str) {
        self.st().valid_refresh.remove(refresh);
    }

    /// Whether the API accepts `access`.
    pub fn is_valid_access(&self, access: &str) -> bool {
        self.st().valid_access.contains(access)
    }

    /// Queues replies for the next backend calls (then `Issue` again).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.st().replies.extend(replies);
    }

    /// Lets `n` gated backend calls go on.
    pub fn release_backend(&self, n: usize) {
        self.backend_gate.add_permits(n);
    }

    /// Lets `n` held API requests go on.
    pub fn release_api(&self, n: usize) {
        self.api_gate.add_permits(n);
    }

    /// Every secret the realm created or issued, plus the backend bearer.
    pub fn secrets(&self) -> Vec<String> {
        let mut v = self.st().secrets.clone();
        v.extend(self.backend_token.clone());
        v
    }

    /// What the API saw, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.st().seen.clone()
    }

    /// Forgets what the API saw ([`Realm::seen`]) and the recorded backend calls
    /// ([`Realm::backend_requests`]), so that a long run (the `soak` example) stays bounded in
    /// memory; the counters ([`Realm::api_calls`], [`Realm::backend_calls`]) and the valid
    /// tokens are kept.
    ///
    /// ```
    /// use oauth_refresh_proxy::demo::Realm;
    ///
    /// let realm = Realm::new("doc");
    /// realm.clear_seen();
    /// assert!(realm.seen().is_empty() && realm.backend_requests().is_empty());
    /// ```
    pub fn clear_seen(&self) {
        let mut st = self.st();
        st.seen = Vec::new();
        st.backend_requests = Vec::new();
    }

    /// (path, authorization, body) of every backend call.
    pub fn backend_requests(&self) -> Vec<(String, Option<String>, String)> {
        self.st().backend_requests.clone()
    }

    fn issue(&self, provider: Provider, refresh: &str) -> Result<serde_json::Value, (u16, String)> {
        let mut st = self.st();
        let Some(previous) = st.valid_refresh.get(refresh).cloned() else {
            return Err((
                400,
                r#"{"success": false, "error_code": "INVALID_REFRESH_TOKEN", "message": "refresh token expired or revoked"}"#.into(),
            ));
        };
        st.serial += 1;
        let serial = st.serial;
        let access = format!("access-{}-{serial}", self.name);
        st.valid_access.insert(access.clone());
        st.secrets.push(access.clone());
        let mut body = serde_json::json!({"success": true, "token": access, "accessToken": access});
        if self.rotate && provider == Provider::GitHub {
            if let Some(old) = previous {
                st.valid_access.remove(&old);
            }
            st.valid_refresh.remove(refresh);
            let new_refresh = format!("refresh-{}-{serial}r", self.name);
            st.valid_refresh
                .insert(new_refresh.clone(), Some(access.clone()));
            st.secrets.push(new_refresh.clone());
            body["refreshToken"] = new_refresh.into();
        } else {
            st.valid_refresh
                .insert(refresh.to_string(), Some(access.clone()));
        }
        let at = SystemTime::now() + *self.lifetime.lock().unwrap();
        let secs = at.duration_since(UNIX_EPOCH).unwrap();
        match *self.expiry.lock().unwrap() {
            Expiry::Seconds => body["expiresAt"] = secs.as_secs().into(),
            Expiry::Millis => body["expiresAt"] = (secs.as_millis() as u64).into(),
            Expiry::Absent => {}
        }
        Ok(body)
    }
}
