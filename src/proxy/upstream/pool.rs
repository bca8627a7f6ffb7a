//! The connection pool of plain `http` upstreams: HTTP/1.1 connections kept per serving worker
//! and per upstream authority, so that a proxied request finds its connection without hashing,
//! without a lock anyone else is waiting on, and without a task spawned to hand the connection
//! back.
//!
//! Decided (measured, BENCHMARKS.md section 9): hyper-util's pooled client cost the sidecar about
//! a fifth of its instructions per request — its pool key is hashed with SipHash on every
//! checkout and checkin, and every HTTP/1 response spawns a task that waits for the connection
//! to be ready again. Here:
//!
//! - **Checkout** takes the most recently returned connection of the request's worker and
//!   authority (compared byte for byte: the router builds every upstream URI from the route's
//!   own), skipping connections that have closed; one that sat idle for `idle_timeout` (90 s)
//!   is closed, and so is every older one behind it. No idle connection: a new one is connected,
//!   bounded by `connect_timeout` ([`ConnectTimeout`]), and its connection task runs on the
//!   calling worker.
//! - **Checkin** happens when the response body ends ([`PooledBody`]), or at once for a
//!   response without a body: by then hyper has finished the exchange on the same thread and the
//!   connection is ready, so it goes straight back. One that is not ready yet (its request body
//!   still going out after an early answer) is handed to a small task that returns it once it
//!   is ready, waiting at most `idle_timeout`. A response body dropped before its end is
//!   treated the same: hyper reads the rest when it has already arrived (a small answer, a 401
//!   the layer drops to replay) and the connection comes back, else hyper closes it. A failed
//!   body takes its connection with it. At most 256 idle connections are kept per worker and
//!   authority.
//! - **Reaping**: each worker's first connection starts a task on that worker that closes its
//!   connections idle for `idle_timeout`, every half `idle_timeout` (at least 500 ms apart),
//!   so an idle connection is closed at most half the timeout late even when no request comes
//!   to expire it (checkout never hands out one idle for the whole timeout). It ends with the
//!   pool, or with its runtime; the worker's next connection then starts another.
//! - **Retry**: a request that a reused connection refused before writing any of it (the
//!   connection closed while idle; hyper hands the request back) is sent again on another
//!   connection, at most twice on reused ones, then once on a new one — never a request that was
//!   written, so a request is never sent twice.
//!
//! The request is sent in origin form (`/path?query`) with a `Host` header (the authority's host
//! and port, without userinfo or the scheme's default port) when it has none, as HTTP/1.1 (an
//! HTTP/1.0 request as HTTP/1.0). Connections are served with upgrades enabled, as hyper-util's
//! client does (the sidecar strips `Upgrade`, so it never asks for one); an upgraded connection
//! is never ready again and never returns to the pool. `https` upstreams keep
//! hyper-util's client ([`super::upstream_client`]): they may negotiate HTTP/2 by ALPN, and their
//! TLS costs more per request than its pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::ServiceExt;

use super::ConnectTimeout;
use crate::BoxError;

/// How long a connection may sit idle in the pool before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How many idle connections are kept per worker and upstream authority.
pub const MAX_IDLE_PER_HOST: usize = 256;

/// Past this many authorities in one worker's pool, a checkin first forgets those with no idle
/// connection (the sidecar has one per route; an embedder may reach any number of hosts).
const MAX_HOSTS: usize = 64;

/// Reused connections a request may be refused by before it takes a new one.
const MAX_REUSED_REFUSALS: usize = 2;

/// The pool of HTTP/1.1 connections to plain `http` upstreams (module docs). Clones share it.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::proxy::upstream::pool::Pool;
///
/// let pool: Pool<http_body_util::Empty<bytes::Bytes>> = Pool::new(2, Duration::from_secs(10));
/// assert_eq!(pool.idle(0), 0);
/// ```
pub struct Pool<B> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Pool {
            shared: self.shared.clone(),
        }
    }
}

impl<B> std::fmt::Debug for Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.shared.workers.len())
            .field("idle_timeout", &self.shared.idle_timeout)
            .finish()
    }
}

