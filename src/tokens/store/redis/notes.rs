//! Notes: short-lived values the replicas share and the store does not interpret (the sidecar
//! shares upstream rate limits this way). A note is `orp:note:{name}` with a TTL plus a message
//! `{origin} {payload}` on `orp:notes`; the subscriber forwards the other replicas' messages,
//! and after every (re)subscription every note still stored.

use std::sync::MutexGuard;
use std::time::Duration;

use tokio::sync::mpsc;

use super::keys::{note_key, NOTES_CHANNEL, NOTE_PATTERN};
use super::{RedisStore, Shared};
use crate::tokens::store::StoreError;

impl RedisStore {
    /// Shares a note with the other replicas: `SET orp:note:{name} payload PX ttl` and a
    /// message on `orp:notes`, in one transaction, bounded like every command. The store does
    /// not interpret `payload`; a later note of the same `name` replaces it.
    pub async fn publish_note(
        &self,
        name: &str,
        payload: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let s = &self.shared;
        let mut c = s.conn.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(note_key(name))
            .arg(payload)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("PUBLISH")
            .arg(NOTES_CHANNEL)
            .arg(format!("{} {payload}", s.origin))
            .ignore();
        s.op("publish note", pipe.query_async::<()>(&mut c)).await
    }

    /// The payloads of every note stored now (one's own included).
    pub async fn stored_notes(&self) -> Result<Vec<String>, StoreError> {
        self.shared.stored_notes().await
    }

    /// The payloads of the notes other replicas publish from now on, and after every
    /// (re)subscription of the subscriber every note still stored (see the
    /// [module documentation](super)). One consumer: a second call replaces the first.
    pub fn notes(&self) -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.shared.notes_consumer() = Some(tx);
        rx
    }
}

impl Shared {
    /// The consumer of [`RedisStore::notes`], if any.
    fn notes_consumer(&self) -> MutexGuard<'_, Option<mpsc::UnboundedSender<String>>> {
        self.notes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a note's payload to the consumer of [`RedisStore::notes`], if any.
    fn forward_note(&self, payload: String) {
        if let Some(tx) = self.notes_consumer().as_ref() {
            let _ = tx.send(payload);
        }
    }

    /// A message on `orp:notes` (`{origin} {payload}`): forwards its payload unless it is this
    /// store's own.
    pub(super) fn on_note(&self, message: &[u8]) {
        let message = String::from_utf8_lossy(message);
        if let Some((origin, note)) = message.split_once(' ') {
            if origin != self.origin {
                self.forward_note(note.to_string());
            }
        }
    }

    /// Forwards every stored note (after a (re)subscription: the ones missed meanwhile).
    pub(super) async fn resync_notes(&self) -> Result<(), StoreError> {
        if self.notes_consumer().is_none() {
            return Ok(());
        }
        for note in self.stored_notes().await? {
            self.forward_note(note);
        }
        Ok(())
    }

    /// The payloads of every note stored now.
    async fn stored_notes(&self) -> Result<Vec<String>, StoreError> {
        let keys = self.scan_keys("scan notes", NOTE_PATTERN).await?;
        let values: Vec<Option<String>> = self
            .per_key("read notes", &keys, |k| {
                let mut c = redis::cmd("GET");
                c.arg(k);
                c
            })
            .await?;
        Ok(values.into_iter().flatten().collect())
    }
}
