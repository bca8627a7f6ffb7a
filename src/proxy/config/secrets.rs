//! Secrets (`admin_token`, `client_token`, `refresh.backend_token`, `refresh.*.client_secret`,
//! `account.refresh_token`, `account.access_token`, `refresh_api.token`, `webhook.secret`,
//! `store.encryption_key`, `store.previous_keys`): given literally, as `env:NAME` (read from
//! the environment) or as `file:PATH` (read from a file, trailing newlines trimmed). An empty
//! secret is an error; messages name the key and the variable or the file, never the value.

use super::read::Parser;
use super::walk::Tbl;
use crate::Secret;

impl Parser<'_> {
    /// Resolves a secret value: literal, `env:NAME` or `file:PATH`. Messages name the key and
    /// the variable or file, never the value.
    pub(super) fn secret(&self, t: &Tbl<'_>, key: &str) -> Result<Option<Secret>, String> {
        match t.str(key)? {
            None => Ok(None),
            Some(raw) => self.resolve_secret(&t.key(key), raw).map(Some),
        }
    }

    /// A secret's value from its configured form: literal, `env:NAME` or `file:PATH`.
    pub(super) fn resolve_secret(&self, full: &str, raw: &str) -> Result<Secret, String> {
        let value = if let Some(name) = raw.strip_prefix("env:") {
            if name.is_empty() {
                return Err(format!("{full}: \"env:\" needs a variable name"));
            }
            let value = (self.env)(name)
                .ok_or_else(|| format!("{full}: environment variable {name:?} is not set"))?;
            if value.is_empty() {
                return Err(format!("{full}: environment variable {name:?} is empty"));
            }
            value
        } else if let Some(path) = raw.strip_prefix("file:") {
            if path.is_empty() {
                return Err(format!("{full}: \"file:\" needs a path"));
            }
            let content = std::fs::read_to_string(path)
                .map_err(|e| format!("{full}: cannot read secret file {path:?}: {e}"))?;
            let value = content.trim_end_matches(['\n', '\r']).to_string();
            if value.is_empty() {
                return Err(format!("{full}: secret file {path:?} is empty"));
            }
            value
        } else {
            if raw.is_empty() {
                return Err(format!("{full}: must not be empty"));
            }
            raw.to_string()
        };
        Ok(Secret::new(value))
    }
}
