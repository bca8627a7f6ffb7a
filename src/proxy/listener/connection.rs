//! One accepted connection and its watchdog: what it has in flight, what it waits for, and
//! when that wait expires (the request-head, idle and slow-reader bounds of the module docs).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::{Limits, Phase, CLOSE_GRACE};
use crate::BoxError;

/// What a connection is waiting for, when it has a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Waiting {
    /// Nothing in flight, a request head (the first, or one whose first byte arrived):
    /// `header_read_timeout`.
    Head,
    /// Nothing in flight, the next request: `idle_timeout`.
    Idle,
    /// In flight, with a write to the socket blocked: the client to read (`idle_timeout`).
    Reader,
}

#[derive(Debug)]
pub(super) struct State {
    in_flight: usize,
    waiting: Waiting,
    /// When `waiting` began.
    since: Instant,
    /// The connection speaks HTTP/2 (seen on its first request).
    h2: bool,
    /// Since when a write to the socket has been blocked (the client is not reading).
    blocked_since: Option<Instant>,
    /// The deadline the watchdog's timer is set to, `None` while it has none ([`Activity::arm`]).
    armed: Option<Instant>,
    /// The watchdog was asked to close the connection: its deadlines depend on when waits begin.
    closing: bool,
}

impl State {
    /// Whether a wait that began just now with the deadline `at` needs the watchdog woken to
    /// set its timer: when its timer is unset or set later than `at`, or the connection is
    /// closing. A deadline later than the timer needs nothing: the timer fires first, the
    /// watchdog finds nothing due and sets it again ([`Activity::arm`]). So a busy keep-alive
    /// connection, whose every new deadline is later than the one the timer is set to, wakes
    /// its watchdog about once per `header_read_timeout` instead of twice per request.
    fn must_wake(&self, at: Instant) -> bool {
        self.closing || self.armed.is_none_or(|armed| at < armed)
    }
}

