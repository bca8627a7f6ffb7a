//! The real `oauth-refresh-proxy` binary as a child process, for the black-box tests.
//!
//! - [`TempDir`]: a unique directory for configs and store files, removed on drop.
//! - [`Proxy`]: `serve --config FILE` at `RUST_LOG=trace`, started with [`Proxy::start`] (config
//!   text, written to a fresh [`TempDir`]) or [`Proxy::spawn`] (a config file). It is returned
//!   once the binary has printed `proxy listening on http://ADDR`; the child's stderr is drained
//!   on a thread into a buffer ([`Proxy::stderr_text`]); the child is SIGKILLed and reaped on
//!   drop. [`Proxy::assert_no_secret_in_stderr`] stops it and checks its log for secrets.
//! - [`run_cli`]: a one-shot run (`--version`, `check-config`, a `serve` that must fail), its
//!   status and output captured.
//! - [`spawn_piped`], [`drain`], [`wait_or_kill`], [`KillOnDrop`]: the plumbing under those, for other children
//!   (node in `tests/sdk.rs`).
//!
//! Every wait is bounded by [`WAIT`], and a test that waits too long panics saying what it was
//! waiting for (with the child's stderr where there is one).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::WAIT;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_oauth-refresh-proxy");

// ---------------------------------------------------------------------------------------------
// Temp dirs.
// ---------------------------------------------------------------------------------------------

/// A unique directory under the system temp dir (`orp-<test binary>-test-<pid>-<name>-<n>`),
/// removed on drop, even when a test made files in it unreadable.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "orp-{}-test-{}-{name}-{}",
            env!("CARGO_CRATE_NAME").replace('_', "-"),
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.0
    }

    /// `name` inside the directory (not created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to `name` inside the directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The names in the directory, sorted (to spot stray temporary files).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Undo a chmod 000 of a test, so the directory can be removed.
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o700));
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Children.
// ---------------------------------------------------------------------------------------------

/// A child process, killed (SIGKILL) and reaped on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` with stdin from /dev/null and stdout and stderr piped.
pub fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"))
}

