//! The sidecar-test world: the crate's fakes (a GitHub API, a Google API and a refresh backend
//! sharing one [`Realm`]), a config generated for them ([`World::start`] with [`Opts`]), the
//! real binary in front of them ([`Sidecar`]: requests, admin calls, the final secret check),
//! and plumbing (raw HTTP, RSS, one metric sample).

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use oauth_refresh_proxy::Provider;
use tokio::io::AsyncWriteExt;

use super::http_client::{http1_client, read_raw_response, request, Answer, HttpClient};
use super::process::{Proxy, TempDir};
use super::*;

// ---------------------------------------------------------------------------------------------
// Plumbing: raw HTTP, memory, metrics.
// ---------------------------------------------------------------------------------------------

/// Writes `raw` on a fresh connection and reads one response: (status, head, body).
pub async fn raw_request(addr: SocketAddr, raw: &str) -> (u16, String, String) {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        read_raw_response(
            &mut s,
            |head, read, n| read >= head.body_start + head.content_length.unwrap_or(0) || n == 0,
            |buf| format!("connection closed before a full response: {buf:?}"),
        )
        .await
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("raw request: no answer within {WAIT:?}"))
}

/// `GET uri` as the account `octo` (`X-OAuth-Account`) with `client`.
pub async fn get_as_octo(client: &HttpClient, uri: &str) -> Answer {
    request(client, "GET", uri, &[("x-oauth-account", "octo")], empty()).await
}

/// The child's resident set size in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The value of one sample of the exposition `text`: `name{labels}` with exactly `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}')?;
            (&r[..end], &r[end + 1..])
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let mut parsed = Vec::new();
        let mut s = label_text;
        while let Some((k, v)) = s.split_once("=\"") {
            let end = v.find('"')?;
            parsed.push((k.trim_start_matches(',').to_string(), v[..end].to_string()));
            s = &v[end + 1..];
        }
        if parsed.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| parsed.contains(&(k.to_string(), v.to_string())))
        {
            return value.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The world of fakes, and the sidecar process in front of it.
// ---------------------------------------------------------------------------------------------

pub const BACKEND_ENV: &str = "ORP_TEST_BACKEND_TOKEN";

/// The fakes a sidecar is configured against, and the accounts it is seeded with.
pub struct World {
    pub realm: Arc<Realm>,
    pub backend: String,
    pub github: SocketAddr,
    pub google: SocketAddr,
    pub accounts: String,
}

/// What a test adds to the standard config.
#[derive(Default)]
pub struct Opts<'a> {
    /// Extra root keys; `{dir}` is replaced by the sidecar's temp dir.
    pub root: &'a str,
    /// Extra `[refresh]` keys.
    pub refresh: &'a str,
    /// Extra environment of the child.
    pub env: &'a [(&'a str, &'a str)],
    /// Files written into the temp dir before start: (name, content).
    pub files: &'a [(&'a str, &'a str)],
    /// Further secrets that must never show.
    pub secrets: &'a [&'a str],
    /// The config's `listen` (default `127.0.0.1:0`).
    pub listen: &'a str,
    /// Extra arguments after `serve --config FILE`.
    pub args: &'a [&'a str],
}

impl World {
    pub async fn new(name: &str) -> World {
        let realm = Realm::rotating(&format!("sc{name}"));
        let backend = start_backend(realm.clone()).await;
        let github = start_api(realm.clone(), Provider::GitHub).await;
        let google = start_api(realm.clone(), Provider::Google).await;
        World {
            realm,
            backend,
            github,
            google,
            accounts: String::new(),
        }
    }

    /// Seeds an account whose refresh token the backend accepts, with an access token the API
    /// accepts, written to expire in `valid_for` seconds (negative: already expired).
    /// Returns (refresh, access).
    pub fn seed(&mut self, provider: &str, id: &str, valid_for: i64) -> (String, String) {
        let refresh = self.realm.new_refresh_token();
        let access = self.realm.new_access_token(&refresh);
        let at = now_secs() as i64 + valid_for;
        self.accounts.push_str(&format!(
            "[[account]]\nprovider = \"{provider}\"\nid = \"{id}\"\nrefresh_token = \"{refresh}\"\naccess_token = \"{access}\"\nexpires_at = {at}\n\n"
        ));
        (refresh, access)
    }

