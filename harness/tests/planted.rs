//! Each history and process-fate invariant has a test that plants the bug it exists for and sees it caught: the
//! harness's built-in processor carries the bug (`PROCESSOR_PLANT_BUG`, live only in `harness processor …`), a real
//! scenario runs on SQLite (and on a private PostgreSQL cluster when the binaries exist), and the run must fail on
//! exactly that invariant. The same scenarios pass unmodified in `tests/scenarios.rs`, so a catch here is the bug,
//! not noise. `harness = false`: the tests are `fixtures::trial`s (an absent PostgreSQL is skipped, never passed).

use fixtures::trial::{self, Need, Trial};
use harness::check::Invariant;
use harness::db::{Launcher, PgLauncher, SqliteDir};
use harness::runner::{run_plan, ProcessorCmd, RunOptions, ScenarioOutcome, Verdict};
use harness::scenario::Scenario;
use std::path::{Path, PathBuf};

/// The harness binary of this build with one bug planted, through `env` so no test mutates its own environment.
fn planted(bug: &str) -> ProcessorCmd {
    ProcessorCmd {
        program: PathBuf::from("/usr/bin/env"),
        prefix: vec![
            format!("PROCESSOR_PLANT_BUG={bug}"),
            env!("CARGO_BIN_EXE_harness").to_owned(),
            "processor".into(),
        ],
    }
}

fn run(file: &str, bug: &str, launcher: &mut dyn Launcher, out: &Path) -> ScenarioOutcome {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(file);
    let sc = Scenario::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    let plan = sc.plan(1, Some(path)).unwrap_or_else(|e| panic!("{e}"));
    let opts = RunOptions {
        out_dir: out.to_owned(),
        processor: planted(bug),
        verbose: false,
    };
    run_plan(&plan, launcher, &opts).unwrap_or_else(|e| panic!("{file} with {bug}: {e}"))
}

/// Runs `file` with `bug` planted and asserts the run failed with one of `wants` among its violations (several when
/// a race decides which of them shows the bug, e.g. whether the same session or another redoes the work).
fn caught(file: &str, bug: &str, wants: &[Invariant], launcher: &mut dyn Launcher) {
    let out = tempfile::tempdir().expect("temp dir");
    let o = run(file, bug, launcher, out.path());
    let details: Vec<String> = o
        .main
        .violations
        .iter()
        .map(|v| format!("{}: {}", v.invariant, v.message))
        .collect();
    // A bug that shows without faults is caught by the no-fault baseline already (verdict INVALID, which fails the
    // run like FAIL: `harness run` exits 1); otherwise by the faulted run.
    let base: Vec<Invariant> = o
        .baseline
        .iter()
        .flat_map(|b| b.violations.iter().map(|v| v.invariant))
        .collect();
    let hit = wants.iter().copied().find(|w| {
        (o.verdict == Verdict::Fail && o.main.violated().contains(w))
            || (o.verdict == Verdict::Invalid && base.contains(w))
    });
    let names: Vec<String> = wants.iter().map(ToString::to_string).collect();
    assert!(
        hit.is_some(),
        "{file} with {bug} planted on {}: expected {}, got {:?}: {}\n{}",
        launcher.backend().as_str(),
        names.join(" or "),
        o.verdict,
        o.reason,
        details.join("\n")
    );
    // The fault itself fired: the catch rests on the scenario having happened, not on a broken run. (A catch by
    // the no-fault baseline rests on no fault; the faulted run after it may not get far enough to fire any.)
    assert!(
        o.verdict == Verdict::Invalid || !o.main.violated().contains(&Invariant::FaultsFired),
        "{file} with {bug}: {}",
        o.reason
    );
    if let Some(want) = hit {
        html_shows(&o, launcher.backend().as_str(), want);
    }
}

