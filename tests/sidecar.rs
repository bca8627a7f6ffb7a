//! Black-box tests of the sidecar: the real `oauth-refresh-proxy` binary, started as a process
//! with a generated TOML config, in front of the crate's in-process fakes (a fake GitHub API, a
//! fake Google API and a fake Flashback refresh backend on 127.0.0.1). Calls are counted at the
//! fakes; the child's stderr (RUST_LOG=trace) and every admin answer are checked for secrets.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;
use support::http_client::{h2c_client, http1_client, request, Answer, HttpClient};
use support::process::{run_cli, CliOutput, TempDir};
use support::world::*;
use support::*;

// ---------------------------------------------------------------------------------------------
// 1. Command line.
// ---------------------------------------------------------------------------------------------

#[test]
fn cli_version_and_help() {
    let out = run_cli(&["--version"], &[]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("oauth-refresh-proxy {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run_cli(&["--help"], &[]);
    assert!(out.status.success(), "{}", out.stderr);
    for word in ["serve", "check-config", "demo", "--version"] {
        assert!(
            out.stdout.contains(word),
            "{word} not in --help: {}",
            out.stdout
        );
    }
    let out = run_cli(&["serve", "--help"], &[]);
    assert!(out.status.success());
    for word in ["--config", "--listen", "--admin-listen", "--log-format"] {
        assert!(out.stdout.contains(word), "{word} not in serve --help");
    }
}

const CLIENT_SECRET: &str = "client-secret-cli-7c1d";
const ADMIN_SECRET: &str = "admin-secret-cli-93fe";
const BACKEND_SECRET: &str = "backend-secret-cli-11aa";
const REFRESH_SECRET: &str = "refresh-secret-cli-5b2e";
const ACCESS_SECRET: &str = "access-secret-cli-0d4f";

#[test]
fn check_config_prints_a_summary_without_secrets() {
    let dir = TempDir::new("check");
    let backend_file = dir.write("backend-token", &format!("{BACKEND_SECRET}\n"));
    let path = dir.write(
        "proxy.toml",
        &format!(
            r#"listen = "127.0.0.1:18080"
admin_listen = "127.0.0.1:19090"
client_token = "env:ORP_TEST_CLIENT_TOKEN"
admin_token = "{ADMIN_SECRET}"

[refresh]
backend_url = "http://127.0.0.1:1"
backend_token = "file:{}"

[[route]]
prefix = "/google"
upstream = "https://www.googleapis.com"
provider = "google"
default_account = "alice"

[[account]]
provider = "google"
id = "alice"
refresh_token = "{REFRESH_SECRET}"
access_token = "{ACCESS_SECRET}"
expires_at = 4000000000
"#,
            backend_file.display()
        ),
    );
    let out = run_cli(
        &["check-config", "--config", path.to_str().unwrap()],
        &[("ORP_TEST_CLIENT_TOKEN", CLIENT_SECRET)],
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stderr, "");
    for want in ["127.0.0.1:18080", "127.0.0.1:19090", "/google", "alice"] {
        assert!(out.stdout.contains(want), "{want} not in: {}", out.stdout);
    }
    for s in [
        CLIENT_SECRET,
        ADMIN_SECRET,
        BACKEND_SECRET,
        REFRESH_SECRET,
        ACCESS_SECRET,
    ] {
        assert!(
            !out.stdout.contains(s),
            "{s} in the summary: {}",
            out.stdout
        );
    }
}

/// Asserts the contract for a bad config: exit 1, exactly one line on stderr, `error: `, no
/// panic, nothing on stdout.
fn assert_one_line_error(out: &CliOutput, what: &str, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "{what}: {}", out.stderr);
    assert!(
        out.stderr.starts_with("error: "),
        "{what}: {:?}",
        out.stderr
    );
    assert!(out.stderr.ends_with('\n'), "{what}: {:?}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{what}: {:?}", out.stderr);
    assert!(
        out.stderr.contains(needle),
        "{what}: {needle:?} not in {:?}",
        out.stderr
    );
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!out.stderr.contains(bad), "{what}: {:?}", out.stderr);
    }
    assert!(
        !out.stdout.contains("listening"),
        "{what}: {:?}",
        out.stdout
    );
    for s in [BACKEND_SECRET, REFRESH_SECRET] {
        assert!(
            !out.stderr.contains(s),
            "{what}: secret in {:?}",
            out.stderr
        );
    }
}

