//! Black-box tests of the sidecar's request/response path under hostile or broken peers
//! (SPEC 4.2 `[upstream]`, 4.3, 4.4): the real binary, in front of test-local fakes. The
//! misbehaving upstreams are raw TCP listeners that speak just enough HTTP/1.1 to misbehave
//! exactly (silent after the request, a head then a stalled body, `Transfer-Encoding` beside
//! `Content-Length`, an echo of the request), plus a TLS HTTP/2 upstream; the well-behaved one is
//! the crate's fake GitHub API. Callers are raw TCP connections where the bytes matter, hyper
//! clients elsewhere. Every test counts at its fakes, bounds its waits by `WAIT`, and greps the
//! child's trace-level stderr for the tokens it used.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use oauth_refresh_proxy::Provider;
use support::http_client::{h2c_client, http1_client, request, HttpClient};
use support::process::{Proxy, TempDir};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::rustls;

/// Slack allowed past a configured bound before a test calls it missed.
const SLACK: Duration = Duration::from_secs(1);

/// The body read bound the stalled-body test configures (`[server] body_read_timeout`).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 upstream that misbehaves on purpose.
// ---------------------------------------------------------------------------------------------

/// What a [`RawUpstream`] does after reading a request head.
#[derive(Clone)]
enum Behaviour {
    /// Nothing: never answers (keeps reading until the proxy lets go).
    Silent,
    /// Writes these bytes, then sends nothing more (keeps reading until the proxy lets go).
    Stall(Bytes),
    /// Writes this whole response and closes.
    Answer(Bytes),
    /// Answers 200 with the request head as the body, and closes.
    Echo,
}

/// What a [`RawUpstream`] saw.
#[derive(Clone, Debug, Default)]
struct Saw {
    connections: u64,
    /// Request heads read.
    requests: u64,
    /// Connections the proxy closed (EOF or reset).
    closed: u64,
    heads: Vec<String>,
    /// Every byte after the first request head, over all connections.
    after_head: Vec<u8>,
}

#[derive(Clone)]
struct RawUpstream {
    addr: SocketAddr,
    saw: Arc<watch::Sender<Saw>>,
}

impl RawUpstream {
    async fn start(behaviour: Behaviour) -> RawUpstream {
        RawUpstream::start_seq(vec![behaviour]).await
    }

    /// A fake whose n-th connection behaves as `seq[n]` (the last one for all after it).
    async fn start_seq(seq: Vec<Behaviour>) -> RawUpstream {
        RawUpstream::start_for(|_| seq).await
    }

    /// [`start_seq`](RawUpstream::start_seq) with the behaviours made from the fake's own
    /// address (for answers that name it).
    async fn start_for(make: impl FnOnce(SocketAddr) -> Vec<Behaviour>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seq = make(addr);
        let saw = Arc::new(watch::channel(Saw::default()).0);
        let state = saw.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let behaviour = seq[n.min(seq.len() - 1)].clone();
                tokio::spawn(raw_connection(stream, behaviour, state.clone()));
            }
        });
        RawUpstream { addr, saw }
    }

    fn saw(&self) -> Saw {
        self.saw.borrow().clone()
    }

    /// Waits (bounded by [`WAIT`]) until `what` holds of what the fake saw.
    async fn wait(&self, label: &str, what: impl Fn(&Saw) -> bool) -> Saw {
        let mut rx = self.saw.subscribe();
        let seen = match tokio::time::timeout(WAIT, rx.wait_for(|s| what(s))).await {
            Ok(Ok(s)) => s.clone(),
            _ => panic!("waited {WAIT:?} for {label}; saw {:?}", self.saw()),
        };
        seen
    }
}

async fn raw_connection(mut s: TcpStream, behaviour: Behaviour, saw: Arc<watch::Sender<Saw>>) {
    saw.send_modify(|s| s.connections += 1);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                saw.send_modify(|s| s.closed += 1);
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    saw.send_modify(|s| {
        s.requests += 1;
        s.heads.push(head.clone());
        s.after_head.extend_from_slice(&buf[end + 4..]);
    });
    match behaviour {
        Behaviour::Silent => {}
        Behaviour::Stall(bytes) => s.write_all(&bytes).await.unwrap(),
        Behaviour::Answer(bytes) => {
            let _ = s.write_all(&bytes).await;
            return;
        }
        Behaviour::Echo => {
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: message/http\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}",
                head.len()
            );
            let _ = s.write_all(answer.as_bytes()).await;
            return;
        }
    }
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                saw.send_modify(|s| s.closed += 1);
                return;
            }
            Ok(n) => saw.send_modify(|s| s.after_head.extend_from_slice(&chunk[..n])),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A port on 127.0.0.1 that nobody listens on (bound, then released).
async fn unused_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// A raw caller.
// ---------------------------------------------------------------------------------------------

