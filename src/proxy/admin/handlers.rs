//! The admin API's endpoints, one function each: health, readiness, metrics, and the token
//! API's listing, `PUT`, `DELETE` and refresh.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use serde::Deserialize;

use super::body::Kind;
use super::listing::{self, ListingEntry};
use super::respond::{bad_request, text, unknown_account};
use super::{AdminBody, AdminState, MAX_BODY};
use crate::provider::Provider;
use crate::proxy::errors::{self, json, json_error};
use crate::proxy::metrics;
use crate::proxy::rate_limit::RateLimits;
use crate::proxy::request_body::{closing, read_bounded, ReadError};
use crate::token::{timestamp_to_system_time, Secret, TokenSeed};
use crate::tokens::AccountInfo;

/// `GET /healthz`.
pub(super) fn healthz() -> Response<Full<Bytes>> {
    text(StatusCode::OK, "ok")
}

/// `GET /readyz`: the extra condition and the token store's health.
pub(super) async fn readyz(state: &AdminState) -> Response<Full<Bytes>> {
    if (state.ready)() && state.tokens.ready().await {
        text(StatusCode::OK, "ready")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// `GET /metrics`: the OpenMetrics exposition.
pub(super) fn metrics(state: &AdminState) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(state.metrics.render())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    resp
}

/// The answer of `GET /tokens` (see the module docs).
pub(super) fn list(state: &AdminState, query: Option<&str>) -> Response<AdminBody> {
    let q = match listing::parse_list_query(query) {
        Ok(q) => q,
        Err(message) => return bad_request(&message).map(AdminBody::from),
    };
    let Some((link, body)) = listing::page(&state.tokens, &state.rate_limits, &q) else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the listing could not be started",
        )
        .map(AdminBody::from);
    };
    let mut resp = Response::new(AdminBody(Kind::Listing(body)));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(link) = link {
        headers.insert(header::LINK, link);
    }
    resp
}

/// `DELETE /tokens/{provider}/{account}`.
pub(super) async fn delete(
    state: &AdminState,
    provider: Provider,
    account: &str,
) -> Response<Full<Bytes>> {
    match state.tokens.delete(provider, account).await {
        Ok(true) => {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        Ok(false) => unknown_account(provider, account),
        Err(e) => errors::from_error(&e),
    }
}

/// `POST /tokens/{provider}/{account}/refresh`.
pub(super) async fn refresh(
    state: &AdminState,
    provider: Provider,
    account: &str,
) -> Response<Full<Bytes>> {
    match state.tokens.refresh_now(provider, account).await {
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

/// `PUT /tokens/{provider}/{account}`.
pub(super) async fn put<B>(
    state: &AdminState,
    provider: Provider,
    account: &str,
    body: B,
) -> Response<Full<Bytes>>
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
    let replaced = match state.tokens.save(provider, account, seed).await {
        Ok(replaced) => replaced,
        Err(e) => return errors::from_error(&e),
    };
    match state.tokens.get(provider, account) {
        Some(info) => json(
            if replaced {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            },
            &listing_entry(&info, &state.rate_limits),
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
    read_bounded(body).await.map_err(|e| match e {
        ReadError::TooLarge => closing(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the request body exceeds {MAX_BODY} bytes"),
        )),
        ReadError::Unreadable => bad_request("could not read the request body"),
    })
}

/// One account's listing entry as a JSON value (the answer of `PUT`).
fn listing_entry(a: &AccountInfo, limits: &RateLimits) -> serde_json::Value {
    serde_json::to_value(ListingEntry::new(a, limits)).unwrap_or_default()
}
