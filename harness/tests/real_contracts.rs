//! The checker under the replaced system's own contracts (`../shared/seed/original/contracts`), which its reference
//! mapping does not cover: a fault-free run of real sample documents passes by comparison with its baseline, and a
//! planted wrong value in one stored row is caught as `content`, naming the application. Skipped, saying why, where
//! the seed folder is absent; with `SHREDPROOF_REQUIRE_SEED=1` (CI) that is a failure.

use harness::check::{self, ContentBy, Invariant};
use harness::db::SqliteDir;
use harness::runner::{run_plan, ProcessorCmd, RunOptions, Verdict};
use harness::scenario::Scenario;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn seed_present(what: &str) -> bool {
    match harness::scenario::seed_root(&scenarios_dir()) {
        Ok(_) => true,
        Err(why) if std::env::var("SHREDPROOF_REQUIRE_SEED").is_ok_and(|v| v == "1") => {
            panic!("SHREDPROOF_REQUIRE_SEED=1 but {why}")
        }
        Err(why) => {
            eprintln!("skipped {what}: {why}");
            false
        }
    }
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

#[test]
fn credit_card_contract_planted_wrong_value_is_content() {
    if seed_present("the credit-card planted-value test") {
        planted_wrong_value_is_caught("mapping_contract.json", "", "app_pricing_cc");
    }
}

#[test]
fn recreational_lending_contract_planted_wrong_value_is_content() {
    if seed_present("the recreational-lending planted-value test") {
        planted_wrong_value_is_caught("mapping_contract_rl.json", "/reclending", "app_pricing_rl");
    }
}
