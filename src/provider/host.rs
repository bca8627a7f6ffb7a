//! Host patterns: the hosts an application maps to a provider beyond the default ones
//! ([`HostPattern`]), and the layer's host → provider table that consults them first.

use std::fmt;
use std::str::FromStr;

use super::{split_authority, Provider};

/// A host that [`RefreshLayer::host`](crate::RefreshLayer::host) maps to a provider, beyond the
/// default hosts of [`Provider::from_host`]: GitHub Enterprise Server, a Google private endpoint.
///
/// Written `host`, `host:port` or `*.domain` (any subdomain of `domain`, not `domain` itself),
/// with an optional port; IPv6 addresses in brackets (`[::1]:8443`). Matching is
/// case-insensitive and ignores a trailing dot. Without a port, every port of the host
/// matches; with one, only requests to that port (explicit, or the scheme's default: 443 for
/// `https`, 80 for `http`). A URL, a path, userinfo or an empty host is an error.
///
/// ```
/// use oauth_refresh_proxy::HostPattern;
///
/// let ghe: HostPattern = "ghe.example.com".parse().unwrap();
/// assert_eq!(ghe.to_string(), "ghe.example.com");
/// let psc: HostPattern = "*.googleapis.internal.example:443".parse().unwrap();
/// assert_eq!(psc.to_string(), "*.googleapis.internal.example:443");
///
/// let err = "https://ghe.example.com/api/v3".parse::<HostPattern>().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     r#"invalid host "https://ghe.example.com/api/v3": a host, not a URL (drop the scheme and the path: "ghe.example.com")"#
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// Lowercase, without a trailing dot; for a wildcard, the domain after `*.`.
    host: Box<str>,
    wildcard: bool,
    port: Option<u16>,
}

/// How a request's host matched a [`HostPattern`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostMatch {
    /// The pattern names the host itself.
    Exact,
    /// A wildcard pattern whose domain is this many bytes long.
    Suffix(usize),
}

impl HostPattern {
    /// Whether a request to `host` (bare: see `split_authority`) on `port` matches.
    pub(crate) fn matches(&self, host: &str, port: Option<u16>) -> Option<HostMatch> {
        if self.port.is_some() && self.port != port {
            return None;
        }
        let (host, pattern) = (host.as_bytes(), self.host.as_bytes());
        if !self.wildcard {
            return host
                .eq_ignore_ascii_case(pattern)
                .then_some(HostMatch::Exact);
        }
        // At least one label before `.domain`.
        let dot = host.len().checked_sub(pattern.len() + 1)?;
        let subdomain =
            dot > 0 && host[dot] == b'.' && host[dot + 1..].eq_ignore_ascii_case(pattern);
        subdomain.then_some(HostMatch::Suffix(pattern.len()))
    }
}

/// The error of parsing a [`HostPattern`]: the input and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host {input:?}: {reason}")]
pub struct InvalidHost {
    input: String,
    reason: String,
}

impl FromStr for HostPattern {
    type Err = InvalidHost;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| InvalidHost {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if let Some((_, rest)) = s.split_once("://") {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            return Err(err(&format!(
                "a host, not a URL (drop the scheme and the path: {host:?})"
            )));
        }
        if let Some(b) = s
            .bytes()
            .find(|b| matches!(b, b'/' | b'?' | b'#' | b'@') || !b.is_ascii_graphic())
        {
            let what = match b {
                b'/' | b'?' | b'#' => "a host has no path, query or fragment",
                b'@' => "a host has no user part",
                _ => {
                    "a host has no spaces, control or non-ASCII characters (write IDNs in punycode)"
                }
            };
            return Err(err(what));
        }
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if rest.contains('*') {
            return Err(err(
                "a wildcard is a leading `*.` before a domain, as in `*.example.com`",
            ));
        }
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let Some((addr, after)) = inner.split_once(']') else {
                return Err(err("an IPv6 address needs its closing `]`"));
            };
            if wildcard {
                return Err(err("a wildcard needs a domain name, not an address"));
            }
            if addr.is_empty()
                || !addr.contains(':')
                || !addr
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err(err("not an IPv6 address between `[` and `]`"));
            }
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return Err(err("only `:port` may follow `]`")),
                },
            };
            (&rest[..addr.len() + 2], port)
        } else {
            let (host, port) = match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            };
            let host = host.strip_suffix('.').unwrap_or(host);
            if host.is_empty() {
                return Err(err("no host name"));
            }
            if host.len() > 253 {
                return Err(err("a host name has at most 253 characters"));
            }
            for label in host.split('.') {
                if label.is_empty() {
                    return Err(err("empty label (two dots in a row, or a leading dot)"));
                }
                if label.len() > 63 {
                    return Err(err("a label has at most 63 characters"));
                }
                if !label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(err(
                        "a host name has only letters, digits, `-`, `_` and dots (IPv6 goes in brackets)",
                    ));
                }
            }
            (host, port)
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => Some(p),
                _ => return Err(err("the port is a number from 1 to 65535")),
            },
        };
        Ok(HostPattern {
            host: host.to_ascii_lowercase().into(),
            wildcard,
            port,
        })
    }
}

