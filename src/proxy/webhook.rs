//! Webhooks (SPEC 4.11): account health events POSTed to the operator's receivers.
//!
//! `[[webhook]]` config → one bounded queue per webhook → one delivery task per webhook.
//!
//! * **Source.** The token cache's event stream ([`Tokens::events`]) is the one source: an
//!   intake task takes each [`RefreshEvent`] whose [`HealthChange`] a webhook subscribes to,
//!   renders its body once and pushes it onto that webhook's [`Queue`]. Pushing never waits:
//!   the queue holds at most [`QUEUE_CAPACITY`] events and drops the **oldest** when full
//!   (`orp_webhook_total{outcome="dropped"}`), so neither the refresh engine nor a proxied
//!   request is ever slowed by a slow or dead receiver.
//! * **Delivery.** Each webhook's task sends its events one at a time, in order: `POST`,
//!   `content-type: application/json`, `X-ORP-Signature: sha256=<hex HMAC-SHA256(secret,
//!   body)>`, `X-ORP-Event-Id` (the event's fleet-wide id, percent-encoded, for receivers
//!   that deduplicate), [`ATTEMPT_TIMEOUT`] per attempt, no redirects followed. A 2xx is `delivered`; a 4xx other
//!   than 408 and 429 is `failed` at once (the receiver refused it: not retried); a 5xx, 408,
//!   429, a connect error or a timeout is retried with exponential backoff (1 s doubling, capped
//!   by `max_backoff`, plus up to 10% jitter) until [`MAX_AGE`] after the event, then `failed`.
//!   An event being retried holds back the later ones (order per webhook is kept).
//! * **Once per fleet.** Every event has a deterministic id — webhook (a hash of its URL),
//!   event, provider, account, generation — the same on every replica that sees it (the
//!   generation is shared through the store, and an episode's events carry the generation it
//!   started at or, for `refresh_recovered`, the generation that ended it). Before its first
//!   attempt, a task claims the id with [`Store::claim`] (Redis: `SET orp:claim:<id> NX PX
//!   24h`); only the claimer sends, the others skip it without counting. Whichever replica
//!   claims first sends — normally the one that saw the change first: the one that refreshed,
//!   the one whose refresh was rejected, or — for a recovery through another replica's refresh
//!   or an admin `PUT` there — one that learnt it from the store's update channel while it knew
//!   of the episode (replicas that never saw the episode announce nothing). With
//!   no shared store every claim is granted. A claim that cannot be made (Redis down) is
//!   retried like a failed attempt: an unclaimed event is never sent. If the claimer dies
//!   before delivering, the event is lost: once per fleet at most, retried by its claimer only.
//! * **Shutdown** is bounded: [`Webhooks::shutdown`] stops retries and gives the queued
//!   events one last attempt each within its bound, then abandons the rest.
//!
//! Bodies never hold a token: `{"event","provider","account","at","generation","error"}` with
//! `error` = `{"code","message"}` (the refresh error's text, which never holds one) or `null`.
//! Logs name the webhook by its id and the event by its id, never the URL (its query may hold
//! a receiver's credential) nor the secret.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use prometheus_client::metrics::counter::Counter;
use sha2::Sha256;

use crate::token::{hex, sha256};
use tokio::sync::{watch, Notify};

use super::config::WebhookSettings;
use super::metrics::Metrics;
use crate::store::Store;
use crate::{HealthChange, RefreshEvent, RefreshOutcome, Secret, Tokens};

/// At most this many events wait per webhook; the oldest is dropped first.
pub const QUEUE_CAPACITY: usize = 10_000;
/// The timeout of one delivery attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the event it is still retried.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// The first pause between attempts (doubling up to `max_backoff`).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How long a claim keeps other replicas from sending the same event.
pub const CLAIM_TTL: Duration = Duration::from_secs(24 * 3600);

/// A bounded FIFO that never makes its producer wait: a push onto a full queue drops the
/// oldest item.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use oauth_refresh_proxy::proxy::webhook::Queue;
///
/// let q = Queue::new(2);
/// assert!(!q.push(1) && !q.push(2));
/// assert!(q.push(3)); // full: 1 dropped
/// assert_eq!((q.pop().await, q.pop().await, q.len()), (2, 3, 0));
/// # });
/// ```
#[derive(Debug)]
pub struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    ready: Notify,
}

