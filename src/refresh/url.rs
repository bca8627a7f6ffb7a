//! What makes a URL acceptable to send requests to: scheme `http` or `https`, a host, no
//! credentials, no query. One rule for the refreshers' endpoints (backend, token URLs) and, in
//! the sidecar, for routes' upstreams and the configured endpoints; each caller words the
//! message around the same [`UrlProblem`].

use http::uri::Authority;
use http::Uri;

/// The first thing wrong with a URL, in the order [`check_http_uri`] looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UrlProblem {
    /// The scheme is missing or neither `http` nor `https`.
    Scheme,
    /// No authority, or one with an empty host (`http://:80/`).
    NoHost,
    /// A `user:password@` in the authority.
    Credentials,
    /// A `?query`.
    Query,
}

impl UrlProblem {
    /// The words every message about this problem uses.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            UrlProblem::Scheme => "scheme must be http or https",
            UrlProblem::NoHost => "no host",
            UrlProblem::Credentials => "credentials in the URL are not allowed",
            UrlProblem::Query => "a query is not allowed",
        }
    }
}

/// The authority of `uri` when it names a host; `None` without one or with an empty host.
pub(crate) fn host_authority(uri: &Uri) -> Option<&Authority> {
    uri.authority().filter(|a| !a.host().is_empty())
}

/// Whether `authority` carries credentials (`user:password@host`).
pub(crate) fn has_credentials(authority: &Authority) -> bool {
    authority.as_str().contains('@')
}

/// Checks, in this order, that `uri` has scheme `http` or `https`, a host, no credentials and
/// no query; the first problem found is returned.
pub(crate) fn check_http_uri(uri: &Uri) -> Result<(), UrlProblem> {
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
        return Err(UrlProblem::Scheme);
    }
    let authority = host_authority(uri).ok_or(UrlProblem::NoHost)?;
    if has_credentials(authority) {
        return Err(UrlProblem::Credentials);
    }
    if uri.query().is_some() {
        return Err(UrlProblem::Query);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_problem_is_named() {
        let check = |s: &str| check_http_uri(&s.parse().unwrap());
        assert_eq!(check("https://oauth2.googleapis.com/token"), Ok(()));
        assert_eq!(check("http://127.0.0.1:9/x"), Ok(()));
        assert_eq!(check("ftp://u:p@x/?q"), Err(UrlProblem::Scheme));
        assert_eq!(check("/just/a/path"), Err(UrlProblem::Scheme));
        assert_eq!(check("http://:80/"), Err(UrlProblem::NoHost));
        assert_eq!(check("https://u:p@x/?q"), Err(UrlProblem::Credentials));
        assert_eq!(check("https://@x/"), Err(UrlProblem::Credentials));
        assert_eq!(check("https://x/?q=1"), Err(UrlProblem::Query));
    }
}
