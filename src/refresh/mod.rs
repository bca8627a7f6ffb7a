//! How a new access token is obtained.
//!
//! A [`Refresher`] makes **one** attempt to trade a refresh token for a new access token and
//! classifies failure as [`RefreshError::Rejected`] (the refresh token is dead: never retry it)
//! or [`RefreshError::Transient`] (try again later). Retrying, backoff and the per-attempt time
//! bound are not the refresher's business: [`RetryPolicy::run`] wraps every refresher the same
//! way, so all refreshers share one mechanism.
//!
//! Three refreshers ship, on one HTTP plumbing (client without redirects or environment proxy,
//! bounded body, transport errors that never name a URL or header):
//!
//! * [`BackendRefresher`]: a Flashback-compatible backend (`refresh.mode = "backend"`);
//! * [`GoogleRefresher`] and [`GitHubRefresher`]: the providers' own token endpoints, combined
//!   per provider by [`DirectRefresher`] (`refresh.mode = "direct"`).
//!
//! # Reading a token endpoint (direct mode)
//!
//! * 5xx, 408, 429, 1xx/3xx, timeouts and connection errors ⇒ transient;
//! * an `error` member — in a 4xx **or in a 2xx**, since GitHub answers errors with HTTP 200 —
//!   decides next: `temporarily_unavailable`, `server_error`, `slow_down` ⇒ transient;
//!   `invalid_client` / `incorrect_client_credentials` ⇒ transient too (the proxy's client
//!   credentials are wrong, the refresh token is not to blame, so the account is not marked
//!   for re-authorisation); any other code (`invalid_grant`, `bad_refresh_token`, …) ⇒ rejected;
//! * any other 4xx ⇒ rejected;
//! * a 2xx without a usable `access_token` (empty, unparseable, over 1 MiB, not a header
//!   value) ⇒ transient; `expires_in` (seconds) gives the expiry; a non-empty `refresh_token`
//!   is a rotation, else the old refresh token is kept.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use crate::provider::Provider;
use crate::token::Secret;

mod backend;
mod github;
mod google;
mod http;
#[cfg(test)]
pub(crate) mod scripted;

pub use backend::BackendRefresher;
pub use github::GitHubRefresher;
pub use google::GoogleRefresher;
pub use http::InvalidUrl;

/// A boxed, sendable future, as returned by [`Refresher::refresh`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a successful refresh produced.
///
/// ```
/// use oauth_refresh_proxy::{refresh::Refreshed, Secret};
///
/// let r = Refreshed { access_token: Secret::new("new"), refresh_token: None, expires_at: None };
/// assert!(r.refresh_token.is_none()); // not rotated: keep the old refresh token
/// ```
#[derive(Clone, Debug)]
pub struct Refreshed {
    /// The new access token.
    pub access_token: Secret,
    /// The rotated refresh token, when the provider rotated it; `None` keeps the old one.
    pub refresh_token: Option<Secret>,
    /// When the new access token expires; `None` when unknown.
    pub expires_at: Option<SystemTime>,
}

/// Why a refresh failed.
///
/// Messages never contain a token.
///
/// ```
/// use oauth_refresh_proxy::RefreshError;
///
/// let e = RefreshError::rejected("backend answered 400");
/// assert!(e.is_rejected());
/// assert_eq!(e.to_string(), "refresh token rejected: backend answered 400");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// The refresh token is dead (revoked, expired, unknown): it must not be retried, and the
    /// account needs re-authorisation.
    #[error("refresh token rejected: {0}")]
    Rejected(String),
    /// The refresh could not be done now (timeout, connection error, 5xx, 408, 429, a broken
    /// answer); it may succeed later.
    #[error("refresh temporarily unavailable: {0}")]
    Transient(String),
}

impl RefreshError {
    /// A rejection with the given reason.
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert!(RefreshError::rejected("x").is_rejected());
    /// ```
    pub fn rejected(msg: impl Into<String>) -> Self {
        RefreshError::Rejected(msg.into())
    }

