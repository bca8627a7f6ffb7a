//! JSON body rewriting in the real sidecar (SPEC 4.3 "JSON bodies"): the binary in front of the
//! fake GitHub REST API of `support::github_rest`, whose bodies carry absolute `url` fields on
//! its own origin. Through a route with rewriting on (the default) those come back pointing at
//! the proxy; through a `rewrite_body = false` route, and for non-JSON or gzip'ed bodies, the
//! bytes are exactly the upstream's.

mod support;

use std::sync::Arc;

use support::github_rest::{self, download_bytes, Calls, ISSUES_PER_PAGE};
use support::http_client::{h2c_client, http1_client, request, Answer};
use support::process::Proxy;
use support::{empty, start_backend, Realm};

struct Setup {
    realm: Arc<Realm>,
    calls: Arc<Calls>,
    /// `http://{fake}`: the upstream origin as the fake writes it.
    own: String,
    proxy: Proxy,
    token: String,
}

async fn setup() -> Setup {
    let realm = Realm::rotating("jsonrw");
    let backend_url = start_backend(realm.clone()).await;
    let (api, calls) = github_rest::start(realm.clone()).await;
    let refresh = realm.new_refresh_token();
    let token = realm.new_access_token(&refresh);
    let raw_route = format!(
        "\n[[route]]\nprefix = \"/raw\"\nupstream = \"http://{api}\"\nprovider = \"github\"\ndefault_account = \"octocat\"\nrewrite_body = false\n"
    );
    let proxy =
        github_rest::start_sidecar(&realm, &backend_url, api, &raw_route, &refresh, &token).await;
    Setup {
        realm,
        calls,
        own: format!("http://{api}"),
        proxy,
        token,
    }
}

