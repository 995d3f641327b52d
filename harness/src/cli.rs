//! `harness` command line: parsed by clap, validated into plans before anything starts, mapped to the documented
//! exit codes (0 expectations met, 1 invariant violated, 2 usage or scenario error, 3 environment, 4 liveness).

use crate::check;
use crate::db::{self, Backend};
use crate::exit::Exit;
use crate::report;
use crate::runner::{self, ProcessorCmd, RunOptions, ScenarioOutcome, Verdict};
use crate::scenario::{self, Plan, Scenario};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "harness",
    version,
    about = "Proves the processor survives crashes, pauses and concurrency"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run scenario files (default: every scenario of this checkout's scenarios/, found from any directory, on SQLite).
    Run(RunArgs),
    /// Check the invariants of any database, on its own.
    Check(CheckArgs),
    /// Random fault schedules from one seed; every run is written as a scenario file and replayable, and a run
    /// that violates an invariant is shrunk to a minimal scenario.
    Explore(ExploreArgs),
    /// Throughput of 1..N instances per coordination mode against the storage limit (JSON, Markdown, SVG).
    Bench(BenchArgs),
}

#[derive(Args, Clone)]
pub struct Target {
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: Backend,
    /// Use this server instead of starting one (each run still gets a fresh database).
    #[arg(long, env = "SHREDPROOF_DB_URL", hide_env_values = true)]
    pub db_url: Option<String>,
    /// The processor to test (default: this harness's built-in processor, the only one with crash points).
    #[arg(long, env = "SHREDPROOF_PROCESSOR_BIN")]
    pub processor_bin: Option<PathBuf>,
    /// Output directory for summaries, events, logs.
    #[arg(long, default_value = "target/harness")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario files or directories.
    pub scenarios: Vec<PathBuf>,
    #[command(flatten)]
    pub target: Target,
    /// Seed for fixtures and random schedules (default: each scenario's own, or 1).
    #[arg(long)]
    pub seed: Option<u64>,
    /// JUnit XML report (default: <out>/junit.xml).
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Keep the databases after the run.
    #[arg(long)]
    pub keep: bool,
    /// Print each fault as it fires.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Args)]
pub struct CheckArgs {
    /// sqlite:PATH, postgres://…, mssql://… or an ADO.NET connection string.
    #[arg(long, env = "SHREDPROOF_DB", hide_env_values = true)]
    pub db: String,
    /// Mapping contract (default: the project's). Any contract the processor accepts.
    #[arg(long)]
    pub contract: Option<PathBuf>,
    /// A no-fault run of the same documents under the same contract (sqlite:PATH or postgres://…). Under a
    /// contract outside the reference mapping's format (the project's), `content` is judged against it.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Events files (JSON lines) to check fencing against.
    #[arg(long)]
    pub events: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A connection string as `Debug` shows it: through the processor's one redactor, the password as `***`.
fn shown(url: &str) -> String {
    processor::store::url::redact_url(url)
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("backend", &self.backend)
            .field("db_url", &self.db_url.as_deref().map(shown))
            .field("processor_bin", &self.processor_bin)
            .field("out", &self.out)
            .finish()
    }
}

impl std::fmt::Debug for CheckArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckArgs")
            .field("db", &shown(&self.db))
            .field("contract", &self.contract)
            .field("baseline", &self.baseline.as_deref().map(shown))
            .field("events", &self.events)
            .field("json", &self.json)
            .finish()
    }
}

pub fn main_with(args: Vec<std::ffi::OsString>) -> ExitCode {
    // `harness processor …` runs the built-in processor: the runner starts itself this way so the processor under
    // test always carries the crash points of this very build.
    if args.get(1).and_then(|a| a.to_str()) == Some("processor") {
        let rest =
            std::iter::once(std::ffi::OsString::from("processor")).chain(args.into_iter().skip(2));
        crate::crash_hook::install();
        return processor::cli::main_with(rest);
    }
    install_log();
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            }
            .into();
        }
    };
    let code = match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Check(a) => cmd_check(a),
        Command::Explore(a) => cmd_explore(a),
        Command::Bench(a) => cmd_bench(a),
    };
    code.into()
}

