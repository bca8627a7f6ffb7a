//! One account as the durable stores write it: the record codec shared by the file and the
//! Redis store, and encryption at rest ([`Encryption`]).
//!
//! A record is JSON: the account's state, with its two tokens either as written (no key) or
//! sealed with AES-256-GCM (aws-lc-rs, the crypto provider rustls already uses). A sealed token
//! is `base64(nonce ‖ ciphertext ‖ tag)`, a fresh random 96-bit nonce per token and write, and
//! its additional authenticated data binds it to the provider, the account **the record is
//! stored under** and the field (`refresh_token` / `access_token`): a record copied to another
//! account's key, or a token swapped between fields, fails to open. The record then names the
//! key that sealed it by a key id (16 hex digits of a SHA-256 of the key, never the key); ids,
//! timestamps, the generation and the seed fingerprint stay readable.
//!
//! Opening rules, the same for both stores:
//!
//! | record | no `encryption_key` | `encryption_key` (+ `previous_keys`) |
//! |---|---|---|
//! | written with no key | read | error, unless `encrypt_existing` (then re-sealed at start-up) |
//! | sealed with the current key | error | read |
//! | sealed with a previous key | error | read, re-sealed with the current key on its next write |
//! | sealed with any other key, or failing authentication | error | error |
//!
//! Errors never quote a stored value (it holds tokens): a malformed record is described by
//! serde's error class and position only.

mod seal;
#[cfg(test)]
mod tests;

pub use seal::{Encryption, InvalidKey};

use serde::{Deserialize, Serialize};

use super::StoredAccount;
use crate::provider::Provider;
use crate::refresh::RefreshError;
use crate::token::Secret;
use seal::{aad, open, seal};

/// The record version this build writes (and the only one it reads).
const RECORD_VERSION: u32 = 1;

/// How an opened record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sealing {
    /// Tokens in the clear (no key configured, or `encrypt_existing` about to seal it).
    Clear,
    /// Sealed with the current key.
    Current,
    /// Sealed with a previous key: re-sealed on the next write.
    Previous,
}

/// Why a record could not be opened. Never quotes the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// Not a record this build reads (JSON, version, provider, the key it is stored under).
    Malformed(String),
    /// The record is fine but the configured keys cannot open it (no key, wrong key, tampered).
    Sealing(String),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Malformed(m) | RecordError::Sealing(m) => f.write_str(m),
        }
    }
}

/// One account as stored (private format). Holds secrets: deliberately not `Debug`.
#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(default = "record_version")]
    v: u32,
    provider: String,
    account: String,
    refresh_token: String,
    access_token: Option<String>,
    expires_at: Option<u64>,
    /// Absent in Redis records, whose generation is the hash's `gen` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    needs_reauth: bool,
    last_refresh_at: Option<u64>,
    last_error: Option<RecordedError>,
    seed_fingerprint: Option<String>,
    /// The id of the key that sealed the tokens; absent when they are in the clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// A refresh error as recorded: its kind and reason (`{"kind": "rejected", "reason": "…"}`).
/// Records written before errors were typed hold the error's display text instead; it is read
/// back by its display prefix, the one place a text becomes an error again.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RecordedError {
    Typed { kind: ErrorKind, reason: String },
    Text(String),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ErrorKind {
    Rejected,
    Transient,
    Unconfirmed,
}

impl From<&RefreshError> for RecordedError {
    fn from(e: &RefreshError) -> Self {
        let (kind, reason) = match e {
            RefreshError::Rejected(r) => (ErrorKind::Rejected, r),
            RefreshError::Transient { message, .. } => (ErrorKind::Transient, message),
            RefreshError::Unconfirmed(m) => (ErrorKind::Unconfirmed, m),
        };
        RecordedError::Typed {
            kind,
            reason: reason.clone(),
        }
    }
}

impl From<RecordedError> for RefreshError {
    fn from(e: RecordedError) -> Self {
        match e {
            RecordedError::Typed { kind, reason } => match kind {
                ErrorKind::Rejected => RefreshError::Rejected(reason),
                ErrorKind::Transient => RefreshError::transient(reason),
                ErrorKind::Unconfirmed => RefreshError::Unconfirmed(reason),
            },
            RecordedError::Text(text) => {
                let rejected = RefreshError::rejected("").to_string();
                let unavailable = RefreshError::transient("").to_string();
                match (
                    text.strip_prefix(&rejected),
                    text.strip_prefix(&unavailable),
                ) {
                    (Some(reason), _) => RefreshError::rejected(reason),
                    (_, Some(reason)) => RefreshError::transient(reason),
                    _ => RefreshError::transient(text),
                }
            }
        }
    }
}

fn record_version() -> u32 {
    RECORD_VERSION
}

/// The codec of a store: encodes accounts into records and opens them, with or without
/// encryption.
#[derive(Debug, Default)]
pub(crate) struct Codec {
    encryption: Option<Encryption>,
}

/// Where the generation of a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    not(all(feature = "file-store", feature = "redis-store")),
    allow(dead_code)
)]
pub(crate) enum Generation {
    /// In the record (the file store).
    InRecord,
    /// Beside it (Redis' `gen` hash field), so not written into the record.
    Beside(u64),
}

/// Whether a record carries its generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    not(all(feature = "file-store", feature = "redis-store")),
    allow(dead_code)
)]
pub(crate) enum RecordGeneration {
    /// Written into the record (the file store).
    Included,
    /// Left out: it lives beside the record (Redis' `gen` hash field).
    Omitted,
}

