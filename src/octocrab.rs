//! octocrab through the layer, with octocrab's defaults (feature `octocrab`).
//!
//! octocrab's `OctocrabBuilder::with_layer(&RefreshLayer)` does not compile: the layer hands its
//! inner service `Request<ReplayBody<OctoBody>>`, octocrab's stack expects `Request<OctoBody>`.
//! And a stack built on `OctocrabBuilder::new_empty().with_service(..)` has none of octocrab's
//! defaults, the `User-Agent` that api.github.com requires among them. [`builder`] builds the
//! stack octocrab's own `build()` builds, with the layer at its bottom, right above the
//! connection pool (outermost first):
//!
//! | layer | from | what it does |
//! |---|---|---|
//! | `BaseUri` | octocrab | relative routes (`/user/repos`) go to the base URI |
//! | `ExtraHeaders` | octocrab | `User-Agent: octocrab`, and the headers given to [`Builder::header`] |
//! | `FollowRedirect` | tower-http | redirects, as octocrab follows them |
//! | `Retry` | octocrab's `RetryConfig` | default `Simple(3)`: 5xx, 429 and connection errors |
//! | [`Refresh`](crate::Refresh) | this crate | the account's token; 401 → refresh → replay once |
//! | hyper-util `Client` | hyper-rustls | HTTP/1.1 and HTTP/2, rustls with aws-lc-rs, platform verifier |
//!
//! At the bottom the layer sees every attempt and every redirect hop with its absolute URI, so
//! each is decided by its host: a redirect off the provider's host never carries a token.
//! octocrab's retry keeps its own copy of the body, and the layer records what it sends, so a
//! POST retried after a 5xx or replayed after a 401 goes out byte-identical. A failed refresh
//! is not retried by octocrab ([`Tokens`](crate::Tokens) already retried it with backoff): the
//! call fails with `octocrab::Error::Service` whose source is this crate's
//! [`Error`] (downcast it for its [`ErrorKind`]).
//!
//! Not rebuilt: octocrab's debug-level request spans and its HTTP cache (off by default).
//! Octocrab's own authentication is not used: the layer's account is the identity, so build one
//! `Octocrab` per account (`RefreshLayer::default_account`).
//!
//! ```no_run
//! use oauth_refresh_proxy::{BackendRefresher, Provider, RefreshLayer, Secret, TokenSeed, Tokens};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let refresher = BackendRefresher::new("https://backend.flashback.tech")?
//!     .bearer(Secret::new(std::env::var("FLASHBACK_TOKEN")?));
//! let tokens = Tokens::builder(refresher).build();
//! tokens.insert(Provider::GitHub, "octocat", TokenSeed::new(std::env::var("OCTOCAT_REFRESH_TOKEN")?));
//!
//! let layer = RefreshLayer::new(tokens).default_account("octocat");
//! let github = oauth_refresh_proxy::octocrab::builder(layer).build()?;
//! let first = github.current().list_repos_for_authenticated_user().send().await?;
//! let repos = github.all_pages(first).await?;
//! # let _ = repos;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

/// The octocrab this module builds clients of (`Octocrab`, `Page`, the models, the errors).
#[doc(no_inline)]
pub use ::octocrab;

