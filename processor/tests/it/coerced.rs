//! Nothing is changed silently (issue 10, item 3): every value the mapping truncates or coerces to fit the contract
//! is counted per application, stored in `processing_log.coerced`, summed by `processor status` (text and JSON) and
//! reported on the `committed` event. Run through the real binary with the replaced system's own contract on its
//! sample documents (one of them given an over-long value), on SQLite and PostgreSQL; and a database created before
//! the column existed gains it on `init`.
//!
//! The samples are not part of the project: where `../shared/seed/original` is absent the seed tests print why and
//! return, unless `SHREDPROOF_REQUIRE_SEED=1` (CI), where that is a failure.

use processor::contract::Contract;
use processor::events::Body;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `processor <args…>`; panics with its stderr unless it exits 0. Returns stdout.
fn processor(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_processor"))
        .env_remove("PROCESSOR_CRASH_AT")
        .env_remove("SHREDPROOF_DB")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn processor");
    assert!(
        out.status.success(),
        "processor {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Three credit-card documents written as `<app_id>.xml` into `dir`, with the number of values the mapping coerces
/// in each: one sample that needs no coercion, another such sample whose `LockedBy` (data_length 80) is made 100
/// characters long, so exactly one value is truncated, and the first sample that needs coercions of its own.
fn documents(seed: &Path, contract: &Contract, dir: &Path) -> BTreeMap<i64, u32> {
    let mut samples: Vec<PathBuf> = std::fs::read_dir(seed.join("samples"))
        .expect("samples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    samples.sort();
    let id_of = |p: &Path| -> Option<i64> {
        let name = p.file_name()?.to_str()?;
        name.split("--")
            .nth(1)?
            .trim_end_matches(".xml")
            .parse()
            .ok()
    };
    let coerced = |id: i64, xml: &str| {
        processor::mapping::map_document(contract, id, xml)
            .ok()
            .map(|m| m.coerced)
    };
    let (mut clean, mut dirty) = (Vec::new(), None);
    for p in &samples {
        let Some(id) = id_of(p) else { continue };
        let xml = std::fs::read_to_string(p).expect("read sample");
        match coerced(id, &xml) {
            Some(0) if xml.contains(" LockedBy=\"") => clean.push((id, xml)),
            Some(n) if n > 0 && dirty.is_none() => dirty = Some((id, xml, n)),
            _ => {}
        }
        if clean.len() >= 2 && dirty.is_some() {
            break;
        }
    }
    assert!(
        clean.len() >= 2,
        "fewer than two samples with a LockedBy and no coercion"
    );
    let (dirty_id, dirty_xml, dirty_n) = dirty.expect("a sample the mapping coerces");
    let mut want = BTreeMap::new();
    let (id, xml) = &clean[0];
    std::fs::write(dir.join(format!("{id}.xml")), xml).expect("write");
    want.insert(*id, 0);
    let (id, xml) = &clean[1];
    let start = xml.find(" LockedBy=\"").expect("LockedBy") + " LockedBy=\"".len();
    let end = start + xml[start..].find('"').expect("closing quote");
    let long = format!("{}{}{}", &xml[..start], "x".repeat(100), &xml[end..]);
    assert_eq!(
        coerced(*id, &long),
        Some(1),
        "a 100-character LockedBy (data_length 80) must count one truncation"
    );
    std::fs::write(dir.join(format!("{id}.xml")), &long).expect("write");
    want.insert(*id, 1);
    std::fs::write(dir.join(format!("{dirty_id}.xml")), dirty_xml).expect("write");
    want.insert(dirty_id, dirty_n);
    want
}

/// `init`, `load --dir`, `run --events`, then checks the log rows, `status` (text and JSON) and the events.
fn coerced_reach_the_user(
    test: &str,
    db: &str,
    read_log: impl FnOnce() -> BTreeMap<i64, (String, i64)>,
) {
    // Listed with `Need::Seed`: the runner skipped (or failed, when required) this test if the seed is absent.
    let seed = fixtures::trial::seed_dir().unwrap_or_else(|| panic!("{test}: the seed is absent"));
    let contract_path = seed.join("contracts/mapping_contract.json");
    let contract = Contract::from_file(&contract_path).expect("real contract");
    let dir = tempfile::tempdir().expect("temp dir");
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).expect("docs dir");
    let want = documents(&seed, &contract, &docs);
    let cf = contract_path.to_str().expect("utf-8 path");
    let events = dir.path().join("events.jsonl");
    processor(&["init", "--db", db, "--contract", cf]);
    processor(&[
        "load",
        "--db",
        db,
        "--contract",
        cf,
        "--dir",
        docs.to_str().expect("utf-8"),
    ]);
    processor(&[
        "run",
        "--db",
        db,
        "--contract",
        cf,
        "--events",
        events.to_str().expect("utf-8"),
    ]);

    let log = read_log();
    let got: BTreeMap<i64, i64> = log.iter().map(|(id, (_, n))| (*id, *n)).collect();
    let want_i: BTreeMap<i64, i64> = want.iter().map(|(id, n)| (*id, i64::from(*n))).collect();
    assert_eq!(got, want_i, "processing_log.coerced per application");
    assert!(log.values().all(|(s, _)| s == "success"), "{log:?}");

    let total: u64 = want.values().map(|&n| u64::from(n)).sum();
    let apps = want.values().filter(|&&n| n > 0).count() as u64;
    let json: serde_json::Value = serde_json::from_str(&processor(&[
        "status",
        "--db",
        db,
        "--contract",
        cf,
        "--json",
    ]))
    .expect("status JSON");
    assert_eq!(json["coerced_values"], total, "{json}");
    assert_eq!(json["coerced_apps"], apps, "{json}");
    let text = processor(&["status", "--db", db, "--contract", cf]);
    assert!(
        text.contains(&format!("coerced {total} values in {apps} applications")),
        "{text}"
    );

    // The committed events carry the same figure per application.
    let mut from_events = BTreeMap::new();
    for e in processor::events::read_file(&events).expect("events") {
        let Body::Committed { detail, .. } = &e.body else {
            continue;
        };
        let per_app = detail.as_ref().map_or(&[][..], |d| &d.coerced[..]);
        for (i, id) in e.app_ids.iter().enumerate() {
            from_events.insert(*id, per_app.get(i).map_or(0, |&n| i64::from(n)));
        }
    }
    assert_eq!(
        from_events, want_i,
        "detail.coerced on the committed events"
    );
}

pub fn coercions_are_counted_in_the_log_and_status_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("coerced.db");
    let db = format!("sqlite:{}", path.display());
    coerced_reach_the_user(
        "coercions_are_counted_in_the_log_and_status_on_sqlite",
        &db,
        || {
            let c = rusqlite::Connection::open(&path).expect("open");
            let mut st = c
                .prepare("SELECT app_id, status, coerced FROM processing_log")
                .expect("prepare");
            st.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        },
    );
}

pub fn coercions_are_counted_in_the_log_and_status_on_postgres() {
    let cluster = fixtures::pg::PgCluster::start().expect("a private PostgreSQL cluster");
    let db = cluster.create_database("coerced").expect("db");
    let url = db.clone();
    coerced_reach_the_user(
        "coercions_are_counted_in_the_log_and_status_on_postgres",
        &db,
        move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
            c.query(
                "SELECT app_id, status::text, coerced::int8 FROM migration.processing_log",
                &[],
            )
            .expect("query")
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect()
        },
    );
}

