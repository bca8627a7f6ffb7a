//! The sidecar's upstream side (SPEC 4.2 `[upstream]`, 4.3, 4.4): the clients — for plain
//! `http` upstreams the proxy's own HTTP/1.1 [`pool`] (per worker, see its docs for why), for
//! `https` ones the pooled hyper-util client (rustls, HTTP/1.1 and HTTP/2 by ALPN) — and
//! [`Upstream`], the service the [`RefreshLayer`](crate::RefreshLayer) wraps, which bounds every
//! attempt:
//!
//! - **connect**: TCP connect plus TLS handshake within `connect_timeout` ([`ConnectTimeout`]),
//!   else the attempt fails (`502 upstream_unavailable`);
//! - **response head**: within `response_timeout` of the attempt being handed to the client, or
//!   of the last request body frame the connection took, whichever is later, else
//!   [`UpstreamError::Timeout`] (`504 upstream_timeout`). Counting from the last body frame
//!   keeps a long upload that the upstream keeps reading alive, while an upstream that stops
//!   reading or never answers is cut off. The attempt is sent once: a timed-out request is never
//!   retried (a replay after a 401 is a new attempt with its own bound);
//! - **response body**: wrapped in an [`IdleTimeout`] of `body_idle_timeout`, so a response
//!   body that stalls fails, and the proxy's server aborts the response to the caller (never a
//!   silently truncated "complete" one).
//!
//! When the caller's request body fails (an [`IdleTimeout`] on it stalled, or its framing was
//! malformed), the attempt fails with [`UpstreamError::RequestBody`] carrying that
//! [`BodyError`], whatever the HTTP version upstream: HTTP/1.1 reports the body's error itself,
//! but HTTP/2 only resets the stream, so the body records its failure on the attempt
//! ([`AttemptBody`]) and the response future reports it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

pub mod pool;

use self::pool::{Pool, PoolError, PoolFuture, PooledBody};
use super::timeouts::{BodyError, IdleTimeout, ProxyTimeouts};
use crate::layer::ReplayBody;
use crate::BoxError;

/// The TLS connector under [`UpstreamConnector`]: rustls (platform verifier) over TCP.
pub type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The connector the sidecar uses upstream: [`HttpsConnector`] bounded by `connect_timeout`.
pub type UpstreamConnector = ConnectTimeout<HttpsConnector>;

/// A caller's request body as the proxy forwards it: bounded by `server.body_read_timeout`.
pub type CallerBody = IdleTimeout<Incoming>;

/// An upstream's response body as the proxy streams it back: bounded by
/// `upstream.body_idle_timeout`; a pooled plain-http connection goes back to its [`Pool`] when
/// it ends.
pub type UpstreamBody = IdleTimeout<PooledBody<AttemptedBody>>;

/// A caller's body as one upstream attempt sends it.
pub type AttemptedBody = AttemptBody<ReplayBody<CallerBody>>;

/// The pooled upstream client of `https` upstreams.
pub type UpstreamClient = LegacyClient<UpstreamConnector, AttemptedBody>;

/// Builds the upstream client: rustls with the platform's roots (honouring `SSL_CERT_FILE`),
/// HTTP/1.1 and HTTP/2 negotiated by ALPN, pooled connections, connects bounded by
/// `timeouts.connect`.
///
/// ```
/// use oauth_refresh_proxy::proxy::timeouts::ProxyTimeouts;
/// use oauth_refresh_proxy::proxy::upstream::upstream_client;
///
/// let client = upstream_client(&ProxyTimeouts::default());
/// # let _ = client;
/// ```
pub fn upstream_client(timeouts: &ProxyTimeouts) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeouts.connect));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_platform_verifier()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    LegacyClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(ConnectTimeout::new(https, timeouts.connect))
}

// ---------------------------------------------------------------------------------------------
// Connect bound.
// ---------------------------------------------------------------------------------------------

/// A connector whose connects (TCP and TLS alike) fail with [`ConnectTimedOut`] after
/// `timeout`.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::proxy::upstream::ConnectTimeout;
///
/// let c = ConnectTimeout::new(hyper_util::client::legacy::connect::HttpConnector::new(), Duration::from_secs(3));
/// assert_eq!(c.timeout(), Duration::from_secs(3));
/// ```
#[derive(Clone, Debug)]
pub struct ConnectTimeout<C> {
    inner: C,
    timeout: Duration,
}

