//! The Flashback-compatible refresh backend: `POST {backend_url}/auth/{provider}/refresh`.
//!
//! Reading the answer follows SPEC section 2: the status decides first (5xx, 408, 429 ⇒
//! transient; other 4xx ⇒ rejected; 1xx/3xx ⇒ transient, redirects are not followed); a 2xx with
//! `success: false` is a rejection; a 2xx whose body is empty, unparseable, over 1 MiB, or has no
//! usable token is transient (a broken backend, not a dead refresh token).

use std::time::Duration;

use serde::Deserialize;

use super::{BoxFuture, RefreshError, Refreshed, Refresher};
use crate::provider::Provider;
use crate::token::{timestamp_to_system_time, Secret};

/// The largest backend answer read; a longer one is a transient error.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1 << 20;

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

/// The backend URL could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid backend url {url:?}: {reason}")]
pub struct InvalidBackendUrl {
    url: String,
    reason: String,
}

impl BackendRefresher {
    /// A refresher for the backend at `backend_url` (`http` or `https`), with a 10 s request
    /// timeout.
    ///
    /// ```
    /// # use oauth_refresh_proxy::BackendRefresher;
    /// assert!(BackendRefresher::new("ftp://nope").is_err());
    /// ```
    pub fn new(backend_url: &str) -> Result<Self, InvalidBackendUrl> {
        let err = |reason: &str| InvalidBackendUrl {
            url: backend_url.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = backend_url.parse().map_err(|_| err("not a URL"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(err("scheme must be http or https")),
        }
        if uri.host().is_none() {
            return Err(err("no host"));
        }
        if uri.query().is_some() {
            return Err(err("a query is not allowed"));
        }
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
            let mut v = http::HeaderValue::from_str(&format!("Bearer {}", bearer.expose()))
                .map_err(|_| {
                    RefreshError::transient("backend token is not a valid header value")
                })?;
            v.set_sensitive(true);
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

/// A reqwest client for refresh calls: bounded time, no redirects, no proxy from the environment.
pub(crate) fn build_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("reqwest client with static options")
}

/// Describes a transport error without the URL's query or any header (no secret can be in it).
pub(crate) fn transport_error(who: &str, e: &reqwest::Error) -> RefreshError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "broken response body"
    } else {
        "request failed"
    };
    RefreshError::transient(format!("{who} {what}"))
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of a response body.
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    who: &str,
) -> Result<Vec<u8>, RefreshError> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(RefreshError::transient(format!(
            "{who} response body over {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(who, &e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(RefreshError::transient(format!(
                "{who} response body over {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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
    if status.is_server_error()
        || status == http::StatusCode::REQUEST_TIMEOUT
        || status == http::StatusCode::TOO_MANY_REQUESTS
    {
        return Err(RefreshError::transient(format!(
            "backend answered {status}"
        )));
    }
    if status.is_client_error() {
        let code = serde_json::from_slice::<BackendAnswer>(body)
            .ok()
            .and_then(|a| a.error_code)
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
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
