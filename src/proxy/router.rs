//! Prefix routes (SPEC 4.3): which upstream a request goes to, the upstream URI, and the
//! rewriting of `Location` and `Link` URLs that point back at the upstream, to the request's
//! `Host` when that is a plain `host[:port]` ([`rewrite_authority`]).

use http::uri::{Authority, Scheme};
use http::Uri;

use super::config::Route;

/// The configured routes, matched longest prefix first on a segment boundary.
///
/// ```
/// use oauth_refresh_proxy::proxy::{config::Route, router::Router};
///
/// let router = Router::new(Route::defaults());
/// let (route, rest) = router.find("/github/user").unwrap();
/// assert_eq!((route.prefix.as_str(), rest), ("/github", "/user"));
/// assert!(router.find("/githubx/user").is_none());
/// assert_eq!(router.find("/github-uploads/x").unwrap().0.prefix, "/github-uploads");
/// ```
#[derive(Clone, Debug)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// A router over `routes`.
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Router { routes }
    }

    /// The route for `path` and the rest of the path after its prefix (`""` for the bare
    /// prefix). A prefix matches only on a segment boundary.
    pub fn find<'a>(&self, path: &'a str) -> Option<(&Route, &'a str)> {
        self.find_index(path)
            .map(|(i, rest)| (&self.routes[i], rest))
    }

    /// Like [`Router::find`], with the route's index in [`Router::routes`].
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::{config::Route, router::Router};
    /// let router = Router::new(Route::defaults());
    /// let (i, rest) = router.find_index("/github/user").unwrap();
    /// assert_eq!((router.routes()[i].prefix.as_str(), rest), ("/github", "/user"));
    /// ```
    pub fn find_index<'a>(&self, path: &'a str) -> Option<(usize, &'a str)> {
        self.routes.iter().enumerate().find_map(|(i, r)| {
            if r.prefix == "/" {
                return Some((i, path));
            }
            let rest = path.strip_prefix(r.prefix.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((i, rest))
        })
    }

    /// The routes, longest prefix first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// The upstream URI for `rest` (the path after the prefix) and `query` on `route`.
///
/// ```
/// use oauth_refresh_proxy::proxy::{config::Route, router::upstream_uri};
///
/// let route = &Route::defaults()[1];
/// assert_eq!(upstream_uri(route, "/user", Some("x=1")).unwrap(), "https://api.github.com/user?x=1");
/// assert_eq!(upstream_uri(route, "", None).unwrap(), "https://api.github.com/");
/// ```
pub fn upstream_uri(route: &Route, rest: &str, query: Option<&str>) -> Result<Uri, http::Error> {
    let base = base_path(route);
    // Built as bytes and handed over as they are: one allocation (parsing a `String` would
    // copy it into a second one).
    let mut pq = Vec::with_capacity(base.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
    pq.extend_from_slice(base.as_bytes());
    pq.extend_from_slice(if rest.is_empty() {
        b"/"
    } else {
        rest.as_bytes()
    });
    if let Some(q) = query {
        pq.push(b'?');
        pq.extend_from_slice(q.as_bytes());
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = route.upstream.scheme().cloned();
    parts.authority = route.upstream.authority().cloned();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_maybe_shared(
        bytes::Bytes::from(pq),
    )?);
    Ok(Uri::from_parts(parts)?)
}

/// An origin with the default port made explicit, compared case-insensitively: the rule that
/// decides which absolute URLs are "on the route's upstream" (SPEC 4.3), shared by
/// [`rewrite_url`] and the JSON body rewriting ([`super::json_rewrite`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// `route`'s upstream origin; `None` for an upstream without a scheme or host (or with a
    /// scheme other than http/https and no port).
    pub(crate) fn of_route(route: &Route) -> Option<Origin> {
        origin(route.upstream.scheme(), route.upstream.authority())
    }

    /// The spellings of this origin's authority (lower case): `host:port`, and the bare `host`
    /// when the port is the scheme's default. An authority equal to one of them
    /// (case-insensitively) is this origin's: the comparison [`rewrite_url`] makes on parsed
    /// URLs, without parsing (an authority with userinfo is not among them).
    pub(crate) fn authority_forms(&self) -> Vec<Vec<u8>> {
        let mut forms = vec![format!("{}:{}", self.host, self.port).into_bytes()];
        let default = match self.scheme.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        };
        if default == Some(self.port) {
            forms.push(self.host.clone().into_bytes());
        }
        forms
    }
}

