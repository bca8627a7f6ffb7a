//! Secrets and the token set of one account.
//!
//! [`Secret`] is the only type that ever holds a token value (with `CachedSecret`, its compact
//! form inside the cache's entries). Its `Debug` and `Display` print `[redacted]`, so a token
//! cannot reach a log line, an error message or a panic by accident; reading the value takes an
//! explicit [`Secret::expose`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

/// A secret string (access token, refresh token, bearer) that never prints itself.
///
/// Cloning is cheap (the value is shared).
///
/// ```
/// use oauth_refresh_proxy::Secret;
///
/// let s = Secret::new("ya29.very-secret");
/// assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
/// assert_eq!(s.expose(), "ya29.very-secret");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    ///
    /// ```
    /// # use oauth_refresh_proxy::Secret;
    /// let s = Secret::new(String::from("ghr_abc"));
    /// assert!(!s.is_empty());
    /// ```
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself. Call it only where the value is sent over the wire.
    ///
    /// ```
    /// # use oauth_refresh_proxy::Secret;
    /// assert_eq!(Secret::new("x").expose(), "x");
    /// ```
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is the empty string.
    ///
    /// ```
    /// # use oauth_refresh_proxy::Secret;
    /// assert!(Secret::new("").is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Builds the sensitive `Authorization: Bearer …` header value for this token, or `None`
    /// when the token holds bytes a header cannot carry (control characters, CR/LF, non-ASCII).
    ///
    /// ```
    /// # use oauth_refresh_proxy::Secret;
    /// let v = Secret::new("abc").bearer_header().unwrap();
    /// assert!(v.is_sensitive());
    /// assert!(Secret::new("a\r\nb").bearer_header().is_none());
    /// ```
    pub fn bearer_header(&self) -> Option<HeaderValue> {
        if self.0.is_empty() || !self.0.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return None;
        }
        let mut v =
            HeaderValue::from_maybe_shared(bytes::Bytes::from(format!("Bearer {}", self.0)))
                .ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// Compares with `other` in time that depends only on the lengths, not on where the
    /// values first differ (for checking inbound bearer tokens).
    ///
    /// ```
    /// # use oauth_refresh_proxy::Secret;
    /// assert!(Secret::new("abc").constant_time_eq("abc"));
    /// assert!(!Secret::new("abc").constant_time_eq("abd"));
    /// ```
    pub fn constant_time_eq(&self, other: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), other.as_bytes());
        let mut diff = (a.len() != b.len()) as u8;
        for i in 0..a.len().max(b.len()) {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0xff);
            diff |= x ^ y;
        }
        std::hint::black_box(diff) == 0
    }
}

/// The cache's form of a [`Secret`] (an account's refresh token): one allocation of exactly
/// the value, where the `Arc<str>` of a `Secret` adds 16 bytes of reference counts (a 100-byte
/// token: 112 bytes allocated instead of 128). Not shared: [`CachedSecret::to_secret`] copies,
/// which happens once per refresh, never per request. Prints `[redacted]` like a `Secret`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct CachedSecret(Box<str>);

impl CachedSecret {
    /// A copy of `secret`'s value.
    pub(crate) fn new(secret: &Secret) -> Self {
        CachedSecret(Box::from(secret.expose()))
    }

    /// The value as a shareable [`Secret`] (a copy).
    pub(crate) fn to_secret(&self) -> Secret {
        Secret::new(&*self.0)
    }

    /// Whether it holds the same value as `secret`.
    pub(crate) fn is(&self, secret: &Secret) -> bool {
        *self.0 == *secret.0
    }
}

impl fmt::Debug for CachedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s)
    }
}

/// What the application hands over for an account: a refresh token and, optionally, a current
/// access token with its expiry.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use oauth_refresh_proxy::TokenSeed;
///
/// let seed = TokenSeed::new("1//refresh")
///     .access_token("ya29.access")
///     .expires_at(SystemTime::now() + Duration::from_secs(3600));
/// assert!(seed.access_token.is_some());
/// ```
#[derive(Clone, Debug)]
pub struct TokenSeed {
    /// The refresh token.
    pub refresh_token: Secret,
    /// A current access token, if the application has one.
    pub access_token: Option<Secret>,
    /// When `access_token` expires; `None` means unknown (the configured default lifetime applies).
    pub expires_at: Option<SystemTime>,
}

impl TokenSeed {
    /// A seed with only a refresh token: the first request refreshes.
    ///
    /// ```
    /// # use oauth_refresh_proxy::TokenSeed;
    /// let seed = TokenSeed::new("1//refresh");
    /// assert!(seed.access_token.is_none());
    /// ```
    pub fn new(refresh_token: impl Into<Secret>) -> Self {
        TokenSeed {
            refresh_token: refresh_token.into(),
            access_token: None,
            expires_at: None,
        }
    }

    /// Sets the current access token.
    ///
    /// ```
    /// # use oauth_refresh_proxy::TokenSeed;
    /// let seed = TokenSeed::new("r").access_token("a");
    /// assert_eq!(seed.access_token.unwrap().expose(), "a");
    /// ```
    pub fn access_token(mut self, token: impl Into<Secret>) -> Self {
        self.access_token = Some(token.into());
        self
    }

    /// Sets when the access token expires.
    ///
    /// ```
    /// # use oauth_refresh_proxy::TokenSeed;
    /// let seed = TokenSeed::new("r").expires_at(std::time::UNIX_EPOCH);
    /// assert!(seed.expires_at.is_some());
    /// ```
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }
}

/// A stable fingerprint of a secret (hex SHA-256), to recognise a token without keeping or
/// logging it.
///
/// ```
/// use oauth_refresh_proxy::{token::fingerprint, Secret};
/// assert_eq!(fingerprint(&Secret::new("a")), fingerprint(&Secret::new("a")));
/// assert_ne!(fingerprint(&Secret::new("a")), fingerprint(&Secret::new("b")));
/// assert!(!fingerprint(&Secret::new("ghr_abc")).contains("ghr_abc"));
/// ```
pub fn fingerprint(secret: &Secret) -> String {
    hex(&sha256(&[secret.expose().as_bytes()]))
}

/// The SHA-256 of `parts`, one after the other: the crate's one digest (fingerprints, flight
/// keys, key ids).
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in parts {
        h.update(part);
    }
    h.finalize().into()
}

/// `bytes` in lowercase hex: the crate's one hex encoder.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Seconds since the Unix epoch, for listings and wire formats.
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads an `expiresAt`-style absolute timestamp: values above 10^12 are milliseconds, others
/// seconds; `0` (or negative) means unknown.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use oauth_refresh_proxy::token::timestamp_to_system_time;
///
/// assert_eq!(timestamp_to_system_time(1_767_229_200), Some(UNIX_EPOCH + Duration::from_secs(1_767_229_200)));
/// assert_eq!(timestamp_to_system_time(1_767_254_400_000), Some(UNIX_EPOCH + Duration::from_secs(1_767_254_400)));
/// assert_eq!(timestamp_to_system_time(0), None);
/// ```
pub fn timestamp_to_system_time(value: i64) -> Option<SystemTime> {
    if value <= 0 {
        return None;
    }
    let value = value as u64;
    let d = if value > 1_000_000_000_000 {
        Duration::from_millis(value)
    } else {
        Duration::from_secs(value)
    };
    UNIX_EPOCH.checked_add(d)
}
