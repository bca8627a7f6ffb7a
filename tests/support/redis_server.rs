//! A real `redis-server` for the shared-store tests, started on a free loopback port
//! (`--save "" --appendonly no`) and killed on drop; skipped with a note on stderr when
//! `redis-server` is not on `PATH` (a failure under `CI=true`).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::WAIT;

// ---------------------------------------------------------------------------------------------

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The `redis-server` binary, or `None` after printing why the test is skipped. Under
/// `CI=true` a missing `redis-server` is a failure, not a skip.
pub fn redis_server_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(bin) = find_on_path("redis-server") {
        return Some(bin);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: redis-server is not on PATH and CI=true: the Redis store tests must run \
             under CI (.ci/run installs redis-server)"
        );
    }
    // Straight to the process's stderr (not the `eprintln!` libtest captures), so a plain
    // `cargo test` shows it.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {}::{test}: redis-server not found on PATH (install Redis, e.g. \
         `apt-get install redis-server`, to run the shared-store tests; with CI=true this fails)",
        env!("CARGO_CRATE_NAME")
    );
    None
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
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "orp-redis-test-{}-{}-{}",
            env!("CARGO_CRATE_NAME"),
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
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
        let mut child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &self.dir.display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if ping(self.port) {
                self.child = Some(child);
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
