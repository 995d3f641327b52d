//! The run loop: select or claim work, parse and map it on worker threads, write it through the store with the
//! chosen commit mode, emit events, hit crash points, drain on SIGTERM. No SQL and no backend checks here.
//!
//! Every document is checked for strict bytes ([`crate::decode`]) and mapped under per-document limits (size, and a
//! [`Budget`] with the mapping-time limit and the process's cancel flag), so one pathological document becomes a
//! `failed` row instead of a stalled instance, and SIGTERM stops a batch in the middle of a huge document: that
//! batch is abandoned before anything of it is written (its queue claims are released) and the run drains.

use crate::budget::Budget;
use crate::contract::Contract;
use crate::crash::{self, CrashPoint, Crasher};
use crate::decode;
use crate::events::{
    Body, Coerced, CommitOutcome, CrashDetail, CrashEffect, Event, EventSink, FinishReason, Started,
};
use crate::failure::{Failure, Stage};
use crate::mapping::map_document_within;
use crate::retry::{with_retry_until, Retry, RetryPolicy};
use crate::store::write::{self, AppWork, BatchResult, Hooks, WriteCtx, WriteStep};
use crate::store::{lease_now, OpKind, Selection, SourceDoc, Store, StoreError, StoreResult};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every instance takes any unlogged application (the replaced system's option 1); collisions roll back.
    Uncoordinated,
    /// `app_id % instance_count == instance_id`.
    Partitioned,
    /// Leased, fenced batch claims.
    Queue,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Uncoordinated => "uncoordinated",
            Mode::Partitioned => "partitioned",
            Mode::Queue => "queue",
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum CommitMode {
    /// Rows and log row in one transaction (default).
    Atomic,
    /// UNSAFE, for demonstrations: data committed first, log row after (the replaced system).
    Split,
}

impl CommitMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitMode::Atomic => "atomic",
            CommitMode::Split => "split",
        }
    }
}

/// About how many bytes of source documents one batch holds once documents are large (see `run`).
pub const RUN_BATCH_BYTES: usize = 64 << 20;

/// A validated `processor run` configuration.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub mode: Mode,
    pub commit_mode: CommitMode,
    pub workers: usize,
    pub batch_size: usize,
    pub limit: Option<u64>,
    pub range: Option<(i64, i64)>,
    pub instance_id: u32,
    pub instance_count: u32,
    pub lease_secs: u64,
    pub retry: RetryPolicy,
    /// Print a `\r` progress line to stderr about once a second (instead of the `progress` log line).
    pub progress: bool,
    /// Per-document limits: a document over either is logged `failed` with `limit: …`.
    pub limits: DocLimits,
}

/// Per-document limits (`--max-doc-bytes`, `--max-map-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocLimits {
    /// Largest stored document mapped, in bytes.
    pub max_doc_bytes: usize,
    /// Longest parse + map of one document.
    pub max_map: Duration,
}

impl DocLimits {
    /// 256 MiB: five times the largest real-shaped document benchmarked (50 MB), far below what breaks a worker.
    pub const DEFAULT_MAX_DOC_BYTES: usize = 256 << 20;
    /// 60 s: a 50 MB document maps in about a second, so only a pathological one comes near it.
    pub const DEFAULT_MAX_MAP_MS: u64 = 60_000;
}

impl Default for DocLimits {
    fn default() -> Self {
        DocLimits {
            max_doc_bytes: Self::DEFAULT_MAX_DOC_BYTES,
            max_map: Duration::from_millis(Self::DEFAULT_MAX_MAP_MS),
        }
    }
}

impl RunConfig {
    pub fn selection(&self) -> Selection {
        Selection {
            range: self.range,
            partition: (self.mode == Mode::Partitioned)
                .then_some((self.instance_count, self.instance_id)),
        }
    }
}

/// What a run did: the `finished` event's payload (defined with the events it is part of).
pub use crate::events::RunSummary;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// SIGTERM/SIGINT arrived during a retry wait. Handled inside [`run`], which then ends `drained`; carries
    /// whether the batch being written had a COMMIT whose outcome was still unknown.
    #[error("stop requested while retrying after: {error}")]
    Stopped {
        error: StoreError,
        commit_unresolved: bool,
    },
}

impl From<Retry> for RunError {
    fn from(r: Retry) -> Self {
        match r {
            Retry::Failed(e) => RunError::Store(e),
            Retry::Stopped(error) => RunError::Stopped {
                error,
                commit_unresolved: false,
            },
        }
    }
}

/// Everything a run needs besides its configuration.
pub struct RunContext<'a> {
    pub session_id: &'a str,
    pub events: &'a EventSink,
    pub crasher: &'a Crasher,
    /// Set by the SIGTERM/SIGINT handler; shared with the mapping threads' budgets.
    pub shutdown: &'a Arc<AtomicBool>,
    /// Opens a second connection for the lease heartbeat (queue mode).
    pub open_heartbeat_store: Option<&'a (dyn Fn() -> StoreResult<Box<dyn Store>> + Sync)>,
}