#[test]
fn config_errors_are_one_line_and_exit_1() {
    let dir = TempDir::new("bad");
    let tail = format!(
        "[refresh]\nbackend_url = \"http://127.0.0.1:1\"\nbackend_token = \"{BACKEND_SECRET}\"\n\n[[account]]\nprovider = \"github\"\nid = \"octo\"\nrefresh_token = \"{REFRESH_SECRET}\"\n"
    );
    let cases: Vec<(&str, String, String)> = vec![
        (
            "unknown root key",
            format!("listne = \"127.0.0.1:0\"\n{tail}"),
            r#"unknown key "listne" in table root"#.into(),
        ),
        (
            "unknown refresh key",
            tail.replace("[refresh]\n", "[refresh]\ntiemout = \"5s\"\n"),
            r#"unknown key "tiemout""#.into(),
        ),
        (
            "unknown route key",
            format!("{tail}\n[[route]]\nprefix = \"/g\"\nupstrem = \"https://x.example\"\nprovider = \"google\"\n"),
            r#""upstrem""#.into(),
        ),
        (
            "bad duration",
            tail.replace("[refresh]\n", "[refresh]\ntimeout = \"5 minutes\"\n"),
            "refresh.timeout".into(),
        ),
        (
            "syntax error",
            format!("listen = \"127.0.0.1:0\n{tail}"),
            "TOML syntax error".into(),
        ),
        (
            "missing env secret",
            tail.replace(
                &format!("\"{BACKEND_SECRET}\""),
                "\"env:ORP_TEST_SURELY_UNSET_VARIABLE\"",
            ),
            "ORP_TEST_SURELY_UNSET_VARIABLE".into(),
        ),
        (
            "non-loopback listen without client_token",
            format!("listen = \"0.0.0.0:0\"\nadmin_listen = \"\"\n{tail}"),
            "client_token".into(),
        ),
    ];
    for (what, text, needle) in &cases {
        let path = dir.write("proxy.toml", text);
        let path = path.to_str().unwrap();
        let out = run_cli(&["check-config", "--config", path], &[]);
        assert_one_line_error(&out, &format!("check-config: {what}"), needle);
        assert!(
            out.stderr.contains(path),
            "the file is named: {}",
            out.stderr
        );
        let out = run_cli(&["serve", "--config", path], &[]);
        assert_one_line_error(&out, &format!("serve: {what}"), needle);
    }
    // The exact line of SPEC 4.2.
    let path = dir.write("exact.toml", &format!("listne = \"x\"\n{tail}"));
    let path = path.to_str().unwrap();
    for cmd in ["check-config", "serve"] {
        let out = run_cli(&[cmd, "--config", path], &[]);
        assert_eq!(
            out.stderr,
            format!("error: {path}: unknown key \"listne\" in table root\n")
        );
    }
    // A file that does not exist.
    let missing = dir.path("missing.toml");
    let out = run_cli(&["serve", "--config", missing.to_str().unwrap()], &[]);
    assert_one_line_error(&out, "missing file", "missing.toml");
    // `--listen` overriding a loopback config onto a public address is refused too.
    let path = dir.write(
        "ok.toml",
        &format!("listen = \"127.0.0.1:0\"\nadmin_listen = \"\"\n{tail}"),
    );
    let out = run_cli(
        &[
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert_one_line_error(&out, "--listen 0.0.0.0:0", "client_token");
}

// ---------------------------------------------------------------------------------------------
// 2. Proxying.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_path_and_query_unchanged_with_the_upstreams_host() {
    let mut w = World::new("fwd").await;
    let (_, octo) = w.seed("github", "octo", 3600);
    let (_, alice) = w.seed("google", "alice", 3600);
    let sc = w.start(Opts::default()).await;

    for path in [
        "/github/user?x=1",
        "/github",
        "/github/",
        "/github?only=query",
        "/github/repos/o/r/contents/a%2Fb?ref=main&q=a%20b",
    ] {
        let a = sc.get_as("octo", path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
    }
    // The route's default account, and the header overriding nothing else.
    let a = sc
        .send("GET", "/google/drive/v3/files?q=name%3D%27x%27", &[], "")
        .await;
    assert_eq!(a.status, 200, "{}", a.text());

    let seen = w.realm.seen();
    let got: Vec<_> = seen.iter().map(|s| s.path_and_query.as_str()).collect();
    assert_eq!(
        got,
        [
            "/user?x=1",
            "/",
            "/",
            "/?only=query",
            "/repos/o/r/contents/a%2Fb?ref=main&q=a%20b",
            "/drive/v3/files?q=name%3D%27x%27",
        ]
    );
    for s in &seen[..5] {
        assert_eq!(s.headers["host"], w.github.to_string());
        assert_eq!(s.authorization, bearer(&octo));
        assert!(s.headers.get("x-oauth-account").is_none());
    }
    assert_eq!(seen[5].headers["host"], w.google.to_string());
    assert_eq!(seen[5].authorization, bearer(&alice));
    assert_eq!(w.realm.api_calls.get(), 6);
    assert_eq!(w.realm.backend_calls.get(), 0);
    sc.finish(&w.realm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_accounts_are_resolved_or_refused() {
    let mut w = World::new("route").await;
    let (_, octo) = w.seed("github", "octo", 3600);
    let (_, bob) = w.seed("google", "bob", 3600);
    let (_, alice) = w.seed("google", "alice", 3600);
    let sc = w.start(Opts::default()).await;

    for path in ["/githubx/user", "/githubx", "/nope", "/", "/GitHub/user"] {
        let a = sc.get_as("octo", path).await;
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(a.code(), "unknown_route", "{path}");
    }
    let a = sc.send("GET", "/github/user", &[], "").await;
    assert_eq!(a.status, 400);
    assert_eq!(a.code(), "account_required");
    assert_eq!(a.json()["error"]["provider"], "github");
    // A blank x-oauth-account names no account (nor the route's default).
    for blank in ["", "   ", "\t"] {
        let a = sc
            .send("GET", "/github/user", &[("x-oauth-account", blank)], "")
            .await;
        assert_eq!(a.status, 400, "{blank:?}");
        assert_eq!(a.code(), "account_required", "{blank:?}");
    }

    let a = sc.get_as("ghost", "/github/user").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.code(), "unknown_account");
    assert_eq!(a.json()["error"]["account"], "ghost");
    assert_eq!(a.json()["error"]["provider"], "github");
    // A header overrides the route's default; accounts are per provider.
    let a = sc.get_as("octo", "/google/x").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.code(), "unknown_account");
    assert_eq!(w.realm.api_calls.get(), 0, "nothing reached an upstream");

    let a = sc.get_as("bob", "/google/x").await;
    assert_eq!(a.status, 200);
    let a = sc.get_as("octo", "/github/x").await;
    assert_eq!(a.status, 200);
    // Accounts named in turns and in runs on one route each get their own token.
    let order = ["alice", "bob", "bob", "alice", "alice", "bob"];
    for account in order {
        let a = sc.get_as(account, "/google/x").await;
        assert_eq!(a.status, 200, "{account}");
    }
    let seen = w.realm.seen();
    assert_eq!(seen.len(), 2 + order.len());
    assert_eq!(seen[0].authorization, bearer(&bob));
    assert_eq!(seen[1].authorization, bearer(&octo));
    for (x, account) in seen[2..].iter().zip(order) {
        let token = if account == "alice" { &alice } else { &bob };
        assert_eq!(x.authorization, bearer(token), "{account}");
    }
    assert_eq!(w.realm.backend_calls.get(), 0);
    sc.finish(&w.realm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_authorization_is_replaced_and_hop_by_hop_headers_are_dropped() {
    let mut w = World::new("hop").await;
    let (_, octo) = w.seed("github", "octo", 3600);
    let sc = w.start(Opts::default()).await;

    // Through the client: the caller's own Authorization is replaced.
    let a = sc
        .send(
            "GET",
            "/github/user",
            &[
                ("x-oauth-account", "octo"),
                ("authorization", "Bearer caller-own-token"),
                ("x-end-to-end", "kept"),
            ],
            "",
        )
        .await;
    assert_eq!(a.status, 200);

    // Raw, with every hop-by-hop header a caller can send.
    let raw = format!(
        "POST /github/user?raw=1 HTTP/1.1\r\n\
         Host: {}\r\n\
         x-oauth-account: octo\r\n\
         Authorization: token caller-raw\r\n\
         Connection: close, x-custom, x-other\r\n\
         X-Custom: 1\r\n\
         X-Other: 2\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         Proxy-Authorization: Bearer not-for-upstream\r\n\
         TE: trailers\r\n\
         Trailer: x-trailer\r\n\
         Upgrade: websocket\r\n\
         X-End-To-End: kept\r\n\
         Content-Length: 5\r\n\
         \r\n\
         hello",
        sc.proxy_addr()
    );
    let (status, _, body) = raw_request(sc.proxy_addr(), &raw).await;
    assert_eq!(status, 200, "{body}");

    let seen = w.realm.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.authorization, bearer(&octo));
        assert_eq!(s.headers.get_all("authorization").iter().count(), 1);
        assert_eq!(s.headers["x-end-to-end"], "kept");
        for name in [
            "x-oauth-account",
            "connection",
            "x-custom",
            "x-other",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "te",
            "trailer",
            "upgrade",
        ] {
            assert!(
                s.headers.get(name).is_none(),
                "{name} reached the upstream: {:?}",
                s.headers
            );
        }
    }
    assert_eq!(seen[1].path_and_query, "/user?raw=1");
    assert_eq!(seen[1].body_sha256, sha256_hex(b"hello"));
    sc.finish(&w.realm);
}

// ---------------------------------------------------------------------------------------------
// 3. Location and Link rewriting.
// ---------------------------------------------------------------------------------------------

/// The URL of `rel` in a `Link` header value.
fn link_rel(link: &str, rel: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, params) = part.trim().split_once(';')?;
        params.contains(&format!("rel=\"{rel}\"")).then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_and_location_point_back_at_the_proxy() {
    let mut w = World::new("link").await;
    w.seed("github", "octo", 3600);
    let sc = w.start(Opts::default()).await;
    let p = sc.proxy_addr();

    let a = sc.get_as("octo", "/github/user/repos").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("link").unwrap(),
        format!(
            r#"<http://{p}/github/user/repos?page=2>; rel="next", <http://{p}/github/user/repos?page=3>; rel="last""#
        )
    );
    // Follow `next` through the proxy to the last page.
    let mut ids: Vec<u64> = a
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    let mut next = link_rel(a.header("link").unwrap(), "next");
    let mut pages = 1;
    let mut last_link = String::new();
    while let Some(url) = next {
        assert!(url.starts_with(&format!("http://{p}/github/")), "{url}");
        let a = get_as_octo(&sc.client, &url).await;
        assert_eq!(a.status, 200);
        pages += 1;
        ids.extend(
            a.json()
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_u64().unwrap()),
        );
        last_link = a.header("link").unwrap().to_string();
        assert!(!last_link.contains(&w.github.to_string()), "{last_link}");
        next = link_rel(&last_link, "next");
    }
    assert_eq!(pages, REPO_PAGES);
    assert_eq!(ids, (1..=REPO_PAGES * REPOS_PER_PAGE).collect::<Vec<_>>());
    assert_eq!(
        link_rel(&last_link, "prev").unwrap(),
        format!("http://{p}/github/user/repos?page=2")
    );
    assert_eq!(
        link_rel(&last_link, "first").unwrap(),
        format!("http://{p}/github/user/repos?page=1")
    );

    let a = sc.get_as("octo", "/github/redirect").await;
    assert_eq!(a.status, 302);
    let location = a.header("location").unwrap().to_string();
    assert_eq!(
        location,
        format!("http://{p}/github/after-redirect?from=redirect")
    );
    let a = get_as_octo(&sc.client, &location).await;
    assert_eq!(a.status, 200);
    let seen = w.realm.seen();
    assert_eq!(
        seen.last().unwrap().path_and_query,
        "/after-redirect?from=redirect"
    );
    assert_eq!(w.realm.api_calls.get(), REPO_PAGES + 2);
    sc.finish(&w.realm);
}

