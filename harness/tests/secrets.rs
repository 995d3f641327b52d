//! The password hunt: a distinctive password (and a distinctive fragment of one, as a malformed string splits it)
//! must appear in no message, log line, event, report file, `Debug` output or child command line of either
//! program: for malformed connection strings of every form, for unreachable servers, and for a whole harness run
//! and check on a real PostgreSQL server (whose trust authentication ignores the password, so the run succeeds
//! with the password in every URL the harness handles).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PW: &str = "Zq7SecretPw";

fn main() {
    use fixtures::trial::Need;
    use fixtures::trials;
    let mut t = trials!([] =>
        malformed_connection_strings_exit_2_at_once_and_quote_nothing,
        an_unreachable_server_says_why_once,
        debug_output_masks_passwords,
    );
    t.extend(trials!([Need::Postgres] => a_harness_run_and_check_leak_nothing));
    fixtures::trial::run(t)
}
const FRAG: &str = "Xk9FragPw";

fn harness() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_harness"));
    // Nothing inherited may supply a database.
    c.env_remove("SHREDPROOF_DB")
        .env_remove("SHREDPROOF_DB_URL")
        .env_remove("SHREDPROOF_MSSQL_PASSWORD");
    c
}

/// `processor <args>` through the harness binary's built-in processor (the same `cli::main_with`).
fn processor(args: &[&str], cwd: &Path) -> Output {
    harness()
        .arg("processor")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("spawn processor")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_clean(what: &str, s: &str) {
    assert!(
        !s.contains(PW) && !s.contains(FRAG),
        "{what} shows the password or a fragment of it:\n{s}"
    );
}

/// Every file under `dir`, recursively, must be free of the password.
fn assert_tree_clean(dir: &Path) -> usize {
    let mut files = 0;
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            files += assert_tree_clean(&p);
        } else {
            let bytes = std::fs::read(&p).expect("read file");
            assert_clean(&p.display().to_string(), &String::from_utf8_lossy(&bytes));
            files += 1;
        }
    }
    files
}

/// Malformed strings of every form, each holding the password and a fragment that a naive parser would quote.
fn malformed() -> Vec<String> {
    [
        "postgres://u:{PW}@h:notaport/db",
        "postgres://u:{PW}?{FRAG}@h/db",
        "postgres://u:{PW}@h:99999/db",
        "postgres://u:{PW}@h/db?sslmode={FRAG}",
        "postgres://u:{PW}@h/db?{FRAG}=1",
        "postgres://u:{PW}@h/db?{FRAG}",
        "postgres://u:{PW}@[::1/db",
        "mssql://sa:{PW}?{FRAG}@h:notaport/db",
        "mssql://sa:{PW}@h/db?encrypt={FRAG}",
        "mssql://sa:{PW}@h/db?{FRAG}=1",
        "Server=h;User Id=u;Password={PW};{FRAG}",
        "Server=h;User Id=u;Password={PW};{FRAG}=1",
        "Server=h;User Id=u;Password='{PW};{FRAG}",
        "Server=h;User Id=u;Password='{PW}'{FRAG}",
        "Server=h;User Id=u;Password={PW};Encrypt={FRAG}",
        "Server=h,{FRAG};User Id=u;Password={PW}",
        "mysql://u:{PW}@h/db",
    ]
    .iter()
    .map(|s| s.replace("{PW}", PW).replace("{FRAG}", FRAG))
    .collect()
}

fn malformed_connection_strings_exit_2_at_once_and_quote_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    for url in malformed() {
        for (sub, extra) in [
            ("init", &[][..]),
            ("status", &[][..]),
            ("load", &["--generate", "1"][..]),
            ("run", &[][..]),
        ] {
            for format in ["pretty", "json"] {
                let start = Instant::now();
                let mut args = vec![sub, "--db", &url, "--log-format", format];
                args.extend_from_slice(extra);
                let o = processor(&args, dir.path());
                let t = text(&o);
                assert_eq!(o.status.code(), Some(2), "{sub} --db {url}: {t}");
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "{sub} --db {url} took {:?}: malformed urls must not be retried",
                    start.elapsed()
                );
                assert_clean(&format!("{sub} --db <malformed> ({format})"), &t);
            }
        }
        // The same through the environment.
        let o = harness()
            .args(["processor", "status"])
            .env("SHREDPROOF_DB", &url)
            .current_dir(dir.path())
            .output()
            .expect("spawn");
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert_clean("status with SHREDPROOF_DB", &text(&o));
    }
    // Nothing was created by any of them.
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

