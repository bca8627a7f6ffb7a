//! Encryption at rest: the keys ([`Encryption`]: the current one and those being rotated
//! out), their ids, and sealing and opening one token with AES-256-GCM, bound by its
//! additional authenticated data to the provider, the account the record is stored under and
//! the field.

use crate::token::{hex, sha256};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

use crate::provider::Provider;
use crate::token::Secret;

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
    pub(super) current: SealKey,
    previous: Vec<SealKey>,
    pub(super) encrypt_existing: bool,
}

pub(super) struct SealKey {
    pub(super) id: String,
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
        let id = hex(&sha256(&[KEY_ID_PREFIX, &bytes])[..8]);
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

    /// The key named `id`, and whether it is the current one.
    pub(super) fn find(&self, id: &str) -> Option<(&SealKey, bool)> {
        if self.current.id == id {
            return Some((&self.current, true));
        }
        self.previous
            .iter()
            .find(|k| k.id == id)
            .map(|k| (k, false))
    }
}

/// The additional authenticated data of a token: who it belongs to and which field it is.
pub(super) fn aad(provider: Provider, account: &str, field: &str) -> Vec<u8> {
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

/// `base64(nonce ‖ ciphertext ‖ tag)` of `plain`, with a fresh random nonce.
pub(super) fn seal(key: &SealKey, aad: &[u8], plain: &str) -> String {
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

/// The token [`seal`] sealed, or `None` when it fails authentication.
pub(super) fn open(key: &SealKey, aad: &[u8], sealed: &str) -> Option<String> {
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