/// The harness's own diagnostics (the fault proxy's warnings): to stderr, level from `HARNESS_LOG` (an
/// `EnvFilter`, default `warn`). Installed only here, never for `harness processor …`, which installs its own.
fn install_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HARNESS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn processor_cmd(t: &Target) -> Result<ProcessorCmd, Exit> {
    match &t.processor_bin {
        Some(p) => Ok(ProcessorCmd::external(p.clone())),
        None => ProcessorCmd::current_exe().map_err(|e| {
            eprintln!("error: cannot locate the harness executable: {e}");
            Exit::Environment
        }),
    }
}

/// The processor under test and a started database launcher, or the exit code saying why not (3: environment).
fn setup(t: &Target) -> Result<(ProcessorCmd, Box<dyn db::Launcher>), Exit> {
    let processor = processor_cmd(t)?;
    let launcher = db::launch(t.backend, t.db_url.as_deref()).map_err(|e| {
        eprintln!("error: environment: {e}");
        Exit::Environment
    })?;
    Ok((processor, launcher))
}

/// Loads and validates every scenario before anything starts.
pub fn load_plans(
    paths: &[PathBuf],
    seed: Option<u64>,
) -> Result<Vec<Plan>, scenario::ScenarioError> {
    let files = scenario::collect_files(paths)?;
    let mut plans = Vec::new();
    for f in files {
        let sc = Scenario::from_file(&f)?;
        let s = seed.or(sc.seed).unwrap_or(1);
        plans.push(sc.plan(s, Some(f))?);
    }
    let mut names = std::collections::HashSet::new();
    for p in &plans {
        if !names.insert(p.name.clone()) {
            return Err(scenario::ScenarioError::Invalid {
                name: p.name.clone(),
                problem: "two scenarios share this name".into(),
            });
        }
    }
    Ok(plans)
}

/// Where `harness run` without arguments finds its scenarios, from any directory: `$SHREDPROOF_SCENARIOS`,
/// `./scenarios`, the `scenarios/` of the checkout the current directory is in, then the one this binary was built
/// from. `Err` says how to point at them.
fn default_scenarios() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("SHREDPROOF_SCENARIOS") {
        return Ok(PathBuf::from(d));
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    for dir in cwd.ancestors() {
        let s = dir.join("scenarios");
        if s.is_dir() && (dir == cwd || dir.join("harness").is_dir()) {
            return Ok(s);
        }
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    if built.is_dir() {
        return Ok(built);
    }
    Err("no scenarios/ directory found here, above here, or where this harness was built: pass scenario files \
         or directories (`harness run path/to/scenarios`) or set SHREDPROOF_SCENARIOS"
        .into())
}

fn cmd_run(a: RunArgs) -> Exit {
    let paths = if a.scenarios.is_empty() {
        match default_scenarios() {
            Ok(d) => vec![d],
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Usage;
            }
        }
    } else {
        a.scenarios.clone()
    };
    let plans = match load_plans(&paths, a.seed) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage;
        }
    };
    let (processor, mut launcher) = match setup(&a.target) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let backend = a.target.backend;
    eprintln!(
        "harness: {} scenario(s) on {}",
        plans.len(),
        launcher.describe()
    );
    let opts = RunOptions {
        out_dir: a.target.out.clone(),
        processor,
        verbose: a.verbose,
    };
    let mut outcomes: Vec<ScenarioOutcome> = Vec::new();
    let mut env_error = false;
    let mut skipped = 0;
    for plan in &plans {
        if let Some(reason) = scenario::skip_reason(plan, backend) {
            println!("SKIP     {:<34} {reason}", plan.name);
            skipped += 1;
            continue;
        }
        eprintln!(
            "running  {} ({} apps, {} instance(s), {}, {} commit, {} fault(s))",
            plan.name,
            plan.apps,
            plan.instances,
            plan.mode.as_str(),
            plan.commit_mode.as_str(),
            plan.faults.len()
        );
        match runner::run_plan(plan, launcher.as_mut(), &opts) {
            Ok(o) => {
                println!("{}", report::terminal_line(&o, backend.as_str()));
                if let Err(e) = report::write_summary(&o, backend.as_str()) {
                    eprintln!("warning: cannot write summary for {}: {e}", plan.name);
                }
                outcomes.push(o);
            }
            Err(e) => {
                eprintln!("ERROR    {}: {e}", plan.name);
                env_error = true;
            }
        }
    }
    let junit = a
        .junit
        .clone()
        .unwrap_or_else(|| a.target.out.join("junit.xml"));
    if let Err(e) = report::write_junit(&junit, &outcomes, backend.as_str()) {
        eprintln!("warning: cannot write {}: {e}", junit.display());
    }
    let passed = outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::Pass)
        .count();
    println!(
        "{passed} passed, {} failed, {skipped} skipped",
        plans.len() - passed - skipped
    );
    if a.keep {
        eprintln!("databases kept: {}", launcher.keep());
    }
    Exit::of_verdicts(outcomes.iter().map(|o| o.verdict), env_error)
}