/// `authority`'s port, or the default port of `scheme` (lower case) when it has none.
fn explicit_port(scheme: &str, authority: &Authority) -> Option<u16> {
    match (authority.port_u16(), scheme) {
        (Some(p), _) => Some(p),
        (None, "https") => Some(443),
        (None, "http") => Some(80),
        _ => None,
    }
}

fn origin(scheme: Option<&Scheme>, authority: Option<&Authority>) -> Option<Origin> {
    let scheme = scheme?.as_str().to_ascii_lowercase();
    let authority = authority?;
    let port = explicit_port(&scheme, authority)?;
    Some(Origin {
        scheme,
        host: authority.host().to_ascii_lowercase(),
        port,
    })
}

/// `route`'s upstream base path without its trailing `/` (`""` for none).
pub(crate) fn base_path(route: &Route) -> &str {
    route.upstream.path().trim_end_matches('/')
}

/// The path prefix rewritten URLs get on the proxy: the route's prefix, `""` for the prefix `/`.
pub(crate) fn proxy_prefix(route: &Route) -> &str {
    if route.prefix == "/" {
        ""
    } else {
        route.prefix.as_str()
    }
}

/// `host` (a request's `Host`) when it may become the authority of rewritten `Location`/`Link`
/// URLs: a `host[:port]` whose host is a DNS-style name (ASCII letters, digits, `-`, `.`, `_`;
/// not starting with `-` or `.`), an IPv4 address or a bracketed IPv6 address, and whose
/// optional port is 1 to 5 digits up to 65535. Anything else — userinfo (`a@evil.example`), an
/// empty value, a path (`host/path`), a query, spaces, quotes — is `None`, and the response's
/// URLs are then left as the upstream sent them (SPEC 4.3).
///
/// ```
/// use oauth_refresh_proxy::proxy::router::rewrite_authority;
///
/// assert_eq!(rewrite_authority("127.0.0.1:8080"), Some("127.0.0.1:8080"));
/// assert_eq!(rewrite_authority("[::1]:8080"), Some("[::1]:8080"));
/// assert_eq!(rewrite_authority("proxy.internal"), Some("proxy.internal"));
/// assert_eq!(rewrite_authority("a@evil.example"), None);
/// assert_eq!(rewrite_authority(""), None);
/// assert_eq!(rewrite_authority("host/path"), None);
/// ```
pub fn rewrite_authority(host: &str) -> Option<&str> {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')?;
            rest[..end].parse::<std::net::Ipv6Addr>().ok()?;
            ("", &rest[end + 1..])
        }
        None => match host.rfind(':') {
            Some(i) => (&host[..i], &host[i..]),
            None => (host, ""),
        },
    };
    if !host.starts_with('[') {
        let well_formed = !name.is_empty()
            && name.len() <= 253
            && !name.starts_with(['-', '.'])
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !well_formed {
            return None;
        }
    }
    if !port.is_empty() {
        let digits = port.strip_prefix(':')?;
        let valid = (1..=5).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && digits.parse::<u16>().is_ok();
        if !valid {
            return None;
        }
    }
    Some(host)
}

