//! The byte machine behind [`RewriteBody`](super::RewriteBody): JSON tokens outside and inside
//! strings, and the candidate prefix of a string that may still become an upstream URL.

use bytes::{Bytes, BytesMut};

use super::{JsonRewrite, MAX_AUTHORITY, MAX_PENDING};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
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
pub(super) struct Scanner {
    pub(super) spec: JsonRewrite,
    pub(super) state: State,
    pub(super) cand: Candidate,
}

impl Scanner {
    pub(super) fn new(spec: JsonRewrite) -> Scanner {
        Scanner {
            spec,
            state: State::Outside,
            cand: Candidate::default(),
        }
    }

    pub(super) fn holds_bytes(&self) -> bool {
        self.state == State::Candidate && !self.cand.raw.is_empty()
    }

    /// The bytes to send for `chunk`: `chunk` itself when nothing changed and nothing is held.
    pub(super) fn process(&mut self, chunk: Bytes) -> Bytes {
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
    pub(super) fn finish(&mut self) -> Option<Bytes> {
        if !self.holds_bytes() {
            return None;
        }
        self.state = State::InString;
        Some(Bytes::from(std::mem::take(&mut self.cand.raw)))
    }
}

/// The output of one chunk: ranges of the input, cut and spliced only where something changed.
pub(super) struct Out<'a> {
    src: &'a Bytes,
    buf: Option<BytesMut>,
    /// Start of the input range not yet copied (or sliced).
    from: usize,
}

impl<'a> Out<'a> {
    pub(super) fn new(src: &'a Bytes) -> Self {
        Out {
            src,
            buf: None,
            from: 0,
        }
    }

    /// Copies the input up to `at`, then skips it up to `resume`.
    pub(super) fn cut(&mut self, at: usize, resume: usize) {
        let buf = self
            .buf
            .get_or_insert_with(|| BytesMut::with_capacity(self.src.len() + 64));
        buf.extend_from_slice(&self.src[self.from..at]);
        self.from = resume;
    }

    /// Appends bytes of the proxy's own (after a [`Out::cut`]).
    pub(super) fn push(&mut self, bytes: &[u8]) {
        if let Some(buf) = &mut self.buf {
            buf.extend_from_slice(bytes);
        }
    }

    /// The output, with the input up to `end`.
    pub(super) fn finish(self, end: usize) -> Bytes {
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
pub(super) enum Phase {
    /// This many bytes of `scheme://` matched.
    Scheme(usize),
    /// Reading the authority.
    Authority,
    /// This many bytes of the base path matched.
    Base(usize),
}

pub(super) enum Verdict {
    /// Needs more bytes.
    Pending,
    /// Not an upstream URL: pass the held bytes through.
    NoMatch,
    /// An upstream URL: the first `n` held bytes are its origin and base path.
    Match(usize),
}

/// The start of one string, held while it may still be an upstream URL.
#[derive(Default)]
pub(super) struct Candidate {
    /// The raw (escaped) bytes held.
    pub(super) raw: Vec<u8>,
    /// A backslash was the last raw byte.
    pub(super) esc: bool,
    pub(super) phase: Option<Phase>,
    /// The decoded authority so far.
    pub(super) authority: Vec<u8>,
    /// Where the last decoded character starts in `raw`.
    pub(super) char_start: usize,
}

impl Candidate {
    pub(super) fn reset(&mut self) {
        self.raw.clear();
        self.authority.clear();
        self.esc = false;
        self.phase = None;
        self.char_start = 0;
    }

    /// One raw byte of the string (not its closing quote).
    pub(super) fn feed(&mut self, spec: &JsonRewrite, b: u8) -> Verdict {
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
    pub(super) fn end(&mut self, spec: &JsonRewrite) -> Verdict {
        self.char_start = self.raw.len();
        self.step(spec, None)
    }

    /// One decoded character, or `None` at the end of the string.
    pub(super) fn step(&mut self, spec: &JsonRewrite, c: Option<u8>) -> Verdict {
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
