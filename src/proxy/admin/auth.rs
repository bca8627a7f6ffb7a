//! The admin token in front of the token API (`Authorization: Bearer <admin_token>`).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::AdminState;
use crate::proxy::auth::bearer_matches;
use crate::proxy::errors::json_error;

/// `None` when the request may use the token API; else the 401 answer.
pub(super) fn check_admin_token(
    state: &AdminState,
    headers: &http::HeaderMap,
) -> Option<Response<Full<Bytes>>> {
    let token = state.admin_token.as_ref()?;
    if bearer_matches(token, headers, &header::AUTHORIZATION) {
        return None;
    }
    let mut resp = json_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this endpoint requires Authorization: Bearer <admin_token>",
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(resp)
}
