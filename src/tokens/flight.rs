//! The refresh of one account (a *flight*): deciding under the entry's lock whether to use the
//! current token, join the flight under way or start one; running it in a task of its own
//! (through the store, when there is one); and applying its result — cooldowns, `min_interval`,
//! late answers and health episodes, as the [module documentation](super) describes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clock::{MonoMs, UnixMs, UnixSecs};
use super::entry::{snapshot, Entry};
use super::lease::Lease;
use super::stats::bump;
use super::{idx, HealthChange, RefreshEvent, RefreshOutcome, Tokens};
use crate::error::Error;
use crate::provider::{Account, Provider};
use crate::refresh::RefreshError;
use crate::single_flight::{self, Publisher};
use crate::token::{timestamp_to_system_time, CachedSecret, Secret};
use crate::tokens::store::{self, RefreshFn, RefresherCall, StoreRefresh, StoredAccount};

/// The outcome of a flight, shared with everyone waiting on it.
#[derive(Clone)]
pub(super) enum FlightResult {
    Ok(Lease),
    Err(RefreshError),
}

pub(super) type Flight = single_flight::Flight<FlightResult>;

/// The first cooldown after a failed refresh cycle; it doubles per consecutive failure.
pub(super) const BASE_COOLDOWN: Duration = Duration::from_secs(5);
/// The longest cooldown, and the cap on a backend's `Retry-After`.
pub(super) const MAX_COOLDOWN: Duration = Duration::from_secs(300);
/// What callers are told to wait while a timed-out attempt's answer is awaited.
pub(super) const LATE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Why a request wants a refresh.
#[derive(Clone, Copy)]
pub(super) enum Trigger {
    /// The token is missing, expired or within `skew`.
    Expiring,
    /// The API answered 401 to the request sent with this generation.
    Unauthorized(u64),
    /// An operator asked ([`Tokens::refresh_now`]): refresh even a valid token.
    Forced,
}

/// What a request falls back to when the refresh it waited for failed transiently.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Fallback {
    /// The current token, while it has not actually expired (it was only within `skew`).
    CurrentToken,
    /// Nothing: the failure is the answer.
    None,
}

/// Why a flight was started.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Launch {
    /// A request is waiting for it.
    OnDemand,
    /// In the background, in the refresh-ahead window; requests go on with the current token.
    Ahead,
}

/// What to do after looking at an entry that needs a refresh.
pub(super) enum Step {
    Use(Lease),
    Wait(Flight),
}

pub(super) struct FlightTask {
    pub(super) tokens: Tokens,
    pub(super) provider: Provider,
    pub(super) account: Arc<str>,
    pub(super) generation: u64,
    pub(super) snapshot: StoredAccount,
    pub(super) kind: Launch,
}

impl FlightTask {
    pub(super) async fn run(self, tx: Publisher<FlightResult>) {
        let started = Instant::now();
        let inner = &self.tokens.inner;
        tracing::debug!(provider = %self.provider, account = &*self.account, generation = self.generation, "refreshing");
        // Called when an attempt timed out after sending: release the waiting callers now, and
        // mark the flight late so nobody starts another attempt while its answer is awaited.
        let on_timeout = {
            let tokens = self.tokens.clone();
            let (provider, account, generation) =
                (self.provider, self.account.clone(), self.generation);
            let tx = tx.clone();
            move |err: RefreshError| {
                if let Some(mut e) = tokens.inner.maps[idx(provider)].get_mut(&account) {
                    if e.generation == generation && e.flight().is_some() {
                        e.rare_mut().late = true;
                    }
                }
                tx.publish(FlightResult::Err(err));
            }
        };
        // With a shared store, another replica's refresh may be adopted instead of calling the
        // refresher here: the store says which happened.
        let StoreRefresh { result, call } = match &inner.store {
            None => {
                let r = inner
                    .settings
                    .policy
                    .run_notify(
                        &*inner.refresher,
                        self.provider,
                        &self.snapshot.refresh_token,
                        on_timeout,
                    )
                    .await;
                let next = self.snapshot.after_refresh(&r, store::now_secs());
                StoreRefresh::made(r.map(|_| next))
            }
            Some(store) => {
                let tokens = self.tokens.clone();
                let provider = self.provider;
                let refresh: RefreshFn = Box::new(move |refresh_token| {
                    Box::pin(async move {
                        let inner = &tokens.inner;
                        inner
                            .settings
                            .policy
                            .run_notify(&*inner.refresher, provider, &refresh_token, on_timeout)
                            .await
                    })
                });
                store.refresh(self.snapshot.clone(), refresh).await
            }
        };
        let duration = started.elapsed();
        match &result {
            Ok(_) => {
                tracing::info!(provider = %self.provider, account = &*self.account, ?duration, "refreshed")
            }
            Err(e) => {
                tracing::warn!(provider = %self.provider, account = &*self.account, error = %e, "refresh failed")
            }
        }
        let outcome = self.tokens.apply(&self, result, duration, call);
        tx.publish(outcome);
    }
}

