//! Soak: the real sidecar binary under mixed traffic for many minutes, its resident memory and
//! open descriptors sampled, to show that neither grows once it is warm (issue 9).
//!
//! Run (one command; it builds the release binary and this example first):
//!
//! ```text
//! bash benches/soak.sh --minutes 10          # the hardening keys of SPEC 4.2 [server]/[upstream] on
//! bash benches/soak.sh --minutes 2 --no-limits   # a binary without those keys
//! # or, with the binary already built:
//! cargo run --release --example soak -- --minutes 10 [--bin PATH] [--rate 1000]
//! ```
//!
//! # What it starts
//!
//! In this process: the crate's fakes ([`oauth_refresh_proxy::demo`]) — a GitHub API, a Google
//! API and a refresh backend sharing one rotating [`Realm`] (every GitHub refresh rotates the
//! refresh token and kills the old access token at once), issuing access tokens that live
//! `--token-lifetime-secs` (default 240 s, so refresh-ahead renews them during the run).
//! Then the real binary (`--bin`, default `target/release/oauth-refresh-proxy`) as a child, on a
//! config written to a temp dir: `--accounts` accounts (default 100, half GitHub `gh-NNN`, half
//! Google `gg-NNN`) seeded with tokens the realm accepts, expiring at spread times; an admin
//! listener with an `admin_token`; `[refresh] timeout = "5s"`, `max_attempts = 3`; and, unless
//! `--no-limits`, the hardening keys: `[server] header_read_timeout = "5s"`, `idle_timeout =
//! "10s"`, `body_read_timeout = "5s"`, `max_connections = 2000`; `[upstream] connect_timeout =
//! "5s"`, `response_timeout = "10s"`, `body_idle_timeout = "10s"`. The child runs at
//! `RUST_LOG=warn`; its stderr goes to `OUT/sidecar-stderr.log` (`--out`, default
//! `target/soak`).
//!
//! # What it drives, for `--minutes` (default 10)
//!
//! Every stream is paced; `--rate` (default 1000 requests/s) is the total of the paced
//! proxied streams, shared evenly by their workers:
//!
//! | kind | what | expected |
//! |---|---|---|
//! | `h1-get` | 48 HTTP/1.1 keep-alive connections (each renewed after 200–2000 requests), `GET /{github,google}/soak/{account}/get` on random accounts; one in eight `GET /github/user/repos?page=2` | 200; the fake's body for an empty request; the `Link` header rewritten to the proxy |
//! | `h2-get` | 4 h2c (prior knowledge) connections × 8 concurrent streams, the same requests | as `h1-get` |
//! | `post` | 16 HTTP/1.1 connections, `POST /…/soak/{account}/post` with a JSON body of 30–2000 bytes | 200, and the SHA-256 the fake saw equals the body sent (so a replay after a 401 resent it intact) |
//! | `bad-account`, `bad-route` | 5/s: an unknown `x-oauth-account`, an unknown prefix | 404 `unknown_account`, 404 `unknown_route` |
//! | `admin-refresh` | every `--rotate-secs` (3 s): `POST /tokens/github/{random}/refresh` — a forced rotation; that account's in-flight requests then get a 401 upstream and are replayed with the new token | 200 with a `generation` |
//! | revocations | every 2 s: the access token of an account seen a moment ago is revoked at the fake API (Google and GitHub in turn) — its next request gets 401, the proxy refreshes and replays | (the proxied requests above stay 200) |
//! | `admin-list`, `admin-metrics`, `admin-noauth` | `GET /tokens` every 1 s, `GET /metrics` every 2 s, `GET /tokens` without the bearer every 5 s | 200 with every account, 200 with `orp_tokens` summing to the account count, 401 |
//! | `slow-idle` | `--slow` (default 12) connections that send nothing (every other one on the admin listener) | closed by the server (with limits) |
//! | `slow-trickle` | `--slow` connections that send a request head one byte per second | closed by the server (with limits) |
//! | `slow-stall` | `--slow` connections that send a head and 100 of 1000 announced body bytes, then nothing | `408` (with limits) |
//!
//! A slow client that the server has not closed after 30 s is abandoned (closed by us) and
//! renewed; every slow client is renewed 1 s after it ends, so a few dozen are always open.
//! Every proxied and admin request is bounded by 30 s.
//!
//! # Output
//!
//! Every `--sample-secs` (10 s), one line: elapsed time, the child's `VmRSS`
//! (`/proc/PID/status`) and open descriptors (entries of `/proc/PID/fd`), the well-formed
//! requests since the last line by outcome (status code, or `err:…`), how many were
//! unexpected, slow-client outcomes since the last line and slow clients open now, and the
//! backend's refresh calls since the last line. The samples also go to `OUT/samples.csv`.
//!
//! At the end, after the traffic has stopped, the child gets SIGTERM (it must exit 0 within
//! 40 s), and a summary follows: warm-up (the first `--warmup-minutes`, default 2, capped at
//! 40 % of the run so that short runs keep samples after it) against the rest — RSS and fds
//! min/max/last, the least-squares slope of each over the post-warm-up samples (per minute),
//! the growth — requests by kind and outcome, slow-client outcomes (with the longest time the
//! server took to close one), refresh calls at the backend (forced, revocations, the rest
//! refresh-ahead), the proxy's own refresh and replay counters, and its stderr (line count;
//! no secret of the realm or the admin token may appear in it).
//!
//! # Verdict (exit status 1 on any of these)
//!
//! - **Growth.** The mean of the last three post-warm-up samples against the mean of the first
//!   three: RSS grew by more than 8 MiB *and* by more than 10 %, or descriptors grew by more
//!   than 32 *and* by more than 10 %. (Both conditions, so that allocator noise in a small
//!   process and the churn of a few dozen slow clients are not taken for a leak.)
//! - **Unexpected answers.** Any well-formed request (every kind in the table but the slow
//!   ones) answered otherwise than expected, or not answered (transport error, 30 s timeout);
//!   the first 20 are printed.
//! - **Refresh health.** The proxy counted a rejected or transient refresh, or ends with an
//!   account in `needs_reauth` (a rotation was lost).
//! - **Slow clients, with limits only.** One was still open when abandoned after 30 s: the
//!   limits (all ≤ 10 s) did not close it.
//! - **Lifecycle.** The child died during the run, did not listen, or did not exit 0 within
//!   40 s of SIGTERM; or a secret appears in its stderr.

