//! [`RetryPolicy`]: how every refresher's attempts are retried, backed off and bounded in time
//! — and why a refresh token that may be spent is never sent again.

use std::time::Duration;

use super::{RefreshError, Refreshed, Refresher};
use crate::provider::Provider;
use crate::token::Secret;

/// Bounded retries of transient refresh failures, with exponential backoff and jitter — and
/// never a second send of a refresh token that may already be spent.
///
/// * Only a [`RefreshError::Transient`] failure (the token provably not spent) is retried:
///   attempt `n` (from 0) is followed, after a delay drawn uniformly from `[d/2, d]` with
///   `d = min(max_backoff, base_backoff · 2ⁿ)` — or after the backend's `Retry-After` when it
///   sent one no longer than `max_backoff` — by the next, until `max_attempts` attempts were
///   made. A longer `Retry-After` ends the cycle (the caller's cooldown honours it).
/// * A rejection or an [`Unconfirmed`](RefreshError::Unconfirmed) failure ends the cycle.
/// * An attempt still unanswered after `timeout` is **not abandoned**: [`RetryPolicy::run_notify`]
///   reports the timeout to its caller at once (who answers its own callers `503`), keeps
///   waiting for the answer for up to `late_answer_window`, and returns that late answer — a
///   success (with its rotated refresh token) is applied like any other. No further attempt is
///   made in that cycle.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::RetryPolicy;
///
/// let p = RetryPolicy::default();
/// assert_eq!(p.max_attempts, 3);
/// assert_eq!(p.timeout, Duration::from_secs(10));
/// assert_eq!(p.late_answer_window, Duration::from_secs(120));
/// ```
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all (at least 1).
    pub max_attempts: u32,
    /// How long callers wait for one attempt.
    pub timeout: Duration,
    /// How long an attempt that timed out is still awaited in the background.
    pub late_answer_window: Duration,
    /// The first backoff.
    pub base_backoff: Duration,
    /// The largest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            timeout: Self::DEFAULT_TIMEOUT,
            late_answer_window: Self::DEFAULT_LATE_ANSWER_WINDOW,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The default `timeout` (10 s); the refreshers' default exchange bound adds
    /// [`Self::DEFAULT_LATE_ANSWER_WINDOW`] to it.
    pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default `late_answer_window` (2 min).
    pub(crate) const DEFAULT_LATE_ANSWER_WINDOW: Duration = Duration::from_secs(120);

    /// Runs `refresher` under this policy and returns the final result (for an attempt that
    /// timed out, its late answer, or an [`Unconfirmed`](RefreshError::Unconfirmed) error when
    /// none came within `late_answer_window`).
    ///
    /// ```
    /// # use oauth_refresh_proxy::refresh::{BoxFuture, Refreshed, Refresher};
    /// # use oauth_refresh_proxy::{Provider, RefreshError, RetryPolicy, Secret};
    /// # struct Dead;
    /// # impl Refresher for Dead {
    /// #     fn refresh<'a>(&'a self, _: Provider, _: &'a Secret) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
    /// #         Box::pin(async { Err(RefreshError::rejected("revoked")) })
    /// #     }
    /// # }
    /// # tokio_test_block_on(async {
    /// let r = RetryPolicy::default().run(&Dead, Provider::Google, &Secret::new("r")).await;
    /// assert!(r.unwrap_err().is_rejected());
    /// # });
    /// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    /// # }
    /// ```
    pub async fn run(
        &self,
        refresher: &dyn Refresher,
        provider: Provider,
        refresh_token: &Secret,
    ) -> Result<Refreshed, RefreshError> {
        self.run_notify(refresher, provider, refresh_token, |_| {})
            .await
    }

    /// Like [`RetryPolicy::run`], but when an attempt is still unanswered after `timeout`,
    /// `on_timeout` is called at once with the error its waiting callers should get, while
    /// the answer is still awaited for up to `late_answer_window`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use oauth_refresh_proxy::refresh::{BoxFuture, Refreshed, Refresher};
    /// # use oauth_refresh_proxy::{Provider, RefreshError, RetryPolicy, Secret};
    /// struct Slow;
    /// impl Refresher for Slow {
    ///     fn refresh<'a>(&'a self, _: Provider, _: &'a Secret) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
    ///         Box::pin(async {
    ///             tokio::time::sleep(Duration::from_millis(50)).await;
    ///             Ok(Refreshed { access_token: Secret::new("late"), refresh_token: None, expires_at: None })
    ///         })
    ///     }
    /// }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let policy = RetryPolicy { timeout: Duration::from_millis(10), ..RetryPolicy::default() };
    /// let mut told = None;
    /// let r = policy.run_notify(&Slow, Provider::Google, &Secret::new("r"), |e| told = Some(e)).await;
    /// assert!(told.is_some_and(|e| !e.is_retryable()));   // callers were answered at 10 ms
    /// assert_eq!(r.unwrap().access_token.expose(), "late"); // the late answer is kept
    /// # });
    /// ```
    pub async fn run_notify(
        &self,
        refresher: &dyn Refresher,
        provider: Provider,
        refresh_token: &Secret,
        on_timeout: impl FnOnce(RefreshError),
    ) -> Result<Refreshed, RefreshError> {
        let attempts = self.max_attempts.max(1);
        let mut on_timeout = Some(on_timeout);
        let mut attempt = 0;
        loop {
            let mut call = refresher.refresh(provider, refresh_token);
            let result = match tokio::time::timeout(self.timeout, &mut call).await {
                Ok(r) => r,
                Err(_) => {
                    let told = RefreshError::unconfirmed(format!(
                        "attempt timed out after {:?}; its answer is still awaited",
                        self.timeout
                    ));
                    if let Some(notify) = on_timeout.take() {
                        notify(told);
                    }
                    tracing::warn!(%provider, timeout = ?self.timeout, window = ?self.late_answer_window,
                        "refresh attempt timed out after sending; awaiting a late answer, no new attempt meanwhile");
                    return match tokio::time::timeout(self.late_answer_window, call).await {
                        Ok(Ok(r)) => {
                            tracing::info!(%provider, "late refresh answer arrived and is applied");
                            Ok(r)
                        }
                        // A late transient status still ends this cycle: its callers left.
                        Ok(Err(e)) => Err(match e {
                            RefreshError::Transient { message, .. } => {
                                RefreshError::Unconfirmed(format!("{message} (late answer)"))
                            }
                            other => other,
                        }),
                        Err(_) => Err(RefreshError::unconfirmed(format!(
                            "no answer within {:?} after the attempt was sent",
                            self.timeout + self.late_answer_window
                        ))),
                    };
                }
            };
            match result {
                Err(e) if e.is_retryable() && attempt + 1 < attempts => {
                    let delay = match e.retry_after() {
                        Some(asked) if asked > self.max_backoff => return Err(e),
                        Some(asked) => asked,
                        None => self.backoff(attempt),
                    };
                    tracing::debug!(%provider, attempt = attempt + 1, error = %e, ?delay, "transient refresh failure (token not spent), retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) if !e.is_rejected() && attempt > 0 => {
                    return Err(e.annotate(&format!(" (after {} attempts)", attempt + 1)))
                }
                other => return other,
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let d = exp.min(self.max_backoff);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            timeout: Duration::from_secs(1),
            late_answer_window: Duration::from_secs(1),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
        };
        for _ in 0..100 {
            let b0 = p.backoff(0);
            assert!(b0 >= Duration::from_millis(50) && b0 <= Duration::from_millis(100));
            let b2 = p.backoff(2);
            assert!(b2 >= Duration::from_millis(200) && b2 <= Duration::from_millis(400));
            let b9 = p.backoff(9);
            assert!(b9 >= Duration::from_millis(350) && b9 <= Duration::from_millis(700));
        }
    }

    use super::super::scripted::{Script, Scripted};

    /// A scripted refresher: `answers` in order, then a success, each after `delay`.
    fn script(
        answers: Vec<Result<Refreshed, RefreshError>>,
        delay: Duration,
    ) -> (Arc<Script>, Scripted) {
        let s = Script::delayed(ok("default").unwrap(), delay);
        for a in answers {
            s.push(a);
        }
        (s.clone(), Scripted(s))
    }

    fn ok(token: &str) -> Result<Refreshed, RefreshError> {
        Ok(Refreshed {
            access_token: Secret::new(token),
            refresh_token: Some(Secret::new(format!("{token}-rotated"))),
            expires_at: None,
        })
    }

    fn policy(timeout_ms: u64, late_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            timeout: Duration::from_millis(timeout_ms),
            late_answer_window: Duration::from_millis(late_ms),
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(20),
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Runs `answers` (then successes) under a 1 s timeout and 1 s late window; returns the
    /// result and the number of calls.
    async fn run_script(
        answers: Vec<Result<Refreshed, RefreshError>>,
    ) -> (Result<Refreshed, RefreshError>, usize) {
        let (s, r) = script(answers, Duration::ZERO);
        let got = policy(1000, 1000)
            .run(&r, Provider::Google, &Secret::new("r"))
            .await;
        (got, s.calls())
    }

    #[test]
    fn only_unspent_failures_are_retried() {
        block_on(async {
            let (got, calls) = run_script(vec![
                Err(RefreshError::transient("503")),
                Err(RefreshError::transient("connection refused")),
            ])
            .await;
            assert_eq!(got.unwrap().access_token.expose(), "default");
            assert_eq!(calls, 3);

            let (got, calls) = run_script(vec![Err(RefreshError::unconfirmed("broken 2xx"))]).await;
            assert!(matches!(got, Err(RefreshError::Unconfirmed(_))));
            assert_eq!(calls, 1, "a possibly spent refresh token is never re-sent");

            // A transient status, then an unconfirmed failure: two calls, then stop.
            let (got, calls) = run_script(vec![
                Err(RefreshError::transient("503")),
                Err(RefreshError::unconfirmed("reset after sending")),
            ])
            .await;
            assert_eq!(
                got.unwrap_err().to_string(),
                "refresh temporarily unavailable: reset after sending (after 2 attempts)"
            );
            assert_eq!(calls, 2);
        });
    }

    #[test]
    fn a_long_retry_after_ends_the_cycle_and_a_short_one_is_waited() {
        block_on(async {
            let long = RefreshError::transient("429").with_retry_after(Duration::from_secs(60));
            let (got, calls) = run_script(vec![Err(long)]).await;
            assert_eq!(
                got.unwrap_err().retry_after(),
                Some(Duration::from_secs(60))
            );
            assert_eq!(calls, 1);

            let short = RefreshError::transient("503").with_retry_after(Duration::from_millis(15));
            let started = tokio::time::Instant::now();
            let (got, calls) = run_script(vec![Err(short)]).await;
            assert_eq!(got.unwrap().access_token.expose(), "default");
            assert!(started.elapsed() >= Duration::from_millis(15));
            assert_eq!(calls, 2);
        });
    }

    #[test]
    fn a_timed_out_attempt_is_awaited_not_retried() {
        block_on(async {
            // Answers after 3 s; callers wait 1 s; the late answer is returned.
            let (s, r) = script(vec![ok("late"), ok("never")], Duration::from_secs(3));
            let started = tokio::time::Instant::now();
            let mut told_at = None;
            let got = policy(1000, 120_000)
                .run_notify(&r, Provider::GitHub, &Secret::new("r"), |e| {
                    assert!(!e.is_retryable() && !e.is_rejected());
                    told_at = Some(started.elapsed());
                })
                .await;
            assert_eq!(told_at, Some(Duration::from_secs(1)));
            let got = got.unwrap();
            assert_eq!(got.access_token.expose(), "late");
            assert_eq!(got.refresh_token.unwrap().expose(), "late-rotated");
            assert_eq!(
                s.calls(),
                1,
                "the timed-out attempt was not followed by another"
            );

            // No answer within the window: one call, an unconfirmed error at timeout + window.
            let (s, r) = script(vec![ok("too late")], Duration::from_secs(600));
            let started = tokio::time::Instant::now();
            let got = policy(1000, 2000)
                .run(&r, Provider::GitHub, &Secret::new("r"))
                .await;
            assert!(matches!(got, Err(RefreshError::Unconfirmed(_))));
            assert_eq!(started.elapsed(), Duration::from_secs(3));
            assert_eq!(s.calls(), 1);
        });
    }
}
