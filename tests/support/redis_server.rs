//! A real `redis-server` for the shared-store tests, started on a free loopback port
//! (`--save "" --appendonly no`) and killed on drop; skipped with a note on stderr when
//! `redis-server` is not on `PATH` (a failure under `CI=true`).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::process::{drain, spawn_piped, text, wait_or_kill};
use super::{skip_unless_ci, WAIT};

// ---------------------------------------------------------------------------------------------

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `name` on `PATH`, or `None` after [`skip_unless_ci`] printed why `test` is skipped (on the
/// process's stderr, so a plain `cargo test` shows it); under `CI=true` a missing tool is a
/// failure, not a skip (.ci/run installs Redis).
fn tool_or_skip(test: &str, name: &str, package: &str) -> Option<PathBuf> {
    let found = find_on_path(name);
    let reason = found.is_none().then(|| format!("{name} not found on PATH"));
    let install =
        format!("install Redis, e.g. `apt-get install {package}`, to run the shared-store tests");
    let test = format!("{}::{test}", env!("CARGO_CRATE_NAME"));
    if skip_unless_ci(&test, reason, &install) {
        return None;
    }
    found
}

/// The `redis-server` binary, or `None` after printing why the test is skipped. Under
/// `CI=true` a missing `redis-server` is a failure, not a skip.
pub fn redis_server_or_skip(test: &str) -> Option<PathBuf> {
    tool_or_skip(test, "redis-server", "redis-server")
}

pub struct RedisServer {
    bin: PathBuf,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free loopback port; `None` when skipped.
    pub fn start(test: &str) -> Option<RedisServer> {
        let bin = redis_server_or_skip(test)?;
        let dir = unique_dir("redis");
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                bin: bin.clone(),
                port,
                dir: dir.clone(),
                child: None,
            };
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Starts the process on `self.port`; `false` if it exited (port taken).
    pub fn spawn(&mut self) -> bool {
        let port = self.port;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &self.dir.display().to_string()]);
        self.child = spawn_answering(&mut cmd, "redis-server", || ping(port));
        self.child.is_some()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        assert!(self.spawn(), "redis-server could not restart on its port");
    }

    /// A plain connection for the test's own look at the data.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Spawns `cmd` (no stdin, output discarded) and polls every 10 ms until `answers()`: the
