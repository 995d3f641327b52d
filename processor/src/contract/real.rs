//! The replaced system's contract format (XmlConversion's `mapping_contract*.json`, selected by the presence of
//! `source_application_table`) and its mapping semantics, ported from its `data_mapper.py`,
//! `calculated_field_engine.py` and `xml_parser.py` (commit 8103358). The contract is lowered into the same
//! `Contract` tables and columns the stores create; only the row-building differs, so the store, engine and
//! harness see one model. Departures from the replaced system are listed in fixtures/contract/README.md.

use crate::budget::{Budget, Pacer};
use crate::contract::{
    scalar_text, Column, Contract, ContractError, PathNode, RawContract, RawMapping,
    RawMappingType, Source, Table,
};
use crate::failure::{Failure, Stage};
use crate::ident::Ident;
use crate::rows::MappedApp;
use crate::value::{convert, parse_decimal, ColType, Value};
use quick_xml::events::attributes::Attributes;
use quick_xml::events::Event;
use quick_xml::{Reader, XmlVersion};
use std::borrow::Cow;
use std::collections::HashMap as StdHashMap;

mod scan;

/// The maps of this module hash document text (element paths and names, attribute names) once per element: a
/// multiply-rotate hash (FxHash's) over 8-byte words instead of SipHash, which was the largest single cost of a
/// parse (profile in BENCHMARKS.md). Seeded per process, so a document cannot be crafted against a fixed seed.
type HashMap<K, V> = StdHashMap<K, V, FastState>;

#[derive(Clone, Copy)]
struct FastState(u64);

impl Default for FastState {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        FastState(*SEED.get_or_init(|| {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(0x5348_5245_4450_524fu64)
        }))
    }
}

impl std::hash::BuildHasher for FastState {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

struct FastHasher(u64);

impl FastHasher {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(Self::K);
    }
}

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.add(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        // A final avalanche so the low bits hashbrown uses depend on every input bit.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }
}

fn invalid(entry: impl Into<String>, problem: impl Into<String>) -> ContractError {
    ContractError::Invalid {
        entry: entry.into(),
        problem: problem.into(),
    }
}

/// How a table's rows are built; the replaced system decides this by table name (data_mapper.py
/// `_process_table_mappings`), and so does this port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One row per application (app_base and the one-to-one tables).
    App,
    Contact,
    Address,
    Employment,
    Scores,
    Indicators,
    History,
    ReportLookup,
    PolicyExceptions,
    Warranties,
    Collateral,
}

#[derive(Debug, Clone)]
pub struct RMap {
    path: String,
    attr: String,
    column: String,
    col: Option<usize>,
    dtype: String,
    dlen: Option<i64>,
    types: Vec<String>,
    nullable: bool,
    default: Option<String>,
    expr: Option<String>,
    /// `expr` split into its WHEN/THEN pairs and ELSE once at load (`parse_case`), when it is a CASE expression.
    case: Option<CaseExpr>,
    enum_name: Option<String>,
    exclude_when_empty: bool,
}

#[derive(Debug, Clone)]
pub struct RTable {
    name: String,
    kind: Kind,
    maps: Vec<RMap>,
    cols: Vec<String>,
    types: Vec<ColType>,
    /// Column name → first index in `cols`, built on first use (the row lowering looked each name up linearly).
    col_index: std::sync::OnceLock<HashMap<String, usize>>,
}

impl RTable {
    /// `cols.iter().position(|c| c == k)`, from an index.
    fn col_of(&self, k: &str) -> Option<usize> {
        self.col_index
            .get_or_init(|| {
                let mut m = HashMap::default();
                for (i, c) in self.cols.iter().enumerate() {
                    m.entry(c.clone()).or_insert(i);
                }
                m
            })
            .get(k)
            .copied()
    }
}

#[derive(Debug, Clone)]
enum EnumVal {
    Int(i64),
    Str(String),
}

/// The lowered XmlConversion contract.
#[derive(Debug)]
pub struct Plan {
    app_elem: String,
    contact_elem: String,
    contact_type_attr: String,
    contact_types: Vec<String>,
    address_elem: String,
    address_type_attr: String,
    address_preferred: String,
    address_types: Vec<String>,
    employment_elem: String,
    employment_type_attr: String,
    employment_types: Vec<String>,
    tables: Vec<RTable>,
    enums: HashMap<String, Vec<(String, EnumVal)>>,
    char_to_bit: HashMap<String, i64>,
    bool_to_bit: HashMap<String, i64>,
    /// The application-context keys a lookup can name (see [`KeyFilter`]).
    app_keys: KeyFilter,
}

const PLAIN_TYPES: &[&str] = &[
    "identity_insert",
    "enum",
    "char_to_bit",
    "boolean_to_bit",
    "numbers_only",
    "extract_numeric",
    "curr_address_only",
    "calculated_field",
    "last_valid_pr_contact",
    "last_valid_sec_contact",
    "authu_contact",
    "add_history",
    "extract_date",
];
const FN_TYPES: &[&str] = &[
    "add_score",
    "add_report_lookup",
    "add_indicator",
    "add_collateral",
    "warranty_field",
    "policy_exceptions",
];

fn fn_type(t: &str) -> Option<(&str, &str)> {
    let open = t.find('(')?;
    let inner = t[open + 1..].strip_suffix(')')?;
    Some((&t[..open], inner.trim()))
}

fn kind_of(table: &str) -> Kind {
    match table {
        "app_contact_base" => Kind::Contact,
        "app_contact_address" => Kind::Address,
        "app_contact_employment" => Kind::Employment,
        "scores" => Kind::Scores,
        "indicators" => Kind::Indicators,
        "app_historical_lookup" => Kind::History,
        "app_report_results_lookup" => Kind::ReportLookup,
        "app_policy_exceptions_rl" => Kind::PolicyExceptions,
        "app_warranties_rl" => Kind::Warranties,
        "app_collateral_rl" => Kind::Collateral,
        _ => Kind::App,
    }
}

/// Columns a kind adds to what its mappings name, with their types; and the natural key (derivation rule in
/// fixtures/contract/README.md: the replaced schema's primary key, with `app_id` wherever the row is per
/// application).
fn extras(kind: Kind) -> (&'static [(&'static str, ColType)], &'static [&'static str]) {
    const T: ColType = ColType::Text { max_chars: None };
    match kind {
        Kind::App => (&[("app_id", ColType::Int)], &["app_id"]),
        Kind::Contact => (
            &[("con_id", ColType::Int), ("app_id", ColType::Int)],
            &["app_id", "con_id"],
        ),
        Kind::Address => (
            &[("con_id", ColType::Int)],
            &["con_id", "address_type_enum"],
        ),
        Kind::Employment => (
            &[("con_id", ColType::Int)],
            &["con_id", "employment_type_enum"],
        ),
        Kind::Scores => (
            &[
                ("app_id", ColType::Int),
                ("score_identifier", T),
                ("score", ColType::Int),
            ],
            &["app_id", "score_identifier"],
        ),
        Kind::Indicators => (
            &[("app_id", ColType::Int), ("indicator", T), ("value", T)],
            &["app_id", "indicator"],
        ),
        Kind::History => (
            &[
                ("app_id", ColType::Int),
                ("name", T),
                ("source", T),
                ("value", T),
            ],
            &["app_id", "name"],
        ),
        Kind::ReportLookup => (
            &[
                ("app_id", ColType::Int),
                ("name", T),
                ("value", T),
                ("source_report_key", T),
            ],
            &["app_id", "name"],
        ),
        Kind::PolicyExceptions => (
            &[
                ("app_id", ColType::Int),
                ("policy_exception_type_enum", ColType::Int),
                ("reason_code", T),
                ("notes", T),
            ],
            &["app_id", "policy_exception_type_enum"],
        ),
        Kind::Warranties => (
            &[
                ("app_id", ColType::Int),
                ("warranty_type_enum", ColType::Int),
                ("merrick_lienholder_flag", ColType::Bit),
            ],
            &["app_id", "warranty_type_enum"],
        ),
        Kind::Collateral => (
            &[("app_id", ColType::Int), ("sort_order", ColType::Int)],
            &["app_id", "sort_order"],
        ),
    }
}

fn col_type(entry: &str, dtype: &str, dlen: Option<i64>) -> Result<ColType, ContractError> {
    let d = dtype.trim().to_ascii_lowercase();
    Ok(match d.as_str() {
        "string" => ColType::Text {
            max_chars: dlen.filter(|n| *n > 0).map(|n| n as u32),
        },
        "decimal" => ColType::Decimal {
            precision: 18,
            scale: dlen.filter(|n| (0..=12).contains(n)).unwrap_or(2) as u8,
        },
        "tinyint" | "smallint" => ColType::SmallInt,
        "int" => ColType::Int,
        "bigint" => ColType::BigInt,
        "bit" => ColType::Bit,
        "date" => ColType::Date,
        "datetime" | "smalldatetime" => ColType::DateTime,
        other => {
            return Err(invalid(
                entry,
                format!(
                "unsupported data_type '{other}' (supported: string, decimal, tinyint, smallint, int, bigint, bit, date, datetime)"
            ),
            ))
        }
    })
}

fn mapping_types(m: &RawMapping) -> Vec<String> {
    match &m.mapping_type {
        None => vec![],
        Some(RawMappingType::One(s)) if s.trim().is_empty() => vec![],
        Some(RawMappingType::One(s)) => vec![s.trim().to_owned()],
        Some(RawMappingType::Chain(v)) => v.iter().map(|s| s.trim().to_owned()).collect(),
    }
}

