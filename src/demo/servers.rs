//! The fake servers of the realm: a hyper server on `127.0.0.1:0` per handler, the refresh
//! backend (the Flashback contract) and the provider APIs (Google's and GitHub's answers).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::*;
use crate::Provider;

fn json_response(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

/// Serves `handler` on 127.0.0.1:0 until the runtime ends; returns the address.
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, handler)
}

/// Serves `handler` on `listener` until the runtime ends (HTTP/1.1 and h2c); returns its
/// address. For a server that must come up on a port chosen beforehand.
pub fn serve_on<F, Fut>(listener: tokio::net::TcpListener, handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Starts the fake refresh backend; returns its base URL.
pub async fn start_backend(realm: Arc<Realm>) -> String {
    let addr = serve(move |req: Request<Incoming>| {
        let realm = realm.clone();
        async move { backend(realm, req).await }
    })
    .await;
    format!("http://{addr}")
}

async fn backend(realm: Arc<Realm>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    realm.backend_calls.bump();
    let path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let body_text = String::from_utf8_lossy(&body).to_string();
    realm
        .st()
        .backend_requests
        .push((path.clone(), auth.clone(), body_text));
    if let Some(expected) = &realm.backend_token {
        if auth.as_deref() != Some(&format!("Bearer {expected}")) {
            return json_response(401, r#"{"success": false, "message": "invalid token"}"#);
        }
    }
    if path != "/auth/google/refresh" && path != "/auth/github/refresh" {
        return json_response(404, r#"{"success": false, "message": "not found"}"#);
    }
    let reply = realm.st().replies.pop_front().unwrap_or(Reply::Issue);
    match reply {
        Reply::Status(status, body) => return json_response(status, body),
        Reply::Hang => std::future::pending::<()>().await,
        Reply::Gated => realm.backend_gate.acquire().await.unwrap().forget(),
        Reply::Issue => {}
    }
    let parsed: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return json_response(
                400,
                r#"{"success": false, "error_code": "INVALID_REQUEST"}"#,
            )
        }
    };
    let refresh = parsed["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let provider = if path.contains("github") {
        Provider::GitHub
    } else {
        Provider::Google
    };
    match realm.issue(provider, &refresh) {
        Ok(v) => json_response(200, v.to_string()),
        Err((s, b)) => json_response(s, b),
    }
}

/// Starts a fake API answering like `provider`; returns its address.
///
/// Every path first checks the bearer token (401 in the provider's shape when it is not
/// valid), except where noted. With a valid token:
/// `/user/repos?page=N` → GitHub-style pagination ([`REPO_PAGES`] pages of [`REPOS_PER_PAGE`],
/// with a `Link` header of absolute URLs on this server); `/redirect` → 302 with an absolute
/// `Location` on this server; `/download?bytes=N` → N bytes; anything else → 200
/// `{"sha256","len"}` of the request body.
///
/// Paths: `/forbidden` → the provider's 403 fixture; `/early401…` → a 401 before reading the
/// body when the token is not valid (the body is then drained in the background); `/hold…` → wait for `release_api` before looking at the
/// token; anything else → read the body, then 200 `{"sha256","len"}` or the provider's 401.
pub async fn start_api(realm: Arc<Realm>, provider: Provider) -> SocketAddr {
    serve(move |req: Request<Incoming>| {
        let realm = realm.clone();
        async move { api(realm, provider, req).await }
    })
    .await
}

async fn api(
    realm: Arc<Realm>,
    provider: Provider,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    realm.api_calls.bump();
    let path = req.uri().path().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let method = req.method().to_string();
    let headers = req.headers().clone();
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    let token_ok = |realm: &Realm| {
        auth.as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| realm.is_valid_access(t))
    };
    let (f401, f403) = match provider {
        Provider::Google => (&GOOGLE_401, &GOOGLE_403),
        Provider::GitHub => (&GITHUB_401, &GITHUB_403),
    };
    let from_fixture = |fx: &ApiAnswer| {
        let mut b = Response::builder().status(fx.status);
        for (k, v) in fx.headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::from_static(fx.body.as_bytes())))
            .unwrap()
    };
    let record = |realm: &Realm, body: &[u8], status: u16| {
        realm.st().seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            path_and_query: path_and_query.clone(),
            authorization: auth.clone(),
            body_sha256: sha256_hex(body),
            body_len: body.len(),
            status,
            headers: headers.clone(),
        });
    };
    if path.starts_with("/hold") {
        realm.held.bump();
        realm.api_gate.acquire().await.unwrap().forget();
    }
    if path.starts_with("/forbidden") {
        record(&realm, b"", 403);
        return from_fixture(f403);
    }
    if path.starts_with("/early401") && !token_ok(&realm) {
        record(&realm, b"", 401);
        // Answer before reading the body, then keep draining it in the background, as real
        // front ends do (nginx's lingering close): closing with unread data would make the
        // kernel reset the connection and discard the 401 before the client reads it.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(WAIT, req.into_body().collect()).await;
        });
        return from_fixture(f401);
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_response(400, "{}"),
    };
    if !token_ok(&realm) {
        record(&realm, &body, 401);
        return from_fixture(f401);
    }
    record(&realm, &body, 200);
    let query = |name: &str| -> Option<u64> {
        path_and_query
            .split_once('?')?
            .1
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    // Absolute URLs back at this server, as the real APIs send them.
    let own = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("http://{h}"))
        .unwrap_or_default();
    match path.as_str() {
        "/user/repos" => {
            let page = query("page").unwrap_or(1).clamp(1, REPO_PAGES);
            let repos: Vec<_> = (0..REPOS_PER_PAGE)
                .map(|i| {
                    let id = (page - 1) * REPOS_PER_PAGE + i + 1;
                    serde_json::json!({"id": id, "name": format!("repo-{id}"), "full_name": format!("octocat/repo-{id}")})
                })
                .collect();
            let mut links = Vec::new();
            if page < REPO_PAGES {
                links.push(format!(
                    r#"<{own}/user/repos?page={}>; rel="next""#,
                    page + 1
                ));
                links.push(format!(
                    r#"<{own}/user/repos?page={REPO_PAGES}>; rel="last""#
                ));
            }
            if page > 1 {
                links.push(format!(r#"<{own}/user/repos?page=1>; rel="first""#));
                links.push(format!(
                    r#"<{own}/user/repos?page={}>; rel="prev""#,
                    page - 1
                ));
            }
            let mut resp = json_response(200, serde_json::Value::from(repos).to_string());
            if !links.is_empty() {
                resp.headers_mut().insert(
                    http::header::LINK,
                    links.join(", ").parse().expect("ascii link header"),
                );
            }
            resp
        }
        "/redirect" => Response::builder()
            .status(302)
            .header(
                http::header::LOCATION,
                format!("{own}/after-redirect?from=redirect"),
            )
            .body(Full::new(Bytes::new()))
            .expect("static response"),
        "/download" => {
            let n = query("bytes").unwrap_or(0).min(1 << 30) as usize;
            Response::builder()
                .header(http::header::CONTENT_TYPE, "application/octet-stream")
                .body(Full::new(Bytes::from(vec![b'x'; n])))
                .expect("static response")
        }
        _ => json_response(
            200,
            serde_json::json!({"sha256": sha256_hex(&body), "len": body.len()}).to_string(),
        ),
    }
}

/// Pages of `GET /user/repos` on the fake API.
pub const REPO_PAGES: u64 = 3;
/// Repositories per page of `GET /user/repos`.
pub const REPOS_PER_PAGE: u64 = 2;
