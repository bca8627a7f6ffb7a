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
//! The command connection is redis-rs's [`ConnectionManager`], which reconnects by itself. The
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

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Msg,
    ProtocolVersion, PushKind, RedisFuture, Script, TlsCertificates, Value,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::record::{Codec, Encryption, Generation, RecordError, Sealing};
use super::{now_secs, RefreshFn, Store, StoreError, StoreRefresh, StoreUpdate, StoredAccount};
use crate::provider::Provider;
use crate::refresh::{BoxFuture, RefreshError, Refreshed};

/// The channel announcing writes.
const CHANNEL: &str = "orp:updates";
/// The channel of notes, and the pattern of their keys.
const NOTES_CHANNEL: &str = "orp:notes";
const NOTE_PATTERN: &str = "orp:note:*";
/// The prefix of [`Store::claim`] keys.
const CLAIM_PREFIX: &str = "orp:claim:";
/// The pattern of account keys.
const ACCOUNT_PATTERN: &str = "orp:acct:*";
/// How often a waiting replica looks at a held lock again (announcements wake it earlier).
const LOCK_POLL: Duration = Duration::from_millis(100);
/// How often the subscriber pings its connection.
const SUBSCRIBER_PING: Duration = Duration::from_secs(2);
/// The subscriber's reconnect backoff.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a refreshed state that could not be written is retried in the background.
const PERSIST_LATER_FOR: Duration = Duration::from_secs(15 * 60);

/// Writes an account, never lowering its generation (`max(given, stored + 1)`), and announces
/// it. KEYS[1] account; ARGV: generation, data, channel, message. Returns the generation.
/// `store.encrypt_existing`, atomically: KEYS the accounts; ARGV pairs (data as read, sealed
/// data). 1 when all were replaced, 0 (nothing written) when any changed since it was read.
const SEAL_EXISTING_LUA: &str = r#"
for i, k in ipairs(KEYS) do
  if redis.call('HGET', k, 'data') ~= ARGV[2 * i - 1] then return 0 end
end
for i, k in ipairs(KEYS) do
  redis.call('HSET', k, 'data', ARGV[2 * i])
end
return 1
"#;

const SAVE_LUA: &str = r#"
local gen = tonumber(ARGV[1])
local cur = redis.call('HGET', KEYS[1], 'gen')
if cur and tonumber(cur) >= gen then gen = tonumber(cur) + 1 end
local g = string.format('%d', gen)
redis.call('HSET', KEYS[1], 'gen', g, 'data', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return g
"#;

/// The fenced write of a refresh result. KEYS[1] account, KEYS[2] lock; ARGV: expected
/// generation ('' = the key was absent), new generation, data, owner, channel, message.
/// Returns 1 when written, 0 when the stored generation moved on. Releases the lock if ours.
const COMMIT_LUA: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'gen')
local written = 0
if (not cur) or cur == ARGV[1] then
  redis.call('HSET', KEYS[1], 'gen', ARGV[2], 'data', ARGV[3])
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  written = 1
end
if redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
return written
"#;

/// KEYS[1] lock; ARGV: owner, ttl (ms). 1 when renewed, 0 when no longer ours.
const RENEW_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// KEYS[1] lock; ARGV: owner.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// KEYS[1] account; ARGV: channel, message.
const REMOVE_LUA: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"#;

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

/// An announcement on [`CHANNEL`].
#[derive(Serialize, Deserialize)]
struct Announcement {
    o: String,
    p: String,
    a: String,
}

