//! The write algorithm, once for every backend: an application's target rows and its log row commit together
//! (`atomic`), or the replaced system's unsafe order (`split`). Crash points sit between the steps. No SQL here:
//! only `Store` verbs.

use super::{ErrorKind, LogRow, LogStatus, Store, StoreResult};
use crate::failure::{Failure, Stage};
use crate::rows::MappedApp;

/// One application ready to be written.
#[derive(Debug, Clone)]
pub struct AppWork {
    pub app_id: i64,
    /// Queue mode: the claim's fence.
    pub fence: Option<i64>,
    pub outcome: Result<MappedApp, Failure>,
}

/// Who is writing, and where to stop if a crash point is armed.
pub struct WriteCtx<'a> {
    pub session_id: &'a str,
    pub instance_id: i32,
    /// Queue mode: completion is fenced on `(owner = session_id, fence)`.
    pub fenced: bool,
    pub hooks: &'a dyn Hooks,
}

/// A step boundary inside the write algorithm, where the engine may fire a crash point. The store names the step;
/// the engine maps it to its `CrashPoint` (the store layer does not know about crash points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    /// The transaction is open, nothing written yet.
    BeforeWrite,
    /// Some of an application's rows are written.
    MidWrite,
    /// All data rows are written, the log rows not yet.
    AfterData,
    /// Everything is written, the commit not yet issued.
    BeforeCommit,
}

/// Step hook; the engine's implementation emits the crash-point event and dies on the armed hit.
pub trait Hooks {
    fn at(&self, step: WriteStep);
}

/// No crash points (benchmarks, tests).
pub struct NoHooks;
impl Hooks for NoHooks {
    fn at(&self, _: WriteStep) {}
}

/// What a batch write did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchResult {
    pub succeeded: Vec<i64>,
    pub failed: Vec<(i64, String)>,
    /// Another instance logged these first; our work for them was rolled back.
    pub collisions: Vec<i64>,
    /// Queue mode: the claim was taken over; nothing was committed for these.
    pub lease_lost: Vec<i64>,
    /// The fences we held on `lease_lost`, in the same order.
    pub lease_lost_fences: Vec<i64>,
    /// Committed log rows (succeeded + failed).
    pub committed: Vec<i64>,
    /// Fences of `committed`, in the same order (queue mode).
    pub committed_fences: Vec<i64>,
    /// Values truncated or coerced while mapping each of `committed`, same order (`MappedApp::coerced`).
    pub committed_coerced: Vec<u32>,
    /// The batch needed the per-application savepoint path.
    pub slow_path: bool,
}

fn log_row(ctx: &WriteCtx<'_>, w: &AppWork, status: LogStatus, reason: Option<String>) -> LogRow {
    LogRow {
        app_id: w.app_id,
        status,
        reason,
        attempts: w.fence.map_or(1, |f| i32::try_from(f).unwrap_or(i32::MAX)),
        instance_id: ctx.instance_id,
        session_id: ctx.session_id.to_owned(),
        fence: if ctx.fenced { w.fence } else { None },
        // A failed application wrote no rows, so nothing of it was coerced into the database.
        coerced: match (&w.outcome, status) {
            (Ok(a), LogStatus::Success) => i32::try_from(a.coerced).unwrap_or(i32::MAX),
            _ => 0,
        },
    }
}

fn finish(result: &mut BatchResult, work: &[&AppWork]) {
    let succeeded: std::collections::HashSet<i64> = result.succeeded.iter().copied().collect();
    let failed: std::collections::HashSet<i64> = result.failed.iter().map(|(a, _)| *a).collect();
    for w in work {
        let ok = succeeded.contains(&w.app_id);
        if ok || failed.contains(&w.app_id) {
            result.committed.push(w.app_id);
            result.committed_fences.push(w.fence.unwrap_or(0));
            // Same figure as the log row's `coerced`: a failed application's rows were not written.
            result.committed_coerced.push(match &w.outcome {
                Ok(a) if ok => a.coerced,
                _ => 0,
            });
        }
    }
}

/// `--commit-mode atomic`: one transaction for the batch. Fast path: every table's rows in bulk, then every log
/// row. If a constraint trips (a collision or a bad row), the batch is redone with one savepoint per application
/// so one bad document never sinks the others.
pub fn write_atomic(
    store: &mut dyn Store,
    work: &[AppWork],
    ctx: &WriteCtx<'_>,
) -> StoreResult<BatchResult> {
    match atomic_fast(store, work, ctx) {
        Ok(r) => Ok(r),
        Err(e) if e.kind == ErrorKind::Constraint => {
            store.rollback()?;
            let mut r = atomic_slow(store, work, ctx)?;
            r.slow_path = true;
            Ok(r)
        }
        Err(e) => {
            let _ = store.rollback();
            Err(e)
        }
    }
}

