//! The proxy's time bounds on bodies (SPEC 4.2, 4.4): [`ProxyTimeouts`] gathers the four bounds
//! of a proxied request, and [`IdleTimeout`] is the one body type that enforces a "no byte for
//! this long" bound in both directions — on the caller's request body (`server.body_read_timeout`,
//! answered `408 request_timeout`) and on the upstream's response body
//! (`upstream.body_idle_timeout`, the response to the caller aborted).
//!
//! Whatever goes wrong in a wrapped body surfaces as a [`BodyError`], so that the code building
//! the response can tell "the caller's body failed" (stalled: 408; malformed framing: 400) from
//! "the upstream failed" (502/504) by looking for a `BodyError` in the error's source chain.
//!
//! The idle clock runs only while the consumer waits for the body: it starts when a poll finds
//! no data and restarts after every frame. Time the consumer spends not asking (an upstream
//! still connecting, a slow upstream not reading) never counts against the body's sender.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::config::{ServerSettings, UpstreamSettings};
use crate::BoxError;

/// The time bounds of one proxied request.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::proxy::config::UpstreamSettings;
/// use oauth_refresh_proxy::proxy::timeouts::ProxyTimeouts;
///
/// let t = ProxyTimeouts::new(&UpstreamSettings::default(), Duration::from_secs(5));
/// assert_eq!(t.body_read, Duration::from_secs(5));
/// assert_eq!(t.response, Duration::from_secs(60));
/// assert_eq!(ProxyTimeouts::default().body_read, Duration::from_secs(30));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyTimeouts {
    /// The caller's request body sends no byte this long: `408 request_timeout`.
    pub body_read: Duration,
    /// TCP connect plus TLS handshake to the upstream: past it, `502 upstream_unavailable`.
    pub connect: Duration,
    /// No response head this long after the request, or its last body byte, went out:
    /// `504 upstream_timeout`.
    pub response: Duration,
    /// The upstream's response body sends no byte this long: the response is aborted.
    pub body_idle: Duration,
}

impl ProxyTimeouts {
    /// The `[upstream]` bounds, with `body_read` for the caller's request bodies.
    pub fn new(upstream: &UpstreamSettings, body_read: Duration) -> Self {
        ProxyTimeouts {
            body_read,
            connect: upstream.connect_timeout,
            response: upstream.response_timeout,
            body_idle: upstream.body_idle_timeout,
        }
    }
}

impl Default for ProxyTimeouts {
    /// The defaults (SPEC 4.2): body read 30 s, connect 10 s, response 60 s, body idle 60 s.
    fn default() -> Self {
        ProxyTimeouts::new(
            &UpstreamSettings::default(),
            ServerSettings::default().body_read_timeout,
        )
    }
}

/// The error of an [`IdleTimeout`] body: it sent nothing for too long, or the body it wraps
/// failed. Cheap to clone (the wrapped cause is shared), so that one failure can be both handed
/// to the body's consumer and recorded for whoever builds the response.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::proxy::timeouts::BodyError;
///
/// let e = BodyError::Idle(Duration::from_secs(30));
/// assert!(e.is_idle());
/// assert_eq!(e.to_string(), "the body sent no byte for 30s");
/// ```
#[derive(Clone, Debug)]
pub enum BodyError {
    /// No frame arrived within the bound while the consumer waited.
    Idle(Duration),
    /// The wrapped body failed (for a caller's body: malformed framing, a reset, a truncation).
    Failed(Arc<dyn StdError + Send + Sync>),
}

impl BodyError {
    /// Whether the body stalled (rather than failed).
    pub fn is_idle(&self) -> bool {
        matches!(self, BodyError::Idle(_))
    }

    fn failed(e: impl Into<BoxError>) -> Self {
        BodyError::Failed(Arc::from(e.into()))
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Idle(d) => write!(f, "the body sent no byte for {d:?}"),
            BodyError::Failed(e) => write!(f, "the body could not be read: {e}"),
        }
    }
}

impl StdError for BodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            BodyError::Idle(_) => None,
            BodyError::Failed(e) => Some(&**e),
        }
    }
}

pin_project! {
    /// A body that fails with [`BodyError::Idle`] when its inner body sends no frame for
    /// `timeout` while being polled, and turns the inner body's errors into
    /// [`BodyError::Failed`]. Frames, size hint and end of stream pass through unchanged.
    ///
    /// Needs a tokio runtime with the time driver once it is polled.
    ///
    /// ```
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use oauth_refresh_proxy::proxy::timeouts::IdleTimeout;
    ///
    /// /// A body whose sender never sends.
    /// struct Never;
    /// impl http_body::Body for Never {
    ///     type Data = Bytes;
    ///     type Error = std::convert::Infallible;
    ///     fn poll_frame(
    ///         self: std::pin::Pin<&mut Self>,
    ///         _: &mut std::task::Context<'_>,
    ///     ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
    ///         std::task::Poll::Pending
    ///     }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let body = IdleTimeout::new(Full::new(Bytes::from_static(b"hello")), Duration::from_secs(1));
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    ///
    /// let err = IdleTimeout::new(Never, Duration::from_millis(20)).collect().await.unwrap_err();
    /// assert!(err.is_idle());
    /// # });
    /// ```
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        timeout: Duration,
        // Created on the first poll that finds no data (no timer at all for a body that is
        // always ready); re-armed on the first empty poll after each frame.
        sleep: Option<Pin<Box<Sleep>>>,
        waiting: bool,
        done: bool,
    }
}