// ---------------------------------------------------------------------------------------------
// 4. Refreshing through the process.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_before_sending() {
    let mut w = World::new("exp").await;
    let (refresh, old) = w.seed("github", "octo", -60);
    let sc = w.start(Opts::default()).await;

    let a = sc.get_as("octo", "/github/user").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(w.realm.backend_calls.get(), 1);
    assert_eq!(w.realm.api_calls.get(), 1, "no 401 round trip first");
    let seen = w.realm.seen();
    assert_eq!(seen[0].status, 200);
    assert_ne!(seen[0].authorization, bearer(&old));
    let calls = w.realm.backend_requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "/auth/github/refresh");
    assert_eq!(
        calls[0].1,
        bearer(w.realm.backend_token.as_deref().unwrap())
    );
    let sent: serde_json::Value = serde_json::from_str(&calls[0].2).unwrap();
    assert_eq!(sent, serde_json::json!({ "refresh_token": refresh }));

    let a = sc.get_as("octo", "/github/user").await;
    assert_eq!(a.status, 200);
    assert_eq!(w.realm.backend_calls.get(), 1, "the new token is cached");
    sc.finish(&w.realm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refreshed_and_the_request_replayed_byte_identical() {
    let mut w = World::new("rev").await;
    let (_, old) = w.seed("github", "octo", 3600);
    let sc = w.start(Opts::default()).await;
    w.realm.revoke_access(&old);

    let body = pattern(300 * 1024);
    let expected = sha256_hex(&body);
    let a = sc
        .send(
            "POST",
            "/github/repos/o/r/issues?via=proxy",
            &[
                ("x-oauth-account", "octo"),
                ("content-type", "application/octet-stream"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["sha256"], expected.as_str());
    assert_eq!(w.realm.backend_calls.get(), 1);
    let seen = w.realm.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!((seen[0].status, seen[1].status), (401, 200));
    assert_eq!(seen[0].authorization, bearer(&old));
    assert_ne!(seen[1].authorization, bearer(&old));
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.path_and_query, "/repos/o/r/issues?via=proxy");
        assert_eq!(s.body_sha256, expected);
        assert_eq!(s.body_len, body.len());
        assert_eq!(s.headers["content-type"], "application/octet-stream");
    }

    // A body of unknown length (chunked) within the limit is replayed too.
    let current = seen[1].authorization.clone().unwrap();
    w.realm
        .revoke_access(current.strip_prefix("Bearer ").unwrap());
    let (tx, chunked) = ChannelBody::new();
    for part in body.chunks(7 * 1024) {
        tx.send(Bytes::copy_from_slice(part)).unwrap();
    }
    drop(tx);
    let a = request(
        &sc.client,
        "PUT",
        &sc.url("/github/chunked"),
        &[("x-oauth-account", "octo")],
        chunked.boxed(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["sha256"], expected.as_str());
    let seen = w.realm.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!((seen[2].status, seen[3].status), (401, 200));
    assert_eq!(seen[2].body_sha256, expected);
    assert_eq!(seen[3].body_sha256, expected);
    assert_eq!(w.realm.backend_calls.get(), 2);

    let m = sc.metrics().await;
    let replayed = [("provider", "github"), ("outcome", "replayed")];
    assert_eq!(metric(&m, "orp_replay_total", &replayed), Some(2.0), "{m}");
    let success = [("provider", "github"), ("outcome", "success")];
    assert_eq!(metric(&m, "orp_refresh_total", &success), Some(2.0));
    sc.finish(&w.realm);
}

/// Sends `n` concurrent `GET /github/<path>/<i>` as `octo` (each on the client `client()`
/// returns) while the backend is gated; once each met the revoked token and all but the
/// first coalesced on its refresh, releases the one backend call. The requests' answers.
async fn gated_burst(
    w: &World,
    sc: &Sidecar,
    n: u64,
    path: &str,
    client: impl Fn() -> HttpClient,
) -> tokio::task::JoinSet<Answer> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = client();
        let uri = sc.url(&format!("/github/{path}/{i}"));
        set.spawn(async move { get_as_octo(&client, &uri).await });
    }
    w.realm.backend_calls.wait_for(1).await;
    w.realm.api_calls.wait_for(n).await;
    wait_coalesced(sc, n - 1).await;
    w.realm.release_backend(1);
    set
}

