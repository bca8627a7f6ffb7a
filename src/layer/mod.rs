//! The tower middleware: [`RefreshLayer`] and [`Refresh<S>`].
//!
//! For each request whose provider is known (a [`Provider`] request extension, else the host:
//! see [`Provider::from_host`]), the middleware
//!
//! 1. replaces any `Authorization` header with the account's cached token (marked sensitive),
//!    refreshing first when the token is missing, expired or within `skew`;
//! 2. wraps the body in a [`ReplayBody`] that records up to `max_replay_body` bytes as the inner
//!    service streams it;
//! 3. on a **401** (only 401: a 403 or 404 never refreshes), refreshes — or, when the cache
//!    already holds a newer token generation than the request carried, takes that one — and
//!    replays the request once with the same method, URI, headers and the byte-identical body.
//!
//! A request whose body could not be replayed (larger than the cap, or not fully sent when the
//! 401 arrived) gets the 401 back, but only after the refresh it triggered has finished, so an
//! immediate retry by the caller succeeds. When the refresh token is rejected while handling a
//! 401, that 401 is returned with `x-oauth-refresh: rejected`. When the refresh fails
//! transiently, the call fails with [`ErrorKind::RefreshUnavailable`](crate::ErrorKind) (the
//! caller should retry later; a 401 would wrongly say its credentials are bad).
//!
//! Requests with no provider (any other host) pass through untouched: no token is ever sent to a
//! host that is not the provider's.

mod future;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body::Body;
use tower::{Layer, Service};

pub use self::body::ReplayBody;
pub use self::future::ResponseFuture;

use crate::error::{BoxError, Error};
use crate::provider::{Account, Provider};
use crate::tokens::Tokens;

mod body;

/// The default `max_replay_body`: 1 MiB.
pub const DEFAULT_MAX_REPLAY_BODY: usize = 1 << 20;

/// Applies [`Refresh`] to a service.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::{BackendRefresher, Provider, RefreshLayer, TokenSeed, Tokens};
/// use tower::ServiceBuilder;
///
/// # fn client() -> tower::util::BoxCloneService<http::Request<oauth_refresh_proxy::ReplayBody<http_body_util::Empty<bytes::Bytes>>>, http::Response<()>, std::convert::Infallible> { unimplemented!() }
/// let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
/// tokens.insert(Provider::Google, "alice", TokenSeed::new("1//refresh"));
/// let layer = RefreshLayer::new(tokens)
///     .default_account("alice")
///     .max_replay_body(256 * 1024);
/// # if false {
/// let svc = ServiceBuilder::new().layer(layer).service(client());
/// # let _ = svc;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RefreshLayer {
    config: Arc<Config>,
}

#[derive(Clone, Debug)]
struct Config {
    tokens: Tokens,
    default_account: Option<Account>,
    max_replay_body: usize,
}

impl RefreshLayer {
    /// A layer that takes tokens from `tokens`, with no default account and a 1 MiB replay cap.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, RefreshLayer, Tokens};
    /// let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// let layer = RefreshLayer::new(tokens);
    /// # let _ = layer;
    /// ```
    pub fn new(tokens: Tokens) -> Self {
        RefreshLayer {
            config: Arc::new(Config {
                tokens,
                default_account: None,
                max_replay_body: DEFAULT_MAX_REPLAY_BODY,
            }),
        }
    }

    /// The account used when a request carries no [`Account`] extension.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, RefreshLayer, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// let layer = RefreshLayer::new(tokens).default_account("alice");
    /// # let _ = layer;
    /// ```
    pub fn default_account(mut self, account: impl Into<Arc<str>>) -> Self {
        Arc::make_mut(&mut self.config).default_account = Some(Account::new(account));
        self
    }

    /// Bodies up to this many bytes are recorded and replayed after a 401 (default 1 MiB).
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, RefreshLayer, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// let layer = RefreshLayer::new(tokens).max_replay_body(64 * 1024);
    /// # let _ = layer;
    /// ```
    pub fn max_replay_body(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.config).max_replay_body = bytes;
        self
    }

    /// The token cache this layer uses.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, RefreshLayer, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// let layer = RefreshLayer::new(tokens);
    /// assert!(layer.tokens().list().is_empty());
    /// ```
    pub fn tokens(&self) -> &Tokens {
        &self.config.tokens
    }
}

impl<S> Layer<S> for RefreshLayer {
    type Service = Refresh<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Refresh {
            inner,
            config: self.config.clone(),
        }
    }
}

/// Middleware that keeps a client's requests to Google and GitHub authenticated.
///
/// See the [module docs](self) for what it does; build it with [`RefreshLayer`].
///
/// ```
/// # use oauth_refresh_proxy::{BackendRefresher, Refresh, Tokens};
/// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
/// let svc = Refresh::new(tower::service_fn(|_req: http::Request<oauth_refresh_proxy::ReplayBody<String>>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// }), tokens);
/// assert!(svc.get_ref() as *const _ != std::ptr::null());
/// ```
#[derive(Clone, Debug)]
pub struct Refresh<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Refresh<S> {
    /// Wraps `inner` with the default settings of [`RefreshLayer::new`].
    pub fn new(inner: S, tokens: Tokens) -> Self {
        RefreshLayer::new(tokens).layer(inner)
    }

    /// A [`RefreshLayer`] taking tokens from `tokens`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, Refresh, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// let layer = Refresh::<()>::layer(tokens);
    /// # let _ = layer;
    /// ```
    pub fn layer(tokens: Tokens) -> RefreshLayer {
        RefreshLayer::new(tokens)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for Refresh<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::inner(None, None, e))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let provider = req
            .extensions()
            .get::<Provider>()
            .copied()
            .or_else(|| request_host(&req).and_then(Provider::from_host));
        let Some(provider) = provider else {
            return ResponseFuture::passthrough(svc.call(req.map(ReplayBody::new)));
        };
        let account = req
            .extensions()
            .get::<Account>()
            .cloned()
            .or_else(|| self.config.default_account.clone());
        let Some(account) = account else {
            return ResponseFuture::failed(Error::account_required(Some(provider)));
        };
        let (mut parts, body) = req.into_parts();
        parts.headers.remove(AUTHORIZATION);
        let (body, recording) = ReplayBody::recorded(body, self.config.max_replay_body);
        let saved = future::SavedRequest::new(&parts);
        let req = Request::from_parts(parts, body);
        let tokens = self.config.tokens.clone();
        match tokens.try_lease(provider, account.as_str()) {
            Err(e) => ResponseFuture::failed(e),
            Ok(lease) => {
                let retry = future::Retry {
                    svc,
                    tokens,
                    provider,
                    account,
                    generation: 0,
                    saved,
                    recording,
                    _body: std::marker::PhantomData,
                };
                ResponseFuture::authenticated(retry, req, lease)
            }
        }
    }
}

/// The authority a request goes to: the URI's (as stored, not re-parsed: this runs on every
/// request), else the `Host` header's.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok()),
    }
}
