//! The sidecar's TOML configuration (SPEC 4.2).
//!
//! [`Config::load`] reads a file, [`Config::from_toml_str`] parses text; both resolve secrets,
//! apply defaults and run [`Config::validate`], so a `Config` you get back is ready to serve.
//!
//! # How it is read
//!
//! The text is parsed into a [`toml::Table`] and walked by hand: every table (the root,
//! `refresh`, `refresh.google`, `refresh.github`, `store`, `server`, `upstream`, each
//! `[[route]]`, each `[[account]]`, `refresh_api`, each `[[webhook]]`) lists the keys it knows, and the first key it does not know is reported by
//! name. Walking by hand rather than through serde gives every error a precise, stable,
//! single-line message that names the offending key.
//!
//! # Errors
//!
//! Every failure is a [`ConfigError`] whose `Display` is exactly one line,
//! `{source_name}: {message}`, for example:
//!
//! ```text
//! proxy.toml: unknown key "listne" in table root
//! proxy.toml: unknown key "tiemout" in table refresh
//! proxy.toml: unknown key "x" in table route[1]
//! proxy.toml: refresh.timeout: invalid duration "5 minutes" (expected e.g. "30s", "5m")
//! proxy.toml: TOML syntax error at line 3, column 10: invalid basic string, expected `"`
//! proxy.toml: TOML syntax error at line 7, column 1: duplicate key "timeout"
//! ```
//!
//! Entries of `[[route]]` and `[[account]]` are named by their **zero-based** position in the
//! file: the first `[[route]]` is `route[0]`, the second `route[1]`.
//!
//! # Values
//!
//! * **Secrets** (`admin_token`, `client_token`, `refresh.backend_token`,
//!   `refresh.*.client_secret`, `account.refresh_token`, `account.access_token`,
//!   `refresh_api.token`, `webhook.secret`) are given literally, as `env:NAME` (read from the environment) or as
//!   `file:PATH` (read from a file, trailing newlines trimmed; a relative path is relative to
//!   the working directory). An empty secret is an error. Error messages name the variable or
//!   the file, never the value.
//! * **Durations** are strings of one or more `<integer><unit>` parts, unit `ms`, `s`, `m` or
//!   `h`: `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1m30s"`.
//! * **Sizes** (`max_replay_body`) are bytes as an integer (`1048576` or `"1048576"`), or an
//!   integer directly followed by `KiB`, `MiB` or `GiB` (`"512KiB"`, `"1MiB"`); nothing else.
//!
//! # Example
//!
//! ```
//! use oauth_refresh_proxy::proxy::config::{Config, RefreshMode};
//!
//! let config = Config::from_toml_str(
//!     r#"
//!     [refresh]
//!     backend_url = "https://backend.flashback.tech"
//!
//!     [[account]]
//!     provider = "google"
//!     id = "alice"
//!     refresh_token = "1//literal-refresh-token"
//!     "#,
//!     "proxy.toml",
//! )
//! .unwrap();
//! assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
//! assert_eq!(config.refresh.mode, RefreshMode::Backend);
//! assert_eq!(config.routes.len(), 3); // the default routes
//!
//! let err = Config::from_toml_str("listne = \"127.0.0.1:1\"", "proxy.toml").unwrap_err();
//! assert_eq!(err.to_string(), r#"proxy.toml: unknown key "listne" in table root"#);
//! ```

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use toml::{Table, Value};

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

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// A configuration error: one line, `{source_name}: {message}`.
///
/// ```
/// use oauth_refresh_proxy::proxy::config::Config;
///
/// let err = Config::from_toml_str("[refresh]\ntiemout = \"5s\"", "proxy.toml").unwrap_err();
/// assert_eq!(err.to_string(), r#"proxy.toml: unknown key "tiemout" in table refresh"#);
/// assert_eq!(err.source_name(), "proxy.toml");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ConfigError {
    source_name: String,
    message: String,
}

impl ConfigError {
    fn new(source_name: &str, message: impl Into<String>) -> Self {
        // The contract is one line; never let a multi-line message through.
        let message: String = message.into();
        let message = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        ConfigError {
            source_name: source_name.to_string(),
            message,
        }
    }

    /// Where the configuration came from (the path as given, or the name passed to
    /// [`Config::from_toml_str`]).
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::config::Config;
    /// let err = Config::from_toml_str("x = 1", "inline").unwrap_err();
    /// assert_eq!(err.source_name(), "inline");
    /// ```
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The message without the source name.
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::config::Config;
    /// let err = Config::from_toml_str("x = 1", "inline").unwrap_err();
    /// assert_eq!(err.message(), r#"unknown key "x" in table root"#);
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The sidecar's whole configuration, with defaults applied and secrets resolved.
///
/// `Debug` never shows a secret value (secrets are [`Secret`]s).
#[derive(Clone, Debug)]
pub struct Config {
    /// The proxy listener (`listen`, default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// The admin listener (`admin_listen`, default `127.0.0.1:9090`); `None` when the file says
    /// `admin_listen = ""`.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token required by the admin API's token endpoints (`admin_token`).
    pub admin_token: Option<Secret>,
    /// Token callers must present as `Proxy-Authorization: Bearer …` (`client_token`).
    pub client_token: Option<Secret>,
    /// Request bodies up to this many bytes are replayed after a 401 (`max_replay_body`,
    /// default 1 MiB).
    pub max_replay_body: usize,
    /// How tokens are refreshed (`[refresh]`).
    pub refresh: RefreshSettings,
    /// Where tokens are kept (`[store]`).
    pub store: StoreSettings,
    /// Encryption at rest of the file and Redis stores (`[store] encryption_key`, …).
    pub store_encryption: StoreEncryption,
    /// The routes (`[[route]]`), in file order; the three default routes when the file has none.
    pub routes: Vec<Route>,
    /// Accounts seeded at start-up (`[[account]]`), in file order.
    pub accounts: Vec<AccountSeed>,
    /// The self-hosted refresh API (`[refresh_api]`); `Some` only when `enabled = true`.
    pub refresh_api: Option<RefreshApiSettings>,
    /// Bounds on every upstream request (`[upstream]`).
    pub upstream: UpstreamSettings,
    /// Timeouts and the connection limit of both listeners (`[server]`).
    pub server: ServerSettings,
    /// Where account health events are POSTed (`[[webhook]]`, SPEC 4.11), in file order.
    pub webhooks: Vec<WebhookSettings>,
}

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
    /// cores; see [`workers`](super::workers)).
    pub workers: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            workers: super::workers::default_count(),
        }
    }
}

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

