//! The error of the layer and of [`Tokens`](crate::Tokens) operations.

use std::fmt;
use std::time::Duration;

use crate::provider::{Account, Provider};

/// A boxed error, as tower and hyper use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong, for mapping errors to responses (the sidecar maps each kind to one status and error code, SPEC 4.4).
///
/// ```
/// use oauth_refresh_proxy::ErrorKind;
/// assert_ne!(ErrorKind::RefreshRejected, ErrorKind::RefreshUnavailable);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No account was named for the request and there is no default.
    AccountRequired,
    /// No token is known for the request's account.
    UnknownAccount,
    /// The account's refresh token is dead; it needs re-authorisation.
    RefreshRejected,
    /// A refresh failed transiently after its retries.
    RefreshUnavailable,
    /// The inner service failed (connect, TLS, protocol).
    Inner,
    /// The token store could not be reached or written.
    StoreUnavailable,
}

/// The error of the layer: a kind, the provider and account it concerns, and a cause.
///
/// Its `Display` never contains a token.
///
/// ```
/// use oauth_refresh_proxy::{Error, ErrorKind};
///
/// let e = Error::account_required(None);
/// assert_eq!(e.kind(), ErrorKind::AccountRequired);
/// assert_eq!(e.to_string(), "no account named for the request and no default account");
/// ```
pub struct Error {
    kind: ErrorKind,
    provider: Option<Provider>,
    account: Option<Account>,
    message: String,
    retry_after: Option<Duration>,
    source: Option<BoxError>,
    /// The refresh failure behind a `refresh_*` error, kept typed (boxed: errors are rare and
    /// the hot path's `Result`s stay small).
    refresh: Option<Box<crate::refresh::RefreshError>>,
}

impl Error {
    pub(crate) fn new(
        kind: ErrorKind,
        provider: Option<Provider>,
        account: Option<Account>,
        message: impl Into<String>,
    ) -> Self {
        Error {
            kind,
            provider,
            account,
            message: message.into(),
            retry_after: None,
            source: None,
            refresh: None,
        }
    }

    /// Asks the caller to wait at least `after` (rounded up to whole seconds when shown).
    pub(crate) fn retry_after_at_least(mut self, after: Duration) -> Self {
        self.retry_after = Some(self.retry_after.map_or(after, |d| d.max(after)));
        self
    }

    /// How long the caller should wait before trying again, when the error says
    /// (`refresh_unavailable` during a cooldown: the time left; the sidecar's `Retry-After`).
    ///
    /// ```
    /// # use oauth_refresh_proxy::Error;
    /// assert_eq!(Error::account_required(None).retry_after(), None);
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// No account named for a request of `provider`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{Error, Provider};
    /// assert_eq!(Error::account_required(Some(Provider::GitHub)).provider(), Some(Provider::GitHub));
    /// ```
    pub fn account_required(provider: Option<Provider>) -> Self {
        Error::new(
            ErrorKind::AccountRequired,
            provider,
            None,
            "no account named for the request and no default account",
        )
    }

    pub(crate) fn unknown_account(provider: Provider, account: &str) -> Self {
        Error::new(
            ErrorKind::UnknownAccount,
            Some(provider),
            Some(Account::new(account)),
            format!("no token for {provider} account {account:?}"),
        )
    }

    pub(crate) fn from_refresh(
        provider: Provider,
        account: &str,
        err: &crate::refresh::RefreshError,
    ) -> Self {
        let kind = if err.is_rejected() {
            ErrorKind::RefreshRejected
        } else {
            ErrorKind::RefreshUnavailable
        };
        let mut e = Error::new(
            kind,
            Some(provider),
            Some(Account::new(account)),
            err.to_string(),
        );
        e.refresh = Some(Box::new(err.clone()));
        match err.retry_after() {
            Some(after) => e.retry_after_at_least(after),
            None => e,
        }
    }

    pub(crate) fn store(
        provider: Provider,
        account: &str,
        err: &crate::tokens::store::StoreError,
    ) -> Self {
        Error::new(
            ErrorKind::StoreUnavailable,
            Some(provider),
            Some(Account::new(account)),
            err.to_string(),
        )
    }

    pub(crate) fn inner(
        provider: Option<Provider>,
        account: Option<Account>,
        source: impl Into<BoxError>,
    ) -> Self {
        let source = source.into();
        Error {
            kind: ErrorKind::Inner,
            provider,
            account,
            message: format!("inner service failed: {source}"),
            retry_after: None,
            source: Some(source),
            refresh: None,
        }
    }

    /// What went wrong.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{Error, ErrorKind};
    /// assert_eq!(Error::account_required(None).kind(), ErrorKind::AccountRequired);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The provider concerned, when known.
    ///
    /// ```
    /// # use oauth_refresh_proxy::Error;
    /// assert_eq!(Error::account_required(None).provider(), None);
    /// ```
    pub fn provider(&self) -> Option<Provider> {
        self.provider
    }

    /// The account concerned, when known.
    ///
    /// ```
    /// # use oauth_refresh_proxy::Error;
    /// assert!(Error::account_required(None).account().is_none());
    /// ```
    pub fn account(&self) -> Option<&Account> {
        self.account.as_ref()
    }

    /// The refresh failure behind a [`RefreshRejected`](ErrorKind::RefreshRejected) or
    /// [`RefreshUnavailable`](ErrorKind::RefreshUnavailable) error, when one caused it (a
    /// refusal without a refresh attempt — a cooldown, an account needing re-authorisation —
    /// carries the error it stands for too).
    ///
    /// ```
    /// # use oauth_refresh_proxy::Error;
    /// assert!(Error::account_required(None).refresh_error().is_none());
    /// ```
    pub fn refresh_error(&self) -> Option<&crate::refresh::RefreshError> {
        self.refresh.as_deref()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("provider", &self.provider)
            .field("account", &self.account)
            .field("message", &self.message)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refresh::RefreshError;

    #[test]
    fn a_refresh_failure_stays_typed_behind_the_error() {
        let cause = RefreshError::rejected("bad_refresh_token");
        let e = Error::from_refresh(Provider::GitHub, "octo", &cause);
        assert_eq!(e.kind(), ErrorKind::RefreshRejected);
        assert_eq!(e.refresh_error(), Some(&cause));
        assert_eq!(e.to_string(), cause.to_string());
        let later = RefreshError::transient("503").with_retry_after(Duration::from_secs(7));
        let e = Error::from_refresh(Provider::Google, "alice", &later);
        assert_eq!(e.kind(), ErrorKind::RefreshUnavailable);
        assert_eq!(e.refresh_error(), Some(&later));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    }
}
