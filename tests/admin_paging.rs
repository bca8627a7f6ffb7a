//! Black-box tests of the paged `GET /tokens` (SPEC 4.5) and of the admin bearer scheme
//! (SPEC 4.3): the real binary with a generated config of 1 500 accounts (ids that need
//! percent-encoding among them), read over HTTP/1.1 and HTTP/2. Every answer and the child's
//! trace-level stderr are checked for every token. The load test (100 000 accounts, ten
//! listings beside proxied traffic) is `tests/admin_tokens.rs`.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use support::http_client::{h2c_client, http1_client, request, Answer, HttpClient};
use support::process::Proxy;
use support::*;

const ADMIN_TOKEN: &str = "ADMIN-TOKEN-SECRET-7f3a";
/// Every token in the config carries this marker.
const MARKER: &str = "-SECRET-";

/// GitHub ids that need encoding in a query, or sort in surprising places.
const ODD_IDS: [&str; 12] = [
    "a b",
    "a&b",
    "a#b",
    "a+b",
    "a%b",
    "a=b",
    "x?y",
    "octo@home",
    "semi;colon",
    "quo\"te",
    "back\\slash",
    "été",
];
const GOOGLE_IDS: usize = 1000;
const ACCOUNTS: usize = 1500;

/// The configured accounts: (provider, id, refresh token, access token).
fn accounts() -> Vec<(&'static str, String, String, String)> {
    let mut v = Vec::new();
    for i in 0..GOOGLE_IDS {
        v.push(("google", format!("g{i:04}")));
    }
    for id in ODD_IDS {
        v.push(("github", id.to_string()));
    }
    for i in 0..ACCOUNTS - GOOGLE_IDS - ODD_IDS.len() {
        v.push(("github", format!("h{i:04}")));
    }
    v.into_iter()
        .enumerate()
        .map(|(n, (p, id))| {
            (
                p,
                id,
                format!("RT{MARKER}{n:05}"),
                format!("AT{MARKER}{n:05}"),
            )
        })
        .collect()
}

/// The listing order: Google first, then GitHub; ids in byte order.
fn expected() -> Vec<(String, String)> {
    let mut v: Vec<(u8, String)> = accounts()
        .into_iter()
        .map(|(p, id, _, _)| (u8::from(p == "github"), id))
        .collect();
    v.sort();
    v.into_iter()
        .map(|(p, id)| ((if p == 0 { "google" } else { "github" }).to_string(), id))
        .collect()
}