/// `report.html` is written next to `summary.json`, self-contained, with a lane per instance and the planted
/// violation marked.
fn html_shows(o: &ScenarioOutcome, backend: &str, want: Invariant) {
    harness::report::write_summary(o, backend).expect("reports written");
    assert!(o.dir.join("summary.json").is_file());
    let html = std::fs::read_to_string(o.dir.join("report.html")).expect("report.html written");
    assert!(html.contains("<svg"), "no timeline");
    for i in 0..o.plan.instances {
        assert!(
            html.contains(&format!(">instance {i}</text>")),
            "no lane for instance {i}"
        );
    }
    let row = format!("<tr class=\"viol\"><td>{want}</td>");
    assert!(html.contains(&row), "{want} is not in the violations table");
    // Something on the timeline is marked: an event ringed (a violated application) or a process end in red. (A
    // catch by the no-fault baseline alone is in the table; the timeline is the faulted run's.)
    assert!(
        o.verdict == Verdict::Invalid
            || html.contains("class=\"ring\"")
            || html.contains("class=\"endbad\""),
        "no violation marked on the timeline"
    );
    for fetch in ["<script", "src=", "href=", "@import", "url("] {
        assert!(
            !html.contains(fetch),
            "report.html is not self-contained: {fetch}"
        );
    }
}

fn on_sqlite(
    file: &'static str,
    bug: &'static str,
    want: &'static [Invariant],
) -> impl FnOnce() + Send + 'static {
    move || {
        let mut l = SqliteDir::new().expect("temp dir");
        caught(file, bug, want, &mut l);
    }
}

/// What catches `bug` on PostgreSQL, where it may differ from SQLite: without the rollback to its savepoint the
/// transaction stays aborted (the server refuses every later statement), so no partial write can stay; the
/// processor fails instead and the run cannot finish.
fn on_pg(bug: &str, want: &'static [Invariant]) -> &'static [Invariant] {
    match bug {
        "no-savepoint-rollback" => &[Invariant::Liveness],
        _ => want,
    }
}

fn on_postgres(
    file: &'static str,
    bug: &'static str,
    want: &'static [Invariant],
) -> impl FnOnce() + Send + 'static {
    move || {
        let cluster = fixtures::pg::PgCluster::start()
            .unwrap_or_else(|e| panic!("could not start a private PostgreSQL cluster: {e}"));
        let mut l = PgLauncher::new(cluster);
        caught(file, bug, on_pg(bug, want), &mut l);
    }
}

/// (test name, scenario, planted bug, the invariant that must catch it).
const CASES: &[(&str, &str, &str, &[Invariant])] = &[
    // A constraint that trips in a later table than the first insert (fixture.reject_rows_in), not rolled back to
    // the application's savepoint: its earlier rows stay next to its `failed` log row.
    (
        "a_missing_savepoint_rollback_is_caught_as_a_partial_write",
        "crash-b-partitioned.toml",
        "no-savepoint-rollback",
        &[Invariant::LogMatchesData],
    ),
    // Rows keyed by the document's Request@ID, not the source row's app_id (fixture.mismatched_ids): the
    // mismatched applications are logged success though the contract makes them `map:` failures.
    (
        "rows_keyed_by_the_wrong_id_are_caught",
        "crash-b-uncoordinated.toml",
        "wrong-id",
        &[Invariant::Content],
    ),
    // Work selected without looking at processing_log: the rerun after a kill-after-commit redoes what was logged;
    // every redo is a rolled-back collision, so the final database is correct and only the history shows it.
    (
        "ignore_log_is_caught_as_redone_work",
        "crash-b-uncoordinated.toml",
        "ignore-log",
        &[Invariant::NoRedo],
    ),
    // A crash point that writes its event and carries on: the runner used to take the event as proof.
    (
        "a_crash_point_that_does_not_kill_is_caught",
        "crash-b-uncoordinated.toml",
        "no-kill-at-crash",
        &[Invariant::CrashKills],
    ),
    // Exit 0 at once on SIGTERM, a batch in flight and no `finished drained`: it used to count as drained.
    (
        "a_drain_that_exits_mid_batch_is_caught",
        "crash-c-queue.toml",
        "exit-mid-drain",
        &[Invariant::CleanDrain],
    ),
    // Commits that are not reported: the database is right, only the events are wrong.
    (
        "an_unreported_commit_is_caught",
        "crash-b-uncoordinated.toml",
        "silent-commit",
        &[Invariant::CommitEvents],
    ),
    // The heartbeat that never renews: a batch slower than its lease (a stall, the process alive) loses its claims
    // to the other instance's takeover; fencing keeps the database right, the lost lease is the only trace.
    (
        "a_heartbeat_that_never_renews_is_caught_by_a_slow_batch",
        "slow-batch-queue.toml",
        "no-renew",
        &[Invariant::LeaseKept],
    ),
    // Lease arithmetic on the processor's own clock: an instance whose clock runs ahead sees the stalled
    // instance's live (renewed) claims as expired and takes them over; one whose clock runs behind writes leases
    // that have already expired. Either way a live, renewing session loses its lease.
    (
        "lease_arithmetic_on_a_clock_ahead_is_caught",
        "clock-skew-ahead-queue.toml",
        "local-lease-clock",
        &[Invariant::LeaseKept],
    ),
    (
        "lease_arithmetic_on_a_clock_behind_is_caught",
        "clock-skew-behind-queue.toml",
        "local-lease-clock",
        &[Invariant::LeaseKept],
    ),
    // A completion that compares the owner only: the session re-claimed its own expired batch (fence 2) while the
    // fence-1 copy was in flight, and that copy commits too.
    (
        "a_completion_on_owner_only_is_caught_by_an_own_reclaim",
        "reclaim-own-expired-queue.toml",
        "complete-by-owner",
        &[Invariant::Fencing],
    ),
];

