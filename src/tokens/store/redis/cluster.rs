//! Commands that reach every node, or one key at a time: listings (`SCAN`), reads of many
//! keys, and `PING`. On one Redis they go to its one node (many keys pipelined); on a cluster
//! each primary that `CLUSTER SLOTS` names is asked in turn, and many keys are read one command
//! each, since a pipeline must stay in one slot.

use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::Value;

use super::connect::Conn;
use super::Shared;
use crate::tokens::store::StoreError;

/// A cluster node, `(host, port)`.
type Node = (String, u16);

/// The routing of a command to the node at `host:port`.
fn at_node(host: &str, port: u16) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
        host: host.to_string(),
        port,
    })
}

impl Shared {
    /// Runs `cmd` for each of `keys` (all of them one key's command) and returns the answers in
    /// order: pipelined in chunks on one node; on a cluster, where a pipeline must stay in one
    /// slot, as separate commands, up to 64 at a time.
    pub(super) async fn per_key<T>(
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

    /// `PING`, bounded; on a cluster, every primary that `CLUSTER SLOTS` names, each by its
    /// address (redis-rs's own fan-out skips nodes it has given up on, so a primary that is
    /// down would go unnoticed).
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let Conn::Cluster(c) = &self.conn else {
            let pong: String = self.query("PING", &redis::cmd("PING")).await?;
            return self.expect_pong("PING", &pong);
        };
        for (host, port) in self.primaries().await? {
            let what = format!("PING {host}:{port}");
            let to = at_node(&host, port);
            let value = self
                .op(&what, c.clone().route_command(redis::cmd("PING"), to))
                .await?;
            let pong: String = redis::from_redis_value(value).map_err(|e| self.error(&what, e))?;
            self.expect_pong(&what, &pong)?;
        }
        Ok(())
    }

    fn expect_pong(&self, what: &str, answer: &str) -> Result<(), StoreError> {
        if answer == "PONG" {
            Ok(())
        } else {
            Err(self.error(what, "unexpected answer"))
        }
    }

    /// Every key matching `pattern` (SCAN), sorted, without duplicates.
    pub(super) async fn scan_keys(
        &self,
        what: &str,
        pattern: &str,
    ) -> Result<Vec<String>, StoreError> {
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
        node: Option<Node>,
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
                    let to = at_node(host, *port);
                    let value = self.op(what, cluster.route_command(scan, to)).await?;
                    redis::from_redis_value(value)
                        .map_err(|e| self.error(what, format_args!("{host}:{port}: {e}")))?
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
    async fn primaries(&self) -> Result<Vec<Node>, StoreError> {
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
        let malformed = |e: String| self.error(what, format_args!("unexpected answer: {e}"));
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
}