impl<C> ConnectTimeout<C> {
    /// Bounds every connect of `inner` by `timeout`.
    pub fn new(inner: C, timeout: Duration) -> Self {
        ConnectTimeout { inner, timeout }
    }

    /// The bound.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// A connect that did not complete within [`ConnectTimeout::timeout`].
#[derive(Debug, thiserror::Error)]
#[error("connecting to the upstream (TCP and TLS) took longer than {0:?}")]
pub struct ConnectTimedOut(pub Duration);

impl<C> tower::Service<Uri> for ConnectTimeout<C>
where
    C: tower::Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        // Once per new connection, not per request: the box costs nothing that matters.
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimedOut(timeout)) as BoxError),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The service.
// ---------------------------------------------------------------------------------------------

/// Why an upstream attempt failed.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::proxy::upstream::UpstreamError;
///
/// let e = UpstreamError::Timeout(Duration::from_secs(60));
/// assert_eq!(e.to_string(), "no response head from the upstream within 60s");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No response head within `response_timeout` (`504 upstream_timeout`).
    #[error("no response head from the upstream within {0:?}")]
    Timeout(Duration),
    /// The caller's request body failed while it was being sent: it stalled
    /// (`408 request_timeout`) or its framing was malformed (`400 bad_request`).
    #[error("the request body failed: {0}")]
    RequestBody(#[source] BodyError),
    /// Connect, TLS or protocol failure of an `https` upstream (`502 upstream_unavailable`).
    #[error(transparent)]
    Client(hyper_util::client::legacy::Error),
    /// Connect or protocol failure of a plain `http` upstream (`502 upstream_unavailable`).
    #[error(transparent)]
    Pool(PoolError),
}

/// The upstream client as the layer's inner service, with the bounds of the module docs.
/// Shared behind an `Arc`, so the clones a tower service needs per request cost one atomic
/// increment instead of copying the client.
///
/// ```
/// use oauth_refresh_proxy::proxy::timeouts::ProxyTimeouts;
/// use oauth_refresh_proxy::proxy::upstream::Upstream;
///
/// let upstream = Upstream::new(&ProxyTimeouts::default());
/// # let _ = upstream;
/// ```
#[derive(Clone, Debug)]
pub struct Upstream {
    clients: Arc<[UpstreamClient]>,
    plain: Pool<AttemptedBody>,
    response_timeout: Duration,
    body_idle_timeout: Duration,
}

impl Upstream {
    /// A new pooled client ([`upstream_client`]) with `timeouts`' bounds.
    pub fn new(timeouts: &ProxyTimeouts) -> Self {
        Upstream::with_pools(timeouts, 1)
    }

    /// Like [`new`](Upstream::new), with one pooled client per serving worker (`pools`, at
    /// least 1): a request uses the pool of the worker it runs on
    /// ([`workers::current`](super::workers::current)), so a pooled connection is only ever
    /// used on the thread whose reactor it is registered with.
    pub fn with_pools(timeouts: &ProxyTimeouts, pools: usize) -> Self {
        Upstream {
            clients: (0..pools.max(1))
                .map(|_| upstream_client(timeouts))
                .collect(),
            plain: Pool::new(pools, timeouts.connect),
            response_timeout: timeouts.response,
            body_idle_timeout: timeouts.body_idle,
        }
    }

    fn client(&self) -> &UpstreamClient {
        &self.clients[super::workers::current() % self.clients.len()]
    }
}

impl tower::Service<Request<ReplayBody<CallerBody>>> for Upstream {
    type Response = Response<UpstreamBody>;
    type Error = UpstreamError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody<CallerBody>>) -> Self::Future {
        // A request without a body (most) has nothing to report: no shared record for it.
        let attempt = (!req.body().is_end_stream()).then(|| Arc::new(Attempt::new()));
        let req = req.map(|body| AttemptBody {
            inner: body,
            attempt: attempt.clone(),
        });
        let inner = if req.uri().scheme() == Some(&http::uri::Scheme::HTTP) {
            Client::Pooled(self.plain.request(req))
        } else {
            Client::Https(self.client().request(req))
        };
        ResponseFuture {
            inner,
            sleep: tokio::time::sleep(self.response_timeout),
            attempt,
            response_timeout: self.response_timeout,
            body_idle_timeout: self.body_idle_timeout,
        }
    }
}

