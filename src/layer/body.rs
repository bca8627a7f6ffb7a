//! [`ReplayBody`]: a request body that records itself while it streams, so that it can be sent
//! again after a 401.
//!
//! Nothing is collected before sending: chunks are recorded as the inner service reads them,
//! until `max_replay_body` bytes; past that, recording stops (and what was recorded is freed)
//! while the body keeps streaming. A body can be replayed only if it was read to its end within
//! the cap. An empty body needs no recording, and a body whose size hint already exceeds the cap
//! passes through untouched. A body that is already whole in memory (`Full<Bytes>`, `String`)
//! is taken as it is: its bytes are the recording, nothing else is allocated.
//!
//! The recording belongs to the body while it streams (no lock per frame): the body publishes
//! it once, when it has read its end, to the slot the layer's future reads after a 401.

use std::any::Any;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

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
    /// A body whole in memory, sent as one chunk (and then the end).
    whole: Option<Bytes>,
    /// Boxed, with its recorder: `ReplayBody` is `Unpin` whatever `B` is.
    inner: Option<Pin<Box<Streaming<B>>>>,
    /// Boxed: only a replay has one, and every request moves the body a few times.
    replay: Option<Box<Replay>>,
}

impl<B> std::fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayBody")
            .field("whole", &self.whole.as_ref().map(Bytes::len))
            .field("streaming", &self.inner.is_some())
            .field(
                "recording",
                &self.inner.as_ref().is_some_and(|i| i.rec.is_some()),
            )
            .field("replaying", &self.replay.is_some())
            .finish()
    }
}

pin_project! {
    /// The caller's body as it streams, and what is recorded of it.
    struct Streaming<B> {
        rec: Option<Recorder>,
        #[pin]
        body: B,
    }
}

struct Replay {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

/// Where a body publishes its finished recording: `None` until then (or when it cannot be
/// replayed).
type Slot = Arc<Mutex<Option<Tape>>>;

/// A body's recording while it streams, owned by the body.
struct Recorder {
    slot: Slot,
    chunks: Chunks,
    len: usize,
    cap: usize,
    /// The tape is in the slot: the body has read its end.
    published: bool,
}

impl Recorder {
    /// Records a chunk; `false` when it goes past the cap (the recording is then dropped).
    fn push(&mut self, chunk: &Bytes) -> bool {
        if self.len + chunk.len() > self.cap {
            return false;
        }
        self.len += chunk.len();
        self.chunks.push(chunk.clone());
        true
    }

    /// The body has read its end: the tape goes to the slot, once.
    fn publish(&mut self, trailers: Option<HeaderMap>) {
        if self.published {
            return;
        }
        self.published = true;
        let tape = Tape {
            chunks: std::mem::take(&mut self.chunks),
            trailers,
        };
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(tape);
    }

