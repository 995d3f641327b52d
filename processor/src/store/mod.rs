//! The `Store` trait: the processor's database in domain verbs (select or claim work, write rows and log rows in
//! one transaction, renew leases, report progress), with one folder per backend. All SQL text and every dialect
//! detail live in those folders; nothing above this module knows which database it talks to.

pub mod dropped;
pub mod mssql;
pub mod postgres;
pub mod sqlite;
pub mod url;
pub mod write;

use crate::contract::Contract;
use crate::value::Value;
pub use url::{DbUrl, UrlError};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The harness's planted `ignore-log` bug (`crash::PlantedBug::IgnoreLog`), switched on once at start-up by the
/// CLI so the store layer does not depend on the crash module.
static IGNORE_LOG: AtomicBool = AtomicBool::new(false);

/// Plants (or not) the `ignore-log` bug in every backend's fetch query for this process.
pub fn plant_ignore_log(on: bool) {
    IGNORE_LOG.store(on, Ordering::Relaxed);
}

/// The harness's planted `no-savepoint-rollback` bug (`crash::PlantedBug::NoSavepointRollback`), switched on like
/// `ignore-log`: the per-application write path does not roll back to its savepoint when a constraint trips.
static NO_SAVEPOINT_ROLLBACK: AtomicBool = AtomicBool::new(false);

/// Plants (or not) the `no-savepoint-rollback` bug in the write path for this process.
pub fn plant_no_savepoint_rollback(on: bool) {
    NO_SAVEPOINT_ROLLBACK.store(on, Ordering::Relaxed);
}

/// The harness's planted `no-sync` bug (`crash::PlantedBug::NoSync`), switched on like `ignore-log`: the
/// connection acknowledges a COMMIT before it is durable (SQLite `synchronous=OFF`, PostgreSQL
/// `synchronous_commit=off` for the session).
static NO_SYNC: AtomicBool = AtomicBool::new(false);

/// Plants (or not) the `no-sync` bug in every connection this process opens.
pub fn plant_no_sync(on: bool) {
    NO_SYNC.store(on, Ordering::Relaxed);
}

pub(crate) fn no_sync() -> bool {
    NO_SYNC.load(Ordering::Relaxed)
}

pub(crate) fn no_savepoint_rollback() -> bool {
    NO_SAVEPOINT_ROLLBACK.load(Ordering::Relaxed)
}

/// The fetch query as the planted `ignore-log` bug has it: the anti-join against `processing_log` dropped (every
/// backend's fetch writes it as one `AND NOT EXISTS (SELECT 1 FROM <log> …)` line). Unchanged unless planted.
pub(crate) fn fetch_sql(sql: String) -> String {
    if !IGNORE_LOG.load(Ordering::Relaxed) {
        return sql;
    }
    sql.lines()
        .filter(|l| !l.trim_start().starts_with("AND NOT EXISTS (SELECT 1 FROM"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a failed database call means for the caller. The retry policy looks only at this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Lost connection, timeout, busy database, deadlock victim, serialization failure: retry after backoff.
    Transient,
    /// Another transaction holds what we need: retry.
    Conflict,
    /// A constraint was violated (duplicate key, NOT NULL, CHECK): the data, not the connection, is the problem.
    Constraint,
    /// Anything else: give up with a clear message.
    Fatal,
    /// A table the command needs does not exist: the database was never initialised (`init` or `load`).
    Missing,
}

/// What a failed store call was doing, where the caller's handling depends on it (the `op` label is for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Opening or re-opening the connection.
    Connect,
    /// The COMMIT itself: a retryable failure here leaves the outcome unknown (`write::resolve_ambiguous_commit`).
    Commit,
    /// Any other statement.
    Statement,
}

/// The `op` labels that carry an [`OpKind`]; backends use these constants, so the kind is derived in one place.
pub mod op {
    pub const CONNECT: &str = "connect";
    pub const COMMIT: &str = "commit";
}

impl OpKind {
    fn of(op: &str) -> Self {
        match op {
            op::CONNECT => OpKind::Connect,
            op::COMMIT => OpKind::Commit,
            _ => OpKind::Statement,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{op}: {message}")]
pub struct StoreError {
    pub kind: ErrorKind,
    /// What was being done, typed (see [`OpKind`]).
    pub op_kind: OpKind,
    pub op: &'static str,
    /// What went wrong, for a person: the driver's text with what it hides (a PostgreSQL error's detail naming the
    /// key, a TDS error's number and state, the causes of a failed connect).
    pub message: String,
    /// The driver error this was classified from, kept typed so code can inspect it ([`StoreError::cause`]) rather
    /// than its text. Not a `#[source]`: its text is already in `message` (so a failure reason, a log field or an
    /// event carries it), and printing the chain (`{:#}`) must not repeat it — the rule [`OpenError`] follows too.
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    pub fn new(kind: ErrorKind, op: &'static str, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            op_kind: OpKind::of(op),
            op,
            message: message.into(),
            cause: None,
        }
    }

    /// Keeps the driver error `e` this one was classified from.
    pub fn with_cause(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(e));
        self
    }

    /// The driver error, when this came from one: `e.cause()?.downcast_ref::<rusqlite::Error>()`.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient | ErrorKind::Conflict)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A source document handed to the engine.
#[derive(Debug, Clone)]
pub struct SourceDoc {
    pub app_id: i64,
    pub xml: String,
    /// Queue mode: the claim's fence.
    pub fence: Option<i64>,
}

/// Which applications an instance may touch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Selection {
    /// Inclusive `app_id` range.
    pub range: Option<(i64, i64)>,
    /// `app_id % count == id`.
    pub partition: Option<(u32, u32)>,
}

impl Selection {
    pub fn contains(&self, app_id: i64) -> bool {
        self.range.is_none_or(|(a, b)| app_id >= a && app_id <= b)
            && self
                .partition
                .is_none_or(|(n, i)| app_id.rem_euclid(i64::from(n)) == i64::from(i))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStatus {
    Success,
    Failed,
}

impl LogStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStatus::Success => "success",
            LogStatus::Failed => "failed",
        }
    }
}

/// One `processing_log` row to insert.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub app_id: i64,
    pub status: LogStatus,
    pub reason: Option<String>,
    pub attempts: i32,
    pub instance_id: i32,
    pub session_id: String,
    pub fence: Option<i64>,
    /// Values the mapping truncated or coerced to fit the contract (`MappedApp::coerced`); 0 for a failed one.
    pub coerced: i32,
}

