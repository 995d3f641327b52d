//! Contract × document → rows. Pure and synchronous: no I/O, no SQL, no clocks. A document either maps to a
//! complete `MappedApp` or fails with a stage and a reason; it never panics on any input.

use crate::budget::Budget;
use crate::contract::{Column, Contract, Source, Transform};
use crate::expr::{scalar_of, Scalar};
use crate::value::{convert, f64_text, ColType, ConvertError, Value};
use crate::xml::{self, ParsedDoc};
use std::collections::HashMap;

pub use crate::failure::{Failure, Stage, MAX_REASON_CHARS};
pub use crate::rows::MappedApp;

fn map_err(msg: impl Into<String>) -> Failure {
    Failure::new(Stage::Map, msg)
}

/// Parses and maps one document.
pub fn map_document(contract: &Contract, app_id: i64, xml: &str) -> Result<MappedApp, Failure> {
    map_document_within(contract, app_id, xml, &Budget::unlimited())
}

/// Parses and maps one document under `budget`: a passed deadline fails it with `Stage::Limit`, a set cancel flag
/// with `Stage::Cancelled` (see [`Stage`]).
pub fn map_document_within(
    contract: &Contract,
    app_id: i64,
    xml: &str,
    budget: &Budget,
) -> Result<MappedApp, Failure> {
    if let Some(plan) = &contract.real {
        return crate::contract::real::map_document_real(contract, plan, app_id, xml, budget);
    }
    let doc = xml::parse_within(xml, contract, budget)?;
    budget.check().map_err(Failure::interrupted)?;
    map_parsed_within(contract, app_id, &doc, budget)
}

/// Rows between two budget checks while mapping.
const ROWS_PER_BUDGET_CHECK: usize = 2048;

/// Per-document indexes built once, so no row scans the document (issue 11: mapping is linear in its size).
struct DocIndex {
    /// Elements of each trie node, in document order.
    by_node: Vec<Vec<usize>>,
}

impl DocIndex {
    fn new(contract: &Contract, doc: &ParsedDoc<'_>) -> Self {
        let mut by_node = vec![Vec::new(); contract.nodes.len()];
        for (ei, e) in doc.elems.iter().enumerate() {
            by_node[e.node].push(ei);
        }
        DocIndex { by_node }
    }
    fn first(&self, node: usize) -> Option<usize> {
        self.by_node[node].first().copied()
    }
}

/// Maps an already parsed document.
pub fn map_parsed(
    contract: &Contract,
    app_id: i64,
    doc: &ParsedDoc<'_>,
) -> Result<MappedApp, Failure> {
    map_parsed_within(contract, app_id, doc, &Budget::unlimited())
}

/// [`map_parsed`] under `budget`, checked every few thousand rows.
pub fn map_parsed_within(
    contract: &Contract,
    app_id: i64,
    doc: &ParsedDoc<'_>,
    budget: &Budget,
) -> Result<MappedApp, Failure> {
    let index = DocIndex::new(contract, doc);
    let app_elem = index.first(contract.app_node).ok_or_else(|| {
        map_err(format!(
            "application element {} not found",
            contract.node_path(contract.app_node)
        ))
    })?;
    let mut rows: Vec<Vec<Vec<Value>>> = Vec::with_capacity(contract.tables.len());
    // Per table: element → row index, so children find their parent row without a search.
    let mut row_of_elem: Vec<HashMap<usize, usize>> = Vec::with_capacity(contract.tables.len());
    let mut since_check = 0usize;
    for (ti, table) in contract.tables.iter().enumerate() {
        let mut t_rows = Vec::new();
        let mut t_elems: HashMap<usize, usize> = HashMap::new();
        let curr = curr_address_index(contract, ti, doc, &index);
        match (table.row_node, table.parent) {
            (Some(row_node), Some(parent)) => {
                let parent_node = contract.tables[parent]
                    .row_node
                    .unwrap_or(contract.app_node);
                // (parent row, element) for every kept element, then stable-sorted by parent row: the same order
                // as walking parents and, under each, the document.
                let mut found: Vec<(usize, usize)> = Vec::new();
                for &ei in &index.by_node[row_node] {
                    if let Some(pelem) = kept_ancestor(doc, contract, ei, parent_node) {
                        if let Some(&pi) = row_of_elem[parent].get(&pelem) {
                            found.push((pi, ei));
                        }
                    }
                }
                found.sort_by_key(|&(pi, _)| pi);
                for (pi, ei) in found {
                    since_check += 1;
                    if since_check >= ROWS_PER_BUDGET_CHECK {
                        since_check = 0;
                        budget.check().map_err(Failure::interrupted)?;
                    }
                    let parent_row = &rows[parent][pi];
                    let row =
                        map_row(contract, ti, doc, &index, &curr, Some(ei), Some(parent_row))?;
                    t_elems.insert(ei, t_rows.len());
                    t_rows.push(row);
                }
            }
            _ => {
                t_rows.push(map_row(contract, ti, doc, &index, &curr, None, None)?);
                t_elems.insert(app_elem, 0);
            }
        }
        crate::contract::check_unique_keys(contract, ti, &t_rows)?;
        rows.push(t_rows);
        row_of_elem.push(t_elems);
    }
    let (kt, kc) = contract.app_key;
    match rows[kt].first().map(|r| &r[kc]) {
        Some(Value::Int(id)) if *id == app_id => {}
        Some(v) => {
            let col = &contract.tables[kt].columns[kc];
            return Err(map_err(format!(
                "{}.{} {} does not match app_id {app_id}",
                contract.tables[kt].name, col.name, v
            )));
        }
        None => return Err(map_err("application key row missing")),
    }
    Ok(MappedApp {
        app_id,
        rows,
        coerced: 0,
    })
}

