//! Assembling the sidecar from a [`Config`]: the token cache, the proxy, the admin listener,
//! the metrics, the webhooks ([`webhook`](super::webhook)), the listeners' limits
//! ([`listener`]), and their lifecycle (SPEC 4.8).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::admin::{self, AdminState};
use super::config::{Config, RefreshMode, RefreshSettings, StoreEncryption, StoreSettings};
use super::listener::{self, serve, serve_on, Limits};
use super::metrics::Metrics;
use super::refresh_api::RefreshApi;
use super::server::Proxy;
use super::timeouts::ProxyTimeouts;
use super::webhook::Webhooks;
use super::workers::Workers;
use crate::refresh::{
    BackendRefresher, DirectRefresher, GitHubRefresher, GoogleRefresher, Refresher, RetryPolicy,
};
use crate::store::redis::{
    has_pem_certificate, RedisNodes, RedisOptions, RedisStore, NO_PEM_CERTIFICATE,
};
use crate::store::{file::FileStore, Store};
use crate::{Provider, Tokens};

/// Opens the store `settings` names, sealing tokens as `encryption` says; `None` for the
/// memory store.
pub async fn open_store(
    settings: &StoreSettings,
    encryption: &StoreEncryption,
) -> Result<Option<Arc<dyn Store>>, SetupError> {
    let encryption = encryption.encryption().map_err(SetupError)?;
    Ok(match settings {
        StoreSettings::Memory => None,
        StoreSettings::File { path } => Some(Arc::new(
            FileStore::open_with(path, encryption)
                .map_err(|e| SetupError(format!("store.path: {}", e.0)))?,
        )),
        StoreSettings::Redis {
            nodes,
            ca_file,
            lock_ttl,
        } => Some(open_redis(nodes, ca_file.as_deref(), *lock_ttl, encryption).await?),
    })
}

/// Connects the Redis store of `store.url` or `store.cluster_urls` (`nodes`), trusting
/// `store.ca_file`'s CAs when given (`store.kind = "redis"`); errors name the key.
pub async fn open_redis(
    nodes: &RedisNodes,
    ca_file: Option<&Path>,
    lock_ttl: Duration,
    encryption: Option<crate::store::Encryption>,
) -> Result<Arc<RedisStore>, SetupError> {
    let ca_certificates = match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                SetupError(format!(
                    "store.ca_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            if !has_pem_certificate(&pem) {
                return Err(SetupError(format!(
                    "store.ca_file: {}: {NO_PEM_CERTIFICATE}",
                    path.display()
                )));
            }
            Some(pem)
        }
        None => None,
    };
    let key = match nodes {
        RedisNodes::Single(_) => "store.url",
        RedisNodes::Cluster(_) => "store.cluster_urls",
    };
    let options = RedisOptions {
        encryption,
        ca_certificates,
    };
    Ok(Arc::new(
        RedisStore::open(nodes.clone(), lock_ttl, options)
            .await
            .map_err(|e| SetupError(format!("{key}: {}", e.0)))?,
    ))
}

/// How long in-flight requests may take to finish after SIGTERM/SIGINT.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long queued webhook events get after the listeners have drained (one last attempt
/// each, see [`Webhooks::shutdown`]).
pub const WEBHOOK_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the sidecar could not be assembled (a configuration it cannot serve).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

/// The assembled sidecar, ready to serve.
pub struct Sidecar {
    tokens: Tokens,
    metrics: Arc<Metrics>,
    proxy: Arc<Proxy>,
    admin: Arc<AdminState>,
    proxy_limits: Limits,
    admin_limits: Limits,
    /// `[server] workers`: the serving threads of the proxy listener.
    workers: Workers,
    webhooks: Webhooks,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("proxy", &self.proxy)
            .field("proxy_limits", &self.proxy_limits)
            .field("admin_limits", &self.admin_limits)
            .finish()
    }
}

/// The addresses the sidecar listens on.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// The proxy listener.
    pub proxy: SocketAddr,
    /// The admin listener, when enabled.
    pub admin: Option<SocketAddr>,
}