/// What one attempt's request body tells its response future.
#[derive(Debug)]
struct Attempt {
    started: Instant,
    /// When the connection last took a body frame, in nanoseconds since `started`.
    last_sent: AtomicU64,
    body_error: OnceLock<BodyError>,
}

impl Attempt {
    fn new() -> Self {
        Attempt {
            started: Instant::now(),
            last_sent: AtomicU64::new(0),
            body_error: OnceLock::new(),
        }
    }

    fn sent_now(&self) {
        let nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_sent.fetch_max(nanos, Ordering::Relaxed);
    }

    fn last_sent(&self) -> Instant {
        self.started + Duration::from_nanos(self.last_sent.load(Ordering::Relaxed))
    }
}

pin_project! {
    /// A request body as the upstream connection takes it: each frame taken pushes the
    /// attempt's response deadline on, and a failure is recorded on the attempt (see the
    /// module docs). Frames, size hint and end of stream pass through unchanged.
    pub struct AttemptBody<B> {
        #[pin]
        inner: B,
        // `None` for a body that had ended before the attempt (nothing to report).
        attempt: Option<Arc<Attempt>>,
    }
}

impl<B> std::fmt::Debug for AttemptBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptBody")
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl<B> Body for AttemptBody<B>
where
    B: Body<Error = BodyError>,
{
    type Data = B::Data;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = ready!(this.inner.poll_frame(cx));
        if let Some(attempt) = this.attempt {
            match &polled {
                Some(Ok(_)) => attempt.sent_now(),
                Some(Err(e)) => {
                    let _ = attempt.body_error.set(e.clone());
                }
                None => {}
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The response future of [`Upstream`]: the client's, bounded by `response_timeout`.
    pub struct ResponseFuture {
        inner: Client,
        #[pin]
        sleep: Sleep,
        attempt: Option<Arc<Attempt>>,
        response_timeout: Duration,
        body_idle_timeout: Duration,
    }
}

/// The request in one of the two clients (both futures are boxed: `Unpin`).
enum Client {
    Pooled(PoolFuture<AttemptedBody>),
    Https(hyper_util::client::legacy::ResponseFuture),
}

impl Client {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<PooledBody<AttemptedBody>>, UpstreamError>> {
        match self {
            Client::Pooled(f) => Pin::new(f).poll(cx).map_err(UpstreamError::Pool),
            Client::Https(f) => Pin::new(f).poll(cx).map(|r| {
                r.map(|resp| resp.map(PooledBody::unpooled))
                    .map_err(UpstreamError::Client)
            }),
        }
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<UpstreamBody>, UpstreamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(match result {
                Ok(resp) => {
                    let idle = *this.body_idle_timeout;
                    Ok(resp.map(|body| IdleTimeout::new(body, idle)))
                }
                Err(e) => Err(
                    match this.attempt.as_ref().and_then(|a| a.body_error.get()) {
                        Some(body) => UpstreamError::RequestBody(body.clone()),
                        None => e,
                    },
                ),
            });
        }
        loop {
            ready!(this.sleep.as_mut().poll(cx));
            let Some(attempt) = this.attempt else {
                // No body: the bound counts from the start only.
                return Poll::Ready(Err(UpstreamError::Timeout(*this.response_timeout)));
            };
            if let Some(body) = attempt.body_error.get() {
                // The body failed just now; its error is on its way through the client.
                return Poll::Ready(Err(UpstreamError::RequestBody(body.clone())));
            }
            let deadline = attempt.last_sent() + *this.response_timeout;
            if deadline <= Instant::now() {
                // Dropping the client's future cancels the request: never retried.
                return Poll::Ready(Err(UpstreamError::Timeout(*this.response_timeout)));
            }
            this.sleep.as_mut().reset(deadline);
        }
    }
}
