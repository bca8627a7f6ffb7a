//! The Flashback-compatible refresh backend: `POST {backend_url}/auth/{provider}/refresh`.
//!
//! Reading the answer follows SPEC section 2: the status decides first (5xx, 408, 429 ⇒
//! transient, with the backend's `Retry-After`; other 4xx ⇒ rejected; 1xx/3xx ⇒ transient,
//! redirects are not followed); a 2xx with `success: false` is a rejection; a 2xx whose body is
//! empty, unparseable, over 1 MiB, or has no usable token is a failure too, but an
//! [`Unconfirmed`](RefreshError::Unconfirmed) one: the backend answered, it may have rotated
//! the refresh token, so the same token is not sent again in that cycle.
//!
//! Fields are read one by one from a JSON object, never as one typed struct: a usable `token`
//! and a rotated `refreshToken` are never discarded because another member is malformed. An
//! `expiresAt` that is not a usable number (a string — even a numeric one —, a bool, an object,
//! a negative or absurd value) means "unknown expiry", logged at `warn` without its value.

use std::time::Duration;

use serde_json::{Map, Value};

use super::transport::{
    build_client, check_url, loggable_code, read_limited, transient_status, transient_status_error,
    transport_error, InvalidUrl, DEFAULT_EXCHANGE_BOUND,
};
use super::{BoxFuture, RefreshError, Refreshed, Refresher};
use crate::provider::Provider;
use crate::token::{timestamp_to_system_time, Secret};

/// Refreshes through a Flashback-compatible backend.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::{BackendRefresher, Secret};
///
/// let r = BackendRefresher::new("https://backend.example")
///     .unwrap()
///     .bearer(Secret::new("backend-token"))
///     .timeout(Duration::from_secs(5));
/// # let _ = r;
/// ```
#[derive(Clone)]
pub struct BackendRefresher {
    client: reqwest::Client,
    base: String,
    bearer: Option<Secret>,
}

impl std::fmt::Debug for BackendRefresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendRefresher")
            .field("base", &self.base)
            .field("bearer", &self.bearer)
            .finish()
    }
}

impl BackendRefresher {
    /// A refresher for the backend at `backend_url` (`http` or `https`, no query, no
    /// credentials in the URL). Each exchange is bounded by 2 min 10 s (connect: 10 s): the
    /// [`RetryPolicy`](crate::RetryPolicy) answers callers after its `timeout` and keeps
    /// waiting for a late answer within its `late_answer_window`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::BackendRefresher;
    /// assert!(BackendRefresher::new("ftp://nope").is_err());
    /// ```
    pub fn new(backend_url: &str) -> Result<Self, InvalidUrl> {
        check_url(backend_url, "backend")?;
        Ok(BackendRefresher {
            client: build_client(DEFAULT_EXCHANGE_BOUND),
            base: backend_url.trim_end_matches('/').to_string(),
            bearer: None,
        })
    }

    /// Sends `Authorization: Bearer {token}` to the backend.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, Secret};
    /// let r = BackendRefresher::new("http://127.0.0.1:1").unwrap().bearer(Secret::new("t"));
    /// # let _ = r;
    /// ```
    pub fn bearer(mut self, token: Secret) -> Self {
        self.bearer = Some(token);
        self
    }