impl Default for Config {
    /// The defaults of SPEC 4.2: loopback listeners, no tokens, 1 MiB replay limit,
    /// `backend` mode without a backend URL (so it does not validate as is), memory store, the
    /// default routes, no accounts, no refresh API.
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            admin_token: None,
            client_token: None,
            max_replay_body: MIB,
            refresh: RefreshSettings::default(),
            store: StoreSettings::Memory,
            store_encryption: StoreEncryption::default(),
            routes: Route::defaults(),
            accounts: Vec::new(),
            refresh_api: None,
            upstream: UpstreamSettings::default(),
            server: ServerSettings::default(),
            webhooks: Vec::new(),
        }
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`; errors are named after `path` as given.
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::config::Config;
    /// let err = Config::load("/nonexistent/proxy.toml".as_ref()).unwrap_err();
    /// assert!(err.to_string().starts_with("/nonexistent/proxy.toml: cannot read config file: "));
    /// ```
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&source_name, format!("cannot read config file: {e}")))?;
        Config::from_toml_str(&text, &source_name)
    }

    /// Parses and validates TOML `text`; `source_name` prefixes every error message.
    /// `env:` secrets are read from the process environment.
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::config::Config;
    /// let err = Config::from_toml_str(
    ///     "[refresh]\ntimeout = \"5 minutes\"",
    ///     "proxy.toml",
    /// )
    /// .unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"proxy.toml: refresh.timeout: invalid duration "5 minutes" (expected e.g. "30s", "5m")"#
    /// );
    /// ```
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str_with_env(text, source_name, &|name| std::env::var(name).ok())
    }

    /// Like [`Config::from_toml_str`], with `env:` secrets looked up through `env` instead of
    /// the process environment (for tests and embedding).
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::config::Config;
    /// let text = "client_token = \"env:MY_TOKEN\"\n[refresh]\nbackend_url = \"http://127.0.0.1:1\"";
    /// let env = |name: &str| (name == "MY_TOKEN").then(|| "s3cret".to_string());
    /// let config = Config::from_toml_str_with_env(text, "inline", &env).unwrap();
    /// assert_eq!(config.client_token.unwrap().expose(), "s3cret");
    /// ```
    pub fn from_toml_str_with_env(
        text: &str,
        source_name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::new(source_name, syntax_error(text, &e)))?;
        let config = Parser { env }
            .config(&table)
            .map_err(|m| ConfigError::new(source_name, m))?;
        config.validate(source_name)?;
        Ok(config)
    }

    /// Checks the rules that span several values: required settings per refresh mode, route
    /// prefixes and upstreams, duplicate accounts, the `[refresh_api]` rules of SPEC 4.9, the
    /// supported store kinds, and that a non-loopback `listen` / `admin_listen` has a
    /// `client_token` / `admin_token` (SPEC 4.5).
    ///
    /// The constructors call it; call it again after changing a `Config` (for example after
    /// applying `--listen` from the command line).
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::config::Config;
    /// let mut config = Config::default();
    /// config.refresh.backend_url = Some("https://backend.flashback.tech".into());
    /// assert!(config.validate("cli").is_ok());
    /// config.listen = "0.0.0.0:8080".parse().unwrap();
    /// assert_eq!(
    ///     config.validate("cli").unwrap_err().to_string(),
    ///     "cli: listen: 0.0.0.0:8080 is not a loopback address; set client_token to expose the proxy"
    /// );
    /// ```
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        self.check().map_err(|m| ConfigError::new(source_name, m))
    }

    fn check(&self) -> Result<(), String> {
        // Listeners (SPEC 4.5).
        if !self.listen.ip().is_loopback() && self.client_token.is_none() {
            return Err(format!(
                "listen: {} is not a loopback address; set client_token to expose the proxy",
                self.listen
            ));
        }
        if let Some(admin) = self.admin_listen {
            if !admin.ip().is_loopback() && self.admin_token.is_none() {
                return Err(format!(
                    "admin_listen: {admin} is not a loopback address; set admin_token to expose the admin listener"
                ));
            }
            if admin == self.listen && admin.port() != 0 {
                return Err(format!(
                    "admin_listen: {admin} is also the proxy's listen address"
                ));
            }
        }

        // Refresh.
        let r = &self.refresh;
        if r.timeout.is_zero() {
            return Err("refresh.timeout: must be greater than zero".into());
        }
        if r.max_attempts < 1 {
            return Err("refresh.max_attempts: must be at least 1".into());
        }
        if r.default_lifetime.is_zero() {
            return Err("refresh.default_lifetime: must be greater than zero".into());
        }
        for provider in Provider::ALL {
            if let Some(c) = r.credentials(provider) {
                let key = format!("refresh.{provider}");
                if c.client_id.is_empty() {
                    return Err(format!("{key}.client_id: must not be empty"));
                }
                check_http_url(&c.token_url).map_err(|e| format!("{key}.token_url: {e}"))?;
            }
        }
        match r.mode {
            RefreshMode::Backend => match &r.backend_url {
                None => {
                    return Err(
                        "refresh.backend_url: required when refresh.mode = \"backend\"".into(),
                    )
                }
                Some(url) => {
                    check_http_url(url).map_err(|e| format!("refresh.backend_url: {e}"))?
                }
            },
            RefreshMode::Direct => {
                if r.google.is_none() && r.github.is_none() {
                    return Err("refresh.mode: \"direct\" needs [refresh.google] or [refresh.github] credentials".into());
                }
            }
        }

        // Upstream.
        let u = &self.upstream;
        for (key, d) in [
            ("connect_timeout", u.connect_timeout),
            ("response_timeout", u.response_timeout),
            ("body_idle_timeout", u.body_idle_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("upstream.{key}: must be greater than zero"));
            }
        }

        // Store.
        let enc = &self.store_encryption;
        if enc.key.is_none() && (!enc.previous.is_empty() || enc.encrypt_existing) {
            return Err(
                "store.previous_keys / store.encrypt_existing: need store.encryption_key".into(),
            );
        }
        if enc.key.is_some() && self.store == StoreSettings::Memory {
            return Err(
                "store.encryption_key: applies to the file and redis stores; the memory store \
                 keeps nothing at rest"
                    .into(),
            );
        }
        enc.encryption()?;
        if let StoreSettings::Redis { nodes, ca_file, .. } = &self.store {
            let urls = match nodes {
                RedisNodes::Single(url) => std::slice::from_ref(url),
                RedisNodes::Cluster(urls) => urls.as_slice(),
            };
            let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
            if tls != 0 && tls != urls.len() {
                return Err("store.cluster_urls: mixes rediss:// (TLS) and redis:// URLs".into());
            }
            if ca_file.is_some() && tls == 0 {
                return Err("store.ca_file: applies to rediss:// (TLS) URLs only".into());
            }
        }
        if let StoreSettings::Redis { lock_ttl, .. } = &self.store {
            let r = &self.refresh;
            if lock_ttl.is_zero() {
                return Err("store.lock_ttl: must be above zero".into());
            }
            if *lock_ttl <= r.timeout {
                return Err(format!(
                    "store.lock_ttl: {lock_ttl:?} must exceed refresh.timeout ({:?})",
                    r.timeout
                ));
            }
        }

        // Routes.
        if self.routes.is_empty() {
            return Err("route: at least one route is required".into());
        }
        let mut prefixes = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("route[{i}]");
            check_prefix(&route.prefix).map_err(|e| format!("{key}.prefix: {e}"))?;
            if !prefixes.insert(route.prefix.as_str()) {
                return Err(format!("{key}.prefix: duplicate prefix {:?}", route.prefix));
            }
            check_upstream(&route.upstream).map_err(|e| format!("{key}.upstream: {e}"))?;
            if route.default_account.as_deref() == Some("") {
                return Err(format!("{key}.default_account: must not be empty"));
            }
            if self.refresh_api.is_some()
                && (route.prefix == "/"
                    || route.prefix == "/auth"
                    || route.prefix.starts_with("/auth/"))
            {
                return Err(format!(
                    "{key}.prefix: {:?} conflicts with the refresh API (POST /auth/{{provider}}/refresh) while [refresh_api] is enabled",
                    route.prefix
                ));
            }
        }

        // Accounts.
        let mut seen = HashSet::new();
        for (i, account) in self.accounts.iter().enumerate() {
            let key = format!("account[{i}]");
            check_account_id(&account.id).map_err(|e| format!("{key}.id: {e}"))?;
            if !seen.insert((account.provider, account.id.as_str())) {
                return Err(format!(
                    "{key}: duplicate account {}/{}",
                    account.provider, account.id
                ));
            }
            if account.refresh_token.is_empty() {
                return Err(format!("{key}.refresh_token: must not be empty"));
            }
        }

        // Refresh API (SPEC 4.9).
        if let Some(api) = &self.refresh_api {
            if api.token.is_empty() {
                return Err("refresh_api.token: must not be empty".into());
            }
            if r.google.is_none() && r.github.is_none() {
                return Err("refresh_api: enabled, but neither [refresh.google] nor [refresh.github] credentials are configured".into());
            }
        }
        Ok(())
    }

    /// A multi-line, human-readable summary for `check-config`: listeners, refresh settings,
    /// store, `[server]` limits, routes and accounts. It never contains a secret value, only whether one is set.
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::config::Config;
    /// let config = Config::from_toml_str(
    ///     "client_token = \"hunter2\"\n[refresh]\nbackend_url = \"https://b.example\"",
    ///     "proxy.toml",
    /// )
    /// .unwrap();
    /// let summary = config.summary();
    /// assert!(summary.contains("listen:          127.0.0.1:8080 (client_token set)"));
    /// assert!(!summary.contains("hunter2"));
    /// ```
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let set = |s: &Option<Secret>| if s.is_some() { "set" } else { "not set" };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "listen:          {} (client_token {})",
            self.listen,
            set(&self.client_token)
        );
        match self.admin_listen {
            Some(a) => {
                let _ = writeln!(
                    out,
                    "admin_listen:    {a} (admin_token {})",
                    set(&self.admin_token)
                );
            }
            None => {
                let _ = writeln!(out, "admin_listen:    disabled");
            }
        }
        let _ = writeln!(
            out,
            "max_replay_body: {}",
            format_size(self.max_replay_body)
        );
        let r = &self.refresh;
        match r.mode {
            RefreshMode::Backend => {
                let _ = writeln!(
                    out,
                    "refresh:         backend {} (backend_token {})",
                    r.backend_url
                        .as_deref()
                        .map(redact_userinfo)
                        .unwrap_or_else(|| "(none)".into()),
                    set(&r.backend_token)
                );
            }
            RefreshMode::Direct => {
                let _ = writeln!(out, "refresh:         direct");
            }
        }
        let _ = writeln!(
            out,
            "                 timeout {}, max_attempts {}, skew {}, refresh_ahead {}, default_lifetime {}",
            format_duration(r.timeout),
            r.max_attempts,
            format_duration(r.skew),
            format_duration(r.refresh_ahead),
            format_duration(r.default_lifetime)
        );
        let _ = writeln!(
            out,
            "                 min_interval {}, late_answer_window {}",
            format_duration(r.min_interval),
            format_duration(r.late_answer_window)
        );
        for provider in Provider::ALL {
            match r.credentials(provider) {
                Some(c) => {
                    let _ = writeln!(
                        out,
                        "  {:<15}client_id {}, token_url {}",
                        format!("{provider}:"),
                        c.client_id,
                        redact_userinfo(&c.token_url)
                    );
                }
                None => {
                    let _ = writeln!(out, "  {:<15}no client credentials", format!("{provider}:"));
                }
            }
        }
        let _ = match &self.store {
            StoreSettings::Memory => writeln!(out, "store:           memory"),
            StoreSettings::File { path } => {
                writeln!(out, "store:           file {}", path.display())
            }
            StoreSettings::Redis {
                nodes, lock_ttl, ..
            } => {
                let shown = match nodes {
                    RedisNodes::Single(url) => redact_userinfo(url),
                    RedisNodes::Cluster(urls) => format!(
                        "cluster {}",
                        urls.iter()
                            .map(|u| redact_userinfo(u))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                writeln!(
                    out,
                    "store:           redis {shown} (lock_ttl {lock_ttl:?})"
                )
            }
        };
        if let Ok(Some(e)) = self.store_encryption.encryption() {
            let _ = writeln!(
                out,
                "store encryption: AES-256-GCM, key id {}, {} previous key(s){}",
                e.key_id(),
                self.store_encryption.previous.len(),
                if self.store_encryption.encrypt_existing {
                    ", encrypt_existing"
                } else {
                    ""
                }
            );
        }
        let u = &self.upstream;
        let _ = writeln!(
            out,
            "upstream:        connect_timeout {}, response_timeout {}, body_idle_timeout {}",
            format_duration(u.connect_timeout),
            format_duration(u.response_timeout),
            format_duration(u.body_idle_timeout)
        );
        let _ = match &self.refresh_api {
            Some(_) => writeln!(
                out,
                "refresh_api:     enabled (POST /auth/{{provider}}/refresh, token set)"
            ),
            None => writeln!(out, "refresh_api:     disabled"),
        };
        let s = &self.server;
        let _ = writeln!(
            out,
            "server:          header_read_timeout {}, idle_timeout {}, body_read_timeout {}, max_connections {}",
            format_duration(s.header_read_timeout),
            format_duration(s.idle_timeout),
            format_duration(s.body_read_timeout),
            s.max_connections
        );
        let _ = writeln!(out, "workers:         {}", s.workers);
        if !self.webhooks.is_empty() {
            let _ = writeln!(out, "webhooks ({}):", self.webhooks.len());
        }
        for h in &self.webhooks {
            let events: Vec<&str> = h.events.iter().map(|e| e.as_str()).collect();
            // The query may carry a receiver's token: left out.
            let url = redact_userinfo(h.url.split('?').next().unwrap_or(""));
            let _ = writeln!(
                out,
                "  {url} ({}; secret set, max_backoff {})",
                events.join(", "),
                format_duration(h.max_backoff)
            );
        }
        let _ = writeln!(out, "routes ({}):", self.routes.len());
        for route in &self.routes {
            let upstream = route.upstream.to_string();
            let _ = write!(
                out,
                "  {:<16} -> {} ({}",
                route.prefix,
                upstream.trim_end_matches('/'),
                route.provider
            );
            if let Some(a) = &route.default_account {
                let _ = write!(out, ", default account {a}");
            }
            if route.rate_limit == RateLimitMode::Pass {
                let _ = write!(out, ", rate_limit pass");
            }
            if !route.rewrite_body {
                let _ = write!(out, ", JSON bodies not rewritten");
            }
            let _ = writeln!(out, ")");
        }
        let _ = writeln!(out, "accounts ({}):", self.accounts.len());
        for a in &self.accounts {
            let _ = write!(out, "  {}/{}", a.provider, a.id);
            match (&a.access_token, a.expires_at) {
                (Some(_), Some(t)) => {
                    let _ = write!(out, " (access token set, expires_at {t})");
                }
                (Some(_), None) => {
                    let _ = write!(out, " (access token set)");
                }
                (None, _) => {
                    let _ = write!(out, " (refresh token only)");
                }
            }
            let _ = writeln!(out);
        }
        out
    }
}

/// One line for a TOML syntax error: message plus line and column (1-based).
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let before = &text.as_bytes()[..start];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            let column = String::from_utf8_lossy(&before[line_start..])
                .chars()
                .count()
                + 1;
            // A duplicate key is named (a key is never a secret; other spans may hold values).
            let key = text.get(span.clone()).map(str::trim).unwrap_or("");
            let message = if message == "duplicate key" && !key.is_empty() && !key.contains('\n') {
                format!("duplicate key {:?}", key.trim_matches('"'))
            } else {
                message
            };
            format!("TOML syntax error at line {line}, column {column}: {message}")
        }
        None => format!("TOML syntax error: {message}"),
    }
}

/// Walks the TOML table; `env` resolves `env:` secrets.
struct Parser<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
}

/// A table being read: its display name (`root`, `refresh`, `route[0]`) and the prefix of its
/// keys in messages (``, `refresh.`, `route[0].`).
struct Tbl<'t> {
    table: &'t Table,
    name: String,
    prefix: String,
}

impl<'t> Tbl<'t> {
    fn root(table: &'t Table) -> Self {
        Tbl {
            table,
            name: "root".into(),
            prefix: String::new(),
        }
    }

    fn named(table: &'t Table, name: String) -> Self {
        let prefix = format!("{name}.");
        Tbl {
            table,
            name,
            prefix,
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.table.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(format!("unknown key {k:?} in table {}", self.name)),
            None => Ok(()),
        }
    }

