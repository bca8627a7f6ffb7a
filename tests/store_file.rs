//! Black-box tests of the embedded durable store (`store.kind = "file"`): a rotated refresh
//! token is durable before the new access token is used, survives `kill -9` and a restart with
//! the original configuration, the file is created with mode 0600, and a corrupted or unreadable
//! file is a clear one-line start-up error. Against the crate's in-process fakes; calls are
//! counted at the fakes; logs (captured, and the child's at `RUST_LOG=trace`) hold no secret.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use oauth_refresh_proxy::refresh::BoxFuture;
use oauth_refresh_proxy::store::{file::FileStore, Store, StoreError, StoredAccount};
use oauth_refresh_proxy::{
    Account, BackendRefresher, Error, ErrorKind, Provider, RefreshError, RefreshLayer, ReplayBody,
    RetryPolicy, Secret, TokenSeed, Tokens,
};
use support::process::{assert_no_secret_in_logs, run_cli, CliOutput, Proxy, TempDir};
use support::rotating::{
    admin, check_restart, hammer, http, kill_points, proxied_get, refresh_storm, refreshes,
    settled_last_spent, RotatingWorld,
};
use support::shared_store::{rotated, sent_refresh_token};
use support::*;
use tokio::sync::{oneshot, Semaphore};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

const BACKEND_ENV: &str = "ORP_STORE_FILE_TEST_BACKEND_TOKEN";

// ---------------------------------------------------------------------------------------------
// Plumbing.
// ---------------------------------------------------------------------------------------------

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

type World = RotatingWorld;

// ---------------------------------------------------------------------------------------------
// Layer-level plumbing.
// ---------------------------------------------------------------------------------------------

type Svc = BoxCloneService<Request<TestBody>, Response<Incoming>, Error>;

fn seeds(refresh: &str, access: &str) -> Vec<(Provider, String, TokenSeed)> {
    vec![(
        Provider::GitHub,
        "octo".to_string(),
        TokenSeed::new(refresh)
            .access_token(access)
            .expires_at(SystemTime::now() + Duration::from_secs(3600)),
    )]
}

fn tokens_with(w: &World, store: Arc<dyn Store>) -> Tokens {
    let refresher = BackendRefresher::new(&w.backend)
        .unwrap()
        .bearer(Secret::new(w.realm.backend_token.clone().unwrap()))
        .timeout(Duration::from_secs(5));
    Tokens::builder(refresher)
        .retry(RetryPolicy {
            max_attempts: 3,
            timeout: Duration::from_secs(5),
            late_answer_window: Duration::from_secs(5),
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        })
        .store(store)
        .build()
}

fn client(tokens: &Tokens) -> Svc {
    let hyper: Client<HttpConnector, ReplayBody<TestBody>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let svc = RefreshLayer::new(tokens.clone())
        .default_account("octo")
        .layer(hyper);
    let svc = tower::ServiceBuilder::new()
        .map_request(|mut req: Request<TestBody>| {
            req.extensions_mut().insert(Provider::GitHub);
            req
        })
        .service(svc);
    BoxCloneService::new(svc)
}

/// `GET path` on the fake API through the layer, as `account` (else the default account).
async fn get(svc: &Svc, w: &World, path: &str, account: Option<&str>) -> Result<StatusCode, Error> {
    let mut req = Request::builder()
        .uri(format!("http://{}{path}", w.api))
        .body(empty())
        .unwrap();
    if let Some(a) = account {
        req.extensions_mut().insert(Account::new(a));
    }
    let resp = tokio::time::timeout(WAIT, svc.clone().oneshot(req))
        .await
        .expect("bounded request")?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

/// A [`FileStore`] that reports when it has been closed (dropped by its last user).
struct Tracked {
    // Dropped first (fields drop in order), so the signal means the database is closed.
    store: FileStore,
    _closed: Closed,
}

struct Closed(Option<oneshot::Sender<()>>);

impl Drop for Closed {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Store for Tracked {
    fn kind(&self) -> &'static str {
        self.store.kind()
    }
    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredAccount>, StoreError>> {
        self.store.load()
    }
    fn save(&self, a: StoredAccount) -> BoxFuture<'_, Result<(), StoreError>> {
        self.store.save(a)
    }
    fn remove<'a>(&'a self, p: Provider, a: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.store.remove(p, a)
    }
    fn ready(&self) -> BoxFuture<'_, bool> {
        self.store.ready()
    }
}

