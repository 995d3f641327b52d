//! The one backoff schedule ([`RetryPolicy`], [`Backoff`]) and the one stop-aware wait ([`sleep_unless_stopped`]).
//! `retry::with_retry`, the CLI's connect loop and the SQL Server database creation all draw their waits from it. A
//! leaf module (no store types), so the store layer can use it without depending on the retry loop above it.

use std::sync::atomic::{AtomicBool, Ordering};
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

impl RetryPolicy {
    /// A fresh backoff schedule under this policy, its deadline counted from now.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            delay_ms: self.first_delay_ms,
            start: Instant::now(),
        }
    }
}

/// One retry loop's schedule: each wait doubles (capped at `max_delay_ms`) with up to half again of jitter, until
/// `give_up_after_secs` have passed since the schedule began.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    delay_ms: u64,
    start: Instant,
}

impl Backoff {
    /// The next wait, or `None` once the policy gives up.
    pub fn next_wait(&mut self) -> Option<Duration> {
        if self.start.elapsed() >= Duration::from_secs(self.policy.give_up_after_secs) {
            return None;
        }
        // Jitter from the clock's low bits: enough to de-synchronise instances, no RNG state to carry.
        let jitter = u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        ) % (self.delay_ms / 2 + 1);
        let wait = Duration::from_millis(self.delay_ms + jitter);
        self.delay_ms = (self.delay_ms * 2).min(self.policy.max_delay_ms);
        Some(wait)
    }
}

/// How often a backoff wait looks at the stop flag: a stop is honoured within this (plus the work in hand).
const STOP_POLL: Duration = Duration::from_millis(20);

/// Waits `wait`, or less if `stop` is set first (SIGTERM/SIGINT: the process's signal flag). Returns whether the
/// wait was cut short by the stop signal. Without a flag it simply sleeps.
pub fn sleep_unless_stopped(wait: Duration, stop: Option<&AtomicBool>) -> bool {
    let Some(stop) = stop else {
        std::thread::sleep(wait);
        return false;
    };
    let deadline = Instant::now() + wait;
    loop {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(STOP_POLL.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_gives_up() {
        let policy = RetryPolicy {
            first_delay_ms: 100,
            max_delay_ms: 400,
            give_up_after_secs: 3600,
        };
        let mut b = policy.backoff();
        let waits: Vec<u64> = (0..4)
            .map(|_| b.next_wait().expect("within the deadline").as_millis() as u64)
            .collect();
        for (w, base) in waits.iter().zip([100, 200, 400, 400]) {
            assert!((base..=base + base / 2).contains(w), "{waits:?}");
        }
        let mut gone = RetryPolicy {
            give_up_after_secs: 0,
            ..policy
        }
        .backoff();
        assert_eq!(gone.next_wait(), None);
    }

    #[test]
    fn a_set_stop_flag_cuts_the_wait_short() {
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        assert!(sleep_unless_stopped(Duration::from_secs(30), Some(&stop)));
        assert!(t.elapsed() < Duration::from_secs(5));
        let unset = AtomicBool::new(false);
        assert!(!sleep_unless_stopped(
            Duration::from_millis(1),
            Some(&unset)
        ));
    }
}
