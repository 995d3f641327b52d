//! Unit tests of the reference mapping against the README semantics, on the project's own contract.

use super::*;

fn contract() -> RefContract {
    RefContract::parse(fixtures::CONTRACT_JSON).expect("the project contract parses")
}

const APP_OK: &str = r#"app_receive_date="2023-04-05T10:22:31" decision_tp_c="APPRV""#;

fn doc(app_attrs: &str, inner: &str) -> String {
    format!(
        r#"<Provenir><Request ID="1"><CustData><application {app_attrs}>{inner}</application></CustData></Request></Provenir>"#
    )
}

fn ok(xml: &str) -> BTreeMap<String, Vec<RefRow>> {
    match reference_map(&contract(), 1, xml) {
        RefOutcome::Success(t) => t,
        other => panic!("expected success, got {other:?}"),
    }
}

fn fail(xml: &str) -> (String, String) {
    match reference_map(&contract(), 1, xml) {
        RefOutcome::Failed { stage, message } => (stage, message),
        other => panic!("expected failure, got {other:?}"),
    }
}

fn val(rows: &BTreeMap<String, Vec<RefRow>>, table: &str, i: usize, col: &str) -> Option<String> {
    rows[table][i]
        .values
        .get(col)
        .cloned()
        .unwrap_or_else(|| panic!("no column {table}.{col}"))
}

#[test]
fn application_row_uses_every_mapping_type() {
    let rows = ok(&doc(
        r#"app_receive_date="2023-04-05T10:22:31" decision_tp_c="DECLN" app_source_ind="B" product_line="GOLD"
           requested_amount_txt="USD $4,500" priority_enabled="TRUE" sc_bank_account_num="12-34 56" risk_score="+0650"
           campaign_num="" underwriter_notes="a &amp; b""#,
        "",
    ));
    assert_eq!(rows["app_base"].len(), 1);
    assert_eq!(rows["app_base"][0].key, vec![Some("1".to_owned())]);
    let v = |c| val(&rows, "app_base", 0, c);
    assert_eq!(v("app_id").as_deref(), Some("1"));
    assert_eq!(v("receive_date").as_deref(), Some("2023-04-05 10:22:31"));
    assert_eq!(v("decision_enum").as_deref(), Some("2"));
    assert_eq!(v("app_source_enum").as_deref(), Some("2"));
    assert_eq!(v("product_line").as_deref(), Some("GOLD"));
    assert_eq!(v("requested_amount").as_deref(), Some("4500.00"));
    // Absent with a default: the default goes through char_to_bit.
    assert_eq!(v("paperless_flag").as_deref(), Some("0"));
    assert_eq!(v("priority_flag").as_deref(), Some("1"));
    assert_eq!(v("bank_account_num").as_deref(), Some("123456"));
    assert_eq!(v("risk_score").as_deref(), Some("650"));
    assert_eq!(v("risk_band").as_deref(), Some("B"));
    // Empty string is absent, and nullable without default gives NULL.
    assert_eq!(v("campaign_num"), None);
    assert_eq!(v("notes").as_deref(), Some("a & b"));
    for t in [
        "app_contact_base",
        "app_contact_address",
        "app_contact_employment",
    ] {
        assert!(rows[t].is_empty(), "{t}");
    }
}

#[test]
fn lookups_that_miss_give_null() {
    let rows = ok(&doc(
        r#"app_receive_date="2023-04-05" decision_tp_c="PEND" app_source_ind="Z" priority_enabled="maybe"
           sc_bank_account_num="n/a" requested_amount_txt="none""#,
        "",
    ));
    let v = |c| val(&rows, "app_base", 0, c);
    assert_eq!(v("receive_date").as_deref(), Some("2023-04-05 00:00:00"));
    assert_eq!(v("app_source_enum"), None);
    assert_eq!(v("priority_flag"), None);
    assert_eq!(v("bank_account_num"), None);
    assert_eq!(v("requested_amount"), None);
    // risk_score NULL: every comparison is false, so CASE falls to ELSE.
    assert_eq!(v("risk_band").as_deref(), Some("C"));
}