struct Shared<B> {
    /// Per worker ([`workers::current`](crate::proxy::workers::current)): its authorities and
    /// their idle connections. Only that worker's thread takes the lock on the request path.
    workers: Box<[Mutex<Vec<Host<B>>>]>,
    /// Per worker: whether its reaper task runs (started with its first connection).
    reaping: Box<[AtomicBool]>,
    connector: ConnectTimeout<HttpConnector>,
    idle_timeout: Duration,
}

struct Host<B> {
    authority: Authority,
    /// Oldest first: checkout pops the newest, expiry drains from the front.
    idle: Vec<Idle<B>>,
}

struct Idle<B> {
    tx: http1::SendRequest<B>,
    since: Instant,
}

/// A failed pooled request: connecting, or the exchange on the connection.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The request's URI names no authority to connect to.
    #[error("the upstream URI has no authority")]
    NoAuthority,
    /// Connecting (TCP, bounded by `connect_timeout`) or the HTTP/1 handshake failed.
    #[error("connecting to the upstream failed")]
    Connect(#[source] BoxError),
    /// The connection failed while sending the request or reading the response head.
    #[error("the upstream connection failed")]
    Http(#[source] hyper::Error),
}

/// The response future of [`Pool::request`].
pub type PoolFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<PooledBody<B>>, PoolError>> + Send>>;

impl<B> Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A pool with one set of connections per serving worker (`workers`, at least 1), connects
    /// bounded by `connect_timeout`.
    pub fn new(workers: usize, connect_timeout: Duration) -> Self {
        Pool::with_idle_timeout(workers, connect_timeout, IDLE_TIMEOUT)
    }

    /// Like [`new`](Pool::new) with another idle timeout (tests use zero: nothing is reused).
    ///
    /// ```
    /// use std::time::Duration;
    /// use oauth_refresh_proxy::proxy::upstream::pool::Pool;
    ///
    /// let pool: Pool<http_body_util::Empty<bytes::Bytes>> =
    ///     Pool::with_idle_timeout(1, Duration::from_secs(10), Duration::ZERO);
    /// assert_eq!(pool.idle(0), 0);
    /// ```
    pub fn with_idle_timeout(
        workers: usize,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        Pool {
            shared: Arc::new(Shared {
                workers: (0..workers.max(1))
                    .map(|_| Mutex::new(Vec::new()))
                    .collect(),
                reaping: (0..workers.max(1))
                    .map(|_| AtomicBool::new(false))
                    .collect(),
                connector: ConnectTimeout::new(http, connect_timeout),
                idle_timeout,
            }),
        }
    }

    /// Sends `req` (an absolute `http` URI) on a pooled connection of the calling worker, or a
    /// new one (module docs). The response body hands the connection back when it ends.
    pub fn request(&self, mut req: Request<B>) -> PoolFuture<B> {
        let worker = super::super::workers::current() % self.shared.workers.len();
        let shared = self.shared.clone();
        let authority = origin_form(&mut req);
        Box::pin(async move {
            let authority = authority.ok_or(PoolError::NoAuthority)?;
            let mut refusals = 0;
            loop {
                let pooled = if refusals < MAX_REUSED_REFUSALS {
                    shared.checkout(worker, &authority)
                } else {
                    None
                };
                let reused = pooled.is_some();
                let mut tx = match pooled {
                    Some(tx) => tx,
                    None => Shared::connect(&shared, worker, &authority).await?,
                };
                match tx.try_send_request(req).await {
                    Ok(resp) => {
                        let checkin = Checkin {
                            shared,
                            worker,
                            authority,
                            tx,
                        };
                        return Ok(if resp.body().is_end_stream() {
                            checkin.put();
                            resp.map(|inner| PooledBody {
                                inner,
                                checkin: None,
                            })
                        } else {
                            resp.map(|inner| PooledBody {
                                inner,
                                checkin: Some(checkin),
                            })
                        });
                    }
                    Err(mut refused) => match refused.take_message() {
                        // Never written: safe to send on another connection.
                        Some(back) if reused => {
                            tracing::trace!(error = %refused.error(), "pooled connection closed before the request was sent: sending it on another");
                            refusals += 1;
                            req = back;
                        }
                        _ => return Err(PoolError::Http(refused.into_error())),
                    },
                }
            }
        })
    }
}

