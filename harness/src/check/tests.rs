//! Checker tests: a hand-built SQLite database filled by a "correct processor" (the reference mapping itself) must
//! pass every invariant; each planted bug must trip exactly the invariant meant to catch it, naming the right app.

use super::*;
use processor::events::Body;
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};

const SEED: u64 = 20240607;

struct Db {
    _dir: tempfile::TempDir,
    path: PathBuf,
    docs: Vec<fixtures::Doc>,
    outcomes: BTreeMap<i64, RefOutcome>,
}

impl Db {
    fn conn(&self) -> Connection {
        Connection::open(&self.path).expect("open test db")
    }

    fn check(&self, events: &[Event]) -> CheckReport {
        let mut r = SqliteReader::open(&self.path).expect("open reader");
        let whole = check_database(&mut r, fixtures::CONTRACT_JSON, events).expect("check runs");
        // Tiny chunks put chunk boundaries between the apps of every planted bug: same verdict, same apps.
        let chunked =
            check_database_chunked(&mut r, fixtures::CONTRACT_JSON, events, 7).expect("check runs");
        // Compared per invariant as the union of apps: which violations are folded depends on the order.
        let apps = |r: &CheckReport| -> BTreeMap<Invariant, BTreeSet<i64>> {
            let mut m: BTreeMap<Invariant, BTreeSet<i64>> = BTreeMap::new();
            for v in &r.violations {
                m.entry(v.invariant).or_default().extend(&v.app_ids);
            }
            m
        };
        assert_eq!(apps(&whole), apps(&chunked), "chunked check differs");
        whole
    }

    fn ok_apps(&self) -> impl Iterator<Item = (i64, &BTreeMap<String, Vec<RefRow>>)> {
        self.outcomes.iter().filter_map(|(a, o)| match o {
            RefOutcome::Success(t) => Some((*a, t)),
            RefOutcome::Failed { .. } => None,
        })
    }

    fn failed_apps(&self) -> impl Iterator<Item = i64> + '_ {
        self.outcomes
            .iter()
            .filter(|(_, o)| matches!(o, RefOutcome::Failed { .. }))
            .map(|(a, _)| *a)
    }
}

/// Column types from the contract: integers and bits as INTEGER (so CAST(... AS TEXT) is exercised), else TEXT.
fn column_types() -> BTreeMap<(String, String), &'static str> {
    let v: serde_json::Value =
        serde_json::from_str(fixtures::CONTRACT_JSON).expect("contract json");
    let mut out = BTreeMap::new();
    for m in v["mappings"].as_array().expect("mappings") {
        let t = m["data_type"].as_str().unwrap_or("").to_ascii_lowercase();
        let ty = if ["int", "smallint", "bigint", "bit"].contains(&t.as_str()) {
            "INTEGER"
        } else {
            "TEXT"
        };
        out.insert(
            (
                m["target_table"].as_str().unwrap_or("").to_owned(),
                m["target_column"].as_str().unwrap_or("").to_owned(),
            ),
            ty,
        );
    }
    out
}

fn create_schema(conn: &Connection, c: &RefContract, unique: bool) {
    let types = column_types();
    let mut ddl = String::from(
        "CREATE TABLE app_xml(app_id INTEGER PRIMARY KEY, xml TEXT NOT NULL);
         CREATE TABLE processing_log(app_id INTEGER, status TEXT NOT NULL, failure_reason TEXT,
            attempts INTEGER NOT NULL, instance_id INTEGER NOT NULL, session_id TEXT NOT NULL, fence INTEGER,
            processed_at TEXT NOT NULL);
         CREATE TABLE processing_claim(app_id INTEGER PRIMARY KEY, owner TEXT NOT NULL,
            lease_expires_at INTEGER NOT NULL, fence INTEGER NOT NULL);",
    );
    for t in &c.tables {
        let cols: Vec<String> = t
            .columns
            .iter()
            .map(|col| {
                // A foreign key column has no mapping of its own: it takes the parent's column type.
                let ty = types
                    .get(&(t.name.clone(), col.clone()))
                    .or_else(|| {
                        types
                            .iter()
                            .find(|((_, c2), _)| c2 == col)
                            .map(|(_, ty)| ty)
                    })
                    .copied()
                    .unwrap_or("TEXT");
                format!("\"{col}\" {ty}")
            })
            .collect();
        let uniq = if unique {
            format!(", UNIQUE({})", t.key.join(", "))
        } else {
            String::new()
        };
        ddl.push_str(&format!(
            "CREATE TABLE \"{}\"({}{uniq});",
            t.name,
            cols.join(", ")
        ));
    }
    conn.execute_batch(&ddl).expect("schema");
}

