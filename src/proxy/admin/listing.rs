//! `GET /tokens`, paged and streamed (SPEC 4.5): the query, the `Link` to the next page, and
//! the body that serialises one page a chunk at a time, away from the proxy's workers.
//!
//! The rules of the query are in the [admin module's docs](super). Here is how a page is made:
//!
//! 1. The page's ids are taken from [`Tokens`]'s sorted index at once (O(log n + limit), shared
//!    pointers, no string copies), which fixes the page and its `Link` before the head is sent.
//! 2. A producer task looks the entries up and serialises them [`CHUNK`] at a time into a
//!    channel of capacity 1; the response body ([`ListingBody`]) only passes those chunks on.
//!    So a listing holds its ids and at most two chunks of JSON, and a slow reader holds no
//!    more (the producer waits).
//! 3. The producers of all listings run on one thread of their own (`orp-admin-listing`, a
//!    single-threaded runtime started on first use): serialising 100 000 entries is CPU work
//!    that, on the proxy's runtime, would sit between proxied requests and their workers. On
//!    its own thread it is preempted by the OS like any other, uses at most one core, and the
//!    proxy's workers only copy finished chunks to the socket.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::provider::Provider;
use crate::proxy::rate_limit::RateLimits;
use crate::tokens::{AccountInfo, Tokens};

/// The page size of `GET /tokens` without `?limit=`.
pub const DEFAULT_LIMIT: usize = 1000;

/// The largest `?limit=` of `GET /tokens`; a larger one is `400 bad_request`.
pub const MAX_LIMIT: usize = 10_000;

/// How many accounts one frame of a streamed `GET /tokens` body holds at most.
pub const CHUNK: usize = 100;

/// What the `Link` header percent-encodes in an account id: all but RFC 3986's unreserved
/// characters.
const ACCOUNT_IN_QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One account's listing entry (SPEC 4.5): never a token value.
#[derive(Serialize)]
pub(super) struct ListingEntry<'a> {
    provider: &'static str,
    account: &'a str,
    expires_at: Option<u64>,
    generation: u64,
    needs_reauth: bool,
    last_refresh_at: Option<u64>,
    last_error: Option<&'a str>,
    /// The latest deadline of the account's rate limits in force (SPEC 4.10).
    rate_limited_until: Option<u64>,
}

impl<'a> ListingEntry<'a> {
    /// `a`'s entry, with its rate limits from `limits`.
    pub(super) fn new(a: &'a AccountInfo, limits: &RateLimits) -> Self {
        ListingEntry {
            provider: a.provider.as_str(),
            account: &a.account,
            expires_at: a.expires_at,
            generation: a.generation,
            needs_reauth: a.needs_reauth,
            last_refresh_at: a.last_refresh_at,
            last_error: a.last_error.as_deref(),
            rate_limited_until: limits.rate_limited_until(a.provider, &a.account),
        }
    }
}

/// The query of `GET /tokens`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ListQuery {
    pub(super) limit: usize,
    pub(super) after: Option<(Provider, String)>,
}

/// Parses `limit=N&after=provider/account` (see the admin module's docs); the error is the
/// message of a 400, which never repeats the caller's input.
pub(super) fn parse_list_query(query: Option<&str>) -> Result<ListQuery, String> {
    let mut limit = None;
    let mut after = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" if limit.is_none() => {
                let n = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .filter(|_| value.bytes().all(|b| b.is_ascii_digit()));
                limit =
                    Some(n.ok_or_else(|| {
                        format!("limit must be an integer from 1 to {MAX_LIMIT}")
                    })?);
            }
            "after" if after.is_none() => {
                let invalid = || {
                    "after must be provider/account (provider \"google\" or \"github\", the \
                     account percent-encoded)"
                        .to_string()
                };
                let decoded = super::routing::percent_decode(value).ok_or_else(invalid)?;
                let (provider, account) = decoded.split_once('/').ok_or_else(invalid)?;
                let provider: Provider = provider.parse().map_err(|_| invalid())?;
                if account.is_empty() {
                    return Err(invalid());
                }
                after = Some((provider, account.to_string()));
            }
            "limit" | "after" => return Err("each query parameter may be given once".into()),
            _ => return Err("unknown query parameter; GET /tokens accepts limit and after".into()),
        }
    }
    Ok(ListQuery {
        limit: limit.unwrap_or(DEFAULT_LIMIT),
        after,
    })
}

