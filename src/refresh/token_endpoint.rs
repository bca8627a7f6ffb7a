//! One OAuth client at one provider's token endpoint: the `grant_type=refresh_token` call
//! behind [`GoogleRefresher`](super::GoogleRefresher) and
//! [`GitHubRefresher`](super::GitHubRefresher), and how its answer is read (SPEC 3).

use std::time::{Duration, SystemTime};

use super::transport::{
    build_client, check_url, loggable_code, read_limited, transient_status, transient_status_error,
    transport_error, InvalidUrl, DEFAULT_EXCHANGE_BOUND,
};
use super::{RefreshError, Refreshed};
use crate::provider::Provider;
use crate::token::Secret;

/// One OAuth client at one provider's token endpoint (RFC 6749 §6): a form `POST` of
/// `client_id`, `client_secret`, `refresh_token`, `grant_type=refresh_token` with
/// `Accept: application/json`, read by [`classify_token_answer`].
#[derive(Clone)]
pub(crate) struct TokenEndpoint {
    provider: Provider,
    client: reqwest::Client,
    url: String,
    client_id: String,
    client_secret: Secret,
}

impl std::fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("provider", &self.provider)
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .finish()
    }
}

impl TokenEndpoint {
    pub(crate) fn new(
        provider: Provider,
        default_url: &str,
        client_id: String,
        client_secret: Secret,
    ) -> Self {
        TokenEndpoint {
            provider,
            client: build_client(DEFAULT_EXCHANGE_BOUND),
            url: default_url.to_string(),
            client_id,
            client_secret,
        }
    }

    pub(crate) fn set_url(&mut self, url: &str) -> Result<(), InvalidUrl> {
        check_url(url, "token")?;
        self.url = url.to_string();
        Ok(())
    }

    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.client = build_client(timeout);
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    /// One refresh attempt for a token of `provider` (refused for any other provider: a
    /// refresh token is never sent to another provider's endpoint).
    pub(crate) async fn refresh(
        &self,
        provider: Provider,
        refresh_token: &Secret,
    ) -> Result<Refreshed, RefreshError> {
        let who = self.who();
        if provider != self.provider {
            return Err(RefreshError::rejected(format!(
                "the {} refresher cannot refresh {provider} tokens",
                self.provider
            )));
        }
        let form = [
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
            ("refresh_token", refresh_token.expose()),
            ("grant_type", "refresh_token"),
        ];
        let resp = self
            .client
            .post(&self.url)
            .header(http::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_error(&who, &e))?;
        let status = resp.status();
        if transient_status(status) {
            return Err(transient_status_error(&who, &resp));
        }
        let body = read_limited(resp, &who).await?;
        let refreshed = classify_token_answer(self.provider, status, &body)?;
        if self.provider == Provider::GitHub && refreshed.refresh_token.is_none() {
            tracing::warn!(provider = %self.provider, "github token endpoint answered without a rotated refresh_token; keeping the old one");
        }
        Ok(refreshed)
    }

    fn who(&self) -> String {
        format!("{} token endpoint", self.provider)
    }
}

/// The part of [`GoogleRefresher`](super::GoogleRefresher) and
/// [`GitHubRefresher`](super::GitHubRefresher) that is the same for both, written once:
/// `timeout`, `url` and `client_id` (delegating to the `endpoint: TokenEndpoint` field) and the
/// [`Refresher`](super::Refresher) impl. Each type keeps its own `TOKEN_URL`, `new` and
/// `token_url`, whose docs differ.
macro_rules! token_endpoint_refresher {
    ($ty:ident) => {
        impl $ty {
            /// Bounds each exchange with the token endpoint (connect, send, read) by `timeout`
            /// (connect: at most 10 s). Keep it at least the retry policy's
            /// `timeout + late_answer_window`, or a late answer cannot be read.
            ///
            #[doc = concat!(
                "```\n# use oauth_refresh_proxy::{", stringify!($ty), ", Secret};\n",
                "let r = ", stringify!($ty),
                "::new(\"id\", Secret::new(\"s\")).timeout(std::time::Duration::from_secs(3));\n",
                "# let _ = r;\n```",
            )]
            pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
                self.endpoint.set_timeout(timeout);
                self
            }

            /// The token endpoint in use.
            ///
            #[doc = concat!(
                "```\n# use oauth_refresh_proxy::{", stringify!($ty), ", Secret};\n",
                "assert_eq!(", stringify!($ty), "::new(\"id\", Secret::new(\"s\")).url(), ",
                stringify!($ty), "::TOKEN_URL);\n```",
            )]
            pub fn url(&self) -> &str {
                self.endpoint.url()
            }

            /// The OAuth client id.
            ///
            #[doc = concat!(
                "```\n# use oauth_refresh_proxy::{", stringify!($ty), ", Secret};\n",
                "assert_eq!(", stringify!($ty), "::new(\"id\", Secret::new(\"s\")).client_id(), \"id\");\n```",
            )]
            pub fn client_id(&self) -> &str {
                self.endpoint.client_id()
            }
        }

        impl $crate::refresh::Refresher for $ty {
            fn refresh<'a>(
                &'a self,
                provider: $crate::Provider,
                refresh_token: &'a $crate::Secret,
            ) -> $crate::refresh::BoxFuture<
                'a,
                Result<$crate::refresh::Refreshed, $crate::refresh::RefreshError>,
            > {
                Box::pin(self.endpoint.refresh(provider, refresh_token))
            }
        }
    };
}
pub(crate) use token_endpoint_refresher;

