//! What the Redis store writes where: key names (hash-tagged on a cluster, so that both keys of
//! an account share one slot), the channels, and the announcement a write publishes.

use serde::{Deserialize, Serialize};

use super::Shared;
use crate::provider::Provider;

/// The channel announcing writes.
pub(super) const CHANNEL: &str = "orp:updates";
/// The channel of notes, and the pattern of their keys.
pub(super) const NOTES_CHANNEL: &str = "orp:notes";
pub(super) const NOTE_PATTERN: &str = "orp:note:*";
/// The prefix of [`Store::claim`](super::Store::claim) keys.
const CLAIM_PREFIX: &str = "orp:claim:";
/// The pattern of account keys.
pub(super) const ACCOUNT_PATTERN: &str = "orp:acct:*";

/// The key of the note `name` ([`super::RedisStore::publish_note`]).
pub(super) fn note_key(name: &str) -> String {
    format!("orp:note:{name}")
}

/// The key of a [`Store::claim`](super::Store::claim) of `key`.
pub(super) fn claim_key(key: &str) -> String {
    format!("{CLAIM_PREFIX}{key}")
}

/// An announcement on [`CHANNEL`]: who wrote (`o`, the writer's origin), and which account
/// (`p` provider, `a` account).
#[derive(Serialize, Deserialize)]
pub(super) struct Announcement {
    pub(super) o: String,
    pub(super) p: String,
    pub(super) a: String,
}

/// How an account's keys are spelt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyForm {
    /// One node: `orp:<kind>:<provider>:<account>`.
    Plain,
    /// A cluster: `orp:<kind>:{<provider>:<account>}`, the hash tag putting both keys of an
    /// account in one slot.
    HashTagged,
}

/// Which of an account's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyKind {
    /// `orp:acct:…`, the account's hash (`gen`, `data`).
    Account,
    /// `orp:lock:…`, its refresh lock.
    Lock,
}

impl KeyKind {
    fn as_str(self) -> &'static str {
        match self {
            KeyKind::Account => "acct",
            KeyKind::Lock => "lock",
        }
    }
}

/// The provider and account an account key names: `orp:acct:<provider>:<account>` (one node)
/// or `orp:acct:{<provider>:<account>}` (a cluster's hash-tagged form).
pub(super) fn parse_account_key(key: &str) -> Option<(Provider, &str)> {
    let rest = key.strip_prefix("orp:acct:")?;
    let rest = match rest.strip_prefix('{') {
        Some(tagged) => tagged.strip_suffix('}')?,
        None => rest,
    };
    let (p, a) = rest.split_once(':')?;
    Some((p.parse().ok()?, a))
}

/// The `kind` key of `provider`/`account`, spelt in `form`.
pub(super) fn key_of(form: KeyForm, kind: KeyKind, provider: Provider, account: &str) -> String {
    let kind = kind.as_str();
    match form {
        KeyForm::HashTagged => format!("orp:{kind}:{{{}:{account}}}", provider.as_str()),
        KeyForm::Plain => format!("orp:{kind}:{}:{account}", provider.as_str()),
    }
}

impl Shared {
    /// The `kind` key of an account, in this deployment's form.
    fn key(&self, kind: KeyKind, provider: Provider, account: &str) -> String {
        let form = if self.cluster() {
            KeyForm::HashTagged
        } else {
            KeyForm::Plain
        };
        key_of(form, kind, provider, account)
    }

    /// The key of an account's hash.
    pub(super) fn account_key(&self, provider: Provider, account: &str) -> String {
        self.key(KeyKind::Account, provider, account)
    }

    /// The key of an account's refresh lock.
    pub(super) fn lock_key(&self, provider: Provider, account: &str) -> String {
        self.key(KeyKind::Lock, provider, account)
    }

    /// This store's announcement of a write to `provider`/`account`.
    pub(super) fn announcement(&self, provider: Provider, account: &str) -> String {
        serde_json::to_string(&Announcement {
            o: self.origin.clone(),
            p: provider.as_str().to_string(),
            a: account.to_string(),
        })
        .expect("an announcement serialises")
    }
}
