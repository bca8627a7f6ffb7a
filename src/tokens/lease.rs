//! Handing a token to a request: the cached header when it is usable (a background refresh
//! started in the refresh-ahead window), else the result of a refresh; and the access-token API
//! for SDKs that take a token source instead of a tower service.

use http::HeaderValue;

use super::clock::UnixMs;
use super::flight::{rejected_error, Fallback, Trigger};
use super::{idx, Tokens};
use crate::error::Error;
use crate::provider::{Account, Provider};
use crate::token::Secret;

/// A token handed to one request: its header value and its generation.
#[derive(Clone)]
pub(crate) struct Lease {
    pub(crate) header: HeaderValue,
    pub(crate) generation: u64,
}

/// A request path's memo of the last lease it was handed (issue 11: the layer's hot path).
///
/// Each [`Refresh`](crate::layer::Refresh) service keeps one: the account it last sent for,
/// that account's lease, the epoch of the provider's table when the lease was read, and until
/// when the lease would be handed out as it is. While the table's epoch has not moved (no entry
/// of the provider was written, inserted or removed since: see `table`) and that time has not
/// come, a lookup would find exactly what the memo holds and decide exactly the same — the
/// token valid beyond `skew`, outside the refresh-ahead window — so the memo's lease is used
/// without touching the table. Anything else is a lookup, as without the memo: an account that
/// needs re-authorisation, a token within `skew` or due a refresh-ahead is never memoised.
///
/// A memo holding another account is replaced when its lease went stale, or after a few
/// lookups in a row for other accounts (a service shared by many accounts would otherwise pay
/// for replacing it on every request). Nothing is memoised by a service's first call: a
/// service cloned for each request (`svc.clone().oneshot(req)`, the sidecar) would pay for a
/// memo it never reads.
#[derive(Clone, Default)]
pub(crate) struct LeaseMemo {
    memo: Option<Memo>,
    /// Whether a call went through this memo (its service's, or the one it was cloned from).
    used: bool,
}

#[derive(Clone)]
struct Memo {
    provider: Provider,
    account: Account,
    lease: Lease,
    epoch: u64,
    /// The earlier of `skew` before the expiry and the refresh-ahead start.
    until: UnixMs,
    /// Lookups in a row for other accounts.
    misses: u8,
}

/// After this many lookups in a row for other accounts, a memo still valid is replaced.
const MEMO_PATIENCE: u8 = 4;

impl std::fmt::Debug for LeaseMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        match &self.memo {
            Some(m) => f
                .debug_struct("LeaseMemo")
                .field("provider", &m.provider)
                .field("account", &m.account.as_str())
                .field("generation", &m.lease.generation)
                .finish(),
            None => f.write_str("LeaseMemo(empty)"),
        }
    }
}

impl Tokens {
    /// The token for a request, without waiting: `Ok(None)` when a refresh must be awaited
    /// first (see [`Tokens::lease`]). Starts a background refresh in the refresh-ahead window.
    pub(crate) fn try_lease(
        &self,
        provider: Provider,
        account: &str,
    ) -> Result<Option<Lease>, Error> {
        let (lease, _) = self.look_up(provider, account, UnixMs::coarse())?;
        Ok(lease)
    }

    /// [`Tokens::try_lease`], answered from `memo` when it holds `account`'s lease and the
    /// table has not changed since (see [`LeaseMemo`]); a lookup otherwise, remembered in
    /// `memo` when it may be.
    #[inline]
    pub(crate) fn try_lease_memo(
        &self,
        provider: Provider,
        account: &Account,
        memo: &mut LeaseMemo,
    ) -> Result<Option<Lease>, Error> {
        let now = UnixMs::coarse();
        // Loaded before the lookup: a write after it moves the epoch past what is memoised.
        let epoch = self.inner.maps[idx(provider)].epoch();
        let mine = match &mut memo.memo {
            Some(m) if m.provider == provider && m.account.same(account) => {
                if m.epoch == epoch && now < m.until {
                    m.misses = 0;
                    return Ok(Some(m.lease.clone()));
                }
                true
            }
            Some(m) if m.epoch == epoch && now < m.until && m.misses < MEMO_PATIENCE => {
                m.misses += 1;
                false
            }
            Some(_) => true,
            // The first call memoises nothing (see above).
            None => std::mem::replace(&mut memo.used, true),
        };
        let (lease, until) = self.look_up(provider, account.as_str(), now)?;
        match (&lease, until) {
            (Some(l), Some(until)) if mine => {
                memo.memo = Some(Memo {
                    provider,
                    account: account.clone(),
                    lease: l.clone(),
                    epoch,
                    until,
                    misses: 0,
                });
            }
            // What the memo held is no longer what a lookup finds.
            _ if mine => memo.memo = None,
            _ => {}
        }
        Ok(lease)
    }