/// The provider and account an account key names: `orp:acct:<provider>:<account>` (one node)
/// or `orp:acct:{<provider>:<account>}` (a cluster's hash-tagged form).
fn parse_account_key(key: &str) -> Option<(Provider, &str)> {
    let rest = key.strip_prefix("orp:acct:")?;
    let rest = match rest.strip_prefix('{') {
        Some(tagged) => tagged.strip_suffix('}')?,
        None => rest,
    };
    let (p, a) = rest.split_once(':')?;
    Some((p.parse().ok()?, a))
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
        let shown = |url: &str| match url.into_connection_info() {
            Ok(info) => info.addr().to_string(),
            Err(_) => "<invalid URL>".to_string(),
        };
        match self {
            RedisNodes::Single(url) => f.debug_tuple("Single").field(&shown(url)).finish(),
            RedisNodes::Cluster(urls) => f
                .debug_tuple("Cluster")
                .field(&urls.iter().map(|u| shown(u)).collect::<Vec<_>>())
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

/// Why CA certificates without a certificate in them are refused (they would trust nothing,
/// and every connection would fail as if the server's certificate were wrong).
pub const NO_PEM_CERTIFICATE: &str =
    "no PEM certificate (-----BEGIN CERTIFICATE-----) in the CA certificates";

/// Whether `pem` holds at least one PEM certificate block.
///
/// ```
/// use oauth_refresh_proxy::store::redis::has_pem_certificate;
///
/// assert!(has_pem_certificate(b"-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n"));
/// assert!(!has_pem_certificate(b"-----BEGIN PRIVATE KEY-----\nMIIE...\n-----END PRIVATE KEY-----\n"));
/// assert!(!has_pem_certificate(b"not a certificate"));
/// ```
pub fn has_pem_certificate(pem: &[u8]) -> bool {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let Some(begin) = pem.windows(BEGIN.len()).position(|w| w == BEGIN) else {
        return false;
    };
    pem[begin..].windows(END.len()).any(|w| w == END)
}

/// The command connection: one Redis (reconnecting by itself), or a cluster.
#[derive(Clone)]
enum Conn {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The key of `provider`/`account`'s `kind` (`acct` or `lock`): hash-tagged in a cluster, so
/// both keys of an account share one slot.
fn key_of(cluster: bool, kind: &str, provider: Provider, account: &str) -> String {
    if cluster {
        format!("orp:{kind}:{{{}:{account}}}", provider.as_str())
    } else {
        format!("orp:{kind}:{}:{account}", provider.as_str())
    }
}

fn random_id() -> String {
    format!(
        "{:016x}{:016x}-{}",
        fastrand::u64(..),
        fastrand::u64(..),
        std::process::id()
    )
}

fn unavailable(e: StoreError) -> RefreshError {
    RefreshError::transient(format!("token store unavailable: {}", e.0))
}

/// Whether `a`'s access token can be handed out (present, not known to be expired).
fn usable(a: &StoredAccount) -> bool {
    a.access_token.is_some() && !a.needs_reauth && a.expires_at.is_none_or(|t| t > now_secs())
}

/// A refresh lock held, and the state to refresh from.
struct Locked {
    lock: String,
    owner: String,
    /// The state to refresh from.
    base: StoredAccount,
    /// The fence: the stored generation read under the lock (`None`: no key).
    expected: Option<u64>,
}

/// What to do with the stored state before (or instead of) refreshing.
enum Decision {
    /// Someone else refreshed: return this state.
    Adopt(StoredAccount),
    /// The stored account is marked as needing re-authorisation.
    Rejected(RefreshError),
    /// Refresh from this state; the fence is the stored generation (`None`: no key).
    Refresh {
        base: StoredAccount,
        expected: Option<u64>,
    },
}

fn decide(current: &StoredAccount, stored: Option<StoredAccount>) -> Decision {
    match stored {
        Some(s) if s.generation >= current.generation => {
            if s.needs_reauth {
                return Decision::Rejected(s.rejection());
            }
            let other_tokens =
                s.access_token != current.access_token || s.refresh_token != current.refresh_token;
            if s.generation > current.generation && other_tokens && usable(&s) {
                return Decision::Adopt(s);
            }
            let expected = Some(s.generation);
            Decision::Refresh { base: s, expected }
        }
        // The cache is ahead of the store (or the store lost the account, e.g. a Redis
        // restarted without persistence): refresh from the cache's state.
        stored => Decision::Refresh {
            base: current.clone(),
            expected: stored.map(|s| s.generation),
        },
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[user:password@]host:port[/db]`, or `rediss://`
    /// for TLS against the system's roots). `lock_ttl` is how long a replica's refresh lock
    /// outlives the replica (see the [module documentation](self)).
    ///
    /// Fails with a clear error when the URL is invalid or Redis cannot be reached now; the
    /// error never contains the password.
    pub async fn connect(url: &str, lock_ttl: Duration) -> Result<RedisStore, StoreError> {
        RedisStore::connect_with(url, lock_ttl, None).await
    }

    /// Like [`connect`](RedisStore::connect), with the tokens sealed by `encryption` when given
    /// (encryption at rest; see [`Encryption`] for the rules). [`Store::load`] (start-up) fails,
    /// naming the store, on a record the keys cannot open, and writes nothing then; with
    /// [`Encryption::encrypt_existing`] it seals the records written with no key, all in one
    /// atomic script.
    pub async fn connect_with(
        url: &str,
        lock_ttl: Duration,
        encryption: Option<Encryption>,
    ) -> Result<RedisStore, StoreError> {
        let options = RedisOptions {
            encryption,
            ..RedisOptions::default()
        };
        RedisStore::open(RedisNodes::Single(url.to_string()), lock_ttl, options).await
    }

    /// Connects to one Redis or a Redis Cluster ([`RedisNodes`]), plain or TLS, with the
    /// [`RedisOptions`]. Fails with a clear one-line error, never containing a password, when
    /// a URL is invalid, TLS and plain URLs are mixed, CA certificates are given for plain
    /// URLs, or the store cannot be reached now (bounded: at most three command timeouts).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use oauth_refresh_proxy::store::redis::{RedisNodes, RedisOptions, RedisStore};
    ///
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let nodes = RedisNodes::Cluster(vec![
    ///     "rediss://10.0.0.1:7000".into(),
    ///     "rediss://10.0.0.2:7000".into(),
    /// ]);
    /// let options = RedisOptions {
    ///     ca_certificates: Some(std::fs::read("/etc/orp/redis-ca.pem")?),
    ///     ..RedisOptions::default()
    /// };
    /// let store = RedisStore::open(nodes, Duration::from_secs(30), options).await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub async fn open(
        nodes: RedisNodes,
        lock_ttl: Duration,
        options: RedisOptions,
    ) -> Result<RedisStore, StoreError> {
        if lock_ttl.is_zero() {
            return Err(StoreError("lock_ttl must be above zero".into()));
        }
        let (urls, cluster) = match &nodes {
            RedisNodes::Single(url) => (std::slice::from_ref(url), false),
            RedisNodes::Cluster(urls) => (urls.as_slice(), true),
        };
        if urls.is_empty() {
            return Err(StoreError(
                "a Redis Cluster needs at least one node URL".into(),
            ));
        }
        let mut infos = Vec::with_capacity(urls.len());
        for url in urls {
            infos.push(url.as_str().into_connection_info().map_err(|e| {
                StoreError(format!(
                    "not a valid Redis URL (redis://[user:password@]host:port[/db], or rediss:// \
                     for TLS): {e}"
                ))
            })?);
        }
        let tls = |i: &ConnectionInfo| matches!(i.addr(), ConnectionAddr::TcpTls { .. });
        let tls_nodes = infos.iter().filter(|i| tls(i)).count();
        if tls_nodes != 0 && tls_nodes != infos.len() {
            return Err(StoreError(
                "the cluster's node URLs mix rediss:// (TLS) and redis://".into(),
            ));
        }
        if let Some(pem) = &options.ca_certificates {
            if tls_nodes == 0 {
                return Err(StoreError(
                    "CA certificates are given but no URL is rediss:// (TLS)".into(),
                ));
            }
            if !has_pem_certificate(pem) {
                return Err(StoreError(NO_PEM_CERTIFICATE.into()));
            }
        }
        let addr = if cluster {
            let nodes: Vec<String> = infos.iter().map(|i| i.addr().to_string()).collect();
            format!("cluster {}", nodes.join(","))
        } else {
            format!("{}/{}", infos[0].addr(), infos[0].redis_settings().db())
        };
        let op_timeout = (lock_ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(2));
        let bad = |e: redis::RedisError| StoreError(format!("redis {addr}: {e}"));
        let certs = || TlsCertificates {
            client_tls: None,
            root_cert: options.ca_certificates.clone(),
        };
        let client = |info: ConnectionInfo| match options.ca_certificates {
            Some(_) => Client::build_with_tls(info, certs()),
            None => Client::open(info),
        };
        let mut subscribers = Vec::with_capacity(infos.len());
        for info in &infos {
            let resp3 = info.clone().set_redis_settings(
                info.redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3),
            );
            subscribers.push(client(resp3).map_err(bad)?);
        }
        let unreachable =
            |what: String| StoreError(format!("cannot reach Redis at {addr}: {what}"));
        let connecting = async {
            if cluster {
                let mut builder = ClusterClientBuilder::new(infos.clone())
                    .connection_timeout(op_timeout)
                    .response_timeout(op_timeout)
                    .retries(1);
                if options.ca_certificates.is_some() {
                    builder = builder.certs(certs());
                }
                let client = builder.build()?;
                client.get_async_connection().await.map(Conn::Cluster)
            } else {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(op_timeout))
                    .set_response_timeout(Some(op_timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                let client = client(infos[0].clone())?;
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map(Conn::One)
            }
        };
        let conn = match tokio::time::timeout(op_timeout * 3, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {:?}",
                    op_timeout * 3
                )))
            }
        };
        let store = RedisStore {
            stop: watch::channel(()).0,
            shared: Arc::new(Shared {
                conn,
                subscribers,
                addr: addr.clone(),
                lock_ttl,
                op_timeout,
                origin: random_id(),
                listening: AtomicBool::new(false),
                subscribed: AtomicBool::new(false),
                announced: watch::channel(0).0,
                codec: Codec::new(options.encryption),
                notes: std::sync::Mutex::new(None),
                save: Script::new(SAVE_LUA),
                commit: Script::new(COMMIT_LUA),
                renew: Script::new(RENEW_LUA),
                release: Script::new(RELEASE_LUA),
                remove: Script::new(REMOVE_LUA),
                seal_existing: Script::new(SEAL_EXISTING_LUA),
            }),
        };
        store
            .shared
            .ping()
            .await
            .map_err(|e| unreachable(e.0.clone()))?;
        tracing::info!(redis = %addr, ?lock_ttl, tls = tls_nodes != 0, "connected to the shared token store");
        Ok(store)
    }
}

impl RedisStore {
    /// Shares a note with the other replicas: `SET orp:note:{name} payload PX ttl` and a
    /// message on `orp:notes`, in one transaction, bounded like every command. The store does
    /// not interpret `payload`; a later note of the same `name` replaces it.
    pub async fn publish_note(
        &self,
        name: &str,
        payload: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let s = &self.shared;
        let mut c = s.conn.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(format!("orp:note:{name}"))
            .arg(payload)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("PUBLISH")
            .arg(NOTES_CHANNEL)
            .arg(format!("{} {payload}", s.origin))
            .ignore();
        s.op("publish note", pipe.query_async::<()>(&mut c)).await
    }

    /// The payloads of every note stored now (one's own included).
    pub async fn stored_notes(&self) -> Result<Vec<String>, StoreError> {
        self.shared.stored_notes().await
    }

    /// The payloads of the notes other replicas publish from now on, and after every
    /// (re)subscription of the subscriber every note still stored (see the
    /// [module documentation](self)). One consumer: a second call replaces the first.
    pub fn notes(&self) -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.shared.notes.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }
}

