//! What rewriting upstream URLs inside JSON bodies costs (SPEC 4.3 "JSON bodies"), and proof
//! that a non-JSON download is not touched.
//!
//! ```sh
//! cargo run --release --example json_rewrite_cost            # 15 rounds
//! cargo run --release --example json_rewrite_cost -- 31      # more rounds
//! cargo run --release --example json_rewrite_cost -- 200 --wrapper-only   # part 1 only
//! ```
//!
//! 1. **The body wrapper alone**, in-process: a 1 MiB GitHub-style JSON array (issues, seven
//!    upstream URLs each) in 16 KiB frames, collected through `RewriteBody` vs the same frames
//!    collected bare. Interleaved rounds, medians, MB/s of input.
//! 2. **Through the sidecar**, in-process on loopback in front of a fake upstream: `GET` of the
//!    1 MiB JSON on a route with rewriting on and one with `rewrite_body = false`, and of a
//!    64 MiB `application/octet-stream` download (whose bytes look like JSON with upstream
//!    URLs) on both routes: byte-identical to what the upstream sent, at the same throughput.
//!
//! The example checks its own results (the rewritten body parses and points at the proxy, the
//! download is byte-identical) and exits non-zero when one fails.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use oauth_refresh_proxy::proxy::config::{Config, Route};
use oauth_refresh_proxy::proxy::json_rewrite::JsonRewrite;
use oauth_refresh_proxy::proxy::sidecar::Sidecar;

const FRAME: usize = 16 * 1024;
const DOWNLOAD: usize = 64 << 20;

/// A GitHub-style issue list of about `size` bytes whose URLs are on `origin`.
fn issues_json(origin: &str, size: usize) -> Vec<u8> {
    let mut out = b"[".to_vec();
    let mut n = 1;
    while out.len() < size {
        if n > 1 {
            out.push(b',');
        }
        let issue = serde_json::json!({
            "url": format!("{origin}/repos/o/r/issues/{n}"),
            "repository_url": format!("{origin}/repos/o/r"),
            "labels_url": format!("{origin}/repos/o/r/issues/{n}/labels{{/name}}"),
            "comments_url": format!("{origin}/repos/o/r/issues/{n}/comments"),
            "events_url": format!("{origin}/repos/o/r/issues/{n}/events"),
            "html_url": format!("https://github.com/o/r/issues/{n}"),
            "id": n, "number": n, "title": format!("issue number {n}"), "state": "open",
            "user": {"login": "octocat", "id": 1, "url": format!("{origin}/users/octocat"),
                     "avatar_url": "https://avatars.githubusercontent.com/u/1?v=4",
                     "type": "User", "site_admin": false},
            "labels": [], "comments": 3, "created_at": "2026-11-22T10:00:00Z",
            "body": "Steps to reproduce: run the thing, then look at the output. It is wrong.",
            "reactions": {"url": format!("{origin}/repos/o/r/issues/{n}/reactions"), "total_count": 0},
        });
        out.extend_from_slice(issue.to_string().as_bytes());
        n += 1;
    }
    out.push(b']');
    out
}

/// `n` bytes that are not JSON but look like it, with upstream URLs.
fn download_bytes(origin: &str, n: usize) -> Vec<u8> {
    let unit = format!("{{\"url\":\"{origin}/repos/o/r\"}}\n\u{1}\u{2}");
    unit.as_bytes().iter().copied().cycle().take(n).collect()
}