/// `provider/account` for `?after=`, percent-encoded.
fn after(provider: &str, account: &str) -> String {
    let account =
        percent_encoding::utf8_percent_encode(account, percent_encoding::NON_ALPHANUMERIC);
    format!("{provider}/{account}")
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The sidecar with the 1 500 accounts, its refresh backend a fake that counts its calls.
struct Sidecar {
    proxy: Proxy,
    backend_calls: Arc<AtomicU64>,
    answers: Vec<Answer>,
}

impl Sidecar {
    async fn start(admin_token: Option<&str>) -> Sidecar {
        let backend_calls = Arc::new(AtomicU64::new(0));
        let calls = backend_calls.clone();
        let backend: SocketAddr = support::serve(move |_req: Request<Incoming>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Response::new(Full::new(Bytes::from_static(b"{}"))) }
        })
        .await;
        let mut config = String::from("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n");
        if let Some(t) = admin_token {
            config.push_str(&format!("admin_token = \"{t}\"\n"));
        }
        config.push_str(&format!(
            "\n[refresh]\nbackend_url = \"http://{backend}\"\n\n"
        ));
        for (provider, id, refresh, access) in accounts() {
            config.push_str(&format!(
                "[[account]]\nprovider = \"{provider}\"\nid = {}\nrefresh_token = \"{refresh}\"\n\
                 access_token = \"{access}\"\nexpires_at = 4000000000\n\n",
                toml_str(&id)
            ));
        }
        Sidecar {
            proxy: Proxy::start(&config, &[], &[]).await,
            backend_calls,
            answers: Vec::new(),
        }
    }

    /// `GET {path}` on the admin listener with `authorization`, recorded for the secret check.
    /// The page of two entries after `provider/account` (no token).
    async fn two_after(&mut self, client: &HttpClient, provider: &str, account: &str) -> Answer {
        let path = format!("/tokens?limit=2&after={}", after(provider, account));
        self.get(client, &path, None).await
    }

    async fn get(
        &mut self,
        client: &HttpClient,
        path: &str,
        authorization: Option<&str>,
    ) -> Answer {
        let mut headers = Vec::new();
        if let Some(a) = authorization {
            headers.push(("authorization", a));
        }
        let a = request(
            client,
            "GET",
            &self.proxy.admin_url(path),
            &headers,
            empty(),
        )
        .await;
        self.answers.push(Answer {
            status: a.status,
            version: a.version,
            headers: a.headers.clone(),
            body: a.body.clone(),
        });
        a
    }

    /// Walks `/tokens{query}` along `Link rel="next"`; returns the pages' entries as
    /// (provider, account) and each page's length.
    async fn walk(
        &mut self,
        client: &HttpClient,
        query: &str,
        auth: Option<&str>,
    ) -> (Vec<(String, String)>, Vec<usize>) {
        let mut path = format!("/tokens{query}");
        let (mut seen, mut sizes) = (Vec::new(), Vec::new());
        loop {
            let a = self.get(client, &path, auth).await;
            assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.text());
            assert_eq!(a.header("content-type"), Some("application/json"));
            let page = a.json();
            let page = page.as_array().expect("an array");
            sizes.push(page.len());
            for e in page {
                let mut keys: Vec<&str> =
                    e.as_object().unwrap().keys().map(|k| k.as_str()).collect();
                keys.sort();
                assert_eq!(keys, LISTING_KEYS);
                assert_eq!(e["expires_at"], 4_000_000_000u64);
                assert_eq!(e["generation"], 1);
                seen.push((
                    e["provider"].as_str().unwrap().to_string(),
                    e["account"].as_str().unwrap().to_string(),
                ));
            }
            let Some(link) = a.header("link") else {
                break;
            };
            path = link
                .strip_prefix('<')
                .and_then(|l| l.strip_suffix(">; rel=\"next\""))
                .unwrap_or_else(|| panic!("Link {link:?}"))
                .to_string();
            assert!(sizes.len() <= ACCOUNTS, "the Links do not end");
        }
        (seen, sizes)
    }

    /// No token in any answer (bodies and headers) nor in the trace-level stderr; the backend
    /// was never called.
    fn finish(self) {
        for a in &self.answers {
            let text = format!("{:?}\n{}", a.headers, a.text());
            assert!(!text.contains(MARKER), "a token in an answer: {text}");
        }
        assert_eq!(self.backend_calls.load(Ordering::SeqCst), 0);
        let mut secrets: Vec<String> = accounts()
            .into_iter()
            .flat_map(|(_, _, r, a)| [r, a])
            .collect();
        secrets.push(ADMIN_TOKEN.to_string());
        secrets.push(MARKER.to_string());
        self.proxy.assert_no_secret_in_stderr(&secrets);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_follow_link_in_order_with_every_limit() {
    let mut sc = Sidecar::start(None).await;
    let client = http1_client();
    let expected = expected();
    assert_eq!(expected.len(), ACCOUNTS);

    // The default page is 1 000; its Link names the last account of the page.
    let first = sc.get(&client, "/tokens", None).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json().as_array().unwrap().len(), 1000);
    assert_eq!(
        first.header("link"),
        Some("</tokens?limit=1000&after=google/g0999>; rel=\"next\"")
    );
    assert!(first.header("content-length").is_none(), "streamed");
    let (seen, sizes) = sc.walk(&client, "", None).await;
    assert_eq!(sizes, [1000, 500]);
    assert_eq!(seen, expected);

    for (query, pages) in [
        ("?limit=1", vec![1; ACCOUNTS]),
        ("?limit=7", {
            let mut v = vec![7; ACCOUNTS / 7];
            v.push(ACCOUNTS % 7);
            v
        }),
        ("?limit=1500", vec![1500]),
        ("?limit=10000", vec![1500]),
    ] {
        let (seen, sizes) = sc.walk(&client, query, None).await;
        assert_eq!(sizes, pages, "{query}");
        assert_eq!(seen, expected, "{query}");
    }

    // Over HTTP/2 alike.
    let (seen, sizes) = sc.walk(&h2c_client(), "?limit=499", None).await;
    assert_eq!(sizes, [499, 499, 499, 3]);
    assert_eq!(seen, expected);

    // The odd ids, one per page: each Link names its id percent-encoded, and leads on.
    let (_, before_odd) = expected
        .iter()
        .take_while(|(p, _)| p == "google")
        .last()
        .cloned()
        .unwrap();
    let mut path = format!("/tokens?limit=1&after=google/{before_odd}");
    let mut links = Vec::new();
    for _ in 0..ODD_IDS.len() + 1 {
        let a = sc.get(&client, &path, None).await;
        let link = a.header("link").unwrap().to_string();
        path = link[1..link.find('>').unwrap()].to_string();
        links.push(
            path.trim_start_matches("/tokens?limit=1&after=")
                .to_string(),
        );
    }
    // Byte order: "a b" < "a#b" < "a%b" < "a&b" < "a+b" < "a=b" < "back\slash" < "h0000"….
    assert_eq!(
        links,
        [
            "github/a%20b",
            "github/a%23b",
            "github/a%25b",
            "github/a%26b",
            "github/a%2Bb",
            "github/a%3Db",
            "github/back%5Cslash",
            "github/h0000",
            "github/h0001",
            "github/h0002",
            "github/h0003",
            "github/h0004",
            "github/h0005",
        ]
    );
    sc.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boundaries_and_bad_queries() {
    let mut sc = Sidecar::start(None).await;
    let client = http1_client();
    let expected = expected();
    let (last_p, last_id) = expected.last().unwrap().clone();

    // After the last account (existing, or past it): an empty array and no Link.
    assert_eq!(last_id, "été");
    for path in [
        format!("/tokens?after={}", after(&last_p, &last_id)),
        format!("/tokens?after={}&limit=1", after(&last_p, &last_id)),
        // U+10FFFF, the last of all ids.
        "/tokens?after=github/%F4%8F%BF%BF".to_string(),
    ] {
        let a = sc.get(&client, &path, None).await;
        assert_eq!(
            (a.status, a.text().as_str()),
            (StatusCode::OK, "[]"),
            "{path}"
        );
        assert!(a.header("link").is_none(), "{path}");
    }
    // The last page exactly: no Link.
    let (p, id) = &expected[ACCOUNTS - 3];
    let a = sc.two_after(&client, p, id).await;
    assert_eq!(a.json().as_array().unwrap().len(), 2);
    assert!(a.header("link").is_none());
    // One page short of the end: a Link.
    let (p, id) = &expected[ACCOUNTS - 4];
    let a = sc.two_after(&client, p, id).await;
    assert!(a.header("link").is_some());
    // From the last Google account on: the first GitHub one.
    let a = sc
        .get(&client, "/tokens?limit=1&after=google/g0999", None)
        .await;
    assert_eq!(a.json()[0]["provider"], "github");
    assert_eq!(a.json()[0]["account"], expected[GOOGLE_IDS].1.as_str());

    // The largest limit is fine; one more is a 400, as are the other malformed queries.
    let a = sc.get(&client, "/tokens?limit=10000", None).await;
    assert_eq!(a.status, StatusCode::OK);
    for query in [
        "limit=10001",
        "limit=0",
        "limit=-5",
        "limit=abc",
        "limit=",
        "after=gitlab/x",
        "after=google",
        "after=google/",
        "after=google/%zz",
        "after=google/%C3",
        "limit=1&limit=2",
        "offset=10",
    ] {
        let a = sc.get(&client, &format!("/tokens?{query}"), None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}: {}", a.text());
        assert_eq!(a.code(), "bad_request", "{query}");
        assert!(a.header("link").is_none());
    }
    let a = sc.get(&client, "/tokens?limit=10001", None).await;
    assert_eq!(
        a.json()["error"]["message"],
        "limit must be an integer from 1 to 10000"
    );
    sc.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_bearer_scheme_is_case_insensitive() {
    let mut sc = Sidecar::start(Some(ADMIN_TOKEN)).await;
    let client = http1_client();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} {ADMIN_TOKEN}");
        let a = sc.get(&client, "/tokens?limit=2", Some(&auth)).await;
        assert_eq!(a.status, StatusCode::OK, "{scheme}");
        assert_eq!(a.json().as_array().unwrap().len(), 2);
        assert_eq!(
            a.header("link"),
            Some("</tokens?limit=2&after=google/g0001>; rel=\"next\"")
        );
        // Following the Link needs the token as well.
        let a = sc
            .get(&client, "/tokens?limit=2&after=google/g0001", None)
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    let wrong = format!("Bearer {}", ADMIN_TOKEN.to_lowercase());
    let cut = format!("Bearer {}", &ADMIN_TOKEN[1..]);
    let basic = format!("Basic {ADMIN_TOKEN}");
    for auth in [
        None,
        Some(wrong.as_str()),
        Some(cut.as_str()),
        Some(basic.as_str()),
    ] {
        let a = sc.get(&client, "/tokens", auth).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(a.header("www-authenticate"), Some("Bearer"));
        assert_eq!(a.code(), "unauthorized");
    }
    // A bad query from an anonymous caller is still a 401: nothing is revealed before the token.
    let a = sc.get(&client, "/tokens?limit=0", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // The whole listing with an upper-case scheme.
    let auth = format!("BEARER {ADMIN_TOKEN}");
    let (seen, sizes) = sc.walk(&client, "?limit=10000", Some(&auth)).await;
    assert_eq!((seen, sizes), (expected(), vec![ACCOUNTS]));
    sc.finish();
}
