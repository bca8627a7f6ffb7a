//! The HTTP plumbing every refresher shares: one way to build the client (bounded time, no
//! redirects, no proxy from the environment), to describe transport errors without a URL or a
//! header, to read a bounded body, and to check a refresh endpoint's URL. The OAuth 2 call
//! behind both direct refreshers is in `token_endpoint`.
//!
//! [`BackendRefresher`](super::BackendRefresher), [`GoogleRefresher`](super::GoogleRefresher)
//! and [`GitHubRefresher`](super::GitHubRefresher) all go through these, so a fix here applies
//! to every refresher.

use std::time::Duration;

use super::url::check_http_uri;
use super::{RefreshError, RetryPolicy};

/// The largest refresh answer read; a longer one is a transient error (SPEC 2).
pub(crate) const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A refresh endpoint URL (backend or token endpoint) that cannot be used.
///
/// ```
/// use oauth_refresh_proxy::{BackendRefresher, GoogleRefresher, Secret};
///
/// let e = BackendRefresher::new("ftp://backend").unwrap_err();
/// assert_eq!(e.to_string(), r#"invalid backend url "ftp://backend": scheme must be http or https"#);
/// let e = GoogleRefresher::new("id", Secret::new("s")).token_url("nope").unwrap_err();
/// assert!(e.to_string().starts_with("invalid token url"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} url {url:?}: {reason}")]
pub struct InvalidUrl {
    what: &'static str,
    url: String,
    reason: String,
}

/// Checks that `url` is an absolute `http`/`https` URL with a host, no credentials and no
/// query ([`check_http_uri`]); `what` names it in the error (`backend`, `token`).
pub(crate) fn check_url(url: &str, what: &'static str) -> Result<(), InvalidUrl> {
    let err = |reason: &str| InvalidUrl {
        what,
        // Never echo credentials back.
        url: if url.contains('@') {
            "[url with credentials]".to_string()
        } else {
            url.to_string()
        },
        reason: reason.to_string(),
    };
    let uri: http::Uri = url.parse().map_err(|_| err("not a URL"))?;
    check_http_uri(&uri).map_err(|problem| err(problem.reason()))
}

/// How long one refresh exchange may last by default: the default
/// [`RetryPolicy`] `timeout` (10 s) plus its `late_answer_window` (2 min).
/// Callers are answered at the policy's `timeout`; the exchange itself goes on so that a late
/// answer (and its rotated refresh token) can still be read.
pub(crate) const DEFAULT_EXCHANGE_BOUND: Duration =
    RetryPolicy::DEFAULT_TIMEOUT.saturating_add(RetryPolicy::DEFAULT_LATE_ANSWER_WINDOW);

/// The longest TCP/TLS connect of a refresh call: a connection never made never carried a
/// refresh token, so failing it early is always safe (and retryable).
const MAX_CONNECT: Duration = Duration::from_secs(10);

/// A reqwest client for refresh calls: each exchange bounded by `total` (connect at most
/// 10 s), no redirects, no proxy from the environment.
pub(crate) fn build_client(total: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(total)
        .connect_timeout(total.min(MAX_CONNECT))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("reqwest client with static options")
}

/// Describes a transport error without the URL's query or any header (no secret can be in it).
///
/// A connection that could not be made never carried the refresh token: that failure is
/// [`Transient`](RefreshError::Transient) (retryable). Anything after the request may have
/// been written — a timeout, a reset, a broken body — is
/// [`Unconfirmed`](RefreshError::Unconfirmed): the backend may have spent the token.
pub(crate) fn transport_error(who: &str, e: &reqwest::Error) -> RefreshError {
    if e.is_connect() {
        return RefreshError::transient(format!("{who} connection failed"));
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "broken response body"
    } else {
        "request failed"
    };
    RefreshError::unconfirmed(format!("{who} {what}"))
}

/// The pause a response's `Retry-After` asks for, in delta-seconds (an HTTP-date is ignored).
pub(crate) fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The error of a transient status (5xx, 408, 429), read before the body: the refresh token
/// was not spent, and the backend's `Retry-After` is kept.
pub(crate) fn transient_status_error(who: &str, resp: &reqwest::Response) -> RefreshError {
    let err = RefreshError::transient(format!("{who} answered {}", resp.status()));
    match retry_after(resp) {
        Some(after) => err.with_retry_after(after),
        None => err,
    }
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
        return Err(RefreshError::unconfirmed(format!(
            "{who} response body over {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(who, &e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(RefreshError::unconfirmed(format!(
                "{who} response body over {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether `status` is transient whatever the body says: 5xx, 408, 429 (SPEC 2).
pub(crate) fn transient_status(status: http::StatusCode) -> bool {
    status.is_server_error()
        || status == http::StatusCode::REQUEST_TIMEOUT
        || status == http::StatusCode::TOO_MANY_REQUESTS
}

/// An error code from a remote body, when it is short and plain enough to log
/// (`[A-Za-z0-9_.-]`, at most 64 bytes); anything else is dropped.
pub(crate) fn loggable_code(code: &str) -> Option<&str> {
    (!code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
    .then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_exchange_bound_is_the_default_policy_timeout_plus_late_answer_window() {
        let p = RetryPolicy::default();
        assert_eq!(DEFAULT_EXCHANGE_BOUND, p.timeout + p.late_answer_window);
        assert_eq!(DEFAULT_EXCHANGE_BOUND, Duration::from_secs(130));
    }

    #[test]
    fn urls() {
        assert!(check_url("https://oauth2.googleapis.com/token", "token").is_ok());
        assert!(check_url("http://127.0.0.1:9/x", "token").is_ok());
        for bad in [
            "ftp://x",
            "/path",
            "https://x/?q=1",
            "https://u:p@x/",
            "not a url",
        ] {
            assert!(check_url(bad, "token").is_err(), "{bad}");
        }
        let e = check_url("https://u:pw-secret@x/", "token").unwrap_err();
        assert!(!e.to_string().contains("pw-secret"));
    }

    #[test]
    fn codes() {
        assert_eq!(loggable_code("invalid_grant"), Some("invalid_grant"));
        assert_eq!(loggable_code("a b"), None);
        assert_eq!(loggable_code(""), None);
        assert_eq!(loggable_code(&"x".repeat(65)), None);
    }
}
