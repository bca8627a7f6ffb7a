//! Unit tests of the whole file (the full example, defaults, secrets kept out of `Debug` and
//! the summary, `[server]`, `[upstream]`, listeners, `Config::load`) and the helpers the other
//! `tests_*` modules share.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::Provider;

pub(super) const SRC: &str = "proxy.toml";
pub(super) const BACKEND: &str = "[refresh]\nbackend_url = \"https://backend.flashback.tech\"\n";

pub(super) fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_toml_str_with_env(text, SRC, &move |name| map.get(name).cloned())
}

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_env(text, &[])
}

pub(super) fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

/// A unique temporary file holding `content`, removed on drop.
pub(super) struct TempFile(PathBuf);
impl TempFile {
    pub(super) fn new(name: &str, content: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("orp-config-test-{}-{name}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        TempFile(path)
    }
    pub(super) fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(super) fn full_example(client_secret_file: &str) -> String {
    format!(
        r#"
listen       = "127.0.0.1:8080"     # proxy listener (default)
admin_listen = "127.0.0.1:9090"     # admin listener (default); "" disables it
admin_token  = "env:ORP_ADMIN_TOKEN"
client_token = "env:ORP_CLIENT_TOKEN"
max_replay_body = "1MiB"

[refresh]
mode          = "backend"
backend_url   = "https://backend.flashback.tech"
backend_token = "env:FLASHBACK_TOKEN"
timeout       = "10s"
max_attempts  = 3
skew          = "60s"
refresh_ahead = "5m"
default_lifetime = "55m"
min_interval  = "45s"
late_answer_window = "3m"

[refresh.google]
client_id     = "…"
client_secret = "env:GOOGLE_CLIENT_SECRET"
token_url     = "https://oauth2.googleapis.com/token"   # default

[refresh.github]
client_id     = "gh-client"
client_secret = "file:{client_secret_file}"

[store]
kind = "memory"
path = "tokens.db"
url  = "redis://127.0.0.1:6379"

[[route]]
prefix   = "/google"
upstream = "https://www.googleapis.com"
provider = "google"
default_account = "alice"

[[route]]
prefix   = "/github"
upstream = "https://api.github.com"
provider = "github"

[[account]]
provider      = "google"
id            = "alice"
refresh_token = "env:ALICE_GOOGLE_REFRESH_TOKEN"
access_token  = "ya29.literal-access-token"
expires_at    = 1767225600

[refresh_api]
enabled = true
token   = "env:ORP_REFRESH_API_TOKEN"
"#
    )
}

pub(super) const FULL_ENV: &[(&str, &str)] = &[
    ("ORP_ADMIN_TOKEN", "admin-secret-value"),
    ("ORP_CLIENT_TOKEN", "client-secret-value"),
    ("FLASHBACK_TOKEN", "backend-secret-value"),
    ("GOOGLE_CLIENT_SECRET", "google-client-secret-value"),
    ("ALICE_GOOGLE_REFRESH_TOKEN", "1//alice-refresh-secret"),
    ("ORP_REFRESH_API_TOKEN", "refresh-api-secret-value"),
];

#[test]
fn full_spec_example_parses() {
    let file = TempFile::new("gh-secret", "github-client-secret-value\n\n");
    let c = parse_env(&full_example(file.path()), FULL_ENV).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
    assert_eq!(c.admin_token.unwrap().expose(), "admin-secret-value");
    assert_eq!(c.client_token.unwrap().expose(), "client-secret-value");
    assert_eq!(c.max_replay_body, 1024 * 1024);
    let r = &c.refresh;
    assert_eq!(r.mode, RefreshMode::Backend);
    assert_eq!(
        r.backend_url.as_deref(),
        Some("https://backend.flashback.tech")
    );
    assert_eq!(
        r.backend_token.as_ref().unwrap().expose(),
        "backend-secret-value"
    );
    assert_eq!(r.timeout, Duration::from_secs(10));
    assert_eq!(r.max_attempts, 3);
    assert_eq!(r.skew, Duration::from_secs(60));
    assert_eq!(r.refresh_ahead, Duration::from_secs(300));
    assert_eq!(r.default_lifetime, Duration::from_secs(55 * 60));
    assert_eq!(r.min_interval, Duration::from_secs(45));
    assert_eq!(r.late_answer_window, Duration::from_secs(180));
    let g = r.google.as_ref().unwrap();
    assert_eq!(g.client_id, "…");
    assert_eq!(g.client_secret.expose(), "google-client-secret-value");
    assert_eq!(g.token_url, GOOGLE_TOKEN_URL);
    let gh = r.github.as_ref().unwrap();
    assert_eq!(gh.client_secret.expose(), "github-client-secret-value");
    assert_eq!(gh.token_url, GITHUB_TOKEN_URL);
    assert_eq!(c.store, StoreSettings::Memory);
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].prefix, "/google");
    assert_eq!(c.routes[0].upstream.host(), Some("www.googleapis.com"));
    assert_eq!(c.routes[0].provider, Provider::Google);
    assert_eq!(c.routes[0].default_account.as_deref(), Some("alice"));
    assert_eq!(c.routes[1].provider, Provider::GitHub);
    assert_eq!(c.routes[1].default_account, None);
    assert_eq!(c.accounts.len(), 1);
    let a = &c.accounts[0];
    assert_eq!((a.provider, a.id.as_str()), (Provider::Google, "alice"));
    assert_eq!(a.refresh_token.expose(), "1//alice-refresh-secret");
    assert_eq!(
        a.access_token.as_ref().unwrap().expose(),
        "ya29.literal-access-token"
    );
    assert_eq!(a.expires_at, Some(1_767_225_600));
    assert!(a.token_seed().expires_at.is_some());
    assert_eq!(
        c.refresh_api.unwrap().token.expose(),
        "refresh-api-secret-value"
    );
}