/// The refresher `config` asks for: a [`BackendRefresher`] in `backend` mode, a
/// [`DirectRefresher`] over the configured `[refresh.google]` / `[refresh.github]` credentials
/// in `direct` mode.
///
/// In `direct` mode, an `[[account]]` of a provider without credentials is an error here (its
/// tokens could never be refreshed). Routes of such a provider are allowed (the default routes
/// name both providers); an account added for it later through the admin API gets a
/// `refresh_rejected` naming the missing credentials when its token needs a refresh.
///
/// ```
/// use oauth_refresh_proxy::proxy::{config::Config, sidecar::refresher};
///
/// let config = Config::from_toml_str(
///     "[refresh]\nmode = \"direct\"\n[refresh.github]\nclient_id = \"Iv1.a\"\nclient_secret = \"s\"\n\
///      [[account]]\nprovider = \"google\"\nid = \"alice\"\nrefresh_token = \"1//r\"",
///     "proxy.toml",
/// )
/// .unwrap();
/// assert_eq!(
///     refresher(&config).err().unwrap().to_string(),
///     "account[0]: google account \"alice\" cannot be refreshed: refresh.mode = \"direct\" needs [refresh.google] credentials"
/// );
/// ```
pub fn refresher(config: &Config) -> Result<Arc<dyn Refresher>, SetupError> {
    let r = &config.refresh;
    match r.mode {
        RefreshMode::Backend => {
            let url = r
                .backend_url
                .as_deref()
                .ok_or_else(|| SetupError("refresh.backend_url is required".into()))?;
            // The HTTP exchange itself may last `timeout + late_answer_window`: callers are
            // answered at `timeout` by the retry policy, a late answer is still read and kept.
            let mut b = BackendRefresher::new(url)
                .map_err(|e| SetupError(format!("refresh.backend_url: {e}")))?
                .timeout(r.timeout + r.late_answer_window);
            if let Some(token) = &r.backend_token {
                b = b.bearer(token.clone());
            }
            Ok(Arc::new(b))
        }
        RefreshMode::Direct => {
            let direct = direct_refresher(r)?;
            for (i, a) in config.accounts.iter().enumerate() {
                if !direct.supports(a.provider) {
                    return Err(SetupError(format!(
                        "account[{i}]: {p} account {id:?} cannot be refreshed: refresh.mode = \"direct\" needs [refresh.{p}] credentials",
                        p = a.provider,
                        id = a.id
                    )));
                }
            }
            Ok(Arc::new(direct))
        }
    }
}

/// The [`DirectRefresher`] of the `[refresh.google]` / `[refresh.github]` credentials (each
/// exchange bounded by `refresh.timeout + refresh.late_answer_window`; callers are answered at
/// `refresh.timeout`), used by `direct` mode and by the served refresh API.
///
/// ```
/// use oauth_refresh_proxy::proxy::{config::Config, sidecar::direct_refresher};
/// use oauth_refresh_proxy::Provider;
///
/// let config = Config::from_toml_str(
///     "[refresh]\nmode = \"direct\"\n[refresh.google]\nclient_id = \"c\"\nclient_secret = \"s\"",
///     "proxy.toml",
/// )
/// .unwrap();
/// let direct = direct_refresher(&config.refresh).unwrap();
/// assert!(direct.supports(Provider::Google) && !direct.supports(Provider::GitHub));
/// ```
pub fn direct_refresher(r: &RefreshSettings) -> Result<DirectRefresher, SetupError> {
    let mut direct = DirectRefresher::new();
    for provider in Provider::ALL {
        let Some(c) = r.credentials(provider) else {
            continue;
        };
        let bad = |e: crate::refresh::InvalidUrl| {
            SetupError(format!("refresh.{provider}.token_url: {e}"))
        };
        direct = match provider {
            Provider::Google => direct.google(
                GoogleRefresher::new(c.client_id.clone(), c.client_secret.clone())
                    .token_url(&c.token_url)
                    .map_err(bad)?
                    .timeout(r.timeout + r.late_answer_window),
            ),
            Provider::GitHub => direct.github(
                GitHubRefresher::new(c.client_id.clone(), c.client_secret.clone())
                    .token_url(&c.token_url)
                    .map_err(bad)?
                    .timeout(r.timeout + r.late_answer_window),
            ),
        };
    }
    Ok(direct)
}