#[test]
fn contacts_filters_fk_and_curr_address() {
    let rows = ok(&doc(
        APP_OK,
        r#"<contact con_id="10" ac_role_tp_c="PR" first_name="Ann" monthly_income="$1,234.56" initials="É" birth_date="04/05/1980">
             <contact_address address_tp_c="PREV" city="Old" zip="11111"/>
             <contact_address address_tp_c="MAIL" city="Mail" zip="22222"/>
             <contact_address address_tp_c="CURR" city="Here" zip="12345-6789" months_at_address="007"/>
             <contact_employment employment_tp_c="CURR" employer_name="Acme" monthly_salary="3000"/>
             <contact_employment employment_tp_c="OTHR" employer_name="Nope"/>
           </contact>
           <contact con_id="11" ac_role_tp_c="GUAR" first_name="Gus">
             <contact_address address_tp_c="CURR" city="Gone"/>
           </contact>
           <contact ac_role_tp_c="AUTHU" first_name="NoId"/>
           <contact con_id="12" ac_role_tp_c="AUTHU" first_name="Bob"/>"#,
    ));
    let base = &rows["app_contact_base"];
    assert_eq!(base.len(), 2, "GUAR and id-less contacts are filtered out");
    let v = |i, c| val(&rows, "app_contact_base", i, c);
    assert_eq!(v(0, "con_id").as_deref(), Some("10"));
    assert_eq!(v(0, "app_id").as_deref(), Some("1"), "fk from app_base");
    assert_eq!(v(0, "contact_type_enum").as_deref(), Some("281"));
    assert_eq!(
        v(0, "middle_initial").as_deref(),
        Some("É"),
        "length counts chars, not bytes"
    );
    assert_eq!(v(0, "birth_date").as_deref(), Some("1980-04-05"));
    assert_eq!(v(0, "monthly_income").as_deref(), Some("1234.56"));
    assert_eq!(v(0, "annual_income").as_deref(), Some("14814.72"));
    assert_eq!(
        v(0, "curr_city").as_deref(),
        Some("Here"),
        "the CURR address, not the first one"
    );
    assert_eq!(
        v(0, "curr_zip").as_deref(),
        Some("123456789"),
        "curr_address_only then numbers_only"
    );
    assert_eq!(v(1, "con_id").as_deref(), Some("12"));
    assert_eq!(v(1, "contact_type_enum").as_deref(), Some("280"));
    assert_eq!(v(1, "curr_city"), None);
    assert_eq!(v(1, "annual_income"), None, "NULL * 12 is NULL");

    let addr = &rows["app_contact_address"];
    assert_eq!(
        addr.len(),
        2,
        "MAIL filtered, GUAR's address vanishes with its parent"
    );
    assert_eq!(
        addr[0].key,
        vec![Some("10".to_owned()), Some("2".to_owned())]
    );
    assert_eq!(addr[1].values["months_at_address"].as_deref(), Some("7"));
    assert_eq!(addr[1].values["zip"].as_deref(), Some("123456789"));
    let emp = &rows["app_contact_employment"];
    assert_eq!(emp.len(), 1);
    assert_eq!(emp[0].values["con_id"].as_deref(), Some("10"));
    assert_eq!(emp[0].values["monthly_salary"].as_deref(), Some("3000.00"));
    assert_eq!(
        emp[0].values["self_employed_flag"].as_deref(),
        Some("0"),
        "default 'false' via boolean_to_bit"
    );
}