/// Opens the store file at `path`; the receiver fires once the store is closed.
fn open_tracked(path: &Path) -> (Arc<dyn Store>, oneshot::Receiver<()>) {
    let (tx, rx) = oneshot::channel();
    let store = Tracked {
        store: FileStore::open(path).unwrap(),
        _closed: Closed(Some(tx)),
    };
    (Arc::new(store), rx)
}

/// Waits (bounded) until the store behind `closed` is closed.
async fn wait_closed(closed: oneshot::Receiver<()>) {
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("the store was not released in time")
        .unwrap();
}

/// A process's run of the layer against the store at `path`: opens it, restores `seeds`, and
/// hands the tokens and a client to `body`; closes the store before returning.
async fn run<T>(
    w: &World,
    path: &Path,
    seeds: Vec<(Provider, String, TokenSeed)>,
    body: impl AsyncFnOnce(&Tokens, &Svc) -> T,
) -> T {
    let (store, closed) = open_tracked(path);
    let tokens = tokens_with(w, store);
    tokens.restore(seeds).await.unwrap();
    assert!(tokens.ready().await);
    assert_eq!(tokens.store_kind(), "file");
    let svc = client(&tokens);
    let out = body(&tokens, &svc).await;
    drop(svc);
    drop(tokens);
    wait_closed(closed).await;
    out
}