fn an_unreachable_server_says_why_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let pg = format!("postgres://u:{PW}@127.0.0.1:1/db?connect_timeout=5");
    let o = processor(&["status", "--db", &pg], dir.path());
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert_clean("status on an unreachable server", &t);
    assert_eq!(t.matches("Connection refused").count(), 1, "{t}");
    assert_eq!(t.matches("error connecting to server").count(), 1, "{t}");
    // Printed once: no ERROR log line beside the `error:` line.
    assert_eq!(
        t.lines().filter(|l| l.contains("127.0.0.1:1")).count(),
        1,
        "{t}"
    );
    assert!(t.contains("postgres://u:***@127.0.0.1:1/db"), "{t}");

    // `run` retries, logging each attempt, then gives up with the cause in its one error line.
    let o = processor(
        &["run", "--db", &pg, "--retry-give-up-secs", "1"],
        dir.path(),
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert_clean("run on an unreachable server", &t);
    let last = t
        .lines()
        .rfind(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert_eq!(last.matches("Connection refused").count(), 1, "{t}");
    assert_eq!(
        t.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{t}"
    );
    assert!(!t.contains("ERROR"), "{t}");

    // JSON logs: the error is one JSON line on stderr, stdout stays empty.
    let o = processor(&["status", "--db", &pg, "--log-format", "json"], dir.path());
    assert_eq!(o.status.code(), Some(3));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for line in err.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {line}"));
    }
    assert_clean("json status", &err);

    let ms = format!("mssql://sa:{PW}@127.0.0.1:1/db?connect_timeout_secs=3");
    let o = processor(&["status", "--db", &ms], dir.path());
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_clean("status on an unreachable SQL Server", &text(&o));
    let o = processor(
        &[
            "status",
            "--server",
            "127.0.0.1,1",
            "--username",
            "sa",
            "--password",
            PW,
        ],
        dir.path(),
    );
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert_clean("status --server on an unreachable SQL Server", &text(&o));
}

/// `{:?}` of every type that holds a connection string or a password, for valid and malformed inputs alike: the
/// processor's and the harness's parsed command lines (every subcommand with a database), `DbUrl`, `PgUrl`,
/// `MssqlConfig`, the parse errors, and `harness bench`'s configuration and recorded command line.
fn debug_output_masks_passwords() {
    use clap::Parser;
    let valid = [
        format!("postgres://u:{PW}@h/db"),
        format!("postgres://u:{PW}@{FRAG}@h/db"),
        format!("postgres://u@h/db?password={PW}"),
        format!("mssql://sa:{PW}@h/db"),
        format!("mssql://sa:{PW}@{FRAG}@h/db"),
        format!("Server=h;User Id=u;Password='{PW};{FRAG}'"),
        format!("Server=h;User Id=u;Password={PW}"),
    ];
    let every: Vec<String> = valid.iter().cloned().chain(malformed()).collect();

    // The processor's command line, each subcommand, with a valid or malformed --db and a --password.
    for url in &every {
        for sub in ["init", "load", "run", "status"] {
            let mut argv = vec!["processor", sub, "--db", url, "--password", PW];
            if sub == "load" {
                argv.extend(["--generate", "1"]);
            }
            let cli = processor::cli::Cli::try_parse_from(&argv)
                .unwrap_or_else(|e| panic!("processor {sub} parses: {e}"));
            assert_clean(&format!("Debug of processor {sub}"), &format!("{cli:?}"));
        }
    }

    // The harness's command line: every subcommand that takes a connection string.
    for url in &every {
        let argvs: Vec<Vec<&str>> = vec![
            vec!["harness", "run", "--backend", "postgres", "--db-url", url],
            vec![
                "harness",
                "explore",
                "--backend",
                "postgres",
                "--db-url",
                url,
            ],
            vec!["harness", "bench", "--backend", "postgres", "--db-url", url],
            vec!["harness", "check", "--db", url],
            vec!["harness", "check", "--db", "sqlite:x.db", "--baseline", url],
        ];
        for argv in argvs {
            let cli = harness::cli::Cli::try_parse_from(&argv)
                .unwrap_or_else(|e| panic!("{} parses: {e}", argv[1]));
            let shown = format!("{cli:?}");
            assert_clean(&format!("Debug of harness {}", argv[1]), &shown);
            assert!(
                shown.contains("***") || shown.contains("<unparsable"),
                "{shown}"
            );
        }
    }

    // The bench configuration, and the command line its report records.
    for url in &every {
        let cfg = harness::bench::BenchConfig {
            backend: harness::db::Backend::Postgres,
            db_url: Some(url.clone()),
            apps: 1,
            instances: vec![1],
            modes: vec![processor::engine::Mode::Queue],
            out: "out".into(),
            seed: 1,
            batch_size: 1,
            workers: None,
            processor: harness::runner::ProcessorCmd::external("p".into()),
            markdown_into: None,
            real_docs: None,
            contract: None,
            command: harness::cli::shown_command(
                ["harness", "bench", "--db-url", url]
                    .into_iter()
                    .map(str::to_owned),
            ),
        };
        assert_clean("Debug of BenchConfig", &format!("{cfg:?}"));
        let eq = harness::cli::shown_command(
            [
                "harness".to_owned(),
                "bench".to_owned(),
                format!("--db-url={url}"),
            ]
            .into_iter(),
        );
        assert_clean("bench's recorded command line", &eq);
    }

    // The parsed forms, and the errors of the malformed ones.
    for url in &valid {
        let u = processor::store::url::DbUrl::parse(url).expect("valid");
        for shown in [format!("{u:?}"), u.to_string(), u.redacted()] {
            assert_clean(&shown, &shown);
            assert!(shown.contains("***"), "{shown}");
        }
        match &u {
            processor::store::url::DbUrl::Postgres(pg) => {
                assert_clean("Debug of PgUrl", &format!("{pg:?}"));
                assert_clean(
                    "Debug of the driver's config",
                    &format!("{:?}", pg.driver_config()),
                );
            }
            processor::store::url::DbUrl::Mssql(cfg) => {
                assert_clean("Debug of MssqlConfig", &format!("{cfg:?}"));
                assert_clean(
                    "Debug of MssqlConfig with a database",
                    &format!("{:?}", cfg.with_database("x")),
                );
            }
            processor::store::url::DbUrl::Sqlite(_) => panic!("{u:?} is not a server"),
        }
    }
    for url in malformed() {
        let e = processor::store::url::DbUrl::parse(&url).expect_err("malformed");
        assert_clean("Debug of a parse error", &format!("{e:?}"));
        assert_clean("a parse error", &e.to_string());
        if let Err(e) = processor::store::mssql::config::MssqlConfig::parse(&url) {
            assert_clean("Debug of a SQL Server parse error", &format!("{e:?}"));
            assert_clean("a SQL Server parse error", &e.to_string());
        }
    }
}

