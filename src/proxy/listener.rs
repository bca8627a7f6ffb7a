//! Serving one listener within bounds: accepting TCP connections and serving HTTP/1.1 and
//! HTTP/2 (prior knowledge) on them so that no client holds a connection indefinitely
//! (SPEC 4.2 `[server]`, SPEC 5). Both the proxy and the admin listener run on [`serve`].
//!
//! # What a connection may do
//!
//! Every connection is watched from accept to close; nothing in flight means no request whose
//! response body has not ended yet.
//!
//! * **Request head** (`header_read_timeout`): a new connection must deliver its first complete
//!   request head within this time, HTTP/1.1 and HTTP/2 alike (an HTTP/2 connection that sends
//!   the preface and nothing else, or a HEADERS frame byte by byte, is closed like a slow
//!   HTTP/1.1 head). On a reused HTTP/1.1 connection the clock starts at the first byte of the
//!   next head. The connection is closed at once.
//! * **Idle** (`idle_timeout`): a connection with nothing in flight this long (HTTP/1.1
//!   keep-alive, HTTP/2 with no open stream) is shut down gracefully (HTTP/2: `GOAWAY`) and
//!   closed at the latest [`CLOSE_GRACE`] later. HTTP/2 control frames (`PING`,
//!   `WINDOW_UPDATE`) are no activity: only requests are.
//! * **Slow readers** (`idle_timeout` too): a connection whose write to the socket stays blocked
//!   this long, with a request in flight (the client stopped reading its response), is closed
//!   at once.
//! * **Connections** (`max_connections`): each listener has its own budget; a TCP connection
//!   past it is accepted and closed at once, so the admin listener's [`ADMIN_MAX_CONNECTIONS`]
//!   keep `/healthz` answering while the proxy listener is full.
//! * **Bursts** of new connections wait in a listen queue of [`LISTEN_BACKLOG`] ([`bind`]) rather
//!   than being dropped by the kernel (which makes their clients retry after a second).
//! * **Accept errors** (out of descriptors and the like) back off for 50 ms instead of spinning,
//!   and are logged at most once a second, with the number held back.
//! * **Shutdown**: once `shutdown` turns true, the listener stops accepting, every connection is
//!   asked to close gracefully, and one with nothing in flight is closed at the latest
//!   [`CLOSE_GRACE`] later (a half-sent request head or a silent connection never holds the
//!   process); requests in flight get the drain timeout.
//!
//! hyper's own HTTP/1 `header_read_timeout` (which needs a timer) is not used: its clock also
//! starts when a keep-alive connection goes idle (hyper starts reading the next head at once),
//! so it would close idle keep-alive connections after `header_read_timeout` and make a longer
//! `idle_timeout` meaningless; and HTTP/2 has no such timeout. One watchdog per connection
//! enforces both deadlines for both protocols instead.
//!
//! # Descriptors
//!
//! [`raise_nofile_limit`] lifts `RLIMIT_NOFILE`'s soft limit to the hard limit at start-up, and
//! [`fit_max_connections`] clamps `max_connections` to what fits under it.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::config::ServerSettings;
use super::workers::Workers;
use crate::BoxError;

/// The admin listener's own connection budget, apart from `max_connections`.
pub const ADMIN_MAX_CONNECTIONS: usize = 256;

/// Descriptors kept aside beside the listeners' connections and their upstream sockets: the
/// listening sockets, stdio, the runtime, the store, the refresh and webhook clients.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// How long a connection asked to close gracefully (idle, or at shutdown) with nothing in flight
/// may take before it is closed anyway.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The listen queue of [`bind`] (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// The pause after an accept error that is not about one connection (out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// At most one warning of a kind per listener this often.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// What one listener enforces (see the [module docs](self)).
///
/// ```
/// use oauth_refresh_proxy::proxy::config::ServerSettings;
/// use oauth_refresh_proxy::proxy::listener::{Limits, ADMIN_MAX_CONNECTIONS};
///
/// let server = ServerSettings::default();
/// assert_eq!(Limits::proxy(&server).max_connections, 10_000);
/// assert_eq!(Limits::admin(&server).max_connections, ADMIN_MAX_CONNECTIONS);
/// assert_eq!(Limits::admin(&server).listener, "admin");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The listener's name in logs and in `orp_connections{listener}`: `proxy` or `admin`.
    pub listener: &'static str,
    /// A request head must be complete this long after it started.
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight this long is closed.
    pub idle_timeout: Duration,
    /// Connections kept open at once (at least 1); past it, new ones are closed at once.
    pub max_connections: usize,
}