/// `processing_log` as it was before the `coerced` column, with one logged application.
const OLD_LOG: &str = "CREATE TABLE processing_log (
    app_id BIGINT PRIMARY KEY, status VARCHAR(10) NOT NULL CHECK (status IN ('success','failed')),
    failure_reason VARCHAR(500), attempts INT NOT NULL, instance_id INT NOT NULL, session_id VARCHAR(64) NOT NULL,
    fence BIGINT, processed_at TIMESTAMP NOT NULL)";
const OLD_ROW: &str = "INSERT INTO processing_log VALUES (7, 'success', NULL, 1, 0, 's-old', NULL, '2026-01-01 00:00:00')";

/// `init` on a database logged before the column existed adds it (0 for the old rows), and `status` then works.
fn old_database_migrates(db: &str, after: impl FnOnce() -> Vec<(i64, i64)>) {
    processor(&["init", "--db", db]);
    // A second init finds the column and changes nothing.
    processor(&["init", "--db", db]);
    assert_eq!(after(), vec![(7, 0)]);
    let json: serde_json::Value =
        serde_json::from_str(&processor(&["status", "--db", db, "--json"])).expect("status JSON");
    assert_eq!(json["success"], 1, "{json}");
    assert_eq!(json["coerced_values"], 0, "{json}");
}

pub fn init_adds_the_coerced_column_to_an_old_sqlite_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("old.db");
    let c = rusqlite::Connection::open(&path).expect("open");
    c.execute_batch(&format!("{OLD_LOG}; {OLD_ROW};"))
        .expect("old schema");
    drop(c);
    old_database_migrates(&format!("sqlite:{}", path.display()), || {
        let c = rusqlite::Connection::open(&path).expect("open");
        let mut st = c
            .prepare("SELECT app_id, coerced FROM processing_log")
            .expect("prepare");
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    });
}

pub fn init_adds_the_coerced_column_to_an_old_postgres_log() {
    let cluster = fixtures::pg::PgCluster::start().expect("a private PostgreSQL cluster");
    let db = cluster.create_database("oldlog").expect("db");
    let mut c = postgres::Client::connect(&db, postgres::NoTls).expect("connect");
    c.batch_execute(&format!(
        "CREATE SCHEMA shredproof; SET search_path = shredproof; {OLD_LOG}; {OLD_ROW};"
    ))
    .expect("old schema");
    drop(c);
    let url = db.clone();
    old_database_migrates(&db, move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        c.query(
            "SELECT app_id, coerced::int8 FROM shredproof.processing_log",
            &[],
        )
        .expect("query")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    });
}
