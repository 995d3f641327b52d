//! The one retry policy: exponential backoff with jitter on transient and conflict errors, reconnecting after
//! transient ones, until a deadline. It looks only at `ErrorKind`, never at a backend.

use crate::store::{ErrorKind, Store, StoreError, StoreResult};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub first_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Give up after this long without a success.
    pub give_up_after_secs: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay_ms: 50,
            max_delay_ms: 3_000,
            give_up_after_secs: 120,
        }
    }
}

/// Runs `f` until it succeeds, fails with a non-retryable error, or the policy gives up. `on_retry` is told about
/// each retry (for logs); after a transient error the store reconnects before the next attempt.
pub fn with_retry<T>(
    store: &mut dyn Store,
    policy: &RetryPolicy,
    mut on_retry: impl FnMut(&StoreError, u32, Duration),
    mut f: impl FnMut(&mut dyn Store) -> StoreResult<T>,
) -> StoreResult<T> {
    let start = Instant::now();
    let mut delay = policy.first_delay_ms;
    let mut attempt = 0u32;
    loop {
        let err = match f(store) {
            Ok(v) => return Ok(v),
            Err(e)
                if e.is_retryable()
                    && start.elapsed() < Duration::from_secs(policy.give_up_after_secs) =>
            {
                e
            }
            Err(e) => return Err(e),
        };
        attempt += 1;
        // Jitter from the clock's low bits: enough to de-synchronise instances, no RNG state to carry.
        let jitter = u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        ) % (delay / 2 + 1);
        let wait = Duration::from_millis(delay + jitter);
        on_retry(&err, attempt, wait);
        std::thread::sleep(wait);
        delay = (delay * 2).min(policy.max_delay_ms);
        if err.kind == ErrorKind::Transient {
            // A failed reconnect is itself transient; the next attempt will surface it and back off again.
            let _ = store.reconnect();
        }
    }
}
