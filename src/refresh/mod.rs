//! How a new access token is obtained.
//!
//! (Over 600 lines: the trait, its error, the retry policy every refresher runs under and
//! `DirectRefresher` are one contract, tested together below.)
//!
//! A [`Refresher`] makes **one** attempt to trade a refresh token for a new access token and
//! classifies failure as [`RefreshError::Rejected`] (the refresh token is dead: never retry it)
//! or [`RefreshError::Transient`] (try again later). Retrying, backoff and the per-attempt time
//! bound are not the refresher's business: [`RetryPolicy::run`] wraps every refresher the same
//! way, so all refreshers share one mechanism.
//!
//! Three refreshers ship, on one HTTP plumbing (client without redirects or environment proxy,
//! bounded body, transport errors that never name a URL or header):
//!
//! * [`BackendRefresher`]: a Flashback-compatible backend (`refresh.mode = "backend"`);
//! * [`GoogleRefresher`] and [`GitHubRefresher`]: the providers' own token endpoints, combined
//!   per provider by [`DirectRefresher`] (`refresh.mode = "direct"`).
//!
//! # Reading a token endpoint (direct mode)
//!
//! * 5xx, 408, 429, 1xx/3xx, timeouts and connection errors ⇒ transient;
//! * an `error` member — in a 4xx **or in a 2xx**, since GitHub answers errors with HTTP 200 —
//!   decides next: `temporarily_unavailable`, `server_error`, `slow_down` ⇒ transient;
//!   `invalid_client` / `incorrect_client_credentials` ⇒ transient too (the proxy's client
//!   credentials are wrong, the refresh token is not to blame, so the account is not marked
//!   for re-authorisation); any other code (`invalid_grant`, `bad_refresh_token`, …) ⇒ rejected;
//! * any other 4xx ⇒ rejected;
//! * a 2xx without a usable `access_token` (empty, unparseable, over 1 MiB, not a header
//!   value) ⇒ transient; `expires_in` (seconds) gives the expiry; a non-empty `refresh_token`
//!   is a rotation, else the old refresh token is kept.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use crate::provider::Provider;
use crate::token::Secret;

mod backend;
mod github;
mod google;
#[cfg(test)]
pub(crate) mod scripted;
mod token_endpoint;
mod transport;
pub(crate) mod url;

pub use backend::BackendRefresher;
pub use github::GitHubRefresher;
pub use google::GoogleRefresher;
pub use transport::InvalidUrl;

/// A boxed, sendable future, as returned by [`Refresher::refresh`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a successful refresh produced.
///
/// ```
/// use oauth_refresh_proxy::{refresh::Refreshed, Secret};
///
/// let r = Refreshed { access_token: Secret::new("new"), refresh_token: None, expires_at: None };
/// assert!(r.refresh_token.is_none()); // not rotated: keep the old refresh token
/// ```
#[derive(Clone, Debug)]
pub struct Refreshed {
    /// The new access token.
    pub access_token: Secret,
    /// The rotated refresh token, when the provider rotated it; `None` keeps the old one.
    pub refresh_token: Option<Secret>,
    /// When the new access token expires; `None` when unknown.
    pub expires_at: Option<SystemTime>,
}

/// Why a refresh failed.
///
/// Messages never contain a token. Three kinds, because they call for three different
/// reactions:
///
/// * [`Rejected`](RefreshError::Rejected): the refresh token is dead — never retried, the
///   account needs re-authorisation;
/// * [`Transient`](RefreshError::Transient): the attempt provably did not spend the refresh
///   token (the backend was never reached, or it answered a transient status such as 503) —
///   it may be retried at once, after `retry_after` when the backend asked for a pause;
/// * [`Unconfirmed`](RefreshError::Unconfirmed): the request may have reached the backend and
///   been acted upon (a timeout after sending, a broken 2xx answer) — the refresh token may
///   already be spent (rotated), so it is **never re-sent** in the same cycle.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh_proxy::RefreshError;
///
/// let e = RefreshError::rejected("backend answered 400");
/// assert!(e.is_rejected());
/// assert_eq!(e.to_string(), "refresh token rejected: backend answered 400");
///
/// let busy = RefreshError::transient("backend answered 503").with_retry_after(Duration::from_secs(7));
/// assert!(busy.is_retryable());
/// assert_eq!(busy.retry_after(), Some(Duration::from_secs(7)));
///
/// let late = RefreshError::unconfirmed("attempt timed out after 1s");
/// assert!(!late.is_retryable() && !late.is_rejected());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// The refresh token is dead (revoked, expired, unknown): it must not be retried, and the
    /// account needs re-authorisation.
    #[error("refresh token rejected: {0}")]
    Rejected(String),
    /// The refresh could not be done now and the refresh token was not spent (connection
    /// refused, 5xx, 408, 429, a redirect): it may be retried.
    #[error("refresh temporarily unavailable: {message}")]
    Transient {
        /// Why (never a token).
        message: String,
        /// How long the backend asked to be left alone (its `Retry-After`), if it said.
        retry_after: Option<Duration>,
    },
    /// The refresh failed after its request may have reached the backend (a timeout after
    /// sending, a broken 2xx answer): the refresh token may be spent, so it is not re-sent.
    #[error("refresh temporarily unavailable: {0}")]
    Unconfirmed(String),
}