/// The ancestor of `ei` at trie node `ancestor_node`, when `ei` and every recorded element up to (not including)
/// that ancestor pass their filters.
fn kept_ancestor(
    doc: &ParsedDoc<'_>,
    contract: &Contract,
    ei: usize,
    ancestor_node: usize,
) -> Option<usize> {
    let mut cur = ei;
    loop {
        if !passes_filters(doc, contract, cur) {
            return None;
        }
        let p = doc.elems[cur].parent?;
        if doc.elems[p].node == ancestor_node {
            return Some(p);
        }
        cur = p;
    }
}

/// Per `curr_address_only` column of table `ti`: row element → its first child at the column's node whose
/// `address_tp_c` is `CURR`. Built in one pass over those elements.
type CurrIndex = HashMap<(usize, usize), usize>;

fn curr_address_index(
    contract: &Contract,
    ti: usize,
    doc: &ParsedDoc<'_>,
    index: &DocIndex,
) -> CurrIndex {
    let mut out = CurrIndex::new();
    for col in &contract.tables[ti].columns {
        if let Source::CurrAddress { node, .. } = &col.source {
            for &ei in &index.by_node[*node] {
                let Some(p) = doc.elems[ei].parent else {
                    continue;
                };
                if raw_attr(doc, contract, ei, "address_tp_c") == Some("CURR") {
                    out.entry((*node, p)).or_insert(ei);
                }
            }
        }
    }
    out
}

fn passes_filters(doc: &ParsedDoc<'_>, contract: &Contract, ei: usize) -> bool {
    let e = &doc.elems[ei];
    let node = &contract.nodes[e.node];
    node.filters.iter().all(|(attr, allowed)| {
        let idx = node.attrs.iter().position(|a| a == attr);
        let v = idx.and_then(|i| e.attr(i)).filter(|v| !v.is_empty());
        match (v, allowed) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(list)) => list.iter().any(|a| a == v),
        }
    })
}

fn raw_attr<'d>(
    doc: &'d ParsedDoc<'_>,
    contract: &Contract,
    ei: usize,
    attr: &str,
) -> Option<&'d str> {
    let e = &doc.elems[ei];
    let idx = contract.nodes[e.node]
        .attrs
        .iter()
        .position(|a| a == attr)?;
    e.attr(idx).filter(|v| !v.is_empty())
}

fn map_row(
    contract: &Contract,
    ti: usize,
    doc: &ParsedDoc<'_>,
    index: &DocIndex,
    curr: &CurrIndex,
    row_elem: Option<usize>,
    parent_row: Option<&Vec<Value>>,
) -> Result<Vec<Value>, Failure> {
    let table = &contract.tables[ti];
    let mut values = vec![Value::Null; table.columns.len()];
    let mut calculated = Vec::new();
    for (ci, col) in table.columns.iter().enumerate() {
        let raw: Option<&str> = match &col.source {
            Source::Attr { node, attr } => {
                let ei = match row_elem {
                    Some(r) => Some(r),
                    None => index.first(*node),
                };
                ei.and_then(|ei| raw_attr(doc, contract, ei, attr))
            }
            Source::CurrAddress { node, attr } => row_elem
                .and_then(|r| curr.get(&(*node, r)))
                .and_then(|&ei| raw_attr(doc, contract, ei, attr)),
            Source::ForeignKey { parent_col } => {
                values[ci] = parent_row
                    .map(|r| r[*parent_col].clone())
                    .unwrap_or(Value::Null);
                continue;
            }
            Source::Calculated(_) => {
                calculated.push(ci);
                continue;
            }
        };
        values[ci] = column_value(table.name.as_str(), col, raw)?;
    }
    for ci in calculated {
        let col = &table.columns[ci];
        let Source::Calculated(e) = &col.source else {
            continue;
        };
        let lookup = |name: &str| -> Scalar {
            table
                .columns
                .iter()
                .position(|c| c.name.as_str() == name)
                .map_or(Scalar::Null, |i| scalar_of(&values[i]))
        };
        let v = match e.eval(&lookup) {
            Scalar::Null => Value::Null,
            Scalar::Num(x) => convert_checked(table.name.as_str(), col, &f64_text(x))?,
            Scalar::Str(s) => convert_checked(table.name.as_str(), col, &s)?,
        };
        values[ci] = not_null(table.name.as_str(), col, v)?;
    }
    Ok(values)
}