/// One response as a raw caller read it.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"));
        v["error"]["code"].as_str().unwrap().to_string()
    }
}

/// A caller on a raw TCP connection to the proxy.
struct RawCaller(TcpStream);

impl RawCaller {
    async fn connect(addr: SocketAddr) -> RawCaller {
        RawCaller(TcpStream::connect(addr).await.unwrap())
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.unwrap();
    }

    /// Reads one response with a `Content-Length` body (the proxy's own answers, and what it
    /// forwards from the fake API), bounded by [`WAIT`].
    async fn response(&mut self) -> RawAnswer {
        self.response_within(WAIT).await
    }

    /// [`RawCaller::response`], bounded by `bound`.
    async fn response_within(&mut self, bound: Duration) -> RawAnswer {
        let fut = async {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                if let Some(end) = find(&buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let mut answer = RawAnswer {
                        status: head
                            .split_whitespace()
                            .nth(1)
                            .and_then(|s| s.parse().ok())
                            .unwrap_or_else(|| panic!("no status line: {head}")),
                        head,
                        body: Vec::new(),
                    };
                    let len: usize = answer
                        .header("content-length")
                        .unwrap_or_else(|| panic!("no content-length: {}", answer.head))
                        .parse()
                        .unwrap();
                    if buf.len() >= end + 4 + len {
                        answer.body = buf[end + 4..end + 4 + len].to_vec();
                        return answer;
                    }
                }
                let n = self.0.read(&mut chunk).await.unwrap_or(0);
                assert!(n > 0, "connection closed before a full response: {buf:?}");
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(bound, fut)
            .await
            .unwrap_or_else(|_| panic!("raw caller: no answer within {bound:?}"))
    }
}

// ---------------------------------------------------------------------------------------------
// The sidecar's config.
// ---------------------------------------------------------------------------------------------

/// One account's tokens, minted by the fake API's realm (so the fake GitHub API accepts them).
struct Creds {
    realm: Arc<Realm>,
    refresh: String,
    access: String,
}

impl Creds {
    fn new(name: &str) -> Creds {
        let realm = Realm::new(&format!("proto{name}"));
        let refresh = realm.new_refresh_token();
        let access = realm.new_access_token(&refresh);
        Creds {
            realm,
            refresh,
            access,
        }
    }

    fn secrets(&self, more: &[&str]) -> Vec<String> {
        let mut s = vec![self.refresh.clone(), self.access.clone()];
        s.extend(more.iter().map(|m| m.to_string()));
        s
    }
}

/// A config with `root` keys, `[upstream]` keys, and one GitHub route per `(prefix, upstream)`,
/// each with the default account `octo` (valid for a day: no refresh is ever needed, and the
/// backend URL leads nowhere).
fn config(t: &Creds, root: &str, upstream: &str, routes: &[(&str, String)]) -> String {
    let mut c = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"\"\n{root}\n\n[refresh]\nbackend_url = \"http://127.0.0.1:9\"\n\n[upstream]\n{upstream}\n\n"
    );
    for (prefix, up) in routes {
        c.push_str(&format!(
            "[[route]]\nprefix = \"{prefix}\"\nupstream = \"{up}\"\nprovider = \"github\"\ndefault_account = \"octo\"\n\n"
        ));
    }
    c.push_str(&format!(
        "[[account]]\nprovider = \"github\"\nid = \"octo\"\nrefresh_token = \"{}\"\naccess_token = \"{}\"\nexpires_at = {}\n",
        t.refresh,
        t.access,
        now_secs() + 86_400
    ));
    c
}

/// [`config`], refreshing at the fake backend `backend` (its bearer in
/// `ORP_TEST_BACKEND_TOKEN`).
fn config_with_backend(
    t: &Creds,
    backend: &str,
    upstream: &str,
    routes: &[(&str, String)],
) -> String {
    config(t, "", upstream, routes).replace(
        "backend_url = \"http://127.0.0.1:9\"",
        &format!("backend_url = \"{backend}\"\nbackend_token = \"env:ORP_TEST_BACKEND_TOKEN\""),
    )
}

/// `[upstream]` keys with every bound at 1 s.
const ONE_SECOND_BOUNDS: &str =
    "connect_timeout = \"1s\"\nresponse_timeout = \"1s\"\nbody_idle_timeout = \"1s\"";

async fn get(client: &HttpClient, url: &str) -> support::http_client::Answer {
    request(client, "GET", url, &[], empty()).await
}

/// The fake GitHub API of `t`'s realm, and a [`config`] (`root` keys, [`ONE_SECOND_BOUNDS`])
/// routing `/github` to it.
async fn github_config(t: &Creds, root: &str) -> (SocketAddr, String) {
    let github = start_api(t.realm.clone(), Provider::GitHub).await;
    let cfg = config(
        t,
        root,
        ONE_SECOND_BOUNDS,
        &[("/github", format!("http://{github}"))],
    );
    (github, cfg)
}