impl<T> Queue<T> {
    /// An empty queue of at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        Queue {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            ready: Notify::new(),
        }
    }

    /// Appends `item`; returns `true` when the queue was full and its oldest item was dropped.
    pub fn push(&self, item: T) -> bool {
        let dropped = {
            let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
            let dropped = items.len() >= self.capacity && items.pop_front().is_some();
            items.push_back(item);
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    /// The oldest item, waiting for one when the queue is empty.
    pub async fn pop(&self) -> T {
        loop {
            if let Some(item) = self.try_pop() {
                return item;
            }
            self.ready.notified().await;
        }
    }

    /// The oldest item, if any.
    pub fn try_pop(&self) -> Option<T> {
        self.items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// How many items wait.
    pub fn len(&self) -> usize {
        self.items.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no item waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, the `X-ORP-Signature` of `body`.
///
/// ```
/// use oauth_refresh_proxy::{proxy::webhook::signature, Secret};
/// // RFC 4231 test case 2.
/// assert_eq!(
///     signature(&Secret::new("Jefe"), b"what do ya want for nothing?"),
///     "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
/// );
/// ```
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// The JSON body of `event` as webhook event `kind` (`at` in unix seconds): never a token.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::{proxy::webhook::body, Account, HealthChange, Provider};
/// use oauth_refresh_proxy::{RefreshEvent, RefreshOutcome};
///
/// let event = RefreshEvent {
///     provider: Provider::GitHub,
///     account: Account::new("octo"),
///     generation: 7,
///     duration: Duration::ZERO,
///     outcome: RefreshOutcome::Rejected { reason: "bad_refresh_token".into() },
///     health: Some(HealthChange::NeedsReauth),
/// };
/// let v: serde_json::Value = serde_json::from_slice(&body(&event, HealthChange::NeedsReauth, 1700000000)).unwrap();
/// assert_eq!(v, serde_json::json!({
///     "event": "needs_reauth", "provider": "github", "account": "octo", "at": 1700000000,
///     "generation": 7, "error": {"code": "refresh_rejected", "message": "bad_refresh_token"}
/// }));
/// ```
pub fn body(event: &RefreshEvent, kind: HealthChange, at: u64) -> Bytes {
    let error = match (&event.outcome, kind) {
        (_, HealthChange::Recovered) => serde_json::Value::Null,
        (RefreshOutcome::Rejected { reason }, _) => {
            serde_json::json!({"code": "refresh_rejected", "message": reason})
        }
        (RefreshOutcome::Failed { reason }, _) => {
            serde_json::json!({"code": "refresh_unavailable", "message": reason})
        }
        _ => serde_json::Value::Null,
    };
    let v = serde_json::json!({
        "event": kind.as_str(),
        "provider": event.provider.as_str(),
        "account": event.account.as_str(),
        "at": at,
        "generation": event.generation,
        "error": error,
    });
    Bytes::from(v.to_string())
}

/// One queued event of one webhook.
#[derive(Debug)]
struct Pending {
    /// The fleet-wide id (also the claim key).
    id: String,
    body: Bytes,
    /// When it was queued (retries stop [`MAX_AGE`] later).
    queued: Instant,
}

/// How an event's delivery ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Failed,
    /// Claimed by another replica: it sends.
    Elsewhere,
}

/// What one attempt's answer means.
enum Attempt {
    Done(Outcome),
    Retry(String),
}

/// One `[[webhook]]` and its queue.
struct Hook {
    /// The first 16 hex digits of SHA-256(url): names it in logs and claim keys.
    id: String,
    settings: WebhookSettings,
    queue: Queue<Pending>,
}

/// The counters of `orp_webhook_total{outcome}`.
#[derive(Clone)]
struct Counters {
    delivered: Counter,
    failed: Counter,
}

/// The sidecar's webhooks: their queues, the intake from the token cache and the delivery
/// tasks.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use oauth_refresh_proxy::proxy::{config::Config, metrics::Metrics, webhook::Webhooks};
/// use oauth_refresh_proxy::{BackendRefresher, Tokens};
///
/// let config = Config::from_toml_str(
///     "[refresh]\nbackend_url = \"http://127.0.0.1:1\"\n\
///      [[webhook]]\nurl = \"http://127.0.0.1:1/hook\"\nsecret = \"s\"",
///     "proxy.toml",
/// )
/// .unwrap();
/// let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:1").unwrap()).build();
/// let metrics = Metrics::new(tokens.clone());
/// let hooks = Webhooks::new(&config.webhooks, None, &metrics).unwrap();
/// let hooks = hooks.start(&tokens);
/// assert_eq!(hooks.queued(0), 0);
/// hooks.shutdown(std::time::Duration::from_secs(1)).await;
/// # });
/// ```
pub struct Webhooks {
    intake: Arc<Intake>,
    client: reqwest::Client,
    store: Option<Arc<dyn Store>>,
    counters: Counters,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The queues, fed from the event stream.
struct Intake {
    hooks: Vec<Arc<Hook>>,
    dropped: Counter,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field(
                "hooks",
                &self.intake.hooks.iter().map(|h| &h.id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// The webhooks of `settings` (claims go through `store` when it is shared), counted in
    /// `metrics`. Nothing runs until [`Webhooks::start`]. Fails only when the HTTP client
    /// cannot be built.
    pub fn new(
        settings: &[WebhookSettings],
        store: Option<Arc<dyn Store>>,
        metrics: &Metrics,
    ) -> Result<Webhooks, String> {
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("oauth-refresh-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        let hooks = settings
            .iter()
            .map(|s| {
                Arc::new(Hook {
                    id: hex(&sha256(&[s.url.as_bytes()])[..8]),
                    settings: s.clone(),
                    queue: Queue::new(QUEUE_CAPACITY),
                })
            })
            .collect();
        Ok(Webhooks {
            intake: Arc::new(Intake {
                hooks,
                dropped: metrics.webhook("dropped"),
            }),
            client,
            store,
            counters: Counters {
                delivered: metrics.webhook("delivered"),
                failed: metrics.webhook("failed"),
            },
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        })
    }

    /// Queues `event` for every webhook subscribed to its health change; never waits. Called
    /// by the intake task of [`Webhooks::start`].
    pub fn offer(&self, event: &RefreshEvent) {
        self.intake.offer(event);
    }

    /// How many events wait in the queue of the `i`-th webhook (file order).
    pub fn queued(&self, i: usize) -> usize {
        self.intake.hooks.get(i).map_or(0, |h| h.queue.len())
    }

    /// Subscribes to `tokens`' events (before returning: nothing later is missed) and spawns
    /// the intake and one delivery task per webhook. Without webhooks, nothing is spawned.
    pub fn start(mut self, tokens: &Tokens) -> Webhooks {
        if self.intake.hooks.is_empty() {
            return self;
        }
        for hook in &self.intake.hooks {
            let d = Deliverer {
                hook: hook.clone(),
                client: self.client.clone(),
                store: self.store.clone(),
                counters: self.counters.clone(),
                stop: self.stop.subscribe(),
            };
            self.tasks.push(tokio::spawn(d.run()));
        }
        let mut events = tokens.events();
        let mut stop = self.stop.subscribe();
        let intake = self.intake.clone();
        self.tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    e = events.recv() => match e {
                        Some(event) => intake.offer(&event),
                        None => break,
                    },
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }));
        self
    }

    /// Stops: no more retries; each queued event gets one last attempt while `bound` lasts
    /// (those left are abandoned and counted as failed). Returns within `bound` (plus a
    /// moment to abort the tasks).
    pub async fn shutdown(&self, bound: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + bound;
        for task in &self.tasks {
            if tokio::time::timeout_at(deadline, async {
                while !task.is_finished() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .is_err()
            {
                break;
            }
        }
        let mut abandoned = 0;
        for task in &self.tasks {
            task.abort();
        }
        for hook in &self.intake.hooks {
            while hook.queue.try_pop().is_some() {
                abandoned += 1;
            }
        }
        if abandoned > 0 {
            self.counters.failed.inc_by(abandoned);
            tracing::warn!(
                abandoned,
                "webhook events not delivered before the shutdown bound"
            );
        }
    }
}

impl Intake {
    fn offer(&self, event: &RefreshEvent) {
        let Some(kind) = event.health else { return };
        let at = crate::token::unix_secs(std::time::SystemTime::now());
        let mut rendered = None;
        for hook in &self.hooks {
            if !hook.settings.events.contains(&kind) {
                continue;
            }
            let body = rendered
                .get_or_insert_with(|| body(event, kind, at))
                .clone();
            let id = format!(
                "{}:{}:{}:{}:{}",
                hook.id,
                kind.as_str(),
                event.provider,
                event.account.as_str(),
                event.generation
            );
            tracing::debug!(webhook = %hook.id, event = %id, "webhook event queued");
            if hook.queue.push(Pending {
                id,
                body,
                queued: Instant::now(),
            }) {
                // Said once per thousand drops, not once per drop.
                if self.dropped.inc() % 1000 == 0 {
                    tracing::warn!(webhook = %hook.id, capacity = QUEUE_CAPACITY,
                        dropped_total = self.dropped.get(),
                        "webhook queue full: the oldest events are being dropped");
                }
            }
        }
    }
}

/// One webhook's delivery task.
struct Deliverer {
    hook: Arc<Hook>,
    client: reqwest::Client,
    store: Option<Arc<dyn Store>>,
    counters: Counters,
    stop: watch::Receiver<bool>,
}

impl Deliverer {
    async fn run(mut self) {
        loop {
            let stopping = *self.stop.borrow();
            let pending = if stopping {
                match self.hook.queue.try_pop() {
                    Some(p) => p,
                    None => return,
                }
            } else {
                tokio::select! {
                    p = self.hook.queue.pop() => p,
                    _ = self.stop.wait_for(|s| *s) => continue,
                }
            };
            match self.deliver(&pending).await {
                Outcome::Delivered => {
                    self.counters.delivered.inc();
                }
                Outcome::Failed => {
                    self.counters.failed.inc();
                }
                Outcome::Elsewhere => {}
            }
        }
    }

    /// Claims and sends one event, retrying until it is answered, refused, or out of time.
    async fn deliver(&mut self, p: &Pending) -> Outcome {
        let hook = &self.hook;
        let deadline = p.queued + MAX_AGE;
        let mut claimed = false;
        let mut backoff = FIRST_BACKOFF.min(hook.settings.max_backoff);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = if claimed {
                self.attempt(p).await
            } else {
                match self.claim(p).await {
                    Ok(true) => {
                        claimed = true;
                        self.attempt(p).await
                    }
                    Ok(false) => {
                        tracing::debug!(webhook = %hook.id, event = %p.id, "webhook event claimed by another replica");
                        return Outcome::Elsewhere;
                    }
                    Err(e) => Attempt::Retry(e),
                }
            };
            let why = match result {
                Attempt::Done(outcome) => return outcome,
                Attempt::Retry(why) => why,
            };
            let pause = backoff + backoff.mul_f64(fastrand::f64() * 0.1);
            if *self.stop.borrow() || Instant::now() + pause > deadline {
                tracing::warn!(webhook = %hook.id, event = %p.id, attempt, error = %why,
                    "webhook delivery failed; giving up");
                return Outcome::Failed;
            }
            tracing::info!(webhook = %hook.id, event = %p.id, attempt, error = %why, ?pause,
                "webhook delivery failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.stop.wait_for(|s| *s) => {}
            }
            backoff = (backoff * 2).min(hook.settings.max_backoff);
        }
    }

    /// Claims the event for this replica (always granted without a shared store).
    async fn claim(&self, p: &Pending) -> Result<bool, String> {
        match &self.store {
            None => Ok(true),
            Some(store) => store
                .claim(&p.id, CLAIM_TTL)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// One POST.
    async fn attempt(&self, p: &Pending) -> Attempt {
        let hook = &self.hook;
        let sent = self
            .client
            .post(&hook.settings.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-orp-signature", signature(&hook.settings.secret, &p.body))
            // Account ids may hold non-ASCII characters: percent-encoded, a valid header value.
            .header(
                "x-orp-event-id",
                percent_encoding::utf8_percent_encode(&p.id, percent_encoding::CONTROLS)
                    .to_string(),
            )
            .body(p.body.clone())
            .send()
            .await;
        let status = match sent {
            Ok(resp) => resp.status(),
            // Never the URL in a message: its query may hold a credential.
            Err(e) => return Attempt::Retry(e.without_url().to_string()),
        };
        if status.is_success() {
            tracing::debug!(webhook = %hook.id, event = %p.id, %status, "webhook event delivered");
            return Attempt::Done(Outcome::Delivered);
        }
        let retried = status.is_server_error()
            || status == http::StatusCode::REQUEST_TIMEOUT
            || status == http::StatusCode::TOO_MANY_REQUESTS;
        if retried {
            return Attempt::Retry(format!("receiver answered {status}"));
        }
        tracing::warn!(webhook = %hook.id, event = %p.id, %status,
            "webhook receiver refused the event; not retried");
        Attempt::Done(Outcome::Failed)
    }
}

#[cfg(test)]
mod tests;
