//! The checker under the replaced system's own contracts (`../shared/seed/original/contracts`), which its reference
//! mapping does not cover: a fault-free run of real sample documents passes by comparison with its baseline, and a
//! planted wrong value in one stored row is caught as `content`, naming the application. Reported skipped
//! (`fixtures::trial`, `Need::Seed`) where the seed folder is absent; with `SHREDPROOF_REQUIRE_SEED=1` (CI) that is
//! a failure. Also: `harness bench --contract` refuses a bad contract at start-up.

use harness::check::{self, ContentBy, Invariant};
use harness::db::SqliteDir;
use harness::runner::{run_plan, ProcessorCmd, RunOptions, Verdict};
use harness::scenario::Scenario;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn planted_wrong_value_is_caught(contract: &str, dir: &str, table: &str) {
    let text = format!(
        "name = \"planted\"\n[fixture]\napps = 0\nedge_cases = false\ncontract = \"seed:contracts/{contract}\"\n\
         dir = \"seed:samples{dir}\"\ntake = 10\n[run]\nbatch_size = 3\n"
    );
    let sc: Scenario = toml::from_str(&text).expect("scenario");
    // As if the file sat in scenarios/, so `seed:` resolves the same way.
    let plan = sc
        .plan(1, Some(scenarios_dir().join("planted.toml")))
        .expect("plan");
    assert!(plan.unavailable.is_none(), "{:?}", plan.unavailable);
    let mut launcher = SqliteDir::new().expect("temp dir");
    let out = tempfile::tempdir().expect("temp dir");
    let opts = RunOptions {
        out_dir: out.path().to_owned(),
        processor: ProcessorCmd {
            program: PathBuf::from(env!("CARGO_BIN_EXE_harness")),
            prefix: vec!["processor".into()],
        },
        verbose: false,
    };
    let o = run_plan(&plan, &mut launcher, &opts).expect("run");
    assert_eq!(
        o.verdict,
        Verdict::Pass,
        "{}: {:#?}",
        o.reason,
        o.main.violations
    );
    let main = o.main.check.as_ref().expect("checked");
    assert!(
        matches!(main.content_by, ContentBy::Baseline(_)),
        "{:?}",
        main.content_by
    );
    assert!(
        main.stats.success > 0 && main.stats.rows[table] > 0,
        "{:?}",
        main.stats
    );
    let base = o
        .baseline
        .as_ref()
        .and_then(|b| b.check.as_ref())
        .and_then(|c| c.snapshot.as_ref())
        .expect("baseline snapshot");

    // Plant: one stored value of one successful application's row, changed.
    let path = o
        .main
        .url_redacted
        .strip_prefix("sqlite:")
        .expect("sqlite url");
    let conn = rusqlite::Connection::open(path).expect("open");
    let (app, col): (i64, String) = conn
        .query_row(
            &format!(
                "SELECT t.app_id, c.name FROM \"{table}\" t JOIN pragma_table_info('{table}') c \
                 WHERE c.name <> 'app_id' AND c.pk = 0 ORDER BY t.app_id, c.cid LIMIT 1"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("a row and a column");
    let changed = conn
        .execute(
            &format!(
                "UPDATE \"{table}\" SET \"{col}\" = CASE WHEN \"{col}\" IS NULL THEN '7' ELSE NULL END \
                 WHERE rowid = (SELECT MIN(rowid) FROM \"{table}\" WHERE app_id = ?1)"
            ),
            [app],
        )
        .expect("plant");
    assert_eq!(changed, 1);
    drop(conn);
    let contract_text =
        std::fs::read_to_string(plan.contract.as_ref().expect("contract")).expect("read");
    let mut reader = check::open_reader(&o.main.url_redacted).expect("reader");
    let rep = check::check_database_with(reader.as_mut(), &contract_text, &[], Some(base))
        .expect("check");
    assert_eq!(
        rep.violated(),
        BTreeSet::from([Invariant::Content]),
        "{:#?}",
        rep.violations
    );
    assert!(
        rep.violations.iter().all(|v| v.app_ids == vec![app]
            && v.message.contains(table)
            && v.message.contains(&col)),
        "{:#?}",
        rep.violations
    );
}

fn credit_card_contract_planted_wrong_value_is_content() {
    planted_wrong_value_is_caught("mapping_contract.json", "", "app_pricing_cc");
}

fn recreational_lending_contract_planted_wrong_value_is_content() {
    planted_wrong_value_is_caught("mapping_contract_rl.json", "/reclending", "app_pricing_rl");
}

/// `harness bench --contract FILE`: a contract that cannot be read or is not valid stops at start-up with exit 2,
/// naming the file, before any database is started.
fn bench_refuses_a_bad_contract_with_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"colour": "blue"}"#).expect("write");
    for path in [bad, dir.path().join("absent.json")] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["bench", "--apps", "10", "--out"])
            .arg(dir.path().join("out"))
            .arg("--contract")
            .arg(&path)
            .output()
            .expect("spawn");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(
            !dir.path().join("out").exists(),
            "started before refusing: {err}"
        );
    }
}

fn main() {
    use fixtures::trial::Need;
    use fixtures::trials;
    let mut t = trials!([] => bench_refuses_a_bad_contract_with_exit_2);
    t.extend(trials!([Need::Seed] =>
        credit_card_contract_planted_wrong_value_is_content,
        recreational_lending_contract_planted_wrong_value_is_content,
    ));
    fixtures::trial::run(t)
}