/// Intermediate value while a transform chain runs.
enum Inter {
    Absent,
    Str(String),
    Int(i64),
}

fn column_value(table: &str, col: &Column, raw: Option<&str>) -> Result<Value, Failure> {
    let raw = match (raw, &col.default) {
        (Some(r), _) => r,
        (None, Some(d)) if !d.is_empty() => d.as_str(),
        (None, _) if col.required => {
            return Err(map_err(format!(
                "missing required attribute {} for {table}.{}",
                attr_name(col),
                col.name
            )));
        }
        (None, _) => return not_null(table, col, Value::Null),
    };
    let mut cur = Inter::Str(raw.to_owned());
    for t in &col.transforms {
        cur = match (t, cur) {
            (_, Inter::Absent) => Inter::Absent,
            (Transform::IdentityInsert | Transform::CurrAddressOnly, v) => v,
            (Transform::Enum(map) | Transform::Bit(map), Inter::Str(s)) => match map.get(&s) {
                Some(v) => Inter::Int(*v),
                None if !col.nullable => {
                    let what = if matches!(t, Transform::Enum(_)) {
                        "enum_mappings"
                    } else {
                        "bit_conversions"
                    };
                    return Err(map_err(format!(
                        "value '{s}' is not in {what} for {table}.{}",
                        col.name
                    )));
                }
                None => Inter::Absent,
            },
            (Transform::Enum(_) | Transform::Bit(_), Inter::Int(i)) => Inter::Int(i),
            (Transform::NumbersOnly, v) => {
                let s = inter_text(v);
                let d: String = s.chars().filter(char::is_ascii_digit).collect();
                if d.is_empty() {
                    Inter::Absent
                } else {
                    Inter::Str(d)
                }
            }
            (Transform::ExtractNumeric, v) => match extract_numeric(&inter_text(v)) {
                Some(n) => Inter::Str(n),
                None => Inter::Absent,
            },
        };
    }
    let v = match cur {
        Inter::Absent => Value::Null,
        Inter::Str(s) => convert_checked(table, col, &s)?,
        Inter::Int(i) => convert_checked(table, col, &i.to_string())?,
    };
    not_null(table, col, v)
}

fn inter_text(v: Inter) -> String {
    match v {
        Inter::Absent => String::new(),
        Inter::Str(s) => s,
        Inter::Int(i) => i.to_string(),
    }
}

fn attr_name(col: &Column) -> &str {
    match &col.source {
        Source::Attr { attr, .. } | Source::CurrAddress { attr, .. } => attr,
        _ => col.name.as_str(),
    }
}

fn convert_checked(table: &str, col: &Column, raw: &str) -> Result<Value, Failure> {
    convert(raw, col.ty).map_err(|e| match e {
        ConvertError::TooLong { len, max } => map_err(format!(
            "value too long for {table}.{} ({len} > {max})",
            col.name
        )),
        ConvertError::Invalid => map_err(format!(
            "'{}' is not a valid {} for {table}.{}",
            clip(raw),
            type_word(col.ty),
            col.name
        )),
    })
}

fn type_word(t: ColType) -> String {
    t.name()
}

fn clip(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s.to_owned()
    }
}

fn not_null(table: &str, col: &Column, v: Value) -> Result<Value, Failure> {
    if v.is_null() && !col.nullable {
        return Err(map_err(format!("{table}.{} must not be null", col.name)));
    }
    Ok(v)
}

