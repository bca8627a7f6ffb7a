//! The accounts in Redis: reading one, loading all (sealing the records written with no key
//! when `store.encrypt_existing` asks), saving and removing — each write one Lua script that
//! writes **and** announces, so announcements are ordered like the writes — and claims.

use std::time::Duration;

use super::keys::{claim_key, parse_account_key, ACCOUNT_PATTERN, CHANNEL};
use super::Shared;
use crate::provider::Provider;
use crate::tokens::store::record::{Generation, RecordError, RecordGeneration, Sealing};
use crate::tokens::store::{StoreError, StoredAccount};

/// Writes an account, never lowering its generation (`max(given, stored + 1)`), and announces
/// it. KEYS[1] account; ARGV: generation, data, channel, message. Returns the generation.
pub(super) const SAVE_LUA: &str = r#"
local gen = tonumber(ARGV[1])
local cur = redis.call('HGET', KEYS[1], 'gen')
if cur and tonumber(cur) >= gen then gen = tonumber(cur) + 1 end
local g = string.format('%d', gen)
redis.call('HSET', KEYS[1], 'gen', g, 'data', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return g
"#;

/// `store.encrypt_existing`, atomically: KEYS the accounts; ARGV pairs (data as read, sealed
/// data). 1 when all were replaced, 0 (nothing written) when any changed since it was read.
pub(super) const SEAL_EXISTING_LUA: &str = r#"
for i, k in ipairs(KEYS) do
  if redis.call('HGET', k, 'data') ~= ARGV[2 * i - 1] then return 0 end
end
for i, k in ipairs(KEYS) do
  redis.call('HSET', k, 'data', ARGV[2 * i])
end
return 1
"#;

/// KEYS[1] account; ARGV: channel, message.
pub(super) const REMOVE_LUA: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"#;

/// A record written with no key, to be sealed: `(key, data as read, sealed data)`.
type ClearRecord = (String, String, Vec<u8>);

/// An account as a write sends it ([`Shared::write_of`]).
pub(super) struct AccountWrite {
    /// `orp:acct:…`.
    pub(super) key: String,
    /// The record, the hash's `data` field.
    pub(super) record: Vec<u8>,
    /// The message on `orp:updates`.
    pub(super) announcement: String,
}

/// `HMGET key gen data`: an account's generation and record.
fn read_cmd(key: &str) -> redis::Cmd {
    let mut c = redis::cmd("HMGET");
    c.arg(key).arg("gen").arg("data");
    c
}

impl Shared {
    /// The account stored for `provider`/`account`, if any.
    pub(super) async fn read(
        &self,
        provider: Provider,
        account: &str,
    ) -> Result<Option<StoredAccount>, StoreError> {
        let key = self.account_key(provider, account);
        let (gen, data): (Option<String>, Option<String>) =
            self.query("read account", &read_cmd(&key)).await?;
        match (gen, data) {
            (Some(g), Some(d)) => self
                .decode(&key, &g, &d)
                .map(|(a, _)| Some(a))
                .map_err(|e| self.error(&key, e)),
            _ => Ok(None),
        }
    }

    /// Every stored account. A record the configured keys cannot open fails the load (nothing
    /// written); a malformed one is skipped with a warning. With `store.encrypt_existing`, the
    /// records written with no key are sealed ([`seal_existing`](Shared::seal_existing)).
    pub(super) async fn load(&self) -> Result<Vec<StoredAccount>, StoreError> {
        let keys = self.scan_keys("scan accounts", ACCOUNT_PATTERN).await?;
        let mut out = Vec::with_capacity(keys.len());
        let mut clear = Vec::new();
        for chunk in keys.chunks(256) {
            let rows: Vec<(Option<String>, Option<String>)> =
                self.per_key("load accounts", chunk, read_cmd).await?;
            for (k, row) in chunk.iter().zip(rows) {
                if let (Some(g), Some(d)) = row {
                    match self.decode(k, &g, &d) {
                        Ok((a, Sealing::Clear)) if self.codec.encrypted() => {
                            let sealed = self.codec.encode(&a, RecordGeneration::Omitted);
                            clear.push((k.clone(), d, sealed));
                            out.push(a);
                        }
                        Ok((a, _)) => out.push(a),
                        // The configured keys cannot open it: a start-up error, nothing written.
                        Err(RecordError::Sealing(e)) => return Err(self.error(k, e)),
                        Err(RecordError::Malformed(e)) => {
                            tracing::warn!(key = %k, error = %e, "skipping an unreadable stored account")
                        }
                    }
                }
            }
        }
        if !clear.is_empty() {
            self.seal_existing(&clear).await?;
        }
        Ok(out)
    }

    /// Opens the record stored under `key` (generation `gen`, record `data`).
    fn decode(
        &self,
        key: &str,
        gen: &str,
        data: &str,
    ) -> Result<(StoredAccount, Sealing), RecordError> {
        let generation = gen
            .parse::<u64>()
            .map_err(|_| RecordError::Malformed("generation is not a number".into()))?;
        let under = parse_account_key(key)
            .ok_or_else(|| RecordError::Malformed("not an account key".into()))?;
        self.codec
            .decode(under, data.as_bytes(), Generation::Beside(generation))
    }

    /// `store.encrypt_existing`: replaces the records written with no key by their sealed form
    /// in one atomic script, which writes nothing if any of them changed since it was read.
    async fn seal_existing(&self, clear: &[ClearRecord]) -> Result<(), StoreError> {
        // One script for all on one node; one per account on a cluster (one slot a script).
        let batches: Vec<&[ClearRecord]> = if self.cluster() {
            clear.chunks(1).collect()
        } else {
            vec![clear]
        };
        let what = "encrypt existing records";
        for batch in batches {
            let mut inv = self.seal_existing.prepare_invoke();
            for (k, old, new) in batch {
                inv.key(k).arg(old).arg(new.as_slice());
            }
            let n: i64 = self.invoke(what, &inv).await?;
            if n != 1 {
                return Err(self.error(
                    what,
                    "another writer changed them meanwhile; nothing more was written, start again",
                ));
            }
        }
        tracing::info!(redis = %self.addr, accounts = clear.len(),
            "encrypted the token store's records written with no key (store.encrypt_existing)");
        Ok(())
    }

    /// What a write of `a` sends: its key, its record (the generation left out: it is the
    /// hash's `gen` field) and its announcement.
    pub(super) fn write_of(&self, a: &StoredAccount) -> AccountWrite {
        AccountWrite {
            key: self.account_key(a.provider, &a.account),
            record: self.codec.encode(a, RecordGeneration::Omitted),
            announcement: self.announcement(a.provider, &a.account),
        }
    }

    /// Writes `account` (never lowering its generation) and announces it; returns the
    /// generation written.
    pub(super) async fn save(&self, account: &StoredAccount) -> Result<u64, StoreError> {
        let write = self.write_of(account);
        let g: String = self
            .invoke(
                "save account",
                self.save
                    .key(write.key)
                    .arg(account.generation)
                    .arg(write.record)
                    .arg(CHANNEL)
                    .arg(write.announcement),
            )
            .await?;
        Ok(g.parse().unwrap_or(account.generation))
    }

    /// Removes an account and announces it.
    pub(super) async fn remove(&self, provider: Provider, account: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .invoke(
                "remove account",
                self.remove
                    .key(self.account_key(provider, account))
                    .arg(CHANNEL)
                    .arg(self.announcement(provider, account)),
            )
            .await?;
        Ok(())
    }

    /// `SET orp:claim:{key} {origin} NX PX ttl`: `true` when this call set it.
    pub(super) async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        self.set_if_absent("claim", &claim_key(key), &self.origin, ttl_ms)
            .await
    }
}
