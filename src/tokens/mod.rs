//! Where tokens live and how refreshes are coalesced.
//!
//! [`Tokens`] is a cheap-to-clone handle on one cache shared by every layer and task that uses
//! it: one `DashMap` per provider from account id to the account's entry. An entry holds the
//! current access token (with its `Authorization` header value built once), the refresh token,
//! the expiry, a **generation** counter that grows whenever the access token changes, and —
//! while a refresh runs — the shared handle of that refresh (the *flight*).
//!
//! # Single flight with generations
//!
//! A request remembers the generation of the token it sent. When it needs a refresh (before
//! sending, because the token is expired or within `skew`; or after a 401), it locks the entry
//! once and decides:
//!
//! * a flight is under way ⇒ wait for it (coalesced);
//! * the entry's generation is newer than the one the request sent and the token is usable ⇒
//!   use it (someone else refreshed already: the GitHub rotation case of SPEC 3);
//! * otherwise start the flight, register it in the entry, and wait for it.
//!
//! The flight runs in its own task, so a caller that gives up never cancels it for the others.
//! Its result is published through a `watch` channel and applied to the entry under the same
//! lock, so for one account and generation there is exactly one call to the refresher. No map
//! guard is ever held across an `.await`.
//!
//! # Refresh ahead
//!
//! When a token enters the `refresh_ahead` window (its start jittered by up to 10% of the window
//! per account, so accounts created together spread out), the request that notices it starts a
//! background flight and goes on with the still-valid token. A failed background refresh is
//! tried again after a tenth of the window; once inside `skew`, requests wait for a refresh.
//!
//! # Refresh discipline: never hammer the backend, never spend a refresh token twice
//!
//! Each account moves through `idle → in flight → (late) → idle | cooldown`:
//!
//! * **In flight.** One attempt cycle under the [`RetryPolicy`]: only failures that provably
//!   did not spend the refresh token are retried (see [`RefreshError`]).
//! * **Late.** An attempt that was sent and is still unanswered after `timeout` releases its
//!   waiting callers with `refresh_unavailable`, but the flight stays registered while its
//!   answer is awaited for up to `late_answer_window`: no new attempt for the account starts
//!   meanwhile (requests that need a refresh get `503` at once), and a late success is applied
//!   and persisted like a prompt one — a rotated refresh token is kept.
//! * **Cooldown.** A cycle that called the backend and failed without a rejection puts the
//!   account in cooldown (a shared store that could not be reached, before any backend call,
//!   does not): the
//!   backend's `Retry-After` when it sent one, else 5 s doubling per consecutive failed cycle,
//!   both capped at 5 min, plus up to 10% jitter. Until it ends, requests that need a refresh get
//!   `503 refresh_unavailable` with `Retry-After` = the seconds left and no backend call is
//!   made (counted in [`ProviderStats::cooldown`]); a token still valid by the clock keeps being
//!   served, and the background refresh-ahead waits too. A success, or new tokens put by the
//!   operator, end it.
//! * **`min_interval`.** At most one *proactive* refresh (before sending, or refresh-ahead) per
//!   account per `min_interval`: a token that comes back already expired, inside `skew` or inside
//!   `refresh_ahead` is used as returned until then; only an upstream 401 for that generation
//!   refreshes it sooner.
//! * A forced refresh ([`Tokens::refresh_now`], the admin API's `POST …/refresh`) is an
//!   operator's explicit request: it ignores `min_interval` and the cooldown (after fixing a
//!   backend, an operator can check it at once), but never starts while a timed-out attempt's
//!   answer is awaited — that could spend the refresh token twice.
//!
//! # Health episodes (for alerting)
//!
//! Each entry remembers whether it is in an *episode* of trouble. A rejection starts one
//! ([`HealthChange::NeedsReauth`]); the first failed cycle that puts the account in cooldown
//! starts one ([`HealthChange::Failing`], once — later failed cycles of the episode announce
//! nothing new). The first success — this process's refresh, another replica's adopted through
//! the store, or new tokens put by the operator here or elsewhere — ends it with exactly one
//! [`HealthChange::Recovered`]. The changes ride on the [`RefreshEvent`]s of [`Tokens::events`];
//! new tokens that did not come from a refresh here are announced (as
//! [`RefreshOutcome::Replaced`]) only when they end an episode. An account loaded from a store
//! as needing re-authorisation is in an episode without announcing it.

mod events;
mod index;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use http::HeaderValue;

pub use events::{Events, HealthChange, RefreshEvent, RefreshOutcome};
pub use index::AccountPage;

use crate::error::Error;
use crate::provider::{Account, Provider};
use crate::refresh::{RefreshError, Refresher, RetryPolicy};
use crate::single_flight::{self, Publisher};
use crate::token::{fingerprint, timestamp_to_system_time, unix_secs, Secret, TokenSeed};
use store::{RefreshFn, RefresherCall, Store, StoreRefresh, StoreUpdate, StoredAccount};

/// The outcome of a flight, shared with everyone waiting on it.
#[derive(Clone)]
enum FlightResult {
    Ok(Lease),
    Err(RefreshError),
}

type Flight = single_flight::Flight<FlightResult>;

/// A token handed to one request: its header value and its generation.
#[derive(Clone)]
pub(crate) struct Lease {
    pub(crate) header: HeaderValue,
    pub(crate) generation: u64,
}

struct Entry {
    refresh_token: Secret,
    /// Fingerprint of the configured refresh token the account started from.
    seed_fingerprint: Option<String>,
    /// The injected header, `None` when there is no usable access token.
    header: Option<HeaderValue>,
    /// Effective expiry of `header` (the default lifetime applied when unknown).
    expires_at: SystemTime,
    /// Whether `expires_at` came from the provider or from the default lifetime.
    expiry_known: bool,
    /// When a background refresh should start.
    ahead_at: SystemTime,
    generation: u64,
    needs_reauth: bool,
    flight: Option<Flight>,
    /// The flight's attempt timed out after sending; its answer is still awaited.
    late: bool,
    /// When the current tokens were obtained by a refresh (here or by another replica), for
    /// `min_interval`; `None` for tokens put by the operator or the config.
    refreshed_at: Option<Instant>,
    /// No refresh before this (a failed cycle's cooldown).
    cooldown_until: Option<Instant>,
    /// Consecutive failed cycles (the cooldown doubles with each).
    failed_cycles: u32,
    last_refresh_at: Option<SystemTime>,
    last_error: Option<RefreshError>,
    /// In an episode of trouble: `NeedsReauth` or `Failing` was announced (or the account was
    /// loaded needing re-authorisation) and `Recovered` not yet.
    episode: bool,
}

