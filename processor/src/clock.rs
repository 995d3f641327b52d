//! The processor's wall clock, with a test skew: `PROCESSOR_CLOCK_SKEW_MS=<±ms>` shifts every wall-clock time the
//! processor reads by itself (its lease clock when lease arithmetic is local, `processor status`'s "expires in").
//! Like crash points and planted bugs it needs the [`crate::crash::CrashHook`] only `harness processor …`
//! installs: the shipped binary refuses the variable with exit 2, so no user build runs on a skewed clock.
//!
//! Lease arithmetic does not use this clock: it reads the database's (`Store::clock_ms`), so one skewed processor
//! can neither steal a live lease (its "now" ahead) nor keep an expired one (its renewals behind). The skew exists
//! so the harness can show that (`clock-skew` faults) and catch a processor that does its lease arithmetic here
//! (planted bug `local-lease-clock`). Monotonic durations (`Instant`) are not skewed: an offset does not change them.
//! Event timestamps are not skewed either: they are the harness's instrument, read against one host clock.

use std::sync::atomic::{AtomicI64, Ordering};

/// The environment variable that skews this process's wall clock by a signed number of milliseconds.
pub const SKEW_ENV: &str = "PROCESSOR_CLOCK_SKEW_MS";

static SKEW_MS: AtomicI64 = AtomicI64::new(0);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SkewError {
    #[error("PROCESSOR_CLOCK_SKEW_MS '{0}' is not a whole number of milliseconds")]
    Bad(String),
    #[error(
        "a clock skew exists only in the harness's processor (`harness processor run …`); \
         this binary does not have it: unset PROCESSOR_CLOCK_SKEW_MS"
    )]
    NoHook,
}

/// Reads `PROCESSOR_CLOCK_SKEW_MS` once, at start-up. Unset or empty: no skew. A value needs an installed hook.
pub fn skew_from_env() -> Result<i64, SkewError> {
    let skew = match std::env::var(SKEW_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            let ms: i64 = v.trim().parse().map_err(|_| SkewError::Bad(v.clone()))?;
            if !crate::crash::hook_installed() {
                return Err(SkewError::NoHook);
            }
            ms
        }
        _ => 0,
    };
    SKEW_MS.store(skew, Ordering::SeqCst);
    Ok(skew)
}

/// The skew in force (0 unless [`skew_from_env`] accepted one).
pub fn skew_ms() -> i64 {
    SKEW_MS.load(Ordering::SeqCst)
}

/// Milliseconds since the Unix epoch on this process's clock (the host clock plus the test skew).
pub fn now_ms() -> i64 {
    chrono::Utc::now()
        .timestamp_millis()
        .saturating_add(skew_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_skew_without_the_variable_and_none_without_a_hook() {
        assert_eq!(skew_ms(), 0);
        let host = chrono::Utc::now().timestamp_millis();
        assert!((now_ms() - host).abs() < 5_000);
        assert!(!crate::crash::hook_installed());
    }
}
