//! The admin API's routing: which handler answers a method and path, and the admin token in
//! front of the token API.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;

use super::auth::check_admin_token;
use super::handlers;
use super::respond::{bad_request, method_not_allowed};
use super::{AdminBody, AdminState};
use crate::provider::Provider;
use crate::proxy::errors::json_error;

/// Answers one admin request: the streamed listing, or any other endpoint.
pub(super) async fn route<B>(state: &AdminState, req: Request<B>) -> Response<AdminBody>
where
    B: Body,
    B::Error: std::fmt::Display,
{
    if req.uri().path() == "/tokens" && req.method() == Method::GET {
        if let Some(denied) = check_admin_token(state, req.headers()) {
            return denied.map(AdminBody::from);
        }
        return handlers::list(state, req.uri().query());
    }
    other(state, req).await.map(AdminBody::from)
}

/// Everything but the listing.
async fn other<B>(state: &AdminState, req: Request<B>) -> Response<Full<Bytes>>
where
    B: Body,
    B::Error: std::fmt::Display,
{
    let path = req.uri().path().to_string();
    let get_only = match path.as_str() {
        "/healthz" | "/readyz" | "/metrics" if *req.method() != Method::GET => {
            return method_not_allowed("GET")
        }
        "/healthz" => Some(handlers::healthz()),
        "/readyz" => Some(handlers::readyz(state).await),
        "/metrics" => Some(handlers::metrics(state)),
        _ => None,
    };
    if let Some(resp) = get_only {
        return resp;
    }

    // Everything else is the token API (or unknown): behind the admin token when set, so an
    // anonymous caller learns nothing about the paths either.
    if let Some(denied) = check_admin_token(state, req.headers()) {
        return denied;
    }

    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match segments.as_slice() {
        // GET is answered by `list`.
        ["tokens"] => method_not_allowed("GET"),
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
                return handlers::put(state, provider, &account, req.into_body()).await;
            }
            handlers::delete(state, provider, &account).await
        }
        ["tokens", provider, account, "refresh"] => {
            if *req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            match target(provider, account) {
                Ok((provider, account)) => handlers::refresh(state, provider, &account).await,
                Err(resp) => resp,
            }
        }
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    }
}

/// The provider and percent-decoded account of a `/tokens/{provider}/{account}` path.
#[allow(clippy::result_large_err)] // the error is the response itself, built once
pub(super) fn target(
    provider: &str,
    account: &str,
) -> Result<(Provider, String), Response<Full<Bytes>>> {
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
pub(super) fn percent_decode(s: &str) -> Option<String> {
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