/// What a connection's watchdog knows of it: requests in flight (counted by [`InFlight`]
/// guards), while an HTTP/1.1 connection is idle whether a byte arrived, and whether a write is
/// blocked ([`Watched`]).
#[derive(Debug)]
pub(super) struct Activity {
    state: Mutex<State>,
    /// Set while an HTTP/1.1 connection is idle: the next byte read starts a request head.
    idle_h1: AtomicBool,
    /// Set while a write to the socket is blocked.
    write_blocked: AtomicBool,
    /// Wakes the watchdog when a deadline starts earlier than its timer ([`State::must_wake`]).
    pub(super) wake: Notify,
    /// The listener's `header_read_timeout` and `idle_timeout`, for [`State::must_wake`].
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

impl Activity {
    pub(super) fn new(now: Instant, limits: &Limits) -> Self {
        Activity {
            state: Mutex::new(State {
                in_flight: 0,
                waiting: Waiting::Head,
                since: now,
                h2: false,
                blocked_since: None,
                armed: None,
                closing: false,
            }),
            idle_h1: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
            wake: Notify::new(),
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counters half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request arrived: in flight until its response body ends.
    pub(super) fn start(self: &Arc<Self>, version: Version) -> InFlight {
        let mut s = self.state();
        s.in_flight += 1;
        s.h2 |= version == Version::HTTP_2;
        self.idle_h1.store(false, Ordering::Release);
        InFlight(self.clone())
    }

    pub(super) fn end(&self) {
        let mut s = self.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            let now = Instant::now();
            s.waiting = Waiting::Idle;
            s.since = now;
            if !s.h2 {
                self.idle_h1.store(true, Ordering::Release);
            }
            let wake = s.must_wake(now + self.idle_timeout);
            drop(s);
            if wake {
                self.wake.notify_one();
            }
        }
    }

    /// Bytes were read.
    pub(super) fn read(&self) {
        if self.idle_h1.load(Ordering::Relaxed) && self.idle_h1.swap(false, Ordering::AcqRel) {
            let mut s = self.state();
            if s.in_flight == 0 && s.waiting == Waiting::Idle {
                let now = Instant::now();
                s.waiting = Waiting::Head;
                s.since = now;
                if s.must_wake(now + self.header_read_timeout) {
                    drop(s);
                    self.wake.notify_one();
                }
            }
        }
    }

    /// A write to the socket returned: `pending` (the client is not reading) or not.
    pub(super) fn wrote(&self, pending: bool) {
        if pending {
            if !self.write_blocked.swap(true, Ordering::AcqRel) {
                let now = Instant::now();
                let mut s = self.state();
                s.blocked_since = Some(now);
                let wake = s.must_wake(now + self.idle_timeout);
                drop(s);
                if wake {
                    self.wake.notify_one();
                }
            }
        } else if self.write_blocked.load(Ordering::Relaxed)
            && self.write_blocked.swap(false, Ordering::AcqRel)
        {
            self.state().blocked_since = None;
        }
    }

    #[cfg(test)]
    /// The connection's current wait and its deadline: `None` while a request is in flight
    /// and its writes go through.
    pub(super) fn wait(&self, limits: &Limits) -> Option<Wait> {
        Self::wait_of(&self.state(), limits)
    }

    fn wait_of(s: &State, limits: &Limits) -> Option<Wait> {
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
    pub(super) fn due(
        &self,
        limits: &Limits,
        closing: Option<Instant>,
    ) -> Option<(Instant, Expiry)> {
        Self::due_of(&self.state(), limits, closing)
    }

    /// [`due`](Activity::due), recording it as what the watchdog's timer is set to (`None`:
    /// no timer), which decides whether a new wait must wake it ([`State::must_wake`]).
    pub(super) fn arm(
        &self,
        limits: &Limits,
        closing: Option<Instant>,
    ) -> Option<(Instant, Expiry)> {
        let mut s = self.state();
        let next = Self::due_of(&s, limits, closing);
        s.armed = next.map(|(at, _)| at);
        s.closing = closing.is_some();
        next
    }

    fn due_of(s: &State, limits: &Limits, closing: Option<Instant>) -> Option<(Instant, Expiry)> {
        let w = Self::wait_of(s, limits)?;
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
pub(super) struct Wait {
    pub(super) waiting: Waiting,
    /// When it began.
    pub(super) since: Instant,
    /// Its deadline.
    pub(super) at: Instant,
}

/// What the watchdog does when a deadline passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expiry {
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
pub(super) struct InFlight(Arc<Activity>);

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

pin_project_lite::pin_project! {
    /// A handler's response future that hands its request's [`InFlight`] to the response's
    /// body. (Written out, not an `async` block: that would keep the handler's future twice,
    /// and hyper moves this one on every request.)
    struct InFlightResponse<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, B> Future for InFlightResponse<F>
where
    F: Future<Output = Response<B>>,
{
    type Output = Result<Response<InFlightBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(Ok(resp.map(|inner| InFlightBody { inner, guard })))
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
pub(super) struct Watched {
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
pub(super) struct Connection {
    pub(super) limits: Arc<Limits>,
    pub(super) activity: Arc<Activity>,
    pub(super) peer: SocketAddr,
}

impl Connection {
    /// Serves the connection until it ends, a deadline passes or the listener aborts.
    pub(super) async fn run<H, Fut, B>(
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
                InFlightResponse {
                    inner: handler(req),
                    guard: Some(guard),
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
        // The watchdog's own wake-ups (its timer, `Activity::wake`, the listener's phase) are
        // polled only when one of them fired ([`Gate`]), not on each of the several times per
        // request the connection's task wakes for its socket and its upstream.
        let gate = Arc::new(Gate::default());
        let gate_waker = Waker::from(gate.clone());
        loop {
            let next = activity.arm(&limits, closing);
            if let Some((at, _)) = next {
                timer.as_mut().reset(at);
            }
            let watchdog = Gated::new(&gate, &gate_waker, async {
                tokio::select! {
                    biased;
                    _ = activity.wake.notified() => Event::Woken,
                    changed = phase.changed() => Event::Phase(changed.map(|_| *phase.borrow_and_update()).ok()),
                    _ = &mut timer, if next.is_some() => Event::Timer,
                }
            });
            let event = tokio::select! {
                biased;
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                event = watchdog => event,
            };
            match event {
                Event::Woken | Event::Phase(Some(Phase::Serving)) => {}
                Event::Phase(Some(Phase::Draining)) => {
                    if closing.is_none() {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now());
                    }
                }
                Event::Phase(Some(Phase::Abort) | None) => return,
                Event::Timer => {
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

/// What woke a connection's watchdog.
enum Event {
    /// [`Activity::wake`]: a wait began earlier than its timer.
    Woken,
    /// The listener's phase changed (`None`: the listener is gone).
    Phase(Option<Phase>),
    /// Its timer.
    Timer,
}

/// Whether the futures polled through a [`Gated`] woke since their last poll, and the task to
/// wake when they do.
#[derive(Debug)]
struct Gate {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            fired: AtomicBool::new(true),
            task: Mutex::new(None),
        }
    }
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = &*task {
            task.wake_by_ref();
        }
    }
}

pin_project_lite::pin_project! {
    /// A future polled, with the [`Gate`]'s waker, only when that waker was woken since its
    /// last poll (and on its first poll): a poll of the task for anything else costs a flag
    /// check and a waker comparison.
    struct Gated<'a, F> {
        #[pin]
        inner: F,
        gate: &'a Arc<Gate>,
        waker: &'a Waker,
    }
}

impl<'a, F> Gated<'a, F> {
    fn new(gate: &'a Arc<Gate>, waker: &'a Waker, inner: F) -> Self {
        // A new future must be polled once to register its wake-ups.
        gate.fired.store(true, Ordering::Release);
        Gated { inner, gate, waker }
    }
}

impl<F: Future> Future for Gated<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        {
            let mut task = this.gate.task.lock().unwrap_or_else(|p| p.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        if !this.gate.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}
