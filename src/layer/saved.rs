//! What the layer keeps of each request to send it again after a 401: [`SavedRequest`].

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Request};

/// What the request was, to send it again.
///
/// Kept on every request but read only after a 401, so it is built to cost little: the URI
/// copied inline when it is short (see [`SavedUri`]), the headers in a plain list (see
/// [`SavedHeaders`]), nothing at all when there are none.
pub(crate) struct SavedRequest {
    method: http::Method,
    uri: SavedUri,
    version: http::Version,
    /// `None`: the request had no headers but `Authorization` (which a replay sets anew); with
    /// no headers at all nothing is allocated.
    headers: Option<SavedHeaders>,
    extensions: http::Extensions,
}

/// The longest authority plus path and query copied inline by [`SavedUri`].
const INLINE_URI: usize = 110;

/// A request's URI, kept for a replay.
///
/// A `Uri`'s clone takes a reference count on each of its shared buffers (authority, path) and
/// its drop releases them: four atomic read-modify-writes per request for a URI that is almost
/// never read again. An `http`/`https` URI whose authority, path and query fit [`INLINE_URI`]
/// bytes is copied instead, and parsed again only for a replay (the same text through the same
/// parser: an equal `Uri`).
enum SavedUri {
    Inline {
        https: bool,
        /// The authority is `buf[..authority]`, the path and query `buf[authority..len]`.
        authority: u8,
        len: u8,
        buf: [u8; INLINE_URI],
    },
    Shared(http::Uri),
}

impl SavedUri {
    #[inline(always)]
    fn new(uri: &http::Uri) -> Self {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return SavedUri::Shared(uri.clone()),
        };
        let (Some(authority), Some(pq)) = (uri.authority(), uri.path_and_query()) else {
            return SavedUri::Shared(uri.clone());
        };
        let (authority, pq) = (authority.as_str().as_bytes(), pq.as_str().as_bytes());
        let len = authority.len() + pq.len();
        if authority.is_empty() || len > INLINE_URI {
            return SavedUri::Shared(uri.clone());
        }
        let mut buf = [0u8; INLINE_URI];
        buf[..authority.len()].copy_from_slice(authority);
        buf[authority.len()..len].copy_from_slice(pq);
        SavedUri::Inline {
            https,
            authority: authority.len() as u8,
            len: len as u8,
            buf,
        }
    }

    /// The URI again; `None` only if the copy did not parse, which a copy of a valid URI
    /// always does (the request is then not replayed rather than sent elsewhere).
    fn into_uri(self) -> Option<http::Uri> {
        match self {
            SavedUri::Shared(uri) => Some(uri),
            SavedUri::Inline {
                https,
                authority,
                len,
                buf,
            } => {
                let (a, pq) = buf[..len as usize].split_at(authority as usize);
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(if https {
                    http::uri::Scheme::HTTPS
                } else {
                    http::uri::Scheme::HTTP
                });
                parts.authority = Some(http::uri::Authority::try_from(a).ok()?);
                parts.path_and_query = Some(http::uri::PathAndQuery::try_from(pq).ok()?);
                http::Uri::from_parts(parts).ok()
            }
        }
    }
}

impl SavedRequest {
    #[inline(always)]
    pub(crate) fn new(parts: &http::request::Parts) -> Self {
        SavedRequest {
            method: parts.method.clone(),
            uri: SavedUri::new(&parts.uri),
            version: parts.version,
            headers: SavedHeaders::new(&parts.headers),
            extensions: parts.extensions.clone(),
        }
    }

    /// The request again, with `body` and the `Authorization` header `auth`; `None` when the
    /// URI or the headers could not be restored (see [`SavedUri::into_uri`],
    /// [`SavedHeaders::into_map`]).
    pub(crate) fn into_request<B>(self, body: B, auth: HeaderValue) -> Option<Request<B>> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri.into_uri()?;
        *req.version_mut() = self.version;
        if let Some(headers) = self.headers {
            *req.headers_mut() = headers.into_map()?;
        }
        *req.extensions_mut() = self.extensions;
        req.headers_mut().insert(AUTHORIZATION, auth);
        Some(req)
    }
}

/// A request's headers, kept for a replay, without its `Authorization` (a replay sets its own).
///
/// A `HeaderMap`'s clone allocates an index table and an entry list (with a hash per entry),
/// for a request that is almost never replayed. Here the names and values are kept in one
/// list, in the map's iteration order, so that a replay's map iterates (and is written out)
/// in the same order, multiple values included; the map is built again only for a replay.
/// A value's clone is a reference count (none for a `from_static` one); its sensitive flag
/// goes with it.
pub(crate) struct SavedHeaders(Vec<(HeaderName, HeaderValue)>);

