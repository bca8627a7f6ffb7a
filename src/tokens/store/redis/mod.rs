//! The shared store (`store.kind = "redis"`): N sidecar or embedded-layer replicas share their
//! accounts through one Redis, and refresh each account **once per token generation across the
//! fleet**.
//!
//! # Data
//!
//! | key | what |
//! |---|---|
//! | `orp:acct:<provider>:<account>` | a hash: `gen` (the token generation, decimal) and `data` (JSON of the other [`StoredAccount`] fields, secrets included) |
//! | `orp:lock:<provider>:<account>` | the refresh lock: `SET NX PX lock_ttl`, value = a random owner id |
//! | `orp:claim:{key}` | a [`Store::claim`] (webhook events: sent once per fleet): `SET NX PX ttl`, value = the claimer's origin |
//! | channel `orp:updates` | one message per write: `{"o": origin, "p": provider, "a": account}` |
//! | `orp:note:{name}` | a short-lived note ([`RedisStore::publish_note`]): `SET … PX ttl` |
//! | channel `orp:notes` | one message per note: `{origin} {payload}` |
//!
//! Every write is one Lua script that writes the hash **and** publishes, so announcements are
//! ordered like the writes. A subscriber skips its own messages (`origin` is random per
//! [`RedisStore`]), reads the account and hands [`StoreUpdate::Changed`] (or `Removed` when the
//! key is gone) to its [`Tokens`](crate::Tokens), which applies it only if its generation is
//! newer than the cached one.
//!
//! [`Store::save`] never lowers a generation: the script stores `max(given, stored + 1)`, so two
//! replicas replacing an account at once end up with distinct generations and converge on the
//! last write.
//!
//! # Refresh: one lock, fenced by generation
//!
//! [`Store::refresh`] (`current` = the caller's cached state, generation `g`):
//!
//! 1. read the stored account. Stored generation newer than `g` with other tokens and a usable
//!    access token ⇒ another replica refreshed: return it, **no backend call**. Stored (same or
//!    newer generation) marked `needs_reauth` ⇒ `Rejected` without a call;
//! 2. `SET lock owner NX PX lock_ttl`. Taken by someone else ⇒ wait (woken by any announcement,
//!    else polling every 100 ms; bounded by `2 × lock_ttl + 5 s`) and go to 1: either the
//!    holder publishes a newer generation, or it died and its lock expires after `lock_ttl`;
//! 3. lock acquired ⇒ read again (the fence read) and decide as in 1; then call the refresher
//!    with the stored — freshest — refresh token, renewing the lock every `lock_ttl / 3` while
//!    it runs (so a slow but live holder keeps it; a dead one loses it after `lock_ttl`);
//! 4. write the result with a script that checks the stored generation is still the one read in
//!    3 (the **fence**; a missing key is accepted: a Redis restarted without persistence), then
//!    publishes and releases the lock if still ours. A rejection is written the same way
//!    (`needs_reauth`, same generation), so a concurrent success (a new generation) always wins
//!    over a rejection of the old one. A transient failure only releases the lock.
//!
//! The generation fence — not the lock — guarantees the state stays consistent, even if a lock
//! expired under a holder that was merely slow: the first result written wins and the other
//! replica adopts it. The lock (with its renewal) is what keeps a rotating refresh token from
//! being spent twice.
//!
//! # Redis unavailable
//!
//! Every command is bounded (`lock_ttl / 4`, between 200 ms and 2 s; connecting likewise), so
//! nothing hangs. Requests with a valid cached token never touch Redis and keep working. A
//! refresh that cannot read, lock or write fails at once as
//! `RefreshError::Transient("token store unavailable: …")` (the caller's `refresh_unavailable`)
//! — a refresh is **never** started without the lock. If Redis fails *after* a successful
//! refresh, the new state is returned anyway (dropping a rotated refresh token would lose the
//! account) and a background task keeps retrying the fenced write for up to 15 minutes.
//!
//! The command connection is redis-rs's
//! [`ConnectionManager`](redis::aio::ConnectionManager), which reconnects by itself. The
//! subscriber is a dedicated RESP3 connection (Redis ≥ 6) driven by a loop that pings it every
//! 2 s, reconnects with backoff (100 ms … 1 s) after any failure, and after every (re)subscription
//! reloads all accounts and emits `Changed` for each, so updates missed while disconnected are
//! not lost. [`Store::ready`] (`/readyz`) is a bounded `PING` plus, once updates are consumed,
//! "the subscriber is subscribed".
//!
//! # Start-up
//!
//! [`RedisStore::connect`] fails with a clear one-line error when Redis cannot be reached (the
//! sidecar exits 1), rather than starting not-ready: the sidecar must load the shared accounts
//! before serving, and an orchestrator restarts it anyway. Once started, outages are survived.
//!
//! # Notes
//!
//! Beside the accounts, replicas can share short-lived notes the store does not interpret (the
//! sidecar shares upstream rate limits this way): [`RedisStore::publish_note`] writes
//! `orp:note:{name}` with a TTL and publishes it, and [`RedisStore::notes`] receives the other
//! replicas' notes — on the subscriber connection of [`Store::updates`], which must be
//! running — plus, after every (re)subscription, every note still stored (one's own included).
//!
//! # TLS and Redis Cluster
//!
//! `rediss://` URLs connect with TLS (rustls, the crate's one TLS stack), verifying the server
//! against the system's roots or, when given, [`RedisOptions::ca_certificates`].
//!
//! With [`RedisNodes::Cluster`] the store runs on a Redis Cluster. An account's two keys share
//! one hash slot through a `{provider:account}` hash tag — `orp:acct:{github:alice}` and
//! `orp:lock:{github:alice}` — so the fenced write (one script over both keys) and the lock work
//! per account exactly as on one node. What differs:
//!
//! - listings (start-up, re-sync after a reconnect, notes) `SCAN` every primary in turn, as
//!   `CLUSTER SLOTS` names them, and read the accounts one command each (a pipeline must stay
//!   in one slot);
//! - announcements are classic pub/sub, which a cluster delivers on every node: the subscriber
//!   holds one connection to one of the configured nodes and moves to the next one when it
//!   fails;
//! - `PING` (`/readyz`) asks every node: while a primary is down the store is not ready, and
//!   refreshes of the accounts in its slots fail at once as `token store unavailable` (503);
//! - `store.encrypt_existing` seals each account in its own script (records in different slots
//!   cannot share one), so an interrupted start-up leaves some records sealed and some not;
//!   the next start-up seals the rest.
//!
//! A single node keeps the untagged key names of the table above.
//!
//! Limits: a refresh racing an administrative removal on another replica can re-create the
//! removed account.