/// Reads `pipe` to its end on a thread, into a shared buffer (complete once the thread is
/// joined).
pub fn drain(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let handle = std::thread::spawn(move || {
        let mut chunk = [0u8; 16384];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
    (buf, handle)
}

/// A drained buffer as text (lossy UTF-8).
pub fn text(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// Polls `child` until it exits, at most `bound`; when the time is up it is killed and reaped,
/// and the answer is `None`.
pub fn wait_or_kill(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a one-shot run of the binary left.
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args` and `env` (and `RUST_BACKTRACE=1`, so that a panic would show)
/// to completion, bounded by [`WAIT`].
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut child = spawn_piped(
        Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_BACKTRACE", "1"),
    );
    let (out, out_done) = drain(child.stdout.take().unwrap());
    let (err, err_done) = drain(child.stderr.take().unwrap());
    let Some(status) = wait_or_kill(&mut child, WAIT) else {
        panic!("{args:?} did not exit within {WAIT:?}");
    };
    out_done.join().unwrap();
    err_done.join().unwrap();
    CliOutput {
        status,
        stdout: text(&out),
        stderr: text(&err),
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy.
// ---------------------------------------------------------------------------------------------

/// The addresses the child announced on stdout so far.
#[derive(Default)]
struct Listening {
    proxy: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    /// Stdout reached its end (the child exited).
    closed: bool,
}

/// [`Listening`], shared with the thread that reads the child's stdout.
#[derive(Default)]
struct Announced {
    state: Mutex<Listening>,
    /// For blocking waiters ([`Proxy::admin_addr`]).
    changed: Condvar,
    /// For async waiters ([`Proxy::spawn`]).
    notify: Notify,
}

impl Announced {
    /// Reads `stdout` line by line until its end, recording the `… listening on` lines.
    fn read(&self, stdout: impl Read) {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut s = self.state.lock().unwrap();
            if let Some(a) = line.strip_prefix("proxy listening on http://") {
                s.proxy = Some(a.trim().parse().unwrap());
            } else if let Some(a) = line.strip_prefix("admin listening on http://") {
                s.admin = Some(a.trim().parse().unwrap());
            }
            drop(s);
            self.wake();
        }
        self.state.lock().unwrap().closed = true;
        self.wake();
    }

    fn wake(&self) {
        self.changed.notify_all();
        self.notify.notify_one();
    }
}

/// The running binary (`serve --config FILE` at `RUST_LOG=trace`); SIGKILLed and reaped on drop.
pub struct Proxy {
    child: KillOnDrop,
    pid: u32,
    proxy: SocketAddr,
    announced: Arc<Announced>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<JoinHandle<()>>,
    /// The config's directory, when [`Proxy::start`] made it (removed after the child is gone).
    _dir: Option<TempDir>,
}

impl Proxy {
    /// Writes `config` to `proxy.toml` in a fresh [`TempDir`] and [`Proxy::spawn`]s on it.
    pub async fn start(config: &str, args: &[&str], env: &[(&str, &str)]) -> Proxy {
        let dir = TempDir::new("proxy");
        let path = dir.write("proxy.toml", config);
        let mut p = Proxy::spawn(&path, args, env).await;
        p._dir = Some(dir);
        p
    }

    /// Runs `serve --config config ARGS` with `RUST_LOG=trace` and `env`, and waits (bounded by
    /// [`WAIT`]) for its `proxy listening on http://ADDR` line. Panics with the child's stderr
    /// when it exits first or stays silent.
    pub async fn spawn(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Proxy {
        let mut child = KillOnDrop(spawn_piped(
            Command::new(BIN)
                .arg("serve")
                .arg("--config")
                .arg(config)
                .args(args)
                .env("RUST_LOG", "trace")
                .envs(env.iter().copied()),
        ));
        let (stderr, stderr_thread) = drain(child.0.stderr.take().unwrap());
        let stdout = child.0.stdout.take().unwrap();
        let announced = Arc::new(Announced::default());
        let reader = announced.clone();
        std::thread::spawn(move || reader.read(stdout));
        let mut p = Proxy {
            pid: child.0.id(),
            child,
            proxy: SocketAddr::from(([0, 0, 0, 0], 0)),
            announced,
            stderr,
            stderr_thread: Some(stderr_thread),
            _dir: None,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (proxy, closed) = {
                let s = p.announced.state.lock().unwrap();
                (s.proxy, s.closed)
            };
            if let Some(addr) = proxy {
                p.proxy = addr;
                return p;
            }
            if closed {
                p.stop();
                panic!("the proxy exited before listening: {}", p.stderr_text());
            }
            let woken = tokio::time::timeout_at(deadline, p.announced.notify.notified()).await;
            if woken.is_err() {
                panic!(
                    "the proxy did not report its address within {WAIT:?}; stderr:\n{}",
                    p.stderr_text()
                );
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The proxy listener's address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
    }

    /// The admin listener's address (its line follows the proxy's at once; the wait is bounded
    /// by [`WAIT`]). Panics when the config has no admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        let s = self.announced.state.lock().unwrap();
        let (s, _) = self
            .announced
            .changed
            .wait_timeout_while(s, WAIT, |s| s.admin.is_none() && !s.closed)
            .unwrap();
        s.admin
            .expect("no `admin listening on` line: started with an admin listener?")
    }

    /// `http://PROXY_ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// `http://ADMIN_ADDR{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    /// The exit status, when the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.0.try_wait().unwrap()
    }

    /// Sends `SIG<name>` (`kill -<name> PID`) and asserts that it was delivered.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {}: {status}", self.pid);
    }

    /// SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// SIGINT.
    pub fn interrupt(&self) {
        self.signal("INT");
    }

    /// SIGKILL; asserts that the process died of it; returns its whole stderr.
    pub fn kill9(&mut self) -> String {
        self.child.0.kill().unwrap();
        let status = self.child.0.wait().unwrap();
        assert_eq!(status.signal(), Some(9));
        self.join_stderr();
        self.stderr_text()
    }

    /// Polls until the process exits, at most `bound` (asserted).
    pub async fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not exit within {bound:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The child's stderr so far (all of it once the process is stopped).
    pub fn stderr_text(&self) -> String {
        text(&self.stderr)
    }

    /// SIGKILLs the process unless it has exited, reaps it, and reads its stderr to the end.
    pub fn stop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        self.join_stderr();
    }

    /// [`Proxy::stop`]s the process and asserts that its stderr is not empty and holds none of
    /// `secrets`; returns the stderr.
    pub fn assert_no_secret_in_stderr(mut self, secrets: &[String]) -> String {
        self.stop();
        let logs = self.stderr_text();
        assert_no_secret_in_logs(std::slice::from_ref(&logs), secrets);
        logs
    }

    fn join_stderr(&mut self) {
        if let Some(t) = self.stderr_thread.take() {
            t.join().unwrap();
        }
    }
}

/// Asserts that every log (the stderr of a stopped child) is not empty and that none holds
/// any of `secrets` (naming the line where one shows).
pub fn assert_no_secret_in_logs(logs: &[String], secrets: &[String]) {
    assert!(
        logs.iter().all(|l| !l.is_empty()),
        "the proxy logged nothing at trace level"
    );
    let all = logs.join("\n");
    for s in secrets {
        assert!(!s.is_empty());
        if let Some(at) = all.find(s.as_str()) {
            let line = all[..at].rsplit('\n').next().unwrap_or("");
            panic!("secret {s:?} in the proxy's stderr: {line}…");
        }
    }
}
