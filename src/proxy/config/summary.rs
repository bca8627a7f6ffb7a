//! The start-up summary `check-config` prints: every setting in effect, one concern a line,
//! never a secret value (only whether one is set), URLs without their credentials.

use std::time::Duration;

use super::values::{redact_userinfo, KIB, MIB};
use super::{Config, RateLimitMode, RefreshMode, StoreSettings};
use crate::store::redis::RedisNodes;
use crate::{Provider, Secret};

impl Config {
    /// A multi-line, human-readable summary for `check-config`: listeners, refresh settings,
    /// store, `[server]` limits, routes and accounts. It never contains a secret value, only whether one is set.
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::config::Config;
    /// let config = Config::from_toml_str(
    ///     "client_token = \"hunter2\"\n[refresh]\nbackend_url = \"https://b.example\"",
    ///     "proxy.toml",
    /// )
    /// .unwrap();
    /// let summary = config.summary();
    /// assert!(summary.contains("listen:          127.0.0.1:8080 (client_token set)"));
    /// assert!(!summary.contains("hunter2"));
    /// ```
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let set = |s: &Option<Secret>| if s.is_some() { "set" } else { "not set" };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "listen:          {} (client_token {})",
            self.listen,
            set(&self.client_token)
        );
        match self.admin_listen {
            Some(a) => {
                let _ = writeln!(
                    out,
                    "admin_listen:    {a} (admin_token {})",
                    set(&self.admin_token)
                );
            }
            None => {
                let _ = writeln!(out, "admin_listen:    disabled");
            }
        }
        let _ = writeln!(
            out,
            "max_replay_body: {}",
            format_size(self.max_replay_body)
        );
        let r = &self.refresh;
        match r.mode {
            RefreshMode::Backend => {
                let _ = writeln!(
                    out,
                    "refresh:         backend {} (backend_token {})",
                    r.backend_url
                        .as_deref()
                        .map(redact_userinfo)
                        .unwrap_or_else(|| "(none)".into()),
                    set(&r.backend_token)
                );
            }
            RefreshMode::Direct => {
                let _ = writeln!(out, "refresh:         direct");
            }
        }
        let _ = writeln!(
            out,
            "                 timeout {}, max_attempts {}, skew {}, refresh_ahead {}, default_lifetime {}",
            format_duration(r.timeout),
            r.max_attempts,
            format_duration(r.skew),
            format_duration(r.refresh_ahead),
            format_duration(r.default_lifetime)
        );
        let _ = writeln!(
            out,
            "                 min_interval {}, late_answer_window {}",
            format_duration(r.min_interval),
            format_duration(r.late_answer_window)
        );
        for provider in Provider::ALL {
            match r.credentials(provider) {
                Some(c) => {
                    let _ = writeln!(
                        out,
                        "  {:<15}client_id {}, token_url {}",
                        format!("{provider}:"),
                        c.client_id,
                        redact_userinfo(&c.token_url)
                    );
                }
                None => {
                    let _ = writeln!(out, "  {:<15}no client credentials", format!("{provider}:"));
                }
            }
        }
        let _ = match &self.store {
            StoreSettings::Memory => writeln!(out, "store:           memory"),
            StoreSettings::File { path } => {
                writeln!(out, "store:           file {}", path.display())
            }
            StoreSettings::Redis {
                nodes, lock_ttl, ..
            } => {
                let shown = match nodes {
                    RedisNodes::Single(url) => redact_userinfo(url),
                    RedisNodes::Cluster(urls) => format!(
                        "cluster {}",
                        urls.iter()
                            .map(|u| redact_userinfo(u))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                writeln!(
                    out,
                    "store:           redis {shown} (lock_ttl {lock_ttl:?})"
                )
            }
        };
        if let Ok(Some(e)) = self.store_encryption.encryption() {
            let _ = writeln!(
                out,
                "store encryption: AES-256-GCM, key id {}, {} previous key(s){}",
                e.key_id(),
                self.store_encryption.previous.len(),
                if self.store_encryption.encrypt_existing {
                    ", encrypt_existing"
                } else {
                    ""
                }
            );
        }
        let u = &self.upstream;
        let _ = writeln!(
            out,
            "upstream:        connect_timeout {}, response_timeout {}, body_idle_timeout {}",
            format_duration(u.connect_timeout),
            format_duration(u.response_timeout),
            format_duration(u.body_idle_timeout)
        );
        let _ = match &self.refresh_api {
            Some(_) => writeln!(
                out,
                "refresh_api:     enabled (POST /auth/{{provider}}/refresh, token set)"
            ),
            None => writeln!(out, "refresh_api:     disabled"),
        };
        let s = &self.server;
        let _ = writeln!(
            out,
            "server:          header_read_timeout {}, idle_timeout {}, body_read_timeout {}, max_connections {}",
            format_duration(s.header_read_timeout),
            format_duration(s.idle_timeout),
            format_duration(s.body_read_timeout),
            s.max_connections
        );
        let _ = writeln!(out, "workers:         {}", s.workers);
        if !self.webhooks.is_empty() {
            let _ = writeln!(out, "webhooks ({}):", self.webhooks.len());
        }
        for h in &self.webhooks {
            let events: Vec<&str> = h.events.iter().map(|e| e.as_str()).collect();
            // The query may carry a receiver's token: left out.
            let url = redact_userinfo(h.url.split('?').next().unwrap_or(""));
            let _ = writeln!(
                out,
                "  {url} ({}; secret set, max_backoff {})",
                events.join(", "),
                format_duration(h.max_backoff)
            );
        }
        let _ = writeln!(out, "routes ({}):", self.routes.len());
        for route in &self.routes {
            let upstream = route.upstream.to_string();
            let _ = write!(
                out,
                "  {:<16} -> {} ({}",
                route.prefix,
                upstream.trim_end_matches('/'),
                route.provider
            );
            if let Some(a) = &route.default_account {
                let _ = write!(out, ", default account {a}");
            }
            if route.rate_limit == RateLimitMode::Pass {
                let _ = write!(out, ", rate_limit pass");
            }
            if !route.rewrite_body {
                let _ = write!(out, ", JSON bodies not rewritten");
            }
            let _ = writeln!(out, ")");
        }
        let _ = writeln!(out, "accounts ({}):", self.accounts.len());
        for a in &self.accounts {
            let _ = write!(out, "  {}/{}", a.provider, a.id);
            match (&a.access_token, a.expires_at) {
                (Some(_), Some(t)) => {
                    let _ = write!(out, " (access token set, expires_at {t})");
                }
                (Some(_), None) => {
                    let _ = write!(out, " (access token set)");
                }
                (None, _) => {
                    let _ = write!(out, " (refresh token only)");
                }
            }
            let _ = writeln!(out);
        }
        out
    }
}

pub(super) fn format_size(n: usize) -> String {
    for (unit, size) in [("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", KIB)] {
        if n >= size && n % size == 0 {
            return format!("{} {unit}", n / size);
        }
    }
    format!("{n} bytes")
}

pub(super) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let (h, rem) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rem) = (rem / 60_000, rem % 60_000);
    let (s, ms) = (rem / 1000, rem % 1000);
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}