    /// A transient failure with the given reason.
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert!(!RefreshError::transient("x").is_rejected());
    /// ```
    pub fn transient(msg: impl Into<String>) -> Self {
        RefreshError::Transient(msg.into())
    }

    /// Whether the refresh token was rejected.
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert!(RefreshError::rejected("x").is_rejected());
    /// ```
    pub fn is_rejected(&self) -> bool {
        matches!(self, RefreshError::Rejected(_))
    }
}

/// Trades a refresh token for a new access token: one attempt, no retries.
///
/// Implement it to refresh from somewhere else; [`BackendRefresher`] is the Flashback-compatible
/// implementation, [`DirectRefresher`] the one that talks to Google and GitHub themselves.
///
/// ```
/// use oauth_refresh_proxy::refresh::{BoxFuture, Refreshed, Refresher};
/// use oauth_refresh_proxy::{Provider, RefreshError, Secret};
///
/// struct Fixed;
///
/// impl Refresher for Fixed {
///     fn refresh<'a>(&'a self, _: Provider, _: &'a Secret)
///         -> BoxFuture<'a, Result<Refreshed, RefreshError>>
///     {
///         Box::pin(async {
///             Ok(Refreshed { access_token: Secret::new("fresh"), refresh_token: None, expires_at: None })
///         })
///     }
/// }
/// ```
pub trait Refresher: Send + Sync + 'static {
    /// Makes one refresh attempt for `provider` with `refresh_token`.
    fn refresh<'a>(
        &'a self,
        provider: Provider,
        refresh_token: &'a Secret,
    ) -> BoxFuture<'a, Result<Refreshed, RefreshError>>;
}

/// Refreshes at the providers' own token endpoints: Google tokens with a [`GoogleRefresher`],
/// GitHub tokens with a [`GitHubRefresher`] (`refresh.mode = "direct"`).
///
/// A provider without a refresher is refused: its refresh is [`RefreshError::Rejected`] with a
/// message naming the missing `[refresh.{provider}]` credentials, and its refresh token is
/// never sent anywhere.
///
/// ```
/// use oauth_refresh_proxy::{DirectRefresher, GitHubRefresher, GoogleRefresher, Provider, Secret, Tokens};
///
/// let direct = DirectRefresher::new()
///     .google(GoogleRefresher::new("id.apps.googleusercontent.com", Secret::new("google-secret")))
///     .github(GitHubRefresher::new("Iv1.abc", Secret::new("github-secret")));
/// assert!(direct.supports(Provider::Google) && direct.supports(Provider::GitHub));
/// let tokens = Tokens::builder(direct).build();
/// # let _ = tokens;
/// ```
#[derive(Clone, Debug, Default)]
pub struct DirectRefresher {
    google: Option<GoogleRefresher>,
    github: Option<GitHubRefresher>,
}

impl DirectRefresher {
    /// A refresher for no provider yet.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{DirectRefresher, Provider};
    /// assert!(!DirectRefresher::new().supports(Provider::Google));
    /// ```
    pub fn new() -> Self {
        DirectRefresher::default()
    }

    /// Refreshes Google tokens with `google`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{DirectRefresher, GoogleRefresher, Provider, Secret};
    /// let d = DirectRefresher::new().google(GoogleRefresher::new("id", Secret::new("s")));
    /// assert!(d.supports(Provider::Google));
    /// ```
    pub fn google(mut self, google: GoogleRefresher) -> Self {
        self.google = Some(google);
        self
    }

    /// Refreshes GitHub tokens with `github`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{DirectRefresher, GitHubRefresher, Provider, Secret};
    /// let d = DirectRefresher::new().github(GitHubRefresher::new("id", Secret::new("s")));
    /// assert!(d.supports(Provider::GitHub));
    /// ```
    pub fn github(mut self, github: GitHubRefresher) -> Self {
        self.github = Some(github);
        self
    }

