//! Direct refresh with Google: `POST https://oauth2.googleapis.com/token`.
//!
//! A form `POST` of `client_id`, `client_secret`, `refresh_token`, `grant_type=refresh_token`;
//! the answer is `{access_token, expires_in, scope, token_type}`. Google usually does not rotate
//! the refresh token; when an answer carries a new `refresh_token` it is kept. A dead refresh
//! token is HTTP 400 `{"error": "invalid_grant"}` ⇒ rejected; 5xx, 408, 429,
//! `temporarily_unavailable` and timeouts ⇒ transient. The reading rules shared with GitHub are
//! those of the token endpoint in [`refresh`](super).

use super::token_endpoint::{token_endpoint_refresher, TokenEndpoint};
use super::transport::InvalidUrl;
use crate::provider::Provider;
use crate::token::Secret;

/// Refreshes Google tokens at Google's own token endpoint, as one OAuth client.
///
/// It refreshes only [`Provider::Google`] tokens (any other is rejected, never sent). Wrap it in
/// a [`DirectRefresher`](super::DirectRefresher) to serve both providers.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::{GoogleRefresher, Secret, Tokens};
///
/// let google = GoogleRefresher::new("1234.apps.googleusercontent.com", Secret::new("client-secret"))
///     .timeout(Duration::from_secs(5));
/// assert_eq!(google.url(), "https://oauth2.googleapis.com/token");
/// assert!(!format!("{google:?}").contains("client-secret"));
/// let tokens = Tokens::builder(google).build();
/// # let _ = tokens;
/// ```
#[derive(Clone, Debug)]
pub struct GoogleRefresher {
    endpoint: TokenEndpoint,
}

impl GoogleRefresher {
    /// Google's token endpoint, the default.
    pub const TOKEN_URL: &'static str = "https://oauth2.googleapis.com/token";

    /// A refresher for the OAuth client `client_id` / `client_secret` at [`Self::TOKEN_URL`],
    /// each exchange bounded by 2 min 10 s (connect: 10 s), the default retry policy's
    /// `timeout` plus its `late_answer_window`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{GoogleRefresher, Secret};
    /// let google = GoogleRefresher::new("client-id", Secret::new("s"));
    /// assert_eq!(google.client_id(), "client-id");
    /// ```
    pub fn new(client_id: impl Into<String>, client_secret: Secret) -> Self {
        GoogleRefresher {
            endpoint: TokenEndpoint::new(
                Provider::Google,
                Self::TOKEN_URL,
                client_id.into(),
                client_secret,
            ),
        }
    }

    /// Uses another token endpoint (`http` or `https`, no query, no credentials in the URL).
    ///
    /// ```
    /// # use oauth_refresh_proxy::{GoogleRefresher, Secret};
    /// let google = GoogleRefresher::new("id", Secret::new("s"))
    ///     .token_url("http://127.0.0.1:8081/token")
    ///     .unwrap();
    /// assert_eq!(google.url(), "http://127.0.0.1:8081/token");
    /// assert!(GoogleRefresher::new("id", Secret::new("s")).token_url("ftp://x").is_err());
    /// ```
    pub fn token_url(mut self, url: &str) -> Result<Self, InvalidUrl> {
        self.endpoint.set_url(url)?;
        Ok(self)
    }
}

// `timeout`, `url`, `client_id` and the `Refresher` impl, shared with the other direct
// refresher.
token_endpoint_refresher!(GoogleRefresher);
