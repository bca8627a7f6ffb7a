//! Rewriting absolute upstream URLs inside JSON response bodies (SPEC 4.3 "JSON bodies"), as a
//! streaming [`http_body::Body`] wrapper.
//!
//! **The rule.** A JSON string (value or key) that *starts with* an absolute URL on the route's
//! upstream origin and under its base path — the same origin rule as the `Location`/`Link`
//! rewriting of [`rewrite_url`](super::router::rewrite_url): scheme and host compared
//! case-insensitively, default ports made explicit — gets that origin and base path replaced
//! by `http://{Host}{prefix}`; the rest of the string (path, query, URI-template braces like
//! GitHub's `{/number}`) passes through byte for byte. URLs in the middle of a string (an issue
//! body quoting a URL), relative URLs, other origins and paths outside the base path are left
//! alone, and so are URLs with userinfo (`https://user@api.github.com/`). Escaped slashes (`https:\/\/api.github.com\/repos`) are recognised; the replaced
//! prefix is written with plain slashes and the rest keeps its escapes. Any other escape inside
//! the scheme or authority (`\u0068ttps`) is not decoded: that string is left alone.
//!
//! **The machine.** A byte-oriented state machine over JSON tokens — outside a string, inside
//! one, after a backslash — that jumps with `memchr` to the next `"` / `\`. Only the start of a
//! string that may still become an upstream URL is held back (at most the scheme, the
//! authority, the base path and one byte: a few hundred bytes, capped at [`MAX_PENDING`]), so a
//! URL split across chunks at any byte is still found and memory stays bounded. Chunks without
//! a rewrite are forwarded as they came (no copy). The bytes are never decoded as UTF-8, so
//! invalid UTF-8 and invalid JSON pass through unchanged. The wrapped body's errors and
//! trailers pass through; bytes held back when the body ends are flushed first.
//!
//! **When it applies** ([`applies`]): a response with a body (not `HEAD`, not 1xx/204/304)
//! whose `Content-Type` is `application/json` or `*/*+json` (parameters allowed, any case) and
//! that has no `Content-Encoding` other than `identity` — the proxy does not decompress, so
//! gzip'ed JSON passes untouched. Its `Content-Length` is dropped, since the length may change
//! (the body is then chunked on HTTP/1.1). Every other response — a 64 MiB download — is not
//! wrapped at all.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::config::Route;
use super::router::{base_path, proxy_prefix, Origin};

mod scanner;
#[cfg(test)]
mod tests;

use scanner::{Scanner, Verdict};

/// The most bytes of one string held back while it may still become an upstream URL; a longer
/// candidate is passed through unrewritten.
pub const MAX_PENDING: usize = 8 * 1024;

/// The longest authority (`host:port`, decoded) a candidate may have: a DNS name is at most 253
/// bytes, plus `:65535`, plus brackets.
const MAX_AUTHORITY: usize = 262;

/// Whether a response to `method` with `status` and `headers` gets its JSON body rewritten: it
/// has a body, its content type is `application/json` or `*+json`, and it is not
/// content-encoded.
///
/// ```
/// use http::{header, HeaderMap, Method, StatusCode};
/// use oauth_refresh_proxy::proxy::json_rewrite::applies;
///
/// let mut h = HeaderMap::new();
/// h.insert(header::CONTENT_TYPE, "Application/JSON; charset=utf-8".parse().unwrap());
/// assert!(applies(&Method::GET, StatusCode::OK, &h));
/// assert!(!applies(&Method::HEAD, StatusCode::OK, &h));
/// h.insert(header::CONTENT_TYPE, "application/vnd.github+json".parse().unwrap());
/// assert!(applies(&Method::GET, StatusCode::OK, &h));
/// h.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
/// assert!(!applies(&Method::GET, StatusCode::OK, &h));
/// h.remove(header::CONTENT_ENCODING);
/// h.insert(header::CONTENT_TYPE, "application/octet-stream".parse().unwrap());
/// assert!(!applies(&Method::GET, StatusCode::OK, &h));
/// ```
pub fn applies(method: &Method, status: StatusCode, headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    applies_scanned(
        method,
        status,
        is_json_type(ct.as_bytes()),
        !headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .all(is_identity),
    )
}

