//! The rules that span several values: what each refresh mode requires, the listeners'
//! tokens, route prefixes and upstreams, duplicate accounts, the store's settings together,
//! and the refresh API's conditions.

use std::collections::HashSet;

use super::values::{check_account_id, check_http_url, check_prefix, check_upstream};
use super::{Config, ConfigError, RefreshMode, StoreSettings};
use crate::store::redis::RedisNodes;
use crate::Provider;

impl Config {
    /// Checks the rules that span several values: required settings per refresh mode, route
    /// prefixes and upstreams, duplicate accounts, the `[refresh_api]` rules of SPEC 4.9, the
    /// supported store kinds, and that a non-loopback `listen` / `admin_listen` has a
    /// `client_token` / `admin_token` (SPEC 4.5).
    ///
    /// The constructors call it; call it again after changing a `Config` (for example after
    /// applying `--listen` from the command line).
    ///
    /// ```
    /// # use oauth_refresh_proxy::proxy::config::Config;
    /// let mut config = Config::default();
    /// config.refresh.backend_url = Some("https://backend.flashback.tech".into());
    /// assert!(config.validate("cli").is_ok());
    /// config.listen = "0.0.0.0:8080".parse().unwrap();
    /// assert_eq!(
    ///     config.validate("cli").unwrap_err().to_string(),
    ///     "cli: listen: 0.0.0.0:8080 is not a loopback address; set client_token to expose the proxy"
    /// );
    /// ```
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        self.check().map_err(|m| ConfigError::new(source_name, m))
    }

    fn check(&self) -> Result<(), String> {
        // Listeners (SPEC 4.5).
        if !self.listen.ip().is_loopback() && self.client_token.is_none() {
            return Err(format!(
                "listen: {} is not a loopback address; set client_token to expose the proxy",
                self.listen
            ));
        }
        if let Some(admin) = self.admin_listen {
            if !admin.ip().is_loopback() && self.admin_token.is_none() {
                return Err(format!(
                    "admin_listen: {admin} is not a loopback address; set admin_token to expose the admin listener"
                ));
            }
            if admin == self.listen && admin.port() != 0 {
                return Err(format!(
                    "admin_listen: {admin} is also the proxy's listen address"
                ));
            }
        }

        // Refresh.
        let r = &self.refresh;
        if r.timeout.is_zero() {
            return Err("refresh.timeout: must be greater than zero".into());
        }
        if r.max_attempts < 1 {
            return Err("refresh.max_attempts: must be at least 1".into());
        }
        if r.default_lifetime.is_zero() {
            return Err("refresh.default_lifetime: must be greater than zero".into());
        }
        for provider in Provider::ALL {
            if let Some(c) = r.credentials(provider) {
                let key = format!("refresh.{provider}");
                if c.client_id.is_empty() {
                    return Err(format!("{key}.client_id: must not be empty"));
                }
                check_http_url(&c.token_url).map_err(|e| format!("{key}.token_url: {e}"))?;
            }
        }
        match r.mode {
            RefreshMode::Backend => match &r.backend_url {
                None => {
                    return Err(
                        "refresh.backend_url: required when refresh.mode = \"backend\"".into(),
                    )
                }
                Some(url) => {
                    check_http_url(url).map_err(|e| format!("refresh.backend_url: {e}"))?
                }
            },
            RefreshMode::Direct => {
                if r.google.is_none() && r.github.is_none() {
                    return Err("refresh.mode: \"direct\" needs [refresh.google] or [refresh.github] credentials".into());
                }
            }
        }

        // Upstream.
        let u = &self.upstream;
        for (key, d) in [
            ("connect_timeout", u.connect_timeout),
            ("response_timeout", u.response_timeout),
            ("body_idle_timeout", u.body_idle_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("upstream.{key}: must be greater than zero"));
            }
        }

        // Store.
        let enc = &self.store_encryption;
        if enc.key.is_none() && (!enc.previous.is_empty() || enc.encrypt_existing) {
            return Err(
                "store.previous_keys / store.encrypt_existing: need store.encryption_key".into(),
            );
        }
        if enc.key.is_some() && self.store == StoreSettings::Memory {
            return Err(
                "store.encryption_key: applies to the file and redis stores; the memory store \
                 keeps nothing at rest"
                    .into(),
            );
        }
        enc.encryption()?;
        if let StoreSettings::Redis { nodes, ca_file, .. } = &self.store {
            let urls = match nodes {
                RedisNodes::Single(url) => std::slice::from_ref(url),
                RedisNodes::Cluster(urls) => urls.as_slice(),
            };
            let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
            if tls != 0 && tls != urls.len() {
                return Err("store.cluster_urls: mixes rediss:// (TLS) and redis:// URLs".into());
            }
            if ca_file.is_some() && tls == 0 {
                return Err("store.ca_file: applies to rediss:// (TLS) URLs only".into());
            }
        }
        if let StoreSettings::Redis { lock_ttl, .. } = &self.store {
            let r = &self.refresh;
            if lock_ttl.is_zero() {
                return Err("store.lock_ttl: must be above zero".into());
            }
            if *lock_ttl <= r.timeout {
                return Err(format!(
                    "store.lock_ttl: {lock_ttl:?} must exceed refresh.timeout ({:?})",
                    r.timeout
                ));
            }
        }

        // Routes.
        if self.routes.is_empty() {
            return Err("route: at least one route is required".into());
        }
        let mut prefixes = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("route[{i}]");
            check_prefix(&route.prefix).map_err(|e| format!("{key}.prefix: {e}"))?;
            if !prefixes.insert(route.prefix.as_str()) {
                return Err(format!("{key}.prefix: duplicate prefix {:?}", route.prefix));
            }
            check_upstream(&route.upstream).map_err(|e| format!("{key}.upstream: {e}"))?;
            if route.default_account.as_deref() == Some("") {
                return Err(format!("{key}.default_account: must not be empty"));
            }
            if self.refresh_api.is_some()
                && (route.prefix == "/"
                    || route.prefix == "/auth"
                    || route.prefix.starts_with("/auth/"))
            {
                return Err(format!(
                    "{key}.prefix: {:?} conflicts with the refresh API (POST /auth/{{provider}}/refresh) while [refresh_api] is enabled",
                    route.prefix
                ));
            }
        }

        // Accounts.
        let mut seen = HashSet::new();
        for (i, account) in self.accounts.iter().enumerate() {
            let key = format!("account[{i}]");
            check_account_id(&account.id).map_err(|e| format!("{key}.id: {e}"))?;
            if !seen.insert((account.provider, account.id.as_str())) {
                return Err(format!(
                    "{key}: duplicate account {}/{}",
                    account.provider, account.id
                ));
            }
            if account.refresh_token.is_empty() {
                return Err(format!("{key}.refresh_token: must not be empty"));
            }
        }

        // Refresh API (SPEC 4.9).
        if let Some(api) = &self.refresh_api {
            if api.token.is_empty() {
                return Err("refresh_api.token: must not be empty".into());
            }
            if r.google.is_none() && r.github.is_none() {
                return Err("refresh_api: enabled, but neither [refresh.google] nor [refresh.github] credentials are configured".into());
            }
        }
        Ok(())
    }
}
