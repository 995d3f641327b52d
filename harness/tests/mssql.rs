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
        (
            "mssql_an_unknown_commit_is_read_back_only_after_its_session_ended",
            mssql_an_unknown_commit_is_read_back_only_after_its_session_ended,
        ),
        (
            "mssql_explore_runs_random_schedules_that_pass_and_replay",
            mssql_explore_runs_random_schedules_that_pass_and_replay,
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

/// `harness explore` on the SQL Server backend: random schedules from one seed (kills, crash points, pauses, proxy
/// faults; a server restart only where the launcher can restart this server), each run a fresh database; every one
/// passes with all its faults fired, and its written scenario file replays the same schedule.
fn mssql_explore_runs_random_schedules_that_pass_and_replay() {
    use harness::explore::{self, ExploreOptions};
    let test = "mssql_explore_runs_random_schedules_that_pass_and_replay";
    let mut launcher = launcher(test);
    println!("{test}: {}", launcher.describe());
    let out = tempfile::tempdir().expect("out dir");
    let o = ExploreOptions {
        runs: 3,
        seed: 12,
        target: explore::Target {
            backend: Backend::Mssql,
            can_restart: launcher.capabilities().restart,
            can_lose_unsynced: false,
            commit_mode: processor::engine::CommitMode::Atomic,
        },
        shrink_attempts: 5,
        corpus: None,
        run: RunOptions {
            out_dir: out.path().to_owned(),
            processor: processor_cmd(),
            verbose: true,
        },
    };
    let summary = explore::explore(launcher.as_mut(), &o).expect("explore runs");
    assert_eq!(summary.runs.len(), 3);
    for r in &summary.runs {
        println!(
            "{}: {:?} ({} of {} faults fired)",
            r.name, r.verdict, r.faults_fired, r.faults
        );
        assert_eq!(r.verdict, Verdict::Pass, "{}: {}", r.name, r.reason);
        assert_eq!(r.faults_fired, r.faults, "{}", r.name);
        let back =
            harness::scenario::Scenario::from_file(&r.file).expect("written scenario parses");
        let replayed = back.plan(r.seed, None).expect("valid");
        let drawn = explore::generate(&r.name, r.seed, &o.target)
            .plan(r.seed, None)
            .expect("valid");
        assert_eq!(replayed.faults, drawn.faults, "{}", r.name);
    }
    assert_eq!(summary.exit_code(), 0);
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

/// One plain connection to the test's database, for watching the server's sessions (not the store under test).
struct Watcher {
    rt: tokio::runtime::Runtime,
    client: tiberius::Client<tokio_util::compat::Compat<tokio::net::TcpStream>>,
}

impl Watcher {
    fn connect(url: &str) -> Self {
        use tokio_util::compat::TokioAsyncWriteCompatExt;
        let cfg = processor::store::mssql::config::MssqlConfig::parse(url)
            .expect("url")
            .tiberius();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(cfg.get_addr())
                .await
                .expect("tcp");
            tcp.set_nodelay(true).expect("nodelay");
            tiberius::Client::connect(cfg, tcp.compat_write())
                .await
                .expect("login")
        });
        Watcher { rt, client }
    }

    /// `(session id, status)` of every other session in this database.
    fn sessions(&mut self) -> Vec<(i32, String)> {
        let rows = self.rt.block_on(async {
            self.client
                .simple_query(
                    "SELECT CAST(session_id AS INT), CAST(status AS NVARCHAR(60)) FROM sys.dm_exec_sessions \
                     WHERE database_id = DB_ID() AND session_id <> @@SPID",
                )
                .await
                .expect("query")
                .into_first_result()
                .await
                .expect("rows")
        });
        rows.iter()
            .filter_map(|r| {
                let id = r.get::<i32, _>(0)?;
                Some((id, r.get::<&str, _>(1).unwrap_or("").trim().to_owned()))
            })
            .collect()
    }
}

