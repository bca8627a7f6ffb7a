//! The two providers and how a request's provider is found.

mod host;

use std::fmt;
use std::str::FromStr;

pub(crate) use host::HostMap;
pub use host::{HostPattern, InvalidHost};

/// An OAuth provider whose APIs the proxy keeps authenticated.
///
/// Put one in a request's extensions to choose the provider explicitly; otherwise the layer
/// detects it from the request's host (see [`Provider::from_host`]).
///
/// ```
/// use oauth_refresh_proxy::Provider;
///
/// let p: Provider = "github".parse().unwrap();
/// assert_eq!(p, Provider::GitHub);
/// assert_eq!(p.as_str(), "github");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    /// Google APIs (`*.googleapis.com`).
    Google,
    /// GitHub APIs (`api.github.com`, `uploads.github.com`).
    GitHub,
}

impl Provider {
    /// Both providers, in a fixed order.
    pub const ALL: [Provider; 2] = [Provider::Google, Provider::GitHub];

    /// The lowercase name used in URLs, config files and metrics: `google` or `github`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::Provider;
    /// assert_eq!(Provider::Google.as_str(), "google");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Google => "google",
            Provider::GitHub => "github",
        }
    }

    /// Detects the provider of an API host (case-insensitive, port ignored):
    /// `*.googleapis.com` is Google, `api.github.com` and `uploads.github.com` are GitHub.
    /// Any other host has no provider, and the layer then passes the request through untouched.
    ///
    /// ```
    /// # use oauth_refresh_proxy::Provider;
    /// assert_eq!(Provider::from_host("www.googleapis.com"), Some(Provider::Google));
    /// assert_eq!(Provider::from_host("API.GitHub.com:443"), Some(Provider::GitHub));
    /// assert_eq!(Provider::from_host("github.com"), None);
    /// assert_eq!(Provider::from_host("evilgoogleapis.com"), None);
    /// assert_eq!(Provider::from_host("user@www.googleapis.com:443"), Some(Provider::Google));
    /// assert_eq!(Provider::from_host("[::1]:443"), None);
    /// ```
    pub fn from_host(host: &str) -> Option<Provider> {
        Provider::of_written_host(host)
            .or_else(|| Provider::of_default_host(split_authority(host).0))
    }

    /// The provider of an authority written the usual way — a lower-case default host, no
    /// port — found without splitting it (the layer asks on every request); `None` when it is
    /// not written so, even if [`Provider::from_host`] finds one.
    ///
    /// An authority ending in `.googleapis.com` has a host ending in it, whatever userinfo or
    /// malformed port precedes it: the host is what follows the last `@`, and a port would have
    /// to be all digits. The host is Google's unless it is nothing but `.googleapis.com`, that
    /// is unless the byte before the suffix is missing or an `@`.
    #[inline]
    fn of_written_host(authority: &str) -> Option<Provider> {
        const GOOGLE: &[u8] = b".googleapis.com";
        let a = authority.as_bytes();
        match a.len().checked_sub(GOOGLE.len() + 1) {
            Some(before) if a.ends_with(GOOGLE) && a[before] != b'@' => Some(Provider::Google),
            _ if a == b"api.github.com" || a == b"uploads.github.com" => Some(Provider::GitHub),
            _ => None,
        }
    }

    /// The provider of a bare host (no userinfo, no port, no trailing dot) among the defaults.
    fn of_default_host(host: &str) -> Option<Provider> {
        let host = host.as_bytes();
        // Case-insensitive without allocating: this runs on every request of the layer.
        // Hosts are nearly always written in lower case: an exact comparison first.
        const GOOGLE: &[u8] = b".googleapis.com";
        let ends_with_google = host.len() > GOOGLE.len() && {
            let tail = &host[host.len() - GOOGLE.len()..];
            tail == GOOGLE || tail.eq_ignore_ascii_case(GOOGLE)
        };
        if ends_with_google {
            Some(Provider::Google)
        } else if host.eq_ignore_ascii_case(b"api.github.com")
            || host.eq_ignore_ascii_case(b"uploads.github.com")
        {
            Some(Provider::GitHub)
        } else {
            None
        }
    }
}