/// Waits (at most `WAIT`) until `orp_refresh_coalesced_total{provider="github"}` is `n`.
async fn wait_coalesced(sc: &Sidecar, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = sc.metrics().await;
        if metric(&m, "orp_refresh_coalesced_total", &[("provider", "github")]) == Some(n as f64) {
            return;
        }
        assert!(Instant::now() < deadline, "not all requests coalesced: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_on_a_revoked_token_share_one_refresh() {
    const N: u64 = 200;
    let mut w = World::new("burst").await;
    let (_, old) = w.seed("github", "octo", 3600);
    let sc = w.start(Opts::default()).await;
    w.realm.revoke_access(&old);
    w.realm.script([Reply::Gated]);

    // Every request gets its 401 and all but the first wait on the first one's refresh.
    let mut set = gated_burst(&w, &sc, N, "burst", || sc.client.clone()).await;
    let mut ok = 0;
    while let Some(a) = set.join_next().await {
        let a = a.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
        ok += 1;
    }
    assert_eq!(ok, N);
    assert_eq!(w.realm.backend_calls.get(), 1);
    assert_eq!(w.realm.api_calls.get(), 2 * N);
    let seen = w.realm.seen();
    assert_eq!(seen.iter().filter(|s| s.status == 401).count() as u64, N);
    let new: Vec<_> = seen.iter().filter(|s| s.status == 200).collect();
    assert_eq!(new.len() as u64, N);
    assert!(new.iter().all(|s| s.authorization == new[0].authorization));
    let m = sc.metrics().await;
    assert_eq!(
        metric(&m, "orp_refresh_coalesced_total", &[("provider", "github")]),
        Some((N - 1) as f64)
    );
    sc.finish(&w.realm);
}

/// The process's threads that serve the proxy listener (`orp-worker-N`), sorted by name, with
/// how often each has woken up so far (voluntary context switches).
fn worker_threads(pid: u32) -> Vec<(String, u64)> {
    let mut threads: Vec<(String, u64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let status = std::fs::read_to_string(t.ok()?.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            let name = field("Name:")?;
            let wakeups = field("voluntary_ctxt_switches:")?.parse().ok()?;
            Some((name, wakeups))
        })
        .filter(|(n, _)| n.starts_with("orp-worker-"))
        .collect();
    threads.sort();
    threads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_the_workers_and_still_share_one_refresh() {
    const N: u64 = 300;
    let mut w = World::new("workers").await;
    let (_, old) = w.seed("github", "octo", 3600);
    let sc = w
        .start(Opts {
            root: "[server]\nworkers = 3",
            ..Opts::default()
        })
        .await;
    let before = worker_threads(sc.pid());
    let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["orp-worker-0", "orp-worker-1", "orp-worker-2"]);
    w.realm.revoke_access(&old);
    w.realm.script([Reply::Gated]);
    // One connection per request: the connections go to the three workers in turn. All but
    // the first request, whichever worker it is on, wait on the first one's refresh.
    let mut set = gated_burst(&w, &sc, N, "workers", http1_client).await;
    while let Some(a) = set.join_next().await {
        let a = a.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
    }
    assert_eq!(
        w.realm.backend_calls.get(),
        1,
        "one refresh across the workers"
    );
    assert_eq!(w.realm.api_calls.get(), 2 * N);
    let new: Vec<_> = w
        .realm
        .seen()
        .into_iter()
        .filter(|s| s.status == 200)
        .collect();
    assert_eq!(new.len() as u64, N);
    assert!(new.iter().all(|s| s.authorization == new[0].authorization));
    // Every worker served its share: each was woken for its ~100 connections (an idle worker
    // sleeps in its reactor and is never woken; a busy one handles many events per wake-up, so
    // the count only says "at least once").
    let after = worker_threads(sc.pid());
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        assert!(a > b, "{name} was never woken: {after:?}");
    }
    sc.finish(&w.realm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_refresh_fails_fast_until_the_tokens_are_replaced() {
    let mut w = World::new("rej").await;
    let (octo_refresh, octo_access) = w.seed("github", "octo", 3600);
    let (dead_refresh, _) = w.seed("github", "dead", -60);
    let sc = w.start(Opts::default()).await;
    w.realm.revoke_access(&octo_access);
    w.realm.revoke_refresh(&octo_refresh);
    w.realm.revoke_refresh(&dead_refresh);

    // Rejected while handling an upstream 401: that 401 comes back, marked.
    let a = sc.get_as("octo", "/github/user").await;
    assert_eq!(a.status, 401);
    assert_eq!(a.header("x-oauth-refresh"), Some("rejected"));
    assert_eq!(a.text(), GITHUB_401.body, "the upstream's own 401");
    assert_eq!(
        (w.realm.backend_calls.get(), w.realm.api_calls.get()),
        (1, 1)
    );
    // Then fail fast: no backend call, no upstream call.
    for _ in 0..3 {
        let a = sc.get_as("octo", "/github/user").await;
        assert_eq!(a.status, 401);
        assert_eq!(a.code(), "refresh_rejected");
        assert_eq!(a.header("x-oauth-refresh"), Some("rejected"));
    }
    assert_eq!(
        (w.realm.backend_calls.get(), w.realm.api_calls.get()),
        (1, 1)
    );

    // Rejected before sending (expired token): the proxy's own 401.
    let a = sc.get_as("dead", "/github/user").await;
    assert_eq!(a.status, 401);
    assert_eq!(a.code(), "refresh_rejected");
    assert_eq!(a.header("x-oauth-refresh"), Some("rejected"));
    assert_eq!(a.json()["error"]["account"], "dead");
    assert_eq!(a.json()["error"]["provider"], "github");
    assert_eq!(
        (w.realm.backend_calls.get(), w.realm.api_calls.get()),
        (2, 1)
    );
    let a = sc.get_as("dead", "/github/user").await;
    assert_eq!(a.code(), "refresh_rejected");
    let a = sc
        .admin("POST", "/tokens/github/dead/refresh", None, "")
        .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.code(), "refresh_rejected");
    assert_eq!(
        (w.realm.backend_calls.get(), w.realm.api_calls.get()),
        (2, 1)
    );

    let listed = sc.admin("GET", "/tokens", None, "").await.json();
    for e in listed.as_array().unwrap() {
        assert_eq!(e["needs_reauth"], true, "{e}");
        assert!(e["last_error"].is_string(), "{e}");
    }
    let m = sc.metrics().await;
    let rejected = [("provider", "github"), ("outcome", "rejected")];
    assert_eq!(metric(&m, "orp_refresh_total", &rejected), Some(2.0));
    let reauth = [("provider", "github"), ("state", "needs_reauth")];
    assert_eq!(metric(&m, "orp_tokens", &reauth), Some(2.0));

    // New tokens through the admin API revive the account.
    let refresh = w.realm.new_refresh_token();
    let access = w.realm.new_access_token(&refresh);
    let body = serde_json::json!({
        "refresh_token": refresh, "access_token": access, "expires_at": now_secs() + 3600,
    });
    let a = sc
        .admin("PUT", "/tokens/github/octo", None, &body.to_string())
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["needs_reauth"], false);
    let a = sc.get_as("octo", "/github/user").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        w.realm.seen().last().unwrap().authorization,
        bearer(&access)
    );
    assert_eq!(w.realm.backend_calls.get(), 2);
    // The other dead account is still dead.
    let a = sc.get_as("dead", "/github/user").await;
    assert_eq!(a.code(), "refresh_rejected");
    assert_eq!(w.realm.backend_calls.get(), 2);
    sc.finish(&w.realm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_backend_failure_is_503_with_retry_after() {
    let mut w = World::new("tra").await;
    w.seed("github", "octo", -60);
    let sc = w
        .start(Opts {
            refresh: "max_attempts = 2\ntimeout = \"2s\"",
            ..Opts::default()
        })
        .await;
    let down = r#"{"success": false, "message": "maintenance"}"#;
    w.realm.script([
        Reply::Status(503, down.into()),
        Reply::Status(503, down.into()),
    ]);
    let a = sc.get_as("octo", "/github/user").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.code(), "refresh_unavailable");
    let retry_after: u64 = a
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry_after > 0);
    assert_eq!(w.realm.backend_calls.get(), 2, "max_attempts = 2");
    assert_eq!(w.realm.api_calls.get(), 0);

    // Transient is not fatal, but the account is in cooldown (SPEC 2): requests during it are
    // answered 503 with the seconds left and make no backend call; the first request after
    // it refreshes and goes through.
    let a = sc.get_as("octo", "/github/user").await;
    assert_eq!(a.status, 503);
    let left: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=6).contains(&left), "Retry-After {left}");
    assert_eq!(
        w.realm.backend_calls.get(),
        2,
        "no backend call in cooldown"
    );
    let deadline = std::time::Instant::now() + WAIT;
    let a = loop {
        let a = sc.get_as("octo", "/github/user").await;
        if a.status != 503 || std::time::Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing, not synchronisation
    };
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(w.realm.backend_calls.get(), 3);
    let m = sc.metrics().await;
    let transient = [("provider", "github"), ("outcome", "transient_error")];
    assert_eq!(metric(&m, "orp_refresh_total", &transient), Some(1.0));
    let success = [("provider", "github"), ("outcome", "success")];
    assert_eq!(metric(&m, "orp_refresh_total", &success), Some(1.0));
    sc.finish(&w.realm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_502() {
    let mut w = World::new("down").await;
    w.seed("github", "octo", 3600);
    let sc = w.start(Opts::default()).await;
    let a = sc.send("GET", "/down/user", &[], "").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.code(), "upstream_unavailable");
    assert_eq!(w.realm.backend_calls.get(), 0);
    assert_eq!(w.realm.api_calls.get(), 0);
    let m = sc.metrics().await;
    let labels = [("route", "/down"), ("status", "502")];
    assert_eq!(metric(&m, "orp_requests_total", &labels), Some(1.0));
    sc.finish(&w.realm);
}

