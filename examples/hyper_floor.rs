//! The floor under any proxy built on hyper: the least a hyper reverse proxy can do per request
//! and still do what the benchmark's nginx and HAProxy do (strip the `/github` prefix, set
//! `Host`, inject a static `Authorization`), on the serving model measured fastest for it.
//!
//! `benches/sidecar_vs_nginx.sh` runs it as the target `floor` beside nginx, HAProxy and the
//! sidecar (BENCHMARKS.md section 12): the distance from the sidecar to the floor is what the
//! product's own work costs; the distance from the floor to nginx is what hyper's two HTTP/1
//! stacks cost, which no work in this crate can remove.
//!
//! What it leaves out, on purpose (each is something the sidecar must do): no token lookup, no
//! refresh, no replay snapshot, no hop-by-hop stripping, no timeouts, no limits, no metrics, no
//! connection pool (each client connection gets one upstream connection of its own, connected
//! when the client connects). One single-threaded tokio runtime per worker, each with its own
//! `SO_REUSEPORT` listener.
//!
//! ```text
//! cargo run --release --example hyper_floor -- 127.0.0.1:8080 127.0.0.1:9000 [WORKERS]
//! ```
//! then `curl http://127.0.0.1:8080/github/user` is sent upstream as `GET /user` with
//! `Authorization: Bearer static-token-for-the-benchmark`. It prints `floor listening on
//! http://ADDR` once every worker listens, and runs until SIGTERM or Ctrl-C.

use std::convert::Infallible;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

type Body = Either<Incoming, Empty<Bytes>>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR [WORKERS]");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN_ADDR is host:port");
    let upstream: SocketAddr = args[2].parse().expect("UPSTREAM_ADDR is host:port");
    let workers = args
        .get(3)
        .map(|w| w.parse().expect("WORKERS is a number"))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    // The first listener picks the port when LISTEN_ADDR's is 0; the others join it.
    let first = listener(listen).expect("binding the listen address");
    let addr = first.local_addr().expect("the bound address");
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(listener(addr).expect("binding the listen address again (SO_REUSEPORT)"));
    }
    // Announced once every worker listens (a listener needs its runtime to be made).
    let listening = Arc::new(Barrier::new(listeners.len() + 1));
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|socket| {
            let listening = listening.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async move {
                    let listener = socket.listen(1024).expect("listening");
                    listening.wait();
                    serve(listener, upstream).await
                });
            })
        })
        .collect();
    listening.wait();
    println!("floor listening on http://{addr}");
    // Runs until SIGTERM or Ctrl-C, then exits at once (a profiler gets its normal exit).
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    signals.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
    drop(threads);
    std::process::exit(0);
}

fn listener(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseport(true)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

async fn serve(listener: TcpListener, upstream: SocketAddr) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: not again at once.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let _ = connection(stream, upstream).await;
        });
    }
}

async fn connection(stream: TcpStream, upstream: SocketAddr) -> Result<(), hyper::Error> {
    stream.set_nodelay(true).ok();
    let Ok(up) = TcpStream::connect(upstream).await else {
        return Ok(());
    };
    up.set_nodelay(true).ok();
    let (sender, conn) = client::handshake(TokioIo::new(up)).await?;
    tokio::spawn(conn);
    // One request at a time on a client connection (hyper's HTTP/1 server never overlaps
    // them), so the lock is never contended; it is never held across an await.
    let sender = Arc::new(Mutex::new(sender));
    let service = service_fn(move |req| forward(sender.clone(), req));
    server::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
}

async fn forward(
    sender: Arc<Mutex<client::SendRequest<Incoming>>>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Some(rest) = path.strip_prefix("/github") else {
        return Ok(status(StatusCode::NOT_FOUND));
    };
    let Ok(uri) = Uri::try_from(if rest.is_empty() { "/" } else { rest }) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    headers.insert(HOST, HeaderValue::from_static("api.github.com"));
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer static-token-for-the-benchmark"),
    );
    if poll_fn(|cx| sender.lock().unwrap().poll_ready(cx))
        .await
        .is_err()
    {
        return Ok(upstream_gone());
    }
    let sent = sender.lock().unwrap().send_request(req);
    match sent.await {
        Ok(res) => Ok(res.map(Either::Left)),
        Err(_) => Ok(upstream_gone()),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut res = Response::new(Either::Right(Empty::new()));
    *res.status_mut() = code;
    res
}

/// 502, and the client connection closed after it: its one upstream connection is gone, so
/// nothing more can be forwarded on it (and a run of quick 502s would pass for throughput).
fn upstream_gone() -> Response<Body> {
    let mut res = status(StatusCode::BAD_GATEWAY);
    res.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    res
}
