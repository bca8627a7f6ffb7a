//! The responses the sidecar makes itself (SPEC 4.4): a JSON body
//! `{"error": {"code", "message", "provider"?, "account"?}}` with `content-type: application/json`.
//!
//! A failed upstream attempt is told apart by the first cause in its error's source chain that
//! the proxy recognises: the caller's request body failing ([`BodyError`]: stalled ⇒
//! `408 request_timeout`, malformed ⇒ `400 bad_request`), no response head in time
//! ([`UpstreamError::Timeout`] ⇒ `504 upstream_timeout`); anything else is
//! `502 upstream_unavailable`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::timeouts::BodyError;
use super::upstream::UpstreamError;
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
    /// No response head within `upstream.response_timeout` (504).
    UpstreamTimeout,
    /// The caller's request body stalled longer than `server.body_read_timeout` (408).
    RequestTimeout,
    /// A request the proxy never forwards: absolute-form URI, or malformed body framing
    /// (chunked encoding) (400).
    BadRequest,
    /// CONNECT and TRACE (405).
    MethodNotAllowed,
    /// The token store could not be reached or written (503).
    StoreUnavailable,
    /// The account is known to be rate limited on that upstream (429, SPEC 4.10).
    RateLimited,
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
            Code::UpstreamTimeout => "upstream_timeout",
            Code::RequestTimeout => "request_timeout",
            Code::BadRequest => "bad_request",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::StoreUnavailable => "store_unavailable",
            Code::RateLimited => "rate_limited",
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
            Code::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The code of a layer error; a failed upstream attempt by its cause (module docs).
    ///
    /// ```
    /// use oauth_refresh_proxy::proxy::errors::Code;
    /// use oauth_refresh_proxy::Error;
    ///
    /// assert_eq!(Code::of(&Error::account_required(None)), Code::AccountRequired);
    /// ```
    pub fn of(err: &Error) -> Code {
        match err.kind() {
            ErrorKind::AccountRequired => Code::AccountRequired,
            ErrorKind::UnknownAccount => Code::UnknownAccount,
            ErrorKind::RefreshRejected => Code::RefreshRejected,
            ErrorKind::RefreshUnavailable => Code::RefreshUnavailable,
            ErrorKind::StoreUnavailable => Code::StoreUnavailable,
            _ => failure(err).0,
        }
    }
}

/// The code of a failed upstream attempt, and a message naming its cause: the first link of
/// the source chain the proxy recognises (module docs).
fn failure(err: &Error) -> (Code, String) {
    let mut cur = std::error::Error::source(err);
    while let Some(e) = cur {
        if let Some(body) = e.downcast_ref::<BodyError>() {
            return match body {
                BodyError::Idle(d) => (
                    Code::RequestTimeout,
                    format!("the request body sent no byte for {d:?}"),
                ),
                BodyError::Failed(cause) => (
                    Code::BadRequest,
                    format!("malformed request body: {}", root_cause(&**cause)),
                ),
            };
        }
        if let Some(UpstreamError::Timeout(_)) = e.downcast_ref::<UpstreamError>() {
            return (Code::UpstreamTimeout, e.to_string());
        }
        cur = e.source();
    }
    // The inner error may name an upstream address; keep the reason generic but useful.
    (
        Code::UpstreamUnavailable,
        format!("upstream request failed: {}", root_cause(err)),
    )
}

/// Seconds a caller is asked to wait after `refresh_unavailable`.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Builds the JSON error response for `code`, with the header some codes carry: a rejected
/// refresh says `x-oauth-refresh: rejected`, an unavailable one `Retry-After`, a missing
/// `client_token` `Proxy-Authenticate` (SPEC 4.4).
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
    let mut error = error_object(code.as_str(), message);
    if let Some(p) = provider {
        error["provider"] = p.as_str().into();
    }
    if let Some(a) = account {
        error["account"] = a.into();
    }
    let mut resp = json(code.status(), &serde_json::json!({ "error": error }));
    let h = resp.headers_mut();
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
    let (code, message) = match err.kind() {
        ErrorKind::Inner => failure(err),
        _ => (Code::of(err), err.to_string()),
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

/// A JSON response: `value` with `content-type: application/json`.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON error response of this module's shape, `{"error": {"code", "message"}}`, for codes
/// outside [`Code`] (the admin API's).
pub(crate) fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({ "error": error_object(code, message) }),
    )
}

fn error_object(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "code": code, "message": message })
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn inner(source: impl Into<crate::BoxError>) -> Error {
        Error::inner(Some(Provider::GitHub), None, source)
    }

    fn code_and_message(err: &Error) -> (u16, String, String) {
        let resp = from_error(err);
        let status = resp.status().as_u16();
        let body = body_bytes(resp);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (
            status,
            v["error"]["code"].as_str().unwrap().to_string(),
            v["error"]["message"].as_str().unwrap().to_string(),
        )
    }

    fn body_bytes(resp: Response<Full<Bytes>>) -> Bytes {
        use http_body_util::BodyExt;
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(resp.into_body().collect())
            .unwrap()
            .to_bytes()
    }

    #[test]
    fn upstream_failures_are_told_apart_by_their_cause() {
        let timeout = inner(UpstreamError::Timeout(Duration::from_secs(1)));
        assert_eq!(Code::of(&timeout), Code::UpstreamTimeout);
        assert_eq!(
            code_and_message(&timeout),
            (
                504,
                "upstream_timeout".into(),
                "no response head from the upstream within 1s".into()
            )
        );

        let stalled = inner(UpstreamError::RequestBody(BodyError::Idle(
            Duration::from_secs(2),
        )));
        assert_eq!(
            code_and_message(&stalled),
            (
                408,
                "request_timeout".into(),
                "the request body sent no byte for 2s".into()
            )
        );

        let framing = std::io::Error::new(std::io::ErrorKind::InvalidData, "invalid chunk size");
        let malformed = inner(UpstreamError::RequestBody(BodyError::Failed(
            std::sync::Arc::new(framing),
        )));
        assert_eq!(
            code_and_message(&malformed),
            (
                400,
                "bad_request".into(),
                "malformed request body: invalid chunk size".into()
            )
        );

        // A BodyError deeper in the chain (as HTTP/1.1 reports it) is found too.
        #[derive(Debug, thiserror::Error)]
        #[error("connection error")]
        struct Wrapper(#[source] BodyError);
        let deep = inner(Wrapper(BodyError::Idle(Duration::from_millis(1500))));
        assert_eq!(Code::of(&deep), Code::RequestTimeout);

        let other = inner(std::io::Error::other("connection refused"));
        assert_eq!(
            code_and_message(&other),
            (
                502,
                "upstream_unavailable".into(),
                "upstream request failed: connection refused".into()
            )
        );
    }

    #[test]
    fn new_codes_have_their_statuses() {
        for (code, status, s) in [
            (Code::UpstreamTimeout, 504, "upstream_timeout"),
            (Code::RequestTimeout, 408, "request_timeout"),
            (Code::BadRequest, 400, "bad_request"),
            (Code::MethodNotAllowed, 405, "method_not_allowed"),
            (Code::RateLimited, 429, "rate_limited"),
        ] {
            assert_eq!((code.status().as_u16(), code.as_str()), (status, s));
        }
    }
}