    fn type_error(&self, key: &str, expected: &str, found: &Value) -> String {
        format!(
            "{}: expected {expected}, found {}",
            self.key(key),
            found.type_str()
        )
    }

    fn str(&self, key: &str) -> Result<Option<&'t str>, String> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.type_error(key, "a string", v)),
        }
    }

    /// An array of strings.
    fn strs(&self, key: &str) -> Result<Option<Vec<&'t str>>, String> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.as_str()),
                    v => Err(format!(
                        "{}: expected an array of strings, found an array holding {}",
                        self.key(key),
                        v.type_str()
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(self.type_error(key, "an array of strings", v)),
        }
    }

    fn required_str(&self, key: &str) -> Result<&'t str, String> {
        self.str(key)?
            .ok_or_else(|| format!("missing key {key:?} in table {}", self.name))
    }

    fn int(&self, key: &str) -> Result<Option<i64>, String> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Integer(i)) => Ok(Some(*i)),
            Some(v) => Err(self.type_error(key, "an integer", v)),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.type_error(key, "true or false", v)),
        }
    }

    fn table(&self, key: &str) -> Result<Option<Tbl<'t>>, String> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(Tbl::named(t, self.key(key)))),
            Some(v) => Err(self.type_error(key, &format!("a table ([{}])", self.key(key)), v)),
        }
    }

    /// An array of tables (`[[key]]`); entries are named `key[0]`, `key[1]`, ….
    fn tables(&self, key: &str) -> Result<Option<Vec<Tbl<'t>>>, String> {
        let expected = format!("an array of tables ([[{}]])", self.key(key));
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Table(t) => Ok(Tbl::named(t, format!("{}[{i}]", self.key(key)))),
                    v => Err(format!(
                        "{}[{i}]: expected a table, found {}",
                        self.key(key),
                        v.type_str()
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(self.type_error(key, &expected, v)),
        }
    }

    fn duration(&self, key: &str) -> Result<Option<Duration>, String> {
        match self.str(key)? {
            None => Ok(None),
            Some(s) => parse_duration(s).map(Some).ok_or_else(|| {
                format!(
                    "{}: invalid duration {s:?} (expected e.g. \"30s\", \"5m\")",
                    self.key(key)
                )
            }),
        }
    }

    fn socket_addr(&self, key: &str) -> Result<Option<Option<SocketAddr>>, String> {
        match self.str(key)? {
            None => Ok(None),
            Some("") if key == "admin_listen" => Ok(Some(None)),
            Some(s) => s.parse::<SocketAddr>().map(|a| Some(Some(a))).map_err(|_| {
                format!(
                    "{}: invalid socket address {s:?} (expected e.g. \"127.0.0.1:8080\")",
                    self.key(key)
                )
            }),
        }
    }

    fn provider(&self, key: &str) -> Result<Provider, String> {
        let s = self.required_str(key)?;
        s.parse::<Provider>()
            .map_err(|e| format!("{}: {e}", self.key(key)))
    }
}

impl Parser<'_> {
    fn config(&self, root: &Table) -> Result<Config, String> {
        let t = Tbl::root(root);
        t.only(&[
            "listen",
            "admin_listen",
            "admin_token",
            "client_token",
            "max_replay_body",
            "refresh",
            "store",
            "route",
            "account",
            "refresh_api",
            "upstream",
            "server",
            "webhook",
        ])?;
        let mut config = Config::default();
        if let Some(addr) = t.socket_addr("listen")? {
            config.listen = addr.expect("only admin_listen may be empty");
        }
        if let Some(addr) = t.socket_addr("admin_listen")? {
            config.admin_listen = addr;
        }
        config.admin_token = self.secret(&t, "admin_token")?;
        config.client_token = self.secret(&t, "client_token")?;
        if let Some(v) = t.table.get("max_replay_body") {
            config.max_replay_body = parse_size_value(v).ok_or_else(|| match v {
                Value::String(s) => format!(
                    "max_replay_body: invalid size {s:?} (expected bytes as an integer, or e.g. \"512KiB\", \"1MiB\")"
                ),
                Value::Integer(i) => format!(
                    "max_replay_body: invalid size {i} (expected a non-negative number of bytes)"
                ),
                v => t.type_error("max_replay_body", "an integer or a string", v),
            })?;
        }
        if let Some(r) = t.table("refresh")? {
            config.refresh = self.refresh(&r)?;
        }
        if let Some(s) = t.table("store")? {
            config.store = store(&s)?;
            config.store_encryption = self.store_encryption(&s)?;
        }
        if let Some(routes) = t.tables("route")? {
            if !routes.is_empty() {
                config.routes = routes.iter().map(route).collect::<Result<_, _>>()?;
            }
        }
        if let Some(accounts) = t.tables("account")? {
            config.accounts = accounts
                .iter()
                .map(|a| self.account(a))
                .collect::<Result<_, _>>()?;
        }
        if let Some(api) = t.table("refresh_api")? {
            config.refresh_api = self.refresh_api(&api)?;
        }
        if let Some(u) = t.table("upstream")? {
            config.upstream = upstream(&u)?;
        }
        if let Some(s) = t.table("server")? {
            config.server = server(&s)?;
        }
        if let Some(hooks) = t.tables("webhook")? {
            config.webhooks = hooks
                .iter()
                .map(|h| self.webhook(h))
                .collect::<Result<_, _>>()?;
        }
        Ok(config)
    }

    fn refresh(&self, t: &Tbl<'_>) -> Result<RefreshSettings, String> {
        t.only(&[
            "mode",
            "backend_url",
            "backend_token",
            "timeout",
            "max_attempts",
            "skew",
            "refresh_ahead",
            "default_lifetime",
            "min_interval",
            "late_answer_window",
            "google",
            "github",
        ])?;
        let mut r = RefreshSettings::default();
        if let Some(mode) = t.str("mode")? {
            r.mode = match mode {
                "backend" => RefreshMode::Backend,
                "direct" => RefreshMode::Direct,
                other => {
                    return Err(format!(
                        "refresh.mode: unknown mode {other:?} (expected \"backend\" or \"direct\")"
                    ))
                }
            };
        }
        r.backend_url = t.str("backend_url")?.map(str::to_string);
        r.backend_token = self.secret(t, "backend_token")?;
        if let Some(d) = t.duration("timeout")? {
            r.timeout = d;
        }
        if let Some(n) = t.int("max_attempts")? {
            r.max_attempts = u32::try_from(n)
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| format!("refresh.max_attempts: must be at least 1, found {n}"))?;
        }
        if let Some(d) = t.duration("skew")? {
            r.skew = d;
        }
        if let Some(d) = t.duration("refresh_ahead")? {
            r.refresh_ahead = d;
        }
        if let Some(d) = t.duration("default_lifetime")? {
            r.default_lifetime = d;
        }
        if let Some(d) = t.duration("min_interval")? {
            r.min_interval = d;
        }
        if let Some(d) = t.duration("late_answer_window")? {
            r.late_answer_window = d;
        }
        if let Some(g) = t.table("google")? {
            r.google = Some(self.credentials(&g, Provider::Google)?);
        }
        if let Some(g) = t.table("github")? {
            r.github = Some(self.credentials(&g, Provider::GitHub)?);
        }
        Ok(r)
    }

    fn credentials(&self, t: &Tbl<'_>, provider: Provider) -> Result<ProviderCredentials, String> {
        t.only(&["client_id", "client_secret", "token_url"])?;
        let client_id = t.required_str("client_id")?.to_string();
        let client_secret = self
            .secret(t, "client_secret")?
            .ok_or_else(|| format!("missing key \"client_secret\" in table {}", t.name))?;
        let token_url = t
            .str("token_url")?
            .unwrap_or(ProviderCredentials::default_token_url(provider))
            .to_string();
        Ok(ProviderCredentials {
            client_id,
            client_secret,
            token_url,
        })
    }

    fn account(&self, t: &Tbl<'_>) -> Result<AccountSeed, String> {
        t.only(&[
            "provider",
            "id",
            "refresh_token",
            "access_token",
            "expires_at",
        ])?;
        let provider = t.provider("provider")?;
        let id = t.required_str("id")?.to_string();
        let refresh_token = self
            .secret(t, "refresh_token")?
            .ok_or_else(|| format!("missing key \"refresh_token\" in table {}", t.name))?;
        let access_token = self.secret(t, "access_token")?;
        let expires_at = match t.int("expires_at")? {
            None => None,
            Some(n) => Some(u64::try_from(n).map_err(|_| {
                format!(
                    "{}: must be unix seconds (non-negative), found {n}",
                    t.key("expires_at")
                )
            })?),
        };
        Ok(AccountSeed {
            provider,
            id,
            refresh_token,
            access_token,
            expires_at,
        })
    }

    fn refresh_api(&self, t: &Tbl<'_>) -> Result<Option<RefreshApiSettings>, String> {
        t.only(&["enabled", "token"])?;
        if !t.bool("enabled")?.unwrap_or(false) {
            // Disabled: check the token's type, but do not resolve it (an unset variable for
            // an unused feature is not an error).
            t.str("token")?;
            return Ok(None);
        }
        let token = self.secret(t, "token")?.ok_or_else(|| {
            "refresh_api.token: required when refresh_api.enabled = true".to_string()
        })?;
        Ok(Some(RefreshApiSettings { token }))
    }

    fn webhook(&self, t: &Tbl<'_>) -> Result<WebhookSettings, String> {
        use crate::HealthChange;
        t.only(&["url", "secret", "events", "max_backoff"])?;
        let url = t.required_str("url")?;
        check_webhook_url(url).map_err(|e| format!("{}: {e}", t.key("url")))?;
        let secret = self
            .secret(t, "secret")?
            .ok_or_else(|| format!("missing key \"secret\" in table {}", t.name))?;
        const ALL: [HealthChange; 3] = [
            HealthChange::NeedsReauth,
            HealthChange::Failing,
            HealthChange::Recovered,
        ];
        let events = match t.strs("events")? {
            None => ALL.to_vec(),
            Some(names) => {
                let mut events = Vec::new();
                for name in names {
                    let event = ALL.into_iter().find(|e| e.as_str() == name).ok_or_else(|| {
                        format!(
                            "{}: unknown event {name:?} (expected \"needs_reauth\", \"refresh_failing\" or \"refresh_recovered\")",
                            t.key("events")
                        )
                    })?;
                    if !events.contains(&event) {
                        events.push(event);
                    }
                }
                if events.is_empty() {
                    return Err(format!("{}: must name at least one event", t.key("events")));
                }
                events
            }
        };
        let max_backoff = t
            .duration("max_backoff")?
            .unwrap_or(DEFAULT_WEBHOOK_MAX_BACKOFF);
        if max_backoff.is_zero() {
            return Err(format!(
                "{}: must be greater than zero",
                t.key("max_backoff")
            ));
        }
        Ok(WebhookSettings {
            url: url.to_string(),
            secret,
            events,
            max_backoff,
        })
    }

    /// Resolves a secret value: literal, `env:NAME` or `file:PATH`. Messages name the key and
    /// the variable or file, never the value.
    fn secret(&self, t: &Tbl<'_>, key: &str) -> Result<Option<Secret>, String> {
        let full = t.key(key);
        let raw = match t.table.get(key) {
            None => return Ok(None),
            Some(Value::String(s)) => s.as_str(),
            Some(v) => return Err(format!("{full}: expected a string, found {}", v.type_str())),
        };
        self.resolve_secret(&full, raw).map(Some)
    }

    /// `[store]`'s encryption keys (secrets like the others) and `encrypt_existing`.
    fn store_encryption(&self, t: &Tbl<'_>) -> Result<StoreEncryption, String> {
        let key = self.secret(t, "encryption_key")?;
        let previous = match t.table.get("previous_keys") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let full = format!("{}[{i}]", t.key("previous_keys"));
                    match v {
                        Value::String(raw) => self.resolve_secret(&full, raw),
                        v => Err(format!("{full}: expected a string, found {}", v.type_str())),
                    }
                })
                .collect::<Result<_, _>>()?,
            Some(v) => {
                return Err(t.type_error("previous_keys", "an array of strings", v));
            }
        };
        let encrypt_existing = t.bool("encrypt_existing")?.unwrap_or(false);
        Ok(StoreEncryption {
            key,
            previous,
            encrypt_existing,
        })
    }

    /// A secret's value from its configured form: literal, `env:NAME` or `file:PATH`.
    fn resolve_secret(&self, full: &str, raw: &str) -> Result<Secret, String> {
        let value = if let Some(name) = raw.strip_prefix("env:") {
            if name.is_empty() {
                return Err(format!("{full}: \"env:\" needs a variable name"));
            }
            let value = (self.env)(name)
                .ok_or_else(|| format!("{full}: environment variable {name:?} is not set"))?;
            if value.is_empty() {
                return Err(format!("{full}: environment variable {name:?} is empty"));
            }
            value
        } else if let Some(path) = raw.strip_prefix("file:") {
            if path.is_empty() {
                return Err(format!("{full}: \"file:\" needs a path"));
            }
            let content = std::fs::read_to_string(path)
                .map_err(|e| format!("{full}: cannot read secret file {path:?}: {e}"))?;
            let value = content.trim_end_matches(['\n', '\r']).to_string();
            if value.is_empty() {
                return Err(format!("{full}: secret file {path:?} is empty"));
            }
            value
        } else {
            if raw.is_empty() {
                return Err(format!("{full}: must not be empty"));
            }
            raw.to_string()
        };
        Ok(Secret::new(value))
    }
}

