//! Sharing rate limits between replicas through the Redis store (SPEC 4.10 with
//! `store.kind = "redis"`): one replica learning a limit protects the others.
//!
//! Each limit this replica learns becomes a note of the store ([`RedisStore::publish_note`]):
//! `SET orp:note:rl:{provider}:{account}:{scope}:{upstream}` with the limit as JSON and a TTL
//! ending with the limit, and a message on the notes channel. Every replica applies the notes
//! of the others as they arrive (and, after its subscriber reconnects, those still stored), if
//! it has a route to that upstream. Checks never touch Redis: they read the local maps only.
//!
//! Publishing goes through a bounded queue ([`QUEUE`]) drained by one task; a full queue drops
//! the note, and a Redis failure is logged at `warn`. Neither ever fails or delays a request.

use std::sync::{Arc, Weak};

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{now_ms, Limit, RateLimits, Scope};
use crate::store::redis::RedisStore;
use crate::Provider;

/// How many learnt limits may wait to be published; more are dropped.
pub const QUEUE: usize = 1024;

/// A limit learnt by one replica, as shared with the others.
#[derive(Clone, Debug)]
pub(super) struct Note {
    pub(super) origin: String,
    pub(super) provider: Provider,
    pub(super) account: String,
    pub(super) scope: Scope,
    pub(super) limit: Limit,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    /// The upstream origin.
    u: String,
    p: String,
    a: String,
    s: String,
    /// Until, unix milliseconds.
    t: u64,
    /// The `x-ratelimit-*` headers (UTF-8 values only).
    h: Vec<(String, String)>,
}

impl Note {
    fn name(&self) -> String {
        format!(
            "rl:{}:{}:{}:{}",
            self.provider.as_str(),
            self.account,
            self.scope.as_str(),
            self.origin
        )
    }

    fn encode(&self) -> String {
        let wire = Wire {
            u: self.origin.clone(),
            p: self.provider.as_str().to_string(),
            a: self.account.clone(),
            s: self.scope.as_str().to_string(),
            t: self.limit.until_ms,
            h: self
                .limit
                .headers
                .iter()
                .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect(),
        };
        serde_json::to_string(&wire).unwrap_or_default()
    }

    fn decode(payload: &str) -> Option<Note> {
        let w: Wire = serde_json::from_str(payload).ok()?;
        let headers: Vec<(HeaderName, HeaderValue)> =
            w.h.iter()
                .filter(|(n, _)| n.starts_with("x-ratelimit-"))
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect();
        Some(Note {
            origin: w.u,
            provider: w.p.parse().ok()?,
            account: w.a,
            scope: Scope::from_name(&w.s)?,
            limit: Limit {
                // A note cannot impose more than this replica's own cap.
                until_ms: w
                    .t
                    .min(now_ms().saturating_add(super::MAX_WAIT.as_millis() as u64)),
                headers: headers.into(),
            },
        })
    }
}

impl RateLimits {
    /// Shares this replica's limits with the other replicas of `store` and applies theirs,
    /// starting with the ones stored now (see the [module docs](self)). Needs a tokio runtime,
    /// and the store's subscriber for the notes that come later ([`Tokens`](crate::Tokens)
    /// built with the store starts it). A second call does nothing.
    pub fn share(&self, store: Arc<RedisStore>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: rate limits are not shared between replicas");
            return;
        };
        let (tx, mut outgoing) = mpsc::channel::<Note>(QUEUE);
        if self.shared.outbox.set(tx).is_err() {
            return;
        }
        let mut incoming = store.notes();
        let weak = Arc::downgrade(&self.shared);
        let reader = store.clone();
        runtime.spawn(async move {
            // The notes stored before this call, then the ones that come.
            let stored = reader.stored_notes().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not read the rate limits shared by the other replicas");
                Vec::new()
            });
            drop(reader);
            for payload in stored {
                if !apply_payload(&weak, &payload) {
                    return;
                }
            }
            while let Some(payload) = incoming.recv().await {
                if !apply_payload(&weak, &payload) {
                    return;
                }
            }
        });
        runtime.spawn(async move {
            while let Some(note) = outgoing.recv().await {
                let ttl = std::time::Duration::from_millis(
                    note.limit.until_ms.saturating_sub(now_ms()).max(1),
                );
                if let Err(e) = store.publish_note(&note.name(), &note.encode(), ttl).await {
                    tracing::warn!(provider = %note.provider, account = %note.account, error = %e, "could not share a rate limit with the other replicas");
                }
            }
        });
    }
}

/// Applies one note's payload to the limits, if they still exist; `false` once they are gone.
fn apply_payload(limits: &Weak<super::Shared>, payload: &str) -> bool {
    let Some(shared) = limits.upgrade() else {
        return false;
    };
    if !payload.starts_with('{') {
        return true; // another kind of note
    }
    match Note::decode(payload) {
        Some(note) => {
            tracing::debug!(provider = %note.provider, account = %note.account, scope = note.scope.as_str(), "rate limit learnt by another replica");
            RateLimits { shared }.apply(&note);
        }
        None => tracing::debug!("ignoring a malformed shared rate limit"),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip_and_are_capped() {
        let until = now_ms() + 5_000;
        let note = Note {
            origin: "https://api.github.com:443".into(),
            provider: Provider::GitHub,
            account: "octo".into(),
            scope: Scope::Resource(super::super::Resource::Search),
            limit: Limit {
                until_ms: until,
                headers: vec![(
                    HeaderName::from_static("x-ratelimit-resource"),
                    HeaderValue::from_static("search"),
                )]
                .into(),
            },
        };
        let back = Note::decode(&note.encode()).unwrap();
        assert_eq!(back.origin, note.origin);
        assert_eq!(back.provider, Provider::GitHub);
        assert_eq!(back.account, "octo");
        assert_eq!(back.scope, note.scope);
        assert_eq!(back.limit.until_ms, until);
        assert_eq!(back.limit.headers[0].1, "search");
        assert!(note.name().starts_with("rl:github:octo:search:"));

        let far = note
            .encode()
            .replace(&until.to_string(), &u64::MAX.to_string());
        let capped = Note::decode(&far).unwrap();
        assert!(capped.limit.until_ms <= now_ms() + super::super::MAX_WAIT.as_millis() as u64);

        for bad in [
            "",
            "{}",
            r#"{"u":"x","p":"gitlab","a":"a","s":"core","t":1,"h":[]}"#,
            r#"{"u":"x","p":"github","a":"a","s":"nope","t":1,"h":[]}"#,
        ] {
            assert!(Note::decode(bad).is_none(), "{bad}");
        }
    }
}
