//! One account's cache entry: what it holds, how a new state (from a seed, the application,
//! the operator or the store) is applied to it, and how it is listed and snapshotted for the
//! store.

use std::time::Duration;

use http::HeaderValue;

use super::clock::{MonoMs, UnixMs, UnixSecs};
use super::flight::Flight;
use super::id::Id;
use super::{idx, HealthChange, RefreshEvent, RefreshOutcome, Tokens};
use crate::provider::{Account, Provider};
use crate::refresh::RefreshError;
use crate::token::{timestamp_to_system_time, unix_secs, CachedSecret, Secret, TokenSeed};
use crate::tokens::store::{StoreUpdate, StoredAccount};

/// One account in the cache. The access token is kept once, inside its header value.
///
/// # Layout (issue 11: memory per cached account)
///
/// What every account needs — the header, the refresh token, the times the request path
/// reads, the generation and the flags — is inline; what only an account in the middle of a
/// refresh or in trouble needs (the flight, the cooldown, the last error; and the seed
/// fingerprint, which only configured accounts have) is behind one optional box, [`Rare`],
/// allocated when first needed and freed as soon as it holds nothing again ([`Entry::tidy`]).
/// The entry also holds its id (inline up to 22 bytes, see [`Id`]), being its table's key.
/// It is 128 bytes, one 144-byte malloc chunk (it was 152 bytes in a 160-byte chunk, without
/// the id, which then took a 48-byte chunk of its own); a test keeps it there. The request
/// path reads the box only when a refresh-ahead is due.
pub(super) struct Entry {
    /// The account id: the entry's key in its [`Table`](super::table::Table) (hashed and
    /// compared by it, see the impls below).
    pub(super) id: Id,
    /// The injected header, `None` when there is no usable access token.
    pub(super) header: Option<HeaderValue>,
    pub(super) refresh_token: CachedSecret,
    /// Effective expiry of `header` (the default lifetime applied when unknown).
    pub(super) expires_at: UnixMs,
    /// When a background refresh should start.
    pub(super) ahead_at: UnixMs,
    pub(super) generation: u64,
    /// When the current tokens were obtained by a refresh (here or by another replica), for
    /// `min_interval`; `None` for tokens put by the operator or the config. Inline, not in
    /// [`Rare`]: in a long-running cache every account has been refreshed.
    pub(super) refreshed_at: Option<MonoMs>,
    /// The rarely set state; `None` when all of it is at its default.
    rare: Option<Box<Rare>>,
    /// When the last successful refresh happened (only ever reported in seconds).
    pub(super) last_refresh_at: Option<UnixSecs>,
    /// Whether `expires_at` came from the provider or from the default lifetime.
    pub(super) expiry_known: bool,
    pub(super) needs_reauth: bool,
    /// In an episode of trouble: `NeedsReauth` or `Failing` was announced (or the account was
    /// loaded needing re-authorisation) and `Recovered` not yet.
    pub(super) episode: bool,
}

/// The part of an [`Entry`] that is at its default for almost every account at almost every
/// moment: boxed, so the common entry stays small.
#[derive(Default)]
pub(super) struct Rare {
    /// The refresh under way.
    pub(super) flight: Option<Flight>,
    /// The flight's attempt timed out after sending; its answer is still awaited.
    pub(super) late: bool,
    /// Consecutive failed cycles (the cooldown doubles with each).
    pub(super) failed_cycles: u32,
    /// No refresh before this (a failed cycle's cooldown).
    pub(super) cooldown_until: Option<MonoMs>,
    pub(super) last_error: Option<RefreshError>,
    /// Fingerprint of the configured refresh token the account started from.
    pub(super) seed_fingerprint: Option<Box<str>>,
}

impl Rare {
    fn is_default(&self) -> bool {
        self.flight.is_none()
            && !self.late
            && self.failed_cycles == 0
            && self.cooldown_until.is_none()
            && self.last_error.is_none()
            && self.seed_fingerprint.is_none()
    }
}

impl Entry {
    /// A new entry for `id` holding only `refresh_token`, its times at `now`.
    fn new(id: Id, refresh_token: &Secret, now: UnixMs) -> Entry {
        Entry {
            id,
            header: None,
            refresh_token: CachedSecret::new(refresh_token),
            expires_at: now,
            ahead_at: now,
            generation: 0,
            refreshed_at: None,
            rare: None,
            last_refresh_at: None,
            expiry_known: false,
            needs_reauth: false,
            episode: false,
        }
    }