impl<B> fmt::Debug for IdleTimeout<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleTimeout")
            .field("timeout", &self.timeout)
            .field("waiting", &self.waiting)
            .field("done", &self.done)
            .finish()
    }
}

impl<B> IdleTimeout<B> {
    /// Wraps `inner`: no frame for `timeout` while polled is a [`BodyError::Idle`].
    pub fn new(inner: B, timeout: Duration) -> Self {
        IdleTimeout {
            inner,
            timeout,
            sleep: None,
            waiting: false,
            done: false,
        }
    }

    /// The bound.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                *this.done = true;
                Poll::Ready(Some(Err(BodyError::failed(e))))
            }
            Poll::Ready(None) => {
                *this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !*this.waiting {
                    *this.waiting = true;
                    let deadline = Instant::now() + *this.timeout;
                    match this.sleep {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => *this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let sleep = this.sleep.as_mut().expect("armed above");
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        *this.done = true;
                        Poll::Ready(Some(Err(BodyError::Idle(*this.timeout))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            return SizeHint::with_exact(0);
        }
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::collections::VecDeque;

    /// A body that yields its chunks, each after `gap`, then ends; `stall_after` chunks in, it
    /// stops sending for ever.
    struct Paced {
        chunks: VecDeque<Bytes>,
        gap: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
        stall_after: Option<usize>,
        sent: usize,
    }

    impl Paced {
        fn new(n: usize, gap: Duration, stall_after: Option<usize>) -> Self {
            Paced {
                chunks: (0..n).map(|i| Bytes::from(vec![i as u8; 10])).collect(),
                gap,
                sleep: None,
                stall_after,
                sent: 0,
            }
        }
    }

    impl Body for Paced {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.stall_after == Some(self.sent) {
                return Poll::Pending;
            }
            let gap = self.gap;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
            self.sent += 1;
            Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    /// A body whose first poll fails.
    struct Broken;

    impl Body for Broken {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "invalid chunk size line",
            ))))
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn a_steady_body_slower_in_total_than_the_bound_passes() {
        rt().block_on(async {
            // 8 chunks 30 ms apart: 240 ms in all, each gap well within 150 ms.
            let body = IdleTimeout::new(
                Paced::new(8, Duration::from_millis(30), None),
                Duration::from_millis(150),
            );
            assert_eq!(body.collect().await.unwrap().to_bytes().len(), 80);
        });
    }

    #[test]
    fn a_stalled_body_fails_idle_after_the_bound() {
        rt().block_on(async {
            let started = Instant::now();
            let mut body = IdleTimeout::new(
                Paced::new(8, Duration::from_millis(1), Some(3)),
                Duration::from_millis(100),
            );
            let mut got = 0;
            let err = loop {
                match body.frame().await {
                    Some(Ok(f)) => got += f.into_data().unwrap().len(),
                    Some(Err(e)) => break e,
                    None => panic!("ended without an error"),
                }
            };
            assert_eq!(got, 30);
            assert!(err.is_idle(), "{err}");
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(100), "{took:?}");
            assert!(took < Duration::from_secs(2), "{took:?}");
            // Done after the error: nothing more, and the end is reported.
            assert!(body.is_end_stream());
            assert!(body.frame().await.is_none());
        });
    }

    #[test]
    fn inner_errors_become_failed_with_their_cause_as_source() {
        rt().block_on(async {
            let err = IdleTimeout::new(Broken, Duration::from_secs(1))
                .collect()
                .await
                .unwrap_err();
            assert!(!err.is_idle());
            assert_eq!(
                err.to_string(),
                "the body could not be read: invalid chunk size line"
            );
            let source = err.source().unwrap();
            assert!(source.downcast_ref::<std::io::Error>().is_some());
            // Found in a boxed error's chain, as the proxy looks for it.
            let boxed: BoxError = Box::new(err.clone());
            assert!(boxed.downcast_ref::<BodyError>().is_some());
        });
    }

    #[test]
    fn hints_pass_through() {
        let body = IdleTimeout::new(
            Full::new(Bytes::from_static(b"abc")),
            Duration::from_secs(1),
        );
        assert_eq!(body.size_hint().exact(), Some(3));
        assert!(!body.is_end_stream());
        let empty = IdleTimeout::new(Full::new(Bytes::new()), Duration::from_secs(1));
        assert!(empty.is_end_stream());
    }
}
