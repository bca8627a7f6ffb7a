//! [`RefreshMiddleware`]: the layer's semantics for [`reqwest_middleware`] clients.
//!
//! Most Rust services call APIs through reqwest; with this middleware in a
//! [`ClientWithMiddleware`](reqwest_middleware::ClientWithMiddleware) they keep reqwest's request
//! builder and get what [`RefreshLayer`](crate::RefreshLayer) does for a tower client, from the
//! same [`Tokens`] cache (one refresh per account and token generation across both):
//!
//! * **Provider**: a [`Provider`] request extension
//!   ([`RequestBuilder::with_extension`](reqwest_middleware::RequestBuilder::with_extension)),
//!   else the URL's host ([`Provider::from_host`]). A request with no provider passes through
//!   untouched: no token is ever sent to another host.
//! * **Account**: an [`Account`] request extension, else the middleware's
//!   [`default_account`](RefreshMiddleware::default_account), else the call fails with
//!   [`ErrorKind::AccountRequired`].
//! * **Inject**: any `Authorization` header is replaced with `Bearer <the account's token>`,
//!   marked sensitive; a token that is missing, expired or within `skew` is refreshed first
//!   (joining a refresh under way).
//! * **401 → refresh → replay once**: on a 401 (only 401), the token is refreshed — or, when the
//!   cache already holds a newer generation than the request carried, that one is taken — and
//!   the request is sent again once, byte-identical, when reqwest can clone it
//!   ([`reqwest::Request::try_clone`]: any body but a stream). A request that cannot be cloned
//!   gets its 401 back, but only after the refresh has finished, so an immediate retry
//!   succeeds. A refresh token rejected while handling a 401 returns that 401 with
//!   `x-oauth-refresh: rejected`.
//! * **Errors** of the cache (unknown account, rejected refresh token, refresh unavailable)
//!   come back as [`reqwest_middleware::Error::Middleware`] holding a [`crate::Error`]; read it
//!   with [`refresh_error`].
//!
//! Redirects are followed inside reqwest, below the middleware; reqwest drops the
//! `Authorization` header when a redirect leaves the host.
//!
//! # Example
//!
//! A second middleware stands in for Google's API here (it answers 401 unless it sees the
//! refreshed token) so the example runs without a network; in a service, the chain ends in
//! reqwest sending the request.
//!
//! ```
//! use oauth_refresh_proxy::refresh::{BoxFuture, Refreshed, Refresher};
//! use oauth_refresh_proxy::reqwest::RefreshMiddleware;
//! use oauth_refresh_proxy::{Provider, RefreshError, Secret, TokenSeed, Tokens};
//! use reqwest_middleware::{ClientBuilder, Next};
//!
//! struct Fresh;
//! impl Refresher for Fresh {
//!     fn refresh<'a>(&'a self, _: Provider, _: &'a Secret) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
//!         Box::pin(async {
//!             Ok(Refreshed { access_token: Secret::new("ya29.fresh"), refresh_token: None, expires_at: None })
//!         })
//!     }
//! }
//!
//! fn fake_google<'a>(
//!     req: reqwest::Request,
//!     _: &'a mut http::Extensions,
//!     _: Next<'a>,
//! ) -> BoxFuture<'a, reqwest_middleware::Result<reqwest::Response>> {
//!     let ok = req.headers()["authorization"] == "Bearer ya29.fresh";
//!     let status = if ok { 200 } else { 401 };
//!     Box::pin(async move { Ok(http::Response::builder().status(status).body("").unwrap().into()) })
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let tokens = Tokens::builder(Fresh).build();
//! // An access token the "API" no longer accepts.
//! tokens.insert(Provider::Google, "alice", TokenSeed::new("1//refresh").access_token("ya29.revoked"));
//!
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(RefreshMiddleware::new(tokens.clone()).default_account("alice"))
//!     .with(fake_google)
//!     .build();
//! let resp = client
//!     .post("https://www.googleapis.com/drive/v3/files")
//!     .json(&serde_json::json!({"name": "report.pdf"}))
//!     .send()
//!     .await
//!     .unwrap();
//! assert_eq!(resp.status(), 200); // 401 → refresh → replay, invisibly
//! assert_eq!(tokens.stats(Provider::Google).replayed, 1);
//! # });
//! ```

use ::reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use ::reqwest::{Request, Response, StatusCode};
use http::Extensions;
use reqwest_middleware::{Middleware, Next};

use crate::error::{Error, ErrorKind};
use crate::provider::{Account, Provider};
use crate::tokens::Tokens;

/// The crate this middleware plugs into, re-exported so its version always matches (it
/// re-exports `reqwest` in turn).
pub use reqwest_middleware;

/// The header marking a 401 whose refresh token was rejected (as the layer sets it).
static X_OAUTH_REFRESH: HeaderName = HeaderName::from_static("x-oauth-refresh");

