//! The Flashback-compatible refresh backend: `POST {backend_url}/auth/{provider}/refresh`.
//!
//! Reading the answer follows SPEC section 2: the status decides first (5xx, 408, 429 ⇒
//! transient; other 4xx ⇒ rejected; 1xx/3xx ⇒ transient, redirects are not followed); a 2xx with
//! `success: false` is a rejection; a 2xx whose body is empty, unparseable, over 1 MiB, or has no
//! usable token is transient (a broken backend, not a dead refresh token).

use std::time::Duration;

use serde::Deserialize;

use super::http::{
    build_client, check_url, loggable_code, read_limited, transient_status, transport_error,
    InvalidUrl,
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
    /// credentials in the URL), with a 10 s request timeout.
    ///
    /// ```
    /// # use oauth_refresh_proxy::BackendRefresher;
    /// assert!(BackendRefresher::new("ftp://nope").is_err());
    /// ```
    pub fn new(backend_url: &str) -> Result<Self, InvalidUrl> {
        check_url(backend_url, "backend")?;
        Ok(BackendRefresher {
            client: build_client(Duration::from_secs(10)),
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

    /// Bounds each backend request (connect, send, read) by `timeout`.
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

#[derive(Deserialize)]
struct BackendAnswer {
    success: Option<bool>,
    token: Option<String>,
    #[serde(rename = "accessToken")]
    access_token: Option<String>,
    #[serde(rename = "refreshToken")]
    refresh_token: Option<String>,
    #[serde(rename = "expiresAt")]
    expires_at: Option<serde_json::Number>,
    error_code: Option<String>,
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
    if status.is_client_error() {
        let code = serde_json::from_slice::<BackendAnswer>(body)
            .ok()
            .and_then(|a| a.error_code)
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
    let answer: BackendAnswer = serde_json::from_slice(body).map_err(|_| {
        RefreshError::transient("backend answered 2xx with a body that is not the expected JSON")
    })?;
    if answer.success == Some(false) {
        return Err(RefreshError::rejected("backend answered success: false"));
    }
    let token = answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| RefreshError::transient("backend answered 2xx without a token"))?;
    let access_token = Secret::new(token);
    if access_token.bearer_header().is_none() {
        return Err(RefreshError::transient(
            "backend returned a token that is not a valid header value",
        ));
    }
    let refresh_token = answer
        .refresh_token
        .filter(|t| !t.is_empty())
        .map(Secret::new);
    let expires_at = answer
        .expires_at
        .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)))
        .and_then(timestamp_to_system_time);
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
}
