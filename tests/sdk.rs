//! A real SDK through the real sidecar: the `oauth-refresh-proxy` binary in front of the
//! in-process fake GitHub API and refresh backend, driven by octokit (npm) with only `baseUrl`
//! pointing at the proxy — no auth in the SDK, then a bogus caller token the proxy must replace.
//! The account's access token is revoked before the start, so the SDK's first call takes the
//! 401 → refresh → replay path, and `octokit.paginate` follows the `Link` headers the proxy
//! rewrote to itself.
//!
//! Needs Node.js and `tests/sdk/node_modules` (`cd tests/sdk && npm install`; `.ci/run` does
//! it). Without them, plain `cargo test` skips this test with a note on stderr; with `CI=true`
//! it fails instead — CI never skips it.

mod support;

use std::process::Command;
use std::time::Duration;

use oauth_refresh_proxy::Provider;
use support::process::{drain, spawn_piped, text, wait_or_kill, KillOnDrop};
use support::sdk::{fakes_runtime, sdk_dir, tail};
use support::{skip_unless_ci, start_api, start_backend, Realm, REPOS_PER_PAGE, REPO_PAGES};

/// Bound on the whole node run (both SDK runs).
const NODE_TIMEOUT: Duration = Duration::from_secs(60);

/// `Some(reason)` when Node.js or the installed octokit package is missing.
fn missing_prerequisite() -> Option<String> {
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Some(format!("`node --version` failed ({})", out.status)),
        Err(e) => return Some(format!("Node.js not found (`node`: {e})")),
    }
    let octokit = sdk_dir()
        .join("node_modules")
        .join("octokit")
        .join("package.json");
    if !octokit.is_file() {
        return Some(format!(
            "octokit is not installed ({} is absent)",
            octokit.display()
        ));
    }
    None
}