// ---------------------------------------------------------------------------------------------
// 5. Streaming and memory.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_download_streams_through_with_bounded_memory() {
    const SIZE: usize = 64 << 20;
    let mut w = World::new("dl").await;
    w.seed("github", "octo", 3600);
    let sc = w.start(Opts::default()).await;
    // Warm up connections and pools, then take the baseline.
    let a = sc.get_as("octo", "/github/download?bytes=1024").await;
    assert_eq!((a.status, a.body.len()), (StatusCode::OK, 1024));
    let baseline = rss_kib(sc.pid());

    let req = Request::get(sc.url(&format!("/github/download?bytes={SIZE}")))
        .header("x-oauth-account", "octo")
        .body(empty())
        .unwrap();
    let fut = async {
        let resp = sc.client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let (mut total, mut peak, mut next_sample) = (0usize, baseline, 0usize);
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            let Ok(data) = frame.into_data() else {
                continue;
            };
            assert!(data.iter().all(|&b| b == b'x'));
            total += data.len();
            if total >= next_sample {
                peak = peak.max(rss_kib(sc.pid()));
                next_sample = total + (512 << 10);
            }
        }
        (total, peak.max(rss_kib(sc.pid())))
    };
    let (total, peak) = tokio::time::timeout(WAIT * 2, fut)
        .await
        .expect("the download finishes");
    assert_eq!(total, SIZE);
    let growth_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    assert!(
        growth_mib < 32.0,
        "the proxy's RSS grew by {growth_mib:.1} MiB (baseline {baseline} KiB, peak {peak} KiB)"
    );
    sc.finish(&w.realm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_mib_upload_over_the_replay_limit_arrives_intact() {
    let mut w = World::new("up").await;
    let (_, old) = w.seed("github", "octo", 3600);
    let sc = w.start(Opts::default()).await;
    let body = pattern(4 << 20);
    let expected = sha256_hex(&body);
    let headers = [("x-oauth-account", "octo")];

    let a = sc
        .send("POST", "/github/upload", &headers, body.clone())
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["sha256"], expected.as_str());
    assert_eq!(a.json()["len"], body.len());
    let seen = w.realm.seen();
    assert_eq!(seen[0].body_sha256, expected);
    assert_eq!(seen[0].body_len, body.len());

    // Revoked: too big to replay, so the upstream's 401 comes back unchanged — after the
    // refresh, so the caller's immediate retry succeeds.
    w.realm.revoke_access(&old);
    let a = sc
        .send("POST", "/github/upload", &headers, body.clone())
        .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.text(), GITHUB_401.body);
    assert!(a.header("x-oauth-refresh").is_none());
    assert_eq!(w.realm.backend_calls.get(), 1);
    let a = sc
        .send("POST", "/github/upload", &headers, body.clone())
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["sha256"], expected.as_str());
    assert_eq!(w.realm.backend_calls.get(), 1);
    let seen = w.realm.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!((seen[1].status, seen[2].status), (401, 200));
    assert!(seen.iter().all(|s| s.body_sha256 == expected));
    let m = sc.metrics().await;
    let not = [("provider", "github"), ("outcome", "not_replayable")];
    assert_eq!(metric(&m, "orp_replay_total", &not), Some(1.0));
    sc.finish(&w.realm);
}

