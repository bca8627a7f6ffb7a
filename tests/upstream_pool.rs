//! The plain-http upstream pool (`proxy::upstream::pool`), black-box against raw TCP upstreams
//! on 127.0.0.1:0 that count their connections and record every request head they read.

#![cfg(feature = "sidecar")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use oauth_refresh_proxy::proxy::upstream::pool::{Pool, PoolError, PooledBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every wait in these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
enum Mode {
    /// Answers every request, keeps the connection.
    KeepAlive,
    /// Answers, then closes the connection without saying so in the response.
    CloseAfterAnswer,
    /// Answers the first request of a connection; reads the second and closes unanswered.
    SecondUnanswered,
    /// Answers with a 256 KiB body, keeps the connection.
    LargeBody,
    /// Answers with a 100-byte body, keeps the connection.
    SmallBody,
}

#[derive(Default)]
struct Seen {
    connections: usize,
    /// Connections the client closed.
    closed: usize,
    heads: Vec<String>,
}

struct Upstream {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Seen>>,
    closed: Arc<tokio::sync::Notify>,
}

impl Upstream {
    async fn start(mode: Mode) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let closed = Arc::new(tokio::sync::Notify::new());
        let (s, c) = (seen.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                s.lock().unwrap().connections += 1;
                let (s, c) = (s.clone(), c.clone());
                tokio::spawn(async move {
                    if serve(stream, mode, s.clone()).await {
                        s.lock().unwrap().closed += 1;
                        c.notify_one();
                    }
                });
            }
        });
        Upstream { addr, seen, closed }
    }

    fn uri(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }

    fn heads(&self) -> Vec<String> {
        self.seen.lock().unwrap().heads.clone()
    }
}

/// Serves one connection; whether it ended because the client closed it.
async fn serve(mut stream: TcpStream, mode: Mode, seen: Arc<Mutex<Seen>>) -> bool {
    let mut buf = Vec::new();
    let mut answered = 0;
    loop {
        // One request head (these requests have no body).
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) => return true,
                Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head: Vec<u8> = buf.drain(..end).collect();
        seen.lock()
            .unwrap()
            .heads
            .push(String::from_utf8_lossy(&head).into_owned());
        if matches!(mode, Mode::SecondUnanswered) && answered == 1 {
            return false;
        }
        let response: Vec<u8> = match mode {
            Mode::LargeBody => {
                let mut r = b"HTTP/1.1 200 OK\r\ncontent-length: 262144\r\n\r\n".to_vec();
                r.resize(r.len() + 262_144, b'x');
                r
            }
            Mode::SmallBody => {
                let mut r = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 100\r\n\r\n".to_vec();
                r.resize(r.len() + 100, b'x');
                r
            }
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        };
        if stream.write_all(&response).await.is_err() {
            return false;
        }
        answered += 1;
        if matches!(mode, Mode::CloseAfterAnswer) {
            return false;
        }
    }
}

type Body = Empty<Bytes>;

fn pool() -> Pool<Body> {
    Pool::new(1, BOUND)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Empty::new()).unwrap()
}

/// Sends a GET to `uri` and returns the response as it came, its body unread.
async fn head(pool: &Pool<Body>, uri: &str) -> http::Response<PooledBody<Body>> {
    tokio::time::timeout(BOUND, pool.request(get(uri)))
        .await
        .expect("bounded")
        .unwrap()
}

/// Sends `req` and reads the whole response body: (status, body).
async fn send(pool: &Pool<Body>, req: Request<Body>) -> Result<(u16, Bytes), PoolError> {
    tokio::time::timeout(BOUND, async {
        let resp = pool.request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok((status, body))
    })
    .await
    .expect("bounded")
}

#[tokio::test]
async fn sequential_requests_share_one_connection_sent_in_origin_form_with_a_host() {
    let up = Upstream::start(Mode::KeepAlive).await;
    let pool = pool();
    for i in 0..5 {
        let (status, body) = send(&pool, get(&up.uri(&format!("/a/b?i={i}"))))
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (200, &b"ok"[..]));
        assert_eq!(
            pool.idle(0),
            1,
            "the connection is back once the body ended"
        );
    }
    assert_eq!(up.connections(), 1);
    let heads = up.heads();
    assert_eq!(heads.len(), 5);
    for (i, head) in heads.iter().enumerate() {
        let mut lines = head.lines();
        assert_eq!(lines.next(), Some(&*format!("GET /a/b?i={i} HTTP/1.1")));
        let host = format!("host: {}", up.addr);
        assert!(
            head.to_ascii_lowercase().contains(&host),
            "{head:?} lacks {host:?}"
        );
    }
}

#[tokio::test]
async fn a_host_already_set_is_kept_and_a_bare_authority_gets_the_root_path() {
    let up = Upstream::start(Mode::KeepAlive).await;
    let pool = pool();
    let req = Request::get(up.uri(""))
        .header("host", "api.github.com")
        .body(Empty::new())
        .unwrap();
    send(&pool, req).await.unwrap();
    let head = up.heads().remove(0);
    assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head:?}");
    assert!(head
        .to_ascii_lowercase()
        .contains("host: api.github.com\r\n"));
    assert_eq!(head.to_ascii_lowercase().matches("host:").count(), 1);
}

