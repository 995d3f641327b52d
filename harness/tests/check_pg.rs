//! The checker on PostgreSQL with native column types (`harness = false`: a `fixtures::trial`, reported as skipped
//! where the server binaries are absent, failing under SHREDPROOF_REQUIRE_PG=1). The SQLite twin of this test is in
//! `harness/src/check/tests.rs`.

use fixtures::trial::Need;
use harness::check::reference::{reference_map, RefContract, RefOutcome};
use harness::check::{
    check_database, check_database_chunked, open_reader, CheckReport, Dialect, Invariant,
};
use std::collections::{BTreeMap, BTreeSet};

fn main() {
    fixtures::trial::run(fixtures::trials!([Need::Postgres] =>
        postgres_baseline_passes_and_catches_a_changed_value,
    ))
}

/// `report` violates exactly `inv`, naming `app`.
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

fn pg_type(data_type: &str) -> String {
    let t = data_type.to_ascii_lowercase();
    match t.as_str() {
        "int" => "INT".into(),
        "smallint" | "bit" => "SMALLINT".into(),
        "bigint" => "BIGINT".into(),
        "date" => "DATE".into(),
        "datetime" => "TIMESTAMP".into(),
        _ if t.starts_with("decimal") => t.replace("decimal", "NUMERIC"),
        _ => "TEXT".into(),
    }
}

/// The same baseline on PostgreSQL with native column types: `::text` must give the canonical text.
fn postgres_baseline_passes_and_catches_a_changed_value() {
    let cluster = fixtures::pg::PgCluster::start().expect("a private PostgreSQL cluster");
    let url = cluster
        .create_database("check_baseline")
        .expect("create database");
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    let c = RefContract::parse(fixtures::CONTRACT_JSON).expect("contract");
    let v: serde_json::Value = serde_json::from_str(fixtures::CONTRACT_JSON).expect("json");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    for m in v["mappings"].as_array().expect("mappings") {
        let key = format!(
            "{}.{}",
            m["target_table"].as_str().unwrap_or(""),
            m["target_column"].as_str().unwrap_or("")
        );
        types.insert(key, pg_type(m["data_type"].as_str().unwrap_or("")));
    }
    let fk_type = |col: &str| {
        types
            .iter()
            .find(|(k, _)| k.ends_with(&format!(".{col}")))
            .map(|(_, t)| t.clone())
    };
    let mut ddl = String::from(
        "CREATE SCHEMA shredproof;
         CREATE TABLE shredproof.app_xml(app_id BIGINT PRIMARY KEY, xml TEXT NOT NULL);
         CREATE TABLE shredproof.processing_log(app_id BIGINT PRIMARY KEY, status VARCHAR(10) NOT NULL,
            failure_reason VARCHAR(500), attempts INT NOT NULL, instance_id INT NOT NULL, session_id VARCHAR(64) NOT NULL,
            fence BIGINT, processed_at TIMESTAMP NOT NULL);",
    );
    for t in &c.tables {
        let cols: Vec<String> = t
            .columns
            .iter()
            .map(|col| {
                let ty = types
                    .get(&format!("{}.{col}", t.name))
                    .cloned()
                    .or_else(|| fk_type(col))
                    .unwrap_or("TEXT".into());
                format!("\"{col}\" {ty}")
            })
            .collect();
        ddl.push_str(&format!(
            "CREATE TABLE shredproof.\"{}\"({}, UNIQUE({}));",
            t.name,
            cols.join(", "),
            t.key.join(", ")
        ));
    }
    client.batch_execute(&ddl).expect("schema");
    let cfg = fixtures::GenConfig {
        count: 60,
        seed: 20240607,
        malformed_fraction: 0.1,
        ..Default::default()
    };
    let mut some_success = None;
    for d in fixtures::generate(&cfg) {
        client
            .execute(
                "INSERT INTO shredproof.app_xml(app_id, xml) VALUES ($1, $2)",
                &[&d.app_id, &d.xml],
            )
            .expect("source");
        let (status, reason) = match reference_map(&c, d.app_id, &d.xml) {
            RefOutcome::Success(tables) => {
                for t in &c.tables {
                    let cols: Vec<String> = t.columns.iter().map(|c| format!("\"{c}\"")).collect();
                    let marks: Vec<String> = t
                        .columns
                        .iter()
                        .enumerate()
                        .map(|(i, col)| {
                            let ty = types
                                .get(&format!("{}.{col}", t.name))
                                .cloned()
                                .or_else(|| fk_type(col))
                                .unwrap_or("TEXT".into());
                            format!("${}::text::{ty}", i + 1)
                        })
                        .collect();
                    let sql = format!(
                        "INSERT INTO shredproof.\"{}\"({}) VALUES ({}) ON CONFLICT DO NOTHING",
                        t.name,
                        cols.join(", "),
                        marks.join(", ")
                    );
                    for row in &tables[&t.name] {
                        let vals: Vec<Option<String>> = t
                            .columns
                            .iter()
                            .map(|c| row.values.get(c).cloned().flatten())
                            .collect();
                        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = vals
                            .iter()
                            .map(|v| v as &(dyn postgres::types::ToSql + Sync))
                            .collect();
                        client.execute(&sql, &refs).expect("insert row");
                    }
                }
                some_success.get_or_insert(d.app_id);
                ("success", None)
            }
            RefOutcome::Failed { stage, message } => {
                ("failed", Some(format!("{stage}: {message}")))
            }
        };
        client
            .execute(
                "INSERT INTO shredproof.processing_log VALUES ($1, $2, $3, 1, 0, 's-0', NULL, now())",
                &[&d.app_id, &status, &reason],
            )
            .expect("log");
    }
    let check = || {
        let mut r = open_reader(&url).expect("pg reader");
        assert_eq!(r.dialect(), Dialect::Postgres);
        let whole = check_database(r.as_mut(), fixtures::CONTRACT_JSON, &[]).expect("check runs");
        // Pages of 3: keyset paging must follow app_id order, not the order of its text (1, 10, 100, 11, …).
        let paged = check_database_chunked(r.as_mut(), fixtures::CONTRACT_JSON, &[], 3)
            .expect("check runs");
        assert_eq!(whole.stats.apps, paged.stats.apps);
        assert_eq!(
            whole.violated(),
            paged.violated(),
            "{:#?}",
            paged.violations
        );
        whole
    };
    let report = check();
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    let app = some_success.expect("a successful app");
    client
        .execute("UPDATE shredproof.app_base SET requested_amount = requested_amount + 0.01 WHERE app_id = $1", &[&app])
        .expect("update");
    client
        .execute("UPDATE shredproof.app_base SET requested_amount = 1 WHERE app_id = $1 AND requested_amount IS NULL", &[&app])
        .expect("update");
    only(&check(), Invariant::Content, app);
}
