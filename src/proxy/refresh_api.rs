//! The refresh API served by the sidecar itself (SPEC 4.9): the backend contract of SPEC 2,
//! self-hosted, so one deployment can be the refresh backend of others (a sidecar in
//! `backend` mode, or any client of the Flashback seed endpoints).
//!
//! ```text
//! POST /auth/google/refresh            POST /auth/github/refresh
//! Authorization: Bearer <refresh_api.token>
//! {"refresh_token": "…"}
//!
//! 200 {"success": true, "token", "refreshToken", "expiresAt"}               (google)
//! 200 {"success": true, "token", "accessToken", "refreshToken", "expiresAt"} (github)
//! ```
//!
//! `refreshToken` is the rotated refresh token when the provider rotated it, else the one sent;
//! `expiresAt` is unix **seconds** (`0` when the provider gave no lifetime). Errors are
//! `{"success": false, "error_code", "message"}`:
//!
//! | status | `error_code` | when |
//! |---|---|---|
//! | 400 | `INVALID_REQUEST` | the body is not a JSON object with a non-empty string `refresh_token` |
//! | 400 | `INVALID_REFRESH_TOKEN` | the provider rejected the refresh token (dead, revoked) |
//! | 401 | `UNAUTHORIZED` | missing or wrong bearer (`WWW-Authenticate: Bearer`) |
//! | 404 | `UNSUPPORTED_PROVIDER` | `/auth/{provider}/refresh` for a provider without `[refresh.{provider}]` credentials (or no such provider) |
//! | 405 | `METHOD_NOT_ALLOWED` | not `POST` (`Allow: POST`) |
//! | 413 | `PAYLOAD_TOO_LARGE` | a body over [`MAX_BODY`] |
//! | 502 | `PROVIDER_UNAVAILABLE` | the provider was unreachable, answered 5xx, or refused this proxy's client credentials, after the retries (`Retry-After`) |
//!
//! The bearer is checked first (in constant time), then the method, the provider and the body.
//! `client_token` does not apply to these paths: they have their own token.
//!
//! # One mechanism
//!
//! A served refresh runs the same [`GoogleRefresher`](crate::GoogleRefresher) /
//! [`GitHubRefresher`](crate::GitHubRefresher) (through a [`DirectRefresher`]) under the same
//! [`RetryPolicy`] as the proxy's own refreshes, and its errors carry the same redacted
//! messages. Concurrent requests for the same provider and refresh token coalesce into **one**
//! provider call: flights are keyed by a SHA-256 fingerprint of the refresh token (the raw token
//! is never a key or a log field), and each flight runs in its own task, so a caller that hangs
//! up does not cancel it for the others.
//!
//! An attempt that times out after its request was sent is not abandoned (the refresh
//! discipline of [`RetryPolicy`]): its callers get `PROVIDER_UNAVAILABLE` once
//! `refresh.timeout` has passed, the flight stays registered while the answer is awaited for up
//! to `refresh.late_answer_window` (a repeat of the request is told the same, without a second
//! provider call), and a late rotated answer is kept like a prompt one:
//!
//! A flight whose provider **rotated** the refresh token stays answerable for
//! [`ROTATED_REPLAY_WINDOW`]: a caller that lost the answer (a timeout on its side) and asks
//! again with the old refresh token gets the same tokens back, instead of spending a refresh
//! token the provider has already invalidated (GitHub) and being told it is dead. Results
//! without rotation are never reused (a repeated refresh of a non-rotating token is harmless
//! and may be wanted because the last access token was revoked).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::token::{hex, sha256};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::auth::bearer_matches;
use super::errors::{self, RETRY_AFTER_SECS};
use super::request_body::{closing, read_bounded, ReadError};

use crate::single_flight::{Flights, Joined, Publisher, Ticket};

use crate::refresh::{DirectRefresher, RefreshError, Refreshed, RetryPolicy};
use crate::token::unix_secs;
use crate::{BoxError, Provider, Secret};