/// The first cooldown after a failed refresh cycle; it doubles per consecutive failure.
const BASE_COOLDOWN: Duration = Duration::from_secs(5);
/// The longest cooldown, and the cap on a backend's `Retry-After`.
const MAX_COOLDOWN: Duration = Duration::from_secs(300);
/// What callers are told to wait while a timed-out attempt's answer is awaited.
const LATE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// One account as listed by [`Tokens::list`]: never a token value.
///
/// ```
/// # use oauth_refresh_proxy::AccountInfo;
/// fn show(a: &AccountInfo) -> String { format!("{}/{} gen {}", a.provider, a.account, a.generation) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountInfo {
    /// The provider.
    pub provider: Provider,
    /// The account id.
    pub account: String,
    /// When the access token expires (unix seconds); `None` when there is no access token or
    /// its expiry is unknown.
    pub expires_at: Option<u64>,
    /// The token generation: grows by one whenever the access token changes.
    pub generation: u64,
    /// Whether the refresh token was rejected and the account needs new tokens.
    pub needs_reauth: bool,
    /// When the last successful refresh happened (unix seconds).
    pub last_refresh_at: Option<u64>,
    /// The last refresh error (never a token), cleared by a success.
    pub last_error: Option<String>,
    /// Whether the account holds an access token that has not expired (for the `orp_tokens`
    /// gauge: `valid`, `expired` or `needs_reauth`).
    pub valid: bool,
}

/// Counters of one provider's refresh traffic, for metrics and tests.
///
/// ```
/// # use oauth_refresh_proxy::ProviderStats;
/// let s = ProviderStats::default();
/// assert_eq!(s.refresh_success + s.coalesced, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProviderStats {
    /// Refreshes that produced a new token.
    pub refresh_success: u64,
    /// Refreshes whose refresh token was rejected.
    pub refresh_rejected: u64,
    /// Refreshes that failed transiently after their retries.
    pub refresh_transient_error: u64,
    /// Requests that waited on a refresh another request had started.
    pub coalesced: u64,
    /// Requests replayed after a 401.
    pub replayed: u64,
    /// 401s whose request could not be replayed (body too large or not fully sent).
    pub not_replayable: u64,
    /// Requests answered `refresh_unavailable` without a backend call because the account was
    /// in cooldown (or awaiting a timed-out attempt's answer).
    pub cooldown: u64,
}

#[derive(Default)]
struct Counters {
    refresh_success: std::sync::atomic::AtomicU64,
    refresh_rejected: std::sync::atomic::AtomicU64,
    refresh_transient_error: std::sync::atomic::AtomicU64,
    coalesced: std::sync::atomic::AtomicU64,
    replayed: std::sync::atomic::AtomicU64,
    not_replayable: std::sync::atomic::AtomicU64,
    cooldown: std::sync::atomic::AtomicU64,
}

fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

struct Inner {
    /// The accounts, per provider. Entries are boxed: the maps' power-of-two tables then hold
    /// 24-byte slots (key and pointer) instead of whole entries, which at a million accounts
    /// halves the memory the tables' spare capacity costs.
    maps: [DashMap<Arc<str>, Box<Entry>, foldhash::fast::RandomState>; 2],
    /// The maps' ids, sorted, for paged listings; changed only under the map's entry guard.
    index: index::Index,
    counters: [Counters; 2],
    refresher: Arc<dyn Refresher>,
    policy: RetryPolicy,
    skew: Duration,
    refresh_ahead: Duration,
    default_lifetime: Duration,
    min_interval: Duration,
    subscribers: events::Subscribers,
    store: Option<Arc<dyn Store>>,
}

fn idx(p: Provider) -> usize {
    match p {
        Provider::Google => 0,
        Provider::GitHub => 1,
    }
}

/// The token cache shared by layers, the sidecar and the application.
///
/// Insert, replace, list and remove accounts; observe refreshes with [`Tokens::events`]; force a
/// refresh with [`Tokens::refresh_now`]. Clones share one cache.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::{BackendRefresher, Provider, TokenSeed, Tokens};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap())
///     .skew(Duration::from_secs(60))
///     .refresh_ahead(Duration::from_secs(300))
///     .build();
/// tokens.insert(Provider::Google, "alice", TokenSeed::new("1//refresh").access_token("ya29.a"));
/// let listed = tokens.list();
/// assert_eq!(listed[0].account, "alice");
/// assert!(tokens.remove(Provider::Google, "alice"));
/// # });
/// ```
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field(
                "accounts",
                &(self.inner.maps[0].len() + self.inner.maps[1].len()),
            )
            .finish()
    }
}

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
    policy: RetryPolicy,
    skew: Duration,
    refresh_ahead: Duration,
    default_lifetime: Duration,
    min_interval: Duration,
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
        self.skew = skew;
        self
    }

    /// Start a background refresh this long before expiry (default 5 min; at most `skew` means
    /// no background refresh).
    pub fn refresh_ahead(mut self, ahead: Duration) -> Self {
        self.refresh_ahead = ahead;
        self
    }

    /// The lifetime assumed for an access token whose expiry is unknown (default 55 min).
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_lifetime = lifetime;
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
        self.min_interval = interval;
        self
    }

    /// Retries, backoff, the per-attempt timeout and the late-answer window of refreshes.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Keeps accounts in `store` as well (durable or shared; see [`store`]). Without one,
    /// accounts live in memory only. With a store, add accounts with [`Tokens::put`] or
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
                maps: [
                    DashMap::with_hasher(Default::default()),
                    DashMap::with_hasher(Default::default()),
                ],
                index: Default::default(),
                counters: Default::default(),
                refresher: self.refresher,
                policy: self.policy,
                skew: self.skew,
                refresh_ahead: self.refresh_ahead,
                default_lifetime: self.default_lifetime,
                min_interval: self.min_interval,
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

