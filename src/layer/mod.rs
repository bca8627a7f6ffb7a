//! The tower middleware: [`RefreshLayer`] and [`Refresh<S>`].
//!
//! For each request whose provider is known (a [`Provider`] request extension, else the host:
//! a host mapped with [`RefreshLayer::host`], else the defaults of [`Provider::from_host`]), the
//! middleware
//!
//! 1. replaces any `Authorization` header with the account's cached token (marked sensitive),
//!    refreshing first when the token is missing, expired or within `skew`;
//! 2. wraps the body in a [`ReplayBody`] that records up to `max_replay_body` bytes as the inner
//!    service streams it (a body already whole in memory, `Full<Bytes>` or `String`, is kept as
//!    it is);
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
//!
//! GitHub Enterprise Server, a Google private endpoint or any other host of a provider's API is
//! mapped on the layer, so its requests need no extension:
//!
//! ```
//! use oauth_refresh_proxy::{BackendRefresher, Provider, RefreshLayer, Tokens};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tokens = Tokens::builder(BackendRefresher::new("https://backend.example")?).build();
//! let layer = RefreshLayer::new(tokens)
//!     .host("ghe.example.com".parse()?, Provider::GitHub)
//!     .host("*.googleapis.internal.example".parse()?, Provider::Google);
//!
//! let ghe: http::Uri = "https://ghe.example.com/api/v3/user/repos".parse()?;
//! assert_eq!(layer.provider_for(&ghe), Some(Provider::GitHub));
//! let psc: http::Uri = "https://storage.googleapis.internal.example/b".parse()?;
//! assert_eq!(layer.provider_for(&psc), Some(Provider::Google));
//! let other: http::Uri = "https://example.com/".parse()?;
//! assert_eq!(layer.provider_for(&other), None);
//! # Ok(())
//! # }
//! ```

mod future;
mod saved;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower::{Layer, Service};

pub use self::body::ReplayBody;
use self::future::AccountOf;
pub use self::future::ResponseFuture;

use crate::error::{BoxError, Error};
use crate::provider::{Account, HostMap, HostPattern, Provider};
use crate::tokens::{LeaseMemo, Tokens};

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
pub(crate) struct Config {
    pub(crate) tokens: Tokens,
    pub(crate) default_account: Option<Account>,
    pub(crate) max_replay_body: usize,
    hosts: HostMap,
}

impl Config {
    /// The default account. `AccountOf::Default` is chosen only when the layer has one, and a
    /// layer's config never changes once built.
    pub(crate) fn default_account_ref(&self) -> &Account {
        self.default_account
            .as_ref()
            .expect("AccountOf::Default is used only with a default account")
    }

    /// The provider of a request by its host: the URI's authority (as stored, not re-parsed:
    /// this runs on every request), else the `Host` header's.
    fn provider_of(&self, req: &http::request::Parts) -> Option<Provider> {
        match req.uri.authority() {
            // Without mappings the scheme's default port is never looked at.
            Some(a) if self.hosts.is_empty() => Provider::from_host(a.as_str()),
            Some(a) => self
                .hosts
                .provider(a.as_str(), default_port(req.uri.scheme_str())),
            None => {
                let host = req.headers.get(http::header::HOST)?.to_str().ok()?;
                self.hosts.provider(host, None)
            }
        }
    }
}