pub use super::request_body::MAX_BODY;

/// How long a rotated result stays answerable to a repeat of the same request.
pub const ROTATED_REPLAY_WINDOW: Duration = Duration::from_secs(60);

type Outcome = Result<Refreshed, RefreshError>;

/// Flights by provider and refresh-token fingerprint.
type RefreshFlights = Flights<(Provider, [u8; 32]), Outcome>;

/// The served refresh API: the handler of `POST /auth/{google,github}/refresh`.
///
/// ```
/// use oauth_refresh_proxy::proxy::refresh_api::RefreshApi;
/// use oauth_refresh_proxy::{DirectRefresher, GoogleRefresher, RetryPolicy, Secret};
///
/// let api = RefreshApi::new(
///     Secret::new("api-bearer"),
///     DirectRefresher::new().google(GoogleRefresher::new("id", Secret::new("client-secret"))),
///     RetryPolicy::default(),
/// );
/// assert!(!format!("{api:?}").contains("api-bearer"));
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// // Without the bearer: 401, before anything else is looked at.
/// let req = http::Request::post("/auth/google/refresh")
///     .body(http_body_util::Full::new(bytes::Bytes::from(r#"{"refresh_token":"1//x"}"#)))
///     .unwrap();
/// let resp = api.handle(req).await;
/// assert_eq!(resp.status(), 401);
/// # });
/// ```
pub struct RefreshApi {
    token: Secret,
    refresher: Arc<DirectRefresher>,
    policy: RetryPolicy,
    flights: RefreshFlights,
    replay_window: Duration,
}

impl std::fmt::Debug for RefreshApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshApi")
            .field("token", &self.token)
            .field("refresher", &self.refresher)
            .field("policy", &self.policy)
            .finish()
    }
}

/// Whether `path` is a refresh API path, `/auth/{provider}/refresh` (any one segment), and the
/// `route` label its requests are counted under in `orp_requests_total`: the path itself for
/// `google` and `github`, `""` for any other segment.
///
/// ```
/// use oauth_refresh_proxy::proxy::refresh_api::route_label;
///
/// assert_eq!(route_label("/auth/google/refresh").as_deref(), Some("/auth/google/refresh"));
/// assert_eq!(route_label("/auth/gitlab/refresh").as_deref(), Some(""));
/// assert_eq!(route_label("/auth/google/refresh/x"), None);
/// assert_eq!(route_label("/authx/google/refresh"), None);
/// ```
pub fn route_label(path: &str) -> Option<String> {
    let segment = provider_segment(path)?;
    Some(match segment.parse::<Provider>() {
        Ok(_) => path.to_string(),
        Err(_) => String::new(),
    })
}

fn provider_segment(path: &str) -> Option<&str> {
    let segment = path.strip_prefix("/auth/")?.strip_suffix("/refresh")?;
    (!segment.is_empty() && !segment.contains('/')).then_some(segment)
}

impl RefreshApi {
    /// The API guarded by `token`, refreshing with `refresher` under `policy`. Providers that
    /// `refresher` does not [support](DirectRefresher::supports) answer 404
    /// `UNSUPPORTED_PROVIDER`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::refresh_api::RefreshApi;
    /// # use oauth_refresh_proxy::{DirectRefresher, RetryPolicy, Secret};
    /// let api = RefreshApi::new(Secret::new("t"), DirectRefresher::new(), RetryPolicy::default());
    /// # let _ = api;
    /// ```
    pub fn new(token: Secret, refresher: DirectRefresher, policy: RetryPolicy) -> Self {
        RefreshApi {
            token,
            refresher: Arc::new(refresher),
            policy,
            flights: Flights::default(),
            replay_window: ROTATED_REPLAY_WINDOW,
        }
    }