/// A lease value meaning "completed": never expires, never taken over.
pub const LEASE_DONE: i64 = i64::MAX;

/// When a lease taken at `now_ms` for `lease_ms` expires. Never reaches [`LEASE_DONE`], so a live lease can never
/// be mistaken for a completed claim, whatever the clock says.
pub fn lease_until(now_ms: i64, lease_ms: i64) -> i64 {
    now_ms.saturating_add(lease_ms.max(0)).min(LEASE_DONE - 1)
}

/// Whether a claim whose lease ends at `expires_at_ms` may be taken over at `now_ms` (the rule every backend's SQL
/// implements: `lease_expires_at <= now`). A completed claim never may.
pub fn lease_expired(expires_at_ms: i64, now_ms: i64) -> bool {
    expires_at_ms != LEASE_DONE && expires_at_ms <= now_ms
}

/// `processor status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StatusReport {
    pub total: u64,
    pub success: u64,
    pub failed: u64,
    pub pending: u64,
    /// Logged applications with at least one value truncated or coerced to fit the contract.
    pub coerced_apps: u64,
    /// Values truncated or coerced, summed over every logged application (`processing_log.coerced`).
    pub coerced_values: u64,
    pub instances: Vec<InstanceProgress>,
    pub claims: Vec<ClaimSummary>,
}

impl StatusReport {
    /// Assembles a report from the counts every backend reads; `pending` is derived, never counted separately.
    pub fn from_counts(
        counts: LogCounts,
        instances: Vec<InstanceProgress>,
        claims: Vec<ClaimSummary>,
    ) -> Self {
        let LogCounts {
            total,
            success,
            failed,
            coerced_apps,
            coerced_values,
        } = counts;
        let (total, success, failed) = (
            total.max(0) as u64,
            success.max(0) as u64,
            failed.max(0) as u64,
        );
        StatusReport {
            total,
            success,
            failed,
            pending: total.saturating_sub(success + failed),
            coerced_apps: coerced_apps.max(0) as u64,
            coerced_values: coerced_values.max(0) as u64,
            instances,
            claims,
        }
    }
}

