//! Processor integration tests, one binary: the store conformance suite (every backend available), the CLI's
//! argument and contract errors, and end-to-end SIGKILL-and-resume runs of the real binary.

mod cli;
mod coerced;
mod conformance;
mod e2e;
mod strict;

use std::time::{Duration, Instant};

/// Polls `cond` until it holds or `deadline` passes; returns whether it held. Tests wait on conditions, never sleep
/// in place of one.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}
