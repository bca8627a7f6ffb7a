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

impl Tokens {
    /// The token for a request, without waiting: `Ok(None)` when a refresh must be awaited
    /// first (see [`Tokens::lease`]). Starts a background refresh in the refresh-ahead window.
    pub(crate) fn try_lease(
        &self,
        provider: Provider,
        account: &str,
    ) -> Result<Option<Lease>, Error> {
        let now = UnixMs::coarse();
        let (lease, ahead) = {
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
                Some(h) if self.within_min_interval(e) => {
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
