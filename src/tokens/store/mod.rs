//! Where tokens are kept beyond one process.
//!
//! Without a store, [`Tokens`](crate::Tokens) keeps everything in memory. With one, every
//! account change goes through it:
//!
//! * a **refresh** runs inside [`Store::refresh`], which returns the account's new state only
//!   after it is durable — so a rotated refresh token is written **before** any request uses
//!   the new access token. The default implementation refreshes and then [`Store::save`]s; a
//!   shared store (Redis) overrides it to take a cross-replica lock fenced by generation, and to
//!   adopt a newer generation written by another replica instead of refreshing again;
//! * **inserts and removals** by the application or the admin API are saved first
//!   ([`Tokens::save`](crate::Tokens::save), [`Tokens::delete`](crate::Tokens::delete));
//! * **start-up** merges the stored accounts with the configured seeds
//!   ([`Tokens::restore`](crate::Tokens::restore)): the stored (possibly rotated) tokens win while
//!   the configured refresh token is the one they started from (compared by fingerprint);
//! * a shared store announces changes made elsewhere through [`Store::updates`].

#[cfg(feature = "file-store")]
pub mod file;
#[cfg(any(feature = "file-store", feature = "redis-store"))]
mod record;
#[cfg(feature = "redis-store")]
pub mod redis;

#[cfg(any(feature = "file-store", feature = "redis-store"))]
pub use record::{Encryption, InvalidKey};

use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::provider::Provider;
use crate::refresh::{BoxFuture, RefreshError, Refreshed};
use crate::token::Secret;

/// One account as a store keeps it. Holds secrets: never log it (its `Debug` redacts them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAccount {
    /// The provider.
    pub provider: Provider,
    /// The account id.
    pub account: String,
    /// The current refresh token (the rotated one after a rotation).
    pub refresh_token: Secret,
    /// The current access token, if any.
    pub access_token: Option<Secret>,
    /// When the access token expires (unix seconds), when known.
    pub expires_at: Option<u64>,
    /// The token generation.
    pub generation: u64,
    /// Whether the refresh token was rejected.
    pub needs_reauth: bool,
    /// When the last successful refresh happened (unix seconds).
    pub last_refresh_at: Option<u64>,
    /// The last refresh error (never a token).
    pub last_error: Option<RefreshError>,
    /// Fingerprint of the configured refresh token this account started from (see
    /// [`fingerprint`](crate::token::fingerprint)); `None` for accounts created at run time.
    pub seed_fingerprint: Option<String>,
}

impl StoredAccount {
    /// The state after a refresh of `self` produced `result` (`now` in unix seconds): on
    /// success a new generation, the new access token and — when rotated — the new refresh
    /// token; on rejection `needs_reauth`; on a transient failure only `last_error`.
    ///
    /// ```
    /// use oauth_refresh_proxy::{Provider, Secret, refresh::Refreshed};
    /// use oauth_refresh_proxy::store::StoredAccount;
    ///
    /// let a = StoredAccount::new(Provider::GitHub, "octo", Secret::new("ghr_1"));
    /// let next = a.after_refresh(&Ok(Refreshed {
    ///     access_token: Secret::new("ghu_2"),
    ///     refresh_token: Some(Secret::new("ghr_2")),
    ///     expires_at: None,
    /// }), 1_700_000_000);
    /// assert_eq!(next.generation, a.generation + 1);
    /// assert_eq!(next.refresh_token.expose(), "ghr_2");
    /// ```
    pub fn after_refresh(
        &self,
        result: &Result<Refreshed, RefreshError>,
        now: u64,
    ) -> StoredAccount {
        let mut next = self.clone();
        match result {
            Ok(r) => {
                if let Some(rt) = &r.refresh_token {
                    next.refresh_token = rt.clone();
                }
                next.access_token = Some(r.access_token.clone());
                next.expires_at = r.expires_at.map(crate::token::unix_secs);
                next.generation += 1;
                next.needs_reauth = false;
                next.last_refresh_at = Some(now);
                next.last_error = None;
            }
            Err(e) => {
                next.last_error = Some(e.clone());
                next.needs_reauth = e.is_rejected();
            }
        }
        next
    }

    /// A new account with only a refresh token, generation 0.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{Provider, Secret, store::StoredAccount};
    /// let a = StoredAccount::new(Provider::Google, "alice", Secret::new("1//r"));
    /// assert_eq!(a.generation, 0);
    /// ```
    pub fn new(provider: Provider, account: &str, refresh_token: Secret) -> Self {
        StoredAccount {
            provider,
            account: account.to_string(),
            refresh_token,
            access_token: None,
            expires_at: None,
            generation: 0,
            needs_reauth: false,
            last_refresh_at: None,
            last_error: None,
            seed_fingerprint: None,
        }
    }
}

impl StoredAccount {
    /// Why the account needs re-authorisation, as the error its refreshes fail with: the
    /// recorded rejection, or a generic one when the record holds another (or no) error.
    ///
    /// ```
    /// use oauth_refresh_proxy::{Provider, RefreshError, Secret};
    /// use oauth_refresh_proxy::store::StoredAccount;
    ///
    /// let mut a = StoredAccount::new(Provider::GitHub, "octo", Secret::new("ghr_1"));
    /// a.needs_reauth = true;
    /// a.last_error = Some(RefreshError::rejected("bad_refresh_token"));
    /// assert_eq!(a.rejection(), RefreshError::rejected("bad_refresh_token"));
    /// ```
    pub fn rejection(&self) -> RefreshError {
        rejection(self.last_error.as_ref())
    }
}