    /// The lookup behind [`Tokens::try_lease`] at `now`; with the lease, until when it may be
    /// memoised (`None`: not at all).
    fn look_up(
        &self,
        provider: Provider,
        account: &str,
        now: UnixMs,
    ) -> Result<(Option<Lease>, Option<UnixMs>), Error> {
        let (lease, ahead, until) = {
            let shard = self.inner.maps[idx(provider)].read(account);
            let Some(e) = shard.get(account) else {
                return Err(Error::unknown_account(provider, account));
            };
            if e.needs_reauth {
                return Err(rejected_error(provider, account, e));
            }
            match &e.header {
                Some(h) if now + self.inner.settings.skew < e.expires_at => {
                    let ahead = now >= e.ahead_at && e.flight().is_none();
                    // Until the token gets within `skew` or the refresh-ahead is due, a lookup
                    // of the unchanged entry decides the same.
                    let until = (now < e.ahead_at)
                        .then(|| (e.expires_at - self.inner.settings.skew).min(e.ahead_at));
                    (
                        Lease {
                            header: h.clone(),
                            generation: e.generation,
                        },
                        ahead,
                        until,
                    )
                }
                // Refreshed less than `min_interval` ago and it came back (nearly) expired:
                // used as returned, no proactive refresh until the interval has passed.
                Some(h) if self.within_min_interval(e) => {
                    let lease = Lease {
                        header: h.clone(),
                        generation: e.generation,
                    };
                    return Ok((Some(lease), None));
                }
                _ => return Ok((None, None)),
            }
        };
        if ahead {
            self.start_ahead(provider, account, lease.generation);
        }
        Ok((Some(lease), until))
    }

    /// The token for a request, refreshing first when it is missing, expired or within `skew`.
    pub(crate) async fn lease(&self, provider: Provider, account: &str) -> Result<Lease, Error> {
        if let Some(lease) = self.try_lease(provider, account)? {
            return Ok(lease);
        }
        let step = self.step(provider, account, Trigger::Expiring)?;
        self.finish(provider, account, step, Fallback::CurrentToken)
            .await
    }

    /// After a 401 for a request sent with `generation`: the token to replay with. Refreshes
    /// only when the cache still holds that generation (or its token is unusable).
    pub(crate) async fn lease_after_unauthorized(
        &self,
        provider: Provider,
        account: &str,
        generation: u64,
    ) -> Result<Lease, Error> {
        let step = self.step(provider, account, Trigger::Unauthorized(generation))?;
        self.finish(provider, account, step, Fallback::None).await
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
            let shard = self.inner.maps[idx(provider)].read(account);
            let Some(e) = shard.get(account) else {
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
    pub(super) fn lease_token(
        provider: Provider,
        account: &str,
        lease: &Lease,
    ) -> Result<Secret, Error> {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::refresh::{BoxFuture, Refreshed, Refresher};
    use crate::{RefreshError, TokenSeed};

    /// Issues `fresh` and counts its calls.
    struct Counting(Arc<AtomicUsize>);

    impl Refresher for Counting {
        fn refresh<'a>(
            &'a self,
            _: Provider,
            _: &'a Secret,
        ) -> crate::refresh::BoxFuture<'a, Result<Refreshed, RefreshError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let fut: BoxFuture<'a, _> = Box::pin(async {
                Ok(Refreshed {
                    access_token: Secret::new("fresh"),
                    refresh_token: None,
                    expires_at: Some(SystemTime::now() + Duration::from_secs(3600)),
                })
            });
            fut
        }
    }

    fn tokens() -> (Tokens, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let tokens = Tokens::builder(Counting(calls.clone()))
            .skew(Duration::from_secs(60))
            .refresh_ahead(Duration::from_secs(300))
            .build();
        (tokens, calls)
    }

    fn seed(tokens: &Tokens, account: &str, access: &str, valid_for: u64) {
        let expires = SystemTime::now() + Duration::from_secs(valid_for);
        tokens.insert(
            Provider::Google,
            account,
            TokenSeed::new("refresh")
                .access_token(access)
                .expires_at(expires),
        );
    }

    fn header(lease: Option<Lease>) -> String {
        lease.unwrap().header.to_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_memo_lasts_until_the_refresh_ahead_start_and_never_holds_a_token_due_a_refresh() {
        let (tokens, calls) = tokens();
        let alice = Account::new("alice");
        let mut memo = LeaseMemo::default();
        seed(&tokens, "alice", "a1", 3600);
        for memoised in [false, true] {
            let lease = tokens.try_lease_memo(Provider::Google, &alice, &mut memo);
            assert_eq!(header(lease.unwrap()), "Bearer a1");
            // Not by the first call: a service cloned per request would never read it.
            assert_eq!(memo.memo.is_some(), memoised);
        }
        let m = memo.memo.as_ref().expect("memoised");
        // The refresh-ahead start (300 s before expiry, jittered by up to 30 s later) comes
        // before `skew` (60 s) before the expiry.
        let expires = UnixMs::now() + Duration::from_secs(3600);
        assert!(m.until <= expires - Duration::from_secs(270));
        assert!(m.until >= expires - Duration::from_secs(301));
        // In the refresh-ahead window: handed out, a background refresh started, not memoised.
        seed(&tokens, "alice", "a2", 200);
        let lease = tokens.try_lease_memo(Provider::Google, &alice, &mut memo);
        assert_eq!(header(lease.unwrap()), "Bearer a2");
        assert!(memo.memo.is_none());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "no refresh-ahead");
            tokio::task::yield_now().await;
        }
        // Within `skew`: a refresh must be awaited first; nothing memoised.
        seed(&tokens, "alice", "a3", 30);
        let lease = tokens.try_lease_memo(Provider::Google, &alice, &mut memo);
        assert!(lease.unwrap().is_none());
        assert!(memo.memo.is_none());
    }

