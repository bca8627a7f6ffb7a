//! Assembling the sidecar from a [`Config`]: the token cache, the proxy, the admin listener,
//! the metrics, and their lifecycle (SPEC 4.8).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::admin::{self, AdminState};
use super::config::{Config, RefreshMode};
use super::metrics::Metrics;
use super::server::{serve, Proxy};
use crate::refresh::{BackendRefresher, Refresher, RetryPolicy};
use crate::Tokens;

/// How long in-flight requests may take to finish after SIGTERM/SIGINT.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("proxy", &self.proxy)
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

/// The refresher `config` asks for.
pub fn refresher(config: &Config) -> Result<Arc<dyn Refresher>, SetupError> {
    let r = &config.refresh;
    match r.mode {
        RefreshMode::Backend => {
            let url = r
                .backend_url
                .as_deref()
                .ok_or_else(|| SetupError("refresh.backend_url is required".into()))?;
            let mut b = BackendRefresher::new(url)
                .map_err(|e| SetupError(format!("refresh.backend_url: {e}")))?
                .timeout(r.timeout);
            if let Some(token) = &r.backend_token {
                b = b.bearer(token.clone());
            }
            Ok(Arc::new(b))
        }
        RefreshMode::Direct => Err(SetupError(
            "refresh.mode = \"direct\" is not supported yet (use \"backend\")".into(),
        )),
    }
}

impl Sidecar {
    /// Builds the token cache (seeded with `[[account]]`), the proxy and the admin state.
    /// Needs a tokio runtime (refreshes run as tasks).
    pub fn new(config: &Config) -> Result<Self, SetupError> {
        let r = &config.refresh;
        let tokens = Tokens::builder_arc(refresher(config)?)
            .skew(r.skew)
            .refresh_ahead(r.refresh_ahead)
            .default_lifetime(r.default_lifetime)
            .retry(RetryPolicy {
                max_attempts: r.max_attempts,
                timeout: r.timeout,
                ..RetryPolicy::default()
            })
            .build();
        for a in &config.accounts {
            tokens.insert(a.provider, a.id.as_str(), a.token_seed());
        }
        let metrics = Metrics::new(tokens.clone());
        metrics.spawn_event_listener();
        let proxy = Arc::new(Proxy::new(config, tokens.clone(), metrics.clone()));
        let admin = Arc::new(AdminState {
            tokens: tokens.clone(),
            metrics: metrics.clone(),
            admin_token: config.admin_token.clone(),
            ready: Arc::new(|| true),
        });
        Ok(Sidecar {
            tokens,
            metrics,
            proxy,
            admin,
        })
    }

    /// The token cache.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Binds the proxy and (when configured) admin listeners.
    pub async fn bind(config: &Config) -> std::io::Result<(TcpListener, Option<TcpListener>)> {
        let proxy = TcpListener::bind(config.listen)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("listen {}: {e}", config.listen)))?;
        let admin =
            match config.admin_listen {
                Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
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
        let proxy_task = tokio::spawn(serve(
            proxy_listener,
            move |req| {
                let proxy = proxy.clone();
                async move { proxy.handle(req).await }
            },
            shutdown.clone(),
            drain,
        ));
        let admin_task = admin_listener.map(|l| {
            let state = self.admin.clone();
            tokio::spawn(serve(
                l,
                move |req| {
                    let state = state.clone();
                    async move { admin::handle(&state, req).await }
                },
                shutdown.clone(),
                drain,
            ))
        });
        let _ = proxy_task.await;
        if let Some(t) = admin_task {
            let _ = t.await;
        }
    }
}
