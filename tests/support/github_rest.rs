//! A fake GitHub REST API whose JSON bodies carry absolute `url` fields on its own origin, as
//! api.github.com's do (SDKs like PyGithub follow them): repositories, paged issues, issue
//! creation, and a non-JSON download. Tokens are the [`Realm`]'s; every request is recorded.
//!
//! With a valid bearer token:
//! - `GET /repos/{o}/{r}` → the repository (`url`, `issues_url` with its `{/number}` template,
//!   `owner.url`, `html_url` on github.com, and `hooks_url` written with escaped slashes);
//! - `GET /repos/{o}/{r}/issues[?page=N]` → [`ISSUE_PAGES`] pages of [`ISSUES_PER_PAGE`]
//!   issues, with a `Link` header of absolute URLs on this server;
//! - `POST /repos/{o}/{r}/issues` with `{"title"}` → 201 and the new issue (number 1000 + n);
//! - `GET /big?items=N` → N issues of `o/r` in one JSON array (large enough to arrive in
//!   several frames);
//! - `GET /download?bytes=N` → N bytes of `application/octet-stream` that look like JSON with
//!   this server's URLs in them ([`download_bytes`]);
//! - `GET /gzipped` → `application/json` with `Content-Encoding: gzip` (bytes that contain an
//!   upstream URL, not really compressed: the proxy must not look inside);
//!
//! anything else → 404. Without a valid token → GitHub's 401.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::process::Proxy;
use super::{now_secs, serve, Realm, GITHUB_401};

/// Pages of `GET /repos/{o}/{r}/issues`.
pub const ISSUE_PAGES: u64 = 3;
/// Issues per page.
pub const ISSUES_PER_PAGE: u64 = 2;

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path_and_query: String,
    pub authorization: Option<String>,
    pub status: u16,
    pub user_agent: String,
}

/// The requests the fake received, in order.
#[derive(Default)]
pub struct Calls(Mutex<Vec<Call>>);

impl Calls {
    pub fn all(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }
}

/// `n` bytes of a non-JSON download that nonetheless contain `"url":"http://{own}/..."`.
pub fn download_bytes(own: &str, n: usize) -> Vec<u8> {
    let unit = format!(
        "{{\"url\":\"{own}/repos/o/r\",\"esc\":\"http:\\/\\/{}\\/x\"}}\n",
        own.trim_start_matches("http://")
    );
    let mut out = Vec::with_capacity(n);
    let mut i = 0u32;
    while out.len() < n {
        out.extend_from_slice(unit.as_bytes());
        out.push(0xff);
        out.push((i % 251) as u8);
        i = i.wrapping_add(1);
    }
    out.truncate(n);
    out
}

/// The real binary in front of the fake at `api`: route `/github` (plus `extra_routes`, TOML
/// `[[route]]` tables), account `github/octocat` (the default account) with `access` valid for
/// an hour, refreshing through the fake backend at `backend_url`. Its secrets come from the
/// environment, never the file.
pub async fn start_sidecar(
    realm: &Realm,
    backend_url: &str,
    api: SocketAddr,
    extra_routes: &str,
    refresh: &str,
    access: &str,
) -> Proxy {
    let config = format!(
        r#"listen = "127.0.0.1:0"
admin_listen = ""

[refresh]
mode = "backend"
backend_url = "{backend_url}"
backend_token = "env:ORP_T_BACKEND"

[[route]]
prefix = "/github"
upstream = "http://{api}"
provider = "github"
default_account = "octocat"
{extra_routes}
[[account]]
provider = "github"
id = "octocat"
refresh_token = "env:ORP_T_REFRESH"
access_token = "env:ORP_T_ACCESS"
expires_at = {}
"#,
        now_secs() + 3600
    );
    let backend_token = realm.backend_token.clone().expect("the realm has a bearer");
    Proxy::start(
        &config,
        &[],
        &[
            ("ORP_T_BACKEND", &backend_token),
            ("ORP_T_REFRESH", refresh),
            ("ORP_T_ACCESS", access),
        ],
    )
    .await
}

/// Starts the fake; returns its address and its record of calls.
pub async fn start(realm: Arc<Realm>) -> (SocketAddr, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let c = calls.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let (realm, calls) = (realm.clone(), c.clone());
        async move { handle(&realm, &calls, req).await }
    })
    .await;
    (addr, calls)
}