    /// An entry for `id` with an empty refresh token (for tests).
    #[cfg(test)]
    pub(super) fn for_tests(id: Id) -> Entry {
        Entry::new(id, &Secret::new(""), UnixMs::now())
    }

    /// The refresh under way, if any.
    pub(super) fn flight(&self) -> Option<&Flight> {
        self.rare.as_ref().and_then(|r| r.flight.as_ref())
    }

    /// Whether the flight's attempt timed out after sending and its answer is awaited.
    pub(super) fn late(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.late)
    }

    /// The end of the cooldown, if the account is (or was) in one.
    pub(super) fn cooldown_until(&self) -> Option<MonoMs> {
        self.rare.as_ref().and_then(|r| r.cooldown_until)
    }

    pub(super) fn last_error(&self) -> Option<&RefreshError> {
        self.rare.as_ref().and_then(|r| r.last_error.as_ref())
    }

    pub(super) fn seed_fingerprint(&self) -> Option<&str> {
        self.rare
            .as_ref()
            .and_then(|r| r.seed_fingerprint.as_deref())
    }

    /// The rare state, allocated if needed (call [`Entry::tidy`] after clearing fields).
    pub(super) fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Clears the rare fields `clear` resets, then frees the box if nothing is left in it.
    pub(super) fn clear_rare(&mut self, clear: impl FnOnce(&mut Rare)) {
        if let Some(rare) = &mut self.rare {
            clear(rare);
        }
        self.tidy();
    }

    /// Frees the rare state's box when it holds only defaults.
    pub(super) fn tidy(&mut self) {
        if self.rare.as_ref().is_some_and(|r| r.is_default()) {
            self.rare = None;
        }
    }
}

// An entry is its table's key: hashed, compared and looked up by its id's bytes alone (`Hash`
// exactly as `[u8]` hashes, for `Borrow`'s contract). `Box` is a fundamental type, so the
// lookup by `&[u8]` can be declared on `Box<Entry>` here.
impl std::hash::Hash for Entry {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.id == other.id
    }
}

impl Eq for Entry {}

impl std::borrow::Borrow<[u8]> for Box<Entry> {
    fn borrow(&self) -> &[u8] {
        self.id.as_bytes()
    }
}

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

/// Where a change to an account's entry comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// This process's own change (put by the application, the operator or the configuration):
    /// applied whatever its generation, and any refresh under way is detached.
    Local,
    /// Read from, or announced by, the store: applied only when newer than the entry.
    Store,
}

pub(super) fn snapshot(provider: Provider, account: &str, e: &Entry) -> StoredAccount {
    StoredAccount {
        provider,
        account: account.to_string(),
        refresh_token: e.refresh_token.to_secret(),
        // The access token is kept once, inside its header value (`Bearer <token>`).
        access_token: e
            .header
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(Secret::new),
        expires_at: (e.header.is_some() && e.expiry_known).then(|| e.expires_at.unix_secs()),
        generation: e.generation,
        needs_reauth: e.needs_reauth,
        last_refresh_at: e.last_refresh_at.map(UnixSecs::unix_secs),
        last_error: e.last_error().cloned(),
        seed_fingerprint: e.seed_fingerprint().map(String::from),
    }
}

pub(super) fn info(provider: Provider, account: &str, e: &Entry) -> AccountInfo {
    AccountInfo {
        provider,
        account: account.to_string(),
        expires_at: (e.header.is_some() && e.expiry_known).then(|| e.expires_at.unix_secs()),
        generation: e.generation,
        needs_reauth: e.needs_reauth,
        last_refresh_at: e.last_refresh_at.map(UnixSecs::unix_secs),
        last_error: e.last_error().map(ToString::to_string),
        valid: e.header.is_some() && UnixMs::now() < e.expires_at,
    }
}