/// Begins the transaction and, in queue mode, completes the claims first (locking them, so a takeover waits for
/// us) and drops the applications whose claim is no longer ours.
fn begin_fenced<'w>(
    store: &mut dyn Store,
    work: &'w [AppWork],
    ctx: &WriteCtx<'_>,
    result: &mut BatchResult,
) -> StoreResult<Vec<&'w AppWork>> {
    store.begin()?;
    if !ctx.fenced {
        return Ok(work.iter().collect());
    }
    let claims: Vec<(i64, i64)> = work
        .iter()
        .map(|w| (w.app_id, w.fence.unwrap_or(0)))
        .collect();
    let kept: std::collections::HashSet<i64> = store
        .complete_claims(ctx.session_id, &claims)?
        .into_iter()
        .collect();
    let mut live = Vec::with_capacity(work.len());
    for w in work {
        if kept.contains(&w.app_id) {
            live.push(w);
        } else {
            result.lease_lost.push(w.app_id);
            result.lease_lost_fences.push(w.fence.unwrap_or(0));
        }
    }
    Ok(live)
}

fn atomic_fast(
    store: &mut dyn Store,
    work: &[AppWork],
    ctx: &WriteCtx<'_>,
) -> StoreResult<BatchResult> {
    let mut result = BatchResult::default();
    let live = begin_fenced(store, work, ctx, &mut result)?;
    ctx.hooks.at(WriteStep::BeforeWrite);
    let ntables = store.contract().tables.len();
    let mut written_tables = 0;
    for t in 0..ntables {
        let rows: Vec<&[crate::value::Value]> = live
            .iter()
            .filter_map(|w| w.outcome.as_ref().ok())
            .flat_map(|m| m.rows[t].iter().map(Vec::as_slice))
            .collect();
        if rows.is_empty() {
            continue;
        }
        store.insert_rows(t, &rows)?;
        written_tables += 1;
        if written_tables == 1 {
            ctx.hooks.at(WriteStep::MidWrite);
        }
    }
    ctx.hooks.at(WriteStep::AfterData);
    let logs: Vec<LogRow> = live
        .iter()
        .map(|w| match &w.outcome {
            Ok(_) => log_row(ctx, w, LogStatus::Success, None),
            Err(f) => log_row(ctx, w, LogStatus::Failed, Some(f.reason())),
        })
        .collect();
    if !logs.is_empty() {
        store.insert_logs(&logs)?;
    }
    ctx.hooks.at(WriteStep::BeforeCommit);
    store.commit()?;
    for w in &live {
        match &w.outcome {
            Ok(_) => result.succeeded.push(w.app_id),
            Err(f) => result.failed.push((w.app_id, f.reason())),
        }
    }
    finish(&mut result, &live);
    Ok(result)
}

fn atomic_slow(
    store: &mut dyn Store,
    work: &[AppWork],
    ctx: &WriteCtx<'_>,
) -> StoreResult<BatchResult> {
    let mut result = BatchResult::default();
    let live = match begin_fenced(store, work, ctx, &mut result) {
        Ok(l) => l,
        Err(e) => {
            let _ = store.rollback();
            return Err(e);
        }
    };
    let outcome = (|| -> StoreResult<()> {
        for w in &live {
            store.savepoint()?;
            match write_one(store, ctx, w) {
                Ok(status) => {
                    store.release_savepoint()?;
                    match status {
                        Ok(()) => result.succeeded.push(w.app_id),
                        Err(reason) => result.failed.push((w.app_id, reason)),
                    }
                }
                Err(e) if e.kind == ErrorKind::Constraint => {
                    // Planted bug (harness tests only): the application's earlier rows stay.
                    if !super::no_savepoint_rollback() {
                        store.rollback_to_savepoint()?;
                    }
                    if !store.logged(&[w.app_id])?.is_empty() {
                        result.collisions.push(w.app_id);
                    } else {
                        // Our own rows broke a constraint: the document is at fault, log it failed with no data.
                        let reason = Failure::new(Stage::Write, e.message.clone()).reason();
                        match store.insert_logs(&[log_row(
                            ctx,
                            w,
                            LogStatus::Failed,
                            Some(reason.clone()),
                        )]) {
                            Ok(()) => result.failed.push((w.app_id, reason)),
                            Err(e2) if e2.kind == ErrorKind::Constraint => {
                                store.rollback_to_savepoint()?;
                                result.collisions.push(w.app_id);
                            }
                            Err(e2) => return Err(e2),
                        }
                    }
                    store.release_savepoint()?;
                }
                Err(e) => return Err(e),
            }
        }
        ctx.hooks.at(WriteStep::BeforeCommit);
        store.commit()
    })();
    if let Err(e) = outcome {
        let _ = store.rollback();
        return Err(e);
    }
    finish(&mut result, &live);
    Ok(result)
}