fn rule_list(
    raw: &RawContract,
    element_type: &str,
) -> Result<(String, String, Vec<String>), ContractError> {
    let rules = raw
        .element_filtering
        .as_ref()
        .map(|f| f.filter_rules.as_slice())
        .unwrap_or(&[]);
    let (i, rule) = rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.element_type.as_deref() == Some(element_type))
        .ok_or_else(|| {
            invalid(
                "element_filtering.filter_rules",
                format!("the XmlConversion format needs a rule with element_type '{element_type}'"),
            )
        })?;
    let entry = format!("element_filtering.filter_rules[{i}]");
    if rule.xml_path.is_some() {
        return Err(invalid(&entry, "xml_path is the Shredproof format; the XmlConversion format uses xml_parent_path and xml_child_path"));
    }
    let child = rule
        .xml_child_path
        .as_deref()
        .ok_or_else(|| invalid(&entry, "xml_child_path is required"))?;
    rule.xml_parent_path
        .as_deref()
        .ok_or_else(|| invalid(&entry, "xml_parent_path is required"))?;
    let elem = child
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_owned();
    let mut found = None;
    for (k, v) in &rule.required_attributes {
        match v {
            serde_json::Value::Bool(true) => {}
            serde_json::Value::Array(items) if !items.is_empty() => {
                let vals = items
                    .iter()
                    .map(|x| {
                        x.as_str().map(str::to_owned).ok_or_else(|| {
                            invalid(&entry, format!("allowed values of '{k}' must be strings"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if found.is_none() {
                    found = Some((k.clone(), vals));
                }
            }
            _ => {
                return Err(invalid(
                    &entry,
                    format!("required_attributes.{k} must be true or a non-empty list of values"),
                ))
            }
        }
    }
    let (attr, vals) = found.ok_or_else(|| {
        invalid(
            &entry,
            "required_attributes needs one attribute with a list of allowed values",
        )
    })?;
    Ok((elem, attr, vals))
}

/// Lowers an XmlConversion-format contract (see module docs).
pub(crate) fn build(raw: RawContract, text: &str) -> Result<Contract, ContractError> {
    let root = raw.xml_root_element.trim().to_owned();
    let app_elem = raw
        .source_application_table
        .clone()
        .unwrap_or_default()
        .trim()
        .to_owned();
    if app_elem.is_empty() {
        return Err(invalid("source_application_table", "must not be empty"));
    }
    if !raw.table_keys.is_empty() {
        return Err(invalid("table_keys", "the XmlConversion format derives natural keys (fixtures/contract/README.md); table_keys belongs to the Shredproof format"));
    }
    let app_path = raw.xml_application_path.trim().to_owned();
    if !app_path.starts_with(&format!("/{root}/")) || !app_path.ends_with(&format!("/{app_elem}")) {
        return Err(invalid(
            "xml_application_path",
            format!("must start at /{root} and end at the source_application_table element <{app_elem}>"),
        ));
    }
    let (contact_elem, contact_type_attr, contact_types) = rule_list(&raw, "contact")?;
    let (_, address_type_attr, address_types) = rule_list(&raw, "address")?;
    let (_, employment_type_attr, employment_types) = rule_list(&raw, "employment")?;
    let child_elem = |table: &str, fallback: &str| -> String {
        raw.relationships
            .iter()
            .find(|r| r.child_table == table)
            .map(|r| {
                r.xml_child_path
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_else(|| fallback.to_owned())
    };
    let address_elem = child_elem("app_contact_address", "app_contact_address");
    let employment_elem = child_elem("app_contact_employment", "app_contact_employment");
    check_relationships(&raw, &root)?;
    let enums = lower_enums(&raw)?;
    let (char_to_bit, bool_to_bit) = lower_bits(&raw)?;
    let mut rtables = lower_tables(&raw)?;
    lower_mappings(&raw, &root, &enums, &mut rtables)?;
    let (tables, app_key) = store_tables(&mut rtables)?;
    let (source_table, source_column, schema) = crate::contract::source_and_schema(&raw)?;
    let address_preferred = address_types.first().cloned().unwrap_or_default();
    let (nodes, app_node) = path_trie(&root, &app_path, &rtables);
    let app_keys = KeyFilter::of(&rtables);
    Ok(Contract {
        root_element: root.clone(),
        source_table,
        source_column,
        schema,
        tables,
        nodes,
        app_node,
        app_key,
        json: text.to_owned(),
        real: Some(std::sync::Arc::new(Plan {
            app_elem,
            contact_elem,
            contact_type_attr,
            contact_types,
            address_elem,
            address_type_attr,
            address_preferred,
            address_types,
            employment_elem,
            employment_type_attr,
            employment_types,
            tables: rtables,
            enums,
            char_to_bit,
            bool_to_bit,
            app_keys,
        })),
    })
}

/// Every relationship names listed tables and paths under the root element.
fn check_relationships(raw: &RawContract, root: &str) -> Result<(), ContractError> {
    for (i, r) in raw.relationships.iter().enumerate() {
        let entry = format!("relationships[{i}]");
        for t in [&r.parent_table, &r.child_table] {
            if !raw.table_insertion_order.iter().any(|x| x == t) {
                return Err(invalid(
                    &entry,
                    format!("unknown table '{t}' (not in table_insertion_order)"),
                ));
            }
        }
        for p in [&r.xml_parent_path, &r.xml_child_path] {
            if !p.starts_with(&format!("/{root}")) {
                return Err(invalid(
                    &entry,
                    format!("xml path '{p}' does not start at the root element <{root}>"),
                ));
            }
        }
    }

    Ok(())
}

/// Enums: integers or strings (officer_code_to_email_enum maps to text).
fn lower_enums(
    raw: &RawContract,
) -> Result<HashMap<String, Vec<(String, EnumVal)>>, ContractError> {
    let mut enums = HashMap::default();
    for (name, map) in &raw.enum_mappings {
        let mut vals = Vec::new();
        for (k, v) in map {
            let ev = match v {
                serde_json::Value::Number(n) if n.is_i64() => EnumVal::Int(n.as_i64().unwrap_or(0)),
                serde_json::Value::String(s) => EnumVal::Str(s.clone()),
                _ => {
                    return Err(invalid(
                        format!("enum_mappings.{name}.{k}"),
                        "must be an integer or a string",
                    ))
                }
            };
            vals.push((k.clone(), ev));
        }
        // serde_json's map is sorted; the replaced system iterates in file order for its case-insensitive
        // match, which only matters when two keys differ only in case (none do in either contract).
        enums.insert(name.clone(), vals);
    }
    Ok(enums)
}

/// A bit conversion table: source text → 0 or 1.
type BitMap = HashMap<String, i64>;

/// The two bit conversions (`char_to_bit`, `boolean_to_bit`), each value 0 or 1; any other conversion is refused.
fn lower_bits(raw: &RawContract) -> Result<(BitMap, BitMap), ContractError> {
    let bits = |name: &str| -> Result<HashMap<String, i64>, ContractError> {
        let map = raw.bit_conversions.get(name).cloned().unwrap_or_default();
        if let Some((k, v)) = map.iter().find(|(_, v)| **v != 0 && **v != 1) {
            return Err(invalid(
                format!("bit_conversions.{name}.{k}"),
                format!("is {v}, must be 0 or 1"),
            ));
        }
        Ok(map.into_iter().collect())
    };
    let char_to_bit = bits("char_to_bit")?;
    let bool_to_bit = bits("boolean_to_bit")?;
    for k in raw.bit_conversions.keys() {
        if k != "char_to_bit" && k != "boolean_to_bit" {
            return Err(invalid(
                format!("bit_conversions.{k}"),
                "unknown conversion (supported: char_to_bit, boolean_to_bit)",
            ));
        }
    }

    Ok((char_to_bit, bool_to_bit))
}

/// Tables in insertion order; processing_log is the processor's own table and is skipped.
fn lower_tables(raw: &RawContract) -> Result<Vec<RTable>, ContractError> {
    let mut rtables: Vec<RTable> = Vec::new();
    for (i, t) in raw.table_insertion_order.iter().enumerate() {
        let entry = format!("table_insertion_order[{i}]");
        if t == "processing_log" {
            continue;
        }
        Ident::new(t).map_err(|e| invalid(&entry, e.to_string()))?;
        if rtables.iter().any(|x| &x.name == t) {
            return Err(invalid(entry, format!("table '{t}' is listed twice")));
        }
        rtables.push(RTable {
            name: t.clone(),
            kind: kind_of(t),
            maps: vec![],
            cols: vec![],
            types: vec![],
            col_index: std::sync::OnceLock::new(),
        });
    }
    Ok(rtables)
}

/// Each mapping checked (types, paths, expressions, enums, defaults, column type) and attached to its table.
fn lower_mappings(
    raw: &RawContract,
    root: &str,
    enums: &HashMap<String, Vec<(String, EnumVal)>>,
    rtables: &mut [RTable],
) -> Result<(), ContractError> {
    let mut app_key_seen = false;
    for (i, m) in raw.mappings.iter().enumerate() {
        let entry = format!("mappings[{i}] ({}.{})", m.target_table, m.target_column);
        let ti = rtables
            .iter()
            .position(|t| t.name == m.target_table)
            .ok_or_else(|| {
                invalid(
                    &entry,
                    format!(
                        "unknown table '{}' (not in table_insertion_order)",
                        m.target_table
                    ),
                )
            })?;
        let types = mapping_types(m);
        for t in &types {
            let ok = PLAIN_TYPES.contains(&t.as_str())
                || fn_type(t).is_some_and(|(n, _)| FN_TYPES.contains(&n));
            if !ok {
                return Err(invalid(
                    &entry,
                    format!(
                        "unsupported mapping_type '{t}' (supported: {}, {}(…))",
                        PLAIN_TYPES.join(", "),
                        FN_TYPES.join("(…), ")
                    ),
                ));
            }
            if let Some((n, p)) = fn_type(t) {
                let numeric = matches!(n, "add_collateral" | "warranty_field")
                    || (n == "policy_exceptions" && !p.is_empty());
                if numeric && p.parse::<i64>().is_err() {
                    return Err(invalid(
                        &entry,
                        format!("mapping_type '{t}' needs an integer argument"),
                    ));
                }
            }
            if t == "identity_insert" {
                app_key_seen = true;
            }
        }
        let kind = rtables[ti].kind;
        let row_creating = types
            .iter()
            .any(|t| t == "add_history" || fn_type(t).is_some());
        if matches!(
            kind,
            Kind::Scores
                | Kind::Indicators
                | Kind::History
                | Kind::ReportLookup
                | Kind::PolicyExceptions
                | Kind::Warranties
                | Kind::Collateral
        ) && !row_creating
        {
            return Err(invalid(&entry, format!("table '{}' is built by row-creating mapping types (add_score(…), add_history, …); this mapping has none", m.target_table)));
        }
        let path = m.xml_path.clone().unwrap_or_default();
        if !path.is_empty() && !path.starts_with(&format!("/{root}")) {
            return Err(invalid(
                &entry,
                format!("xml path '{path}' does not start at the root element <{root}>"),
            ));
        }
        if types.iter().any(|t| t == "calculated_field") {
            let e = m
                .expression
                .as_deref()
                .ok_or_else(|| invalid(&entry, "calculated_field needs an expression"))?;
            check_expression(e).map_err(|p| invalid(&entry, format!("bad expression: {p}")))?;
        }
        if types.iter().any(|t| t == "enum") {
            let name = m
                .enum_name
                .clone()
                .unwrap_or_else(|| m.target_column.clone());
            if enum_type(&name, m.enum_name.is_some(), enums).is_none() {
                return Err(invalid(
                    &entry,
                    format!("mapping_type enum needs enum_mappings.{name}"),
                ));
            }
        }
        let default = match &m.default_value {
            None => None,
            Some(v) => Some(
                scalar_text(v)
                    .ok_or_else(|| invalid(&entry, "default_value must be a string or a number"))?,
            ),
        };
        let dtype = m.data_type.trim().to_ascii_lowercase();
        let ty = col_type(&entry, &dtype, m.data_length)?;
        let t = &mut rtables[ti];
        let mut col = None;
        if !m.target_column.is_empty() {
            Ident::new(&m.target_column).map_err(|e| invalid(&entry, e.to_string()))?;
            col = Some(match t.cols.iter().position(|c| c == &m.target_column) {
                Some(c) => c,
                None => {
                    t.cols.push(m.target_column.clone());
                    t.types.push(ty);
                    t.cols.len() - 1
                }
            });
        }
        t.maps.push(RMap {
            path,
            attr: m.xml_attribute.clone().unwrap_or_default(),
            column: m.target_column.clone(),
            col,
            dtype,
            dlen: m.data_length,
            types,
            nullable: m.nullable.unwrap_or(true),
            default,
            expr: m.expression.clone(),
            case: m.expression.as_deref().and_then(parse_case),
            enum_name: m.enum_name.clone(),
            exclude_when_empty: m.exclude_default_when_record_empty.unwrap_or(false),
        });
        let _ = (&m.description, m.required);
    }
    if !app_key_seen {
        return Err(invalid(
            "mappings",
            "no identity_insert mapping (the application key, Request@ID)",
        ));
    }

    Ok(())
}

/// The Contract tables the stores create, and the application key's (table, column).
fn store_tables(rtables: &mut [RTable]) -> Result<(Vec<Table>, (usize, usize)), ContractError> {
    let mut tables = Vec::new();
    let mut app_key = None;
    for (ti, t) in rtables.iter_mut().enumerate() {
        let (extra, key) = extras(t.kind);
        for (name, ty) in extra {
            if !t.cols.iter().any(|c| c == name) {
                t.cols.push((*name).to_owned());
                t.types.push(*ty);
            }
        }
        let mut columns = Vec::new();
        for (c, ty) in t.cols.iter().zip(&t.types) {
            let is_key = key.contains(&c.as_str());
            columns.push(Column {
                name: Ident::new(c)
                    .map_err(|e| invalid(format!("table {}", t.name), e.to_string()))?,
                ty: *ty,
                nullable: !is_key,
                required: false,
                default: None,
                source: Source::ForeignKey { parent_col: 0 },
                transforms: vec![],
                identity: false,
            });
        }
        let mut kidx = Vec::new();
        for k in key {
            let i = t.cols.iter().position(|c| c == k).ok_or_else(|| {
                invalid(
                    format!("table {}", t.name),
                    format!("derived natural key column '{k}' is not mapped"),
                )
            })?;
            kidx.push(i);
        }
        if t.name == "app_base" {
            let i = t.cols.iter().position(|c| c == "app_id").unwrap_or(0);
            columns[i].identity = true;
            app_key = Some((ti, i));
        }
        tables.push(Table {
            name: Ident::new(&t.name)
                .map_err(|e| invalid("table_insertion_order", e.to_string()))?,
            shared: !key.contains(&"app_id"),
            columns,
            key: kidx,
            row_node: None,
            parent: None,
        });
    }
    let app_key = app_key.ok_or_else(|| {
        invalid(
            "table_insertion_order",
            "the XmlConversion format needs an app_base table",
        )
    })?;
    Ok((tables, app_key))
}

/// The element paths the contract names, as a trie (reports and the generator's shape detection read it; the
/// XmlConversion mapping itself reads the whole document). Returns the nodes and the application element's node.
fn path_trie(root: &str, app_path: &str, rtables: &[RTable]) -> (Vec<PathNode>, usize) {
    let mut nodes = vec![PathNode {
        name: root.to_owned(),
        parent: None,
        children: vec![],
        attrs: vec![],
        filters: vec![],
    }];
    let mut insert = |path: &str| -> usize {
        let mut cur = 0;
        for part in path
            .trim_matches('/')
            .split('/')
            .skip(1)
            .filter(|p| !p.is_empty())
        {
            cur = match nodes[cur]
                .children
                .iter()
                .copied()
                .find(|&c| nodes[c].name == part)
            {
                Some(c) => c,
                None => {
                    nodes.push(PathNode {
                        name: part.to_owned(),
                        parent: Some(cur),
                        children: vec![],
                        attrs: vec![],
                        filters: vec![],
                    });
                    let id = nodes.len() - 1;
                    nodes[cur].children.push(id);
                    id
                }
            };
        }
        cur
    };
    let app_node = insert(app_path);
    for t in rtables {
        for m in &t.maps {
            if !m.path.is_empty() {
                insert(&m.path);
            }
        }
    }
    (nodes, app_node)
}

/// The replaced system's `_determine_enum_type`: `enum_name`, else the column name if it is an enum, else a
/// name pattern.
fn enum_type(
    col: &str,
    explicit: bool,
    enums: &HashMap<String, Vec<(String, EnumVal)>>,
) -> Option<String> {
    if explicit || enums.contains_key(col) || col.ends_with("_enum") {
        return Some(col.to_owned()).filter(|c| enums.contains_key(c));
    }
    const PATTERNS: [(&str, &str); 11] = [
        ("status", "status_enum"),
        ("process", "process_enum"),
        ("app_source", "app_source_enum"),
        ("contact_type", "contact_type_enum"),
        ("address_type", "address_type_enum"),
        ("ownership_type", "ownership_type_enum"),
        ("employment_type", "employment_type_enum"),
        ("income_type", "income_type_enum"),
        ("other_income_type", "other_income_type_enum"),
        ("population_assignment", "population_assignment_enum"),
        ("decision", "decision_enum"),
    ];
    PATTERNS
        .iter()
        .find(|(p, _)| col.contains(p))
        .map(|(_, e)| (*e).to_owned())
        .filter(|e| enums.contains_key(e))
}

/// Start-up check of a calculated_field expression: only the forms the replaced engine evaluates.
fn check_expression(e: &str) -> Result<(), String> {
    let mut depth = 0i32;
    let mut chars = e.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' | '"' => {
                let mut closed = false;
                for (_, d) in chars.by_ref() {
                    if d == c {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err(format!("unterminated string literal at character {i}"));
                }
            }
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced ')' at character {i}"));
                }
            }
            c if c.is_ascii_alphanumeric() || "_.+-*/=<>!, \t\n%".contains(c) => {}
            other => return Err(format!("unexpected character '{other}' at character {i}")),
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    let up = e.to_ascii_uppercase();
    let words: Vec<&str> = up
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter(|w| !w.is_empty())
        .collect();
    if up.contains("CASE") && !words.contains(&"END") {
        return Err("CASE without END".into());
    }
    for w in &words {
        if w.ends_with('(') {
            continue;
        }
    }
    let upper_no_str = strip_strings(&up);
    for (i, _) in upper_no_str.match_indices('(') {
        let before = upper_no_str[..i].trim_end();
        let word: String = before
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<String>()
            .chars()
            .rev()
            .collect();
        if !(word.is_empty()
            || word == "DATE"
            || word == "DATEADD"
            || matches!(word.as_str(), "WHEN" | "THEN" | "ELSE" | "AND" | "OR"))
        {
            return Err(format!(
                "unsupported function {word}(…) (supported: DATE, DATEADD)"
            ));
        }
    }
    Ok(())
}

fn strip_strings(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut q: Option<char> = None;
    for c in s.chars() {
        match q {
            Some(x) if c == x => q = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => q = Some(c),
            None => out.push(c),
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------ the document

/// One element, as stored: its attributes are a range of the document's one attribute arena, its subtree the
/// element ids `id + 1 .. end` (elements are kept in document order, so a subtree is contiguous).
struct Node<'a> {
    name: &'a str,
    parent: u32,
    attrs: (u32, u32),
    end: u32,
}

/// A view of one element (what the mapper reads).
#[derive(Clone, Copy)]
struct Elem<'a> {
    name: &'a str,
    parent: Option<usize>,
    /// (name, value): both borrowed from the document unless the value needed unescaping or normalising.
    attrs: &'a [(&'a str, Cow<'a, str>)],
}

impl<'a> Elem<'a> {
    fn get(&self, k: &str) -> Option<&'a str> {
        self.attrs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.as_ref())
    }
    /// The replaced system's `_get_attribute_case_insensitive`.
    fn get_ci(&self, k: &str) -> Option<&'a str> {
        self.get(k).or_else(|| {
            self.attrs
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_ref())
        })
    }
}

const NO_PARENT: u32 = u32::MAX;

struct Doc<'a> {
    elems: Vec<Node<'a>>,
    /// Every element's attributes, in document order (one allocation for the document, not one per element).
    attrs: Vec<(&'a str, Cow<'a, str>)>,
    /// Full path → the last element at it (the replaced parser keeps the last), in first-seen order.
    paths: Vec<(String, usize)>,
    path_idx: HashMap<String, usize>,
    /// The elements of each name the mapper lists by name (`map_document_real` says which), in document order.
    by_name: Vec<(&'a str, Vec<usize>)>,
}

impl<'a> Doc<'a> {
    fn el(&self, i: usize) -> Elem<'_> {
        let n = &self.elems[i];
        Elem {
            name: n.name,
            parent: (n.parent != NO_PARENT).then_some(n.parent as usize),
            attrs: &self.attrs[n.attrs.0 as usize..n.attrs.1 as usize],
        }
    }
    /// The direct children of `i`, in document order (a walk over sibling subtrees, no list per element).
    fn children(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let end = self.elems[i].end as usize;
        let mut c = i + 1;
        std::iter::from_fn(move || {
            (c < end).then(|| {
                let this = c;
                c = self.elems[c].end as usize;
                this
            })
        })
    }
    /// The descendants of `i` in document order (its contiguous subtree).
    fn descendants(&self, i: usize) -> std::ops::Range<usize> {
        i + 1..self.elems[i].end as usize
    }
    fn named(&self, name: &str) -> &[usize] {
        self.by_name
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&[], |(_, v)| v.as_slice())
    }
}