/// The port a URI of this scheme goes to when it names none.
fn default_port(scheme: Option<&str>) -> Option<u16> {
    match scheme {
        Some(s) if s.eq_ignore_ascii_case("https") => Some(443),
        Some(s) if s.eq_ignore_ascii_case("http") => Some(80),
        _ => None,
    }
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
                hosts: HostMap::default(),
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

    /// Sends requests to `host` with `provider`'s tokens, as if they carried a [`Provider`]
    /// extension: GitHub Enterprise Server's host (its API lives under `/api/v3`), a Google
    /// private endpoint's, a test fake's. Mapping the same pattern again replaces its provider.
    ///
    /// A mapped host wins over the default hosts of [`Provider::from_host`], an exact host over
    /// a `*.` wildcard and a longer wildcard domain over a shorter one; a request's
    /// [`Provider`] extension wins over all. Every path on a mapped host gets the token, so map
    /// only hosts that belong to the provider's API. Without mappings the lookup costs what the
    /// defaults alone cost, and with them it never allocates.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, Provider, RefreshLayer, Tokens};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example")?).build();
    /// let layer = RefreshLayer::new(tokens)
    ///     .default_account("octocat")
    ///     .host("ghe.example.com".parse()?, Provider::GitHub);
    /// let uri: http::Uri = "https://GHE.example.com:443/api/v3/user".parse()?;
    /// assert_eq!(layer.provider_for(&uri), Some(Provider::GitHub));
    /// # Ok(())
    /// # }
    /// ```
    pub fn host(mut self, host: HostPattern, provider: Provider) -> Self {
        Arc::make_mut(&mut self.config).hosts.insert(host, provider);
        self
    }

    /// The provider this layer picks for a request to `uri` that carries no [`Provider`]
    /// extension: a mapped host's (see [`host`](Self::host)), else a default host's, else none
    /// (the request would pass through untouched).
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, Provider, RefreshLayer, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("https://backend.example").unwrap()).build();
    /// let layer = RefreshLayer::new(tokens);
    /// let uri = http::Uri::from_static("https://api.github.com/user");
    /// assert_eq!(layer.provider_for(&uri), Some(Provider::GitHub));
    /// assert_eq!(layer.provider_for(&http::Uri::from_static("https://github.com/")), None);
    /// ```
    pub fn provider_for(&self, uri: &http::Uri) -> Option<Provider> {
        let authority = uri.authority()?;
        self.config
            .hosts
            .provider(authority.as_str(), default_port(uri.scheme_str()))
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
            memo: LeaseMemo::default(),
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
    /// The last lease this service was handed, reused while the cache has not changed.
    memo: LeaseMemo,
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
        // Taken apart once, here: each move of a request costs a copy of its ~250 bytes.
        let (parts, body) = req.into_parts();
        let provider = parts
            .extensions
            .get::<Provider>()
            .copied()
            .or_else(|| self.config.provider_of(&parts));
        let Some(provider) = provider else {
            let mut svc = self.take_ready_inner();
            let req = Request::from_parts(parts, ReplayBody::new(body));
            return ResponseFuture::passthrough(svc.call(req));
        };
        // The layer's default account is named by the shared config: no reference count is
        // taken per request for it.
        let account = match parts.extensions.get::<Account>() {
            Some(a) => AccountOf::Named(a.clone()),
            None if self.config.default_account.is_some() => AccountOf::Default,
            None => {
                // Nothing is sent, but the instance that said ready is used up like any call's.
                drop(self.take_ready_inner());
                return ResponseFuture::failed(Error::account_required(Some(provider)));
            }
        };
        self.call_for(parts, body, provider, account)
    }
}

impl<S: Clone> Refresh<S> {
    /// [`Service::call`] for a request, taken apart, whose provider and account are decided:
    /// by the layer's own rules when called as a service, or by the sidecar's router, which
    /// calls this directly so they are not decided twice (and the request is not put together
    /// only to be taken apart again). Sends it with `account`'s token of `provider`, ready to
    /// refresh and replay on a 401.
    #[inline(always)]
    pub(crate) fn call_for<B, ResB>(
        &mut self,
        parts: http::request::Parts,
        body: B,
        provider: Provider,
        account: impl Into<AccountOf>,
    ) -> ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>, Response = Response<ResB>> + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        ResB: Send + 'static,
    {
        let account = account.into();
        let lease = match self.config.tokens.try_lease_memo(
            provider,
            account.of(&self.config),
            &mut self.memo,
        ) {
            Ok(lease) => lease,
            Err(e) => {
                // Nothing is sent, but the instance that said ready is used up like any call's.
                drop(self.take_ready_inner());
                return ResponseFuture::failed(e);
            }
        };
        let svc = self.take_ready_inner();
        ResponseFuture::send(svc, &self.config, provider, account, parts, body, lease)
    }