async fn get(s: &Setup, path: &str) -> Answer {
    request(&http1_client(), "GET", &s.proxy.url(path), &[], empty()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_urls_in_json_bodies_point_at_the_proxy_unless_turned_off() {
    let s = setup().await;
    let me = s.proxy.url("/github");
    let own = &s.own;

    // The repository: every URL on the upstream origin, including a URI template and an
    // escaped-slash field, now points at the proxy; github.com's html_url is left alone.
    let repo = get(&s, "/github/repos/octo/hello").await;
    assert_eq!(repo.status, 200, "{}", repo.text());
    // A small body that came whole in one frame: an exact, recomputed Content-Length.
    assert_eq!(
        repo.header("content-length"),
        Some(repo.body.len().to_string().as_str()),
        "{:?}",
        repo.headers
    );
    let v = repo.json();
    assert_eq!(v["url"], format!("{me}/repos/octo/hello"));
    assert_eq!(
        v["issues_url"],
        format!("{me}/repos/octo/hello/issues{{/number}}")
    );
    assert_eq!(v["owner"]["url"], format!("{me}/users/octo"));
    assert_eq!(v["hooks_url"], format!("{me}/repos/octo/hello/hooks"));
    assert_eq!(v["html_url"], "https://github.com/octo/hello");
    assert!(!repo.text().contains(own.as_str()), "{}", repo.text());

    // Over HTTP/2 too.
    let h2 = request(
        &h2c_client(),
        "GET",
        &s.proxy.url("/github/repos/octo/hello"),
        &[],
        empty(),
    )
    .await;
    assert_eq!(h2.status, 200);
    assert_eq!(h2.body, repo.body, "same rewriting over HTTP/2");

    // A page of issues: the items' URLs and the Link header; URLs quoted inside text stay.
    let page = get(&s, "/github/repos/octo/hello/issues").await;
    assert_eq!(page.status, 200);
    let items = page.json();
    let items = items.as_array().unwrap();
    assert_eq!(items.len() as u64, ISSUES_PER_PAGE);
    assert_eq!(items[0]["url"], format!("{me}/repos/octo/hello/issues/1"));
    assert_eq!(
        items[1]["comments_url"],
        format!("{me}/repos/octo/hello/issues/2/comments")
    );
    assert_eq!(
        items[0]["body"],
        format!("quoting {own}/repos/octo/hello in text stays as it is")
    );
    assert!(page
        .header("link")
        .unwrap()
        .starts_with(&format!("<{me}/repos/octo/hello/issues?page=2>")));

    // A large JSON body arrives in many frames: it streams, chunked, without Content-Length,
    // and every URL in it is rewritten, wherever the frames split it.
    let items = 5000;
    let big = get(&s, &format!("/github/big?items={items}")).await;
    assert_eq!(big.status, 200);
    assert_eq!(big.header("content-length"), None, "{:?}", big.headers);
    assert_eq!(big.header("transfer-encoding"), Some("chunked"));
    assert!(big.body.len() > 1 << 20, "{} bytes", big.body.len());
    let v = big.json();
    let v = v.as_array().unwrap();
    assert_eq!(v.len(), items);
    for (i, item) in v.iter().enumerate() {
        let n = i + 1;
        assert_eq!(item["url"], format!("{me}/repos/o/r/issues/{n}"));
        assert_eq!(item["user"]["url"], format!("{me}/users/o"));
    }
    assert_eq!(
        big.text().matches(own.as_str()).count(),
        items,
        "only the URLs quoted in text keep the upstream origin"
    );

    // rewrite_body = false: the upstream's bytes, Content-Length and all (the Link header is
    // still rewritten: that is not the body).
    let raw = get(&s, "/raw/repos/octo/hello").await;
    assert_eq!(raw.status, 200);
    let v = raw.json();
    assert_eq!(v["url"], format!("{own}/repos/octo/hello"));
    assert_eq!(
        v["hooks_url"].as_str().unwrap(),
        format!("{own}/repos/octo/hello/hooks")
    );
    assert!(raw.text().contains(r#"\/repos\/octo\/hello\/hooks"#));
    assert_eq!(
        raw.header("content-length"),
        Some(raw.body.len().to_string().as_str())
    );

    // A non-JSON download full of JSON-looking upstream URLs: byte-identical, length kept.
    let n = (1 << 20) + 17;
    let dl = get(&s, &format!("/github/download?bytes={n}")).await;
    assert_eq!(dl.status, 200);
    assert_eq!(dl.header("content-length"), Some(n.to_string().as_str()));
    assert!(
        dl.body[..] == download_bytes(own, n)[..],
        "the download was altered"
    );

    // Content-Encoding: gzip: the proxy does not decompress, so it does not touch the body.
    let gz = get(&s, "/github/gzipped").await;
    assert_eq!(gz.status, 200);
    assert_eq!(gz.body, format!("{{\"url\":\"{own}/repos/o/r\"}}"));
    assert_eq!(
        gz.header("content-length"),
        Some(gz.body.len().to_string().as_str())
    );

    // What the fake saw: exactly those requests, each with the account's token.
    let calls = s.calls.all();
    let paths: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| (c.method.as_str(), c.path_and_query.as_str()))
        .collect();
    let dl_path = format!("/download?bytes={n}");
    let big_path = format!("/big?items={items}");
    assert_eq!(
        paths,
        [
            ("GET", "/repos/octo/hello"),
            ("GET", "/repos/octo/hello"),
            ("GET", "/repos/octo/hello/issues"),
            ("GET", big_path.as_str()),
            ("GET", "/repos/octo/hello"),
            ("GET", dl_path.as_str()),
            ("GET", "/gzipped"),
        ]
    );
    for c in &calls {
        assert_eq!(c.status, 200, "{c:?}");
        assert_eq!(
            c.authorization.as_deref(),
            Some(format!("Bearer {}", s.token).as_str())
        );
    }
    assert_eq!(s.realm.backend_calls.get(), 0, "no refresh was needed");
    s.proxy.assert_no_secret_in_stderr(&s.realm.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_error_answers_keep_their_framing() {
    let s = setup().await;
    // HEAD: no body to rewrite, so the Content-Length of the GET stays.
    let head = request(
        &http1_client(),
        "HEAD",
        &s.proxy.url("/github/repos/octo/hello"),
        &[],
        empty(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let raw = get(&s, "/raw/repos/octo/hello").await;
    assert_eq!(
        head.header("content-length"),
        Some(raw.body.len().to_string().as_str())
    );
    // A JSON 404 from upstream is rewritten like any other JSON body (no URLs: same bytes).
    let missing = get(&s, "/github/nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.text(), r#"{"message":"Not Found"}"#);
    assert_eq!(s.calls.all().len(), 3);
    s.proxy.assert_no_secret_in_stderr(&s.realm.secrets());
}