/// `</tokens?limit=N&after=provider/account>; rel="next"`.
pub(super) fn next_link(limit: usize, provider: Provider, account: &str) -> HeaderValue {
    let link = format!(
        "</tokens?limit={limit}&after={}/{}>; rel=\"next\"",
        provider.as_str(),
        utf8_percent_encode(account, ACCOUNT_IN_QUERY)
    );
    // Only ASCII is left after encoding: never the fallback.
    HeaderValue::try_from(link).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// One page of the listing: its `Link` (when more remain) and its body, whose producer is
/// already running. `None` only when no runtime could run the producer.
pub(super) fn page(
    tokens: &Tokens,
    limits: &RateLimits,
    q: &ListQuery,
) -> Option<(Option<HeaderValue>, ListingBody)> {
    let page = tokens.page_ids(q.after.as_ref().map(|(p, a)| (*p, a.as_str())), q.limit);
    let link = match (page.more, page.ids.last()) {
        (true, Some((p, id))) => Some(next_link(q.limit, *p, id)),
        _ => None,
    };
    let (tx, rx) = mpsc::channel(1);
    let producer = Producer {
        tokens: tokens.clone(),
        limits: limits.clone(),
        ids: page.ids.into_iter(),
        opened: false,
        written: 0,
        done: false,
    };
    let runtime = producers().or_else(|| tokio::runtime::Handle::try_current().ok())?;
    runtime.spawn(producer.run(tx));
    Some((link, ListingBody { rx }))
}

/// The runtime of the producers: one thread, started on first use. `None` if the thread
/// could not be started (the caller's runtime is used then).
fn producers() -> Option<tokio::runtime::Handle> {
    static HANDLE: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(|e| tracing::warn!(error = %e, "no listing runtime"))
                .ok()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("orp-admin-listing".into())
                .spawn(move || runtime.block_on(std::future::pending::<()>()))
                .map_err(|e| tracing::warn!(error = %e, "no listing thread"))
                .ok()?;
            Some(handle)
        })
        .clone()
}

/// Looks one page's entries up and serialises them, [`CHUNK`] at a time.
struct Producer {
    tokens: Tokens,
    limits: RateLimits,
    ids: std::vec::IntoIter<(Provider, Arc<str>)>,
    /// `[` written.
    opened: bool,
    /// Entries written (a `,` goes before every one but the first).
    written: usize,
    /// `]` written.
    done: bool,
}

impl Producer {
    /// Sends the page's chunks until the `]`, or until the body is dropped (the client left).
    async fn run(mut self, tx: mpsc::Sender<Bytes>) {
        while let Some(chunk) = self.next_chunk() {
            if tx.send(chunk).await.is_err() {
                return;
            }
            // Let the other listings on this thread have their turn.
            tokio::task::yield_now().await;
        }
    }

    /// The next non-empty piece of the array, or `None` after the `]`.
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut buf = Vec::with_capacity(CHUNK * 192);
        if !self.opened {
            self.opened = true;
            buf.push(b'[');
        }
        let prefix = buf.len();
        // Accounts removed since the ids were taken are skipped: go on until the piece holds
        // an entry or the `]`, looking at most CHUNK ids per round.
        loop {
            for (provider, id) in self.ids.by_ref().take(CHUNK) {
                let Some(info) = self.tokens.get(provider, &id) else {
                    continue;
                };
                let start = buf.len();
                if self.written > 0 {
                    buf.push(b',');
                }
                if serde_json::to_writer(&mut buf, &ListingEntry::new(&info, &self.limits)).is_ok()
                {
                    self.written += 1;
                } else {
                    buf.truncate(start);
                }
            }
            if self.ids.len() == 0 {
                buf.push(b']');
                self.done = true;
                break;
            }
            if buf.len() > prefix {
                break;
            }
        }
        Some(Bytes::from(buf))
    }
}

/// The body of a `GET /tokens` page: the chunks of its producer, passed on as they come.
pub struct ListingBody {
    rx: mpsc::Receiver<Bytes>,
}

impl std::fmt::Debug for ListingBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListingBody")
    }
}