impl<B> Pool<B> {
    /// How many idle connections worker `worker` holds (all authorities).
    pub fn idle(&self, worker: usize) -> usize {
        self.shared
            .lock(worker % self.shared.workers.len())
            .iter()
            .map(|h| h.idle.len())
            .sum()
    }
}

impl<B> Shared<B> {
    fn lock(&self, worker: usize) -> MutexGuard<'_, Vec<Host<B>>> {
        // A panic while holding it cannot leave the list inconsistent: keep using it.
        self.workers[worker]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The newest idle connection to `authority` that is still open and not expired.
    fn checkout(&self, worker: usize, authority: &Authority) -> Option<http1::SendRequest<B>> {
        let mut hosts = self.lock(worker);
        let host = hosts
            .iter_mut()
            .find(|h| h.authority.as_str() == authority.as_str())?;
        let mut now = None;
        while let Some(idle) = host.idle.pop() {
            if idle.tx.is_closed() || !idle.tx.is_ready() {
                continue;
            }
            let now = *now.get_or_insert_with(Instant::now);
            if now.saturating_duration_since(idle.since) >= self.idle_timeout {
                // Every connection behind it has been idle longer.
                host.idle.clear();
                return None;
            }
            return Some(idle.tx);
        }
        None
    }

    fn checkin(&self, worker: usize, authority: Authority, tx: http1::SendRequest<B>) {
        let now = Instant::now();
        let mut hosts = self.lock(worker);
        let index = match hosts
            .iter()
            .position(|h| h.authority.as_str() == authority.as_str())
        {
            Some(i) => i,
            None => {
                if hosts.len() >= MAX_HOSTS {
                    hosts.retain(|h| !h.idle.is_empty());
                }
                hosts.push(Host {
                    authority,
                    idle: Vec::new(),
                });
                hosts.len() - 1
            }
        };
        let idle = &mut hosts[index].idle;
        let expired = idle
            .iter()
            .take_while(|i| now.saturating_duration_since(i.since) >= self.idle_timeout)
            .count();
        idle.drain(..expired);
        if idle.len() < MAX_IDLE_PER_HOST {
            idle.push(Idle { tx, since: now });
        }
    }
}

impl<B> Shared<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A new connection to `authority`, its connection task spawned on the calling runtime
    /// (and, with the worker's first connection, the worker's reaper).
    async fn connect(
        this: &Arc<Self>,
        worker: usize,
        authority: &Authority,
    ) -> Result<http1::SendRequest<B>, PoolError> {
        if !this.reaping[worker].swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(this), worker));
        }
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| PoolError::Connect(e.into()))?;
        let io = this
            .connector
            .clone()
            .oneshot(uri)
            .await
            .map_err(PoolError::Connect)?;
        let (tx, conn) = http1::handshake(io)
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
    }
}

