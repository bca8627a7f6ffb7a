//! What the real-SDK tests (`tests/sdk.rs`: octokit, `tests/sdk_pygithub.rs`: PyGithub) share:
//! the directory of their scripts, a runtime for the in-process fakes, and the tail of a log
//! for a failure's context.

use std::path::{Path, PathBuf};

/// `tests/sdk`: the SDK scripts, their `node_modules` and `venv`.
pub fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sdk")
}

/// A runtime whose two worker threads run the fakes for the whole test (the test's own thread
/// waits for the SDK's process).
pub fn fakes_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