#[test]
fn debug_and_summary_contain_no_secret() {
    let file = TempFile::new("gh-secret-debug", "github-client-secret-value\n");
    let c = parse_env(&full_example(file.path()), FULL_ENV).unwrap();
    let debug = format!("{c:?}");
    let pretty = format!("{c:#?}");
    let summary = c.summary();
    let mut secrets: Vec<&str> = FULL_ENV.iter().map(|(_, v)| *v).collect();
    secrets.push("github-client-secret-value");
    secrets.push("ya29.literal-access-token");
    for out in [&debug, &pretty, &summary] {
        for s in &secrets {
            assert!(!out.contains(s), "{s} leaked into {out}");
        }
    }
    assert!(debug.contains("[redacted]"));
    assert!(summary.contains("google/alice"), "{summary}");
    assert!(summary.contains("/github-uploads") || summary.contains("/github "));
    assert!(summary.contains("refresh_api:     enabled"), "{summary}");
}

#[test]
fn defaults() {
    let c = parse(BACKEND).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
    assert!(c.admin_token.is_none() && c.client_token.is_none());
    assert_eq!(c.max_replay_body, 1 << 20);
    let r = &c.refresh;
    assert_eq!(r.mode, RefreshMode::Backend);
    assert!(r.backend_token.is_none());
    assert_eq!(r.timeout, Duration::from_secs(10));
    assert_eq!(r.max_attempts, 3);
    assert_eq!(r.skew, Duration::from_secs(60));
    assert_eq!(r.refresh_ahead, Duration::from_secs(300));
    assert_eq!(r.default_lifetime, Duration::from_secs(3300));
    assert_eq!(r.min_interval, Duration::from_secs(30));
    assert_eq!(r.late_answer_window, Duration::from_secs(120));
    assert!(c
        .summary()
        .contains("min_interval 30s, late_answer_window 2m"));
    assert!(r.google.is_none() && r.github.is_none());
    assert_eq!(c.store, StoreSettings::Memory);
    assert_eq!(c.routes, Route::defaults());
    assert!(c.accounts.is_empty());
    assert!(c.refresh_api.is_none());
    let summary = c.summary();
    assert!(summary.contains("admin_listen:    127.0.0.1:9090 (admin_token not set)"));
    assert!(summary.contains("max_replay_body: 1 MiB"), "{summary}");
    assert!(
        summary.contains(
            "timeout 10s, max_attempts 3, skew 1m, refresh_ahead 5m, default_lifetime 55m"
        ),
        "{summary}"
    );
}