/// A whole run and check on PostgreSQL with the password in the URL: every file the harness writes, everything it
/// prints, and the command line of every processor it starts are free of it.
fn a_harness_run_and_check_leak_nothing() {
    let cluster = fixtures::pg::PgCluster::start().expect("start a private PostgreSQL cluster");
    let dir = tempfile::tempdir().expect("tmp");
    let server = format!(
        "postgres://postgres:{PW}@127.0.0.1:{}/postgres",
        cluster.port()
    );
    // A processor wrapper that records its own command line before running the real one.
    let argv_log = dir.path().join("argv.log");
    let wrapper = dir.path().join("processor-wrapper");
    let mut w = std::fs::File::create(&wrapper).expect("wrapper");
    writeln!(
        w,
        "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{}' processor \"$@\"",
        argv_log.display(),
        env!("CARGO_BIN_EXE_harness")
    )
    .expect("write wrapper");
    drop(w);
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let scenario = dir.path().join("secrets-hunt.toml");
    std::fs::write(
        &scenario,
        "name = \"secrets-hunt\"\ndescription = \"a plain run with a password in every url\"\n\
         [fixture]\napps = 60\n[run]\ninstances = 2\nmode = \"queue\"\nbatch_size = 10\nlease_secs = 5\n\
         [expect]\nresult = \"pass\"\n",
    )
    .expect("scenario");
    let out = dir.path().join("out");
    let o = harness()
        .arg("run")
        .arg(&scenario)
        .args(["--backend", "postgres", "--out"])
        .arg(&out)
        .arg("--processor-bin")
        .arg(&wrapper)
        .env("SHREDPROOF_DB_URL", &server)
        .output()
        .expect("harness run");
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert_clean("harness run output", &t);
    let argv = std::fs::read_to_string(&argv_log).expect("the wrapper ran");
    assert!(argv.lines().count() >= 3, "{argv}");
    assert_clean("a processor command line", &argv);
    assert!(assert_tree_clean(&out) > 3, "the run wrote its reports");

    // The checker on the same database, the URL with the password given on its own.
    let db = format!(
        "postgres://postgres:{PW}@127.0.0.1:{}/secrets_hunt",
        cluster.port()
    );
    for args in [
        vec!["check".to_owned(), "--db".to_owned(), db.clone()],
        vec![
            "check".to_owned(),
            "--db".to_owned(),
            format!("{db}?sslmode={FRAG}"),
        ],
        vec![
            "check".to_owned(),
            "--db".to_owned(),
            format!("postgres://postgres:{PW}@127.0.0.1:1/x"),
        ],
    ] {
        let o = harness().args(&args).output().expect("harness check");
        assert_clean("harness check output", &text(&o));
    }
}