/// The first `-?[0-9][0-9,]*(\.[0-9]+)?` with commas removed.
pub fn extract_numeric(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let start = b.iter().position(u8::is_ascii_digit)?;
    let neg = start > 0 && b[start - 1] == b'-';
    let mut i = start;
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b',') {
        if b[i] != b',' {
            out.push(char::from(b[i]));
        }
        i += 1;
    }
    if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
        out.push('.');
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            out.push(char::from(b[i]));
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> Contract {
        Contract::from_json(fixtures::CONTRACT_JSON).expect("valid contract")
    }

    const DOC: &str = r#"<?xml version="1.0"?>
<Provenir><Request ID="7"><CustData><application app_receive_date="2023-04-05T10:22:31" decision_tp_c="APPRV"
  requested_amount_txt="$25,000.50" paperless_ind="Y" priority_enabled="true" sc_bank_account_num="12-3456-789"
  risk_score="640" underwriter_notes="Smith &amp; Sons">
  <contact con_id="70" ac_role_tp_c="PR" first_name="Ann" monthly_income="$4,500.25" home_phone="(555) 123-4567">
    <contact_address address_tp_c="PREV" city="Old" zip="11111"/>
    <contact_address address_tp_c="CURR" city="Springfield" zip="12345-6789"/>
    <contact_address address_tp_c="MAIL" city="Box"/>
    <contact_employment employment_tp_c="CURR" employer_name="Acme" monthly_salary="3,200.5" self_employed="false"/>
  </contact>
  <contact con_id="71" ac_role_tp_c="GUAR" first_name="Dropped"><contact_address address_tp_c="CURR"/></contact>
  <contact con_id="72" ac_role_tp_c="AUTHU" first_name="Bob"/>
</application></CustData></Request></Provenir>"#;

    fn col(c: &Contract, app: &MappedApp, table: &str, row: usize, column: &str) -> Option<String> {
        let t = c.table_index(table).expect("table");
        let ci = c.tables[t]
            .columns
            .iter()
            .position(|x| x.name.as_str() == column)
            .expect("column");
        app.rows[t][row][ci].canonical()
    }

    #[test]
    fn maps_every_transform() {
        let c = contract();
        let app = map_document(&c, 7, DOC).expect("maps");
        assert_eq!(
            app.rows.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 2, 2, 1]
        );
        assert_eq!(
            col(&c, &app, "app_base", 0, "receive_date").as_deref(),
            Some("2023-04-05 10:22:31")
        );
        assert_eq!(
            col(&c, &app, "app_base", 0, "decision_enum").as_deref(),
            Some("1")
        );
        assert_eq!(
            col(&c, &app, "app_base", 0, "requested_amount").as_deref(),
            Some("25000.50")
        );
        assert_eq!(
            col(&c, &app, "app_base", 0, "paperless_flag").as_deref(),
            Some("1")
        );
        assert_eq!(
            col(&c, &app, "app_base", 0, "priority_flag").as_deref(),
            Some("1")
        );
        assert_eq!(
            col(&c, &app, "app_base", 0, "bank_account_num").as_deref(),
            Some("123456789")
        );
        assert_eq!(
            col(&c, &app, "app_base", 0, "risk_band").as_deref(),
            Some("B")
        );
        assert_eq!(
            col(&c, &app, "app_base", 0, "notes").as_deref(),
            Some("Smith & Sons")
        );
        assert_eq!(col(&c, &app, "app_base", 0, "app_source_enum"), None);
        assert_eq!(
            col(&c, &app, "app_contact_base", 0, "app_id").as_deref(),
            Some("7")
        );
        assert_eq!(
            col(&c, &app, "app_contact_base", 0, "contact_type_enum").as_deref(),
            Some("281")
        );
        assert_eq!(
            col(&c, &app, "app_contact_base", 0, "annual_income").as_deref(),
            Some("54003.00")
        );
        assert_eq!(
            col(&c, &app, "app_contact_base", 0, "curr_city").as_deref(),
            Some("Springfield")
        );
        assert_eq!(
            col(&c, &app, "app_contact_base", 0, "curr_zip").as_deref(),
            Some("123456789")
        );
        assert_eq!(
            col(&c, &app, "app_contact_base", 0, "home_phone").as_deref(),
            Some("5551234567")
        );
        assert_eq!(
            col(&c, &app, "app_contact_base", 1, "con_id").as_deref(),
            Some("72")
        );
        assert_eq!(col(&c, &app, "app_contact_base", 1, "curr_city"), None);
        assert_eq!(
            col(&c, &app, "app_contact_address", 0, "address_type_enum").as_deref(),
            Some("2")
        );
        assert_eq!(
            col(&c, &app, "app_contact_address", 1, "con_id").as_deref(),
            Some("70")
        );
        assert_eq!(
            col(&c, &app, "app_contact_employment", 0, "monthly_salary").as_deref(),
            Some("3200.50")
        );
        assert_eq!(
            col(&c, &app, "app_contact_employment", 0, "self_employed_flag").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn failures_name_stage_and_column() {
        let c = contract();
        let cases: Vec<(String, &str)> = vec![
            (
                DOC.replace("APPRV", "XYZ"),
                "map: value 'XYZ' is not in enum_mappings for app_base.decision_enum",
            ),
            (
                DOC.replace("2023-04-05T10:22:31", "2023-13-45T99:00:00"),
                "map: '2023-13-45T99:00:00' is not a valid datetime",
            ),
            (
                DOC.replace(
                    "first_name=\"Ann\"",
                    &format!("first_name=\"{}\"", "A".repeat(51)),
                ),
                "map: value too long for app_contact_base.first_name (51 > 50)",
            ),
            (
                DOC.replace("Request ID=\"7\"", "Request"),
                "map: missing required attribute ID",
            ),
            (
                DOC.replace("Request ID=\"7\"", "Request ID=\"8\""),
                "does not match app_id 7",
            ),
            (
                DOC.replace("con_id=\"72\"", "con_id=\"70\""),
                "map: duplicate key (con_id) = (70) in app_contact_base",
            ),
            (DOC[..DOC.len() / 2].to_owned(), "parse: "),
            (
                "not xml at all {\"a\":1}".to_owned(),
                "parse: text outside the root element",
            ),
            (
                DOC.replace("Provenir>", "Application>"),
                "parse: root element is <Application>",
            ),
            (DOC.replace("&amp;", "&bogus;"), "parse: "),
            (
                DOC.replace(
                    "</contact>\n  <contact con_id=\"71\"",
                    "</contactx>\n  <contact con_id=\"71\"",
                ),
                "parse: ",
            ),
        ];
        for (doc, want) in cases {
            let got = map_document(&c, 7, &doc).expect_err("must fail").reason();
            assert!(
                got.starts_with(want) || got.contains(want),
                "want {want:?}, got {got:?}"
            );
        }
    }

    #[test]
    fn bom_is_skipped_and_reasons_are_truncated() {
        let c = contract();
        assert!(map_document(&c, 7, &format!("\u{feff}{DOC}")).is_ok());
        let f = Failure::new(Stage::Write, "x".repeat(900));
        assert_eq!(f.reason().chars().count(), MAX_REASON_CHARS);
    }

    #[test]
    fn extract_numeric_takes_first_number() {
        assert_eq!(
            extract_numeric("USD 1,250.50 or so").as_deref(),
            Some("1250.50")
        );
        assert_eq!(extract_numeric("-42"), Some("-42".into()));
        assert_eq!(extract_numeric("12."), Some("12".into()));
        assert_eq!(extract_numeric("none"), None);
    }
}