#[test]
fn server_table() {
    let c = parse(BACKEND).unwrap();
    assert_eq!(c.server, ServerSettings::default());
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(30));
    assert_eq!(c.server.idle_timeout, Duration::from_secs(90));
    assert_eq!(c.server.body_read_timeout, Duration::from_secs(30));
    assert_eq!(c.server.max_connections, 10_000);
    assert!(
        c.summary().contains(
            "server:          header_read_timeout 30s, idle_timeout 1m30s, body_read_timeout 30s, max_connections 10000\n"
        ),
        "{}",
        c.summary()
    );

    let c = parse(&format!(
        "{BACKEND}[server]\nheader_read_timeout = \"2s\"\nidle_timeout = \"500ms\"\n\
         body_read_timeout = \"1m\"\nmax_connections = 50\n"
    ))
    .unwrap();
    assert_eq!(
        c.server,
        ServerSettings {
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_millis(500),
            body_read_timeout: Duration::from_secs(60),
            max_connections: 50,
            workers: super::super::workers::default_count(),
        }
    );
    assert!(c.summary().contains(
        "header_read_timeout 2s, idle_timeout 500ms, body_read_timeout 1m, max_connections 50"
    ));
    // One key alone leaves the others at their defaults.
    let c = parse(&format!("{BACKEND}[server]\nmax_connections = 1\n")).unwrap();
    assert_eq!(c.server.max_connections, 1);
    let c = parse(&format!("{BACKEND}[server]\nworkers = 3\n")).unwrap();
    assert_eq!(c.server.workers, 3);
    assert!(
        c.summary().contains("workers:         3\n"),
        "{}",
        c.summary()
    );
    for n in [0, -1, 1025] {
        assert_eq!(
            err(&format!("{BACKEND}[server]\nworkers = {n}\n")),
            format!("proxy.toml: server.workers: must be between 1 and 1024, found {n}")
        );
    }
    assert_eq!(c.server.idle_timeout, Duration::from_secs(90));

    let bad = |body: &str| err(&format!("{BACKEND}[server]\n{body}\n"));
    assert_eq!(
        bad("idle_timout = \"1s\""),
        "proxy.toml: unknown key \"idle_timout\" in table server"
    );
    assert_eq!(
        bad("header_read_timeout = \"soon\""),
        "proxy.toml: server.header_read_timeout: invalid duration \"soon\" (expected e.g. \"30s\", \"5m\")"
    );
    assert_eq!(
        bad("idle_timeout = 90"),
        "proxy.toml: server.idle_timeout: expected a string, found integer"
    );
    for key in ["header_read_timeout", "idle_timeout", "body_read_timeout"] {
        assert_eq!(
            bad(&format!("{key} = \"0s\"")),
            format!("proxy.toml: server.{key}: must be greater than zero")
        );
    }
    for n in ["0", "-1", "4294967296"] {
        assert_eq!(
            bad(&format!("max_connections = {n}")),
            format!(
                "proxy.toml: server.max_connections: must be between 1 and 4294967295, found {n}"
            )
        );
    }
    assert_eq!(
        bad("max_connections = \"100\""),
        "proxy.toml: server.max_connections: expected an integer, found string"
    );
    assert_eq!(
        err(&format!("server = 1\n{BACKEND}")),
        "proxy.toml: server: expected a table ([server]), found integer"
    );
}

