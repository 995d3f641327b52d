//! The invariant checker (SPEC §10): reads a final database with its own read-only queries, maps every source
//! document with its own reference mapping, and reports which invariants are violated and by which applications.
//! Must not call processor code other than the event types in `processor::events`, and must never write.

pub mod baseline;
pub mod history;
pub mod reader;
pub mod reference;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use processor::events::{Event, EventKind};

pub use reader::{open_reader, Dialect, PgReader, Reader, SqliteReader};
pub use reference::{reference_map, RefContract, RefOutcome, RefRow, RefTable};

use reader::{exists, Sql, CLAIM_TABLE, LOG_TABLE};

/// Why the checker could not reach a verdict (never "an invariant failed": that is a `Violation`).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("bad contract: {0}")]
    Contract(String),
    #[error("database error: {0}")]
    Db(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// The invariants of SPEC §10.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    Coverage,
    NoDuplicates,
    LogMatchesData,
    Content,
    Fencing,
    Liveness,
    FaultsFired,
    NoRedo,
    CommitEvents,
    CrashKills,
    CleanDrain,
    LeaseKept,
}

impl Invariant {
    pub const ALL: [Invariant; 12] = [
        Invariant::Coverage,
        Invariant::NoDuplicates,
        Invariant::LogMatchesData,
        Invariant::Content,
        Invariant::Fencing,
        Invariant::Liveness,
        Invariant::FaultsFired,
        Invariant::NoRedo,
        Invariant::CommitEvents,
        Invariant::CrashKills,
        Invariant::CleanDrain,
        Invariant::LeaseKept,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Invariant::Coverage => "coverage",
            Invariant::NoDuplicates => "no-duplicates",
            Invariant::LogMatchesData => "log-matches-data",
            Invariant::Content => "content",
            Invariant::Fencing => "fencing",
            Invariant::Liveness => "liveness",
            Invariant::FaultsFired => "faults-fired",
            Invariant::NoRedo => "no-redo",
            Invariant::CommitEvents => "commit-events",
            Invariant::CrashKills => "crash-kills",
            Invariant::CleanDrain => "clean-drain",
            Invariant::LeaseKept => "lease-kept",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Invariant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Invariant::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown invariant '{s}' (expected one of: {})",
                    names_list()
                )
            })
    }
}