fn cmd_check(a: CheckArgs) -> Exit {
    let contract = match &a.contract {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read contract {}: {e}", p.display());
                return Exit::Usage;
            }
        },
        None => fixtures::CONTRACT_JSON.to_owned(),
    };
    // The contracts the processor accepts, no more and no fewer: its own loader is the definition. The checker
    // itself never runs processor code.
    if let Err(e) = processor::contract::Contract::from_json(&contract) {
        eprintln!("error: bad contract: the processor refuses it: {e:#}");
        return Exit::Usage;
    }
    let mut events = Vec::new();
    for p in &a.events {
        match processor::events::read_file(p) {
            Ok(mut e) => events.append(&mut e),
            Err(e) => {
                eprintln!("error: cannot read events {}: {e}", p.display());
                return Exit::Usage;
            }
        }
    }
    events.sort_by_key(|e| e.ts_us);
    let mut reader = match check::open_reader(&a.db) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: environment: {e}");
            return Exit::Environment;
        }
    };
    let baseline = match &a.baseline {
        None => None,
        Some(url) => {
            let snap = check::open_reader(url).and_then(|mut r| {
                check::check_database(r.as_mut(), &contract, &[]).map(|rep| rep.snapshot)
            });
            match snap {
                Ok(Some(s)) => Some(s),
                // The reference judges this contract; a baseline adds nothing.
                Ok(None) => {
                    eprintln!("note: --baseline ignored: the reference mapping judges this contract's content");
                    None
                }
                Err(check::CheckError::Contract(m)) => {
                    eprintln!("error: bad contract: {m}");
                    return Exit::Usage;
                }
                Err(e) => {
                    eprintln!("error: baseline: {e}");
                    return Exit::Environment;
                }
            }
        }
    };
    let report =
        match check::check_database_with(reader.as_mut(), &contract, &events, baseline.as_ref()) {
            Ok(r) => r,
            Err(check::CheckError::Contract(m)) => {
                eprintln!("error: bad contract: {m}");
                return Exit::Usage;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Environment;
            }
        };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let s = &report.stats;
        println!(
            "{} applications: {} success, {} failed, {} without a log row",
            s.apps, s.success, s.failed, s.missing
        );
        for (t, n) in &s.rows {
            println!("  {t}: {n} rows");
        }
        for v in &report.violations {
            println!("✗ {}: {}", v.invariant, v.message);
        }
        match &report.content_by {
            check::ContentBy::Reference => {}
            check::ContentBy::Baseline(why) => {
                println!("content judged by comparison with --baseline: {why}")
            }
            check::ContentBy::NotChecked(why) => println!(
                "content NOT checked: {why}; give --baseline DB (a no-fault run of the same documents) to judge it"
            ),
        }
        if report.violations.is_empty() {
            match report.content_by {
                check::ContentBy::NotChecked(_) => {
                    println!("✓ every checked invariant holds (content not checked)")
                }
                _ => println!("✓ every invariant holds"),
            }
        }
    }
    if report.violations.is_empty() {
        Exit::Ok
    } else {
        Exit::Violation
    }
}