/// Error codes that say "not now" rather than "this refresh token is dead".
const TRANSIENT_CODES: &[&str] = &["temporarily_unavailable", "server_error", "slow_down"];

/// Error codes that blame this proxy's client credentials, not the refresh token: retrying
/// will not help, but neither will re-authorising the account (fix the configuration).
const CLIENT_CODES: &[&str] = &["invalid_client", "incorrect_client_credentials"];

/// Reads a token endpoint's answer (SPEC 3), for either provider.
///
/// * 5xx, 408, 429 ⇒ transient, whatever the body says; 1xx/3xx ⇒ transient (not followed).
/// * An `error` member — in a 4xx **or in a 2xx** (GitHub answers its errors with HTTP 200) —
///   decides next: `temporarily_unavailable`, `server_error`, `slow_down` ⇒ transient;
///   `invalid_client`, `incorrect_client_credentials` ⇒ transient (the proxy's client
///   credentials are wrong: the refresh token is not to blame); any other code
///   (`invalid_grant`, `bad_refresh_token`, …) ⇒ rejected.
/// * Any other 4xx ⇒ rejected.
/// * A 2xx without a usable `access_token` (empty, unparseable, not a header value) ⇒ transient.
///
/// The body may be JSON or, when a server ignored `Accept`, form-encoded.
pub(crate) fn classify_token_answer(
    provider: Provider,
    status: http::StatusCode,
    body: &[u8],
) -> Result<Refreshed, RefreshError> {
    let who = format!("{provider} token endpoint");
    if transient_status(status) {
        return Err(RefreshError::transient(format!("{who} answered {status}")));
    }
    if !status.is_success() && !status.is_client_error() {
        return Err(RefreshError::transient(format!(
            "{who} answered {status} (not followed)"
        )));
    }
    let fields = parse_fields(body);
    if let Some(code) = fields
        .as_ref()
        .and_then(|f| f.error.as_deref())
        .filter(|c| !c.is_empty())
    {
        let shown = loggable_code(code).unwrap_or("unreadable error code");
        let at = if status.is_success() {
            format!("{who} answered {status} with error {shown}")
        } else {
            format!("{who} answered {status} ({shown})")
        };
        return Err(if TRANSIENT_CODES.contains(&code) {
            RefreshError::transient(at)
        } else if CLIENT_CODES.contains(&code) {
            RefreshError::transient(format!(
                "{at}: the client credentials were refused; check [refresh.{provider}] client_id and client_secret"
            ))
        } else {
            RefreshError::rejected(at)
        });
    }
    if status.is_client_error() {
        return Err(RefreshError::rejected(format!("{who} answered {status}")));
    }
    // From here on the endpoint answered 2xx: it may have rotated the refresh token, so a
    // broken answer is never retried with the same one.
    let Some(fields) = fields else {
        return Err(RefreshError::unconfirmed(format!(
            "{who} answered {status} with a body that is neither JSON nor a form"
        )));
    };
    let access_token = fields
        .access_token
        .filter(|t| !t.is_empty())
        .map(Secret::new)
        .ok_or_else(|| {
            RefreshError::unconfirmed(format!("{who} answered {status} without an access_token"))
        })?;
    if access_token.bearer_header().is_none() {
        return Err(RefreshError::unconfirmed(format!(
            "{who} returned an access token that is not a valid header value"
        )));
    }
    let refresh_token = fields
        .refresh_token
        .filter(|t| !t.is_empty())
        .map(Secret::new);
    let expires_at = fields
        .expires_in
        .filter(|&s| s > 0)
        .and_then(|s| SystemTime::now().checked_add(Duration::from_secs(s)));
    Ok(Refreshed {
        access_token,
        refresh_token,
        expires_at,
    })
}

