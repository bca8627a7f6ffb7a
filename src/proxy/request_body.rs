//! Reading a small request body whole, at most [`MAX_BODY`] bytes: the one reader of the admin
//! API's `PUT /tokens/…` and of the served refresh API.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;

/// The largest request body the sidecar's own endpoints read (64 KiB); larger ones get 413.
pub const MAX_BODY: usize = 64 * 1024;

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// More than [`MAX_BODY`] bytes, announced (size hint) or sent.
    TooLarge,
    /// The body failed before its end.
    Unreadable,
}

/// Marks the answer to a request whose body was refused before its end (`413`): the rest of
/// the body is left unread, so the connection cannot carry another request. `Connection: close`
/// tells the client so — it opens a new connection for its next request instead of sending it
/// on one the server is closing.
pub(crate) fn closing<B>(mut resp: http::Response<B>) -> http::Response<B> {
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}

/// Reads `body` to its end, refusing it as soon as it announces or sends more than
/// [`MAX_BODY`] bytes. Trailers are ignored.
pub(crate) async fn read_bounded<B: Body>(body: B) -> Result<Bytes, ReadError> {
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Err(ReadError::TooLarge);
    }
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while let Some(frame) = body.as_mut().frame().await {
        let frame = frame.map_err(|_| ReadError::Unreadable)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.remaining() > MAX_BODY {
                return Err(ReadError::TooLarge);
            }
            buf.put(data);
        }
    }
    Ok(buf.freeze())
}
