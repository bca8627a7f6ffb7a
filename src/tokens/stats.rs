//! The per-provider refresh counters ([`ProviderStats`]) behind metrics and tests.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{idx, Tokens};
use crate::provider::Provider;

/// Counters of one provider's refresh traffic, for metrics and tests.
///
/// ```
/// # use oauth_refresh_proxy::ProviderStats;
/// let s = ProviderStats::default();
/// assert_eq!(s.refresh_success + s.coalesced, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProviderStats {
    /// Refreshes that produced a new token.
    pub refresh_success: u64,
    /// Refreshes whose refresh token was rejected.
    pub refresh_rejected: u64,
    /// Refreshes that failed transiently after their retries.
    pub refresh_transient_error: u64,
    /// Requests that waited on a refresh another request had started.
    pub coalesced: u64,
    /// Requests replayed after a 401.
    pub replayed: u64,
    /// 401s whose request could not be replayed (body too large or not fully sent).
    pub not_replayable: u64,
    /// Requests answered `refresh_unavailable` without a backend call because the account was
    /// in cooldown (or awaiting a timed-out attempt's answer).
    pub cooldown: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) refresh_success: AtomicU64,
    pub(super) refresh_rejected: AtomicU64,
    pub(super) refresh_transient_error: AtomicU64,
    pub(super) coalesced: AtomicU64,
    pub(super) replayed: AtomicU64,
    pub(super) not_replayable: AtomicU64,
    pub(super) cooldown: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Tokens {
    /// The refresh counters of `provider`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{BackendRefresher, Provider, Tokens};
    /// # let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// assert_eq!(tokens.stats(Provider::GitHub).refresh_success, 0);
    /// ```
    pub fn stats(&self, provider: Provider) -> ProviderStats {
        let c = &self.inner.counters[idx(provider)];
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProviderStats {
            refresh_success: l(&c.refresh_success),
            refresh_rejected: l(&c.refresh_rejected),
            refresh_transient_error: l(&c.refresh_transient_error),
            coalesced: l(&c.coalesced),
            replayed: l(&c.replayed),
            not_replayable: l(&c.not_replayable),
            cooldown: l(&c.cooldown),
        }
    }

    pub(crate) fn count_replay(&self, provider: Provider, replayed: bool) {
        let c = &self.inner.counters[idx(provider)];
        bump(if replayed {
            &c.replayed
        } else {
            &c.not_replayable
        });
    }
}
