//! Unit tests of reading values: unknown keys, syntax and type errors, durations, sizes,
//! `max_attempts`, `env:` / `file:` secrets, URL redaction.

use std::time::Duration;

use super::summary::{format_duration, format_size};
use super::tests::{err, parse, parse_env, TempFile, BACKEND, SRC};
use super::values::{parse_duration, redact_userinfo};
use super::*;

#[test]
fn unknown_keys_in_every_table() {
    let route = "prefix = \"/a\"\nupstream = \"https://api.github.com\"\nprovider = \"github\"\n";
    let account = "provider = \"github\"\nid = \"bob\"\nrefresh_token = \"r\"\n";
    let creds = "client_id = \"c\"\nclient_secret = \"s\"\n";
    let cases = [
        (
            "listne = \"127.0.0.1:8080\"".to_string(),
            "unknown key \"listne\" in table root",
        ),
        (
            format!("{BACKEND}tiemout = \"5s\""),
            "unknown key \"tiemout\" in table refresh",
        ),
        (
            format!("{BACKEND}[refresh.google]\n{creds}secret = \"s\""),
            "unknown key \"secret\" in table refresh.google",
        ),
        (
            format!("{BACKEND}[refresh.github]\n{creds}tokenurl = \"x\""),
            "unknown key \"tokenurl\" in table refresh.github",
        ),
        (
            format!("{BACKEND}[store]\nkind = \"memory\"\npth = \"x\""),
            "unknown key \"pth\" in table store",
        ),
        (
            format!("{BACKEND}[[route]]\n{route}[[route]]\n{route}x = 1"),
            "unknown key \"x\" in table route[1]",
        ),
        (
            format!("{BACKEND}[[account]]\n{account}expires = 1"),
            "unknown key \"expires\" in table account[0]",
        ),
        (
            format!("{BACKEND}[refresh_api]\nenabled = false\ntokn = \"t\""),
            "unknown key \"tokn\" in table refresh_api",
        ),
        (
            format!("{BACKEND}[routes]\nprefix = \"/a\""),
            "unknown key \"routes\" in table root",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(err(&text), format!("proxy.toml: {want}"), "{text}");
    }
}

#[test]
fn syntax_error_is_one_line_with_position() {
    let e = err("listen = \"127.0.0.1:8080\"\nadmin_listen = \"unterminated\n");
    assert!(
        e.starts_with("proxy.toml: TOML syntax error at line 2, column "),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    assert_eq!(
        err("listen = \"127.0.0.1:8080\"\nadmin_listen = \"unterminated\n"),
        "proxy.toml: TOML syntax error at line 2, column 29: invalid basic string, expected `\"`"
    );
    assert_eq!(
        err("a = 1\na = 2\n"),
        "proxy.toml: TOML syntax error at line 2, column 1: duplicate key \"a\""
    );
    assert_eq!(
        err("[refresh]\ntimeout = \"1s\"\n\"timeout\" = \"2s\"\n"),
        "proxy.toml: TOML syntax error at line 3, column 1: duplicate key \"timeout\""
    );
    assert_eq!(
        err("[refresh\n"),
        "proxy.toml: TOML syntax error at line 1, column 9: unclosed table, expected `]`"
    );
    // A secret on a broken line never reaches the message.
    let e = err("admin_token = \"hunter2-secret\" x\n");
    assert!(!e.contains("hunter2-secret"), "{e}");
}

#[test]
fn type_errors_name_the_key() {
    assert_eq!(
        err("listen = 8080"),
        "proxy.toml: listen: expected a string, found integer"
    );
    assert_eq!(
        err(&format!("{BACKEND}max_attempts = \"3\"")),
        "proxy.toml: refresh.max_attempts: expected an integer, found string"
    );
    assert_eq!(
        err("refresh = 1"),
        "proxy.toml: refresh: expected a table ([refresh]), found integer"
    );
    assert_eq!(
        err("route = 1"),
        "proxy.toml: route: expected an array of tables ([[route]]), found integer"
    );
    assert_eq!(
        err(&format!(
            "{BACKEND}[[route]]\nprefix = \"/a\"\nprovider = \"github\""
        )),
        "proxy.toml: missing key \"upstream\" in table route[0]"
    );
    assert_eq!(
        err(&format!("{BACKEND}[[route]]\nprefix = \"/a\"\nupstream = \"https://x\"\nprovider = \"gitlab\"")),
        "proxy.toml: route[0].provider: unknown provider \"gitlab\" (expected \"google\" or \"github\")"
    );
    assert_eq!(
        err(&format!("{BACKEND}mode = \"magic\"")),
        "proxy.toml: refresh.mode: unknown mode \"magic\" (expected \"backend\" or \"direct\")"
    );
    assert_eq!(
        err("admin_token = 5"),
        "proxy.toml: admin_token: expected a string, found integer"
    );
}

#[test]
fn durations() {
    assert_eq!(
        err("[refresh]\ntimeout = \"5 minutes\""),
        "proxy.toml: refresh.timeout: invalid duration \"5 minutes\" (expected e.g. \"30s\", \"5m\")"
    );
    for bad in [
        "", "5", "s", "1.5s", "-1s", "5d", "5M", " 5s", "5s ", "1m30",
    ] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
        let e = err(&format!("{BACKEND}skew = {bad:?}"));
        assert_eq!(
            e,
            format!("proxy.toml: refresh.skew: invalid duration {bad:?} (expected e.g. \"30s\", \"5m\")")
        );
    }
    assert_eq!(
        err(&format!("{BACKEND}skew = 30")),
        "proxy.toml: refresh.skew: expected a string, found integer"
    );
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(
        parse_duration("1h2m3s4ms"),
        Some(Duration::from_millis(3_723_004))
    );
    assert_eq!(parse_duration("99999999999999999999h"), None);
    let c = parse(&format!(
        "{BACKEND}timeout = \"1m30s\"\nrefresh_ahead = \"0s\""
    ))
    .unwrap();
    assert_eq!(c.refresh.timeout, Duration::from_secs(90));
    assert_eq!(c.refresh.refresh_ahead, Duration::ZERO);
    assert_eq!(
        err(&format!("{BACKEND}timeout = \"0s\"")),
        "proxy.toml: refresh.timeout: must be greater than zero"
    );
    assert_eq!(format_duration(Duration::from_millis(90_500)), "1m30s500ms");
}

#[test]
fn max_attempts_at_least_one() {
    assert_eq!(
        err(&format!("{BACKEND}max_attempts = 0")),
        "proxy.toml: refresh.max_attempts: must be at least 1, found 0"
    );
    assert_eq!(
        err(&format!("{BACKEND}max_attempts = -2")),
        "proxy.toml: refresh.max_attempts: must be at least 1, found -2"
    );
    assert_eq!(
        parse(&format!("{BACKEND}max_attempts = 1"))
            .unwrap()
            .refresh
            .max_attempts,
        1
    );
}

#[test]
fn sizes() {
    let size =
        |v: &str| parse(&format!("max_replay_body = {v}\n{BACKEND}")).map(|c| c.max_replay_body);
    assert_eq!(size("\"512KiB\"").unwrap(), 512 * 1024);
    assert_eq!(size("\"1048576\"").unwrap(), 1_048_576);
    assert_eq!(size("1048576").unwrap(), 1_048_576);
    assert_eq!(size("\"2MiB\"").unwrap(), 2 << 20);
    assert_eq!(size("\"1GiB\"").unwrap(), 1 << 30);
    assert_eq!(size("0").unwrap(), 0);
    for bad in [
        "1MB", "1.5MiB", "1 MiB", "MiB", "1mib", "1KB", "-1", "1e6", "",
    ] {
        assert_eq!(
            size(&format!("{bad:?}")).unwrap_err().to_string(),
            format!("proxy.toml: max_replay_body: invalid size {bad:?} (expected bytes as an integer, or e.g. \"512KiB\", \"1MiB\")")
        );
    }
    assert_eq!(
        size("-1").unwrap_err().to_string(),
        "proxy.toml: max_replay_body: invalid size -1 (expected a non-negative number of bytes)"
    );
    assert_eq!(
        size("1.5").unwrap_err().to_string(),
        "proxy.toml: max_replay_body: expected an integer or a string, found float"
    );
    assert_eq!(format_size(512 * 1024), "512 KiB");
    assert_eq!(format_size(1000), "1000 bytes");
}

#[test]
fn missing_env_var_names_the_variable() {
    let e = parse_env(
        &format!("admin_token = \"env:ORP_TEST_NOT_SET_4C1\"\n{BACKEND}"),
        &[],
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "proxy.toml: admin_token: environment variable \"ORP_TEST_NOT_SET_4C1\" is not set"
    );
    let e = parse_env(
        &format!("admin_token = \"env:EMPTY\"\n{BACKEND}"),
        &[("EMPTY", "")],
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "proxy.toml: admin_token: environment variable \"EMPTY\" is empty"
    );
    assert_eq!(
        err(&format!("admin_token = \"env:\"\n{BACKEND}")),
        "proxy.toml: admin_token: \"env:\" needs a variable name"
    );
    assert_eq!(
        err(&format!("admin_token = \"\"\n{BACKEND}")),
        "proxy.toml: admin_token: must not be empty"
    );
    // The real process environment is used by from_toml_str.
    let e = Config::from_toml_str(
        &format!("client_token = \"env:ORP_TEST_SURELY_UNSET_9F2\"\n{BACKEND}"),
        SRC,
    )
    .unwrap_err();
    assert!(e
        .to_string()
        .contains("\"ORP_TEST_SURELY_UNSET_9F2\" is not set"));
}

#[test]
fn file_secret_is_trimmed_and_errors_name_the_path() {
    let f = TempFile::new("client-token", "file-secret-value\r\n\n");
    let c = parse(&format!("client_token = \"file:{}\"\n{BACKEND}", f.path())).unwrap();
    assert_eq!(c.client_token.unwrap().expose(), "file-secret-value");

    let inner = TempFile::new("inner-space", "  spaced value  \n");
    let c = parse(&format!(
        "client_token = \"file:{}\"\n{BACKEND}",
        inner.path()
    ))
    .unwrap();
    assert_eq!(c.client_token.unwrap().expose(), "  spaced value  ");

    let missing = "/nonexistent/orp/secret";
    let e = err(&format!(
        "{BACKEND}[[account]]\nprovider = \"google\"\nid = \"a\"\nrefresh_token = \"file:{missing}\""
    ));
    assert!(
        e.starts_with(
            "proxy.toml: account[0].refresh_token: cannot read secret file \"/nonexistent/orp/secret\": "
        ),
        "{e}"
    );
    let empty = TempFile::new("empty", "\n");
    assert_eq!(
        err(&format!(
            "client_token = \"file:{}\"\n{BACKEND}",
            empty.path()
        )),
        format!(
            "proxy.toml: client_token: secret file {:?} is empty",
            empty.path()
        )
    );
}

#[test]
fn redact_userinfo_works() {
    assert_eq!(
        redact_userinfo("redis://:pw@h:6379/0"),
        "redis://***@h:6379/0"
    );
    assert_eq!(redact_userinfo("https://h/a@b"), "https://h/a@b");
    assert_eq!(redact_userinfo("plain"), "plain");
}