fn parse_err(msg: impl Into<String>) -> Failure {
    Failure::new(Stage::Parse, msg)
}

/// The document as it is read, element by element: both readers (the fast scanner and quick-xml) feed it, so an
/// element's path, its place among its siblings and the by-name index are built one way.
struct Build<'a> {
    doc: Doc<'a>,
    /// (parent path, name) → path: an element's path is found by hashing its name, not its whole path string.
    path_of: HashMap<(u32, &'a str), u32>,
    /// (elem, its path) of the open elements.
    stack: Vec<(usize, u32)>,
    seen_root: bool,
}

impl<'a> Build<'a> {
    fn new(len: usize, indexed: &[&'a str]) -> Self {
        Build {
            doc: Doc {
                // About one element per 85 bytes and 1.5 attributes per element in the samples: one allocation
                // each instead of a doubling series.
                elems: Vec::with_capacity(len / 80 + 16),
                attrs: Vec::with_capacity(len / 50 + 16),
                paths: Vec::new(),
                path_idx: HashMap::default(),
                by_name: indexed.iter().map(|n| (*n, Vec::new())).collect(),
            },
            path_of: HashMap::default(),
            stack: Vec::new(),
            seen_root: false,
        }
    }

    /// The root-element checks for a start tag named `name` (called before its attributes are read).
    fn check_root(&mut self, name: &str, root: &str) -> Result<(), Failure> {
        if self.stack.is_empty() {
            if self.seen_root {
                return Err(parse_err("more than one root element"));
            }
            self.seen_root = true;
            if name != root {
                return Err(parse_err(format!(
                    "root element is <{name}>, expected <{root}>"
                )));
            }
        }
        Ok(())
    }

    /// An element named `name` whose attributes are `doc.attrs[a0..]` (already pushed).
    fn element(&mut self, name: &'a str, a0: u32, empty: bool) {
        let doc = &mut self.doc;
        let id = doc.elems.len();
        let (parent, parent_path) = self
            .stack
            .last()
            .map_or((NO_PARENT, NO_PARENT), |&(p, pp)| (p as u32, pp));
        let pi = match self.path_of.get(&(parent_path, name)) {
            Some(&pi) => pi,
            None => {
                let pi = doc.paths.len() as u32;
                let mut full = if parent_path == NO_PARENT {
                    String::with_capacity(name.len() + 1)
                } else {
                    doc.paths[parent_path as usize].0.clone()
                };
                full.push('/');
                full.push_str(name);
                self.path_of.insert((parent_path, name), pi);
                doc.path_idx.insert(full.clone(), pi as usize);
                doc.paths.push((full, id));
                pi
            }
        };
        doc.paths[pi as usize].1 = id;
        if let Some((_, v)) = doc.by_name.iter_mut().find(|(n, _)| *n == name) {
            v.push(id);
        }
        doc.elems.push(Node {
            name,
            parent,
            attrs: (a0, doc.attrs.len() as u32),
            end: id as u32 + 1,
        });
        if !empty {
            self.stack.push((id, pi));
        }
    }

    /// The end tag of the innermost open element.
    fn close(&mut self) {
        if let Some((id, _)) = self.stack.pop() {
            self.doc.elems[id].end = self.doc.elems.len() as u32;
        }
    }
}

/// The document's elements. The fast scanner ([`scan::parse_fast`]) reads the documents the samples are made of;
/// whatever it does not handle (or anything malformed) is read again by quick-xml from the start, so the result and
/// every error message are quick-xml's.
fn parse_doc<'a>(
    xml: &'a str,
    root: &str,
    indexed: &[&'a str],
    budget: &Budget,
) -> Result<Doc<'a>, Failure> {
    let xml = crate::decode::strip_bom(xml);
    if let Some(doc) = scan::parse_fast(xml, root, indexed, budget)? {
        #[cfg(debug_assertions)]
        // Unlimited: a budget running out during the comparison is not a disagreement.
        if let Ok(q) = parse_quick(xml, root, indexed, &Budget::unlimited()) {
            assert_eq!(scan::shape(&doc), scan::shape(&q), "the two readers differ");
        } else {
            panic!("the fast reader accepted a document quick-xml refuses");
        }
        return Ok(doc);
    }
    parse_quick(xml, root, indexed, budget)
}

/// The reference reader: quick-xml's events, with its end-name and attribute checks.
fn parse_quick<'a>(
    xml: &'a str,
    root: &str,
    indexed: &[&'a str],
    budget: &Budget,
) -> Result<Doc<'a>, Failure> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut b = Build::new(xml.len(), indexed);
    let mut pacer = Pacer::new(budget);
    loop {
        pacer.tick().map_err(Failure::interrupted)?;
        let before = reader.buffer_position() as usize;
        let ev = reader
            .read_event()
            .map_err(|e| parse_err(format!("{e} at byte {}", reader.error_position())))?;
        let (e, empty) = match ev {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                b.close();
                continue;
            }
            Event::Text(t) => {
                if b.stack.is_empty() && t.bytes().any(|b| !b.is_ascii_whitespace()) {
                    return Err(parse_err("text outside the root element"));
                }
                continue;
            }
            Event::GeneralRef(r) => {
                if b.stack.is_empty() {
                    return Err(parse_err("entity reference outside the root element"));
                }
                let name: &str = &r;
                let known = matches!(name, "lt" | "gt" | "amp" | "apos" | "quot");
                if !known && r.resolve_char_ref().ok().flatten().is_none() {
                    return Err(parse_err(format!("unknown entity &{name};")));
                }
                continue;
            }
            Event::CData(_) if b.stack.is_empty() => {
                return Err(parse_err("CDATA outside the root element"))
            }
            Event::Eof => {
                if !b.stack.is_empty() {
                    return Err(parse_err(format!(
                        "document ends inside an open element (depth {})",
                        b.stack.len()
                    )));
                }
                if !b.seen_root {
                    return Err(parse_err("no root element"));
                }
                return Ok(b.doc);
            }
            _ => continue,
        };
        let end = reader.buffer_position() as usize;
        let body: &'a str = xml
            .get(before + 1..end.saturating_sub(if empty { 2 } else { 1 }))
            .unwrap_or("");
        let name_len = e.name().as_ref().len();
        let name: &'a str = body.get(..name_len).unwrap_or("");
        b.check_root(name, root)?;
        let a0 = b.doc.attrs.len() as u32;
        for a in Attributes::new(body, name_len).with_checks(true) {
            let a = a.map_err(|err| parse_err(format!("bad attribute: {err}")))?;
            let v = a
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|err| parse_err(format!("bad attribute value: {err}")))?;
            // Both borrow from the document (the value unless unescaping or normalising changed it).
            let key: &'a str = a.key.into_inner();
            // Raw (XML-unescaped) as lxml gives it; `xd` is the replaced parser's processed form.
            b.doc.attrs.push((key, v));
        }
        b.element(name, a0, empty);
    }
}

/// The value as the replaced parser's `extract_elements` stores it (stripped, HTML-unescaped once more); contacts
/// and their children are read from the lxml tree instead, raw.
fn xd(v: &str) -> Cow<'_, str> {
    let t = v.trim();
    if t.contains('&') {
        Cow::Owned(html_unescape(t))
    } else {
        Cow::Borrowed(t)
    }
}

/// Python's `html.unescape` for the references that survive XML unescaping (`&amp;lt;` → `&lt;` → `<`).
fn html_unescape(v: &str) -> String {
    if !v.contains('&') {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let semi = tail.find(';').filter(|s| *s <= 10);
        let rep = semi.and_then(|s| {
            let ent = &tail[1..s];
            let ch = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ if ent.starts_with("#x") || ent.starts_with("#X") => {
                    u32::from_str_radix(&ent[2..], 16)
                        .ok()
                        .and_then(char::from_u32)
                }
                _ if ent.starts_with('#') => ent[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            ch.map(|c| (c, s))
        });
        match rep {
            Some((c, s)) => {
                out.push(c);
                rest = &tail[s + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

// ------------------------------------------------------------------------------------------------ values

/// A value as the replaced mapper holds it (Python types).
#[derive(Debug, Clone, PartialEq)]
enum Py {
    None,
    Str(String),
    Int(i64),
    Float(f64),
    Dt(chrono::NaiveDateTime),
}

impl Py {
    fn text(&self) -> String {
        match self {
            Py::None => "None".into(),
            Py::Str(s) => s.clone(),
            Py::Int(i) => i.to_string(),
            Py::Float(f) => py_float(*f),
            Py::Dt(d) => d.format("%Y-%m-%d %H:%M:%S%.f").to_string(),
        }
    }
    fn is_none(&self) -> bool {
        matches!(self, Py::None)
    }
    /// `StringUtils.safe_string_check`.
    fn meaningful(&self) -> bool {
        // Numbers and dates never print empty: only a string needs looking at (no allocation).
        match self {
            Py::None => false,
            Py::Str(s) => !s.trim().is_empty(),
            _ => true,
        }
    }
    /// `self == Py::Str(SENTINEL)`, without building the sentinel.
    fn is_sentinel(&self) -> bool {
        matches!(self, Py::Str(s) if s == SENTINEL)
    }
}

fn py_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

fn py_opt(v: Option<&str>) -> Py {
    v.map_or(Py::None, |s| Py::Str(s.to_owned()))
}

/// Python `Decimal(text).quantize(places, ROUND_HALF_UP)` then `float`; `None` when not a number.
fn quantize(text: &str, places: i64) -> Option<f64> {
    let t = text.trim();
    let scale = places.clamp(0, 12) as u8;
    let lower = t.to_ascii_lowercase();
    if lower.contains('e') || lower.contains("inf") || lower.contains("nan") {
        let f: f64 = t.parse().ok()?;
        return parse_decimal(&format!("{f:.15}"), 38, scale)
            .ok()?
            .parse()
            .ok();
    }
    parse_decimal(t, 38, scale).ok()?.parse().ok()
}

fn parse_dt(s: &str) -> Option<chrono::NaiveDateTime> {
    use chrono::Datelike;
    // Python's %Y takes exactly four digits; chrono's takes fewer ("5/4/20" is no date there).
    parse_dt_any(s).filter(|d| d.year() >= 1000)
}

fn parse_dt_any(s: &str) -> Option<chrono::NaiveDateTime> {
    use chrono::NaiveDateTime as N;
    let s = s.trim();
    // _clean_datetime_string: seconds above 59 become 59.
    let cleaned = clean_seconds(s);
    let s = cleaned.as_str();
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(d) = N::parse_from_str(s, f) {
            if f.contains("%.f") && !s.contains('.') {
                continue;
            }
            return Some(d);
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0);
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%m/%d/%Y") {
        return d.and_hms_opt(0, 0, 0);
    }
    for f in ["%m/%d/%Y %H:%M:%S", "%m/%d/%Y %I:%M:%S %p"] {
        if let Ok(d) = N::parse_from_str(s, f) {
            return Some(d);
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%d/%m/%Y") {
        return d.and_hms_opt(0, 0, 0);
    }
    if let Ok(d) = N::parse_from_str(s, "%d/%m/%Y %H:%M:%S") {
        return Some(d);
    }
    // datetime.fromisoformat
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(d) = N::parse_from_str(s, f) {
            return Some(d);
        }
    }
    None
}

fn clean_seconds(s: &str) -> String {
    // (\d{4}-\d{1,2}-\d{1,2} \d{1,2}:\d{1,2}:)(\d{2})(\.\d+)? at the start
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize, min: usize, max: usize| -> bool {
        let st = *i;
        while *i < b.len() && b[*i].is_ascii_digit() && *i - st < max {
            *i += 1;
        }
        *i - st >= min
    };
    let lit = |i: &mut usize, c: u8| -> bool {
        if *i < b.len() && b[*i] == c {
            *i += 1;
            true
        } else {
            false
        }
    };
    if !(digits(&mut i, 4, 4)
        && lit(&mut i, b'-')
        && digits(&mut i, 1, 2)
        && lit(&mut i, b'-')
        && digits(&mut i, 1, 2)
        && lit(&mut i, b' ')
        && digits(&mut i, 1, 2)
        && lit(&mut i, b':')
        && digits(&mut i, 1, 2)
        && lit(&mut i, b':'))
    {
        return s.to_owned();
    }
    let sec_start = i;
    if i + 2 > b.len() || !b[i].is_ascii_digit() || !b[i + 1].is_ascii_digit() {
        return s.to_owned();
    }
    let sec: u32 = s[i..i + 2].parse().unwrap_or(0);
    i += 2;
    let mut frac_end = i;
    if frac_end < b.len() && b[frac_end] == b'.' {
        let mut j = frac_end + 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > frac_end + 1 {
            frac_end = j;
        }
    }
    // re.match replaces only the matched prefix; the rest of the string is dropped by the f-string.
    format!("{}{:02}{}", &s[..sec_start], sec.min(59), &s[i..frac_end])
}

struct Ctx<'m> {
    plan: &'m Plan,
    /// Counts truncations and coercions (values changed or dropped to fit), per application.
    coerced: std::cell::Cell<u32>,
}

impl Ctx<'_> {
    fn coerce(&self) {
        self.coerced.set(self.coerced.get() + 1);
    }

    /// `transform_data_types`.
    fn transform(&self, v: &Py, dtype: &str) -> Py {
        if !v.meaningful() {
            return Py::None;
        }
        match dtype {
            "string" => Py::Str(v.text()),
            "int" | "smallint" | "bigint" | "tinyint" => {
                let s = v.text().trim().replace(',', "");
                match quantize(&s, 0) {
                    Some(f) => Py::Int(f as i64),
                    None => {
                        self.coerce();
                        Py::None
                    }
                }
            }
            "decimal" => match quantize(&v.text(), 2) {
                Some(f) => Py::Float(f),
                None => {
                    self.coerce();
                    Py::None
                }
            },
            "float" => v.text().trim().parse().map_or(Py::None, Py::Float),
            "datetime" | "smalldatetime" | "date" => match v {
                Py::Dt(d) => Py::Dt(*d),
                _ => match parse_dt(&v.text()) {
                    Some(d) => Py::Dt(d),
                    None => {
                        self.coerce();
                        Py::None
                    }
                },
            },
            "bit" | "boolean" => Py::Int(1),
            _ => Py::Str(v.text()),
        }
    }

    fn decimal_places(&self, v: &Py, places: i64) -> Py {
        if !v.meaningful() {
            return Py::None;
        }
        match quantize(&v.text(), places) {
            Some(f) => Py::Float(f),
            None => {
                self.coerce();
                Py::None
            }
        }
    }

    fn enum_lookup(&self, v: &Py, m: &RMap) -> Result<Py, Failure> {
        let s = match v {
            Py::None => String::new(),
            other => other.text().trim().to_owned(),
        };
        let name = m.enum_name.clone().unwrap_or_else(|| m.column.clone());
        let et = enum_type(&name, m.enum_name.is_some(), &self.plan.enums);
        if let Some(map) = et.as_ref().and_then(|e| self.plan.enums.get(e)) {
            let conv = |e: &EnumVal| match e {
                EnumVal::Int(i) => Py::Int(*i),
                EnumVal::Str(s) => Py::Str(s.clone()),
            };
            if let Some((_, e)) = map.iter().find(|(k, _)| *k == s) {
                return Ok(conv(e));
            }
            let up = s.to_uppercase();
            if let Some((_, e)) = map.iter().find(|(k, _)| k.to_uppercase() == up) {
                return Ok(conv(e));
            }
            if let Some((_, e)) = map.iter().find(|(k, _)| k.is_empty()) {
                if !s.is_empty() {
                    self.coerce();
                }
                return Ok(conv(e));
            }
        }
        if !m.nullable {
            if let Some(d) = &m.default {
                return Ok(Py::Str(d.clone()));
            }
            return Err(Failure::new(
                Stage::Map,
                format!(
                    "Required enum field '{}' has no valid mapping for value '{s}'",
                    m.column
                ),
            ));
        }
        if !s.is_empty() {
            self.coerce();
        }
        Ok(Py::None)
    }

    fn char_bit(&self, v: &Py) -> Py {
        let s = if v.is_none() {
            String::new()
        } else {
            v.text().trim().to_owned()
        };
        if let Some(b) = self
            .plan
            .char_to_bit
            .get(&s)
            .or_else(|| self.plan.char_to_bit.get(&s.to_uppercase()))
        {
            return Py::Int(*b);
        }
        if !matches!(s.as_str(), "" | "null" | "None") {
            self.coerce();
        }
        Py::Int(0)
    }

    fn bool_bit(&self, v: &Py) -> Py {
        let s = if v.is_none() {
            String::new()
        } else {
            v.text().trim().to_lowercase()
        };
        if let Some(b) = self.plan.bool_to_bit.get(&s) {
            return Py::Int(*b);
        }
        if !matches!(s.as_str(), "" | "null" | "none") {
            self.coerce();
        }
        Py::Int(0)
    }
}

/// Key → value context of the calculated-field engine (a flattened dictionary, later keys overwriting). The
/// case-insensitive lookups resolve to the first key in insertion order, as the replaced code's scans do. Two forms
/// with the same answers: a map (the application context, built once per document, with case-folded indexes built
/// on the first case-insensitive miss) and a view of one element's attributes (a contact or a contact's child,
/// optionally with `con_id` set on top), which borrows the document instead of copying every attribute per row.
enum Context<'a> {
    Map(MapContext<'a>),
    Elem {
        attrs: &'a [(&'a str, Cow<'a, str>)],
        /// `con_id` set after the attributes (overwriting an attribute of that name, else appended).
        con_id: Option<&'a str>,
    },
}

/// A context key: borrowed from the document, or built once (`segment.attribute`) and shared by the map and the
/// insertion order (one allocation per built key, not three).
#[derive(Clone)]
enum Key<'a> {
    Doc(&'a str),
    Built(std::rc::Rc<str>),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Doc(s) => s,
            Key::Built(s) => s,
        }
    }
}

impl PartialEq for Key<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Key<'_> {}
impl std::hash::Hash for Key<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, so a `&str` finds it (`Borrow`).
        self.as_str().hash(state);
    }
}
impl std::borrow::Borrow<str> for Key<'_> {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}
impl<'a> From<&'a str> for Key<'a> {
    fn from(s: &'a str) -> Self {
        Key::Doc(s)
    }
}

