//! Unit tests of `[refresh]` modes and credentials, `[[webhook]]` and `[refresh_api]`.

use std::time::Duration;

use super::tests::{err, parse, parse_env, BACKEND, SRC};
use super::*;
use crate::Provider;

#[test]
fn refresh_modes() {
    assert_eq!(
        err("[refresh]\nmode = \"direct\""),
        "proxy.toml: refresh.mode: \"direct\" needs [refresh.google] or [refresh.github] credentials"
    );
    let c = parse(
        "[refresh]\nmode = \"direct\"\n[refresh.github]\nclient_id = \"c\"\nclient_secret = \"s\"",
    )
    .unwrap();
    assert_eq!(c.refresh.mode, RefreshMode::Direct);
    assert!(c.refresh.backend_url.is_none());
    assert_eq!(
        c.refresh.credentials(Provider::GitHub).unwrap().token_url,
        GITHUB_TOKEN_URL
    );
    assert_eq!(
        err("[refresh]\nbackend_url = \"ftp://backend\""),
        "proxy.toml: refresh.backend_url: \"ftp://backend/\": scheme must be http or https"
    );
    assert_eq!(
        err("[refresh]\nbackend_url = \"not a url\""),
        "proxy.toml: refresh.backend_url: invalid URL \"not a url\""
    );
    let e = err("[refresh]\nbackend_url = \"https://user:pw-secret@backend\"");
    assert_eq!(
        e,
        "proxy.toml: refresh.backend_url: credentials in the URL are not allowed"
    );
    assert_eq!(
        err(&format!("{BACKEND}[refresh.google]\nclient_id = \"c\"")),
        "proxy.toml: missing key \"client_secret\" in table refresh.google"
    );
    assert_eq!(
        err(&format!("{BACKEND}[refresh.google]\nclient_id = \"c\"\nclient_secret = \"s\"\ntoken_url = \"nope\"")),
        "proxy.toml: refresh.google.token_url: \"nope\": scheme must be http or https"
    );
}

const CREDS: &str = "[refresh.google]\nclient_id = \"c\"\nclient_secret = \"s\"\n";

#[test]
fn webhooks() {
    use crate::HealthChange;
    let hook = |body: &str| format!("{BACKEND}[[webhook]]\n{body}");
    // Defaults: every event, 5 min max backoff; the secret from the environment.
    let c = parse_env(
        &hook("url = \"https://ops.example/hooks/orp?x=1\"\nsecret = \"env:HOOK_SECRET\""),
        &[("HOOK_SECRET", "hook-secret-value")],
    )
    .unwrap();
    let h = &c.webhooks[0];
    assert_eq!(h.secret.expose(), "hook-secret-value");
    assert_eq!(
        h.events,
        vec![
            HealthChange::NeedsReauth,
            HealthChange::Failing,
            HealthChange::Recovered
        ]
    );
    assert_eq!(h.max_backoff, DEFAULT_WEBHOOK_MAX_BACKOFF);
    let summary = c.summary();
    assert!(
        summary.contains("webhooks (1):\n  https://ops.example/hooks/orp (needs_reauth, refresh_failing, refresh_recovered; secret set, max_backoff 5m)"),
        "{summary}"
    );
    assert!(!format!("{c:?}{summary}").contains("hook-secret-value"));
    // A subset, repeated names once, a small backoff; http on every loopback spelling.
    for url in [
        "http://127.0.0.1:9/h",
        "http://localhost/h",
        "http://[::1]:8080/h",
    ] {
        let c = parse(&hook(&format!(
            "url = \"{url}\"\nsecret = \"s\"\nevents = [\"refresh_recovered\", \"needs_reauth\", \"needs_reauth\"]\nmax_backoff = \"200ms\""
        )))
        .unwrap();
        assert_eq!(
            c.webhooks[0].events,
            vec![HealthChange::Recovered, HealthChange::NeedsReauth]
        );
        assert_eq!(c.webhooks[0].max_backoff, Duration::from_millis(200));
    }
    // Errors.
    for (body, expected) in [
        ("url = \"http://ops.example/h\"\nsecret = \"s\"", "webhook[0].url: \"http://ops.example/h\": http is only allowed on a loopback host; use https"),
        ("url = \"http://10.0.0.1/h\"\nsecret = \"s\"", "webhook[0].url: \"http://10.0.0.1/h\": http is only allowed on a loopback host; use https"),
        ("url = \"ftp://ops.example/h\"\nsecret = \"s\"", "webhook[0].url: \"ftp://ops.example/h\": scheme must be https (or http on loopback)"),
        ("url = \"https://u:pw@ops.example/h\"\nsecret = \"s\"", "webhook[0].url: credentials in the URL are not allowed"),
        ("url = \"/h\"\nsecret = \"s\"", "webhook[0].url: \"/h\": no host"),
        ("url = \"https://ops.example/h\"", "missing key \"secret\" in table webhook[0]"),
        ("secret = \"s\"", "missing key \"url\" in table webhook[0]"),
        ("url = \"https://o.example\"\nsecret = \"s\"\nevents = [\"needs_reauth\", \"token_expired\"]", "webhook[0].events: unknown event \"token_expired\" (expected \"needs_reauth\", \"refresh_failing\" or \"refresh_recovered\")"),
        ("url = \"https://o.example\"\nsecret = \"s\"\nevents = []", "webhook[0].events: must name at least one event"),
        ("url = \"https://o.example\"\nsecret = \"s\"\nevents = \"needs_reauth\"", "webhook[0].events: expected an array of strings, found string"),
        ("url = \"https://o.example\"\nsecret = \"s\"\nevents = [1]", "webhook[0].events: expected an array of strings, found an array holding integer"),
        ("url = \"https://o.example\"\nsecret = \"s\"\nmax_backoff = \"0s\"", "webhook[0].max_backoff: must be greater than zero"),
        ("url = \"https://o.example\"\nsecret = \"s\"\nretries = 3", "unknown key \"retries\" in table webhook[0]"),
        ("url = \"https://o.example\"\nsecret = \"env:UNSET_HOOK_SECRET\"", "webhook[0].secret: environment variable \"UNSET_HOOK_SECRET\" is not set"),
    ] {
        assert_eq!(err(&hook(body)), format!("{SRC}: {expected}"), "{body}");
    }
}