// ---------------------------------------------------------------------------------------------
// Layer level: restarts, re-authorisation, put and forget.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_survives_a_restart_with_the_original_seed() {
    let w = World::new("fsrestart").await;
    let dir = TempDir::new("restart");
    let path = dir.path("tokens.db");
    let (r0, a0) = w.credentials();

    // First run: the access token is revoked, a request refreshes (rotating) and is replayed.
    run(&w, &path, seeds(&r0, &a0), async |_, svc| {
        assert_eq!(mode(&path), 0o600);
        w.realm.revoke_access(&a0);
        assert_eq!(get(svc, &w, "/user", None).await.unwrap(), 200);
    })
    .await;
    assert_eq!(w.realm.backend_calls.get(), 1);
    let r1 = rotated(&w.realm);
    assert_eq!(r1.len(), 1);
    let r1 = r1[0].clone();
    let a1 = w.last_ok_authorization();
    assert_ne!(Some(a1.clone()), bearer(&a0));
    assert_eq!(dir.names(), ["tokens.db"], "no stray temporary file");

    // Restart with the ORIGINAL seed: the stored access token is used as is …
    run(&w, &path, seeds(&r0, &a0), async |_, svc| {
        assert_eq!(get(svc, &w, "/user", None).await.unwrap(), 200);
        assert_eq!(w.realm.backend_calls.get(), 1, "no refresh needed");
        assert_eq!(w.last_ok_authorization(), a1);
        // … and the next refresh spends the rotated refresh token, not the original one.
        w.realm.revoke_access(a1.strip_prefix("Bearer ").unwrap());
        assert_eq!(get(svc, &w, "/user", None).await.unwrap(), 200);
    })
    .await;
    assert_eq!(w.realm.backend_calls.get(), 2);
    let sent: Vec<String> = w
        .realm
        .backend_requests()
        .iter()
        .map(|(_, _, body)| sent_refresh_token(body))
        .collect();
    assert_eq!(sent, [r0.clone(), r1.clone()]);

    // A third start with the original seed continues the chain again.
    let r2 = rotated(&w.realm)[1].clone();
    run(&w, &path, seeds(&r0, &a0), async |tokens, _| {
        tokens.refresh_now(Provider::GitHub, "octo").await.unwrap();
    })
    .await;
    let last = w.realm.backend_requests().last().unwrap().2.clone();
    assert_eq!(sent_refresh_token(&last), r2);
    assert_eq!(w.realm.backend_calls.get(), 3);
    assert_eq!(mode(&path), 0o600);
    assert_no_secret_logged(&w.realm.secrets());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_refresh_token_in_the_seeds_replaces_the_stored_one() {
    let w = World::new("fsreauth").await;
    let dir = TempDir::new("reauth");
    let path = dir.path("tokens.db");
    let (r0, a0) = w.credentials();
    run(&w, &path, seeds(&r0, &a0), async |tokens, _| {
        tokens.refresh_now(Provider::GitHub, "octo").await.unwrap();
    })
    .await;
    assert_eq!(w.realm.backend_calls.get(), 1);

    // The operator re-authorised the account: the configured tokens win.
    let (rn, an) = w.credentials();
    run(&w, &path, seeds(&rn, &an), async |tokens, svc| {
        assert_eq!(get(svc, &w, "/user", None).await.unwrap(), 200);
        assert_eq!(w.last_ok_authorization(), bearer(&an).unwrap());
        tokens.refresh_now(Provider::GitHub, "octo").await.unwrap();
    })
    .await;
    assert_eq!(w.realm.backend_calls.get(), 2);
    let last = w.realm.backend_requests().last().unwrap().2.clone();
    assert_eq!(sent_refresh_token(&last), rn);

    // And from then on the new seed's rotation is kept across restarts.
    run(&w, &path, seeds(&rn, &an), async |_, svc| {
        assert_eq!(get(svc, &w, "/user", None).await.unwrap(), 200);
    })
    .await;
    assert_eq!(
        w.realm.backend_calls.get(),
        2,
        "the stored, rotated tokens were used"
    );
    assert_ne!(w.last_ok_authorization(), bearer(&an).unwrap());
    assert_no_secret_logged(&w.realm.secrets());
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_put_at_run_time_survive_a_restart_and_forget_is_durable() {
    let w = World::new("fsput").await;
    let dir = TempDir::new("put");
    let path = dir.path("tokens.db");
    let (r, a) = w.credentials();
    run(&w, &path, vec![], async |tokens, _| {
        let seed = TokenSeed::new(r.as_str())
            .access_token(a.as_str())
            .expires_at(SystemTime::now() + Duration::from_secs(3600));
        assert!(!tokens
            .save(Provider::GitHub, "runtime", seed)
            .await
            .unwrap());
    })
    .await;
    run(&w, &path, vec![], async |tokens, svc| {
        let listed = tokens.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].account, "runtime");
        assert_eq!(get(svc, &w, "/user", Some("runtime")).await.unwrap(), 200);
        assert_eq!(w.last_ok_authorization(), bearer(&a).unwrap());
        assert!(tokens.delete(Provider::GitHub, "runtime").await.unwrap());
        assert!(!tokens.delete(Provider::GitHub, "nobody").await.unwrap());
    })
    .await;
    run(&w, &path, vec![], async |tokens, svc| {
        assert!(tokens.list().is_empty());
        let err = get(svc, &w, "/user", Some("runtime")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownAccount);
    })
    .await;
    assert_eq!(w.realm.backend_calls.get(), 0);
    assert_no_secret_logged(&w.realm.secrets());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_round_trips_every_field_and_a_second_open_is_refused() {
    capture_logs();
    let dir = TempDir::new("fields");
    let path = dir.path("tokens.db");
    let account = StoredAccount {
        provider: Provider::Google,
        account: "a/b c".into(),
        refresh_token: Secret::new("1//fields-refresh"),
        access_token: Some(Secret::new("ya29.fields-access")),
        expires_at: Some(1_900_000_000),
        generation: 7,
        needs_reauth: true,
        last_refresh_at: Some(1_800_000_000),
        last_error: Some(RefreshError::rejected("gone")),
        seed_fingerprint: Some("ab".repeat(32)),
    };
    {
        let store = FileStore::open(&path).unwrap();
        assert_eq!(store.kind(), "file");
        assert!(store.ready().await);
        store.save(account.clone()).await.unwrap();
        let mut other = StoredAccount::new(Provider::GitHub, "octo", Secret::new("ghr_x"));
        store.save(other.clone()).await.unwrap();
        other.generation = 3;
        store.save(other.clone()).await.unwrap();
        // The same file cannot be opened twice at once.
        let err = FileStore::open(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("in use"), "{err}");
        let mut loaded = store.load().await.unwrap();
        loaded.sort_by(|a, b| a.account.cmp(&b.account));
        assert_eq!(loaded, vec![account.clone(), other.clone()]);
        store.remove(Provider::GitHub, "octo").await.unwrap();
        store.remove(Provider::GitHub, "octo").await.unwrap();
    }
    let store = FileStore::open(&path).unwrap();
    assert_eq!(store.load().await.unwrap(), vec![account]);
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_existing_file_with_wider_permissions_is_narrowed_to_0600() {
    capture_logs();
    let dir = TempDir::new("perm");
    let path = dir.path("tokens.db");
    drop(FileStore::open(&path).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = FileStore::open(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert!(store.ready().await);
    drop(store);
    // An empty file prepared by the operator becomes a store, 0600 as well.
    let empty = dir.write("empty.db", "");
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o666)).unwrap();
    let store = FileStore::open(&empty).unwrap();
    assert!(store.load().await.unwrap().is_empty());
    assert_eq!(mode(&empty), 0o600);
}

// ---------------------------------------------------------------------------------------------
// Persist before use.
// ---------------------------------------------------------------------------------------------

/// A [`FileStore`] whose saves, once armed, wait for a permit before writing.
struct Gated {
    store: FileStore,
    armed: AtomicBool,
    gate: Semaphore,
    saving: Count,
    held: Mutex<Vec<StoredAccount>>,
}

impl Store for Gated {
    fn kind(&self) -> &'static str {
        self.store.kind()
    }
    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredAccount>, StoreError>> {
        self.store.load()
    }
    fn save(&self, a: StoredAccount) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if self.armed.load(Ordering::SeqCst) {
                self.held.lock().unwrap().push(a.clone());
                self.saving.bump();
                self.gate.acquire().await.unwrap().forget();
            }
            self.store.save(a).await
        })
    }
    fn remove<'a>(&'a self, p: Provider, a: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.store.remove(p, a)
    }
    fn ready(&self) -> BoxFuture<'_, bool> {
        self.store.ready()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_new_access_token_is_used_only_after_the_rotation_is_durable() {
    const N: u64 = 8;
    let w = World::new("fsorder").await;
    let dir = TempDir::new("order");
    let path = dir.path("tokens.db");
    let (r0, a0) = w.credentials();
    let gated = Arc::new(Gated {
        store: FileStore::open(&path).unwrap(),
        armed: AtomicBool::new(false),
        gate: Semaphore::new(0),
        saving: Count::default(),
        held: Mutex::new(Vec::new()),
    });
    let tokens = tokens_with(&w, gated.clone());
    tokens.restore(seeds(&r0, &a0)).await.unwrap();
    let svc = client(&tokens);
    gated.armed.store(true, Ordering::SeqCst);
    w.realm.revoke_access(&a0);

    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let svc = svc.clone();
            let url = format!("http://{}/user", w.api);
            tokio::spawn(async move {
                let req = Request::builder().uri(url).body(empty()).unwrap();
                let resp = svc.oneshot(req).await.unwrap();
                resp.status()
            })
        })
        .collect();
    // Every request went out with the old token and got its 401; the refresh happened and its
    // result is being written.
    w.realm.api_calls.wait_for(N).await;
    gated.saving.wait_for(1).await;
    assert_eq!(w.realm.backend_calls.get(), 1);
    let held = gated.held.lock().unwrap().clone();
    assert_eq!(held.len(), 1);
    let pending = &held[0];
    assert_ne!(
        pending.refresh_token.expose(),
        r0,
        "the rotated refresh token"
    );
    let new_access = pending.access_token.clone().unwrap();
    let new_bearer = bearer(new_access.expose());
    // While the write is held, nobody has used the new access token.
    assert!(w.realm.is_valid_access(new_access.expose()));
    assert!(w.realm.seen().iter().all(|s| s.authorization != new_bearer));
    assert!(tasks.iter().all(|t| !t.is_finished()));
    assert_eq!(tokens.get(Provider::GitHub, "octo").unwrap().generation, 1);

    gated.gate.add_permits(1);
    for t in tasks {
        let status = tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(w.realm.backend_calls.get(), 1);
    assert_eq!(gated.saving.get(), 1);
    let seen = w.realm.seen();
    assert_eq!(seen.len() as u64, 2 * N);
    assert_eq!(
        seen.iter()
            .filter(|s| s.authorization == new_bearer)
            .count() as u64,
        N
    );
    assert!(seen
        .iter()
        .filter(|s| s.authorization == new_bearer)
        .all(|s| s.status == 200));
    drop(svc);
    drop(tokens);
    assert_no_secret_logged(&w.realm.secrets());
}