/// Cases whose fault only a PostgreSQL server can carry (the fault proxy reads its wire protocol): no SQLite twin.
const PG_CASES: &[(&str, &str, &str, &[Invariant])] = &[
    // An unknown COMMIT outcome guessed as "committed" when the COMMIT never reached the server: the batch is
    // reported committed and never logged (coverage sees the gap too; cut-reply alone never shows this bug).
    (
        "assuming_an_unknown_commit_landed_is_caught_under_drop_commit",
        "pg-drop-commit.toml",
        "assume-committed",
        &[Invariant::CommitEvents],
    ),
    // Queue mode: the dropped COMMIT's claims were never completed, so their leases expire and they are written
    // again: by another instance (its log row, not the reporter's: commit-events) or by the reporter itself (two
    // `committed` events: no-duplicates); which one claims first is a race.
    (
        "assuming_an_unknown_commit_landed_is_caught_under_drop_commit_in_queue_mode",
        "pg-drop-commit-queue.toml",
        "assume-committed",
        &[Invariant::CommitEvents, Invariant::NoDuplicates],
    ),
    // COMMIT acknowledged before it is durable (`synchronous_commit=off` in the session): the power cut under the
    // server (lose-unsynced) drops commits already reported, whose applications are then written again by a
    // session that is not the reporter (commit-events) or by the reporter once more (no-duplicates).
    (
        "an_asynchronous_commit_is_caught_under_lose_unsynced",
        "pg-lose-unsynced-queue.toml",
        "no-sync",
        &[Invariant::CommitEvents, Invariant::NoDuplicates],
    ),
];

/// Cases under the replaced system's contracts (`fixture.contract = "cc"`): they also need the seed folder.
const SEED_CASES: &[(&str, &str, &str, &[Invariant])] = &[
    (
        "a_missing_savepoint_rollback_is_caught_under_a_real_contract",
        "real-rl-generated-partitioned.toml",
        "no-savepoint-rollback",
        &[Invariant::LogMatchesData],
    ),
    // Under the baseline comparison the no-fault run has the bug too; what it cannot hide is rows owned by an id
    // that has no log row (the document's) next to a success with no rows (the source row's).
    (
        "rows_keyed_by_the_wrong_id_are_caught_under_a_real_contract",
        "real-cc-generated-kills.toml",
        "wrong-id",
        &[Invariant::LogMatchesData],
    ),
];

fn main() {
    let mut t: Vec<Trial> = Vec::new();
    for &(name, file, bug, want) in SEED_CASES {
        t.push(trial::trial(
            format!("sqlite::{name}"),
            &[Need::Seed],
            on_sqlite(file, bug, want),
        ));
        t.push(trial::trial(
            format!("postgres::{name}"),
            &[Need::Seed, Need::Postgres],
            on_postgres(file, bug, want),
        ));
    }
    for &(name, file, bug, want) in PG_CASES {
        t.push(trial::trial(
            format!("postgres::{name}"),
            &[Need::Postgres],
            on_postgres(file, bug, want),
        ));
    }
    for &(name, file, bug, want) in CASES {
        t.push(trial::trial(
            format!("sqlite::{name}"),
            &[],
            on_sqlite(file, bug, want),
        ));
        t.push(trial::trial(
            format!("postgres::{name}"),
            &[Need::Postgres],
            on_postgres(file, bug, want),
        ));
    }
    trial::run(t)
}