use ::octocrab::service::middleware::base_uri::BaseUriLayer;
use ::octocrab::service::middleware::extra_headers::ExtraHeadersLayer;
use ::octocrab::service::middleware::retry::RetryConfig;
use ::octocrab::{AuthState, OctoBody, Octocrab, OctocrabBuilder};
use http::header::USER_AGENT;
use http::{HeaderName, HeaderValue, Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::retry::{Policy, RetryLayer};
use tower::ServiceBuilder;
use tower_http::follow_redirect::FollowRedirectLayer;

use crate::error::{BoxError, Error, ErrorKind};
use crate::layer::{RefreshLayer, ReplayBody};
use crate::provider::Provider;

/// octocrab's default base URI.
const GITHUB_API: &str = "https://api.github.com";

/// Starts an [`Octocrab`] whose requests go through `layer`, with octocrab's defaults; see the
/// [module docs](self) for the stack.
///
/// Against the crate's fake GitHub, mapped to GitHub on the layer as a GitHub Enterprise Server
/// host would be:
///
/// ```
/// use oauth_refresh_proxy::demo::{self, Realm};
/// use oauth_refresh_proxy::{BackendRefresher, Provider, RefreshLayer, Secret, TokenSeed, Tokens};
///
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// let realm = Realm::new("doc");
/// let backend = demo::start_backend(realm.clone()).await;
/// let api = demo::start_api(realm.clone(), Provider::GitHub).await;
/// let refresher = BackendRefresher::new(&backend).unwrap()
///     .bearer(Secret::new(realm.backend_token.clone().unwrap()));
/// let tokens = Tokens::builder(refresher).build();
/// tokens.insert(Provider::GitHub, "octocat", TokenSeed::new(realm.new_refresh_token()));
///
/// let layer = RefreshLayer::new(tokens)
///     .default_account("octocat")
///     .host(api.to_string().parse().unwrap(), Provider::GitHub);
/// let github = oauth_refresh_proxy::octocrab::builder(layer)
///     .base_uri(format!("http://{api}").parse().unwrap())
///     .build()
///     .unwrap();
/// let user: serde_json::Value = github.get("/user", None::<&()>).await.unwrap();
/// assert_eq!(user["len"], 0);
/// assert_eq!(realm.seen()[0].headers["user-agent"], "octocrab");
/// # });
/// ```
pub fn builder(layer: RefreshLayer) -> Builder {
    Builder {
        layer,
        base_uri: Uri::from_static(GITHUB_API),
        headers: vec![(USER_AGENT, HeaderValue::from_static("octocrab"))],
        retry: RetryConfig::Simple(3),
    }
}

/// Builds an [`Octocrab`] on octocrab's default stack with a [`RefreshLayer`] at its bottom.
///
/// Made by [`builder`].
pub struct Builder {
    layer: RefreshLayer,
    base_uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    retry: RetryConfig,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("layer", &self.layer)
            .field("base_uri", &self.base_uri)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// Where relative routes go (default `https://api.github.com`): for GitHub Enterprise
    /// Server `https://HOST/api/v3`, with `HOST` mapped to GitHub on the layer
    /// ([`RefreshLayer::host`]).
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, Provider, RefreshLayer, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// let layer = RefreshLayer::new(tokens)
    ///     .default_account("octocat")
    ///     .host("ghe.example.com".parse().unwrap(), Provider::GitHub);
    /// let builder = oauth_refresh_proxy::octocrab::builder(layer)
    ///     .base_uri("https://ghe.example.com/api/v3".parse().unwrap());
    /// # let _ = builder;
    /// ```
    pub fn base_uri(mut self, base_uri: Uri) -> Self {
        self.base_uri = base_uri;
        self
    }

    /// Sends `name: value` with every request, replacing an earlier value of `name` (also
    /// octocrab's `User-Agent`): `X-GitHub-Api-Version`, a preview's `Accept`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, RefreshLayer, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// use http::{HeaderName, HeaderValue};
    ///
    /// let builder = oauth_refresh_proxy::octocrab::builder(RefreshLayer::new(tokens)).header(
    ///     HeaderName::from_static("x-github-api-version"),
    ///     HeaderValue::from_static("2022-11-28"),
    /// );
    /// # let _ = builder;
    /// ```
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value));
        self
    }

    /// octocrab's retry policy (default `RetryConfig::Simple(3)`, as octocrab's).
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, RefreshLayer, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// use octocrab::service::middleware::retry::RetryConfig;
    ///
    /// let builder = oauth_refresh_proxy::octocrab::builder(RefreshLayer::new(tokens))
    ///     .retry(RetryConfig::None);
    /// # let _ = builder;
    /// ```
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// The client. Call it within a tokio runtime (octocrab spawns its request buffer).
    ///
    /// Fails when there is no runtime, when the base URI has no scheme or host, when the layer
    /// does not send its host GitHub's tokens (map it with [`RefreshLayer::host`]), or when
    /// the platform's certificate verifier cannot start.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, RefreshLayer, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let err = oauth_refresh_proxy::octocrab::builder(RefreshLayer::new(tokens))
    ///     .base_uri("https://ghe.example.com/api/v3".parse().unwrap())
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "octocrab client: the layer sends no GitHub token to ghe.example.com (the base URI's \
    ///      host): map it with RefreshLayer::host(\"ghe.example.com\".parse()?, Provider::GitHub)"
    /// );
    /// # });
    /// ```
    pub fn build(self) -> Result<Octocrab, BuildError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BuildError::new(
                "build() must be called within a tokio runtime (octocrab spawns its request buffer)",
            ));
        }
        let Some(host) = self.base_uri.authority().map(|a| a.as_str().to_owned()) else {
            return Err(BuildError::new(format!(
                "the base URI {:?} needs a scheme and a host, as in https://api.github.com",
                self.base_uri.to_string()
            )));
        };
        if self.base_uri.scheme().is_none() {
            return Err(BuildError::new(format!(
                "the base URI {:?} needs a scheme (https://)",
                self.base_uri.to_string()
            )));
        }
        match self.layer.provider_for(&self.base_uri) {
            Some(Provider::GitHub) => {}
            found => {
                let sends = match found {
                    Some(p) => format!("sends {p} tokens, not GitHub's, to {host}"),
                    None => format!("sends no GitHub token to {host}"),
                };
                return Err(BuildError::new(format!(
                    "the layer {sends} (the base URI's host): map it with \
                     RefreshLayer::host({host:?}.parse()?, Provider::GitHub)"
                )));
            }
        }

        let crypto = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_platform_verifier(crypto)
            .map_err(|e| {
                BuildError::new("the platform certificate verifier did not start").source(e)
            })?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client: Client<_, ReplayBody<OctoBody>> =
            Client::builder(TokioExecutor::new()).build(https);

        let stack = ServiceBuilder::new()
            .layer(BaseUriLayer::new(self.base_uri))
            .layer(ExtraHeadersLayer::new(Arc::new(self.headers)))
            .layer(FollowRedirectLayer::new())
            .layer(RetryLayer::new(RetryUnlessRefreshFailed(self.retry)))
            .layer(self.layer)
            .service(client);
        let octocrab = OctocrabBuilder::new_empty()
            .with_service(stack)
            .with_auth(AuthState::None)
            .build();
        Ok(match octocrab {
            Ok(octocrab) => octocrab,
            Err(never) => match never {},
        })
    }
}

