//! `harness` command line: parsed by clap, validated into plans before anything starts, mapped to the documented
//! exit codes (0 expectations met, 1 invariant violated, 2 usage or scenario error, 3 environment, 4 liveness).

use crate::check;
use crate::db::{self, Backend};
use crate::report;
use crate::runner::{self, ProcessorCmd, RunOptions, ScenarioOutcome, Verdict};
use crate::scenario::{self, Plan, Scenario};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
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
    /// Run scenario files (default: every scenario in ./scenarios, on SQLite).
    Run(RunArgs),
    /// Check the invariants of any database, on its own.
    Check(CheckArgs),
}

#[derive(Debug, Args, Clone)]
pub struct Target {
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: Backend,
    /// Use this server instead of starting one (each run still gets a fresh database).
    #[arg(long)]
    pub db_url: Option<String>,
    /// The processor to test (default: this harness's built-in processor, compiled with crash points).
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

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// sqlite:PATH or postgres://…
    #[arg(long)]
    pub db: String,
    /// Mapping contract (default: the project's).
    #[arg(long)]
    pub contract: Option<PathBuf>,
    /// Events files (JSON lines) to check fencing against.
    #[arg(long)]
    pub events: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn main_with(args: Vec<std::ffi::OsString>) -> ExitCode {
    // `harness processor …` runs the built-in processor: the runner starts itself this way so the processor under
    // test always carries the crash points of this very build.
    if args.get(1).and_then(|a| a.to_str()) == Some("processor") {
        let rest =
            std::iter::once(std::ffi::OsString::from("processor")).chain(args.into_iter().skip(2));
        return processor::cli::main_with(rest);
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let code = match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Check(a) => cmd_check(a),
    };
    ExitCode::from(code)
}

fn processor_cmd(t: &Target) -> Result<ProcessorCmd, u8> {
    match &t.processor_bin {
        Some(p) => Ok(ProcessorCmd::external(p.clone())),
        None => ProcessorCmd::current_exe().map_err(|e| {
            eprintln!("error: cannot locate the harness executable: {e}");
            3
        }),
    }
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
        let s = seed.unwrap_or(1);
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

fn cmd_run(a: RunArgs) -> u8 {
    let paths = if a.scenarios.is_empty() {
        vec![PathBuf::from("scenarios")]
    } else {
        a.scenarios.clone()
    };
    let plans = match load_plans(&paths, a.seed) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let processor = match processor_cmd(&a.target) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let backend = a.target.backend;
    let mut launcher = match db::launch(backend, a.target.db_url.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: environment: {e}");
            return 3;
        }
    };
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
    for plan in &plans {
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
    println!("{passed} passed, {} failed", plans.len() - passed);
    if a.keep {
        eprintln!("databases kept: {}", launcher.describe());
    }
    if env_error {
        return 3;
    }
    if outcomes
        .iter()
        .any(|o| matches!(o.verdict, Verdict::Fail | Verdict::Invalid))
    {
        return 1;
    }
    if outcomes.iter().any(|o| o.verdict == Verdict::Liveness) {
        return 4;
    }
    0
}

fn cmd_check(a: CheckArgs) -> u8 {
    let contract = match &a.contract {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read contract {}: {e}", p.display());
                return 2;
            }
        },
        None => fixtures::CONTRACT_JSON.to_owned(),
    };
    let mut events = Vec::new();
    for p in &a.events {
        match processor::events::read_file(p) {
            Ok(mut e) => events.append(&mut e),
            Err(e) => {
                eprintln!("error: cannot read events {}: {e}", p.display());
                return 2;
            }
        }
    }
    events.sort_by_key(|e| e.ts_us);
    let mut reader = match check::open_reader(&a.db) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: environment: {e}");
            return 3;
        }
    };
    let report = match check::check_database(reader.as_mut(), &contract, &events) {
        Ok(r) => r,
        Err(check::CheckError::Contract(m)) => {
            eprintln!("error: bad contract: {m}");
            return 2;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 3;
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
        if report.violations.is_empty() {
            println!("✓ every invariant holds");
        }
    }
    u8::from(!report.violations.is_empty())
}
