//! The public settings, one type per table (`[refresh]` is [`RefreshSettings`], `[store]` is
//! [`StoreSettings`], each `[[route]]` a [`Route`], …), with their defaults. The library's
//! defaults are used where the library has one (token endpoints, cache and retry timings).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use crate::store::redis::RedisNodes;
use crate::token::timestamp_to_system_time;
use crate::{
    GitHubRefresher, GoogleRefresher, Provider, RetryPolicy, Secret, TokenSeed, TokensBuilder,
};

/// Google's token endpoint, the default `refresh.google.token_url`: the library's
/// [`GoogleRefresher::TOKEN_URL`].
pub const GOOGLE_TOKEN_URL: &str = GoogleRefresher::TOKEN_URL;
/// GitHub's token endpoint, the default `refresh.github.token_url`: the library's
/// [`GitHubRefresher::TOKEN_URL`].
pub const GITHUB_TOKEN_URL: &str = GitHubRefresher::TOKEN_URL;

/// One `[[webhook]]` (SPEC 4.11): where `needs_reauth`, `refresh_failing` and
/// `refresh_recovered` events are POSTed, signed with `secret`.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::proxy::config::Config;
/// use oauth_refresh_proxy::HealthChange;
///
/// let config = Config::from_toml_str(
///     "[refresh]\nbackend_url = \"https://b.example\"\n\
///      [[webhook]]\nurl = \"https://ops.example/hooks/orp\"\nsecret = \"s3cret\"\nevents = [\"needs_reauth\"]",
///     "proxy.toml",
/// )
/// .unwrap();
/// let hook = &config.webhooks[0];
/// assert_eq!(hook.events, vec![HealthChange::NeedsReauth]);
/// assert_eq!(hook.max_backoff, Duration::from_secs(300));
/// ```
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// The receiver (`url`): `https://…`, or `http://…` on a loopback host only.
    pub url: String,
    /// The HMAC-SHA256 key of the `X-ORP-Signature` header (`secret`, required).
    pub secret: Secret,
    /// The events sent (`events`, default all three), without repetition.
    pub events: Vec<crate::HealthChange>,
    /// The longest pause between two delivery attempts (`max_backoff`, default 5 min); the
    /// first retry comes after 1 s or this, whichever is shorter, doubling from there.
    pub max_backoff: Duration,
}

/// The default `webhook.max_backoff`.
pub const DEFAULT_WEBHOOK_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Bounds on every upstream request: the `[upstream]` table (SPEC 4.2).
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::proxy::config::UpstreamSettings;
///
/// let u = UpstreamSettings::default();
/// assert_eq!(u.connect_timeout, Duration::from_secs(10));
/// assert_eq!(u.response_timeout, Duration::from_secs(60));
/// assert_eq!(u.body_idle_timeout, Duration::from_secs(60));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// TCP connect plus TLS handshake (`connect_timeout`, default 10 s); past it the request is
    /// answered `502 upstream_unavailable`.
    pub connect_timeout: Duration,
    /// No response head this long after the request (or its last body byte) was sent
    /// (`response_timeout`, default 60 s): `504 upstream_timeout`.
    pub response_timeout: Duration,
    /// The upstream's response body sends no byte this long (`body_idle_timeout`, default
    /// 60 s): the response to the caller is aborted.
    pub body_idle_timeout: Duration,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Timeouts and the connection limit of both listeners: the `[server]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// A request head not complete this long after the connection opened (or, on a reused
    /// HTTP/1.1 connection, after its first byte) closes the connection
    /// (`header_read_timeout`, default 30 s).
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight this long is closed (`idle_timeout`, default 90 s).
    pub idle_timeout: Duration,
    /// A request body that sends no byte this long is answered `408 request_timeout`
    /// (`body_read_timeout`, default 30 s).
    pub body_read_timeout: Duration,
    /// Connections the proxy listener keeps open at once; past it, new ones are closed at once
    /// (`max_connections`, default 10 000, at least 1).
    pub max_connections: usize,
    /// Serving threads: single-threaded runtimes the proxy listener's connections are spread
    /// over, each with its own upstream connection pool (`workers`, default: the number of
    /// cores; see [`workers`](crate::proxy::workers)).
    pub workers: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            workers: crate::proxy::workers::default_count(),
        }
    }
}

/// The most `[server] workers` accepted.
pub const MAX_WORKERS: usize = 1024;

/// How tokens are refreshed: the `[refresh]` table.
#[derive(Clone, Debug)]
pub struct RefreshSettings {
    /// `backend` (default) or `direct`.
    pub mode: RefreshMode,
    /// The Flashback-compatible backend (`backend_url`); required in `backend` mode.
    pub backend_url: Option<String>,
    /// Bearer token sent to the backend (`backend_token`).
    pub backend_token: Option<Secret>,
    /// Bound on each refresh attempt (`timeout`, default 10 s).
    pub timeout: Duration,
    /// Attempts for transient failures (`max_attempts`, default 3, at least 1).
    pub max_attempts: u32,
    /// Refresh this long before expiry (`skew`, default 60 s).
    pub skew: Duration,
    /// Start a background refresh this long before expiry (`refresh_ahead`, default 5 min).
    pub refresh_ahead: Duration,
    /// Assumed lifetime of a token whose expiry is unknown (`default_lifetime`, default 55 min).
    pub default_lifetime: Duration,
    /// At most one proactive refresh per account per this (`min_interval`, default 30 s).
    pub min_interval: Duration,
    /// How long a timed-out attempt's answer is still awaited (`late_answer_window`, default
    /// 2 min).
    pub late_answer_window: Duration,
    /// Google OAuth client credentials (`[refresh.google]`).
    pub google: Option<ProviderCredentials>,
    /// GitHub OAuth app credentials (`[refresh.github]`).
    pub github: Option<ProviderCredentials>,
}

/// How the proxy obtains new tokens (`refresh.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RefreshMode {
    /// Call a Flashback-compatible backend (`"backend"`, the default).
    #[default]
    Backend,
    /// Call the providers' own token endpoints (`"direct"`).
    Direct,
}