// Where the code is: opening (connect), key names and messages (keys), reading and writing
// accounts (accounts), the cross-replica refresh (refresh), commands over every node (cluster),
// the subscriber (subscriber) and notes (notes). This file holds the types and the `Store` impl.
mod accounts;
mod cluster;
mod connect;
mod keys;
mod notes;
mod refresh;
mod subscriber;
#[cfg(test)]
mod tests;

pub use connect::{has_pem_certificate, NO_PEM_CERTIFICATE};

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::{Client, FromRedisValue, Script, ScriptInvocation};
use tokio::sync::{mpsc, watch};

use super::record::{Codec, Encryption};
use super::{RefreshFn, Store, StoreError, StoreRefresh, StoreUpdate, StoredAccount};
use crate::provider::Provider;
use crate::refresh::BoxFuture;
use connect::{shown_url, Conn};

/// The shared Redis store. See the [module documentation](self) for the protocol.
///
/// ```no_run
/// use std::{sync::Arc, time::Duration};
/// use oauth_refresh_proxy::{BackendRefresher, Tokens, store::redis::RedisStore};
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379", Duration::from_secs(30)).await?;
/// let tokens = Tokens::builder(BackendRefresher::new("https://backend.flashback.tech")?)
///     .store(Arc::new(store))
///     .build();
/// # let _ = tokens; Ok(()) }
/// ```
pub struct RedisStore {
    shared: Arc<Shared>,
    /// Dropped with the store: stops the subscriber.
    stop: watch::Sender<()>,
}

struct Shared {
    conn: Conn,
    /// The clients of the subscriber connection (RESP3), one per configured node: the
    /// subscriber moves to the next one after a failure.
    subscribers: Vec<Client>,
    /// `host:port` (never the password), for errors and logs.
    addr: String,
    lock_ttl: Duration,
    op_timeout: Duration,
    /// Identifies this store's own announcements.
    origin: String,
    /// Whether `updates()` started the subscriber.
    listening: AtomicBool,
    /// Whether the subscriber is subscribed now.
    subscribed: AtomicBool,
    /// Bumped on every announcement: wakes refreshes waiting on another replica's lock.
    announced: watch::Sender<u64>,
    /// Records in and out, sealed when an encryption key is configured.
    codec: Codec,
    /// Where other replicas' notes go ([`RedisStore::notes`]).
    notes: std::sync::Mutex<Option<mpsc::UnboundedSender<String>>>,
    /// The Lua scripts, loaded once (their sources: `accounts.rs` and `refresh.rs`).
    save: Script,
    commit: Script,
    renew: Script,
    release: Script,
    remove: Script,
    seal_existing: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("addr", &self.shared.addr)
            .field("lock_ttl", &self.shared.lock_ttl)
            .finish()
    }
}

