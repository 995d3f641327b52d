//! The comparison with the no-fault baseline (`baseline.rs`), under a contract outside the reference mapping's
//! format: an identical database passes, every planted bug trips the invariant meant to catch it, naming the app.

use super::*;

/// The project contract with its `varchar` columns declared `string`: the processor accepts it (same columns,
/// same values), the reference mapping does not, so the checker must judge `content` by comparison.
fn generic() -> String {
    fixtures::CONTRACT_JSON.replace("\"varchar\"", "\"string\"")
}

fn snap(db: &Db) -> baseline::Snapshot {
    let mut r = SqliteReader::open(&db.path).expect("open reader");
    let rep = check_database_with(&mut r, &generic(), &[], None).expect("check runs");
    assert!(
        matches!(rep.content_by, ContentBy::NotChecked(_)),
        "{:?}",
        rep.content_by
    );
    rep.snapshot.expect("a snapshot under a generic contract")
}

fn check_against(db: &Db, base: &baseline::Snapshot) -> CheckReport {
    let mut r = SqliteReader::open(&db.path).expect("open reader");
    let rep = check_database_with(&mut r, &generic(), &[], Some(base)).expect("check runs");
    assert!(
        matches!(rep.content_by, ContentBy::Baseline(_)),
        "{:?}",
        rep.content_by
    );
    rep
}

/// Two databases a correct processor would leave from the same documents.
fn pair(count: usize, unique: bool) -> (Db, baseline::Snapshot) {
    let base = super::baseline(count, unique);
    let s = snap(&base);
    (super::baseline(count, unique), s)
}

#[test]
fn the_generic_contract_is_one_the_processor_accepts_and_the_reference_does_not() {
    processor::contract::Contract::from_json(&generic()).expect("the processor accepts it");
    assert!(content_needs_baseline(&generic()));
    assert!(!content_needs_baseline(fixtures::CONTRACT_JSON));
}

#[test]
fn identical_run_passes_and_rows_are_attributed() {
    let (db, base) = pair(150, true);
    let rep = check_against(&db, &base);
    assert!(rep.violations.is_empty(), "{:#?}", rep.violations);
    assert_eq!(rep.stats.apps, 150);
    assert_eq!(rep.stats.success + rep.stats.failed, 150);
    assert_eq!(rep.stats.rows["app_base"], rep.stats.success);
    assert!(rep.stats.rows["app_contact_address"] > 0);
}

#[test]
fn a_shared_row_written_by_another_successful_app_is_not_a_difference() {
    let (db, base) = pair(400, true);
    // A contact (key con_id) referenced by two successful apps, stored once naming the first: name the other.
    let mut first: HashMap<Key, i64> = HashMap::new();
    let (con, other) = db
        .ok_apps()
        .find_map(|(a, t)| {
            t["app_contact_base"]
                .iter()
                .find_map(|r| match first.get(&r.key) {
                    Some(f) if *f != a => Some((r.key[0].clone(), a)),
                    _ => {
                        first.insert(r.key.clone(), a);
                        None
                    }
                })
        })
        .expect("a shared contact in 400 documents");
    let n = db
        .conn()
        .execute(
            "UPDATE app_contact_base SET app_id = ?1 WHERE con_id = ?2",
            params![other, con],
        )
        .expect("update");
    assert_eq!(n, 1);
    let rep = check_against(&db, &base);
    assert!(rep.violations.is_empty(), "{:#?}", rep.violations);
}

#[test]
fn a_changed_value_breaks_content() {
    let (db, base) = pair(60, true);
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
    let rep = check_against(&db, &base);
    only(&rep, Invariant::Content, app);
    let msg = &rep.violations[0].message;
    assert!(
        msg.contains(&format!("risk_band = '{other}' (baseline "))
            && msg.contains("differ from the baseline"),
        "{msg}"
    );
}

#[test]
fn an_extra_copy_of_a_row_breaks_no_duplicates() {
    let (db, base) = pair(60, false);
    let (app, con) = db
        .ok_apps()
        .find_map(|(a, t)| t["app_contact_base"].first().map(|r| (a, r.key[0].clone())))
        .expect("an app with a contact");
    db.conn()
        .execute(
            "INSERT INTO app_contact_base SELECT * FROM app_contact_base WHERE con_id = ?1",
            [con],
        )
        .expect("duplicate");
    let rep = check_against(&db, &base);
    assert!(
        rep.violated().contains(&Invariant::NoDuplicates),
        "{:#?}",
        rep.violations
    );
    assert!(rep
        .violations
        .iter()
        .any(|v| v.invariant == Invariant::NoDuplicates && v.app_ids.contains(&app)));
    // The copy's children find no single owner any more: that is a difference too, never a pass.
    assert!(rep.violated().is_subset(&BTreeSet::from([
        Invariant::NoDuplicates,
        Invariant::Content,
        Invariant::LogMatchesData
    ])));
}

