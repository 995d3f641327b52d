//! Fault breadth, end to end: connection faults through the harness's TCP proxy and a kill -9 restart of a
//! private PostgreSQL cluster (skipped, with a message, where no server binaries exist), random schedules on
//! SQLite, and shrinking a `--commit-mode split` failure to its minimal scenario.

use harness::db::{Backend, Launcher, PgLauncher, SqliteDir};
use harness::explore::{self, ExploreOptions};
use harness::runner::{run_plan, ProcessorCmd, RunOptions, ScenarioOutcome, Verdict};
use harness::scenario::{FaultSpec, Scenario};
use processor::engine::CommitMode;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn processor() -> ProcessorCmd {
    ProcessorCmd {
        program: PathBuf::from(env!("CARGO_BIN_EXE_harness")),
        prefix: vec!["processor".into()],
    }
}

fn opts(out: &Path) -> RunOptions {
    RunOptions {
        out_dir: out.to_owned(),
        processor: processor(),
        verbose: true,
    }
}

/// Runs a shipped scenario file on `launcher` and asserts it passed on faults that all fired.
fn run_file(file: &str, launcher: &mut dyn Launcher, out: &Path) -> ScenarioOutcome {
    let path = scenarios_dir().join(file);
    let sc = Scenario::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    let plan = sc
        .plan(1, Some(path.clone()))
        .unwrap_or_else(|e| panic!("{e}"));
    let o = run_plan(&plan, launcher, &opts(out)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let details: Vec<String> = o
        .main
        .violations
        .iter()
        .chain(o.baseline.iter().flat_map(|b| b.violations.iter()))
        .map(|v| format!("{}: {}", v.invariant, v.message))
        .collect();
    assert_eq!(
        o.verdict,
        Verdict::Pass,
        "{file}: {}\n{}",
        o.reason,
        details.join("\n")
    );
    for f in &o.main.faults {
        assert!(
            f.fired,
            "{file}: fault did not fire: {} ({})",
            f.fault, f.note
        );
    }
    o
}

/// Every instance log of a run, concatenated (the processor's human log, read only to show a path was taken).
fn instance_logs(dir: &Path) -> String {
    let mut all = String::new();
    for e in std::fs::read_dir(dir).expect("run dir").flatten() {
        let p = e.path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("instance-"))
        {
            all.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    all
}

mod postgres {
    use super::*;

    fn pg(test: &str) -> Option<PgLauncher> {
        fixtures::pg::start_or_skip(test).map(|cluster| PgLauncher { cluster })
    }

    #[test]
    fn drop_connections() {
        let Some(mut l) = pg("drop_connections") else {
            return;
        };
        let out = tempfile::tempdir().expect("tmp");
        let o = run_file("pg-drop-connections.toml", &mut l, out.path());
        let proxy = o.main.proxy.as_ref().expect("went through the proxy");
        assert!(proxy.resets >= 2, "{proxy:?}");
        // The processors reconnected: more connections than the two instances opened at start.
        assert!(proxy.accepted > 2, "{proxy:?}");
    }

    #[test]
    fn cut_reply_is_resolved_from_the_log() {
        let Some(mut l) = pg("cut_reply_is_resolved_from_the_log") else {
            return;
        };
        let out = tempfile::tempdir().expect("tmp");
        for file in ["pg-cut-reply.toml", "pg-cut-reply-queue.toml"] {
            let o = run_file(file, &mut l, out.path());
            let proxy = o.main.proxy.as_ref().expect("went through the proxy");
            // The server did commit, and the client never heard: the ambiguous case, not a plain rollback.
            assert!(
                !proxy.cuts.is_empty() && proxy.cuts.iter().all(|c| c.server_said == "COMMIT"),
                "{file}: {proxy:?}"
            );
            // ... and the processor learned the outcome from its log rows (coverage and no-duplicates held above).
            assert!(
                instance_logs(&o.dir).contains("the log shows it committed"),
                "{file}: the processor never resolved an ambiguous commit (logs in {})",
                o.dir.display()
            );
        }
    }

    #[test]
    fn blackhole_and_latency() {
        let Some(mut l) = pg("blackhole_and_latency") else {
            return;
        };
        let out = tempfile::tempdir().expect("tmp");
        run_file("pg-blackhole-queue.toml", &mut l, out.path());
        run_file("pg-latency-partitioned.toml", &mut l, out.path());
    }

    #[test]
    fn restart_db() {
        let Some(mut l) = pg("restart_db") else {
            return;
        };
        let out = tempfile::tempdir().expect("tmp");
        let o = run_file("pg-restart-db.toml", &mut l, out.path());
        assert!(
            o.main.faults[0].note.contains("back up"),
            "{}",
            o.main.faults[0].note
        );
    }
}

#[test]
fn server_faults_skip_on_sqlite_and_need_a_declared_backend() {
    for file in [
        "pg-drop-connections.toml",
        "pg-cut-reply.toml",
        "pg-cut-reply-queue.toml",
        "pg-blackhole-queue.toml",
        "pg-latency-partitioned.toml",
        "pg-restart-db.toml",
    ] {
        let path = scenarios_dir().join(file);
        let plan = Scenario::from_file(&path)
            .and_then(|s| s.plan(1, Some(path.clone())))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let why = harness::scenario::skip_reason(&plan, Backend::Sqlite)
            .unwrap_or_else(|| panic!("{file} would run on SQLite"));
        assert!(why.contains("postgres"), "{why}");
        assert!(harness::scenario::skip_reason(&plan, Backend::Postgres).is_none());
    }
    let undeclared: Scenario =
        toml::from_str("name = \"x\"\n[[faults]]\nkind = \"cut-reply\"\nafter_commits = 1")
            .expect("parses");
    let e = undeclared.plan(1, None).expect_err("no backend declared");
    assert!(
        e.to_string()
            .contains("cut-reply needs a PostgreSQL server"),
        "{e}"
    );
    let bad: Result<Scenario, _> =
        toml::from_str("name = \"x\"\n[[faults]]\nkind = \"blackhole\"\nafter_commits = 1");
    assert!(bad.is_err(), "blackhole without duration_ms must not parse");
}

#[test]
fn restart_db_is_refused_without_a_server() {
    let sc: Scenario = toml::from_str(
        "name = \"r\"\nbackends = [\"postgres\"]\n[[faults]]\nkind = \"restart-db\"\nafter_commits = 1",
    )
    .expect("parses");
    let plan = sc.plan(1, None).expect("valid");
    let mut l = SqliteDir::new().expect("tmp");
    let out = tempfile::tempdir().expect("tmp");
    let e = run_plan(&plan, &mut l, &opts(out.path())).expect_err("no server to restart");
    assert!(
        e.to_string().contains("restart-db needs a database server"),
        "{e}"
    );
}

#[test]
fn explore_on_sqlite_writes_replayable_runs() {
    let out = tempfile::tempdir().expect("tmp");
    let mut l = SqliteDir::new().expect("tmp");
    let o = ExploreOptions {
        runs: 2,
        seed: 5,
        target: explore::Target {
            backend: Backend::Sqlite,
            can_restart: false,
            commit_mode: CommitMode::Atomic,
        },
        shrink_attempts: 5,
        run: opts(out.path()),
    };
    let summary = explore::explore(&mut l, &o).expect("explore runs");
    assert_eq!(summary.runs.len(), 2);
    assert_eq!(summary.exit_code(), 0, "{:?}", summary.runs);
    for r in &summary.runs {
        assert_eq!(r.verdict, Verdict::Pass, "{}: {}", r.name, r.reason);
        assert_eq!(r.faults_fired, r.faults, "{}", r.name);
        // Replay needs nothing but the file and the seed: the same schedule comes out.
        let back = Scenario::from_file(&r.file).expect("written scenario parses");
        let replayed = back.plan(r.seed, None).expect("valid");
        let drawn = explore::generate(&r.name, r.seed, &o.target)
            .plan(r.seed, None)
            .expect("valid");
        assert_eq!(replayed.faults, drawn.faults);
        assert_eq!(replayed.apps, drawn.apps);
    }
    assert!(out.path().join("explore/summary.json").is_file());
}

#[test]
fn split_failure_shrinks_to_one_crash_at_after_data() {
    let out = tempfile::tempdir().expect("tmp");
    let mut l = SqliteDir::new().expect("tmp");
    let failing: Scenario = toml::from_str(
        r#"
name = "split-wide"
baseline = false
[fixture]
apps = 40
edge_cases = false
malformed_fraction = 0.0
[run]
instances = 2
mode = "partitioned"
batch_size = 5
commit_mode = "split"
[[faults]]
kind = "crash-point"
instance = 1
point = "before-commit"
nth = 2
[[faults]]
kind = "pause"
instance = 0
duration_ms = 200
after_commits = 1
"#,
    )
    .expect("parses");
    let o = ExploreOptions {
        runs: 0,
        seed: 9,
        target: explore::Target {
            backend: Backend::Sqlite,
            can_restart: false,
            commit_mode: CommitMode::Split,
        },
        shrink_attempts: 30,
        run: opts(out.path()),
    };
    let broke: BTreeSet<_> = [harness::check::Invariant::LogMatchesData].into();
    let r = explore::shrink_failure(&failing, 9, &broke, &mut l, &o).expect("shrinks");
    assert!(r.replayed, "the minimal scenario must fail again on replay");
    let min = Scenario::from_file(&r.file).expect("written");
    assert_eq!(min.run.instances, 1);
    assert_eq!(
        min.faults,
        vec![FaultSpec::CrashPoint {
            instance: 0,
            point: "after-data".into(),
            nth: 1,
            pause_ms: None,
        }]
    );
    assert!(min.fixture.apps < 40);
    assert!(r.replay.contains("--seed 9"), "{}", r.replay);
}