/// Rewrites an absolute URL on `route`'s upstream origin (and under its base path) to the
/// proxy: `http://{proxy_host}{prefix}{rest}`. Anything else — relative URLs, other origins,
/// paths outside the upstream's base path — is returned as `None` (leave it alone).
///
/// ```
/// use oauth_refresh_proxy::proxy::{config::Route, router::rewrite_url};
///
/// let route = &Route::defaults()[1];
/// assert_eq!(
///     rewrite_url("https://API.github.com:443/user/repos?page=2", route, "127.0.0.1:8080").unwrap(),
///     "http://127.0.0.1:8080/github/user/repos?page=2"
/// );
/// assert!(rewrite_url("https://example.com/x", route, "127.0.0.1:8080").is_none());
/// assert!(rewrite_url("/relative", route, "127.0.0.1:8080").is_none());
/// ```
pub fn rewrite_url(url: &str, route: &Route, proxy_host: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    let theirs = origin(uri.scheme(), uri.authority())?;
    let ours = origin(route.upstream.scheme(), route.upstream.authority())?;
    if theirs != ours {
        return None;
    }
    let base = base_path(route);
    let path = uri.path();
    let rest = if base.is_empty() {
        path
    } else {
        let rest = path.strip_prefix(base)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest
    };
    let prefix = proxy_prefix(route);
    let mut out = format!("http://{proxy_host}{prefix}{rest}");
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

/// Rewrites every `<URL>` of a `Link` header value with [`rewrite_url`]; `None` when nothing
/// changed.
///
/// ```
/// use oauth_refresh_proxy::proxy::{config::Route, router::rewrite_link};
///
/// let route = &Route::defaults()[1];
/// let link = r#"<https://api.github.com/user/repos?page=2>; rel="next", <https://api.github.com/user/repos?page=5>; rel="last""#;
/// assert_eq!(
///     rewrite_link(link, route, "localhost:8080").unwrap(),
///     r#"<http://localhost:8080/github/user/repos?page=2>; rel="next", <http://localhost:8080/github/user/repos?page=5>; rel="last""#
/// );
/// ```
pub fn rewrite_link(value: &str, route: &Route, proxy_host: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len() + 32);
    let mut changed = false;
    let mut rest = value;
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start + 1..].find('>') else {
            break;
        };
        let url = &rest[start + 1..start + 1 + len];
        out.push_str(&rest[..=start]);
        match rewrite_url(url, route, proxy_host) {
            Some(new) => {
                out.push_str(&new);
                changed = true;
            }
            None => out.push_str(url),
        }
        out.push('>');
        rest = &rest[start + 1 + len + 1..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// A route of `provider` from `prefix` to `upstream`, with the defaults otherwise: the unit
/// tests' fixture.
#[cfg(test)]
pub(crate) fn test_route(prefix: &str, upstream: &'static str, provider: crate::Provider) -> Route {
    Route {
        prefix: prefix.into(),
        upstream: Uri::from_static(upstream),
        provider,
        default_account: None,
        rate_limit: Default::default(),
        rewrite_body: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Provider;

    fn route(prefix: &str, upstream: &'static str) -> Route {
        test_route(prefix, upstream, Provider::Google)
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let r = Router::new(vec![
            route("/g", "https://a.googleapis.com"),
            route("/g/v2", "https://b.googleapis.com"),
        ]);
        assert_eq!(r.find("/g").unwrap().1, "");
        assert_eq!(r.find("/g/").unwrap().1, "/");
        assert_eq!(r.find("/g/v2/x").unwrap().0.prefix, "/g/v2");
        assert_eq!(r.find("/g/v2x").unwrap().0.prefix, "/g");
        assert!(r.find("/gx").is_none());
        assert!(r.find("/").is_none());
        let root = Router::new(vec![route("/", "https://a.googleapis.com")]);
        assert_eq!(root.find("/anything").unwrap().1, "/anything");
    }

    #[test]
    fn only_plain_host_port_authorities_are_used_for_rewriting() {
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:1",
            "proxy.internal:65535",
            "my_host.example",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::7]:443",
            "XN--bcher-kva.example",
        ] {
            assert_eq!(rewrite_authority(ok), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "a@evil.example",
            "user:pw@evil.example:80",
            "host/path",
            "host:80/path",
            "host?x=1",
            "host#f",
            ":8080",
            "host:",
            "host:65536",
            "host:123456",
            "host:8o",
            "host:80:80",
            "-host",
            ".host",
            "ho st",
            "host\"",
            "evil>; rel=\"x\"",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[not-v6]:80",
            "[::1]:99999",
            "h\u{e9}te.example",
        ] {
            assert_eq!(rewrite_authority(bad), None, "{bad:?}");
        }
        let long = "a".repeat(254);
        assert_eq!(rewrite_authority(&long), None);
    }

    #[test]
    fn upstream_base_paths_are_kept() {
        let r = route("/drive", "https://www.googleapis.com/drive/v3");
        assert_eq!(
            upstream_uri(&r, "/files", Some("q=a%20b")).unwrap(),
            "https://www.googleapis.com/drive/v3/files?q=a%20b"
        );
        assert_eq!(
            rewrite_url("https://www.googleapis.com/drive/v3/files?p=2", &r, "h:1").unwrap(),
            "http://h:1/drive/files?p=2"
        );
        assert!(rewrite_url("https://www.googleapis.com/upload/x", &r, "h:1").is_none());
        assert!(
            rewrite_url("http://www.googleapis.com/drive/v3/files", &r, "h:1").is_none(),
            "scheme differs"
        );
        assert!(
            rewrite_url("https://www.googleapis.com:8443/drive/v3/files", &r, "h:1").is_none(),
            "port differs"
        );
    }
}