fn insert_row(conn: &Connection, table: &RefTable, row: &RefRow) {
    let cols: Vec<String> = table.columns.iter().map(|c| format!("\"{c}\"")).collect();
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "INSERT INTO \"{}\"({}) VALUES ({})",
        table.name,
        cols.join(", "),
        marks.join(", ")
    );
    let types = column_types();
    let vals: Vec<rusqlite::types::Value> = table
        .columns
        .iter()
        .map(|c| match row.values.get(c).cloned().flatten() {
            None => rusqlite::types::Value::Null,
            Some(s) => {
                let int = types
                    .get(&(table.name.clone(), c.clone()))
                    .is_none_or(|t| *t == "INTEGER");
                match (int, s.parse::<i64>()) {
                    (true, Ok(n)) => rusqlite::types::Value::Integer(n),
                    _ => rusqlite::types::Value::Text(s),
                }
            }
        })
        .collect();
    conn.execute(&sql, rusqlite::params_from_iter(vals))
        .expect("insert row");
}

fn key_exists(conn: &Connection, table: &RefTable, key: &[Option<String>]) -> bool {
    let conds: Vec<String> = table
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("CAST(\"{k}\" AS TEXT) = ?{}", i + 1))
        .collect();
    let sql = format!(
        "SELECT COUNT(*) FROM \"{}\" WHERE {}",
        table.name,
        conds.join(" AND ")
    );
    let n: i64 = conn
        .query_row(&sql, rusqlite::params_from_iter(key.iter().cloned()), |r| {
            r.get(0)
        })
        .expect("count");
    n > 0
}

/// A database as a correct processor would leave it: rows and log from the reference mapping.
fn baseline(count: usize, unique: bool) -> Db {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("check.db");
    let c = RefContract::parse(fixtures::CONTRACT_JSON).expect("contract");
    let cfg = fixtures::GenConfig {
        count,
        seed: SEED,
        malformed_fraction: 0.1,
        ..Default::default()
    };
    let docs = fixtures::generate(&cfg);
    let mut conn = Connection::open(&path).expect("create db");
    create_schema(&conn, &c, unique);
    let tx = conn.transaction().expect("tx");
    let mut outcomes = BTreeMap::new();
    for d in &docs {
        tx.execute(
            "INSERT INTO app_xml(app_id, xml) VALUES (?1, ?2)",
            params![d.app_id, d.xml],
        )
        .expect("source");
        let out = reference_map(&c, d.app_id, &d.xml);
        let (status, reason) = match &out {
            RefOutcome::Success(tables) => {
                for t in &c.tables {
                    for row in &tables[&t.name] {
                        // Shared entities are insert-if-absent by natural key.
                        if !(t.shared && key_exists(&tx, t, &row.key)) {
                            insert_row(&tx, t, row);
                        }
                    }
                }
                ("success", None)
            }
            RefOutcome::Failed { stage, message } => {
                ("failed", Some(format!("{stage}: {message}")))
            }
        };
        tx.execute(
            "INSERT INTO processing_log(app_id, status, failure_reason, attempts, instance_id, session_id, fence, processed_at)
             VALUES (?1, ?2, ?3, 1, 0, 's-0', ?1, '2024-01-01 00:00:00')",
            params![d.app_id, status, reason],
        )
        .expect("log");
        tx.execute(
            "INSERT INTO processing_claim(app_id, owner, lease_expires_at, fence) VALUES (?1, 's-0', 0, ?1)",
            params![d.app_id],
        )
        .expect("claim");
        outcomes.insert(d.app_id, out);
    }
    tx.commit().expect("commit");
    Db {
        _dir: dir,
        path,
        docs,
        outcomes,
    }
}

fn only(report: &CheckReport, inv: Invariant, app: i64) {
    let got = report.violated();
    assert_eq!(
        got,
        BTreeSet::from([inv]),
        "violations: {:#?}",
        report.violations
    );
    assert!(
        report.violations.iter().any(|v| v.app_ids.contains(&app)),
        "app {app} not named: {:#?}",
        report.violations
    );
}