impl RefreshMode {
    /// The name used in the config file: `backend` or `direct`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::config::RefreshMode;
    /// assert_eq!(RefreshMode::Direct.as_str(), "direct");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshMode::Backend => "backend",
            RefreshMode::Direct => "direct",
        }
    }
}

impl fmt::Display for RefreshMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// OAuth client credentials of one provider (`[refresh.google]`, `[refresh.github]`).
#[derive(Clone, Debug)]
pub struct ProviderCredentials {
    /// The OAuth client id.
    pub client_id: String,
    /// The OAuth client secret.
    pub client_secret: Secret,
    /// The token endpoint; defaults to [`GOOGLE_TOKEN_URL`] / [`GITHUB_TOKEN_URL`].
    pub token_url: String,
}

impl ProviderCredentials {
    /// The provider's standard token endpoint, used when `token_url` is not given.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{Provider, proxy::config::ProviderCredentials};
    /// assert_eq!(
    ///     ProviderCredentials::default_token_url(Provider::Google),
    ///     "https://oauth2.googleapis.com/token"
    /// );
    /// ```
    pub fn default_token_url(provider: Provider) -> &'static str {
        match provider {
            Provider::Google => GOOGLE_TOKEN_URL,
            Provider::GitHub => GITHUB_TOKEN_URL,
        }
    }
}

impl RefreshSettings {
    /// The credentials configured for `provider`, if any.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{Provider, proxy::config::RefreshSettings};
    /// assert!(RefreshSettings::default().credentials(Provider::GitHub).is_none());
    /// ```
    pub fn credentials(&self, provider: Provider) -> Option<&ProviderCredentials> {
        match provider {
            Provider::Google => self.google.as_ref(),
            Provider::GitHub => self.github.as_ref(),
        }
    }
}

impl Default for RefreshSettings {
    fn default() -> Self {
        // The library's defaults, written once: the cache's and the retry policy's.
        let retry = RetryPolicy::default();
        RefreshSettings {
            mode: RefreshMode::Backend,
            backend_url: None,
            backend_token: None,
            timeout: retry.timeout,
            max_attempts: retry.max_attempts,
            skew: TokensBuilder::DEFAULT_SKEW,
            refresh_ahead: TokensBuilder::DEFAULT_REFRESH_AHEAD,
            default_lifetime: TokensBuilder::DEFAULT_LIFETIME,
            min_interval: TokensBuilder::DEFAULT_MIN_INTERVAL,
            late_answer_window: retry.late_answer_window,
            google: None,
            github: None,
        }
    }
}

