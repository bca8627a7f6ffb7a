//! The cross-replica refresh (module documentation, "Refresh"): each account is refreshed
//! once per token generation across the fleet. A replica first adopts a newer generation
//! another one wrote ([`decide`]); else it takes the account's lock (`SET NX PX lock_ttl`),
//! reads the stored generation again under it (the fence), calls the refresher with the
//! freshest refresh token while renewing the lock every `lock_ttl / 3`, and writes the result
//! only if the stored generation is still the fence (one script, which also announces and
//! releases the lock). When the generation moved on meanwhile, the stored state wins
//! ([`resolve_conflict`](Shared::resolve_conflict)); a success that cannot be written is kept
//! and written later ([`persist_later`](Shared::persist_later)).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::keys::CHANNEL;
use super::{random_id, Shared};
use crate::refresh::{BoxFuture, RefreshError, Refreshed};
use crate::tokens::store::{now_secs, RefreshFn, StoreError, StoreRefresh, StoredAccount};

/// How often a waiting replica looks at a held lock again (announcements wake it earlier).
const LOCK_POLL: Duration = Duration::from_millis(100);
/// How long a refreshed state that could not be written is retried in the background.
const PERSIST_LATER_FOR: Duration = Duration::from_secs(15 * 60);

/// The fenced write of a refresh result. KEYS[1] account, KEYS[2] lock; ARGV: expected
/// generation ('' = the key was absent), new generation, data, owner, channel, message.
/// Returns 1 when written, 0 when the stored generation moved on. Releases the lock if ours.
pub(super) const COMMIT_LUA: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'gen')
local written = 0
if (not cur) or cur == ARGV[1] then
  redis.call('HSET', KEYS[1], 'gen', ARGV[2], 'data', ARGV[3])
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  written = 1
end
if redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
return written
"#;

/// KEYS[1] lock; ARGV: owner, ttl (ms). 1 when renewed, 0 when no longer ours.
pub(super) const RENEW_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// KEYS[1] lock; ARGV: owner.
pub(super) const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// A refresh that cannot read, lock or write: it fails at once, never starting without the lock.
fn unavailable(e: StoreError) -> RefreshError {
    RefreshError::transient(format!("token store unavailable: {}", e.0))
}

/// Whether `a`'s access token can be handed out (present, not known to be expired).
fn usable(a: &StoredAccount) -> bool {
    a.access_token.is_some() && !a.needs_reauth && a.expires_at.is_none_or(|t| t > now_secs())
}

/// A refresh lock held, and the state to refresh from.
struct Locked {
    lock: String,
    owner: String,
    /// The state to refresh from.
    base: StoredAccount,
    /// The fence: the stored generation read under the lock (`None`: no key).
    expected: Option<u64>,
}

/// What to do with the stored state before (or instead of) refreshing.
pub(super) enum Decision {
    /// Someone else refreshed: return this state.
    Adopt(StoredAccount),
    /// The stored account is marked as needing re-authorisation.
    Rejected(RefreshError),
    /// Refresh from this state; the fence is the stored generation (`None`: no key).
    Refresh {
        base: StoredAccount,
        expected: Option<u64>,
    },
}

/// Steps 1 and 3 of a refresh: what the stored state (`stored`) means for a refresh of the
/// caller's `current` state.
pub(super) fn decide(current: &StoredAccount, stored: Option<StoredAccount>) -> Decision {
    match stored {
        Some(s) if s.generation >= current.generation => {
            if s.needs_reauth {
                return Decision::Rejected(s.rejection());
            }
            let other_tokens =
                s.access_token != current.access_token || s.refresh_token != current.refresh_token;
            if s.generation > current.generation && other_tokens && usable(&s) {
                return Decision::Adopt(s);
            }
            let expected = Some(s.generation);
            Decision::Refresh { base: s, expected }
        }
        // The cache is ahead of the store (or the store lost the account, e.g. a Redis
        // restarted without persistence): refresh from the cache's state.
        stored => Decision::Refresh {
            base: current.clone(),
            expected: stored.map(|s| s.generation),
        },
    }
}

impl Shared {
    /// Tries to take the lock; `true` when taken.
    async fn lock(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        let ttl_ms = self.lock_ttl.as_millis() as u64;
        self.set_if_absent("take refresh lock", key, owner, ttl_ms)
            .await
    }