impl RefreshError {
    /// A rejection with the given reason.
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert!(RefreshError::rejected("x").is_rejected());
    /// ```
    pub fn rejected(msg: impl Into<String>) -> Self {
        RefreshError::Rejected(msg.into())
    }

    /// A transient failure that did not spend the refresh token (may be retried).
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert!(!RefreshError::transient("x").is_rejected());
    /// assert!(RefreshError::transient("x").is_retryable());
    /// ```
    pub fn transient(msg: impl Into<String>) -> Self {
        RefreshError::Transient {
            message: msg.into(),
            retry_after: None,
        }
    }

    /// A failure after the request may have reached the backend (never retried).
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert!(!RefreshError::unconfirmed("x").is_retryable());
    /// ```
    pub fn unconfirmed(msg: impl Into<String>) -> Self {
        RefreshError::Unconfirmed(msg.into())
    }

    /// Attaches the backend's `Retry-After` to a [`Transient`](RefreshError::Transient) error
    /// (other kinds are returned unchanged).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use oauth_refresh_proxy::RefreshError;
    /// let e = RefreshError::rejected("x").with_retry_after(Duration::from_secs(1));
    /// assert_eq!(e.retry_after(), None);
    /// ```
    pub fn with_retry_after(self, after: Duration) -> Self {
        match self {
            RefreshError::Transient { message, .. } => RefreshError::Transient {
                message,
                retry_after: Some(after),
            },
            other => other,
        }
    }

    /// Whether the refresh token was rejected.
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert!(RefreshError::rejected("x").is_rejected());
    /// ```
    pub fn is_rejected(&self) -> bool {
        matches!(self, RefreshError::Rejected(_))
    }

    /// Whether the same refresh token may be sent again at once: only after a
    /// [`Transient`](RefreshError::Transient) failure.
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert!(!RefreshError::rejected("x").is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(self, RefreshError::Transient { .. })
    }

    /// The pause the backend asked for, when it sent a `Retry-After`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert_eq!(RefreshError::transient("x").retry_after(), None);
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RefreshError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The reason, without the kind's prefix.
    ///
    /// ```
    /// # use oauth_refresh_proxy::RefreshError;
    /// assert_eq!(RefreshError::rejected("revoked").reason(), "revoked");
    /// ```
    pub fn reason(&self) -> &str {
        match self {
            RefreshError::Rejected(m) | RefreshError::Unconfirmed(m) => m,
            RefreshError::Transient { message, .. } => message,
        }
    }

    /// The same error with `suffix` appended to its reason.
    fn annotate(self, suffix: &str) -> Self {
        match self {
            RefreshError::Rejected(m) => RefreshError::Rejected(m + suffix),
            RefreshError::Unconfirmed(m) => RefreshError::Unconfirmed(m + suffix),
            RefreshError::Transient {
                message,
                retry_after,
            } => RefreshError::Transient {
                message: message + suffix,
                retry_after,
            },
        }
    }
}

