//! Every scenario file is a test: each runs through the real runner, on SQLite always, on a private PostgreSQL
//! cluster when the server binaries exist (required in CI), and on SQL Server (the server at SHREDPROOF_MSSQL_URL,
//! or a private Babelfish from /opt/babelfish for scenarios that restart the server; required in CI with
//! SHREDPROOF_REQUIRE_MSSQL=1), and must meet its own expectation. `harness = false`: the tests are
//! `fixtures::trial`s, so a missing server or a scenario that does not apply to a backend shows as skipped, never
//! as passed.

use fixtures::trial::{self, Need, Trial};
use harness::db::{Backend, Launcher, PgLauncher, SqliteDir};
use harness::runner::{run_plan, ProcessorCmd, RunOptions, Verdict};
use harness::scenario::Scenario;
use std::path::{Path, PathBuf};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn processor() -> ProcessorCmd {
    // The harness binary of this very build, which runs its built-in processor (with crash points).
    ProcessorCmd {
        program: PathBuf::from(env!("CARGO_BIN_EXE_harness")),
        prefix: vec!["processor".into()],
    }
}

fn run_on(file: &str, launcher: &mut dyn Launcher) {
    let path = scenarios_dir().join(file);
    let sc = Scenario::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    let plan = sc
        .plan(1, Some(path.clone()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        harness::scenario::skip_reason(&plan, launcher.backend()).is_none(),
        "{file} was listed as runnable on {}",
        launcher.backend().as_str()
    );
    let out = tempfile::tempdir().expect("temp dir");
    let opts = RunOptions {
        out_dir: out.path().to_owned(),
        processor: processor(),
        verbose: true,
    };
    let o = run_plan(&plan, launcher, &opts).unwrap_or_else(|e| panic!("{file}: {e}"));
    let details: Vec<String> = o
        .main
        .violations
        .iter()
        .map(|v| format!("{}: {}", v.invariant, v.message))
        .collect();
    assert_eq!(
        o.verdict,
        Verdict::Pass,
        "{file} on {}: {}\n{}",
        launcher.backend().as_str(),
        o.reason,
        details.join("\n")
    );
    // A pass must rest on faults that really fired.
    assert!(
        o.main.faults.iter().all(|f| f.fired),
        "{file}: unfired fault in a passing run"
    );
}

fn sqlite(file: &str) {
    let mut l = SqliteDir::new().expect("temp dir");
    run_on(file, &mut l);
}

fn postgres(file: &str) {
    let cluster = fixtures::pg::PgCluster::start()
        .unwrap_or_else(|e| panic!("{file}: could not start a private PostgreSQL cluster: {e}"));
    let mut l = PgLauncher::new(cluster);
    run_on(file, &mut l);
}

/// Why `file` does not apply to `backend` (e.g. a server fault on SQLite), read when the tests are listed.
fn not_applicable(file: &str, backend: Backend) -> Option<String> {
    let path = scenarios_dir().join(file);
    let plan = Scenario::from_file(&path)
        .and_then(|sc| sc.plan(1, Some(path.clone())))
        .ok()?; // an unreadable scenario runs, and fails with its error
    harness::scenario::skip_reason(&plan, backend)
}

fn require_mssql() -> bool {
    Need::Mssql.required()
}

/// Why no SQL Server can run `file` here (listing time): none at SHREDPROOF_MSSQL_URL (or, for a scenario that
/// restarts the server, no private Babelfish in /opt/babelfish).
fn mssql_missing(file: &str) -> Option<String> {
    let path = scenarios_dir().join(file);
    let restarts = Scenario::from_file(&path)
        .and_then(|sc| sc.plan(1, Some(path.clone())))
        .is_ok_and(|p| p.needs_restart());
    let url = std::env::var(harness::db::mssql::ENV_URL).is_ok_and(|u| !u.trim().is_empty());
    if (url && !restarts) || fixtures::babelfish::installed() {
        return None;
    }
    Some(format!(
        "{} is not set and no Babelfish is installed in /opt/babelfish (bash ../shared/tools/babelfish/install.sh)",
        harness::db::mssql::ENV_URL
    ))
}

/// SQL Server: the server at SHREDPROOF_MSSQL_URL when set (one shared server, a fresh database per run), except
/// for scenarios that restart the server, which get a private Babelfish of their own (a restart would disturb
/// every other test on a shared server). Listed as skipped when neither exists (a failure under
/// SHREDPROOF_REQUIRE_MSSQL=1).
fn mssql(file: &str) {
    let path = scenarios_dir().join(file);
    let sc = Scenario::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    let plan = sc.plan(1, Some(path)).unwrap_or_else(|e| panic!("{e}"));
    let url = std::env::var(harness::db::mssql::ENV_URL)
        .ok()
        .filter(|u| !u.trim().is_empty());
    let mut launcher: Box<dyn Launcher> = match url {
        Some(u) if !plan.needs_restart() => Box::new(
            harness::db::mssql::ExternalMssql::new(&u).unwrap_or_else(|e| panic!("{file}: {e}")),
        ),
        _ if fixtures::babelfish::installed() => Box::new(
            harness::db::mssql::BabelfishLauncher::start()
                .unwrap_or_else(|e| panic!("{file}: {e}")),
        ),
        // Listed as runnable only when a server exists or SHREDPROOF_REQUIRE_MSSQL=1: never a silent pass.
        _ => panic!(
            "{file}: SHREDPROOF_REQUIRE_MSSQL=1 but neither {} is set (for a restart: nor is Babelfish installed in \
             /opt/babelfish)",
            harness::db::mssql::ENV_URL
        ),
    };
    run_on(file, launcher.as_mut());
}

macro_rules! scenario_tests {
    ($($name:ident => $file:literal),* $(,)?) => {
        fn trials() -> Vec<Trial> {
            let mut t = Vec::new();
            $(
                let name = concat!("sqlite::", stringify!($name));
                t.push(match not_applicable($file, Backend::Sqlite) {
                    Some(why) => trial::skipped(name, why),
                    None => trial::trial(name, &[], || sqlite($file)),
                });
            )*
            $(
                let name = concat!("postgres::", stringify!($name));
                t.push(match not_applicable($file, Backend::Postgres) {
                    Some(why) => trial::skipped(name, why),
                    None => trial::trial(name, &[Need::Postgres], || postgres($file)),
                });
            )*
            $(
                let name = concat!("mssql::", stringify!($name));
                t.push(match (not_applicable($file, Backend::Mssql), mssql_missing($file)) {
                    (Some(why), _) => trial::skipped(name, why),
                    (None, Some(why)) if !require_mssql() => trial::skipped(name, why),
                    _ => trial::trial(name, &[], || mssql($file)),
                });
            )*
            t.push(trial::trial("every_scenario_file_is_a_test", &[], every_scenario_file_is_a_test));
            t
        }
        const LISTED: &[&str] = &[$($file),*];
    };
}

fn main() {
    trial::run(trials())
}

scenario_tests! {
    any_contract_crash_a_queue => "any-contract-crash-a-queue.toml",
    any_contract_split_crash_a => "any-contract-split-crash-a.toml",
    crash_a_partitioned => "crash-a-partitioned.toml",
    crash_a_queue => "crash-a-queue.toml",
    crash_a_uncoordinated => "crash-a-uncoordinated.toml",
    crash_b_partitioned => "crash-b-partitioned.toml",
    crash_b_queue => "crash-b-queue.toml",
    crash_b_uncoordinated => "crash-b-uncoordinated.toml",
    crash_before_write => "crash-before-write.toml",
    crash_c_partitioned => "crash-c-partitioned.toml",
    crash_c_queue => "crash-c-queue.toml",
    crash_c_uncoordinated => "crash-c-uncoordinated.toml",
    clock_skew_ahead_queue => "clock-skew-ahead-queue.toml",
    clock_skew_behind_queue => "clock-skew-behind-queue.toml",
    crash_points_queue => "crash-points-queue.toml",
    fencing_takeover_queue => "fencing-takeover-queue.toml",
    huge_docs_past_lease_queue => "huge-docs-past-lease-queue.toml",
    pause_past_lease_queue => "pause-past-lease-queue.toml",
    pg_blackhole_queue => "pg-blackhole-queue.toml",
    pg_cut_reply => "pg-cut-reply.toml",
    pg_cut_reply_queue => "pg-cut-reply-queue.toml",
    pg_drop_commit => "pg-drop-commit.toml",
    pg_drop_commit_queue => "pg-drop-commit-queue.toml",
    pg_drop_connections => "pg-drop-connections.toml",
    pg_latency_partitioned => "pg-latency-partitioned.toml",
    pg_net_delay_queue => "pg-net-delay-queue.toml",
    pg_net_loss_partitioned => "pg-net-loss-partitioned.toml",
    pg_net_partition_queue => "pg-net-partition-queue.toml",
    pg_lose_unsynced_queue => "pg-lose-unsynced-queue.toml",
    pg_restart_db => "pg-restart-db.toml",
    random_kill_uncoordinated => "random-kill-uncoordinated.toml",
    real_cc_generated_kills => "real-cc-generated-kills.toml",
    real_cc_queue => "real-cc-queue.toml",
    real_cc_split_crash_a => "real-cc-split-crash-a.toml",
    real_rl_generated_partitioned => "real-rl-generated-partitioned.toml",
    real_rl_queue => "real-rl-queue.toml",
    real_rl_split_crash_a => "real-rl-split-crash-a.toml",
    reclaim_own_expired_queue => "reclaim-own-expired-queue.toml",
    slow_batch_queue => "slow-batch-queue.toml",
    split_crash_a => "split-crash-a.toml",
    split_three_instances => "split-three-instances.toml",
    stress_docs_queue => "stress-docs-queue.toml",
    stress_docs_uncoordinated => "stress-docs-uncoordinated.toml",
    three_instances_partitioned => "three-instances-partitioned.toml",
    three_instances_queue => "three-instances-queue.toml",
    three_instances_uncoordinated => "three-instances-uncoordinated.toml",
}

/// A scenario file nobody runs is a scenario nobody proves: every file must be listed above.
fn every_scenario_file_is_a_test() {
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(scenarios_dir()).expect("scenarios dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".toml") && !LISTED.contains(&name.as_str()) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "scenario files without a test in harness/tests/scenarios.rs: {missing:?}"
    );
}