/// [`applies`] for an answer whose headers were already looked at: `json` when its first
/// `Content-Type` is JSON ([`is_json_type`]), `encoded` when one of its `Content-Encoding`
/// values is not `identity` ([`is_identity`]). The sidecar finds both in its one pass over an
/// answer's headers instead of two lookups.
pub(crate) fn applies_scanned(
    method: &Method,
    status: StatusCode,
    json: bool,
    encoded: bool,
) -> bool {
    json && !encoded
        && *method != Method::HEAD
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

/// A `Content-Encoding` value that leaves the body as it is.
pub(crate) fn is_identity(value: &http::HeaderValue) -> bool {
    value
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"identity")
}

/// `application/json` or `type/subtype+json`, parameters ignored, any case.
pub(crate) fn is_json_type(value: &[u8]) -> bool {
    let essence = value
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let Some(slash) = essence.iter().position(|&b| b == b'/') else {
        return false;
    };
    let (ty, subtype) = (&essence[..slash], &essence[slash + 1..]);
    if ty.is_empty() {
        return false;
    }
    (ty.eq_ignore_ascii_case(b"application") && subtype.eq_ignore_ascii_case(b"json"))
        || (subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// What to rewrite and to what, for one response: the route's upstream origin and base path,
/// and the proxy's own base URL (`http://{Host}{prefix}`).
///
/// ```
/// use oauth_refresh_proxy::proxy::{config::Route, json_rewrite::JsonRewrite};
///
/// let route = &Route::defaults()[1]; // /github → https://api.github.com
/// let rewrite = JsonRewrite::new(route, "127.0.0.1:8080").unwrap();
/// assert_eq!(
///     rewrite.rewrite_all(br#"{"url":"https://api.github.com/repos/o/r","html_url":"https://github.com/o/r"}"#),
///     br#"{"url":"http://127.0.0.1:8080/github/repos/o/r","html_url":"https://github.com/o/r"}"#
/// );
/// ```
#[derive(Clone, Debug)]
pub struct JsonRewrite {
    /// `scheme://`, lower case.
    scheme_sep: Vec<u8>,
    /// The upstream authority's spellings ([`Origin::authority_forms`]).
    authorities: Vec<Vec<u8>>,
    base: Vec<u8>,
    replacement: Vec<u8>,
}

impl JsonRewrite {
    /// The rewriting of `route`'s upstream URLs to the proxy at `proxy_host` (a plain
    /// `host[:port]`, see [`rewrite_authority`](super::router::rewrite_authority)); `None` when
    /// the upstream has no usable origin.
    pub fn new(route: &Route, proxy_host: &str) -> Option<JsonRewrite> {
        let origin = Origin::of_route(route)?;
        let mut scheme_sep = origin.scheme.as_bytes().to_vec();
        scheme_sep.extend_from_slice(b"://");
        Some(JsonRewrite {
            scheme_sep,
            authorities: origin.authority_forms(),
            base: base_path(route).as_bytes().to_vec(),
            replacement: format!("http://{proxy_host}{}", proxy_prefix(route)).into_bytes(),
        })
    }

    /// The verdict on a string starting at `rest[0]`, decided on this chunk alone when the
    /// prefix is all there and has no backslash (the common case: no byte-by-byte matching);
    /// `None` when the byte-by-byte [`Candidate`] must decide.
    fn fast_verdict(&self, rest: &[u8]) -> Option<Verdict> {
        let sep = self.scheme_sep.len();
        let head = rest.get(..sep)?;
        if !head.eq_ignore_ascii_case(&self.scheme_sep) {
            // A first byte that cannot start the scheme settles it, escapes or not.
            return match rest.first() {
                Some(b) if b.to_ascii_lowercase() != self.scheme_sep[0] => Some(Verdict::NoMatch),
                _ if head.contains(&b'\\') => None,
                _ => Some(Verdict::NoMatch),
            };
        }
        let tail = &rest[sep..];
        let window = &tail[..tail.len().min(MAX_AUTHORITY + 1)];
        let end = window
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#' | b'"' | b'\\'))?;
        if window[end] == b'\\' {
            return None;
        }
        let authority = &tail[..end];
        if !self
            .authorities
            .iter()
            .any(|a| a.eq_ignore_ascii_case(authority))
        {
            return Some(Verdict::NoMatch);
        }
        let at = sep + end;
        if self.base.is_empty() {
            return Some(Verdict::Match(at));
        }
        let after = rest.get(at..at + self.base.len() + 1)?;
        if after.contains(&b'\\') {
            return None;
        }
        let boundary = matches!(after[self.base.len()], b'/' | b'?' | b'#' | b'"');
        if &after[..self.base.len()] == self.base.as_slice() && boundary {
            Some(Verdict::Match(at + self.base.len()))
        } else {
            Some(Verdict::NoMatch)
        }
    }

    /// Wraps `body`, rewriting as it streams.
    pub fn wrap<B: Body>(self, body: B) -> RewriteBody<B> {
        RewriteBody {
            inner: body,
            scanner: Scanner::new(self),
            queued: None,
            first: None,
            trailers: None,
        }
    }

    /// Rewrites a whole body at once (the streaming machine fed one chunk).
    pub fn rewrite_all(&self, body: &[u8]) -> Vec<u8> {
        let mut scanner = Scanner::new(self.clone());
        let mut out = scanner.process(Bytes::copy_from_slice(body)).to_vec();
        if let Some(rest) = scanner.finish() {
            out.extend_from_slice(&rest);
        }
        out
    }
}

pin_project! {
    /// A response body whose upstream URLs inside JSON strings are rewritten as it streams
    /// (see the module docs). Built by [`JsonRewrite::wrap`].
    pub struct RewriteBody<B>
    where
        B: Body,
    {
        #[pin]
        inner: B,
        scanner: Scanner,
        // Rewritten bytes to send before anything else (see `prepend`).
        queued: Option<Bytes>,
        // A frame (or the end) already taken from `inner`, handled before polling it again.
        first: Option<Option<Result<Frame<Bytes>, B::Error>>>,
        // Trailers that arrived while bytes were still held back: sent after those.
        trailers: Option<HeaderMap>,
    }
}

/// What the bytes handed to [`RewriteBody::prepend`] are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepended {
    /// The start of the body: more may follow from the wrapped body.
    Start,
    /// The whole body: nothing follows.
    WholeBody,
}

impl<B: Body<Data = Bytes>> RewriteBody<B> {
    /// Rewrites `data`, the first bytes already taken from the wrapped body, and queues the
    /// result to be sent first; returns the result's length. With [`Prepended::WholeBody`],
    /// bytes still held back are flushed into the result, so its length is the length of the
    /// whole rewritten body (the proxy then sends an exact `Content-Length`).
    pub fn prepend(&mut self, data: Bytes, what: Prepended) -> usize {
        let mut out = self.scanner.process(data);
        if what == Prepended::WholeBody {
            if let Some(rest) = self.scanner.finish() {
                let mut joined = BytesMut::from(&out[..]);
                joined.extend_from_slice(&rest);
                out = joined.freeze();
            }
        }
        let len = out.len();
        self.queued = Some(out);
        len
    }

    /// Hands back a frame (or the end, `None`) already taken from the wrapped body, to be
    /// handled as if it came next.
    pub fn unread(&mut self, frame: Option<Result<Frame<Bytes>, B::Error>>) {
        self.first = Some(frame);
    }
}

impl<B> Body for RewriteBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if let Some(q) = this.queued.take().filter(|q| !q.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(q))));
        }
        if let Some(t) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        loop {
            let next = match this.first.take() {
                Some(frame) => frame,
                None => ready!(this.inner.as_mut().poll_frame(cx)),
            };
            match next {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.scanner.process(data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        let Some(rest) = this.scanner.finish() else {
                            return Poll::Ready(Some(Ok(frame)));
                        };
                        *this.trailers = frame.into_trailers().ok();
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(this.scanner.finish().map(|b| Ok(Frame::data(b)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.queued.as_ref().is_none_or(Bytes::is_empty)
            && self.trailers.is_none()
            && !self.scanner.holds_bytes()
            && match &self.first {
                Some(None) => true,
                Some(Some(_)) => false,
                None => self.inner.is_end_stream(),
            }
    }

    fn size_hint(&self) -> SizeHint {
        // The length may change either way: unknown.
        SizeHint::default()
    }
}

impl<B: Body> std::fmt::Debug for RewriteBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewriteBody")
            .field("held", &self.scanner.cand.raw.len())
            .finish_non_exhaustive()
    }
}
