//! A real Python SDK through the real sidecar: PyGithub (pinned in `tests/sdk/requirements.txt`)
//! with only `base_url` pointing at the proxy and no token, against the fake GitHub REST API of
//! `support::github_rest`, whose bodies carry absolute `url` fields on its own origin (the
//! route's upstream). PyGithub builds the issues URL from `repo.url` and follows `Link` pages,
//! so every request stays behind the proxy only because the proxy rewrites JSON bodies (SPEC
//! 4.3) and `Link` headers. `get_repo`, `get_issues` over three pages and `create_issue` run
//! with the access token revoked after the first page: everything succeeds, with exactly one
//! refresh, and no request reaches the fake without a token the realm issued.
//!
//! Needs `tests/sdk/venv` (`python3 -m venv tests/sdk/venv && tests/sdk/venv/bin/pip install -r
//! tests/sdk/requirements.txt`; `.ci/run` does it). Without it, plain `cargo test` skips this
//! test with a note on stderr; with `CI=true` it fails instead — CI never skips it.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::github_rest::{self, ISSUES_PER_PAGE, ISSUE_PAGES};
use support::process::{drain, text, wait_or_kill, KillOnDrop};
use support::sdk::{fakes_runtime, sdk_dir, tail};
use support::{skip_unless_ci, start_backend, Realm};

/// Bound on each wait for the script (a line, or its exit).
const PY_TIMEOUT: Duration = Duration::from_secs(60);

fn python() -> PathBuf {
    sdk_dir().join("venv").join("bin").join("python")
}

/// `Some(reason)` when the venv or PyGithub in it is missing.
fn missing_prerequisite() -> Option<String> {
    let py = python();
    if !py.is_file() {
        return Some(format!("{} is absent", py.display()));
    }
    match Command::new(&py)
        .args(["-c", "import github"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "PyGithub is not importable in the venv: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("{}: {e}", py.display())),
    }
}

#[test]
fn pygithub_follows_body_urls_through_the_sidecar() {
    const INSTALL: &str = "run: python3 -m venv tests/sdk/venv && tests/sdk/venv/bin/pip install -r tests/sdk/requirements.txt";
    if skip_unless_ci(
        "sdk_pygithub::pygithub_follows_body_urls_through_the_sidecar",
        missing_prerequisite(),
        INSTALL,
    ) {
        return;
    }

    let rt = fakes_runtime();
    let realm = Realm::rotating("pygithub");
    let (backend_url, (api, calls)) = rt.block_on(async {
        (
            start_backend(realm.clone()).await,
            github_rest::start(realm.clone()).await,
        )
    });
    let refresh = realm.new_refresh_token();
    let initial = realm.new_access_token(&refresh);
    let proxy = rt.block_on(github_rest::start_sidecar(
        &realm,
        &backend_url,
        api,
        "",
        &refresh,
        &initial,
    ));
    let proxy_url = proxy.url("");

    let mut child = KillOnDrop(
        Command::new(python())
            .arg("pygithub_issues.py")
            .current_dir(sdk_dir())
            .env("PROXY_URL", &proxy_url)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the venv's python"),
    );
    let (py_stderr, err_done) = drain(child.0.stderr.take().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    let out_done = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let context = |what: &str| {
        format!(
            "{what}\npython stderr:\n{}\nproxy stderr (tail):\n{}",
            text(&py_stderr),
            tail(&proxy.stderr_text(), 60)
        )
    };
    let next_line = |step: &str| -> serde_json::Value {
        let line = lines
            .recv_timeout(PY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}", context(&format!("no {step:?} line ({e})"))));
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}", context(&format!("{e}: {line:?}"))));
        assert_eq!(v["step"], step, "{}", context(&line));
        v
    };

    // get_repo and the first page of issues, then the token is revoked.
    let paused = next_line("paused");
    assert_eq!(paused["pygithub"], "2.5.0", "the pinned PyGithub");
    assert_eq!(
        paused["repo_url"],
        format!("{proxy_url}/github/repos/octo/hello")
    );
    assert_eq!(paused["first"], serde_json::json!(["issue 1", "issue 2"]));
    assert_eq!(calls.all().len(), 2, "{:#?}", calls.all());
    realm.revoke_access(&initial);
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);

    // The remaining pages (the first of them met the revoked token) and create_issue.
    let done = next_line("done");
    let status = wait_or_kill(&mut child.0, PY_TIMEOUT);
    let _ = out_done.join();
    let _ = err_done.join();
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        context(&format!("python ended with {status:?}"))
    );
    let titles: Vec<String> = (1..=ISSUE_PAGES * ISSUES_PER_PAGE)
        .map(|n| format!("issue {n}"))
        .collect();
    assert_eq!(done["titles"], serde_json::json!(titles));
    assert_eq!(done["full_name"], "octo/hello");
    for (n, url) in done["issue_urls"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            url.as_str().unwrap(),
            format!("{proxy_url}/github/repos/octo/hello/issues/{}", n + 1)
        );
    }
    assert_eq!(done["created"]["title"], "made through the proxy");
    assert_eq!(
        done["created"]["url"],
        format!("{proxy_url}/github/repos/octo/hello/issues/1001")
    );

    // At the fake: every request with a token the realm issued, the revoked one exactly once
    // (the 401 that triggered the only refresh), in this order.
    let calls = calls.all();
    let seen: Vec<(&str, &str, u16)> = calls
        .iter()
        .map(|c| (c.method.as_str(), c.path_and_query.as_str(), c.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("GET", "/repos/octo/hello", 200),
            ("GET", "/repos/octo/hello/issues", 200),
            ("GET", "/repos/octo/hello/issues?page=2", 401),
            ("GET", "/repos/octo/hello/issues?page=2", 200),
            ("GET", "/repos/octo/hello/issues?page=3", 200),
            ("POST", "/repos/octo/hello/issues", 201),
        ],
        "{calls:#?}"
    );
    let bearer = |c: &github_rest::Call| {
        c.authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or_else(|| panic!("a request without a bearer token: {c:?}"))
            .to_string()
    };
    for c in &calls[..3] {
        assert_eq!(bearer(c), initial, "{c:?}");
    }
    let fresh = bearer(&calls[3]);
    assert_ne!(fresh, initial);
    assert!(
        realm.is_valid_access(&fresh),
        "not a token the realm issued"
    );
    for c in &calls[3..] {
        assert_eq!(bearer(c), fresh, "{c:?}");
    }
    for c in &calls {
        assert!(c.user_agent.contains("orp-pygithub-test"), "{c:?}");
    }
    assert_eq!(realm.backend_calls.get(), 1, "exactly one refresh");

    let py_err = text(&py_stderr);
    for secret in realm.secrets() {
        assert!(!py_err.contains(&secret), "secret in python's stderr");
        assert!(
            !done.to_string().contains(&secret),
            "secret in python's output"
        );
    }
    proxy.assert_no_secret_in_stderr(&realm.secrets());
}