/// The rejection an account whose last error is `last_error` fails with.
pub(crate) fn rejection(last_error: Option<&RefreshError>) -> RefreshError {
    match last_error {
        Some(e @ RefreshError::Rejected(_)) => e.clone(),
        Some(other) => RefreshError::rejected(other.to_string()),
        None => RefreshError::rejected("refresh token rejected"),
    }
}

/// A change another process made, announced by a shared store.
#[derive(Clone, Debug)]
pub enum StoreUpdate {
    /// The account was created or changed.
    Changed(StoredAccount),
    /// The account was removed.
    Removed {
        /// The provider.
        provider: Provider,
        /// The account id.
        account: String,
    },
}

/// A store failure (unreachable, corrupt, …). Never contains a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("token store: {0}")]
pub struct StoreError(pub String);

/// Whether [`Store::refresh`] called the refresher in this process.
///
/// ```
/// use oauth_refresh_proxy::store::RefresherCall;
/// assert_ne!(RefresherCall::Made, RefresherCall::NotMade);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefresherCall {
    /// The refresher was called here: the result is this process's own refresh (counted and
    /// announced as one, and a failure puts the account in cooldown).
    Made,
    /// The refresher was not called: the result was adopted from the store (another replica
    /// refreshed first, or the account is marked as needing re-authorisation there), or the
    /// store failed before any call (nothing was spent, so there is nothing to cool down from).
    NotMade,
}

/// What [`Store::refresh`] returns: the account's new state (or why there is none) and whether
/// the refresher was called to get it.
///
/// ```
/// use oauth_refresh_proxy::{Provider, RefreshError, Secret};
/// use oauth_refresh_proxy::store::{RefresherCall, StoreRefresh};
///
/// let done = StoreRefresh::not_made(Err(RefreshError::transient("store down")));
/// assert_eq!(done.call, RefresherCall::NotMade);
/// ```
#[derive(Clone, Debug)]
pub struct StoreRefresh {
    /// The account's state after the refresh, or the refresh's error.
    pub result: Result<StoredAccount, RefreshError>,
    /// Whether the refresher was called in this process.
    pub call: RefresherCall,
}

impl StoreRefresh {
    /// A result this process's refresher call produced.
    pub fn made(result: Result<StoredAccount, RefreshError>) -> Self {
        StoreRefresh {
            result,
            call: RefresherCall::Made,
        }
    }

    /// A result obtained without calling the refresher.
    pub fn not_made(result: Result<StoredAccount, RefreshError>) -> Self {
        StoreRefresh {
            result,
            call: RefresherCall::NotMade,
        }
    }
}

/// The refresh a store runs for an account: called with the refresh token to spend.
pub type RefreshFn =
    Box<dyn FnOnce(Secret) -> BoxFuture<'static, Result<Refreshed, RefreshError>> + Send>;

/// Durable or shared storage of accounts.
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and `check-config` (`"file"`, `"redis"`).
    fn kind(&self) -> &'static str;

    /// Every stored account.
    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredAccount>, StoreError>>;

    /// Writes `account` (replacing any previous state); returns once durable.
    fn save(&self, account: StoredAccount) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Removes an account; removing an unknown account is not an error.
    fn remove<'a>(
        &'a self,
        provider: Provider,
        account: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Whether the store is reachable now (`/readyz`).
    fn ready(&self) -> BoxFuture<'_, bool>;

    /// Refreshes `current` and returns the account's new state once it is durable, and
    /// whether the refresher was called for it ([`RefresherCall`]).
    ///
    /// The default runs `refresh` with `current`'s refresh token and saves the result (success
    /// or rejection) before returning, retrying the write a few times; if the write still
    /// fails after a success, the new state is returned anyway (dropping a rotated refresh
    /// token would lose the account) and the failure is logged.
    fn refresh(&self, current: StoredAccount, refresh: RefreshFn) -> BoxFuture<'_, StoreRefresh> {
        Box::pin(async move {
            let result = refresh(current.refresh_token.clone()).await;
            match result {
                Err(e) if !e.is_rejected() => return StoreRefresh::made(Err(e)),
                _ => {}
            }
            let next = current.after_refresh(&result, now_secs());
            let mut saved = Err(StoreError("not attempted".into()));
            for attempt in 0..3u32 {
                saved = self.save(next.clone()).await;
                if saved.is_ok() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
            if let Err(e) = saved {
                tracing::error!(provider = %current.provider, account = %current.account, error = %e,
                    "refreshed tokens could not be persisted; they are kept in memory");
            }
            StoreRefresh::made(result.map(|_| next))
        })
    }

    /// Changes made by other processes, for stores shared between them; `None` otherwise.
    /// Called once, when the [`Tokens`](crate::Tokens) is built.
    fn updates(&self) -> Option<mpsc::UnboundedReceiver<StoreUpdate>> {
        None
    }

    /// Claims `key` for `ttl` among every process sharing this store: `Ok(true)` for the first
    /// claimer, `Ok(false)` for everyone after it until `ttl` has passed. The sidecar claims
    /// each webhook event before sending it, so a fleet sends it once. A store that is not
    /// shared grants every claim (the default).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use oauth_refresh_proxy::store::{file::FileStore, Store};
    /// # let dir = std::env::temp_dir().join(format!("orp-doc-claim-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// let store = FileStore::open(&dir.join("tokens.db")).unwrap();
    /// let ttl = std::time::Duration::from_secs(60);
    /// assert!(store.claim("event-1", ttl).await.unwrap());
    /// assert!(store.claim("event-1", ttl).await.unwrap()); // one process: always granted
    /// # drop(store);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # });
    /// ```
    fn claim<'a>(
        &'a self,
        key: &'a str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let _ = (key, ttl);
        Box::pin(async { Ok(true) })
    }
}

/// Now, in unix seconds.
pub(crate) fn now_secs() -> u64 {
    crate::token::unix_secs(SystemTime::now())
}