#[derive(Debug, Args)]
pub struct ExploreArgs {
    #[command(flatten)]
    pub target: Target,
    /// Number of random schedules to run.
    #[arg(long, default_value_t = 20)]
    pub runs: u32,
    /// Base seed; run i uses a seed derived from (seed, i). Default: drawn from the clock and printed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Commit mode of every explored run (`split` is the replaced system's unsafe order: expect violations).
    #[arg(long, value_enum, default_value = "atomic")]
    pub commit_mode: processor::engine::CommitMode,
    /// Candidate runs allowed while shrinking one failure.
    #[arg(long, default_value_t = 40)]
    pub shrink_attempts: usize,
    /// Keep every failing run in this directory as a scenario file with its seed (the shrunk minimum when its
    /// replay failed the same way, else the drawn one); `harness run DIR` replays them (e.g. `scenarios/corpus`).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Print each fault as it fires.
    #[arg(long, short)]
    pub verbose: bool,
}

fn cmd_explore(a: ExploreArgs) -> Exit {
    use crate::explore::{self, ExploreOptions};
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
    });
    let (processor, mut launcher) = match setup(&a.target) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let backend = a.target.backend;
    eprintln!(
        "harness explore: {} run(s) from seed {seed} on {} ({} commit)",
        a.runs,
        launcher.describe(),
        a.commit_mode.as_str()
    );
    let opts = ExploreOptions {
        runs: a.runs,
        seed,
        target: explore::Target {
            backend,
            can_restart: launcher.capabilities().restart,
            can_lose_unsynced: launcher.capabilities().lose_unsynced,
            commit_mode: a.commit_mode,
        },
        shrink_attempts: a.shrink_attempts,
        corpus: a.corpus.clone(),
        run: RunOptions {
            out_dir: a.target.out.clone(),
            processor,
            verbose: a.verbose,
        },
    };
    let summary = match explore::explore(launcher.as_mut(), &opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Environment;
        }
    };
    let fired: usize = summary.runs.iter().map(|r| r.faults_fired).sum();
    let faults: usize = summary.runs.iter().map(|r| r.faults).sum();
    println!(
        "explore seed {seed}: {} run(s): {} passed, {} failed, {} invalid, {} liveness, {} error(s); faults fired {fired}/{faults}; {} shrunk",
        summary.runs.len() + summary.errors.len(),
        summary.count(Verdict::Pass),
        summary.count(Verdict::Fail),
        summary.count(Verdict::Invalid),
        summary.count(Verdict::Liveness),
        summary.errors.len(),
        summary.shrunk.len()
    );
    for s in &summary.shrunk {
        println!("  minimal failure of {}: {}", s.from, s.replay);
    }
    for c in &summary.corpus {
        println!("  kept in the corpus: {}", c.display());
    }
    summary.exit()
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: Backend,
    /// Use this server instead of starting one (each run still gets a fresh database).
    #[arg(long, env = "SHREDPROOF_DB_URL", hide_env_values = true)]
    pub db_url: Option<String>,
    /// Applications loaded for every run.
    #[arg(long, default_value_t = 20_000)]
    pub apps: usize,
    /// Instance counts to measure, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub instances: Vec<u32>,
    /// Coordination modes to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "uncoordinated,partitioned,queue"
    )]
    pub modes: Vec<processor::engine::Mode>,
    /// Output directory for bench.json, bench.md and bench.svg.
    #[arg(long, default_value = "target/harness/bench")]
    pub out: PathBuf,
    /// Fixture seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The processors' --batch-size.
    #[arg(long, default_value_t = 200)]
    pub batch_size: usize,
    /// The processors' --workers (default: theirs, the number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// The processor to measure (default: this harness's built-in processor).
    #[arg(long, env = "SHREDPROOF_PROCESSOR_BIN")]
    pub processor_bin: Option<PathBuf>,
    /// Also write the results into this Markdown file (e.g. BENCHMARKS.md), replacing this command's section.
    #[arg(long)]
    pub markdown_into: Option<PathBuf>,
    /// Real-shaped documents instead of the generated fixture set: the sample `.xml` files under DIR (e.g.
    /// ../shared/seed/original/samples), cycled until --apps, each copy a distinct application.
    #[arg(long, value_name = "DIR")]
    pub real_docs: Option<PathBuf>,
    /// The mapping contract the processors run and the storage limit maps with (default: the project's own).
    /// With --real-docs and another contract (e.g. ../shared/seed/original/mapping_contract.json) the samples are
    /// used as they are.
    #[arg(long, value_name = "FILE")]
    pub contract: Option<PathBuf>,
}