impl Body for ListingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refresh::scripted::{Script, Scripted};
    use crate::refresh::Refreshed;
    use crate::token::{Secret, TokenSeed};

    fn tokens(n: usize) -> Tokens {
        let script = Script::new(Refreshed {
            access_token: Secret::new("a"),
            refresh_token: None,
            expires_at: None,
        });
        let tokens = Tokens::builder(Scripted(script)).build();
        for i in 0..n {
            tokens.insert(Provider::Google, format!("a{i:04}"), TokenSeed::new("r"));
        }
        tokens
    }

    fn producer(tokens: &Tokens, limit: usize) -> Producer {
        Producer {
            tokens: tokens.clone(),
            limits: RateLimits::default(),
            ids: tokens.page_ids(None, limit).ids.into_iter(),
            opened: false,
            written: 0,
            done: false,
        }
    }

    fn accounts(chunks: &[Bytes]) -> Vec<String> {
        let text: String = chunks
            .iter()
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        list.iter()
            .map(|e| e["account"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn accounts_removed_after_the_ids_were_taken_are_skipped() {
        let t = tokens(CHUNK * 3 + 1);
        let mut p = producer(&t, usize::MAX);
        let first = p.next_chunk().unwrap();
        // The whole second chunk, and the very last account, go.
        for i in (CHUNK..CHUNK * 2).chain([CHUNK * 3]) {
            assert!(t.remove(Provider::Google, &format!("a{i:04}")));
        }
        let mut chunks = vec![first];
        while let Some(c) = p.next_chunk() {
            assert!(!c.is_empty());
            chunks.push(c);
        }
        // '[' + 100, then the third hundred (the empty second one is not a chunk), then ']'
        // alone (its account is gone).
        assert_eq!(chunks.len(), 3, "{chunks:?}");
        assert_eq!(&chunks[2][..], b"]");
        let seen = accounts(&chunks);
        assert_eq!(seen.len(), CHUNK * 2);
        assert_eq!(seen[CHUNK - 1], format!("a{:04}", CHUNK - 1));
        assert_eq!(seen[CHUNK], format!("a{:04}", CHUNK * 2));
        assert!(p.next_chunk().is_none());

        // Everything gone: still a valid (empty) array.
        let t = tokens(3);
        let mut p = producer(&t, 10);
        for i in 0..3 {
            t.remove(Provider::Google, &format!("a{i:04}"));
        }
        assert_eq!(&p.next_chunk().unwrap()[..], b"[]");
        assert!(p.next_chunk().is_none());
    }

    #[tokio::test]
    async fn a_dropped_body_stops_the_producer() {
        let t = tokens(CHUNK * 50);
        let (tx, mut rx) = mpsc::channel(1);
        let run = tokio::spawn(producer(&t, usize::MAX).run(tx));
        assert!(rx.recv().await.unwrap().starts_with(b"["));
        drop(rx);
        tokio::time::timeout(std::time::Duration::from_secs(10), run)
            .await
            .expect("the producer ends when its body is gone")
            .unwrap();
    }

    #[test]
    fn list_query() {
        assert_eq!(
            parse_list_query(None),
            Ok(ListQuery {
                limit: DEFAULT_LIMIT,
                after: None
            })
        );
        assert_eq!(
            parse_list_query(Some("after=github/octo%40home&limit=10000")),
            Ok(ListQuery {
                limit: MAX_LIMIT,
                after: Some((Provider::GitHub, "octo@home".into()))
            })
        );
        assert_eq!(
            parse_list_query(Some("after=google/a/b")).unwrap().after,
            Some((Provider::Google, "a/b".into()))
        );
        assert_eq!(
            parse_list_query(Some("after=google/a+b")).unwrap().after,
            Some((Provider::Google, "a+b".into()))
        );
        assert_eq!(
            next_link(5, Provider::Google, "a b/é~-._"),
            "</tokens?limit=5&after=google/a%20b%2F%C3%A9~-._>; rel=\"next\""
        );
        // What the Link encodes parses back to the same cursor.
        for id in ["a b", "a&limit=3", "100%", "a/b", "é", "a+b", "~x"] {
            let link = next_link(7, Provider::GitHub, id);
            let target = link.to_str().unwrap();
            let query = target
                .strip_prefix("</tokens?")
                .and_then(|t| t.strip_suffix(">; rel=\"next\""))
                .unwrap();
            assert_eq!(
                parse_list_query(Some(query)),
                Ok(ListQuery {
                    limit: 7,
                    after: Some((Provider::GitHub, id.to_string()))
                }),
                "{id}"
            );
        }
    }
}