#[test]
fn correct_baseline_passes_every_invariant() {
    let db = baseline(200, true);
    assert!(
        db.failed_apps().count() > 0,
        "the fixture should include failing documents"
    );
    let report = db.check(&[]);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!(report.stats.apps, 200);
    assert_eq!(report.stats.success + report.stats.failed, 200);
    assert_eq!(report.stats.missing, 0);
    assert_eq!(report.stats.rows["app_base"], report.stats.success);
    let _ = &db.docs;
}

#[test]
fn shared_contacts_are_accepted_when_written_by_another_app() {
    // Enough documents that some con_id from the shared pool appears in two applications.
    let db = baseline(400, true);
    let mut seen: HashMap<Key, i64> = HashMap::new();
    let shared = db.ok_apps().any(|(a, t)| {
        t["app_contact_base"]
            .iter()
            .any(|r| seen.insert(r.key.clone(), a).is_some())
    });
    assert!(
        shared,
        "expected at least one shared contact in 400 documents"
    );
    let report = db.check(&[]);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

#[test]
fn deleted_log_row_breaks_coverage() {
    let db = baseline(60, true);
    let app = db.failed_apps().next().expect("a failed app");
    db.conn()
        .execute("DELETE FROM processing_log WHERE app_id = ?1", [app])
        .expect("delete");
    let report = db.check(&[]);
    only(&report, Invariant::Coverage, app);
    assert_eq!(report.stats.missing, 1);
}

#[test]
fn duplicated_contact_row_without_constraint_is_counted() {
    let db = baseline(60, false);
    let (app, con) = db
        .ok_apps()
        .find_map(|(a, t)| t["app_contact_base"].first().map(|r| (a, r.key[0].clone())))
        .expect("an app with a contact");
    let cols = RefContract::parse(fixtures::CONTRACT_JSON)
        .expect("contract")
        .table("app_contact_base")
        .expect("t")
        .columns
        .clone();
    let cols: Vec<String> = cols.iter().map(|c| format!("\"{c}\"")).collect();
    let sql = format!(
        "INSERT INTO app_contact_base({0}) SELECT {0} FROM app_contact_base WHERE con_id = ?1",
        cols.join(", ")
    );
    db.conn().execute(&sql, [con]).expect("duplicate");
    only(&db.check(&[]), Invariant::NoDuplicates, app);
}

#[test]
fn duplicated_log_row_is_counted() {
    let db = baseline(40, false);
    let app = *db.outcomes.keys().next().expect("an app");
    db.conn()
        .execute(
            "INSERT INTO processing_log SELECT * FROM processing_log WHERE app_id = ?1",
            [app],
        )
        .expect("duplicate log");
    let report = db.check(&[]);
    // Two log rows for one app is both a coverage and a no-duplicates finding.
    assert_eq!(
        report.violated(),
        BTreeSet::from([Invariant::Coverage, Invariant::NoDuplicates]),
        "{:#?}",
        report.violations
    );
    assert!(report.violations.iter().all(|v| v.app_ids == vec![app]));
}

#[test]
fn success_app_missing_an_address_breaks_log_matches_data() {
    let db = baseline(60, true);
    // An address whose con_id belongs to one app only, so no other app's rows can stand in for it.
    let mut counts: HashMap<Key, usize> = HashMap::new();
    for (_, t) in db.ok_apps() {
        for r in &t["app_contact_address"] {
            *counts.entry(r.key.clone()).or_default() += 1;
        }
    }
    let (app, key) = db
        .ok_apps()
        .find_map(|(a, t)| {
            t["app_contact_address"]
                .iter()
                .find(|r| counts[&r.key] == 1)
                .map(|r| (a, r.key.clone()))
        })
        .expect("an app with an address");
    db.conn()
        .execute(
            "DELETE FROM app_contact_address WHERE con_id = ?1 AND address_type_enum = ?2",
            params![key[0], key[1]],
        )
        .expect("delete");
    let report = db.check(&[]);
    only(&report, Invariant::LogMatchesData, app);
    let msg = &report.violations[0].message;
    assert!(
        msg.contains(&format!("first app_contact_address {}", key_text(&key))),
        "{msg}"
    );
}

#[test]
fn failed_app_with_rows_breaks_log_matches_data() {
    let db = baseline(60, true);
    let app = db.failed_apps().next().expect("a failed app");
    db.conn()
        .execute(
            "INSERT INTO app_base(app_id, receive_date, decision_enum, paperless_flag) VALUES (?1, '2023-01-01 00:00:00', 1, 0)",
            [app],
        )
        .expect("plant row");
    only(&db.check(&[]), Invariant::LogMatchesData, app);
}

#[test]
fn changed_risk_band_breaks_content() {
    let db = baseline(60, true);
    let (app, band) = db
        .ok_apps()
        .map(|(a, t)| (a, t["app_base"][0].values["risk_band"].clone()))
        .next()
        .expect("a successful app");
    let other = if band.as_deref() == Some("A") {
        "B"
    } else {
        "A"
    };
    db.conn()
        .execute(
            "UPDATE app_base SET risk_band = ?1 WHERE app_id = ?2",
            params![other, app],
        )
        .expect("update");
    let report = db.check(&[]);
    only(&report, Invariant::Content, app);
    let msg = &report.violations[0].message;
    assert!(
        msg.starts_with(&format!(
            "app {app}: app_base.risk_band = '{other}', expected "
        )),
        "{msg}"
    );
}

/// Shared rows are compared by hash after the chunks; the message still names the column, both values and the key
/// (the one application involved is mapped again).
#[test]
fn changed_shared_address_breaks_content() {
    let db = baseline(60, true);
    // An address whose con_id belongs to one app only, so exactly one application expects it.
    let mut counts: HashMap<Key, usize> = HashMap::new();
    for (_, t) in db.ok_apps() {
        for r in &t["app_contact_address"] {
            *counts.entry(r.key.clone()).or_default() += 1;
        }
    }
    let (app, key) = db
        .ok_apps()
        .find_map(|(a, t)| {
            t["app_contact_address"]
                .iter()
                .find(|r| counts[&r.key] == 1)
                .map(|r| (a, r.key.clone()))
        })
        .expect("an app with an address");
    db.conn()
        .execute(
            "UPDATE app_contact_address SET city = 'Nowhere' WHERE con_id = ?1 AND address_type_enum = ?2",
            params![key[0], key[1]],
        )
        .expect("update");
    let report = db.check(&[]);
    only(&report, Invariant::Content, app);
    let msg = &report.violations[0].message;
    assert!(
        msg.starts_with(&format!(
            "app {app}: app_contact_address.city = 'Nowhere', expected "
        )),
        "{msg}"
    );
}

#[test]
fn malformed_doc_logged_success_breaks_content() {
    let db = baseline(60, true);
    let app = db.failed_apps().next().expect("a failed app");
    db.conn()
        .execute(
            "UPDATE processing_log SET status = 'success', failure_reason = NULL WHERE app_id = ?1",
            [app],
        )
        .expect("update");
    only(&db.check(&[]), Invariant::Content, app);
}

#[test]
fn valid_doc_logged_failed_breaks_content_and_rows() {
    let db = baseline(60, true);
    let (app, _) = db.ok_apps().next().expect("a successful app");
    db.conn()
        .execute("UPDATE processing_log SET status = 'failed', failure_reason = 'write: duplicate key' WHERE app_id = ?1", [app])
        .expect("update");
    let report = db.check(&[]);
    // The split-mode signature: the app's data is there (log-matches-data) and the log disagrees (content).
    assert!(
        report.violated().contains(&Invariant::Content),
        "{:#?}",
        report.violations
    );
    assert!(
        report.violated().contains(&Invariant::LogMatchesData),
        "{:#?}",
        report.violations
    );
}

#[test]
fn log_fence_not_matching_claim_breaks_fencing() {
    let db = baseline(40, true);
    let app = *db.outcomes.keys().nth(3).expect("an app");
    db.conn()
        .execute(
            "UPDATE processing_claim SET fence = fence + 1 WHERE app_id = ?1",
            [app],
        )
        .expect("update");
    only(&db.check(&[]), Invariant::Fencing, app);
}

fn ev(kind: EventKind, session: &str, ts_us: i64, apps: &[i64], fences: &[i64]) -> Event {
    let mut e =
        Event::new(Body::bare(kind), 0, session, apps.to_vec()).with_fences(fences.to_vec());
    e.ts_us = ts_us;
    e
}

#[test]
fn commit_after_a_higher_fence_claim_breaks_fencing() {
    let db = baseline(10, true);
    let good = [
        ev(EventKind::Claimed, "a", 1, &[1, 2], &[1, 1]),
        ev(EventKind::Committed, "a", 2, &[1], &[1]),
        ev(EventKind::Claimed, "b", 3, &[2], &[2]),
        ev(EventKind::LeaseLost, "a", 4, &[2], &[1]),
        ev(EventKind::Committed, "b", 5, &[2], &[2]),
    ];
    assert!(db.check(&good).violations.is_empty());

    let mut bad = good.to_vec();
    bad.push(ev(EventKind::Committed, "a", 6, &[2], &[1]));
    let report = db.check(&bad);
    only(&report, Invariant::Fencing, 2);
    assert_eq!(report.violations.len(), 1, "{:#?}", report.violations);

    // Committing after its own lease_lost, even with no rival claim recorded, is a violation too.
    let own = [
        ev(EventKind::Claimed, "a", 1, &[3], &[1]),
        ev(EventKind::LeaseLost, "a", 2, &[3], &[1]),
        ev(EventKind::Committed, "a", 3, &[3], &[1]),
    ];
    only(&db.check(&own), Invariant::Fencing, 3);

    // ... unless it claimed the app again in between.
    let reclaimed = [
        ev(EventKind::Claimed, "a", 1, &[3], &[1]),
        ev(EventKind::LeaseLost, "a", 2, &[3], &[1]),
        ev(EventKind::Claimed, "a", 3, &[3], &[2]),
        ev(EventKind::Committed, "a", 4, &[3], &[2]),
    ];
    assert!(db.check(&reclaimed).violations.is_empty());

    // A pipelined instance re-claims its own expired batch (fence 2) before the write of the old one (fence 1) is
    // refused: the loss is reported after the re-claim, and committing fence 2 is right.
    let pipelined = [
        ev(EventKind::Claimed, "a", 1, &[3], &[1]),
        ev(EventKind::Claimed, "a", 2, &[3], &[2]),
        ev(EventKind::LeaseLost, "a", 3, &[3], &[1]),
        ev(EventKind::Committed, "a", 4, &[3], &[2]),
    ];
    assert!(
        db.check(&pipelined).violations.is_empty(),
        "{:#?}",
        db.check(&pipelined).violations
    );
    // Committing the old fence after its own re-claim is not, even with no loss reported (a completion that
    // compares the owner only: planted `complete-by-owner`).
    let own_stale = [
        ev(EventKind::Claimed, "a", 1, &[3], &[1]),
        ev(EventKind::Claimed, "a", 2, &[3], &[2]),
        ev(EventKind::Committed, "a", 3, &[3], &[1]),
    ];
    only(&db.check(&own_stale), Invariant::Fencing, 3);
    // Committing the fence it lost is not.
    let stale = [
        ev(EventKind::Claimed, "a", 1, &[3], &[2]),
        ev(EventKind::LeaseLost, "a", 3, &[3], &[2]),
        ev(EventKind::Committed, "a", 4, &[3], &[2]),
    ];
    only(&db.check(&stale), Invariant::Fencing, 3);
}

#[test]
fn invariant_names_round_trip() {
    for i in Invariant::ALL {
        assert_eq!(i.name().parse::<Invariant>(), Ok(i));
        assert_eq!(
            serde_json::to_string(&i).expect("json"),
            format!("\"{}\"", i.name())
        );
    }
    assert!("nope".parse::<Invariant>().is_err());
}

#[test]
fn many_violations_are_folded() {
    let db = baseline(120, true);
    db.conn()
        .execute("DELETE FROM processing_log", [])
        .expect("delete");
    db.conn()
        .execute("DELETE FROM app_xml WHERE app_id > 200", [])
        .expect("noop");
    let report = db.check(&[]);
    // Coverage folds all missing apps into one violation; log-matches-data sees every row without a log row.
    let cov: Vec<&Violation> = report
        .violations
        .iter()
        .filter(|v| v.invariant == Invariant::Coverage)
        .collect();
    assert_eq!(cov.len(), 1);
    assert_eq!(cov[0].app_ids.len(), 120);
    assert!(
        report
            .violations
            .iter()
            .filter(|v| v.invariant == Invariant::LogMatchesData)
            .count()
            <= MAX_PER_INVARIANT
    );
}

#[test]
fn reads_a_database_without_claims_or_fence_column() {
    let db = baseline(20, true);
    let conn = db.conn();
    conn.execute_batch(
        "DROP TABLE processing_claim; ALTER TABLE processing_log DROP COLUMN fence;",
    )
    .expect("alter");
    assert!(db.check(&[]).violations.is_empty());
    let _ = Path::new(&db.path);
}

#[path = "baseline_tests.rs"]
mod baseline_tests;
