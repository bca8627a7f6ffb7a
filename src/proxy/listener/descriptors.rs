//! The descriptor limit: raising `RLIMIT_NOFILE` at start-up and fitting `max_connections`
//! under it.

use super::ADMIN_MAX_CONNECTIONS;

/// Descriptors kept aside beside the listeners' connections and their upstream sockets: the
/// listening sockets, stdio, the runtime, the store, the refresh and webhook clients.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force
/// (`None` where it cannot be read). A failure to raise it is logged, and the old soft limit
/// returned.
///
/// ```
/// use oauth_refresh_proxy::proxy::listener::raise_nofile_limit;
///
/// let now = raise_nofile_limit();
/// assert!(now.is_none_or(|n| n > 0));
/// assert_eq!(raise_nofile_limit(), now, "raising again changes nothing");
/// ```
pub fn raise_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let (soft, hard) = match rlimit::Resource::NOFILE.get() {
            Ok(limits) => limits,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE");
                return None;
            }
        };
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(now) => {
                if now > soft {
                    tracing::info!(
                        from = soft,
                        to = now,
                        "raised RLIMIT_NOFILE to its hard limit"
                    );
                }
                Some(now)
            }
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise RLIMIT_NOFILE; keeping the soft limit");
                Some(soft)
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The largest `max_connections`, at most `requested`, that fits under `nofile` descriptors:
/// each proxy connection may hold one upstream socket besides its own, and the admin listener's
/// [`ADMIN_MAX_CONNECTIONS`] and [`RESERVED_DESCRIPTORS`] come first. Never below 1.
///
/// ```
/// use oauth_refresh_proxy::proxy::listener::fit_max_connections;
///
/// assert_eq!(fit_max_connections(10_000, 1_048_576), 10_000);
/// assert_eq!(fit_max_connections(10_000, 20_000), 9_744); // (20 000 - 256 - 256) / 2
/// assert_eq!(fit_max_connections(10_000, 1_024), 256);
/// assert_eq!(fit_max_connections(10_000, 100), 1);
/// ```
pub fn fit_max_connections(requested: usize, nofile: u64) -> usize {
    let spare = nofile.saturating_sub(ADMIN_MAX_CONNECTIONS as u64 + RESERVED_DESCRIPTORS);
    let fit = usize::try_from(spare / 2).unwrap_or(usize::MAX).max(1);
    requested.min(fit)
}