/// What to do after looking at an entry that needs a refresh.
enum Step {
    Use(Lease),
    Wait(Flight),
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
            policy: RetryPolicy::default(),
            skew: TokensBuilder::DEFAULT_SKEW,
            refresh_ahead: TokensBuilder::DEFAULT_REFRESH_AHEAD,
            default_lifetime: TokensBuilder::DEFAULT_LIFETIME,
            min_interval: TokensBuilder::DEFAULT_MIN_INTERVAL,
        }
    }

    /// Adds an account, or replaces its tokens. Returns `true` when it replaced an account.
    ///
    /// Replacing bumps the generation, clears `needs_reauth` and detaches any refresh under way
    /// (its result is discarded). An access token that is not a valid header value is ignored
    /// (the first request refreshes).
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, Provider, TokenSeed, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// assert!(!tokens.insert(Provider::GitHub, "octo", TokenSeed::new("ghr_1")));
    /// assert!(tokens.insert(Provider::GitHub, "octo", TokenSeed::new("ghr_2")));
    /// assert_eq!(tokens.list()[0].generation, 2);
    /// ```
    pub fn insert(
        &self,
        provider: Provider,
        account: impl Into<Arc<str>>,
        seed: TokenSeed,
    ) -> bool {
        let account = account.into();
        let state = self.state_from_seed(provider, &account, seed, None);
        self.set_state(account, state, true)
    }

    /// Adds or replaces an account like [`Tokens::insert`], after writing it to the store (when
    /// there is one). Returns `true` when it replaced an account. The account keeps the
    /// fingerprint of the configured refresh token it started from, if any.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use oauth_refresh_proxy::{BackendRefresher, Provider, TokenSeed, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// assert!(!tokens.put(Provider::GitHub, "octo", TokenSeed::new("ghr_1")).await.unwrap());
    /// # });
    /// ```
    pub async fn put(
        &self,
        provider: Provider,
        account: &str,
        seed: TokenSeed,
    ) -> Result<bool, Error> {
        let fp = self.inner.maps[idx(provider)]
            .get(account)
            .and_then(|e| e.seed_fingerprint.clone());
        let state = self.state_from_seed(provider, account, seed, fp);
        if let Some(store) = &self.inner.store {
            store
                .save(state.clone())
                .await
                .map_err(|e| Error::store(provider, account, &e))?;
        }
        Ok(self.set_state(Arc::from(account), state, true))
    }

    /// Forgets an account, in the store first (when there is one). Returns whether it existed.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use oauth_refresh_proxy::{BackendRefresher, Provider, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// assert!(!tokens.forget(Provider::Google, "nobody").await.unwrap());
    /// # });
    /// ```
    pub async fn forget(&self, provider: Provider, account: &str) -> Result<bool, Error> {
        if let Some(store) = &self.inner.store {
            store
                .remove(provider, account)
                .await
                .map_err(|e| Error::store(provider, account, &e))?;
        }
        Ok(self.remove(provider, account))
    }

    /// Loads the store's accounts and merges the configured `seeds` into them (SPEC 4.2): a
    /// stored account whose recorded seed fingerprint matches the configured refresh token keeps
    /// its stored (possibly rotated) tokens — a restart never rolls a rotation back; a
    /// configured refresh token the store has never seen replaces the stored account (it was
    /// re-authorised) and is saved with its fingerprint; stored accounts absent from the seeds
    /// stay. Without a store, the seeds are simply inserted.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use oauth_refresh_proxy::{BackendRefresher, Provider, TokenSeed, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// tokens.restore(vec![(Provider::Google, "alice".to_string(), TokenSeed::new("1//r"))]).await.unwrap();
    /// assert_eq!(tokens.list().len(), 1);
    /// # });
    /// ```
    pub async fn restore(
        &self,
        seeds: impl IntoIterator<Item = (Provider, String, TokenSeed)>,
    ) -> Result<(), Error> {
        let Some(store) = self.inner.store.clone() else {
            for (p, a, seed) in seeds {
                let fp = fingerprint(&seed.refresh_token);
                let state = self.state_from_seed(p, &a, seed, Some(fp));
                self.set_state(Arc::from(a.as_str()), state, true);
            }
            return Ok(());
        };
        let mut stored: std::collections::HashMap<(Provider, String), StoredAccount> = store
            .load()
            .await
            .map_err(|e| {
                Error::new(
                    crate::ErrorKind::StoreUnavailable,
                    None,
                    None,
                    e.to_string(),
                )
            })?
            .into_iter()
            .map(|a| ((a.provider, a.account.clone()), a))
            .collect();
        for (p, a, seed) in seeds {
            let fp = fingerprint(&seed.refresh_token);
            match stored.remove(&(p, a.clone())) {
                Some(s) if s.seed_fingerprint.as_deref() == Some(fp.as_str()) => {
                    tracing::debug!(provider = %p, account = %a, generation = s.generation, "stored tokens kept");
                    self.set_state(Arc::from(a.as_str()), s, false);
                }
                previous => {
                    let mut state = self.state_from_seed(p, &a, seed, Some(fp));
                    state.generation = previous.map_or(1, |s| s.generation + 1);
                    store
                        .save(state.clone())
                        .await
                        .map_err(|e| Error::store(p, &a, &e))?;
                    self.set_state(Arc::from(a.as_str()), state, false);
                }
            }
        }
        for (_, s) in stored {
            self.set_state(Arc::from(s.account.as_str()), s, false);
        }
        Ok(())
    }

    /// Whether the store (if any) is reachable now.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use oauth_refresh_proxy::{BackendRefresher, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// assert!(tokens.ready().await);
    /// # });
    /// ```
    pub async fn ready(&self) -> bool {
        match &self.inner.store {
            Some(store) => store.ready().await,
            None => true,
        }
    }

    /// The store's kind, or `"memory"`.
    pub fn store_kind(&self) -> &'static str {
        self.inner.store.as_ref().map_or("memory", |s| s.kind())
    }

    /// The state a seed gives an account, one generation past its current one.
    fn state_from_seed(
        &self,
        provider: Provider,
        account: &str,
        seed: TokenSeed,
        seed_fingerprint: Option<String>,
    ) -> StoredAccount {
        let generation = self.inner.maps[idx(provider)]
            .get(account)
            .map_or(0, |e| e.generation)
            + 1;
        let access_token = seed.access_token.filter(|a| a.bearer_header().is_some());
        StoredAccount {
            provider,
            account: account.to_string(),
            expires_at: access_token.as_ref().and(seed.expires_at).map(unix_secs),
            access_token,
            refresh_token: seed.refresh_token,
            generation,
            needs_reauth: false,
            last_refresh_at: None,
            last_error: None,
            seed_fingerprint,
        }
    }

    /// Sets an account's entry from `state`. With `local`, the change is this process's own
    /// (any refresh under way is detached); otherwise it came from the store and is applied
    /// only if newer. Returns whether an entry existed.
    fn set_state(&self, account: Arc<str>, state: StoredAccount, local: bool) -> bool {
        let now = SystemTime::now();
        let header = state.access_token.as_ref().and_then(Secret::bearer_header);
        let known = header.is_some() && state.expires_at.is_some();
        let expires_at = match (&header, state.expires_at) {
            (Some(_), Some(at)) => timestamp_to_system_time(at as i64).unwrap_or(now),
            (Some(_), None) => now + self.inner.default_lifetime,
            (None, _) => now,
        };
        let map = &self.inner.maps[idx(state.provider)];
        let mut existed = true;
        let mut e = map.entry(account).or_insert_with(|| {
            existed = false;
            Box::new(Entry {
                refresh_token: state.refresh_token.clone(),
                seed_fingerprint: None,
                header: None,
                expires_at: now,
                expiry_known: false,
                ahead_at: now,
                generation: 0,
                needs_reauth: false,
                flight: None,
                late: false,
                refreshed_at: None,
                cooldown_until: None,
                failed_cycles: 0,
                last_refresh_at: None,
                last_error: None,
                episode: false,
            })
        });
        if !existed {
            // Under the new entry's guard: lock order map entry, then index.
            self.inner.index.insert(state.provider, e.key().clone());
        }
        if !local && existed && e.generation >= state.generation {
            return existed;
        }
        // New tokens that need no re-authorisation end an episode (SPEC 4.11).
        let recovered = e.episode && !state.needs_reauth;
        e.episode = state.needs_reauth;
        e.refresh_token = state.refresh_token;
        e.seed_fingerprint = state.seed_fingerprint;
        e.header = header;
        e.expires_at = expires_at;
        e.expiry_known = known;
        e.ahead_at = self.ahead_at(expires_at);
        e.generation = if local {
            state.generation.max(e.generation + 1)
        } else {
            state.generation
        };
        e.needs_reauth = state.needs_reauth;
        e.flight = None;
        e.late = false;
        // New tokens (put here or adopted from another replica) end any cooldown.
        e.cooldown_until = None;
        e.failed_cycles = 0;
        e.refreshed_at = None;
        e.last_refresh_at = state
            .last_refresh_at
            .and_then(|t| timestamp_to_system_time(t as i64));
        e.last_error = state.last_error;
        let generation = e.generation;
        drop(e);
        if recovered {
            self.inner.subscribers.publish(RefreshEvent {
                provider: state.provider,
                account: Account::new(state.account),
                generation,
                duration: Duration::ZERO,
                outcome: RefreshOutcome::Replaced,
                health: Some(HealthChange::Recovered),
            });
        }
        existed
    }

    /// Applies a change another process made (announced by a shared store).
    fn apply_update(&self, update: StoreUpdate) {
        match update {
            StoreUpdate::Changed(state) => {
                tracing::debug!(provider = %state.provider, account = %state.account, generation = state.generation, "account changed elsewhere");
                let (provider, generation) = (state.provider, state.generation);
                let refreshed = state.last_refresh_at.is_some();
                let account: Arc<str> = Arc::from(state.account.as_str());
                self.set_state(account.clone(), state, false);
                // Another replica's refresh counts for `min_interval` here too.
                if let Some(mut e) = self.inner.maps[idx(provider)].get_mut(&*account) {
                    if refreshed && e.generation == generation {
                        e.refreshed_at = Some(Instant::now());
                    }
                }
            }
            StoreUpdate::Removed { provider, account } => {
                self.remove(provider, &account);
            }
        }
    }

    /// Forgets an account. Returns whether it existed.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, Provider, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// assert!(!tokens.remove(Provider::Google, "nobody"));
    /// ```
    pub fn remove(&self, provider: Provider, account: &str) -> bool {
        let map = &self.inner.maps[idx(provider)];
        index::remove(map, &self.inner.index, provider, account)
    }

    /// Lists every account, sorted by provider and account, without any secret. With many
    /// accounts, prefer [`Tokens::list_page`], which reads one page at a time.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// assert!(tokens.list().is_empty());
    /// ```
    pub fn list(&self) -> Vec<AccountInfo> {
        self.list_page(None, usize::MAX).entries
    }

    /// One account's listing entry.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, Provider, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// assert!(tokens.get(Provider::Google, "nobody").is_none());
    /// ```
    pub fn get(&self, provider: Provider, account: &str) -> Option<AccountInfo> {
        self.inner.maps[idx(provider)]
            .get(account)
            .map(|e| info(provider, e.key(), e.value()))
    }

    /// The refresh counters of `provider`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, Provider, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// assert_eq!(tokens.stats(Provider::GitHub).refresh_success, 0);
    /// ```
    pub fn stats(&self, provider: Provider) -> ProviderStats {
        let c = &self.inner.counters[idx(provider)];
        let l = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        ProviderStats {
            refresh_success: l(&c.refresh_success),
            refresh_rejected: l(&c.refresh_rejected),
            refresh_transient_error: l(&c.refresh_transient_error),
            coalesced: l(&c.coalesced),
            replayed: l(&c.replayed),
            not_replayable: l(&c.not_replayable),
            cooldown: l(&c.cooldown),
        }
    }

    /// Subscribes to refresh events. Every subscriber receives every event after subscribing.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// let mut events = tokens.events();
    /// assert!(events.try_recv().is_none());
    /// ```
    pub fn events(&self) -> Events {
        self.inner.subscribers.subscribe()
    }

    /// Refreshes an account now, whatever its token's expiry (joining a refresh already under
    /// way), and returns its listing entry afterwards.
    ///
    /// ```no_run
    /// # use oauth_refresh_proxy::{BackendRefresher, Provider, Tokens};
    /// # async fn f(tokens: Tokens) {
    /// let info = tokens.refresh_now(Provider::Google, "alice").await.unwrap();
    /// println!("generation {}", info.generation);
    /// # }
    /// ```
    pub async fn refresh_now(
        &self,
        provider: Provider,
        account: &str,
    ) -> Result<AccountInfo, Error> {
        let step = self.step(provider, account, None, true)?;
        self.finish(provider, account, step, false).await?;
        self.get(provider, account)
            .ok_or_else(|| Error::unknown_account(provider, account))
    }

    /// The token for a request, without waiting: `Ok(None)` when a refresh must be awaited
    /// first (see [`Tokens::lease`]). Starts a background refresh in the refresh-ahead window.
    pub(crate) fn try_lease(
        &self,
        provider: Provider,
        account: &str,
    ) -> Result<Option<Lease>, Error> {
        let now = SystemTime::now();
        let (lease, ahead) = {
            let Some(e) = self.inner.maps[idx(provider)].get(account) else {
                return Err(Error::unknown_account(provider, account));
            };
            if e.needs_reauth {
                return Err(rejected_error(provider, account, &e));
            }
            match &e.header {
                Some(h) if now + self.inner.skew < e.expires_at => {
                    let ahead = now >= e.ahead_at && e.flight.is_none();
                    (
                        Lease {
                            header: h.clone(),
                            generation: e.generation,
                        },
                        ahead,
                    )
                }
                // Refreshed less than `min_interval` ago and it came back (nearly) expired:
                // used as returned, no proactive refresh until the interval has passed.
                Some(h) if self.within_min_interval(&e) => {
                    return Ok(Some(Lease {
                        header: h.clone(),
                        generation: e.generation,
                    }))
                }
                _ => return Ok(None),
            }
        };
        if ahead {
            self.start_ahead(provider, account, lease.generation);
        }
        Ok(Some(lease))
    }

    /// The token for a request, refreshing first when it is missing, expired or within `skew`.
    pub(crate) async fn lease(&self, provider: Provider, account: &str) -> Result<Lease, Error> {
        if let Some(lease) = self.try_lease(provider, account)? {
            return Ok(lease);
        }
        let step = self.step(provider, account, None, false)?;
        self.finish(provider, account, step, true).await
    }

    /// After a 401 for a request sent with `generation`: the token to replay with. Refreshes
    /// only when the cache still holds that generation (or its token is unusable).
    pub(crate) async fn lease_after_unauthorized(
        &self,
        provider: Provider,
        account: &str,
        generation: u64,
    ) -> Result<Lease, Error> {
        let step = self.step(provider, account, Some(generation), false)?;
        self.finish(provider, account, step, false).await
    }

    pub(crate) fn count_replay(&self, provider: Provider, replayed: bool) {
        let c = &self.inner.counters[idx(provider)];
        bump(if replayed {
            &c.replayed
        } else {
            &c.not_replayable
        });
    }

    /// Waits for the flight of `step`. With `fallback`, a transient failure while the current
    /// token has not actually expired yet (it is only within `skew`) returns that token.
    async fn finish(
        &self,
        provider: Provider,
        account: &str,
        step: Step,
        fallback: bool,
    ) -> Result<Lease, Error> {
        let flight = match step {
            Step::Use(lease) => return Ok(lease),
            Step::Wait(flight) => flight,
        };
        let result = flight
            .wait()
            .await
            .unwrap_or_else(|| FlightResult::Err(RefreshError::transient("refresh task ended")));
        match result {
            FlightResult::Ok(lease) => Ok(lease),
            FlightResult::Err(err) => {
                // A transient failure while the token is still valid (only within `skew`)
                // does not stop the request: it goes out with the current token.
                if fallback && !err.is_rejected() {
                    if let Some(e) = self.inner.maps[idx(provider)].get(account) {
                        if let (Some(h), false) = (&e.header, e.needs_reauth) {
                            if SystemTime::now() < e.expires_at {
                                return Ok(Lease {
                                    header: h.clone(),
                                    generation: e.generation,
                                });
                            }
                        }
                    }
                }
                let mut error = Error::from_refresh(provider, account, &err);
                if let Some(left) = self.inner.maps[idx(provider)].get(account).and_then(|e| {
                    e.cooldown_until
                        .and_then(|t| t.checked_duration_since(Instant::now()))
                }) {
                    error = error.retry_after_at_least(left);
                }
                Err(error)
            }
        }
    }

    /// Whether the entry's tokens came from a refresh less than `min_interval` ago (and no
    /// refresh runs now): they are used as returned, however soon they expire.
    fn within_min_interval(&self, e: &Entry) -> bool {
        e.flight.is_none()
            && e.refreshed_at
                .is_some_and(|t| t.elapsed() < self.inner.min_interval)
    }

    /// Decides, under the entry's lock, whether to use the current token, join the flight under
    /// way, or start one. `seen` is the generation a request was sent with (after a 401);
    /// `force` refreshes even a valid token.
    fn step(
        &self,
        provider: Provider,
        account: &str,
        seen: Option<u64>,
        force: bool,
    ) -> Result<Step, Error> {
        let map = &self.inner.maps[idx(provider)];
        let Some(mut e) = map.get_mut(account) else {
            return Err(Error::unknown_account(provider, account));
        };
        if e.needs_reauth {
            return Err(rejected_error(provider, account, &e));
        }
        let now = SystemTime::now();
        let current = |e: &Entry| {
            e.header.clone().map(|header| Lease {
                header,
                generation: e.generation,
            })
        };
        // This generation itself was refused upstream: only a refresh helps.
        let refused = seen == Some(e.generation);
        let valid_by_clock = e.header.is_some() && now < e.expires_at;
        if let (Some(flight), false) = (&e.flight, e.late) {
            bump(&self.inner.counters[idx(provider)].coalesced);
            return Ok(Step::Wait(flight.clone()));
        }
        if !force {
            let usable = e.header.is_some() && now + self.inner.skew < e.expires_at;
            if usable && !refused {
                return Ok(Step::Use(current(&e).expect("usable")));
            }
            if !refused && e.header.is_some() && self.within_min_interval(&e) {
                return Ok(Step::Use(current(&e).expect("present")));
            }
        }
        let blocked = if e.flight.is_some() {
            // A timed-out attempt may still rotate the refresh token: no new attempt.
            Some((
                "a timed-out refresh attempt's answer is still awaited",
                LATE_RETRY_AFTER,
            ))
        } else {
            e.cooldown_until
                .filter(|_| !force)
                .and_then(|until| until.checked_duration_since(Instant::now()))
                .map(|left| ("the last refresh failed; the account is in cooldown", left))
        };
        if let Some((why, after)) = blocked {
            if valid_by_clock && !refused && !force {
                return Ok(Step::Use(current(&e).expect("valid")));
            }
            bump(&self.inner.counters[idx(provider)].cooldown);
            return Err(unavailable(provider, account, why, after));
        }
        let flight = self.launch(provider, account, &mut e, false);
        Ok(Step::Wait(flight))
    }

    /// Starts a background refresh for `generation` unless one runs, the generation moved on,
    /// or the account is in cooldown or within `min_interval` of its last refresh.
    fn start_ahead(&self, provider: Provider, account: &str, generation: u64) {
        if let Some(mut e) = self.inner.maps[idx(provider)].get_mut(account) {
            let now = SystemTime::now();
            if e.flight.is_some()
                || e.generation != generation
                || e.needs_reauth
                || now < e.ahead_at
            {
                return;
            }
            let wait = e
                .cooldown_until
                .and_then(|t| t.checked_duration_since(Instant::now()))
                .or_else(|| {
                    e.refreshed_at.and_then(|t| {
                        (t + self.inner.min_interval).checked_duration_since(Instant::now())
                    })
                });
            if let Some(wait) = wait {
                // Not yet: look again once the cooldown or the interval is over.
                e.ahead_at = now + wait;
                return;
            }
            tracing::debug!(%provider, account, "token in refresh-ahead window, refreshing in the background");
            self.launch(provider, account, &mut e, true);
        }
    }

    /// Registers a flight in the entry and spawns the task that runs it.
    fn launch(&self, provider: Provider, account: &str, e: &mut Entry, ahead: bool) -> Flight {
        let (publisher, flight) = single_flight::channel();
        e.flight = Some(flight.clone());
        e.late = false;
        let task = FlightTask {
            tokens: self.clone(),
            provider,
            account: Arc::from(account),
            generation: e.generation,
            snapshot: snapshot(provider, account, e),
            ahead,
        };
        tokio::spawn(task.run(publisher));
        flight
    }

    fn ahead_at(&self, expires_at: SystemTime) -> SystemTime {
        let window = self.inner.refresh_ahead;
        if window <= self.inner.skew {
            return expires_at; // no background refresh
        }
        let jitter = (window / 10).mul_f64(fastrand::f64());
        (expires_at - window) + jitter
    }

    /// Applies a flight's result to the entry it was started for.
    fn apply(
        &self,
        task: &FlightTask,
        result: Result<StoredAccount, RefreshError>,
        duration: Duration,
        call: RefresherCall,
    ) -> FlightResult {
        let provider = task.provider;
        let counters = &self.inner.counters[idx(provider)];
        let map = &self.inner.maps[idx(provider)];
        let now = SystemTime::now();
        let event;
        let mut health = None;
        let outcome = {
            let Some(mut e) = map.get_mut(&*task.account) else {
                return FlightResult::Err(RefreshError::transient(
                    "the account was removed during the refresh",
                ));
            };
            if e.generation != task.generation {
                // Replaced while refreshing: the new tokens win, this result is discarded.
                return match &e.header {
                    Some(h) if now < e.expires_at => FlightResult::Ok(Lease {
                        header: h.clone(),
                        generation: e.generation,
                    }),
                    _ => FlightResult::Err(RefreshError::transient(
                        "the account was replaced during the refresh",
                    )),
                };
            }
            e.flight = None;
            e.late = false;
            match result {
                Ok(next) => {
                    // The refresher checked this; a hand-written refresher might not have.
                    let Some(header) = next.access_token.as_ref().and_then(Secret::bearer_header)
                    else {
                        let err =
                            RefreshError::transient("refreshed token is not a valid header value");
                        e.last_error = Some(err.clone());
                        bump(&counters.refresh_transient_error);
                        return FlightResult::Err(err);
                    };
                    let rotated = next.refresh_token != e.refresh_token;
                    e.refresh_token = next.refresh_token;
                    let expires = next
                        .expires_at
                        .and_then(|t| timestamp_to_system_time(t as i64));
                    e.expiry_known = expires.is_some();
                    e.expires_at = expires.unwrap_or(now + self.inner.default_lifetime);
                    // A token that comes back already inside the refresh-ahead window is not
                    // refreshed again in the background before `min_interval` has passed.
                    e.ahead_at = self
                        .ahead_at(e.expires_at)
                        .max(now + self.inner.min_interval);
                    e.cooldown_until = None;
                    e.failed_cycles = 0;
                    e.refreshed_at = Some(Instant::now());
                    e.header = Some(header.clone());
                    e.generation = next.generation.max(e.generation + 1);
                    e.last_refresh_at = Some(now);
                    e.last_error = None;
                    if std::mem::take(&mut e.episode) {
                        health = Some(HealthChange::Recovered);
                    }
                    if call == RefresherCall::NotMade {
                        // Another replica refreshed: this process only took the result
                        // (announced only when it ends an episode).
                        bump(&counters.coalesced);
                        let lease = Lease {
                            header,
                            generation: e.generation,
                        };
                        if health.is_none() {
                            return FlightResult::Ok(lease);
                        }
                        event = RefreshOutcome::Replaced;
                        FlightResult::Ok(lease)
                    } else {
                        bump(&counters.refresh_success);
                        event = RefreshOutcome::Refreshed {
                            refresh_token: e.refresh_token.clone(),
                            rotated,
                            expires_at: e.expiry_known.then_some(e.expires_at),
                        };
                        FlightResult::Ok(Lease {
                            header,
                            generation: e.generation,
                        })
                    }
                }
                Err(err) => {
                    e.last_error = Some(err.clone());
                    if err.is_rejected() {
                        e.needs_reauth = true;
                        e.episode = true;
                        health = Some(HealthChange::NeedsReauth);
                        bump(&counters.refresh_rejected);
                        event = RefreshOutcome::Rejected {
                            reason: err.to_string(),
                        };
                    } else if call == RefresherCall::NotMade {
                        // The backend was never called (the shared store could not be read or
                        // locked): nothing to cool down from, the store's own bounds apply.
                        if task.ahead {
                            let retry_in =
                                (self.inner.refresh_ahead / 10).max(Duration::from_secs(1));
                            e.ahead_at = e.ahead_at.max(now + retry_in);
                        }
                        bump(&counters.refresh_transient_error);
                        event = RefreshOutcome::Failed {
                            reason: err.to_string(),
                        };
                    } else {
                        e.failed_cycles = e.failed_cycles.saturating_add(1);
                        let cooldown = cooldown_for(&err, e.failed_cycles);
                        e.cooldown_until = Some(Instant::now() + cooldown);
                        let mut retry_in = cooldown;
                        if task.ahead {
                            retry_in = retry_in
                                .max((self.inner.refresh_ahead / 10).max(Duration::from_secs(1)));
                        }
                        e.ahead_at = e.ahead_at.max(now + retry_in);
                        tracing::warn!(%provider, account = &*task.account, ?cooldown,
                            failed_cycles = e.failed_cycles, "refresh cycle failed; account in cooldown");
                        if !std::mem::replace(&mut e.episode, true) {
                            health = Some(HealthChange::Failing);
                        }
                        bump(&counters.refresh_transient_error);
                        event = RefreshOutcome::Failed {
                            reason: err.to_string(),
                        };
                    }
                    FlightResult::Err(err)
                }
            }
        };
        let generation = match &outcome {
            FlightResult::Ok(l) => l.generation,
            FlightResult::Err(_) => task.generation,
        };
        self.inner.subscribers.publish(RefreshEvent {
            provider,
            account: Account::new(task.account.clone()),
            generation,
            duration,
            outcome: event,
            health,
        });
        outcome
    }

    /// A currently valid access token for `account`, for SDKs that take a token source instead
    /// of a tower service (google-apis-rs' `GetToken`, octocrab's token).
    ///
    /// The same engine as the layer: the cached token when it is valid beyond `skew`; otherwise
    /// the caller waits for a refresh — joining the one under way if there is one, so any number
    /// of concurrent callers make one refresh call. A token in the refresh-ahead window is
    /// returned at once while a background refresh starts. Errors are the layer's:
    /// [`ErrorKind::UnknownAccount`](crate::ErrorKind::UnknownAccount),
    /// [`ErrorKind::RefreshRejected`](crate::ErrorKind::RefreshRejected) (the account needs new
    /// tokens), [`ErrorKind::RefreshUnavailable`](crate::ErrorKind::RefreshUnavailable) (try again
    /// later; see [`Error::retry_after`]).
    ///
    /// When the API answers 401 to the returned token, call
    /// [`Tokens::access_token_after_unauthorized`] with it rather than this method: a token that
    /// is still valid by the clock would be handed back unchanged.
    ///
    /// ```
    /// use oauth_refresh_proxy::refresh::{BoxFuture, Refreshed, Refresher};
    /// use oauth_refresh_proxy::{Provider, RefreshError, Secret, TokenSeed, Tokens};
    ///
    /// struct Fresh;
    /// impl Refresher for Fresh {
    ///     fn refresh<'a>(&'a self, _: Provider, _: &'a Secret) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
    ///         Box::pin(async {
    ///             Ok(Refreshed { access_token: Secret::new("ya29.fresh"), refresh_token: None, expires_at: None })
    ///         })
    ///     }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let tokens = Tokens::builder(Fresh).build();
    /// // Only a refresh token: the first call refreshes, the next ones use the cached token.
    /// tokens.insert(Provider::Google, "alice", TokenSeed::new("1//refresh"));
    /// let token = tokens.access_token(Provider::Google, "alice").await.unwrap();
    /// assert_eq!(token.expose(), "ya29.fresh");
    /// let again = tokens.access_token(Provider::Google, "alice").await.unwrap();
    /// assert_eq!(again, token);
    /// assert_eq!(tokens.stats(Provider::Google).refresh_success, 1);
    /// # });
    /// ```
    pub async fn access_token(&self, provider: Provider, account: &str) -> Result<Secret, Error> {
        let lease = self.lease(provider, account).await?;
        Self::lease_token(provider, account, &lease)
    }

    /// A valid access token after the API answered 401 to `stale`: refreshes only when the
    /// cache still holds `stale` (any number of callers reporting the same token make one
    /// refresh call between them); when the cache already holds another token — someone else
    /// refreshed, or new tokens were put — that one is returned without a refresh, as
    /// [`Tokens::access_token`] would.
    ///
    /// ```
    /// use oauth_refresh_proxy::refresh::{BoxFuture, Refreshed, Refresher};
    /// use oauth_refresh_proxy::{Provider, RefreshError, Secret, TokenSeed, Tokens};
    ///
    /// struct Fresh;
    /// impl Refresher for Fresh {
    ///     fn refresh<'a>(&'a self, _: Provider, _: &'a Secret) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
    ///         Box::pin(async {
    ///             Ok(Refreshed { access_token: Secret::new("ghu_fresh"), refresh_token: None, expires_at: None })
    ///         })
    ///     }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let tokens = Tokens::builder(Fresh).build();
    /// tokens.insert(Provider::GitHub, "octo", TokenSeed::new("ghr_1").access_token("ghu_revoked"));
    /// let token = tokens.access_token(Provider::GitHub, "octo").await.unwrap();
    /// assert_eq!(token.expose(), "ghu_revoked"); // valid by the clock: no refresh yet
    ///
    /// // The API answered 401 to it: refresh.
    /// let fresh = tokens.access_token_after_unauthorized(Provider::GitHub, "octo", &token).await.unwrap();
    /// assert_eq!(fresh.expose(), "ghu_fresh");
    /// // A late report of the same stale token does not refresh again.
    /// let late = tokens.access_token_after_unauthorized(Provider::GitHub, "octo", &token).await.unwrap();
    /// assert_eq!(late, fresh);
    /// assert_eq!(tokens.stats(Provider::GitHub).refresh_success, 1);
    /// # });
    /// ```
    pub async fn access_token_after_unauthorized(
        &self,
        provider: Provider,
        account: &str,
        stale: &Secret,
    ) -> Result<Secret, Error> {
        let held = {
            let Some(e) = self.inner.maps[idx(provider)].get(account) else {
                return Err(Error::unknown_account(provider, account));
            };
            let holds_stale = e
                .header
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.strip_prefix("Bearer "))
                .is_some_and(|t| stale.constant_time_eq(t));
            holds_stale.then_some(e.generation)
        };
        let lease = match held {
            Some(generation) => {
                self.lease_after_unauthorized(provider, account, generation)
                    .await?
            }
            None => self.lease(provider, account).await?,
        };
        Self::lease_token(provider, account, &lease)
    }

    /// The access token of a lease: its header value minus `Bearer `.
    fn lease_token(provider: Provider, account: &str, lease: &Lease) -> Result<Secret, Error> {
        // Every cached header was built by `Secret::bearer_header`, so this always succeeds.
        lease
            .header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(Secret::new)
            .ok_or_else(|| {
                Error::new(
                    crate::ErrorKind::RefreshUnavailable,
                    Some(provider),
                    Some(Account::new(account)),
                    "the cached token is not a bearer header",
                )
            })
    }
}