/// Splits an authority (`user@host:port`) into its host, without a trailing dot, and its
/// explicit port (`None` when absent or not a number). Allocates nothing.
pub(super) fn split_authority(authority: &str) -> (&str, Option<u16>) {
    // Most authorities are a bare host: one scan finds neither `@` nor `:` and nothing is split.
    if memchr::memchr2(b'@', b':', authority.as_bytes()).is_none() {
        return (trim_dots(authority), None);
    }
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match authority.rsplit_once(':') {
        // An empty port (`host:`) is valid URI syntax and means the scheme's default.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (h, port.parse().ok()),
        _ => (authority, None),
    };
    (trim_dots(host), port)
}

/// `host` without trailing dots (checked by its last byte first: usually there is none).
fn trim_dots(host: &str) -> &str {
    if host.ends_with('.') {
        host.trim_end_matches('.')
    } else {
        host
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a provider name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown provider {0:?} (expected \"google\" or \"github\")")]
pub struct UnknownProvider(String);

impl FromStr for Provider {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "google" => Ok(Provider::Google),
            "github" => Ok(Provider::GitHub),
            other => Err(UnknownProvider(other.to_string())),
        }
    }
}

/// The account whose token a request should carry; put it in the request's extensions.
///
/// ```
/// use oauth_refresh_proxy::Account;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(Account::new("alice"));
/// assert_eq!(req.extensions().get::<Account>().unwrap().as_str(), "alice");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Account(std::sync::Arc<str>);

impl Account {
    /// Names an account.
    ///
    /// ```
    /// # use oauth_refresh_proxy::Account;
    /// assert_eq!(Account::new("bob").as_str(), "bob");
    /// ```
    pub fn new(id: impl Into<std::sync::Arc<str>>) -> Self {
        Account(id.into())
    }

    /// The account's id.
    ///
    /// ```
    /// # use oauth_refresh_proxy::Account;
    /// assert_eq!(Account::new("bob").as_str(), "bob");
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` and `other` name the same account: clones of one `Account` are told
    /// without comparing their ids (the layer's default account, on every request).
    #[inline]
    pub(crate) fn same(&self, other: &Account) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod split_tests {
    use super::{split_authority, Provider};

    #[test]
    fn the_written_form_shortcut_agrees_with_the_full_split() {
        let hosts = [
            "www.googleapis.com",
            "googleapis.com",
            ".googleapis.com",
            "x.googleapis.com",
            "@.googleapis.com",
            "u@.googleapis.com",
            "u@x.googleapis.com",
            "u:p@x.googleapis.com",
            "a@b@x.googleapis.com",
            "a@b:.googleapis.com",
            "x:.googleapis.com",
            "x:y.googleapis.com",
            "x.googleapis.com:443",
            "x.googleapis.com:",
            "x.googleapis.com.",
            "X.GoogleAPIs.com",
            "evilgoogleapis.com",
            "x.googleapis.com.evil",
            "api.github.com",
            "uploads.github.com",
            "API.GITHUB.COM",
            "api.github.com:443",
            "u@api.github.com",
            "api.github.com.",
            "github.com",
            "[::1]:443",
            "",
            "@",
            ":",
        ];
        for host in hosts {
            let full = Provider::of_default_host(split_authority(host).0);
            assert_eq!(Provider::from_host(host), full, "{host:?}");
            if let Some(p) = Provider::of_written_host(host) {
                assert_eq!(Some(p), full, "{host:?}");
            }
        }
        assert_eq!(
            Provider::of_written_host("www.googleapis.com"),
            Some(Provider::Google)
        );
        assert_eq!(
            Provider::of_written_host("api.github.com"),
            Some(Provider::GitHub)
        );
    }

    #[test]
    fn authorities() {
        for (authority, host, port) in [
            ("www.googleapis.com", "www.googleapis.com", None),
            ("www.googleapis.com.", "www.googleapis.com", None),
            ("api.github.com:443", "api.github.com", Some(443)),
            ("api.github.com.:8443", "api.github.com", Some(8443)),
            ("api.github.com:", "api.github.com", None),
            (
                "user:pw@ghe.example.com:8443",
                "ghe.example.com",
                Some(8443),
            ),
            ("user@ghe.example.com", "ghe.example.com", None),
            ("[::1]:8443", "[::1]", Some(8443)),
            ("[::1]", "[::1]", None),
            ("host:99999", "host", None),
            ("host:12a", "host:12a", None),
            ("", "", None),
            (":", "", None),
            ("@", "", None),
            ("ünïcode.example:80", "ünïcode.example", Some(80)),
        ] {
            assert_eq!(split_authority(authority), (host, port), "{authority:?}");
        }
    }
}
