//! `harness bench`: end-to-end throughput of 1..N processor instances per coordination mode on a fresh database each,
//! against the storage limit (a bulk load of the same rows) on the same server; writes JSON, Markdown and an SVG plot.
//! It measures; it never checks invariants (that is `harness run`) and never changes the processor's write path.
//!
//! Definitions (also written into every report):
//! * **apps/s** — applications given a terminal log row ÷ wall time from spawning the instances to the last exit.
//! * **commit-interval latency** — for every application in a `committed` event, the time since the same
//!   instance's previous `committed` (or `started`) event: how long the application's batch occupied the write
//!   stage. With the pipelined engine an application also spends about one such interval being mapped, so its
//!   time inside the processor is roughly twice this figure.
//! * **claim→commit latency** (queue mode only, where `claimed` events exist) — from the claim of an application
//!   to the commit of its log row: the whole in-processor time.
//! * **CPU** — user+system seconds of the processor children (`getrusage(RUSAGE_CHILDREN)`), and the machine's
//!   busy share over the run from `/proc/stat` (includes the database server when it runs on this machine).
//! * **first/last 10 %** — applications/s over the first and last tenth of committed applications (the first
//!   window starts at the first commit, so process start-up does not count against it).
//! * **storage limit** — the same mapped rows and log rows in one transaction: PostgreSQL `COPY … FROM STDIN`,
//!   SQLite the store's own prepared multi-row inserts. Only the database calls are timed.

mod markdown;
mod proc;
mod stats;
mod svg;

use markdown::splice_markdown;
pub use markdown::{markdown, table};
use proc::{children_cpu_secs, cpu_jiffies, machine};
use stats::event_stats;
use svg::plot;

use crate::db::{self, Backend};
use crate::runner::ProcessorCmd;
use anyhow::{anyhow, bail, Context, Result};
use processor::contract::Contract;
use processor::engine::Mode;
use processor::events::{Event, EventKind};
use processor::store::{DbUrl, LogRow, LogStatus, Store};
use processor::value::Value;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Documents generated, mapped and written per chunk (bounds memory for long runs).
const CHUNK_APPS: usize = 5_000;
/// Markers around the generated part of a Markdown file given to `--markdown-into`; text outside them is kept.
pub const MD_BEGIN: &str = "<!-- harness bench: generated section begin -->";
pub const MD_END: &str = "<!-- harness bench: generated section end -->";

/// A validated `harness bench` configuration. `Debug` shows `db_url` with its password as `***`.
#[derive(Clone)]
pub struct BenchConfig {
    pub backend: Backend,
    pub db_url: Option<String>,
    pub apps: usize,
    pub instances: Vec<u32>,
    pub modes: Vec<Mode>,
    pub out: PathBuf,
    pub seed: u64,
    pub batch_size: usize,
    pub workers: Option<usize>,
    pub processor: ProcessorCmd,
    pub markdown_into: Option<PathBuf>,
    /// Real-shaped documents: the samples under this folder, cycled (see [`Workload`]).
    pub real_docs: Option<PathBuf>,
    /// The mapping contract (default: the project's own). Under another contract the real documents are used as
    /// they are (only their application and contact ids are renumbered per copy).
    pub contract: Option<PathBuf>,
    /// The command line that produced this report, for reproduction (a `--db-url` password shown as `***`).
    pub command: String,
}