/// The retry policy of `[refresh]` (`max_attempts`, `timeout`, `late_answer_window`), shared by the token cache and
/// the served refresh API.
///
/// ```
/// use oauth_refresh_proxy::proxy::{config::Config, sidecar::retry_policy};
///
/// let config = Config::from_toml_str(
///     "[refresh]\nbackend_url = \"http://127.0.0.1:1\"\nmax_attempts = 5",
///     "proxy.toml",
/// )
/// .unwrap();
/// assert_eq!(retry_policy(&config.refresh).max_attempts, 5);
/// ```
pub fn retry_policy(r: &RefreshSettings) -> RetryPolicy {
    RetryPolicy {
        max_attempts: r.max_attempts,
        timeout: r.timeout,
        late_answer_window: r.late_answer_window,
        ..RetryPolicy::default()
    }
}

impl Sidecar {
    /// Builds the token cache (seeded with `[[account]]`), the proxy (with the served refresh
    /// API when `[refresh_api]` is enabled) and the admin state.
    /// Needs a tokio runtime (refreshes run as tasks).
    ///
    /// With a durable or shared `[store]`, the store is opened first and its accounts are merged
    /// with `[[account]]` by [`Tokens::restore`] (a restart never rolls a rotation back).
    pub async fn new(config: &Config) -> Result<Self, SetupError> {
        let r = &config.refresh;
        let mut builder = Tokens::builder_arc(refresher(config)?)
            .skew(r.skew)
            .refresh_ahead(r.refresh_ahead)
            .default_lifetime(r.default_lifetime)
            .min_interval(r.min_interval)
            .retry(retry_policy(r));
        // The Redis store is also kept as such: it shares the rate limits (SPEC 4.10).
        let redis = match &config.store {
            StoreSettings::Redis {
                nodes,
                ca_file,
                lock_ttl,
            } => Some(
                open_redis(
                    nodes,
                    ca_file.as_deref(),
                    *lock_ttl,
                    config.store_encryption.encryption().map_err(SetupError)?,
                )
                .await?,
            ),
            _ => None,
        };
        let store = match &redis {
            Some(r) => Some(r.clone() as Arc<dyn Store>),
            None => open_store(&config.store, &config.store_encryption).await?,
        };
        if let Some(store) = &store {
            builder = builder.store(store.clone());
        }
        let tokens = builder.build();
        tokens
            .restore(
                config
                    .accounts
                    .iter()
                    .map(|a| (a.provider, a.id.clone(), a.token_seed())),
            )
            .await
            .map_err(|e| SetupError(e.to_string()))?;
        let metrics = Metrics::new(tokens.clone());
        metrics.spawn_event_listener();
        // SPEC 4.11: claims through a shared store, so a fleet sends each event once.
        let webhooks = Webhooks::new(&config.webhooks, store, &metrics)
            .map_err(SetupError)?
            .start(&tokens);
        let timeouts = ProxyTimeouts::new(&config.upstream, config.server.body_read_timeout);
        let mut proxy = Proxy::new(config, tokens.clone(), metrics.clone(), timeouts);
        if let Some(api) = &config.refresh_api {
            // SPEC 4.9: the same refreshers and retries as the proxy, whatever refresh.mode is.
            proxy = proxy.with_refresh_api(RefreshApi::new(
                api.token.clone(),
                direct_refresher(r)?,
                retry_policy(r),
            ));
        }
        if let Some(redis) = &redis {
            proxy.rate_limits().share(redis.clone());
        }
        let proxy = Arc::new(proxy);
        let admin = Arc::new(AdminState {
            tokens: tokens.clone(),
            metrics: metrics.clone(),
            admin_token: config.admin_token.clone(),
            ready: Arc::new(|| true),
            rate_limits: proxy.rate_limits().clone(),
        });
        Ok(Sidecar {
            tokens,
            metrics,
            proxy,
            admin,
            proxy_limits: proxy_limits(config),
            admin_limits: Limits::admin(&config.server),
            workers: Workers::start(config.server.workers).map_err(|e| {
                SetupError(format!(
                    "cannot start the serving threads (server.workers): {e}"
                ))
            })?,
            webhooks,
        })
    }