/// The cooldown after the `failed_cycles`-th consecutive failed cycle ending in `err`: the
/// backend's `Retry-After` when it sent one, else 5 s doubling per cycle; both capped at 5 min,
/// plus up to 10% jitter (never below what the backend asked for).
pub(super) fn cooldown_for(err: &RefreshError, failed_cycles: u32) -> Duration {
    let base = err.retry_after().unwrap_or_else(|| {
        let doublings = failed_cycles.saturating_sub(1).min(16);
        BASE_COOLDOWN.saturating_mul(1u32 << doublings)
    });
    let base = base.min(MAX_COOLDOWN);
    (base + base.mul_f64(fastrand::f64() * 0.1)).min(MAX_COOLDOWN.max(base))
}

/// `refresh_unavailable` without a backend call, asking the caller to retry after `after`.
pub(super) fn unavailable(provider: Provider, account: &str, why: &str, after: Duration) -> Error {
    Error::from_refresh(provider, account, &RefreshError::unconfirmed(why))
        .retry_after_at_least(after)
}

pub(super) fn rejected_error(provider: Provider, account: &str, e: &Entry) -> Error {
    Error::from_refresh(provider, account, &store::rejection(e.last_error()))
}

impl Tokens {
    /// Waits for the flight of `step`, then falls back as `fallback` says.
    pub(super) async fn finish(
        &self,
        provider: Provider,
        account: &str,
        step: Step,
        fallback: Fallback,
    ) -> Result<Lease, Error> {
        let flight = match step {
            Step::Use(lease) => return Ok(lease),
            Step::Wait(flight) => flight,
        };
        let result = flight
            .wait()
            .await
            .unwrap_or_else(|| FlightResult::Err(RefreshError::transient("refresh task ended")));
        match result {
            FlightResult::Ok(lease) => Ok(lease),
            FlightResult::Err(err) => {
                // A transient failure while the token is still valid (only within `skew`)
                // does not stop the request: it goes out with the current token.
                if fallback == Fallback::CurrentToken && !err.is_rejected() {
                    if let Some(e) = self.inner.maps[idx(provider)].read(account).get(account) {
                        if let (Some(h), false) = (&e.header, e.needs_reauth) {
                            if UnixMs::now() < e.expires_at {
                                return Ok(Lease {
                                    header: h.clone(),
                                    generation: e.generation,
                                });
                            }
                        }
                    }
                }
                let mut error = Error::from_refresh(provider, account, &err);
                if let Some(left) = self.inner.maps[idx(provider)]
                    .read(account)
                    .get(account)
                    .and_then(|e| e.cooldown_until().and_then(MonoMs::left))
                {
                    error = error.retry_after_at_least(left);
                }
                Err(error)
            }
        }
    }