    /// Extends the lock by `lock_ttl` if it is still ours; `true` when it was.
    async fn renew(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        let ttl_ms = self.lock_ttl.as_millis() as u64;
        let n: i64 = self
            .invoke(
                "renew refresh lock",
                self.renew.key(key).arg(owner).arg(ttl_ms),
            )
            .await?;
        Ok(n == 1)
    }

    /// Releases the lock if it is still ours; a failure only logs (it expires by itself).
    async fn release(&self, key: &str, owner: &str) {
        let r: Result<i64, _> = self
            .invoke("release refresh lock", self.release.key(key).arg(owner))
            .await;
        if let Err(e) = r {
            // It expires by itself after lock_ttl.
            tracing::warn!(error = %e, "could not release a refresh lock");
        }
    }

    /// The fenced write of `next`; `true` when written.
    async fn commit(
        &self,
        lock: &str,
        owner: &str,
        expected: Option<u64>,
        next: &StoredAccount,
    ) -> Result<bool, StoreError> {
        let write = self.write_of(next);
        let n: i64 = self
            .invoke(
                "write refreshed account",
                self.commit
                    .key(write.key)
                    .key(lock)
                    .arg(expected.map(|g| g.to_string()).unwrap_or_default())
                    .arg(next.generation)
                    .arg(write.record)
                    .arg(owner)
                    .arg(CHANNEL)
                    .arg(write.announcement),
            )
            .await?;
        Ok(n == 1)
    }

    /// How long a refresh waits for other replicas' locks in total.
    fn wait_bound(&self) -> Duration {
        self.lock_ttl * 2 + Duration::from_secs(5)
    }

    /// See the module documentation, "Refresh".
    pub(super) async fn refresh(
        self: &Arc<Self>,
        current: StoredAccount,
        refresh: RefreshFn,
    ) -> StoreRefresh {
        match self.lock_or_adopt(&current).await {
            Err(without_call) => StoreRefresh::not_made(without_call),
            Ok(locked) => StoreRefresh::made(self.refresh_locked(locked, refresh).await),
        }
    }