/// Where the shared store lives: one Redis, or a Redis Cluster.
///
/// `Debug` shows the nodes' addresses, never a password.
///
/// ```
/// use oauth_refresh_proxy::store::redis::RedisNodes;
///
/// let one = RedisNodes::Single("rediss://:pw@redis.internal:6380".into());
/// assert_eq!(format!("{one:?}"), "Single(\"redis.internal:6380\")");
/// let cluster = RedisNodes::Cluster(vec!["redis://10.0.0.1:7000".into(), "redis://10.0.0.2:7000".into()]);
/// assert!(format!("{cluster:?}").contains("10.0.0.2:7000"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum RedisNodes {
    /// One Redis: `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS.
    Single(String),
    /// A Redis Cluster: some of its nodes' URLs (all `redis://` or all `rediss://`); the
    /// others are learnt from the cluster.
    Cluster(Vec<String>),
}

impl std::fmt::Debug for RedisNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisNodes::Single(url) => f.debug_tuple("Single").field(&shown_url(url)).finish(),
            RedisNodes::Cluster(urls) => f
                .debug_tuple("Cluster")
                .field(&urls.iter().map(|u| shown_url(u)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// How [`RedisStore::open`] reaches and writes the store, beside its nodes.
///
/// ```
/// use oauth_refresh_proxy::store::redis::RedisOptions;
///
/// let options = RedisOptions {
///     ca_certificates: Some(b"-----BEGIN CERTIFICATE-----\n...".to_vec()),
///     ..RedisOptions::default()
/// };
/// assert!(options.encryption.is_none());
/// ```
#[derive(Default)]
pub struct RedisOptions {
    /// Tokens sealed at rest (see [`Encryption`]).
    pub encryption: Option<Encryption>,
    /// PEM certificates of the CAs trusted for `rediss://` instead of the system's roots.
    pub ca_certificates: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("encryption", &self.encryption.is_some())
            .field("ca_certificates", &self.ca_certificates.is_some())
            .finish()
    }
}

/// A random id: this store's origin in announcements, a refresh lock's owner.
fn random_id() -> String {
    format!(
        "{:016x}{:016x}-{}",
        fastrand::u64(..),
        fastrand::u64(..),
        std::process::id()
    )
}

impl Shared {
    /// Whether the store runs on a Redis Cluster (hash-tagged keys, per-primary listings).
    fn cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// An error of this store, naming it and what failed: `redis {addr}: {what}: {detail}`.
    fn error(&self, what: &str, detail: impl std::fmt::Display) -> StoreError {
        StoreError(format!("redis {}: {what}: {detail}", self.addr))
    }

    /// Runs one Redis operation, bounded by `op_timeout`.
    async fn op<T>(
        &self,
        what: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(what, e)),
            Err(_) => Err(self.error(what, format_args!("no answer within {:?}", self.op_timeout))),
        }
    }

    /// Runs `cmd` on the command connection, bounded.
    async fn query<T: FromRedisValue>(
        &self,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut c = self.conn.clone();
        self.op(what, cmd.query_async(&mut c)).await
    }

    /// Runs a script on the command connection, bounded.
    async fn invoke<T: FromRedisValue>(
        &self,
        what: &str,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut c = self.conn.clone();
        self.op(what, script.invoke_async(&mut c)).await
    }

    /// `SET key value NX PX ttl_ms`: `true` when this call set it.
    async fn set_if_absent(
        &self,
        what: &str,
        key: &str,
        value: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(key).arg(value).arg("NX").arg("PX").arg(ttl_ms);
        let ok: Option<String> = self.query(what, &set).await?;
        Ok(ok.is_some())
    }
}

impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredAccount>, StoreError>> {
        Box::pin(self.shared.load())
    }

    fn save(&self, account: StoredAccount) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.shared.save(&account).await.map(|_| ()) })
    }

    fn remove<'a>(
        &'a self,
        provider: Provider,
        account: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.shared.remove(provider, account))
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let subscribed = !self.shared.listening.load(Ordering::SeqCst)
                || self.shared.subscribed.load(Ordering::SeqCst);
            subscribed && self.shared.ping().await.is_ok()
        })
    }

    fn refresh(&self, current: StoredAccount, refresh: RefreshFn) -> BoxFuture<'_, StoreRefresh> {
        Box::pin(async move { self.shared.refresh(current, refresh).await })
    }

    fn claim<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.shared.claim(key, ttl))
    }

    fn updates(&self) -> Option<mpsc::UnboundedReceiver<StoreUpdate>> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: changes made by other replicas will not be seen");
            return None;
        };
        if self.shared.listening.swap(true, Ordering::SeqCst) {
            return None; // one consumer only
        }
        let (tx, rx) = mpsc::unbounded_channel();
        runtime.spawn(self.shared.clone().listen(tx, self.stop.subscribe()));
        Some(rx)
    }
}