    /// Bounds each backend exchange (connect, send, read) by `timeout` (connect: at most 10 s).
    /// Keep it at least the retry policy's `timeout + late_answer_window`, or a late answer
    /// cannot be read.
    ///
    /// ```
    /// # use oauth_refresh_proxy::BackendRefresher;
    /// let r = BackendRefresher::new("http://127.0.0.1:1").unwrap().timeout(std::time::Duration::from_secs(2));
    /// # let _ = r;
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.client = build_client(timeout);
        self
    }

    async fn refresh_once(
        &self,
        provider: Provider,
        refresh_token: &Secret,
    ) -> Result<Refreshed, RefreshError> {
        let url = format!("{}/auth/{}/refresh", self.base, provider.as_str());
        let body = serde_json::json!({ "refresh_token": refresh_token.expose() });
        let mut req = self
            .client
            .post(&url)
            .header(http::header::ACCEPT, "application/json")
            .json(&body);
        if let Some(bearer) = &self.bearer {
            let v = bearer.bearer_header().ok_or_else(|| {
                RefreshError::transient("backend token is not a valid header value")
            })?;
            req = req.header(http::header::AUTHORIZATION, v);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error("backend", &e))?;
        let status = resp.status();
        if transient_status(status) {
            return Err(transient_status_error("backend", &resp));
        }
        let body = read_limited(resp, "backend").await?;
        classify_backend(status, &body)
    }
}

impl Refresher for BackendRefresher {
    fn refresh<'a>(
        &'a self,
        provider: Provider,
        refresh_token: &'a Secret,
    ) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
        Box::pin(self.refresh_once(provider, refresh_token))
    }
}

/// A non-empty string member.
fn string_member(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// `expiresAt` as unix seconds: a non-negative JSON number (milliseconds above 10^12); absent,
/// `null` or `0` ⇒ unknown; anything else ⇒ unknown, with a warning that names the type only.
fn expires_at_member(obj: &Map<String, Value>) -> Option<i64> {
    let v = obj.get("expiresAt")?;
    let kind = match v {
        Value::Null => return None,
        Value::Number(n) => match n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)) {
            Some(t) if t >= 0 => return Some(t),
            _ => "a negative number",
        },
        Value::String(_) => "a string",
        Value::Bool(_) => "a bool",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    tracing::warn!(
        found = kind,
        "backend answered an expiresAt that is not a usable number; the expiry is treated as unknown"
    );
    None
}

