//! [`TokensBuilder`]: the cache's settings and their defaults, and building the cache (which
//! starts applying a shared store's announced changes).

use std::sync::Arc;
use std::time::Duration;

use super::{Inner, Tokens};
use crate::refresh::{Refresher, RetryPolicy};
use crate::tokens::store::Store;

/// Builds a [`Tokens`].
///
/// ```
/// # use oauth_refresh_proxy::{BackendRefresher, RetryPolicy, Tokens};
/// let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap())
///     .retry(RetryPolicy { max_attempts: 5, ..RetryPolicy::default() })
///     .default_lifetime(std::time::Duration::from_secs(3300))
///     .build();
/// # let _ = tokens;
/// ```
pub struct TokensBuilder {
    store: Option<Arc<dyn Store>>,
    refresher: Arc<dyn Refresher>,
    settings: Settings,
}

/// The cache's timing settings, as built.
pub(super) struct Settings {
    pub(super) policy: RetryPolicy,
    pub(super) skew: Duration,
    pub(super) refresh_ahead: Duration,
    pub(super) default_lifetime: Duration,
    pub(super) min_interval: Duration,
}

impl TokensBuilder {
    /// The default `skew`: 60 s.
    pub const DEFAULT_SKEW: Duration = Duration::from_secs(60);
    /// The default `refresh_ahead` window: 5 min.
    pub const DEFAULT_REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);
    /// The default lifetime of an access token whose expiry is unknown: 55 min.
    pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(55 * 60);
    /// The default `min_interval` between proactive refreshes of one account: 30 s.
    pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(30);

    /// Refresh before sending when the token expires within `skew` (default 60 s).
    pub fn skew(mut self, skew: Duration) -> Self {
        self.settings.skew = skew;
        self
    }

    /// Start a background refresh this long before expiry (default 5 min; at most `skew` means
    /// no background refresh).
    pub fn refresh_ahead(mut self, ahead: Duration) -> Self {
        self.settings.refresh_ahead = ahead;
        self
    }

    /// The lifetime assumed for an access token whose expiry is unknown (default 55 min).
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.settings.default_lifetime = lifetime;
        self
    }

    /// At most one proactive refresh per account per `interval` (default 30 s): a token that
    /// comes back already expired or about to expire is used as returned until then, and only
    /// an upstream 401 for it refreshes sooner.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use oauth_refresh_proxy::{BackendRefresher, Tokens};
    /// let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap())
    ///     .min_interval(Duration::from_secs(10))
    ///     .build();
    /// # let _ = tokens;
    /// ```
    pub fn min_interval(mut self, interval: Duration) -> Self {
        self.settings.min_interval = interval;
        self
    }

    /// Retries, backoff, the per-attempt timeout and the late-answer window of refreshes.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.settings.policy = policy;
        self
    }

    /// Keeps accounts in `store` as well (durable or shared; see [`store`](crate::store)). Without one,
    /// accounts live in memory only. With a store, add accounts with [`Tokens::save`] or
    /// [`Tokens::restore`] so they are persisted.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Builds the cache. With a store that announces changes from other processes, this
    /// spawns the task applying them, so it must run inside a tokio runtime.
    pub fn build(self) -> Tokens {
        let updates = self.store.as_ref().and_then(|s| s.updates());
        let tokens = Tokens {
            inner: Arc::new(Inner {
                store: self.store,
                maps: [Default::default(), Default::default()],
                index: Default::default(),
                counters: Default::default(),
                refresher: self.refresher,
                settings: self.settings,
                subscribers: Default::default(),
            }),
        };
        if let Some(mut updates) = updates {
            let weak = Arc::downgrade(&tokens.inner);
            tokio::spawn(async move {
                while let Some(update) = updates.recv().await {
                    let Some(inner) = weak.upgrade() else { break };
                    Tokens { inner }.apply_update(update);
                }
            });
        }
        tokens
    }
}

impl Tokens {
    /// Starts building a cache that refreshes with `refresher`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, Tokens};
    /// let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// assert!(tokens.list().is_empty());
    /// ```
    pub fn builder(refresher: impl Refresher) -> TokensBuilder {
        Self::builder_arc(Arc::new(refresher))
    }

    /// Like [`Tokens::builder`] with a shared refresher.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use oauth_refresh_proxy::{BackendRefresher, Tokens, refresh::Refresher};
    /// let r: Arc<dyn Refresher> = Arc::new(BackendRefresher::new("http://127.0.0.1:9").unwrap());
    /// let tokens = Tokens::builder_arc(r).build();
    /// # let _ = tokens;
    /// ```
    pub fn builder_arc(refresher: Arc<dyn Refresher>) -> TokensBuilder {
        TokensBuilder {
            store: None,
            refresher,
            settings: Settings {
                policy: RetryPolicy::default(),
                skew: TokensBuilder::DEFAULT_SKEW,
                refresh_ahead: TokensBuilder::DEFAULT_REFRESH_AHEAD,
                default_lifetime: TokensBuilder::DEFAULT_LIFETIME,
                min_interval: TokensBuilder::DEFAULT_MIN_INTERVAL,
            },
        }
    }
}