/// Where tokens are kept: the `[store]` table.
///
/// `Debug` hides any password in a Redis URL.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum StoreSettings {
    /// In-process memory (`kind = "memory"`, the default): tokens are lost on restart.
    #[default]
    Memory,
    /// An embedded durable file (`kind = "file"`, `path = …`).
    File {
        /// The store file.
        path: PathBuf,
    },
    /// A shared Redis (`kind = "redis"`): one node (`url = …`, `rediss://` for TLS) or a
    /// Redis Cluster (`cluster_urls = […]`).
    Redis {
        /// The node, or the cluster's nodes.
        nodes: RedisNodes,
        /// `ca_file`: PEM certificates of the CAs trusted for `rediss://` instead of the
        /// system's roots (read at start-up).
        ca_file: Option<PathBuf>,
        /// How long a replica's refresh lock lives without renewal (`lock_ttl`, default
        /// `"30s"`): a live holder renews it every third of this; when its holder dies
        /// mid-refresh, another replica takes over after at most this long. Must exceed
        /// `refresh.timeout`.
        lock_ttl: Duration,
    },
}

/// Encryption at rest: `[store] encryption_key`, `previous_keys`, `encrypt_existing`
/// (see [`Encryption`](crate::store::Encryption) for what is sealed and the opening rules).
/// `Debug` shows whether keys are set, never a key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoreEncryption {
    /// The key every token written is sealed with (base64 of 32 bytes), if any.
    pub key: Option<Secret>,
    /// Keys still opened (being rotated out); records they sealed are re-sealed on next write.
    pub previous: Vec<Secret>,
    /// Seal a store written with no key at start-up instead of refusing it.
    pub encrypt_existing: bool,
}

impl fmt::Debug for StoreEncryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreEncryption")
            .field("key", &self.key.as_ref().map(|_| "set"))
            .field("previous", &self.previous.len())
            .field("encrypt_existing", &self.encrypt_existing)
            .finish()
    }
}

impl StoreEncryption {
    /// The store's [`Encryption`](crate::store::Encryption), `None` without a key.
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::config::StoreEncryption;
    /// # use oauth_refresh_proxy::Secret;
    /// assert!(StoreEncryption::default().encryption().unwrap().is_none());
    /// let bad = StoreEncryption { key: Some(Secret::new("short")), ..Default::default() };
    /// assert!(bad.encryption().unwrap_err().starts_with("store.encryption_key"));
    /// ```
    pub fn encryption(&self) -> Result<Option<crate::store::Encryption>, String> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let mut e =
            crate::store::Encryption::new(key).map_err(|e| format!("store.encryption_key: {e}"))?;
        for (i, k) in self.previous.iter().enumerate() {
            e = e
                .previous_key(k)
                .map_err(|e| format!("store.previous_keys[{i}]: {e}"))?;
        }
        Ok(Some(e.encrypt_existing(self.encrypt_existing)))
    }
}

/// The default `store.lock_ttl`.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30);

impl StoreSettings {
    /// The `kind` name: `memory`, `file` or `redis`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::config::StoreSettings;
    /// assert_eq!(StoreSettings::Memory.kind(), "memory");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            StoreSettings::Memory => "memory",
            StoreSettings::File { .. } => "file",
            StoreSettings::Redis { .. } => "redis",
        }
    }
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSettings::Memory => f.write_str("Memory"),
            StoreSettings::File { path } => f.debug_struct("File").field("path", path).finish(),
            StoreSettings::Redis {
                nodes,
                ca_file,
                lock_ttl,
            } => f
                .debug_struct("Redis")
                .field("nodes", nodes)
                .field("ca_file", ca_file)
                .field("lock_ttl", lock_ttl)
                .finish(),
        }
    }
}