    /// The proxy listener's limits: `[server]`, with `max_connections` clamped to what fits
    /// under the descriptor limit.
    pub fn proxy_limits(&self) -> &Limits {
        &self.proxy_limits
    }

    /// The token cache.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Binds the proxy and (when configured) admin listeners ([`listener::bind`]).
    pub async fn bind(config: &Config) -> std::io::Result<(TcpListener, Option<TcpListener>)> {
        let proxy = listener::bind(config.listen)
            .map_err(|e| std::io::Error::new(e.kind(), format!("listen {}: {e}", config.listen)))?;
        let admin =
            match config.admin_listen {
                Some(addr) => Some(listener::bind(addr).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("admin_listen {addr}: {e}"))
                })?),
                None => None,
            };
        Ok((proxy, admin))
    }

    /// Serves until `shutdown` turns true, then drains in-flight requests (at most `drain`).
    pub async fn run(
        self,
        proxy_listener: TcpListener,
        admin_listener: Option<TcpListener>,
        shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) {
        let proxy = self.proxy.clone();
        let workers = Some(self.workers.clone());
        let proxy_task = tokio::spawn(serve_on(
            proxy_listener,
            move |req| proxy.handle(req),
            self.proxy_limits.clone(),
            self.metrics.connections("proxy"),
            shutdown.clone(),
            drain,
            workers,
        ));
        let admin_task = admin_listener.map(|l| {
            let state = self.admin.clone();
            tokio::spawn(serve(
                l,
                move |req| {
                    let state = state.clone();
                    async move { admin::handle(&state, req).await }
                },
                self.admin_limits.clone(),
                self.metrics.connections("admin"),
                shutdown.clone(),
                drain,
            ))
        });
        let _ = proxy_task.await;
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        self.webhooks.shutdown(WEBHOOK_FLUSH_TIMEOUT).await;
    }
}

/// The proxy listener's limits of `config`: raises the descriptor limit
/// ([`listener::raise_nofile_limit`]) and clamps `server.max_connections` to what fits under it
/// ([`listener::fit_max_connections`]), saying so once at `warn`.
fn proxy_limits(config: &Config) -> Limits {
    let mut limits = Limits::proxy(&config.server);
    let Some(nofile) = listener::raise_nofile_limit() else {
        return limits;
    };
    let fit = listener::fit_max_connections(limits.max_connections, nofile);
    if fit < limits.max_connections {
        tracing::warn!(
            configured = limits.max_connections,
            clamped = fit,
            nofile,
            "server.max_connections = {} does not fit under the open-descriptor limit of {nofile} \
             (each connection may hold an upstream socket; {} are kept for the admin listener and {} \
             for the rest): clamped to {fit}",
            limits.max_connections,
            listener::ADMIN_MAX_CONNECTIONS,
            listener::RESERVED_DESCRIPTORS,
        );
        limits.max_connections = fit;
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_mode_allows_routes_but_not_accounts_without_credentials() {
        let base = "[refresh]\nmode = \"direct\"\n[refresh.google]\nclient_id = \"c\"\nclient_secret = \"s\"\n";
        // The default routes name GitHub too: fine.
        let config = Config::from_toml_str(base, "t").unwrap();
        assert!(refresher(&config).is_ok());
        let with_account = format!(
            "{base}[[account]]\nprovider = \"github\"\nid = \"octocat\"\nrefresh_token = \"ghr_x\""
        );
        let config = Config::from_toml_str(&with_account, "t").unwrap();
        let e = refresher(&config).err().unwrap().to_string();
        assert!(
            e.starts_with("account[0]: github account \"octocat\""),
            "{e}"
        );
        assert!(!e.contains("ghr_x"));
    }
}