    /// Handles one request to `/auth/{provider}/refresh` (see the [module docs](self) for
    /// the answers). Any body type: it is read up to [`MAX_BODY`].
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::refresh_api::RefreshApi;
    /// # use oauth_refresh_proxy::{DirectRefresher, RetryPolicy, Secret};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let api = RefreshApi::new(Secret::new("t"), DirectRefresher::new(), RetryPolicy::default());
    /// let req = http::Request::post("/auth/github/refresh")
    ///     .header("authorization", "Bearer t")
    ///     .body(http_body_util::Empty::<bytes::Bytes>::new())
    ///     .unwrap();
    /// let resp = api.handle(req).await;
    /// assert_eq!(resp.status(), 404); // no GitHub credentials: UNSUPPORTED_PROVIDER
    /// # });
    /// ```
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: http_body::Body,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let path = req.uri().path().to_string();
        let Some(segment) = provider_segment(&path) else {
            return error(
                StatusCode::NOT_FOUND,
                "UNSUPPORTED_PROVIDER",
                "no such path",
            );
        };
        if !bearer_matches(&self.token, req.headers(), &header::AUTHORIZATION) {
            tracing::info!(path = %path, "refresh API: missing or wrong bearer");
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "send Authorization: Bearer <refresh_api token>",
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
        if req.method() != Method::POST {
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "only POST is allowed",
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
        let provider = match segment.parse::<Provider>() {
            Ok(p) if self.refresher.supports(p) => p,
            Ok(p) => {
                return error(
                    StatusCode::NOT_FOUND,
                    "UNSUPPORTED_PROVIDER",
                    &format!("no [refresh.{p}] client credentials are configured"),
                )
            }
            Err(_) => {
                return error(
                    StatusCode::NOT_FOUND,
                    "UNSUPPORTED_PROVIDER",
                    "unknown provider (expected google or github)",
                )
            }
        };
        let refresh_token = match read_refresh_token(req.into_body()).await {
            Ok(t) => t,
            Err(resp) => return resp,
        };
        let fp = fingerprint(provider, &refresh_token);
        let (result, coalesced) = self.refresh(provider, fp, refresh_token.clone()).await;
        let short = short_hex(&fp);
        let elapsed = started.elapsed();
        match result {
            Ok(r) => {
                let rotated = r
                    .refresh_token
                    .as_ref()
                    .is_some_and(|t| *t != refresh_token);
                tracing::info!(%provider, fingerprint = %short, coalesced, rotated, ?elapsed, "refresh API: refreshed");
                success(provider, &refresh_token, &r)
            }
            Err(e) if e.is_rejected() => {
                tracing::info!(%provider, fingerprint = %short, coalesced, error = %e, "refresh API: refresh token rejected");
                error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REFRESH_TOKEN",
                    &e.to_string(),
                )
            }
            Err(e) => {
                tracing::warn!(%provider, fingerprint = %short, coalesced, error = %e, "refresh API: provider unavailable");
                let mut resp = error(
                    StatusCode::BAD_GATEWAY,
                    "PROVIDER_UNAVAILABLE",
                    &e.to_string(),
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                resp
            }
        }
    }

    /// Joins the flight for (`provider`, `fp`) or starts it; `true` when joined.
    async fn refresh(
        &self,
        provider: Provider,
        fp: [u8; 32],
        refresh_token: Secret,
    ) -> (Result<Refreshed, RefreshError>, bool) {
        let task = FlightTask {
            refresher: self.refresher.clone(),
            policy: self.policy.clone(),
            provider,
            fp,
            refresh_token,
            replay_window: self.replay_window,
        };
        let (flight, joined) = self
            .flights
            .join_or_start((provider, fp), |publisher, ticket| {
                task.run(publisher, ticket)
            });
        let result = flight
            .wait()
            .await
            .unwrap_or_else(|| Err(RefreshError::transient("refresh task ended")));
        (result, joined == Joined::Existing)
    }
}

struct FlightTask {
    refresher: Arc<DirectRefresher>,
    policy: RetryPolicy,
    provider: Provider,
    fp: [u8; 32],
    refresh_token: Secret,
    replay_window: Duration,
}

impl FlightTask {
    async fn run(self, tx: Publisher<Outcome>, ticket: Ticket<(Provider, [u8; 32]), Outcome>) {
        let (provider, fp) = (self.provider, self.fp);
        tracing::debug!(%provider, fingerprint = %short_hex(&fp), "refresh API: refreshing");
        // An attempt that timed out after sending releases the callers (502) but keeps the
        // flight: a repeat of the request joins it instead of spending the token again, and a
        // late rotated answer stays answerable for the replay window below.
        let result = self
            .policy
            .run_notify(&*self.refresher, provider, &self.refresh_token, |e| {
                tx.publish(Err(e));
            })
            .await;
        let rotated = matches!(&result, Ok(r) if r.refresh_token.as_ref().is_some_and(|t| *t != self.refresh_token));
        if rotated {
            // Answer repeats of this request (with the now dead refresh token) for a while.
            ticket.release_after(self.replay_window);
        } else {
            ticket.release();
        }
        tx.publish(result);
    }
}

/// Reads `{"refresh_token": "…"}` (other members are ignored).
async fn read_refresh_token<B>(body: B) -> Result<Secret, Response<Full<Bytes>>>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let bytes = match read_bounded(body).await {
        Ok(bytes) => bytes,
        Err(ReadError::TooLarge) => {
            return Err(closing(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                &format!("the body is over {MAX_BODY} bytes"),
            )))
        }
        Err(ReadError::Unreadable) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "the request body could not be read",
            ))
        }
    };
    let invalid = |msg: &str| error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", msg);
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| invalid("the body must be JSON: {\"refresh_token\": \"…\"}"))?;
    match value.get("refresh_token") {
        Some(serde_json::Value::String(t)) if !t.is_empty() => Ok(Secret::new(t.as_str())),
        Some(serde_json::Value::String(_)) => Err(invalid("refresh_token must not be empty")),
        Some(_) => Err(invalid("refresh_token must be a string")),
        None if value.is_object() => Err(invalid("missing refresh_token")),
        None => Err(invalid("the body must be a JSON object")),
    }
}