impl RunContext<'_> {
    fn event(&self, body: Body, instance_id: u32, app_ids: Vec<i64>) -> Event {
        Event::new(body, instance_id, self.session_id, app_ids)
    }
}

struct CrashHooks<'a> {
    ctx: &'a RunContext<'a>,
    instance_id: u32,
}

impl Hooks for CrashHooks<'_> {
    fn at(&self, step: WriteStep) {
        self.hit(match step {
            WriteStep::BeforeWrite => CrashPoint::BeforeWrite,
            WriteStep::MidWrite => CrashPoint::MidWrite,
            WriteStep::AfterData => CrashPoint::AfterData,
            WriteStep::BeforeCommit => CrashPoint::BeforeCommit,
        });
    }
}

impl CrashHooks<'_> {
    fn hit(&self, point: CrashPoint) {
        if let Some(nth) = self.ctx.crasher.should_fire(point) {
            let action = match self.ctx.crasher.spec().map(|s| s.action) {
                Some(crash::CrashAction::Pause) => CrashEffect::Pause,
                Some(crash::CrashAction::Stall(_)) => CrashEffect::Stall,
                _ => CrashEffect::Kill,
            };
            let body = Body::CrashPoint {
                point: point.name().to_owned(),
                nth,
                detail: CrashDetail { action },
            };
            self.ctx
                .events
                .emit(&self.ctx.event(body, self.instance_id, vec![]));
            tracing::warn!(point = point.name(), nth, "crash point fired");
            match self.ctx.crasher.spec().map(|s| s.action) {
                Some(crash::CrashAction::Pause) => {
                    // Parked exactly here (every thread stops); the harness sends SIGCONT, and the run goes on.
                    crash::park();
                }
                // A slow batch: this thread only; the heartbeat keeps renewing (or should).
                Some(crash::CrashAction::Stall(ms)) => {
                    std::thread::sleep(Duration::from_millis(ms))
                }
                // Planted bug (harness tests only): the point "fires" and the process carries on.
                _ if crash::planted(crash::PlantedBug::NoKillAtCrash) => {}
                _ => crash::die(),
            }
        }
    }
}

/// Parses and maps a batch on up to `workers` threads, keeping document order, with default limits and no cancel
/// flag.
pub fn map_batch(contract: &Contract, docs: Vec<SourceDoc>, workers: usize) -> Vec<AppWork> {
    map_batch_within(contract, docs, workers, &DocLimits::default(), None)
}

/// One stored document: strict bytes, the size limit, then parse + map under its own budget.
fn map_one(
    contract: &Contract,
    d: &SourceDoc,
    limits: &DocLimits,
    cancel: Option<&Arc<AtomicBool>>,
) -> Result<crate::rows::MappedApp, Failure> {
    if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
        return Err(Failure::new(Stage::Cancelled, "stop requested"));
    }
    if d.xml.len() > limits.max_doc_bytes {
        return Err(Failure::new(
            Stage::Limit,
            format!(
                "document is {} bytes, over the {}-byte per-document limit (--max-doc-bytes)",
                d.xml.len(),
                limits.max_doc_bytes
            ),
        ));
    }
    let text =
        decode::stored_document(&d.xml).map_err(|e| Failure::new(Stage::Parse, e.to_string()))?;
    let budget = Budget::new(Some(limits.max_map), cancel.cloned());
    // Planted bug (harness tests only): the document's own id keys the rows, whatever the source row says.
    let key = if crash::planted(crash::PlantedBug::WrongId) {
        crate::xml::request_id(d.xml.as_bytes()).unwrap_or(d.app_id)
    } else {
        d.app_id
    };
    map_document_within(contract, key, &text, &budget).map_err(|mut f| {
        if f.stage == Stage::Limit {
            f.message.push_str(" (--max-map-ms)");
        }
        f
    })
}

/// Whether mapping `work` was cancelled part-way (then none of it may be written).
pub fn is_cancelled(work: &[AppWork]) -> bool {
    work.iter()
        .any(|w| matches!(&w.outcome, Err(f) if f.stage == Stage::Cancelled))
}