#[test]
fn failures_have_the_readme_messages() {
    let (s, m) = fail("<Application><Request ID=\"1\"/></Application>");
    assert_eq!(
        (s.as_str(), m.as_str()),
        (
            "parse",
            "root element is <Application>, expected <Provenir>"
        )
    );
    let (s, _) = fail("<Provenir><Request ID=\"1\"></Provenir>");
    assert_eq!(s, "parse");
    let (s, _) = fail("not xml at all");
    assert_eq!(s, "parse");
    let (_, m) = fail("<Provenir><Request ID=\"1\"/></Provenir>");
    assert_eq!(
        m,
        "application element /Provenir/Request/CustData/application not found"
    );
    let (s, m) = fail(&doc(
        r#"app_receive_date="2023-04-05" decision_tp_c="NOPE""#,
        "",
    ));
    assert_eq!(
        (s.as_str(), m.as_str()),
        ("map", "app_base.decision_enum must not be null")
    );
    let (_, m) = fail(&doc(r#"decision_tp_c="APPRV""#, ""));
    assert_eq!(
        m,
        "missing required attribute app_receive_date for app_base.receive_date"
    );
    let (_, m) = fail(&doc(
        r#"app_receive_date="2023-02-30" decision_tp_c="APPRV""#,
        "",
    ));
    assert_eq!(
        m,
        "'2023-02-30' is not a valid datetime for app_base.receive_date"
    );
    let (_, m) = fail(&doc(&format!("{APP_OK} risk_score=\"12x\""), ""));
    assert_eq!(m, "'12x' is not a valid int for app_base.risk_score");
    let (_, m) = fail(&doc(&format!("{APP_OK} risk_score=\"3000000000\""), ""));
    assert!(m.contains("not a valid int"), "{m}");
    let long = "x".repeat(2001);
    let (_, m) = fail(&doc(&format!("{APP_OK} underwriter_notes=\"{long}\""), ""));
    assert_eq!(m, "value too long for app_base.notes (2001 > 2000)");
    let (_, m) = fail(&doc(
        APP_OK,
        r#"<contact con_id="5" ac_role_tp_c="PR" first_name="A" initials="ÉÉ"/>"#,
    ));
    assert_eq!(
        m,
        "value too long for app_contact_base.middle_initial (2 > 1)"
    );
    let (_, m) = fail(&doc(
        APP_OK,
        r#"<contact con_id="5" ac_role_tp_c="PR" first_name="A"/><contact con_id="5" ac_role_tp_c="AUTHU" first_name="B"/>"#,
    ));
    assert_eq!(m, "duplicate key (con_id) = (5) in app_contact_base");
    let (_, m) = fail(&doc(
        APP_OK,
        r#"<contact con_id="5" ac_role_tp_c="PR" first_name="A"><contact_address address_tp_c="CURR"/><contact_address address_tp_c="CURR"/></contact>"#,
    ));
    assert_eq!(
        m,
        "duplicate key (con_id, address_type_enum) = (5, 1) in app_contact_address"
    );
    let (_, m) = fail(&doc(APP_OK, r#"<contact con_id="5" ac_role_tp_c="PR"/>"#));
    assert_eq!(
        m,
        "missing required attribute first_name for app_contact_base.first_name"
    );
    let (_, m) = fail(&doc(APP_OK, "").replace("ID=\"1\"", "ID=\"2\""));
    assert_eq!(m, "Request@ID 2 does not match app_id 1");
    let (_, m) = fail(&doc(APP_OK, "").replace("ID=\"1\"", ""));
    assert_eq!(m, "missing required attribute ID for app_base.app_id");
}

#[test]
fn bom_and_declaration_are_accepted() {
    let xml = format!(
        "\u{feff}<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- c -->{}",
        doc(APP_OK, "")
    );
    assert_eq!(ok(&xml)["app_base"].len(), 1);
}

#[test]
fn conversions() {
    assert_eq!(decimal_canon("1.005", 12, 2).as_deref(), Some("1.01"));
    assert_eq!(decimal_canon("-1.005", 12, 2).as_deref(), Some("-1.01"));
    assert_eq!(decimal_canon("1.004", 12, 2).as_deref(), Some("1.00"));
    assert_eq!(
        decimal_canon("9.995", 3, 2).as_deref(),
        None,
        "rounds to 10.00: too many integer digits"
    );
    assert_eq!(
        decimal_canon("9999999999.99", 12, 2).as_deref(),
        Some("9999999999.99")
    );
    assert_eq!(decimal_canon("99999999999", 12, 2), None);
    assert_eq!(decimal_canon("-0.004", 12, 2).as_deref(), Some("0.00"));
    assert_eq!(decimal_canon("007", 12, 2).as_deref(), Some("7.00"));
    assert_eq!(decimal_canon("+7.5", 5, 0).as_deref(), Some("8"));
    assert_eq!(decimal_canon(".5", 12, 2), None);
    assert_eq!(decimal_canon("5.", 12, 2), None);
    assert_eq!(decimal_canon("1e3", 12, 2), None);
    assert_eq!(
        extract_numeric("USD $4,500.00 per month").as_deref(),
        Some("4500.00")
    );
    assert_eq!(extract_numeric("a-b -12.5x").as_deref(), Some("-12.5"));
    assert_eq!(extract_numeric("5.").as_deref(), Some("5"));
    assert_eq!(extract_numeric("none"), None);
    assert_eq!(parse_date("2024-02-29").as_deref(), Some("2024-02-29"));
    assert_eq!(parse_date("02/29/2024").as_deref(), Some("2024-02-29"));
    assert_eq!(parse_date("2023-02-29"), None);
    assert_eq!(parse_date("2023-4-5"), None);
    assert_eq!(parse_date("13/01/2023"), None);
    assert_eq!(
        parse_datetime("2023-04-05 10:22:31").as_deref(),
        Some("2023-04-05 10:22:31")
    );
    assert_eq!(
        parse_datetime("2023-04-05T23:59:59").as_deref(),
        Some("2023-04-05 23:59:59")
    );
    assert_eq!(parse_datetime("2023-04-05T24:00:00"), None);
    assert_eq!(parse_datetime("2023-04-05T10:22:31Z"), None);
    let int = DataType::Int {
        min: i16::MIN.into(),
        max: i16::MAX.into(),
    };
    assert_eq!(
        convert(&int, " -0012 ").ok().map(|v| v.0).as_deref(),
        Some("-12")
    );
    assert!(convert(&int, "40000").is_err());
    assert!(convert(&DataType::Bit, "2").is_err());
}

fn eval(src: &str, row: &[(&str, Val)]) -> Val {
    let e = parse_expr(src).unwrap_or_else(|err| panic!("{src}: {err}"));
    let row: BTreeMap<&str, Val> = row.iter().map(|(k, v)| (*k, v.clone())).collect();
    e.eval(&row)
}

#[test]
fn expressions() {
    use Val::*;
    assert_eq!(eval("1 + 2 * 3", &[]), Num(7.0));
    assert_eq!(eval("(1 + 2) * 3", &[]), Num(9.0));
    assert_eq!(eval("-2 * -3 - 1", &[]), Num(5.0));
    assert_eq!(eval("10 / 4", &[]), Num(2.5));
    assert_eq!(eval("10 / 0", &[]), Null);
    assert_eq!(eval("a + 1", &[("a", Null)]), Null);
    assert_eq!(
        eval("case when a is null then 'n' else 'x' end", &[("a", Null)]),
        Str("n".into())
    );
    assert_eq!(
        eval(
            "CASE WHEN a IS NOT NULL THEN 'n' ELSE 'x' END",
            &[("a", Null)]
        ),
        Str("x".into())
    );
    assert_eq!(
        eval("CASE WHEN a = 1 THEN 'y' END", &[("a", Num(2.0))]),
        Null
    );
    assert_eq!(
        eval("CASE WHEN a <> 1 THEN 'y' END", &[("a", Null)]),
        Null,
        "comparison with NULL is false"
    );
    // AND binds tighter than OR.
    let r = [("a", Num(0.0)), ("b", Num(0.0)), ("c", Num(3.0))];
    assert_eq!(
        eval("CASE WHEN a > 1 AND b < 2 OR c = 3 THEN 1 ELSE 0 END", &r),
        Num(1.0)
    );
    assert_eq!(
        eval("CASE WHEN (a > 1 OR b < 2) AND c = 4 THEN 1 ELSE 0 END", &r),
        Num(0.0)
    );
    // A parenthesised arithmetic operand at the start of a predicate.
    assert_eq!(
        eval("CASE WHEN (c + 1) * 2 >= 8 THEN 'big' ELSE 'small' END", &r),
        Str("big".into())
    );
    assert_eq!(
        eval(
            "CASE WHEN ((c + 1) * 2 >= 8) THEN 'big' ELSE 'small' END",
            &r
        ),
        Str("big".into())
    );
    assert_eq!(
        eval(
            "CASE WHEN s = 'PR' THEN 1 WHEN s != 'PR' THEN 2 END",
            &[("s", Str("X".into()))]
        ),
        Num(2.0)
    );
    assert_eq!(
        eval("1 + CASE WHEN c > 2 THEN 10 ELSE 0 END", &r),
        Num(11.0)
    );
    for bad in [
        "CASE END",
        "1 +",
        "a = 1",
        "CASE WHEN a THEN 1 END",
        "'open",
        "1 $ 2",
        "(1",
    ] {
        assert!(parse_expr(bad).is_err(), "{bad} should not parse");
    }
}

#[test]
fn calculated_result_is_converted_to_the_column_type() {
    // 0.1 * 12 is 1.2000000000000002 in f64: rendered, then rounded to the scale.
    let rows = ok(&doc(
        APP_OK,
        r#"<contact con_id="5" ac_role_tp_c="PR" first_name="A" monthly_income="0.1"/>"#,
    ));
    assert_eq!(
        val(&rows, "app_contact_base", 0, "annual_income").as_deref(),
        Some("1.20")
    );
}

#[test]
fn contract_errors_name_the_entry() {
    let bad = fixtures::CONTRACT_JSON.replace("\"numbers_only\"", "\"digits_only\"");
    let err = RefContract::parse(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("unknown mapping_type 'digits_only'"), "{err}");
    assert!(err.contains("bank_account_num"), "{err}");
    let bad = fixtures::CONTRACT_JSON.replace("monthly_income * 12", "monthly_income * * 12");
    assert!(RefContract::parse(&bad).is_err());
    let bad = fixtures::CONTRACT_JSON.replace("monthly_income * 12", "no_such_column * 12");
    assert!(RefContract::parse(&bad).is_err());
    let c = contract();
    assert_eq!(c.app_table, "app_base");
    assert_eq!(c.app_key, "app_id");
    let shared: Vec<&str> = c
        .tables
        .iter()
        .filter(|t| t.shared)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(
        shared,
        [
            "app_contact_base",
            "app_contact_address",
            "app_contact_employment"
        ]
    );
}

#[test]
fn generated_documents_agree_with_their_expected_outcome() {
    let c = contract();
    let cfg = fixtures::GenConfig {
        count: 300,
        seed: 11,
        malformed_fraction: 0.2,
        ..Default::default()
    };
    let mut docs = fixtures::generate(&cfg);
    docs.extend(fixtures::edge_cases());
    for d in docs {
        let out = reference_map(&c, d.app_id, &d.xml);
        match (&d.expect, &out) {
            (fixtures::Expect::Valid, RefOutcome::Success(_))
            | (fixtures::Expect::Malformed(_), RefOutcome::Failed { .. }) => {}
            _ => panic!(
                "app {}: expected {:?}, reference gave {out:?}",
                d.app_id, d.expect
            ),
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    #[test]
    fn reference_never_panics_on_generated_documents(seed in 0u64..u64::MAX, cut in 0usize..4000) {
        let c = contract();
        let cfg = fixtures::GenConfig { count: 5, seed, malformed_fraction: 0.5, bom_fraction: 0.3, ..Default::default() };
        for d in fixtures::generate(&cfg) {
            let _ = reference_map(&c, d.app_id, &d.xml);
            // Any prefix of a document too (cut on a char boundary).
            let mut at = cut.min(d.xml.len());
            while !d.xml.is_char_boundary(at) {
                at -= 1;
            }
            let _ = reference_map(&c, d.app_id, &d.xml[..at]);
        }
    }
}
