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
mod retry;
#[cfg(test)]
pub(crate) mod scripted;
mod token_endpoint;
mod transport;
pub(crate) mod url;

pub use backend::BackendRefresher;
pub use github::GitHubRefresher;
pub use google::GoogleRefresher;
pub use retry::RetryPolicy;
pub use transport::InvalidUrl;

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
/// Messages never contain a token. Three kinds, because they call for three different
/// reactions:
///
/// * [`Rejected`](RefreshError::Rejected): the refresh token is dead — never retried, the
///   account needs re-authorisation;
/// * [`Transient`](RefreshError::Transient): the attempt provably did not spend the refresh
///   token (the backend was never reached, or it answered a transient status such as 503) —
///   it may be retried at once, after `retry_after` when the backend asked for a pause;
/// * [`Unconfirmed`](RefreshError::Unconfirmed): the request may have reached the backend and
///   been acted upon (a timeout after sending, a broken 2xx answer) — the refresh token may
///   already be spent (rotated), so it is **never re-sent** in the same cycle.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::RefreshError;
///
/// let e = RefreshError::rejected("backend answered 400");
/// assert!(e.is_rejected());
/// assert_eq!(e.to_string(), "refresh token rejected: backend answered 400");
///
/// let busy = RefreshError::transient("backend answered 503").with_retry_after(Duration::from_secs(7));
/// assert!(busy.is_retryable());
/// assert_eq!(busy.retry_after(), Some(Duration::from_secs(7)));
///
/// let late = RefreshError::unconfirmed("attempt timed out after 1s");
/// assert!(!late.is_retryable() && !late.is_rejected());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// The refresh token is dead (revoked, expired, unknown): it must not be retried, and the
    /// account needs re-authorisation.
    #[error("refresh token rejected: {0}")]
    Rejected(String),
    /// The refresh could not be done now and the refresh token was not spent (connection
    /// refused, 5xx, 408, 429, a redirect): it may be retried.
    #[error("refresh temporarily unavailable: {message}")]
    Transient {
        /// Why (never a token).
        message: String,
        /// How long the backend asked to be left alone (its `Retry-After`), if it said.
        retry_after: Option<Duration>,
    },
    /// The refresh failed after its request may have reached the backend (a timeout after
    /// sending, a broken 2xx answer): the refresh token may be spent, so it is not re-sent.
    #[error("refresh temporarily unavailable: {0}")]
    Unconfirmed(String),
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

    /// A transient failure that did not spend the refresh token (may be retried).
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert!(!RefreshError::transient("x").is_rejected());
    /// assert!(RefreshError::transient("x").is_retryable());
    /// ```
    pub fn transient(msg: impl Into<String>) -> Self {
        RefreshError::Transient {
            message: msg.into(),
            retry_after: None,
        }
    }

    /// A failure after the request may have reached the backend (never retried).
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert!(!RefreshError::unconfirmed("x").is_retryable());
    /// ```
    pub fn unconfirmed(msg: impl Into<String>) -> Self {
        RefreshError::Unconfirmed(msg.into())
    }

    /// Attaches the backend's `Retry-After` to a [`Transient`](RefreshError::Transient) error
    /// (other kinds are returned unchanged).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use oauth_refresh_proxy::RefreshError;
    /// let e = RefreshError::rejected("x").with_retry_after(Duration::from_secs(1));
    /// assert_eq!(e.retry_after(), None);
    /// ```
    pub fn with_retry_after(self, after: Duration) -> Self {
        match self {
            RefreshError::Transient { message, .. } => RefreshError::Transient {
                message,
                retry_after: Some(after),
            },
            other => other,
        }
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

    /// Whether the same refresh token may be sent again at once: only after a
    /// [`Transient`](RefreshError::Transient) failure.
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert!(!RefreshError::rejected("x").is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(self, RefreshError::Transient { .. })
    }

    /// The pause the backend asked for, when it sent a `Retry-After`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert_eq!(RefreshError::transient("x").retry_after(), None);
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RefreshError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The reason, without the kind's prefix.
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert_eq!(RefreshError::rejected("revoked").reason(), "revoked");
    /// ```
    pub fn reason(&self) -> &str {
        match self {
            RefreshError::Rejected(m) | RefreshError::Unconfirmed(m) => m,
            RefreshError::Transient { message, .. } => message,
        }
    }

    /// The same error with `suffix` appended to its reason.
    fn annotate(self, suffix: &str) -> Self {
        match self {
            RefreshError::Rejected(m) => RefreshError::Rejected(m + suffix),
            RefreshError::Unconfirmed(m) => RefreshError::Unconfirmed(m + suffix),
            RefreshError::Transient {
                message,
                retry_after,
            } => RefreshError::Transient {
                message: message + suffix,
                retry_after,
            },
        }
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
