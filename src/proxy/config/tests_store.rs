//! Unit tests of `[store]`: the kinds, Redis nodes and TLS, `lock_ttl`, encryption keys.

use std::time::Duration;

use toml::Table;

use super::read::Parser;
use super::tests::{err, BACKEND};
use super::*;
use crate::store::redis::RedisNodes;

#[test]
fn redis_password_hidden_in_debug() {
    let s = StoreSettings::Redis {
        nodes: RedisNodes::Single("redis://:pa55word@redis:6379/0".into()),
        ca_file: None,
        lock_ttl: DEFAULT_LOCK_TTL,
    };
    let d = format!("{s:?}");
    assert!(!d.contains("pa55word"), "{d}");
    assert!(d.contains("redis:6379"), "{d}");
    let s = StoreSettings::Redis {
        nodes: RedisNodes::Cluster(vec![
            "rediss://u:pa55word@r1:7000".into(),
            "rediss://u:pa55word@r2:7000".into(),
        ]),
        ca_file: Some("ca.pem".into()),
        lock_ttl: DEFAULT_LOCK_TTL,
    };
    let d = format!("{s:?}");
    assert!(!d.contains("pa55word"), "{d}");
    assert!(d.contains("r2:7000") && d.contains("ca.pem"), "{d}");
}

#[test]
fn store_kinds() {
    let c = Config::from_toml_str_with_env(
        &format!("{BACKEND}[store]\nkind = \"file\"\npath = \"tokens.db\""),
        "proxy.toml",
        &|_| None,
    )
    .unwrap();
    assert_eq!(
        c.store,
        StoreSettings::File {
            path: "tokens.db".into()
        }
    );
    let c = Config::from_toml_str_with_env(
        &format!("{BACKEND}[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nlock_ttl = \"45s\""),
        "proxy.toml",
        &|_| None,
    )
    .unwrap();
    assert_eq!(
        c.store,
        StoreSettings::Redis {
            nodes: RedisNodes::Single("redis://127.0.0.1:6379".into()),
            ca_file: None,
            lock_ttl: Duration::from_secs(45)
        }
    );
    assert_eq!(
        err(&format!(
            "{BACKEND}[store]\nkind = \"redis\"\nurl = \"redis://r\"\nlock_ttl = \"5s\""
        )),
        "proxy.toml: store.lock_ttl: 5s must exceed refresh.timeout (10s)"
    );
    let c = Config::from_toml_str_with_env(
        &format!(
            "{BACKEND}[store]\nkind = \"redis\"\ncluster_urls = [\"rediss://r1:7000\", \"rediss://r2:7000\"]\nca_file = \"ca.pem\""
        ),
        "proxy.toml",
        &|_| None,
    )
    .unwrap();
    assert_eq!(
        c.store,
        StoreSettings::Redis {
            nodes: RedisNodes::Cluster(vec!["rediss://r1:7000".into(), "rediss://r2:7000".into()]),
            ca_file: Some("ca.pem".into()),
            lock_ttl: DEFAULT_LOCK_TTL,
        }
    );
    for (store, message) in [
        (
            "url = \"redis://r\"\ncluster_urls = [\"redis://r:7000\"]",
            "store.cluster_urls: give either store.url (one Redis) or store.cluster_urls (a Redis Cluster), not both",
        ),
        (
            "cluster_urls = []",
            "store.cluster_urls: must list at least one node URL, none empty",
        ),
        (
            "cluster_urls = [\"redis://r:7000\", 7001]",
            "store.cluster_urls: expected an array of strings, found an array holding integer",
        ),
        (
            "cluster_urls = [\"redis://r:7000\", \"rediss://r:7001\"]",
            "store.cluster_urls: mixes rediss:// (TLS) and redis:// URLs",
        ),
        (
            "url = \"redis://r\"\nca_file = \"ca.pem\"",
            "store.ca_file: applies to rediss:// (TLS) URLs only",
        ),
        (
            "",
            "store.url: required when store.kind = \"redis\" (or store.cluster_urls for a Redis Cluster)",
        ),
    ] {
        assert_eq!(
            err(&format!("{BACKEND}[store]\nkind = \"redis\"\n{store}")),
            format!("proxy.toml: {message}"),
            "{store}"
        );
    }
    assert_eq!(
        err(&format!("{BACKEND}[store]\nkind = \"file\"")),
        "proxy.toml: store.path: required when store.kind = \"file\""
    );
    assert_eq!(
        err(&format!("{BACKEND}[store]\nkind = \"sqlite\"")),
        "proxy.toml: store.kind: unknown store kind \"sqlite\" (expected \"memory\", \"file\" or \"redis\")"
    );
    // Parsing (without validation) keeps all three kinds.
    let table: Table = "[store]\nkind = \"file\"\npath = \"t.db\"".parse().unwrap();
    let c = Parser { env: &|_| None }.config(&table).unwrap();
    assert_eq!(
        c.store,
        StoreSettings::File {
            path: "t.db".into()
        }
    );
    let table: Table = "[store]\nkind = \"redis\"\nurl = \"redis://r\""
        .parse()
        .unwrap();
    let c = Parser { env: &|_| None }.config(&table).unwrap();
    assert_eq!(
        c.store,
        StoreSettings::Redis {
            nodes: RedisNodes::Single("redis://r".into()),
            ca_file: None,
            lock_ttl: DEFAULT_LOCK_TTL,
        }
    );
}