    /// A frame after the end was published (a body that broke its `is_end_stream` promise):
    /// the published tape is no longer the whole body, so nothing is replayed.
    fn unpublish(&mut self) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// What was recorded of a body that was read to its end within the cap.
pub(crate) struct Tape {
    chunks: Chunks,
    trailers: Option<HeaderMap>,
}

/// The recorded chunks. The first is kept inline: most bodies arrive in one chunk, and the
/// recording then allocates nothing beyond the slot itself.
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

/// How a request body can be replayed.
pub(crate) enum Recording {
    /// No body: trivially replayable.
    Empty,
    /// A body whole in memory: its bytes.
    Whole(Bytes),
    /// Recorded while streaming: replayable once the body published its tape (read to its end
    /// within the cap).
    Tape(Slot),
    /// Known to exceed the cap: never replayable.
    TooLarge,
}

impl Recording {
    /// The body to replay, or `None` when the body cannot be replayed.
    pub(crate) fn replay<B>(&self) -> Option<ReplayBody<B>> {
        match self {
            Recording::Empty => Some(ReplayBody::empty()),
            Recording::Whole(bytes) => Some(ReplayBody {
                whole: Some(bytes.clone()),
                inner: None,
                replay: None,
            }),
            Recording::TooLarge => None,
            Recording::Tape(slot) => {
                let tape = slot.lock().unwrap_or_else(|e| e.into_inner());
                let tape = tape.as_ref()?;
                Some(ReplayBody {
                    whole: None,
                    inner: None,
                    replay: Some(Box::new(Replay {
                        chunks: tape.chunks.iter().cloned().collect(),
                        trailers: tape.trailers.clone(),
                    })),
                })
            }
        }
    }
}

/// The bytes of a body that is whole in memory, taken at once without waiting: `Full<Bytes>`
/// (polled once with no waker: its one chunk is ready, then the end) and `String`. `None` for
/// any other body.
fn whole<B: Body + 'static>(body: &mut B) -> Option<Bytes> {
    let body: &mut dyn Any = body;
    if let Some(full) = body.downcast_mut::<Full<Bytes>>() {
        // A `Full` that is not at its end holds its one chunk: its first frame, ready now.
        let waker = std::task::Waker::noop();
        return match Pin::new(full).poll_frame(&mut Context::from_waker(waker)) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
            _ => None,
        };
    }
    if let Some(s) = body.downcast_mut::<String>() {
        return Some(Bytes::from(std::mem::take(s)));
    }
    None
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
            whole: None,
            inner: Some(Box::pin(Streaming { rec: None, body })),
            replay: None,
        }
    }

    /// Wraps `body` and records up to `cap` bytes of it.
    pub(crate) fn recorded(mut body: B, cap: usize) -> (Self, Recording)
    where
        B: 'static,
    {
        if body.is_end_stream() {
            return (ReplayBody::empty(), Recording::Empty);
        }
        if body.size_hint().lower() > cap as u64 {
            return (ReplayBody::new(body), Recording::TooLarge);
        }
        if let Some(bytes) = whole(&mut body) {
            let recording = if bytes.len() > cap {
                Recording::TooLarge
            } else {
                Recording::Whole(bytes.clone())
            };
            let body = ReplayBody {
                whole: Some(bytes),
                inner: None,
                replay: None,
            };
            return (body, recording);
        }
        let slot = Slot::default();
        let rec = Recorder {
            slot: slot.clone(),
            chunks: Chunks::default(),
            len: 0,
            cap,
            published: false,
        };
        let body = ReplayBody {
            whole: None,
            inner: Some(Box::pin(Streaming {
                rec: Some(rec),
                body,
            })),
            replay: None,
        };
        (body, Recording::Tape(slot))
    }
}