/// One `[[route]]`: requests under `prefix` go to `upstream` with `provider`'s tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The path prefix, matched on a segment boundary: starts with `/`, no trailing `/`
    /// (except the prefix `/` itself).
    pub prefix: String,
    /// The upstream origin, optionally with a base path (trailing `/` trimmed), no query.
    pub upstream: Uri,
    /// Whose tokens requests on this route carry.
    pub provider: Provider,
    /// The account used when a request has no `x-oauth-account` header.
    pub default_account: Option<String>,
    /// Whether the proxy holds back requests the upstream's rate limits would refuse
    /// (`rate_limit`, SPEC 4.10).
    pub rate_limit: RateLimitMode,
    /// Whether absolute upstream URLs inside JSON response bodies are rewritten to the proxy
    /// (SPEC 4.3 "JSON bodies"; key `rewrite_body`, default `true`).
    pub rewrite_body: bool,
}

/// What a route does with the upstream's rate limits (`[[route]] rate_limit`, SPEC 4.10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RateLimitMode {
    /// `"enforce"` (the default): while an account is known to be rate limited, its requests
    /// get `429 rate_limited` without reaching the upstream.
    #[default]
    Enforce,
    /// `"pass"`: requests are always forwarded (limits are still learnt from this route's
    /// answers, for `GET /tokens` and for other routes to the same upstream).
    Pass,
}

impl RateLimitMode {
    /// The name used in the config file: `enforce` or `pass`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::config::RateLimitMode;
    /// assert_eq!(RateLimitMode::default().as_str(), "enforce");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitMode::Enforce => "enforce",
            RateLimitMode::Pass => "pass",
        }
    }
}

impl Route {
    /// The routes used when the file has no `[[route]]`: `/google → https://www.googleapis.com`,
    /// `/github → https://api.github.com`, `/github-uploads → https://uploads.github.com`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::config::Route;
    /// let routes = Route::defaults();
    /// assert_eq!(routes[1].prefix, "/github");
    /// assert_eq!(routes[1].upstream.host(), Some("api.github.com"));
    /// ```
    pub fn defaults() -> Vec<Route> {
        [
            ("/google", "https://www.googleapis.com", Provider::Google),
            ("/github", "https://api.github.com", Provider::GitHub),
            (
                "/github-uploads",
                "https://uploads.github.com",
                Provider::GitHub,
            ),
        ]
        .into_iter()
        .map(|(prefix, upstream, provider)| Route {
            prefix: prefix.to_string(),
            upstream: Uri::from_static(upstream),
            provider,
            default_account: None,
            rate_limit: RateLimitMode::Enforce,
            rewrite_body: true,
        })
        .collect()
    }
}

/// One `[[account]]` seeded into the token cache at start-up.
#[derive(Clone, Debug)]
pub struct AccountSeed {
    /// The account's provider.
    pub provider: Provider,
    /// The account id (what callers put in `x-oauth-account`).
    pub id: String,
    /// The refresh token.
    pub refresh_token: Secret,
    /// A current access token, if known.
    pub access_token: Option<Secret>,
    /// When `access_token` expires, as written in the file (unix seconds; values above 10^12
    /// are read as milliseconds by [`AccountSeed::token_seed`]).
    pub expires_at: Option<u64>,
}

impl AccountSeed {
    /// The [`TokenSeed`] to insert into [`Tokens`](crate::Tokens); an `expires_at` of `0`
    /// means unknown.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{Provider, Secret, proxy::config::AccountSeed};
    /// let seed = AccountSeed {
    ///     provider: Provider::Google,
    ///     id: "alice".into(),
    ///     refresh_token: Secret::new("1//r"),
    ///     access_token: Some(Secret::new("ya29.a")),
    ///     expires_at: Some(1_767_225_600),
    /// }
    /// .token_seed();
    /// assert!(seed.expires_at.is_some());
    /// ```
    pub fn token_seed(&self) -> TokenSeed {
        TokenSeed {
            refresh_token: self.refresh_token.clone(),
            access_token: self.access_token.clone(),
            expires_at: self
                .expires_at
                .and_then(|t| timestamp_to_system_time(i64::try_from(t).unwrap_or(i64::MAX))),
        }
    }
}

/// The self-hosted refresh API (`[refresh_api]`, SPEC 4.9), present only when enabled.
#[derive(Clone, Debug)]
pub struct RefreshApiSettings {
    /// Callers of `POST /auth/{provider}/refresh` must send `Authorization: Bearer <token>`.
    pub token: Secret,
}