/// Classifies a backend answer (SPEC 2).
pub(crate) fn classify_backend(
    status: http::StatusCode,
    body: &[u8],
) -> Result<Refreshed, RefreshError> {
    if transient_status(status) {
        return Err(RefreshError::transient(format!(
            "backend answered {status}"
        )));
    }
    let object = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| match v {
            Value::Object(o) => Some(o),
            _ => None,
        });
    if status.is_client_error() {
        let code = object
            .as_ref()
            .and_then(|o| string_member(o, "error_code"))
            .filter(|c| loggable_code(c).is_some());
        return Err(RefreshError::rejected(match code {
            Some(code) => format!("backend answered {status} ({code})"),
            None => format!("backend answered {status}"),
        }));
    }
    if !status.is_success() {
        return Err(RefreshError::transient(format!(
            "backend answered {status} (not followed)"
        )));
    }
    let Some(answer) = object else {
        return Err(RefreshError::unconfirmed(
            "backend answered 2xx with a body that is not a JSON object",
        ));
    };
    if answer.get("success") == Some(&Value::Bool(false)) {
        return Err(RefreshError::rejected("backend answered success: false"));
    }
    let token = string_member(&answer, "token")
        .or_else(|| string_member(&answer, "accessToken"))
        .ok_or_else(|| RefreshError::unconfirmed("backend answered 2xx without a token"))?;
    let access_token = Secret::new(token);
    let refresh_token = string_member(&answer, "refreshToken").map(Secret::new);
    if access_token.bearer_header().is_none() {
        if refresh_token.is_some() {
            // The rotation cannot be kept without a usable access token to go with it; say so
            // loudly, without the values.
            tracing::error!("backend answered a rotated refreshToken with an access token that is not a valid header value; the answer cannot be used");
        }
        return Err(RefreshError::unconfirmed(
            "backend returned a token that is not a valid header value",
        ));
    }
    let expires_at = expires_at_member(&answer).and_then(timestamp_to_system_time);
    Ok(Refreshed {
        access_token,
        refresh_token,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn reads_both_shapes() {
        let g = br#"{"success": true, "token": "ya29.a", "refreshToken": "1//r", "expiresAt": 1767229200}"#;
        let r = classify_backend(StatusCode::OK, g).unwrap();
        assert_eq!(r.access_token.expose(), "ya29.a");
        assert_eq!(r.refresh_token.unwrap().expose(), "1//r");
        let gh = br#"{"success": true, "accessToken": "ghu_a", "refreshToken": "ghr_b", "expiresAt": 1767254400000}"#;
        let r = classify_backend(StatusCode::OK, gh).unwrap();
        assert_eq!(r.access_token.expose(), "ghu_a");
        assert_eq!(
            crate::token::unix_secs(r.expires_at.unwrap()),
            1_767_254_400
        );
    }

    #[test]
    fn classifies_failures() {
        let t = |s: u16, b: &[u8]| classify_backend(StatusCode::from_u16(s).unwrap(), b);
        assert!(t(400, b"{}").unwrap_err().is_rejected());
        assert!(t(401, b"").unwrap_err().is_rejected());
        assert!(t(422, b"x").unwrap_err().is_rejected());
        assert!(!t(500, br#"{"success":false}"#).unwrap_err().is_rejected());
        assert!(!t(429, b"").unwrap_err().is_rejected());
        assert!(!t(408, b"").unwrap_err().is_rejected());
        assert!(!t(302, b"").unwrap_err().is_rejected());
        assert!(t(200, br#"{"success":false,"message":"x"}"#)
            .unwrap_err()
            .is_rejected());
        assert!(!t(200, b"").unwrap_err().is_rejected());
        assert!(!t(200, b"not json").unwrap_err().is_rejected());
        assert!(!t(200, br#"{"success":true,"token":""}"#)
            .unwrap_err()
            .is_rejected());
        assert!(!t(200, br#"{"success":true,"token":"a\r\nb"}"#)
            .unwrap_err()
            .is_rejected());
        assert!(t(200, br#"{"success":true,"token":"ok"}"#)
            .unwrap()
            .expires_at
            .is_none());
        assert!(t(200, br#"{"success":true,"token":"ok","expiresAt":0}"#)
            .unwrap()
            .expires_at
            .is_none());
    }

    #[test]
    fn a_malformed_expiry_never_hides_the_tokens() {
        for expires in [
            r#""1796197312""#,
            r#""2026-12-02T10:00:00Z""#,
            "true",
            r#"{"seconds": 1796197312}"#,
            "[1]",
            "-5",
            "null",
        ] {
            let body = format!(
                r#"{{"success": true, "token": "ghu_new", "refreshToken": "ghr_rotated", "expiresAt": {expires}}}"#
            );
            let r = classify_backend(StatusCode::OK, body.as_bytes())
                .unwrap_or_else(|e| panic!("expiresAt {expires}: {e}"));
            assert_eq!(r.access_token.expose(), "ghu_new", "{expires}");
            assert_eq!(
                r.refresh_token.unwrap().expose(),
                "ghr_rotated",
                "{expires}"
            );
            assert!(r.expires_at.is_none(), "{expires}");
        }
        // Other malformed members do not matter either.
        let r = classify_backend(
            StatusCode::OK,
            br#"{"success": "yes", "token": "ya29.x", "accessToken": 5, "refreshToken": "1//r", "extra": {}}"#,
        )
        .unwrap();
        assert_eq!(r.access_token.expose(), "ya29.x");
        assert_eq!(r.refresh_token.unwrap().expose(), "1//r");
    }

    #[test]
    fn only_failures_that_did_not_spend_the_token_are_retryable() {
        let t = |s: u16, b: &[u8]| classify_backend(StatusCode::from_u16(s).unwrap(), b);
        assert!(t(503, b"").unwrap_err().is_retryable());
        assert!(t(302, b"").unwrap_err().is_retryable());
        assert!(!t(200, b"").unwrap_err().is_retryable());
        assert!(!t(200, b"[]").unwrap_err().is_retryable());
        assert!(!t(200, br#"{"success":true}"#).unwrap_err().is_retryable());
    }
}