impl std::fmt::Debug for BenchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchConfig")
            .field("backend", &self.backend)
            .field(
                "db_url",
                &self
                    .db_url
                    .as_deref()
                    .map(processor::store::url::redact_url),
            )
            .field("apps", &self.apps)
            .field("instances", &self.instances)
            .field("modes", &self.modes)
            .field("out", &self.out)
            .field("seed", &self.seed)
            .field("batch_size", &self.batch_size)
            .field("workers", &self.workers)
            .field("processor", &self.processor)
            .field("markdown_into", &self.markdown_into)
            .field("real_docs", &self.real_docs)
            .field("contract", &self.contract)
            .field("command", &self.command)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub database: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub mode: String,
    pub instances: u32,
    pub apps: u64,
    /// Of `apps`, how many were logged `failed` (the rest `success`).
    pub failed: u64,
    pub wall_secs: f64,
    pub apps_per_sec: f64,
    pub ratio_to_limit: f64,
    /// Apps/s of this run divided by the same mode's single instance.
    pub scaling_vs_one: Option<f64>,
    pub commit_interval: Latency,
    pub claim_to_commit: Option<Latency>,
    pub processor_cpu_secs: f64,
    pub machine_busy_pct: f64,
    pub collisions: u64,
    pub first_10pct_apps_per_sec: f64,
    pub last_10pct_apps_per_sec: f64,
    pub exit_codes: Vec<Option<i32>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Limit {
    pub method: String,
    pub apps: u64,
    pub rows: u64,
    pub secs: f64,
    pub apps_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub command: String,
    pub generated_at: String,
    pub machine: Machine,
    pub backend: String,
    pub apps: usize,
    /// What the documents are (generated fixture set or real-shaped samples).
    pub workload: String,
    pub seed: u64,
    pub batch_size: usize,
    pub workers: Option<usize>,
    pub limit: Limit,
    pub runs: Vec<RunResult>,
}

/// Runs the whole benchmark and writes its reports. Errors are environment or I/O problems.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    let contract = match &cfg.contract {
        None => Contract::from_json(fixtures::CONTRACT_JSON).context("bad built-in contract")?,
        Some(path) => {
            Contract::from_file(path).with_context(|| format!("bad contract {}", path.display()))?
        }
    };
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("cannot create {}", cfg.out.display()))?;
    let mut launcher =
        db::launch(cfg.backend, cfg.db_url.as_deref()).context("cannot start the database")?;
    eprintln!(
        "bench: {} applications, modes {}, instances {:?} on {}",
        cfg.apps,
        cfg.modes
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(","),
        cfg.instances,
        launcher.describe()
    );
    let mut machine = machine();
    let work = Workload::new(cfg)?;

    eprint!("[limit] bulk load of the same rows … ");
    let url = launcher.fresh_database("bench_limit")?;
    machine.database = db::server_version(&url, &contract)?;
    let limit = storage_limit(&url, &contract, cfg, &work)?;
    eprintln!(
        "{:.0} apps/s ({} rows in {:.2} s, {})",
        limit.apps_per_sec, limit.rows, limit.secs, limit.method
    );

    let total = cfg.modes.len() * cfg.instances.len();
    let mut runs: Vec<RunResult> = Vec::new();
    for (mi, mode) in cfg.modes.iter().enumerate() {
        for (ii, &n) in cfg.instances.iter().enumerate() {
            let k = mi * cfg.instances.len() + ii + 1;
            let name = format!("bench_{}_{n}", mode.as_str());
            eprint!("[{k}/{total}] {} × {n}: loading … ", mode.as_str());
            let url = launcher.fresh_database(&name)?;
            load(&url, &contract, cfg, &work)?;
            let dir = cfg.out.join(&name);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::create_dir_all(&dir)?;
            let mut r = run_instances(cfg, &url, *mode, n, &dir)?;
            r.ratio_to_limit = r.apps_per_sec / limit.apps_per_sec.max(1e-9);
            if let Some(one) = runs
                .iter()
                .find(|x| x.mode == mode.as_str() && x.instances == 1)
            {
                r.scaling_vs_one = Some(r.apps_per_sec / one.apps_per_sec.max(1e-9));
            }
            eprintln!(
                "\r[{k}/{total}] {} × {n}: {:.0} apps/s ({} of {} failed, {:.0} % of the limit), p50 {:.0} ms, p99 {:.0} ms, {:.1} s       ",
                mode.as_str(),
                r.apps_per_sec,
                r.failed,
                r.apps,
                100.0 * r.ratio_to_limit,
                r.commit_interval.p50_ms,
                r.commit_interval.p99_ms,
                r.wall_secs
            );
            runs.push(r);
        }
    }
    let report = BenchReport {
        command: cfg.command.clone(),
        generated_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        machine,
        backend: cfg.backend.as_str().to_owned(),
        apps: cfg.apps,
        workload: work.describe(cfg),
        seed: cfg.seed,
        batch_size: cfg.batch_size,
        workers: cfg.workers,
        limit,
        runs,
    };
    write_reports(cfg, &report)?;
    Ok(report)
}