impl Limits {
    /// The proxy listener's limits: `[server]` as configured.
    pub fn proxy(server: &ServerSettings) -> Self {
        Limits {
            listener: "proxy",
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            max_connections: server.max_connections,
        }
    }

    /// The admin listener's limits: `[server]`'s timeouts, and its own budget of
    /// [`ADMIN_MAX_CONNECTIONS`].
    pub fn admin(server: &ServerSettings) -> Self {
        Limits {
            listener: "admin",
            max_connections: ADMIN_MAX_CONNECTIONS,
            ..Limits::proxy(server)
        }
    }
}

/// Binds a listener on `addr` (with `SO_REUSEADDR`, as [`TcpListener::bind`] does) with a listen
/// queue of [`LISTEN_BACKLOG`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let listener = oauth_refresh_proxy::proxy::listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
/// assert!(listener.local_addr().unwrap().port() > 0);
/// # }
/// ```
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force
/// (`None` where it cannot be read). A failure to raise it is logged, and the old soft limit
/// returned.
///
/// ```
/// use oauth_refresh_proxy::proxy::listener::raise_nofile_limit;
///
/// let now = raise_nofile_limit();
/// assert!(now.is_none_or(|n| n > 0));
/// assert_eq!(raise_nofile_limit(), now, "raising again changes nothing");
/// ```
pub fn raise_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let (soft, hard) = match rlimit::Resource::NOFILE.get() {
            Ok(limits) => limits,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE");
                return None;
            }
        };
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(now) => {
                if now > soft {
                    tracing::info!(
                        from = soft,
                        to = now,
                        "raised RLIMIT_NOFILE to its hard limit"
                    );
                }
                Some(now)
            }
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise RLIMIT_NOFILE; keeping the soft limit");
                Some(soft)
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The largest `max_connections`, at most `requested`, that fits under `nofile` descriptors:
/// each proxy connection may hold one upstream socket besides its own, and the admin listener's
/// [`ADMIN_MAX_CONNECTIONS`] and [`RESERVED_DESCRIPTORS`] come first. Never below 1.
///
/// ```
/// use oauth_refresh_proxy::proxy::listener::fit_max_connections;
///
/// assert_eq!(fit_max_connections(10_000, 1_048_576), 10_000);
/// assert_eq!(fit_max_connections(10_000, 20_000), 9_744); // (20 000 - 256 - 256) / 2
/// assert_eq!(fit_max_connections(10_000, 1_024), 256);
/// assert_eq!(fit_max_connections(10_000, 100), 1);
/// ```
pub fn fit_max_connections(requested: usize, nofile: u64) -> usize {
    let spare = nofile.saturating_sub(ADMIN_MAX_CONNECTIONS as u64 + RESERVED_DESCRIPTORS);
    let fit = usize::try_from(spare / 2).unwrap_or(usize::MAX).max(1);
    requested.min(fit)
}

/// Serves `handler` on `listener` (HTTP/1.1 and HTTP/2 prior knowledge) within `limits`, with
/// `open` counting the connections open now, until `shutdown` turns true; then stops accepting
/// and waits up to `drain` for in-flight requests before closing what is left.
///
/// ```
/// use std::time::Duration;
///
/// use http::Response;
/// use oauth_refresh_proxy::proxy::config::ServerSettings;
/// use oauth_refresh_proxy::proxy::listener::{bind, serve, Limits};
/// use prometheus_client::metrics::gauge::Gauge;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
/// let addr = listener.local_addr().unwrap();
/// let server = ServerSettings {
///     header_read_timeout: Duration::from_millis(200),
///     ..ServerSettings::default()
/// };
/// let (stop, shutdown) = tokio::sync::watch::channel(false);
/// let open = Gauge::default();
/// let task = tokio::spawn(serve(
///     listener,
///     |_req| async { Response::new(http_body_util::Full::new(bytes::Bytes::from("ok"))) },
///     Limits::proxy(&server),
///     open.clone(),
///     shutdown,
///     Duration::from_secs(5),
/// ));
///
/// let mut answered = tokio::net::TcpStream::connect(addr).await.unwrap();
/// answered.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
/// let mut text = String::new();
/// answered.read_to_string(&mut text).await.unwrap();
/// assert!(text.starts_with("HTTP/1.1 200 OK") && text.ends_with("ok"));
///
/// // A connection that never sends a request head is closed after header_read_timeout.
/// let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
/// let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut [0u8; 1])).await;
/// assert_eq!(read.unwrap().unwrap(), 0);
///
/// stop.send(true).unwrap();
/// task.await.unwrap();
/// assert_eq!(open.get(), 0);
/// # }
/// ```
pub async fn serve<H, Fut, B>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    open: Gauge,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_on(listener, handler, limits, open, shutdown, drain, None).await
}