fn names_list() -> String {
    Invariant::ALL
        .iter()
        .map(|i| i.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One broken invariant and the applications involved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Violation {
    pub invariant: Invariant,
    /// Sorted and deduplicated.
    pub app_ids: Vec<i64>,
    pub message: String,
}

impl Violation {
    fn new(invariant: Invariant, apps: impl IntoIterator<Item = i64>, message: String) -> Self {
        let set: BTreeSet<i64> = apps.into_iter().collect();
        Violation {
            invariant,
            app_ids: set.into_iter().collect(),
            message,
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckStats {
    /// Source applications.
    pub apps: u64,
    /// Source applications logged success / failed, and with no log row.
    pub success: u64,
    pub failed: u64,
    pub missing: u64,
    /// Row count per target table.
    pub rows: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    pub violations: Vec<Violation>,
    pub stats: CheckStats,
    /// How `content` was judged.
    pub content_by: ContentBy,
    /// This database as the baseline comparison sees it (contracts outside the reference's format only), so a
    /// no-fault run's report can be the baseline of the faulted run.
    #[serde(skip)]
    pub snapshot: Option<baseline::Snapshot>,
}

/// How the `content` invariant was judged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "by", content = "why")]
pub enum ContentBy {
    /// The independent reference mapping of the project's contract format (`reference.rs`).
    Reference,
    /// Comparison with the no-fault baseline run of the same documents (`baseline.rs`), because the reference
    /// does not cover this contract (the reason).
    Baseline(String),
    /// Not judged: the reference does not cover this contract and no baseline was given (the reason).
    NotChecked(String),
}

/// The reference mapping does not cover this contract, so `content` needs a no-fault baseline to compare with.
pub fn content_needs_baseline(contract_json: &str) -> bool {
    RefContract::parse(contract_json).is_err()
}

impl CheckReport {
    /// The distinct invariants that failed.
    pub fn violated(&self) -> BTreeSet<Invariant> {
        self.violations.iter().map(|v| v.invariant).collect()
    }
}

/// Per invariant, violations beyond this many are folded into one summary so a broken run stays readable.
const MAX_PER_INVARIANT: usize = 50;
/// App ids listed in one message.
const MAX_IDS_IN_MESSAGE: usize = 50;

fn id_list(ids: &[i64]) -> String {
    let mut s: Vec<String> = ids
        .iter()
        .take(MAX_IDS_IN_MESSAGE)
        .map(i64::to_string)
        .collect();
    if ids.len() > MAX_IDS_IN_MESSAGE {
        s.push(format!("… ({} more)", ids.len() - MAX_IDS_IN_MESSAGE));
    }
    s.join(", ")
}

/// A natural key as `(a, b)` text.
fn key_text(key: &[Option<String>]) -> String {
    let vals: Vec<&str> = key.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
    format!("({})", vals.join(", "))
}

fn show(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("'{s}'"),
        None => "NULL".into(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Streaming. The database is read in chunks of `chunk_apps` source applications in app_id order (keyset pages):
// each chunk's documents are mapped, and compared with the chunk's log rows and stored rows (app-keyed tables by
// app_id range, shared-entity tables by the natural keys the chunk's documents expect), then dropped. What
// outlives a chunk is compact: one status byte per application, and one (key hash, application) pair per expected
// row of a shared-entity table, needed afterwards by the pass over every stored shared row (which application
// references a row is known only from documents, which are gone by then). Every other query streams.

/// Source applications read, mapped and compared at a time.
pub const CHUNK_APPS: usize = 2000;

type Key = Vec<Option<String>>;

/// The chunk's in-memory maps, keyed by natural keys read from the database, hashed with FxHash's
/// multiply-rotate over 8-byte words instead of SipHash (a measured cost of the comparisons): the keys are the
/// database's own values, not adversarial input, and equality is still compared in full.
type FastMap<K, V> = HashMap<K, V, FastState>;

#[derive(Default, Clone, Copy)]
struct FastState;

impl std::hash::BuildHasher for FastState {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            self.add(u64::from_le_bytes(a));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut a = [0u8; 8];
            a[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(a) ^ ((rest.len() as u64) << 59));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

struct LogRow {
    status: Option<String>,
    reason: Option<String>,
}

/// One chunk: its applications' reference outcomes and the log rows of its app_id range.
struct Ctx<'a> {
    contract: &'a RefContract,
    /// Source app → reference outcome.
    refs: BTreeMap<i64, RefOutcome>,
    log: Vec<LogRow>,
    log_by_app: BTreeMap<i64, Vec<usize>>,
}

impl Ctx<'_> {
    /// The app's log status when it has a log row (the first one if duplicated; coverage reports duplicates).
    fn status(&self, app: i64) -> Option<&str> {
        let idx = self.log_by_app.get(&app)?.first()?;
        self.log.get(*idx)?.status.as_deref()
    }

    fn is_success(&self, app: i64) -> bool {
        self.log_by_app.get(&app).is_some_and(|ix| {
            ix.iter().any(|i| {
                self.log
                    .get(*i)
                    .is_some_and(|l| l.status.as_deref() == Some("success"))
            })
        })
    }

    fn ref_rows(&self, app: i64, table: &str) -> Option<&[RefRow]> {
        match self.refs.get(&app)? {
            RefOutcome::Success(t) => t.get(table).map(Vec::as_slice),
            RefOutcome::Failed { .. } => None,
        }
    }
}

// Per-application flags kept for the whole check.
const ST_MASK: u8 = 0b11;
const ST_NONE: u8 = 0;
const ST_SUCCESS: u8 = 1;
const ST_FAILED: u8 = 2;
const ST_OTHER: u8 = 3;
/// Some log row of the app says success (there may be several: coverage reports that).
const ANY_SUCCESS: u8 = 4;

/// What outlives the chunks: compact per-application state, the shared-row reference index, coverage findings.
#[derive(Default)]
struct Global {
    /// Source app_ids, ascending (appended chunk by chunk).
    apps: Vec<i64>,
    /// Per app: first log status (`ST_*`) and `ANY_SUCCESS`.
    flags: Vec<u8>,
    /// Log rows that name no source application but say success (owners may still be such apps).
    unknown_success: Vec<i64>,
    /// (hash of table and natural key, index into `apps`, hash of the compared columns) per row of a shared table
    /// that an application whose reference mapping succeeds expects; sorted by `finish`. A 64-bit key hash: a
    /// collision (odds ~1e-6 at ten million rows) could only make a row look referenced by one more application.
    /// The content hash is 32 bits: a stored row that differs from the expected one goes unnoticed with odds
    /// 2^-32. Each entry is `[hash >> 32, hash & 0xffff_ffff, app index, content hash]`: 16 bytes. Shared rows are
    /// read once, after the chunks (`check_shared_rows`), and compared with these entries.
    shared_refs: Vec<[u32; 4]>,
    missing: Vec<i64>,
    multiple: Vec<i64>,
    bad_status: Vec<i64>,
    unknown: Vec<i64>,
}

fn key_hash(table: usize, key: &[Option<String>]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    table.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

fn ref_entry(hash: u64, app_index: u32, content: u32) -> [u32; 4] {
    [(hash >> 32) as u32, hash as u32, app_index, content]
}

/// A shared row's compared columns (every column but the app key, which names whichever app wrote it first), in
/// the contract's column order, hashed to 32 bits: `value(i)` is column `i`'s canonical text.
fn content_hash<'v>(
    t: &RefTable,
    app_key: &str,
    mut value: impl FnMut(usize, &str) -> Option<&'v str>,
) -> u32 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (i, c) in t.columns.iter().enumerate() {
        if c != app_key {
            value(i, c).hash(&mut h);
        }
    }
    (h.finish() >> 32) as u32
}

impl Global {
    fn flags(&self, app: i64) -> Option<u8> {
        self.apps
            .binary_search(&app)
            .ok()
            .and_then(|i| self.flags.get(i).copied())
    }

    fn is_success(&self, app: i64) -> bool {
        match self.flags(app) {
            Some(f) => f & ANY_SUCCESS != 0,
            None => self.unknown_success.binary_search(&app).is_ok(),
        }
    }

    fn status(&self, app: i64) -> Option<&'static str> {
        match self.flags(app).map(|f| f & ST_MASK) {
            Some(ST_SUCCESS) => Some("success"),
            Some(ST_FAILED) => Some("failed"),
            _ => None,
        }
    }

    fn has_log(&self, app: i64) -> bool {
        match self.flags(app) {
            Some(f) => f & ST_MASK != ST_NONE,
            None => self.unknown.binary_search(&app).is_ok(),
        }
    }

    /// The `shared_refs` entries of this shared row (the applications whose reference output contains it).
    fn ref_range(&self, table: usize, key: &[Option<String>]) -> std::ops::Range<usize> {
        let [hi, lo, _, _] = ref_entry(key_hash(table, key), 0, 0);
        let start = self
            .shared_refs
            .partition_point(|e| (e[0], e[1]) < (hi, lo));
        let len = self.shared_refs[start..]
            .iter()
            .take_while(|e| (e[0], e[1]) == (hi, lo))
            .count();
        start..start + len
    }

    /// Apps whose reference output contains this shared row.
    fn refs(&self, table: usize, key: &[Option<String>]) -> Vec<i64> {
        self.refs_in(self.ref_range(table, key))
    }

    fn refs_in(&self, range: std::ops::Range<usize>) -> Vec<i64> {
        let mut out: Vec<i64> = self.shared_refs[range]
            .iter()
            .filter_map(|e| self.apps.get(e[2] as usize).copied())
            .collect();
        out.dedup();
        out
    }

    fn finish(&mut self) {
        self.shared_refs.sort_unstable();
        self.shared_refs.dedup();
        self.unknown.sort_unstable();
        self.unknown_success.sort_unstable();
    }
}

/// Violations as they stream in, each invariant capped at `MAX_PER_INVARIANT` (the rest folded into one summary,
/// keeping only their app ids).
#[derive(Default)]
struct Collector {
    kept: BTreeMap<Invariant, Vec<Violation>>,
    folded: BTreeMap<Invariant, (usize, Vec<i64>)>,
}

impl Collector {
    fn push(&mut self, v: Violation) {
        let inv = v.invariant;
        let kept = self.kept.entry(inv).or_default();
        if kept.len() < MAX_PER_INVARIANT && !self.folded.contains_key(&inv) {
            kept.push(v);
            return;
        }
        let f = self.folded.entry(inv).or_default();
        if f.0 == 0 {
            // The summary takes the last kept slot: MAX_PER_INVARIANT - 1 in full, then the summary.
            if let Some(last) = kept.pop() {
                f.0 += 1;
                f.1.extend(last.app_ids);
            }
        }
        f.0 += 1;
        f.1.extend(v.app_ids);
    }

    fn extend(&mut self, vs: impl IntoIterator<Item = Violation>) {
        for v in vs {
            self.push(v);
        }
    }

    fn finish(mut self) -> Vec<Violation> {
        let mut out = Vec::new();
        for inv in Invariant::ALL {
            out.extend(self.kept.remove(&inv).unwrap_or_default());
            if let Some((n, mut apps)) = self.folded.remove(&inv) {
                apps.sort_unstable();
                apps.dedup();
                out.push(Violation {
                    invariant: inv,
                    message: format!("{n} more {inv} violations, apps: {}", id_list(&apps)),
                    app_ids: apps,
                });
            }
        }
        out
    }
}

fn parse_id(v: &Option<String>, what: &str) -> Result<i64, CheckError> {
    v.as_deref()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| CheckError::Db(format!("{what}: app_id {} is not an integer", show(v))))
}

/// One document's reference outcome. A panic in the reference is a checker bug: it is surfaced as a failed
/// mapping of that document rather than aborting the run.
fn map_one(contract: &RefContract, id: i64, xml: &str) -> RefOutcome {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        reference_map(contract, id, xml)
    }))
    .unwrap_or_else(|_| RefOutcome::Failed {
        stage: "checker".into(),
        message: "reference mapping panicked".into(),
    })
}

