//! Black-box tests of the listeners' bounds (SPEC 4.2 `[server]`, 4.6 `orp_connections`, 5):
//! the real binary in front of the crate's fake GitHub API and refresh backend, attacked over
//! raw TCP by idle, slow-header and HTTP/2 preface-only connections while a well-behaved caller
//! and `/healthz` keep being served; idle keep-alive, a client that stops reading, the
//! connection limit, SIGTERM with a half-sent request head, the connection gauge, the descriptor
//! limit and accept errors.
//!
//! The tests that measure time run one at a time ([`serial`]): two floods at once on two shared
//! cores would measure the machine, not the proxy.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use oauth_refresh_proxy::Provider;
use support::config::{backend_refresh, octo_route};
use support::http_client::{h2c_client, read_raw_response, request};
use support::process::{
    assert_no_secret_in_logs, drain, spawn_piped, text, KillOnDrop, Proxy, TempDir, BIN,
};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BACKEND_ENV: &str = "ORP_TEST_BACKEND_TOKEN";

/// The child's log filter: everything of ours at trace (for the secret check), hyper's and h2's
/// per-read trace lines left out (thousands of connections would drown the machine in them).
const LOG: &str = "trace,hyper=info,hyper_util=info,h2=info";

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty client SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
const SLOW_HEAD: &[u8] =
    b"GET /github/user HTTP/1.1\r\nHost: proxy\r\nUser-Agent: slowloris\r\n\r\n";

/// One timing-sensitive test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// This test process needs thousands of descriptors too: soft limit up to the hard one.
fn raise_own_nofile(needed: u64) {
    let now = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        now >= needed,
        "RLIMIT_NOFILE is {now}; this test needs {needed} descriptors"
    );
}

// ---------------------------------------------------------------------------------------------
// The fakes and the proxy.
// ---------------------------------------------------------------------------------------------

struct World {
    realm: Arc<Realm>,
    backend: String,
    github: SocketAddr,
    refresh: String,
    access: String,
}

impl World {
    async fn new(name: &str) -> World {
        let realm = Realm::new(&format!("ls{name}"));
        let backend = start_backend(realm.clone()).await;
        let github = start_api(realm.clone(), Provider::GitHub).await;
        let refresh = realm.new_refresh_token();
        let access = realm.new_access_token(&refresh);
        World {
            realm,
            backend,
            github,
            refresh,
            access,
        }
    }

    /// The config: loopback listeners on port 0, `[server]` with `server` keys, the fake
    /// GitHub behind `/github` (default account `octo`, a valid access token).
    fn config(&self, server: &str) -> String {
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[server]\n{server}\n\n{}\n{}",
            backend_refresh(&self.backend, BACKEND_ENV),
            octo_route(
                &format!("http://{}", self.github),
                &self.refresh,
                &self.access,
                now_secs() + 3600
            ),
        )
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RUST_BACKTRACE", "1".into()),
            ("RUST_LOG", LOG.into()),
            (BACKEND_ENV, self.realm.backend_token.clone().unwrap()),
        ]
    }

    async fn start(&self, server: &str) -> Proxy {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Proxy::start(&self.config(server), &[], &env).await
    }

    fn secrets(&self) -> Vec<String> {
        let mut s = self.realm.secrets();
        s.push(self.refresh.clone());
        s.push(self.access.clone());
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP.
// ---------------------------------------------------------------------------------------------

/// Reads one response from `s`: (status, head, body); bounded by [`WAIT`].
async fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let peer = s.peer_addr().ok();
    let fut = async {
        read_raw_response(
            s,
            |head, read, n| match head.content_length {
                Some(len) => read >= head.body_start + len,
                None => n == 0,
            },
            |buf| format!("{peer:?} closed the connection before a full response: {buf:?}"),
        )
        .await
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("no response within {WAIT:?}"))
}

/// `GET path` on a fresh connection (`Connection: close`): (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .unwrap();
    let raw = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(raw.as_bytes()).await.unwrap();
    let (status, _, body) = read_response(&mut s).await;
    (status, body)
}

/// `GET path` on the keep-alive connection `s`: the status.
async fn get_on(s: &mut TcpStream, path: &str) -> u16 {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: proxy\r\n\r\n");
    s.write_all(raw.as_bytes()).await.unwrap();
    read_response(s).await.0
}

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .unwrap()
}