impl<B> ReplayBody<B> {
    fn empty() -> Self {
        ReplayBody {
            whole: None,
            inner: None,
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
        if let Some(chunk) = this.whole.take() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(replay) = &mut this.replay {
            if let Some(chunk) = replay.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            return Poll::Ready(replay.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let mut inner = inner.as_mut().project();
        let frame = match inner.body.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                if let Some(rec) = inner.rec {
                    rec.publish(None);
                }
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                let bytes = data.copy_to_bytes(data.remaining());
                if let Some(rec) = inner.rec {
                    if rec.published {
                        rec.unpublish();
                        *inner.rec = None;
                    } else if !rec.push(&bytes) {
                        // Past the cap: recording stops, what was recorded is freed.
                        *inner.rec = None;
                    } else if inner.body.is_end_stream() {
                        // A sender that stops polling after the announced length still counts
                        // as having read the whole body.
                        rec.publish(None);
                    }
                }
                Frame::data(bytes)
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    if let Some(rec) = inner.rec {
                        if rec.published {
                            rec.unpublish();
                            *inner.rec = None;
                        } else {
                            rec.publish(Some(trailers.clone()));
                        }
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
        if self.whole.is_some() {
            return false;
        }
        match (&self.replay, &self.inner) {
            (Some(r), _) => r.chunks.is_empty() && r.trailers.is_none(),
            (None, Some(inner)) => inner.body.is_end_stream(),
            (None, None) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(whole) = &self.whole {
            return SizeHint::with_exact(whole.len() as u64);
        }
        match (&self.replay, &self.inner) {
            (Some(r), _) => SizeHint::with_exact(r.chunks.iter().map(|c| c.len() as u64).sum()),
            (None, Some(inner)) => inner.body.size_hint(),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    /// A body of the given frames, with no size hint (like a chunked upload); `lying` ones say
    /// they are at their end with one frame left, then send it.
    struct Frames {
        frames: VecDeque<Frame<Bytes>>,
        lying: bool,
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.frames.pop_front().map(Ok))
        }
        fn is_end_stream(&self) -> bool {
            self.lying && self.frames.len() <= 1
        }
    }

    fn frames(frames: impl IntoIterator<Item = Frame<Bytes>>, lying: bool) -> Frames {
        Frames {
            frames: frames.into_iter().collect(),
            lying,
        }
    }

    fn chunks(n: usize, size: usize) -> Frames {
        frames(
            (0..n).map(|i| Frame::data(Bytes::from(vec![i as u8; size]))),
            false,
        )
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
            assert!(rec.replay::<Frames>().is_none(), "not read yet");
            let first = body.collect().await.unwrap().to_bytes();
            let again = rec.replay::<Frames>().unwrap();
            assert_eq!(again.size_hint().exact(), Some(1000));
            assert_eq!(again.collect().await.unwrap().to_bytes(), first);
        });
    }

    #[test]
    fn over_the_cap_is_not_replayable() {
        rt().block_on(async {
            let (body, rec) = ReplayBody::recorded(chunks(11, 100), 1000);
            assert_eq!(body.collect().await.unwrap().to_bytes().len(), 1100);
            assert!(rec.replay::<Frames>().is_none());
            let (_, rec) = ReplayBody::recorded(Full::new(Bytes::from(vec![0u8; 1001])), 1000);
            assert!(matches!(rec, Recording::TooLarge));
        });
    }

    #[test]
    fn known_length_body_is_complete_after_its_last_chunk() {
        rt().block_on(async {
            // Boxed: streamed and recorded (a bare `Full` is taken whole).
            let known = Full::new(Bytes::from_static(b"abc")).boxed();
            let (mut body, rec) = ReplayBody::recorded(known, 10);
            assert!(matches!(rec, Recording::Tape(_)));
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "abc");
            // The sender never polls for the end: still replayable.
            let again = rec.replay::<Full<Bytes>>().unwrap();
            assert_eq!(again.collect().await.unwrap().to_bytes(), "abc");
        });
    }

    #[test]
    fn a_body_whole_in_memory_is_sent_and_replayed_as_it_is() {
        rt().block_on(async {
            let bytes = Bytes::from_static(b"{\"name\":\"x\"}");
            let (body, rec) = ReplayBody::recorded(Full::new(bytes.clone()), 100);
            assert!(matches!(rec, Recording::Whole(_)));
            assert!(!body.is_end_stream());
            assert_eq!(body.size_hint().exact(), Some(bytes.len() as u64));
            assert_eq!(body.collect().await.unwrap().to_bytes(), bytes);
            for _ in 0..2 {
                let again = rec.replay::<Full<Bytes>>().unwrap();
                assert_eq!(again.size_hint().exact(), Some(bytes.len() as u64));
                assert_eq!(again.collect().await.unwrap().to_bytes(), bytes);
            }
            // Replayable even when the inner service never read it (nothing was lost).
            let (_, rec) = ReplayBody::recorded(String::from("text"), 100);
            let again = rec.replay::<String>().unwrap();
            assert_eq!(again.collect().await.unwrap().to_bytes(), "text");
        });
    }

    #[test]
    fn a_whole_body_over_the_cap_is_sent_but_not_replayable() {
        rt().block_on(async {
            let (body, rec) = ReplayBody::recorded(String::from("0123456789"), 4);
            assert!(matches!(rec, Recording::TooLarge));
            assert_eq!(body.collect().await.unwrap().to_bytes(), "0123456789");
            assert!(rec.replay::<String>().is_none());
        });
    }

    #[test]
    fn trailers_are_recorded_and_replayed_and_an_unfinished_body_is_not() {
        rt().block_on(async {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
            let make = || {
                frames(
                    [
                        Frame::data(Bytes::from_static(b"one")),
                        Frame::data(Bytes::from_static(b"two")),
                        Frame::trailers(trailers.clone()),
                    ],
                    false,
                )
            };
            let (body, rec) = ReplayBody::recorded(make(), 100);
            let sent = body.collect().await.unwrap();
            assert_eq!(sent.trailers(), Some(&trailers));
            let again = rec.replay::<Frames>().unwrap().collect().await.unwrap();
            assert_eq!(again.trailers(), Some(&trailers));
            assert_eq!(again.to_bytes(), "onetwo");
            // Dropped before its end: nothing to replay.
            let (mut body, rec) = ReplayBody::recorded(make(), 100);
            body.frame().await.unwrap().unwrap();
            drop(body);
            assert!(rec.replay::<Frames>().is_none());
        });
    }

    #[test]
    fn a_chunk_after_the_promised_end_makes_the_body_not_replayable() {
        rt().block_on(async {
            let lying = frames(
                [&b"a"[..], b"b", b"c"].map(|c| Frame::data(Bytes::from_static(c))),
                true,
            );
            let (mut body, rec) = ReplayBody::recorded(lying, 100);
            body.frame().await.unwrap().unwrap();
            body.frame().await.unwrap().unwrap();
            // The end as announced: published, replayable.
            assert_eq!(
                rec.replay::<Frames>()
                    .unwrap()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes(),
                "ab"
            );
            body.frame().await.unwrap().unwrap();
            assert!(rec.replay::<Frames>().is_none());
        });
    }
}