/// A body of fixed frames.
struct Frames(std::vec::IntoIter<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.next().map(|b| Ok(Frame::data(b))))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// A fake upstream whose JSON and download name its own origin; returns its address and bodies.
async fn serve_upstream() -> (SocketAddr, Bytes, Bytes) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = format!("http://{addr}");
    let json = Bytes::from(issues_json(&origin, 1 << 20));
    let download = Bytes::from(download_bytes(&origin, DOWNLOAD));
    let bodies = (json.clone(), download.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (json, download) = (json.clone(), download.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (json, download) = (json.clone(), download.clone());
                    async move {
                        let (ct, body) = if req.uri().path().ends_with("/download") {
                            ("application/octet-stream", download)
                        } else {
                            ("application/json; charset=utf-8", json)
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", ct)
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, bodies.0, bodies.1)
}

fn main() -> std::process::ExitCode {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(run(rounds)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("FAILED: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(rounds: usize) -> Result<(), String> {
    // 1. The wrapper alone.
    let route = &Route::defaults()[1];
    let json = issues_json("https://api.github.com", 1 << 20);
    let frames: Vec<Bytes> = json.chunks(FRAME).map(Bytes::copy_from_slice).collect();
    let rewrite = JsonRewrite::new(route, "127.0.0.1:8080").ok_or("no origin")?;
    let (mut bare, mut wrapped) = (Vec::new(), Vec::new());
    let mut out_len = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let b = Frames(frames.clone().into_iter()).collect().await.unwrap();
        bare.push(t.elapsed().as_secs_f64());
        std::hint::black_box(b.to_bytes());
        let t = Instant::now();
        let w = rewrite
            .clone()
            .wrap(Frames(frames.clone().into_iter()))
            .collect()
            .await
            .unwrap()
            .to_bytes();
        wrapped.push(t.elapsed().as_secs_f64());
        out_len = w.len();
        let v: serde_json::Value = serde_json::from_slice(&w).map_err(|e| e.to_string())?;
        if v[0]["url"] != "http://127.0.0.1:8080/github/repos/o/r/issues/1"
            || std::str::from_utf8(&w)
                .unwrap()
                .contains("https://api.github.com")
        {
            return Err("the rewritten body is wrong".into());
        }
    }
    let urls = std::str::from_utf8(&json)
        .unwrap()
        .matches("https://api.github.com")
        .count();
    println!(
        "1. body wrapper alone: {} KiB JSON, {urls} upstream URLs, {} KiB frames, {rounds} interleaved rounds (medians)",
        json.len() >> 10,
        FRAME >> 10
    );
    let (b, w) = (median(bare), median(wrapped));
    println!(
        "   collected bare:        {:8.0} MB/s  ({:.3} ms)",
        mbps(json.len(), b),
        b * 1e3
    );
    println!(
        "   through RewriteBody:   {:8.0} MB/s  ({:.3} ms; output {} KiB)",
        mbps(json.len(), w),
        w * 1e3,
        out_len >> 10
    );

    if std::env::args().any(|a| a == "--wrapper-only") {
        return Ok(());
    }

    // 2. Through the sidecar.
    let (upstream, json_up, download) = serve_upstream().await;
    let config_text = format!(
        r#"listen = "127.0.0.1:0"
admin_listen = ""
[refresh]
backend_url = "http://127.0.0.1:9"
[[route]]
prefix = "/on"
upstream = "http://{upstream}"
provider = "github"
default_account = "bench"
[[route]]
prefix = "/off"
upstream = "http://{upstream}"
provider = "github"
default_account = "bench"
rewrite_body = false
[[account]]
provider = "github"
id = "bench"
refresh_token = "bench-refresh"
access_token = "bench-access"
expires_at = {}
"#,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    );
    let config = Config::from_toml_str(&config_text, "bench.toml").map_err(|e| e.to_string())?;
    let sidecar = Sidecar::new(&config).await.map_err(|e| e.to_string())?;
    let (proxy_listener, admin) = Sidecar::bind(&config).await.map_err(|e| e.to_string())?;
    let proxy = proxy_listener.local_addr().map_err(|e| e.to_string())?;
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(sidecar.run(proxy_listener, admin, stop_rx, Duration::from_secs(1)));

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let get = |path: String| {
        let client = client.clone();
        async move {
            let t = Instant::now();
            let resp = tokio::time::timeout(
                Duration::from_secs(60),
                client.get(format!("http://{proxy}{path}").parse().unwrap()),
            )
            .await
            .map_err(|_| format!("{path}: no answer in 60 s"))?
            .map_err(|e| format!("{path}: {e}"))?;
            let status = resp.status();
            let body = tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect())
                .await
                .map_err(|_| format!("{path}: body not read in 60 s"))?
                .map_err(|e| format!("{path}: {e}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("{path}: {status}"));
            }
            Ok::<_, String>((t.elapsed().as_secs_f64(), body))
        }
    };
    let mut times: [Vec<f64>; 4] = Default::default();
    let names = [
        "1 MiB JSON, rewrite on ",
        "1 MiB JSON, rewrite off",
        "64 MiB download, rewrite on ",
        "64 MiB download, rewrite off",
    ];
    let paths = ["/on/issues", "/off/issues", "/on/download", "/off/download"];
    let me = format!("http://{proxy}/on");
    for round in 0..rounds + 1 {
        for (i, path) in paths.iter().enumerate() {
            let (secs, body) = get(path.to_string()).await?;
            match i {
                0 => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                    if v[0]["url"] != format!("{me}/repos/o/r/issues/1") {
                        return Err(format!("not rewritten: {}", v[0]["url"]));
                    }
                }
                1 if body != json_up => return Err("rewrite off altered the JSON".into()),
                2 | 3 if body != download => {
                    return Err(format!("{path}: the download was altered"))
                }
                _ => {}
            }
            if round > 0 {
                // Round 0 warms the connections up.
                times[i].push(secs);
            }
        }
    }
    println!(
        "2. through the sidecar (loopback, HTTP/1.1, {rounds} interleaved rounds, medians; bodies checked every time)"
    );
    for (i, t) in times.into_iter().enumerate() {
        let size = if i < 2 { json_up.len() } else { DOWNLOAD };
        let m = median(t);
        println!(
            "   {:<30} {:8.0} MB/s  ({:.2} ms)",
            names[i],
            mbps(size, m),
            m * 1e3
        );
    }
    println!("   the 64 MiB download was byte-identical to the upstream's in every round, on both routes");
    Ok(())
}
