//! [`TokenSource`]: the cache as google-apis-rs' token source ([`google_apis_common::GetToken`]).
//!
//! google-apis-rs hubs (`google-drive3`, `google-sheets4`, …) build their own requests and ask a
//! `GetToken` for a bearer token before each call. A [`TokenSource`] answers from a [`Tokens`]
//! cache with [`Tokens::access_token`]: the cached token while it is valid beyond `skew`, else
//! after a refresh — one refresh for any number of concurrent calls, shared with every
//! [`RefreshLayer`](crate::RefreshLayer) and middleware on the same cache.
//!
//! The requested scopes are not used: an account's scopes are those its refresh token was
//! granted. A hub does not report a 401 back to its token source, so a token revoked before its
//! expiry is replaced only when it expires (or when the application calls
//! [`Tokens::access_token_after_unauthorized`] with it, for instance from a hub delegate's retry).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use google_apis_common::GetToken;

use crate::provider::{Account, Provider};
use crate::tokens::Tokens;

/// The error type of [`GetToken`].
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A google-apis-rs [`GetToken`] serving one Google account's tokens from a [`Tokens`] cache.
///
/// Errors are the cache's [`Error`](crate::Error) (unknown account, rejected refresh token,
/// refresh unavailable), boxed.
///
/// ```
/// use google_apis_common::GetToken;
/// use oauth_refresh_proxy::google_apis::TokenSource;
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
/// tokens.insert(Provider::Google, "alice", TokenSeed::new("1//refresh"));
/// // What a hub takes: `DriveHub::new(client, TokenSource::new(tokens.clone(), "alice"))`.
/// let auth: Box<dyn GetToken> = Box::new(TokenSource::new(tokens.clone(), "alice"));
/// let token = auth.get_token(&["https://www.googleapis.com/auth/drive"]).await.unwrap();
/// assert_eq!(token.as_deref(), Some("ya29.fresh"));
/// assert_eq!(tokens.stats(Provider::Google).refresh_success, 1);
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct TokenSource {
    tokens: Tokens,
    account: Account,
}

impl TokenSource {
    /// Serves the tokens of Google account `account` from `tokens`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{google_apis::TokenSource, BackendRefresher, Tokens};
    /// let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// let source = TokenSource::new(tokens, "alice");
    /// assert_eq!(source.account().as_str(), "alice");
    /// ```
    pub fn new(tokens: Tokens, account: impl Into<Arc<str>>) -> Self {
        TokenSource {
            tokens,
            account: Account::new(account),
        }
    }

    /// The account whose tokens this source serves.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{google_apis::TokenSource, BackendRefresher, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// assert_eq!(TokenSource::new(tokens, "bob").account().as_str(), "bob");
    /// ```
    pub fn account(&self) -> &Account {
        &self.account
    }
}

impl GetToken for TokenSource {
    fn get_token<'a>(
        &'a self,
        _scopes: &'a [&str],
    ) -> Pin<Box<dyn Future<Output = Result<Option<String>, BoxError>> + Send + 'a>> {
        Box::pin(async move {
            let token = self
                .tokens
                .access_token(Provider::Google, self.account.as_str())
                .await?;
            // The trait hands the token over as a plain String; the hub puts it in a header.
            Ok(Some(token.expose().to_string()))
        })
    }
}
