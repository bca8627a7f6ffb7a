//! The admin API's small answers: plain text, `400 bad_request`, `405 method_not_allowed` and
//! `404 unknown_account`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::provider::Provider;
use crate::proxy::errors::{self, json_error, Code};

pub(super) fn unknown_account(provider: Provider, account: &str) -> Response<Full<Bytes>> {
    errors::error_response(
        Code::UnknownAccount,
        &format!("no token for {provider} account {account:?}"),
        Some(provider),
        Some(account),
    )
}

pub(super) fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(super) fn bad_request(message: &str) -> Response<Full<Bytes>> {
    json_error(StatusCode::BAD_REQUEST, "bad_request", message)
}

pub(super) fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("this endpoint allows {allow}"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}