/// [`map_batch`] under per-document `limits`; a set `cancel` flag makes documents fail with `Stage::Cancelled`
/// within milliseconds, even in the middle of a huge one (see [`is_cancelled`]).
pub fn map_batch_within(
    contract: &Contract,
    docs: Vec<SourceDoc>,
    workers: usize,
    limits: &DocLimits,
    cancel: Option<&Arc<AtomicBool>>,
) -> Vec<AppWork> {
    let map_one = |d: &SourceDoc| AppWork {
        app_id: d.app_id,
        fence: d.fence,
        outcome: map_one(contract, d, limits, cancel),
    };
    if workers <= 1 || docs.len() < 2 {
        return docs.iter().map(map_one).collect();
    }
    // Chunks balanced by bytes, not by count: one huge document among small ones gets a thread of its own instead
    // of serialising the small ones queued behind it on the same thread.
    let total: usize = docs.iter().map(|d| d.xml.len()).sum();
    let share = total.div_ceil(workers).max(1);
    let mut bounds = vec![0usize];
    let mut acc = 0usize;
    for (i, d) in docs.iter().enumerate() {
        acc += d.xml.len();
        if acc >= share && i + 1 < docs.len() && bounds.len() < workers {
            bounds.push(i + 1);
            acc = 0;
        }
    }
    bounds.push(docs.len());
    if bounds.len() == 2 {
        return docs.iter().map(map_one).collect();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = bounds
            .windows(2)
            .map(|w| {
                let c = &docs[w[0]..w[1]];
                s.spawn(move || c.iter().map(map_one).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// A fetched (or claimed) batch being parsed and mapped on its own threads while the previous one is written.
struct InFlight<'s> {
    ids: Vec<i64>,
    handle: std::thread::ScopedJoinHandle<'s, Vec<AppWork>>,
}

/// The lease heartbeat: renews this session's open claims every third of the lease on its own connection.
struct Heartbeat {
    claims: Arc<Mutex<Vec<i64>>>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(mut store: Box<dyn Store>, owner: String, lease_ms: i64) -> Self {
        let claims: Arc<Mutex<Vec<i64>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let shared = Arc::clone(&claims);
        let period = Duration::from_millis((lease_ms / 3).max(50) as u64);
        let handle = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(period) {
                let ids = shared.lock().map(|g| g.clone()).unwrap_or_default();
                // Planted bug (harness tests only): the heartbeat beats and renews nothing.
                if ids.is_empty() || crash::planted(crash::PlantedBug::NoRenew) {
                    continue;
                }
                let renewed = lease_now(store.as_mut())
                    .and_then(|now| store.renew(&owner, &ids, now, now.saturating_add(lease_ms)));
                if let Err(e) = renewed {
                    tracing::warn!(error = %e, "lease renewal failed");
                    // The next renewal on a dead client can only say "connection closed": say why it is dead.
                    if let Err(why) = store.reconnect() {
                        tracing::warn!(error = %why, "lease heartbeat could not reconnect");
                    }
                }
            }
        });
        Heartbeat {
            claims,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    fn set(&self, ids: Vec<i64>) {
        if let Ok(mut g) = self.claims.lock() {
            *g = ids;
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Runs until no eligible work is left, the limit is reached, or shutdown is requested.
pub fn run(
    store: &mut dyn Store,
    cfg: &RunConfig,
    ctx: &RunContext<'_>,
) -> Result<RunSummary, RunError> {
    let start = Instant::now();
    let iid = cfg.instance_id;
    let sel = cfg.selection();
    let lease_ms = i64::try_from(cfg.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let hooks = CrashHooks {
        ctx,
        instance_id: iid,
    };
    let wctx = WriteCtx {
        session_id: ctx.session_id,
        instance_id: i32::try_from(iid).unwrap_or(i32::MAX),
        fenced: cfg.mode == Mode::Queue,
        hooks: &hooks,
    };
    let mut summary = RunSummary::default();
    emit_started(store.backend(), cfg, ctx);

    let heartbeat = start_heartbeat(cfg, ctx, lease_ms)?;
    let mut retries = 0u64;

    let (mut cursor, mut wrapped) = match start_cursor(store, cfg, ctx, &sel) {
        Err(RunError::Stopped { .. }) => {
            return Ok(finish(cfg, ctx, summary, FinishReason::Drained, 0, start));
        }
        other => other?,
    };
    let mut last_progress = Instant::now();
    let mut idle_wait_ms = 50u64;
    // Batches shrink when documents are large, so a run holds about RUN_BATCH_BYTES per batch (two batches are in
    // memory at once: one mapping, one writing) instead of batch size × document size. Sized from the previous
    // batch's average document; the first batch is the configured size.
    let mut byte_cap = usize::MAX;
    // Mapping runs on its own threads, one batch ahead of the database: while batch k is written (and batch k+1
    // fetched or claimed), batch k+1 is parsed and mapped. The write of each batch is unchanged (same steps, same
    // crash points, fenced completion inside its transaction, events after its commit); only the fetch of the next
    // batch moves before it. The contract is cloned so the mapping threads do not borrow the store.
    let contract = store.contract().clone();
    let contract = &contract;
    let reason = std::thread::scope(|scope| -> Result<FinishReason, RunError> {
        let mut inflight: Option<InFlight<'_>> = None;
        loop {
            let queued = inflight.as_ref().map_or(0, |f| f.ids.len() as u64);
            let done = summary.succeeded + summary.failed;
            let stop = stop_reason(cfg, ctx, done + queued);
            let docs = if stop.is_some() {
                Vec::new()
            } else {
                let want = match cfg.limit {
                    Some(l) => cfg.batch_size.min((l - done - queued) as usize).max(1),
                    None => cfg.batch_size,
                };
                fetch_batch(store, cfg, ctx, &sel, cursor, want.min(byte_cap))?
            };
            if docs.is_empty() && inflight.is_none() {
                if let Some(r) = stop {
                    return Ok(r);
                }
                match cfg.mode {
                    Mode::Queue => {
                        // Nothing claimable, but the queue is drained only when nothing is left unlogged: the
                        // rest is held by live leases, or by a claim still being written (skipped as locked and not
                        // yet visible as a lease) whose owner may die before committing any of it. Wait for the
                        // owners to finish or for their leases to expire, then take over.
                        let unfinished = match with_retry_until(
                            store,
                            &cfg.retry,
                            Some(ctx.shutdown),
                            retried(ctx, iid, &[]),
                            |s| s.pending_count(&sel),
                        ) {
                            Err(Retry::Stopped(_)) => return Ok(FinishReason::Drained),
                            other => other?,
                        };
                        if unfinished == 0 {
                            return Ok(FinishReason::Done);
                        }
                        std::thread::sleep(Duration::from_millis(idle_wait_ms));
                        idle_wait_ms = (idle_wait_ms * 2).min(500);
                        continue;
                    }
                    _ if !wrapped => {
                        cursor = i64::MIN;
                        wrapped = true;
                        continue;
                    }
                    _ => return Ok(FinishReason::Done),
                }
            }
            // An empty fetch with a batch still in flight falls through: that batch is written first, then the
            // fetch is repeated at the same cursor (so a wrap-around never re-reads our own unwritten batch).
            let next = if docs.is_empty() {
                None
            } else {
                idle_wait_ms = 50;
                let avg = docs.iter().map(|d| d.xml.len()).sum::<usize>() / docs.len();
                byte_cap = (RUN_BATCH_BYTES / avg.max(1)).max(1);
                if let Some(last) = docs.last() {
                    cursor = last.app_id.saturating_add(1);
                }
                let ids: Vec<i64> = docs.iter().map(|d| d.app_id).collect();
                if cfg.mode == Mode::Queue {
                    let mut held = inflight.as_ref().map_or_else(Vec::new, |f| f.ids.clone());
                    held.extend_from_slice(&ids);
                    claimed(ctx, iid, &docs, heartbeat.as_ref(), held, &hooks);
                }
                let workers = cfg.workers;
                let limits = cfg.limits;
                let cancel = ctx.shutdown;
                Some(InFlight {
                    ids,
                    handle: scope.spawn(move || {
                        map_batch_within(contract, docs, workers, &limits, Some(cancel))
                    }),
                })
            };
            let Some(prev) = std::mem::replace(&mut inflight, next) else {
                continue;
            };
            let work = prev
                .handle
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            let joined = Joined {
                work: &work,
                heartbeat: heartbeat.as_ref(),
                still_held: inflight.as_ref().map_or_else(Vec::new, |f| f.ids.clone()),
            };
            let Some(result) = write_joined(store, cfg, ctx, &wctx, joined, &mut retries)? else {
                continue;
            };
            if let Some(hb) = &heartbeat {
                hb.set(inflight.as_ref().map_or_else(Vec::new, |f| f.ids.clone()));
            }
            summary.record(&result);
            emit_batch(ctx, iid, &result, cfg.mode == Mode::Queue);
            hooks.hit(CrashPoint::AfterCommit);
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                report_progress(cfg, &summary, start);
            }
        }
    })?;
    Ok(finish(cfg, ctx, summary, reason, retries, start))
}

/// A run stopped (SIGTERM/SIGINT) before it could connect: the `started` and `finished` (`drained`) events a drain
/// writes, with nothing done, so a stop during a database outage reads like any other clean drain.
pub fn drained_before_start(backend: &str, cfg: &RunConfig, ctx: &RunContext<'_>) -> RunSummary {
    emit_started(backend, cfg, ctx);
    finish(
        cfg,
        ctx,
        RunSummary::default(),
        FinishReason::Drained,
        0,
        Instant::now(),
    )
}

/// The run's end: the summary completed, the `finished` event and log line.
fn finish(
    cfg: &RunConfig,
    ctx: &RunContext<'_>,
    mut summary: RunSummary,
    reason: FinishReason,
    retries: u64,
    start: Instant,
) -> RunSummary {
    let iid = cfg.instance_id;
    if cfg.progress {
        eprintln!();
    }
    summary.retries = retries;
    summary.elapsed_secs = start.elapsed().as_secs_f64();
    summary.reason = reason.as_str().to_owned();
    let body = Body::Finished {
        reason,
        detail: summary.clone(),
    };
    ctx.events.emit(&ctx.event(body, iid, vec![]));
    tracing::info!(
        reason = reason.as_str(),
        succeeded = summary.succeeded,
        failed = summary.failed,
        collisions = summary.collisions,
        "run finished"
    );
    summary
}

/// Why the run stops taking new work, if it does: `drained` after SIGTERM/SIGINT, `limit` once `taken` (written
/// plus in flight) reaches `--limit`.
fn stop_reason(cfg: &RunConfig, ctx: &RunContext<'_>, taken: u64) -> Option<FinishReason> {
    let stop = if ctx.shutdown.load(Ordering::SeqCst) {
        Some(FinishReason::Drained)
    } else {
        match cfg.limit {
            Some(limit) if taken >= limit => Some(FinishReason::Limit),
            _ => None,
        }
    };
    if stop == Some(FinishReason::Drained) && crash::planted(crash::PlantedBug::ExitMidDrain) {
        // Planted bug (harness tests only): leave at once, the batch in flight unwritten and unreported.
        crate::exit::ExitStatus::Done.exit_now();
    }
    stop
}

/// Queue mode: the lease heartbeat on its own connection.
fn start_heartbeat(
    cfg: &RunConfig,
    ctx: &RunContext<'_>,
    lease_ms: i64,
) -> Result<Option<Heartbeat>, RunError> {
    Ok(match (cfg.mode, ctx.open_heartbeat_store) {
        (Mode::Queue, Some(open)) => Some(Heartbeat::start(
            open()?,
            ctx.session_id.to_owned(),
            lease_ms,
        )),
        _ => None,
    })
}

/// The next batch: claimed (queue mode) or fetched from `cursor` on, at most `want` documents. Empty when a stop
/// came while the database was failing: the run's next turn drains what is in flight.
fn fetch_batch(
    store: &mut dyn Store,
    cfg: &RunConfig,
    ctx: &RunContext<'_>,
    sel: &Selection,
    cursor: i64,
    want: usize,
) -> Result<Vec<SourceDoc>, RunError> {
    let lease_ms = i64::try_from(cfg.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let (stop, iid) = (Some(ctx.shutdown.as_ref()), cfg.instance_id);
    let got = match cfg.mode {
        Mode::Queue => with_retry_until(store, &cfg.retry, stop, retried(ctx, iid, &[]), |s| {
            let now = lease_now(s)?;
            s.claim(sel, ctx.session_id, now, lease_ms, want)
        }),
        _ => with_retry_until(store, &cfg.retry, stop, retried(ctx, iid, &[]), |s| {
            s.fetch_pending(sel, cursor, want)
        }),
    };
    match got {
        Err(Retry::Stopped(_)) => Ok(Vec::new()),
        other => Ok(other?),
    }
}

/// Queue mode, after a claim: the `claimed` event, the heartbeat told what is `held` now, the claim crash points.
fn claimed(
    ctx: &RunContext<'_>,
    iid: u32,
    docs: &[SourceDoc],
    heartbeat: Option<&Heartbeat>,
    held: Vec<i64>,
    hooks: &CrashHooks<'_>,
) {
    let fences = docs.iter().map(|d| d.fence.unwrap_or(0)).collect();
    ctx.events.emit(&ctx.event(
        Body::Claimed { fences },
        iid,
        docs.iter().map(|d| d.app_id).collect(),
    ));
    if let Some(hb) = heartbeat {
        hb.set(held);
    }
    hooks.hit(CrashPoint::AfterClaim);
    if docs.iter().any(|d| d.fence.is_some_and(|f| f > 1)) {
        hooks.hit(CrashPoint::AfterTakeover);
    }
}

/// The `started` event and log line.
fn emit_started(backend: &str, cfg: &RunConfig, ctx: &RunContext<'_>) {
    let iid = cfg.instance_id;
    let detail = Started {
        mode: cfg.mode.as_str().to_owned(),
        commit_mode: cfg.commit_mode.as_str().to_owned(),
        pid: std::process::id(),
        backend: backend.to_owned(),
        batch_size: cfg.batch_size,
        workers: cfg.workers,
        instance_count: cfg.instance_count,
        lease_secs: cfg.lease_secs,
        crash_at: ctx.crasher.spec().map(|s| s.to_string()),
        clock_skew_ms: Some(crate::clock::skew_ms()).filter(|&ms| ms != 0),
    };
    ctx.events
        .emit(&ctx.event(Body::Started { detail }, iid, vec![]));
    tracing::info!(
        mode = cfg.mode.as_str(),
        commit_mode = cfg.commit_mode.as_str(),
        session = ctx.session_id,
        "run started"
    );
}

/// Where the first fetch starts: uncoordinated instances start at different points of the pending range so they
/// do not walk it in lockstep. Returns the cursor and whether the walk has already wrapped around.
fn start_cursor(
    store: &mut dyn Store,
    cfg: &RunConfig,
    ctx: &RunContext<'_>,
    sel: &Selection,
) -> Result<(i64, bool), RunError> {
    let sel = *sel;
    let mut cursor = i64::MIN;
    let mut wrapped = true;
    let (stop, iid) = (Some(ctx.shutdown.as_ref()), cfg.instance_id);
    if cfg.mode == Mode::Uncoordinated && cfg.instance_count > 1 {
        let pending = with_retry_until(store, &cfg.retry, stop, retried(ctx, iid, &[]), |s| {
            s.pending_count(&sel)
        })?;
        let offset = pending * u64::from(cfg.instance_id) / u64::from(cfg.instance_count);
        if offset > 0 {
            if let Some(start) =
                with_retry_until(store, &cfg.retry, stop, retried(ctx, iid, &[]), |s| {
                    s.pending_at(&sel, offset)
                })?
            {
                cursor = start;
                wrapped = false;
            }
        }
    }
    Ok((cursor, wrapped))
}

/// The retry loops' report of each retry: a log line and a `retrying` event (`app_ids`: the batch being written).
fn retried<'a>(
    ctx: &'a RunContext<'a>,
    iid: u32,
    apps: &'a [i64],
) -> impl FnMut(&StoreError, u32, Duration) + 'a {
    move |e, attempt, wait| {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        tracing::warn!(error = %e, attempt, wait_ms, "transient database error; retrying");
        let body = Body::Retrying {
            op: e.op.to_owned(),
            attempt,
            wait_ms,
            error: e.to_string(),
        };
        ctx.events.emit(&ctx.event(body, iid, apps.to_vec()));
    }
}

/// A mapped batch, joined from its mapping thread: the batch, the heartbeat, and what it holds besides (the batch
/// in flight behind it).
struct Joined<'a> {
    work: &'a [AppWork],
    heartbeat: Option<&'a Heartbeat>,
    still_held: Vec<i64>,
}

/// Writes a joined batch: abandoned if SIGTERM/SIGINT cancelled its mapping, else written under the retry policy,
/// and settled by [`stopped_mid_write`] if a stop cuts a retry wait short. `None`: nothing written to report.
fn write_joined(
    store: &mut dyn Store,
    cfg: &RunConfig,
    ctx: &RunContext<'_>,
    wctx: &WriteCtx<'_>,
    batch: Joined<'_>,
    retries: &mut u64,
) -> Result<Option<BatchResult>, RunError> {
    if is_cancelled(batch.work) {
        let reason = "stop requested while mapping";
        abandon_batch(
            store,
            cfg,
            ctx,
            batch.work,
            batch.heartbeat,
            batch.still_held,
            reason,
        );
        return Ok(None);
    }
    match write_with_retry(store, cfg, ctx, wctx, batch.work, retries) {
        Ok(r) => Ok(Some(r)),
        Err(RunError::Stopped {
            commit_unresolved, ..
        }) => Ok(stopped_mid_write(store, cfg, ctx, batch, commit_unresolved)),
        Err(e) => Err(e),
    }
}

/// SIGTERM/SIGINT arrived while a batch's write was backing off after a database error. Without an unknown COMMIT
/// nothing of the batch committed (its transaction died with the error): it is abandoned like a batch stopped while
/// mapping. With one, the log is read once more (no wait) so the session can say what it did: `committed` (its
/// result is returned and reported as usual), `not_committed` (then abandoned), or, when even that read fails,
/// `commit_resolved` `unknown` — the log row, if any, is the truth, and a later run resumes either way.
fn stopped_mid_write(
    store: &mut dyn Store,
    cfg: &RunConfig,
    ctx: &RunContext<'_>,
    stop: Joined<'_>,
    commit_unresolved: bool,
) -> Option<BatchResult> {
    let iid = cfg.instance_id;
    let ids: Vec<i64> = stop.work.iter().map(|w| w.app_id).collect();
    if commit_unresolved {
        let _ = store.reconnect();
        match write::resolve_ambiguous_commit(store, stop.work, ctx.session_id) {
            Ok(mine) if !mine.is_empty() => {
                emit_resolved(ctx, iid, mine.clone(), CommitOutcome::Committed);
                return Some(result_from_committed(stop.work, &mine));
            }
            Ok(_) => emit_resolved(ctx, iid, ids, CommitOutcome::NotCommitted),
            Err(e) => {
                tracing::warn!(error = %e, apps = ids.len(), "stop requested; the commit outcome stays unknown");
                emit_resolved(ctx, iid, ids, CommitOutcome::Unknown);
                if let Some(hb) = stop.heartbeat {
                    hb.set(stop.still_held);
                }
                return None;
            }
        }
    }
    let reason = "stop requested while the database was failing";
    abandon_batch(
        store,
        cfg,
        ctx,
        stop.work,
        stop.heartbeat,
        stop.still_held,
        reason,
    );
    None
}

/// SIGTERM/SIGINT arrived while `work` was being mapped: nothing of it was written, and none of it is logged; the
/// next run (or another instance) does it. Queue claims are released at once (the lease set to end now) rather
/// than held until they expire. `still_held`: the claims of the batch still in flight.
fn abandon_batch(
    store: &mut dyn Store,
    cfg: &RunConfig,
    ctx: &RunContext<'_>,
    work: &[AppWork],
    heartbeat: Option<&Heartbeat>,
    still_held: Vec<i64>,
    reason: &str,
) {
    let iid = cfg.instance_id;
    // SIGTERM/SIGINT arrived while this batch was being mapped: nothing of it was written, and none of it
    // is logged; the next run (or another instance) does it. Queue claims are released at once (the
    // lease set to end now) rather than held until they expire.
    tracing::info!(
        apps = work.len(),
        "stop requested: batch abandoned before writing"
    );
    if cfg.mode == Mode::Queue {
        if let Some(hb) = heartbeat {
            hb.set(still_held);
        }
        let ids: Vec<i64> = work.iter().map(|w| w.app_id).collect();
        let released = lease_now(store).and_then(|now| store.renew(ctx.session_id, &ids, now, now));
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not release abandoned claims; they expire with their lease");
        }
    }
    let body = Body::Abandoned {
        reason: reason.to_owned(),
    };
    ctx.events
        .emit(&ctx.event(body, iid, work.iter().map(|w| w.app_id).collect()));
}

/// Writes one mapped batch under the retry policy (`retries` counts the retries); an atomic COMMIT whose outcome
/// is unknown is resolved from the log.
fn write_with_retry(
    store: &mut dyn Store,
    cfg: &RunConfig,
    ctx: &RunContext<'_>,
    wctx: &WriteCtx<'_>,
    work: &[AppWork],
    retries: &mut u64,
) -> Result<BatchResult, RunError> {
    let iid = cfg.instance_id;
    // Set while a COMMIT of this batch has an outcome we could not read back yet (the reconnect or the read
    // failed too): the next attempt asks the log before writing, so a commit that did land is reported as
    // ours instead of being rewritten and mistaken for another instance's collision.
    let mut unresolved = false;
    let mut attempt_result = |s: &mut dyn Store| -> StoreResult<BatchResult> {
        match cfg.commit_mode {
            CommitMode::Atomic => {
                if unresolved {
                    let mine = write::resolve_ambiguous_commit(s, work, ctx.session_id)?;
                    unresolved = false;
                    if !mine.is_empty() {
                        tracing::warn!(
                            apps = mine.len(),
                            "commit outcome was unknown; the log shows it committed"
                        );
                        emit_resolved(ctx, iid, mine.clone(), CommitOutcome::Committed);
                        return Ok(result_from_committed(work, &mine));
                    }
                }
                match write::write_atomic(s, work, wctx) {
                    Err(e) if e.is_retryable() && e.op_kind == OpKind::Commit => {
                        // The COMMIT's outcome is unknown: find out from the log instead of guessing.
                        unresolved = true;
                        let _ = s.reconnect();
                        if crash::planted(crash::PlantedBug::AssumeCommitted) {
                            // Planted bug (harness tests only): guess "it committed".
                            unresolved = false;
                            let ids: Vec<i64> = work.iter().map(|w| w.app_id).collect();
                            emit_resolved(ctx, iid, ids.clone(), CommitOutcome::Committed);
                            return Ok(result_from_committed(work, &ids));
                        }
                        let mine = write::resolve_ambiguous_commit(s, work, ctx.session_id)?;
                        unresolved = false;
                        if mine.is_empty() {
                            tracing::warn!(error = %e, "commit outcome was unknown; the log shows it did not commit");
                            let ids = work.iter().map(|w| w.app_id).collect();
                            emit_resolved(ctx, iid, ids, CommitOutcome::NotCommitted);
                            Err(e)
                        } else {
                            tracing::warn!(
                                apps = mine.len(),
                                "commit outcome was unknown; the log shows it committed"
                            );
                            emit_resolved(ctx, iid, mine.clone(), CommitOutcome::Committed);
                            Ok(result_from_committed(work, &mine))
                        }
                    }
                    other => other,
                }
            }
            CommitMode::Split => write::write_split(s, work, wctx),
        }
    };
    let ids: Vec<i64> = work.iter().map(|w| w.app_id).collect();
    let mut report = retried(ctx, iid, &ids);
    let out = with_retry_until(
        store,
        &cfg.retry,
        Some(ctx.shutdown),
        |e, a, w| {
            *retries += 1;
            report(e, a, w)
        },
        &mut attempt_result,
    );
    match out {
        Ok(r) => Ok(r),
        Err(Retry::Failed(e)) => Err(e.into()),
        Err(Retry::Stopped(error)) => Err(RunError::Stopped {
            error,
            commit_unresolved: unresolved,
        }),
    }
}

impl RunSummary {
    /// Adds one written batch's counts.
    fn record(&mut self, result: &BatchResult) {
        self.batches += 1;
        self.slow_batches += u64::from(result.slow_path);
        self.succeeded += result.succeeded.len() as u64;
        self.failed += result.failed.len() as u64;
        self.collisions += result.collisions.len() as u64;
        self.lease_lost += result.lease_lost.len() as u64;
    }
}

/// The once-a-second progress line: on stderr with `--progress`, else a log line.
fn report_progress(cfg: &RunConfig, summary: &RunSummary, start: Instant) {
    let done = summary.succeeded + summary.failed;
    let rate = done as f64 / start.elapsed().as_secs_f64().max(1e-9);
    // One or the other: a log line would break the `\r` line it lands in.
    if cfg.progress {
        eprint!(
            "\r{done} applications ({} ok, {} failed, {} collisions) {rate:.0}/s   ",
            summary.succeeded, summary.failed, summary.collisions
        );
    } else {
        tracing::info!(
            done,
            succeeded = summary.succeeded,
            failed = summary.failed,
            collisions = summary.collisions,
            rate = rate as u64,
            "progress"
        );
    }
}

/// The `commit_resolved` event: the harness proves the ambiguous-COMMIT path from it, never from log text.
fn emit_resolved(ctx: &RunContext<'_>, iid: u32, app_ids: Vec<i64>, reason: CommitOutcome) {
    ctx.events
        .emit(&ctx.event(Body::CommitResolved { reason }, iid, app_ids));
}

fn result_from_committed(work: &[AppWork], mine: &[i64]) -> BatchResult {
    let mut r = BatchResult::default();
    for w in work.iter().filter(|w| mine.contains(&w.app_id)) {
        match &w.outcome {
            Ok(_) => r.succeeded.push(w.app_id),
            Err(f) => r.failed.push((w.app_id, f.reason())),
        }
        r.committed.push(w.app_id);
        r.committed_fences.push(w.fence.unwrap_or(0));
        r.committed_coerced
            .push(w.outcome.as_ref().map_or(0, |a| a.coerced));
    }
    r
}

fn emit_batch(ctx: &RunContext<'_>, iid: u32, r: &BatchResult, fenced: bool) {
    // Planted bug (harness tests only): the commit is not reported.
    if !r.committed.is_empty() && !crash::planted(crash::PlantedBug::SilentCommit) {
        let fences = if fenced {
            r.committed_fences.clone()
        } else {
            Vec::new()
        };
        let mut detail = None;
        // Truncations/coercions per committed application (XmlConversion semantics), so none is silent.
        if r.committed_coerced.iter().any(|&n| n > 0) {
            detail = Some(Coerced {
                coerced: r.committed_coerced.clone(),
            });
            // The same figures in the log (text or `--log-format json`): which applications, how many values.
            let (ids, values): (Vec<i64>, Vec<u32>) = r
                .committed
                .iter()
                .zip(&r.committed_coerced)
                .filter(|(_, &n)| n > 0)
                .map(|(&id, &n)| (id, n))
                .unzip();
            tracing::info!(
                app_ids = ?ids,
                coerced = ?values,
                total = values.iter().map(|&n| u64::from(n)).sum::<u64>(),
                "committed with values truncated or coerced to fit the contract"
            );
        }
        let body = Body::Committed { fences, detail };
        ctx.events.emit(&ctx.event(body, iid, r.committed.clone()));
    }
    if !r.failed.is_empty() {
        let body = Body::Failed {
            reason: r.failed[0].1.clone(),
        };
        ctx.events
            .emit(&ctx.event(body, iid, r.failed.iter().map(|f| f.0).collect()));
    }
    if !r.collisions.is_empty() {
        tracing::info!(
            count = r.collisions.len(),
            "collisions: another instance finished these first"
        );
        ctx.events
            .emit(&ctx.event(Body::Collision, iid, r.collisions.clone()));
    }
    if !r.lease_lost.is_empty() {
        tracing::warn!(
            count = r.lease_lost.len(),
            "lease lost: claims were taken over; nothing committed for them"
        );
        let body = Body::LeaseLost {
            fences: r.lease_lost_fences.clone(),
        };
        ctx.events.emit(&ctx.event(body, iid, r.lease_lost.clone()));
    }
}