#[derive(Default)]
struct MapContext<'a> {
    map: HashMap<Key<'a>, Cow<'a, str>>,
    order: Vec<Key<'a>>,
    /// Upper- and lower-case key → first key in insertion order; built on the first case-insensitive miss.
    /// (Measured: scanning the keys per miss instead costs 4.6× the instructions of building these once.)
    folded_up: std::cell::OnceCell<HashMap<String, usize>>,
    folded_low: std::cell::OnceCell<HashMap<String, usize>>,
}

impl MapContext<'_> {
    /// Folded key (`fold` of each key, first inserted wins) → index in `order`.
    fn fold_index(&self, fold: fn(&str) -> String) -> HashMap<String, usize> {
        let mut m = HashMap::with_capacity_and_hasher(self.order.len(), FastState::default());
        for (i, k) in self.order.iter().enumerate() {
            m.entry(fold(k.as_str())).or_insert(i);
        }
        m
    }
    fn folded_up(&self) -> &HashMap<String, usize> {
        self.folded_up.get_or_init(|| {
            self.fold_index(|k| {
                if k.is_ascii() {
                    k.to_ascii_uppercase()
                } else {
                    k.to_uppercase()
                }
            })
        })
    }
    fn folded_low(&self) -> &HashMap<String, usize> {
        self.folded_low.get_or_init(|| {
            self.fold_index(|k| {
                if k.is_ascii() {
                    k.to_ascii_lowercase()
                } else {
                    k.to_lowercase()
                }
            })
        })
    }
}

/// Which keys the application context needs to hold. A document sets thousands (two per attribute of every
/// distinct path) and its expressions read a few dozen, so the context keeps only the keys some lookup could ask for,
/// exactly or case-insensitively: every lookup string is one of the contract's strings (a mapping's attribute, an
/// expression, a CASE condition's field or a THEN/ELSE value, `con_id`) or a substring of one, and a key contains no
/// whitespace, so a key can be asked for only if its ASCII upper case is a substring of a whitespace-free run of those
/// strings. The filter holds a hash of every such substring; a key whose hash is absent is never looked up, so leaving
/// it out changes no answer: the kept keys keep their relative order, so "the first key that folds to X" is the
/// same key. (A hash collision only keeps a key that is not needed.) Non-ASCII keys are always kept, and a contract
/// with non-ASCII strings, or so many substrings that the set would be large, keeps every key. Debug builds map every
/// document with and without the filter and assert the same rows (`map_document_real`).
#[derive(Debug, Default)]
struct KeyFilter(Option<std::collections::HashSet<u64, FastState>>);

impl KeyFilter {
    /// At most this many substrings are hashed (a contract with longer runs keeps every key).
    const MAX: usize = 1 << 20;
    const FNV_INIT: u64 = 0xcbf2_9ce4_8422_2325;

    fn step(h: u64, b: u8) -> u64 {
        (h ^ u64::from(b.to_ascii_uppercase())).wrapping_mul(0x0100_0000_01b3)
    }

    fn hash(k: &str) -> u64 {
        k.bytes().fold(Self::FNV_INIT, Self::step)
    }

    fn of(tables: &[RTable]) -> KeyFilter {
        let mut sources: Vec<&str> = vec!["con_id", "app_id"];
        for m in tables.iter().flat_map(|t| &t.maps) {
            sources.push(&m.attr);
            sources.extend(m.expr.as_deref());
            if let Some(c) = &m.case {
                sources.extend(c.else_v.as_deref());
                for (cond, then_v) in &c.pairs {
                    sources.push(then_v);
                    for part in &cond.parts {
                        match part {
                            Simple::Empty(f, _) | Simple::Null(f, _) | Simple::Like(f, _) => {
                                sources.push(f)
                            }
                            Simple::Cmp(l, r, _) => sources.extend([l.as_str(), r.as_str()]),
                            Simple::Never => {}
                        }
                    }
                }
            }
        }
        if !sources.iter().all(|s| s.is_ascii()) {
            return KeyFilter(None);
        }
        let mut set = std::collections::HashSet::with_hasher(FastState::default());
        for run in sources.iter().flat_map(|s| s.split_ascii_whitespace()) {
            let b = run.as_bytes();
            for i in 0..b.len() {
                let mut h = Self::FNV_INIT;
                for &c in &b[i..] {
                    h = Self::step(h, c);
                    set.insert(h);
                }
            }
            if set.len() > Self::MAX {
                return KeyFilter(None);
            }
        }
        KeyFilter(Some(set))
    }

    /// Whether `k` can be looked up (always, without a filter).
    fn wants(&self, k: &str) -> bool {
        match &self.0 {
            None => true,
            Some(set) => !k.is_ascii() || set.contains(&Self::hash(k)),
        }
    }
}

/// `parts` joined in `buf` (reused between keys).
fn built<'b>(buf: &'b mut String, parts: &[&str]) -> &'b str {
    buf.clear();
    for p in parts {
        buf.push_str(p);
    }
    buf
}

/// `prefix` joined, then `k.to_lowercase()`, in `buf`.
fn built_lower<'b>(buf: &'b mut String, prefix: &[&str], k: &str) -> &'b str {
    buf.clear();
    for p in prefix {
        buf.push_str(p);
    }
    if k.is_ascii() {
        buf.extend(k.bytes().map(|b| char::from(b.to_ascii_lowercase())));
    } else {
        buf.push_str(&k.to_lowercase());
    }
    buf
}

/// `key.to_uppercase() == up`, without allocating for ASCII keys.
fn upper_is(key: &str, up: &str) -> bool {
    if key.is_ascii() && up.is_ascii() {
        key.len() == up.len()
            && key
                .bytes()
                .zip(up.bytes())
                .all(|(a, b)| a.to_ascii_uppercase() == b)
    } else {
        key.to_uppercase() == up
    }
}

/// `key.to_lowercase() == low`, without allocating for ASCII keys.
fn lower_is(key: &str, low: &str) -> bool {
    if key.is_ascii() && low.is_ascii() {
        key.len() == low.len()
            && key
                .bytes()
                .zip(low.bytes())
                .all(|(a, b)| a.to_ascii_lowercase() == b)
    } else {
        key.to_lowercase() == low
    }
}

impl<'a> Context<'a> {
    fn empty() -> Context<'a> {
        Context::Map(MapContext::default())
    }
    fn set(&mut self, k: impl Into<Key<'a>>, v: impl Into<Cow<'a, str>>) {
        let Context::Map(c) = self else {
            unreachable!("only map contexts are built by setting keys")
        };
        match c.map.entry(k.into()) {
            // The first insertion's key and position stay; the value is overwritten.
            std::collections::hash_map::Entry::Occupied(mut slot) => {
                slot.insert(v.into());
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                c.order.push(slot.key().clone());
                slot.insert(v.into());
                c.folded_up = std::cell::OnceCell::new();
                c.folded_low = std::cell::OnceCell::new();
            }
        }
    }
    /// [`set`](Self::set) with a key built in a scratch buffer: the key is allocated only when it is new.
    fn set_built(&mut self, k: &str, v: impl Into<Cow<'a, str>>) {
        let Context::Map(c) = self else {
            unreachable!("only map contexts are built by setting keys")
        };
        match c.map.get_mut(k) {
            Some(slot) => *slot = v.into(),
            None => self.set(Key::Built(k.into()), v),
        }
    }
    fn get(&self, k: &str) -> Option<&str> {
        match self {
            Context::Map(c) => c.map.get(k).map(AsRef::as_ref),
            Context::Elem { attrs, con_id } => match con_id {
                Some(con) if k == "con_id" => Some(con),
                _ => attrs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_ref()),
            },
        }
    }
    /// The keys in insertion order (element form only).
    fn elem_keys(&self) -> impl Iterator<Item = &str> {
        let (attrs, con_id): (&[(&str, Cow<'_, str>)], _) = match self {
            Context::Elem { attrs, con_id } => (attrs, *con_id),
            Context::Map(_) => (&[], None),
        };
        let extra = con_id
            .filter(|_| !attrs.iter().any(|(n, _)| *n == "con_id"))
            .map(|_| "con_id");
        attrs.iter().map(|(n, _)| *n).chain(extra)
    }
    /// `_find_field_case_insensitive` then `.get`.
    fn get_ci(&self, k: &str) -> Option<&str> {
        if let Some(v) = self.get(k) {
            return Some(v);
        }
        self.key_upper(&k.to_uppercase()).and_then(|x| self.get(x))
    }
    /// The key whose upper case is `up` (first inserted).
    fn key_upper(&self, up: &str) -> Option<&str> {
        match self {
            Context::Map(c) => c.folded_up().get(up).map(|&i| c.order[i].as_str()),
            Context::Elem { .. } => self.elem_keys().find(|k| upper_is(k, up)),
        }
    }
    /// `_get_attribute_case_insensitive` on the dictionary.
    fn attr_ci(&self, k: &str) -> Option<&str> {
        if let Some(v) = self.get(k) {
            return Some(v);
        }
        let low = k.to_lowercase();
        let key = match self {
            Context::Map(c) => c.order[*c.folded_low().get(&low)?].as_str(),
            Context::Elem { .. } => self.elem_keys().find(|n| lower_is(n, &low))?,
        };
        self.get(key)
    }
}

// ------------------------------------------------------------------------------------------------ expressions

#[derive(Debug, Clone)]
enum EV {
    None,
    Str(String),
    Num(f64),
    Dt(chrono::NaiveDateTime),
}

fn split_ci<'s>(s: &'s str, sep: &str) -> Vec<&'s str> {
    // re.split(r'\s+SEP\s+', s, flags=IGNORECASE), approximated on single spaces around the keyword.
    let up = s.to_ascii_uppercase();
    let pat = format!(" {sep} ");
    let mut out = Vec::new();
    let mut last = 0;
    let mut from = 0;
    while let Some(i) = up[from..].find(&pat) {
        let at = from + i;
        out.push(&s[last..at]);
        last = at + pat.len();
        from = last;
    }
    out.push(&s[last..]);
    out
}

fn split_once_ci<'s>(s: &'s str, sep: &str) -> Option<(&'s str, &'s str)> {
    let up = s.to_ascii_uppercase();
    let pat = format!(" {sep} ");
    up.find(&pat).map(|i| (&s[..i], &s[i + pat.len()..]))
}