impl Shared {
    fn cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// The key of an account's `kind` (`acct`, `lock`) in this deployment's form.
    fn key(&self, kind: &str, provider: Provider, account: &str) -> String {
        key_of(self.cluster(), kind, provider, account)
    }

    fn account_key(&self, provider: Provider, account: &str) -> String {
        self.key("acct", provider, account)
    }

    /// Runs `cmd` for each of `keys` (all of them one key's command) and returns the answers in
    /// order: pipelined in chunks on one node; on a cluster, where a pipeline must stay in one
    /// slot, as separate commands, up to 64 at a time.
    async fn per_key<T>(
        &self,
        what: &str,
        keys: &[String],
        cmd: impl Fn(&str) -> redis::Cmd,
    ) -> Result<Vec<T>, StoreError>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        let mut out = Vec::with_capacity(keys.len());
        match &self.conn {
            Conn::One(_) => {
                for chunk in keys.chunks(256) {
                    let mut pipe = redis::pipe();
                    for k in chunk {
                        pipe.add_command(cmd(k));
                    }
                    let mut c = self.conn.clone();
                    let rows: Vec<T> = self.op(what, pipe.query_async(&mut c)).await?;
                    out.extend(rows);
                }
            }
            Conn::Cluster(_) => {
                for chunk in keys.chunks(64) {
                    let mut set = tokio::task::JoinSet::new();
                    for (i, k) in chunk.iter().enumerate() {
                        let (mut c, cmd) = (self.conn.clone(), cmd(k));
                        set.spawn(async move { (i, cmd.query_async::<T>(&mut c).await) });
                    }
                    let mut rows: Vec<Option<T>> = (0..chunk.len()).map(|_| None).collect();
                    let joined = self
                        .op(what, async {
                            while let Some(done) = set.join_next().await {
                                let (i, r) = done.map_err(|e| {
                                    redis::RedisError::from(std::io::Error::other(e.to_string()))
                                })?;
                                rows[i] = Some(r?);
                            }
                            Ok(())
                        })
                        .await;
                    joined?;
                    out.extend(rows.into_iter().flatten());
                }
            }
        }
        Ok(out)
    }

    /// Hands a note's payload to the consumer of [`RedisStore::notes`], if any.
    fn forward_note(&self, payload: String) {
        if let Some(tx) = self
            .notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = tx.send(payload);
        }
    }

    /// Forwards every stored note (after a (re)subscription: the ones missed meanwhile).
    async fn resync_notes(&self) -> Result<(), StoreError> {
        if self
            .notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return Ok(());
        }
        for note in self.stored_notes().await? {
            self.forward_note(note);
        }
        Ok(())
    }

    async fn stored_notes(&self) -> Result<Vec<String>, StoreError> {
        let keys = self.scan_keys("scan notes", NOTE_PATTERN).await?;
        let values: Vec<Option<String>> = self
            .per_key("read notes", &keys, |k| {
                let mut c = redis::cmd("GET");
                c.arg(k);
                c
            })
            .await?;
        Ok(values.into_iter().flatten().collect())
    }

    /// Runs one Redis operation, bounded by `op_timeout`.
    async fn op<T>(
        &self,
        what: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError(format!("redis {}: {what}: {e}", self.addr))),
            Err(_) => Err(StoreError(format!(
                "redis {}: {what}: no answer within {:?}",
                self.addr, self.op_timeout
            ))),
        }
    }

    /// `PING`, bounded; on a cluster, every primary that `CLUSTER SLOTS` names, each by its
    /// address (redis-rs's own fan-out skips nodes it has given up on, so a primary that is
    /// down would go unnoticed).
    async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = match &self.conn {
            Conn::One(c) => {
                self.op("PING", redis::cmd("PING").query_async(&mut c.clone()))
                    .await?
            }
            Conn::Cluster(c) => {
                for (host, port) in self.primaries().await? {
                    let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port,
                    });
                    let what = format!("PING {host}:{port}");
                    let value = self
                        .op(&what, c.clone().route_command(redis::cmd("PING"), to))
                        .await?;
                    let pong: String = redis::from_redis_value(value)
                        .map_err(|e| StoreError(format!("redis {}: {what}: {e}", self.addr)))?;
                    if pong != "PONG" {
                        return Err(StoreError(format!(
                            "redis {}: {what}: unexpected answer",
                            self.addr
                        )));
                    }
                }
                "PONG".to_string()
            }
        };
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError(format!(
                "redis {}: PING: unexpected answer",
                self.addr
            )))
        }
    }

    fn announcement(&self, provider: Provider, account: &str) -> String {
        serde_json::to_string(&Announcement {
            o: self.origin.clone(),
            p: provider.as_str().to_string(),
            a: account.to_string(),
        })
        .expect("an announcement serialises")
    }

    async fn read(
        &self,
        provider: Provider,
        account: &str,
    ) -> Result<Option<StoredAccount>, StoreError> {
        let mut c = self.conn.clone();
        let key = self.account_key(provider, account);
        let (gen, data): (Option<String>, Option<String>) = self
            .op(
                "read account",
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("gen")
                    .arg("data")
                    .query_async(&mut c),
            )
            .await?;
        match (gen, data) {
            (Some(g), Some(d)) => self
                .decode(&key, &g, &d)
                .map(|(a, _)| Some(a))
                .map_err(|e| StoreError(format!("redis {}: {key}: {e}", self.addr))),
            _ => Ok(None),
        }
    }

    /// Every key matching `pattern` (SCAN), sorted, without duplicates.
    async fn scan_keys(&self, what: &str, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut keys: Vec<String> = Vec::new();
        match &self.conn {
            Conn::One(_) => self.scan_node(what, pattern, None, &mut keys).await?,
            Conn::Cluster(_) => {
                for node in self.primaries().await? {
                    self.scan_node(what, pattern, Some(node), &mut keys).await?;
                }
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// `SCAN`s one node (`None`: the one node of a single Redis; else a cluster node's
    /// `(host, port)`) for `pattern`, appending to `keys`.
    async fn scan_node(
        &self,
        what: &str,
        pattern: &str,
        node: Option<(String, u16)>,
        keys: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500);
            let (next, batch): (u64, Vec<String>) = match (&node, &mut c) {
                (Some((host, port)), Conn::Cluster(cluster)) => {
                    let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    });
                    let value = self.op(what, cluster.route_command(scan, to)).await?;
                    redis::from_redis_value(value).map_err(|e| {
                        StoreError(format!("redis {}: {what}: {host}:{port}: {e}", self.addr))
                    })?
                }
                _ => self.op(what, scan.query_async(&mut c)).await?,
            };
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                return Ok(());
            }
        }
    }

    /// The cluster's primaries, `(host, port)`, as `CLUSTER SLOTS` names them.
    async fn primaries(&self) -> Result<Vec<(String, u16)>, StoreError> {
        let Conn::Cluster(cluster) = &self.conn else {
            return Ok(Vec::new());
        };
        let what = "list the cluster's primaries";
        let value = self
            .op(
                what,
                cluster.clone().route_command(
                    redis::cmd("CLUSTER").arg("SLOTS").clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                ),
            )
            .await?;
        let malformed = |e: String| {
            StoreError(format!(
                "redis {}: {what}: unexpected answer: {e}",
                self.addr
            ))
        };
        let ranges: Vec<Vec<Value>> =
            redis::from_redis_value(value).map_err(|e| malformed(e.to_string()))?;
        let mut nodes = Vec::new();
        for range in ranges {
            // [start, end, [host, port, id, …], replicas…]
            let primary = range
                .into_iter()
                .nth(2)
                .ok_or_else(|| malformed("a slot range without a primary".into()))?;
            let fields: Vec<Value> =
                redis::from_redis_value(primary).map_err(|e| malformed(e.to_string()))?;
            let mut fields = fields.into_iter();
            let (Some(host), Some(port)) = (fields.next(), fields.next()) else {
                return Err(malformed("a primary without host and port".into()));
            };
            let host: String =
                redis::from_redis_value(host).map_err(|e| malformed(e.to_string()))?;
            let port: u16 = redis::from_redis_value(port).map_err(|e| malformed(e.to_string()))?;
            nodes.push((host, port));
        }
        nodes.sort();
        nodes.dedup();
        Ok(nodes)
    }

    async fn load(&self) -> Result<Vec<StoredAccount>, StoreError> {
        let keys = self.scan_keys("scan accounts", ACCOUNT_PATTERN).await?;
        let mut out = Vec::with_capacity(keys.len());
        let mut clear = Vec::new();
        for chunk in keys.chunks(256) {
            let rows: Vec<(Option<String>, Option<String>)> = self
                .per_key("load accounts", chunk, |k| {
                    let mut c = redis::cmd("HMGET");
                    c.arg(k).arg("gen").arg("data");
                    c
                })
                .await?;
            for (k, row) in chunk.iter().zip(rows) {
                if let (Some(g), Some(d)) = row {
                    match self.decode(k, &g, &d) {
                        Ok((a, Sealing::Clear)) if self.codec.encrypted() => {
                            clear.push((k.clone(), d, self.codec.encode(&a, false)));
                            out.push(a);
                        }
                        Ok((a, _)) => out.push(a),
                        // The configured keys cannot open it: a start-up error, nothing written.
                        Err(RecordError::Sealing(e)) => {
                            return Err(StoreError(format!("redis {}: {k}: {e}", self.addr)))
                        }
                        Err(RecordError::Malformed(e)) => {
                            tracing::warn!(key = %k, error = %e, "skipping an unreadable stored account")
                        }
                    }
                }
            }
        }
        if !clear.is_empty() {
            self.seal_existing(&clear).await?;
        }
        Ok(out)
    }

    /// Opens the record stored under `key` (generation `gen`, record `data`).
    fn decode(
        &self,
        key: &str,
        gen: &str,
        data: &str,
    ) -> Result<(StoredAccount, Sealing), RecordError> {
        let generation = gen
            .parse::<u64>()
            .map_err(|_| RecordError::Malformed("generation is not a number".into()))?;
        let under = parse_account_key(key)
            .ok_or_else(|| RecordError::Malformed("not an account key".into()))?;
        self.codec
            .decode(under, data.as_bytes(), Generation::Beside(generation))
    }

    /// `store.encrypt_existing`: replaces the records written with no key (`(key, as read,
    /// sealed)`) by their sealed form in one atomic script, which writes nothing if any of them
    /// changed since it was read.
    async fn seal_existing(&self, clear: &[(String, String, Vec<u8>)]) -> Result<(), StoreError> {
        // One script for all on one node; one per account on a cluster (one slot a script).
        let batches: Vec<&[(String, String, Vec<u8>)]> = if self.cluster() {
            clear.chunks(1).collect()
        } else {
            vec![clear]
        };
        for batch in batches {
            let mut c = self.conn.clone();
            let mut inv = self.seal_existing.prepare_invoke();
            for (k, old, new) in batch {
                inv.key(k).arg(old).arg(new.as_slice());
            }
            let n: i64 = self
                .op("encrypt existing records", inv.invoke_async(&mut c))
                .await?;
            if n != 1 {
                return Err(StoreError(format!(
                    "redis {}: encrypt existing records: another writer changed them meanwhile; \
                     nothing more was written, start again",
                    self.addr
                )));
            }
        }
        tracing::info!(redis = %self.addr, accounts = clear.len(),
            "encrypted the token store's records written with no key (store.encrypt_existing)");
        Ok(())
    }

    async fn save(&self, account: &StoredAccount) -> Result<u64, StoreError> {
        let mut c = self.conn.clone();
        let g: String = self
            .op(
                "save account",
                self.save
                    .key(self.account_key(account.provider, &account.account))
                    .arg(account.generation)
                    .arg(self.codec.encode(account, false))
                    .arg(CHANNEL)
                    .arg(self.announcement(account.provider, &account.account))
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(g.parse().unwrap_or(account.generation))
    }

    /// Tries to take the lock; `true` when taken.
    async fn lock(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let ok: Option<String> = self
            .op(
                "take refresh lock",
                redis::cmd("SET")
                    .arg(key)
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.lock_ttl.as_millis() as u64)
                    .query_async(&mut c),
            )
            .await?;
        Ok(ok.is_some())
    }

    /// `SET orp:claim:{key} {origin} NX PX ttl`: `true` when this call set it.
    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let ok: Option<String> = self
            .op(
                "claim",
                redis::cmd("SET")
                    .arg(format!("{CLAIM_PREFIX}{key}"))
                    .arg(&self.origin)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64)
                    .query_async(&mut c),
            )
            .await?;
        Ok(ok.is_some())
    }

    async fn renew(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let n: i64 = self
            .op(
                "renew refresh lock",
                self.renew
                    .key(key)
                    .arg(owner)
                    .arg(self.lock_ttl.as_millis() as u64)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(n == 1)
    }

    async fn release(&self, key: &str, owner: &str) {
        let mut c = self.conn.clone();
        let r: Result<i64, _> = self
            .op(
                "release refresh lock",
                self.release.key(key).arg(owner).invoke_async(&mut c),
            )
            .await;
        if let Err(e) = r {
            // It expires by itself after lock_ttl.
            tracing::warn!(error = %e, "could not release a refresh lock");
        }
    }

    /// The fenced write of `next`; `true` when written.
    async fn commit(
        &self,
        lock: &str,
        owner: &str,
        expected: Option<u64>,
        next: &StoredAccount,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let n: i64 = self
            .op(
                "write refreshed account",
                self.commit
                    .key(self.account_key(next.provider, &next.account))
                    .key(lock)
                    .arg(expected.map(|g| g.to_string()).unwrap_or_default())
                    .arg(next.generation)
                    .arg(self.codec.encode(next, false))
                    .arg(owner)
                    .arg(CHANNEL)
                    .arg(self.announcement(next.provider, &next.account))
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(n == 1)
    }

    async fn remove(&self, provider: Provider, account: &str) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let _: i64 = self
            .op(
                "remove account",
                self.remove
                    .key(self.account_key(provider, account))
                    .arg(CHANNEL)
                    .arg(self.announcement(provider, account))
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(())
    }

    /// How long a refresh waits for other replicas' locks in total.
    fn wait_bound(&self) -> Duration {
        self.lock_ttl * 2 + Duration::from_secs(5)
    }

    /// See the module documentation, "Refresh".
    async fn refresh(self: &Arc<Self>, current: StoredAccount, refresh: RefreshFn) -> StoreRefresh {
        match self.lock_or_adopt(&current).await {
            Err(without_call) => StoreRefresh::not_made(without_call),
            Ok(locked) => StoreRefresh::made(self.refresh_locked(locked, refresh).await),
        }
    }

    /// Steps 1 to 3 of a refresh: adopts another replica's result, or takes the lock and reads
    /// the fence. `Err` holds the refresh's outcome when no refresher call is to be made.
    async fn lock_or_adopt(
        &self,
        current: &StoredAccount,
    ) -> Result<Locked, Result<StoredAccount, RefreshError>> {
        let (provider, account) = (current.provider, current.account.clone());
        let lock = self.key("lock", provider, &account);
        let owner = random_id();
        let deadline = Instant::now() + self.wait_bound();
        let mut announced = self.announced.subscribe();
        let mut waited = false;
        loop {
            // 1. Did someone else refresh already?
            let stored = self
                .read(provider, &account)
                .await
                .map_err(|e| Err(unavailable(e)))?;
            match decide(current, stored) {
                Decision::Adopt(s) => {
                    tracing::debug!(%provider, account = %account, generation = s.generation, "another replica refreshed; adopting its tokens");
                    return Err(Ok(s));
                }
                Decision::Rejected(e) => return Err(Err(e)),
                Decision::Refresh { .. } => {}
            }
            // 2. The lock.
            match self.lock(&lock, &owner).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    // The SET may have landed without its answer: do not leave the lock behind.
                    self.release(&lock, &owner).await;
                    return Err(Err(unavailable(e)));
                }
            }
            if !waited {
                tracing::debug!(%provider, account = %account, "another replica is refreshing; waiting for it");
                waited = true;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Err(RefreshError::transient(format!(
                    "another replica's refresh did not finish within {:?}",
                    self.wait_bound()
                ))));
            }
            let pause = LOCK_POLL.min(deadline - now);
            tokio::select! {
                _ = announced.changed() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        // 3. Lock held: the fence read.
        let stored = match self.read(provider, &account).await {
            Ok(s) => s,
            Err(e) => {
                self.release(&lock, &owner).await;
                return Err(Err(unavailable(e)));
            }
        };
        let (base, expected) = match decide(current, stored) {
            Decision::Adopt(s) => {
                self.release(&lock, &owner).await;
                return Err(Ok(s));
            }
            Decision::Rejected(e) => {
                self.release(&lock, &owner).await;
                return Err(Err(e));
            }
            Decision::Refresh { base, expected } => (base, expected),
        };
        Ok(Locked {
            lock,
            owner,
            base,
            expected,
        })
    }

    /// Step 4 of a refresh, the lock held: calls the refresher and writes its result fenced by
    /// the generation read under the lock.
    async fn refresh_locked(
        self: &Arc<Self>,
        locked: Locked,
        refresh: RefreshFn,
    ) -> Result<StoredAccount, RefreshError> {
        let Locked {
            lock,
            owner,
            base,
            expected,
        } = locked;
        let (provider, account) = (base.provider, base.account.clone());
        tracing::debug!(%provider, account = %account, generation = base.generation, "holding the refresh lock; refreshing");
        let result = self
            .run_renewing(&lock, &owner, refresh(base.refresh_token.clone()))
            .await;
        if let Err(e) = &result {
            if !e.is_rejected() {
                // A transient or unconfirmed failure changes nothing stored: release only.
                self.release(&lock, &owner).await;
                return Err(e.clone());
            }
        }
        // 4. The fenced write.
        let next = base.after_refresh(&result, now_secs());
        let mut last_err = None;
        for attempt in 0..3u32 {
            match self.commit(&lock, &owner, expected, &next).await {
                Ok(true) => return result.map(|_| next),
                Ok(false) => return self.resolve_conflict(&next, result).await,
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
            }
        }
        let e = last_err.expect("three failed attempts");
        if result.is_err() {
            // A rejection that could not be recorded: the next refresh asks again.
            self.release(&lock, &owner).await;
            return result.map(|_| next);
        }
        tracing::error!(%provider, account = %account, error = %e,
            "refreshed tokens could not be written to the shared store; kept in memory, retrying in the background");
        self.persist_later(lock, owner, expected, next.clone());
        Ok(next)
    }

    /// Runs the refresher, renewing the lock every `lock_ttl / 3` while it runs.
    async fn run_renewing(
        &self,
        lock: &str,
        owner: &str,
        refresh: BoxFuture<'static, Result<Refreshed, RefreshError>>,
    ) -> Result<Refreshed, RefreshError> {
        let period = (self.lock_ttl / 3).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(refresh);
        loop {
            tokio::select! {
                r = &mut refresh => return r,
                _ = tick.tick() => match self.renew(lock, owner).await {
                    Ok(true) => {}
                    // The generation fence still keeps the stored state consistent.
                    Ok(false) => tracing::warn!("the refresh lock expired while refreshing"),
                    Err(e) => tracing::warn!(error = %e, "could not renew the refresh lock"),
                },
            }
        }
    }

    /// The stored generation moved on while we refreshed: the stored state wins.
    async fn resolve_conflict(
        &self,
        next: &StoredAccount,
        result: Result<Refreshed, RefreshError>,
    ) -> Result<StoredAccount, RefreshError> {
        let stored = self
            .read(next.provider, &next.account)
            .await
            .map_err(unavailable)?;
        match stored {
            // Our own write, whose answer was lost.
            Some(s) if s.generation == next.generation && s.refresh_token == next.refresh_token => {
                result.map(|_| next.clone())
            }
            Some(s) if s.needs_reauth => Err(s.rejection()),
            Some(s) if usable(&s) => {
                tracing::warn!(provider = %next.provider, account = %next.account, generation = s.generation,
                    "the account changed in the shared store during the refresh; the stored tokens win");
                Ok(s)
            }
            _ => match result {
                Err(e) => Err(e),
                Ok(_) => Err(RefreshError::transient(
                    "the account changed in the shared store during the refresh",
                )),
            },
        }
    }

    /// Keeps trying the fenced write of a successful refresh until it lands, the stored
    /// generation moved on, the store is dropped, or [`PERSIST_LATER_FOR`] passed.
    fn persist_later(
        self: &Arc<Self>,
        lock: String,
        owner: String,
        expected: Option<u64>,
        next: StoredAccount,
    ) {
        let weak: Weak<Shared> = Arc::downgrade(self);
        tokio::spawn(async move {
            let until = Instant::now() + PERSIST_LATER_FOR;
            let mut pause = Duration::from_millis(250);
            while Instant::now() < until {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                let Some(shared) = weak.upgrade() else { return };
                match shared.commit(&lock, &owner, expected, &next).await {
                    Ok(true) => {
                        tracing::info!(provider = %next.provider, account = %next.account, "refreshed tokens written to the shared store");
                        return;
                    }
                    Ok(false) => {
                        tracing::warn!(provider = %next.provider, account = %next.account, "the shared store moved on before the refreshed tokens could be written");
                        return;
                    }
                    Err(_) => {}
                }
            }
            tracing::error!(provider = %next.provider, account = %next.account, "gave up writing refreshed tokens to the shared store");
        });
    }

    /// The subscriber: (re)connects, subscribes, re-syncs, forwards other replicas' changes.
    async fn listen(
        self: Arc<Self>,
        tx: mpsc::UnboundedSender<StoreUpdate>,
        mut stop: watch::Receiver<()>,
    ) {
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u32;
        loop {
            let outcome = tokio::select! {
                r = self.listen_once(&tx, failures) => r,
                _ = tx.closed() => return,
                _ = stop.changed() => return,
            };
            let was_subscribed = self.subscribed.swap(false, Ordering::SeqCst);
            if was_subscribed {
                backoff = BACKOFF_MIN;
                failures = 0;
            }
            match outcome {
                Ok(()) => return, // the receiver is gone
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(redis = %self.addr, error = %e, "store subscriber disconnected; reconnecting");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = tx.closed() => return,
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One subscriber connection's life. `Ok` when the receiver is gone, `Err` on any failure.
    /// `failures`: how many connections failed in a row before this one.
    async fn listen_once(
        &self,
        tx: &mpsc::UnboundedSender<StoreUpdate>,
        failures: u32,
    ) -> Result<(), String> {
        let (push_tx, mut pushes) = mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.op_timeout))
            .set_response_timeout(Some(self.op_timeout))
            .set_push_sender(push_tx);
        let mut conn: MultiplexedConnection = self
            .op(
                "connect subscriber",
                self.subscribers[failures as usize % self.subscribers.len()]
                    .get_multiplexed_async_connection_with_config(&config),
            )
            .await
            .map_err(|e| e.0)?;
        self.op("subscribe", conn.subscribe(&[CHANNEL, NOTES_CHANNEL]))
            .await
            .map_err(|e| e.0)?;
        // Re-sync: whatever changed while we were not subscribed.
        let all = self.load().await.map_err(|e| e.0)?;
        if failures > 0 {
            tracing::info!(redis = %self.addr, accounts = all.len(), "store subscriber reconnected; re-synced");
        } else {
            tracing::debug!(redis = %self.addr, accounts = all.len(), "store subscriber subscribed");
        }
        for a in all {
            if tx.send(StoreUpdate::Changed(a)).is_err() {
                return Ok(());
            }
        }
        self.resync_notes().await.map_err(|e| e.0)?;
        self.subscribed.store(true, Ordering::SeqCst);
        self.announced.send_modify(|n| *n += 1);
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + SUBSCRIBER_PING,
            SUBSCRIBER_PING,
        );
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else { return Err("subscriber connection closed".into()) };
                    if push.kind == PushKind::Disconnection {
                        return Err("subscriber connection closed".into());
                    }
                    let Some(msg) = Msg::from_push_info(push) else { continue };
                    if msg.get_channel_name() == NOTES_CHANNEL {
                        let payload = String::from_utf8_lossy(msg.get_payload_bytes());
                        if let Some((origin, note)) = payload.split_once(' ') {
                            if origin != self.origin {
                                self.forward_note(note.to_string());
                            }
                        }
                        continue;
                    }
                    self.announced.send_modify(|n| *n += 1);
                    if let Some(update) = self.on_message(&msg).await? {
                        if tx.send(update).is_err() {
                            return Ok(());
                        }
                    }
                }
                _ = ping.tick() => {
                    let _: String = self
                        .op("ping subscriber", redis::cmd("PING").query_async(&mut conn))
                        .await
                        .map_err(|e| e.0)?;
                }
            }
        }
    }

    /// The update an announcement stands for; `None` for our own or a malformed one.
    async fn on_message(&self, msg: &Msg) -> Result<Option<StoreUpdate>, String> {
        let Ok(a) = serde_json::from_slice::<Announcement>(msg.get_payload_bytes()) else {
            return Ok(None);
        };
        if a.o == self.origin {
            return Ok(None);
        }
        let Ok(provider) = a.p.parse::<Provider>() else {
            return Ok(None);
        };
        // A failed read ends this connection: the reconnect re-syncs everything.
        Ok(Some(
            match self.read(provider, &a.a).await.map_err(|e| e.0)? {
                Some(s) => StoreUpdate::Changed(s),
                None => StoreUpdate::Removed {
                    provider,
                    account: a.a,
                },
            },
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Secret;

    fn account(generation: u64, access: &str, refresh: &str) -> StoredAccount {
        let mut a = StoredAccount::new(Provider::GitHub, "octo", Secret::new(refresh));
        a.access_token = Some(Secret::new(access));
        a.generation = generation;
        a
    }

    #[test]
    fn records_round_trip_without_debug_leaks() {
        let mut a = account(7, "ghu_1", "ghr_1");
        a.expires_at = Some(1_800_000_000);
        a.seed_fingerprint = Some("ab".into());
        a.last_error = Some(RefreshError::transient("x"));
        let codec = Codec::new(None);
        let key = key_of(false, "acct", a.provider, &a.account);
        let under = parse_account_key(&key).unwrap();
        assert_eq!(key, "orp:acct:github:octo");
        let tagged = key_of(true, "acct", a.provider, &a.account);
        assert_eq!(tagged, "orp:acct:{github:octo}");
        assert_eq!(parse_account_key(&tagged), Some(under));
        assert_eq!(
            key_of(true, "lock", a.provider, "a}b"),
            "orp:lock:{github:a}b}"
        );
        assert_eq!(
            parse_account_key("orp:acct:{github:a}b}"),
            Some((Provider::GitHub, "a}b"))
        );
        let data = codec.encode(&a, false);
        let (back, _) = codec.decode(under, &data, Generation::Beside(7)).unwrap();
        assert_eq!(back, a);
        assert!(codec.decode(under, b"{", Generation::Beside(1)).is_err());
        assert!(parse_account_key("orp:lock:github:octo").is_none());
        assert_eq!(
            parse_account_key("orp:acct:google:a:b"),
            Some((Provider::Google, "a:b"))
        );
    }

    #[test]
    fn decisions() {
        let cur = account(3, "ghu_a", "ghr_a");
        // Newer generation with other tokens: adopt.
        assert!(matches!(
            decide(&cur, Some(account(4, "ghu_b", "ghr_b"))),
            Decision::Adopt(_)
        ));
        // Same generation: refresh from the stored state, fenced on it.
        assert!(matches!(
            decide(&cur, Some(account(3, "ghu_a", "ghr_a"))),
            Decision::Refresh {
                expected: Some(3),
                ..
            }
        ));
        // Renumbered only (same tokens): refresh, fenced on the stored generation.
        assert!(matches!(
            decide(&cur, Some(account(5, "ghu_a", "ghr_a"))),
            Decision::Refresh {
                expected: Some(5),
                ..
            }
        ));
        // Stored is older, or missing: refresh from the cache.
        match decide(&cur, Some(account(1, "ghu_z", "ghr_z"))) {
            Decision::Refresh { base, expected } => {
                assert_eq!((base.generation, expected), (3, Some(1)))
            }
            _ => panic!("expected a refresh"),
        }
        assert!(matches!(
            decide(&cur, None),
            Decision::Refresh { expected: None, .. }
        ));
        // Marked as needing re-authorisation: rejected without a call.
        let mut dead = account(3, "ghu_a", "ghr_a");
        dead.needs_reauth = true;
        dead.last_error = Some(RefreshError::rejected("bad_refresh_token"));
        match decide(&cur, Some(dead)) {
            Decision::Rejected(RefreshError::Rejected(r)) => assert_eq!(r, "bad_refresh_token"),
            _ => panic!("expected a rejection"),
        }
        // Newer but expired: refresh from it rather than adopt.
        let mut expired = account(4, "ghu_b", "ghr_b");
        expired.expires_at = Some(1);
        assert!(matches!(
            decide(&cur, Some(expired)),
            Decision::Refresh {
                expected: Some(4),
                ..
            }
        ));
    }
}
