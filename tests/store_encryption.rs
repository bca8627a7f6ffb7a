//! Black-box tests of encryption at rest (`[store] encryption_key`, `previous_keys`,
//! `encrypt_existing`) with the real binary against the crate's in-process fakes: the file and
//! Redis stores hold no token bytes, a store the configured keys cannot open (no key, wrong key,
//! tampered, moved to another account) is a one-line start-up error naming the store and keeps
//! its records as they were, `encrypt_existing` seals a clear store, keys rotate through
//! `previous_keys`, and `kill -9` during rotations loses nothing. Calls are counted at the fakes; the child's
//! trace logs hold neither a token nor a key.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use redb::{ReadableDatabase, ReadableTable};
use support::process::{assert_no_secret_in_logs, run_cli, CliOutput, Proxy, TempDir};
use support::redis_server::RedisServer;
use support::rotating::{
    admin, check_restart, kill_points, proxied_get, refresh_storm, refreshes, settled_last_spent,
    RotatingWorld,
};
use support::shared_store::rotated;
use support::*;

const BACKEND_ENV: &str = "ORP_STORE_ENC_TEST_BACKEND_TOKEN";
const KEY_ENV: &str = "ORP_STORE_ENC_TEST_KEY";
const OLD_ENV: &str = "ORP_STORE_ENC_TEST_OLD_KEY";

/// Three distinct keys (base64 of 32 bytes).
const KEY_A: &str = "AQgPFh0kKzI5QEdOVVxjanF4f4aNlJuiqbC3vsXM09o=";
const KEY_B: &str = "ISgvNj1ES1JZYGdudXyDipGYn6attLvCydDX3uXs8/o=";
const KEY_C: &str = "QUhPVl1ka3J5gIeOlZyjqrG4v8bN1Nvi6fD3/gUMExo=";

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("accounts");

// ---------------------------------------------------------------------------------------------
// Plumbing.
// ---------------------------------------------------------------------------------------------

/// The keys a proxy runs with: `current` in [`KEY_ENV`], `previous` in [`OLD_ENV`].
#[derive(Clone, Copy)]
struct Keys {
    current: Option<&'static str>,
    previous: Option<&'static str>,
    encrypt_existing: bool,
}

const NO_KEY: Keys = Keys {
    current: None,
    previous: None,
    encrypt_existing: false,
};

fn key(k: &'static str) -> Keys {
    Keys {
        current: Some(k),
        ..NO_KEY
    }
}

impl Keys {
    fn toml(&self) -> String {
        let mut s = String::new();
        if self.current.is_some() {
            s += &format!("encryption_key = \"env:{KEY_ENV}\"\n");
        }
        if self.previous.is_some() {
            s += &format!("previous_keys = [\"env:{OLD_ENV}\"]\n");
        }
        if self.encrypt_existing {
            s += "encrypt_existing = true\n";
        }
        s
    }

    fn env<'a>(&self, backend_token: &'a str) -> Vec<(&'static str, &'a str)> {
        let mut v = vec![(BACKEND_ENV, backend_token)];
        if let Some(k) = self.current {
            v.push((KEY_ENV, k));
        }
        if let Some(k) = self.previous {
            v.push((OLD_ENV, k));
        }
        v
    }
}

/// Every token the fakes handed out, the backend bearer, and the three keys.
fn secrets(realm: &Realm) -> Vec<String> {
    let mut v = realm.secrets();
    v.extend([KEY_A, KEY_B, KEY_C].map(String::from));
    v
}

/// Asserts that `bytes` (a store's raw content) contain none of the tokens `realm` handed out.
fn assert_no_token_bytes(bytes: &[u8], realm: &Realm, what: &str) {
    let tokens = realm.secrets();
    assert!(tokens.len() >= 2, "{what}: no token was handed out");
    for t in tokens {
        let needle = t.as_bytes();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{what}: token {t:?} found in the raw store"
        );
    }
}

