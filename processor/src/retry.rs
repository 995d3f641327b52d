//! The one retry policy: exponential backoff with jitter on transient and conflict errors, reconnecting after
//! transient ones, until a deadline. It looks only at `ErrorKind`, never at a backend. Its schedule is
//! [`crate::backoff`]'s, the one backoff in the processor. Its waits are stop-aware: a SIGTERM/SIGINT during one ends
//! the loop at once ([`Retry::Stopped`]), so a drain is honoured within a second even while the database is down.

pub use crate::backoff::{sleep_unless_stopped, Backoff, RetryPolicy};
use crate::store::{ErrorKind, Store, StoreError, StoreResult};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Why a retry loop ended without a result.
#[derive(Debug, thiserror::Error)]
pub enum Retry {
    /// A non-retryable error, or the policy gave up on a retryable one.
    #[error(transparent)]
    Failed(#[from] StoreError),
    /// The stop flag was set during a backoff wait; the error that caused the wait is kept.
    #[error("stop requested while retrying after: {0}")]
    Stopped(StoreError),
}

impl Retry {
    /// The store error behind either ending.
    pub fn into_store_error(self) -> StoreError {
        match self {
            Retry::Failed(e) | Retry::Stopped(e) => e,
        }
    }
}

/// Runs `f` until it succeeds, fails with a non-retryable error, the policy gives up, or `stop` is set during a
/// backoff wait. `on_retry` is told about each retry (for logs and events); after a transient error the store
/// reconnects before the next attempt.
pub fn with_retry_until<T>(
    store: &mut dyn Store,
    policy: &RetryPolicy,
    stop: Option<&AtomicBool>,
    mut on_retry: impl FnMut(&StoreError, u32, Duration),
    mut f: impl FnMut(&mut dyn Store) -> StoreResult<T>,
) -> Result<T, Retry> {
    let mut backoff = policy.backoff();
    let mut attempt = 0u32;
    // The last reconnect's failure: the attempt after it runs on the dead client and can only say "connection
    // closed", so the reconnect's own error (why the server is unreachable) is what gets reported in its place.
    let mut reconnect_failed: Option<StoreError> = None;
    loop {
        let result = match (f(store), reconnect_failed.take()) {
            (Err(e), Some(why)) if e.kind == ErrorKind::Transient => Err(why),
            (r, _) => r,
        };
        let (err, wait) = match result {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => match backoff.next_wait() {
                Some(wait) => (e, wait),
                None => return Err(Retry::Failed(e)),
            },
            Err(e) => return Err(Retry::Failed(e)),
        };
        attempt += 1;
        on_retry(&err, attempt, wait);
        if sleep_unless_stopped(wait, stop) {
            return Err(Retry::Stopped(err));
        }
        if err.kind == ErrorKind::Transient {
            // A failed reconnect is kept for the next attempt's report (above) when it is itself transient; one
            // that is not (a password refused mid-run) is left to the next attempt to surface, as before.
            reconnect_failed = store
                .reconnect()
                .err()
                .filter(|e| e.kind == ErrorKind::Transient);
        }
    }
}

/// [`with_retry_until`] without a stop flag: for set-up steps that run before the work (schema creation), where
/// a stop is looked at right after.
pub fn with_retry<T>(
    store: &mut dyn Store,
    policy: &RetryPolicy,
    on_retry: impl FnMut(&StoreError, u32, Duration),
    f: impl FnMut(&mut dyn Store) -> StoreResult<T>,
) -> StoreResult<T> {
    with_retry_until(store, policy, None, on_retry, f).map_err(Retry::into_store_error)
}
