//! Direct refresh with GitHub: `POST https://github.com/login/oauth/access_token`.
//!
//! The same form fields as Google's (`client_id`, `client_secret`, `refresh_token`,
//! `grant_type=refresh_token`), sent with `Accept: application/json` (without it GitHub answers
//! form-encoded; such an answer is read too). Success is `{access_token: "ghu_…", expires_in,
//! refresh_token: "ghr_…", refresh_token_expires_in, scope, token_type}`: **every** refresh
//! rotates the refresh token, and the old refresh token and the old access token stop working at
//! once — the rotated one is returned in [`Refreshed::refresh_token`] and the cache uses only it
//! from then on. An answer without a `refresh_token` keeps the old one (logged as a warning).
//!
//! GitHub answers errors with **HTTP 200** and `{"error": "bad_refresh_token", …}`: a 2xx
//! carrying `error` is a failure, never a success (`bad_refresh_token` ⇒ rejected;
//! `incorrect_client_credentials` ⇒ transient, the configuration is at fault).

use super::token_endpoint::{token_endpoint_refresher, TokenEndpoint};
use super::transport::InvalidUrl;
use crate::provider::Provider;
use crate::token::Secret;

/// Refreshes GitHub App user tokens at GitHub's own token endpoint, as one OAuth client.
///
/// It refreshes only [`Provider::GitHub`] tokens (any other is rejected, never sent). Wrap it
/// in a [`DirectRefresher`](super::DirectRefresher) to serve both providers.
///
/// ```
/// use oauth_refresh_proxy::{GitHubRefresher, Secret, Tokens};
///
/// let github = GitHubRefresher::new("Iv1.0123456789abcdef", Secret::new("client-secret"));
/// assert_eq!(github.url(), "https://github.com/login/oauth/access_token");
/// assert!(!format!("{github:?}").contains("client-secret"));
/// let tokens = Tokens::builder(github).build();
/// # let _ = tokens;
/// ```
#[derive(Clone, Debug)]
pub struct GitHubRefresher {
    endpoint: TokenEndpoint,
}

impl GitHubRefresher {
    /// GitHub's token endpoint, the default.
    pub const TOKEN_URL: &'static str = "https://github.com/login/oauth/access_token";

    /// A refresher for the OAuth client `client_id` / `client_secret` at [`Self::TOKEN_URL`],
    /// each exchange bounded by 2 min 10 s (connect: 10 s), the default retry policy's
    /// `timeout` plus its `late_answer_window`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{GitHubRefresher, Secret};
    /// let github = GitHubRefresher::new("Iv1.abc", Secret::new("s"));
    /// assert_eq!(github.client_id(), "Iv1.abc");
    /// ```
    pub fn new(client_id: impl Into<String>, client_secret: Secret) -> Self {
        GitHubRefresher {
            endpoint: TokenEndpoint::new(
                Provider::GitHub,
                Self::TOKEN_URL,
                client_id.into(),
                client_secret,
            ),
        }
    }

    /// Uses another token endpoint (GitHub Enterprise Server, a test double): `http` or
    /// `https`, no query, no credentials in the URL.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{GitHubRefresher, Secret};
    /// let github = GitHubRefresher::new("id", Secret::new("s"))
    ///     .token_url("https://ghe.example/login/oauth/access_token")
    ///     .unwrap();
    /// assert_eq!(github.url(), "https://ghe.example/login/oauth/access_token");
    /// ```
    pub fn token_url(mut self, url: &str) -> Result<Self, InvalidUrl> {
        self.endpoint.set_url(url)?;
        Ok(self)
    }
}

// `timeout`, `url`, `client_id` and the `Refresher` impl, shared with the other direct
// refresher.
token_endpoint_refresher!(GitHubRefresher);