/// Asserts that the store at `path` still holds exactly the records it held as `before`
/// (compared as stored, never printed: they may hold tokens). Not byte-for-byte: redb's
/// read-write open rewrites the file's header even when it then refuses the records.
fn assert_unchanged(path: &Path, before: &[u8], what: &str) {
    let dir = TempDir::new("snapshot");
    let then = dir.path("then.db");
    std::fs::write(&then, before).unwrap();
    let (a, b) = (records(&then), records(path));
    assert!(a == b, "{what}: the store's records changed");
    assert!(!a.is_empty(), "{what}: no records");
}

type World = RotatingWorld;

/// What most tests start from: the fakes, a temp dir, the path of the store file in it
/// (`tokens.db`, not created yet) as a path and as errors show it, and the account's
/// credentials.
async fn case(name: &str) -> (World, TempDir, PathBuf, String, (String, String)) {
    let w = World::new(name).await;
    let dir = TempDir::new(name);
    let store = dir.path("tokens.db");
    let shown = store.display().to_string();
    let credentials = w.credentials();
    (w, dir, store, shown, credentials)
}

/// What the encryption tests add to the shared fakes.
impl RotatingWorld {
    fn token(&self) -> String {
        self.realm.backend_token.clone().unwrap()
    }

    /// A config with `store_table` as its `[store]` table body and one seeded account.
    fn config(&self, store_table: &str, keys: Keys, refresh: &str, access: &str) -> String {
        let table = format!("{store_table}\n{}", keys.toml());
        self.store_config(BACKEND_ENV, true, &table, refresh, access)
    }

    fn file_config(&self, store: &Path, keys: Keys, refresh: &str, access: &str) -> String {
        let table = format!("kind = \"file\"\npath = \"{}\"", store.display());
        self.config(&table, keys, refresh, access)
    }

    async fn start(&self, cfg: &Path, keys: Keys) -> Proxy {
        let token = self.token();
        Proxy::spawn(cfg, &[], &keys.env(&token)).await
    }

    /// Starts the proxy on `cfg`, asserts that `GET /github/user` through it is answered 200, and
    /// kills it: its log.
    async fn one_get(&self, cfg: &Path, keys: Keys) -> String {
        let mut p = self.start(cfg, keys).await;
        assert_eq!(proxied_get(&p, "/github/user").await, 200);
        p.kill9()
    }

    /// Runs `serve` expecting a start-up error; asserts it is one line `error: …` containing
    /// every one of `needles`, with no panic, no secret and nothing listening; returns it.
    fn start_error(&self, cfg: &Path, keys: Keys, needles: &[&str]) -> String {
        let token = self.token();
        let mut env = keys.env(&token);
        env.push(("RUST_LOG", "trace"));
        let started = Instant::now();
        let CliOutput {
            status,
            stdout,
            stderr,
        } = run_cli(&["serve", "--config", cfg.to_str().unwrap()], &env);
        assert!(started.elapsed() < WAIT, "not prompt: {stderr}");
        assert_eq!(status.code(), Some(1), "{stderr}");
        // Trace logs around it, and exactly one error line.
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{stderr:?}");
        let line = errors[0].to_string();
        assert!(line.starts_with("error: "), "{line:?}");
        for n in needles {
            assert!(line.contains(n), "{n:?} not in {line:?}");
        }
        for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
            assert!(!stderr.contains(bad), "{stderr:?}");
        }
        assert!(!stdout.contains("listening"), "{stdout:?}");
        assert_no_secret_in_logs(std::slice::from_ref(&stderr), &secrets(&self.realm));
        line
    }
}

/// The records of a store file (the proxy stopped): key → JSON.
fn records(path: &Path) -> Vec<(String, serde_json::Value)> {
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_read().unwrap();
    let table = tx.open_table(TABLE).unwrap();
    let mut out = Vec::new();
    for row in table.iter().unwrap() {
        let (k, v) = row.unwrap();
        out.push((
            String::from_utf8(k.value().to_vec()).unwrap(),
            serde_json::from_slice(v.value()).unwrap(),
        ));
    }
    out
}