/// [`serve`], with every accepted connection handed to the next of `workers`
/// ([`Workers::spawn_connection`]) instead of run on the current runtime: the listener's
/// budget, accept-error handling and drain are the same.
pub async fn serve_on<H, Fut, B>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    open: Gauge,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    workers: Option<Workers>,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let max = limits
        .max_connections
        .clamp(1, (u32::MAX as usize).min(Semaphore::MAX_PERMITS));
    let budget = Arc::new(Semaphore::new(max));
    let limits = Arc::new(limits);
    let name = limits.listener;
    let builder = auto::Builder::new(TokioExecutor::new());
    let (phase_tx, phase) = watch::channel(Phase::Serving);
    let mut accept_errors = Throttle::default();
    let mut over_limit = Throttle::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if let Some(suppressed) = accept_errors.admit(Instant::now()) {
                    tracing::warn!(listener = name, error = %e, suppressed, "accept failed");
                }
                if !is_connection_error(&e) {
                    // Out of descriptors and the like: the same error would come back at once.
                    tokio::select! {
                        _ = shutdown.wait_for(|stop| *stop) => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
                continue;
            }
        };
        if accept_errors.suppressed > 0 {
            if let Some(suppressed) = accept_errors.held_back(Instant::now()) {
                tracing::warn!(
                    listener = name,
                    suppressed,
                    "accepting again; accept errors since the last report"
                );
            }
        }
        let Ok(permit) = budget.clone().try_acquire_owned() else {
            if let Some(suppressed) = over_limit.admit(Instant::now()) {
                tracing::warn!(
                    listener = name,
                    max_connections = max,
                    suppressed,
                    "connection limit reached: closing new connections"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        open.inc();
        let slot = Slot {
            open: open.clone(),
            _permit: permit,
        };
        let conn = Connection {
            limits: limits.clone(),
            activity: Arc::new(Activity::new(Instant::now())),
            peer,
        };
        let builder = builder.clone();
        let handler = handler.clone();
        let phase = phase.clone();
        let run = move |stream: TcpStream| async move {
            conn.run(&builder, stream, handler, phase).await;
            drop(slot);
        };
        match &workers {
            Some(workers) => workers.spawn_connection(stream, run),
            None => {
                tokio::spawn(run(stream));
            }
        }
    }
    drop(listener);
    let _ = phase_tx.send(Phase::Draining);
    let all = max as u32;
    let drained = tokio::time::timeout(drain, budget.acquire_many(all)).await;
    if drained.is_ok() {
        tracing::debug!(listener = name, "connections drained");
    } else {
        tracing::warn!(
            listener = name,
            ?drain,
            "drain timeout: closing remaining connections"
        );
        let _ = phase_tx.send(Phase::Abort);
        let _ = tokio::time::timeout(CLOSE_GRACE, budget.acquire_many(all)).await;
    }
}

/// Accept errors about one connection (gone before it was accepted): retried at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// The listener's state, as its connections see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Stopped accepting: close gracefully.
    Draining,
    /// The drain timeout passed: close now.
    Abort,
}

