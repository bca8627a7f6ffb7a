//! Single values and what each must look like on its own: durations, sizes, route prefixes,
//! account ids, and URLs (a route's upstream, a refresh endpoint, a webhook receiver).

use std::time::Duration;

use http::Uri;
use toml::Value;

use crate::refresh::url::{check_http_uri, has_credentials, host_authority, UrlProblem};

pub(super) const KIB: usize = 1024;
pub(super) const MIB: usize = 1024 * KIB;

pub(super) fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("{prefix:?} must start with \"/\""));
    }
    if prefix.len() > 1 && prefix.ends_with('/') {
        return Err(format!("{prefix:?} must not end with \"/\""));
    }
    if prefix.len() > 1 && prefix.contains("//") {
        return Err(format!("{prefix:?} has an empty segment"));
    }
    if prefix
        .chars()
        .any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{prefix:?} must be a plain path (no query, fragment or whitespace)"
        ));
    }
    Ok(())
}

/// A route's upstream: [`check_http_uri`]'s rule, the URL named in the message (except for
/// credentials).
pub(super) fn check_upstream(uri: &Uri) -> Result<(), String> {
    check_http_uri(uri).map_err(|problem| match problem {
        UrlProblem::Credentials => problem.reason().to_string(),
        _ => format!("{:?}: {}", uri.to_string(), problem.reason()),
    })
}

/// The backend's or a token endpoint's URL: [`check_http_uri`]'s rule; a URL with credentials
/// is never echoed, whatever else is wrong with it.
pub(super) fn check_http_url(url: &str) -> Result<(), String> {
    let uri = parse_url(url)?;
    check_upstream(&uri).map_err(|e| {
        if uri.authority().is_some_and(has_credentials) {
            UrlProblem::Credentials.reason().to_string()
        } else {
            e
        }
    })
}

/// A webhook receiver: `https`, or `http` on a loopback host (`127.0.0.0/8`, `[::1]`,
/// `localhost`); a host, no credentials, no fragment (a query is allowed).
pub(super) fn check_webhook_url(url: &str) -> Result<(), String> {
    if url.contains('#') {
        return Err(format!(
            "{:?}: a fragment is not allowed",
            redact_userinfo(url)
        ));
    }
    let uri = parse_url(url)?;
    let Some(authority) = host_authority(&uri) else {
        return Err(format!(
            "{:?}: {}",
            redact_userinfo(url),
            UrlProblem::NoHost.reason()
        ));
    };
    if has_credentials(authority) {
        return Err(UrlProblem::Credentials.reason().into());
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "{url:?}: http is only allowed on a loopback host; use https"
                ))
            }
        }
        _ => Err(format!(
            "{url:?}: scheme must be https (or http on loopback)"
        )),
    }
}

pub(super) fn check_account_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.contains('/') || id.chars().any(char::is_control) {
        return Err(format!(
            "{id:?} must not contain \"/\" or control characters"
        ));
    }
    Ok(())
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1m30s"`: one or more `<integer><unit>` parts.
pub(super) fn parse_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (part, unit_len) = if rest.starts_with("ms") {
            (Duration::from_millis(n), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(n), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(n.checked_mul(60)?), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(n.checked_mul(3600)?), 1)
        } else {
            return None;
        };
        rest = &rest[unit_len..];
        total = total.checked_add(part)?;
    }
    Some(total)
}

pub(super) fn parse_size_value(v: &Value) -> Option<usize> {
    match v {
        Value::Integer(i) => usize::try_from(*i).ok(),
        Value::String(s) => parse_size(s),
        _ => None,
    }
}

/// Parses `"1048576"`, `"512KiB"`, `"1MiB"`, `"2GiB"`; nothing else.
pub(super) fn parse_size(s: &str) -> Option<usize> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: usize = s[..digits].parse().ok()?;
    let factor = match &s[digits..] {
        "" => 1,
        "KiB" => KIB,
        "MiB" => MIB,
        "GiB" => 1024 * MIB,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// `url` parsed, or `invalid URL "…"` naming it without its credentials.
fn parse_url(url: &str) -> Result<Uri, String> {
    url.parse()
        .map_err(|_| format!("invalid URL {:?}", redact_userinfo(url)))
}

/// `scheme://user:pass@host/…` → `scheme://***@host/…`; anything else unchanged.
pub(super) fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => return url.to_string(),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}
