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
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return false;
    }
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    if !is_json_type(ct.as_bytes()) {
        return false;
    }
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .all(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
}

/// `application/json` or `type/subtype+json`, parameters ignored, any case.
fn is_json_type(value: &[u8]) -> bool {
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

impl<B: Body<Data = Bytes>> RewriteBody<B> {
    /// Rewrites `data`, the first bytes already taken from the wrapped body, and queues the
    /// result to be sent first; returns the result's length. With `at_end`, `data` was the
    /// whole body and bytes still held back are flushed into the result, so its length is the
    /// length of the whole rewritten body (the proxy then sends an exact `Content-Length`).
    pub fn prepend(&mut self, data: Bytes, at_end: bool) -> usize {
        let mut out = self.scanner.process(data);
        if at_end {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between strings.
    Outside,
    /// Inside a string, past its candidate prefix.
    InString,
    /// Inside a string, right after a backslash.
    Escape,
    /// At the start of a string that may still be an upstream URL: bytes are held in `cand`.
    Candidate,
}

/// The byte machine behind [`RewriteBody`].
struct Scanner {
    spec: JsonRewrite,
    state: State,
    cand: Candidate,
}

impl Scanner {
    fn new(spec: JsonRewrite) -> Scanner {
        Scanner {
            spec,
            state: State::Outside,
            cand: Candidate::default(),
        }
    }

    fn holds_bytes(&self) -> bool {
        self.state == State::Candidate && !self.cand.raw.is_empty()
    }

    /// The bytes to send for `chunk`: `chunk` itself when nothing changed and nothing is held.
    fn process(&mut self, chunk: Bytes) -> Bytes {
        let buf = &chunk[..];
        let mut out = Out::new(&chunk);
        let mut i = 0;
        // Where the current candidate starts in this chunk, and how many of its bytes came
        // from earlier chunks (a carried candidate starts at 0).
        let mut cand_start = 0;
        let mut carried = if self.state == State::Candidate {
            self.cand.raw.len()
        } else {
            0
        };
        while i < buf.len() {
            match self.state {
                State::Outside => match memchr::memchr(b'"', &buf[i..]) {
                    Some(k) => {
                        i += k + 1;
                        cand_start = i;
                        carried = 0;
                        match self.spec.fast_verdict(&buf[i..]) {
                            Some(Verdict::NoMatch) => self.state = State::InString,
                            Some(Verdict::Match(prefix)) => {
                                out.cut(i, i + prefix);
                                out.push(&self.spec.replacement);
                                i += prefix;
                                self.state = State::InString;
                            }
                            _ => {
                                self.cand.reset();
                                self.state = State::Candidate;
                            }
                        }
                    }
                    None => i = buf.len(),
                },
                State::InString => match memchr::memchr2(b'"', b'\\', &buf[i..]) {
                    Some(k) => {
                        i += k + 1;
                        self.state = if buf[i - 1] == b'"' {
                            State::Outside
                        } else {
                            State::Escape
                        };
                    }
                    None => i = buf.len(),
                },
                State::Escape => {
                    i += 1;
                    self.state = State::InString;
                }
                State::Candidate => {
                    let b = buf[i];
                    let verdict = if b == b'"' && !self.cand.esc {
                        // The string ends here; the quote itself is scanned as InString next.
                        self.cand.end(&self.spec)
                    } else {
                        i += 1;
                        self.cand.feed(&self.spec, b)
                    };
                    match verdict {
                        Verdict::Pending => {}
                        Verdict::NoMatch => {
                            if carried > 0 {
                                // The held bytes precede this chunk, which starts with the rest.
                                out.cut(0, 0);
                                out.push(&self.cand.raw[..carried]);
                            }
                            self.state = State::InString;
                        }
                        Verdict::Match(prefix) => {
                            out.cut(cand_start, i);
                            out.push(&self.spec.replacement);
                            out.push(&self.cand.raw[prefix..]);
                            self.state = State::InString;
                        }
                    }
                }
            }
        }
        if self.state == State::Candidate {
            out.finish(cand_start)
        } else {
            out.finish(buf.len())
        }
    }

    /// The bytes still held when the body ends (an unterminated string).
    fn finish(&mut self) -> Option<Bytes> {
        if !self.holds_bytes() {
            return None;
        }
        self.state = State::InString;
        Some(Bytes::from(std::mem::take(&mut self.cand.raw)))
    }
}

/// The output of one chunk: ranges of the input, cut and spliced only where something changed.
struct Out<'a> {
    src: &'a Bytes,
    buf: Option<BytesMut>,
    /// Start of the input range not yet copied (or sliced).
    from: usize,
}

impl<'a> Out<'a> {
    fn new(src: &'a Bytes) -> Self {
        Out {
            src,
            buf: None,
            from: 0,
        }
    }

    /// Copies the input up to `at`, then skips it up to `resume`.
    fn cut(&mut self, at: usize, resume: usize) {
        let buf = self
            .buf
            .get_or_insert_with(|| BytesMut::with_capacity(self.src.len() + 64));
        buf.extend_from_slice(&self.src[self.from..at]);
        self.from = resume;
    }

    /// Appends bytes of the proxy's own (after a [`Out::cut`]).
    fn push(&mut self, bytes: &[u8]) {
        if let Some(buf) = &mut self.buf {
            buf.extend_from_slice(bytes);
        }
    }

    /// The output, with the input up to `end`.
    fn finish(self, end: usize) -> Bytes {
        match self.buf {
            None => self.src.slice(self.from..end),
            Some(mut buf) => {
                buf.extend_from_slice(&self.src[self.from..end]);
                buf.freeze()
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// This many bytes of `scheme://` matched.
    Scheme(usize),
    /// Reading the authority.
    Authority,
    /// This many bytes of the base path matched.
    Base(usize),
}

enum Verdict {
    /// Needs more bytes.
    Pending,
    /// Not an upstream URL: pass the held bytes through.
    NoMatch,
    /// An upstream URL: the first `n` held bytes are its origin and base path.
    Match(usize),
}

/// The start of one string, held while it may still be an upstream URL.
#[derive(Default)]
struct Candidate {
    /// The raw (escaped) bytes held.
    raw: Vec<u8>,
    /// A backslash was the last raw byte.
    esc: bool,
    phase: Option<Phase>,
    /// The decoded authority so far.
    authority: Vec<u8>,
    /// Where the last decoded character starts in `raw`.
    char_start: usize,
}

impl Candidate {
    fn reset(&mut self) {
        self.raw.clear();
        self.authority.clear();
        self.esc = false;
        self.phase = None;
        self.char_start = 0;
    }

    /// One raw byte of the string (not its closing quote).
    fn feed(&mut self, spec: &JsonRewrite, b: u8) -> Verdict {
        let start = self.raw.len();
        self.raw.push(b);
        if self.raw.len() > MAX_PENDING {
            return Verdict::NoMatch;
        }
        let c = if self.esc {
            self.esc = false;
            if b != b'/' {
                return Verdict::NoMatch;
            }
            self.char_start = start - 1;
            b'/'
        } else if b == b'\\' {
            self.esc = true;
            return Verdict::Pending;
        } else {
            self.char_start = start;
            b
        };
        self.step(spec, Some(c))
    }

    /// The string ended (closing quote) while held.
    fn end(&mut self, spec: &JsonRewrite) -> Verdict {
        self.char_start = self.raw.len();
        self.step(spec, None)
    }

    /// One decoded character, or `None` at the end of the string.
    fn step(&mut self, spec: &JsonRewrite, c: Option<u8>) -> Verdict {
        let boundary = matches!(c, None | Some(b'/' | b'?' | b'#'));
        match self.phase.unwrap_or(Phase::Scheme(0)) {
            Phase::Scheme(n) => match c {
                Some(c) if c.to_ascii_lowercase() == spec.scheme_sep[n] => {
                    self.phase = Some(if n + 1 == spec.scheme_sep.len() {
                        Phase::Authority
                    } else {
                        Phase::Scheme(n + 1)
                    });
                    Verdict::Pending
                }
                _ => Verdict::NoMatch,
            },
            Phase::Authority if boundary => {
                let ours = spec
                    .authorities
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(&self.authority));
                if !ours {
                    Verdict::NoMatch
                } else if spec.base.is_empty() {
                    Verdict::Match(self.char_start)
                } else if c == Some(b'/') {
                    // The base path starts with this `/`.
                    self.phase = Some(Phase::Base(1));
                    Verdict::Pending
                } else {
                    Verdict::NoMatch
                }
            }
            Phase::Authority => {
                self.authority.extend(c);
                if self.authority.len() > MAX_AUTHORITY {
                    Verdict::NoMatch
                } else {
                    Verdict::Pending
                }
            }
            Phase::Base(n) if n == spec.base.len() => {
                if boundary {
                    Verdict::Match(self.char_start)
                } else {
                    Verdict::NoMatch
                }
            }
            Phase::Base(n) => {
                if c == Some(spec.base[n]) {
                    self.phase = Some(Phase::Base(n + 1));
                    Verdict::Pending
                } else {
                    Verdict::NoMatch
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Provider;
    use http::Uri;
    use http_body_util::BodyExt;

    fn route(prefix: &str, upstream: &'static str) -> Route {
        Route {
            prefix: prefix.into(),
            upstream: Uri::from_static(upstream),
            provider: Provider::GitHub,
            default_account: None,
            rate_limit: Default::default(),
            rewrite_body: true,
        }
    }

    fn github() -> JsonRewrite {
        JsonRewrite::new(
            &route("/github", "https://api.github.com"),
            "127.0.0.1:8080",
        )
        .unwrap()
    }

    fn all(spec: &JsonRewrite, body: &str) -> String {
        String::from_utf8(spec.rewrite_all(body.as_bytes())).unwrap()
    }

    /// Feeds `body` in the given chunks, returns the concatenated output.
    fn chunked(spec: &JsonRewrite, chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = Scanner::new(spec.clone());
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&s.process(Bytes::copy_from_slice(c)));
        }
        if let Some(rest) = s.finish() {
            out.extend_from_slice(&rest);
        }
        out
    }

    const SAMPLE: &str = r#"{"url":"https://api.github.com/repos/o/r","comments_url":"https://API.GitHub.com:443/repos/o/r/comments","issues_url":"https://api.github.com/repos/o/r/issues{/number}","html_url":"https://github.com/o/r","esc":"https:\/\/api.github.com\/repos\/o\/r?page=2","quote":"say \"https://api.github.com/x\"","list":["https://api.github.com",7,"/relative"],"bare":"https://api.github.com?x=1","n":null}"#;
    const EXPECTED: &str = r#"{"url":"http://127.0.0.1:8080/github/repos/o/r","comments_url":"http://127.0.0.1:8080/github/repos/o/r/comments","issues_url":"http://127.0.0.1:8080/github/repos/o/r/issues{/number}","html_url":"https://github.com/o/r","esc":"http://127.0.0.1:8080/github\/repos\/o\/r?page=2","quote":"say \"https://api.github.com/x\"","list":["http://127.0.0.1:8080/github",7,"/relative"],"bare":"http://127.0.0.1:8080/github?x=1","n":null}"#;

    #[test]
    fn rewrites_upstream_urls_in_strings() {
        assert_eq!(all(&github(), SAMPLE), EXPECTED);
        let v: serde_json::Value = serde_json::from_str(EXPECTED).unwrap();
        assert_eq!(v["esc"], "http://127.0.0.1:8080/github/repos/o/r?page=2");
    }

    #[test]
    fn every_split_point_gives_the_same_output() {
        let spec = github();
        let body = SAMPLE.as_bytes();
        for at in 0..=body.len() {
            let out = chunked(&spec, &[&body[..at], &body[at..]]);
            assert_eq!(String::from_utf8(out).unwrap(), EXPECTED, "split at {at}");
        }
        // And one byte at a time.
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(String::from_utf8(chunked(&spec, &bytes)).unwrap(), EXPECTED);
        // And every pair of split points over a URL-dense stretch.
        let body = br#"["https:\/\/api.github.com\/a","https://api.github.com/b"]"#;
        let expected = br#"["http://127.0.0.1:8080/github\/a","http://127.0.0.1:8080/github/b"]"#;
        for a in 0..=body.len() {
            for b in a..=body.len() {
                let out = chunked(&spec, &[&body[..a], &body[a..b], &body[b..]]);
                assert_eq!(out, expected, "splits at {a}, {b}");
            }
        }
    }

    #[test]
    fn other_origins_relative_urls_and_mid_string_urls_are_left_alone() {
        let spec = github();
        for s in [
            r#"{"a":"http://api.github.com/x"}"#,
            r#"{"a":"https://api.github.com:8443/x"}"#,
            r#"{"a":"https://api.github.com.evil.example/x"}"#,
            r#"{"a":"https://uploads.github.com/x"}"#,
            r#"{"a":"/repos/o/r"}"#,
            r#"{"a":"see https://api.github.com/x"}"#,
            r#"{"a":"https://api.github.comx/"}"#,
            r#"{"a":"https:/api.github.com/x"}"#,
            r#"{"a":"\u0068ttps://api.github.com/x"}"#,
            r#"{"a":"https://api.github.com\u002fx"}"#,
            r#"{"a":"https://"}"#,
            r#"{"a":"https://u@api.github.com/x"}"#,
            r#"{"a":"https:\/\/u@api.github.com\/x"}"#,
            r#"{"a":""}"#,
            r#"https://api.github.com/not-in-a-string"#,
        ] {
            assert_eq!(all(&spec, s), s);
        }
        // Held bytes of an unterminated string are flushed at the end; a complete prefix in
        // one is rewritten.
        assert_eq!(all(&spec, r#"["https://api.gi"#), r#"["https://api.gi"#);
        assert_eq!(
            all(&spec, r#"["https://api.github.com/x"#),
            r#"["http://127.0.0.1:8080/github/x"#
        );
    }

    #[test]
    fn base_paths_and_the_root_prefix() {
        let drive = JsonRewrite::new(
            &route("/drive", "https://www.googleapis.com/drive/v3"),
            "h:1",
        )
        .unwrap();
        assert_eq!(
            all(
                &drive,
                r#"{"selfLink":"https://www.googleapis.com/drive/v3/files/1?alt=json","b":"https://www.googleapis.com/drive/v3","c":"https://www.googleapis.com/drive/v30/x","d":"https://www.googleapis.com/upload/x","e":"https://www.googleapis.com"}"#
            ),
            r#"{"selfLink":"http://h:1/drive/files/1?alt=json","b":"http://h:1/drive","c":"https://www.googleapis.com/drive/v30/x","d":"https://www.googleapis.com/upload/x","e":"https://www.googleapis.com"}"#
        );
        let root = JsonRewrite::new(&route("/", "http://127.0.0.1:9"), "p:2").unwrap();
        assert_eq!(
            all(&root, r#"["http://127.0.0.1:9/x","HTTP://127.0.0.1:9"]"#),
            r#"["http://p:2/x","http://p:2"]"#
        );
        let default_port = JsonRewrite::new(&route("/g", "http://h.example"), "p").unwrap();
        assert_eq!(
            all(
                &default_port,
                r#"["http://h.example:80/x","http://h.example:8080/x"]"#
            ),
            r#"["http://p/g/x","http://h.example:8080/x"]"#
        );
    }

    #[test]
    fn long_strings_pass_through() {
        let spec = github();
        // A string longer than the cap that starts like a URL on a far too long host.
        let host = "a".repeat(MAX_PENDING * 2);
        let s = format!(r#"{{"a":"https://{host}/x","b":"https://api.github.com/y"}}"#);
        let expected =
            format!(r#"{{"a":"https://{host}/x","b":"http://127.0.0.1:8080/github/y"}}"#);
        assert_eq!(all(&spec, &s), expected);
        // A long path after a matching prefix streams (only the prefix was held).
        let path = "p/".repeat(MAX_PENDING);
        let s = format!(r#"["https://api.github.com/{path}"]"#);
        let mut scanner = Scanner::new(spec.clone());
        let out = scanner.process(Bytes::from(s.clone()));
        assert_eq!(
            String::from_utf8(out.to_vec()).unwrap(),
            format!(r#"["http://127.0.0.1:8080/github/{path}"]"#)
        );
        // Holding never exceeds the cap, whatever the input.
        let mut scanner = Scanner::new(spec);
        for _ in 0..100 {
            let _ = scanner.process(Bytes::from_static(b"\\/\\/\\/\\/"));
            assert!(scanner.cand.raw.len() <= MAX_PENDING + 1);
        }
    }

    #[test]
    fn invalid_utf8_and_non_json_pass_through_unchanged() {
        let spec = github();
        let mut body = b"{\"a\":\"\xff\xfe\x80https://api.github.com/x\",\"b\":\"".to_vec();
        body.extend_from_slice(b"\xc3\x28\"}\xf0\x9f");
        assert_eq!(spec.rewrite_all(&body), body);
        let noise: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        assert_eq!(spec.rewrite_all(&noise), noise);
        // Invalid UTF-8 after a rewritten prefix stays as it was.
        assert_eq!(
            spec.rewrite_all(b"[\"https://api.github.com/\xff\"]"),
            b"[\"http://127.0.0.1:8080/github/\xff\"]"
        );
    }

    #[test]
    fn untouched_chunks_are_not_copied() {
        let spec = github();
        let chunk = Bytes::from_static(br#"{"html_url":"https://github.com/o/r","n":[1,2,3]}"#);
        let mut s = Scanner::new(spec);
        let out = s.process(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr(), "same buffer, no copy");
        assert_eq!(out.len(), chunk.len());
    }

    #[test]
    fn content_types() {
        for yes in [
            "application/json",
            "APPLICATION/JSON",
            "application/json; charset=utf-8",
            " application/json ;charset=utf-8",
            "application/vnd.github+json",
            "application/problem+JSON",
            "application/vnd.github.v3+json; charset=utf-8",
        ] {
            assert!(is_json_type(yes.as_bytes()), "{yes}");
        }
        for no in [
            "",
            "text/plain",
            "application/jsonx",
            "application/x-json-stream",
            "text/json",
            "/+json",
            "application/+json",
            "application/octet-stream",
            "json",
        ] {
            assert!(!is_json_type(no.as_bytes()), "{no}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(applies(&Method::GET, StatusCode::OK, &h));
        assert!(!applies(&Method::GET, StatusCode::NO_CONTENT, &h));
        assert!(!applies(&Method::GET, StatusCode::NOT_MODIFIED, &h));
        h.insert(header::CONTENT_ENCODING, "identity".parse().unwrap());
        assert!(applies(&Method::GET, StatusCode::OK, &h));
        h.append(header::CONTENT_ENCODING, "br".parse().unwrap());
        assert!(!applies(&Method::GET, StatusCode::OK, &h));
    }

    #[tokio::test]
    async fn errors_and_trailers_pass_through() {
        let spec = github();
        // Trailers arriving while bytes are held: the held bytes first, then the trailers.
        let mut trailers = HeaderMap::new();
        trailers.insert("x-t", "1".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"[\"https://api.git"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let body = spec.clone().wrap(Frames(frames.into()));
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(&collected.to_bytes()[..], b"[\"https://api.git");

        // An error after a rewritten chunk is the body's error.
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(
                b"[\"https://api.github.com/x\",",
            ))),
            Err(std::io::Error::other("upstream reset")),
        ];
        let mut body = spec.wrap(Frames(frames.into()));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"[\"http://127.0.0.1:8080/github/x\",");
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "upstream reset");
    }

    #[tokio::test]
    async fn a_prepended_first_frame_and_an_unread_one_come_first() {
        let spec = github();
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![Ok(Frame::data(
            Bytes::from_static(b"\"https://api.github.com\"]"),
        ))];
        let mut body = spec.clone().wrap(Frames(frames.into()));
        let n = body.prepend(Bytes::from_static(b"[\"https://api.github.com/a\","), false);
        assert_eq!(n, b"[\"http://127.0.0.1:8080/github/a\",".len());
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(
            &all[..],
            b"[\"http://127.0.0.1:8080/github/a\",\"http://127.0.0.1:8080/github\"]"
        );
        // The whole body at once, ending inside a held candidate: flushed into the count.
        let mut body = spec.clone().wrap(Frames(Default::default()));
        assert_eq!(
            body.prepend(Bytes::from_static(b"[\"https://api"), true),
            13
        );
        body.unread(None);
        assert!(!body.is_end_stream());
        assert_eq!(
            &body.collect().await.unwrap().to_bytes()[..],
            b"[\"https://api"
        );
        // An unread frame is scanned like the others.
        let mut body = spec.wrap(Frames(Default::default()));
        body.unread(Some(Ok(Frame::data(Bytes::from_static(
            b"[\"https://api.github.com/x\"]",
        )))));
        assert_eq!(
            &body.collect().await.unwrap().to_bytes()[..],
            b"[\"http://127.0.0.1:8080/github/x\"]"
        );
    }

    /// A body of the given frames.
    struct Frames(std::collections::VecDeque<Result<Frame<Bytes>, std::io::Error>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front())
        }
    }
}