impl SavedHeaders {
    /// `headers` but `Authorization`; `None` when there is nothing else.
    #[inline]
    pub(crate) fn new(headers: &HeaderMap) -> Option<Self> {
        if headers.is_empty() {
            return None;
        }
        let mut kept = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            if *name != AUTHORIZATION {
                kept.push((name.clone(), value.clone()));
            }
        }
        (!kept.is_empty()).then_some(SavedHeaders(kept))
    }

    /// The headers again, as a map; `None` only if the map refused them, which it does not: the
    /// map they came from held the same names. (Sized by the values, which may be more than a
    /// map can reserve for: then it grows as they come.)
    pub(crate) fn into_map(self) -> Option<HeaderMap> {
        let mut map = HeaderMap::try_with_capacity(self.0.len()).unwrap_or_default();
        for (name, value) in self.0 {
            map.try_append(name, value).ok()?;
        }
        Some(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_uri_comes_back_equal_inline_or_shared() {
        let long = format!(
            "https://api.github.com/repos/o/r/issues?q={}",
            "x".repeat(100)
        );
        let cases = [
            "https://www.googleapis.com/drive/v3/files?pageSize=10",
            "http://127.0.0.1:4000/user",
            "https://ghe.example.com:8443/api/v3/user/repos?per_page=100&page=2",
            "https://a.example",
            "https://a.example?x=1",
            "https://a.example/p%20q?x=%2F&y",
            "https://user:pw@a.example/p",
            "http://[::1]:8080/v1",
            "HTTPS://A.EXAMPLE/Upper",
            "/api/v3/user?x=1",
            "*",
            "ghe.example.com:443",
            "ftp://files.example/x",
            long.as_str(),
        ];
        for text in cases {
            let uri: http::Uri = text.parse().unwrap();
            let saved = SavedUri::new(&uri);
            let inline = matches!(saved, SavedUri::Inline { .. });
            let back = saved.into_uri().unwrap();
            assert_eq!(back, uri, "{text}");
            assert_eq!(back.to_string(), uri.to_string(), "{text}");
            assert_eq!(back.path_and_query(), uri.path_and_query(), "{text}");
            assert_eq!(back.authority(), uri.authority(), "{text}");
            assert_eq!(back.scheme_str(), uri.scheme_str(), "{text}");
            let expect_inline =
                matches!(uri.scheme_str(), Some("http" | "https")) && text.len() < INLINE_URI;
            assert_eq!(inline, expect_inline, "{text}");
        }
    }

    #[test]
    fn saved_headers_come_back_equal_in_order_without_authorization() {
        let mut headers = HeaderMap::new();
        headers.append("user-agent", HeaderValue::from_static("orp-test/1"));
        headers.append("accept", HeaderValue::from_static("application/json"));
        headers.append("x-custom", HeaderValue::from_static("one"));
        headers.append("x-custom", HeaderValue::from_static("two"));
        headers.append(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer caller-secret"),
        );
        headers.append("accept", HeaderValue::from_static("text/plain"));
        let mut secret = HeaderValue::from_static("session=s3cr3t");
        secret.set_sensitive(true);
        headers.append("cookie", secret);
        // Tabs and obs-text are valid in values.
        headers.append(
            "x-bytes",
            HeaderValue::from_bytes(b"a\tb \xe9\xff").unwrap(),
        );
        headers.append("x-empty", HeaderValue::from_static(""));
        let long = "v".repeat(70_000);
        headers.append("x-long", HeaderValue::from_str(&long).unwrap());

        let back = SavedHeaders::new(&headers).unwrap().into_map().unwrap();
        // The original's iteration order, Authorization left out.
        let expected: Vec<_> = headers
            .iter()
            .filter(|(n, _)| **n != AUTHORIZATION)
            .collect();
        let back_pairs: Vec<_> = back.iter().collect();
        fn names(pairs: &[(&HeaderName, &HeaderValue)]) -> Vec<String> {
            pairs.iter().map(|(n, _)| n.to_string()).collect()
        }
        assert_eq!(names(&back_pairs), names(&expected));
        for ((_, got), (name, want)) in back_pairs.iter().zip(&expected) {
            assert!(got == want, "{name}: the value differs");
            assert_eq!(got.is_sensitive(), want.is_sensitive(), "{name}");
        }
        assert!(back.get("cookie").unwrap().is_sensitive());
        assert!(!back.get("accept").unwrap().is_sensitive());
        assert!(!back.contains_key(AUTHORIZATION));
    }

    #[test]
    fn more_values_than_a_map_reserves_for_come_back_whole() {
        // `HeaderMap::with_capacity` panics past 24 576; one name may carry more values.
        let mut headers = HeaderMap::new();
        for i in 0..30_000u32 {
            headers.append("x-many", HeaderValue::from(i));
        }
        let back = SavedHeaders::new(&headers).unwrap().into_map().unwrap();
        assert_eq!(back.get_all("x-many").iter().count(), 30_000);
        assert_eq!(back.get_all("x-many").iter().next_back().unwrap(), "29999");
    }

    #[test]
    fn nothing_is_saved_without_headers_but_authorization() {
        assert!(SavedHeaders::new(&HeaderMap::new()).is_none());
        let mut only_auth = HeaderMap::new();
        only_auth.append(AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        only_auth.append(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert!(SavedHeaders::new(&only_auth).is_none());
    }

    #[test]
    fn a_saved_request_comes_back_with_the_new_authorization() {
        let req = Request::post("https://api.github.com/user?x=1")
            .header("accept", "application/json")
            .header(AUTHORIZATION, "Bearer caller")
            .header("x-two", "a")
            .header("x-two", "b")
            .extension(7u32)
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let saved = SavedRequest::new(&parts);
        let back = saved
            .into_request("body", HeaderValue::from_static("Bearer new"))
            .unwrap();
        assert_eq!(back.method(), parts.method);
        assert_eq!(back.uri(), &parts.uri);
        assert_eq!(back.version(), parts.version);
        assert_eq!(back.extensions().get::<u32>(), Some(&7));
        assert_eq!(back.headers()[AUTHORIZATION], "Bearer new");
        assert_eq!(back.headers().get_all(AUTHORIZATION).iter().count(), 1);
        let two: Vec<_> = back.headers().get_all("x-two").iter().collect();
        assert_eq!(two, ["a", "b"]);
        assert_eq!(back.headers()["accept"], "application/json");
        assert_eq!(*back.body(), "body");
    }
}