/// A [`reqwest_middleware::Middleware`] that keeps requests to Google and GitHub authenticated
/// from a [`Tokens`] cache: see the [module docs](self) for what it does.
///
/// It works anywhere in a middleware chain; middlewares after it see the injected header (marked
/// sensitive) and run again for a replay.
///
/// ```
/// use oauth_refresh_proxy::reqwest::RefreshMiddleware;
/// use oauth_refresh_proxy::{Account, BackendRefresher, Provider, TokenSeed, Tokens};
///
/// let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
/// tokens.insert(Provider::GitHub, "octocat", TokenSeed::new("ghr_refresh"));
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(RefreshMiddleware::new(tokens).default_account("octocat"))
///     .build();
/// // GitHub Enterprise Server or any other host: name the provider (and the account) per request.
/// let req = client
///     .get("https://ghe.example.com/api/v3/user")
///     .with_extension(Provider::GitHub)
///     .with_extension(Account::new("octocat"));
/// # let _ = req;
/// ```
#[derive(Clone, Debug)]
pub struct RefreshMiddleware {
    tokens: Tokens,
    default_account: Option<Account>,
}

impl RefreshMiddleware {
    /// A middleware taking tokens from `tokens`, with no default account.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{reqwest::RefreshMiddleware, BackendRefresher, Tokens};
    /// let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// let middleware = RefreshMiddleware::new(tokens);
    /// # let _ = middleware;
    /// ```
    pub fn new(tokens: Tokens) -> Self {
        RefreshMiddleware {
            tokens,
            default_account: None,
        }
    }

    /// The account used when a request carries no [`Account`] extension.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{reqwest::RefreshMiddleware, BackendRefresher, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// let middleware = RefreshMiddleware::new(tokens).default_account("alice");
    /// # let _ = middleware;
    /// ```
    pub fn default_account(mut self, account: impl Into<std::sync::Arc<str>>) -> Self {
        self.default_account = Some(Account::new(account));
        self
    }

    /// The token cache this middleware uses.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{reqwest::RefreshMiddleware, BackendRefresher, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// let middleware = RefreshMiddleware::new(tokens);
    /// assert!(middleware.tokens().list().is_empty());
    /// ```
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }
}

#[async_trait::async_trait]
impl Middleware for RefreshMiddleware {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let provider = extensions
            .get::<Provider>()
            .copied()
            .or_else(|| req.url().host_str().and_then(Provider::from_host));
        let Some(provider) = provider else {
            return next.run(req, extensions).await;
        };
        let account = extensions
            .get::<Account>()
            .cloned()
            .or_else(|| self.default_account.clone())
            .ok_or_else(|| middleware_error(Error::account_required(Some(provider))))?;
        let tokens = &self.tokens;
        let lease = tokens
            .lease(provider, account.as_str())
            .await
            .map_err(middleware_error)?;
        req.headers_mut().insert(AUTHORIZATION, lease.header);
        // Taken before sending (sending consumes the request); `None` for a streaming body.
        let replay = req.try_clone();
        let mut resp = next.clone().run(req, extensions).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let account = account.as_str();
        tracing::debug!(%provider, account, generation = lease.generation, "upstream answered 401");
        let fresh = match tokens
            .lease_after_unauthorized(provider, account, lease.generation)
            .await
        {
            Ok(fresh) => fresh,
            Err(e) if e.kind() == ErrorKind::RefreshRejected => {
                resp.headers_mut().insert(
                    X_OAUTH_REFRESH.clone(),
                    HeaderValue::from_static("rejected"),
                );
                return Ok(resp);
            }
            Err(e) => return Err(middleware_error(e)),
        };
        let Some(mut replay) = replay else {
            tracing::debug!(%provider, account, "request body not replayable; returning the 401 after the refresh");
            tokens.count_replay(provider, false);
            return Ok(resp);
        };
        drop(resp);
        tokens.count_replay(provider, true);
        tracing::debug!(%provider, account, generation = fresh.generation, "replaying after 401");
        replay.headers_mut().insert(AUTHORIZATION, fresh.header);
        next.run(replay, extensions).await
    }
}

fn middleware_error(e: Error) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(e)
}

/// The cache's [`Error`] inside an error of a client with [`RefreshMiddleware`]
/// (an unknown account, a rejected refresh token, a refresh unavailable for now, no account);
/// `None` for reqwest's own errors and other middlewares'.
///
/// ```
/// use oauth_refresh_proxy::{reqwest::{refresh_error, RefreshMiddleware}, BackendRefresher, ErrorKind, Tokens};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(RefreshMiddleware::new(tokens).default_account("nobody"))
///     .build();
/// let err = client.get("https://api.github.com/user").send().await.unwrap_err();
/// assert_eq!(refresh_error(&err).unwrap().kind(), ErrorKind::UnknownAccount);
/// # });
/// ```
pub fn refresh_error(err: &reqwest_middleware::Error) -> Option<&Error> {
    match err {
        reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<Error>(),
        reqwest_middleware::Error::Reqwest(_) => None,
    }
}
