//! [`ReplayBody`]: a request body that records itself while it streams, so that it can be sent
//! again after a 401.
//!
//! Nothing is collected before sending: chunks are recorded as the inner service reads them,
//! until `max_replay_body` bytes; past that, recording stops (and what was recorded is freed)
//! while the body keeps streaming. A body can be replayed only if it was read to its end within
//! the cap. An empty body needs no recording, and a body whose size hint already exceeds the cap
//! passes through untouched.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// A request body as the layer's inner service receives it: the caller's body, recorded for a
/// possible replay, or the recording being replayed.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use oauth_refresh_proxy::ReplayBody;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let body = ReplayBody::new(Full::new(Bytes::from_static(b"hello")));
/// let bytes = body.collect().await.unwrap().to_bytes();
/// assert_eq!(bytes, "hello");
/// # });
/// ```
pub struct ReplayBody<B> {
    inner: Option<Pin<Box<B>>>,
    tape: Option<Arc<Mutex<Tape>>>,
    /// Boxed: only a replay has one, and every request moves the body a few times.
    replay: Option<Box<Replay>>,
}

impl<B> std::fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayBody")
            .field("streaming", &self.inner.is_some())
            .field("recording", &self.tape.is_some())
            .field("replaying", &self.replay.is_some())
            .finish()
    }
}

struct Replay {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

/// What was recorded of a body.
pub(crate) struct Tape {
    chunks: Chunks,
    len: usize,
    cap: usize,
    overflow: bool,
    complete: bool,
    trailers: Option<HeaderMap>,
}

/// How a request body can be replayed.
/// The recorded chunks. The first is kept inline: most bodies arrive in one chunk, and the
/// recording then allocates nothing beyond the tape itself.
#[derive(Default)]
struct Chunks {
    first: Option<Bytes>,
    more: Vec<Bytes>,
}

impl Chunks {
    fn push(&mut self, chunk: Bytes) {
        if self.first.is_none() {
            self.first = Some(chunk);
        } else {
            self.more.push(chunk);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.first.iter().chain(&self.more)
    }
}

pub(crate) enum Recording {
    /// No body: trivially replayable.
    Empty,
    /// Recorded while streaming: replayable if complete within the cap.
    Tape(Arc<Mutex<Tape>>),
    /// Known to exceed the cap: never replayable.
    TooLarge,
}

impl Recording {
    /// The body to replay, or `None` when the body cannot be replayed.
    pub(crate) fn replay<B>(&self) -> Option<ReplayBody<B>> {
        match self {
            Recording::Empty => Some(ReplayBody::empty()),
            Recording::TooLarge => None,
            Recording::Tape(tape) => {
                let tape = tape.lock().unwrap_or_else(|e| e.into_inner());
                if !tape.complete || tape.overflow {
                    return None;
                }
                Some(ReplayBody {
                    inner: None,
                    tape: None,
                    replay: Some(Box::new(Replay {
                        chunks: tape.chunks.iter().cloned().collect(),
                        trailers: tape.trailers.clone(),
                    })),
                })
            }
        }
    }
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body` without recording it (it will not be replayable).
    ///
    /// ```
    /// # use oauth_refresh_proxy::ReplayBody;
    /// let b = ReplayBody::new(http_body_util::Empty::<bytes::Bytes>::new());
    /// # let _ = b;
    /// ```
    pub fn new(body: B) -> Self {
        ReplayBody {
            inner: Some(Box::pin(body)),
            tape: None,
            replay: None,
        }
    }

    /// Wraps `body` and records up to `cap` bytes of it.
    pub(crate) fn recorded(body: B, cap: usize) -> (Self, Recording) {
        if body.is_end_stream() {
            return (ReplayBody::empty(), Recording::Empty);
        }
        if body.size_hint().lower() > cap as u64 {
            return (ReplayBody::new(body), Recording::TooLarge);
        }
        let tape = Arc::new(Mutex::new(Tape {
            chunks: Chunks::default(),
            len: 0,
            cap,
            overflow: false,
            complete: false,
            trailers: None,
        }));
        let body = ReplayBody {
            inner: Some(Box::pin(body)),
            tape: Some(tape.clone()),
            replay: None,
        };
        (body, Recording::Tape(tape))
    }
}

impl<B> ReplayBody<B> {
    fn empty() -> Self {
        ReplayBody {
            inner: None,
            tape: None,
            replay: None,
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(replay) = &mut this.replay {
            if let Some(chunk) = replay.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            return Poll::Ready(replay.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let frame = match inner.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                if let Some(tape) = &this.tape {
                    tape.lock().unwrap_or_else(|e| e.into_inner()).complete = true;
                }
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                let bytes = data.copy_to_bytes(data.remaining());
                if let Some(tape) = &this.tape {
                    let mut tape = tape.lock().unwrap_or_else(|e| e.into_inner());
                    if !tape.overflow {
                        if tape.len + bytes.len() > tape.cap {
                            tape.overflow = true;
                            tape.chunks = Chunks::default();
                        } else {
                            tape.len += bytes.len();
                            tape.chunks.push(bytes.clone());
                        }
                    }
                    // A sender that stops polling after the announced length still counts as
                    // having read the whole body.
                    if inner.is_end_stream() {
                        tape.complete = true;
                    }
                }
                Frame::data(bytes)
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    if let Some(tape) = &this.tape {
                        let mut tape = tape.lock().unwrap_or_else(|e| e.into_inner());
                        tape.trailers = Some(trailers.clone());
                        tape.complete = true;
                    }
                    Frame::trailers(trailers)
                }
                // Neither data nor trailers: an unknown frame kind, dropped.
                Err(_) => return Poll::Ready(None),
            },
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match (&self.replay, &self.inner) {
            (Some(r), _) => r.chunks.is_empty() && r.trailers.is_none(),
            (None, Some(inner)) => inner.is_end_stream(),
            (None, None) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.replay, &self.inner) {
            (Some(r), _) => SizeHint::with_exact(r.chunks.iter().map(|c| c.len() as u64).sum()),
            (None, Some(inner)) => inner.size_hint(),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    /// A body of the given chunks, with no size hint (like a chunked upload).
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn chunks(n: usize, size: usize) -> Chunks {
        Chunks((0..n).map(|i| Bytes::from(vec![i as u8; size])).collect())
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn records_and_replays_identically() {
        rt().block_on(async {
            let (body, rec) = ReplayBody::recorded(chunks(10, 100), 1000);
            assert!(rec.replay::<Chunks>().is_none(), "not read yet");
            let first = body.collect().await.unwrap().to_bytes();
            let again = rec.replay::<Chunks>().unwrap();
            assert_eq!(again.size_hint().exact(), Some(1000));
            assert_eq!(again.collect().await.unwrap().to_bytes(), first);
        });
    }

    #[test]
    fn over_the_cap_is_not_replayable() {
        rt().block_on(async {
            let (body, rec) = ReplayBody::recorded(chunks(11, 100), 1000);
            assert_eq!(body.collect().await.unwrap().to_bytes().len(), 1100);
            assert!(rec.replay::<Chunks>().is_none());
            let (_, rec) = ReplayBody::recorded(Full::new(Bytes::from(vec![0u8; 1001])), 1000);
            assert!(matches!(rec, Recording::TooLarge));
        });
    }

    #[test]
    fn known_length_body_is_complete_after_its_last_chunk() {
        rt().block_on(async {
            let (mut body, rec) = ReplayBody::recorded(Full::new(Bytes::from_static(b"abc")), 10);
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "abc");
            // The sender never polls for the end: still replayable.
            assert!(rec.replay::<Full<Bytes>>().is_some());
        });
    }
}
