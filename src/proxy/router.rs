//! Prefix routes (SPEC 4.3): which upstream a request goes to, the upstream URI, and the
//! rewriting of `Location` and `Link` URLs that point back at the upstream.

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
    let base = route.upstream.path().trim_end_matches('/');
    let mut pq =
        String::with_capacity(base.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
    pq.push_str(base);
    pq.push_str(if rest.is_empty() { "/" } else { rest });
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = route.upstream.scheme().cloned();
    parts.authority = route.upstream.authority().cloned();
    parts.path_and_query = Some(pq.parse()?);
    Ok(Uri::from_parts(parts)?)
}

/// An origin with the default port made explicit, compared case-insensitively.
#[derive(PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

fn origin(scheme: Option<&Scheme>, authority: Option<&Authority>) -> Option<Origin> {
    let scheme = scheme?.as_str().to_ascii_lowercase();
    let authority = authority?;
    let port = match (authority.port_u16(), scheme.as_str()) {
        (Some(p), _) => p,
        (None, "https") => 443,
        (None, "http") => 80,
        _ => return None,
    };
    Some(Origin {
        scheme,
        host: authority.host().to_ascii_lowercase(),
        port,
    })
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
    let base = route.upstream.path().trim_end_matches('/');
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
    let prefix = if route.prefix == "/" {
        ""
    } else {
        route.prefix.as_str()
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Provider;

    fn route(prefix: &str, upstream: &'static str) -> Route {
        Route {
            prefix: prefix.into(),
            upstream: Uri::from_static(upstream),
            provider: Provider::Google,
            default_account: None,
        }
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
