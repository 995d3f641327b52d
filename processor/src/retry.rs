//! The one retry policy: exponential backoff with jitter on transient and conflict errors, reconnecting after
//! transient ones, until a deadline. It looks only at `ErrorKind`, never at a backend. Its schedule is
//! [`crate::backoff`]'s, the one backoff in the processor.

pub use crate::backoff::{sleep_unless_stopped, Backoff, RetryPolicy};
use crate::store::{ErrorKind, Store, StoreError, StoreResult};
use std::time::Duration;

/// Runs `f` until it succeeds, fails with a non-retryable error, or the policy gives up. `on_retry` is told about
/// each retry (for logs); after a transient error the store reconnects before the next attempt.
pub fn with_retry<T>(
    store: &mut dyn Store,
    policy: &RetryPolicy,
    mut on_retry: impl FnMut(&StoreError, u32, Duration),
    mut f: impl FnMut(&mut dyn Store) -> StoreResult<T>,
) -> StoreResult<T> {
    let mut backoff = policy.backoff();
    let mut attempt = 0u32;
    loop {
        let (err, wait) = match f(store) {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => match backoff.next_wait() {
                Some(wait) => (e, wait),
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        attempt += 1;
        on_retry(&err, attempt, wait);
        std::thread::sleep(wait);
        if err.kind == ErrorKind::Transient {
            // A failed reconnect is itself transient; the next attempt will surface it and back off again.
            let _ = store.reconnect();
        }
    }
}
