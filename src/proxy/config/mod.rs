//! The sidecar's TOML configuration (SPEC 4.2).
//!
//! [`Config::load`] reads a file, [`Config::from_toml_str`] parses text; both resolve secrets,
//! apply defaults and run [`Config::validate`], so a `Config` you get back is ready to serve.
//!
//! # How it is read
//!
//! One module a job: `settings` (the public types, one per table, with their defaults),
//! `walk` (the TOML walker: typed reads by key, unknown keys, syntax errors), `read` (each
//! table into its settings), `secrets` (`env:` / `file:` values), `values` (durations, sizes,
//! prefixes, account ids, URLs), `validate` (rules spanning several values) and `summary`
//! (the `check-config` text).
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

mod read;
mod secrets;
mod settings;
mod summary;
mod validate;
mod values;
mod walk;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_reading;
#[cfg(test)]
mod tests_refresh;
#[cfg(test)]
mod tests_routes;
#[cfg(test)]
mod tests_store;

use std::net::SocketAddr;
use std::path::Path;

use toml::Table;

use crate::Secret;
use read::Parser;
use values::MIB;
use walk::syntax_error;

pub use settings::{
    AccountSeed, ProviderCredentials, RateLimitMode, RefreshApiSettings, RefreshMode,
    RefreshSettings, Route, ServerSettings, StoreEncryption, StoreSettings, UpstreamSettings,
    WebhookSettings, DEFAULT_LOCK_TTL, DEFAULT_WEBHOOK_MAX_BACKOFF, GITHUB_TOKEN_URL,
    GOOGLE_TOKEN_URL, MAX_WORKERS,
};

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
}