struct FlightTask {
    tokens: Tokens,
    provider: Provider,
    account: Arc<str>,
    generation: u64,
    snapshot: StoredAccount,
    ahead: bool,
}

impl FlightTask {
    async fn run(self, tx: Publisher<FlightResult>) {
        let started = Instant::now();
        let inner = &self.tokens.inner;
        tracing::debug!(provider = %self.provider, account = &*self.account, generation = self.generation, "refreshing");
        // Called when an attempt timed out after sending: release the waiting callers now, and
        // mark the flight late so nobody starts another attempt while its answer is awaited.
        let on_timeout = {
            let tokens = self.tokens.clone();
            let (provider, account, generation) =
                (self.provider, self.account.clone(), self.generation);
            let tx = tx.clone();
            move |err: RefreshError| {
                if let Some(mut e) = tokens.inner.maps[idx(provider)].get_mut(&*account) {
                    if e.generation == generation && e.flight.is_some() {
                        e.late = true;
                    }
                }
                tx.publish(FlightResult::Err(err));
            }
        };
        // With a shared store, another replica's refresh may be adopted instead of calling the
        // refresher here: the store says which happened.
        let StoreRefresh { result, call } = match &inner.store {
            None => {
                let r = inner
                    .policy
                    .run_notify(
                        &*inner.refresher,
                        self.provider,
                        &self.snapshot.refresh_token,
                        on_timeout,
                    )
                    .await;
                let next = self.snapshot.after_refresh(&r, store::now_secs());
                StoreRefresh::made(r.map(|_| next))
            }
            Some(store) => {
                let tokens = self.tokens.clone();
                let provider = self.provider;
                let refresh: RefreshFn = Box::new(move |refresh_token| {
                    Box::pin(async move {
                        let inner = &tokens.inner;
                        inner
                            .policy
                            .run_notify(&*inner.refresher, provider, &refresh_token, on_timeout)
                            .await
                    })
                });
                store.refresh(self.snapshot.clone(), refresh).await
            }
        };
        let duration = started.elapsed();
        match &result {
            Ok(_) => {
                tracing::info!(provider = %self.provider, account = &*self.account, ?duration, "refreshed")
            }
            Err(e) => {
                tracing::warn!(provider = %self.provider, account = &*self.account, error = %e, "refresh failed")
            }
        }
        let outcome = self.tokens.apply(&self, result, duration, call);
        tx.publish(outcome);
    }
}