/// Closes worker `worker`'s connections idle for `idle_timeout` (and forgets closed ones),
/// every half `idle_timeout` (at least every 500 ms), until the pool is dropped: idle
/// connections are closed at most half the timeout late even when no request comes to expire
/// them.
async fn reap<B>(pool: Weak<Shared<B>>, worker: usize) {
    // Clears the worker's flag however the task ends (the pool dropped, or its runtime shut
    // down with it), so that the next connection on that worker starts a reaper again.
    let guard = Reaping { pool, worker };
    let every = match guard.pool.upgrade() {
        Some(shared) => (shared.idle_timeout / 2).max(Duration::from_millis(500)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = guard.pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        for host in shared.lock(worker).iter_mut() {
            host.idle.retain(|i| {
                !i.tx.is_closed() && now.saturating_duration_since(i.since) < shared.idle_timeout
            });
        }
    }
}

/// A worker's reaper, running: see [`reap`].
struct Reaping<B> {
    pool: Weak<Shared<B>>,
    worker: usize,
}

impl<B> Drop for Reaping<B> {
    fn drop(&mut self) {
        if let Some(shared) = self.pool.upgrade() {
            shared.reaping[self.worker].store(false, Ordering::Relaxed);
        }
    }
}

/// Makes `req`'s URI origin-form, gives it a `Host` (the authority's host, and its port unless
/// 80) when it has none, and sends anything but an HTTP/1.0 request as HTTP/1.1 (a plain
/// `http` upstream is spoken to in HTTP/1); returns the authority, `None` when there was none.
fn origin_form<B>(req: &mut Request<B>) -> Option<Authority> {
    let parts = std::mem::take(req.uri_mut()).into_parts();
    let authority = parts.authority?;
    let mut origin = http::uri::Parts::default();
    origin.path_and_query = Some(
        parts
            .path_and_query
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    *req.uri_mut() = Uri::from_parts(origin).unwrap_or_default();
    if !req.headers().contains_key(header::HOST) {
        // From the host and port only: never the URI's userinfo.
        let host = match authority.port_u16() {
            None | Some(80) => HeaderValue::from_str(authority.host()),
            Some(port) => HeaderValue::from_str(&format!("{}:{port}", authority.host())),
        };
        if let Ok(host) = host {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    if req.version() != Version::HTTP_10 {
        *req.version_mut() = Version::HTTP_11;
    }
    Some(authority)
}

/// A connection on its way back to the pool.
struct Checkin<B> {
    shared: Arc<Shared<B>>,
    worker: usize,
    authority: Authority,
    tx: http1::SendRequest<B>,
}

impl<B: Send + 'static> Checkin<B> {
    /// Back to the pool now if the connection is ready; else once it is (at most
    /// `idle_timeout` later); a closed one is dropped.
    fn put(self) {
        if self.tx.is_ready() {
            self.shared.checkin(self.worker, self.authority, self.tx);
        } else if !self.tx.is_closed() {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let Checkin {
                shared,
                worker,
                authority,
                mut tx,
            } = self;
            runtime.spawn(async move {
                let ready = std::future::poll_fn(|cx| tx.poll_ready(cx));
                if let Ok(Ok(())) = tokio::time::timeout(shared.idle_timeout, ready).await {
                    shared.checkin(worker, authority, tx);
                }
            });
        }
    }
}

pin_project! {
    /// An upstream response body that returns its connection to the [`Pool`] when it ends
    /// (module docs). Frames, size hint and end of stream are the connection's.
    pub struct PooledBody<B>
    where
        B: Send,
        B: 'static,
    {
        #[pin]
        inner: Incoming,
        checkin: Option<Checkin<B>>,
    }

    impl<B> PinnedDrop for PooledBody<B>
    where
        B: Send,
        B: 'static,
    {
        fn drop(this: Pin<&mut Self>) {
            // Dropped at its end (hyper's server stops polling a body whose length is reached),
            // or before: hyper then reads what is left if it has already arrived (a small
            // answer, the layer dropping a 401 to replay) and the connection becomes ready,
            // else closes it; `put` waits, bounded, for either.
            if let Some(checkin) = this.project().checkin.take() {
                checkin.put();
            }
        }
    }
}

impl<B: Send + 'static> PooledBody<B> {
    /// A body that came from no pooled connection (another client's response).
    pub fn unpooled(inner: Incoming) -> Self {
        PooledBody {
            inner,
            checkin: None,
        }
    }
}

impl<B: Send + 'static> std::fmt::Debug for PooledBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("pooled", &self.checkin.is_some())
            .finish()
    }
}

impl<B: Send + 'static> Body for PooledBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = ready!(this.inner.as_mut().poll_frame(cx));
        match &polled {
            Some(Ok(_)) if !this.inner.is_end_stream() => {}
            Some(Ok(_)) | None => {
                if let Some(checkin) = this.checkin.take() {
                    checkin.put();
                }
            }
            // The connection failed: it goes with the body.
            Some(Err(_)) => drop(this.checkin.take()),
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
