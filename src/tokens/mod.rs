//! Where tokens live and how refreshes are coalesced.
//!
//! [`Tokens`] is a cheap-to-clone handle on one cache shared by every layer and task that uses
//! it: one sharded table per provider of the accounts' entries, keyed by account id. An entry holds the
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
//!   use it (someone else refreshed already — with GitHub, whose refresh tokens rotate, a
//!   second refresh with the spent token would fail);
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
//!
//! # Where each part lives
//!
//! `mod.rs` holds the handle and the account API (insert, save, restore, list, refresh now);
//! `builder` the settings and their defaults; `entry` one account's state and how new states
//! are applied; `table` the sharded set of entries per provider; `id` the entries' key; `lease`
//! handing tokens to requests (on a coarse `clock`);
//! `flight` the refresh of one account (the decision, the task, applying its result); `stats`
//! the counters; `events` the announcements; `index` the sorted ids for paged listings, kept
//! in an `id_set`; `store` the durable and shared stores.
//!
//! # Memory per account
//!
//! Issue 11 asks for at most 512 bytes per cached account at a million accounts (access token
//! 181 B, refresh token 100 B, id 12 B; `examples/memory_per_account.rs`). The layout, as
//! allocated (glibc: size + 8 rounded up to 16): the `Bearer …` header value, 208 (its bytes
//! must be one `Bytes` so that a request's clone stays a reference count); the entry with its
//! id inline, 144 (rare state boxed apart, see `entry`; ids up to 22 bytes inline, see `id`);
//! the refresh token, 112 (a `Box<str>`, no reference counts); the table's 8-byte slot at a
//! load of ~0.48, ~19 (`table`, a `HashSet` of boxed entries: a `DashMap` keeps the key apart
//! from the value, 32-byte slots, ~69); the index, ~19 (`id_set`). 501 measured. Decided
//! against: squeezing the id into 16 bytes (inline up to 15), which fits this benchmark's
//! 12-byte ids but costs ids of 16 to 22 bytes (many e-mail addresses, Google's 21-digit
//! subject ids) ~60 bytes more each.

mod builder;
mod clock;
mod entry;
mod events;
mod flight;
mod id;
mod id_set;
mod index;
mod lease;
mod stats;
pub mod store;
mod table;

use std::sync::Arc;

pub use builder::TokensBuilder;
pub use entry::AccountInfo;
pub use events::{Events, HealthChange, RefreshEvent, RefreshOutcome};
pub use index::AccountPage;
pub(crate) use lease::{Lease, LeaseMemo};
pub use stats::ProviderStats;

use entry::{info, Origin};
use flight::{Fallback, Trigger};
use id::Id;
use stats::Counters;

use crate::error::Error;
use crate::provider::Provider;
use crate::refresh::Refresher;
use crate::token::{fingerprint, TokenSeed};
use store::{Store, StoredAccount};

struct Inner {
    /// The accounts, per provider: sharded sets of boxed entries, each holding its id (see
    /// `table`), so the power-of-two tables hold 8-byte slots, not whole entries.
    maps: [table::Table; 2],
    /// The maps' ids, sorted, for paged listings; changed only under the map's entry guard.
    index: index::Index,
    counters: [Counters; 2],
    refresher: Arc<dyn Refresher>,
    settings: builder::Settings,
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

impl Tokens {
    /// Adds an account to this process's cache, or replaces its tokens there (not written to a
    /// store: see [`Tokens::save`]). Returns `true` when it replaced an account.
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
        let account = Id::from(account.into());
        let state = self.state_from_seed(provider, account.as_str(), seed, None);
        self.set_state(account, state, Origin::Local)
    }

    /// Saves an account: writes it to the store (when there is one), then adds or replaces it in
    /// the cache like [`Tokens::insert`]. Returns `true` when it replaced an account. The account
    /// keeps the fingerprint of the configured refresh token it started from, if any.
    ///
    /// The account API comes in two pairs: [`Tokens::save`] / [`Tokens::delete`] go through the
    /// store (async, they can fail); [`Tokens::insert`] / [`Tokens::remove`] touch this
    /// process's cache only.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use oauth_refresh_proxy::{BackendRefresher, Provider, TokenSeed, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// assert!(!tokens.save(Provider::GitHub, "octo", TokenSeed::new("ghr_1")).await.unwrap());
    /// # });
    /// ```
    pub async fn save(
        &self,
        provider: Provider,
        account: &str,
        seed: TokenSeed,
    ) -> Result<bool, Error> {
        let fp = self.inner.maps[idx(provider)]
            .read(account)
            .get(account)
            .and_then(|e| e.seed_fingerprint().map(String::from));
        let state = self.state_from_seed(provider, account, seed, fp);
        if let Some(store) = &self.inner.store {
            store
                .save(state.clone())
                .await
                .map_err(|e| Error::store(provider, account, &e))?;
        }
        Ok(self.set_state(Id::from(account), state, Origin::Local))
    }

    /// Deletes an account: from the store first (when there is one), then from the cache like
    /// [`Tokens::remove`]. Returns whether it existed.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use oauth_refresh_proxy::{BackendRefresher, Provider, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// assert!(!tokens.delete(Provider::Google, "nobody").await.unwrap());
    /// # });
    /// ```
    pub async fn delete(&self, provider: Provider, account: &str) -> Result<bool, Error> {
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
                self.set_state(Id::from(a.as_str()), state, Origin::Local);
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
                    self.set_state(Id::from(a.as_str()), s, Origin::Store);
                }
                previous => {
                    let mut state = self.state_from_seed(p, &a, seed, Some(fp));
                    state.generation = previous.map_or(1, |s| s.generation + 1);
                    store
                        .save(state.clone())
                        .await
                        .map_err(|e| Error::store(p, &a, &e))?;
                    self.set_state(Id::from(a.as_str()), state, Origin::Store);
                }
            }
        }
        for (_, s) in stored {
            self.set_state(Id::from(s.account.as_str()), s, Origin::Store);
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

    /// Removes an account from this process's cache (not from a store: see [`Tokens::delete`]).
    /// Returns whether it existed.
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
            .read(account)
            .get(account)
            .map(|e| info(provider, e.id.as_str(), e))
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
        let step = self.step(provider, account, Trigger::Forced)?;
        self.finish(provider, account, step, Fallback::None).await?;
        self.get(provider, account)
            .ok_or_else(|| Error::unknown_account(provider, account))
    }
}