#[test]
fn octokit_paginates_through_the_sidecar() {
    if skip_unless_ci(
        "sdk::octokit_paginates_through_the_sidecar",
        missing_prerequisite(),
        "run: cd tests/sdk && npm install",
    ) {
        return;
    }

    // The fakes live on this runtime's worker threads for the whole test.
    let rt = fakes_runtime();
    let realm = Realm::rotating("sdk");
    let (backend_url, api) = rt.block_on(async {
        (
            start_backend(realm.clone()).await,
            start_api(realm.clone(), Provider::GitHub).await,
        )
    });
    let refresh = realm.new_refresh_token();
    let stale = realm.new_access_token(&refresh);
    realm.revoke_access(&stale);
    let backend_token = realm.backend_token.clone().expect("the realm has a bearer");

    // The real binary (the same sidecar config as the PyGithub test's).
    let proxy = rt.block_on(support::github_rest::start_sidecar(
        &realm,
        &backend_url,
        api,
        "",
        &refresh,
        &stale,
    ));
    let proxy_url = proxy.url("");
    assert!(proxy_url.starts_with("http://127.0.0.1:"), "{proxy_url}");

    // The SDK, unchanged.
    let mut node = KillOnDrop(spawn_piped(
        Command::new("node")
            .arg("octokit_pagination.mjs")
            .current_dir(sdk_dir())
            .env("PROXY_URL", &proxy_url),
    ));
    let (node_stdout, out_done) = drain(node.0.stdout.take().unwrap());
    let (node_stderr, err_done) = drain(node.0.stderr.take().unwrap());
    let status = wait_or_kill(&mut node.0, NODE_TIMEOUT);
    let _ = out_done.join();
    let _ = err_done.join();
    let (out, err) = (text(&node_stdout), text(&node_stderr));
    let context = || {
        format!(
            "node stdout:\n{out}\nnode stderr:\n{err}\nproxy stderr (tail):\n{}",
            tail(&proxy.stderr_text(), 60)
        )
    };
    let Some(status) = status else {
        panic!("node did not finish within {NODE_TIMEOUT:?}\n{}", context());
    };
    assert!(status.success(), "node exited with {status}\n{}", context());

    // Both runs: GET /user answered 200, then three pages of repositories, in order, each page
    // fetched from the proxy (octokit followed the rewritten `Link` headers).
    let expected: Vec<String> = (1..=REPO_PAGES * REPOS_PER_PAGE)
        .map(|i| format!("repo-{i}"))
        .collect();
    let runs: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{}", context())))
        .collect();
    assert_eq!(runs.len(), 2, "{}", context());
    for (run, label) in runs.iter().zip(["no-auth", "caller-token"]) {
        assert_eq!(run["run"], label, "{}", context());
        assert_eq!(run["user_status"], 200, "{label}\n{}", context());
        let repos: Vec<String> = run["repos"]
            .as_array()
            .expect("repos")
            .iter()
            .map(|r| r.as_str().expect("a name").to_string())
            .collect();
        assert_eq!(repos, expected, "{label}\n{}", context());
        assert_eq!(run["pages"], REPO_PAGES, "{label}\n{}", context());
        let urls = run["urls"].as_array().expect("urls");
        assert_eq!(urls.len() as u64, REPO_PAGES, "{label}");
        for url in urls {
            let url = url.as_str().expect("a url");
            assert!(
                url.starts_with(&format!("{proxy_url}/github/user/repos")),
                "{label}: page {url} was not fetched through the proxy\n{}",
                context()
            );
        }
    }

    // What the fake GitHub API saw: the stale token once (the 401 that triggered the refresh),
    // then only the refreshed token — every request came through the proxy, which injected it
    // (the SDK had no token, or a bogus one that never reached the API).
    let seen = realm.seen();
    let per_run = 1 + REPO_PAGES as usize;
    assert_eq!(seen.len(), 1 + 2 * per_run, "{seen:#?}");
    assert_eq!(realm.api_calls.get(), seen.len() as u64);
    assert_eq!(seen[0].status, 401, "{seen:#?}");
    assert_eq!(seen[0].path, "/user");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {stale}").as_str())
    );
    let fresh = seen[1]
        .authorization
        .clone()
        .expect("the replay carries a token");
    assert_ne!(fresh, format!("Bearer {stale}"));
    assert!(
        realm.is_valid_access(fresh.strip_prefix("Bearer ").expect("a bearer token")),
        "{fresh:?} is not a token the realm issued"
    );
    for s in &seen[1..] {
        assert_eq!(s.status, 200, "{s:#?}");
        assert_eq!(s.authorization.as_ref(), Some(&fresh), "{s:#?}");
    }
    let paths: Vec<&str> = seen.iter().map(|s| s.path_and_query.as_str()).collect();
    let one_run = [
        "/user",
        "/user/repos?per_page=2",
        "/user/repos?page=2",
        "/user/repos?page=3",
    ];
    let mut expected_paths = vec!["/user"];
    expected_paths.extend(one_run);
    expected_paths.extend(one_run);
    assert_eq!(paths, expected_paths);
    for s in &seen {
        let agent = s
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            agent.contains("orp-sdk-test"),
            "not the SDK's request: {s:#?}"
        );
        assert!(!s.headers.contains_key("x-oauth-account"), "{s:#?}");
        for (name, value) in &s.headers {
            let value = value.to_str().unwrap_or_default();
            assert!(
                !value.contains("caller-token"),
                "the caller's token reached the API in {name}: {s:#?}"
            );
        }
    }

    // One refresh for everything, authenticated with the backend bearer.
    assert_eq!(realm.backend_calls.get(), 1);
    let backend = realm.backend_requests();
    assert_eq!(backend.len(), 1);
    assert_eq!(backend[0].0, "/auth/github/refresh");
    assert_eq!(
        backend[0].1.as_deref(),
        Some(format!("Bearer {backend_token}").as_str())
    );

    // No secret in the proxy's trace-level log or in anything node printed.
    proxy.assert_no_secret_in_stderr(&realm.secrets());
    for secret in realm.secrets() {
        assert!(!out.contains(&secret), "secret {secret:?} in node's stdout");
        assert!(!err.contains(&secret), "secret {secret:?} in node's stderr");
    }
}
