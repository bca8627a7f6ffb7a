//! The responses the sidecar makes itself (SPEC 4.4): a JSON body
//! `{"error": {"code", "message", "provider"?, "account"?}}` with `content-type: application/json`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::{Error, ErrorKind, Provider};

/// One of the error codes of SPEC 4.4.
///
/// ```
/// use oauth_refresh_proxy::proxy::errors::Code;
/// assert_eq!(Code::RefreshUnavailable.status().as_u16(), 503);
/// assert_eq!(Code::UnknownRoute.as_str(), "unknown_route");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// No route matches (404).
    UnknownRoute,
    /// No `x-oauth-account` and no default account (400).
    AccountRequired,
    /// No token for that account (404).
    UnknownAccount,
    /// `client_token` is set and the caller did not present it (407).
    Unauthorized,
    /// The account's refresh token is dead (401).
    RefreshRejected,
    /// A refresh failed transiently after retries (503).
    RefreshUnavailable,
    /// Upstream connect/TLS/protocol failure (502).
    UpstreamUnavailable,
    /// A request the proxy never forwards: absolute-form URI (400).
    BadRequest,
    /// CONNECT (405).
    MethodNotAllowed,
    /// The token store could not be reached or written (503).
    StoreUnavailable,
}

impl Code {
    /// The `code` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::UnknownRoute => "unknown_route",
            Code::AccountRequired => "account_required",
            Code::UnknownAccount => "unknown_account",
            Code::Unauthorized => "unauthorized",
            Code::RefreshRejected => "refresh_rejected",
            Code::RefreshUnavailable => "refresh_unavailable",
            Code::UpstreamUnavailable => "upstream_unavailable",
            Code::BadRequest => "bad_request",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::StoreUnavailable => "store_unavailable",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Code::UnknownRoute | Code::UnknownAccount => StatusCode::NOT_FOUND,
            Code::AccountRequired | Code::BadRequest => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Code::RefreshRejected => StatusCode::UNAUTHORIZED,
            Code::RefreshUnavailable | Code::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The code of a layer error.
    pub fn of(err: &Error) -> Code {
        match err.kind() {
            ErrorKind::AccountRequired => Code::AccountRequired,
            ErrorKind::UnknownAccount => Code::UnknownAccount,
            ErrorKind::RefreshRejected => Code::RefreshRejected,
            ErrorKind::RefreshUnavailable => Code::RefreshUnavailable,
            ErrorKind::StoreUnavailable => Code::StoreUnavailable,
            _ => Code::UpstreamUnavailable,
        }
    }
}

/// Seconds a caller is asked to wait after `refresh_unavailable`.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Builds the JSON error response for `code`, with the headers SPEC 4.4 requires
/// (`x-oauth-refresh: rejected`, `Retry-After`, `Proxy-Authenticate`).
///
/// ```
/// use oauth_refresh_proxy::proxy::errors::{error_response, Code};
/// use oauth_refresh_proxy::Provider;
///
/// let resp = error_response(Code::RefreshUnavailable, "backend down", Some(Provider::Google), Some("alice"));
/// assert_eq!(resp.status(), 503);
/// assert_eq!(resp.headers()["retry-after"], "5");
/// assert_eq!(resp.headers()["content-type"], "application/json");
/// ```
pub fn error_response(
    code: Code,
    message: &str,
    provider: Option<Provider>,
    account: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut error = serde_json::json!({ "code": code.as_str(), "message": message });
    if let Some(p) = provider {
        error["provider"] = p.as_str().into();
    }
    if let Some(a) = account {
        error["account"] = a.into();
    }
    let body = serde_json::json!({ "error": error }).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code.status();
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    match code {
        Code::RefreshRejected => {
            h.insert("x-oauth-refresh", HeaderValue::from_static("rejected"));
        }
        Code::RefreshUnavailable => {
            h.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(RETRY_AFTER_SECS),
            );
        }
        Code::Unauthorized => {
            h.insert(
                http::header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        _ => {}
    }
    resp
}

/// The JSON error response for a layer error.
///
/// ```
/// use oauth_refresh_proxy::proxy::errors::from_error;
/// use oauth_refresh_proxy::Error;
///
/// assert_eq!(from_error(&Error::account_required(None)).status(), 400);
/// ```
pub fn from_error(err: &Error) -> Response<Full<Bytes>> {
    let code = Code::of(err);
    let message = match code {
        // The inner error may name an upstream address; keep the reason generic but useful.
        Code::UpstreamUnavailable => format!("upstream request failed: {}", root_cause(err)),
        _ => err.to_string(),
    };
    let mut resp = error_response(
        code,
        &message,
        err.provider(),
        err.account().map(|a| a.as_str()),
    );
    if let (Code::RefreshUnavailable, Some(after)) = (code, err.retry_after()) {
        // Whole seconds, rounded up, at least 1: the cooldown's time left.
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    resp
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