/// Writes `records` into a store file (the proxy stopped).
fn write_records(path: &Path, records: &[(&str, serde_json::Value)]) {
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut table = tx.open_table(TABLE).unwrap();
        for (k, v) in records {
            let bytes = serde_json::to_vec(v).unwrap();
            table.insert(k.as_bytes(), bytes.as_slice()).unwrap();
        }
    }
    tx.commit().unwrap();
}

/// The key id the record of `github/octo` names.
fn kid(path: &Path) -> String {
    let r = records(path);
    let (_, v) = r.iter().find(|(k, _)| k == "github/octo").unwrap();
    v["kid"].as_str().expect("a sealed record").to_string()
}

/// Alters one base64 character in the middle of `sealed`.
fn flip(sealed: &str) -> String {
    let mut b = sealed.as_bytes().to_vec();
    let i = b.len() / 2;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The file store.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_file_holds_no_token_bytes_after_rotations_and_reopens_with_its_key() {
    let (w, dir, store, _, (r0, a0)) = case("encfile").await;
    w.realm.revoke_access(&a0);
    let cfg = dir.write("proxy.toml", &w.file_config(&store, key(KEY_A), &r0, &a0));
    let mut logs = Vec::new();

    let mut p = w.start(&cfg, key(KEY_A)).await;
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    assert_eq!(w.realm.backend_calls.get(), 1);
    for i in 0..3 {
        let (status, body) = admin(&p, "POST", "/tokens/github/octo/refresh", "").await;
        assert_eq!(status, 200, "refresh {i}: {body}");
    }
    assert_eq!(w.realm.backend_calls.get(), 4);
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    let current = w.last_ok_authorization();
    logs.push(p.kill9());
    assert_eq!(rotated(&w.realm).len(), 4);
    assert_no_token_bytes(&std::fs::read(&store).unwrap(), &w.realm, "after rotations");
    assert_eq!(records(&store).len(), 1);
    assert_eq!(kid(&store).len(), 16);

    // The same key: the stored (rotated) tokens are used, no refresh.
    let mut p = w.start(&cfg, key(KEY_A)).await;
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    assert_eq!(w.realm.backend_calls.get(), 4);
    assert_eq!(w.last_ok_authorization(), current);
    logs.push(p.kill9());
    assert_no_token_bytes(&std::fs::read(&store).unwrap(), &w.realm, "after restart");
    assert_no_secret_in_logs(&logs, &secrets(&w.realm));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_key_no_key_or_a_tampered_record_is_a_start_up_error_and_changes_nothing() {
    let (w, dir, store, shown, (r0, a0)) = case("encbad").await;
    let mut logs = Vec::new();
    let cfg_a = dir.write("a.toml", &w.file_config(&store, key(KEY_A), &r0, &a0));
    logs.push(w.one_get(&cfg_a, key(KEY_A)).await);
    let kid_a = kid(&store);
    let before = std::fs::read(&store).unwrap();

    // A wrong key.
    let cfg_c = dir.write("c.toml", &w.file_config(&store, key(KEY_C), &r0, &a0));
    let e = w.start_error(&cfg_c, key(KEY_C), &["store.path", &shown, &kid_a]);
    assert!(e.contains("previous_keys"), "{e}");
    assert_unchanged(&store, &before, "wrong key: file changed");

    // No key.
    let cfg_none = dir.write("none.toml", &w.file_config(&store, NO_KEY, &r0, &a0));
    w.start_error(&cfg_none, NO_KEY, &["store.path", &shown, "encryption_key"]);
    assert_unchanged(&store, &before, "no key: file changed");

    // A flipped character inside the sealed refresh token, then inside the access token.
    for field in ["refresh_token", "access_token"] {
        let (_, mut v) = records(&store).remove(0);
        let sealed = v[field].as_str().unwrap().to_string();
        v[field] = serde_json::Value::String(flip(&sealed));
        write_records(&store, &[("github/octo", v)]);
        let tampered = std::fs::read(&store).unwrap();
        w.start_error(
            &cfg_a,
            key(KEY_A),
            &["store.path", &shown, "authentication"],
        );
        assert_unchanged(&store, &tampered, &format!("{field}: file changed"));
        // Restore the original record.
        let (_, mut v) = records(&store).remove(0);
        v[field] = serde_json::Value::String(sealed);
        write_records(&store, &[("github/octo", v)]);
    }

    // Restored, it opens again with its key, no refresh.
    logs.push(w.one_get(&cfg_a, key(KEY_A)).await);
    assert_eq!(w.realm.backend_calls.get(), 0);
    assert_no_secret_in_logs(&logs, &secrets(&w.realm));
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypt_existing_seals_a_clear_store_and_keeps_its_accounts() {
    let (w, dir, store, shown, (r0, a0)) = case("encexist").await;
    let mut logs = Vec::new();

    // Written with no key: the tokens are in the clear.
    let cfg_none = dir.write("none.toml", &w.file_config(&store, NO_KEY, &r0, &a0));
    logs.push(w.one_get(&cfg_none, NO_KEY).await);
    // Recovered after the kill by a read-write open, so that the file is cleanly closed.
    assert_eq!(records(&store).len(), 1);
    let clear = std::fs::read(&store).unwrap();
    assert!(clear.windows(r0.len()).any(|w| w == r0.as_bytes()));

    // A key without encrypt_existing: refused, unchanged.
    let cfg_key = dir.write("key.toml", &w.file_config(&store, key(KEY_A), &r0, &a0));
    w.start_error(
        &cfg_key,
        key(KEY_A),
        &["store.path", &shown, "encrypt_existing"],
    );
    assert_unchanged(&store, &clear, "file changed");

    // encrypt_existing = true: sealed at start-up, the still-valid access token kept.
    let keys = Keys {
        encrypt_existing: true,
        ..key(KEY_A)
    };
    let cfg_seal = dir.write("seal.toml", &w.file_config(&store, keys, &r0, &a0));
    let mut p = w.start(&cfg_seal, keys).await;
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    assert_eq!(w.last_ok_authorization(), format!("Bearer {a0}"));
    logs.push(p.kill9());
    assert_eq!(w.realm.backend_calls.get(), 0);
    assert_no_token_bytes(&std::fs::read(&store).unwrap(), &w.realm, "encrypted");
    assert_eq!(kid(&store).len(), 16);

    // Now sealed: opens with the key alone (no encrypt_existing), accounts intact.
    let mut p = w.start(&cfg_key, key(KEY_A)).await;
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    assert_eq!(w.last_ok_authorization(), format!("Bearer {a0}"));
    logs.push(p.kill9());
    assert_eq!(w.realm.backend_calls.get(), 0);
    assert_no_secret_in_logs(&logs, &secrets(&w.realm));
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_through_previous_keys() {
    let (w, dir, store, shown, (r0, a0)) = case("encrot").await;
    let mut logs = Vec::new();

    let cfg_a = dir.write("a.toml", &w.file_config(&store, key(KEY_A), &r0, &a0));
    logs.push(w.one_get(&cfg_a, key(KEY_A)).await);
    let kid_a = kid(&store);

    // B alone cannot open a record sealed with A; the error points at previous_keys.
    let cfg_b = dir.write("b.toml", &w.file_config(&store, key(KEY_B), &r0, &a0));
    let before = std::fs::read(&store).unwrap();
    w.start_error(
        &cfg_b,
        key(KEY_B),
        &["store.path", &shown, &kid_a, "previous_keys"],
    );
    assert_unchanged(&store, &before, "file");

    // B with A as a previous key: starts and serves, no refresh; a refresh re-seals with B.
    let rot = Keys {
        previous: Some(KEY_A),
        ..key(KEY_B)
    };
    let cfg_rot = dir.write("rot.toml", &w.file_config(&store, rot, &r0, &a0));
    let mut p = w.start(&cfg_rot, rot).await;
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    assert_eq!(w.realm.backend_calls.get(), 0);
    let (status, body) = admin(&p, "POST", "/tokens/github/octo/refresh", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    let current = w.last_ok_authorization();
    logs.push(p.kill9());
    assert_eq!(w.realm.backend_calls.get(), 1);
    let kid_b = kid(&store);
    assert_ne!(kid_b, kid_a);
    assert_eq!(kid_b.len(), 16);

    // B alone now opens it, with the rotated tokens, no refresh.
    let mut p = w.start(&cfg_b, key(KEY_B)).await;
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    assert_eq!(w.last_ok_authorization(), current);
    logs.push(p.kill9());
    assert_eq!(w.realm.backend_calls.get(), 1);
    // And A alone no longer does.
    w.start_error(&cfg_a, key(KEY_A), &["store.path", &shown, &kid_b]);
    assert_no_token_bytes(&std::fs::read(&store).unwrap(), &w.realm, "rotated");
    assert_no_secret_in_logs(&logs, &secrets(&w.realm));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_moved_to_another_account_does_not_open() {
    let (w, dir, store, shown, (r0, a0)) = case("encmove").await;
    let cfg = dir.write("proxy.toml", &w.file_config(&store, key(KEY_A), &r0, &a0));
    let mut p = w.start(&cfg, key(KEY_A)).await;
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    let logs = vec![p.kill9()];
    let (_, mut v) = records(&store).remove(0);

    // Copied as is under another account's key.
    write_records(&store, &[("github/mallory", v.clone())]);
    let moved = std::fs::read(&store).unwrap();
    w.start_error(&cfg, key(KEY_A), &["store.path", &shown, "github/mallory"]);
    assert_unchanged(&store, &moved, "file");

    // Copied with its "account" field edited to match: the seal is bound to the account.
    v["account"] = serde_json::Value::String("mallory".into());
    write_records(&store, &[("github/mallory", v)]);
    let moved = std::fs::read(&store).unwrap();
    w.start_error(
        &cfg,
        key(KEY_A),
        &["store.path", &shown, "github/mallory", "authentication"],
    );
    assert_unchanged(&store, &moved, "file");
    assert_eq!(w.realm.backend_calls.get(), 0);
    assert_no_secret_in_logs(&logs, &secrets(&w.realm));
}

// ---------------------------------------------------------------------------------------------
// The Redis store.
// ---------------------------------------------------------------------------------------------

/// `redis-cli -p PORT ARGS…`, bounded; its stdout.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let mut child = support::process::spawn_piped(
        Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args),
    );
    let (out, done) = support::process::drain(child.stdout.take().unwrap());
    let status = support::process::wait_or_kill(&mut child, WAIT).expect("redis-cli exits");
    done.join().unwrap();
    assert!(status.success(), "redis-cli {args:?}");
    support::process::text(&out)
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_values_hold_no_token_bytes_and_wrong_keys_or_moved_hashes_do_not_open() {
    capture_logs();
    let Some(redis) = RedisServer::start(
        "redis_values_hold_no_token_bytes_and_wrong_keys_or_moved_hashes_do_not_open",
    ) else {
        return;
    };
    let w = World::new("encredis").await;
    let dir = TempDir::new("encredis");
    let (r0, a0) = w.credentials();
    w.realm.revoke_access(&a0);
    let table = format!("kind = \"redis\"\nurl = \"{}\"", redis.url());
    let addr = format!("127.0.0.1:{}", redis.port);
    let mut logs = Vec::new();
    let cfg = dir.write("a.toml", &w.config(&table, key(KEY_A), &r0, &a0));

    let mut p = w.start(&cfg, key(KEY_A)).await;
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    for i in 0..2 {
        let (status, body) = admin(&p, "POST", "/tokens/github/octo/refresh", "").await;
        assert_eq!(status, 200, "refresh {i}: {body}");
    }
    assert_eq!(w.realm.backend_calls.get(), 3);
    let keys = redis_cli(redis.port, &["--scan", "--pattern", "orp:acct:*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys, ["orp:acct:github:octo"]);
    let mut raw = String::new();
    for k in &keys {
        let all = redis_cli(redis.port, &["HGETALL", k]);
        assert!(all.contains("data"), "{all}");
        raw += &all;
    }
    // The whole keyspace, not just the accounts.
    for k in redis_cli(redis.port, &["--scan"]).lines() {
        if redis_cli(redis.port, &["TYPE", k]).trim() == "string" {
            raw += &redis_cli(redis.port, &["GET", k]);
        }
    }
    assert_no_token_bytes(raw.as_bytes(), &w.realm, "redis");

    // A second replica with a wrong key, or none, refuses to start, naming the store.
    let cfg_c = dir.write("c.toml", &w.config(&table, key(KEY_C), &r0, &a0));
    w.start_error(
        &cfg_c,
        key(KEY_C),
        &[
            "token store",
            &addr,
            "orp:acct:github:octo",
            "previous_keys",
        ],
    );
    let cfg_none = dir.write("none.toml", &w.config(&table, NO_KEY, &r0, &a0));
    w.start_error(&cfg_none, NO_KEY, &["token store", &addr, "encryption_key"]);
    // The first replica is unaffected.
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    logs.push(p.kill9());
    let snapshot = redis_cli(redis.port, &["HGETALL", "orp:acct:github:octo"]);

    // One account's hash copied, or renamed, to another account's key: start-up error.
    for how in ["COPY", "RENAME"] {
        let out = redis_cli(
            redis.port,
            &[how, "orp:acct:github:octo", "orp:acct:github:mallory"],
        );
        assert!(!out.contains("ERR"), "{how}: {out}");
        w.start_error(
            &cfg,
            key(KEY_A),
            &["token store", &addr, "orp:acct:github:mallory"],
        );
        // Put things back.
        if how == "RENAME" {
            redis_cli(
                redis.port,
                &["RENAME", "orp:acct:github:mallory", "orp:acct:github:octo"],
            );
        } else {
            redis_cli(redis.port, &["DEL", "orp:acct:github:mallory"]);
        }
        assert_eq!(
            redis_cli(redis.port, &["HGETALL", "orp:acct:github:octo"]),
            snapshot,
            "{how}: the record changed"
        );
    }
    logs.push(w.one_get(&cfg, key(KEY_A)).await);
    assert_eq!(w.realm.backend_calls.get(), 3);
    assert_no_secret_in_logs(&logs, &secrets(&w.realm));
}

// ---------------------------------------------------------------------------------------------
// SIGKILL in the middle of rotations, encrypted.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_encrypted_rotations_loses_nothing() {
    let (w, dir, store, _, (r0, a0)) = case("enckill").await;
    let keys = key(KEY_A);
    let cfg = dir.write("proxy.toml", &w.file_config(&store, keys, &r0, &a0));
    let mut rng = kill_points();
    let mut logs = Vec::new();
    let mut p = w.start(&cfg, keys).await;

    for round in 0..6 {
        let point = rng.u8(0..2);
        let calls_before = w.realm.backend_calls.get();
        match point {
            // Continuous refreshes, killed as the k-th backend call arrives.
            0 => refresh_storm(&p, &w.realm, &mut rng, calls_before).await,
            // After completed refreshes.
            _ => refreshes(&p, rng.usize(1..4), round).await,
        }
        logs.push(p.kill9());
        let last_spent = settled_last_spent(&w.realm, round).await;
        assert_no_token_bytes(&std::fs::read(&store).unwrap(), &w.realm, "killed");

        // Restart: the account refreshes with the newest refresh token the backend issued —
        // or, only when the process died between the backend's rotation and the write of its
        // answer, with the token that rotation spent.
        p = w.start(&cfg, keys).await;
        check_restart(&p, &w.realm, &r0, round, point, 0, last_spent).await;
    }
    logs.push(p.kill9());
    assert_no_token_bytes(&std::fs::read(&store).unwrap(), &w.realm, "end");
    assert_eq!(dir.names(), ["proxy.toml", "tokens.db"]);
    assert_no_secret_in_logs(&logs, &secrets(&w.realm));
}