#[test]
fn a_missing_row_of_a_successful_app_breaks_log_matches_data() {
    let (db, base) = pair(60, true);
    let app = db
        .ok_apps()
        .find(|(_, t)| !t["app_contact_base"].is_empty())
        .map(|(a, _)| a)
        .expect("an app with a contact");
    db.conn()
        .execute(
            "DELETE FROM app_contact_employment WHERE con_id IN (SELECT con_id FROM app_contact_base WHERE app_id = ?1)",
            [app],
        )
        .expect("delete");
    db.conn()
        .execute(
            "DELETE FROM app_contact_address WHERE con_id IN (SELECT con_id FROM app_contact_base WHERE app_id = ?1)",
            [app],
        )
        .expect("delete");
    db.conn()
        .execute("DELETE FROM app_contact_base WHERE app_id = ?1", [app])
        .expect("delete");
    only(&check_against(&db, &base), Invariant::LogMatchesData, app);
}

#[test]
fn rows_of_a_failed_app_break_log_matches_data_even_without_a_baseline() {
    let db = super::baseline(60, true);
    let app = db.failed_apps().next().expect("a failed app");
    db.conn()
        .execute(
            "INSERT INTO app_base(app_id, receive_date, decision_enum, paperless_flag) VALUES (?1, '2023-01-01 00:00:00', 1, 0)",
            [app],
        )
        .expect("plant row");
    let mut r = SqliteReader::open(&db.path).expect("open reader");
    let rep = check_database_with(&mut r, &generic(), &[], None).expect("check runs");
    only(&rep, Invariant::LogMatchesData, app);
}

#[test]
fn a_changed_verdict_breaks_content() {
    let (db, base) = pair(60, true);
    let (app, _) = db.ok_apps().next().expect("a successful app");
    db.conn()
        .execute(
            "UPDATE processing_log SET status = 'failed', failure_reason = 'write: duplicate key' WHERE app_id = ?1",
            [app],
        )
        .expect("update");
    let rep = check_against(&db, &base);
    // The split-mode signature: the log disagrees with the baseline (content), the app's rows stay (log-matches-data).
    assert_eq!(
        rep.violated(),
        BTreeSet::from([Invariant::Content, Invariant::LogMatchesData]),
        "{:#?}",
        rep.violations
    );
    assert!(rep.violations.iter().all(|v| v.app_ids == vec![app]));
    let failed = db.failed_apps().next().expect("a failed app");
    db.conn()
        .execute(
            "UPDATE processing_log SET failure_reason = 'write: something else' WHERE app_id = ?1",
            [failed],
        )
        .expect("update");
    let rep = check_against(&db, &base);
    assert!(
        rep.violations
            .iter()
            .any(|v| v.invariant == Invariant::Content && v.app_ids == vec![failed]),
        "a failure at another stage than the baseline's: {:#?}",
        rep.violations
    );
}

#[test]
fn coverage_holds_without_a_baseline() {
    let db = super::baseline(40, true);
    let app = *db.outcomes.keys().next().expect("an app");
    db.conn()
        .execute("DELETE FROM processing_log WHERE app_id = ?1", [app])
        .expect("delete");
    let mut r = SqliteReader::open(&db.path).expect("open reader");
    let rep = check_database_with(&mut r, &generic(), &[], None).expect("check runs");
    assert!(
        rep.violated().contains(&Invariant::Coverage),
        "{:#?}",
        rep.violations
    );
    assert_eq!(rep.stats.missing, 1);
}

#[test]
fn layout_of_both_real_contracts_reads_their_tables_and_links() {
    let Ok(seed) = crate::scenario::seed_root(Path::new(env!("CARGO_MANIFEST_DIR"))) else {
        eprintln!("skipped: the replaced system's seed folder is absent");
        return;
    };
    for (f, first, child) in [
        ("mapping_contract.json", "app_base", "app_contact_address"),
        ("mapping_contract_rl.json", "app_base", "app_warranties_rl"),
    ] {
        let text = std::fs::read_to_string(seed.join("contracts").join(f)).expect("contract");
        assert!(content_needs_baseline(&text), "{f}");
        let l = baseline::Layout::parse(&text).expect(f);
        assert_eq!(l.tables[0], first, "{f}");
        assert!(l.tables.iter().any(|t| t == child), "{f}");
        assert!(!l.tables.iter().any(|t| t == "processing_log"), "{f}");
        assert_eq!(l.target_schema, "migration");
    }
}

#[test]
fn a_success_whose_rows_are_keyed_by_another_id_breaks_log_matches_data_without_a_baseline() {
    // What a processor that keys rows by the document's Request@ID leaves: the baseline has the same bug, so only
    // the run alone can show it — a success owning nothing, and rows owned by an id with no log row.
    let db = super::baseline(60, true);
    let (app, _) = db.ok_apps().next().expect("a successful app");
    let other = 777_000_001_i64;
    for t in ["app_contact_base", "app_base"] {
        db.conn()
            .execute(
                &format!("UPDATE {t} SET app_id = ?1 WHERE app_id = ?2"),
                [other, app],
            )
            .expect("re-key");
    }
    let mut r = SqliteReader::open(&db.path).expect("open reader");
    let rep = check_database_with(&mut r, &generic(), &[], None).expect("check runs");
    assert_eq!(
        rep.violated(),
        BTreeSet::from([Invariant::LogMatchesData]),
        "{:#?}",
        rep.violations
    );
    assert!(
        rep.violations
            .iter()
            .any(|v| v.app_ids == vec![app] && v.message.contains("own no row")),
        "{:#?}",
        rep.violations
    );
    assert!(
        rep.violations.iter().any(|v| v.app_ids.contains(&other)),
        "{:#?}",
        rep.violations
    );
}
