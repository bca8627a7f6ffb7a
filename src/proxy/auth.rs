//! The one bearer check of the sidecar's own endpoints: the proxy's `client_token`
//! (`Proxy-Authorization`), the admin API's `admin_token` and the served refresh API's token
//! (`Authorization`).
//!
//! A value is accepted when, after trimming, it is the scheme `Bearer` in any case (RFC 9110
//! §11.1), one space, and — trimmed of surrounding whitespace — a non-empty credential equal
//! to the expected token. The credential is compared in constant time, and compared even when
//! no value was presented, so timing does not tell a missing header from a wrong one.

use http::header::HeaderName;
use http::HeaderMap;

use crate::token::Secret;

/// Whether `headers` carry `{header}: Bearer <expected>` (see the module docs).
pub(crate) fn bearer_matches(expected: &Secret, headers: &HeaderMap, header: &HeaderName) -> bool {
    let presented = headers
        .get(header)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_credentials)
        .filter(|token| !token.is_empty());
    // Compare even when nothing was presented, so timing does not tell the cases apart.
    let equal = expected.constant_time_eq(presented.unwrap_or(""));
    equal && presented.is_some()
}

/// The credentials of an `Authorization`-style value with the `Bearer` scheme, trimmed.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
    use http::HeaderValue;

    fn check(value: Option<&'static str>) -> bool {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert(AUTHORIZATION, HeaderValue::from_static(v));
        }
        bearer_matches(&Secret::new("s3cret"), &headers, &AUTHORIZATION)
    }

    #[test]
    fn the_scheme_in_any_case_and_the_token_exactly() {
        for ok in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR s3cret",
            "Bearer  s3cret",
            "Bearer s3cret\t",
            " Bearer s3cret ",
        ] {
            assert!(check(Some(ok)), "{ok:?}");
        }
        for refused in [
            "Bearer S3cret",
            "Bearer s3cretx",
            "Bearers3cret",
            "Bearer\ts3cret",
            "Bearerx s3cret",
            "Bear s3cret",
            "Basic s3cret",
            "Bearer ",
            "Bearer",
            "",
        ] {
            assert!(!check(Some(refused)), "{refused:?}");
        }
        assert!(!check(None));
    }

    #[test]
    fn only_the_named_header_counts() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        let secret = Secret::new("s3cret");
        assert!(!bearer_matches(&secret, &headers, &PROXY_AUTHORIZATION));
        assert!(bearer_matches(&secret, &headers, &AUTHORIZATION));
    }
}
