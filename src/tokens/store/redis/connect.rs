//! Opening the store: the node URLs (`redis://`, `rediss://` for TLS, never mixed), the CA
//! certificates trusted for TLS, the command connection (one Redis through a reconnecting
//! [`ConnectionManager`], or a cluster), the subscriber's RESP3 clients, and the first `PING`.
//! Every failure here is one line that never contains a password; connecting is bounded by
//! three command timeouts.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, RedisFuture,
    Script, TlsCertificates, Value,
};
use tokio::sync::watch;

use super::accounts::{REMOVE_LUA, SAVE_LUA, SEAL_EXISTING_LUA};
use super::refresh::{COMMIT_LUA, RELEASE_LUA, RENEW_LUA};
use super::{random_id, RedisNodes, RedisOptions, RedisStore, Shared};
use crate::tokens::store::record::{Codec, Encryption};
use crate::tokens::store::StoreError;

/// The address (`host:port`) a node URL names, for `Debug` and logs: never its password.
pub(super) fn shown_url(url: &str) -> String {
    match url.into_connection_info() {
        Ok(info) => info.addr().to_string(),
        Err(_) => "<invalid URL>".to_string(),
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
pub(super) enum Conn {
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

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[user:password@]host:port[/db]`, or `rediss://`
    /// for TLS against the system's roots). `lock_ttl` is how long a replica's refresh lock
    /// outlives the replica (see the [module documentation](super)).
    ///
    /// Fails with a clear error when the URL is invalid or Redis cannot be reached now; the
    /// error never contains the password.
    pub async fn connect(url: &str, lock_ttl: Duration) -> Result<RedisStore, StoreError> {
        RedisStore::connect_with(url, lock_ttl, None).await
    }

    /// Like [`connect`](RedisStore::connect), with the tokens sealed by `encryption` when given
    /// (encryption at rest; see [`Encryption`] for the rules).
    /// [`Store::load`](crate::store::Store::load) (start-up) fails, naming the store, on a
    /// record the keys cannot open, and writes nothing then; with
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