    pub fn config(&self, opts: &Opts<'_>, dir: &TempDir) -> String {
        let root = opts
            .root
            .replace("{dir}", &dir.root().display().to_string());
        format!(
            r#"listen = "{listen}"
admin_listen = "127.0.0.1:0"
{root}

[refresh]
backend_url = "{backend}"
backend_token = "env:{BACKEND_ENV}"
{refresh}

[[route]]
prefix = "/github"
upstream = "http://{github}"
provider = "github"

[[route]]
prefix = "/google"
upstream = "http://{google}"
provider = "google"
default_account = "alice"

[[route]]
prefix = "/down"
upstream = "http://127.0.0.1:1"
provider = "github"
default_account = "octo"

{accounts}"#,
            listen = if opts.listen.is_empty() {
                "127.0.0.1:0"
            } else {
                opts.listen
            },
            backend = self.backend,
            refresh = opts.refresh,
            github = self.github,
            google = self.google,
            accounts = self.accounts,
        )
    }

    pub async fn start(&self, opts: Opts<'_>) -> Sidecar {
        let dir = TempDir::new("serve");
        for (name, content) in opts.files {
            dir.write(name, content);
        }
        let path = dir.write("proxy.toml", &self.config(&opts, &dir));
        let backend_token = self.realm.backend_token.clone().unwrap();
        let mut env = vec![
            ("RUST_BACKTRACE", "1"),
            (BACKEND_ENV, backend_token.as_str()),
        ];
        env.extend(opts.env.iter().copied());
        let proxy = Proxy::spawn(&path, opts.args, &env).await;
        let mut secrets: Vec<String> = opts.secrets.iter().map(|s| s.to_string()).collect();
        secrets.push(backend_token);
        Sidecar {
            proxy,
            answers: Mutex::new(Vec::new()),
            secrets,
            client: http1_client(),
            _dir: dir,
        }
    }
}

/// The running binary ([`Proxy`]: killed on drop), and the answers it gave.
pub struct Sidecar {
    pub proxy: Proxy,
    pub answers: Mutex<Vec<String>>,
    pub secrets: Vec<String>,
    pub client: HttpClient,
    pub _dir: TempDir,
}

impl Deref for Sidecar {
    type Target = Proxy;
    fn deref(&self) -> &Proxy {
        &self.proxy
    }
}

impl DerefMut for Sidecar {
    fn deref_mut(&mut self) -> &mut Proxy {
        &mut self.proxy
    }
}

impl Sidecar {
    /// A request through the proxy with the HTTP/1.1 client.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let a = request(
            &self.client,
            method,
            &self.url(path),
            headers,
            full(body.into()),
        )
        .await;
        if a.body.len() < 64 * 1024 {
            self.record(&a);
        }
        a
    }

    /// `GET path` as `account` through the proxy.
    pub async fn get_as(&self, account: &str, path: &str) -> Answer {
        self.send("GET", path, &[("x-oauth-account", account)], "")
            .await
    }

    /// A request to the admin listener; its answer is kept for the secret check.
    pub async fn admin(&self, method: &str, path: &str, auth: Option<&str>, body: &str) -> Answer {
        let uri = self.admin_url(path);
        let auth = auth.map(|t| format!("Bearer {t}"));
        let mut headers = vec![];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let a = request(&self.client, method, &uri, &headers, full(body.to_string())).await;
        self.record(&a);
        a
    }

    pub async fn metrics(&self) -> String {
        let a = self.admin("GET", "/metrics", None, "").await;
        assert_eq!(a.status, 200);
        a.text()
    }

    pub fn record(&self, a: &Answer) {
        self.answers
            .lock()
            .unwrap()
            .push(format!("{:?}\n{}", a.headers, a.text()));
    }

    /// Stops the process and asserts that no secret appears in its stderr or in any recorded
    /// answer, and that the stderr is not empty.
    pub fn finish(self, realm: &Realm) {
        self.finish_with_logs(realm);
    }

    /// [`Sidecar::finish`], returning the child's stderr.
    pub fn finish_with_logs(self, realm: &Realm) -> String {
        let mut secrets = realm.secrets();
        secrets.extend(self.secrets.iter().cloned());
        let logs = self.proxy.assert_no_secret_in_stderr(&secrets);
        let answers = self.answers.lock().unwrap().join("\n");
        for s in &secrets {
            assert!(
                !answers.contains(s.as_str()),
                "secret {s:?} in an answer: {answers}"
            );
        }
        logs
    }
}

/// A deterministic, non-repeating-looking body of `n` bytes.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}