    /// Decides, under the entry's lock, whether to use the current token, join the flight under
    /// way, or start one, for a refresh wanted because of `trigger`.
    pub(super) fn step(
        &self,
        provider: Provider,
        account: &str,
        trigger: Trigger,
    ) -> Result<Step, Error> {
        let (seen, force) = match trigger {
            Trigger::Expiring => (None, false),
            Trigger::Unauthorized(generation) => (Some(generation), false),
            Trigger::Forced => (None, true),
        };
        let map = &self.inner.maps[idx(provider)];
        let Some(mut e) = map.get_mut(account) else {
            return Err(Error::unknown_account(provider, account));
        };
        if e.needs_reauth {
            return Err(rejected_error(provider, account, &e));
        }
        let now = UnixMs::now();
        let current = |e: &Entry| {
            e.header.clone().map(|header| Lease {
                header,
                generation: e.generation,
            })
        };
        // This generation itself was refused upstream: only a refresh helps.
        let refused = seen == Some(e.generation);
        let valid_by_clock = e.header.is_some() && now < e.expires_at;
        if let (Some(flight), false) = (e.flight(), e.late()) {
            bump(&self.inner.counters[idx(provider)].coalesced);
            return Ok(Step::Wait(flight.clone()));
        }
        if !force {
            let usable = e.header.is_some() && now + self.inner.settings.skew < e.expires_at;
            if usable && !refused {
                return Ok(Step::Use(current(&e).expect("usable")));
            }
            if !refused && e.header.is_some() && self.within_min_interval(&e) {
                return Ok(Step::Use(current(&e).expect("present")));
            }
        }
        let blocked = if e.flight().is_some() {
            // A timed-out attempt may still rotate the refresh token: no new attempt.
            Some((
                "a timed-out refresh attempt's answer is still awaited",
                LATE_RETRY_AFTER,
            ))
        } else {
            e.cooldown_until()
                .filter(|_| !force)
                .and_then(MonoMs::left)
                .map(|left| ("the last refresh failed; the account is in cooldown", left))
        };
        if let Some((why, after)) = blocked {
            if valid_by_clock && !refused && !force {
                return Ok(Step::Use(current(&e).expect("valid")));
            }
            bump(&self.inner.counters[idx(provider)].cooldown);
            return Err(unavailable(provider, account, why, after));
        }
        let flight = self.launch(provider, account, &mut e, Launch::OnDemand);
        Ok(Step::Wait(flight))
    }

    /// Starts a background refresh for `generation` unless one runs, the generation moved on,
    /// or the account is in cooldown or within `min_interval` of its last refresh.
    pub(super) fn start_ahead(&self, provider: Provider, account: &str, generation: u64) {
        if let Some(mut e) = self.inner.maps[idx(provider)].get_mut(account) {
            let now = UnixMs::now();
            if e.flight().is_some()
                || e.generation != generation
                || e.needs_reauth
                || now < e.ahead_at
            {
                return;
            }
            let wait = e.cooldown_until().and_then(MonoMs::left).or_else(|| {
                e.refreshed_at
                    .and_then(|t| (t + self.inner.settings.min_interval).left())
            });
            if let Some(wait) = wait {
                // Not yet: look again once the cooldown or the interval is over.
                e.ahead_at = now + wait;
                return;
            }
            tracing::debug!(%provider, account, "token in refresh-ahead window, refreshing in the background");
            self.launch(provider, account, &mut e, Launch::Ahead);
        }
    }

    /// Registers a flight in the entry and spawns the task that runs it.
    pub(super) fn launch(
        &self,
        provider: Provider,
        account: &str,
        e: &mut Entry,
        kind: Launch,
    ) -> Flight {
        let (publisher, flight) = single_flight::channel();
        let rare = e.rare_mut();
        rare.flight = Some(flight.clone());
        rare.late = false;
        let task = FlightTask {
            tokens: self.clone(),
            provider,
            account: Arc::from(account),
            generation: e.generation,
            snapshot: snapshot(provider, account, e),
            kind,
        };
        tokio::spawn(task.run(publisher));
        flight
    }

