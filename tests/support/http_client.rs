//! Requests to a running proxy with hyper's client, bounded by [`WAIT`] and read to their end.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::{TestBody, WAIT};

pub type HttpClient = Client<HttpConnector, TestBody>;

/// An answer, read to its end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The `error.code` of one of the proxy's own JSON answers (SPEC 4.4).
    pub fn code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code: {}", self.text()))
            .to_string()
    }
}

/// A plain HTTP/1.1 client.
pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client with prior knowledge (h2c).
pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// `method uri` with `headers` and `body`; panics on a transport error or after [`WAIT`].
pub async fn request(
    client: &HttpClient,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Answer {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(body).unwrap();
    let fut = async {
        let resp = client
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {uri}: {e:?}"));
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {uri}: no answer within {WAIT:?}"))
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 responses.
// ---------------------------------------------------------------------------------------------

/// A response head read raw.
pub struct RawHead {
    pub text: String,
    /// Where the body starts in the bytes read.
    pub body_start: usize,
    /// Its `content-length`, when it has one.
    pub content_length: Option<usize>,
}

impl RawHead {
    /// The head of the response in `buf` (the bytes read so far), once it is complete.
    pub fn parse(buf: &[u8]) -> Option<RawHead> {
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let text = String::from_utf8_lossy(&buf[..end]).to_string();
        let content_length = text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        });
        Some(RawHead {
            text,
            body_start: end + 4,
            content_length,
        })
    }

    /// (status, head, body) of the response in `buf`; panics without a status line.
    pub fn finish(self, buf: &[u8]) -> (u16, String, String) {
        let body = String::from_utf8_lossy(&buf[self.body_start..]).to_string();
        let head = self.text;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {head}"));
        (status, head, body)
    }
}

/// Reads one response from `s` until `complete(head, bytes read, bytes of the last read)` holds
/// (a last read of 0: the peer closed); panics with `closed(bytes read)` when the peer closes
/// before. (status, head, body). Unbounded: the caller bounds it.
pub async fn read_raw_response(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    complete: impl Fn(&RawHead, usize, usize) -> bool,
    closed: impl Fn(&[u8]) -> String,
) -> (u16, String, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = RawHead::parse(&buf) {
            if complete(&head, buf.len(), n) {
                return head.finish(&buf);
            }
        }
        assert!(n > 0, "{}", closed(&buf));
    }
}
