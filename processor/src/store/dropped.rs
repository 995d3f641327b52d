//! The server sessions of connections a store dropped (`Store::reconnect`) and not yet known to have ended, and the
//! wait `Store::settle_dropped` does on them: shared by the PostgreSQL and SQL Server stores, which differ only in
//! how a session is named, ended and looked up.

use super::{ErrorKind, StoreError, StoreResult};
use std::time::{Duration, Instant};

/// A server session: its id (PostgreSQL pid, SQL Server `@@SPID`) and its start (`backend_start`, `login_time`),
/// which together name it even after the id is reused.
pub type Session = (i32, String);

/// At most this many dropped sessions are remembered (the oldest are forgotten): reconnects without an ambiguous
/// commit in between never call `settle_dropped`.
const KEPT: usize = 16;
/// How long a settle waits for a dropped session to end before the read counts as failed (transient: the retry
/// policy tries again).
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Dropped(Vec<Session>);

impl Dropped {
    /// Remembers the session of the connection being dropped (`None`: it was never known).
    pub fn push(&mut self, s: Option<Session>) {
        if let Some(s) = s {
            if self.0.len() == KEPT {
                self.0.remove(0);
            }
            self.0.push(s);
        }
    }

    /// Until every remembered session is gone: `end_or_check` ends the session if need be and says whether it is
    /// still there; polled with backoff up to [`SETTLE_DEADLINE`], then a transient error whose message
    /// `still_there` writes.
    pub fn settle(
        &mut self,
        op: &'static str,
        mut end_or_check: impl FnMut(&Session) -> StoreResult<bool>,
        still_there: impl Fn(&Session) -> String,
    ) -> StoreResult<()> {
        let deadline = Instant::now() + SETTLE_DEADLINE;
        let mut wait = Duration::from_millis(5);
        while let Some(s) = self.0.last() {
            if !end_or_check(s)? {
                self.0.pop();
                continue;
            }
            if Instant::now() > deadline {
                return Err(StoreError::new(ErrorKind::Transient, op, still_there(s)));
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_millis(200));
        }
        Ok(())
    }
}
