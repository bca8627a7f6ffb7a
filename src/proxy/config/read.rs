//! Reading the parsed TOML into a [`Config`]: one function a table, each listing the keys it
//! knows, starting from the table's defaults and checking what one value can say about itself.
//! Rules that span several values are checked afterwards, by `Config::validate`.

use std::path::PathBuf;

use http::Uri;
use toml::{Table, Value};

use super::settings::{
    AccountSeed, ProviderCredentials, RateLimitMode, RefreshApiSettings, RefreshMode,
    RefreshSettings, Route, ServerSettings, StoreEncryption, StoreSettings, UpstreamSettings,
    WebhookSettings, DEFAULT_LOCK_TTL, DEFAULT_WEBHOOK_MAX_BACKOFF, MAX_WORKERS,
};
use super::values::{check_webhook_url, parse_size_value};
use super::walk::Tbl;
use super::Config;
use crate::store::redis::RedisNodes;
use crate::Provider;

/// Walks the TOML table; `env` resolves `env:` secrets.
pub(super) struct Parser<'e> {
    pub(super) env: &'e dyn Fn(&str) -> Option<String>,
}

impl Parser<'_> {
    pub(super) fn config(&self, root: &Table) -> Result<Config, String> {
        let t = Tbl::root(root);
        t.only(&[
            "listen",
            "admin_listen",
            "admin_token",
            "client_token",
            "max_replay_body",
            "refresh",
            "store",
            "route",
            "account",
            "refresh_api",
            "upstream",
            "server",
            "webhook",
        ])?;
        let mut config = Config::default();
        if let Some(addr) = t.socket_addr("listen")? {
            config.listen = addr.expect("only admin_listen may be empty");
        }
        if let Some(addr) = t.socket_addr("admin_listen")? {
            config.admin_listen = addr;
        }
        config.admin_token = self.secret(&t, "admin_token")?;
        config.client_token = self.secret(&t, "client_token")?;
        if let Some(v) = t.table.get("max_replay_body") {
            config.max_replay_body = parse_size_value(v).ok_or_else(|| match v {
                Value::String(s) => format!(
                    "max_replay_body: invalid size {s:?} (expected bytes as an integer, or e.g. \"512KiB\", \"1MiB\")"
                ),
                Value::Integer(i) => format!(
                    "max_replay_body: invalid size {i} (expected a non-negative number of bytes)"
                ),
                v => t.type_error("max_replay_body", "an integer or a string", v),
            })?;
        }
        if let Some(r) = t.table("refresh")? {
            config.refresh = self.refresh(&r)?;
        }
        if let Some(s) = t.table("store")? {
            config.store = store(&s)?;
            config.store_encryption = self.store_encryption(&s)?;
        }
        if let Some(routes) = t.tables("route")? {
            if !routes.is_empty() {
                config.routes = routes.iter().map(route).collect::<Result<_, _>>()?;
            }
        }
        if let Some(accounts) = t.tables("account")? {
            config.accounts = accounts
                .iter()
                .map(|a| self.account(a))
                .collect::<Result<_, _>>()?;
        }
        if let Some(api) = t.table("refresh_api")? {
            config.refresh_api = self.refresh_api(&api)?;
        }
        if let Some(u) = t.table("upstream")? {
            config.upstream = upstream(&u)?;
        }
        if let Some(s) = t.table("server")? {
            config.server = server(&s)?;
        }
        if let Some(hooks) = t.tables("webhook")? {
            config.webhooks = hooks
                .iter()
                .map(|h| self.webhook(h))
                .collect::<Result<_, _>>()?;
        }
        Ok(config)
    }

    fn refresh(&self, t: &Tbl<'_>) -> Result<RefreshSettings, String> {
        t.only(&[
            "mode",
            "backend_url",
            "backend_token",
            "timeout",
            "max_attempts",
            "skew",
            "refresh_ahead",
            "default_lifetime",
            "min_interval",
            "late_answer_window",
            "google",
            "github",
        ])?;
        let mut r = RefreshSettings::default();
        if let Some(mode) = t.str("mode")? {
            r.mode = match mode {
                "backend" => RefreshMode::Backend,
                "direct" => RefreshMode::Direct,
                other => {
                    return Err(format!(
                        "refresh.mode: unknown mode {other:?} (expected \"backend\" or \"direct\")"
                    ))
                }
            };
        }
        r.backend_url = t.str("backend_url")?.map(str::to_string);
        r.backend_token = self.secret(t, "backend_token")?;
        if let Some(d) = t.duration("timeout")? {
            r.timeout = d;
        }
        if let Some(n) = t.int("max_attempts")? {
            r.max_attempts = u32::try_from(n)
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| format!("refresh.max_attempts: must be at least 1, found {n}"))?;
        }
        if let Some(d) = t.duration("skew")? {
            r.skew = d;
        }
        if let Some(d) = t.duration("refresh_ahead")? {
            r.refresh_ahead = d;
        }
        if let Some(d) = t.duration("default_lifetime")? {
            r.default_lifetime = d;
        }
        if let Some(d) = t.duration("min_interval")? {
            r.min_interval = d;
        }
        if let Some(d) = t.duration("late_answer_window")? {
            r.late_answer_window = d;
        }
        if let Some(g) = t.table("google")? {
            r.google = Some(self.credentials(&g, Provider::Google)?);
        }
        if let Some(g) = t.table("github")? {
            r.github = Some(self.credentials(&g, Provider::GitHub)?);
        }
        Ok(r)
    }

    fn credentials(&self, t: &Tbl<'_>, provider: Provider) -> Result<ProviderCredentials, String> {
        t.only(&["client_id", "client_secret", "token_url"])?;
        let client_id = t.required_str("client_id")?.to_string();
        let client_secret = self
            .secret(t, "client_secret")?
            .ok_or_else(|| format!("missing key \"client_secret\" in table {}", t.name))?;
        let token_url = t
            .str("token_url")?
            .unwrap_or(ProviderCredentials::default_token_url(provider))
            .to_string();
        Ok(ProviderCredentials {
            client_id,
            client_secret,
            token_url,
        })
    }

    fn account(&self, t: &Tbl<'_>) -> Result<AccountSeed, String> {
        t.only(&[
            "provider",
            "id",
            "refresh_token",
            "access_token",
            "expires_at",
        ])?;
        let provider = t.provider("provider")?;
        let id = t.required_str("id")?.to_string();
        let refresh_token = self
            .secret(t, "refresh_token")?
            .ok_or_else(|| format!("missing key \"refresh_token\" in table {}", t.name))?;
        let access_token = self.secret(t, "access_token")?;
        let expires_at = match t.int("expires_at")? {
            None => None,
            Some(n) => Some(u64::try_from(n).map_err(|_| {
                format!(
                    "{}: must be unix seconds (non-negative), found {n}",
                    t.key("expires_at")
                )
            })?),
        };
        Ok(AccountSeed {
            provider,
            id,
            refresh_token,
            access_token,
            expires_at,
        })
    }

    fn refresh_api(&self, t: &Tbl<'_>) -> Result<Option<RefreshApiSettings>, String> {
        t.only(&["enabled", "token"])?;
        if !t.bool("enabled")?.unwrap_or(false) {
            // Disabled: check the token's type, but do not resolve it (an unset variable for
            // an unused feature is not an error).
            t.str("token")?;
            return Ok(None);
        }
        let token = self.secret(t, "token")?.ok_or_else(|| {
            "refresh_api.token: required when refresh_api.enabled = true".to_string()
        })?;
        Ok(Some(RefreshApiSettings { token }))
    }

    fn webhook(&self, t: &Tbl<'_>) -> Result<WebhookSettings, String> {
        use crate::HealthChange;
        t.only(&["url", "secret", "events", "max_backoff"])?;
        let url = t.required_str("url")?;
        check_webhook_url(url).map_err(|e| format!("{}: {e}", t.key("url")))?;
        let secret = self
            .secret(t, "secret")?
            .ok_or_else(|| format!("missing key \"secret\" in table {}", t.name))?;
        const ALL: [HealthChange; 3] = [
            HealthChange::NeedsReauth,
            HealthChange::Failing,
            HealthChange::Recovered,
        ];
        let events = match t.strs("events")? {
            None => ALL.to_vec(),
            Some(names) => {
                let mut events = Vec::new();
                for name in names {
                    let event = ALL.into_iter().find(|e| e.as_str() == name).ok_or_else(|| {
                        format!(
                            "{}: unknown event {name:?} (expected \"needs_reauth\", \"refresh_failing\" or \"refresh_recovered\")",
                            t.key("events")
                        )
                    })?;
                    if !events.contains(&event) {
                        events.push(event);
                    }
                }
                if events.is_empty() {
                    return Err(format!("{}: must name at least one event", t.key("events")));
                }
                events
            }
        };
        let max_backoff = t
            .duration("max_backoff")?
            .unwrap_or(DEFAULT_WEBHOOK_MAX_BACKOFF);
        if max_backoff.is_zero() {
            return Err(format!(
                "{}: must be greater than zero",
                t.key("max_backoff")
            ));
        }
        Ok(WebhookSettings {
            url: url.to_string(),
            secret,
            events,
            max_backoff,
        })
    }

    /// `[store]`'s encryption keys (secrets like the others) and `encrypt_existing`.
    fn store_encryption(&self, t: &Tbl<'_>) -> Result<StoreEncryption, String> {
        let key = self.secret(t, "encryption_key")?;
        let previous = t
            .array("previous_keys", "an array of strings", |i, v| {
                let full = format!("{}[{i}]", t.key("previous_keys"));
                match v {
                    Value::String(raw) => self.resolve_secret(&full, raw),
                    v => Err(format!("{full}: expected a string, found {}", v.type_str())),
                }
            })?
            .unwrap_or_default();
        let encrypt_existing = t.bool("encrypt_existing")?.unwrap_or(false);
        Ok(StoreEncryption {
            key,
            previous,
            encrypt_existing,
        })
    }
}