    /// Steps 1 to 3 of a refresh: adopts another replica's result, or takes the lock and reads
    /// the fence. `Err` holds the refresh's outcome when no refresher call is to be made.
    async fn lock_or_adopt(
        &self,
        current: &StoredAccount,
    ) -> Result<Locked, Result<StoredAccount, RefreshError>> {
        let (provider, account) = (current.provider, current.account.clone());
        let lock = self.lock_key(provider, &account);
        let owner = random_id();
        let deadline = Instant::now() + self.wait_bound();
        let mut announced = self.announced.subscribe();
        let mut waited = false;
        loop {
            // 1. Did someone else refresh already?
            let stored = self
                .read(provider, &account)
                .await
                .map_err(|e| Err(unavailable(e)))?;
            match decide(current, stored) {
                Decision::Adopt(s) => {
                    tracing::debug!(%provider, account = %account, generation = s.generation, "another replica refreshed; adopting its tokens");
                    return Err(Ok(s));
                }
                Decision::Rejected(e) => return Err(Err(e)),
                Decision::Refresh { .. } => {}
            }
            // 2. The lock.
            match self.lock(&lock, &owner).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    // The SET may have landed without its answer: do not leave the lock behind.
                    self.release(&lock, &owner).await;
                    return Err(Err(unavailable(e)));
                }
            }
            if !waited {
                tracing::debug!(%provider, account = %account, "another replica is refreshing; waiting for it");
                waited = true;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Err(RefreshError::transient(format!(
                    "another replica's refresh did not finish within {:?}",
                    self.wait_bound()
                ))));
            }
            let pause = LOCK_POLL.min(deadline - now);
            tokio::select! {
                _ = announced.changed() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        // 3. Lock held: the fence read.
        let stored = match self.read(provider, &account).await {
            Ok(s) => s,
            Err(e) => {
                self.release(&lock, &owner).await;
                return Err(Err(unavailable(e)));
            }
        };
        let (base, expected) = match decide(current, stored) {
            Decision::Adopt(s) => {
                self.release(&lock, &owner).await;
                return Err(Ok(s));
            }
            Decision::Rejected(e) => {
                self.release(&lock, &owner).await;
                return Err(Err(e));
            }
            Decision::Refresh { base, expected } => (base, expected),
        };
        Ok(Locked {
            lock,
            owner,
            base,
            expected,
        })
    }

    /// Step 4 of a refresh, the lock held: calls the refresher and writes its result fenced by
    /// the generation read under the lock.
    async fn refresh_locked(
        self: &Arc<Self>,
        locked: Locked,
        refresh: RefreshFn,
    ) -> Result<StoredAccount, RefreshError> {
        let Locked {
            lock,
            owner,
            base,
            expected,
        } = locked;
        let (provider, account) = (base.provider, base.account.clone());
        tracing::debug!(%provider, account = %account, generation = base.generation, "holding the refresh lock; refreshing");
        let result = self
            .run_renewing(&lock, &owner, refresh(base.refresh_token.clone()))
            .await;
        if let Err(e) = &result {
            if !e.is_rejected() {
                // A transient or unconfirmed failure changes nothing stored: release only.
                self.release(&lock, &owner).await;
                return Err(e.clone());
            }
        }
        // 4. The fenced write.
        let next = base.after_refresh(&result, now_secs());
        let mut last_err = None;
        for attempt in 0..3u32 {
            match self.commit(&lock, &owner, expected, &next).await {
                Ok(true) => return result.map(|_| next),
                Ok(false) => return self.resolve_conflict(&next, result).await,
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
            }
        }
        let e = last_err.expect("three failed attempts");
        if result.is_err() {
            // A rejection that could not be recorded: the next refresh asks again.
            self.release(&lock, &owner).await;
            return result.map(|_| next);
        }
        tracing::error!(%provider, account = %account, error = %e,
            "refreshed tokens could not be written to the shared store; kept in memory, retrying in the background");
        self.persist_later(lock, owner, expected, next.clone());
        Ok(next)
    }

    /// Runs the refresher, renewing the lock every `lock_ttl / 3` while it runs.
    async fn run_renewing(
        &self,
        lock: &str,
        owner: &str,
        refresh: BoxFuture<'static, Result<Refreshed, RefreshError>>,
    ) -> Result<Refreshed, RefreshError> {
        let period = (self.lock_ttl / 3).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(refresh);
        loop {
            tokio::select! {
                r = &mut refresh => return r,
                _ = tick.tick() => match self.renew(lock, owner).await {
                    Ok(true) => {}
                    // The generation fence still keeps the stored state consistent.
                    Ok(false) => tracing::warn!("the refresh lock expired while refreshing"),
                    Err(e) => tracing::warn!(error = %e, "could not renew the refresh lock"),
                },
            }
        }
    }

    /// The stored generation moved on while we refreshed: the stored state wins.
    async fn resolve_conflict(
        &self,
        next: &StoredAccount,
        result: Result<Refreshed, RefreshError>,
    ) -> Result<StoredAccount, RefreshError> {
        let stored = self
            .read(next.provider, &next.account)
            .await
            .map_err(unavailable)?;
        match stored {
            // Our own write, whose answer was lost.
            Some(s) if s.generation == next.generation && s.refresh_token == next.refresh_token => {
                result.map(|_| next.clone())
            }
            Some(s) if s.needs_reauth => Err(s.rejection()),
            Some(s) if usable(&s) => {
                tracing::warn!(provider = %next.provider, account = %next.account, generation = s.generation,
                    "the account changed in the shared store during the refresh; the stored tokens win");
                Ok(s)
            }
            _ => match result {
                Err(e) => Err(e),
                Ok(_) => Err(RefreshError::transient(
                    "the account changed in the shared store during the refresh",
                )),
            },
        }
    }

    /// Keeps trying the fenced write of a successful refresh until it lands, the stored
    /// generation moved on, the store is dropped, or [`PERSIST_LATER_FOR`] passed.
    fn persist_later(
        self: &Arc<Self>,
        lock: String,
        owner: String,
        expected: Option<u64>,
        next: StoredAccount,
    ) {
        let weak: Weak<Shared> = Arc::downgrade(self);
        tokio::spawn(async move {
            let until = Instant::now() + PERSIST_LATER_FOR;
            let mut pause = Duration::from_millis(250);
            while Instant::now() < until {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                let Some(shared) = weak.upgrade() else { return };
                match shared.commit(&lock, &owner, expected, &next).await {
                    Ok(true) => {
                        tracing::info!(provider = %next.provider, account = %next.account, "refreshed tokens written to the shared store");
                        return;
                    }
                    Ok(false) => {
                        tracing::warn!(provider = %next.provider, account = %next.account, "the shared store moved on before the refreshed tokens could be written");
                        return;
                    }
                    Err(_) => {}
                }
            }
            tracing::error!(provider = %next.provider, account = %next.account, "gave up writing refreshed tokens to the shared store");
        });
    }
}