// ---------------------------------------------------------------------------------------------
// 6. HTTP/2 from callers.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_from_the_caller() {
    let mut w = World::new("h2").await;
    let (_, octo) = w.seed("github", "octo", 3600);
    let sc = w.start(Opts::default()).await;
    let h2 = h2c_client();
    let account = [("x-oauth-account", "octo")];

    let a = request(&h2, "GET", &sc.url("/github/user?h2=1"), &account, empty()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.version, Version::HTTP_2);
    let seen = w.realm.seen();
    assert_eq!(seen[0].path_and_query, "/user?h2=1");
    assert_eq!(seen[0].authorization, bearer(&octo));
    assert_eq!(seen[0].headers["host"], w.github.to_string());
    assert!(seen[0].headers.get("x-oauth-account").is_none());

    // Links are rewritten from :authority.
    let a = request(&h2, "GET", &sc.url("/github/user/repos"), &account, empty()).await;
    assert_eq!(a.version, Version::HTTP_2);
    assert_eq!(
        link_rel(a.header("link").unwrap(), "next").unwrap(),
        format!("http://{}/github/user/repos?page=2", sc.proxy_addr())
    );

    // A replay after a 401 works over h2 as well.
    w.realm.revoke_access(&octo);
    let body = pattern(10_000);
    let a = request(
        &h2,
        "POST",
        &sc.url("/github/h2-post"),
        &account,
        full(body.clone()),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["sha256"], sha256_hex(&body).as_str());
    assert_eq!(w.realm.backend_calls.get(), 1);
    sc.finish(&w.realm);
}

// ---------------------------------------------------------------------------------------------
// 7. Never an open proxy.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_and_connect_are_refused() {
    let mut w = World::new("open").await;
    w.seed("github", "octo", 3600);
    let sc = w.start(Opts::default()).await;
    let cases = [
        (
            "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nx-oauth-account: octo\r\nConnection: close\r\n\r\n".to_string(),
            400,
        ),
        (
            format!(
                "GET http://{gh}/user HTTP/1.1\r\nHost: {gh}\r\nx-oauth-account: octo\r\nConnection: close\r\n\r\n",
                gh = w.github
            ),
            400,
        ),
        (
            format!(
                "GET http://{p}/github/user HTTP/1.1\r\nHost: {p}\r\nx-oauth-account: octo\r\nConnection: close\r\n\r\n",
                p = sc.proxy_addr()
            ),
            400,
        ),
        (
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nx-oauth-account: octo\r\n\r\n".to_string(),
            405,
        ),
        (
            format!(
                "CONNECT {gh} HTTP/1.1\r\nHost: {gh}\r\nx-oauth-account: octo\r\n\r\n",
                gh = w.github
            ),
            405,
        ),
    ];
    for (raw, want) in &cases {
        let (status, head, body) = raw_request(sc.proxy_addr(), raw).await;
        assert_eq!(status, *want, "{raw}\n{head}\n{body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
    }
    assert_eq!(w.realm.api_calls.get(), 0);
    assert_eq!(w.realm.backend_calls.get(), 0);
    sc.finish(&w.realm);
}

// ---------------------------------------------------------------------------------------------
// 8. client_token.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_token_is_required_when_set() {
    const CLIENT: &str = "client-token-sidecar-4242";
    let mut w = World::new("cli").await;
    let (_, octo) = w.seed("github", "octo", 3600);
    let sc = w
        .start(Opts {
            root: "client_token = \"env:ORP_TEST_CLIENT_TOKEN\"",
            env: &[("ORP_TEST_CLIENT_TOKEN", CLIENT)],
            secrets: &[CLIENT],
            ..Opts::default()
        })
        .await;
    let right = format!("Bearer {CLIENT}");
    let basic = format!("Basic {CLIENT}");
    for proxy_auth in [
        None,
        Some("Bearer wrong"),
        Some(basic.as_str()),
        Some("Bearer "),
    ] {
        let mut headers = vec![("x-oauth-account", "octo")];
        headers.extend(proxy_auth.map(|v| ("proxy-authorization", v)));
        let a = sc.send("GET", "/github/user", &headers, "").await;
        assert_eq!(a.status, 407, "{proxy_auth:?}");
        assert_eq!(a.code(), "unauthorized");
        assert_eq!(a.header("proxy-authenticate"), Some("Bearer"));
    }
    // The caller's Authorization is no substitute.
    let a = sc
        .send(
            "GET",
            "/github/user",
            &[("x-oauth-account", "octo"), ("authorization", &right)],
            "",
        )
        .await;
    assert_eq!(a.status, 407);
    assert_eq!(w.realm.api_calls.get(), 0);

    let a = sc
        .send(
            "GET",
            "/github/user",
            &[("x-oauth-account", "octo"), ("proxy-authorization", &right)],
            "",
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = w.realm.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].headers.get("proxy-authorization").is_none());
    assert_eq!(seen[0].authorization, bearer(&octo));
    sc.finish(&w.realm);
}