/// The command line as the report records it: `harness`, then the arguments, a `--db-url` value redacted.
pub fn shown_command(args: impl Iterator<Item = String>) -> String {
    let mut prev_db = false;
    let mut out = Vec::new();
    for (i, s) in args.enumerate() {
        let shown_arg = if i == 0 {
            "harness".to_owned()
        } else if prev_db {
            shown(&s)
        } else if let Some(u) = s.strip_prefix("--db-url=") {
            format!("--db-url={}", shown(u))
        } else {
            s.clone()
        };
        prev_db = s == "--db-url";
        out.push(shown_arg);
    }
    out.join(" ")
}

impl std::fmt::Debug for BenchArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchArgs")
            .field("backend", &self.backend)
            .field("db_url", &self.db_url.as_deref().map(shown))
            .field("apps", &self.apps)
            .field("instances", &self.instances)
            .field("modes", &self.modes)
            .field("out", &self.out)
            .field("seed", &self.seed)
            .field("batch_size", &self.batch_size)
            .field("workers", &self.workers)
            .field("processor_bin", &self.processor_bin)
            .field("markdown_into", &self.markdown_into)
            .field("real_docs", &self.real_docs)
            .field("contract", &self.contract)
            .finish()
    }
}

fn cmd_bench(a: BenchArgs) -> Exit {
    if a.apps == 0 || a.instances.is_empty() || a.instances.contains(&0) || a.modes.is_empty() {
        eprintln!("error: --apps, --instances and --modes must be non-empty and positive");
        return Exit::Usage;
    }
    let processor = match &a.processor_bin {
        Some(p) => ProcessorCmd::external(p.clone()),
        None => match ProcessorCmd::current_exe() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: cannot locate the harness executable: {e}");
                return Exit::Environment;
            }
        },
    };
    // A bad contract is the user's argument: refused here, before any database starts (exit 2).
    if let Some(path) = &a.contract {
        if let Err(e) = processor::contract::Contract::from_file(path) {
            eprintln!("error: --contract {}: {e}", path.display());
            return Exit::Usage;
        }
    }
    let command = shown_command(std::env::args());
    let cfg = crate::bench::BenchConfig {
        backend: a.backend,
        db_url: a.db_url,
        apps: a.apps,
        instances: a.instances,
        modes: a.modes,
        out: a.out,
        seed: a.seed,
        batch_size: a.batch_size,
        workers: a.workers,
        processor,
        markdown_into: a.markdown_into,
        real_docs: a.real_docs,
        contract: a.contract,
        command,
    };
    match crate::bench::run(&cfg) {
        Ok(_) => Exit::Ok,
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Environment
        }
    }
}