    /// The inner service that was polled ready, leaving a clone in its place (tower's rule:
    /// the instance that said ready is the one called).
    fn take_ready_inner(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use bytes::Bytes;
    use http::header::AUTHORIZATION;
    use http_body_util::Empty;
    use tower::ServiceExt;

    use super::*;
    use crate::refresh::{BoxFuture, Refreshed, Refresher};
    use crate::{RefreshError, Secret, TokenSeed};

    /// Issues `<provider>-fresh` at once.
    struct Fresh;

    impl Refresher for Fresh {
        fn refresh<'a>(
            &'a self,
            provider: Provider,
            _: &'a Secret,
        ) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
            Box::pin(async move {
                Ok(Refreshed {
                    access_token: Secret::new(format!("{provider}-fresh")),
                    refresh_token: None,
                    expires_at: None,
                })
            })
        }
    }

    /// Sends `req` through `layer` to a service that records its `Authorization`; answers 200.
    async fn authorization_seen(layer: RefreshLayer, req: Request<Empty<Bytes>>) -> Option<String> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let inner = tower::service_fn(move |req: Request<ReplayBody<Empty<Bytes>>>| {
            let auth = req
                .headers()
                .get(AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_string());
            record.lock().unwrap().push(auth);
            async { Ok::<_, Infallible>(Response::new(())) }
        });
        let resp = layer.layer(inner).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        seen[0].clone()
    }

    fn layer() -> RefreshLayer {
        let tokens = Tokens::builder(Fresh).build();
        for provider in Provider::ALL {
            tokens.insert(provider, "alice", TokenSeed::new("refresh"));
        }
        RefreshLayer::new(tokens)
            .default_account("alice")
            .host("ghe.example.com".parse().unwrap(), Provider::GitHub)
            .host("127.0.0.1:4000".parse().unwrap(), Provider::GitHub)
            .host(
                "*.googleapis.internal.example".parse().unwrap(),
                Provider::Google,
            )
    }

    fn get(uri: &str) -> Request<Empty<Bytes>> {
        Request::get(uri).body(Empty::new()).unwrap()
    }

    #[tokio::test]
    async fn mapped_hosts_get_their_providers_token_without_an_extension() {
        let cases = [
            (
                "https://ghe.example.com/api/v3/user/repos",
                Some("Bearer github-fresh"),
            ),
            ("http://127.0.0.1:4000/user", Some("Bearer github-fresh")),
            (
                "https://storage.googleapis.internal.example/b",
                Some("Bearer google-fresh"),
            ),
            ("https://api.github.com/user", Some("Bearer github-fresh")),
            (
                "https://www.googleapis.com/drive/v3/files",
                Some("Bearer google-fresh"),
            ),
            // Not mapped: another port of the fake's address, the GHE host's neighbours.
            ("http://127.0.0.1:4001/user", None),
            ("https://www.ghe.example.com/", None),
            ("https://googleapis.internal.example/", None),
        ];
        for (uri, expected) in cases {
            let mut req = get(uri);
            // A caller's own header never survives on a provider host, and is kept elsewhere.
            req.headers_mut().insert(
                AUTHORIZATION,
                http::HeaderValue::from_static("Bearer caller"),
            );
            let seen = authorization_seen(layer(), req).await;
            assert_eq!(
                seen.as_deref(),
                Some(expected.unwrap_or("Bearer caller")),
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn the_host_header_is_mapped_when_the_uri_has_no_authority() {
        let mut req = get("/api/v3/user");
        req.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("GHE.example.com"),
        );
        let seen = authorization_seen(layer(), req).await;
        assert_eq!(seen.as_deref(), Some("Bearer github-fresh"));
    }

    #[tokio::test]
    async fn an_extension_wins_over_a_mapping() {
        let mut req = get("https://ghe.example.com/api/v3/user");
        req.extensions_mut().insert(Provider::Google);
        let seen = authorization_seen(layer(), req).await;
        assert_eq!(seen.as_deref(), Some("Bearer google-fresh"));
    }

    #[tokio::test]
    async fn a_401_replays_the_same_request_with_a_body_whole_in_memory() {
        use http_body_util::{BodyExt, Full};
        type Seen = (String, String, Option<String>, Option<String>, Bytes);
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let inner = tower::service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
            let record = record.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let header = |name| {
                    parts
                        .headers
                        .get(name)
                        .map(|v: &http::HeaderValue| v.to_str().unwrap().to_string())
                };
                let mut seen = record.lock().unwrap();
                seen.push((
                    parts.method.to_string(),
                    parts.uri.to_string(),
                    header(AUTHORIZATION),
                    header(http::header::CONTENT_TYPE),
                    body,
                ));
                let status = if seen.len() == 1 { 401 } else { 200 };
                let mut resp = Response::new(());
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok::<_, Infallible>(resp)
            }
        });
        let uri = "https://www.googleapis.com/upload/drive/v3/files?uploadType=media";
        let req = Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, "Bearer caller")
            .body(Full::new(Bytes::from_static(b"{\"name\":\"a\"}")))
            .unwrap();
        let resp = layer().layer(inner).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        let (first, again) = (&seen[0], &seen[1]);
        assert_eq!(first.0, "POST");
        assert_eq!(first.1, uri);
        assert_eq!(first.2.as_deref(), Some("Bearer google-fresh"));
        assert_eq!(first.3.as_deref(), Some("application/json"));
        assert_eq!(&first.4[..], b"{\"name\":\"a\"}");
        assert_eq!(first, again);
    }

    #[test]
    fn provider_for_uses_the_schemes_default_port() {
        let tokens = Tokens::builder(Fresh).build();
        let layer = RefreshLayer::new(tokens)
            .host("ghe.example.com:443".parse().unwrap(), Provider::GitHub);
        let of = |uri: &'static str| layer.provider_for(&http::Uri::from_static(uri));
        assert_eq!(of("https://ghe.example.com/api/v3"), Some(Provider::GitHub));
        assert_eq!(of("http://ghe.example.com/api/v3"), None);
        assert_eq!(
            of("http://ghe.example.com:443/api/v3"),
            Some(Provider::GitHub)
        );
        assert_eq!(of("/api/v3"), None);
    }
}