    #[test]
    fn a_memo_of_another_account_is_kept_a_while_then_replaced() {
        let (tokens, _) = tokens();
        seed(&tokens, "alice", "a", 3600);
        seed(&tokens, "bob", "b", 3600);
        let (alice, bob) = (Account::new("alice"), Account::new("bob"));
        let mut memo = LeaseMemo::default();
        let lease = |who: &Account, memo: &mut LeaseMemo| {
            header(tokens.try_lease_memo(Provider::Google, who, memo).unwrap())
        };
        assert_eq!(lease(&alice, &mut memo), "Bearer a");
        assert!(memo.memo.is_none());
        assert_eq!(lease(&alice, &mut memo), "Bearer a");
        for _ in 0..MEMO_PATIENCE {
            assert_eq!(lease(&bob, &mut memo), "Bearer b");
            assert_eq!(memo.memo.as_ref().unwrap().account.as_str(), "alice");
        }
        // Still answered right from the memo, which a hit keeps patient.
        assert_eq!(lease(&alice, &mut memo), "Bearer a");
        assert_eq!(memo.memo.as_ref().unwrap().misses, 0);
        for _ in 0..=MEMO_PATIENCE {
            assert_eq!(lease(&bob, &mut memo), "Bearer b");
        }
        assert_eq!(memo.memo.as_ref().unwrap().account.as_str(), "bob");
        assert_eq!(lease(&bob, &mut memo), "Bearer b");
        // The other provider's account of the same name is another account.
        tokens.insert(
            Provider::GitHub,
            "bob",
            TokenSeed::new("r")
                .access_token("gh")
                .expires_at(SystemTime::now() + Duration::from_secs(3600)),
        );
        let gh = tokens
            .try_lease_memo(Provider::GitHub, &bob, &mut memo)
            .unwrap();
        assert_eq!(header(gh), "Bearer gh");
    }

    #[test]
    fn every_write_of_the_providers_table_invalidates_a_memo() {
        let (tokens, _) = tokens();
        let alice = Account::new("alice");
        let mut memo = LeaseMemo::default();
        seed(&tokens, "alice", "a1", 3600);
        seed(&tokens, "carol", "c", 3600);
        let lease = |memo: &mut LeaseMemo| tokens.try_lease_memo(Provider::Google, &alice, memo);
        assert_eq!(header(lease(&mut memo).unwrap()), "Bearer a1");
        assert_eq!(header(lease(&mut memo).unwrap()), "Bearer a1");
        let epoch = memo.memo.as_ref().unwrap().epoch;
        // Another account's write moves the epoch too: a lookup, the same answer.
        assert!(tokens.remove(Provider::Google, "carol"));
        assert_eq!(header(lease(&mut memo).unwrap()), "Bearer a1");
        assert!(memo.memo.as_ref().unwrap().epoch > epoch);
    }
}