/// Writes one application's rows and log row. `Ok(Err(reason))`: logged as failed.
fn write_one(
    store: &mut dyn Store,
    ctx: &WriteCtx<'_>,
    w: &AppWork,
) -> StoreResult<Result<(), String>> {
    match &w.outcome {
        Ok(m) => {
            for (t, rows) in m.rows.iter().enumerate() {
                if !rows.is_empty() {
                    let refs: Vec<&[crate::value::Value]> =
                        rows.iter().map(Vec::as_slice).collect();
                    store.insert_rows(t, &refs)?;
                }
            }
            store.insert_logs(&[log_row(ctx, w, LogStatus::Success, None)])?;
            Ok(Ok(()))
        }
        Err(f) => {
            let reason = f.reason();
            store.insert_logs(&[log_row(ctx, w, LogStatus::Failed, Some(reason.clone()))])?;
            Ok(Err(reason))
        }
    }
}

/// `--commit-mode split`: the replaced system's order, kept so the harness can show what it catches. Per
/// application: data in one transaction, the log row in a second; a retry's duplicate key is logged `failed`.
/// UNSAFE: a crash between the two commits leaves data without a log row.
pub fn write_split(
    store: &mut dyn Store,
    work: &[AppWork],
    ctx: &WriteCtx<'_>,
) -> StoreResult<BatchResult> {
    let mut result = BatchResult::default();
    for w in work {
        ctx.hooks.at(WriteStep::BeforeWrite);
        let (status, reason) = match &w.outcome {
            Ok(m) => {
                store.begin()?;
                let mut data = Ok(());
                for (t, rows) in m.rows.iter().enumerate() {
                    if rows.is_empty() {
                        continue;
                    }
                    let refs: Vec<&[crate::value::Value]> =
                        rows.iter().map(Vec::as_slice).collect();
                    data = store.insert_rows(t, &refs);
                    if data.is_err() {
                        break;
                    }
                    if t == 0 {
                        ctx.hooks.at(WriteStep::MidWrite);
                    }
                }
                match data {
                    Ok(()) => {
                        store.commit()?;
                        ctx.hooks.at(WriteStep::AfterData);
                        (LogStatus::Success, None)
                    }
                    Err(e) if e.kind == ErrorKind::Constraint => {
                        store.rollback()?;
                        (
                            LogStatus::Failed,
                            Some(Failure::new(Stage::Write, e.message).reason()),
                        )
                    }
                    Err(e) => {
                        let _ = store.rollback();
                        return Err(e);
                    }
                }
            }
            Err(f) => (LogStatus::Failed, Some(f.reason())),
        };
        store.begin()?;
        match store
            .insert_logs(&[log_row(ctx, w, status, reason.clone())])
            .and_then(|_| {
                ctx.hooks.at(WriteStep::BeforeCommit);
                store.commit()
            }) {
            Ok(()) => match status {
                LogStatus::Success => result.succeeded.push(w.app_id),
                LogStatus::Failed => result.failed.push((w.app_id, reason.unwrap_or_default())),
            },
            Err(e) if e.kind == ErrorKind::Constraint => {
                store.rollback()?;
                result.collisions.push(w.app_id);
            }
            Err(e) => {
                let _ = store.rollback();
                return Err(e);
            }
        }
    }
    let all: Vec<&AppWork> = work.iter().collect();
    finish(&mut result, &all);
    Ok(result)
}

/// After a commit whose outcome is unknown (the connection died during COMMIT): which applications of `work` did
/// this session commit? Read back from the log rather than guessed.
pub fn resolve_ambiguous_commit(
    store: &mut dyn Store,
    work: &[AppWork],
    session_id: &str,
) -> StoreResult<Vec<i64>> {
    let ids: Vec<i64> = work.iter().map(|w| w.app_id).collect();
    store.settle_dropped()?;
    Ok(store
        .logged(&ids)?
        .into_iter()
        .filter(|(_, s)| s == session_id)
        .map(|(a, _)| a)
        .collect())
}