impl Tokens {
    /// The state a seed gives an account, one generation past its current one.
    pub(super) fn state_from_seed(
        &self,
        provider: Provider,
        account: &str,
        seed: TokenSeed,
        seed_fingerprint: Option<String>,
    ) -> StoredAccount {
        let generation = self.inner.maps[idx(provider)]
            .read(account)
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

    /// Sets an account's entry from `state` (see [`Origin`]). Returns whether an entry existed.
    pub(super) fn set_state(&self, account: Id, state: StoredAccount, origin: Origin) -> bool {
        let local = origin == Origin::Local;
        let now = UnixMs::now();
        let header = state.access_token.as_ref().and_then(Secret::bearer_header);
        let known = header.is_some() && state.expires_at.is_some();
        let expires_at = match (&header, state.expires_at) {
            (Some(_), Some(at)) => timestamp_to_system_time(at as i64).map_or(now, UnixMs::of),
            (Some(_), None) => now + self.inner.settings.default_lifetime,
            (None, _) => now,
        };
        let map = &self.inner.maps[idx(state.provider)];
        let (mut e, existed) =
            map.get_or_insert_with(account, |id| Entry::new(id, &state.refresh_token, now));
        if !existed {
            // Under the new entry's guard: lock order map entry, then index.
            self.inner.index.insert(state.provider, e.id.as_str());
        }
        if !local && existed && e.generation >= state.generation {
            return existed;
        }
        // New tokens that need no re-authorisation end an episode (SPEC 4.11).
        let recovered = e.episode && !state.needs_reauth;
        e.episode = state.needs_reauth;
        if !e.refresh_token.is(&state.refresh_token) {
            e.refresh_token = CachedSecret::new(&state.refresh_token);
        }
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
        e.refreshed_at = None;
        e.last_refresh_at = state
            .last_refresh_at
            .and_then(|t| timestamp_to_system_time(t as i64))
            .map(|t| UnixSecs::of(UnixMs::of(t)));
        // The flight is detached, and new tokens (put here or adopted from another replica)
        // end any cooldown: all the rare state is replaced.
        e.rare = None;
        if state.last_error.is_some() || state.seed_fingerprint.is_some() {
            let rare = e.rare_mut();
            rare.last_error = state.last_error;
            rare.seed_fingerprint = state.seed_fingerprint.map(String::into_boxed_str);
        }
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
    pub(super) fn apply_update(&self, update: StoreUpdate) {
        match update {
            StoreUpdate::Changed(state) => {
                tracing::debug!(provider = %state.provider, account = %state.account, generation = state.generation, "account changed elsewhere");
                let (provider, generation) = (state.provider, state.generation);
                let refreshed = state.last_refresh_at.is_some();
                let account = Id::from(state.account.as_str());
                self.set_state(account.clone(), state, Origin::Store);
                // Another replica's refresh counts for `min_interval` here too.
                if let Some(mut e) = self.inner.maps[idx(provider)].get_mut(account.as_str()) {
                    if refreshed && e.generation == generation {
                        e.refreshed_at = Some(MonoMs::now());
                    }
                }
            }
            StoreUpdate::Removed { provider, account } => {
                self.remove(provider, &account);
            }
        }
    }

    /// Whether the entry's tokens came from a refresh less than `min_interval` ago (and no
    /// refresh runs now): they are used as returned, however soon they expire.
    pub(super) fn within_min_interval(&self, e: &Entry) -> bool {
        e.flight().is_none()
            && e.refreshed_at
                .is_some_and(|t| t.elapsed() < self.inner.settings.min_interval)
    }

    pub(super) fn ahead_at(&self, expires_at: UnixMs) -> UnixMs {
        let window = self.inner.settings.refresh_ahead;
        if window <= self.inner.settings.skew {
            return expires_at; // no background refresh
        }
        let jitter = (window / 10).mul_f64(fastrand::f64());
        (expires_at - window) + jitter
    }
}

#[cfg(test)]
mod tests {
    use super::{Entry, Rare};

    /// The layout the module's memory figures rest on (64-bit targets): the entry in one
    /// 144-byte malloc chunk (size + 8 rounded up to 16).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn the_entry_fits_a_144_byte_chunk() {
        println!(
            "Entry {} B, Rare {} B",
            std::mem::size_of::<Entry>(),
            std::mem::size_of::<Rare>()
        );
        assert!(std::mem::size_of::<Entry>() <= 136);
    }
}