/// Trades a refresh token for a new access token: one attempt, no retries.
///
/// Implement it to refresh from somewhere else; [`BackendRefresher`] is the Flashback-compatible
/// implementation, [`DirectRefresher`] the one that talks to Google and GitHub themselves.
///
/// ```
/// use oauth_refresh_proxy::refresh::{BoxFuture, Refreshed, Refresher};
/// use oauth_refresh_proxy::{Provider, RefreshError, Secret};
///
/// struct Fixed;
///
/// impl Refresher for Fixed {
///     fn refresh<'a>(&'a self, _: Provider, _: &'a Secret)
///         -> BoxFuture<'a, Result<Refreshed, RefreshError>>
///     {
///         Box::pin(async {
///             Ok(Refreshed { access_token: Secret::new("fresh"), refresh_token: None, expires_at: None })
///         })
///     }
/// }
/// ```
pub trait Refresher: Send + Sync + 'static {
    /// Makes one refresh attempt for `provider` with `refresh_token`.
    fn refresh<'a>(
        &'a self,
        provider: Provider,
        refresh_token: &'a Secret,
    ) -> BoxFuture<'a, Result<Refreshed, RefreshError>>;
}

/// Refreshes at the providers' own token endpoints: Google tokens with a [`GoogleRefresher`],
/// GitHub tokens with a [`GitHubRefresher`] (`refresh.mode = "direct"`).
///
/// A provider without a refresher is refused: its refresh is [`RefreshError::Rejected`] with a
/// message naming the missing `[refresh.{provider}]` credentials, and its refresh token is
/// never sent anywhere.
///
/// ```
/// use oauth_refresh_proxy::{DirectRefresher, GitHubRefresher, GoogleRefresher, Provider, Secret, Tokens};
///
/// let direct = DirectRefresher::new()
///     .google(GoogleRefresher::new("id.apps.googleusercontent.com", Secret::new("google-secret")))
///     .github(GitHubRefresher::new("Iv1.abc", Secret::new("github-secret")));
/// assert!(direct.supports(Provider::Google) && direct.supports(Provider::GitHub));
/// let tokens = Tokens::builder(direct).build();
/// # let _ = tokens;
/// ```
#[derive(Clone, Debug, Default)]
pub struct DirectRefresher {
    google: Option<GoogleRefresher>,
    github: Option<GitHubRefresher>,
}

impl DirectRefresher {
    /// A refresher for no provider yet.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{DirectRefresher, Provider};
    /// assert!(!DirectRefresher::new().supports(Provider::Google));
    /// ```
    pub fn new() -> Self {
        DirectRefresher::default()
    }

    /// Refreshes Google tokens with `google`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{DirectRefresher, GoogleRefresher, Provider, Secret};
    /// let d = DirectRefresher::new().google(GoogleRefresher::new("id", Secret::new("s")));
    /// assert!(d.supports(Provider::Google));
    /// ```
    pub fn google(mut self, google: GoogleRefresher) -> Self {
        self.google = Some(google);
        self
    }

    /// Refreshes GitHub tokens with `github`.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{DirectRefresher, GitHubRefresher, Provider, Secret};
    /// let d = DirectRefresher::new().github(GitHubRefresher::new("id", Secret::new("s")));
    /// assert!(d.supports(Provider::GitHub));
    /// ```
    pub fn github(mut self, github: GitHubRefresher) -> Self {
        self.github = Some(github);
        self
    }

    /// Whether tokens of `provider` can be refreshed (its client credentials were given).
    ///
    /// ```
    /// # use oauth_refresh_proxy::{DirectRefresher, Provider};
    /// assert!(!DirectRefresher::new().supports(Provider::GitHub));
    /// ```
    pub fn supports(&self, provider: Provider) -> bool {
        match provider {
            Provider::Google => self.google.is_some(),
            Provider::GitHub => self.github.is_some(),
        }
    }
}

impl Refresher for DirectRefresher {
    fn refresh<'a>(
        &'a self,
        provider: Provider,
        refresh_token: &'a Secret,
    ) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
        match (provider, &self.google, &self.github) {
            (Provider::Google, Some(g), _) => g.refresh(provider, refresh_token),
            (Provider::GitHub, _, Some(g)) => g.refresh(provider, refresh_token),
            _ => Box::pin(async move {
                Err(RefreshError::rejected(format!(
                    "no {provider} client credentials for direct refresh (configure [refresh.{provider}])"
                )))
            }),
        }
    }
}

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

    use scripted::{Script, Scripted};

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

    fn block_on<F: Future>(f: F) -> F::Output {
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