fn upstream(t: &Tbl<'_>) -> Result<UpstreamSettings, String> {
    t.only(&["connect_timeout", "response_timeout", "body_idle_timeout"])?;
    let mut u = UpstreamSettings::default();
    for (key, slot) in [
        ("connect_timeout", &mut u.connect_timeout),
        ("response_timeout", &mut u.response_timeout),
        ("body_idle_timeout", &mut u.body_idle_timeout),
    ] {
        if let Some(d) = t.duration(key)? {
            *slot = d;
        }
    }
    Ok(u)
}

fn store(t: &Tbl<'_>) -> Result<StoreSettings, String> {
    // `path` and `url` are accepted whatever the kind (SPEC 4.2's example lists all three);
    // only the one the kind uses is read.
    t.only(&[
        "kind",
        "path",
        "url",
        "cluster_urls",
        "ca_file",
        "lock_ttl",
        "encryption_key",
        "previous_keys",
        "encrypt_existing",
    ])?;
    let path = t.str("path")?;
    let url = t.str("url")?;
    let lock_ttl = t.duration("lock_ttl")?.unwrap_or(DEFAULT_LOCK_TTL);
    match t.str("kind")?.unwrap_or("memory") {
        "memory" => Ok(StoreSettings::Memory),
        "file" => match path {
            Some(p) if !p.is_empty() => Ok(StoreSettings::File {
                path: PathBuf::from(p),
            }),
            _ => Err("store.path: required when store.kind = \"file\"".into()),
        },
        "redis" => {
            let cluster = t
                .strs("cluster_urls")?
                .map(|urls| urls.into_iter().map(str::to_string).collect::<Vec<_>>());
            let nodes = match (url, cluster) {
                (Some(_), Some(_)) => {
                    return Err("store.cluster_urls: give either store.url (one Redis) or \
                         store.cluster_urls (a Redis Cluster), not both"
                        .into())
                }
                (Some(u), None) if !u.is_empty() => RedisNodes::Single(u.to_string()),
                (None, Some(urls)) => {
                    if urls.is_empty() || urls.iter().any(String::is_empty) {
                        return Err(
                            "store.cluster_urls: must list at least one node URL, none empty"
                                .into(),
                        );
                    }
                    RedisNodes::Cluster(urls)
                }
                _ => {
                    return Err("store.url: required when store.kind = \"redis\" (or \
                         store.cluster_urls for a Redis Cluster)"
                        .into())
                }
            };
            let ca_file = t.str("ca_file")?.map(PathBuf::from);
            Ok(StoreSettings::Redis {
                nodes,
                ca_file,
                lock_ttl,
            })
        }
        other => Err(format!(
            "store.kind: unknown store kind {other:?} (expected \"memory\", \"file\" or \"redis\")"
        )),
    }
}