#[tokio::test]
async fn the_host_made_from_the_uri_never_carries_its_userinfo() {
    let up = Upstream::start(Mode::KeepAlive).await;
    let pool = pool();
    let uri = format!("http://user:secret-pw@{}/x", up.addr);
    send(&pool, get(&uri)).await.unwrap();
    let head = up.heads().remove(0);
    assert!(head.starts_with("GET /x HTTP/1.1\r\n"), "{head:?}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("host: {}\r\n", up.addr)),
        "{head:?}"
    );
    assert!(!head.contains("secret-pw"), "{head:?}");
}

#[tokio::test]
async fn concurrent_requests_open_one_connection_each_and_all_are_kept() {
    let up = Upstream::start(Mode::KeepAlive).await;
    let pool = pool();
    // Hold all four responses before reading any body: four connections at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        let resp = head(&pool, &up.uri("/x")).await;
        held.push(resp);
    }
    assert_eq!(up.connections(), 4);
    for resp in held {
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(pool.idle(0), 4);
    for _ in 0..8 {
        send(&pool, get(&up.uri("/y"))).await.unwrap();
    }
    assert_eq!(up.connections(), 4, "later requests reuse the kept ones");
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_never_used_again() {
    let up = Upstream::start(Mode::CloseAfterAnswer).await;
    let pool = pool();
    // Each answer is followed by a close the client is not told of: the next request finds the
    // pooled connection closed (skipped at checkout, or refused unsent by hyper and sent again
    // on a new connection) and still succeeds.
    for _ in 0..5 {
        let (status, _) = send(&pool, get(&up.uri("/x"))).await.unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(up.connections(), 5);
    assert_eq!(up.heads().len(), 5, "no request was sent twice");
}

#[tokio::test]
async fn a_request_written_to_a_connection_that_then_fails_is_not_sent_again() {
    let up = Upstream::start(Mode::SecondUnanswered).await;
    let pool = pool();
    send(&pool, get(&up.uri("/first"))).await.unwrap();
    let err = send(&pool, get(&up.uri("/second"))).await.unwrap_err();
    assert!(matches!(err, PoolError::Http(_)), "{err:?}");
    let heads = up.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert_eq!(up.connections(), 1, "the failed request was not retried");
    // The broken connection is not pooled: the next request opens a new one.
    send(&pool, get(&up.uri("/third"))).await.unwrap();
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn a_response_body_dropped_before_its_end_takes_its_connection_with_it() {
    let up = Upstream::start(Mode::LargeBody).await;
    let pool = pool();
    let resp = head(&pool, &up.uri("/big")).await;
    let mut body = resp.into_body();
    let first = tokio::time::timeout(BOUND, body.frame()).await.unwrap();
    assert!(first.unwrap().unwrap().is_data());
    drop(body);
    assert_eq!(
        pool.idle(0),
        0,
        "a connection with unread bytes is not reused"
    );
    let (status, body) = send(&pool, get(&up.uri("/big"))).await.unwrap();
    assert_eq!((status, body.len()), (200, 262_144));
    assert_eq!(up.connections(), 2);
    assert_eq!(pool.idle(0), 1, "read to its end, it is kept");
}

#[tokio::test]
async fn a_small_answer_dropped_unread_gives_its_connection_back() {
    let up = Upstream::start(Mode::SmallBody).await;
    let pool = pool();
    // As the layer drops a 401 to replay the request.
    let resp = head(&pool, &up.uri("/x")).await;
    assert_eq!(resp.status(), 401);
    drop(resp);
    // hyper reads the 100 bytes already there and the connection comes back, on this thread.
    tokio::time::timeout(BOUND, async {
        while pool.idle(0) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the connection is returned");
    let (status, body) = send(&pool, get(&up.uri("/y"))).await.unwrap();
    assert_eq!((status, body.len()), (401, 100));
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn with_a_zero_idle_timeout_no_connection_is_reused() {
    let up = Upstream::start(Mode::KeepAlive).await;
    let pool: Pool<Body> = Pool::with_idle_timeout(1, BOUND, Duration::ZERO);
    for _ in 0..3 {
        send(&pool, get(&up.uri("/x"))).await.unwrap();
    }
    assert_eq!(up.connections(), 3);
    assert!(
        pool.idle(0) <= 1,
        "expired connections are dropped at checkin"
    );
}

#[tokio::test]
async fn a_refused_connect_and_a_uri_without_authority_are_clear_errors() {
    // A port nothing listens on: bind, note, close.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let pool = pool();
    let err = send(&pool, get(&format!("http://{addr}/x")))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::Connect(_)), "{err:?}");
    let err = send(&pool, get("/relative")).await.unwrap_err();
    assert!(matches!(err, PoolError::NoAuthority), "{err:?}");
    assert_eq!(err.to_string(), "the upstream URI has no authority");
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout_without_any_traffic() {
    let up = Upstream::start(Mode::KeepAlive).await;
    // The reaper runs every max(idle timeout, 1 s).
    let pool: Pool<Body> = Pool::with_idle_timeout(1, BOUND, Duration::from_millis(200));
    send(&pool, get(&up.uri("/x"))).await.unwrap();
    assert_eq!(pool.idle(0), 1);
    assert_eq!(up.seen.lock().unwrap().closed, 0);
    tokio::time::timeout(BOUND, up.closed.notified())
        .await
        .expect("the reaper closes the idle connection");
    assert_eq!(up.seen.lock().unwrap().closed, 1);
    assert_eq!(pool.idle(0), 0);
    // The pool still works: a new connection.
    send(&pool, get(&up.uri("/x"))).await.unwrap();
    assert_eq!(up.connections(), 2);
}