fn strip_word_ci(s: &str, w: &str) -> String {
    // re.sub(r'\bW\b', '', s, flags=IGNORECASE)
    let up = s.to_ascii_uppercase();
    let mut out = String::new();
    let mut i = 0;
    let b = up.as_bytes();
    let is_w = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < s.len() {
        if up[i..].starts_with(w)
            && (i == 0 || !is_w(b[i - 1]))
            && (i + w.len() >= b.len() || !is_w(b[i + w.len()]))
        {
            i += w.len();
            continue;
        }
        let ch = s[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// A CASE expression's (condition, value) pairs and ELSE value, as `eval_case` splits them.
#[derive(Debug, Clone)]
struct CaseExpr {
    pairs: Vec<(Cond, String)>,
    else_v: Option<String>,
}

fn eval_expression(expr: &str, case: Option<&CaseExpr>, ctx: &Context) -> EV {
    if let Some(c) = case {
        return eval_case(c, ctx);
    }
    if expr.to_uppercase().contains("CASE") {
        return match parse_case(expr) {
            Some(c) => eval_case(&c, ctx),
            None => EV::None,
        };
    }
    eval_arith(expr, ctx)
}

/// Splits a CASE expression (`None` if `expr` is not one); a pure function of the text, so done once at load.
fn parse_case(expr: &str) -> Option<CaseExpr> {
    if !expr.to_uppercase().contains("CASE") {
        return None;
    }
    let body = strip_word_ci(expr, "CASE");
    let body = strip_word_ci(body.trim(), "END");
    let body = body.trim();
    let mut pairs: Vec<(Cond, String)> = Vec::new();
    let mut else_v: Option<String> = None;
    for part in split_ci(body, "WHEN") {
        if !part.to_uppercase().contains("THEN") {
            continue;
        }
        let Some((cond, val)) = split_once_ci(part, "THEN") else {
            continue;
        };
        let cond = cond.trim();
        let cond = if cond.to_ascii_uppercase().starts_with("WHEN ") {
            cond[5..].trim()
        } else {
            cond
        };
        let val = val.trim();
        let then_v = if val.to_uppercase().contains("ELSE") {
            match split_once_ci(val, "ELSE") {
                Some((t, e)) => {
                    else_v = Some(e.trim().to_owned());
                    t.trim().to_owned()
                }
                None => val.to_owned(),
            }
        } else {
            val.to_owned()
        };
        pairs.push((compile_condition(cond), then_v));
    }
    Some(CaseExpr { pairs, else_v })
}

fn eval_case(case: &CaseExpr, ctx: &Context) -> EV {
    for (c, v) in &case.pairs {
        if eval_condition(c, ctx) {
            return eval_value(v, ctx);
        }
    }
    match &case.else_v {
        Some(e) => eval_value(e, ctx),
        None => EV::None,
    }
}

/// A WHEN condition as `eval_condition` reads it, split once at load: its simple parts, all or any of them.
#[derive(Debug, Clone)]
struct Cond {
    any: bool,
    parts: Vec<Simple>,
}

/// One simple condition; the field names and operands are the texts the per-row code used to cut out each time.
#[derive(Debug, Clone)]
enum Simple {
    /// `F IS [NOT] EMPTY` (upper-cased field name; `true` = NOT).
    Empty(String, bool),
    /// `F IS [NOT] NULL`.
    Null(String, bool),
    /// `F LIKE 'pattern'` (both upper-cased, as the replaced code compares them).
    Like(String, String),
    /// `l op r`, in the condition's own case.
    Cmp(String, String, &'static str),
    Never,
}

/// The replaced `_evaluate_condition`'s split: AND binds first, then OR, on the upper-cased text.
fn compile_condition(cond: &str) -> Cond {
    let c = cond.trim();
    let up = c.to_uppercase();
    if up.contains(" AND ") {
        let parts = up
            .split(" AND ")
            .map(|p| compile_simple(p.trim()))
            .collect();
        return Cond { any: false, parts };
    }
    if up.contains(" OR ") {
        let parts = up.split(" OR ").map(|p| compile_simple(p.trim())).collect();
        return Cond { any: true, parts };
    }
    Cond {
        any: false,
        parts: vec![compile_simple(c)],
    }
}

fn compile_simple(cond: &str) -> Simple {
    let up = cond.to_uppercase();
    let field_of = |kw: &str| up.replace(kw, "").trim().to_owned();
    if up.contains("IS EMPTY") {
        return Simple::Empty(field_of("IS EMPTY"), false);
    }
    if up.contains("IS NOT EMPTY") {
        return Simple::Empty(field_of("IS NOT EMPTY"), true);
    }
    if up.contains("IS NULL") {
        return Simple::Null(field_of("IS NULL"), false);
    }
    if up.contains("IS NOT NULL") {
        return Simple::Null(field_of("IS NOT NULL"), true);
    }
    if up.contains(" LIKE ") {
        if let Some((l, p)) = up.split_once(" LIKE ") {
            let pat = p.trim().trim_matches(|c| c == '\'' || c == '"');
            return Simple::Like(l.trim().to_owned(), pat.to_owned());
        }
    }
    for op in ["!=", "<=", ">=", "=", "<", ">"] {
        if let Some((l, r)) = cond.split_once(op) {
            return Simple::Cmp(l.trim().to_owned(), r.trim().to_owned(), op);
        }
    }
    Simple::Never
}

fn eval_condition(cond: &Cond, ctx: &Context) -> bool {
    if cond.any {
        cond.parts.iter().any(|p| eval_simple(p, ctx))
    } else {
        cond.parts.iter().all(|p| eval_simple(p, ctx))
    }
}

fn eval_simple(cond: &Simple, ctx: &Context) -> bool {
    match cond {
        Simple::Empty(f, not) => ctx.get_ci(f).unwrap_or("").trim().is_empty() != *not,
        Simple::Null(f, not) => ctx.get_ci(f).unwrap_or("").is_empty() != *not,
        Simple::Like(left, pat) => {
            let val = ctx.key_upper(left).and_then(|k| ctx.get(k)).unwrap_or("");
            like(val, pat)
        }
        Simple::Cmp(l, r, op) => {
            let lv = match date_fn(l, ctx) {
                Some(d) => EV::Dt(d),
                None => EV::Str(ctx.get_ci(l).unwrap_or("").to_owned()),
            };
            let rv = match date_fn(r, ctx) {
                Some(d) => EV::Dt(d),
                None => {
                    if (r.starts_with('\'') && r.ends_with('\'') && r.len() >= 2)
                        || (r.starts_with('"') && r.ends_with('"') && r.len() >= 2)
                    {
                        EV::Str(r[1..r.len() - 1].to_owned())
                    } else {
                        EV::Str(ctx.get_ci(r).unwrap_or("").to_owned())
                    }
                }
            };
            compare(&lv, &rv, op)
        }
        Simple::Never => false,
    }
}

fn like(val: &str, pat: &str) -> bool {
    // '%' → any run, '_' → one character, case-insensitive, anchored.
    fn m(v: &[char], p: &[char]) -> bool {
        match p.first() {
            None => v.is_empty(),
            Some('%') => (0..=v.len()).any(|i| m(&v[i..], &p[1..])),
            Some('_') => !v.is_empty() && m(&v[1..], &p[1..]),
            Some(c) => {
                v.first()
                    .is_some_and(|x| x.to_lowercase().eq(c.to_lowercase()))
                    && m(&v[1..], &p[1..])
            }
        }
    }
    let v: Vec<char> = val.chars().collect();
    let p: Vec<char> = pat.chars().collect();
    m(&v, &p)
}

fn date_formats(s: &str) -> Option<chrono::NaiveDateTime> {
    use chrono::{NaiveDate as D, NaiveDateTime as N};
    for f in ["%Y-%m-%d", "%m/%d/%Y", "%d/%m/%Y"] {
        if let Ok(d) = D::parse_from_str(s, f) {
            return d.and_hms_opt(0, 0, 0);
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(d) = N::parse_from_str(s, f) {
            return Some(d);
        }
    }
    None
}

fn date_fn(e: &str, ctx: &Context) -> Option<chrono::NaiveDateTime> {
    let e = e.trim();
    if !(e.to_uppercase().starts_with("DATE(") && e.ends_with(')')) {
        return None;
    }
    let c = e[5..e.len() - 1].trim();
    let s = if c.len() >= 2
        && ((c.starts_with('\'') && c.ends_with('\'')) || (c.starts_with('"') && c.ends_with('"')))
    {
        c[1..c.len() - 1].to_owned()
    } else {
        ctx.get(c)?.to_owned()
    };
    date_formats(&s)
}

fn compare(l: &EV, r: &EV, op: &str) -> bool {
    use std::cmp::Ordering;
    let apply = |o: Option<Ordering>| -> bool {
        let Some(o) = o else { return false };
        match op {
            "=" => o.is_eq(),
            "!=" => o.is_ne(),
            "<" => o.is_lt(),
            ">" => o.is_gt(),
            "<=" => o.is_le(),
            _ => o.is_ge(),
        }
    };
    match (l, r) {
        (EV::Dt(a), EV::Dt(b)) => apply(a.partial_cmp(b)),
        (EV::Dt(a), EV::Str(s)) => date_formats(s).is_some_and(|b| apply(a.partial_cmp(&b))),
        (EV::Str(s), EV::Dt(b)) => date_formats(s).is_some_and(|a| apply(a.partial_cmp(b))),
        (EV::Str(a), EV::Str(b)) => match (py_float_parse(a), py_float_parse(b)) {
            (Some(x), Some(y)) => apply(x.partial_cmp(&y)),
            _ => apply(Some(a.as_str().cmp(b.as_str()))),
        },
        _ => false,
    }
}

fn py_float_parse(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    let ok = t
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        || matches!(
            t.to_ascii_lowercase().as_str(),
            "inf" | "-inf" | "nan" | "infinity"
        );
    if !ok {
        return None;
    }
    t.parse().ok()
}

fn eval_value(e: &str, ctx: &Context) -> EV {
    let e = e.trim();
    if e.to_uppercase().starts_with("DATEADD(") {
        return match dateadd(e, ctx) {
            Some(d) => EV::Str(d.format("%Y-%m-%d").to_string()),
            None => EV::None,
        };
    }
    if let Some(v) = ctx.get(e) {
        return EV::Str(v.to_owned());
    }
    if e.len() >= 2
        && ((e.starts_with('\'') && e.ends_with('\'')) || (e.starts_with('"') && e.ends_with('"')))
    {
        return EV::Str(e[1..e.len() - 1].to_owned());
    }
    if e.contains('.') {
        if let Some(f) = py_float_parse(e) {
            return EV::Num(f);
        }
    } else if let Ok(i) = e.parse::<i64>() {
        return EV::Num(i as f64);
    }
    eval_arith(e, ctx)
}

fn dateadd(e: &str, ctx: &Context) -> Option<chrono::NaiveDateTime> {
    let inner = &e[8..e.len() - 1];
    let mut parts = Vec::new();
    let (mut depth, mut q, mut cur) = (0, None::<char>, String::new());
    for c in inner.chars() {
        match q {
            Some(x) => {
                cur.push(c);
                if c == x {
                    q = None;
                }
            }
            None if c == '\'' || c == '"' => {
                q = Some(c);
                cur.push(c);
            }
            None if c == '(' => {
                depth += 1;
                cur.push(c);
            }
            None if c == ')' => {
                depth -= 1;
                cur.push(c);
            }
            None if c == ',' && depth == 0 => parts.push(std::mem::take(&mut cur)),
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    if parts.len() != 3 {
        return None;
    }
    let (unit, num, date) = (parts[0].trim(), parts[1].trim(), parts[2].trim());
    if !matches!(unit.to_lowercase().as_str(), "day" | "'day'" | "\"day\"") {
        return None;
    }
    let days: i64 = if num
        .replace(['-', '.'], "")
        .bytes()
        .all(|b| b.is_ascii_digit())
        && !num.replace(['-', '.'], "").is_empty()
    {
        num.parse::<f64>().ok()? as i64
    } else {
        match ctx.get(num) {
            None => 0,
            Some(v) if v.trim().is_empty() => 0,
            Some(v) => py_float_parse(v)? as i64,
        }
    };
    let base = if date.to_uppercase().starts_with("DATE(") {
        date_fn(date, ctx)?
    } else {
        date_formats(ctx.get(date)?)?
    };
    base.checked_add_signed(chrono::Duration::days(days))
}

fn eval_arith(e: &str, ctx: &Context) -> EV {
    if !e
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_+-*/().'\" \t\n".contains(c))
    {
        return EV::None;
    }
    // Every referenced field must be present and non-empty.
    let mut names = Vec::new();
    let b = e.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if (b[i].is_ascii_alphabetic() || b[i] == b'_')
            && (i == 0
                || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'.'))
        {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            names.push(&e[st..i]);
        } else {
            i += 1;
        }
    }
    let mut vars = HashMap::default();
    for n in &names {
        match ctx.get(n) {
            Some(v) if !v.trim().is_empty() => {
                vars.insert(*n, py_float_parse(v).unwrap_or(0.0));
            }
            _ => return EV::None,
        }
    }
    let toks = arith_tokens(e, &vars);
    let Some(toks) = toks else { return EV::None };
    let mut p = 0;
    match arith_sum(&toks, &mut p) {
        Some(v) if p == toks.len() => EV::Num(v),
        _ => EV::None,
    }
}

#[derive(Debug, Clone, Copy)]
enum ATok {
    N(f64),
    Op(u8),
}

fn arith_tokens(e: &str, vars: &HashMap<&str, f64>) -> Option<Vec<ATok>> {
    let b = e.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || c == b'.' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            out.push(ATok::N(e[st..i].parse().ok()?));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            out.push(ATok::N(*vars.get(&e[st..i])?));
        } else if b"+-*/()".contains(&c) {
            out.push(ATok::Op(c));
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

fn arith_sum(t: &[ATok], p: &mut usize) -> Option<f64> {
    let mut v = arith_term(t, p)?;
    while let Some(ATok::Op(o @ (b'+' | b'-'))) = t.get(*p) {
        *p += 1;
        let r = arith_term(t, p)?;
        v = if *o == b'+' { v + r } else { v - r };
    }
    Some(v)
}

fn arith_term(t: &[ATok], p: &mut usize) -> Option<f64> {
    let mut v = arith_factor(t, p)?;
    while let Some(ATok::Op(o @ (b'*' | b'/'))) = t.get(*p) {
        *p += 1;
        let r = arith_factor(t, p)?;
        v = if *o == b'*' {
            v * r
        } else if r == 0.0 {
            return None;
        } else {
            v / r
        };
    }
    Some(v)
}

fn arith_factor(t: &[ATok], p: &mut usize) -> Option<f64> {
    match t.get(*p)? {
        ATok::N(n) => {
            *p += 1;
            Some(*n)
        }
        ATok::Op(b'-') => {
            *p += 1;
            Some(-arith_factor(t, p)?)
        }
        ATok::Op(b'+') => {
            *p += 1;
            arith_factor(t, p)
        }
        ATok::Op(b'(') => {
            *p += 1;
            let v = arith_sum(t, p)?;
            match t.get(*p) {
                Some(ATok::Op(b')')) => {
                    *p += 1;
                    Some(v)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn ev_to_py(v: EV) -> Py {
    match v {
        EV::None => Py::None,
        EV::Str(s) => Py::Str(s),
        EV::Num(f) => {
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                // Python keeps int literals as int and arithmetic on floats as float; the engine's arithmetic
                // always runs on floats, literals (THEN 412) stay int.
                Py::Float(f)
            } else {
                Py::Float(f)
            }
        }
        EV::Dt(d) => Py::Dt(d),
    }
}

// ------------------------------------------------------------------------------------------------ mapping

/// Maps one document with the replaced system's semantics; `contract.real` must be set.
pub fn map_document_real(
    contract: &Contract,
    plan: &Plan,
    app_id: i64,
    xml: &str,
    budget: &Budget,
) -> Result<MappedApp, Failure> {
    // The names the mapper lists elements by: contacts by the plan's element name and by the literal 'contact'.
    let names = [plan.contact_elem.as_str(), "contact"];
    let indexed = if names[0] == names[1] {
        &names[..1]
    } else {
        &names[..]
    };
    let doc = parse_doc(xml, &contract.root_element, indexed, budget)?;
    budget.check().map_err(Failure::interrupted)?;
    let m = Mapper::new(plan, &doc, app_id, contract)?;
    let out = m.run(contract, budget, false);
    #[cfg(debug_assertions)]
    {
        // The key filter changes no answer: the same document mapped with the full context gives the same rows or
        // the same failure (a limit or a cancellation depends on when it is checked, so it is not compared).
        let full =
            Mapper::new(plan, &doc, app_id, contract).and_then(|m| m.run(contract, budget, true));
        let timed = |r: &Result<MappedApp, Failure>| matches!(r, Err(f) if matches!(f.stage, Stage::Limit | Stage::Cancelled));
        if !timed(&out) && !timed(&full) {
            assert_eq!(
                format!("{out:?}"),
                format!("{full:?}"),
                "application {app_id}: the key filter changed the result"
            );
        }
    }
    out
}

struct Contact {
    elem: usize,
    con_id: String,
}

struct Mapper<'m, 'd> {
    ctx: Ctx<'m>,
    doc: &'d Doc<'d>,
    app_id: i64,
    contacts: Vec<Contact>,
    /// con_ids of `contacts`.
    valid_con_ids: std::collections::HashSet<String>,
    /// con_id → the last `<contact>` element with it (the replaced `//contact[@con_id=X]` lookup, indexed once).
    last_contact_by_con: HashMap<String, usize>,
    /// The typed contacts (`all_contacts`) of each of the first two contact types, in document order: computed
    /// once instead of per `last_valid_pr_contact`/`_sec_` mapping (each scanned every contact).
    typed_cands: [Vec<usize>; 2],
}

fn map_fail(msg: impl Into<String>) -> Failure {
    Failure::new(Stage::Map, msg)
}

/// One record as the replaced mapper builds it: column → value, insertion order kept.
/// The column names borrow the plan (no `String` per value per row).
type Record<'k> = Vec<(&'k str, Py)>;

fn rec_set<'k>(r: &mut Record<'k>, k: &'k str, v: Py) {
    match r.iter_mut().find(|(c, _)| *c == k) {
        Some(slot) => slot.1 = v,
        None => r.push((k, v)),
    }
}

fn rec_has(r: &Record<'_>, k: &str) -> bool {
    r.iter().any(|(c, _)| *c == k)
}

impl<'m, 'd> Mapper<'m, 'd> {
    fn new(
        plan: &'m Plan,
        doc: &'d Doc<'d>,
        app_id: i64,
        contract: &Contract,
    ) -> Result<Self, Failure> {
        // Request@ID: the pre-processing validator's app id.
        let req = doc
            .path_idx
            .get(&format!("/{}/Request", contract.root_element))
            .map(|&i| doc.paths[i].1);
        let id = req.and_then(|r| doc.el(r).get_ci("id").or_else(|| doc.el(r).get("ID")));
        match id.map(xd).as_deref() {
            None | Some("") => {
                return Err(map_fail(
                    "missing required attribute ID of /Provenir/Request",
                ))
            }
            Some(s) if s.parse::<i64>().ok() == Some(app_id) => {}
            Some(s) => {
                return Err(map_fail(format!(
                    "app_base.app_id {s} does not match app_id {app_id}"
                )))
            }
        }
        // PreProcessingValidator: the contract's application element must be there.
        let root = &contract.root_element;
        let want = format!("/{root}/Request/CustData/{}", plan.app_elem);
        if !doc.path_idx.contains_key(&want) {
            let other = if plan.app_elem == "application" {
                "IL_application"
            } else {
                "application"
            };
            return Err(map_fail(
                if doc
                    .path_idx
                    .contains_key(&format!("/{root}/Request/CustData/{other}"))
                {
                    let line = if other == "application" {
                        "Credit Card"
                    } else {
                        "Rec Lending"
                    };
                    format!("validation: Wrong product line: Found {line} XML (/{other}) but contract expects '{}'", plan.app_elem)
                } else {
                    format!("validation: Missing required application element: {want}")
                },
            ));
        }
        if app_id <= 0 {
            return Err(map_fail(format!(
                "validation: Invalid app_id value: {app_id} (must be positive integer)"
            )));
        }
        let mut m = Mapper {
            ctx: Ctx {
                plan,
                coerced: std::cell::Cell::new(0),
            },
            doc,
            app_id,
            contacts: vec![],
            valid_con_ids: Default::default(),
            last_contact_by_con: HashMap::default(),
            typed_cands: [Vec::new(), Vec::new()],
        };
        let all = m.all_contacts();
        for (idx, slot) in m.typed_cands.iter_mut().enumerate() {
            if let Some(want) = plan.contact_types.get(idx) {
                *slot = all
                    .iter()
                    .copied()
                    .filter(|&e| doc.el(e).get(&plan.contact_type_attr) == Some(want.as_str()))
                    .collect();
            }
        }
        m.contacts = m.valid_contacts();
        m.valid_con_ids = m.contacts.iter().map(|c| c.con_id.clone()).collect();
        for &e in doc.named("contact") {
            if let Some(c) = doc.el(e).get("con_id") {
                m.last_contact_by_con.insert(c.to_owned(), e);
            }
        }
        Ok(m)
    }

    fn all_contacts(&self) -> Vec<usize> {
        let p = self.ctx.plan;
        self.doc
            .named(&p.contact_elem)
            .iter()
            .copied()
            .filter(|&e| self.doc.el(e).get(&p.contact_type_attr).is_some())
            .collect()
    }

    /// `_extract_valid_contacts`: typed, meaningful, one per con_id (earlier type in the filter list wins, else
    /// the last).
    fn valid_contacts(&self) -> Vec<Contact> {
        let p = self.ctx.plan;
        let prio = |t: &str| p.contact_types.iter().position(|x| x == t).unwrap_or(999);
        let mut out: Vec<Contact> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::default();
        for e in self.all_contacts() {
            let el = self.doc.el(e);
            let con = el.get("con_id").unwrap_or("").trim();
            let ty = el.get(&p.contact_type_attr).unwrap_or("").trim();
            if con.is_empty() || ty.is_empty() || !p.contact_types.iter().any(|x| x == ty) {
                continue;
            }
            let meaningful = ["birth_date", "first_name", "last_name", "ssn"]
                .iter()
                .any(|k| !el.get(k).unwrap_or("").trim().is_empty());
            if !meaningful {
                continue;
            }
            match at.get(con).map(|&i| &mut out[i]) {
                None => {
                    at.insert(con.to_owned(), out.len());
                    out.push(Contact {
                        elem: e,
                        con_id: con.to_owned(),
                    })
                }
                Some(c) => {
                    let old = self
                        .doc
                        .el(c.elem)
                        .get(&p.contact_type_attr)
                        .unwrap_or("")
                        .trim();
                    if prio(ty) <= prio(old) {
                        c.elem = e;
                    }
                }
            }
        }
        out
    }

    fn elem_at(&self, path: &str) -> Option<Elem<'d>> {
        self.doc
            .path_idx
            .get(path)
            .map(|&i| self.doc.el(self.doc.paths[i].1))
    }

    fn contact_ctx(&self, e: usize) -> Context<'d> {
        Context::Elem {
            attrs: self.doc.el(e).attrs,
            con_id: None,
        }
    }

    /// `_build_app_level_context`, holding only the keys a lookup can name ([`KeyFilter`]) unless `full`.
    fn app_context(&self, full: bool) -> Context<'d> {
        let p = self.ctx.plan;
        let doc: &'d Doc<'d> = self.doc;
        let none = KeyFilter(None);
        let f = if full { &none } else { &p.app_keys };
        let mut c = Context::Map(MapContext::default());
        let mut buf = String::new();
        if !self.contacts.is_empty() {
            let primary = self
                .contacts
                .iter()
                .find(|x| {
                    self.doc.el(x.elem).get(&p.contact_type_attr)
                        == p.contact_types.first().map(String::as_str)
                })
                .unwrap_or(&self.contacts[0]);
            for (k, v) in doc.el(primary.elem).attrs {
                let key = built(&mut buf, &["contact.", k]);
                if f.wants(key) {
                    c.set_built(key, v.as_ref());
                }
            }
            for (k, v) in doc.el(primary.elem).attrs {
                if f.wants(k) {
                    c.set(*k, v.as_ref());
                }
            }
        }
        c.set("app_id", self.app_id.to_string());
        for (path, ei) in &doc.paths {
            let seg = path.rsplit('/').next().unwrap_or("");
            let attrs = doc.el(*ei).attrs;
            if seg == p.app_elem {
                for (k, v) in attrs {
                    let key = built_lower(&mut buf, &["application."], k);
                    if f.wants(key) {
                        c.set_built(key, xd(v));
                    }
                    if seg != "application" {
                        let key = built(&mut buf, &[seg, ".", k]);
                        if f.wants(key) {
                            c.set_built(key, xd(v));
                        }
                    }
                }
            } else {
                for (k, v) in attrs {
                    let key = built_lower(&mut buf, &[seg, "."], k);
                    if f.wants(key) {
                        c.set_built(key, xd(v));
                    }
                }
            }
            for (k, v) in attrs {
                if f.wants(k) {
                    c.set(*k, xd(v));
                }
            }
        }
        c
    }

    /// `_extract_from_last_valid_pr_contact` / `_sec_` (index 0 or 1 of the contact types).
    fn typed_contact_value(&self, m: &RMap, table: &str, idx: usize) -> Py {
        let p = self.ctx.plan;
        if p.contact_types.get(idx).is_none() {
            return Py::None;
        }
        let cands: &[usize] = &self.typed_cands[idx];
        let valid = |e: usize| {
            let el = self.doc.el(e);
            !el.get("con_id").unwrap_or("").trim().is_empty()
                && !el.get(&p.contact_type_attr).unwrap_or("").trim().is_empty()
        };
        let Some(&last) = cands.iter().rev().find(|&&e| valid(e)) else {
            return Py::None;
        };
        let el = self.doc.el(last);
        if table == "app_contact_address" || m.path.contains(&p.address_elem) {
            let addrs = self.descendants_named(last, &p.address_elem);
            let pref: Vec<usize> = addrs
                .iter()
                .copied()
                .filter(|&a| {
                    self.doc.el(a).get(&p.address_type_attr) == Some(p.address_preferred.as_str())
                })
                .collect();
            let target = if pref.is_empty() { addrs } else { pref };
            if let Some(&lasta) = target.last() {
                let sel = target
                    .iter()
                    .copied()
                    .find(|&a| !self.doc.el(a).get(&m.attr).unwrap_or("").is_empty())
                    .unwrap_or(lasta);
                let v = py_opt(self.doc.el(sel).get(&m.attr));
                if let (Py::Str(s), "decimal", Some(d)) = (&v, m.dtype.as_str(), m.dlen) {
                    return quantize(s, d).map_or(v.clone(), Py::Float);
                }
                return v;
            }
        } else if idx == 0 && m.path.contains("app_prod_bcard") {
            let b = self.descendants_named(last, "app_prod_bcard");
            return match b.last() {
                Some(&x) => py_opt(self.doc.el(x).get(&m.attr)),
                None => Py::None,
            };
        }
        let mut v = py_opt(el.get(&m.attr));
        if idx == 0 && table == "app_historical_lookup" {
            let empty = |v: &Py| match v {
                Py::None => true,
                other => {
                    let s = other.text();
                    let t = s.trim();
                    t.is_empty() || matches!(t.to_lowercase().as_str(), "null" | "none")
                }
            };
            if empty(&v) {
                for &e in cands.iter().rev() {
                    if !valid(e) {
                        continue;
                    }
                    let c = py_opt(self.doc.el(e).get(&m.attr));
                    if !empty(&c) {
                        v = c;
                        break;
                    }
                }
            }
        }
        if let (Some(n), Py::Str(s), "string") = (m.dlen, &v, m.dtype.as_str()) {
            if n != 0 {
                v = Py::Str(py_slice(s, n));
            }
        }
        v
    }

    fn descendants_named(&self, e: usize, name: &str) -> Vec<usize> {
        // A pre-order walk of the subtree is its elements in document order.
        self.doc
            .descendants(e)
            .filter(|&x| self.doc.elems[x].name == name)
            .collect()
    }

    fn authu(&self, m: &RMap) -> Py {
        let p = self.ctx.plan;
        let Some(want) = p.contact_types.get(1) else {
            return Py::None;
        };
        let all = self.doc.named("contact");
        let Some(&last) = all
            .iter()
            .rev()
            .find(|&&e| self.doc.el(e).get(&p.contact_type_attr) == Some(want.as_str()))
        else {
            return Py::None;
        };
        if m.path.contains("app_prod_bcard") {
            let b = self.descendants_named(last, "app_prod_bcard");
            return match b.last() {
                Some(&x) => py_opt(self.doc.el(x).get(&m.attr)),
                None => Py::None,
            };
        }
        py_opt(self.doc.el(last).get(&m.attr))
    }

    fn curr_address(&self, m: &RMap, con_id: &str) -> Py {
        let p = self.ctx.plan;
        // //contact[@con_id=X] (the literal element name 'contact', as the replaced code has it), the last one.
        let Some(&c) = self.last_contact_by_con.get(con_id) else {
            return Py::None;
        };
        // The last such child: a forward walk keeping the last match.
        let last = self
            .doc
            .children(c)
            .filter(|&a| {
                let el = self.doc.el(a);
                el.name == "contact_address"
                    && el.get(&p.address_type_attr) == Some(p.address_preferred.as_str())
            })
            .last();
        match last {
            Some(a) => py_opt(self.doc.el(a).get(&m.attr)),
            None => Py::None,
        }
    }

    /// `_extract_value_from_xml`. `scope` is the row's element context (contact or child element) if any.
    fn extract(&self, m: &RMap, table: &str, ctx: Option<&Context>, scope: Option<Scope>) -> Py {
        let has = |t: &str| m.types.iter().any(|x| x == t);
        if has("last_valid_pr_contact") {
            return self.typed_contact_value(m, table, 0);
        }
        if has("last_valid_sec_contact") {
            return self.typed_contact_value(m, table, 1);
        }
        if has("authu_contact") {
            return self.authu(m);
        }
        if has("calculated_field") {
            return Py::Str(SENTINEL.into());
        }
        if let Some(c) = ctx {
            if table == "app_contact_base" && m.path == "/Provenir/Request/CustData/application" {
                return self
                    .elem_at(&m.path)
                    .map_or(Py::None, |e| py_opt(e.get(&m.attr).map(xd).as_deref()));
            }
            let child_table = matches!(table, "app_contact_address" | "app_contact_employment");
            if m.path.contains("contact") || child_table {
                if child_table {
                    return py_opt(c.attr_ci(&m.attr));
                }
                let parts: Vec<&str> = m.path.trim_matches('/').split('/').collect();
                let ci = parts.iter().position(|x| x.contains("contact"));
                if let Some(ci) = ci {
                    if ci < parts.len() - 1 {
                        // Navigation into a child list of the contact dictionary: the replaced code returns the
                        // list itself (not a scalar), which only curr_address_only later replaces.
                        return match scope {
                            Some(Scope::Contact(_))
                                if parts[ci + 1..].len() == 1
                                    && (parts[ci + 1] == self.ctx.plan.address_elem
                                        || parts[ci + 1] == self.ctx.plan.employment_elem) =>
                            {
                                Py::Str(LIST_SENTINEL.into())
                            }
                            _ => Py::None,
                        };
                    }
                }
                return py_opt(c.attr_ci(&m.attr));
            }
        }
        match self.elem_at(&m.path) {
            Some(e) if !m.attr.is_empty() => py_opt(e.get_ci(&m.attr).map(xd).as_deref()),
            _ => Py::None,
        }
    }

    /// `_apply_field_transformation`.
    fn transform_field(
        &self,
        value: Py,
        m: &RMap,
        table: &str,
        ctx: Option<&Context>,
        scope: Option<Scope>,
    ) -> Result<Py, Failure> {
        let c = &self.ctx;
        // Only an `enum` after a `calculated_field` reads `original`: skip the copy otherwise.
        let original = if !m.types.iter().any(|t| t == "enum") {
            Py::None
        } else if value.is_sentinel() && ctx.is_some() && !m.attr.is_empty() {
            ctx.and_then(|x| x.attr_ci(&m.attr))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map_or(Py::None, |s| Py::Str(s.to_owned()))
        } else {
            value.clone()
        };
        let mut cur = value;
        if !m.types.is_empty() {
            let mut i = 0;
            while i < m.types.len() {
                let t = m.types[i].as_str();
                let after_calc = i > 0 && m.types[i - 1] == "calculated_field";
                if t == "enum" && after_calc && cur.is_none() {
                    cur = original.clone();
                } else if t == "enum"
                    && after_calc
                    && !(matches!(&cur, Py::Str(s) if s.trim().is_empty()))
                {
                    i += 1;
                    continue;
                }
                cur = self.single(cur, t, m, table, ctx, scope)?;
                if cur.is_none() && t != "enum" {
                    let next_enum = m.types.get(i + 1).is_some_and(|x| x == "enum");
                    if !next_enum {
                        break;
                    }
                }
                i += 1;
            }
            if let Py::Str(s) = &cur {
                if m.dtype != "string" && !s.trim().is_empty() {
                    cur = match (m.dtype.as_str(), m.dlen) {
                        ("decimal", Some(d)) => c.decimal_places(&cur, d),
                        _ => c.transform(&cur, &m.dtype),
                    };
                }
            }
        } else if !cur.meaningful() {
            cur = match &m.default {
                Some(d) if !d.is_empty() => c.transform(&Py::Str(d.clone()), &m.dtype),
                _ => Py::None,
            };
        } else {
            if matches!(m.dtype.as_str(), "int" | "smallint" | "bigint" | "tinyint") {
                if let Py::Str(s) = &cur {
                    let t = s.trim();
                    if !t.chars().all(|ch| ch.is_ascii_digit()) || t.is_empty() {
                        if let Some(f) = numeric_preserving(t) {
                            cur = Py::Float(f);
                        }
                    }
                }
            }
            cur = match (m.dtype.as_str(), m.dlen) {
                ("decimal", Some(d)) => c.decimal_places(&cur, d),
                _ => c.transform(&cur, &m.dtype),
            };
        }
        if let Py::Str(s) = &mut cur {
            // In place: the value is this row's own string.
            if m.types.iter().any(|t| t == "numbers_only") {
                s.retain(|ch| ch.is_ascii_digit());
            }
            trim_in_place(s);
            if let Some(n) = m.dlen {
                // Departure: data_length -1 means unlimited (the replaced code slices [: -1], dropping the last
                // character).
                if n >= 0 && s.chars().count() > n as usize {
                    *s = s.chars().take(n as usize).collect();
                    c.coerce();
                }
            }
            trim_in_place(s);
        }
        Ok(cur)
    }

    /// `_apply_single_mapping_type`.
    fn single(
        &self,
        v: Py,
        t: &str,
        m: &RMap,
        table: &str,
        ctx: Option<&Context>,
        scope: Option<Scope>,
    ) -> Result<Py, Failure> {
        let c = &self.ctx;
        Ok(match t {
            "last_valid_pr_contact" => self.typed_contact_value(m, table, 0),
            "last_valid_sec_contact" => self.typed_contact_value(m, table, 1),
            "authu_contact" => self.authu(m),
            "curr_address_only" => match (ctx, scope) {
                (Some(_), Some(Scope::Contact(con))) => self.curr_address(m, con),
                (Some(x), _) => match x.get("con_id") {
                    Some(con) => self.curr_address(m, con),
                    None => Py::None,
                },
                (None, _) => v,
            },
            "calculated_field" if v.is_sentinel() => self.calculated(m, ctx),
            "enum" => c.enum_lookup(&v, m)?,
            "char_to_bit" => c.char_bit(&v),
            "boolean_to_bit" => c.bool_bit(&v),
            _ if !v.meaningful() => match &m.default {
                Some(d) if !d.is_empty() => c.transform(&Py::Str(d.clone()), &m.dtype),
                _ => Py::None,
            },
            "calculated_field" => self.calculated(m, ctx),
            "extract_numeric" | "numbers_only" => {
                let d: String = v.text().chars().filter(char::is_ascii_digit).collect();
                if d.is_empty() {
                    Py::None
                } else {
                    c.transform(
                        &Py::Str(d.trim_start_matches('0').to_owned()).or_zero(&d),
                        &m.dtype,
                    )
                }
            }
            _ => c.transform(&v, &m.dtype),
        })
    }

    /// `_apply_calculated_field_mapping`.
    fn calculated(&self, m: &RMap, ctx: Option<&Context>) -> Py {
        let Some(e) = &m.expr else { return Py::None };
        let empty = Context::empty();
        let r = ev_to_py(eval_expression(e, m.case.as_ref(), ctx.unwrap_or(&empty)));
        match r {
            Py::None => Py::None,
            Py::Str(s) if s.is_empty() && m.dtype == "string" => Py::Str(s),
            other => self.ctx.transform(&other, &m.dtype),
        }
    }

    /// `_create_record_from_mappings` for one table; `None` when the record is skipped.
    fn record(
        &self,
        t: &'m RTable,
        ctx: Option<&Context>,
        scope: Option<Scope>,
    ) -> Result<Record<'m>, Failure> {
        let mut rec: Record<'m> = Vec::with_capacity(t.maps.len() + 2);
        let mut applied: Vec<&'m str> = Vec::new();
        let mut conditional: Vec<&'m str> = Vec::new();
        for m in &t.maps {
            if m.col.is_none() {
                continue;
            }
            let v = self.extract(m, &t.name, ctx, scope);
            let v_meaningful = v.meaningful();
            // The replaced mapper catches any error of one mapping and leaves the column out (fallback None).
            let Ok(tv) = self.transform_field(v, m, &t.name, ctx, scope) else {
                self.ctx.coerce();
                continue;
            };
            if !tv.is_none() {
                // _is_transformation_default: a missing source whose result equals the transformed default.
                let is_default = !v_meaningful
                    && m.default.as_ref().is_some_and(|d| {
                        !d.is_empty() && self.ctx.transform(&Py::Str(d.clone()), &m.dtype) == tv
                    });
                rec_set(&mut rec, &m.column, tv);
                if is_default {
                    applied.push(&m.column);
                }
            } else if !m.nullable {
                // With no default the replaced mapper raises and catches: the column is left out.
                if let Some(d) = &m.default {
                    rec_set(&mut rec, &m.column, Py::Str(d.clone()));
                    if m.exclude_when_empty {
                        conditional.push(&m.column);
                    } else {
                        applied.push(&m.column);
                    }
                }
            }
        }
        let keys = ["app_id", "con_id"];
        let meaningful = |extra: &[&str]| {
            rec.iter()
                .filter(|(k, _)| !keys.contains(k) && !applied.contains(k) && !extra.contains(k))
                .count()
        };
        let skip = t.name != "app_base" && t.name != "app_contact_base" && meaningful(&[]) == 0;
        if skip {
            return Ok(Vec::new());
        }
        if !conditional.is_empty() && meaningful(&conditional) < 2 {
            rec.retain(|(k, _)| !conditional.contains(k));
        }
        Ok(rec)
    }

    // tidy:long-fn one arm per table kind, as the replaced _process_table_mappings; a split is pending
    fn run(&self, contract: &Contract, budget: &Budget, full: bool) -> Result<MappedApp, Failure> {
        let p = self.ctx.plan;
        let app_ctx = self.app_context(full);
        let mut out: Vec<Vec<Vec<Value>>> = Vec::with_capacity(p.tables.len());
        let app = Py::Int(self.app_id);
        let mut since = 0usize;
        for (ti, t) in p.tables.iter().enumerate() {
            let mut recs: Vec<Record<'m>> = Vec::new();
            let has_calc = t
                .maps
                .iter()
                .any(|m| m.types.iter().any(|x| x == "calculated_field"));
            match t.kind {
                Kind::App => {
                    let mut r = self.record(t, has_calc.then_some(&app_ctx), None)?;
                    if !r.is_empty() {
                        rec_set(&mut r, "app_id", app.clone());
                        recs.push(r);
                    }
                }
                Kind::Contact => {
                    for c in &self.contacts {
                        since += 1;
                        if since.is_multiple_of(2048) {
                            budget.check().map_err(Failure::interrupted)?;
                        }
                        let cx = self.contact_ctx(c.elem);
                        let mut r = self.record(t, Some(&cx), Some(Scope::Contact(&c.con_id)))?;
                        rec_set(&mut r, "con_id", int_or_str(&c.con_id));
                        rec_set(&mut r, "app_id", app.clone());
                        recs.push(r);
                    }
                }
                Kind::Address | Kind::Employment => {
                    let (elem, attr, types) = if t.kind == Kind::Address {
                        (&p.address_elem, &p.address_type_attr, &p.address_types)
                    } else {
                        (
                            &p.employment_elem,
                            &p.employment_type_attr,
                            &p.employment_types,
                        )
                    };
                    // ElementFilter.filter_valid_elements: children of valid (filtered) contacts with an allowed
                    // type; the parent's con_id must be among the valid contacts' con_ids.
                    for &ce in &self.all_contacts_filtered() {
                        let con = self.doc.el(ce).get("con_id").unwrap_or("");
                        if !self.valid_con_ids.contains(con) {
                            continue;
                        }
                        for ch in self.doc.children(ce) {
                            let el = self.doc.el(ch);
                            if el.name != elem.as_str()
                                || !types.iter().any(|x| Some(x.as_str()) == el.get(attr))
                            {
                                continue;
                            }
                            since += 1;
                            if since.is_multiple_of(2048) {
                                budget.check().map_err(Failure::interrupted)?;
                            }
                            let cx = Context::Elem {
                                attrs: el.attrs,
                                con_id: Some(con),
                            };
                            let mut r = self.record(t, Some(&cx), Some(Scope::Child))?;
                            if r.is_empty() || !self.meaningful_child(t.kind, &r, &el) {
                                continue;
                            }
                            rec_set(&mut r, "con_id", int_or_str(con));
                            recs.push(r);
                        }
                    }
                }
                Kind::Scores => {
                    for m in &t.maps {
                        let Some(id) = fn_arg(m, "add_score") else {
                            continue;
                        };
                        if id.is_empty() {
                            continue;
                        }
                        let raw = self.extract(m, &t.name, None, None);
                        if raw.is_none() {
                            continue;
                        }
                        let v = self.ctx.transform(&raw, &m.dtype);
                        if v.is_none() {
                            continue;
                        }
                        recs.push(vec![
                            ("app_id", app.clone()),
                            ("score_identifier", Py::Str(id)),
                            ("score", v),
                        ]);
                    }
                }
                Kind::Indicators => {
                    for m in &t.maps {
                        let Some(name) = fn_arg(m, "add_indicator") else {
                            continue;
                        };
                        if name.is_empty() {
                            continue;
                        }
                        let raw = self.extract(m, &t.name, None, None);
                        if raw.is_none()
                            || !matches!(
                                raw.text().trim().to_lowercase().as_str(),
                                "y" | "yes" | "true" | "t" | "1"
                            )
                        {
                            continue;
                        }
                        recs.push(vec![
                            ("app_id", app.clone()),
                            ("indicator", Py::Str(name)),
                            ("value", Py::Str("1".into())),
                        ]);
                    }
                }
                Kind::History => {
                    for m in &t.maps {
                        if !m.types.iter().any(|x| x == "add_history") {
                            continue;
                        }
                        let raw = self.extract(m, &t.name, None, None);
                        if !kv_meaningful(&raw) || m.attr.is_empty() {
                            continue;
                        }
                        let src = m
                            .path
                            .trim_end_matches('/')
                            .rsplit('/')
                            .next()
                            .unwrap_or("");
                        recs.push(vec![
                            ("app_id", app.clone()),
                            ("name", Py::Str(format!("[{}]", m.attr))),
                            (
                                "source",
                                if src.is_empty() {
                                    Py::None
                                } else {
                                    Py::Str(format!("[{src}]"))
                                },
                            ),
                            ("value", Py::Str(raw.text().trim().to_owned())),
                        ]);
                    }
                }
                Kind::ReportLookup => {
                    for m in &t.maps {
                        let Some(key) = fn_arg(m, "add_report_lookup") else {
                            continue;
                        };
                        let raw = self.extract(m, &t.name, None, None);
                        if !kv_meaningful(&raw) || m.attr.is_empty() {
                            continue;
                        }
                        recs.push(vec![
                            ("app_id", app.clone()),
                            ("name", Py::Str(m.attr.clone())),
                            ("value", Py::Str(raw.text().trim().to_owned())),
                            ("source_report_key", Py::Str(key)),
                        ]);
                    }
                }
                Kind::PolicyExceptions => {
                    let mut notes = Py::None;
                    for m in &t.maps {
                        if let Some(a) = fn_arg(m, "policy_exceptions") {
                            if a.is_empty() {
                                let raw = self.extract(m, &t.name, None, None);
                                if kv_meaningful(&raw) {
                                    notes = Py::Str(raw.text().trim().to_owned());
                                }
                                break;
                            }
                        }
                    }
                    for m in &t.maps {
                        let Some(a) = fn_arg(m, "policy_exceptions") else {
                            continue;
                        };
                        if a.is_empty() {
                            continue;
                        }
                        let raw = self.extract(m, &t.name, None, None);
                        if !kv_meaningful(&raw) {
                            continue;
                        }
                        let Ok(n) = a.parse::<i64>() else { continue };
                        recs.push(vec![
                            ("app_id", app.clone()),
                            ("policy_exception_type_enum", Py::Int(n)),
                            ("reason_code", Py::Str(raw.text().trim().to_owned())),
                            ("notes", notes.clone()),
                        ]);
                    }
                }
                Kind::Warranties => {
                    for (param, group) in groups(t, "warranty_field") {
                        let Ok(n) = param.parse::<i64>() else {
                            continue;
                        };
                        let mut r: Record<'m> = Vec::new();
                        let mut meaningful = false;
                        for m in group {
                            let raw = self.extract(m, &t.name, None, None);
                            if m.types.iter().any(|x| x == "char_to_bit") {
                                rec_set(&mut r, &m.column, self.ctx.char_bit(&raw));
                            } else if kv_meaningful(&raw) {
                                rec_set(&mut r, &m.column, Py::Str(raw.text().trim().to_owned()));
                                meaningful = true;
                            }
                        }
                        if !meaningful {
                            continue;
                        }
                        rec_set(&mut r, "app_id", app.clone());
                        rec_set(&mut r, "warranty_type_enum", Py::Int(n));
                        if !rec_has(&r, "merrick_lienholder_flag") {
                            rec_set(&mut r, "merrick_lienholder_flag", Py::Int(0));
                        }
                        recs.push(r);
                    }
                }
                Kind::Collateral => {
                    for (param, group) in groups(t, "add_collateral") {
                        let mut r: Record<'m> = Vec::new();
                        let mut meaningful = false;
                        for m in &group {
                            let has = |x: &str| m.types.iter().any(|y| y == x);
                            if has("calculated_field") {
                                let v = self.calculated(m, Some(&app_ctx));
                                if !v.is_none() {
                                    rec_set(&mut r, &m.column, v);
                                }
                            } else if has("char_to_bit") {
                                let raw = self.extract(m, &t.name, None, None);
                                rec_set(&mut r, &m.column, self.ctx.char_bit(&raw));
                            } else if has("numbers_only") || has("extract_numeric") {
                                let raw = self.extract(m, &t.name, None, None);
                                if kv_meaningful(&raw) {
                                    let d: String =
                                        raw.text().chars().filter(char::is_ascii_digit).collect();
                                    if !d.is_empty() {
                                        let n = Py::Str(d.trim_start_matches('0').to_owned())
                                            .or_zero(&d);
                                        rec_set(
                                            &mut r,
                                            &m.column,
                                            self.ctx.transform(&n, &m.dtype),
                                        );
                                        meaningful = true;
                                    }
                                }
                            } else {
                                let raw = self.extract(m, &t.name, None, None);
                                if kv_meaningful(&raw) {
                                    let clean = raw.text().trim().to_owned();
                                    let numeric = matches!(
                                        m.dtype.as_str(),
                                        "smallint"
                                            | "int"
                                            | "bigint"
                                            | "tinyint"
                                            | "decimal"
                                            | "float"
                                    );
                                    let v = if numeric {
                                        let tv =
                                            self.ctx.transform(&Py::Str(clean.clone()), &m.dtype);
                                        if tv.is_none() {
                                            Py::Str(clean.clone())
                                        } else {
                                            tv
                                        }
                                    } else {
                                        Py::Str(clean.clone())
                                    };
                                    rec_set(&mut r, &m.column, v);
                                    if m.column == "wholesale_value" {
                                        if py_float_parse(&clean).is_some_and(|f| f > 0.0) {
                                            meaningful = true;
                                        }
                                    } else {
                                        meaningful = true;
                                    }
                                }
                            }
                        }
                        if !meaningful {
                            continue;
                        }
                        rec_set(&mut r, "app_id", app.clone());
                        rec_set(&mut r, "sort_order", Py::Int(param.parse().unwrap_or(0)));
                        for m in &group {
                            if rec_has(&r, &m.column) {
                                continue;
                            }
                            let Some(d) = m.default.as_ref().filter(|d| !d.is_empty()) else {
                                continue;
                            };
                            let v = match m.dtype.as_str() {
                                "smallint" | "int" | "bigint" | "tinyint" => {
                                    d.trim().parse::<i64>().map_or(Py::Str(d.clone()), Py::Int)
                                }
                                "decimal" | "float" => {
                                    py_float_parse(d).map_or(Py::Str(d.clone()), Py::Float)
                                }
                                "bit" => Py::Int(i64::from(matches!(
                                    d.trim(),
                                    "1" | "Y" | "true" | "True"
                                ))),
                                _ => Py::Str(d.clone()),
                            };
                            rec_set(&mut r, &m.column, v);
                        }
                        recs.push(r);
                    }
                }
            }
            out.push(self.lower(contract, ti, t, recs)?);
        }
        crate::contract::check_keys(contract, &out)?;
        Ok(MappedApp {
            app_id: self.app_id,
            rows: out,
            coerced: self.ctx.coerced.get(),
        })
    }

    /// Contacts as ElementFilter keeps them (con_id present, an allowed type).
    fn all_contacts_filtered(&self) -> Vec<usize> {
        let p = self.ctx.plan;
        let path_ok = |e: usize| {
            // ElementFilter looks for contacts directly under the application element.
            self.doc
                .el(e)
                .parent
                .is_some_and(|x| self.doc.el(x).name == p.app_elem)
        };
        self.doc
            .named(&p.contact_elem)
            .iter()
            .copied()
            .filter(|&e| {
                let el = self.doc.el(e);
                path_ok(e)
                    && !el.get("con_id").unwrap_or("").is_empty()
                    && p.contact_types
                        .iter()
                        .any(|t| Some(t.as_str()) == el.get(&p.contact_type_attr))
            })
            .collect()
    }

    fn meaningful_child(&self, kind: Kind, r: &Record<'_>, el: &Elem<'_>) -> bool {
        let rs = |k: &str| r.iter().find(|(c, _)| *c == k).map(|(_, v)| v.clone());
        let rtext = |k: &str| {
            rs(k).map_or(String::new(), |v| {
                if v.is_none() {
                    String::new()
                } else {
                    v.text().trim().to_owned()
                }
            })
        };
        let a = |k: &str| el.get(k).unwrap_or("").trim().to_owned();
        if kind == Kind::Address {
            [
                rtext("zip"),
                rtext("city"),
                rtext("street_name"),
                rtext("street_number"),
                rtext("state"),
                a("zip_code"),
                a("city"),
                a("street_name"),
            ]
            .iter()
            .any(|s| !s.is_empty())
        } else {
            let salary = rs("monthly_salary").is_some_and(|v| match v {
                Py::None => false,
                Py::Int(i) => i != 0,
                Py::Float(f) => f != 0.0,
                other => !other.text().trim().is_empty(),
            });
            salary
                || [
                    rtext("business_name"),
                    rtext("job_title"),
                    rtext("zip"),
                    rtext("city"),
                    a("business_name"),
                    a("zip_code"),
                    a("city"),
                ]
                .iter()
                .any(|s| !s.is_empty())
        }
    }

    /// Records → rows in the table's column order, each value as the replaced system's SQL Server insert would
    /// store it (golden README's canonical text), converted to the column type.
    fn lower(
        &self,
        contract: &Contract,
        ti: usize,
        t: &RTable,
        recs: Vec<Record<'_>>,
    ) -> Result<Vec<Vec<Value>>, Failure> {
        let table = &contract.tables[ti];
        let mut rows = Vec::with_capacity(recs.len());
        for r in recs {
            let mut row = vec![Value::Null; table.columns.len()];
            for (k, v) in r {
                let Some(ci) = t.col_of(k) else {
                    continue;
                };
                let ty = table.columns[ci].ty;
                // A string that fits a text column is stored as it is: moved, not copied (`to_value`'s answer).
                if let (ColType::Text { max_chars }, Py::Str(s)) = (ty, &v) {
                    if !s.is_empty() && max_chars.is_none_or(|m| s.len() <= m as usize) {
                        let Py::Str(s) = v else { unreachable!() };
                        row[ci] = Value::Text(s);
                        continue;
                    }
                }
                row[ci] = self
                    .to_value(&v, ty)
                    .map_err(|why| map_fail(format!("{}.{}: {why}", t.name, k)))?;
            }
            rows.push(row);
        }
        Ok(rows)
    }

    fn to_value(&self, v: &Py, ty: ColType) -> Result<Value, String> {
        let text = match v {
            Py::None => return Ok(Value::Null),
            Py::Str(s) if s.is_empty() => return Ok(Value::Null),
            _ => v.text(),
        };
        let bad = |what: &str| format!("'{}' is not a valid {what}", clip(&text));
        match ty {
            ColType::SmallInt | ColType::Int | ColType::BigInt => {
                let n = match v {
                    Py::Int(i) => *i,
                    Py::Float(f) => f.trunc() as i64,
                    Py::Str(s)
                        if s.trim()
                            .trim_start_matches(['+', '-'])
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                            && !s.trim().trim_start_matches(['+', '-']).is_empty() =>
                    {
                        s.trim().parse().map_err(|_| bad("integer"))?
                    }
                    _ => return Err(bad("integer")),
                };
                convert(&n.to_string(), ty)
                    .map_err(|_| format!("{n} is out of range for {}", ty.name()))
            }
            ColType::Bit => match v {
                Py::Int(i) => Ok(Value::Bit(*i != 0)),
                Py::Float(f) => Ok(Value::Bit(*f != 0.0)),
                Py::Str(s) => {
                    let u = s.trim().to_uppercase();
                    if u == "TRUE" || u == "FALSE" {
                        return Ok(Value::Bit(u == "TRUE"));
                    }
                    py_float_parse(&u)
                        .map(|f| Value::Bit(f != 0.0))
                        .ok_or_else(|| bad("bit"))
                }
                _ => Err(bad("bit")),
            },
            ColType::Decimal { .. } => convert(text.trim(), ty).map_err(|_| bad(&ty.name())),
            ColType::Date | ColType::DateTime => {
                let d = match v {
                    Py::Dt(d) => *d,
                    _ => iso_dt(&text).ok_or_else(|| bad(&ty.name()))?,
                };
                Ok(if ty == ColType::Date {
                    Value::Date(d.format("%Y-%m-%d").to_string())
                } else {
                    Value::DateTime(dt_canonical(d))
                })
            }
            ColType::Text { max_chars } => {
                let s = match v {
                    Py::Dt(d) => d.format("%b %d %Y %I:%M%p").to_string(),
                    _ => text,
                };
                if let Some(m) = max_chars {
                    if s.chars().count() > m as usize {
                        return Err(format!("value too long ({} > {m})", s.chars().count()));
                    }
                }
                Ok(Value::Text(s))
            }
        }
    }
}

/// `*s = s.trim().to_owned()`, without a new allocation.
fn trim_in_place(s: &mut String) {
    let end = s.trim_end().len();
    s.truncate(end);
    let start = s.len() - s.trim_start().len();
    if start > 0 {
        s.drain(..start);
    }
}

fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Shredproof's canonical datetime: whole seconds (ARCHITECTURE.md); the replaced system's milliseconds are the
/// golden test's departure D1.
/// The fraction is rounded to SQL Server's 1/300 s first, as the replaced system stores it, so `…:45.999` is `…:46`.
fn dt_canonical(d: chrono::NaiveDateTime) -> String {
    use chrono::Timelike;
    let micros = u64::from(d.nanosecond() / 1000);
    let ticks = (micros * 300 + 500_000) / 1_000_000;
    let base = d.with_nanosecond(0).unwrap_or(d);
    let base = if ticks >= 300 {
        base + chrono::Duration::seconds(1)
    } else {
        base
    };
    base.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn iso_dt(s: &str) -> Option<chrono::NaiveDateTime> {
    let s = s.trim();
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(d);
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()?
        .and_hms_opt(0, 0, 0)
}

fn py_slice(s: &str, n: i64) -> String {
    let len = s.chars().count() as i64;
    let end = if n < 0 { (len + n).max(0) } else { n.min(len) };
    s.chars().take(end as usize).collect()
}

fn numeric_preserving(t: &str) -> Option<f64> {
    let b = t.as_bytes();
    let st = b.iter().position(u8::is_ascii_digit)?;
    let mut i = st;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut end = i;
    if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
        end = i + 1;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
    }
    t[st..end].parse().ok()
}

fn kv_meaningful(v: &Py) -> bool {
    v.meaningful() && !matches!(v.text().trim().to_lowercase().as_str(), "null" | "none")
}

fn int_or_str(s: &str) -> Py {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().map_or(Py::Str(s.to_owned()), Py::Int)
    } else {
        Py::Str(s.to_owned())
    }
}

fn fn_arg(m: &RMap, name: &str) -> Option<String> {
    m.types
        .iter()
        .find(|t| t.starts_with(name))
        .and_then(|t| fn_type(t))
        .filter(|(n, _)| *n == name)
        .map(|(_, a)| a.to_owned())
}

fn groups<'t>(t: &'t RTable, name: &str) -> Vec<(String, Vec<&'t RMap>)> {
    let mut out: Vec<(String, Vec<&RMap>)> = Vec::new();
    for m in &t.maps {
        let Some(a) = fn_arg(m, name) else { continue };
        if a.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(p, _)| *p == a) {
            Some((_, g)) => g.push(m),
            None => out.push((a, vec![m])),
        }
    }
    out
}

const SENTINEL: &str = "__CALCULATED_FIELD_SENTINEL__";
const LIST_SENTINEL: &str = "__CHILD_LIST__";

#[derive(Clone, Copy)]
enum Scope<'s> {
    Contact(&'s str),
    Child,
}

trait OrZero {
    fn or_zero(self, digits: &str) -> Py;
}

impl OrZero for Py {
    /// Python's `int(digits)` drops leading zeros but keeps a single 0.
    fn or_zero(self, digits: &str) -> Py {
        match &self {
            Py::Str(s) if s.is_empty() && !digits.is_empty() => Py::Str("0".into()),
            _ => self,
        }
    }
}
