//! The admin listener's request handler (SPEC 4.5): health, readiness, metrics and the token
//! API (`/tokens`).
//!
//! No answer and no log line ever carries a token value: listings hold expiries and
//! generations only, error bodies never echo the request body, and only the method, path and
//! status are logged (at debug).

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

use crate::provider::Provider;
use crate::proxy::errors::{self, Code};
use crate::proxy::metrics::{self, Metrics};
use crate::token::{timestamp_to_system_time, Secret, TokenSeed};
use crate::tokens::{AccountInfo, Tokens};

/// The largest request body the admin API reads (64 KiB); larger ones get 413.
pub const MAX_BODY: usize = 64 * 1024;

/// What the admin handler works on.
///
/// ```
/// use std::sync::Arc;
/// use oauth_refresh_proxy::proxy::{admin::AdminState, metrics::Metrics};
/// use oauth_refresh_proxy::{BackendRefresher, Secret, Tokens};
///
/// let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
/// let state = AdminState {
///     metrics: Metrics::new(tokens.clone()),
///     tokens,
///     admin_token: Some(Secret::new("admin-secret")),
///     ready: Arc::new(|| true),
/// };
/// # let _ = state;
/// ```
#[derive(Clone)]
pub struct AdminState {
    /// The token cache the `/tokens` endpoints manage.
    pub tokens: Tokens,
    /// The metrics served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// When set, the `/tokens` endpoints require `Authorization: Bearer <admin_token>`.
    pub admin_token: Option<Secret>,
    /// Whether the store is reachable (`/readyz`); the memory store is always ready.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("tokens", &self.tokens)
            .field("admin_token", &self.admin_token)
            .finish_non_exhaustive()
    }
}

/// Answers one admin request (SPEC 4.5).
///
/// | route | answer |
/// |---|---|
/// | `GET /healthz` | 200 `ok` |
/// | `GET /readyz` | 200 `ready`, or 503 `not ready` |
/// | `GET /metrics` | the OpenMetrics exposition |
/// | `GET /tokens` | JSON array of listing entries |
/// | `PUT /tokens/{provider}/{account}` | 201 created / 200 replaced, with the listing entry |
/// | `DELETE /tokens/{provider}/{account}` | 204, or 404 `unknown_account` |
/// | `POST /tokens/{provider}/{account}/refresh` | 200 `{"expires_at", "generation"}` or the SPEC 4.4 error |
///
/// Unknown paths get 404 `not_found`, a wrong method 405 `method_not_allowed` (with `Allow`),
/// malformed input 400 `bad_request`, a body over [`MAX_BODY`] 413 `payload_too_large`, and —
/// when `admin_token` is set — a `/tokens` request without the right bearer 401
/// `unauthorized` (with `WWW-Authenticate: Bearer`). Account ids in paths are percent-decoded.
///
/// ```
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use oauth_refresh_proxy::proxy::{admin::{handle, AdminState}, metrics::Metrics};
/// use oauth_refresh_proxy::{BackendRefresher, Secret, Tokens};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
/// let state = AdminState {
///     metrics: Metrics::new(tokens.clone()),
///     tokens,
///     admin_token: Some(Secret::new("admin-secret")),
///     ready: Arc::new(|| true),
/// };
/// let put = http::Request::put("/tokens/github/octo")
///     .header("authorization", "Bearer admin-secret")
///     .body(Full::new(Bytes::from(r#"{"refresh_token": "ghr_x"}"#)))
///     .unwrap();
/// assert_eq!(handle(&state, put).await.status(), 201);
///
/// let anonymous = http::Request::get("/tokens").body(Full::new(Bytes::new())).unwrap();
/// assert_eq!(handle(&state, anonymous).await.status(), 401);
/// # });
/// ```
pub async fn handle<B>(state: &AdminState, req: Request<B>) -> Response<Full<Bytes>>
where
    B: Body,
    B::Error: std::fmt::Display,
{
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = route(state, req).await;
    tracing::debug!(%method, path, status = resp.status().as_u16(), "admin request");
    resp
}

async fn route<B>(state: &AdminState, req: Request<B>) -> Response<Full<Bytes>>
where
    B: Body,
    B::Error: std::fmt::Display,
{
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/healthz" => {
            return match *req.method() {
                Method::GET => text(StatusCode::OK, "ok"),
                _ => method_not_allowed("GET"),
            }
        }
        "/readyz" => {
            return match *req.method() {
                Method::GET if (state.ready)() => text(StatusCode::OK, "ready"),
                Method::GET => text(StatusCode::SERVICE_UNAVAILABLE, "not ready"),
                _ => method_not_allowed("GET"),
            }
        }
        "/metrics" => {
            return match *req.method() {
                Method::GET => {
                    let mut resp = Response::new(Full::new(Bytes::from(state.metrics.render())));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(metrics::CONTENT_TYPE),
                    );
                    resp
                }
                _ => method_not_allowed("GET"),
            }
        }
        _ => {}
    }

    // Everything else is the token API (or unknown): behind the admin token when set, so an
    // anonymous caller learns nothing about the paths either.
    if let Some(token) = &state.admin_token {
        if !authorized(token, req.headers()) {
            let mut resp = json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this endpoint requires Authorization: Bearer <admin_token>",
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }

    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match segments.as_slice() {
        ["tokens"] => match *req.method() {
            Method::GET => {
                let list: Vec<serde_json::Value> =
                    state.tokens.list().iter().map(listing_entry).collect();
                json(StatusCode::OK, &serde_json::Value::Array(list))
            }
            _ => method_not_allowed("GET"),
        },
        ["tokens", provider, account] => {
            let allowed = "PUT, DELETE";
            if *req.method() != Method::PUT && *req.method() != Method::DELETE {
                return method_not_allowed(allowed);
            }
            let (provider, account) = match target(provider, account) {
                Ok(t) => t,
                Err(resp) => return resp,
            };
            if *req.method() == Method::PUT {
                put(state, provider, &account, req.into_body()).await
            } else if state.tokens.remove(provider, &account) {
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::NO_CONTENT;
                resp
            } else {
                unknown_account(provider, &account)
            }
        }
        ["tokens", provider, account, "refresh"] => {
            if *req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            let (provider, account) = match target(provider, account) {
                Ok(t) => t,
                Err(resp) => return resp,
            };
            match state.tokens.refresh_now(provider, &account).await {
                Ok(info) => json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "expires_at": info.expires_at,
                        "generation": info.generation,
                    }),
                ),
                Err(e) => errors::from_error(&e),
            }
        }
        _ => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such admin endpoint",
        ),
    }
}