fn json(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn issue(own: &str, o: &str, r: &str, number: u64, title: &str) -> serde_json::Value {
    serde_json::json!({
        "number": number,
        "id": number,
        "title": title,
        "state": "open",
        "body": format!("quoting {own}/repos/{o}/{r} in text stays as it is"),
        "url": format!("{own}/repos/{o}/{r}/issues/{number}"),
        "repository_url": format!("{own}/repos/{o}/{r}"),
        "comments_url": format!("{own}/repos/{o}/{r}/issues/{number}/comments"),
        "html_url": format!("https://github.com/{o}/{r}/issues/{number}"),
        "user": {"login": o, "id": 1, "url": format!("{own}/users/{o}")},
        "labels": [],
        "comments": 0,
    })
}

async fn handle(realm: &Realm, calls: &Calls, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let authorization = header("authorization");
    let user_agent = header("user-agent").unwrap_or_default();
    let own = header("host")
        .map(|h| format!("http://{h}"))
        .unwrap_or_default();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let valid = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| realm.is_valid_access(t));
    let resp = if !valid {
        let mut b = Response::builder().status(GITHUB_401.status);
        for (k, v) in GITHUB_401.headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::from_static(GITHUB_401.body.as_bytes())))
            .unwrap()
    } else {
        route(&own, &method, &path, &path_and_query, &body)
    };
    calls.0.lock().unwrap().push(Call {
        method,
        path_and_query,
        authorization,
        status: resp.status().as_u16(),
        user_agent,
    });
    resp
}

fn route(own: &str, method: &str, path: &str, pq: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let query = |name: &str| -> Option<u64> {
        pq.split_once('?')?
            .1
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = if method == "HEAD" { "GET" } else { method };
    match (method, segments.as_slice()) {
        ("GET", ["repos", o, r]) => {
            let repo = serde_json::json!({
                "id": 42,
                "name": r,
                "full_name": format!("{o}/{r}"),
                "private": false,
                "url": format!("{own}/repos/{o}/{r}"),
                "issues_url": format!("{own}/repos/{o}/{r}/issues{{/number}}"),
                "html_url": format!("https://github.com/{o}/{r}"),
                "owner": {"login": o, "id": 1, "url": format!("{own}/users/{o}")},
            })
            .to_string();
            // One field the way PHP-style encoders write it: escaped slashes.
            let escaped = format!("{own}/repos/{o}/{r}/hooks").replace('/', "\\/");
            let repo = format!(
                "{},\"hooks_url\":\"{escaped}\"}}",
                repo.strip_suffix('}').unwrap()
            );
            json(200, repo)
        }
        ("GET", ["repos", o, r, "issues"]) => {
            let page = query("page").unwrap_or(1).clamp(1, ISSUE_PAGES);
            let issues: Vec<_> = (0..ISSUES_PER_PAGE)
                .map(|i| {
                    let n = (page - 1) * ISSUES_PER_PAGE + i + 1;
                    issue(own, o, r, n, &format!("issue {n}"))
                })
                .collect();
            let mut resp = json(200, serde_json::Value::from(issues).to_string());
            if page < ISSUE_PAGES {
                let link = format!(
                    r#"<{own}/repos/{o}/{r}/issues?page={}>; rel="next", <{own}/repos/{o}/{r}/issues?page={ISSUE_PAGES}>; rel="last""#,
                    page + 1
                );
                resp.headers_mut()
                    .insert(http::header::LINK, link.parse().unwrap());
            }
            resp
        }
        ("POST", ["repos", o, r, "issues"]) => {
            let title = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["title"].as_str().map(str::to_string))
                .unwrap_or_default();
            json(201, issue(own, o, r, 1001, &title).to_string())
        }
        ("GET", ["big"]) => {
            let n = query("items").unwrap_or(1).min(100_000);
            let items: Vec<_> = (1..=n).map(|i| issue(own, "o", "r", i, "big")).collect();
            json(200, serde_json::Value::from(items).to_string())
        }
        ("GET", ["download"]) => {
            let n = query("bytes").unwrap_or(0).min(1 << 30) as usize;
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(Full::new(Bytes::from(download_bytes(own, n))))
                .unwrap()
        }
        ("GET", ["gzipped"]) => Response::builder()
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(Full::new(Bytes::from(format!(
                "{{\"url\":\"{own}/repos/o/r\"}}"
            ))))
            .unwrap(),
        _ => json(404, r#"{"message":"Not Found"}"#.to_string()),
    }
}