// ---------------------------------------------------------------------------------------------
// 9. Admin listener.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_health_readiness_and_metrics() {
    let mut w = World::new("met").await;
    w.seed("github", "octo", 3600);
    w.seed("google", "alice", 3600);
    let sc = w.start(Opts::default()).await;

    for _ in 0..3 {
        assert_eq!(sc.get_as("octo", "/github/user").await.status, 200);
    }
    assert_eq!(sc.send("GET", "/google/x", &[], "").await.status, 200);
    assert_eq!(sc.get_as("octo", "/nope").await.status, 404);
    assert_eq!(sc.get_as("octo", "/githubx").await.status, 404);
    assert_eq!(sc.send("GET", "/github/user", &[], "").await.status, 400);

    let a = sc.admin("GET", "/healthz", None, "").await;
    assert_eq!((a.status, a.text().trim()), (StatusCode::OK, "ok"));
    let a = sc.admin("GET", "/readyz", None, "").await;
    assert_eq!(a.status, 200);
    let a = sc.admin("GET", "/metrics", None, "").await;
    assert_eq!(a.status, 200);
    assert!(a.header("content-type").unwrap().contains("text"));
    let m = a.text();
    for family in [
        "orp_requests_total",
        "orp_upstream_request_duration_seconds",
        "orp_refresh_total",
        "orp_refresh_duration_seconds",
        "orp_refresh_coalesced_total",
        "orp_refresh_cooldown_total",
        "orp_replay_total",
        "orp_tokens",
    ] {
        let sample = |suffix: &str| format!("{family}{suffix}{{");
        assert!(
            m.lines().any(|l| l.starts_with(&sample(""))
                || l.starts_with(&sample("_count"))
                || l.starts_with(&sample("_bucket"))),
            "{family} missing from:\n{m}"
        );
    }
    let requests = |route: &str, status: &str| {
        metric(
            &m,
            "orp_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("/github", "200"), Some(3.0));
    assert_eq!(requests("/google", "200"), Some(1.0));
    assert_eq!(requests("", "404"), Some(2.0));
    assert_eq!(requests("/github", "400"), Some(1.0));
    assert_eq!(
        metric(
            &m,
            "orp_upstream_request_duration_seconds_count",
            &[("route", "/github")]
        ),
        Some(3.0)
    );
    for p in ["github", "google"] {
        let valid = [("provider", p), ("state", "valid")];
        assert_eq!(metric(&m, "orp_tokens", &valid), Some(1.0), "{p}");
    }
    sc.finish(&w.realm);
}

fn assert_listing_entry(e: &serde_json::Value) {
    let mut keys: Vec<_> = e.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, LISTING_KEYS, "{e}");
    assert!(e["generation"].is_u64(), "{e}");
    assert!(e["needs_reauth"].is_boolean(), "{e}");
    for k in ["expires_at", "last_refresh_at", "rate_limited_until"] {
        assert!(e[k].is_u64() || e[k].is_null(), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_api_lists_creates_refreshes_and_deletes() {
    let mut w = World::new("adm").await;
    let (_, octo_access) = w.seed("github", "octo", 3600);
    w.seed("google", "alice", 7200);
    let seeded_at = now_secs();
    let sc = w.start(Opts::default()).await;

    let a = sc.admin("GET", "/tokens", None, "").await;
    assert_eq!(a.status, 200);
    let list = a.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let mut names: Vec<_> = list
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["provider"].as_str().unwrap(),
                e["account"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    assert_eq!(names, ["github/octo", "google/alice"]);
    for e in list {
        assert_listing_entry(e);
        assert_eq!(e["needs_reauth"], false);
        assert!(e["last_error"].is_null());
        let exp = e["expires_at"].as_u64().unwrap();
        let lifetime = if e["provider"] == "github" {
            3600
        } else {
            7200
        };
        assert!(exp.abs_diff(seeded_at + lifetime) <= 2, "{e}");
    }
    let octo_generation = list.iter().find(|e| e["account"] == "octo").unwrap()["generation"]
        .as_u64()
        .unwrap();

    // Create, then replace.
    let refresh = w.realm.new_refresh_token();
    let access = w.realm.new_access_token(&refresh);
    let expires = now_secs() + 3600;
    let body = serde_json::json!({"refresh_token": refresh, "access_token": access, "expires_at": expires});
    let a = sc
        .admin("PUT", "/tokens/github/newacct", None, &body.to_string())
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let e = a.json();
    assert_listing_entry(&e);
    assert_eq!(
        (&e["provider"], &e["account"], &e["expires_at"]),
        (&"github".into(), &"newacct".into(), &expires.into())
    );
    let a = sc
        .admin("PUT", "/tokens/github/newacct", None, &body.to_string())
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_listing_entry(&a.json());
    let a = sc.get_as("newacct", "/github/user").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        w.realm.seen().last().unwrap().authorization,
        bearer(&access)
    );

    // Forced refresh: one backend call, the generation moves on, never the token.
    let before = w.realm.backend_calls.get();
    let a = sc
        .admin("POST", "/tokens/github/octo/refresh", None, "")
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let r = a.json();
    let mut keys: Vec<_> = r.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["expires_at", "generation"]);
    assert_eq!(r["generation"].as_u64(), Some(octo_generation + 1));
    assert!(r["expires_at"].as_u64().unwrap() > now_secs());
    assert_eq!(w.realm.backend_calls.get(), before + 1);
    let a = sc.get_as("octo", "/github/user").await;
    assert_eq!(a.status, 200);
    let used = w.realm.seen().last().unwrap().authorization.clone();
    assert_ne!(used, bearer(&octo_access), "the refreshed token is used");
    assert_eq!(w.realm.backend_calls.get(), before + 1);
    let listed = sc.admin("GET", "/tokens", None, "").await.json();
    let octo = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["account"] == "octo")
        .unwrap()
        .clone();
    assert_eq!(octo["generation"].as_u64(), Some(octo_generation + 1));
    assert!(octo["last_refresh_at"].is_u64());

    let a = sc
        .admin("POST", "/tokens/github/nobody/refresh", None, "")
        .await;
    assert_eq!(a.status, 404);
    assert_eq!(a.code(), "unknown_account");

    // Delete.
    let a = sc.admin("DELETE", "/tokens/github/newacct", None, "").await;
    assert_eq!(a.status, 204);
    assert!(a.body.is_empty());
    let a = sc.admin("DELETE", "/tokens/github/newacct", None, "").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.code(), "unknown_account");
    let a = sc.get_as("newacct", "/github/user").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.code(), "unknown_account");
    let listed = sc.admin("GET", "/tokens", None, "").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    sc.finish(&w.realm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_the_token_api_but_not_health_or_metrics() {
    const ADMIN: &str = "admin-token-sidecar-9e9e";
    let mut w = World::new("guard").await;
    w.seed("github", "octo", 3600);
    let sc = w
        .start(Opts {
            root: "admin_token = \"file:{dir}/admin-token\"",
            files: &[("admin-token", &format!("{ADMIN}\n"))],
            secrets: &[ADMIN],
            ..Opts::default()
        })
        .await;
    let put = r#"{"refresh_token": "r-guard-never-stored"}"#;
    for auth in [None, Some("wrong"), Some("admin-token-sidecar-9e9")] {
        for (method, path, body) in [
            ("GET", "/tokens", ""),
            ("PUT", "/tokens/github/intruder", put),
            ("DELETE", "/tokens/github/octo", ""),
            ("POST", "/tokens/github/octo/refresh", ""),
        ] {
            let a = sc.admin(method, path, auth, body).await;
            assert_eq!(a.status, 401, "{method} {path} {auth:?}");
        }
    }
    assert_eq!(w.realm.backend_calls.get(), 0);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(sc.admin("GET", path, None, "").await.status, 200, "{path}");
    }
    let a = sc.admin("GET", "/tokens", Some(ADMIN), "").await;
    assert_eq!(a.status, 200);
    let list = a.json();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "nothing was created: {list}"
    );
    assert_eq!(list[0]["account"], "octo");
    let a = sc
        .admin("PUT", "/tokens/github/friend", Some(ADMIN), put)
        .await;
    assert_eq!(a.status, 201);
    // The proxy listener is not guarded by the admin token.
    assert_eq!(sc.get_as("octo", "/github/user").await.status, 200);
    sc.finish(&w.realm);
}