type Docs = Vec<(i64, String)>;
type Mapped = Vec<(i64, RefOutcome)>;

/// The mapping stage, on every core: this thread splits each chunk's documents between worker threads that live
/// for the whole check (threads spawned per chunk each started with a fresh allocator heap, whose pages the kernel
/// had to fault in and zero again every chunk), and hands the chunk's outcomes on in one map.
fn map_chunks(
    contract: &RefContract,
    doc_rx: std::sync::mpsc::Receiver<Docs>,
    ref_tx: std::sync::mpsc::SyncSender<BTreeMap<i64, RefOutcome>>,
) {
    use std::sync::mpsc::sync_channel;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        for _ in 0..threads {
            let (part_tx, part_rx) = sync_channel::<Docs>(1);
            let (done_tx, done_rx) = sync_channel::<Mapped>(1);
            s.spawn(move || {
                for part in part_rx {
                    let mapped = part
                        .iter()
                        .map(|(id, xml)| (*id, map_one(contract, *id, xml)))
                        .collect();
                    drop(part);
                    if done_tx.send(mapped).is_err() {
                        break;
                    }
                }
            });
            workers.push((part_tx, done_rx));
        }
        for mut docs in doc_rx {
            let ids: Vec<i64> = docs.iter().map(|d| d.0).collect();
            let per = docs.len().div_ceil(threads).max(1);
            let mut sent = Vec::new();
            for (part_tx, done_rx) in &workers {
                if docs.is_empty() {
                    break;
                }
                let part: Docs = docs.drain(..per.min(docs.len())).collect();
                if part_tx.send(part).is_ok() {
                    sent.push(done_rx);
                }
            }
            let mut out = BTreeMap::new();
            for done_rx in sent {
                out.extend(done_rx.recv().unwrap_or_default());
            }
            for id in ids {
                out.entry(id).or_insert_with(|| RefOutcome::Failed {
                    stage: "checker".into(),
                    message: "the reference mapping's thread stopped".into(),
                });
            }
            if ref_tx.send(out).is_err() {
                break;
            }
        }
        // Dropping the part senders ends the workers.
        drop(workers);
    });
}

/// Runs every database invariant (coverage, no-duplicates, log-matches-data, content, fencing) on a final database.
/// `events` are the processors' event streams, merged (order does not matter). Memory stays bounded by the chunk
/// size plus a few bytes per application (see "Streaming" above).
pub fn check_database(
    reader: &mut dyn Reader,
    contract_json: &str,
    events: &[Event],
) -> Result<CheckReport, CheckError> {
    check_database_with(reader, contract_json, events, None)
}

/// A constraint the fixture adds to the target schema that the contract does not know (`[fixture]
/// reject_rows_in`): every row of `table` whose `app_id` is a multiple of `every` is refused by the database, so
/// such an application maps cleanly and must end `failed` with a `write:` reason and no rows at all. The reference
/// mapping applies it to its outcome; under the baseline comparison both runs have the constraint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    pub table: String,
    pub every: i64,
}

impl Rejection {
    /// Whether the database refuses an application `app_id` whose reference rows are `rows`.
    pub fn refuses(&self, app_id: i64, rows: &BTreeMap<String, Vec<RefRow>>) -> bool {
        self.every > 0
            && app_id % self.every == 0
            && rows.get(&self.table).is_some_and(|r| !r.is_empty())
    }
}

/// [`check_database_with`] under a fixture's [`Rejection`] (the reference path applies it; `None`: no constraint).
pub fn check_database_rejecting(
    reader: &mut dyn Reader,
    contract_json: &str,
    events: &[Event],
    baseline: Option<&baseline::Snapshot>,
    rejection: Option<&Rejection>,
) -> Result<CheckReport, CheckError> {
    if RefContract::parse(contract_json).is_ok() {
        return check_chunked(reader, contract_json, events, CHUNK_APPS, rejection);
    }
    check_database_with(reader, contract_json, events, baseline)
}

/// `check_database`, for any contract the processor accepts: a contract outside the reference mapping's format
/// has its `content` judged against `baseline` (a no-fault run's snapshot), or not at all without one. Only the
/// reference path streams; the baseline snapshot holds the database's rows (see ARCHITECTURE.md).
pub fn check_database_with(
    reader: &mut dyn Reader,
    contract_json: &str,
    events: &[Event],
    baseline: Option<&baseline::Snapshot>,
) -> Result<CheckReport, CheckError> {
    let why = match RefContract::parse(contract_json) {
        Ok(_) => return check_database_chunked(reader, contract_json, events, CHUNK_APPS),
        Err(e) => format!("the reference mapping covers only the project's contract format ({e})"),
    };
    let layout = baseline::Layout::parse(contract_json)?;
    let snap = baseline::snapshot(reader, &layout)?;
    let sql = Sql::new(reader.dialect(), &layout.target_schema)?;
    let mut out = Collector::default();
    out.extend(baseline::structural(&snap));
    let content_by = match baseline {
        Some(b) => {
            out.extend(baseline::compare(b, &snap));
            ContentBy::Baseline(why)
        }
        None => ContentBy::NotChecked(why),
    };
    out.extend(check_fencing(reader, &sql, events)?);
    let mut violations = out.finish();
    violations.extend(check_file_integrity(reader)?);
    let mut stats = CheckStats {
        apps: snap.sources.len() as u64,
        rows: snap.row_counts(),
        ..CheckStats::default()
    };
    for app in &snap.sources {
        match snap.verdicts.get(app).and_then(|v| v.status.as_deref()) {
            Some("success") => stats.success += 1,
            Some("failed") => stats.failed += 1,
            Some(_) => {}
            None => stats.missing += 1,
        }
    }
    Ok(CheckReport {
        violations,
        stats,
        content_by,
        snapshot: Some(snap),
    })
}

/// [`check_database`] with a chosen chunk size (tests use tiny ones, so chunk boundaries are exercised).
pub fn check_database_chunked(
    reader: &mut dyn Reader,
    contract_json: &str,
    events: &[Event],
    chunk_apps: usize,
) -> Result<CheckReport, CheckError> {
    check_chunked(reader, contract_json, events, chunk_apps, None)
}

fn check_chunked(
    reader: &mut dyn Reader,
    contract_json: &str,
    events: &[Event],
    chunk_apps: usize,
    rejection: Option<&Rejection>,
) -> Result<CheckReport, CheckError> {
    let mut contract = RefContract::parse(contract_json)?;
    contract.rejection = rejection.cloned();
    let sql = Sql::new(reader.dialect(), &contract.target_schema)?;
    let with_fence = exists(reader, &sql.column_exists(LOG_TABLE, "fence")?)?;
    let mut g = Global::default();
    let mut out = Collector::default();
    stream_chunks(
        reader,
        &contract,
        &sql,
        with_fence,
        chunk_apps.max(1),
        &mut g,
        &mut out,
    )?;
    g.finish();
    out.extend(coverage_violations(&mut g));
    let mut found = vec![false; g.shared_refs.len()];
    for (ti, t) in contract.tables.iter().enumerate() {
        if t.shared {
            check_shared_rows(reader, &contract, &sql, ti, &g, &mut found, &mut out)?;
        }
    }
    check_shared_missing(reader, &contract, &sql, &g, &found, &mut out)?;
    out.extend(check_no_duplicates(reader, &contract, &sql, &g)?);
    out.extend(check_fencing(reader, &sql, events)?);
    let mut violations = out.finish();
    violations.extend(check_file_integrity(reader)?);
    let stats = stats(reader, &contract, &sql, &g)?;
    Ok(CheckReport {
        violations,
        stats,
        content_by: ContentBy::Reference,
        snapshot: None,
    })
}

