//! The sidecar's serving threads (`[server] workers`): single-threaded tokio runtimes, one per
//! core by default, each on a thread of its own.
//!
//! The proxy listener accepts on the main runtime and hands every accepted connection to the
//! next worker in turn ([`Workers::spawn_connection`]); from then on the connection, its
//! requests, its watchdog and the upstream requests it makes run on that one thread, with the
//! worker's own upstream connection pool ([`current`] picks it, see
//! [`Upstream`](super::upstream::Upstream)). Nothing on the request path wakes another thread,
//! which is what a multi-threaded runtime costs on every request (work stealing, cross-thread
//! wake-ups, a shared pool behind a lock). The token cache stays one shared map: its reads are
//! lock-light.
//!
//! Decided: one accept loop handing connections over rather than one `SO_REUSEPORT` listener
//! per worker. The listener's rules (the one `max_connections` budget, accept-error back-off
//! logged once a second, the drain at shutdown) stay in one place, and the kernel never
//! queues a connection on a worker that is busy while another is idle; the hand-over costs two
//! `epoll` calls per connection, nothing per request.
//!
//! Refreshes started by a request run on that request's worker; stores, webhooks, the admin
//! listener and timers started at start-up run on the main runtime.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::watch;

thread_local! {
    /// This thread's worker index; 0 on any other thread.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker whose thread this is (`0..workers`), 0 on any other thread.
///
/// ```
/// use oauth_refresh_proxy::proxy::workers::{current, Workers};
///
/// assert_eq!(current(), 0);
/// let workers = Workers::start(2).unwrap();
/// let (tx, rx) = std::sync::mpsc::channel();
/// for _ in 0..2 {
///     let tx = tx.clone();
///     workers.spawn(async move { tx.send(current()).unwrap() });
/// }
/// let mut seen = vec![rx.recv().unwrap(), rx.recv().unwrap()];
/// seen.sort();
/// assert_eq!(seen, [0, 1]);
/// ```
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// The default number of workers: the cores this process may use.
///
/// ```
/// assert!(oauth_refresh_proxy::proxy::workers::default_count() >= 1);
/// ```
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A pool of single-threaded runtimes on threads of their own. Clones share the pool; when the
/// last clone is dropped the threads stop (tasks still on them are dropped, as at the end of a
/// runtime).
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped with the pool: every worker thread's `block_on` returns and its runtime is
    /// dropped on its own thread.
    _stop: watch::Sender<()>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("len", &self.inner.handles.len())
            .finish()
    }
}

impl Workers {
    /// Starts `count` (at least 1) worker threads, `orp-worker-0`, `orp-worker-1`, ….
    ///
    /// ```
    /// let workers = oauth_refresh_proxy::proxy::workers::Workers::start(3).unwrap();
    /// assert_eq!(workers.len(), 3);
    /// ```
    pub fn start(count: usize) -> io::Result<Workers> {
        let (stop, stopped) = watch::channel(());
        let (started, running) = std::sync::mpsc::channel();
        let mut handles = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            let started = started.clone();
            std::thread::Builder::new()
                .name(format!("orp-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    let _ = started.send(());
                    drop(started);
                    runtime.block_on(async move {
                        let _ = stopped.changed().await;
                    });
                })?;
        }
        // Every thread is running (and named) before this returns; a thread that died first
        // drops its sender, which ends the wait too.
        drop(started);
        for _ in 0..handles.len() {
            if running.recv().is_err() {
                return Err(io::Error::other("a serving thread stopped while starting"));
            }
        }
        Ok(Workers {
            inner: Arc::new(Inner {
                handles,
                next: AtomicUsize::new(0),
                _stop: stop,
            }),
        })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.inner.handles.len()
    }

    /// Never: a pool has at least one worker.
    pub fn is_empty(&self) -> bool {
        self.inner.handles.is_empty()
    }

    /// Runs `task` on the next worker in turn.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.handles.len();
        self.inner.handles[n].spawn(task);
    }

    /// Moves an accepted `stream` to the next worker and runs `serve` with it there (the socket
    /// is registered with that worker's reactor). A socket that cannot be moved (it failed
    /// meanwhile) is closed.
    pub fn spawn_connection<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Ok(std) = stream.into_std() else { return };
        self.spawn(async move {
            if let Ok(stream) = TcpStream::from_std(std) {
                serve(stream).await;
            }
        });
    }
}
