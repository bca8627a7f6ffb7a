//! Unit tests of `[[route]]` (prefixes, upstreams, `rate_limit`, `rewrite_body`) and
//! `[[account]]`.

use super::tests::{err, parse, BACKEND};
use super::*;
use crate::Provider;

#[test]
fn default_routes_only_without_route_tables() {
    let c = parse(&format!(
        "{BACKEND}\n[[route]]\nprefix = \"/api\"\nupstream = \"https://example.com/base/\"\nprovider = \"github\"\n"
    ))
    .unwrap();
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].prefix, "/api");
    assert_eq!(c.routes[0].upstream.path(), "/base");
    let d = Route::defaults();
    let got: Vec<_> = d
        .iter()
        .map(|r| (r.prefix.as_str(), r.upstream.host().unwrap(), r.provider))
        .collect();
    assert_eq!(
        got,
        [
            ("/google", "www.googleapis.com", Provider::Google),
            ("/github", "api.github.com", Provider::GitHub),
            ("/github-uploads", "uploads.github.com", Provider::GitHub),
        ]
    );
    assert!(d.iter().all(|r| r.upstream.scheme_str() == Some("https")));
}

fn account(provider: &str, id: &str) -> String {
    format!("[[account]]\nprovider = \"{provider}\"\nid = \"{id}\"\nrefresh_token = \"r\"\n")
}

#[test]
fn accounts() {
    let c = parse(&format!(
        "{BACKEND}{}{}",
        account("google", "alice"),
        account("github", "alice")
    ))
    .unwrap();
    assert_eq!(c.accounts.len(), 2);
    assert_eq!(
        err(&format!(
            "{BACKEND}{}{}",
            account("google", "alice"),
            account("google", "alice")
        )),
        "proxy.toml: account[1]: duplicate account google/alice"
    );
    assert_eq!(
        err(&format!("{BACKEND}{}", account("google", ""))),
        "proxy.toml: account[0].id: must not be empty"
    );
    assert_eq!(
        err(&format!("{BACKEND}{}", account("google", "a/b"))),
        "proxy.toml: account[0].id: \"a/b\" must not contain \"/\" or control characters"
    );
    assert_eq!(
        err(&format!(
            "{BACKEND}[[account]]\nprovider = \"google\"\nid = \"a\""
        )),
        "proxy.toml: missing key \"refresh_token\" in table account[0]"
    );
    assert_eq!(
        err(&format!(
            "{BACKEND}{}expires_at = -5",
            account("google", "a")
        )),
        "proxy.toml: account[0].expires_at: must be unix seconds (non-negative), found -5"
    );
}

fn route_with(prefix: &str, upstream: &str) -> String {
    format!("[[route]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nprovider = \"github\"\n")
}

#[test]
fn route_rewrite_body() {
    let on = parse(&format!(
        "{BACKEND}{}",
        route_with("/g", "https://x.example")
    ))
    .unwrap();
    assert!(on.routes[0].rewrite_body, "on by default");
    assert!(!on.summary().contains("JSON bodies not rewritten"));
    let off = parse(&format!(
        "{BACKEND}{}rewrite_body = false\n",
        route_with("/g", "https://x.example")
    ))
    .unwrap();
    assert!(!off.routes[0].rewrite_body);
    assert!(off
        .summary()
        .contains("/g               -> https://x.example (github, JSON bodies not rewritten)"));
    assert_eq!(
        err(&format!(
            "{BACKEND}{}rewrite_body = \"no\"\n",
            route_with("/g", "https://x.example")
        )),
        "proxy.toml: route[0].rewrite_body: expected true or false, found string"
    );
    assert!(Route::defaults().iter().all(|r| r.rewrite_body));
}

#[test]
fn route_rules() {
    let ok = |p: &str| {
        parse(&format!(
            "{BACKEND}{}",
            route_with(p, "https://api.github.com")
        ))
    };
    ok("/").unwrap();
    ok("/a/b").unwrap();
    for (prefix, why) in [
        ("github", "\"github\" must start with \"/\""),
        ("/github/", "\"/github/\" must not end with \"/\""),
        ("/a//b", "\"/a//b\" has an empty segment"),
        (
            "/a b",
            "\"/a b\" must be a plain path (no query, fragment or whitespace)",
        ),
        (
            "/a?b",
            "\"/a?b\" must be a plain path (no query, fragment or whitespace)",
        ),
    ] {
        assert_eq!(
            ok(prefix).unwrap_err().to_string(),
            format!("proxy.toml: route[0].prefix: {why}")
        );
    }
    assert_eq!(
        err(&format!(
            "{BACKEND}{}{}",
            route_with("/g", "https://api.github.com"),
            route_with("/g", "https://uploads.github.com")
        )),
        "proxy.toml: route[1].prefix: duplicate prefix \"/g\""
    );
    let up = |u: &str| parse(&format!("{BACKEND}{}", route_with("/g", u)));
    assert_eq!(
        up("http://127.0.0.1:9000").unwrap().routes[0]
            .upstream
            .port_u16(),
        Some(9000)
    );
    assert_eq!(
        up("https://h.example/v3/").unwrap().routes[0]
            .upstream
            .path(),
        "/v3"
    );
    assert_eq!(
        up("ftp://h.example").unwrap_err().to_string(),
        "proxy.toml: route[0].upstream: \"ftp://h.example/\": scheme must be http or https"
    );
    assert_eq!(
        up("/just/a/path").unwrap_err().to_string(),
        "proxy.toml: route[0].upstream: \"/just/a/path\": scheme must be http or https"
    );
    assert_eq!(
        up("https://h.example/?q=1").unwrap_err().to_string(),
        "proxy.toml: route[0].upstream: \"https://h.example/?q=1\": a query is not allowed"
    );
    assert_eq!(
        up("https://u:p@h.example").unwrap_err().to_string(),
        "proxy.toml: route[0].upstream: credentials in the URL are not allowed"
    );
    assert_eq!(
        up("not a url").unwrap_err().to_string(),
        "proxy.toml: route[0].upstream: invalid URL \"not a url\""
    );
    assert_eq!(
        err(&format!(
            "{BACKEND}{}default_account = \"\"",
            route_with("/g", "https://x.example")
        )),
        "proxy.toml: route[0].default_account: must not be empty"
    );
}

#[test]
fn route_rate_limit_is_enforce_or_pass() {
    let with = |v: &str| format!("{BACKEND}{}{v}", route_with("/g", "https://api.github.com"));
    assert_eq!(
        parse(&with("")).unwrap().routes[0].rate_limit,
        RateLimitMode::Enforce
    );
    assert_eq!(
        parse(&with("rate_limit = \"enforce\"")).unwrap().routes[0].rate_limit,
        RateLimitMode::Enforce
    );
    let pass = parse(&with("rate_limit = \"pass\"")).unwrap();
    assert_eq!(pass.routes[0].rate_limit, RateLimitMode::Pass);
    assert!(
        pass.summary().contains("rate_limit pass"),
        "{}",
        pass.summary()
    );
    assert_eq!(
        err(&with("rate_limit = \"off\"")),
        "proxy.toml: route[0].rate_limit: unknown value \"off\" (expected \"enforce\" or \"pass\")"
    );
    assert_eq!(
        err(&with("rate_limit = false")),
        "proxy.toml: route[0].rate_limit: expected a string, found boolean"
    );
    assert!(Route::defaults()
        .iter()
        .all(|r| r.rate_limit == RateLimitMode::Enforce));
}