/// `GET /github/user` through `proxy` with `Proxy-Authorization: {value}`.
async fn get_with_proxy_authorization(
    client: &HttpClient,
    proxy: &Proxy,
    value: &str,
) -> support::http_client::Answer {
    request(
        client,
        "GET",
        &proxy.url("/github/user"),
        &[("proxy-authorization", value)],
        empty(),
    )
    .await
}

/// Asserts that an answer bounded at 1 s came after about 1 s: not early, not much later.
fn assert_about_one_second(took: Duration) {
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );
    assert!(
        took <= Duration::from_secs(1) + SLACK,
        "answered after {took:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Upstream bounds.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_is_504_within_the_response_timeout_and_sent_once() {
    let t = Creds::new("silent");
    let silent = RawUpstream::start(Behaviour::Silent).await;
    let cfg = config(
        &t,
        "",
        ONE_SECOND_BOUNDS,
        &[("/silent", format!("http://{}", silent.addr))],
    );
    let proxy = Proxy::start(&cfg, &[], &[]).await;

    let started = Instant::now();
    let a = get(&http1_client(), &proxy.url("/silent/user")).await;
    let took = started.elapsed();
    assert_eq!(a.status, 504, "{}", a.text());
    assert_eq!(a.code(), "upstream_timeout");
    assert_eq!(
        a.json()["error"]["message"],
        "no response head from the upstream within 1s"
    );
    assert_about_one_second(took);

    // The attempt was aborted (the proxy closed the connection) and never retried.
    let saw = silent
        .wait("the upstream connection closed", |s| s.closed == 1)
        .await;
    assert_eq!(saw.requests, 1, "{saw:?}");
    assert_eq!(saw.connections, 1, "{saw:?}");
    assert!(
        saw.heads[0].to_ascii_lowercase().contains(&format!(
            "authorization: bearer {}",
            t.access.to_ascii_lowercase()
        )),
        "the request went out authenticated: {}",
        saw.heads[0]
    );
    let logs = proxy.assert_no_secret_in_stderr(&t.secrets(&[]));
    assert!(logs.contains("no response head from the upstream within 1s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_a_401_is_bounded_by_the_response_timeout_too() {
    let t = Creds::new("replay");
    let backend = start_backend(t.realm.clone()).await;
    // First attempt: 401 (the token is refreshed and the request replayed); the replay: silence.
    let upstream = RawUpstream::start_seq(vec![
        Behaviour::Answer(Bytes::from_static(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )),
        Behaviour::Silent,
    ])
    .await;
    let cfg = config_with_backend(
        &t,
        &backend,
        ONE_SECOND_BOUNDS,
        &[("/replay", format!("http://{}", upstream.addr))],
    );
    let backend_token = t.realm.backend_token.clone().unwrap();
    let proxy = Proxy::start(&cfg, &[], &[("ORP_TEST_BACKEND_TOKEN", &backend_token)]).await;

    let started = Instant::now();
    let a = get(&http1_client(), &proxy.url("/replay/user")).await;
    let took = started.elapsed();
    assert_eq!(a.status, 504, "{}", a.text());
    assert_eq!(a.code(), "upstream_timeout");
    assert_eq!(t.realm.backend_calls.get(), 1);
    // The 401 and the refresh take milliseconds: the replay's own bound decides.
    assert_about_one_second(took);
    let saw = upstream
        .wait("the replay's connection closed", |s| {
            s.closed == 1 && s.requests == 2
        })
        .await;
    assert_eq!(
        saw.requests, 2,
        "the first attempt and one replay, nothing more"
    );
    assert_eq!(saw.connections, 2);
    let auth = |head: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix("authorization: "))
            .map(str::to_string)
    };
    assert_eq!(auth(&saw.heads[0]), Some(format!("Bearer {}", t.access)));
    let replay_auth = auth(&saw.heads[1]).unwrap();
    assert_ne!(
        replay_auth,
        format!("Bearer {}", t.access),
        "replayed with the new token"
    );
    let mut secrets = t.realm.secrets();
    secrets.extend(t.secrets(&[]));
    proxy.assert_no_secret_in_stderr(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_body_aborts_the_callers_response() {
    let t = Creds::new("stall");
    // Announces 100 bytes, sends 10.
    let sized = RawUpstream::start(Behaviour::Stall(Bytes::from_static(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
    )))
    .await;
    // Chunked: one chunk of 10, then nothing (no terminating chunk).
    let chunked = RawUpstream::start(Behaviour::Stall(Bytes::from_static(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n",
    )))
    .await;
    let cfg = config(
        &t,
        "",
        ONE_SECOND_BOUNDS,
        &[
            ("/sized", format!("http://{}", sized.addr)),
            ("/chunked", format!("http://{}", chunked.addr)),
        ],
    );
    let proxy = Proxy::start(&cfg, &[], &[]).await;

    let cases = [
        ("/sized/x", &sized, http1_client(), "HTTP/1.1"),
        ("/chunked/x", &chunked, http1_client(), "HTTP/1.1"),
        ("/sized/y", &sized, h2c_client(), "h2c"),
        ("/chunked/y", &chunked, h2c_client(), "h2c"),
    ];
    for (i, (path, fake, client, how)) in cases.iter().enumerate() {
        let req = Request::get(proxy.url(path)).body(empty()).unwrap();
        let resp = tokio::time::timeout(WAIT, client.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200, "{path} {how}");
        let head_at = Instant::now();
        let mut body = resp.into_body();
        let mut got = Vec::new();
        let outcome = loop {
            match tokio::time::timeout(WAIT, body.frame()).await {
                Err(_) => panic!("{path} {how}: the body neither ended nor failed in {WAIT:?}"),
                Ok(None) => break Ok(()),
                Ok(Some(Ok(f))) => got.extend_from_slice(&f.into_data().unwrap_or_default()),
                Ok(Some(Err(e))) => break Err(e),
            }
        };
        let took = head_at.elapsed();
        assert!(
            outcome.is_err(),
            "{path} {how}: the caller saw a complete body of {} bytes",
            got.len()
        );
        assert_eq!(got, b"0123456789", "{path} {how}");
        assert!(took >= Duration::from_millis(800), "{path} {how}: {took:?}");
        assert!(
            took <= Duration::from_secs(1) + SLACK,
            "{path} {how}: {took:?}"
        );
        // The upstream connection is let go too.
        let n = (i / 2 + 1) as u64;
        fake.wait("the upstream connection closed", |s| s.closed == n)
            .await;
    }
    assert_eq!(sized.saw().requests, 2);
    assert_eq!(chunked.saw().requests, 2);
    proxy.assert_no_secret_in_stderr(&t.secrets(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_response_body_is_not_cut() {
    // Chunks 300 ms apart for 2.4 s: longer than body_idle_timeout in total, never idle for it.
    let t = Creds::new("steady");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        for i in 0..8u8 {
            tick.tick().await;
            s.write_all(format!("1\r\n{}\r\n", (b'a' + i) as char).as_bytes())
                .await
                .unwrap();
        }
        s.write_all(b"0\r\n\r\n").await.unwrap();
        let _ = s.read(&mut buf).await;
    });
    let cfg = config(
        &t,
        "",
        ONE_SECOND_BOUNDS,
        &[("/steady", format!("http://{addr}"))],
    );
    let proxy = Proxy::start(&cfg, &[], &[]).await;
    let a = get(&http1_client(), &proxy.url("/steady/x")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "abcdefgh");
    proxy.assert_no_secret_in_stderr(&t.secrets(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_upstream_keeps_reading_outlasts_the_response_timeout() {
    // 8 chunks 300 ms apart: 2.4 s of upload against a 1 s response bound, which counts from the
    // last body byte the upstream took.
    let t = Creds::new("upload");
    let (_, cfg) = github_config(&t, "").await;
    let proxy = Proxy::start(&cfg, &[], &[]).await;
    let mut caller = RawCaller::connect(proxy.proxy_addr()).await;
    caller
        .send(b"POST /github/upload HTTP/1.1\r\nhost: proxy\r\ntransfer-encoding: chunked\r\n\r\n")
        .await;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    for i in 0..8u8 {
        tick.tick().await;
        caller
            .send(format!("1\r\n{}\r\n", (b'a' + i) as char).as_bytes())
            .await;
    }
    caller.send(b"0\r\n\r\n").await;
    let a = caller.response().await;
    assert!(started.elapsed() > Duration::from_secs(2));
    assert_eq!(a.status, 200, "{a:?}");
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["len"], 8);
    assert_eq!(v["sha256"], sha256_hex(b"abcdefgh"));
    assert_eq!(t.realm.api_calls.get(), 1);
    proxy.assert_no_secret_in_stderr(&t.secrets(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_fail_fast_when_refused_and_at_connect_timeout_when_tls_stalls() {
    let t = Creds::new("connect");
    let nobody = unused_port().await;
    // Accepts TCP, never says a word of TLS.
    let mute = RawUpstream::start(Behaviour::Silent).await;
    let cfg = config(
        &t,
        "",
        "connect_timeout = \"1s\"\nresponse_timeout = \"10s\"",
        &[
            ("/refused", format!("http://127.0.0.1:{nobody}")),
            ("/mute", format!("https://localhost:{}", mute.addr.port())),
        ],
    );
    let proxy = Proxy::start(&cfg, &[], &[]).await;
    let client = http1_client();

    let started = Instant::now();
    let a = get(&client, &proxy.url("/refused/user")).await;
    let took = started.elapsed();
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.code(), "upstream_unavailable");
    assert!(took < Duration::from_millis(500), "refused took {took:?}");

    let started = Instant::now();
    let a = get(&client, &proxy.url("/mute/user")).await;
    let took = started.elapsed();
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.code(), "upstream_unavailable");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("took longer than 1s"),
        "{}",
        a.text()
    );
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took <= Duration::from_secs(1) + SLACK, "{took:?}");
    // The TLS handshake never finished: no request head ever reached it.
    assert_eq!(mute.saw().requests, 0);
    proxy.assert_no_secret_in_stderr(&t.secrets(&[]));
}

// ---------------------------------------------------------------------------------------------
// Request body bounds.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_408_and_its_upstream_request_aborted() {
    let t = Creds::new("slowbody");
    let sink = RawUpstream::start(Behaviour::Silent).await;
    // The response bound is well past the body read bound: the body's stall decides.
    let cfg = config(
        &t,
        "[server]\nbody_read_timeout = \"1s\"",
        "response_timeout = \"120s\"",
        &[("/sink", format!("http://{}", sink.addr))],
    );
    let proxy = Proxy::start(&cfg, &[], &[]).await;

    let mut caller = RawCaller::connect(proxy.proxy_addr()).await;
    caller
        .send(b"POST /sink/upload HTTP/1.1\r\nhost: proxy\r\ncontent-length: 100\r\n\r\n0123456789")
        .await;
    // The first ten bytes went through.
    sink.wait("10 body bytes upstream", |s| s.after_head.len() == 10)
        .await;
    let started = Instant::now();
    let a = caller.response_within(BODY_READ_TIMEOUT + WAIT).await;
    let took = started.elapsed();
    assert_eq!(a.status, 408, "{a:?}");
    assert_eq!(a.code(), "request_timeout");
    assert!(
        took <= BODY_READ_TIMEOUT + SLACK,
        "answered {took:?} after the last byte"
    );
    assert!(took >= BODY_READ_TIMEOUT - SLACK, "answered after {took:?}");
    // The upstream request was aborted: its connection closed with the body incomplete.
    let saw = sink
        .wait("the upstream connection closed", |s| s.closed == 1)
        .await;
    assert_eq!(saw.requests, 1);
    assert_eq!(saw.after_head, b"0123456789");
    proxy.assert_no_secret_in_stderr(&t.secrets(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_400_and_its_upstream_request_aborted() {
    let t = Creds::new("badchunk");
    let sink = RawUpstream::start(Behaviour::Silent).await;
    let cfg = config(
        &t,
        "",
        "response_timeout = \"30s\"",
        &[("/sink", format!("http://{}", sink.addr))],
    );
    let proxy = Proxy::start(&cfg, &[], &[]).await;
    let bad_sizes: [&[u8]; 2] = [b"zz\r\n", b"fffffffffffffffffffff\r\n"];
    for (i, bad) in bad_sizes.iter().enumerate() {
        let n = i as u64 + 1;
        let mut caller = RawCaller::connect(proxy.proxy_addr()).await;
        caller
            .send(b"POST /sink/upload HTTP/1.1\r\nhost: proxy\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
        // The request is under way upstream, the good chunk forwarded...
        sink.wait("the good chunk upstream", |s| {
            s.requests == n && s.after_head.ends_with(b"hello\r\n")
        })
        .await;
        // ...when the framing breaks.
        caller.send(bad).await;
        let a = caller.response().await;
        assert_eq!(a.status, 400, "{a:?}");
        assert_eq!(a.code(), "bad_request");
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("malformed request body: "),
            "{v}"
        );
        let saw = sink
            .wait("the upstream connection closed", |s| s.closed == n)
            .await;
        assert!(
            !saw.after_head.ends_with(b"0\r\n\r\n"),
            "the upstream saw a complete body: {:?}",
            String::from_utf8_lossy(&saw.after_head)
        );
    }
    assert_eq!(sink.saw().requests, 2);
    assert_eq!(sink.saw().connections, 2);
    proxy.assert_no_secret_in_stderr(&t.secrets(&[]));
}

/// A TLS upstream speaking HTTP/2 only, that reads each request body to its end (recording the
/// bytes and how it ended) before answering 200.
async fn h2_tls_upstream(
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> (u16, Arc<watch::Sender<Vec<Result<Vec<u8>, String>>>>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(watch::channel(Vec::new()).0);
    let record = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, record) = (acceptor.clone(), record.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        // One entry per request, updated as its body arrives.
                        let mut index = 0;
                        record.send_modify(|v| {
                            index = v.len();
                            v.push(Ok(Vec::new()));
                        });
                        let mut body = req.into_body();
                        loop {
                            match body.frame().await {
                                None => break,
                                Some(Ok(f)) => {
                                    let data = f.into_data().unwrap_or_default();
                                    record.send_modify(|v| {
                                        if let Ok(b) = &mut v[index] {
                                            b.extend_from_slice(&data)
                                        }
                                    });
                                }
                                Some(Err(e)) => {
                                    record.send_modify(|v| v[index] = Err(e.to_string()));
                                    break;
                                }
                            }
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"{}"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, bodies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_400_over_an_http2_upstream_too() {
    let t = Creds::new("badchunkh2");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (port, bodies) = h2_tls_upstream(&cert).await;
    let dir = TempDir::new("h2ca");
    let ca = dir.write("upstream-ca.pem", &cert.cert.pem());
    let cfg = config(
        &t,
        "",
        "response_timeout = \"30s\"",
        &[("/h2", format!("https://localhost:{port}"))],
    );
    let proxy = Proxy::start(&cfg, &[], &[("SSL_CERT_FILE", ca.to_str().unwrap())]).await;

    // A well-formed chunked upload first: the upstream answers once the body ends.
    let mut caller = RawCaller::connect(proxy.proxy_addr()).await;
    caller
        .send(b"POST /h2/upload HTTP/1.1\r\nhost: proxy\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    let a = caller.response().await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(bodies.borrow()[0], Ok(b"hello".to_vec()));

    let mut caller = RawCaller::connect(proxy.proxy_addr()).await;
    caller
        .send(b"POST /h2/upload HTTP/1.1\r\nhost: proxy\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await;
    let mut rx = bodies.subscribe();
    tokio::time::timeout(
        WAIT,
        rx.wait_for(|v| v.len() == 2 && v[1] == Ok(b"hello".to_vec())),
    )
    .await
    .expect("the good chunk reached the upstream")
    .unwrap();
    caller.send(b"zz\r\n").await;
    let a = caller.response().await;
    assert_eq!(a.status, 400, "{a:?}");
    assert_eq!(a.code(), "bad_request");
    // The upstream stream was reset, not ended as if the body were complete.
    tokio::time::timeout(WAIT, rx.wait_for(|v| v[1].is_err()))
        .await
        .expect("the upstream saw its request body fail")
        .unwrap();
    assert_eq!(bodies.borrow().len(), 2);
    proxy.assert_no_secret_in_stderr(&t.secrets(&[]));
}

// ---------------------------------------------------------------------------------------------
// SPEC 4.3 protocol rules.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_is_405_and_never_reaches_the_upstream() {
    let t = Creds::new("trace");
    let echo = RawUpstream::start(Behaviour::Echo).await;
    let cfg = config(
        &t,
        "",
        ONE_SECOND_BOUNDS,
        &[("/echo", format!("http://{}", echo.addr))],
    );
    let proxy = Proxy::start(&cfg, &[], &[]).await;
    let client = http1_client();

    // The echo works, and would hand the injected token back.
    let a = get(&client, &proxy.url("/echo/x")).await;
    assert_eq!(a.status, 200);
    assert!(a.text().contains(&t.access), "the echo shows the token");
    assert_eq!(echo.saw().requests, 1);

    for client in [http1_client(), h2c_client()] {
        let a = request(&client, "TRACE", &proxy.url("/echo/x"), &[], empty()).await;
        assert_eq!(a.status, 405, "{}", a.text());
        assert_eq!(a.code(), "method_not_allowed");
        assert!(!a.text().contains(&t.access));
    }
    let mut caller = RawCaller::connect(proxy.proxy_addr()).await;
    caller
        .send(b"TRACE /echo/x HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n")
        .await;
    let a = caller.response().await;
    assert_eq!(a.status, 405);
    assert_eq!(a.code(), "method_not_allowed");
    assert_eq!(echo.saw().requests, 1, "TRACE reached the upstream");
    assert_eq!(echo.saw().connections, 1);
    proxy.assert_no_secret_in_stderr(&t.secrets(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_transfer_encoding_and_content_length_arrives_whole() {
    let t = Creds::new("tecl");
    let body: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\nconnection: close\r\n\r\n".to_vec();
    for part in body.chunks(1000) {
        raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        raw.extend_from_slice(part);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let upstream = RawUpstream::start(Behaviour::Answer(Bytes::from(raw))).await;
    let cfg = config(
        &t,
        "",
        ONE_SECOND_BOUNDS,
        &[("/tecl", format!("http://{}", upstream.addr))],
    );
    let proxy = Proxy::start(&cfg, &[], &[]).await;
    for client in [http1_client(), h2c_client()] {
        let a = get(&client, &proxy.url("/tecl/file")).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body.len(), 3000, "bytes the caller got");
        assert_eq!(a.body, body);
        assert_ne!(a.header("content-length"), Some("5"));
    }
    assert_eq!(upstream.saw().requests, 2);
    proxy.assert_no_secret_in_stderr(&t.secrets(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_is_rewritten_by_what_its_headers_say_after_the_hop_by_hop_ones_go() {
    let t = Creds::new("jsonhop");
    // One answer per connection (each closes), the same JSON body naming the upstream, with
    // different headers: the proxy decides whether to rewrite from one pass over the headers,
    // except when `Connection` lists other headers, which are gone before it decides.
    let upstream = RawUpstream::start_for(|addr| {
        let body = format!(r#"{{"url":"http://{addr}/repos/x"}}"#);
        let answer = |headers: &str| {
            Behaviour::Answer(Bytes::from(format!(
                "HTTP/1.1 200 OK\r\n{headers}content-length: {}\r\n\r\n{body}",
                body.len()
            )))
        };
        vec![
            answer("connection: close\r\ncontent-type: application/json\r\n"),
            answer("connection: close, Content-Type\r\ncontent-type: application/json\r\n"),
            answer("connection: close\r\ncontent-type: application/json\r\ncontent-encoding: identity\r\n"),
            answer("connection: close\r\ncontent-type: application/json\r\ncontent-encoding: br\r\n"),
            answer("connection: close\r\ncontent-type: text/plain\r\ncontent-type: application/json\r\n"),
            answer("connection: close, content-encoding\r\ncontent-type: application/vnd.github+json\r\ncontent-encoding: br\r\n"),
            answer("connection: close\r\nx-ratelimit-remaining: 10\r\ncontent-type: application/json; charset=utf-8\r\n"),
        ]
    })
    .await;
    let cfg = config(
        &t,
        "",
        ONE_SECOND_BOUNDS,
        &[("/json", format!("http://{}", upstream.addr))],
    );
    let proxy = Proxy::start(&cfg, &[], &[]).await;
    let as_sent = format!(r#"{{"url":"http://{}/repos/x"}}"#, upstream.addr);
    let rewritten = format!(r#"{{"url":"http://{}/json/repos/x"}}"#, proxy.proxy_addr());
    let client = http1_client();
    for (case, expect, content_type) in [
        ("JSON", &rewritten, Some("application/json")),
        ("Content-Type listed in Connection", &as_sent, None),
        ("identity encoding", &rewritten, Some("application/json")),
        ("br encoding", &as_sent, Some("application/json")),
        (
            "the first Content-Type is not JSON",
            &as_sent,
            Some("text/plain"),
        ),
        (
            "Content-Encoding listed in Connection",
            &rewritten,
            Some("application/vnd.github+json"),
        ),
        (
            "JSON with a charset, beside x-ratelimit-remaining",
            &rewritten,
            Some("application/json; charset=utf-8"),
        ),
    ] {
        let a = get(&client, &proxy.url("/json/repos/x")).await;
        assert_eq!(a.status, 200, "{case}");
        assert_eq!(&a.text(), expect, "{case}");
        assert_eq!(a.header("content-type"), content_type, "{case}");
    }
    assert_eq!(upstream.saw().requests, 7);
    proxy.assert_no_secret_in_stderr(&t.secrets(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answers_hop_by_hop_headers_are_dropped_and_its_urls_rewritten() {
    let t = Creds::new("hop");
    // One answer per connection (each closes): Location and/or Link on the upstream, with
    // hop-by-hop headers fixed and listed; last, `Connection` listing Location and Link.
    let upstream = RawUpstream::start_for(|addr| {
        let answer = |connection: &str, location: bool, link: bool| {
            let mut head = format!(
                "HTTP/1.1 302 Found\r\nconnection: {connection}\r\nx-hop: listed\r\n\
                 keep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nupgrade: h2c\r\n\
                 x-kept: 1\r\ncontent-length: 0\r\n"
            );
            if location {
                head.push_str(&format!("location: http://{addr}/elsewhere?x=1\r\n"));
            }
            if link {
                head.push_str(&format!(
                    "link: <http://{addr}/next?page=2>; rel=\"next\"\r\n"
                ));
            }
            head.push_str("\r\n");
            Behaviour::Answer(Bytes::from(head))
        };
        vec![
            answer("close, X-Hop", true, true),
            answer("close, X-Hop", true, false),
            answer("close, X-Hop", false, true),
            answer("close, location, link", true, true),
        ]
    })
    .await;
    let cfg = config(
        &t,
        "",
        ONE_SECOND_BOUNDS,
        &[("/hop", format!("http://{}", upstream.addr))],
    );
    let proxy = Proxy::start(&cfg, &[], &[]).await;
    let p = proxy.proxy_addr();
    let location = format!("http://{p}/hop/elsewhere?x=1");
    let link = format!(r#"<http://{p}/hop/next?page=2>; rel="next""#);
    let client = http1_client();

    for (with_location, with_link) in [(true, true), (true, false), (false, true)] {
        let a = get(&client, &proxy.url("/hop/start")).await;
        assert_eq!(a.status, 302);
        for dropped in ["x-hop", "keep-alive", "proxy-connection", "upgrade"] {
            assert_eq!(a.header(dropped), None, "{dropped}");
        }
        assert_eq!(a.header("x-kept"), Some("1"));
        let expect = |on: bool, url: &str| on.then(|| url.to_string());
        assert_eq!(
            a.header("location").map(str::to_string),
            expect(with_location, &location)
        );
        assert_eq!(
            a.header("link").map(str::to_string),
            expect(with_link, &link)
        );
    }

    // Listed in Connection, Location and Link are hop-by-hop too: gone, not rewritten.
    let a = get(&client, &proxy.url("/hop/start")).await;
    assert_eq!(a.status, 302);
    assert_eq!(a.header("location"), None);
    assert_eq!(a.header("link"), None);
    assert_eq!(a.header("x-hop"), Some("listed"), "not listed this time");
    assert_eq!(a.header("x-kept"), Some("1"));
    assert_eq!(upstream.saw().requests, 4);
    proxy.assert_no_secret_in_stderr(&t.secrets(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_host_is_served_but_never_reflected_into_location_or_link() {
    let t = Creds::new("host");
    let (github, cfg) = github_config(&t, "").await;
    let proxy = Proxy::start(&cfg, &[], &[]).await;
    let upstream_link = format!(
        r#"<http://{github}/user/repos?page=2>; rel="next", <http://{github}/user/repos?page=3>; rel="last""#
    );
    let upstream_location = format!("http://{github}/after-redirect?from=redirect");

    let mut calls = 0;
    for host in [
        "a@evil.example",
        "",
        "host/path",
        "evil.example:80/x",
        "a b",
    ] {
        for (path, status, header, unchanged) in [
            ("/github/user/repos", 200, "link", &upstream_link),
            ("/github/redirect", 302, "location", &upstream_location),
        ] {
            let mut caller = RawCaller::connect(proxy.proxy_addr()).await;
            caller
                .send(
                    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
            let a = caller.response().await;
            calls += 1;
            assert_eq!(a.status, status, "Host {host:?} {path}: {a:?}");
            assert_eq!(a.header(header), Some(unchanged.as_str()), "Host {host:?}");
        }
    }
    // A valid Host still rewrites.
    for host in ["proxy.example:8080", "[::1]:8080", "localhost"] {
        let mut caller = RawCaller::connect(proxy.proxy_addr()).await;
        caller
            .send(
                format!(
                    "GET /github/user/repos HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
        let a = caller.response().await;
        calls += 1;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.header("link").unwrap(),
            format!(
                r#"<http://{host}/github/user/repos?page=2>; rel="next", <http://{host}/github/user/repos?page=3>; rel="last""#
            )
        );
        let mut caller = RawCaller::connect(proxy.proxy_addr()).await;
        caller
            .send(
                format!(
                    "GET /github/redirect HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
        let a = caller.response().await;
        calls += 1;
        assert_eq!(
            a.header("location"),
            Some(format!("http://{host}/github/after-redirect?from=redirect").as_str())
        );
    }
    assert_eq!(t.realm.api_calls.get(), calls);
    proxy.assert_no_secret_in_stderr(&t.secrets(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_of_proxy_authorization_is_matched_in_any_case() {
    const CLIENT: &str = "client-token-protocol-7319";
    let t = Creds::new("bearer");
    let (_, cfg) = github_config(&t, "client_token = \"env:ORP_TEST_CLIENT_TOKEN\"").await;
    let proxy = Proxy::start(&cfg, &[], &[("ORP_TEST_CLIENT_TOKEN", CLIENT)]).await;
    let client = http1_client();
    let accepted = [
        format!("Bearer {CLIENT}"),
        format!("bearer {CLIENT}"),
        format!("BEARER {CLIENT}"),
        format!("bEaReR {CLIENT}"),
        format!("Bearer  {CLIENT}"),
    ];
    for value in &accepted {
        let a = get_with_proxy_authorization(&client, &proxy, value).await;
        assert_eq!(a.status, 200, "{value}: {}", a.text());
    }
    let refused = [
        "bearer wrong".to_string(),
        "BEARER wrong".to_string(),
        format!("Basic {CLIENT}"),
        format!("Bearer{CLIENT}"),
        format!("bearer{CLIENT}"),
        "bearer ".to_string(),
        format!("Bearer {CLIENT}x"),
    ];
    for value in &refused {
        let a = get_with_proxy_authorization(&client, &proxy, value).await;
        assert_eq!(a.status, 407, "{value}");
        assert_eq!(a.code(), "unauthorized");
        assert_eq!(a.header("proxy-authenticate"), Some("Bearer"));
    }
    assert_eq!(t.realm.api_calls.get(), accepted.len() as u64);
    let seen = t.realm.seen();
    assert!(seen
        .iter()
        .all(|s| s.headers.get("proxy-authorization").is_none()));
    proxy.assert_no_secret_in_stderr(&t.secrets(&[CLIENT]));
}