/// One keyset page of the source: its documents, how many, and the last app_id.
fn read_page(
    reader: &mut dyn Reader,
    contract: &RefContract,
    sql: &Sql,
    after: Option<i64>,
    chunk_apps: usize,
) -> Result<Vec<(i64, String)>, CheckError> {
    let mut docs = Vec::with_capacity(chunk_apps);
    reader.query_each(
        &sql.source_page(
            &contract.source_table,
            &contract.source_column,
            after,
            chunk_apps,
        )?,
        &mut |mut r| {
            let id = parse_id(&r[0], "source")?;
            docs.push((id, r.get_mut(1).and_then(Option::take).unwrap_or_default()));
            Ok(())
        },
    )?;
    Ok(docs)
}

/// What a chunk reads by app_id range, which needs no mapping: its log rows and the rows of app-keyed tables.
struct RangeRows {
    log: Vec<LogRow>,
    log_by_app: BTreeMap<i64, Vec<usize>>,
    /// App-keyed table → its rows in the range.
    tables: BTreeMap<String, Vec<Vec<Option<String>>>>,
}

fn read_range(
    reader: &mut dyn Reader,
    contract: &RefContract,
    sql: &Sql,
    with_fence: bool,
    range: (Option<i64>, Option<i64>),
) -> Result<RangeRows, CheckError> {
    let mut log = Vec::new();
    let mut log_by_app: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    reader.query_each(&sql.log_rows_in(with_fence, range)?, &mut |mut r| {
        let app_id = parse_id(&r[0], "processing_log")?;
        log_by_app.entry(app_id).or_default().push(log.len());
        log.push(LogRow {
            status: r[1].take(),
            reason: r[2].take(),
        });
        Ok(())
    })?;
    let mut tables = BTreeMap::new();
    for t in contract.tables.iter().filter(|t| !t.shared) {
        let mut rows = Vec::new();
        reader.query_each(
            &sql.rows_in(&t.name, &t.columns, &contract.app_key, range)?,
            &mut |r| {
                rows.push(r);
                Ok(())
            },
        )?;
        tables.insert(t.name.clone(), rows);
    }
    Ok(RangeRows {
        log,
        log_by_app,
        tables,
    })
}

/// The chunk loop, pipelined: a mapper thread maps chunk N+1's documents (the reference mapping is the checker's
/// main CPU cost) while this thread reads chunk N's rows and compares. Channels of one chunk each bound the memory
/// to about three chunks of documents. The database is read on this thread only, in the same order as before.
fn stream_chunks(
    reader: &mut dyn Reader,
    contract: &RefContract,
    sql: &Sql,
    with_fence: bool,
    chunk_apps: usize,
    g: &mut Global,
    out: &mut Collector,
) -> Result<(), CheckError> {
    use std::sync::mpsc::sync_channel;
    std::thread::scope(|s| {
        let (doc_tx, doc_rx) = sync_channel::<Vec<(i64, String)>>(1);
        let (ref_tx, ref_rx) = sync_channel::<BTreeMap<i64, RefOutcome>>(1);
        s.spawn(move || map_chunks(contract, doc_rx, ref_tx));
        let lost = || CheckError::Unsupported("the checker's mapper thread stopped".into());
        // The range a chunk answers for: (after, last] — or to the end when the source is exhausted, so that log
        // and target rows of applications that are not in the source are seen too.
        let bound = |docs: &[(i64, String)]| -> Option<i64> {
            if docs.len() < chunk_apps {
                None
            } else {
                docs.last().map(|d| d.0)
            }
        };
        let page = read_page(reader, contract, sql, None, chunk_apps)?;
        let mut after: Option<i64> = None;
        let mut hi = bound(&page);
        doc_tx.send(page).map_err(|_| lost())?;
        loop {
            let range = (after, hi);
            let rows = read_range(reader, contract, sql, with_fence, range)?;
            let next_hi = match hi {
                Some(h) => {
                    let next = read_page(reader, contract, sql, Some(h), chunk_apps)?;
                    let b = bound(&next);
                    doc_tx.send(next).map_err(|_| lost())?;
                    b
                }
                None => None,
            };
            let refs = ref_rx.recv().map_err(|_| lost())?;
            check_chunk(contract, refs, rows, g, out)?;
            match hi {
                Some(h) => {
                    after = Some(h);
                    hi = next_hi;
                }
                None => return Ok(()),
            }
        }
    })
}

/// One chunk, its documents mapped and its range rows read: run the per-application checks, keep what outlives it.
fn check_chunk(
    contract: &RefContract,
    refs: BTreeMap<i64, RefOutcome>,
    rows: RangeRows,
    g: &mut Global,
    out: &mut Collector,
) -> Result<(), CheckError> {
    let RangeRows {
        log,
        log_by_app,
        tables: mut range_tables,
    } = rows;
    let ctx = Ctx {
        contract,
        refs,
        log,
        log_by_app,
    };
    // What outlives the chunk.
    for (app, outcome) in &ctx.refs {
        let mut f = match ctx.status(*app) {
            Some("success") => ST_SUCCESS,
            Some("failed") => ST_FAILED,
            _ if ctx.log_by_app.contains_key(app) => ST_OTHER,
            _ => ST_NONE,
        };
        if ctx.is_success(*app) {
            f |= ANY_SUCCESS;
        }
        let idx = u32::try_from(g.apps.len())
            .map_err(|_| CheckError::Unsupported("more than 4 billion applications".into()))?;
        g.apps.push(*app);
        g.flags.push(f);
        if let RefOutcome::Success(tables) = outcome {
            for (ti, t) in contract.tables.iter().enumerate().filter(|(_, t)| t.shared) {
                for row in tables.get(&t.name).map(Vec::as_slice).unwrap_or(&[]) {
                    let content = content_hash(t, &contract.app_key, |_, c| {
                        row.values.get(c).and_then(Option::as_deref)
                    });
                    g.shared_refs
                        .push(ref_entry(key_hash(ti, &row.key), idx, content));
                }
            }
        }
    }
    for app in ctx.log_by_app.keys().filter(|a| !ctx.refs.contains_key(a)) {
        if ctx.is_success(*app) {
            g.unknown_success.push(*app);
        }
    }
    check_coverage(&ctx, g);
    let stored = load_stored(&ctx, &mut range_tables);
    out.extend(check_log_matches_data(&ctx, &stored));
    out.extend(check_content(&ctx, &stored));
    Ok(())
}