// ---------------------------------------------------------------------------------------------
// 10. Lifecycle.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let mut w = World::new("term").await;
    w.seed("github", "octo", 3600);
    let mut sc = w.start(Opts::default()).await;
    assert_eq!(sc.get_as("octo", "/github/user").await.status, 200);

    let client = http1_client();
    let uri = sc.url("/github/hold");
    let held = tokio::spawn(async move { get_as_octo(&client, &uri).await });
    w.realm.held.wait_for(1).await;

    sc.terminate();

    // New connections are refused once the listener is gone (the process is still draining).
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::net::TcpStream::connect(sc.proxy_addr()).await {
            Err(_) => break,
            Ok(s) => drop(s),
        }
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sc.try_wait().is_none(), "exited before draining");

    w.realm.release_api(1);
    let a = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    let exit = sc.wait_exit(WAIT).await;
    assert!(exit.success(), "{exit:?}");
    sc.finish(&w.realm);
}

// ---------------------------------------------------------------------------------------------
// 11. The embedded demo.
// ---------------------------------------------------------------------------------------------

#[test]
fn demo_runs_every_scenario() {
    let out = run_cli(&["demo"], &[]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("every scenario behaved as designed"),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------------
// Probes: early 401s, oversized headers, log format, SIGINT.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_before_the_body_was_fully_sent_comes_back_after_the_refresh() {
    let mut w = World::new("early").await;
    let (_, old) = w.seed("github", "octo", 3600);
    let sc = w.start(Opts::default()).await;
    w.realm.revoke_access(&old);
    // A small body whose end the caller has not sent yet when the upstream answers 401.
    let (tx, open) = ChannelBody::new();
    tx.send(Bytes::from_static(b"first part, more to come"))
        .unwrap();
    let a = request(
        &sc.client,
        "POST",
        &sc.url("/github/early401/stream"),
        &[("x-oauth-account", "octo")],
        open.boxed(),
    )
    .await;
    assert_eq!(a.status, 401, "{}", a.text());
    assert_eq!(a.text(), GITHUB_401.body, "the upstream's 401, unchanged");
    assert!(a.header("x-oauth-refresh").is_none());
    assert_eq!(w.realm.backend_calls.get(), 1, "answered after the refresh");
    drop(tx);
    // The caller's immediate retry succeeds with the refreshed token.
    let body = pattern(300 * 1024);
    let a = sc
        .send(
            "POST",
            "/github/early401/stream",
            &[("x-oauth-account", "octo")],
            body.clone(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["sha256"], sha256_hex(&body).as_str());
    assert_eq!(w.realm.backend_calls.get(), 1);
    let m = sc.metrics().await;
    let not = [("provider", "github"), ("outcome", "not_replayable")];
    assert_eq!(metric(&m, "orp_replay_total", &not), Some(1.0));
    sc.finish(&w.realm);
}

/// SPEC 4.3: a body over `max_replay_body` whose 401 arrives before it was fully sent: the
/// upstream's 401 reaches the caller after the refresh, and the immediate retry succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_401_on_a_large_body_comes_back_after_the_refresh() {
    let mut w = World::new("early4").await;
    let (_, old) = w.seed("github", "octo", 3600);
    let sc = w.start(Opts::default()).await;
    w.realm.revoke_access(&old);
    let body = pattern(4 << 20);
    let expected = sha256_hex(&body);
    let headers = [("x-oauth-account", "octo")];
    let a = sc
        .send("POST", "/github/early401/big", &headers, body.clone())
        .await;
    assert_eq!(a.status, 401, "{}", a.text());
    assert_eq!(a.text(), GITHUB_401.body);
    assert_eq!(w.realm.backend_calls.get(), 1);
    let a = sc
        .send("POST", "/github/early401/big", &headers, body.clone())
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["sha256"], expected.as_str());
    assert_eq!(w.realm.backend_calls.get(), 1);
    sc.finish(&w.realm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_get_an_error_not_a_crash() {
    let mut w = World::new("big").await;
    w.seed("github", "octo", 3600);
    let mut sc = w.start(Opts::default()).await;
    let raw = format!(
        "GET /github/user HTTP/1.1\r\nHost: {}\r\nx-oauth-account: octo\r\nx-huge: {}\r\nConnection: close\r\n\r\n",
        sc.proxy_addr(),
        "a".repeat(1 << 20)
    );
    let (status, head, _) = raw_request(sc.proxy_addr(), &raw).await;
    assert!((400..500).contains(&status), "{head}");
    assert_eq!(w.realm.api_calls.get(), 0);
    assert!(sc.try_wait().is_none(), "the sidecar died");
    assert_eq!(sc.get_as("octo", "/github/user").await.status, 200);
    sc.finish(&w.realm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_flags_override_the_config_and_sigint_stops_cleanly() {
    let mut w = World::new("flags").await;
    w.seed("github", "octo", 3600);
    // The configured address is taken: only the `--listen` override lets the sidecar start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let mut sc = w
        .start(Opts {
            listen: &taken_addr,
            args: &["--listen", "127.0.0.1:0", "--log-format", "json"],
            ..Opts::default()
        })
        .await;
    assert_ne!(sc.proxy_addr().to_string(), taken_addr);
    assert_eq!(sc.get_as("octo", "/github/user").await.status, 200);

    sc.interrupt();
    let exit = sc.wait_exit(WAIT).await;
    assert!(exit.success(), "{exit:?}");
    let logs = sc.finish_with_logs(&w.realm);
    let mut lines = 0;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines > 0);
    drop(taken);
}