/// SHA-256 of the provider and the refresh token: the flight key.
fn fingerprint(provider: Provider, refresh_token: &Secret) -> [u8; 32] {
    sha256(&[
        provider.as_str().as_bytes(),
        &[0],
        refresh_token.expose().as_bytes(),
    ])
}

/// The first 6 bytes of a fingerprint in hex: enough to correlate log lines, useless to
/// recover a token.
fn short_hex(fp: &[u8; 32]) -> String {
    hex(&fp[..6])
}

/// A JSON answer of this API: never cached, since it may carry tokens.
fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = errors::json(status, &body);
    let h = resp.headers_mut();
    // Token responses must not be cached (RFC 6749 §5.1).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({"success": false, "error_code": code, "message": message}),
    )
}

fn success(provider: Provider, sent: &Secret, r: &Refreshed) -> Response<Full<Bytes>> {
    let refresh_token = r.refresh_token.as_ref().unwrap_or(sent);
    let mut body = serde_json::json!({
        "success": true,
        "token": r.access_token.expose(),
        "refreshToken": refresh_token.expose(),
        "expiresAt": r.expires_at.map(unix_secs).unwrap_or(0),
    });
    if provider == Provider::GitHub {
        body["accessToken"] = r.access_token.expose().into();
    }
    json(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_differ_per_provider_and_token() {
        let a = fingerprint(Provider::Google, &Secret::new("r"));
        assert_ne!(a, fingerprint(Provider::GitHub, &Secret::new("r")));
        assert_ne!(a, fingerprint(Provider::Google, &Secret::new("r2")));
        assert_eq!(short_hex(&a).len(), 12);
    }

    #[test]
    fn paths() {
        assert_eq!(provider_segment("/auth/google/refresh"), Some("google"));
        assert_eq!(provider_segment("/auth//refresh"), None);
        assert_eq!(provider_segment("/auth/refresh"), None);
        assert_eq!(provider_segment("/auth/a/b/refresh"), None);
    }
}
