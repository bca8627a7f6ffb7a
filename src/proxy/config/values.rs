//! Single values and what each must look like on its own: durations, sizes, route prefixes,
//! account ids, and URLs (a route's upstream, a refresh endpoint, a webhook receiver).

use std::time::Duration;

use http::Uri;
use toml::Value;

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

pub(super) fn check_upstream(uri: &Uri) -> Result<(), String> {
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "{:?}: scheme must be http or https",
                uri.to_string()
            ))
        }
    }
    match uri.authority() {
        Some(a) if !a.host().is_empty() => {
            if a.as_str().contains('@') {
                return Err("credentials in the URL are not allowed".into());
            }
        }
        _ => return Err(format!("{:?}: no host", uri.to_string())),
    }
    if uri.query().is_some() {
        return Err(format!("{:?}: a query is not allowed", uri.to_string()));
    }
    Ok(())
}

pub(super) fn check_http_url(url: &str) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("invalid URL {:?}", redact_userinfo(url)))?;
    check_upstream(&uri).map_err(|e| {
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            "credentials in the URL are not allowed".to_string()
        } else {
            e
        }
    })
}

/// A webhook receiver: `https`, or `http` on a loopback host (`127.0.0.0/8`, `[::1]`,
/// `localhost`); a host, no credentials, no fragment.
pub(super) fn check_webhook_url(url: &str) -> Result<(), String> {
    if url.contains('#') {
        return Err(format!(
            "{:?}: a fragment is not allowed",
            redact_userinfo(url)
        ));
    }
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("invalid URL {:?}", redact_userinfo(url)))?;
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(format!("{:?}: no host", redact_userinfo(url)));
    };
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not allowed".into());
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