impl TryFrom<&str> for HostPattern {
    type Error = InvalidHost;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// The layer's host → provider table: the mapped hosts first, then the default hosts.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostMap {
    rules: Vec<(HostPattern, Provider)>,
}

impl HostMap {
    /// Whether no host is mapped (only the default hosts are recognised).
    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Maps `pattern` to `provider`, replacing an earlier mapping of the same pattern.
    pub(crate) fn insert(&mut self, pattern: HostPattern, provider: Provider) {
        match self.rules.iter_mut().find(|(p, _)| *p == pattern) {
            Some(rule) => rule.1 = provider,
            None => self.rules.push((pattern, provider)),
        }
    }

    /// The provider of a request to `authority`; `default_port` is the scheme's (443 for
    /// `https`), used when the authority names none. An exact host beats a wildcard, a longer
    /// wildcard domain a shorter one, and any mapping the default hosts. Allocates nothing.
    pub(crate) fn provider(&self, authority: &str, default_port: Option<u16>) -> Option<Provider> {
        if self.rules.is_empty() {
            return Provider::from_host(authority);
        }
        let (host, port) = split_authority(authority);
        let port = port.or(default_port);
        let mut best: Option<(usize, Provider)> = None;
        for (pattern, provider) in &self.rules {
            match pattern.matches(host, port) {
                Some(HostMatch::Exact) => return Some(*provider),
                Some(HostMatch::Suffix(len)) if best.is_none_or(|(l, _)| len > l) => {
                    best = Some((len, *provider));
                }
                _ => {}
            }
        }
        best.map(|(_, p)| p)
            .or_else(|| Provider::of_default_host(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Provider;

    fn map(rules: &[(&str, Provider)]) -> HostMap {
        let mut m = HostMap::default();
        for (p, provider) in rules {
            m.insert(p.parse().unwrap(), *provider);
        }
        m
    }

    #[test]
    fn patterns_parse_and_print_normalised() {
        for (input, shown) in [
            ("ghe.example.com", "ghe.example.com"),
            ("GHE.Example.COM.", "ghe.example.com"),
            ("ghe.example.com:8443", "ghe.example.com:8443"),
            ("*.googleapis.internal", "*.googleapis.internal"),
            ("*.Corp.Example:443", "*.corp.example:443"),
            ("127.0.0.1:4000", "127.0.0.1:4000"),
            ("[::1]", "[::1]"),
            ("[FE80::1]:8443", "[fe80::1]:8443"),
            ("my_host", "my_host"),
        ] {
            let p: HostPattern = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p.to_string(), shown, "{input}");
            assert_eq!(HostPattern::try_from(input).unwrap(), p);
        }
    }

    #[test]
    fn bad_patterns_are_clear_errors() {
        for (input, reason) in [
            ("", "empty"),
            (
                "https://ghe.example.com/api/v3",
                r#"a host, not a URL (drop the scheme and the path: "ghe.example.com")"#,
            ),
            (
                "ghe.example.com/api/v3",
                "a host has no path, query or fragment",
            ),
            ("user@ghe.example.com", "a host has no user part"),
            (
                "ghe example.com",
                "a host has no spaces, control or non-ASCII characters (write IDNs in punycode)",
            ),
            (
                "bücher.example",
                "a host has no spaces, control or non-ASCII characters (write IDNs in punycode)",
            ),
            (
                "*",
                "a wildcard is a leading `*.` before a domain, as in `*.example.com`",
            ),
            ("*.", "no host name"),
            (
                "a.*.example",
                "a wildcard is a leading `*.` before a domain, as in `*.example.com`",
            ),
            (
                "**.example",
                "a wildcard is a leading `*.` before a domain, as in `*.example.com`",
            ),
            ("*.[::1]", "a wildcard needs a domain name, not an address"),
            (
                "ghe..example.com",
                "empty label (two dots in a row, or a leading dot)",
            ),
            (
                ".example.com",
                "empty label (two dots in a row, or a leading dot)",
            ),
            ("ghe.example.com:", "the port is a number from 1 to 65535"),
            ("ghe.example.com:0", "the port is a number from 1 to 65535"),
            (
                "ghe.example.com:65536",
                "the port is a number from 1 to 65535",
            ),
            (
                "ghe.example.com:https",
                "the port is a number from 1 to 65535",
            ),
            (
                "::1",
                "a host name has only letters, digits, `-`, `_` and dots (IPv6 goes in brackets)",
            ),
            ("[::1", "an IPv6 address needs its closing `]`"),
            ("[]", "not an IPv6 address between `[` and `]`"),
            (
                "[ghe.example.com]",
                "not an IPv6 address between `[` and `]`",
            ),
            ("[::1]8443", "only `:port` may follow `]`"),
            (":443", "no host name"),
        ] {
            let e = input.parse::<HostPattern>().unwrap_err();
            assert_eq!(e.to_string(), format!("invalid host {input:?}: {reason}"));
        }
        let long_label = format!("{}.example", "a".repeat(64));
        assert!(long_label
            .parse::<HostPattern>()
            .unwrap_err()
            .to_string()
            .ends_with("a label has at most 63 characters"));
        let long_name = ["a"; 127].join(".");
        assert_eq!(long_name.len(), 253);
        assert!(long_name.parse::<HostPattern>().is_ok());
        assert!(format!("b.{long_name}")
            .parse::<HostPattern>()
            .unwrap_err()
            .to_string()
            .ends_with("a host name has at most 253 characters"));
    }

    #[test]
    fn exact_hosts_match_any_port_unless_one_is_named() {
        let m = map(&[
            ("ghe.example.com", Provider::GitHub),
            ("google.internal.example:8443", Provider::Google),
        ]);
        for authority in [
            "ghe.example.com",
            "GHE.EXAMPLE.COM",
            "ghe.example.com.",
            "ghe.example.com:443",
            "ghe.example.com:8080",
            "user@ghe.example.com:443",
        ] {
            assert_eq!(
                m.provider(authority, Some(443)),
                Some(Provider::GitHub),
                "{authority}"
            );
        }
        assert_eq!(m.provider("api.ghe.example.com", Some(443)), None);
        assert_eq!(m.provider("ghe.example.com.evil", Some(443)), None);
        assert_eq!(
            m.provider("google.internal.example:8443", Some(443)),
            Some(Provider::Google)
        );
        assert_eq!(m.provider("google.internal.example", Some(443)), None);
        assert_eq!(m.provider("google.internal.example:443", None), None);
        assert_eq!(m.provider("google.internal.example", None), None);
    }

    #[test]
    fn a_named_port_matches_the_schemes_default() {
        let m = map(&[("ghe.example.com:443", Provider::GitHub)]);
        assert_eq!(
            m.provider("ghe.example.com", Some(443)),
            Some(Provider::GitHub)
        );
        assert_eq!(
            m.provider("ghe.example.com:", Some(443)),
            Some(Provider::GitHub)
        );
        assert_eq!(m.provider("ghe.example.com", Some(80)), None);
        assert_eq!(m.provider("ghe.example.com:80", Some(443)), None);
        let m = map(&[("[::1]:8443", Provider::Google)]);
        assert_eq!(m.provider("[::1]:8443", Some(80)), Some(Provider::Google));
        assert_eq!(m.provider("[::1]:8444", Some(80)), None);
        assert_eq!(m.provider("[::1]", Some(8443)), Some(Provider::Google));
    }

    #[test]
    fn wildcards_match_subdomains_only_and_the_most_specific_rule_wins() {
        let m = map(&[
            ("*.corp.example", Provider::Google),
            ("*.git.corp.example", Provider::GitHub),
            ("special.git.corp.example", Provider::Google),
        ]);
        assert_eq!(
            m.provider("storage.corp.example", None),
            Some(Provider::Google)
        );
        assert_eq!(
            m.provider("a.b.CORP.example:9", None),
            Some(Provider::Google)
        );
        assert_eq!(m.provider("corp.example", None), None);
        assert_eq!(m.provider(".corp.example", None), None);
        assert_eq!(m.provider("xcorp.example", None), None);
        assert_eq!(
            m.provider("api.git.corp.example", None),
            Some(Provider::GitHub)
        );
        assert_eq!(m.provider("git.corp.example", None), Some(Provider::Google));
        assert_eq!(
            m.provider("special.git.corp.example", None),
            Some(Provider::Google)
        );
    }

    #[test]
    fn mappings_win_over_defaults_which_still_apply() {
        let mut m = map(&[("api.github.com", Provider::Google)]);
        assert_eq!(
            m.provider("api.github.com", Some(443)),
            Some(Provider::Google)
        );
        assert_eq!(
            m.provider("uploads.github.com", Some(443)),
            Some(Provider::GitHub)
        );
        assert_eq!(
            m.provider("www.googleapis.com", Some(443)),
            Some(Provider::Google)
        );
        assert_eq!(m.provider("github.com", Some(443)), None);
        // Mapping the same pattern again replaces its provider.
        m.insert("api.github.com".parse().unwrap(), Provider::GitHub);
        assert_eq!(m.rules.len(), 1);
        assert_eq!(
            m.provider("api.github.com", Some(443)),
            Some(Provider::GitHub)
        );
    }

    #[test]
    fn no_mappings_is_exactly_the_defaults() {
        let m = HostMap::default();
        for authority in [
            "www.googleapis.com",
            "API.GitHub.com:443",
            "uploads.github.com.",
            "github.com",
            "evilgoogleapis.com",
            "user@www.googleapis.com:443",
            "[::1]:443",
            "api.github.com:",
            "",
        ] {
            assert_eq!(
                m.provider(authority, Some(443)),
                Provider::from_host(authority),
                "{authority}"
            );
        }
    }
}
