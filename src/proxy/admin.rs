//! The admin listener's request handler (SPEC 4.5): health, readiness, metrics and the token
//! API (`/tokens`).
//!
//! No answer and no log line ever carries a token value: listings hold expiries and
//! generations only, error bodies never echo the request body, and only the method, path and
//! status are logged (at debug).
//!
//! # Paged, streamed listing
//!
//! `GET /tokens?limit=N&after=provider/account` answers one page of the accounts sorted by
//! provider (`google`, then `github`) and account id (byte order), strictly after `after`:
//!
//! * `limit`: from 1 to [`MAX_LIMIT`] (10 000); default [`DEFAULT_LIMIT`] (1 000). A larger
//!   value, 0 or a non-number is `400 bad_request` — not clamped, so a client asking for more
//!   than a page learns it at once.
//! * `after`: `provider/account`, percent-decoded as a whole (strictly: a malformed escape or
//!   invalid UTF-8 is 400; `+` is a plus), split at the first `/`; an unknown provider or an
//!   empty account is 400. It need not name an existing account.
//! * any other query parameter, or one given twice, is 400.
//! * when more accounts remain, `Link: </tokens?limit=N&after=provider/account>; rel="next"`
//!   names the next page (the account id percent-encoded, all but `A-Z a-z 0-9 - . _ ~`).
//!   Following it from the first page visits every account that exists throughout, once, in
//!   order. The last page has no `Link`; a page after the last account is `[]`.
//!
//! A page costs O(log n + limit) whatever the number of accounts ([`Tokens::list_page`]'s
//! index). The body streams ([`ListingBody`]): the page's ids are taken at once (shared
//! pointers, no copies), then entries are looked up and serialised [`CHUNK`] at a time by a
//! producer on a thread of its own, one chunk ahead of the socket, so a listing holds at most
//! two chunks of JSON, a slow reader holds no more, and the serialising never runs on the
//! proxy's workers (see `listing.rs`).

//!
//! The module's parts: [`handle`] and the state here, the routing (`routing.rs`), the
//! handlers of each endpoint (`handlers.rs`), the admin bearer check (`auth.rs`), the small
//! answers they share (`respond.rs`), the body type ([`AdminBody`], `body.rs`) and the listing
//! (`listing.rs`).

use std::sync::Arc;

use http::{Request, Response};
use http_body::Body;

use crate::proxy::metrics::Metrics;
use crate::proxy::rate_limit::RateLimits;
use crate::token::Secret;
use crate::tokens::Tokens;

pub use crate::proxy::request_body::MAX_BODY;

mod auth;
mod body;
mod handlers;
mod listing;
mod respond;
mod routing;
#[cfg(test)]
mod tests;

pub use body::AdminBody;
pub use listing::{ListingBody, CHUNK, DEFAULT_LIMIT, MAX_LIMIT};

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
///     rate_limits: Default::default(),
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
    /// An extra readiness condition for `/readyz`, on top of the token store's own health
    /// ([`Tokens::ready`]); the sidecar passes `|| true`.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The proxy's rate limits, for the listing's `rate_limited_until` (SPEC 4.10).
    pub rate_limits: RateLimits,
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
/// `unauthorized` (with `WWW-Authenticate: Bearer`; the scheme is matched case-insensitively,
/// the token in constant time). Account ids in paths are percent-decoded. `GET /tokens` is paged
/// and streamed (see the [module docs](self)).
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
///     rate_limits: Default::default(),
/// };
/// let put = http::Request::put("/tokens/github/octo")
///     .header("authorization", "Bearer admin-secret")
///     .body(Full::new(Bytes::from(r#"{"refresh_token": "ghr_x"}"#)))
///     .unwrap();
/// assert_eq!(handle(&state, put).await.status(), 201);
///
/// let anonymous = http::Request::get("/tokens").body(Full::new(Bytes::new())).unwrap();
/// assert_eq!(handle(&state, anonymous).await.status(), 401);
///
/// let page = http::Request::get("/tokens?limit=1")
///     .header("authorization", "bearer admin-secret")
///     .body(Full::new(Bytes::new()))
///     .unwrap();
/// let resp = handle(&state, page).await;
/// assert_eq!(resp.status(), 200);
/// assert!(resp.headers().get("link").is_none(), "one account: no next page");
/// # });
/// ```
pub async fn handle<B>(state: &AdminState, req: Request<B>) -> Response<AdminBody>
where
    B: Body,
    B::Error: std::fmt::Display,
{
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = routing::route(state, req).await;
    tracing::debug!(%method, path, status = resp.status().as_u16(), "admin request");
    resp
}