fn stats(
    reader: &mut dyn Reader,
    contract: &RefContract,
    sql: &Sql,
    g: &Global,
) -> Result<CheckStats, CheckError> {
    let mut s = CheckStats {
        apps: g.apps.len() as u64,
        ..CheckStats::default()
    };
    for f in &g.flags {
        match f & ST_MASK {
            ST_NONE => s.missing += 1,
            ST_SUCCESS => s.success += 1,
            ST_FAILED => s.failed += 1,
            _ => {}
        }
    }
    for t in &contract.tables {
        let rows = reader.query_text(&sql.count(&t.name)?)?;
        let n = rows
            .first()
            .and_then(|r| r.first())
            .cloned()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        s.rows.insert(t.name.clone(), n);
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------------------------------
// coverage

/// Every source app has exactly one log row with status success|failed; no log rows for unknown apps. Collected
/// per chunk, reported once.
fn check_coverage(ctx: &Ctx, g: &mut Global) {
    for app in ctx.refs.keys() {
        match ctx.log_by_app.get(app).map(Vec::as_slice) {
            None | Some([]) => g.missing.push(*app),
            Some([one]) => {
                let st = ctx.log.get(*one).and_then(|l| l.status.as_deref());
                if !matches!(st, Some("success" | "failed")) {
                    g.bad_status.push(*app);
                }
            }
            Some(_) => g.multiple.push(*app),
        }
    }
    g.unknown.extend(
        ctx.log_by_app
            .keys()
            .filter(|a| !ctx.refs.contains_key(a))
            .copied(),
    );
}

fn coverage_violations(g: &mut Global) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut push = |apps: Vec<i64>, what: &str| {
        if !apps.is_empty() {
            let msg = format!("{} {what}: {}", apps.len(), id_list(&apps));
            out.push(Violation::new(Invariant::Coverage, apps, msg));
        }
    };
    push(
        std::mem::take(&mut g.missing),
        "source applications have no log row",
    );
    push(
        std::mem::take(&mut g.multiple),
        "source applications have more than one log row",
    );
    push(
        std::mem::take(&mut g.bad_status),
        "source applications have a log status other than success or failed",
    );
    push(
        g.unknown.clone(),
        "log rows name applications that are not in the source table",
    );
    out
}

// ---------------------------------------------------------------------------------------------------------------
// no-duplicates

/// Counted by content with GROUP BY, so it holds also where the schema has no unique constraint.
fn check_no_duplicates(
    reader: &mut dyn Reader,
    contract: &RefContract,
    sql: &Sql,
    g: &Global,
) -> Result<Vec<Violation>, CheckError> {
    let mut out = Collector::default();
    for (ti, t) in contract.tables.iter().enumerate() {
        let app_pos = t.key.iter().position(|k| *k == contract.app_key);
        reader.query_each(&sql.key_duplicates(&t.name, &t.key)?, &mut |r| {
            let key: Key = r[..t.key.len()].to_vec();
            let count = r.get(t.key.len()).cloned().flatten().unwrap_or_default();
            let mut apps: Vec<i64> = if t.shared {
                g.refs(ti, &key)
            } else {
                Vec::new()
            };
            if let Some(p) = app_pos {
                apps.extend(key[p].as_deref().and_then(|v| v.parse::<i64>().ok()));
            }
            let msg = format!(
                "{}: key ({}) = {} occurs {count} times",
                t.name,
                t.key.join(", "),
                key_text(&key)
            );
            out.push(Violation::new(Invariant::NoDuplicates, apps, msg));
            Ok(())
        })?;
    }
    reader.query_each(&sql.log_duplicates()?, &mut |r| {
        let app = parse_id(&r[0], "processing_log")?;
        let count = r.get(1).cloned().flatten().unwrap_or_default();
        out.push(Violation::new(
            Invariant::NoDuplicates,
            [app],
            format!("{LOG_TABLE}: app {app} has {count} log rows"),
        ));
        Ok(())
    })?;
    Ok(out.finish())
}

// ---------------------------------------------------------------------------------------------------------------
// Stored rows of one chunk with their owners, shared by log-matches-data and content.

struct StoredTable {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
    keys: Vec<Key>,
    /// The app that wrote each row: its app key column, or through the foreign-key chain.
    owners: Vec<Option<i64>>,
    by_key: FastMap<Key, Vec<usize>>,
}

/// A chunk's stored rows of app-keyed tables: those in the chunk's app_id range (read by `read_range`, taken from
/// `range_tables`). Shared tables are not read per chunk: `check_shared_rows` reads each once, after the chunks.
/// An app-keyed table has the app key among its key columns (or no parent), so its owner is that column.
fn load_stored(
    ctx: &Ctx,
    range_tables: &mut BTreeMap<String, Vec<Vec<Option<String>>>>,
) -> BTreeMap<String, StoredTable> {
    let mut out: BTreeMap<String, StoredTable> = BTreeMap::new();
    for t in ctx.contract.tables.iter().filter(|t| !t.shared) {
        let rows = range_tables.remove(&t.name).unwrap_or_default();
        let pos: Vec<usize> = t
            .key
            .iter()
            .map(|k| t.columns.iter().position(|c| c == k).unwrap_or(0))
            .collect();
        let keys: Vec<Key> = rows
            .iter()
            .map(|r| pos.iter().map(|p| r.get(*p).cloned().flatten()).collect())
            .collect();
        let app_col = t.columns.iter().position(|c| *c == ctx.contract.app_key);
        let owners: Vec<Option<i64>> = rows
            .iter()
            .map(|r| {
                app_col
                    .and_then(|i| r.get(i))
                    .and_then(Option::as_deref)
                    .and_then(|v| v.trim().parse().ok())
            })
            .collect();
        let mut by_key: FastMap<Key, Vec<usize>> = FastMap::default();
        for (i, k) in keys.iter().enumerate() {
            by_key.entry(k.clone()).or_default().push(i);
        }
        out.insert(
            t.name.clone(),
            StoredTable {
                columns: t.columns.clone(),
                rows,
                keys,
                owners,
                by_key,
            },
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// log-matches-data

/// `success` ⇒ every expected row present; `failed` ⇒ no rows; no row without an owner logged success. Per chunk;
/// the rows of shared tables are judged by `check_shared_rows`.
fn check_log_matches_data(ctx: &Ctx, stored: &BTreeMap<String, StoredTable>) -> Vec<Violation> {
    let mut out = Vec::new();

    // success ⇒ every expected row present (by natural key; shared rows may have been written by another app).
    for app in ctx.refs.keys() {
        if ctx.status(*app) != Some("success") {
            continue;
        }
        let mut missing = Vec::new();
        for t in &ctx.contract.tables {
            let Some(st) = stored.get(&t.name) else {
                continue;
            };
            for row in ctx.ref_rows(*app, &t.name).unwrap_or(&[]) {
                if !st.by_key.contains_key(&row.key) {
                    missing.push(format!("{} {}", t.name, key_text(&row.key)));
                }
            }
        }
        if let Some(first) = missing.first() {
            let msg = format!(
                "app {app}: logged success but {} expected rows are missing, first {first}",
                missing.len()
            );
            out.push(Violation::new(Invariant::LogMatchesData, [*app], msg));
        }
    }

    // Every stored row of an app-keyed table must belong to an application logged success.
    for t in ctx.contract.tables.iter().filter(|t| !t.shared) {
        let Some(st) = stored.get(&t.name) else {
            continue;
        };
        // Per owner: rows that it may not own, reported once per (owner, table).
        let mut bad: BTreeMap<Option<i64>, (usize, String)> = BTreeMap::new();
        for (i, key) in st.keys.iter().enumerate() {
            let owner = st.owners.get(i).copied().flatten();
            if !owner.is_some_and(|o| ctx.is_success(o)) {
                let e = bad
                    .entry(owner)
                    .or_insert_with(|| (0, format!("{} {}", t.name, key_text(key))));
                e.0 += 1;
            }
        }
        for (owner, (n, first)) in bad {
            let state = owner_state(
                ctx.status_of(owner),
                owner.is_some_and(|o| ctx.log_by_app.contains_key(&o)),
                owner,
            );
            out.push(owner_violation(t, owner, n, &first, state, Vec::new()));
        }
    }
    out
}

impl Ctx<'_> {
    fn status_of(&self, owner: Option<i64>) -> Option<&str> {
        owner.and_then(|o| self.status(o))
    }
}

fn owner_violation(
    t: &RefTable,
    owner: Option<i64>,
    n: usize,
    first: &str,
    state: &'static str,
    refs: Vec<i64>,
) -> Violation {
    let who = match owner {
        Some(o) => format!("app {o}"),
        None => "no application".to_owned(),
    };
    let msg = format!(
        "{n} {} rows owned by {who} ({state}), first {first}",
        t.name
    );
    Violation::new(
        Invariant::LogMatchesData,
        owner.into_iter().chain(refs),
        msg,
    )
}

fn owner_state(status: Option<&str>, has_log: bool, owner: Option<i64>) -> &'static str {
    match owner {
        None => "orphan row: no owning application found",
        Some(_) => match status {
            None if !has_log => "which has no log row",
            Some("success") => "logged success",
            Some("failed") => "which is logged failed",
            _ => "which has no terminal log status",
        },
    }
}

// ---------------------------------------------------------------------------------------------------------------
// content

/// Log status equals the reference outcome; stored columns equal the reference's canonical text. Per chunk; the
/// rows of shared tables are judged by `check_shared_rows`.
fn check_content(ctx: &Ctx, stored: &BTreeMap<String, StoredTable>) -> Vec<Violation> {
    let mut out = Vec::new();

    for (app, outcome) in &ctx.refs {
        let Some(ix) = ctx.log_by_app.get(app) else {
            continue;
        };
        let Some(log) = ix.first().and_then(|i| ctx.log.get(*i)) else {
            continue;
        };
        match (log.status.as_deref(), outcome) {
            (Some("success"), RefOutcome::Failed { stage, message }) => out.push(Violation::new(
                Invariant::Content,
                [*app],
                format!("app {app}: logged success, but the reference mapping fails with '{stage}: {message}'"),
            )),
            (Some("failed"), RefOutcome::Success(_)) => out.push(Violation::new(
                Invariant::Content,
                [*app],
                format!(
                    "app {app}: logged failed ({}), but the reference mapping succeeds",
                    show(&log.reason)
                ),
            )),
            (Some("failed"), RefOutcome::Failed { .. }) => {
                let ok = log
                    .reason
                    .as_deref()
                    .is_some_and(|r| ["parse:", "map:", "write:"].iter().any(|p| r.starts_with(p)));
                if !ok {
                    out.push(Violation::new(
                        Invariant::Content,
                        [*app],
                        format!("app {app}: failure_reason {} does not start with parse:, map: or write:", show(&log.reason)),
                    ));
                }
            }
            (Some("success"), RefOutcome::Success(tables)) => {
                if let Some(msg) = first_difference(ctx, stored, *app, tables) {
                    out.push(Violation::new(Invariant::Content, [*app], msg));
                }
            }
            _ => {}
        }
    }

    // Rows of app-keyed tables the reference does not expect from the successful app that owns them.
    for t in ctx.contract.tables.iter().filter(|t| !t.shared) {
        let Some(st) = stored.get(&t.name) else {
            continue;
        };
        let mut extra: BTreeMap<i64, (usize, String)> = BTreeMap::new();
        for (i, key) in st.keys.iter().enumerate() {
            let Some(owner) = st.owners.get(i).copied().flatten() else {
                continue;
            };
            if !ctx.is_success(owner) {
                continue;
            }
            let expected = ctx
                .ref_rows(owner, &t.name)
                .is_some_and(|rows| rows.iter().any(|r| &r.key == key));
            if !expected {
                let e = extra.entry(owner).or_insert_with(|| (0, key_text(key)));
                e.0 += 1;
            }
        }
        for (owner, (n, first)) in extra {
            out.push(extra_rows_violation(t, owner, n, &first));
        }
    }
    out
}

fn extra_rows_violation(t: &RefTable, owner: i64, n: usize, first: &str) -> Violation {
    Violation::new(
        Invariant::Content,
        [owner],
        format!("app {owner}: {n} unexpected {} rows, first {first}", t.name),
    )
}

/// The first column of a successful app's expected rows that differs from what is stored.
fn first_difference(
    ctx: &Ctx,
    stored: &BTreeMap<String, StoredTable>,
    app: i64,
    tables: &BTreeMap<String, Vec<RefRow>>,
) -> Option<String> {
    // Shared tables are compared after the chunks, by `check_shared_rows`.
    for t in ctx.contract.tables.iter().filter(|t| !t.shared) {
        let Some(st) = stored.get(&t.name) else {
            continue;
        };
        let rows = tables.get(&t.name).map(Vec::as_slice).unwrap_or(&[]);
        if rows.is_empty() {
            continue;
        }
        // (column, its position in the stored rows); a shared row's app key names whichever app wrote it first,
        // so it is checked separately (`check_shared_rows`).
        let cols: Vec<(&String, Option<usize>)> = t
            .columns
            .iter()
            .filter(|col| !(t.shared && **col == ctx.contract.app_key))
            .map(|col| (col, st.columns.iter().position(|c| c == col)))
            .collect();
        for row in rows {
            // A missing row is log-matches-data's finding; duplicates are compared each.
            for idx in st.by_key.get(&row.key).map(Vec::as_slice).unwrap_or(&[]) {
                let Some(stored_row) = st.rows.get(*idx) else {
                    continue;
                };
                for (col, pos) in &cols {
                    let got = pos
                        .and_then(|i| stored_row.get(i))
                        .and_then(Option::as_deref);
                    let want = row.values.get(*col).and_then(Option::as_deref);
                    if got != want {
                        return Some(format!(
                            "app {app}: {}.{col} = {}, expected {} (key {})",
                            t.name,
                            show(&got.map(str::to_owned)),
                            show(&want.map(str::to_owned)),
                            key_text(&row.key)
                        ));
                    }
                }
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------------------------
// shared-entity rows (log-matches-data and content), one streaming pass per table after the chunks

/// Per application, a stored shared row that differs from its expected row: the first such row's columns (kept
/// for the first `MAX_PER_INVARIANT` applications only, to explain them), and how many.
type Diffs = BTreeMap<i64, (usize, Option<Vec<Option<String>>>)>;

/// Every stored row of a shared table, streamed once with its owner. It must be referenced by a successful
/// application (or owned by one: then an unexpected row is content's finding); its app key must name a successful
/// application that references it; and its compared columns must hash like every successful referencing
/// application's expected row (content). Each `shared_refs` entry it matches is marked in `found`, so that
/// `check_shared_missing` can report expected rows that no stored row matched.
fn check_shared_rows(
    reader: &mut dyn Reader,
    contract: &RefContract,
    sql: &Sql,
    ti: usize,
    g: &Global,
    found: &mut [bool],
    out: &mut Collector,
) -> Result<(), CheckError> {
    let Some(t) = contract.tables.get(ti) else {
        return Ok(());
    };
    let app_key = contract.app_key.as_str();
    let pos: Vec<usize> = t
        .key
        .iter()
        .map(|k| t.columns.iter().position(|c| c == k).unwrap_or(0))
        .collect();
    let app_col = t.columns.iter().position(|c| c == app_key);
    let owner_col = t.columns.len();
    let mut bad: BTreeMap<Option<i64>, (usize, String, Vec<i64>)> = BTreeMap::new();
    let mut extra: BTreeMap<i64, (usize, String)> = BTreeMap::new();
    let mut diffs = Diffs::new();
    reader.query_each(&sql.rows_with_owner(contract, t)?, &mut |r| {
        let key: Key = pos.iter().map(|p| r.get(*p).cloned().flatten()).collect();
        let owner = r
            .get(owner_col)
            .cloned()
            .flatten()
            .and_then(|v| v.trim().parse::<i64>().ok());
        let range = g.ref_range(ti, &key);
        let stored_hash = content_hash(t, app_key, |i, _| r.get(i).and_then(Option::as_deref));
        for (e, seen) in g.shared_refs[range.clone()]
            .iter()
            .zip(&mut found[range.clone()])
        {
            *seen = true;
            let app = g.apps.get(e[2] as usize).copied();
            if let (Some(a), true) = (app, e[3] != stored_hash) {
                if g.status(a) == Some("success") {
                    let keep = diffs.len() < MAX_PER_INVARIANT;
                    let d = diffs.entry(a).or_insert_with(|| (0, None));
                    d.0 += 1;
                    if keep && d.1.is_none() {
                        d.1 = Some(r.clone());
                    }
                }
            }
        }
        let refs = g.refs_in(range);
        let owner_ok = owner.is_some_and(|o| g.is_success(o));
        // log-matches-data: referenced by a successful app, or owned by one.
        if !refs.iter().any(|a| g.is_success(*a)) && !owner_ok {
            let e = bad
                .entry(owner)
                .or_insert_with(|| (0, format!("{} {}", t.name, key_text(&key)), Vec::new()));
            e.0 += 1;
            e.2.extend(refs.iter().copied());
        }
        // content: a successful owner's row that no application expects.
        if let (Some(o), true) = (owner, owner_ok) {
            if refs.is_empty() {
                let e = extra.entry(o).or_insert_with(|| (0, key_text(&key)));
                e.0 += 1;
            }
        }
        // content: the app key names a successful application that references the row.
        if let Some(ac) = app_col {
            let good: Vec<i64> = refs.iter().copied().filter(|a| g.is_success(*a)).collect();
            if !good.is_empty() {
                let named = r.get(ac).cloned().flatten();
                let named_id = named.as_deref().and_then(|v| v.trim().parse::<i64>().ok());
                if !named_id.is_some_and(|n| good.contains(&n)) {
                    let msg = format!(
                        "{} {}: {app_key} = {}, which is not a successful application referencing this key (those are: {})",
                        t.name,
                        key_text(&key),
                        show(&named),
                        id_list(&good)
                    );
                    out.push(Violation::new(
                        Invariant::Content,
                        named_id.into_iter().chain(good),
                        msg,
                    ));
                }
            }
        }
        Ok(())
    })?;
    for (owner, (n, first, refs)) in bad {
        let state = owner_state(
            owner.and_then(|o| g.status(o)),
            owner.is_some_and(|o| g.has_log(o)),
            owner,
        );
        out.push(owner_violation(t, owner, n, &first, state, refs));
    }
    for (owner, (n, first)) in extra {
        out.push(extra_rows_violation(t, owner, n, &first));
    }
    for (app, (n, row)) in diffs {
        let detail = match row {
            Some(row) => shared_difference(reader, contract, sql, t, app, &row)?,
            None => None,
        };
        let msg = detail.unwrap_or_else(|| {
            format!(
                "app {app}: {n} stored {} rows differ from the reference mapping's",
                t.name
            )
        });
        out.push(Violation::new(Invariant::Content, [app], msg));
    }
    Ok(())
}

/// The reference outcome of one application, mapped again from its document: shared rows are compared by hash,
/// so a violation's details (which column, which key) come from a second mapping of the one application involved.
fn remap(
    reader: &mut dyn Reader,
    contract: &RefContract,
    sql: &Sql,
    app: i64,
) -> Result<Option<BTreeMap<String, Vec<RefRow>>>, CheckError> {
    let docs = read_page(reader, contract, sql, app.checked_sub(1), 1)?;
    Ok(match docs.first() {
        Some((id, xml)) if *id == app => match reference_map(contract, app, xml) {
            RefOutcome::Success(tables) => Some(tables),
            RefOutcome::Failed { .. } => None,
        },
        _ => None,
    })
}

/// The first column in which the stored shared row `row` (columns in contract order) differs from `app`'s
/// expected row of the same key, as `first_difference` words it.
fn shared_difference(
    reader: &mut dyn Reader,
    contract: &RefContract,
    sql: &Sql,
    t: &RefTable,
    app: i64,
    row: &[Option<String>],
) -> Result<Option<String>, CheckError> {
    let Some(tables) = remap(reader, contract, sql, app)? else {
        return Ok(None);
    };
    let pos: Vec<usize> = t
        .key
        .iter()
        .map(|k| t.columns.iter().position(|c| c == k).unwrap_or(0))
        .collect();
    let key: Key = pos.iter().map(|p| row.get(*p).cloned().flatten()).collect();
    let Some(want_row) = tables
        .get(&t.name)
        .and_then(|rows| rows.iter().find(|r| r.key == key))
    else {
        return Ok(None);
    };
    for (i, col) in t.columns.iter().enumerate() {
        if *col == contract.app_key {
            continue;
        }
        let got = row.get(i).cloned().flatten();
        let want = want_row.values.get(col).cloned().flatten();
        if got != want {
            return Ok(Some(format!(
                "app {app}: {}.{col} = {}, expected {} (key {})",
                t.name,
                show(&got),
                show(&want),
                key_text(&key)
            )));
        }
    }
    Ok(None)
}

/// log-matches-data for shared tables: an application logged success whose expected shared rows were not all
/// matched by a stored row (`found`, filled by `check_shared_rows`).
fn check_shared_missing(
    reader: &mut dyn Reader,
    contract: &RefContract,
    sql: &Sql,
    g: &Global,
    found: &[bool],
    out: &mut Collector,
) -> Result<(), CheckError> {
    // App → (missing rows, key hash of one of them).
    let mut missing: BTreeMap<i64, (usize, (u32, u32))> = BTreeMap::new();
    for (e, _) in g.shared_refs.iter().zip(found).filter(|(_, f)| !**f) {
        let Some(app) = g.apps.get(e[2] as usize).copied() else {
            continue;
        };
        if g.status(app) == Some("success") {
            missing.entry(app).or_insert((0, (e[0], e[1]))).0 += 1;
        }
    }
    for (i, (app, (n, hash))) in missing.into_iter().enumerate() {
        let first = if i < MAX_PER_INVARIANT {
            missing_row(reader, contract, sql, app, hash)?
        } else {
            None
        };
        let first = first.unwrap_or_else(|| "a shared row".to_owned());
        let msg =
            format!("app {app}: logged success but {n} expected rows are missing, first {first}");
        out.push(Violation::new(Invariant::LogMatchesData, [app], msg));
    }
    Ok(())
}

/// `table (key)` of `app`'s expected shared row whose key hashes to `hash`.
fn missing_row(
    reader: &mut dyn Reader,
    contract: &RefContract,
    sql: &Sql,
    app: i64,
    hash: (u32, u32),
) -> Result<Option<String>, CheckError> {
    let Some(tables) = remap(reader, contract, sql, app)? else {
        return Ok(None);
    };
    for (ti, t) in contract.tables.iter().enumerate().filter(|(_, t)| t.shared) {
        for row in tables.get(&t.name).map(Vec::as_slice).unwrap_or(&[]) {
            let [hi, lo, _, _] = ref_entry(key_hash(ti, &row.key), 0, 0);
            if (hi, lo) == hash {
                return Ok(Some(format!("{} {}", t.name, key_text(&row.key))));
            }
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------------------------
// fencing

/// (a) every fenced log row matches its claim's final owner and fence; (b) no commit after losing the lease.
fn check_fencing(
    reader: &mut dyn Reader,
    sql: &Sql,
    events: &[Event],
) -> Result<Vec<Violation>, CheckError> {
    let mut out = Collector::default();
    let claims_present = exists(reader, &sql.table_exists(CLAIM_TABLE)?)?
        && exists(reader, &sql.column_exists(LOG_TABLE, "fence")?)?
        && reader
            .query_text(&sql.count(CLAIM_TABLE)?)?
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
            > 0;
    if claims_present {
        reader.query_each(&sql.fenced_log_vs_claim()?, &mut |r| {
            let app = parse_id(&r[0], "processing_log")?;
            let (session, fence, owner, cfence) = (&r[1], &r[2], &r[3], &r[4]);
            if owner.is_none() {
                out.push(Violation::new(
                    Invariant::Fencing,
                    [app],
                    format!(
                        "app {app}: logged with fence {} but has no claim row",
                        show(fence)
                    ),
                ));
            } else if owner != session || fence != cfence {
                out.push(Violation::new(
                    Invariant::Fencing,
                    [app],
                    format!(
                        "app {app}: logged by session {} with fence {}, but the claim is held by {} with fence {}",
                        show(session),
                        show(fence),
                        show(owner),
                        show(cfence)
                    ),
                ));
            }
            Ok(())
        })?;
    }
    out.extend(check_fencing_events(events));
    Ok(out.finish())
}

/// The database's storage must be intact after processes were killed mid-write (the reader says how, or that a
/// server needs nothing: `Reader::storage_problems`). A damaged file makes every other finding moot, so it is
/// reported as `content`.
fn check_file_integrity(reader: &mut dyn Reader) -> Result<Vec<Violation>, CheckError> {
    let problems = reader.storage_problems()?;
    if problems.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![Violation::new(
        Invariant::Content,
        Vec::<i64>::new(),
        format!(
            "the database file failed its integrity check: {}",
            problems.join("; ")
        ),
    )])
}

/// (ts_us, session, fence) of one `claimed` entry.
type Claim<'e> = (i64, &'e str, Option<i64>);

/// (ts_us, fence held) of one `lease_lost` entry.
type Loss = (i64, Option<i64>);

/// From the event streams alone: a commit of X by S is fenced wrongly if another session claimed X with a higher
/// fence before it, or if S lost the lease on X and committed it without claiming it again.
fn check_fencing_events(events: &[Event]) -> Vec<Violation> {
    // app → (ts, session, fence) of every claim.
    let mut claims: HashMap<i64, Vec<Claim<'_>>> = HashMap::new();
    // (app, session) → (ts, fence held) of every lease_lost.
    let mut lost: HashMap<(i64, &str), Vec<Loss>> = HashMap::new();
    for e in events {
        match e.kind() {
            EventKind::Claimed => {
                for (i, app) in e.app_ids.iter().enumerate() {
                    claims.entry(*app).or_default().push((
                        e.ts_us,
                        &e.session_id,
                        e.fences().get(i).copied(),
                    ));
                }
            }
            EventKind::LeaseLost => {
                for (i, app) in e.app_ids.iter().enumerate() {
                    lost.entry((*app, &e.session_id))
                        .or_default()
                        .push((e.ts_us, e.fences().get(i).copied()));
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for e in events.iter().filter(|e| e.kind() == EventKind::Committed) {
        let s = e.session_id.as_str();
        let t = e.ts_us;
        for (i, app) in e.app_ids.iter().enumerate() {
            let app_claims = claims.get(app).map(Vec::as_slice).unwrap_or(&[]);
            let own_fence = e.fences().get(i).copied().or_else(|| {
                app_claims
                    .iter()
                    .filter(|(ts, ss, _)| *ss == s && *ts <= t)
                    .max_by_key(|c| c.0)
                    .and_then(|c| c.2)
            });
            // A higher fence claimed before the commit, by another session or by this one (a re-claim of its own
            // expired claim while the old batch was in flight: the old fence must then commit nothing).
            let usurper = app_claims.iter().find(|(ts, ss, f)| {
                *ts < t
                    && match (f, own_fence) {
                        (Some(f), Some(own)) => *f > own,
                        // Without a fence to compare, any other session's claim before the commit is suspect only if
                        // this session never claimed the app itself.
                        _ => *ss != s && !app_claims.iter().any(|(_, ss2, _)| *ss2 == s),
                    }
            });
            if let Some((_, other, f)) = usurper {
                let by = if *other == s {
                    "it had re-claimed it itself".to_owned()
                } else {
                    format!("session {other} had claimed it")
                };
                out.push(Violation::new(
                    Invariant::Fencing,
                    [*app],
                    format!(
                        "app {app}: session {s} committed with fence {} after {by} with fence {}",
                        own_fence.map_or("?".into(), |f| f.to_string()),
                        f.map_or("?".into(), |f| f.to_string())
                    ),
                ));
                continue;
            }
            // A commit after this session lost the lease on the same fence is a commit without the lease. With
            // fences on both events that is exact (a session may lose fence 1 and legitimately commit fence 2 after
            // re-claiming, even when the re-claim's event precedes the loss's); without them, a re-claim between
            // the loss and the commit is required.
            for (lt, lost_fence) in lost.get(&(*app, s)).map(Vec::as_slice).unwrap_or(&[]) {
                if *lt >= t {
                    continue;
                }
                let bad = match (lost_fence, own_fence) {
                    (Some(lf), Some(own)) => *lf >= own,
                    _ => !app_claims
                        .iter()
                        .any(|(ts, ss, _)| *ss == s && *ts > *lt && *ts <= t),
                };
                if bad {
                    out.push(Violation::new(
                        Invariant::Fencing,
                        [*app],
                        format!("app {app}: session {s} reported lease_lost and then committed it"),
                    ));
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