#[cfg(test)]
mod generated {
    use super::*;
    use fixtures::{Expect, GenConfig};
    use proptest::prelude::*;

    #[test]
    fn generated_documents_map_exactly_as_their_expectation() {
        let c = Contract::from_json(fixtures::CONTRACT_JSON).expect("valid contract");
        let cfg = GenConfig {
            count: 3000,
            seed: 11,
            malformed_fraction: 0.1,
            large_fraction: 0.01,
            ..GenConfig::default()
        };
        for doc in fixtures::generate(&cfg)
            .into_iter()
            .chain(fixtures::edge_cases())
        {
            let got = map_document(&c, doc.app_id, &doc.xml);
            match (&doc.expect, &got) {
                (Expect::Valid, Ok(app)) => assert!(app.row_count() >= 1),
                (Expect::Malformed(_), Err(f)) => {
                    assert!(matches!(f.stage, Stage::Parse | Stage::Map))
                }
                _ => panic!(
                    "app {} expected {:?}, got {:?}",
                    doc.app_id,
                    doc.expect,
                    got.map(|a| a.row_count())
                ),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Any generated document, and any prefix of one, maps or fails with a stage; never panics.
        #[test]
        fn never_panics(seed in any::<u64>(), app_id in 1i64..1_000_000, cut in 0usize..20_000) {
            let c = Contract::from_json(fixtures::CONTRACT_JSON).expect("valid contract");
            let doc = fixtures::generate_one(seed, app_id, 0.3, 0.0, 0.2);
            let _ = map_document(&c, app_id, &doc.xml);
            let mut end = cut.min(doc.xml.len());
            while !doc.xml.is_char_boundary(end) { end -= 1; }
            if let Err(f) = map_document(&c, app_id, &doc.xml[..end]) {
                prop_assert!(!f.reason().is_empty());
            }
        }
    }
}