#[test]
fn refresh_api_rules() {
    // Disabled: None, and its token is not resolved.
    let c = parse(&format!(
        "{BACKEND}[refresh_api]\nenabled = false\ntoken = \"env:UNSET_X\""
    ))
    .unwrap();
    assert!(c.refresh_api.is_none());
    // Token required.
    assert_eq!(
        err(&format!("{BACKEND}{CREDS}[refresh_api]\nenabled = true")),
        "proxy.toml: refresh_api.token: required when refresh_api.enabled = true"
    );
    // Credentials required.
    assert_eq!(
        err(&format!("{BACKEND}[refresh_api]\nenabled = true\ntoken = \"t\"")),
        "proxy.toml: refresh_api: enabled, but neither [refresh.google] nor [refresh.github] credentials are configured"
    );
    let c = parse(&format!(
        "{BACKEND}{CREDS}[refresh_api]\nenabled = true\ntoken = \"t\""
    ))
    .unwrap();
    assert_eq!(c.refresh_api.unwrap().token.expose(), "t");
    // Conflicting route prefixes.
    for prefix in ["/", "/auth", "/auth/x"] {
        let text = format!(
            "{BACKEND}{CREDS}[[route]]\nprefix = \"{prefix}\"\nupstream = \"https://api.github.com\"\nprovider = \"github\"\n[refresh_api]\nenabled = true\ntoken = \"t\""
        );
        assert_eq!(
            err(&text),
            format!("proxy.toml: route[0].prefix: {prefix:?} conflicts with the refresh API (POST /auth/{{provider}}/refresh) while [refresh_api] is enabled")
        );
        // Fine while disabled.
        parse(&text.replace("enabled = true", "enabled = false")).unwrap();
    }
    // "/authx" is another segment.
    parse(&format!(
        "{BACKEND}{CREDS}[[route]]\nprefix = \"/authx\"\nupstream = \"https://api.github.com\"\nprovider = \"github\"\n[refresh_api]\nenabled = true\ntoken = \"t\""
    ))
    .unwrap();
    assert_eq!(
        err(&format!("{BACKEND}[refresh_api]\nenabled = \"yes\"")),
        "proxy.toml: refresh_api.enabled: expected true or false, found string"
    );
}