fn write_reports(cfg: &BenchConfig, report: &BenchReport) -> Result<()> {
    let json = cfg.out.join("bench.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)?)?;
    let md = markdown(report);
    let md_path = cfg.out.join("bench.md");
    std::fs::write(&md_path, &md)?;
    let svg = cfg.out.join("bench.svg");
    plot(report, &svg)?;
    println!("{}", table(report));
    eprintln!(
        "wrote {}, {}, {}",
        json.display(),
        md_path.display(),
        svg.display()
    );
    if let Some(p) = &cfg.markdown_into {
        splice_markdown(p, &md)?;
        eprintln!("updated {}", p.display());
    }
    Ok(())
}

fn open_store(url: &str, contract: &Contract) -> Result<Box<dyn Store>> {
    let u = DbUrl::parse(url)?;
    let mut s = processor::store::open(&u, contract.clone())?;
    s.init_schema()?;
    Ok(s)
}

/// Where the benchmark's documents come from: the seeded generator, or real samples cycled into distinct
/// applications (made mappable by the project's contract, see `fixtures::samples::fit_project_contract`).
enum Workload {
    Generated,
    Real(Vec<fixtures::samples::Sample>),
}

impl Workload {
    fn new(cfg: &BenchConfig) -> Result<Self> {
        let Some(dir) = &cfg.real_docs else {
            return Ok(Workload::Generated);
        };
        let own_contract = cfg.contract.is_none();
        // Under the project's contract: credit-card applications (with contacts) only, made mappable by it (it maps
        // nothing else). Under a given contract (e.g. the replaced system's), the documents as they are.
        let samples: Vec<_> = fixtures::samples::read_samples(dir)
            .into_iter()
            .filter(|s| !own_contract || s.xml.contains("<contact "))
            .map(|s| fixtures::samples::Sample {
                xml: if own_contract {
                    fixtures::samples::fit_project_contract(&s.xml)
                } else {
                    s.xml
                },
                name: s.name,
            })
            .collect();
        if samples.is_empty() {
            bail!("no usable sample document under {}", dir.display());
        }
        Ok(Workload::Real(samples))
    }

    fn describe(&self, cfg: &BenchConfig) -> String {
        match self {
            Workload::Generated => format!(
                "the standard fixture set (seed {}, 5 % malformed, 1 % large)",
                cfg.seed
            ),
            Workload::Real(s) => {
                let avg = s.iter().map(|x| x.xml.len()).sum::<usize>() / s.len().max(1);
                format!(
                    "real-shaped documents: {} samples from {} cycled (average {:.0} KB)",
                    s.len(),
                    cfg.real_docs.as_deref().unwrap_or(Path::new("?")).display(),
                    avg as f64 / 1000.0
                )
            }
        }
    }

    /// Documents `first .. first + n` (app_ids from 1).
    fn chunk(&self, cfg: &BenchConfig, first: usize, n: usize) -> Vec<(i64, String)> {
        match self {
            Workload::Generated => fixtures::generate_iter(&gen_cfg(cfg, first, n))
                .map(|d| (d.app_id, d.xml))
                .collect(),
            Workload::Real(s) => (first..first + n)
                .map(|i| {
                    let id = 1 + i as i64;
                    (
                        id,
                        fixtures::samples::as_application(&s[i % s.len()].xml, id),
                    )
                })
                .collect(),
        }
    }
}

fn gen_cfg(cfg: &BenchConfig, first: usize, count: usize) -> fixtures::GenConfig {
    fixtures::GenConfig {
        count,
        seed: cfg.seed,
        first_app_id: 1 + first as i64,
        ..fixtures::GenConfig::default()
    }
}

/// Loads the workload's documents into `app_xml`.
fn load(url: &str, contract: &Contract, cfg: &BenchConfig, work: &Workload) -> Result<()> {
    let mut s = open_store(url, contract)?;
    // Real documents are ~100× larger: smaller chunks keep memory bounded.
    let step = match work {
        Workload::Generated => CHUNK_APPS,
        Workload::Real(_) => 100,
    };
    for first in (0..cfg.apps).step_by(step) {
        let n = step.min(cfg.apps - first);
        s.load_source(&work.chunk(cfg, first, n))?;
    }
    Ok(())
}

/// The storage path's limit: the rows the processor would write for the same applications, loaded in bulk in one
/// transaction. Generation and mapping happen between the timed database calls.
fn storage_limit(
    url: &str,
    contract: &Contract,
    cfg: &BenchConfig,
    work: &Workload,
) -> Result<Limit> {
    let mut loader = db::bulk_loader(url, contract)?;
    let mut timed = Duration::ZERO;
    let mut rows = 0u64;
    let mut seen: Vec<HashSet<Vec<Option<String>>>> = vec![HashSet::new(); contract.tables.len()];
    let step = match work {
        Workload::Generated => CHUNK_APPS,
        Workload::Real(_) => 100,
    };
    for first in (0..cfg.apps).step_by(step) {
        let n = step.min(cfg.apps - first);
        let mut per_table: Vec<Vec<Vec<Value>>> = vec![Vec::new(); contract.tables.len()];
        let mut logs = Vec::with_capacity(n);
        for (app_id, xml) in work.chunk(cfg, first, n) {
            let (status, reason, coerced) =
                match processor::mapping::map_document(contract, app_id, &xml) {
                    Ok(m) => {
                        let coerced = i32::try_from(m.coerced).unwrap_or(i32::MAX);
                        for (t, trows) in m.rows.into_iter().enumerate() {
                            for r in trows {
                                // Shared entities are insert-if-absent in the processor; COPY cannot skip, so
                                // duplicates are dropped here by natural key.
                                if contract.tables[t].shared {
                                    let key: Vec<Option<String>> = contract.tables[t]
                                        .key
                                        .iter()
                                        .map(|&k| r[k].canonical())
                                        .collect();
                                    if !seen[t].insert(key) {
                                        continue;
                                    }
                                }
                                per_table[t].push(r);
                            }
                        }
                        (LogStatus::Success, None, coerced)
                    }
                    Err(f) => (LogStatus::Failed, Some(f.reason()), 0),
                };
            logs.push(LogRow {
                app_id,
                status,
                reason,
                attempts: 1,
                instance_id: 0,
                session_id: "bench-limit".into(),
                fence: None,
                coerced,
            });
        }
        rows += logs.len() as u64 + per_table.iter().map(|t| t.len() as u64).sum::<u64>();
        timed += loader.load(&per_table, &logs)?;
    }
    let method = loader.method();
    timed += loader.commit()?;
    let secs = timed.as_secs_f64();
    Ok(Limit {
        method: method.into(),
        apps: cfg.apps as u64,
        rows,
        secs,
        apps_per_sec: cfg.apps as f64 / secs.max(1e-9),
    })
}

fn run_instances(
    cfg: &BenchConfig,
    url: &str,
    mode: Mode,
    n: u32,
    dir: &Path,
) -> Result<RunResult> {
    let cpu0 = children_cpu_secs();
    let (busy0, total0) = cpu_jiffies();
    let start = Instant::now();
    let mut children: Vec<Child> = Vec::new();
    let mut events_files = Vec::new();
    for i in 0..n {
        let events = dir.join(format!("events-{i}.jsonl"));
        let log = std::fs::File::create(dir.join(format!("instance-{i}.log")))?;
        let mut cmd = cfg.processor.command();
        // In the environment, not on the command line: other users can read command lines.
        cmd.arg("run")
            .env(processor::store::url::DB_ENV, url)
            .arg("--mode")
            .arg(mode.as_str())
            .arg("--instance-id")
            .arg(i.to_string())
            .arg("--instance-count")
            .arg(n.to_string())
            .arg("--batch-size")
            .arg(cfg.batch_size.to_string())
            .arg("--events")
            .arg(&events)
            .arg("--log-level")
            .arg("warn")
            .args(
                cfg.contract
                    .iter()
                    .flat_map(|c| [std::ffi::OsStr::new("--contract"), c.as_os_str()]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(w) = cfg.workers {
            cmd.arg("--workers").arg(w.to_string());
        }
        children.push(
            cmd.spawn()
                .with_context(|| format!("cannot start {}", cfg.processor.program.display()))?,
        );
        events_files.push(events);
    }
    let mut codes: Vec<Option<Option<i32>>> = vec![None; children.len()];
    let mut last_tick = Instant::now();
    while codes.iter().any(Option::is_none) {
        for (c, code) in children.iter_mut().zip(codes.iter_mut()) {
            if code.is_none() {
                if let Some(st) = c.try_wait()? {
                    *code = Some(st.code());
                }
            }
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            let finished = codes.iter().filter(|c| c.is_some()).count();
            eprint!(
                "\r  {} × {n}: running {:.0} s, {finished}/{n} finished      ",
                mode.as_str(),
                start.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = start.elapsed().as_secs_f64();
    let (busy1, total1) = cpu_jiffies();
    let cpu = children_cpu_secs() - cpu0;
    let exit_codes: Vec<Option<i32>> = codes.into_iter().flatten().collect();
    if exit_codes.iter().any(|c| *c != Some(0)) {
        bail!(
            "a processor instance failed ({exit_codes:?}); see {}",
            dir.display()
        );
    }
    let mut events: Vec<Event> = Vec::new();
    for f in &events_files {
        events.extend(processor::events::read_file(f)?);
    }
    events.sort_by_key(|e| e.ts_us);
    let stats = event_stats(&events)?;
    Ok(RunResult {
        mode: mode.as_str().to_owned(),
        instances: n,
        apps: stats.apps,
        failed: stats.failed,
        wall_secs: wall,
        apps_per_sec: stats.apps as f64 / wall.max(1e-9),
        ratio_to_limit: 0.0,
        scaling_vs_one: None,
        commit_interval: stats.commit_interval,
        claim_to_commit: stats.claim_to_commit,
        processor_cpu_secs: cpu,
        machine_busy_pct: 100.0 * (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64,
        collisions: stats.collisions,
        first_10pct_apps_per_sec: stats.first_10,
        last_10pct_apps_per_sec: stats.last_10,
        exit_codes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, session: &str, ts_us: i64, ids: Vec<i64>) -> Event {
        let mut e = Event::new(processor::events::Body::bare(kind), 0, session, ids);
        e.ts_us = ts_us;
        e
    }

    #[test]
    fn stats_from_events() {
        let events = vec![
            ev(EventKind::Started, "a", 0, vec![]),
            ev(EventKind::Claimed, "a", 0, (1..=10).collect()),
            ev(EventKind::Committed, "a", 1_000_000, (1..=10).collect()),
            ev(EventKind::Committed, "a", 3_000_000, (11..=20).collect()),
            ev(EventKind::Committed, "a", 4_000_000, (21..=30).collect()),
            ev(EventKind::Failed, "a", 4_000_000, vec![22, 27]),
        ];
        let s = event_stats(&events).expect("stats");
        assert_eq!(s.apps, 30);
        assert_eq!(s.failed, 2);
        assert_eq!(s.commit_interval.p50_ms, 1000.0);
        assert_eq!(s.commit_interval.p99_ms, 2000.0);
        assert_eq!(s.claim_to_commit.as_ref().map(|l| l.p50_ms), Some(1000.0));
        // First window starts at the first commit (1 s): 10 more apps by 3 s.
        assert!((s.first_10 - 5.0).abs() < 1e-9, "{}", s.first_10);
        // Last window: from the commit at 3 s (20 apps) to the last at 4 s.
        assert!((s.last_10 - 10.0).abs() < 1e-9, "{}", s.last_10);
    }

    #[test]
    fn copy_text_escapes() {
        let rows = vec![vec![Some("a\tb\\c".to_owned()), None]];
        let out = db::postgres::copy_text(rows.into_iter().map(Vec::into_iter));
        assert_eq!(out, b"a\\tb\\\\c\t\\N\n");
    }

    #[test]
    fn splice_keeps_prose_and_replaces_own_section() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("B.md");
        std::fs::write(&p, "# Title\n\nprose\n").expect("write");
        splice_markdown(&p, "### `bench x` — a\nv1\n").expect("splice");
        splice_markdown(&p, "### `bench y` — b\nw1\n").expect("splice");
        splice_markdown(&p, "### `bench x` — a\nv2\n").expect("splice");
        let s = std::fs::read_to_string(&p).expect("read");
        assert!(s.starts_with("# Title\n\nprose\n"));
        assert!(
            s.contains("v2") && !s.contains("v1") && s.contains("w1"),
            "{s}"
        );
    }
}
