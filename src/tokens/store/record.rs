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

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoredAccount;
use crate::provider::Provider;
use crate::refresh::RefreshError;
use crate::token::Secret;

/// The record version this build writes (and the only one it reads).
const RECORD_VERSION: u32 = 1;

/// Domain separation for the AAD and the key id.
const AAD_PREFIX: &[u8] = b"oauth-refresh-proxy/token/v1";
const KEY_ID_PREFIX: &[u8] = b"oauth-refresh-proxy/key-id/v1";

/// Keys for sealing the tokens a store writes: the current key (every write is sealed with it)
/// and previous keys (still opened, so that a key can be rotated without downtime).
///
/// Keys are 32 random bytes, given base64-encoded (standard or URL-safe alphabet, padding
/// optional), e.g. from `openssl rand -base64 32`. `Debug` shows key ids only.
///
/// ```
/// use oauth_refresh_proxy::store::Encryption;
/// use oauth_refresh_proxy::Secret;
///
/// let key = Secret::new("q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=");
/// let enc = Encryption::new(&key).unwrap().encrypt_existing(true);
/// assert_eq!(enc.key_id().len(), 16);
/// assert!(Encryption::new(&Secret::new("too short")).is_err());
/// ```
pub struct Encryption {
    current: SealKey,
    previous: Vec<SealKey>,
    encrypt_existing: bool,
}

struct SealKey {
    id: String,
    key: LessSafeKey,
}

/// A key that is not 32 bytes of base64. The message never contains the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidKey(String);

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryption")
            .field("key_id", &self.current.id)
            .field(
                "previous_key_ids",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .field("encrypt_existing", &self.encrypt_existing)
            .finish()
    }
}

impl SealKey {
    fn parse(encoded: &Secret) -> Result<SealKey, InvalidKey> {
        let text = encoded.expose().trim();
        let bytes = STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
            .map_err(|_| InvalidKey("not valid base64".into()))?;
        if bytes.len() != 32 {
            return Err(InvalidKey(format!(
                "must be 32 bytes (base64 of 32 random bytes, e.g. `openssl rand -base64 32`), not {}",
                bytes.len()
            )));
        }
        let mut h = Sha256::new();
        h.update(KEY_ID_PREFIX);
        h.update(&bytes);
        let id: String = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| InvalidKey("not an AES-256 key".into()))?;
        Ok(SealKey {
            id,
            key: LessSafeKey::new(key),
        })
    }
}

impl Encryption {
    /// Tokens sealed with `key` (base64 of 32 bytes).
    pub fn new(key: &Secret) -> Result<Encryption, InvalidKey> {
        Ok(Encryption {
            current: SealKey::parse(key)?,
            previous: Vec::new(),
            encrypt_existing: false,
        })
    }

    /// Also opens records sealed with `key` (a key being rotated out); they are re-sealed with
    /// the current key on their next write.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{store::Encryption, Secret};
    /// let enc = Encryption::new(&Secret::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))
    ///     .unwrap()
    ///     .previous_key(&Secret::new("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="))
    ///     .unwrap();
    /// assert!(format!("{enc:?}").contains("previous_key_ids"));
    /// ```
    pub fn previous_key(mut self, key: &Secret) -> Result<Encryption, InvalidKey> {
        self.previous.push(SealKey::parse(key)?);
        Ok(self)
    }

    /// Whether a store written with no key is sealed at start-up (all its records in one
    /// transaction) instead of being a start-up error. Default `false`.
    pub fn encrypt_existing(mut self, yes: bool) -> Encryption {
        self.encrypt_existing = yes;
        self
    }

    /// The current key's id as records name it (16 hex digits; not secret).
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    fn find(&self, id: &str) -> Option<(&SealKey, bool)> {
        if self.current.id == id {
            return Some((&self.current, true));
        }
        self.previous
            .iter()
            .find(|k| k.id == id)
            .map(|k| (k, false))
    }
}

