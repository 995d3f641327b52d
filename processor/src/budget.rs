//! The limits one document's parse and map run under: an optional deadline (a per-document mapping-time limit) and
//! an optional cancel flag (set by the SIGTERM/SIGINT handler). Parsing and mapping call [`Budget::check`] every few
//! thousand events, so a huge or pathological document stops within milliseconds of either firing, and the caller
//! decides what that means (a `limit:` failure row, or abandoning the batch on a drain).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a document stopped before it was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// The per-document time limit passed.
    Deadline(Duration),
    /// The process was asked to stop.
    Cancelled,
}

/// Deadline and cancel flag for one document. `Budget::unlimited()` never interrupts.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    started: Option<Instant>,
    limit: Option<Duration>,
    cancel: Option<Arc<AtomicBool>>,
}

impl Budget {
    /// No deadline, no cancel flag.
    pub fn unlimited() -> Self {
        Budget::default()
    }

    /// A budget whose deadline (if any) starts now.
    pub fn new(limit: Option<Duration>, cancel: Option<Arc<AtomicBool>>) -> Self {
        Budget {
            started: limit.map(|_| Instant::now()),
            limit,
            cancel,
        }
    }

    /// `Err` once the cancel flag is set or the deadline has passed. Cheap: one atomic load and, with a limit, one
    /// clock read; callers still amortise it over many events.
    pub fn check(&self) -> Result<(), Interrupted> {
        if let Some(c) = &self.cancel {
            if c.load(Ordering::Relaxed) {
                return Err(Interrupted::Cancelled);
            }
        }
        if let (Some(start), Some(limit)) = (self.started, self.limit) {
            if start.elapsed() > limit {
                return Err(Interrupted::Deadline(limit));
            }
        }
        Ok(())
    }
}

/// Events between two budget checks in a parse loop: small enough that a 50 MB document notices a cancel within
/// milliseconds, large enough that the check costs nothing measurable.
pub const EVENTS_PER_CHECK: u32 = 4096;

/// Checks a budget on every `EVENTS_PER_CHECK`-th call of [`Pacer::tick`], so hot loops pay one decrement per event.
#[derive(Debug)]
pub struct Pacer<'b> {
    budget: &'b Budget,
    left: u32,
}

impl<'b> Pacer<'b> {
    pub fn new(budget: &'b Budget) -> Self {
        Pacer {
            budget,
            left: EVENTS_PER_CHECK,
        }
    }

    /// One event: `Err` when this is a checking event and the budget has run out.
    pub fn tick(&mut self) -> Result<(), Interrupted> {
        self.left -= 1;
        if self.left == 0 {
            self.left = EVENTS_PER_CHECK;
            self.budget.check()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_interrupts_and_cancel_does() {
        assert_eq!(Budget::unlimited().check(), Ok(()));
        let flag = Arc::new(AtomicBool::new(false));
        let b = Budget::new(None, Some(flag.clone()));
        assert_eq!(b.check(), Ok(()));
        flag.store(true, Ordering::Relaxed);
        assert_eq!(b.check(), Err(Interrupted::Cancelled));
    }

    #[test]
    fn zero_limit_expires() {
        let b = Budget::new(Some(Duration::ZERO), None);
        // Elapsed time is strictly positive after any clock read that follows `new`.
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.check().is_ok() {
            assert!(Instant::now() < deadline, "a zero limit must expire");
        }
        assert_eq!(b.check(), Err(Interrupted::Deadline(Duration::ZERO)));
    }
}