/// Reads (and drops) what the peer sends until it closes (EOF or reset); when it did. Bounded
/// by [`WAIT`].
async fn closed(s: &mut TcpStream) -> Instant {
    let fut = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("the proxy kept the connection open for {WAIT:?}"))
}

/// Sends `prefix` at once, then `drip` one byte every `every`, until the peer closes; when it
/// did. Bounded by [`WAIT`].
async fn slow_writer(s: TcpStream, prefix: &[u8], drip: &[u8], every: Duration) -> Instant {
    let (mut rd, mut wr) = s.into_split();
    let fut = async {
        if wr.write_all(prefix).await.is_err() {
            return Instant::now();
        }
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        let mut next = 0;
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return Instant::now(),
                    Ok(_) => {}
                },
                _ = tick.tick() => {
                    if next < drip.len() {
                        if wr.write_all(&drip[next..next + 1]).await.is_err() {
                            return Instant::now();
                        }
                        next += 1;
                    }
                }
            }
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("the proxy kept a slow connection open for {WAIT:?}"))
}

/// `text` without its ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\x1b') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        rest = match rest.find('m') {
            Some(end) => &rest[end + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// The admin listener's `/metrics`, scraped on a fresh connection.
async fn scrape(admin: SocketAddr) -> String {
    let (status, body) = get(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `orp_connections{listener}` in `text`.
fn connections(text: &str, listener: &str) -> u64 {
    let key = format!("orp_connections{{listener=\"{listener}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .unwrap_or_else(|| panic!("no {key} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Scrapes until `orp_connections` shows `proxy` and `admin` (the scrape's own connection
/// included), bounded by [`WAIT`]: the proxy accepts a connection a moment after `connect`
/// returns. Returns the last exposition.
async fn await_connections(admin: SocketAddr, proxy: u64, admin_n: u64) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(admin).await;
        let now = (connections(&text, "proxy"), connections(&text, "admin"));
        if now == (proxy, admin_n) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "orp_connections stayed at {now:?}, expected ({proxy}, {admin_n})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A well-behaved caller and the health check, while an attack goes on.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Served {
    proxied: Vec<(u16, Duration)>,
    health: Vec<(u16, Duration)>,
}

/// Until `stop`, every 100 ms: `GET /github/user` through the proxy (HTTP/1.1, or h2c with
/// `h2`) on a fresh connection, and `GET /healthz` on the admin listener.
fn caller(
    proxy: SocketAddr,
    admin: SocketAddr,
    h2: bool,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Served> {
    tokio::spawn(async move {
        let mut served = Served::default();
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            let status = if h2 {
                let url = format!("http://{proxy}/github/user");
                request(&h2c_client(), "GET", &url, &[], empty())
                    .await
                    .status
                    .as_u16()
            } else {
                get(proxy, "/github/user").await.0
            };
            served.proxied.push((status, t.elapsed()));
            let t = Instant::now();
            served
                .health
                .push((get(admin, "/healthz").await.0, t.elapsed()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        served
    })
}

/// Waits until the proxy has accepted all `n` attackers: `orp_connections{proxy}` reaches `n`
/// (`n + 1` with the caller's connection). Bounded by [`WAIT`]; fails if the first ones are
/// closed before the last are accepted.
async fn assert_all_open(admin: SocketAddr, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let open = connections(&scrape(admin).await, "proxy");
        if open >= n {
            assert!(open <= n + 1, "orp_connections{{proxy}} = {open}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "orp_connections{{proxy}} never reached {n}: {open}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every answer 200 within 1 s, at least `min` of each kind.
fn assert_served(s: &Served, min: usize) {
    let slowest = |v: &[(u16, Duration)]| v.iter().map(|(_, d)| *d).max();
    eprintln!(
        "served during the attack: {} proxied (slowest {:?}), {} healthz (slowest {:?})",
        s.proxied.len(),
        slowest(&s.proxied),
        s.health.len(),
        slowest(&s.health)
    );
    for (what, answers) in [("proxied", &s.proxied), ("healthz", &s.health)] {
        assert!(
            answers.len() >= min,
            "{what}: only {} answers during the attack",
            answers.len()
        );
        for (status, took) in answers.iter() {
            assert_eq!(*status, 200, "{what}");
            assert!(
                *took < Duration::from_secs(1),
                "{what}: an answer took {took:?}"
            );
        }
    }
}

/// Every attacker's lifetime (accepted → closed) within [`timeout` - 100 ms,
/// `timeout` + 1 s]; returns (shortest, longest).
fn assert_lifetimes(what: &str, lifetimes: &[Duration], timeout: Duration) -> (Duration, Duration) {
    let min = *lifetimes.iter().min().unwrap();
    let max = *lifetimes.iter().max().unwrap();
    assert!(
        min >= timeout - Duration::from_millis(100),
        "{what}: a connection was closed after {min:?}, before the {timeout:?} timeout"
    );
    assert!(
        max <= timeout + Duration::from_secs(1),
        "{what}: a connection stayed open {max:?}, past the {timeout:?} timeout + 1 s"
    );
    (min, max)
}

/// Opens `n` connections, [`BATCH`] at a time (well under the listen queue of 1 024), each
/// then watched by `watch` (which sends what it sends) until the proxy closes it; returns once
/// all are open, with each connection's lifetime from its `connect` to come.
async fn flood<F, Fut>(
    addr: SocketAddr,
    n: usize,
    watch: F,
) -> Vec<tokio::task::JoinHandle<Duration>>
where
    F: Fn(TcpStream) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Instant> + Send + 'static,
{
    let mut tasks = Vec::with_capacity(n);
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::unbounded_channel();
    for start in (0..n).step_by(BATCH) {
        let batch = BATCH.min(n - start);
        for _ in 0..batch {
            let watch = watch.clone();
            let opened_tx = opened_tx.clone();
            tasks.push(tokio::spawn(async move {
                let s = connect(addr).await;
                let opened = Instant::now();
                let _ = opened_tx.send(());
                watch(s).await - opened
            }));
        }
        for _ in 0..batch {
            tokio::time::timeout(WAIT, opened_rx.recv())
                .await
                .expect("connected in time")
                .expect("a connection task failed");
        }
    }
    tasks
}

/// Connections opened at once by [`flood`].
const BATCH: usize = 250;

async fn lifetimes(tasks: Vec<tokio::task::JoinHandle<Duration>>) -> Vec<Duration> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Floods.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_flood_is_closed_in_time_while_callers_are_served() {
    let _serial = serial().await;
    raise_own_nofile(6_000);
    let w = World::new("flood1").await;
    let proxy = w
        .start("header_read_timeout = \"3s\"\nidle_timeout = \"3s\"")
        .await;
    let (p, a) = (proxy.proxy_addr(), proxy.admin_addr());
    assert_eq!(get(p, "/github/user").await.0, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let good = caller(p, a, false, stop.clone());

    let t = Instant::now();
    let idle = flood(p, 2_000, |mut s| async move { closed(&mut s).await }).await;
    let slow = flood(p, 500, |s| {
        slow_writer(s, b"", SLOW_HEAD, Duration::from_millis(300))
    })
    .await;
    eprintln!("2 500 connections opened in {:?}", t.elapsed());
    // All 2 500 are open at once (plus at most the caller's own connection).
    assert_all_open(a, 2_500).await;

    let idle = lifetimes(idle).await;
    let slow = lifetimes(slow).await;
    stop.store(true, Ordering::SeqCst);
    let served = good.await.unwrap();

    let timeout = Duration::from_secs(3);
    let (imin, imax) = assert_lifetimes("idle", &idle, timeout);
    let (smin, smax) = assert_lifetimes("slow header", &slow, timeout);
    eprintln!("idle closed after {imin:?}..{imax:?}, slow headers after {smin:?}..{smax:?}");
    assert_served(&served, 10);
    // Every proxied answer reached the fake exactly once (plus the first request).
    assert_eq!(w.realm.api_calls.get(), served.proxied.len() as u64 + 1);
    await_connections(a, 0, 1).await;
    proxy.assert_no_secret_in_stderr(&w.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_preface_only_and_slow_headers_flood_is_closed_in_time_while_callers_are_served() {
    let _serial = serial().await;
    raise_own_nofile(6_000);
    let w = World::new("flood2").await;
    let proxy = w
        .start("header_read_timeout = \"3s\"\nidle_timeout = \"3s\"")
        .await;
    let (p, a) = (proxy.proxy_addr(), proxy.admin_addr());

    let stop = Arc::new(AtomicBool::new(false));
    let good = caller(p, a, true, stop.clone());

    // The preface and nothing else.
    let silent = flood(p, 2_000, |mut s| async move {
        s.write_all(PREFACE).await.unwrap();
        closed(&mut s).await
    })
    .await;
    // The preface, SETTINGS, and a 100-byte HEADERS frame whose payload comes a byte at a time.
    let mut prefix = PREFACE.to_vec();
    prefix.extend_from_slice(SETTINGS);
    prefix.extend_from_slice(&[0, 0, 100, 1, 0x5, 0, 0, 0, 1]);
    let prefix: &'static [u8] = prefix.leak();
    let slow = flood(p, 500, |s| {
        slow_writer(s, prefix, &[0u8; 100], Duration::from_millis(300))
    })
    .await;
    assert_all_open(a, 2_500).await;

    let silent = lifetimes(silent).await;
    let slow = lifetimes(slow).await;
    stop.store(true, Ordering::SeqCst);
    let served = good.await.unwrap();

    let timeout = Duration::from_secs(3);
    let (pmin, pmax) = assert_lifetimes("h2 preface only", &silent, timeout);
    let (smin, smax) = assert_lifetimes("h2 slow HEADERS", &slow, timeout);
    eprintln!(
        "preface-only closed after {pmin:?}..{pmax:?}, slow HEADERS after {smin:?}..{smax:?}"
    );
    assert_served(&served, 10);
    assert_eq!(w.realm.api_calls.get(), served.proxied.len() as u64);
    await_connections(a, 0, 1).await;
    proxy.assert_no_secret_in_stderr(&w.secrets());
}

// ---------------------------------------------------------------------------------------------
// Idle connections.
// ---------------------------------------------------------------------------------------------

/// An h2c connection (hyper's client) that made one request: when its answer ended, and the
/// connection task, which ends when the proxy closes the connection (the connection lives as
/// long as its [`H2Sender`]).
async fn h2_after_one_request(
    addr: SocketAddr,
) -> (Instant, tokio::task::JoinHandle<()>, H2Sender) {
    let io = TokioIo::new(connect(addr).await);
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(format!("http://{addr}/github/user"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    (Instant::now(), task, send)
}

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_idle_timeout_h1_and_h2() {
    let _serial = serial().await;
    let w = World::new("idle").await;
    // An idle timeout longer than the head timeout: idle connections live until idle_timeout.
    let proxy = w
        .start("header_read_timeout = \"1s\"\nidle_timeout = \"3s\"")
        .await;
    let p = proxy.proxy_addr();

    // HTTP/1.1 keep-alive after one request.
    let mut h1 = connect(p).await;
    assert_eq!(get_on(&mut h1, "/github/user").await, 200);
    let h1_done = Instant::now();
    // HTTP/1.1 after one request, then one byte of the next head after 500 ms: from that
    // byte on, the head timeout applies.
    let mut h1_head = connect(p).await;
    assert_eq!(get_on(&mut h1_head, "/github/user").await, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    h1_head.write_all(b"G").await.unwrap();
    let first_byte = Instant::now();
    // HTTP/2 after one request.
    let (h2_done, h2, _sender) = h2_after_one_request(p).await;

    // Watched side by side: each is timed when it closes.
    let h1 = tokio::spawn(async move { closed(&mut h1).await - h1_done });
    let h1_head = tokio::spawn(async move { closed(&mut h1_head).await - first_byte });
    tokio::time::timeout(WAIT, h2).await.unwrap().unwrap();
    let h2_closed = h2_done.elapsed();
    let h1_closed = h1.await.unwrap();
    let h1_head_closed = h1_head.await.unwrap();
    eprintln!("h1 idle closed after {h1_closed:?}, h1 half head after {h1_head_closed:?}, h2 idle after {h2_closed:?}");

    let idle = Duration::from_secs(3);
    for (what, took) in [("h1 keep-alive", h1_closed), ("h2", h2_closed)] {
        assert!(
            took >= idle - Duration::from_millis(100) && took <= idle + Duration::from_secs(1),
            "{what}: idle connection closed after {took:?}, expected {idle:?} (+1 s)"
        );
    }
    let head = Duration::from_secs(1);
    assert!(
        h1_head_closed >= head - Duration::from_millis(100)
            && h1_head_closed <= head + Duration::from_secs(1),
        "h1 half-sent second head closed after {h1_head_closed:?}, expected {head:?} (+1 s)"
    );
    assert_eq!(w.realm.api_calls.get(), 3);
    proxy.assert_no_secret_in_stderr(&w.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_response_is_closed_after_idle_timeout() {
    let _serial = serial().await;
    let w = World::new("reader").await;
    let proxy = w
        .start("header_read_timeout = \"5s\"\nidle_timeout = \"2s\"")
        .await;
    let (p, a) = (proxy.proxy_addr(), proxy.admin_addr());
    // 64 MiB, far more than the socket buffers hold; never read.
    let size = 64 << 20;
    let mut s = connect(p).await;
    let raw = format!("GET /github/download?bytes={size} HTTP/1.1\r\nHost: proxy\r\n\r\n");
    s.write_all(raw.as_bytes()).await.unwrap();
    let sent = Instant::now();
    await_connections(a, 1, 1).await;
    await_connections(a, 0, 1).await;
    let took = sent.elapsed();
    eprintln!("a stalled reader was closed {took:?} after its request");
    let idle = Duration::from_secs(2);
    assert!(
        took >= idle - Duration::from_millis(100) && took <= idle + Duration::from_secs(2),
        "closed after {took:?}, expected idle_timeout {idle:?} after the writes blocked"
    );
    // What had reached the socket buffers, and no more.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap() {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < size, "the whole body arrived: {got} bytes");
    assert_eq!(w.realm.api_calls.get(), 1);
    proxy.assert_no_secret_in_stderr(&w.secrets());
}

// ---------------------------------------------------------------------------------------------
// The connection limit.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_connections_are_closed_and_healthz_answers() {
    let _serial = serial().await;
    let w = World::new("limit").await;
    let proxy = w
        .start("header_read_timeout = \"5s\"\nidle_timeout = \"1s\"\nmax_connections = 50")
        .await;
    let (p, a) = (proxy.proxy_addr(), proxy.admin_addr());

    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(connect(p).await);
    }
    await_connections(a, 50, 1).await;

    // The 51st: closed at once, without a byte.
    let mut extra = connect(p).await;
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, extra.read(&mut buf))
        .await
        .unwrap();
    let took = t.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the 51st connection got {read:?}"
    );
    assert!(
        took < Duration::from_secs(1),
        "the 51st connection was closed after {took:?}"
    );

    // A held connection is served; the admin listener answers; still exactly 50 open.
    assert_eq!(get_on(&mut held[0], "/github/user").await, 200);
    assert_eq!(get(a, "/healthz").await, (200, "ok".to_string()));
    await_connections(a, 50, 1).await;

    // Once the proxy has closed the held ones (head timeout; idle timeout for the one that
    // made a request), new connections are served again.
    for s in &mut held {
        closed(s).await;
    }
    await_connections(a, 0, 1).await;
    assert_eq!(get(p, "/github/user").await.0, 200);
    assert_eq!(w.realm.api_calls.get(), 2);

    let logs = plain(&proxy.assert_no_secret_in_stderr(&w.secrets()));
    let limit_lines = logs
        .lines()
        .filter(|l| l.contains("connection limit reached"))
        .collect::<Vec<_>>();
    assert_eq!(limit_lines.len(), 1, "{limit_lines:?}");
    assert!(
        limit_lines[0].contains("max_connections=50"),
        "{}",
        limit_lines[0]
    );
}

// ---------------------------------------------------------------------------------------------
// Shutdown.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_not_delayed_by_half_sent_heads_or_idle_connections() {
    let _serial = serial().await;
    let w = World::new("term").await;
    let mut proxy = w
        .start("header_read_timeout = \"5s\"\nidle_timeout = \"60s\"")
        .await;
    let (p, a) = (proxy.proxy_addr(), proxy.admin_addr());

    // Silent; a half-sent first head; HTTP/1.1 idle after a request; a half-sent second head;
    // h2c idle after a request; the h2 preface alone.
    let silent = connect(p).await;
    let mut half = connect(p).await;
    half.write_all(b"GET /github/user HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut keep = connect(p).await;
    assert_eq!(get_on(&mut keep, "/github/user").await, 200);
    let mut second = connect(p).await;
    assert_eq!(get_on(&mut second, "/github/user").await, 200);
    second.write_all(b"GET /git").await.unwrap();
    let (_, h2, _sender) = h2_after_one_request(p).await;
    let mut preface = connect(p).await;
    preface.write_all(PREFACE).await.unwrap();
    await_connections(a, 6, 1).await;

    let t = Instant::now();
    proxy.terminate();
    let status = proxy.wait_exit(WAIT).await;
    let took = t.elapsed();
    eprintln!("exited {took:?} after SIGTERM");
    assert!(status.success(), "{status:?}");
    // header_read_timeout is 5 s and the drain timeout 30 s: neither was waited for.
    assert!(
        took < Duration::from_millis(2_500),
        "SIGTERM took {took:?} with idle connections and half-sent heads open"
    );
    drop(silent);
    for s in [&mut half, &mut keep, &mut second, &mut preface] {
        closed(s).await;
    }
    tokio::time::timeout(WAIT, h2).await.unwrap().unwrap();
    assert_eq!(w.realm.api_calls.get(), 3);
    let logs = proxy.assert_no_secret_in_stderr(&w.secrets());
    assert!(logs.contains("stopped"), "{logs}");
}

// ---------------------------------------------------------------------------------------------
// The gauge.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orp_connections_counts_open_connections_per_listener() {
    let _serial = serial().await;
    let w = World::new("gauge").await;
    let proxy = w
        .start("header_read_timeout = \"30s\"\nidle_timeout = \"30s\"")
        .await;
    let (p, a) = (proxy.proxy_addr(), proxy.admin_addr());
    let text = await_connections(a, 0, 1).await;
    assert!(text.contains("# TYPE orp_connections gauge"), "{text}");

    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(connect(p).await);
    }
    let mut admin_held = Vec::new();
    for _ in 0..3 {
        admin_held.push(connect(a).await);
    }
    // 10 on the proxy; 3 held on the admin listener plus the scrape's own.
    await_connections(a, 10, 4).await;
    // A request on one of them changes nothing; closing 4 of them does.
    assert_eq!(get_on(&mut held[0], "/github/user").await, 200);
    await_connections(a, 10, 4).await;
    held.truncate(6);
    admin_held.clear();
    await_connections(a, 6, 1).await;
    held.clear();
    await_connections(a, 0, 1).await;
    proxy.assert_no_secret_in_stderr(&w.secrets());
}

// ---------------------------------------------------------------------------------------------
// The descriptor limit.
// ---------------------------------------------------------------------------------------------

/// The binary started by `sh` with `ulimit -Hn hard -Sn soft`; killed on drop.
struct Limited {
    child: KillOnDrop,
    proxy: SocketAddr,
    admin: SocketAddr,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl Limited {
    fn start(w: &World, server: &str, soft: u64, hard: u64) -> Limited {
        let dir = TempDir::new("nofile");
        let path = dir.write("proxy.toml", &w.config(server));
        let script =
            format!("ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" serve --config \"$1\"");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).arg(BIN).arg(&path);
        for (k, v) in w.env() {
            cmd.env(k, v);
        }
        let mut child = KillOnDrop(spawn_piped(&mut cmd));
        let (stderr, stderr_thread) = drain(child.0.stderr.take().unwrap());
        let stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addr = |prefix: &str| -> SocketAddr {
            let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
                let _ = child.0.kill();
                panic!("no `{prefix}` line; stderr: {}", text(&stderr))
            });
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("unexpected line {line:?}"))
                .parse()
                .unwrap()
        };
        let proxy = addr("proxy listening on http://");
        let admin = addr("admin listening on http://");
        Limited {
            child,
            proxy,
            admin,
            stderr,
            stderr_thread: Some(stderr_thread),
            _dir: dir,
        }
    }

    /// Kills the process and returns its whole stderr.
    fn stop(&mut self) -> String {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        if let Some(t) = self.stderr_thread.take() {
            t.join().unwrap();
        }
        self.stderr()
    }

    /// `(soft, hard)` "Max open files" of the running process.
    fn nofile(&self) -> (u64, u64) {
        let limits =
            std::fs::read_to_string(format!("/proc/{}/limits", self.child.0.id())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let mut n = line
            .split_whitespace()
            .filter_map(|w| w.parse::<u64>().ok());
        (n.next().unwrap(), n.next().unwrap())
    }

    /// User + system CPU time, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.0.id())).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after_name.split_whitespace().collect();
        // Fields 14 and 15 of stat(5); the state (field 3) is f[0].
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    fn stderr(&self) -> String {
        text(&self.stderr)
    }

    /// The stderr read so far once it contains `needle`, waiting at most `WAIT`: stdout and
    /// stderr are separate pipes drained by separate threads, so a line logged before the
    /// "listening" lines may still be in flight when they arrive.
    fn stderr_once_it_has(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.stderr();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {WAIT:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_descriptor_limit_is_raised_and_max_connections_clamped_to_fit() {
    let _serial = serial().await;
    raise_own_nofile(3_000);
    let w = World::new("nofile").await;
    // The limit of the report: 1024.
    let proxy = Limited::start(&w, "header_read_timeout = \"10s\"", 512, 1024);
    assert_eq!(
        proxy.nofile(),
        (1024, 1024),
        "soft limit raised to the hard one"
    );
    // (1024 - 256 for the admin listener - 256 reserved) / 2 (an upstream socket each) = 256.
    let line = proxy
        .stderr_once_it_has("does not fit")
        .lines()
        .find(|l| l.contains("does not fit"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no clamp warning: {}", proxy.stderr()));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains(
            "server.max_connections = 10000 does not fit under the open-descriptor limit of 1024"
        ) && line.contains("clamped to 256"),
        "{line}"
    );

    // 1 100 connections, as many as locked out /healthz before: the first 256 are kept, the
    // rest closed at once, and the admin listener still has descriptors to answer.
    let mut watchers = Vec::new();
    for _ in 0..1_100 {
        let mut s = connect(proxy.proxy).await;
        watchers.push(tokio::spawn(async move {
            let mut b = [0u8; 1];
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => None,
                Ok(Ok(n)) => panic!("{n} bytes from the proxy on a silent connection"),
                Err(_) => Some(s),
            }
        }));
    }
    assert_eq!(get(proxy.admin, "/healthz").await, (200, "ok".to_string()));
    assert_eq!(connections(&scrape(proxy.admin).await, "proxy"), 256);
    let mut kept = Vec::new();
    for (i, w) in watchers.into_iter().enumerate() {
        if let Some(s) = w.await.unwrap() {
            kept.push((i, s));
        }
    }
    let indices: Vec<usize> = kept.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, (0..256).collect::<Vec<_>>(), "kept: the first 256");
    drop(kept);
    let mut proxy = proxy;
    let logs = proxy.stop();
    assert_eq!(logs.matches("does not fit").count(), 1, "logged once");
    assert_no_secret_in_logs(&[logs], &w.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_back_off_and_are_logged_at_most_once_a_second() {
    let _serial = serial().await;
    raise_own_nofile(3_000);
    let w = World::new("emfile").await;
    // 200 descriptors: max_connections is clamped to 1, but the admin listener's own budget
    // (256) does not fit, so flooding it runs the process out of descriptors.
    let proxy = Limited::start(&w, "header_read_timeout = \"30s\"", 200, 200);
    proxy.stderr_once_it_has("clamped to 1");
    let mut flood = Vec::new();
    for _ in 0..400 {
        flood.push(connect(proxy.admin).await);
    }
    // Out of descriptors now: wait for the first report, then watch for 3 s.
    let deadline = Instant::now() + WAIT;
    while !proxy.stderr().contains("accept failed") {
        assert!(
            Instant::now() < deadline,
            "no accept error: {}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = proxy.stderr().matches("accept failed").count();
    let ticks = proxy.cpu_ticks();
    let watched = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = proxy.cpu_ticks() - ticks;
    let window = watched.elapsed();
    let logs = plain(&proxy.stderr());
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("accept failed"))
        .collect();
    let during = lines.len() - before;
    eprintln!(
        "{during} accept-error lines in {window:?}, {used} CPU ticks; last: {:?}",
        lines.last()
    );
    // At most one a second (one more for a window that starts just before a line).
    let most = window.as_secs_f64().ceil() as usize + 1;
    assert!(
        (2..=most).contains(&during),
        "{during} lines in {window:?}:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.last().unwrap().contains("Too many open files"),
        "{lines:?}"
    );
    let suppressed: u64 = lines
        .last()
        .unwrap()
        .split("suppressed=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no suppressed= count: {lines:?}"));
    // 50 ms back-off: at most about 20 errors a second (fewer when the machine is busy), one
    // of them logged and the others counted.
    assert!((1..=25).contains(&suppressed), "suppressed={suppressed}");
    // No spinning: well under a tenth of a core (a busy loop would use 300 ticks at 100 Hz).
    assert!(
        used < 30,
        "{used} CPU ticks in 3 s while out of descriptors"
    );

    // Descriptors back: the admin listener answers again.
    drop(flood);
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, _) = get(proxy.admin, "/healthz").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    let mut proxy = proxy;
    let logs = proxy.stop();
    assert_no_secret_in_logs(&[logs], &w.secrets());
}
