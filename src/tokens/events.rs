//! Refresh events, delivered to every subscriber without loss.
//!
//! The one source of what happens to an account's tokens: metrics record refresh durations
//! from it, and the sidecar's webhooks (SPEC 4.11) turn its [`HealthChange`]s into
//! `needs_reauth`, `refresh_failing` and `refresh_recovered` notifications. Publishing never
//! waits: every subscriber has its own unbounded channel, and a subscriber that must stay
//! bounded (the webhook queue) drains it at once into its own drop-oldest queue.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::provider::{Account, Provider};
use crate::token::Secret;

/// One finished refresh of one account — or, when it ends an episode of trouble, new tokens
/// that did not come from a refresh of this process ([`RefreshOutcome::Replaced`]).
///
/// Subscribe with [`Tokens::events`](crate::Tokens::events). A `Refreshed` event carries the
/// account's refresh token after the refresh, so an application can persist a rotated one.
#[derive(Clone, Debug)]
pub struct RefreshEvent {
    /// The provider.
    pub provider: Provider,
    /// The account.
    pub account: Account,
    /// The account's token generation after the refresh (unchanged on failure).
    pub generation: u64,
    /// How long the refresh took, retries included.
    pub duration: Duration,
    /// What happened.
    pub outcome: RefreshOutcome,
    /// How the account's health changed with this event, if it did (for alerting).
    pub health: Option<HealthChange>,
}

/// A change of an account's health, carried by the [`RefreshEvent`] that caused it.
///
/// An *episode* starts with `NeedsReauth` or `Failing` and ends with exactly one `Recovered`:
/// `Failing` is announced once per episode (when the account first enters cooldown), not per
/// failed attempt; `NeedsReauth` may follow a `Failing` of the same episode.
///
/// ```
/// use oauth_refresh_proxy::HealthChange;
/// assert_eq!(HealthChange::Failing.as_str(), "refresh_failing");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HealthChange {
    /// The refresh token was rejected: the account needs re-authorisation.
    NeedsReauth,
    /// A refresh cycle failed and the account entered cooldown (first time in the episode).
    Failing,
    /// The first successful refresh, or new tokens (put by the operator or taken from another
    /// replica), after `NeedsReauth` or `Failing`.
    Recovered,
}

impl HealthChange {
    /// The webhook event name: `needs_reauth`, `refresh_failing` or `refresh_recovered`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthChange::NeedsReauth => "needs_reauth",
            HealthChange::Failing => "refresh_failing",
            HealthChange::Recovered => "refresh_recovered",
        }
    }
}

/// The result carried by a [`RefreshEvent`].
#[derive(Clone, Debug)]
pub enum RefreshOutcome {
    /// A new access token was obtained.
    Refreshed {
        /// The account's refresh token from now on (the rotated one when `rotated`).
        refresh_token: Secret,
        /// Whether the provider rotated the refresh token.
        rotated: bool,
        /// When the new access token expires, when known.
        expires_at: Option<SystemTime>,
    },
    /// The refresh token was rejected; the account needs re-authorisation.
    Rejected {
        /// Why (never a token).
        reason: String,
    },
    /// The refresh failed transiently after its retries.
    Failed {
        /// Why (never a token).
        reason: String,
    },
    /// The account's tokens were replaced without a refresh by this process — put by the
    /// operator or the application, or taken from another replica through a shared store.
    /// Announced only when it ends an episode (its `health` is [`HealthChange::Recovered`]);
    /// its `duration` is zero.
    Replaced,
}

/// A stream of [`RefreshEvent`]s. Nothing is dropped: events queue until received.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use oauth_refresh_proxy::{refresh::*, Provider, RefreshError, Secret, TokenSeed, Tokens};
/// # struct Fixed;
/// # impl Refresher for Fixed {
/// #     fn refresh<'a>(&'a self, _: Provider, _: &'a Secret) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
/// #         Box::pin(async { Ok(Refreshed { access_token: Secret::new("new"), refresh_token: Some(Secret::new("rotated")), expires_at: None }) })
/// #     }
/// # }
/// let tokens = Tokens::builder(Fixed).build();
/// let mut events = tokens.events();
/// tokens.insert(Provider::GitHub, "octo", TokenSeed::new("old"));
/// tokens.refresh_now(Provider::GitHub, "octo").await.unwrap();
/// let ev = events.recv().await.unwrap();
/// assert!(matches!(ev.outcome, oauth_refresh_proxy::RefreshOutcome::Refreshed { rotated: true, .. }));
/// # });
/// ```
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<RefreshEvent>,
}

impl Events {
    /// The next event; `None` once the [`Tokens`](crate::Tokens) is gone.
    pub async fn recv(&mut self) -> Option<RefreshEvent> {
        self.rx.recv().await
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<RefreshEvent> {
        self.rx.try_recv().ok()
    }
}

#[derive(Default)]
pub(crate) struct Subscribers {
    senders: Mutex<Vec<mpsc::UnboundedSender<RefreshEvent>>>,
}

impl Subscribers {
    pub(crate) fn subscribe(&self) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        self.senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        Events { rx }
    }

    pub(crate) fn publish(&self, event: RefreshEvent) {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        senders.retain(|tx| tx.send(event.clone()).is_ok());
    }
}