    /// Whether tokens of `provider` can be refreshed (its client credentials were given).
    ///
    /// ```
    /// # use oauth_refresh_proxy::{DirectRefresher, Provider};
    /// assert!(!DirectRefresher::new().supports(Provider::GitHub));
    /// ```
    pub fn supports(&self, provider: Provider) -> bool {
        match provider {
            Provider::Google => self.google.is_some(),
            Provider::GitHub => self.github.is_some(),
        }
    }
}

impl Refresher for DirectRefresher {
    fn refresh<'a>(
        &'a self,
        provider: Provider,
        refresh_token: &'a Secret,
    ) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
        match (provider, &self.google, &self.github) {
            (Provider::Google, Some(g), _) => g.refresh(provider, refresh_token),
            (Provider::GitHub, _, Some(g)) => g.refresh(provider, refresh_token),
            _ => Box::pin(async move {
                Err(RefreshError::rejected(format!(
                    "no {provider} client credentials for direct refresh (configure [refresh.{provider}])"
                )))
            }),
        }
    }
}

/// Bounded retries of transient refresh failures, with exponential backoff and jitter.
///
/// Attempt `n` (from 0) that fails transiently is followed, after a delay drawn uniformly from
/// `[d/2, d]` with `d = min(max_backoff, base_backoff · 2ⁿ)`, by the next, until `max_attempts`
/// attempts were made. Each attempt is bounded by `timeout`. A rejection is never retried.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::RetryPolicy;
///
/// let p = RetryPolicy::default();
/// assert_eq!(p.max_attempts, 3);
/// assert_eq!(p.timeout, Duration::from_secs(10));
/// ```
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all (at least 1).
    pub max_attempts: u32,
    /// The bound on one attempt.
    pub timeout: Duration,
    /// The first backoff.
    pub base_backoff: Duration,
    /// The largest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            timeout: Duration::from_secs(10),
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Runs `refresher` under this policy.
    ///
    /// ```
    /// # use oauth_refresh_proxy::refresh::{BoxFuture, Refreshed, Refresher};
    /// # use oauth_refresh_proxy::{Provider, RefreshError, RetryPolicy, Secret};
    /// # struct Dead;
    /// # impl Refresher for Dead {
    /// #     fn refresh<'a>(&'a self, _: Provider, _: &'a Secret) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
    /// #         Box::pin(async { Err(RefreshError::rejected("revoked")) })
    /// #     }
    /// # }
    /// # tokio_test_block_on(async {
    /// let r = RetryPolicy::default().run(&Dead, Provider::Google, &Secret::new("r")).await;
    /// assert!(r.unwrap_err().is_rejected());
    /// # });
    /// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    /// # }
    /// ```
    pub async fn run(
        &self,
        refresher: &dyn Refresher,
        provider: Provider,
        refresh_token: &Secret,
    ) -> Result<Refreshed, RefreshError> {
        let attempts = self.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            let result = match tokio::time::timeout(
                self.timeout,
                refresher.refresh(provider, refresh_token),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(RefreshError::transient(format!(
                    "attempt timed out after {:?}",
                    self.timeout
                ))),
            };
            match result {
                Err(RefreshError::Transient(msg)) if attempt + 1 < attempts => {
                    let delay = self.backoff(attempt);
                    tracing::debug!(%provider, attempt = attempt + 1, error = %msg, ?delay, "transient refresh failure, retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(RefreshError::Transient(msg)) if attempts > 1 => {
                    return Err(RefreshError::Transient(format!(
                        "{msg} (after {attempts} attempts)"
                    )))
                }
                other => return other,
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let d = exp.min(self.max_backoff);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            timeout: Duration::from_secs(1),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
        };
        for _ in 0..100 {
            let b0 = p.backoff(0);
            assert!(b0 >= Duration::from_millis(50) && b0 <= Duration::from_millis(100));
            let b2 = p.backoff(2);
            assert!(b2 >= Duration::from_millis(200) && b2 <= Duration::from_millis(400));
            let b9 = p.backoff(9);
            assert!(b9 >= Duration::from_millis(350) && b9 <= Duration::from_millis(700));
        }
    }
}