/// The cooldown after the `failed_cycles`-th consecutive failed cycle ending in `err`: the
/// backend's `Retry-After` when it sent one, else 5 s doubling per cycle; both capped at 5 min,
/// plus up to 10% jitter (never below what the backend asked for).
fn cooldown_for(err: &RefreshError, failed_cycles: u32) -> Duration {
    let base = err.retry_after().unwrap_or_else(|| {
        let doublings = failed_cycles.saturating_sub(1).min(16);
        BASE_COOLDOWN.saturating_mul(1u32 << doublings)
    });
    let base = base.min(MAX_COOLDOWN);
    (base + base.mul_f64(fastrand::f64() * 0.1)).min(MAX_COOLDOWN.max(base))
}

/// `refresh_unavailable` without a backend call, asking the caller to retry after `after`.
fn unavailable(provider: Provider, account: &str, why: &str, after: Duration) -> Error {
    Error::from_refresh(provider, account, &RefreshError::unconfirmed(why))
        .retry_after_at_least(after)
}

fn rejected_error(provider: Provider, account: &str, e: &Entry) -> Error {
    Error::from_refresh(provider, account, &store::rejection(e.last_error.as_ref()))
}

fn snapshot(provider: Provider, account: &str, e: &Entry) -> StoredAccount {
    StoredAccount {
        provider,
        account: account.to_string(),
        refresh_token: e.refresh_token.clone(),
        // The access token is kept once, inside its header value (`Bearer <token>`).
        access_token: e
            .header
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(Secret::new),
        expires_at: (e.header.is_some() && e.expiry_known).then(|| unix_secs(e.expires_at)),
        generation: e.generation,
        needs_reauth: e.needs_reauth,
        last_refresh_at: e.last_refresh_at.map(unix_secs),
        last_error: e.last_error.clone(),
        seed_fingerprint: e.seed_fingerprint.clone(),
    }
}

fn info(provider: Provider, account: &str, e: &Entry) -> AccountInfo {
    AccountInfo {
        provider,
        account: account.to_string(),
        expires_at: (e.header.is_some() && e.expiry_known).then(|| unix_secs(e.expires_at)),
        generation: e.generation,
        needs_reauth: e.needs_reauth,
        last_refresh_at: e.last_refresh_at.map(unix_secs),
        last_error: e.last_error.as_ref().map(ToString::to_string),
        valid: e.header.is_some() && SystemTime::now() < e.expires_at,
    }
}