/// The body of `PUT /tokens/{provider}/{account}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    refresh_token: Option<String>,
    access_token: Option<String>,
    expires_at: Option<i64>,
}

const PUT_SHAPE: &str =
    "expected a JSON object {\"refresh_token\": string, \"access_token\"?: string, \"expires_at\"?: integer}";

async fn put<B>(state: &AdminState, provider: Provider, account: &str, body: B) -> Response<Full<Bytes>>
where
    B: Body,
    B::Error: std::fmt::Display,
{
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    // serde_json's messages may quote the input: never pass them on.
    let body: PutBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            let what = if e.is_syntax() || e.is_eof() {
                "the body is not valid JSON"
            } else {
                "the body has the wrong shape"
            };
            return bad_request(&format!(
                "{what} (line {}, column {}); {PUT_SHAPE}",
                e.line(),
                e.column()
            ));
        }
    };
    let refresh_token = match body.refresh_token {
        Some(t) if !t.is_empty() => Secret::new(t),
        Some(_) => return bad_request("refresh_token must not be empty"),
        None => return bad_request(&format!("refresh_token is missing; {PUT_SHAPE}")),
    };
    let mut seed = TokenSeed::new(refresh_token);
    if let Some(access) = body.access_token.filter(|a| !a.is_empty()) {
        let access = Secret::new(access);
        if access.bearer_header().is_none() {
            return bad_request("access_token holds characters an HTTP header cannot carry");
        }
        seed = seed.access_token(access);
    }
    if let Some(at) = body.expires_at.and_then(timestamp_to_system_time) {
        seed = seed.expires_at(at);
    }
    let replaced = state.tokens.insert(provider, account, seed);
    match state.tokens.get(provider, account) {
        Some(info) => json(
            if replaced {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            },
            &listing_entry(&info),
        ),
        // Removed concurrently.
        None => unknown_account(provider, account),
    }
}

/// Reads a body of at most [`MAX_BODY`] bytes.
async fn read_body<B>(body: B) -> Result<Bytes, Response<Full<Bytes>>>
where
    B: Body,
    B::Error: std::fmt::Display,
{
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the request body exceeds {MAX_BODY} bytes"),
        )
    };
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Err(too_large());
    }
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while let Some(frame) = body.as_mut().frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(_) => return Err(bad_request("could not read the request body")),
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.remaining() > MAX_BODY {
                return Err(too_large());
            }
            buf.put(data);
        }
    }
    Ok(buf.freeze())
}

/// Checks `Authorization: Bearer <token>` (scheme case-insensitive) in constant time.
fn authorized(token: &Secret, headers: &http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, presented)) = value.split_once(' ') else {
        return false;
    };
    let presented = presented.trim();
    scheme.eq_ignore_ascii_case("bearer")
        && !presented.is_empty()
        && token.constant_time_eq(presented)
}

/// The provider and percent-decoded account of a `/tokens/{provider}/{account}` path.
#[allow(clippy::result_large_err)]
fn target(provider: &str, account: &str) -> Result<(Provider, String), Response<Full<Bytes>>> {
    let provider: Provider = provider
        .parse()
        .map_err(|_| bad_request("unknown provider (expected \"google\" or \"github\")"))?;
    let account = percent_decode(account)
        .ok_or_else(|| bad_request("the account id is not validly percent-encoded UTF-8"))?;
    if account.is_empty() {
        return Err(bad_request("the account id is empty"));
    }
    if account.contains('/') {
        return Err(bad_request("the account id must not contain '/'"));
    }
    Ok((provider, account))
}

/// Decodes `%XX` escapes; `None` for a malformed escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One account's listing entry (SPEC 4.5): never a token value.
fn listing_entry(a: &AccountInfo) -> serde_json::Value {
    serde_json::json!({
        "provider": a.provider.as_str(),
        "account": a.account,
        "expires_at": a.expires_at,
        "generation": a.generation,
        "needs_reauth": a.needs_reauth,
        "last_refresh_at": a.last_refresh_at,
        "last_error": a.last_error,
    })
}

fn unknown_account(provider: Provider, account: &str) -> Response<Full<Bytes>> {
    errors::error_response(
        Code::UnknownAccount,
        &format!("no token for {provider} account {account:?}"),
        Some(provider),
        Some(account),
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({ "error": { "code": code, "message": message } }),
    )
}

fn bad_request(message: &str) -> Response<Full<Bytes>> {
    json_error(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("this endpoint allows {allow}"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}