fn upstream(t: &Tbl<'_>) -> Result<UpstreamSettings, String> {
    t.only(&["connect_timeout", "response_timeout", "body_idle_timeout"])?;
    let mut u = UpstreamSettings::default();
    for (key, slot) in [
        ("connect_timeout", &mut u.connect_timeout),
        ("response_timeout", &mut u.response_timeout),
        ("body_idle_timeout", &mut u.body_idle_timeout),
    ] {
        if let Some(d) = t.duration(key)? {
            *slot = d;
        }
    }
    Ok(u)
}

fn store(t: &Tbl<'_>) -> Result<StoreSettings, String> {
    // `path` and `url` are accepted whatever the kind (SPEC 4.2's example lists all three);
    // only the one the kind uses is read.
    t.only(&[
        "kind",
        "path",
        "url",
        "cluster_urls",
        "ca_file",
        "lock_ttl",
        "encryption_key",
        "previous_keys",
        "encrypt_existing",
    ])?;
    let path = t.str("path")?;
    let url = t.str("url")?;
    let lock_ttl = t.duration("lock_ttl")?.unwrap_or(DEFAULT_LOCK_TTL);
    match t.str("kind")?.unwrap_or("memory") {
        "memory" => Ok(StoreSettings::Memory),
        "file" => match path {
            Some(p) if !p.is_empty() => Ok(StoreSettings::File {
                path: PathBuf::from(p),
            }),
            _ => Err("store.path: required when store.kind = \"file\"".into()),
        },
        "redis" => {
            let cluster = t
                .strs("cluster_urls")?
                .map(|urls| urls.into_iter().map(str::to_string).collect::<Vec<_>>());
            let nodes = match (url, cluster) {
                (Some(_), Some(_)) => {
                    return Err("store.cluster_urls: give either store.url (one Redis) or \
                         store.cluster_urls (a Redis Cluster), not both"
                        .into())
                }
                (Some(u), None) if !u.is_empty() => RedisNodes::Single(u.to_string()),
                (None, Some(urls)) => {
                    if urls.is_empty() || urls.iter().any(String::is_empty) {
                        return Err(
                            "store.cluster_urls: must list at least one node URL, none empty"
                                .into(),
                        );
                    }
                    RedisNodes::Cluster(urls)
                }
                _ => {
                    return Err("store.url: required when store.kind = \"redis\" (or \
                         store.cluster_urls for a Redis Cluster)"
                        .into())
                }
            };
            let ca_file = t.str("ca_file")?.map(PathBuf::from);
            Ok(StoreSettings::Redis {
                nodes,
                ca_file,
                lock_ttl,
            })
        }
        other => Err(format!(
            "store.kind: unknown store kind {other:?} (expected \"memory\", \"file\" or \"redis\")"
        )),
    }
}

fn server(t: &Tbl<'_>) -> Result<ServerSettings, String> {
    t.only(&[
        "header_read_timeout",
        "idle_timeout",
        "body_read_timeout",
        "max_connections",
        "workers",
    ])?;
    let mut s = ServerSettings::default();
    for (key, field) in [
        ("header_read_timeout", &mut s.header_read_timeout),
        ("idle_timeout", &mut s.idle_timeout),
        ("body_read_timeout", &mut s.body_read_timeout),
    ] {
        if let Some(d) = t.duration(key)? {
            if d.is_zero() {
                return Err(format!("{}: must be greater than zero", t.key(key)));
            }
            *field = d;
        }
    }
    if let Some(n) = t.int("max_connections")? {
        s.max_connections = u32::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
            format!(
                "server.max_connections: must be between 1 and {}, found {n}",
                u32::MAX
            )
        })? as usize;
    }
    if let Some(n) = t.int("workers")? {
        s.workers = usize::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_WORKERS).contains(n))
            .ok_or_else(|| {
                format!("server.workers: must be between 1 and {MAX_WORKERS}, found {n}")
            })?;
    }
    Ok(s)
}

/// The most `[server] workers` accepted.
pub const MAX_WORKERS: usize = 1024;

fn route(t: &Tbl<'_>) -> Result<Route, String> {
    t.only(&[
        "prefix",
        "upstream",
        "provider",
        "default_account",
        "rate_limit",
        "rewrite_body",
    ])?;
    let prefix = t.required_str("prefix")?.to_string();
    let raw = t.required_str("upstream")?;
    let trimmed = raw.trim_end_matches('/');
    let upstream = trimmed
        .parse::<Uri>()
        .map_err(|_| format!("{}: invalid URL {raw:?}", t.key("upstream")))?;
    let provider = t.provider("provider")?;
    let default_account = t.str("default_account")?.map(str::to_string);
    let rate_limit = match t.str("rate_limit")? {
        None | Some("enforce") => RateLimitMode::Enforce,
        Some("pass") => RateLimitMode::Pass,
        Some(other) => {
            return Err(format!(
                "{}: unknown value {other:?} (expected \"enforce\" or \"pass\")",
                t.key("rate_limit")
            ))
        }
    };
    let rewrite_body = t.bool("rewrite_body")?.unwrap_or(true);
    Ok(Route {
        prefix,
        upstream,
        provider,
        default_account,
        rate_limit,
        rewrite_body,
    })
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("{prefix:?} must start with \"/\""));
    }
    if prefix.len() > 1 && prefix.ends_with('/') {
        return Err(format!("{prefix:?} must not end with \"/\""));
    }
    if prefix.len() > 1 && prefix.contains("//") {
        return Err(format!("{prefix:?} has an empty segment"));
    }
    if prefix
        .chars()
        .any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{prefix:?} must be a plain path (no query, fragment or whitespace)"
        ));
    }
    Ok(())
}

fn check_upstream(uri: &Uri) -> Result<(), String> {
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "{:?}: scheme must be http or https",
                uri.to_string()
            ))
        }
    }
    match uri.authority() {
        Some(a) if !a.host().is_empty() => {
            if a.as_str().contains('@') {
                return Err("credentials in the URL are not allowed".into());
            }
        }
        _ => return Err(format!("{:?}: no host", uri.to_string())),
    }
    if uri.query().is_some() {
        return Err(format!("{:?}: a query is not allowed", uri.to_string()));
    }
    Ok(())
}

fn check_http_url(url: &str) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("invalid URL {:?}", redact_userinfo(url)))?;
    check_upstream(&uri).map_err(|e| {
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            "credentials in the URL are not allowed".to_string()
        } else {
            e
        }
    })
}

/// A webhook receiver: `https`, or `http` on a loopback host (`127.0.0.0/8`, `[::1]`,
/// `localhost`); a host, no credentials, no fragment.
fn check_webhook_url(url: &str) -> Result<(), String> {
    if url.contains('#') {
        return Err(format!(
            "{:?}: a fragment is not allowed",
            redact_userinfo(url)
        ));
    }
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("invalid URL {:?}", redact_userinfo(url)))?;
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(format!("{:?}: no host", redact_userinfo(url)));
    };
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not allowed".into());
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "{url:?}: http is only allowed on a loopback host; use https"
                ))
            }
        }
        _ => Err(format!(
            "{url:?}: scheme must be https (or http on loopback)"
        )),
    }
}

fn check_account_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.contains('/') || id.chars().any(char::is_control) {
        return Err(format!(
            "{id:?} must not contain \"/\" or control characters"
        ));
    }
    Ok(())
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1m30s"`: one or more `<integer><unit>` parts.
fn parse_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (part, unit_len) = if rest.starts_with("ms") {
            (Duration::from_millis(n), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(n), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(n.checked_mul(60)?), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(n.checked_mul(3600)?), 1)
        } else {
            return None;
        };
        rest = &rest[unit_len..];
        total = total.checked_add(part)?;
    }
    Some(total)
}

fn parse_size_value(v: &Value) -> Option<usize> {
    match v {
        Value::Integer(i) => usize::try_from(*i).ok(),
        Value::String(s) => parse_size(s),
        _ => None,
    }
}

/// Parses `"1048576"`, `"512KiB"`, `"1MiB"`, `"2GiB"`; nothing else.
fn parse_size(s: &str) -> Option<usize> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: usize = s[..digits].parse().ok()?;
    let factor = match &s[digits..] {
        "" => 1,
        "KiB" => KIB,
        "MiB" => MIB,
        "GiB" => 1024 * MIB,
        _ => return None,
    };
    n.checked_mul(factor)
}

fn format_size(n: usize) -> String {
    for (unit, size) in [("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", KIB)] {
        if n >= size && n % size == 0 {
            return format!("{} {unit}", n / size);
        }
    }
    format!("{n} bytes")
}

fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let (h, rem) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rem) = (rem / 60_000, rem % 60_000);
    let (s, ms) = (rem / 1000, rem % 1000);
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// `scheme://user:pass@host/…` → `scheme://***@host/…`; anything else unchanged.
fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => return url.to_string(),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SRC: &str = "proxy.toml";
    const BACKEND: &str = "[refresh]\nbackend_url = \"https://backend.flashback.tech\"\n";

    fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_toml_str_with_env(text, SRC, &move |name| map.get(name).cloned())
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_env(text, &[])
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    /// A unique temporary file holding `content`, removed on drop.
    struct TempFile(PathBuf);
    impl TempFile {
        fn new(name: &str, content: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("orp-config-test-{}-{name}", std::process::id()));
            std::fs::write(&path, content).unwrap();
            TempFile(path)
        }
        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn full_example(client_secret_file: &str) -> String {
        format!(
            r#"
listen       = "127.0.0.1:8080"     # proxy listener (default)
admin_listen = "127.0.0.1:9090"     # admin listener (default); "" disables it
admin_token  = "env:ORP_ADMIN_TOKEN"
client_token = "env:ORP_CLIENT_TOKEN"
max_replay_body = "1MiB"

[refresh]
mode          = "backend"
backend_url   = "https://backend.flashback.tech"
backend_token = "env:FLASHBACK_TOKEN"
timeout       = "10s"
max_attempts  = 3
skew          = "60s"
refresh_ahead = "5m"
default_lifetime = "55m"
min_interval  = "45s"
late_answer_window = "3m"

[refresh.google]
client_id     = "…"
client_secret = "env:GOOGLE_CLIENT_SECRET"
token_url     = "https://oauth2.googleapis.com/token"   # default

[refresh.github]
client_id     = "gh-client"
client_secret = "file:{client_secret_file}"

[store]
kind = "memory"
path = "tokens.db"
url  = "redis://127.0.0.1:6379"

[[route]]
prefix   = "/google"
upstream = "https://www.googleapis.com"
provider = "google"
default_account = "alice"

[[route]]
prefix   = "/github"
upstream = "https://api.github.com"
provider = "github"

[[account]]
provider      = "google"
id            = "alice"
refresh_token = "env:ALICE_GOOGLE_REFRESH_TOKEN"
access_token  = "ya29.literal-access-token"
expires_at    = 1767225600

[refresh_api]
enabled = true
token   = "env:ORP_REFRESH_API_TOKEN"
"#
        )
    }

    const FULL_ENV: &[(&str, &str)] = &[
        ("ORP_ADMIN_TOKEN", "admin-secret-value"),
        ("ORP_CLIENT_TOKEN", "client-secret-value"),
        ("FLASHBACK_TOKEN", "backend-secret-value"),
        ("GOOGLE_CLIENT_SECRET", "google-client-secret-value"),
        ("ALICE_GOOGLE_REFRESH_TOKEN", "1//alice-refresh-secret"),
        ("ORP_REFRESH_API_TOKEN", "refresh-api-secret-value"),
    ];

    #[test]
    fn full_spec_example_parses() {
        let file = TempFile::new("gh-secret", "github-client-secret-value\n\n");
        let c = parse_env(&full_example(file.path()), FULL_ENV).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.admin_token.unwrap().expose(), "admin-secret-value");
        assert_eq!(c.client_token.unwrap().expose(), "client-secret-value");
        assert_eq!(c.max_replay_body, 1024 * 1024);
        let r = &c.refresh;
        assert_eq!(r.mode, RefreshMode::Backend);
        assert_eq!(
            r.backend_url.as_deref(),
            Some("https://backend.flashback.tech")
        );
        assert_eq!(
            r.backend_token.as_ref().unwrap().expose(),
            "backend-secret-value"
        );
        assert_eq!(r.timeout, Duration::from_secs(10));
        assert_eq!(r.max_attempts, 3);
        assert_eq!(r.skew, Duration::from_secs(60));
        assert_eq!(r.refresh_ahead, Duration::from_secs(300));
        assert_eq!(r.default_lifetime, Duration::from_secs(55 * 60));
        assert_eq!(r.min_interval, Duration::from_secs(45));
        assert_eq!(r.late_answer_window, Duration::from_secs(180));
        let g = r.google.as_ref().unwrap();
        assert_eq!(g.client_id, "…");
        assert_eq!(g.client_secret.expose(), "google-client-secret-value");
        assert_eq!(g.token_url, GOOGLE_TOKEN_URL);
        let gh = r.github.as_ref().unwrap();
        assert_eq!(gh.client_secret.expose(), "github-client-secret-value");
        assert_eq!(gh.token_url, GITHUB_TOKEN_URL);
        assert_eq!(c.store, StoreSettings::Memory);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].prefix, "/google");
        assert_eq!(c.routes[0].upstream.host(), Some("www.googleapis.com"));
        assert_eq!(c.routes[0].provider, Provider::Google);
        assert_eq!(c.routes[0].default_account.as_deref(), Some("alice"));
        assert_eq!(c.routes[1].provider, Provider::GitHub);
        assert_eq!(c.routes[1].default_account, None);
        assert_eq!(c.accounts.len(), 1);
        let a = &c.accounts[0];
        assert_eq!((a.provider, a.id.as_str()), (Provider::Google, "alice"));
        assert_eq!(a.refresh_token.expose(), "1//alice-refresh-secret");
        assert_eq!(
            a.access_token.as_ref().unwrap().expose(),
            "ya29.literal-access-token"
        );
        assert_eq!(a.expires_at, Some(1_767_225_600));
        assert!(a.token_seed().expires_at.is_some());
        assert_eq!(
            c.refresh_api.unwrap().token.expose(),
            "refresh-api-secret-value"
        );
    }

    #[test]
    fn debug_and_summary_contain_no_secret() {
        let file = TempFile::new("gh-secret-debug", "github-client-secret-value\n");
        let c = parse_env(&full_example(file.path()), FULL_ENV).unwrap();
        let debug = format!("{c:?}");
        let pretty = format!("{c:#?}");
        let summary = c.summary();
        let mut secrets: Vec<&str> = FULL_ENV.iter().map(|(_, v)| *v).collect();
        secrets.push("github-client-secret-value");
        secrets.push("ya29.literal-access-token");
        for out in [&debug, &pretty, &summary] {
            for s in &secrets {
                assert!(!out.contains(s), "{s} leaked into {out}");
            }
        }
        assert!(debug.contains("[redacted]"));
        assert!(summary.contains("google/alice"), "{summary}");
        assert!(summary.contains("/github-uploads") || summary.contains("/github "));
        assert!(summary.contains("refresh_api:     enabled"), "{summary}");
    }

    #[test]
    fn redis_password_hidden_in_debug() {
        let s = StoreSettings::Redis {
            nodes: RedisNodes::Single("redis://:pa55word@redis:6379/0".into()),
            ca_file: None,
            lock_ttl: DEFAULT_LOCK_TTL,
        };
        let d = format!("{s:?}");
        assert!(!d.contains("pa55word"), "{d}");
        assert!(d.contains("redis:6379"), "{d}");
        let s = StoreSettings::Redis {
            nodes: RedisNodes::Cluster(vec![
                "rediss://u:pa55word@r1:7000".into(),
                "rediss://u:pa55word@r2:7000".into(),
            ]),
            ca_file: Some("ca.pem".into()),
            lock_ttl: DEFAULT_LOCK_TTL,
        };
        let d = format!("{s:?}");
        assert!(!d.contains("pa55word"), "{d}");
        assert!(d.contains("r2:7000") && d.contains("ca.pem"), "{d}");
    }

    #[test]
    fn defaults() {
        let c = parse(BACKEND).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert!(c.admin_token.is_none() && c.client_token.is_none());
        assert_eq!(c.max_replay_body, 1 << 20);
        let r = &c.refresh;
        assert_eq!(r.mode, RefreshMode::Backend);
        assert!(r.backend_token.is_none());
        assert_eq!(r.timeout, Duration::from_secs(10));
        assert_eq!(r.max_attempts, 3);
        assert_eq!(r.skew, Duration::from_secs(60));
        assert_eq!(r.refresh_ahead, Duration::from_secs(300));
        assert_eq!(r.default_lifetime, Duration::from_secs(3300));
        assert_eq!(r.min_interval, Duration::from_secs(30));
        assert_eq!(r.late_answer_window, Duration::from_secs(120));
        assert!(c
            .summary()
            .contains("min_interval 30s, late_answer_window 2m"));
        assert!(r.google.is_none() && r.github.is_none());
        assert_eq!(c.store, StoreSettings::Memory);
        assert_eq!(c.routes, Route::defaults());
        assert!(c.accounts.is_empty());
        assert!(c.refresh_api.is_none());
        let summary = c.summary();
        assert!(summary.contains("admin_listen:    127.0.0.1:9090 (admin_token not set)"));
        assert!(summary.contains("max_replay_body: 1 MiB"), "{summary}");
        assert!(
            summary.contains(
                "timeout 10s, max_attempts 3, skew 1m, refresh_ahead 5m, default_lifetime 55m"
            ),
            "{summary}"
        );
    }

    #[test]
    fn server_table() {
        let c = parse(BACKEND).unwrap();
        assert_eq!(c.server, ServerSettings::default());
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(30));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.server.body_read_timeout, Duration::from_secs(30));
        assert_eq!(c.server.max_connections, 10_000);
        assert!(
            c.summary().contains(
                "server:          header_read_timeout 30s, idle_timeout 1m30s, body_read_timeout 30s, max_connections 10000\n"
            ),
            "{}",
            c.summary()
        );

        let c = parse(&format!(
            "{BACKEND}[server]\nheader_read_timeout = \"2s\"\nidle_timeout = \"500ms\"\n\
             body_read_timeout = \"1m\"\nmax_connections = 50\n"
        ))
        .unwrap();
        assert_eq!(
            c.server,
            ServerSettings {
                header_read_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_millis(500),
                body_read_timeout: Duration::from_secs(60),
                max_connections: 50,
                workers: super::super::workers::default_count(),
            }
        );
        assert!(c.summary().contains(
            "header_read_timeout 2s, idle_timeout 500ms, body_read_timeout 1m, max_connections 50"
        ));
        // One key alone leaves the others at their defaults.
        let c = parse(&format!("{BACKEND}[server]\nmax_connections = 1\n")).unwrap();
        assert_eq!(c.server.max_connections, 1);
        let c = parse(&format!("{BACKEND}[server]\nworkers = 3\n")).unwrap();
        assert_eq!(c.server.workers, 3);
        assert!(
            c.summary().contains("workers:         3\n"),
            "{}",
            c.summary()
        );
        for n in [0, -1, 1025] {
            assert_eq!(
                err(&format!("{BACKEND}[server]\nworkers = {n}\n")),
                format!("proxy.toml: server.workers: must be between 1 and 1024, found {n}")
            );
        }
        assert_eq!(c.server.idle_timeout, Duration::from_secs(90));

        let bad = |body: &str| err(&format!("{BACKEND}[server]\n{body}\n"));
        assert_eq!(
            bad("idle_timout = \"1s\""),
            "proxy.toml: unknown key \"idle_timout\" in table server"
        );
        assert_eq!(
            bad("header_read_timeout = \"soon\""),
            "proxy.toml: server.header_read_timeout: invalid duration \"soon\" (expected e.g. \"30s\", \"5m\")"
        );
        assert_eq!(
            bad("idle_timeout = 90"),
            "proxy.toml: server.idle_timeout: expected a string, found integer"
        );
        for key in ["header_read_timeout", "idle_timeout", "body_read_timeout"] {
            assert_eq!(
                bad(&format!("{key} = \"0s\"")),
                format!("proxy.toml: server.{key}: must be greater than zero")
            );
        }
        for n in ["0", "-1", "4294967296"] {
            assert_eq!(
                bad(&format!("max_connections = {n}")),
                format!("proxy.toml: server.max_connections: must be between 1 and 4294967295, found {n}")
            );
        }
        assert_eq!(
            bad("max_connections = \"100\""),
            "proxy.toml: server.max_connections: expected an integer, found string"
        );
        assert_eq!(
            err(&format!("server = 1\n{BACKEND}")),
            "proxy.toml: server: expected a table ([server]), found integer"
        );
    }

    #[test]
    fn empty_file_needs_a_backend_url() {
        assert_eq!(
            err(""),
            "proxy.toml: refresh.backend_url: required when refresh.mode = \"backend\""
        );
    }

    #[test]
    fn admin_listen_empty_disables() {
        let c = parse(&format!("admin_listen = \"\"\n{BACKEND}")).unwrap();
        assert_eq!(c.admin_listen, None);
        assert!(c.summary().contains("admin_listen:    disabled"));
        assert_eq!(
            err(&format!("listen = \"\"\n{BACKEND}")),
            "proxy.toml: listen: invalid socket address \"\" (expected e.g. \"127.0.0.1:8080\")"
        );
        assert_eq!(
            err(&format!("admin_listen = \"127.0.0.1:8080\"\n{BACKEND}")),
            "proxy.toml: admin_listen: 127.0.0.1:8080 is also the proxy's listen address"
        );
    }

    #[test]
    fn default_routes_only_without_route_tables() {
        let c = parse(&format!(
            "{BACKEND}\n[[route]]\nprefix = \"/api\"\nupstream = \"https://example.com/base/\"\nprovider = \"github\"\n"
        ))
        .unwrap();
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].prefix, "/api");
        assert_eq!(c.routes[0].upstream.path(), "/base");
        let d = Route::defaults();
        let got: Vec<_> = d
            .iter()
            .map(|r| (r.prefix.as_str(), r.upstream.host().unwrap(), r.provider))
            .collect();
        assert_eq!(
            got,
            [
                ("/google", "www.googleapis.com", Provider::Google),
                ("/github", "api.github.com", Provider::GitHub),
                ("/github-uploads", "uploads.github.com", Provider::GitHub),
            ]
        );
        assert!(d.iter().all(|r| r.upstream.scheme_str() == Some("https")));
    }

    #[test]
    fn unknown_keys_in_every_table() {
        let route =
            "prefix = \"/a\"\nupstream = \"https://api.github.com\"\nprovider = \"github\"\n";
        let account = "provider = \"github\"\nid = \"bob\"\nrefresh_token = \"r\"\n";
        let creds = "client_id = \"c\"\nclient_secret = \"s\"\n";
        let cases = [
            (
                "listne = \"127.0.0.1:8080\"".to_string(),
                "unknown key \"listne\" in table root",
            ),
            (
                format!("{BACKEND}tiemout = \"5s\""),
                "unknown key \"tiemout\" in table refresh",
            ),
            (
                format!("{BACKEND}[refresh.google]\n{creds}secret = \"s\""),
                "unknown key \"secret\" in table refresh.google",
            ),
            (
                format!("{BACKEND}[refresh.github]\n{creds}tokenurl = \"x\""),
                "unknown key \"tokenurl\" in table refresh.github",
            ),
            (
                format!("{BACKEND}[store]\nkind = \"memory\"\npth = \"x\""),
                "unknown key \"pth\" in table store",
            ),
            (
                format!("{BACKEND}[[route]]\n{route}[[route]]\n{route}x = 1"),
                "unknown key \"x\" in table route[1]",
            ),
            (
                format!("{BACKEND}[[account]]\n{account}expires = 1"),
                "unknown key \"expires\" in table account[0]",
            ),
            (
                format!("{BACKEND}[refresh_api]\nenabled = false\ntokn = \"t\""),
                "unknown key \"tokn\" in table refresh_api",
            ),
            (
                format!("{BACKEND}[routes]\nprefix = \"/a\""),
                "unknown key \"routes\" in table root",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(err(&text), format!("proxy.toml: {want}"), "{text}");
        }
    }

    #[test]
    fn syntax_error_is_one_line_with_position() {
        let e = err("listen = \"127.0.0.1:8080\"\nadmin_listen = \"unterminated\n");
        assert!(
            e.starts_with("proxy.toml: TOML syntax error at line 2, column "),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(
            err("listen = \"127.0.0.1:8080\"\nadmin_listen = \"unterminated\n"),
            "proxy.toml: TOML syntax error at line 2, column 29: invalid basic string, expected `\"`"
        );
        assert_eq!(
            err("a = 1\na = 2\n"),
            "proxy.toml: TOML syntax error at line 2, column 1: duplicate key \"a\""
        );
        assert_eq!(
            err("[refresh]\ntimeout = \"1s\"\n\"timeout\" = \"2s\"\n"),
            "proxy.toml: TOML syntax error at line 3, column 1: duplicate key \"timeout\""
        );
        assert_eq!(
            err("[refresh\n"),
            "proxy.toml: TOML syntax error at line 1, column 9: unclosed table, expected `]`"
        );
        // A secret on a broken line never reaches the message.
        let e = err("admin_token = \"hunter2-secret\" x\n");
        assert!(!e.contains("hunter2-secret"), "{e}");
    }

    #[test]
    fn type_errors_name_the_key() {
        assert_eq!(
            err("listen = 8080"),
            "proxy.toml: listen: expected a string, found integer"
        );
        assert_eq!(
            err(&format!("{BACKEND}max_attempts = \"3\"")),
            "proxy.toml: refresh.max_attempts: expected an integer, found string"
        );
        assert_eq!(
            err("refresh = 1"),
            "proxy.toml: refresh: expected a table ([refresh]), found integer"
        );
        assert_eq!(
            err("route = 1"),
            "proxy.toml: route: expected an array of tables ([[route]]), found integer"
        );
        assert_eq!(
            err(&format!(
                "{BACKEND}[[route]]\nprefix = \"/a\"\nprovider = \"github\""
            )),
            "proxy.toml: missing key \"upstream\" in table route[0]"
        );
        assert_eq!(
            err(&format!("{BACKEND}[[route]]\nprefix = \"/a\"\nupstream = \"https://x\"\nprovider = \"gitlab\"")),
            "proxy.toml: route[0].provider: unknown provider \"gitlab\" (expected \"google\" or \"github\")"
        );
        assert_eq!(
            err(&format!("{BACKEND}mode = \"magic\"")),
            "proxy.toml: refresh.mode: unknown mode \"magic\" (expected \"backend\" or \"direct\")"
        );
        assert_eq!(
            err("admin_token = 5"),
            "proxy.toml: admin_token: expected a string, found integer"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            err("[refresh]\ntimeout = \"5 minutes\""),
            "proxy.toml: refresh.timeout: invalid duration \"5 minutes\" (expected e.g. \"30s\", \"5m\")"
        );
        for bad in [
            "", "5", "s", "1.5s", "-1s", "5d", "5M", " 5s", "5s ", "1m30",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
            let e = err(&format!("{BACKEND}skew = {bad:?}"));
            assert_eq!(
                e,
                format!("proxy.toml: refresh.skew: invalid duration {bad:?} (expected e.g. \"30s\", \"5m\")")
            );
        }
        assert_eq!(
            err(&format!("{BACKEND}skew = 30")),
            "proxy.toml: refresh.skew: expected a string, found integer"
        );
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1h2m3s4ms"),
            Some(Duration::from_millis(3_723_004))
        );
        assert_eq!(parse_duration("99999999999999999999h"), None);
        let c = parse(&format!(
            "{BACKEND}timeout = \"1m30s\"\nrefresh_ahead = \"0s\""
        ))
        .unwrap();
        assert_eq!(c.refresh.timeout, Duration::from_secs(90));
        assert_eq!(c.refresh.refresh_ahead, Duration::ZERO);
        assert_eq!(
            err(&format!("{BACKEND}timeout = \"0s\"")),
            "proxy.toml: refresh.timeout: must be greater than zero"
        );
        assert_eq!(format_duration(Duration::from_millis(90_500)), "1m30s500ms");
    }

    #[test]
    fn max_attempts_at_least_one() {
        assert_eq!(
            err(&format!("{BACKEND}max_attempts = 0")),
            "proxy.toml: refresh.max_attempts: must be at least 1, found 0"
        );
        assert_eq!(
            err(&format!("{BACKEND}max_attempts = -2")),
            "proxy.toml: refresh.max_attempts: must be at least 1, found -2"
        );
        assert_eq!(
            parse(&format!("{BACKEND}max_attempts = 1"))
                .unwrap()
                .refresh
                .max_attempts,
            1
        );
    }

    #[test]
    fn sizes() {
        let size = |v: &str| {
            parse(&format!("max_replay_body = {v}\n{BACKEND}")).map(|c| c.max_replay_body)
        };
        assert_eq!(size("\"512KiB\"").unwrap(), 512 * 1024);
        assert_eq!(size("\"1048576\"").unwrap(), 1_048_576);
        assert_eq!(size("1048576").unwrap(), 1_048_576);
        assert_eq!(size("\"2MiB\"").unwrap(), 2 << 20);
        assert_eq!(size("\"1GiB\"").unwrap(), 1 << 30);
        assert_eq!(size("0").unwrap(), 0);
        for bad in [
            "1MB", "1.5MiB", "1 MiB", "MiB", "1mib", "1KB", "-1", "1e6", "",
        ] {
            assert_eq!(
                size(&format!("{bad:?}")).unwrap_err().to_string(),
                format!("proxy.toml: max_replay_body: invalid size {bad:?} (expected bytes as an integer, or e.g. \"512KiB\", \"1MiB\")")
            );
        }
        assert_eq!(
            size("-1").unwrap_err().to_string(),
            "proxy.toml: max_replay_body: invalid size -1 (expected a non-negative number of bytes)"
        );
        assert_eq!(
            size("1.5").unwrap_err().to_string(),
            "proxy.toml: max_replay_body: expected an integer or a string, found float"
        );
        assert_eq!(format_size(512 * 1024), "512 KiB");
        assert_eq!(format_size(1000), "1000 bytes");
    }

    #[test]
    fn missing_env_var_names_the_variable() {
        let e = parse_env(
            &format!("admin_token = \"env:ORP_TEST_NOT_SET_4C1\"\n{BACKEND}"),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "proxy.toml: admin_token: environment variable \"ORP_TEST_NOT_SET_4C1\" is not set"
        );
        let e = parse_env(
            &format!("admin_token = \"env:EMPTY\"\n{BACKEND}"),
            &[("EMPTY", "")],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "proxy.toml: admin_token: environment variable \"EMPTY\" is empty"
        );
        assert_eq!(
            err(&format!("admin_token = \"env:\"\n{BACKEND}")),
            "proxy.toml: admin_token: \"env:\" needs a variable name"
        );
        assert_eq!(
            err(&format!("admin_token = \"\"\n{BACKEND}")),
            "proxy.toml: admin_token: must not be empty"
        );
        // The real process environment is used by from_toml_str.
        let e = Config::from_toml_str(
            &format!("client_token = \"env:ORP_TEST_SURELY_UNSET_9F2\"\n{BACKEND}"),
            SRC,
        )
        .unwrap_err();
        assert!(e
            .to_string()
            .contains("\"ORP_TEST_SURELY_UNSET_9F2\" is not set"));
    }

    #[test]
    fn file_secret_is_trimmed_and_errors_name_the_path() {
        let f = TempFile::new("client-token", "file-secret-value\r\n\n");
        let c = parse(&format!("client_token = \"file:{}\"\n{BACKEND}", f.path())).unwrap();
        assert_eq!(c.client_token.unwrap().expose(), "file-secret-value");

        let inner = TempFile::new("inner-space", "  spaced value  \n");
        let c = parse(&format!(
            "client_token = \"file:{}\"\n{BACKEND}",
            inner.path()
        ))
        .unwrap();
        assert_eq!(c.client_token.unwrap().expose(), "  spaced value  ");

        let missing = "/nonexistent/orp/secret";
        let e = err(&format!(
            "{BACKEND}[[account]]\nprovider = \"google\"\nid = \"a\"\nrefresh_token = \"file:{missing}\""
        ));
        assert!(
            e.starts_with(
                "proxy.toml: account[0].refresh_token: cannot read secret file \"/nonexistent/orp/secret\": "
            ),
            "{e}"
        );
        let empty = TempFile::new("empty", "\n");
        assert_eq!(
            err(&format!(
                "client_token = \"file:{}\"\n{BACKEND}",
                empty.path()
            )),
            format!(
                "proxy.toml: client_token: secret file {:?} is empty",
                empty.path()
            )
        );
    }

    #[test]
    fn non_loopback_listeners_need_tokens() {
        assert_eq!(
            err(&format!("listen = \"0.0.0.0:8080\"\n{BACKEND}")),
            "proxy.toml: listen: 0.0.0.0:8080 is not a loopback address; set client_token to expose the proxy"
        );
        assert_eq!(
            err(&format!("admin_listen = \"[::]:9090\"\n{BACKEND}")),
            "proxy.toml: admin_listen: [::]:9090 is not a loopback address; set admin_token to expose the admin listener"
        );
        let c = parse(&format!(
            "listen = \"0.0.0.0:8080\"\nclient_token = \"c\"\nadmin_listen = \"[::]:9090\"\nadmin_token = \"a\"\n{BACKEND}"
        ))
        .unwrap();
        assert!(!c.listen.ip().is_loopback());
        // IPv6 loopback needs no token; a disabled admin listener needs none either.
        parse(&format!(
            "listen = \"[::1]:8080\"\nadmin_listen = \"\"\n{BACKEND}"
        ))
        .unwrap();
        // validate() re-checks after a command-line override.
        let mut c = parse(BACKEND).unwrap();
        c.admin_listen = Some("10.0.0.1:9090".parse().unwrap());
        assert!(c
            .validate("cli")
            .unwrap_err()
            .to_string()
            .starts_with("cli: admin_listen: 10.0.0.1:9090"));
    }

    #[test]
    fn refresh_modes() {
        assert_eq!(
            err("[refresh]\nmode = \"direct\""),
            "proxy.toml: refresh.mode: \"direct\" needs [refresh.google] or [refresh.github] credentials"
        );
        let c = parse("[refresh]\nmode = \"direct\"\n[refresh.github]\nclient_id = \"c\"\nclient_secret = \"s\"").unwrap();
        assert_eq!(c.refresh.mode, RefreshMode::Direct);
        assert!(c.refresh.backend_url.is_none());
        assert_eq!(
            c.refresh.credentials(Provider::GitHub).unwrap().token_url,
            GITHUB_TOKEN_URL
        );
        assert_eq!(
            err("[refresh]\nbackend_url = \"ftp://backend\""),
            "proxy.toml: refresh.backend_url: \"ftp://backend/\": scheme must be http or https"
        );
        assert_eq!(
            err("[refresh]\nbackend_url = \"not a url\""),
            "proxy.toml: refresh.backend_url: invalid URL \"not a url\""
        );
        let e = err("[refresh]\nbackend_url = \"https://user:pw-secret@backend\"");
        assert_eq!(
            e,
            "proxy.toml: refresh.backend_url: credentials in the URL are not allowed"
        );
        assert_eq!(
            err(&format!("{BACKEND}[refresh.google]\nclient_id = \"c\"")),
            "proxy.toml: missing key \"client_secret\" in table refresh.google"
        );
        assert_eq!(
            err(&format!("{BACKEND}[refresh.google]\nclient_id = \"c\"\nclient_secret = \"s\"\ntoken_url = \"nope\"")),
            "proxy.toml: refresh.google.token_url: \"nope\": scheme must be http or https"
        );
    }

    const CREDS: &str = "[refresh.google]\nclient_id = \"c\"\nclient_secret = \"s\"\n";

    #[test]
    fn webhooks() {
        use crate::HealthChange;
        let hook = |body: &str| format!("{BACKEND}[[webhook]]\n{body}");
        // Defaults: every event, 5 min max backoff; the secret from the environment.
        let c = parse_env(
            &hook("url = \"https://ops.example/hooks/orp?x=1\"\nsecret = \"env:HOOK_SECRET\""),
            &[("HOOK_SECRET", "hook-secret-value")],
        )
        .unwrap();
        let h = &c.webhooks[0];
        assert_eq!(h.secret.expose(), "hook-secret-value");
        assert_eq!(
            h.events,
            vec![
                HealthChange::NeedsReauth,
                HealthChange::Failing,
                HealthChange::Recovered
            ]
        );
        assert_eq!(h.max_backoff, DEFAULT_WEBHOOK_MAX_BACKOFF);
        let summary = c.summary();
        assert!(
            summary.contains("webhooks (1):\n  https://ops.example/hooks/orp (needs_reauth, refresh_failing, refresh_recovered; secret set, max_backoff 5m)"),
            "{summary}"
        );
        assert!(!format!("{c:?}{summary}").contains("hook-secret-value"));
        // A subset, repeated names once, a small backoff; http on every loopback spelling.
        for url in [
            "http://127.0.0.1:9/h",
            "http://localhost/h",
            "http://[::1]:8080/h",
        ] {
            let c = parse(&hook(&format!(
                "url = \"{url}\"\nsecret = \"s\"\nevents = [\"refresh_recovered\", \"needs_reauth\", \"needs_reauth\"]\nmax_backoff = \"200ms\""
            )))
            .unwrap();
            assert_eq!(
                c.webhooks[0].events,
                vec![HealthChange::Recovered, HealthChange::NeedsReauth]
            );
            assert_eq!(c.webhooks[0].max_backoff, Duration::from_millis(200));
        }
        // Errors.
        for (body, expected) in [
            ("url = \"http://ops.example/h\"\nsecret = \"s\"", "webhook[0].url: \"http://ops.example/h\": http is only allowed on a loopback host; use https"),
            ("url = \"http://10.0.0.1/h\"\nsecret = \"s\"", "webhook[0].url: \"http://10.0.0.1/h\": http is only allowed on a loopback host; use https"),
            ("url = \"ftp://ops.example/h\"\nsecret = \"s\"", "webhook[0].url: \"ftp://ops.example/h\": scheme must be https (or http on loopback)"),
            ("url = \"https://u:pw@ops.example/h\"\nsecret = \"s\"", "webhook[0].url: credentials in the URL are not allowed"),
            ("url = \"/h\"\nsecret = \"s\"", "webhook[0].url: \"/h\": no host"),
            ("url = \"https://ops.example/h\"", "missing key \"secret\" in table webhook[0]"),
            ("secret = \"s\"", "missing key \"url\" in table webhook[0]"),
            ("url = \"https://o.example\"\nsecret = \"s\"\nevents = [\"needs_reauth\", \"token_expired\"]", "webhook[0].events: unknown event \"token_expired\" (expected \"needs_reauth\", \"refresh_failing\" or \"refresh_recovered\")"),
            ("url = \"https://o.example\"\nsecret = \"s\"\nevents = []", "webhook[0].events: must name at least one event"),
            ("url = \"https://o.example\"\nsecret = \"s\"\nevents = \"needs_reauth\"", "webhook[0].events: expected an array of strings, found string"),
            ("url = \"https://o.example\"\nsecret = \"s\"\nevents = [1]", "webhook[0].events: expected an array of strings, found an array holding integer"),
            ("url = \"https://o.example\"\nsecret = \"s\"\nmax_backoff = \"0s\"", "webhook[0].max_backoff: must be greater than zero"),
            ("url = \"https://o.example\"\nsecret = \"s\"\nretries = 3", "unknown key \"retries\" in table webhook[0]"),
            ("url = \"https://o.example\"\nsecret = \"env:UNSET_HOOK_SECRET\"", "webhook[0].secret: environment variable \"UNSET_HOOK_SECRET\" is not set"),
        ] {
            assert_eq!(err(&hook(body)), format!("{SRC}: {expected}"), "{body}");
        }
    }

    #[test]
    fn refresh_api_rules() {
        // Disabled: None, and its token is not resolved.
        let c = parse(&format!(
            "{BACKEND}[refresh_api]\nenabled = false\ntoken = \"env:UNSET_X\""
        ))
        .unwrap();
        assert!(c.refresh_api.is_none());
        // Token required.
        assert_eq!(
            err(&format!("{BACKEND}{CREDS}[refresh_api]\nenabled = true")),
            "proxy.toml: refresh_api.token: required when refresh_api.enabled = true"
        );
        // Credentials required.
        assert_eq!(
            err(&format!("{BACKEND}[refresh_api]\nenabled = true\ntoken = \"t\"")),
            "proxy.toml: refresh_api: enabled, but neither [refresh.google] nor [refresh.github] credentials are configured"
        );
        let c = parse(&format!(
            "{BACKEND}{CREDS}[refresh_api]\nenabled = true\ntoken = \"t\""
        ))
        .unwrap();
        assert_eq!(c.refresh_api.unwrap().token.expose(), "t");
        // Conflicting route prefixes.
        for prefix in ["/", "/auth", "/auth/x"] {
            let text = format!(
                "{BACKEND}{CREDS}[[route]]\nprefix = \"{prefix}\"\nupstream = \"https://api.github.com\"\nprovider = \"github\"\n[refresh_api]\nenabled = true\ntoken = \"t\""
            );
            assert_eq!(
                err(&text),
                format!("proxy.toml: route[0].prefix: {prefix:?} conflicts with the refresh API (POST /auth/{{provider}}/refresh) while [refresh_api] is enabled")
            );
            // Fine while disabled.
            parse(&text.replace("enabled = true", "enabled = false")).unwrap();
        }
        // "/authx" is another segment.
        parse(&format!(
            "{BACKEND}{CREDS}[[route]]\nprefix = \"/authx\"\nupstream = \"https://api.github.com\"\nprovider = \"github\"\n[refresh_api]\nenabled = true\ntoken = \"t\""
        ))
        .unwrap();
        assert_eq!(
            err(&format!("{BACKEND}[refresh_api]\nenabled = \"yes\"")),
            "proxy.toml: refresh_api.enabled: expected true or false, found string"
        );
    }

    #[test]
    fn store_kinds() {
        let c = Config::from_toml_str_with_env(
            &format!("{BACKEND}[store]\nkind = \"file\"\npath = \"tokens.db\""),
            "proxy.toml",
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            c.store,
            StoreSettings::File {
                path: "tokens.db".into()
            }
        );
        let c = Config::from_toml_str_with_env(
            &format!("{BACKEND}[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nlock_ttl = \"45s\""),
            "proxy.toml",
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            c.store,
            StoreSettings::Redis {
                nodes: RedisNodes::Single("redis://127.0.0.1:6379".into()),
                ca_file: None,
                lock_ttl: Duration::from_secs(45)
            }
        );
        assert_eq!(
            err(&format!(
                "{BACKEND}[store]\nkind = \"redis\"\nurl = \"redis://r\"\nlock_ttl = \"5s\""
            )),
            "proxy.toml: store.lock_ttl: 5s must exceed refresh.timeout (10s)"
        );
        let c = Config::from_toml_str_with_env(
            &format!(
                "{BACKEND}[store]\nkind = \"redis\"\ncluster_urls = [\"rediss://r1:7000\", \"rediss://r2:7000\"]\nca_file = \"ca.pem\""
            ),
            "proxy.toml",
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            c.store,
            StoreSettings::Redis {
                nodes: RedisNodes::Cluster(vec![
                    "rediss://r1:7000".into(),
                    "rediss://r2:7000".into()
                ]),
                ca_file: Some("ca.pem".into()),
                lock_ttl: DEFAULT_LOCK_TTL,
            }
        );
        for (store, message) in [
            (
                "url = \"redis://r\"\ncluster_urls = [\"redis://r:7000\"]",
                "store.cluster_urls: give either store.url (one Redis) or store.cluster_urls (a Redis Cluster), not both",
            ),
            (
                "cluster_urls = []",
                "store.cluster_urls: must list at least one node URL, none empty",
            ),
            (
                "cluster_urls = [\"redis://r:7000\", 7001]",
                "store.cluster_urls: expected an array of strings, found an array holding integer",
            ),
            (
                "cluster_urls = [\"redis://r:7000\", \"rediss://r:7001\"]",
                "store.cluster_urls: mixes rediss:// (TLS) and redis:// URLs",
            ),
            (
                "url = \"redis://r\"\nca_file = \"ca.pem\"",
                "store.ca_file: applies to rediss:// (TLS) URLs only",
            ),
            (
                "",
                "store.url: required when store.kind = \"redis\" (or store.cluster_urls for a Redis Cluster)",
            ),
        ] {
            assert_eq!(
                err(&format!("{BACKEND}[store]\nkind = \"redis\"\n{store}")),
                format!("proxy.toml: {message}"),
                "{store}"
            );
        }
        assert_eq!(
            err(&format!("{BACKEND}[store]\nkind = \"file\"")),
            "proxy.toml: store.path: required when store.kind = \"file\""
        );
        assert_eq!(
            err(&format!("{BACKEND}[store]\nkind = \"sqlite\"")),
            "proxy.toml: store.kind: unknown store kind \"sqlite\" (expected \"memory\", \"file\" or \"redis\")"
        );
        // Parsing (without validation) keeps all three kinds.
        let table: Table = "[store]\nkind = \"file\"\npath = \"t.db\"".parse().unwrap();
        let c = Parser { env: &|_| None }.config(&table).unwrap();
        assert_eq!(
            c.store,
            StoreSettings::File {
                path: "t.db".into()
            }
        );
        let table: Table = "[store]\nkind = \"redis\"\nurl = \"redis://r\""
            .parse()
            .unwrap();
        let c = Parser { env: &|_| None }.config(&table).unwrap();
        assert_eq!(
            c.store,
            StoreSettings::Redis {
                nodes: RedisNodes::Single("redis://r".into()),
                ca_file: None,
                lock_ttl: DEFAULT_LOCK_TTL,
            }
        );
    }

    fn account(provider: &str, id: &str) -> String {
        format!("[[account]]\nprovider = \"{provider}\"\nid = \"{id}\"\nrefresh_token = \"r\"\n")
    }

    #[test]
    fn accounts() {
        let c = parse(&format!(
            "{BACKEND}{}{}",
            account("google", "alice"),
            account("github", "alice")
        ))
        .unwrap();
        assert_eq!(c.accounts.len(), 2);
        assert_eq!(
            err(&format!(
                "{BACKEND}{}{}",
                account("google", "alice"),
                account("google", "alice")
            )),
            "proxy.toml: account[1]: duplicate account google/alice"
        );
        assert_eq!(
            err(&format!("{BACKEND}{}", account("google", ""))),
            "proxy.toml: account[0].id: must not be empty"
        );
        assert_eq!(
            err(&format!("{BACKEND}{}", account("google", "a/b"))),
            "proxy.toml: account[0].id: \"a/b\" must not contain \"/\" or control characters"
        );
        assert_eq!(
            err(&format!(
                "{BACKEND}[[account]]\nprovider = \"google\"\nid = \"a\""
            )),
            "proxy.toml: missing key \"refresh_token\" in table account[0]"
        );
        assert_eq!(
            err(&format!(
                "{BACKEND}{}expires_at = -5",
                account("google", "a")
            )),
            "proxy.toml: account[0].expires_at: must be unix seconds (non-negative), found -5"
        );
    }

    fn route_with(prefix: &str, upstream: &str) -> String {
        format!(
            "[[route]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nprovider = \"github\"\n"
        )
    }

    #[test]
    fn route_rewrite_body() {
        let on = parse(&format!(
            "{BACKEND}{}",
            route_with("/g", "https://x.example")
        ))
        .unwrap();
        assert!(on.routes[0].rewrite_body, "on by default");
        assert!(!on.summary().contains("JSON bodies not rewritten"));
        let off = parse(&format!(
            "{BACKEND}{}rewrite_body = false\n",
            route_with("/g", "https://x.example")
        ))
        .unwrap();
        assert!(!off.routes[0].rewrite_body);
        assert!(off
            .summary()
            .contains("/g               -> https://x.example (github, JSON bodies not rewritten)"));
        assert_eq!(
            err(&format!(
                "{BACKEND}{}rewrite_body = \"no\"\n",
                route_with("/g", "https://x.example")
            )),
            "proxy.toml: route[0].rewrite_body: expected true or false, found string"
        );
        assert!(Route::defaults().iter().all(|r| r.rewrite_body));
    }

    #[test]
    fn route_rules() {
        let ok = |p: &str| {
            parse(&format!(
                "{BACKEND}{}",
                route_with(p, "https://api.github.com")
            ))
        };
        ok("/").unwrap();
        ok("/a/b").unwrap();
        for (prefix, why) in [
            ("github", "\"github\" must start with \"/\""),
            ("/github/", "\"/github/\" must not end with \"/\""),
            ("/a//b", "\"/a//b\" has an empty segment"),
            (
                "/a b",
                "\"/a b\" must be a plain path (no query, fragment or whitespace)",
            ),
            (
                "/a?b",
                "\"/a?b\" must be a plain path (no query, fragment or whitespace)",
            ),
        ] {
            assert_eq!(
                ok(prefix).unwrap_err().to_string(),
                format!("proxy.toml: route[0].prefix: {why}")
            );
        }
        assert_eq!(
            err(&format!(
                "{BACKEND}{}{}",
                route_with("/g", "https://api.github.com"),
                route_with("/g", "https://uploads.github.com")
            )),
            "proxy.toml: route[1].prefix: duplicate prefix \"/g\""
        );
        let up = |u: &str| parse(&format!("{BACKEND}{}", route_with("/g", u)));
        assert_eq!(
            up("http://127.0.0.1:9000").unwrap().routes[0]
                .upstream
                .port_u16(),
            Some(9000)
        );
        assert_eq!(
            up("https://h.example/v3/").unwrap().routes[0]
                .upstream
                .path(),
            "/v3"
        );
        assert_eq!(
            up("ftp://h.example").unwrap_err().to_string(),
            "proxy.toml: route[0].upstream: \"ftp://h.example/\": scheme must be http or https"
        );
        assert_eq!(
            up("/just/a/path").unwrap_err().to_string(),
            "proxy.toml: route[0].upstream: \"/just/a/path\": scheme must be http or https"
        );
        assert_eq!(
            up("https://h.example/?q=1").unwrap_err().to_string(),
            "proxy.toml: route[0].upstream: \"https://h.example/?q=1\": a query is not allowed"
        );
        assert_eq!(
            up("https://u:p@h.example").unwrap_err().to_string(),
            "proxy.toml: route[0].upstream: credentials in the URL are not allowed"
        );
        assert_eq!(
            up("not a url").unwrap_err().to_string(),
            "proxy.toml: route[0].upstream: invalid URL \"not a url\""
        );
        assert_eq!(
            err(&format!(
                "{BACKEND}{}default_account = \"\"",
                route_with("/g", "https://x.example")
            )),
            "proxy.toml: route[0].default_account: must not be empty"
        );
    }

    #[test]
    fn route_rate_limit_is_enforce_or_pass() {
        let with = |v: &str| format!("{BACKEND}{}{v}", route_with("/g", "https://api.github.com"));
        assert_eq!(
            parse(&with("")).unwrap().routes[0].rate_limit,
            RateLimitMode::Enforce
        );
        assert_eq!(
            parse(&with("rate_limit = \"enforce\"")).unwrap().routes[0].rate_limit,
            RateLimitMode::Enforce
        );
        let pass = parse(&with("rate_limit = \"pass\"")).unwrap();
        assert_eq!(pass.routes[0].rate_limit, RateLimitMode::Pass);
        assert!(
            pass.summary().contains("rate_limit pass"),
            "{}",
            pass.summary()
        );
        assert_eq!(
            err(&with("rate_limit = \"off\"")),
            "proxy.toml: route[0].rate_limit: unknown value \"off\" (expected \"enforce\" or \"pass\")"
        );
        assert_eq!(
            err(&with("rate_limit = false")),
            "proxy.toml: route[0].rate_limit: expected a string, found boolean"
        );
        assert!(Route::defaults()
            .iter()
            .all(|r| r.rate_limit == RateLimitMode::Enforce));
    }

    #[test]
    fn load_reads_a_file_and_names_it() {
        let f = TempFile::new("load.toml", BACKEND);
        let c = Config::load(Path::new(f.path())).unwrap();
        assert_eq!(
            c.refresh.backend_url.as_deref(),
            Some("https://backend.flashback.tech")
        );
        let bad = TempFile::new("bad.toml", "listne = 1\n");
        assert_eq!(
            Config::load(Path::new(bad.path())).unwrap_err().to_string(),
            format!("{}: unknown key \"listne\" in table root", bad.path())
        );
        let e = Config::load(Path::new("/nonexistent/proxy.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/proxy.toml: cannot read config file: "),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn upstream_table() {
        let c = parse(BACKEND).unwrap();
        assert_eq!(c.upstream, UpstreamSettings::default());
        assert!(
            c.summary().contains(
                "upstream:        connect_timeout 10s, response_timeout 1m, body_idle_timeout 1m"
            ),
            "{}",
            c.summary()
        );
        let c = parse(&format!(
            "{BACKEND}[upstream]\nconnect_timeout = \"1500ms\"\nresponse_timeout = \"2m30s\"\nbody_idle_timeout = \"5s\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.upstream,
            UpstreamSettings {
                connect_timeout: Duration::from_millis(1500),
                response_timeout: Duration::from_secs(150),
                body_idle_timeout: Duration::from_secs(5),
            }
        );
        assert!(c.summary().contains(
            "upstream:        connect_timeout 1s500ms, response_timeout 2m30s, body_idle_timeout 5s"
        ));
        // Only the keys set change.
        let c = parse(&format!("{BACKEND}[upstream]\nresponse_timeout = \"1s\"\n")).unwrap();
        assert_eq!(c.upstream.response_timeout, Duration::from_secs(1));
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.upstream.body_idle_timeout, Duration::from_secs(60));

        assert_eq!(
            err(&format!("{BACKEND}[upstream]\nresponse_timout = \"1s\"\n")),
            "proxy.toml: unknown key \"response_timout\" in table upstream"
        );
        assert_eq!(
            err(&format!("{BACKEND}[upstream]\nconnect_timeout = \"ten seconds\"\n")),
            "proxy.toml: upstream.connect_timeout: invalid duration \"ten seconds\" (expected e.g. \"30s\", \"5m\")"
        );
        assert_eq!(
            err(&format!("{BACKEND}[upstream]\nbody_idle_timeout = 60\n")),
            "proxy.toml: upstream.body_idle_timeout: expected a string, found integer"
        );
        for key in ["connect_timeout", "response_timeout", "body_idle_timeout"] {
            assert_eq!(
                err(&format!("{BACKEND}[upstream]\n{key} = \"0s\"\n")),
                format!("proxy.toml: upstream.{key}: must be greater than zero")
            );
        }
        assert_eq!(
            err(&format!("upstream = 5\n{BACKEND}")),
            "proxy.toml: upstream: expected a table ([upstream]), found integer"
        );
    }

    #[test]
    fn redact_userinfo_works() {
        assert_eq!(
            redact_userinfo("redis://:pw@h:6379/0"),
            "redis://***@h:6379/0"
        );
        assert_eq!(redact_userinfo("https://h/a@b"), "https://h/a@b");
        assert_eq!(redact_userinfo("plain"), "plain");
    }
}