/// The race behind a commit whose outcome is unknown, on the SQL Server store: the client's connection dies while
/// its session still works on the server (here: its insert of app 2's log row waits for another transaction that
/// holds that row, while app 1's row is written and uncommitted). The proxy resets the connection; the store
/// reconnects and reads app 1 back. It must first end the dead session (`KILL`) and wait until it is gone: on
/// Babelfish (PostgreSQL MVCC) the read would otherwise answer at once, while that session could still commit; on
/// SQL Server the read would wait on its locks until the lock timeout. Seen failing with `settle_dropped` a no-op
/// (the dead session still listed after the read).
fn mssql_an_unknown_commit_is_read_back_only_after_its_session_ended() {
    use processor::store::write::{resolve_ambiguous_commit, AppWork};
    use processor::store::{LogRow, LogStatus};
    let test = "mssql_an_unknown_commit_is_read_back_only_after_its_session_ended";
    let mut launcher = launcher(test);
    let url = launcher.fresh_database("settle").expect("fresh database");
    let contract =
        processor::contract::Contract::from_json(fixtures::CONTRACT_JSON).expect("contract");
    let db = processor::store::DbUrl::parse(&url).expect("url");
    let mut holder = processor::store::open(&db, contract.clone()).expect("open");
    holder.init_schema().expect("init");
    let docs = fixtures::generate(&fixtures::GenConfig {
        count: 2,
        seed: 5,
        malformed_fraction: 0.0,
        ..Default::default()
    });
    let src: Vec<(i64, String)> = docs.iter().map(|d| (d.app_id, d.xml.clone())).collect();
    holder.load_source(&src).expect("load");
    let (a1, a2) = (docs[0].app_id, docs[1].app_id);
    let log = |app_id: i64, session: &str| LogRow {
        app_id,
        status: LogStatus::Success,
        reason: None,
        attempts: 1,
        instance_id: 0,
        session_id: session.to_owned(),
        fence: None,
        coerced: 0,
    };
    // The holder takes app 2's log row in an open transaction: the dropped session's insert of it waits.
    holder.begin().expect("begin");
    holder
        .insert_logs(&[log(a2, "holder")])
        .expect("holder's row");
    let mut watch = Watcher::connect(&url);
    // The upstream address first (the route's other half is unused), then the URL through the started proxy.
    let (upstream, _) =
        harness::proxy::route_url(&url, "127.0.0.1:9".parse().expect("addr")).expect("route");
    let proxy = harness::proxy::FaultProxy::start(&upstream).expect("proxy");
    let (_, via) = harness::proxy::route_url(&url, proxy.addr()).expect("route");
    let via = processor::store::DbUrl::parse(&via).expect("proxy url");
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let c2 = contract.clone();
    let xml = docs[0].xml.clone();
    std::thread::spawn(move || {
        let mut s = processor::store::open(&via, c2.clone()).expect("open via proxy");
        s.begin().expect("begin");
        s.insert_logs(&[log(a1, "sess-w")]).expect("app 1's row");
        first_tx.send(()).expect("signal");
        let blocked = s
            .insert_logs(&[log(a2, "sess-w")])
            .map_err(|e| e.to_string());
        s.reconnect().expect("reconnect");
        let work = vec![AppWork {
            app_id: a1,
            fence: None,
            outcome: processor::mapping::map_document(&c2, a1, &xml),
        }];
        let read = resolve_ambiguous_commit(s.as_mut(), &work, "sess-w").map_err(|e| e.to_string());
        let _ = done_tx.send((blocked, read));
    });
    let deadline = std::time::Duration::from_secs(120);
    first_rx
        .recv_timeout(deadline)
        .expect("the writer wrote app 1's row");
    // After app 1's row, the writer's only statement is the insert that waits: its session shows as working.
    let t0 = std::time::Instant::now();
    let dead = loop {
        let busy: Vec<i32> = watch
            .sessions()
            .into_iter()
            .filter(|(_, st)| matches!(st.to_ascii_lowercase().as_str(), "active" | "running"))
            .map(|(id, _)| id)
            .collect();
        if let [id] = busy[..] {
            break id;
        }
        assert!(
            t0.elapsed() < deadline,
            "the writer's insert never waited: {busy:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        proxy.reset_all() >= 1,
        "the writer's connection went through the proxy"
    );
    let (blocked, read) = done_rx
        .recv_timeout(deadline)
        .expect("the writer read its outcome back");
    assert!(
        blocked.is_err(),
        "the waiting insert must fail with the connection: {blocked:?}"
    );
    assert_eq!(read, Ok(vec![]), "app 1's row was never committed");
    let left: Vec<i32> = watch.sessions().into_iter().map(|(id, _)| id).collect();
    assert!(
        !left.contains(&dead),
        "the dropped session {dead} was still on the server after the read-back (sessions: {left:?})"
    );
    holder.rollback().expect("rollback");
    assert_eq!(holder.logged(&[a1, a2]).expect("log"), vec![]);
}