impl Codec {
    /// A codec that seals with `encryption` when given.
    pub(crate) fn new(encryption: Option<Encryption>) -> Codec {
        Codec { encryption }
    }

    /// Whether tokens are sealed.
    pub(crate) fn encrypted(&self) -> bool {
        self.encryption.is_some()
    }

    /// The record of `a`, its generation included or not.
    pub(crate) fn encode(&self, a: &StoredAccount, generation: RecordGeneration) -> Vec<u8> {
        let (refresh_token, access_token, kid) = match &self.encryption {
            None => (
                a.refresh_token.expose().to_string(),
                a.access_token.as_ref().map(|s| s.expose().to_string()),
                None,
            ),
            Some(e) => {
                let key = &e.current;
                (
                    seal(
                        key,
                        &aad(a.provider, &a.account, "refresh_token"),
                        a.refresh_token.expose(),
                    ),
                    a.access_token.as_ref().map(|s| {
                        seal(
                            key,
                            &aad(a.provider, &a.account, "access_token"),
                            s.expose(),
                        )
                    }),
                    Some(key.id.clone()),
                )
            }
        };
        let record = Record {
            v: RECORD_VERSION,
            provider: a.provider.as_str().to_string(),
            account: a.account.clone(),
            refresh_token,
            access_token,
            expires_at: a.expires_at,
            generation: (generation == RecordGeneration::Included).then_some(a.generation),
            needs_reauth: a.needs_reauth,
            last_refresh_at: a.last_refresh_at,
            last_error: a.last_error.as_ref().map(RecordedError::from),
            seed_fingerprint: a.seed_fingerprint.clone(),
            kid,
        };
        serde_json::to_vec(&record).expect("a record always serialises")
    }

    /// Opens the record stored under `(provider, account)`.
    pub(crate) fn decode(
        &self,
        stored_under: (Provider, &str),
        bytes: &[u8],
        generation: Generation,
    ) -> Result<(StoredAccount, Sealing), RecordError> {
        let malformed = RecordError::Malformed;
        let r: Record = serde_json::from_slice(bytes).map_err(|e| {
            malformed(format!(
                "a stored account record is malformed ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        if r.v != RECORD_VERSION {
            return Err(malformed(format!(
                "a stored account record has version {} (this build reads version {RECORD_VERSION})",
                r.v
            )));
        }
        let provider = r.provider.parse::<Provider>().map_err(|_| {
            malformed("a stored account record names an unknown provider".to_string())
        })?;
        let (under_provider, under_account) = stored_under;
        if provider != under_provider || r.account != under_account {
            let what = format!(
                "the record stored for {under_provider}/{under_account} belongs to another account"
            );
            // A sealed record moved to another account's key is a record these keys cannot
            // open for that account (a start-up error in both stores), not a malformed one.
            return Err(if r.kid.is_some() {
                RecordError::Sealing(format!("{what} (copied from another account)"))
            } else {
                malformed(what)
            });
        }
        let generation = match generation {
            Generation::Beside(g) => g,
            Generation::InRecord => r.generation.ok_or_else(|| {
                malformed("a stored account record has no generation".to_string())
            })?,
        };
        let who = format!("{under_provider}/{under_account}");
        let (refresh_token, access_token, sealing) = match (&self.encryption, &r.kid) {
            (None, None) => (r.refresh_token, r.access_token, Sealing::Clear),
            (None, Some(_)) => {
                return Err(RecordError::Sealing(format!(
                    "the record of {who} is encrypted, and no store.encryption_key is configured"
                )))
            }
            (Some(e), None) if e.encrypt_existing => {
                (r.refresh_token, r.access_token, Sealing::Clear)
            }
            (Some(_), None) => {
                return Err(RecordError::Sealing(format!(
                    "the record of {who} was written with no encryption key \
                     (set store.encrypt_existing = true to encrypt the store at start-up)"
                )))
            }
            (Some(e), Some(kid)) => {
                let Some((key, current)) = e.find(kid) else {
                    return Err(RecordError::Sealing(format!(
                        "the record of {who} was encrypted with a key (id {kid}) that is neither \
                         store.encryption_key nor one of store.previous_keys"
                    )));
                };
                let failed = || {
                    RecordError::Sealing(format!(
                        "the record of {who} fails authentication \
                         (altered, or copied from another account)"
                    ))
                };
                let refresh = open(
                    key,
                    &aad(provider, &r.account, "refresh_token"),
                    &r.refresh_token,
                )
                .ok_or_else(failed)?;
                let access = match &r.access_token {
                    None => None,
                    Some(s) => Some(
                        open(key, &aad(provider, &r.account, "access_token"), s)
                            .ok_or_else(failed)?,
                    ),
                };
                let sealing = if current {
                    Sealing::Current
                } else {
                    Sealing::Previous
                };
                (refresh, access, sealing)
            }
        };
        Ok((
            StoredAccount {
                provider,
                account: r.account,
                refresh_token: Secret::new(refresh_token),
                access_token: access_token.map(Secret::new),
                expires_at: r.expires_at,
                generation,
                needs_reauth: r.needs_reauth,
                last_refresh_at: r.last_refresh_at,
                last_error: r.last_error.map(RefreshError::from),
                seed_fingerprint: r.seed_fingerprint,
            },
            sealing,
        ))
    }
}