fn aad(provider: Provider, account: &str, field: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_PREFIX.len() + account.len() + field.len() + 16);
    for part in [
        AAD_PREFIX,
        provider.as_str().as_bytes(),
        account.as_bytes(),
        field.as_bytes(),
    ] {
        a.extend_from_slice(&(part.len() as u32).to_be_bytes());
        a.extend_from_slice(part);
    }
    a
}

fn seal(key: &SealKey, aad: &[u8], plain: &str) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .expect("the system random source works");
    let mut buf = plain.as_bytes().to_vec();
    key.key
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .expect("sealing a token cannot fail");
    let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    STANDARD.encode(out)
}

fn open(key: &SealKey, aad: &[u8], sealed: &str) -> Option<String> {
    let mut bytes = STANDARD.decode(sealed).ok()?;
    if bytes.len() < NONCE_LEN {
        return None;
    }
    let mut body = bytes.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&bytes).ok()?;
    let plain = key
        .key
        .open_in_place(nonce, Aad::from(aad), &mut body)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
    const K2: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    fn enc(k: &str) -> Encryption {
        Encryption::new(&Secret::new(k)).unwrap()
    }

    fn account() -> StoredAccount {
        let mut a = StoredAccount::new(Provider::GitHub, "octo", Secret::new("ghr_refresh_SECRET"));
        a.access_token = Some(Secret::new("ghu_access_SECRET"));
        a.generation = 4;
        a
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn errors_are_recorded_by_kind_and_old_texts_are_read_back() {
        let c = Codec::new(None);
        for err in [
            RefreshError::rejected("bad_refresh_token"),
            RefreshError::transient("backend answered 503"),
            RefreshError::unconfirmed("attempt timed out after 10s"),
        ] {
            let mut a = account();
            a.last_error = Some(err.clone());
            let bytes = c.encode(&a, RecordGeneration::Included);
            let (back, _) = c
                .decode((Provider::GitHub, "octo"), &bytes, Generation::InRecord)
                .unwrap();
            assert_eq!(back.last_error, Some(err));
        }
        let old = |text: &str| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&c.encode(&account(), RecordGeneration::Included)).unwrap();
            v["last_error"] = text.into();
            let bytes = serde_json::to_vec(&v).unwrap();
            c.decode((Provider::GitHub, "octo"), &bytes, Generation::InRecord)
                .unwrap()
                .0
                .last_error
        };
        assert_eq!(
            old("refresh token rejected: gone"),
            Some(RefreshError::rejected("gone"))
        );
        assert_eq!(
            old("refresh temporarily unavailable: 503"),
            Some(RefreshError::transient("503"))
        );
        assert_eq!(old("odd"), Some(RefreshError::transient("odd")));
    }

    #[test]
    fn clear_records_round_trip() {
        let c = Codec::new(None);
        let bytes = c.encode(&account(), RecordGeneration::Included);
        let (back, s) = c
            .decode((Provider::GitHub, "octo"), &bytes, Generation::InRecord)
            .unwrap();
        assert_eq!(back, account());
        assert_eq!(s, Sealing::Clear);
        let (beside, _) = c
            .decode(
                (Provider::GitHub, "octo"),
                &c.encode(&account(), RecordGeneration::Omitted),
                Generation::Beside(9),
            )
            .unwrap();
        assert_eq!(beside.generation, 9);
    }

    #[test]
    fn sealed_records_hold_no_token_bytes_and_round_trip() {
        let c = Codec::new(Some(enc(K1)));
        let bytes = c.encode(&account(), RecordGeneration::Included);
        assert!(!contains(&bytes, "SECRET"));
        assert!(!contains(&bytes, "ghr_"));
        assert!(contains(&bytes, enc(K1).key_id()));
        let (back, s) = c
            .decode((Provider::GitHub, "octo"), &bytes, Generation::InRecord)
            .unwrap();
        assert_eq!(back, account());
        assert_eq!(s, Sealing::Current);
        // A fresh nonce per write.
        assert_ne!(bytes, c.encode(&account(), RecordGeneration::Included));
    }

    #[test]
    fn wrong_missing_and_previous_keys() {
        let sealed = Codec::new(Some(enc(K1))).encode(&account(), RecordGeneration::Included);
        let clear = Codec::new(None).encode(&account(), RecordGeneration::Included);
        let at = (Provider::GitHub, "octo");
        let g = Generation::InRecord;
        let err = |c: &Codec, b: &[u8]| c.decode(at, b, g).unwrap_err();
        assert!(
            matches!(err(&Codec::new(None), &sealed), RecordError::Sealing(m) if m.contains("no store.encryption_key"))
        );
        assert!(
            matches!(err(&Codec::new(Some(enc(K2))), &sealed), RecordError::Sealing(m) if m.contains("neither"))
        );
        assert!(
            matches!(err(&Codec::new(Some(enc(K2))), &clear), RecordError::Sealing(m) if m.contains("encrypt_existing"))
        );
        let rotated = Codec::new(Some(enc(K2).previous_key(&Secret::new(K1)).unwrap()));
        assert_eq!(rotated.decode(at, &sealed, g).unwrap().1, Sealing::Previous);
        let existing = Codec::new(Some(enc(K2).encrypt_existing(true)));
        assert_eq!(existing.decode(at, &clear, g).unwrap().1, Sealing::Clear);
    }

    #[test]
    fn tampered_or_moved_records_fail() {
        let c = Codec::new(Some(enc(K1)));
        let bytes = c.encode(&account(), RecordGeneration::Included);
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        // Moved: the record claims the other account too, so only the seal can tell.
        v["account"] = "mallory".into();
        let moved = serde_json::to_vec(&v).unwrap();
        let e = c
            .decode((Provider::GitHub, "mallory"), &moved, Generation::InRecord)
            .unwrap_err();
        assert!(
            matches!(e, RecordError::Sealing(ref m) if m.contains("authentication")),
            "{e}"
        );
        // Stored under another key, unedited: a sealing error too (a start-up error in Redis,
        // which skips malformed records).
        let e = c
            .decode((Provider::GitHub, "mallory"), &bytes, Generation::InRecord)
            .unwrap_err();
        assert!(
            matches!(e, RecordError::Sealing(ref m) if m.contains("another account")),
            "{e}"
        );
        // In the clear, the same mismatch stays a malformed record.
        let clear = Codec::new(None).encode(&account(), RecordGeneration::Included);
        let e = Codec::new(None)
            .decode((Provider::GitHub, "mallory"), &clear, Generation::InRecord)
            .unwrap_err();
        assert!(matches!(e, RecordError::Malformed(_)));
        // Tokens swapped between fields.
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let r = v["refresh_token"].clone();
        v["refresh_token"] = v["access_token"].clone();
        v["access_token"] = r;
        let swapped = serde_json::to_vec(&v).unwrap();
        assert!(c
            .decode((Provider::GitHub, "octo"), &swapped, Generation::InRecord)
            .is_err());
        // One flipped character.
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let mut t = v["refresh_token"].as_str().unwrap().to_string();
        let last = if t.starts_with('A') { "B" } else { "A" };
        t.replace_range(0..1, last);
        v["refresh_token"] = t.into();
        let flipped = serde_json::to_vec(&v).unwrap();
        assert!(c
            .decode((Provider::GitHub, "octo"), &flipped, Generation::InRecord)
            .is_err());
    }

    #[test]
    fn errors_never_quote_the_record() {
        let c = Codec::new(None);
        let e = c
            .decode(
                (Provider::GitHub, "octo"),
                br#"{"refresh_token": ghr_SECRET}"#,
                Generation::InRecord,
            )
            .unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(Encryption::new(&Secret::new("!!!")).is_err());
        assert!(Encryption::new(&Secret::new("AAAA")).is_err());
        // URL-safe alphabet without padding is accepted too, and names the same key.
        let url = K1.replace('+', "-").replace('/', "_");
        let url = url.trim_end_matches('=');
        assert_eq!(enc(url).key_id(), enc(K1).key_id());
        assert!(!format!("{:?}", enc(K1)).contains(K1));
    }
}