#[test]
fn upstream_table() {
    let c = parse(BACKEND).unwrap();
    assert_eq!(c.upstream, UpstreamSettings::default());
    assert!(
        c.summary().contains(
            "upstream:        connect_timeout 10s, response_timeout 1m, body_idle_timeout 1m"
        ),
        "{}",
        c.summary()
    );
    let c = parse(&format!(
        "{BACKEND}[upstream]\nconnect_timeout = \"1500ms\"\nresponse_timeout = \"2m30s\"\nbody_idle_timeout = \"5s\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.upstream,
        UpstreamSettings {
            connect_timeout: Duration::from_millis(1500),
            response_timeout: Duration::from_secs(150),
            body_idle_timeout: Duration::from_secs(5),
        }
    );
    assert!(c.summary().contains(
        "upstream:        connect_timeout 1s500ms, response_timeout 2m30s, body_idle_timeout 5s"
    ));
    // Only the keys set change.
    let c = parse(&format!("{BACKEND}[upstream]\nresponse_timeout = \"1s\"\n")).unwrap();
    assert_eq!(c.upstream.response_timeout, Duration::from_secs(1));
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.upstream.body_idle_timeout, Duration::from_secs(60));

    assert_eq!(
        err(&format!("{BACKEND}[upstream]\nresponse_timout = \"1s\"\n")),
        "proxy.toml: unknown key \"response_timout\" in table upstream"
    );
    assert_eq!(
        err(&format!("{BACKEND}[upstream]\nconnect_timeout = \"ten seconds\"\n")),
        "proxy.toml: upstream.connect_timeout: invalid duration \"ten seconds\" (expected e.g. \"30s\", \"5m\")"
    );
    assert_eq!(
        err(&format!("{BACKEND}[upstream]\nbody_idle_timeout = 60\n")),
        "proxy.toml: upstream.body_idle_timeout: expected a string, found integer"
    );
    for key in ["connect_timeout", "response_timeout", "body_idle_timeout"] {
        assert_eq!(
            err(&format!("{BACKEND}[upstream]\n{key} = \"0s\"\n")),
            format!("proxy.toml: upstream.{key}: must be greater than zero")
        );
    }
    assert_eq!(
        err(&format!("upstream = 5\n{BACKEND}")),
        "proxy.toml: upstream: expected a table ([upstream]), found integer"
    );
}

#[test]
fn empty_file_needs_a_backend_url() {
    assert_eq!(
        err(""),
        "proxy.toml: refresh.backend_url: required when refresh.mode = \"backend\""
    );
}

#[test]
fn admin_listen_empty_disables() {
    let c = parse(&format!("admin_listen = \"\"\n{BACKEND}")).unwrap();
    assert_eq!(c.admin_listen, None);
    assert!(c.summary().contains("admin_listen:    disabled"));
    assert_eq!(
        err(&format!("listen = \"\"\n{BACKEND}")),
        "proxy.toml: listen: invalid socket address \"\" (expected e.g. \"127.0.0.1:8080\")"
    );
    assert_eq!(
        err(&format!("admin_listen = \"127.0.0.1:8080\"\n{BACKEND}")),
        "proxy.toml: admin_listen: 127.0.0.1:8080 is also the proxy's listen address"
    );
}

#[test]
fn non_loopback_listeners_need_tokens() {
    assert_eq!(
        err(&format!("listen = \"0.0.0.0:8080\"\n{BACKEND}")),
        "proxy.toml: listen: 0.0.0.0:8080 is not a loopback address; set client_token to expose the proxy"
    );
    assert_eq!(
        err(&format!("admin_listen = \"[::]:9090\"\n{BACKEND}")),
        "proxy.toml: admin_listen: [::]:9090 is not a loopback address; set admin_token to expose the admin listener"
    );
    let c = parse(&format!(
        "listen = \"0.0.0.0:8080\"\nclient_token = \"c\"\nadmin_listen = \"[::]:9090\"\nadmin_token = \"a\"\n{BACKEND}"
    ))
    .unwrap();
    assert!(!c.listen.ip().is_loopback());
    // IPv6 loopback needs no token; a disabled admin listener needs none either.
    parse(&format!(
        "listen = \"[::1]:8080\"\nadmin_listen = \"\"\n{BACKEND}"
    ))
    .unwrap();
    // validate() re-checks after a command-line override.
    let mut c = parse(BACKEND).unwrap();
    c.admin_listen = Some("10.0.0.1:9090".parse().unwrap());
    assert!(c
        .validate("cli")
        .unwrap_err()
        .to_string()
        .starts_with("cli: admin_listen: 10.0.0.1:9090"));
}

#[test]
fn load_reads_a_file_and_names_it() {
    let f = TempFile::new("load.toml", BACKEND);
    let c = Config::load(Path::new(f.path())).unwrap();
    assert_eq!(
        c.refresh.backend_url.as_deref(),
        Some("https://backend.flashback.tech")
    );
    let bad = TempFile::new("bad.toml", "listne = 1\n");
    assert_eq!(
        Config::load(Path::new(bad.path())).unwrap_err().to_string(),
        format!("{}: unknown key \"listne\" in table root", bad.path())
    );
    let e = Config::load(Path::new("/nonexistent/proxy.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/nonexistent/proxy.toml: cannot read config file: "),
        "{e}"
    );
    assert!(!e.contains('\n'));
}