#![deny(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use oauth_refresh_proxy::demo::{self, Realm};
use oauth_refresh_proxy::Provider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every proxied or admin request is bounded by this.
const REQUEST_BOUND: Duration = Duration::from_secs(30);
/// A slow client the server has not closed by then is closed by us.
const ABANDON: Duration = Duration::from_secs(30);
/// The bound on the child's start and on its exit after SIGTERM.
const START_BOUND: Duration = Duration::from_secs(20);
const EXIT_BOUND: Duration = Duration::from_secs(40);
/// Worker counts of the paced proxied streams.
const H1_WORKERS: usize = 48;
const H2_CONNS: usize = 4;
const H2_STREAMS: usize = 8;
const POST_WORKERS: usize = 16;
/// Growth thresholds (see the module docs).
const RSS_GROWTH_KIB: f64 = 8.0 * 1024.0;
const FD_GROWTH: f64 = 32.0;
const GROWTH_RATIO: f64 = 0.10;
/// Samples averaged at each end of the post-warm-up series.
const WINDOW: usize = 3;

const BACKEND_ENV: &str = "ORP_SOAK_BACKEND_TOKEN";
const ADMIN_ENV: &str = "ORP_SOAK_ADMIN_TOKEN";

#[derive(Parser, Clone)]
#[command(
    about = "Soak the sidecar: mixed traffic for N minutes, RSS and descriptors sampled.",
    args_override_self = true
)]
struct Args {
    /// How long to drive traffic.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// The sidecar binary.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/oauth-refresh-proxy"))]
    bin: PathBuf,
    /// Leave out the `[server]` and `[upstream]` hardening keys (for a binary without them).
    #[arg(long)]
    no_limits: bool,
    /// Total rate of the paced proxied streams, requests per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Accounts in the config (half GitHub, half Google).
    #[arg(long, default_value_t = 100)]
    accounts: usize,
    /// Slow clients of each kind (idle, trickle, stalled body).
    #[arg(long, default_value_t = 12)]
    slow: usize,
    /// Seconds between forced rotations through the admin API.
    #[arg(long, default_value_t = 3.0)]
    rotate_secs: f64,
    /// Lifetime of the access tokens the fake backend issues.
    #[arg(long, default_value_t = 240)]
    token_lifetime_secs: u64,
    /// Warm-up left out of the growth verdict (capped at 40 % of the run).
    #[arg(long, default_value_t = 2.0)]
    warmup_minutes: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Where the child's stderr and the samples go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/soak"))]
    out: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// Counting.
// ---------------------------------------------------------------------------------------------

/// What the streams saw, by (kind, outcome).
#[derive(Default)]
struct Stats {
    counts: Mutex<BTreeMap<(&'static str, String), u64>>,
    unexpected: AtomicU64,
    examples: Mutex<Vec<String>>,
    /// kind → (closed by the server: count, sum of seconds, max seconds)
    slow_close: Mutex<BTreeMap<&'static str, (u64, f64, f64)>>,
    slow_open: AtomicI64,
    forced: AtomicU64,
    revoked: AtomicU64,
}

impl Stats {
    fn add(&self, kind: &'static str, outcome: String) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry((kind, outcome))
            .or_default() += 1;
    }

    /// Counts an answer that was not the expected one and keeps the first few for the report.
    fn bad(&self, t0: Instant, kind: &'static str, outcome: String, detail: &str) {
        self.unexpected.fetch_add(1, Ordering::Relaxed);
        let mut ex = self.examples.lock().unwrap();
        if ex.len() < 20 {
            let detail: String = detail.chars().take(200).collect();
            ex.push(format!(
                "t={:.1}s {kind} {outcome}: {detail}",
                t0.elapsed().as_secs_f64()
            ));
        }
        drop(ex);
        self.add(kind, outcome);
    }

    fn slow_closed(&self, kind: &'static str, secs: f64) {
        let mut m = self.slow_close.lock().unwrap();
        let e = m.entry(kind).or_default();
        e.0 += 1;
        e.1 += secs;
        e.2 = e.2.max(secs);
    }

