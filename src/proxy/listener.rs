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
//!
//! The module's parts: the accept loop here, one connection and its watchdog
//! (`connection.rs`), and the descriptor limit (`descriptors.rs`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::config::ServerSettings;
use super::workers::Workers;
use crate::BoxError;

mod connection;
mod descriptors;
#[cfg(test)]
mod tests;

use connection::{Activity, Connection};
pub use descriptors::{fit_max_connections, raise_nofile_limit, RESERVED_DESCRIPTORS};

/// The admin listener's own connection budget, apart from `max_connections`.
pub const ADMIN_MAX_CONNECTIONS: usize = 256;

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
            activity: Arc::new(Activity::new(Instant::now(), &limits)),
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
pub(super) enum Phase {
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