/// octocrab's retry policy, except for the layer's own failures: a refresh that failed (or an
/// account that needs re-authorisation) is final, [`Tokens`](crate::Tokens) already retried it.
#[derive(Clone)]
struct RetryUnlessRefreshFailed(RetryConfig);

impl<B> Policy<Request<OctoBody>, Response<B>, Error> for RetryUnlessRefreshFailed {
    type Future = <RetryConfig as Policy<Request<OctoBody>, Response<B>, Error>>::Future;

    fn retry(
        &mut self,
        req: &mut Request<OctoBody>,
        result: &mut Result<Response<B>, Error>,
    ) -> Option<Self::Future> {
        if matches!(result, Err(e) if e.kind() != ErrorKind::Inner) {
            return None;
        }
        self.0.retry(req, result)
    }

    fn clone_request(&mut self, req: &Request<OctoBody>) -> Option<Request<OctoBody>> {
        <RetryConfig as Policy<Request<OctoBody>, Response<B>, Error>>::clone_request(
            &mut self.0,
            req,
        )
    }
}

/// Why [`Builder::build`] failed.
///
/// ```
/// # use oauth_refresh_proxy::{BackendRefresher, RefreshLayer, Tokens};
/// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
/// let err = oauth_refresh_proxy::octocrab::builder(RefreshLayer::new(tokens)).build().unwrap_err();
/// assert!(err.to_string().contains("tokio runtime"));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("octocrab client: {message}")]
pub struct BuildError {
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl BuildError {
    fn new(message: impl Into<String>) -> Self {
        BuildError {
            message: message.into(),
            source: None,
        }
    }

    fn source(mut self, e: impl Into<BoxError>) -> Self {
        self.source = Some(e.into());
        self
    }
}