// ---------------------------------------------------------------------------------------------
// Process level: the real binary, SIGKILL, restarts, start-up errors.
// ---------------------------------------------------------------------------------------------

fn config(w: &World, store: &Path, admin: bool, refresh: &str, access: &str) -> String {
    let table = format!("kind = \"file\"\npath = \"{}\"", store.display());
    w.store_config(BACKEND_ENV, admin, &table, refresh, access)
}

/// The running binary with the backend bearer in its environment; SIGKILLed on drop.
async fn start_proxy(cfg: &Path, realm: &Realm) -> Proxy {
    let token = realm.backend_token.clone().unwrap();
    Proxy::spawn(cfg, &[], &[(BACKEND_ENV, &token)]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_after_a_rotation_then_a_restart_with_the_original_config_uses_the_rotated_token() {
    let w = World::new("fsproc").await;
    let dir = TempDir::new("proc");
    let store = dir.path("tokens.db");
    let (r0, a0) = w.credentials();
    w.realm.revoke_access(&a0);
    let cfg = dir.write("proxy.toml", &config(&w, &store, false, &r0, &a0));
    let mut logs = Vec::new();

    // 401 → refresh (rotation) → replay 200.
    let mut p = start_proxy(&cfg, &w.realm).await;
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    assert_eq!(w.realm.backend_calls.get(), 1);
    assert_eq!(mode(&store), 0o600);
    let a1 = w.last_ok_authorization();
    let r1 = rotated(&w.realm)[0].clone();
    logs.push(p.kill9());

    // Restart with the same, original config: the stored tokens are used.
    let mut p = start_proxy(&cfg, &w.realm).await;
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    assert_eq!(w.realm.backend_calls.get(), 1);
    assert_eq!(w.last_ok_authorization(), a1);
    // A revoked token now refreshes with the ROTATED refresh token.
    w.realm.revoke_access(a1.strip_prefix("Bearer ").unwrap());
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    assert_eq!(w.realm.backend_calls.get(), 2);
    let sent: Vec<String> = w
        .realm
        .backend_requests()
        .iter()
        .map(|(_, _, b)| sent_refresh_token(b))
        .collect();
    assert_eq!(sent, [r0, r1]);
    assert_eq!(mode(&store), 0o600);
    logs.push(p.kill9());
    assert_eq!(dir.names(), ["proxy.toml", "tokens.db"]);
    assert_no_secret_in_logs(&logs, &w.realm.secrets());
    assert_no_secret_logged(&w.realm.secrets());
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_reflects_the_store_file() {
    let w = World::new("fsready").await;
    let dir = TempDir::new("ready");
    let store = dir.path("tokens.db");
    let (r0, a0) = w.credentials();
    let cfg = dir.write("proxy.toml", &config(&w, &store, true, &r0, &a0));
    let mut p = start_proxy(&cfg, &w.realm).await;
    assert_eq!(admin(&p, "GET", "/readyz", "").await.0, 200);
    assert_eq!(proxied_get(&p, "/github/user").await, 200);
    // The file is gone: the proxy is no longer ready (its writes would go nowhere durable).
    std::fs::remove_file(&store).unwrap();
    assert_eq!(admin(&p, "GET", "/readyz", "").await.0, 503);
    assert_eq!(admin(&p, "GET", "/healthz", "").await.0, 200);
    let logs = vec![p.kill9()];
    assert_eq!(w.realm.backend_calls.get(), 0);
    assert_no_secret_in_logs(&logs, &w.realm.secrets());
}

/// Asserts a clear start-up error: exit 1, exactly one stderr line `error: …` naming the path
/// and containing `reason`, no panic, no secret, nothing listening.
fn assert_store_error(cfg: &Path, realm: &Realm, store: &Path, reason: &str) {
    let token = realm.backend_token.clone().unwrap();
    let CliOutput {
        status,
        stdout,
        stderr,
    } = run_cli(
        &["serve", "--config", cfg.to_str().unwrap()],
        &[(BACKEND_ENV, &token)],
    );
    let what = format!("{} ({reason})", store.display());
    assert_eq!(status.code(), Some(1), "{what}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{what}: {stderr:?}");
    assert!(stderr.starts_with("error: "), "{what}: {stderr:?}");
    assert!(stderr.contains("store.path"), "{what}: {stderr:?}");
    assert!(
        stderr.contains(&store.display().to_string()),
        "{what}: {stderr:?}"
    );
    assert!(stderr.contains(reason), "{what}: {stderr:?}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "{what}: {stderr:?}");
    }
    assert!(!stdout.contains("listening"), "{what}: {stdout:?}");
    for s in realm.secrets() {
        assert!(!stderr.contains(&s), "{what}: a secret in {stderr:?}");
    }
}

/// Deterministic pseudo-random bytes.
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_or_unreadable_store_file_is_a_one_line_start_up_error() {
    let w = World::new("fsbad").await;
    let dir = TempDir::new("bad");
    let (r0, a0) = w.credentials();
    let write_cfg = |name: &str, store: &Path| dir.write(name, &config(&w, store, false, &r0, &a0));

    // Random bytes.
    let garbage = dir.path("garbage.db");
    let bytes = noise(64 * 1024, 0x9e37_79b9_7f4a_7c15);
    std::fs::write(&garbage, &bytes).unwrap();
    let cfg = write_cfg("garbage.toml", &garbage);
    assert_store_error(&cfg, &w.realm, &garbage, "not a token store database");
    assert_eq!(std::fs::read(&garbage).unwrap(), bytes, "left untouched");

    // A real store, truncated.
    let truncated = dir.path("truncated.db");
    {
        let s = FileStore::open(&truncated).unwrap();
        s.save(StoredAccount::new(
            Provider::GitHub,
            "octo",
            Secret::new(r0.as_str()),
        ))
        .await
        .unwrap();
    }
    let len = std::fs::metadata(&truncated).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let cfg = write_cfg("truncated.toml", &truncated);
    assert_store_error(&cfg, &w.realm, &truncated, "corrupted");

    // A real store with its pages overwritten (checksum failure).
    let scrambled = dir.path("scrambled.db");
    {
        let s = FileStore::open(&scrambled).unwrap();
        for i in 0..20 {
            s.save(StoredAccount::new(
                Provider::GitHub,
                &format!("octo{i}"),
                Secret::new(r0.as_str()),
            ))
            .await
            .unwrap();
        }
    }
    let mut content = std::fs::read(&scrambled).unwrap();
    let len = content.len();
    content[4096..len].copy_from_slice(&noise(len - 4096, 7));
    std::fs::write(&scrambled, &content).unwrap();
    let cfg = write_cfg("scrambled.toml", &scrambled);
    assert_store_error(&cfg, &w.realm, &scrambled, "corrupted");

    // A directory where the file should be.
    let directory = dir.path("directory.db");
    std::fs::create_dir(&directory).unwrap();
    let cfg = write_cfg("directory.toml", &directory);
    assert_store_error(&cfg, &w.realm, &directory, "is a directory");

    // A path through a regular file.
    let not_dir = dir.write("plain", "x").join("tokens.db");
    let cfg = write_cfg("notdir.toml", &not_dir);
    assert_store_error(&cfg, &w.realm, &not_dir, "cannot open");

    // A missing directory.
    let missing = dir.path("missing").join("tokens.db");
    let cfg = write_cfg("missing.toml", &missing);
    assert_store_error(&cfg, &w.realm, &missing, "cannot create");

    // An unreadable file (meaningless for root, who reads anything).
    let unreadable = dir.path("unreadable.db");
    drop(FileStore::open(&unreadable).unwrap());
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&unreadable).is_err() {
        let cfg = write_cfg("unreadable.toml", &unreadable);
        assert_store_error(&cfg, &w.realm, &unreadable, "Permission denied");
    }

    // A file in use by another proxy.
    let shared = dir.path("shared.db");
    let cfg = write_cfg("shared.toml", &shared);
    let mut first = start_proxy(&cfg, &w.realm).await;
    assert_store_error(&cfg, &w.realm, &shared, "in use by another process");
    let logs = vec![first.kill9()];
    assert_no_secret_in_logs(&logs, &w.realm.secrets());
    assert_eq!(w.realm.backend_calls.get(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_record_is_a_clear_error_that_quotes_no_token() {
    capture_logs();
    let dir = TempDir::new("record");
    let path = dir.path("tokens.db");
    drop(FileStore::open(&path).unwrap());
    {
        // A record whose `generation` holds a token-like string where a number belongs.
        let db = redb::Database::create(&path).unwrap();
        let table: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("accounts");
        let tx = db.begin_write().unwrap();
        tx.open_table(table)
            .unwrap()
            .insert(
                b"github/octo".as_slice(),
                br#"{"v":1,"provider":"github","account":"octo","refresh_token":"ghr_leak","generation":"ghr_leak_too"}"#.as_slice(),
            )
            .unwrap();
        tx.commit().unwrap();
    }
    let err = FileStore::open(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("malformed"), "{err}");
    assert!(!err.contains("ghr_leak"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

// ---------------------------------------------------------------------------------------------
// SIGKILL in the middle of refreshes.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_in_the_middle_of_refreshes_never_corrupts_or_rolls_back() {
    let w = World::new("fskill").await;
    let dir = TempDir::new("kill");
    let store = dir.path("tokens.db");
    let (r0, a0) = w.credentials();
    let cfg = dir.write("proxy.toml", &config(&w, &store, true, &r0, &a0));
    let mut rng = kill_points();
    let mut logs = Vec::new();
    let mut p = start_proxy(&cfg, &w.realm).await;

    for round in 0..8 {
        let point = rng.u8(0..3);
        let calls_before = w.realm.backend_calls.get();
        match point {
            // Held at the backend: the refresh has not been issued when the process dies.
            0 => {
                refreshes(&p, rng.usize(0..3), round).await;
                w.realm.script([Reply::Gated]);
                let proxy = p.proxy_addr();
                let before = w.realm.backend_calls.get();
                let _h = hammer(p.admin_addr());
                let _g = tokio::spawn(async move {
                    let _ = http("GET", &format!("http://{proxy}/github/user"), "").await;
                });
                w.realm.backend_calls.wait_for(before + 1).await;
            }
            // Continuous refreshes, killed as the k-th backend call arrives: the backend may
            // issue (and rotate) before the proxy can write the answer.
            1 => refresh_storm(&p, &w.realm, &mut rng, calls_before).await,
            // After completed refreshes, with a proxied request held at the API.
            _ => {
                refreshes(&p, rng.usize(1..4), round).await;
                let proxy = p.proxy_addr();
                let held = w.realm.held.get();
                let _g = tokio::spawn(async move {
                    let _ = http("GET", &format!("http://{proxy}/github/hold"), "").await;
                });
                w.realm.held.wait_for(held + 1).await;
            }
        }
        logs.push(p.kill9());
        if point == 2 {
            w.realm.release_api(1);
        }
        let last_spent = settled_last_spent(&w.realm, round).await;

        // Restart with the original config: the file opens, and the account refreshes with the
        // newest refresh token the backend issued (or the one a killed rotation spent).
        p = start_proxy(&cfg, &w.realm).await;
        check_restart(&p, &w.realm, &r0, round, point, 1, last_spent).await;
        assert_eq!(mode(&store), 0o600);
    }
    logs.push(p.kill9());
    assert_eq!(dir.names(), ["proxy.toml", "tokens.db"]);
    assert_no_secret_in_logs(&logs, &w.realm.secrets());
}