/// The members of a token endpoint answer that matter.
#[derive(Default)]
struct Fields {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
}

/// A JSON object, else a form-encoded body; `None` when it is neither.
fn parse_fields(body: &[u8]) -> Option<Fields> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let obj = v.as_object()?;
        let string = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_string);
        return Some(Fields {
            access_token: string("access_token"),
            refresh_token: string("refresh_token"),
            expires_in: obj.get("expires_in").and_then(|v| match v {
                serde_json::Value::Number(n) => n
                    .as_u64()
                    .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
                serde_json::Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }),
            // `error` is a string in RFC 6749; tolerate `{"error": {...}}` as "some error".
            error: obj.get("error").and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null => None,
                _ => Some(String::from("error")),
            }),
        });
    }
    // application/x-www-form-urlencoded: `k=v&k=v`, every pair well-formed.
    let mut fields = Fields::default();
    let mut any = false;
    for pair in text.split('&') {
        let (k, v) = pair.split_once('=')?;
        let (k, v) = (form_decode(k)?, form_decode(v)?);
        any = true;
        match k.as_str() {
            "access_token" => fields.access_token = Some(v),
            "refresh_token" => fields.refresh_token = Some(v),
            "expires_in" => fields.expires_in = v.trim().parse().ok(),
            "error" => fields.error = Some(v),
            _ => {}
        }
    }
    any.then_some(fields)
}

/// Decodes one form component (`+` is a space, `%XX` a byte); `None` when malformed.
fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c if c.is_ascii_whitespace() => return None,
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers() {
        use http::StatusCode;
        let g = Provider::Google;
        let t = |s: u16, b: &str| {
            classify_token_answer(g, StatusCode::from_u16(s).unwrap(), b.as_bytes())
        };
        let ok = t(
            200,
            r#"{"access_token":"ya29.a","expires_in":3599,"scope":"x","token_type":"Bearer"}"#,
        )
        .unwrap();
        assert_eq!(ok.access_token.expose(), "ya29.a");
        assert!(ok.refresh_token.is_none());
        let left = ok
            .expires_at
            .unwrap()
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3599));
        let rotated = t(
            200,
            r#"{"access_token":"a","refresh_token":"r2","expires_in":"60"}"#,
        )
        .unwrap();
        assert_eq!(rotated.refresh_token.unwrap().expose(), "r2");
        assert!(rotated.expires_at.is_some());
        assert!(t(200, r#"{"access_token":"a","expires_in":0}"#)
            .unwrap()
            .expires_at
            .is_none());
        // form-encoded answers
        let f = t(
            200,
            "access_token=ghu_x%2By&refresh_token=ghr_z&expires_in=28800&scope=&token_type=bearer",
        )
        .unwrap();
        assert_eq!(f.access_token.expose(), "ghu_x+y");
        assert!(t(200, "error=bad_refresh_token&error_description=x+y")
            .unwrap_err()
            .is_rejected());

        assert!(t(400, r#"{"error":"invalid_grant"}"#)
            .unwrap_err()
            .is_rejected());
        assert!(t(200, r#"{"error":"bad_refresh_token"}"#)
            .unwrap_err()
            .is_rejected());
        assert!(t(400, "garbage").unwrap_err().is_rejected());
        assert!(t(401, "").unwrap_err().is_rejected());
        for (s, b) in [
            (503, r#"{"error":"temporarily_unavailable"}"#),
            (500, r#"{"error":"invalid_grant"}"#),
            (429, ""),
            (408, ""),
            (302, ""),
            (400, r#"{"error":"temporarily_unavailable"}"#),
            (401, r#"{"error":"invalid_client"}"#),
            (200, r#"{"error":"incorrect_client_credentials"}"#),
            (200, ""),
            (200, "not json"),
            (200, "{"),
            (200, "[1]"),
            (200, "{}"),
            (200, r#"{"access_token":""}"#),
            (200, r#"{"access_token":5}"#),
            (200, r#"{"access_token":"a\r\nb"}"#),
            (200, "a=%zz"),
        ] {
            let e = t(s, b).unwrap_err();
            assert!(!e.is_rejected(), "{s} {b}: {e}");
        }
        let e = t(
            400,
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "refresh token rejected: google token endpoint answered 400 Bad Request (invalid_grant)");
    }
}
