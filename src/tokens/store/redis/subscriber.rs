//! The subscriber: one RESP3 connection subscribed to `orp:updates` and `orp:notes`, pinged
//! every 2 s and reconnected with backoff (100 ms … 1 s) after any failure — on a cluster, to
//! the next configured node. After every (re)subscription it reloads every account (and note)
//! so that nothing written while it was away is missed; then it turns each other replica's
//! announcement into a [`StoreUpdate`] for the [`Tokens`](crate::Tokens) consuming
//! [`Store::updates`](crate::store::Store::updates).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Msg, PushKind};
use tokio::sync::{mpsc, watch};

use super::keys::{Announcement, CHANNEL, NOTES_CHANNEL};
use super::Shared;
use crate::provider::Provider;
use crate::tokens::store::StoreUpdate;

/// How often the subscriber pings its connection.
const SUBSCRIBER_PING: Duration = Duration::from_secs(2);
/// The subscriber's reconnect backoff.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Shared {
    /// The subscriber: (re)connects, subscribes, re-syncs, forwards other replicas' changes.
    pub(super) async fn listen(
        self: Arc<Self>,
        tx: mpsc::UnboundedSender<StoreUpdate>,
        mut stop: watch::Receiver<()>,
    ) {
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u32;
        loop {
            let outcome = tokio::select! {
                r = self.listen_once(&tx, failures) => r,
                _ = tx.closed() => return,
                _ = stop.changed() => return,
            };
            let was_subscribed = self.subscribed.swap(false, Ordering::SeqCst);
            if was_subscribed {
                backoff = BACKOFF_MIN;
                failures = 0;
            }
            match outcome {
                Ok(()) => return, // the receiver is gone
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(redis = %self.addr, error = %e, "store subscriber disconnected; reconnecting");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = tx.closed() => return,
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One subscriber connection's life. `Ok` when the receiver is gone, `Err` on any failure.
    /// `failures`: how many connections failed in a row before this one.
    async fn listen_once(
        &self,
        tx: &mpsc::UnboundedSender<StoreUpdate>,
        failures: u32,
    ) -> Result<(), String> {
        let (push_tx, mut pushes) = mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.op_timeout))
            .set_response_timeout(Some(self.op_timeout))
            .set_push_sender(push_tx);
        let mut conn: MultiplexedConnection = self
            .op(
                "connect subscriber",
                self.subscribers[failures as usize % self.subscribers.len()]
                    .get_multiplexed_async_connection_with_config(&config),
            )
            .await
            .map_err(|e| e.0)?;
        self.op("subscribe", conn.subscribe(&[CHANNEL, NOTES_CHANNEL]))
            .await
            .map_err(|e| e.0)?;
        // Re-sync: whatever changed while we were not subscribed.
        let all = self.load().await.map_err(|e| e.0)?;
        if failures > 0 {
            tracing::info!(redis = %self.addr, accounts = all.len(), "store subscriber reconnected; re-synced");
        } else {
            tracing::debug!(redis = %self.addr, accounts = all.len(), "store subscriber subscribed");
        }
        for a in all {
            if tx.send(StoreUpdate::Changed(a)).is_err() {
                return Ok(());
            }
        }
        self.resync_notes().await.map_err(|e| e.0)?;
        self.subscribed.store(true, Ordering::SeqCst);
        self.announced.send_modify(|n| *n += 1);
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + SUBSCRIBER_PING,
            SUBSCRIBER_PING,
        );
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else { return Err("subscriber connection closed".into()) };
                    if push.kind == PushKind::Disconnection {
                        return Err("subscriber connection closed".into());
                    }
                    let Some(msg) = Msg::from_push_info(push) else { continue };
                    if msg.get_channel_name() == NOTES_CHANNEL {
                        self.on_note(msg.get_payload_bytes());
                        continue;
                    }
                    self.announced.send_modify(|n| *n += 1);
                    if let Some(update) = self.on_message(&msg).await? {
                        if tx.send(update).is_err() {
                            return Ok(());
                        }
                    }
                }
                _ = ping.tick() => {
                    let _: String = self
                        .op("ping subscriber", redis::cmd("PING").query_async(&mut conn))
                        .await
                        .map_err(|e| e.0)?;
                }
            }
        }
    }

    /// The update an announcement stands for; `None` for our own or a malformed one.
    async fn on_message(&self, msg: &Msg) -> Result<Option<StoreUpdate>, String> {
        let Ok(a) = serde_json::from_slice::<Announcement>(msg.get_payload_bytes()) else {
            return Ok(None);
        };
        if a.o == self.origin {
            return Ok(None);
        }
        let Ok(provider) = a.p.parse::<Provider>() else {
            return Ok(None);
        };
        // A failed read ends this connection: the reconnect re-syncs everything.
        Ok(Some(
            match self.read(provider, &a.a).await.map_err(|e| e.0)? {
                Some(s) => StoreUpdate::Changed(s),
                None => StoreUpdate::Removed {
                    provider,
                    account: a.a,
                },
            },
        ))
    }
}