    /// Applies a flight's result to the entry it was started for.
    pub(super) fn apply(
        &self,
        task: &FlightTask,
        result: Result<StoredAccount, RefreshError>,
        duration: Duration,
        call: RefresherCall,
    ) -> FlightResult {
        let provider = task.provider;
        let counters = &self.inner.counters[idx(provider)];
        let map = &self.inner.maps[idx(provider)];
        let now = UnixMs::now();
        let event;
        let mut health = None;
        let outcome = {
            let Some(mut e) = map.get_mut(&task.account) else {
                return FlightResult::Err(RefreshError::transient(
                    "the account was removed during the refresh",
                ));
            };
            if e.generation != task.generation {
                // Replaced while refreshing: the new tokens win, this result is discarded.
                return match &e.header {
                    Some(h) if now < e.expires_at => FlightResult::Ok(Lease {
                        header: h.clone(),
                        generation: e.generation,
                    }),
                    _ => FlightResult::Err(RefreshError::transient(
                        "the account was replaced during the refresh",
                    )),
                };
            }
            e.clear_rare(|r| {
                r.flight = None;
                r.late = false;
            });
            match result {
                Ok(next) => {
                    // The refresher checked this; a hand-written refresher might not have.
                    let Some(header) = next.access_token.as_ref().and_then(Secret::bearer_header)
                    else {
                        let err =
                            RefreshError::transient("refreshed token is not a valid header value");
                        e.rare_mut().last_error = Some(err.clone());
                        bump(&counters.refresh_transient_error);
                        return FlightResult::Err(err);
                    };
                    let rotated = !e.refresh_token.is(&next.refresh_token);
                    if rotated {
                        e.refresh_token = CachedSecret::new(&next.refresh_token);
                    }
                    let expires = next
                        .expires_at
                        .and_then(|t| timestamp_to_system_time(t as i64))
                        .map(UnixMs::of);
                    e.expiry_known = expires.is_some();
                    e.expires_at = expires.unwrap_or(now + self.inner.settings.default_lifetime);
                    // A token that comes back already inside the refresh-ahead window is not
                    // refreshed again in the background before `min_interval` has passed.
                    e.ahead_at = self
                        .ahead_at(e.expires_at)
                        .max(now + self.inner.settings.min_interval);
                    e.clear_rare(|r| {
                        r.cooldown_until = None;
                        r.failed_cycles = 0;
                        r.last_error = None;
                    });
                    e.refreshed_at = Some(MonoMs::now());
                    e.header = Some(header.clone());
                    e.generation = next.generation.max(e.generation + 1);
                    e.last_refresh_at = Some(UnixSecs::of(now));
                    if std::mem::take(&mut e.episode) {
                        health = Some(HealthChange::Recovered);
                    }
                    if call == RefresherCall::NotMade {
                        // Another replica refreshed: this process only took the result
                        // (announced only when it ends an episode).
                        bump(&counters.coalesced);
                        let lease = Lease {
                            header,
                            generation: e.generation,
                        };
                        if health.is_none() {
                            return FlightResult::Ok(lease);
                        }
                        event = RefreshOutcome::Replaced;
                        FlightResult::Ok(lease)
                    } else {
                        bump(&counters.refresh_success);
                        event = RefreshOutcome::Refreshed {
                            refresh_token: next.refresh_token,
                            rotated,
                            expires_at: e.expiry_known.then_some(e.expires_at.time()),
                        };
                        FlightResult::Ok(Lease {
                            header,
                            generation: e.generation,
                        })
                    }
                }
                Err(err) => {
                    e.rare_mut().last_error = Some(err.clone());
                    if err.is_rejected() {
                        e.needs_reauth = true;
                        e.episode = true;
                        health = Some(HealthChange::NeedsReauth);
                        bump(&counters.refresh_rejected);
                        event = RefreshOutcome::Rejected {
                            reason: err.to_string(),
                        };
                    } else if call == RefresherCall::NotMade {
                        // The backend was never called (the shared store could not be read or
                        // locked): nothing to cool down from, the store's own bounds apply.
                        if task.kind == Launch::Ahead {
                            let retry_in = (self.inner.settings.refresh_ahead / 10)
                                .max(Duration::from_secs(1));
                            e.ahead_at = e.ahead_at.max(now + retry_in);
                        }
                        bump(&counters.refresh_transient_error);
                        event = RefreshOutcome::Failed {
                            reason: err.to_string(),
                        };
                    } else {
                        let rare = e.rare_mut();
                        rare.failed_cycles = rare.failed_cycles.saturating_add(1);
                        let failed_cycles = rare.failed_cycles;
                        let cooldown = cooldown_for(&err, failed_cycles);
                        rare.cooldown_until = Some(MonoMs::now() + cooldown);
                        let mut retry_in = cooldown;
                        if task.kind == Launch::Ahead {
                            retry_in = retry_in.max(
                                (self.inner.settings.refresh_ahead / 10)
                                    .max(Duration::from_secs(1)),
                            );
                        }
                        e.ahead_at = e.ahead_at.max(now + retry_in);
                        tracing::warn!(%provider, account = &*task.account, ?cooldown,
                            failed_cycles, "refresh cycle failed; account in cooldown");
                        if !std::mem::replace(&mut e.episode, true) {
                            health = Some(HealthChange::Failing);
                        }
                        bump(&counters.refresh_transient_error);
                        event = RefreshOutcome::Failed {
                            reason: err.to_string(),
                        };
                    }
                    FlightResult::Err(err)
                }
            }
        };
        let generation = match &outcome {
            FlightResult::Ok(l) => l.generation,
            FlightResult::Err(_) => task.generation,
        };
        self.inner.subscribers.publish(RefreshEvent {
            provider,
            account: Account::new(task.account.clone()),
            generation,
            duration,
            outcome: event,
            health,
        });
        outcome
    }
}