    fn snapshot(&self) -> BTreeMap<(&'static str, String), u64> {
        self.counts.lock().unwrap().clone()
    }
}

fn is_slow(kind: &str) -> bool {
    kind.starts_with("slow-")
}

/// Whether `stop` is set.
fn stopped(stop: &AtomicBool) -> bool {
    stop.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Connections and requests.
// ---------------------------------------------------------------------------------------------

enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

async fn connect_h1(addr: SocketAddr) -> Result<Conn, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(Conn::H1(send))
}

async fn connect_h2(addr: SocketAddr) -> Result<http2::SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// An answer read to its end.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Conn {
    /// Builds `method path` for this connection (origin form with `Host` on HTTP/1.1, an
    /// absolute URI on h2) and exchanges it, bounded by [`REQUEST_BOUND`].
    async fn send(
        &mut self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Answer, String> {
        let uri = match self {
            Conn::H1(_) => path.to_string(),
            Conn::H2(_) => format!("http://{addr}{path}"),
        };
        let mut b = Request::builder().method(method).uri(uri);
        if let Conn::H1(_) = self {
            b = b.header(http::header::HOST, addr.to_string());
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let exchange = async {
            let resp = match self {
                Conn::H1(s) => {
                    s.ready().await.map_err(|e| format!("not ready: {e}"))?;
                    s.send_request(req).await
                }
                Conn::H2(s) => {
                    s.ready().await.map_err(|e| format!("not ready: {e}"))?;
                    s.send_request(req).await
                }
            }
            .map_err(|e| format!("send: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_BOUND, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_BOUND:?}"))?
    }
}

/// Records `result` under `kind`: the status when `check` accepts it, else an unexpected outcome.
fn record(
    stats: &Stats,
    t0: Instant,
    kind: &'static str,
    result: &Result<Answer, String>,
    check: impl FnOnce(&Answer) -> Result<(), String>,
) {
    match result {
        Err(e) => stats.bad(t0, kind, "err:transport".into(), e),
        Ok(a) => match check(a) {
            Ok(()) => stats.add(kind, a.status.as_u16().to_string()),
            Err(why) => {
                let outcome = if why.starts_with("status") {
                    a.status.as_u16().to_string()
                } else {
                    format!("{}:bad-answer", a.status.as_u16())
                };
                let body = String::from_utf8_lossy(&a.body);
                stats.bad(t0, kind, outcome, &format!("{why}; body {body}"));
            }
        },
    }
}

fn want_status(a: &Answer, want: u16) -> Result<(), String> {
    if a.status.as_u16() == want {
        Ok(())
    } else {
        Err(format!("status {} (want {want})", a.status))
    }
}

fn json(a: &Answer) -> Result<serde_json::Value, String> {
    serde_json::from_slice(&a.body).map_err(|e| format!("not JSON: {e}"))
}

/// The proxy's own error code (SPEC 4.4) must be `code`.
fn want_code(a: &Answer, status: u16, code: &str) -> Result<(), String> {
    want_status(a, status)?;
    let v = json(a)?;
    if v["error"]["code"] == code {
        Ok(())
    } else {
        Err(format!("error.code {} (want {code})", v["error"]["code"]))
    }
}

// ---------------------------------------------------------------------------------------------
// The world: accounts, traffic.
// ---------------------------------------------------------------------------------------------

struct World {
    proxy: SocketAddr,
    admin: SocketAddr,
    admin_token: String,
    realm: Arc<Realm>,
    github_ids: Vec<String>,
    google_ids: Vec<String>,
    stats: Stats,
    stop: AtomicBool,
    t0: Instant,
    /// Seconds between two requests of one paced proxied worker.
    period: Duration,
}

impl World {
    fn random_account(&self) -> (&'static str, &str) {
        if fastrand::bool() {
            (
                "github",
                &self.github_ids[fastrand::usize(..self.github_ids.len())],
            )
        } else {
            (
                "google",
                &self.google_ids[fastrand::usize(..self.google_ids.len())],
            )
        }
    }

    fn pacer(&self) -> tokio::time::Interval {
        // A random phase, so that the workers do not fire together.
        let start = tokio::time::Instant::now() + self.period.mul_f64(fastrand::f64());
        let mut i = tokio::time::interval_at(start, self.period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    }

    /// One GET of the `h1-get`/`h2-get` mix on `conn`.
    async fn one_get(&self, conn: &mut Conn, kind: &'static str) {
        let (prefix, id) = self.random_account();
        if prefix == "github" && fastrand::u8(..8) == 0 {
            let r = conn
                .send(
                    self.proxy,
                    "GET",
                    "/github/user/repos?page=2",
                    &[("x-oauth-account", id)],
                    Bytes::new(),
                )
                .await;
            let own = format!("<http://{}/github/user/repos?page=3>", self.proxy);
            record(&self.stats, self.t0, kind, &r, |a| {
                want_status(a, 200)?;
                let link = a
                    .headers
                    .get(http::header::LINK)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if link.contains(&own) {
                    Ok(())
                } else {
                    Err(format!("Link not rewritten to the proxy: {link:?}"))
                }
            });
            return;
        }
        let path = format!("/{prefix}/soak/{id}/get");
        let r = conn
            .send(
                self.proxy,
                "GET",
                &path,
                &[("x-oauth-account", id)],
                Bytes::new(),
            )
            .await;
        record(&self.stats, self.t0, kind, &r, |a| {
            want_status(a, 200)?;
            let v = json(a)?;
            if v["len"] == 0 {
                Ok(())
            } else {
                Err(format!("the fake saw a body: {v}"))
            }
        });
    }

    /// One POST with a JSON body whose SHA-256 the fake must report back.
    async fn one_post(&self, conn: &mut Conn, seq: u64) {
        let (prefix, id) = self.random_account();
        let pad: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(fastrand::usize(..2000))
            .collect();
        let body = format!(r#"{{"account":"{id}","seq":{seq},"pad":"{pad}"}}"#);
        let want = demo::sha256_hex(body.as_bytes());
        let path = format!("/{prefix}/soak/{id}/post");
        let r = conn
            .send(
                self.proxy,
                "POST",
                &path,
                &[
                    ("x-oauth-account", id),
                    ("content-type", "application/json"),
                ],
                Bytes::from(body),
            )
            .await;
        record(&self.stats, self.t0, "post", &r, |a| {
            want_status(a, 200)?;
            let v = json(a)?;
            if v["sha256"] == want.as_str() {
                Ok(())
            } else {
                Err(format!("the fake saw another body: {v}"))
            }
        });
    }
}

/// A paced HTTP/1.1 worker (GETs, or POSTs when `post`) on one keep-alive connection, renewed
/// after 200–2000 requests or when it breaks.
async fn h1_worker(w: Arc<World>, post: bool) {
    let mut pacer = w.pacer();
    let mut seq = 0u64;
    while !stopped(&w.stop) {
        let mut conn = match connect_h1(w.proxy).await {
            Ok(c) => c,
            Err(e) => {
                let kind = if post { "post" } else { "h1-get" };
                w.stats.bad(w.t0, kind, "err:connect".into(), &e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let budget = fastrand::u32(200..2000);
        for _ in 0..budget {
            pacer.tick().await;
            if stopped(&w.stop) {
                return;
            }
            seq += 1;
            if post {
                w.one_post(&mut conn, seq).await;
            } else {
                w.one_get(&mut conn, "h1-get").await;
            }
            // A broken connection is not reused.
            if let Conn::H1(s) = &conn {
                if s.is_closed() {
                    break;
                }
            }
        }
    }
}

/// One h2c connection at a time, `H2_STREAMS` paced workers multiplexed on it; renewed when
/// every worker has made its 200–1000 requests.
async fn h2_session(w: Arc<World>) {
    while !stopped(&w.stop) {
        let send = match connect_h2(w.proxy).await {
            Ok(s) => s,
            Err(e) => {
                w.stats.bad(w.t0, "h2-get", "err:connect".into(), &e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut streams = Vec::new();
        for _ in 0..H2_STREAMS {
            let w = w.clone();
            let mut conn = Conn::H2(send.clone());
            streams.push(tokio::spawn(async move {
                let mut pacer = w.pacer();
                for _ in 0..fastrand::u32(200..1000) {
                    pacer.tick().await;
                    if stopped(&w.stop) {
                        return;
                    }
                    w.one_get(&mut conn, "h2-get").await;
                }
            }));
        }
        drop(send);
        for s in streams {
            let _ = s.await;
        }
    }
}

/// Unknown accounts and unknown routes, 5 per second.
async fn error_worker(w: Arc<World>) {
    let mut pacer = tokio::time::interval(Duration::from_millis(200));
    let mut conn = None;
    let mut n = 0u64;
    while !stopped(&w.stop) {
        pacer.tick().await;
        if conn.is_none() {
            conn = connect_h1(w.proxy).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            w.stats
                .bad(w.t0, "bad-account", "err:connect".into(), "connect");
            continue;
        };
        n += 1;
        if n % 2 == 0 {
            let r = c
                .send(
                    w.proxy,
                    "GET",
                    "/github/soak/nobody/get",
                    &[("x-oauth-account", "nobody")],
                    Bytes::new(),
                )
                .await;
            record(&w.stats, w.t0, "bad-account", &r, |a| {
                want_code(a, 404, "unknown_account")
            });
        } else {
            let r = c
                .send(w.proxy, "GET", "/nowhere/x", &[], Bytes::new())
                .await;
            record(&w.stats, w.t0, "bad-route", &r, |a| {
                want_code(a, 404, "unknown_route")
            });
        }
        if matches!(c, Conn::H1(s) if s.is_closed()) {
            conn = None;
        }
    }
}

/// One admin call every `every`, on its own keep-alive connection.
async fn admin_worker(w: Arc<World>, kind: &'static str, every: Duration) {
    let mut pacer = tokio::time::interval(every);
    pacer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn = None;
    let bearer = format!("Bearer {}", w.admin_token);
    while !stopped(&w.stop) {
        pacer.tick().await;
        if stopped(&w.stop) {
            return;
        }
        if conn.is_none() {
            conn = connect_h1(w.admin).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            w.stats
                .bad(w.t0, kind, "err:connect".into(), "admin connect");
            continue;
        };
        let auth = [("authorization", bearer.as_str())];
        match kind {
            "admin-list" => {
                let r = c.send(w.admin, "GET", "/tokens", &auth, Bytes::new()).await;
                let n = w.github_ids.len() + w.google_ids.len();
                record(&w.stats, w.t0, kind, &r, |a| {
                    want_status(a, 200)?;
                    let v = json(a)?;
                    match v.as_array() {
                        Some(list) if list.len() == n => Ok(()),
                        _ => Err(format!("not a list of {n} accounts")),
                    }
                });
            }
            "admin-metrics" => {
                let r = c.send(w.admin, "GET", "/metrics", &[], Bytes::new()).await;
                let n = (w.github_ids.len() + w.google_ids.len()) as f64;
                record(&w.stats, w.t0, kind, &r, |a| {
                    want_status(a, 200)?;
                    let tokens = metric_sum(&String::from_utf8_lossy(&a.body), "orp_tokens", &[]);
                    if tokens == n {
                        Ok(())
                    } else {
                        Err(format!("orp_tokens sums to {tokens}, want {n}"))
                    }
                });
            }
            "admin-noauth" => {
                let r = c.send(w.admin, "GET", "/tokens", &[], Bytes::new()).await;
                record(&w.stats, w.t0, kind, &r, |a| want_status(a, 401));
            }
            "admin-refresh" => {
                let id = &w.github_ids[fastrand::usize(..w.github_ids.len())];
                let path = format!("/tokens/github/{id}/refresh");
                let r = c.send(w.admin, "POST", &path, &auth, Bytes::new()).await;
                w.stats.forced.fetch_add(1, Ordering::Relaxed);
                record(&w.stats, w.t0, kind, &r, |a| {
                    want_status(a, 200)?;
                    if json(a)?["generation"].is_u64() {
                        Ok(())
                    } else {
                        Err("no generation".into())
                    }
                });
            }
            other => unreachable!("admin kind {other}"),
        }
        if matches!(c, Conn::H1(s) if s.is_closed()) {
            conn = None;
        }
    }
}

/// Every 2 s: revokes the access token of an account the fake API served a moment ago
/// (Google and GitHub in turn), and forgets what the API saw so that it stays bounded.
async fn revoker(w: Arc<World>) {
    let mut pacer = tokio::time::interval(Duration::from_secs(2));
    let mut github_turn = false;
    while !stopped(&w.stop) {
        pacer.tick().await;
        let seen = w.realm.seen();
        w.realm.clear_seen();
        github_turn = !github_turn;
        let want = if github_turn {
            "/soak/gh-"
        } else {
            "/soak/gg-"
        };
        let token = seen.iter().rev().find_map(|s| {
            if s.status != 200 || !s.path.starts_with(want) {
                return None;
            }
            s.authorization.as_deref()?.strip_prefix("Bearer ")
        });
        if let Some(t) = token {
            w.realm.revoke_access(t);
            w.stats.revoked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Slow clients.
// ---------------------------------------------------------------------------------------------

enum SlowEnd {
    /// The server closed (or reset) the connection without an answer.
    Closed,
    /// The server answered with this status.
    Status(u16),
    /// Still open after [`ABANDON`]; closed by us.
    Abandoned,
}

/// Reads until the server closes or sends a status line.
async fn read_end(mut r: impl tokio::io::AsyncRead + Unpin) -> SlowEnd {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let status = String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok());
    match status {
        Some(s) => SlowEnd::Status(s),
        None => SlowEnd::Closed,
    }
}

async fn slow_once(kind: &'static str, addr: SocketAddr, id: &str) -> Result<SlowEnd, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (r, mut w) = stream.into_split();
    let end = async {
        match kind {
            "slow-idle" => read_end(r).await,
            "slow-trickle" => {
                let head = format!(
                    "GET /github/soak/{id}/get HTTP/1.1\r\nhost: {addr}\r\nx-oauth-account: {id}\r\n\r\n"
                );
                let read = read_end(r);
                tokio::pin!(read);
                let write = async {
                    for b in head.bytes() {
                        if w.write_all(&[b]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    end = &mut read => end,
                    _ = write => read.await,
                }
            }
            "slow-stall" => {
                let head = format!(
                    "POST /google/soak/{id}/stall HTTP/1.1\r\nhost: {addr}\r\nx-oauth-account: {id}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"stalled\":\"{}",
                    "x".repeat(86)
                );
                if w.write_all(head.as_bytes()).await.is_err() {
                    return SlowEnd::Closed;
                }
                read_end(r).await
            }
            other => unreachable!("slow kind {other}"),
        }
    };
    Ok(tokio::time::timeout(ABANDON, end)
        .await
        .unwrap_or(SlowEnd::Abandoned))
}

/// A slow client of `kind`, renewed 1 s after each ends.
async fn slow_client(w: Arc<World>, kind: &'static str, addr: SocketAddr, id: String) {
    loop {
        let started = Instant::now();
        w.stats.slow_open.fetch_add(1, Ordering::Relaxed);
        let end = slow_once(kind, addr, &id).await;
        w.stats.slow_open.fetch_sub(1, Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        let outcome = match end {
            Err(e) => format!("err:{}", e.split(':').next().unwrap_or("")),
            Ok(SlowEnd::Closed) => {
                w.stats.slow_closed(kind, secs);
                "closed".into()
            }
            Ok(SlowEnd::Status(s)) => {
                w.stats.slow_closed(kind, secs);
                s.to_string()
            }
            Ok(SlowEnd::Abandoned) => "abandoned".into(),
        };
        w.stats.add(kind, outcome);
        tokio::time::sleep(Duration::from_millis(1000 + fastrand::u64(..200))).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The child.
// ---------------------------------------------------------------------------------------------

/// The sidecar, SIGKILLed and reaped on drop unless it has exited.
struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn config(args: &Args, backend: &str, github: SocketAddr, google: SocketAddr) -> String {
    let mut c = format!(
        r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "env:{ADMIN_ENV}"
max_replay_body = "64KiB"

[refresh]
mode = "backend"
backend_url = "{backend}"
backend_token = "env:{BACKEND_ENV}"
timeout = "5s"
max_attempts = 3
skew = "30s"
refresh_ahead = "1m"
"#
    );
    if !args.no_limits {
        c.push_str(
            r#"
[server]
header_read_timeout = "5s"
idle_timeout = "10s"
body_read_timeout = "5s"
max_connections = 2000

[upstream]
connect_timeout = "5s"
response_timeout = "10s"
body_idle_timeout = "10s"
"#,
        );
    }
    let _ = write!(
        c,
        r#"
[[route]]
prefix = "/github"
upstream = "http://{github}"
provider = "github"

[[route]]
prefix = "/google"
upstream = "http://{google}"
provider = "google"
"#
    );
    c
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// The sum of the samples of `name` whose labels include all of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some(x) => x,
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        if labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
        {
            sum += value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    sum
}

/// The child's user + system CPU time in seconds (`/proc/PID/stat`, at the usual 100 ticks/s).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// `line` without ANSI colour sequences (the child colours its log even into a file).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct Sample {
    t: f64,
    rss_kib: u64,
    fds: u64,
}

/// Least-squares slope of `y` over `t` (per minute).
fn slope_per_min(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den * 60.0
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Outcome counts of `now` minus `before`, summed over the kinds `pick` selects.
fn delta(
    now: &BTreeMap<(&'static str, String), u64>,
    before: &BTreeMap<(&'static str, String), u64>,
    pick: impl Fn(&str) -> bool,
) -> BTreeMap<String, u64> {
    let mut d = BTreeMap::new();
    for ((kind, outcome), n) in now {
        if !pick(kind) {
            continue;
        }
        let b = before.get(&(*kind, outcome.clone())).copied().unwrap_or(0);
        if n > &b {
            *d.entry(outcome.clone()).or_default() += n - b;
        }
    }
    d
}

fn fmt_counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs the soak; `Ok(pass)`, or `Err` when it could not run at all.
async fn run(args: Args) -> Result<bool, String> {
    if args.minutes <= 0.0 || args.rate <= 0.0 || args.accounts < 2 || args.sample_secs == 0 {
        return Err(
            "--minutes, --rate, --sample-secs must be positive, --accounts at least 2".into(),
        );
    }
    if !args.bin.is_file() {
        return Err(format!(
            "no binary at {} (build it: cargo build --release, or pass --bin)",
            args.bin.display()
        ));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;

    // The fakes.
    let realm = Realm::rotating("soak");
    *realm.lifetime.lock().unwrap() = Duration::from_secs(args.token_lifetime_secs);
    let backend = demo::start_backend(realm.clone()).await;
    let github = demo::start_api(realm.clone(), Provider::GitHub).await;
    let google = demo::start_api(realm.clone(), Provider::Google).await;

    // The config: routes, then the accounts, expiring at spread times (1.5 min up to the
    // token lifetime + 2 min), so that refresh-ahead renews them through the run.
    let mut text = config(&args, &backend, github, google);
    let (mut github_ids, mut google_ids) = (Vec::new(), Vec::new());
    let now = now_secs();
    for i in 0..args.accounts {
        let (provider, id) = if i % 2 == 0 {
            ("github", format!("gh-{:03}", i / 2))
        } else {
            ("google", format!("gg-{:03}", i / 2))
        };
        let refresh = realm.new_refresh_token();
        let access = realm.new_access_token(&refresh);
        let at = now + 90 + fastrand::u64(..args.token_lifetime_secs + 30);
        let _ = write!(
            text,
            "\n[[account]]\nprovider = \"{provider}\"\nid = \"{id}\"\nrefresh_token = \"{refresh}\"\naccess_token = \"{access}\"\nexpires_at = {at}\n"
        );
        if provider == "github" {
            github_ids.push(id);
        } else {
            google_ids.push(id);
        }
    }
    let dir = TempDir(std::env::temp_dir().join(format!("orp-soak-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|e| format!("{}: {e}", dir.0.display()))?;
    let config_path = dir.0.join("proxy.toml");
    std::fs::write(&config_path, &text).map_err(|e| format!("write config: {e}"))?;
    let admin_token = format!("soak-admin-{:016x}", fastrand::u64(..));
    let backend_token = realm.backend_token.clone().unwrap_or_default();

    // The child.
    let log_path = args.out.join("sidecar-stderr.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut child = Sidecar(
        Command::new(&args.bin)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .env(BACKEND_ENV, &backend_token)
            .env(ADMIN_ENV, &admin_token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("start {}: {e}", args.bin.display()))?,
    );
    let pid = child.0.id();
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Reads the `… listening on http://ADDR` lines, then drains stdout to its end.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            for (prefix, which) in [
                ("proxy listening on http://", "proxy"),
                ("admin listening on http://", "admin"),
            ] {
                if let Some(a) = line.strip_prefix(prefix) {
                    if let Ok(addr) = a.trim().parse::<SocketAddr>() {
                        let _ = tx.send((which, addr));
                    }
                }
            }
        }
    });
    let (mut proxy, mut admin) = (None, None);
    let deadline = Instant::now() + START_BOUND;
    while proxy.is_none() || admin.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(("proxy", a)) => proxy = Some(a),
            Ok((_, a)) => admin = Some(a),
            Err(_) => {
                let exited = child.0.try_wait().ok().flatten();
                if exited.is_some() || left.is_zero() {
                    let _ = child.0.kill();
                    let _ = child.0.wait();
                    let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
                    return Err(format!(
                        "the sidecar {} before announcing both listeners; its stderr:\n{stderr}",
                        match exited {
                            Some(s) => format!("exited ({s})"),
                            None => format!("stayed silent for {START_BOUND:?}"),
                        }
                    ));
                }
            }
        }
    }
    let (proxy, admin) = (proxy.unwrap(), admin.unwrap());

    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let mut warmup = args.warmup_minutes * 60.0;
    let cap = duration.as_secs_f64() * 0.4;
    let capped = warmup > cap;
    if capped {
        warmup = cap;
    }
    let workers = H1_WORKERS + H2_CONNS * H2_STREAMS + POST_WORKERS;
    let w = Arc::new(World {
        proxy,
        admin,
        admin_token: admin_token.clone(),
        realm: realm.clone(),
        github_ids,
        google_ids,
        stats: Stats::default(),
        stop: AtomicBool::new(false),
        t0: Instant::now(),
        period: Duration::from_secs_f64(workers as f64 / args.rate),
    });
    println!(
        "soak: sidecar pid {pid}, proxy {proxy}, admin {admin}; {} accounts; limits {}; {:.1} min, warm-up {:.0} s{}; target {:.0} req/s over {workers} paced workers; {} slow clients of each kind",
        args.accounts,
        if args.no_limits { "off (--no-limits)" } else { "on" },
        args.minutes,
        warmup,
        if capped { " (capped at 40 % of the run)" } else { "" },
        args.rate,
        args.slow,
    );
    println!("soak: stderr of the sidecar in {}", log_path.display());

    // Traffic.
    let mut traffic = Vec::new();
    for i in 0..H1_WORKERS + POST_WORKERS {
        traffic.push(tokio::spawn(h1_worker(w.clone(), i >= H1_WORKERS)));
    }
    for _ in 0..H2_CONNS {
        traffic.push(tokio::spawn(h2_session(w.clone())));
    }
    traffic.push(tokio::spawn(error_worker(w.clone())));
    for (kind, every) in [
        ("admin-list", Duration::from_secs(1)),
        ("admin-metrics", Duration::from_secs(2)),
        ("admin-noauth", Duration::from_secs(5)),
        ("admin-refresh", Duration::from_secs_f64(args.rotate_secs)),
    ] {
        traffic.push(tokio::spawn(admin_worker(w.clone(), kind, every)));
    }
    traffic.push(tokio::spawn(revoker(w.clone())));
    let mut slow = Vec::new();
    for i in 0..args.slow {
        let gh = w.github_ids[i % w.github_ids.len()].clone();
        let gg = w.google_ids[i % w.google_ids.len()].clone();
        let idle_at = if i % 2 == 0 { proxy } else { admin };
        slow.push(tokio::spawn(slow_client(
            w.clone(),
            "slow-idle",
            idle_at,
            gh.clone(),
        )));
        slow.push(tokio::spawn(slow_client(
            w.clone(),
            "slow-trickle",
            proxy,
            gh,
        )));
        slow.push(tokio::spawn(slow_client(
            w.clone(),
            "slow-stall",
            proxy,
            gg,
        )));
    }

    // Samples.
    let csv_path = args.out.join("samples.csv");
    let mut csv =
        std::fs::File::create(&csv_path).map_err(|e| format!("{}: {e}", csv_path.display()))?;
    let _ = writeln!(
        csv,
        "t_secs,rss_kib,fds,requests,unexpected_total,slow_open,backend_calls"
    );
    let mut samples = Vec::new();
    let mut failures = Vec::new();
    let mut before = w.stats.snapshot();
    let mut backend_before = realm.backend_calls.get();
    let mut next = tokio::time::Instant::from_std(w.t0);
    let end = next + duration;
    println!(
        "{:>6} {:>10} {:>5} {:>7}  requests by outcome | unexpected | slow: ended by outcome, open | backend calls",
        "t", "rss KiB", "fds", "req/s"
    );
    while next < end {
        next += Duration::from_secs(args.sample_secs);
        tokio::time::sleep_until(next.min(end)).await;
        if let Ok(Some(status)) = child.0.try_wait() {
            failures.push(format!("the sidecar died during the run ({status})"));
            break;
        }
        let t = w.t0.elapsed().as_secs_f64();
        let (Some(rss), Some(fds)) = (rss_kib(pid), fd_count(pid)) else {
            failures.push("could not read /proc for the sidecar".into());
            break;
        };
        let now = w.stats.snapshot();
        let req = delta(&now, &before, |k| !is_slow(k));
        let slow_d = delta(&now, &before, is_slow);
        let n: u64 = req.values().sum();
        let interval = t - samples.last().map(|s: &Sample| s.t).unwrap_or(0.0);
        let backend_now = realm.backend_calls.get();
        println!(
            "{:>5.0}s {rss:>10} {fds:>5} {:>7.0}  {} | {} | {}, {} | {}",
            t,
            n as f64 / interval.max(0.001),
            fmt_counts(&req),
            w.stats.unexpected.load(Ordering::Relaxed),
            fmt_counts(&slow_d),
            w.stats.slow_open.load(Ordering::Relaxed),
            backend_now - backend_before,
        );
        let _ = writeln!(
            csv,
            "{t:.1},{rss},{fds},{n},{},{},{}",
            w.stats.unexpected.load(Ordering::Relaxed),
            w.stats.slow_open.load(Ordering::Relaxed),
            backend_now - backend_before
        );
        samples.push(Sample {
            t,
            rss_kib: rss,
            fds,
        });
        before = now;
        backend_before = backend_now;
    }

    // Stop: slow clients at once, the rest within their request bound.
    w.stop.store(true, Ordering::Relaxed);
    for s in &slow {
        s.abort();
    }
    let stop_deadline = tokio::time::Instant::now() + REQUEST_BOUND + Duration::from_secs(5);
    for t in traffic {
        if tokio::time::timeout_at(stop_deadline, t).await.is_err() {
            failures.push("a traffic worker did not stop within its request bound".into());
            break;
        }
    }
    let metrics = match connect_h1(admin).await {
        Ok(mut c) => c
            .send(admin, "GET", "/metrics", &[], Bytes::new())
            .await
            .map(|a| String::from_utf8_lossy(&a.body).into_owned())
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    if metrics.is_empty() && failures.is_empty() {
        failures.push("no final /metrics".into());
    }
    let backend_calls = realm.backend_calls.get();
    let cpu_secs = cpu_secs(pid);

    // SIGTERM; a clean exit within EXIT_BOUND.
    let term_at = Instant::now();
    let exit = if child.0.try_wait().ok().flatten().is_none() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        loop {
            if let Ok(Some(s)) = child.0.try_wait() {
                break Some(s);
            }
            if term_at.elapsed() > EXIT_BOUND {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else {
        None
    };
    match exit {
        Some(s) if s.success() => {}
        Some(s) => failures.push(format!("the sidecar exited with {s} after SIGTERM")),
        None => failures.push(format!(
            "the sidecar did not exit within {EXIT_BOUND:?} of SIGTERM"
        )),
    }
    let exit_secs = term_at.elapsed().as_secs_f64();

    // Summary.
    let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut secrets = realm.secrets();
    secrets.push(admin_token.clone());
    if let Some(s) = secrets
        .iter()
        .find(|s| !s.is_empty() && stderr.contains(s.as_str()))
    {
        failures.push(format!(
            "a secret ({}…) appears in the sidecar's stderr",
            &s[..s.len().min(12)]
        ));
    }
    let ran = w.t0.elapsed().as_secs_f64();
    println!();
    println!(
        "== soak summary: {:.1} min of traffic, limits {}, {} accounts, target {:.0} req/s",
        ran.min(duration.as_secs_f64()) / 60.0,
        if args.no_limits { "off" } else { "on" },
        args.accounts,
        args.rate
    );
    let (warm, post): (Vec<&Sample>, Vec<&Sample>) = samples.iter().partition(|s| s.t <= warmup);
    let range = |v: &[&Sample], f: fn(&Sample) -> u64| -> String {
        if v.is_empty() {
            return "no samples".into();
        }
        let vals: Vec<u64> = v.iter().map(|s| f(s)).collect();
        format!(
            "min {} max {} last {}",
            vals.iter().min().unwrap(),
            vals.iter().max().unwrap(),
            vals.last().unwrap()
        )
    };
    println!(
        "warm-up   (t <= {warmup:.0} s, {} samples): RSS KiB {}; fds {}",
        warm.len(),
        range(&warm, |s| s.rss_kib),
        range(&warm, |s| s.fds)
    );
    println!(
        "after it  (t >  {warmup:.0} s, {} samples): RSS KiB {}; fds {}",
        post.len(),
        range(&post, |s| s.rss_kib),
        range(&post, |s| s.fds)
    );
    let win = WINDOW.min(post.len() / 2);
    if win == 0 {
        failures.push(format!(
            "only {} samples after the warm-up: run longer",
            post.len()
        ));
    } else {
        let rss: Vec<f64> = post.iter().map(|s| s.rss_kib as f64).collect();
        let fds: Vec<f64> = post.iter().map(|s| s.fds as f64).collect();
        let rss_slope = slope_per_min(
            &post
                .iter()
                .map(|s| (s.t, s.rss_kib as f64))
                .collect::<Vec<_>>(),
        );
        let fd_slope = slope_per_min(&post.iter().map(|s| (s.t, s.fds as f64)).collect::<Vec<_>>());
        let (rss_a, rss_b) = (mean(&rss[..win]), mean(&rss[rss.len() - win..]));
        let (fd_a, fd_b) = (mean(&fds[..win]), mean(&fds[fds.len() - win..]));
        let (rss_g, fd_g) = (rss_b - rss_a, fd_b - fd_a);
        println!("slope after warm-up: RSS {rss_slope:+.1} KiB/min, fds {fd_slope:+.2}/min");
        println!(
            "growth (mean of the last {win} vs the first {win} samples after warm-up): RSS {rss_g:+.0} KiB ({:+.1} %), fds {fd_g:+.1} ({:+.1} %)",
            rss_g / rss_a * 100.0,
            fd_g / fd_a.max(1.0) * 100.0
        );
        println!(
            "threshold: RSS > {:.0} KiB and > {:.0} %; fds > {FD_GROWTH:.0} and > {:.0} %",
            RSS_GROWTH_KIB,
            GROWTH_RATIO * 100.0,
            GROWTH_RATIO * 100.0
        );
        if rss_g > RSS_GROWTH_KIB && rss_g > GROWTH_RATIO * rss_a {
            failures.push(format!("RSS grew by {rss_g:.0} KiB after warm-up"));
        }
        if fd_g > FD_GROWTH && fd_g > GROWTH_RATIO * fd_a {
            failures.push(format!("open descriptors grew by {fd_g:.1} after warm-up"));
        }
    }

    let totals = w.stats.snapshot();
    println!("requests by kind and outcome:");
    let mut by_kind: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    for ((kind, outcome), n) in &totals {
        by_kind.entry(kind).or_default().insert(outcome.clone(), *n);
    }
    let slow_close = w.stats.slow_close.lock().unwrap().clone();
    for (kind, m) in &by_kind {
        let mut line = format!("  {kind:<14} {}", fmt_counts(m));
        if let Some((n, sum, max)) = slow_close.get(kind) {
            let _ = write!(
                line,
                "  (ended by the server after mean {:.1} s, max {max:.1} s)",
                sum / *n as f64
            );
        }
        println!("{line}");
    }
    let well_formed = delta(&totals, &BTreeMap::new(), |k| !is_slow(k));
    println!(
        "  well-formed total: {} ({}), {:.0} req/s",
        well_formed.values().sum::<u64>(),
        fmt_counts(&well_formed),
        well_formed.values().sum::<u64>() as f64 / ran.max(1.0)
    );
    let unexpected = w.stats.unexpected.load(Ordering::Relaxed);
    if unexpected > 0 {
        failures.push(format!(
            "{unexpected} well-formed requests got an unexpected answer"
        ));
        println!(
            "unexpected answers (first {}):",
            w.stats.examples.lock().unwrap().len()
        );
        for e in w.stats.examples.lock().unwrap().iter() {
            println!("  {e}");
        }
    }
    if !args.no_limits {
        let abandoned: u64 = totals
            .iter()
            .filter(|((k, o), _)| is_slow(k) && o == "abandoned")
            .map(|(_, n)| n)
            .sum();
        if abandoned > 0 {
            failures.push(format!(
                "{abandoned} slow clients were still open after {ABANDON:?} (limits on)"
            ));
        }
    }

    let forced = w.stats.forced.load(Ordering::Relaxed);
    let revoked = w.stats.revoked.load(Ordering::Relaxed);
    println!(
        "backend refresh calls: {backend_calls} (forced rotations sent {forced}, access tokens revoked {revoked}, the rest refresh-ahead)"
    );
    let m = |name: &str, labels: &[(&str, &str)]| metric_sum(&metrics, name, labels);
    let (ok, rejected, transient) = (
        m("orp_refresh_total", &[("outcome", "success")]),
        m("orp_refresh_total", &[("outcome", "rejected")]),
        m("orp_refresh_total", &[("outcome", "transient_error")]),
    );
    let needs_reauth = m("orp_tokens", &[("state", "needs_reauth")]);
    println!(
        "proxy metrics: refresh success {ok}, rejected {rejected}, transient {transient}; replayed {}, not replayable {}; coalesced {}; tokens needing re-auth {needs_reauth}",
        m("orp_replay_total", &[("outcome", "replayed")]),
        m("orp_replay_total", &[("outcome", "not_replayable")]),
        m("orp_refresh_coalesced_total", &[]),
    );
    if rejected > 0.0 || transient > 0.0 || needs_reauth > 0.0 {
        failures.push(
            "refreshes failed or an account needs re-authorisation (a lost rotation?)".into(),
        );
    }
    if let Some(cpu) = cpu_secs {
        println!(
            "sidecar CPU: {cpu:.1} s ({:.0} % of one core over the run)",
            cpu / ran.max(1.0) * 100.0
        );
    }
    let lines: Vec<String> = stderr.lines().map(strip_ansi).collect();
    println!(
        "sidecar stderr: {} lines ({} WARN, {} ERROR) in {}; exit after SIGTERM in {exit_secs:.1} s",
        lines.len(),
        lines.iter().filter(|l| l.contains(" WARN ")).count(),
        lines.iter().filter(|l| l.contains(" ERROR ")).count(),
        log_path.display()
    );
    // Its distinct messages (without the timestamp), most frequent first.
    let leaked = failures.iter().any(|f| f.contains("secret"));
    let mut distinct: BTreeMap<String, u64> = BTreeMap::new();
    for l in &lines {
        let msg = l.split_once(' ').map(|x| x.1).unwrap_or(l).trim();
        *distinct.entry(msg.chars().take(200).collect()).or_default() += 1;
    }
    let mut distinct: Vec<_> = distinct.into_iter().collect();
    distinct.sort_by_key(|d| std::cmp::Reverse(d.1));
    for (msg, n) in distinct.iter().take(if leaked { 0 } else { 8 }) {
        println!("  {n:>6} x {msg}");
    }
    println!("samples: {}", csv_path.display());
    if failures.is_empty() {
        println!("verdict: PASS");
        Ok(true)
    } else {
        println!("verdict: FAIL");
        for f in &failures {
            println!("  - {f}");
        }
        Ok(false)
    }
}