fn server(t: &Tbl<'_>) -> Result<ServerSettings, String> {
    t.only(&[
        "header_read_timeout",
        "idle_timeout",
        "body_read_timeout",
        "max_connections",
        "workers",
    ])?;
    let mut s = ServerSettings::default();
    for (key, field) in [
        ("header_read_timeout", &mut s.header_read_timeout),
        ("idle_timeout", &mut s.idle_timeout),
        ("body_read_timeout", &mut s.body_read_timeout),
    ] {
        if let Some(d) = t.duration(key)? {
            if d.is_zero() {
                return Err(format!("{}: must be greater than zero", t.key(key)));
            }
            *field = d;
        }
    }
    if let Some(n) = t.int("max_connections")? {
        s.max_connections = u32::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
            format!(
                "server.max_connections: must be between 1 and {}, found {n}",
                u32::MAX
            )
        })? as usize;
    }
    if let Some(n) = t.int("workers")? {
        s.workers = usize::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_WORKERS).contains(n))
            .ok_or_else(|| {
                format!("server.workers: must be between 1 and {MAX_WORKERS}, found {n}")
            })?;
    }
    Ok(s)
}

fn route(t: &Tbl<'_>) -> Result<Route, String> {
    t.only(&[
        "prefix",
        "upstream",
        "provider",
        "default_account",
        "rate_limit",
        "rewrite_body",
    ])?;
    let prefix = t.required_str("prefix")?.to_string();
    let raw = t.required_str("upstream")?;
    let trimmed = raw.trim_end_matches('/');
    let upstream = trimmed
        .parse::<Uri>()
        .map_err(|_| format!("{}: invalid URL {raw:?}", t.key("upstream")))?;
    let provider = t.provider("provider")?;
    let default_account = t.str("default_account")?.map(str::to_string);
    let rate_limit = match t.str("rate_limit")? {
        None | Some("enforce") => RateLimitMode::Enforce,
        Some("pass") => RateLimitMode::Pass,
        Some(other) => {
            return Err(format!(
                "{}: unknown value {other:?} (expected \"enforce\" or \"pass\")",
                t.key("rate_limit")
            ))
        }
    };
    let rewrite_body = t.bool("rewrite_body")?.unwrap_or(true);
    Ok(Route {
        prefix,
        upstream,
        provider,
        default_account,
        rate_limit,
        rewrite_body,
    })
}