/// child then, `None` if it exited first (a port taken). Past `WAIT` it is killed and this
/// panics, naming `what`.
fn spawn_answering(
    cmd: &mut Command,
    what: &str,
    mut answers: impl FnMut() -> bool,
) -> Option<Child> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let deadline = Instant::now() + WAIT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        if answers() {
            return Some(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not answer within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills (SIGKILL) and reaps `child`, if any.
fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn ping(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

// ---------------------------------------------------------------------------------------------
// redis-cli
// ---------------------------------------------------------------------------------------------

/// `redis-server` and `redis-cli`, or `None` after printing why the test is skipped (like
/// [`redis_server_or_skip`]; a failure under `CI=true`).
pub fn redis_tools_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    let server = redis_server_or_skip(test)?;
    let cli = tool_or_skip(test, "redis-cli", "redis-tools")?;
    Some((server, cli))
}

/// Runs `redis-cli ARGS…` to its end, at most `bound` (killed past it): (exited 0, stdout +
/// stderr). `None` when it had to be killed.
pub fn try_redis_cli<S: AsRef<str> + std::fmt::Debug>(
    args: &[S],
    bound: Duration,
) -> Option<(bool, String)> {
    let mut child = spawn_piped(Command::new("redis-cli").args(args.iter().map(|a| a.as_ref())));
    let (out, out_done) = drain(child.stdout.take().unwrap());
    let (err, err_done) = drain(child.stderr.take().unwrap());
    let status = wait_or_kill(&mut child, bound);
    out_done.join().unwrap();
    err_done.join().unwrap();
    let text = text(&out) + &text(&err);
    status.map(|s| (s.success(), text))
}

/// `redis-cli ARGS…`, bounded by `WAIT`; asserts it exits 0 and does not answer an error;
/// returns its output, trimmed.
pub fn redis_cli<S: AsRef<str> + std::fmt::Debug>(args: &[S]) -> String {
    let (ok, text) = try_redis_cli(args, WAIT)
        .unwrap_or_else(|| panic!("redis-cli {args:?} did not exit within {WAIT:?}"));
    assert!(ok, "redis-cli {args:?}: {text}");
    let text = text.trim().to_string();
    for prefix in [
        "ERR",
        "MOVED",
        "ASK",
        "CLUSTERDOWN",
        "WRONGTYPE",
        "NOAUTH",
        "(error)",
    ] {
        assert!(!text.starts_with(prefix), "redis-cli {args:?}: {text}");
    }
    text
}

/// Polls `cond` every 20 ms until it holds, at most until `deadline` (then panics, saying
/// `what` and the last `detail`).
fn poll_until(what: &str, deadline: Instant, mut cond: impl FnMut() -> Result<(), String>) {
    loop {
        let detail = match cond() {
            Ok(()) => return,
            Err(d) => d,
        };
        assert!(Instant::now() < deadline, "waited for {what}: {detail}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unique_dir(kind: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "orp-{kind}-test-{}-{}-{}",
        env!("CARGO_CRATE_NAME"),
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// A test CA (`is_ca`, unconstrained) and a server certificate it signed for `127.0.0.1` and
/// `localhost`, all PEM.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestPki {
    pub fn new(name: &str) -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("orp test CA {name}"));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &issuer).unwrap();
        TestPki {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A real `redis-server` speaking only TLS (`--port 0 --tls-port P`, clients not
/// authenticated by certificate) with a certificate of a CA made for the test; killed on drop,
/// its directory removed.
pub struct RedisTlsServer {
    bin: PathBuf,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    pki: TestPki,
}

impl RedisTlsServer {
    /// Starts a TLS server on a free loopback port; `None` when skipped.
    pub fn start(test: &str) -> Option<RedisTlsServer> {
        let (bin, _) = redis_tools_or_skip(test)?;
        let dir = unique_dir("redis-tls");
        let pki = TestPki::new(test);
        std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(dir.join("server.pem"), &pki.cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), &pki.key_pem).unwrap();
        let mut server = RedisTlsServer {
            bin,
            port: 0,
            dir,
            child: None,
            pki,
        };
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("could not start a TLS redis-server on a free port");
    }

    /// Starts the process on `self.port`; `false` if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let file = |n: &str| self.dir.join(n).display().to_string();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--port", "0"])
            .args(["--tls-port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--tls-cert-file", &file("server.pem")])
            .args(["--tls-key-file", &file("server.key")])
            .args(["--tls-ca-cert-file", &file("ca.pem")])
            .args(["--tls-auth-clients", "no"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &self.dir.display().to_string()]);
        let ping = self.cli_args(&["PING"]);
        self.child = spawn_answering(
            &mut cmd,
            "the TLS redis-server",
            || matches!(try_redis_cli(&ping, WAIT), Some((true, out)) if out.trim() == "PONG"),
        );
        self.child.is_some()
    }

    fn cli_args(&self, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--tls".into(),
            "--cacert".into(),
            self.ca_path().display().to_string(),
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// `redis-cli --tls --cacert ca.pem -p PORT ARGS…` (see [`redis_cli`]).
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(&self.cli_args(args))
    }

    /// `rediss://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the server's certificate, as a PEM file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA that signed the server's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same port, with the same certificate.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        assert!(
            self.spawn(),
            "the TLS redis-server could not restart on its port"
        );
    }
}

impl Drop for RedisTlsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

struct ClusterNode {
    port: u16,
    /// `--cluster-port` (the bus): chosen free too, as `port + 10000` may not exist.
    bus_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports, each with its own
/// directory, `nodes.conf` and AOF (`appendfsync always`), so that a node killed and
/// restarted comes back with its slots and its data. Killed on drop, directories removed.
pub struct RedisCluster {
    bin: PathBuf,
    dir: PathBuf,
    nodes: Vec<ClusterNode>,
    extra: Vec<String>,
}

/// The number of masters of a [`RedisCluster`].
pub const MASTERS: usize = 3;

impl RedisCluster {
    /// Starts and joins three masters, and waits (bounded) until every node reports
    /// `cluster_state:ok` with all slots served; `None` when skipped.
    pub fn start(test: &str) -> Option<RedisCluster> {
        RedisCluster::start_with(test, &[])
    }

    /// [`RedisCluster::start`] with extra `redis-server` arguments for every node (e.g.
    /// `["--cluster-require-full-coverage", "no"]`).
    pub fn start_with(test: &str, extra: &[&str]) -> Option<RedisCluster> {
        let (bin, _) = redis_tools_or_skip(test)?;
        let dir = unique_dir("redis-cluster");
        let mut cluster = RedisCluster {
            bin,
            dir,
            nodes: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        let mut taken = std::collections::HashSet::new();
        for i in 0..MASTERS {
            let node_dir = cluster.dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut started = false;
            for _ in 0..5 {
                let (port, bus_port) = (free_port(), free_port());
                if port == bus_port || taken.contains(&port) || taken.contains(&bus_port) {
                    continue;
                }
                cluster.nodes.push(ClusterNode {
                    port,
                    bus_port,
                    dir: node_dir.clone(),
                    child: None,
                });
                if cluster.spawn(i) {
                    taken.insert(port);
                    taken.insert(bus_port);
                    started = true;
                    break;
                }
                cluster.nodes.pop();
                // A fresh start: no nodes.conf of a failed attempt.
                let _ = std::fs::remove_dir_all(&node_dir);
                std::fs::create_dir_all(&node_dir).unwrap();
            }
            assert!(started, "could not start cluster node {i} on free ports");
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let (ok, out) = try_redis_cli(&args, WAIT)
            .unwrap_or_else(|| panic!("redis-cli --cluster create did not end within {WAIT:?}"));
        assert!(
            ok && out.contains("All 16384 slots covered"),
            "cluster create: {out}"
        );
        cluster.wait_healthy(Instant::now() + WAIT);
        Some(cluster)
    }

    /// Starts node `i`'s process; `false` if it exited (a port taken).
    fn spawn(&mut self, i: usize) -> bool {
        let n = &self.nodes[i];
        let port = n.port.to_string();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--port", &port])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &n.bus_port.to_string()])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", "1000"])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .args(["--save", ""])
            .args(["--dir", &n.dir.display().to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(&self.extra);
        let client_port = n.port;
        let child = spawn_answering(&mut cmd, &format!("cluster node {i}"), || ping(client_port));
        self.nodes[i].child = child;
        self.nodes[i].child.is_some()
    }

    /// Waits until every running node reports `cluster_state:ok`, all 16384 slots ok (none
    /// `pfail`/`fail`) and three known nodes; panics at `deadline`.
    pub fn wait_healthy(&self, deadline: Instant) {
        poll_until("the cluster to be healthy", deadline, || {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.child.is_none() {
                    return Err(format!("node {i} is stopped"));
                }
                let info = match try_redis_cli(
                    &["-p", &n.port.to_string(), "CLUSTER", "INFO"],
                    Duration::from_secs(5),
                ) {
                    Some((true, info)) => info,
                    other => return Err(format!("node {i}: {other:?}")),
                };
                let has = |l: &str| info.lines().any(|x| x.trim() == l);
                if !(has("cluster_state:ok")
                    && has("cluster_slots_ok:16384")
                    && has("cluster_slots_pfail:0")
                    && has("cluster_slots_fail:0")
                    && has(&format!("cluster_known_nodes:{MASTERS}")))
                {
                    return Err(format!("node {i}: {info}"));
                }
            }
            Ok(())
        });
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The client port of node `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Kills node `i` (SIGKILL). Its AOF and nodes.conf stay.
    pub fn stop(&mut self, i: usize) {
        kill(&mut self.nodes[i].child);
    }

    /// Starts node `i` again (same ports, same directory: its slots and data come back) and
    /// waits (bounded) until the whole cluster is healthy again.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is running");
        assert!(
            self.spawn(i),
            "cluster node {i} could not restart on its port"
        );
        self.wait_healthy(Instant::now() + WAIT);
    }

    /// `redis-cli -p PORT(i) ARGS…` (see [`redis_cli`]): a command to node `i` itself, not
    /// redirected.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let port = self.nodes[i].port.to_string();
        let mut v = vec!["-p", port.as_str()];
        v.extend_from_slice(args);
        redis_cli(&v)
    }

    /// A running node.
    fn live(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.child.is_some())
            .expect("a running node")
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn keyslot(&self, key: &str) -> u16 {
        let out = self.cli(self.live(), &["CLUSTER", "KEYSLOT", key]);
        out.parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key}: {out}"))
    }

    /// The node serving `slot`, as a running node's `CLUSTER NODES` says.
    pub fn slot_owner(&self, slot: u16) -> usize {
        let nodes = self.cli(self.live(), &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") {
                continue;
            }
            let owns = fields[8..].iter().any(|r| {
                if r.starts_with('[') {
                    return false;
                }
                let (lo, hi) = r.split_once('-').unwrap_or((r, r));
                let (lo, hi): (u16, u16) = (lo.parse().unwrap(), hi.parse().unwrap());
                (lo..=hi).contains(&slot)
            });
            if owns {
                let port: u16 = fields[1]
                    .split('@')
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("CLUSTER NODES address: {line}"));
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .unwrap_or_else(|| panic!("slot {slot} served by an unknown node: {line}"));
            }
        }
        panic!("no master serves slot {slot}: {nodes}");
    }

    /// The node whose slots hold `key`.
    pub fn owner(&self, key: &str) -> usize {
        self.slot_owner(self.keyslot(key))
    }

    /// The keys on node `i` matching `pattern` (`--scan` of that node alone), sorted.
    pub fn scan(&self, i: usize, pattern: &str) -> Vec<String> {
        let out = self.cli(i, &["--scan", "--pattern", pattern]);
        let mut v: Vec<String> = out
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        v.sort();
        v
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