/// The counts one status query reads: source documents, log rows by status, and the coercion figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCounts {
    pub total: i64,
    pub success: i64,
    pub failed: i64,
    pub coerced_apps: i64,
    pub coerced_values: i64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct InstanceProgress {
    pub instance_id: i64,
    pub sessions: u64,
    pub success: u64,
    pub failed: u64,
    pub last_processed_at: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClaimSummary {
    pub owner: String,
    pub live: u64,
    pub expired: u64,
    pub earliest_expiry_ms: Option<i64>,
}

/// The processor's database. Transaction verbs are explicit so the write algorithm (`write.rs`) exists once for
/// every backend, with crash points between its steps.
pub trait Store: Send {
    /// `sqlite`, `postgres`, `mssql`.
    fn backend(&self) -> &'static str;
    fn contract(&self) -> &Contract;

    /// Creates every missing table (source, log, claims, targets from the contract).
    fn init_schema(&mut self) -> StoreResult<()>;
    /// Inserts source documents, skipping app_ids already present. Returns how many were new.
    fn load_source(&mut self, docs: &[(i64, String)]) -> StoreResult<u64>;

    /// Uncoordinated / partitioned: up to `limit` documents with no log row and `app_id >= from`, ascending.
    fn fetch_pending(
        &mut self,
        sel: &Selection,
        from: i64,
        limit: usize,
    ) -> StoreResult<Vec<SourceDoc>>;
    /// How many applications in `sel` have no log row yet.
    fn pending_count(&mut self, sel: &Selection) -> StoreResult<u64>;
    /// The app_id of the `offset`-th (0-based, ascending) unlogged application in `sel`: uncoordinated instances
    /// start at evenly spaced points of the pending work instead of all at its beginning.
    fn pending_at(&mut self, sel: &Selection, offset: u64) -> StoreResult<Option<i64>>;
    /// Queue: claims up to `limit` unlogged documents that are unclaimed or whose lease expired at `now_ms`.
    fn claim(
        &mut self,
        sel: &Selection,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<SourceDoc>>;
    /// Queue: extends this owner's leases that are still live at `now_ms` to `until_ms` (`until_ms == now_ms`
    /// releases them). A lease that already expired is not revived: it may be taken over (by this session too, with
    /// a new fence) at any moment, so the batch holding it must find out at its fenced completion. Returns how many
    /// were extended.
    fn renew(
        &mut self,
        owner: &str,
        app_ids: &[i64],
        now_ms: i64,
        until_ms: i64,
    ) -> StoreResult<u64>;
    /// The database server's clock, in milliseconds since the Unix epoch: the lease clock (see [`lease_now`]).
    fn clock_ms(&mut self) -> StoreResult<i64>;
    /// Queue: whether any unlogged application in `sel` is held by a live lease (so the queue is not yet drained).
    fn live_claims(&mut self, sel: &Selection, now_ms: i64) -> StoreResult<u64>;

    fn begin(&mut self) -> StoreResult<()>;
    fn commit(&mut self) -> StoreResult<()>;
    fn rollback(&mut self) -> StoreResult<()>;
    fn savepoint(&mut self) -> StoreResult<()>;
    fn release_savepoint(&mut self) -> StoreResult<()>;
    fn rollback_to_savepoint(&mut self) -> StoreResult<()>;
    /// Inserts rows of contract table `table` (plain insert; insert-if-absent for shared-entity tables).
    fn insert_rows(&mut self, table: usize, rows: &[&[Value]]) -> StoreResult<()>;
    fn insert_logs(&mut self, rows: &[LogRow]) -> StoreResult<()>;
    /// Queue, inside the write transaction: marks `(app_id, fence)` claims of `owner` done and returns the app_ids
    /// that were still ours. Anything missing was taken over: it must not be committed.
    fn complete_claims(&mut self, owner: &str, claims: &[(i64, i64)]) -> StoreResult<Vec<i64>>;
    /// Which of `app_ids` have a log row, with its session: `(app_id, session_id)`.
    fn logged(&mut self, app_ids: &[i64]) -> StoreResult<Vec<(i64, String)>>;
    /// Before reading back a commit whose outcome is unknown: waits until the server has finished every session
    /// of the connections this store dropped (`reconnect`), ending them if need be, so their transactions are
    /// committed or rolled back for good. Without it, the read can run while a dead connection's COMMIT is still
    /// executing on the server: "not committed" is read, and the commit lands a moment later. PostgreSQL
    /// (`pg_terminate_backend`) and SQL Server (`KILL`) end the dead session and wait until it is gone; SQLite's
    /// connection is in-process, so it has nothing to do.
    fn settle_dropped(&mut self) -> StoreResult<()> {
        Ok(())
    }

    fn status(&mut self, now_ms: i64) -> StoreResult<StatusReport>;
    /// Drops and re-opens the connection after a transient failure.
    fn reconnect(&mut self) -> StoreResult<()>;
    /// This connection will claim (queue mode): get ready so the first claim is as fast as the later ones, on
    /// this connection and on every reconnect. Only Babelfish does something (it warms its parser for the claim
    /// statement: `MssqlStore::warm_claim`); the others need nothing. Connections that never claim (`load`,
    /// `status`, `init`, the lease heartbeat) do not pay for it.
    fn prepare_claims(&mut self) {}
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Url(#[from] UrlError),
    /// `cause` is not a `#[source]`: it is part of this message already, and printing the chain (`{:#}`) must not
    /// repeat it.
    #[error("cannot connect to {url}: {cause}")]
    Connect { url: String, cause: StoreError },
}

/// Opens the store named by `url`.
pub fn open(url: &DbUrl, contract: Contract) -> Result<Box<dyn Store>, OpenError> {
    let redacted = url.redacted();
    let map = |cause| OpenError::Connect {
        url: redacted.clone(),
        cause,
    };
    Ok(match url {
        DbUrl::Sqlite(path) => Box::new(sqlite::SqliteStore::open(path, contract).map_err(map)?),
        DbUrl::Postgres(conn) => Box::new(postgres::PgStore::open(conn, contract).map_err(map)?),
        DbUrl::Mssql(cfg) => Box::new(mssql::MssqlStore::open(cfg, contract).map_err(map)?),
    })
}

/// Milliseconds since the Unix epoch on this process's clock ([`crate::clock`]: skewed in harness tests). Not the
/// lease clock: see [`lease_now`].
pub fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// "Now" for lease arithmetic (claim, takeover, renewal, release): the database's clock, one clock for every
/// instance whatever each host's clock says, so a processor with a skewed clock can neither take a live lease over
/// nor keep an expired one. Read once per claim or renewal, just before it, so the lease it sets starts at most
/// one round trip early (a slightly shorter lease, never a longer one) and a takeover sees at most one round trip
/// less expiry. The planted `local-lease-clock` bug (harness tests only) uses the process's own clock instead.
pub fn lease_now(store: &mut dyn Store) -> StoreResult<i64> {
    if crate::crash::planted(crate::crash::PlantedBug::LocalLeaseClock) {
        return Ok(now_ms());
    }
    store.clock_ms()
}

/// Whether the planted `complete-by-owner` bug (harness tests only) is on: the backends' fenced completion then
/// matches a claim on its owner alone.
pub fn complete_by_owner() -> bool {
    crate::crash::planted(crate::crash::PlantedBug::CompleteByOwner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every app_id, negative ones included, lies in exactly one partition, as the SQL's
        /// `mod(mod(id, n) + n, n) = i` also computes.
        #[test]
        fn each_app_is_in_exactly_one_partition(app_id in any::<i64>(), n in 1u32..64) {
            let part = |i: u32| Selection { range: None, partition: Some((n, i)) };
            let owners = (0..n).filter(|&i| part(i).contains(app_id)).count();
            prop_assert_eq!(owners, 1);
            let sql_mod = ((app_id % i64::from(n)) + i64::from(n)) % i64::from(n);
            let owner = part(sql_mod as u32);
            prop_assert!(owner.contains(app_id));
        }

        /// A fresh lease is live until its end and expired from then on; it never looks completed.
        #[test]
        fn lease_arithmetic(now in any::<i64>(), lease in 0i64..i64::MAX, dt in 0i64..1_000_000) {
            let until = lease_until(now, lease);
            prop_assert!(until < LEASE_DONE);
            prop_assert!(until >= now.min(LEASE_DONE - 1));
            if lease > 0 && now < until {
                prop_assert!(!lease_expired(until, now));
            }
            prop_assert!(lease_expired(until, until.saturating_add(dt)));
            prop_assert!(!lease_expired(LEASE_DONE, now.saturating_add(dt)));
        }

        /// Ranges and partitions compose: an id is selected only if both say so.
        #[test]
        fn selection_composes(app_id in -1000i64..1000, lo in -1000i64..1000, len in 0i64..500, n in 1u32..8, i in 0u32..8) {
            let i = i % n;
            let sel = Selection { range: Some((lo, lo + len)), partition: Some((n, i)) };
            let want = app_id >= lo && app_id <= lo + len && app_id.rem_euclid(i64::from(n)) == i64::from(i);
            prop_assert_eq!(sel.contains(app_id), want);
        }
    }
}