/// A connection's place in the listener's budget and gauge, given back on drop.
struct Slot {
    open: Gauge,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// At most one log line per [`LOG_EVERY`], counting the ones held back.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(number held back since the last line)` when a line may be logged at `now`.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// The number held back since the last line, when there are some and a line may be logged
    /// at `now` (the report of a burst's tail keeps the rate too).
    fn held_back(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed == 0
            || self
                .last
                .is_some_and(|last| now.saturating_duration_since(last) < LOG_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

// ---------------------------------------------------------------------------------------------
// One connection.
// ---------------------------------------------------------------------------------------------

/// What a connection is waiting for, when it has a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// Nothing in flight, a request head (the first, or one whose first byte arrived):
    /// `header_read_timeout`.
    Head,
    /// Nothing in flight, the next request: `idle_timeout`.
    Idle,
    /// In flight, with a write to the socket blocked: the client to read (`idle_timeout`).
    Reader,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    waiting: Waiting,
    /// When `waiting` began.
    since: Instant,
    /// The connection speaks HTTP/2 (seen on its first request).
    h2: bool,
    /// Since when a write to the socket has been blocked (the client is not reading).
    blocked_since: Option<Instant>,
}

/// What a connection's watchdog knows of it: requests in flight (counted by [`InFlight`]
/// guards), while an HTTP/1.1 connection is idle whether a byte arrived, and whether a write is
/// blocked ([`Watched`]).
#[derive(Debug)]
struct Activity {
    state: Mutex<State>,
    /// Set while an HTTP/1.1 connection is idle: the next byte read starts a request head.
    idle_h1: AtomicBool,
    /// Set while a write to the socket is blocked.
    write_blocked: AtomicBool,
    /// Wakes the watchdog when a deadline starts.
    wake: Notify,
}

impl Activity {
    fn new(now: Instant) -> Self {
        Activity {
            state: Mutex::new(State {
                in_flight: 0,
                waiting: Waiting::Head,
                since: now,
                h2: false,
                blocked_since: None,
            }),
            idle_h1: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counters half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request arrived: in flight until its response body ends.
    fn start(self: &Arc<Self>, version: Version) -> InFlight {
        let mut s = self.state();
        s.in_flight += 1;
        s.h2 |= version == Version::HTTP_2;
        self.idle_h1.store(false, Ordering::Release);
        InFlight(self.clone())
    }

    fn end(&self) {
        let mut s = self.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.waiting = Waiting::Idle;
            s.since = Instant::now();
            if !s.h2 {
                self.idle_h1.store(true, Ordering::Release);
            }
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Bytes were read.
    fn read(&self) {
        if self.idle_h1.load(Ordering::Relaxed) && self.idle_h1.swap(false, Ordering::AcqRel) {
            let mut s = self.state();
            if s.in_flight == 0 && s.waiting == Waiting::Idle {
                s.waiting = Waiting::Head;
                s.since = Instant::now();
            }
            drop(s);
            self.wake.notify_one();
        }
    }

    /// A write to the socket returned: `pending` (the client is not reading) or not.
    fn wrote(&self, pending: bool) {
        if pending {
            if !self.write_blocked.swap(true, Ordering::AcqRel) {
                self.state().blocked_since = Some(Instant::now());
                self.wake.notify_one();
            }
        } else if self.write_blocked.load(Ordering::Relaxed)
            && self.write_blocked.swap(false, Ordering::AcqRel)
        {
            self.state().blocked_since = None;
        }
    }

    /// The connection's current wait and its deadline: `None` while a request is in flight
    /// and its writes go through.
    fn wait(&self, limits: &Limits) -> Option<Wait> {
        let s = self.state();
        if s.in_flight > 0 {
            return s.blocked_since.map(|since| Wait {
                waiting: Waiting::Reader,
                since,
                at: since + limits.idle_timeout,
            });
        }
        let timeout = match s.waiting {
            Waiting::Head => limits.header_read_timeout,
            Waiting::Idle | Waiting::Reader => limits.idle_timeout,
        };
        Some(Wait {
            waiting: s.waiting,
            since: s.since,
            at: s.since + timeout,
        })
    }

    /// When the watchdog acts next, and how; `None` while a request is in flight and its
    /// writes go through. Once asked to close (at `closing`), a connection with nothing in
    /// flight gets [`CLOSE_GRACE`] from then, or from the end of its last request if that came
    /// later (so that hyper can finish writing the response), and never more than its own
    /// deadline.
    fn due(&self, limits: &Limits, closing: Option<Instant>) -> Option<(Instant, Expiry)> {
        let w = self.wait(limits)?;
        let own = match w.waiting {
            Waiting::Head => Expiry::Head,
            Waiting::Idle => Expiry::Idle,
            Waiting::Reader => return Some((w.at, Expiry::Stalled)),
        };
        Some(match closing {
            None => (w.at, own),
            Some(asked) => {
                let grace = asked.max(w.since) + CLOSE_GRACE;
                match own {
                    Expiry::Head if w.at <= grace => (w.at, Expiry::Head),
                    _ => (w.at.min(grace), Expiry::Close),
                }
            }
        })
    }
}

/// A connection's current wait (nothing in flight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Wait {
    waiting: Waiting,
    /// When it began.
    since: Instant,
    /// Its deadline.
    at: Instant,
}

/// What the watchdog does when a deadline passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// `header_read_timeout`: close at once.
    Head,
    /// `idle_timeout`: close gracefully (HTTP/2 `GOAWAY`), at the latest [`CLOSE_GRACE`] later.
    Idle,
    /// Asked to close and not closed within [`CLOSE_GRACE`]: close at once.
    Close,
    /// A write blocked for `idle_timeout` (the client stopped reading): close at once.
    Stalled,
}

/// One request in flight on its connection, until dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's [`InFlight`] until it ends (or is dropped).
    struct InFlightBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B: http_body::Body> http_body::Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, reporting reads and blocked writes to its connection's [`Activity`].
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.wrote(written.is_pending());
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.wrote(written.is_pending());
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One accepted connection and its watchdog.
struct Connection {
    limits: Arc<Limits>,
    activity: Arc<Activity>,
    peer: SocketAddr,
}

impl Connection {
    /// Serves the connection until it ends, a deadline passes or the listener aborts.
    async fn run<H, Fut, B>(
        self,
        builder: &auto::Builder<TokioExecutor>,
        stream: TcpStream,
        handler: H,
        mut phase: watch::Receiver<Phase>,
    ) where
        H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let Connection {
            limits,
            activity,
            peer,
        } = self;
        let name = limits.listener;
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let svc = {
            let activity = activity.clone();
            hyper::service::service_fn(move |req: Request<Incoming>| {
                // Counted when hyper hands the request over, in the same poll that read its
                // head: the watchdog never sees a received request as nothing in flight.
                let guard = activity.start(req.version());
                let response = handler(req);
                async move {
                    let resp = response.await;
                    Ok::<_, Infallible>(resp.map(|inner| InFlightBody {
                        inner,
                        guard: Some(guard),
                    }))
                }
            })
        };
        let conn = builder.serve_connection(io, svc);
        tokio::pin!(conn);
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        // When the connection was asked to close gracefully (idle, or shutdown).
        let mut closing: Option<Instant> = None;
        if *phase.borrow_and_update() != Phase::Serving {
            conn.as_mut().graceful_shutdown();
            closing = Some(Instant::now());
        }
        loop {
            let next = activity.due(&limits, closing);
            if let Some((at, _)) = next {
                timer.as_mut().reset(at);
            }
            let woken = activity.wake.notified();
            tokio::select! {
                biased;
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = woken => {}
                changed = phase.changed() => match changed.map(|_| *phase.borrow_and_update()) {
                    Ok(Phase::Serving) => {}
                    Ok(Phase::Draining) => {
                        if closing.is_none() {
                            conn.as_mut().graceful_shutdown();
                            closing = Some(Instant::now());
                        }
                    }
                    Ok(Phase::Abort) | Err(_) => return,
                },
                _ = &mut timer, if next.is_some() => {
                    // Recomputed: a request may have started or ended since.
                    let now = Instant::now();
                    match activity.due(&limits, closing) {
                        Some((at, Expiry::Idle)) if at <= now => {
                            tracing::debug!(listener = name, %peer, timeout = ?limits.idle_timeout, "idle connection: closing");
                            conn.as_mut().graceful_shutdown();
                            closing = Some(now);
                        }
                        Some((at, Expiry::Head)) if at <= now => {
                            tracing::debug!(listener = name, %peer, timeout = ?limits.header_read_timeout, "request head not complete in time: closing");
                            return;
                        }
                        Some((at, Expiry::Stalled)) if at <= now => {
                            tracing::debug!(listener = name, %peer, timeout = ?limits.idle_timeout, "the client stopped reading: closing");
                            return;
                        }
                        Some((at, Expiry::Close)) if at <= now => {
                            tracing::debug!(listener = name, %peer, grace = ?CLOSE_GRACE, "connection did not close in time: closing");
                            return;
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_admits_one_line_a_second_and_counts_the_rest() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.admit(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.admit(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(t.admit(t0 + Duration::from_millis(1000)), Some(5));
        assert_eq!(t.admit(t0 + Duration::from_millis(1500)), None);
        // The tail of a burst is reported once a line may be logged again.
        assert_eq!(t.held_back(t0 + Duration::from_millis(1900)), None);
        assert_eq!(t.held_back(t0 + Duration::from_millis(2000)), Some(1));
        assert_eq!(
            t.held_back(t0 + Duration::from_millis(3500)),
            None,
            "nothing held back"
        );
        assert_eq!(t.admit(t0 + Duration::from_millis(2500)), None);
        assert_eq!(t.admit(t0 + Duration::from_millis(3000)), Some(1));
    }

    #[test]
    fn max_connections_fits_under_the_descriptor_limit() {
        assert_eq!(fit_max_connections(10_000, 1 << 20), 10_000);
        assert_eq!(fit_max_connections(10_000, 20_512), 10_000);
        assert_eq!(fit_max_connections(10_000, 20_511), 9_999);
        assert_eq!(fit_max_connections(50, 1_024), 50);
        assert_eq!(fit_max_connections(10_000, 1_024), 256);
        assert_eq!(fit_max_connections(10_000, 512), 1);
        assert_eq!(fit_max_connections(10_000, 0), 1);
        // RLIM_INFINITY.
        assert_eq!(fit_max_connections(10_000, u64::MAX), 10_000);
    }

    fn limits() -> Limits {
        Limits {
            listener: "proxy",
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
            max_connections: 1,
        }
    }

    #[tokio::test]
    async fn waits_follow_requests_and_bytes() {
        let limits = limits();
        let secs = Duration::from_secs;
        let t0 = Instant::now();
        let a = Arc::new(Activity::new(t0));
        // A new connection waits for its first head.
        assert_eq!(
            a.wait(&limits),
            Some(Wait {
                waiting: Waiting::Head,
                since: t0,
                at: t0 + secs(2)
            })
        );
        // Bytes of the first head change nothing.
        a.read();
        assert_eq!(a.wait(&limits).unwrap().at, t0 + secs(2));
        let g1 = a.start(Version::HTTP_11);
        let g2 = a.start(Version::HTTP_11);
        assert_eq!(a.wait(&limits), None);
        drop(g1);
        assert_eq!(a.wait(&limits), None, "one still in flight");
        drop(g2);
        let w = a.wait(&limits).unwrap();
        assert_eq!(w.waiting, Waiting::Idle);
        assert_eq!(w.at, w.since + secs(5));
        assert!(w.since >= t0);
        // HTTP/1.1: the first byte of the next head starts the head clock, once.
        a.read();
        let head = a.wait(&limits).unwrap();
        assert_eq!(head.waiting, Waiting::Head);
        assert_eq!(head.at, head.since + secs(2));
        a.read();
        assert_eq!(a.wait(&limits), Some(head));

        // A blocked write while in flight: the client has idle_timeout to read.
        let g = a.start(Version::HTTP_11);
        assert_eq!(a.wait(&limits), None);
        a.wrote(false);
        assert_eq!(a.wait(&limits), None);
        a.wrote(true);
        let w = a.wait(&limits).unwrap();
        assert_eq!(w.waiting, Waiting::Reader);
        assert_eq!(w.at, w.since + secs(5));
        assert_eq!(a.due(&limits, Some(t0)), Some((w.at, Expiry::Stalled)));
        a.wrote(true);
        assert_eq!(a.wait(&limits), Some(w), "the first blocked write counts");
        a.wrote(false);
        assert_eq!(a.wait(&limits), None);
        drop(g);

        // HTTP/2: bytes on an idle connection (PING, WINDOW_UPDATE) are no activity.
        let a = Arc::new(Activity::new(t0));
        drop(a.start(Version::HTTP_2));
        a.read();
        assert_eq!(a.wait(&limits).unwrap().waiting, Waiting::Idle);
    }

    #[tokio::test]
    async fn closing_caps_every_wait_at_the_grace() {
        let limits = limits();
        let secs = Duration::from_secs;
        let t0 = Instant::now();
        let a = Arc::new(Activity::new(t0));
        // Not closing: the head deadline.
        assert_eq!(a.due(&limits, None), Some((t0 + secs(2), Expiry::Head)));
        // Closing at once: the grace comes first.
        assert_eq!(
            a.due(&limits, Some(t0)),
            Some((t0 + CLOSE_GRACE, Expiry::Close))
        );
        // Closing late: the head deadline stays the bound.
        assert_eq!(
            a.due(&limits, Some(t0 + secs(5))),
            Some((t0 + secs(2), Expiry::Head))
        );
        // In flight: no deadline, closing or not.
        let g = a.start(Version::HTTP_11);
        assert_eq!(a.due(&limits, Some(t0)), None);
        drop(g);
        let idle = a.wait(&limits).unwrap();
        assert_eq!(a.due(&limits, None), Some((idle.at, Expiry::Idle)));
        // Asked to close before the request ended: the grace counts from its end.
        assert_eq!(
            a.due(&limits, Some(t0)),
            Some((idle.since + CLOSE_GRACE, Expiry::Close))
        );
    }
}
