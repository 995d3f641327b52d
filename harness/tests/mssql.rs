//! SQL Server leg of the harness: real scenarios (processor child processes, crash points, the checker's
//! `MssqlReader`) against a real server. Needs `SHREDPROOF_MSSQL_URL` (a login that may create databases), or a
//! private Babelfish installed in /opt/babelfish, or a build with `--features testcontainers` on a machine whose
//! Docker engine answers; otherwise each test is reported as skipped (`harness = false`, `fixtures::trial`), a
//! failure under SHREDPROOF_REQUIRE_MSSQL=1. Must not print the URL (it holds a password).

use harness::db::{self, Backend, Launcher};
use harness::runner::{self, ProcessorCmd, RunOptions, Verdict};
use std::path::PathBuf;
use std::process::Command;

const ENV: &str = harness::db::mssql::ENV_URL;

fn main() {
    use fixtures::trial::{self, Need};
    // With testcontainers a Docker engine may provide the server, which only starting one can tell.
    let needs: &[Need] = if cfg!(feature = "testcontainers") {
        &[]
    } else {
        &[Need::AnyMssql]
    };
    let mut t: Vec<trial::Trial> = [
        (
            "mssql_crash_scenarios_meet_their_expectations",
            mssql_crash_scenarios_meet_their_expectations as fn(),
        ),
        (
            "mssql_checker_reads_a_fresh_database",
            mssql_checker_reads_a_fresh_database,
        ),
    ]
    .into_iter()
    .map(|(name, f)| trial::trial(name, needs, f))
    .collect();
    let name = "mssql_backend_without_a_server_is_an_environment_error";
    t.push(if cfg!(feature = "testcontainers") {
        trial::skipped(
            name,
            "built with testcontainers: Docker may supply a server",
        )
    } else {
        trial::trial(
            name,
            &[],
            mssql_backend_without_a_server_is_an_environment_error,
        )
    });
    trial::run(t)
}

/// A launcher for the server the tests were listed for: `SHREDPROOF_MSSQL_URL`, a private Babelfish, or (with
/// testcontainers) a container. Failing to get one is a failure, never a skip.
fn launcher(test: &str) -> Box<dyn Launcher> {
    db::launch(Backend::Mssql, None).unwrap_or_else(|e| panic!("{test}: no SQL Server: {e}"))
}

fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scenarios")
        .join(format!("{name}.toml"))
}

/// The processor under test is this package's `harness processor …` (built with crash points), not the test binary.
fn processor_cmd() -> ProcessorCmd {
    ProcessorCmd {
        program: PathBuf::from(env!("CARGO_BIN_EXE_harness")),
        prefix: vec!["processor".into()],
    }
}

fn mssql_crash_scenarios_meet_their_expectations() {
    let test = "mssql_crash_scenarios_meet_their_expectations";
    let mut launcher = launcher(test);
    println!("{test}: {}", launcher.describe());
    let out = tempfile::tempdir().expect("out dir");
    let opts = RunOptions {
        out_dir: out.path().to_owned(),
        processor: processor_cmd(),
        verbose: true,
    };
    // crash-a-queue: killed between data and log in queue mode, must pass every invariant after the rerun.
    // split-crash-a: the replaced system's commit order; the checker must catch exactly these violations.
    for name in ["crash-a-queue", "split-crash-a"] {
        let plans = harness::cli::load_plans(&[scenario(name)], None).expect("scenario loads");
        for plan in &plans {
            let o = runner::run_plan(plan, launcher.as_mut(), &opts)
                .unwrap_or_else(|e| panic!("{name}: the run did not complete: {e}"));
            let violated: Vec<&str> = o.main.violated().iter().map(|i| i.name()).collect();
            println!(
                "{name}: {:?} ({}); violated [{}]; {} events",
                o.verdict,
                o.reason,
                violated.join(", "),
                o.main.events
            );
            assert_eq!(
                o.verdict,
                Verdict::Pass,
                "{name}: {} (violations: {:#?}; logs in {})",
                o.reason,
                o.main.violations,
                o.dir.display()
            );
            assert!(
                o.main.faults.iter().all(|f| f.fired),
                "{name}: a fault did not fire: {:?}",
                o.main.faults
            );
            if name == "split-crash-a" {
                // Pass above means exactly the expected set; say it again in the scenario's own words.
                for want in ["content", "log-matches-data"] {
                    assert!(
                        violated.contains(&want),
                        "{name}: {want} not caught: {violated:?}"
                    );
                }
            }
        }
    }
}

fn mssql_checker_reads_a_fresh_database() {
    let test = "mssql_checker_reads_a_fresh_database";
    let mut launcher = launcher(test);
    let url = launcher
        .fresh_database("checker-smoke")
        .expect("fresh database");
    let harness_bin = env!("CARGO_BIN_EXE_harness");
    // init + load through the processor CLI, then the checker alone: every application is missing its log row.
    for args in [
        vec!["processor", "init", "--db", url.as_str()],
        vec![
            "processor",
            "load",
            "--db",
            url.as_str(),
            "--generate",
            "20",
            "--seed",
            "3",
        ],
    ] {
        let out = Command::new(harness_bin)
            .args(&args)
            .output()
            .expect("spawn");
        assert!(
            out.status.success(),
            "{} failed: {}",
            args[1],
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut reader = harness::check::open_reader(&url).expect("checker connects");
    let report = harness::check::check_database(reader.as_mut(), fixtures::CONTRACT_JSON, &[])
        .expect("checker runs");
    assert_eq!(report.stats.apps, 20);
    assert_eq!(report.stats.missing, 20);
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.invariant == harness::check::Invariant::Coverage),
        "{:?}",
        report.violations
    );
}

/// Without a server the CLI must fail as an environment error (exit 3) that says what to provide: never a pass.
fn mssql_backend_without_a_server_is_an_environment_error() {
    // No URL, and a Babelfish prefix with nothing installed in it (the real one may be in /opt/babelfish).
    let empty = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["run", "--backend", "mssql"])
        .arg(scenario("crash-a-queue"))
        .env_remove(ENV)
        .env("SHREDPROOF_BABELFISH_PREFIX", empty.path())
        .output()
        .expect("spawn harness");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(ENV), "{stderr}");
    assert!(stderr.contains("babelfish/install.sh"), "{stderr}");
    assert!(stderr.contains("--features testcontainers"), "{stderr}");
}
