//! The checker's independent reference mapping: contract JSON × document → expected rows, per
//! `fixtures/contract/README.md` (normative). Built on a roxmltree DOM on purpose, a different technique from the
//! processor's quick-xml pull reader, so that a bug in one is caught by the other.
//! Must not call processor code, touch a database, or share parsing/mapping code with the processor.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value as Json;

use super::CheckError;

/// The mapping contract as the checker understands it, parsed and minimally validated.
#[derive(Debug, Clone)]
pub struct RefContract {
    pub root: String,
    app_path: Vec<String>,
    pub source_table: String,
    pub source_column: String,
    pub target_schema: String,
    /// Target tables in insertion order (parents before children).
    pub tables: Vec<RefTable>,
    /// The application-level table whose key is the application key (`app_base`).
    pub app_table: String,
    /// The application key column (`app_id`).
    pub app_key: String,
    filters: Vec<FilterRule>,
    enums: BTreeMap<String, BTreeMap<String, i64>>,
    bits: BTreeMap<String, BTreeMap<String, i64>>,
    /// A constraint of the fixture's the contract does not know (see [`super::Rejection`]); set by the checker.
    pub rejection: Option<super::Rejection>,
}

/// One target table of the contract.
#[derive(Debug, Clone)]
pub struct RefTable {
    pub name: String,
    /// Natural key columns (`table_keys`).
    pub key: Vec<String>,
    /// Every column: the foreign key column first (child tables), then mapped columns in contract order.
    pub columns: Vec<String>,
    /// The relationship that makes this a repeating table; `None` for application-level tables.
    pub parent: Option<ParentLink>,
    /// A repeating table whose natural key does not contain the application key: rows may be shared by apps.
    pub shared: bool,
    row_path: Vec<String>,
    mappings: Vec<ColMapping>,
}

/// How a child table hangs off its parent.
#[derive(Debug, Clone)]
pub struct ParentLink {
    pub table: String,
    /// Column of the child holding the parent's value of the column of the same name.
    pub fk_column: String,
    rel_path: Vec<String>,
}

#[derive(Debug, Clone)]
struct FilterRule {
    path: Vec<String>,
    attrs: Vec<(String, Option<Vec<String>>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transform {
    Identity,
    Enum,
    CharToBit,
    BoolToBit,
    NumbersOnly,
    ExtractNumeric,
    CurrAddressOnly,
    Calculated,
}

#[derive(Debug, Clone, PartialEq)]
enum DataType {
    Int { min: i128, max: i128 },
    Decimal { p: u32, s: u32 },
    Text { max_chars: Option<usize> },
    Date,
    DateTime,
    Bit,
}

#[derive(Debug, Clone)]
struct ColMapping {
    column: String,
    /// Absolute path for application-level tables; relative to the row element for repeating tables.
    path: Vec<String>,
    attr: Option<String>,
    dtype: DataType,
    type_name: String,
    transforms: Vec<Transform>,
    nullable: bool,
    required: bool,
    default: Option<String>,
    expr: Option<Expr>,
}

/// One expected row: natural key values and every column's canonical text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefRow {
    pub key: Vec<Option<String>>,
    pub values: BTreeMap<String, Option<String>>,
}

/// What the reference says a document must produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefOutcome {
    /// Rows per target table (every table present, possibly empty).
    Success(BTreeMap<String, Vec<RefRow>>),
    /// `stage` is `parse` or `map`; `message` has no stage prefix.
    Failed { stage: String, message: String },
}

fn contract_err(msg: String) -> CheckError {
    CheckError::Contract(msg)
}

fn split_path(p: &str) -> Vec<String> {
    p.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn get_str<'a>(v: &'a Json, field: &str, ctx: &str) -> Result<&'a str, CheckError> {
    v.get(field)
        .and_then(Json::as_str)
        .ok_or_else(|| contract_err(format!("{ctx}: missing or non-string field '{field}'")))
}

fn int_map(v: &Json, ctx: &str) -> Result<BTreeMap<String, BTreeMap<String, i64>>, CheckError> {
    let mut out = BTreeMap::new();
    let Some(obj) = v.as_object() else {
        if v.is_null() {
            return Ok(out);
        }
        return Err(contract_err(format!("{ctx}: expected an object")));
    };
    for (name, inner) in obj {
        let inner_obj = inner
            .as_object()
            .ok_or_else(|| contract_err(format!("{ctx}.{name}: expected an object")))?;
        let mut m = BTreeMap::new();
        for (k, val) in inner_obj {
            let n = val
                .as_i64()
                .ok_or_else(|| contract_err(format!("{ctx}.{name}.{k}: expected an integer")))?;
            m.insert(k.clone(), n);
        }
        out.insert(name.clone(), m);
    }
    Ok(out)
}

fn parse_dtype(raw: &str, length: Option<usize>, ctx: &str) -> Result<DataType, CheckError> {
    let t = raw.trim().to_ascii_lowercase();
    let dt = match t.as_str() {
        "int" => DataType::Int {
            min: i32::MIN.into(),
            max: i32::MAX.into(),
        },
        "smallint" => DataType::Int {
            min: i16::MIN.into(),
            max: i16::MAX.into(),
        },
        "bigint" => DataType::Int {
            min: i64::MIN.into(),
            max: i64::MAX.into(),
        },
        "varchar" | "nvarchar" | "char" | "text" => DataType::Text { max_chars: length },
        "date" => DataType::Date,
        "datetime" => DataType::DateTime,
        "bit" => DataType::Bit,
        _ => {
            let inner = t
                .strip_prefix("decimal(")
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| contract_err(format!("{ctx}: unknown data_type '{raw}'")))?;
            let mut parts = inner.split(',').map(str::trim);
            let p = parts.next().and_then(|x| x.parse::<u32>().ok());
            let s = parts.next().and_then(|x| x.parse::<u32>().ok());
            match (p, s, parts.next()) {
                (Some(p), Some(s), None) if p >= 1 && s <= p && p <= 38 => {
                    DataType::Decimal { p, s }
                }
                _ => return Err(contract_err(format!("{ctx}: bad decimal type '{raw}'"))),
            }
        }
    };
    Ok(dt)
}

fn parse_transform(name: &str, ctx: &str) -> Result<Option<Transform>, CheckError> {
    Ok(Some(match name {
        "" => return Ok(None),
        "identity_insert" => Transform::Identity,
        "enum" => Transform::Enum,
        "char_to_bit" => Transform::CharToBit,
        "boolean_to_bit" => Transform::BoolToBit,
        "numbers_only" => Transform::NumbersOnly,
        "extract_numeric" => Transform::ExtractNumeric,
        "curr_address_only" => Transform::CurrAddressOnly,
        "calculated_field" => Transform::Calculated,
        other => {
            return Err(contract_err(format!(
                "{ctx}: unknown mapping_type '{other}'"
            )))
        }
    }))
}

impl RefContract {
    // tidy:long-fn one pass over the contract JSON, each entry validated in the order fixtures/contract/README.md states the rules; not yet split by section
    /// Parses and validates the contract JSON; errors name the entry and the problem.
    pub fn parse(json: &str) -> Result<RefContract, CheckError> {
        let v: Json = serde_json::from_str(json)
            .map_err(|e| contract_err(format!("contract is not valid json: {e}")))?;
        let root = get_str(&v, "xml_root_element", "contract")?.to_owned();
        let app_path = split_path(get_str(&v, "xml_application_path", "contract")?);
        if app_path.first() != Some(&root) {
            return Err(contract_err(
                "xml_application_path does not start at xml_root_element".into(),
            ));
        }
        let source_table = get_str(&v, "source_table", "contract")?.to_owned();
        let source_column = get_str(&v, "source_column", "contract")?.to_owned();
        let target_schema = v
            .get("target_schema")
            .and_then(Json::as_str)
            .unwrap_or("dbo")
            .to_owned();
        let order: Vec<String> = v
            .get("table_insertion_order")
            .and_then(Json::as_array)
            .ok_or_else(|| contract_err("contract: missing table_insertion_order".into()))?
            .iter()
            .map(|t| t.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| contract_err("table_insertion_order: expected strings".into()))?;
        let keys_obj = v
            .get("table_keys")
            .and_then(Json::as_object)
            .ok_or_else(|| contract_err("contract: missing table_keys".into()))?;

        let mut filters = Vec::new();
        let rules = v
            .pointer("/element_filtering/filter_rules")
            .and_then(Json::as_array);
        for (i, r) in rules.into_iter().flatten().enumerate() {
            let ctx = format!("filter_rules[{i}]");
            let path = split_path(get_str(r, "xml_path", &ctx)?);
            let mut attrs = Vec::new();
            if let Some(obj) = r.get("required_attributes").and_then(Json::as_object) {
                for (a, cond) in obj {
                    match cond {
                        Json::Bool(true) => attrs.push((a.clone(), None)),
                        Json::Bool(false) => {}
                        Json::Array(list) => {
                            let vals = list
                                .iter()
                                .map(|x| x.as_str().map(str::to_owned))
                                .collect::<Option<Vec<_>>>()
                                .ok_or_else(|| {
                                    contract_err(format!("{ctx}.{a}: expected strings"))
                                })?;
                            attrs.push((a.clone(), Some(vals)));
                        }
                        _ => {
                            return Err(contract_err(format!("{ctx}.{a}: expected true or a list")))
                        }
                    }
                }
            }
            filters.push(FilterRule { path, attrs });
        }

        let enums = int_map(
            v.get("enum_mappings").unwrap_or(&Json::Null),
            "enum_mappings",
        )?;
        let bits = int_map(
            v.get("bit_conversions").unwrap_or(&Json::Null),
            "bit_conversions",
        )?;

        // Relationships: child table → (parent, fk, parent path, child path).
        let mut rels: BTreeMap<String, (String, String, Vec<String>, Vec<String>)> =
            BTreeMap::new();
        for (i, r) in v
            .get("relationships")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let ctx = format!("relationships[{i}]");
            let child = get_str(r, "child_table", &ctx)?.to_owned();
            let entry = (
                get_str(r, "parent_table", &ctx)?.to_owned(),
                get_str(r, "foreign_key_column", &ctx)?.to_owned(),
                split_path(get_str(r, "xml_parent_path", &ctx)?),
                split_path(get_str(r, "xml_child_path", &ctx)?),
            );
            if rels.insert(child.clone(), entry).is_some() {
                return Err(contract_err(format!(
                    "{ctx}: table {child} is the child of two relationships"
                )));
            }
        }

        let mut tables: Vec<RefTable> = Vec::new();
        for name in &order {
            let key: Vec<String> = keys_obj
                .get(name)
                .and_then(Json::as_array)
                .ok_or_else(|| contract_err(format!("table_keys: no key for table {name}")))?
                .iter()
                .map(|c| c.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| contract_err(format!("table_keys.{name}: expected strings")))?;
            if key.is_empty() {
                return Err(contract_err(format!("table_keys.{name}: empty key")));
            }
            let (parent, row_path, columns) = match rels.get(name) {
                None => (None, Vec::new(), Vec::new()),
                Some((ptable, fk, ppath, cpath)) => {
                    let p = tables
                        .iter()
                        .find(|t| &t.name == ptable)
                        .ok_or_else(|| contract_err(format!("relationship of {name}: parent {ptable} must come earlier in table_insertion_order")))?;
                    if p.parent.is_some() && &p.row_path != ppath {
                        return Err(contract_err(format!("relationship of {name}: xml_parent_path is not the row path of {ptable}")));
                    }
                    if !cpath.starts_with(ppath) || cpath.len() == ppath.len() {
                        return Err(contract_err(format!(
                            "relationship of {name}: xml_child_path is not below xml_parent_path"
                        )));
                    }
                    let link = ParentLink {
                        table: ptable.clone(),
                        fk_column: fk.clone(),
                        rel_path: cpath[ppath.len()..].to_vec(),
                    };
                    (Some(link), cpath.clone(), vec![fk.clone()])
                }
            };
            tables.push(RefTable {
                name: name.clone(),
                key,
                columns,
                parent,
                shared: false,
                row_path,
                mappings: Vec::new(),
            });
        }
        for child in rels.keys() {
            if !order.contains(child) {
                return Err(contract_err(format!(
                    "relationship child {child} is not in table_insertion_order"
                )));
            }
        }

        for (i, m) in v
            .get("mappings")
            .and_then(Json::as_array)
            .ok_or_else(|| contract_err("contract: missing mappings".into()))?
            .iter()
            .enumerate()
        {
            let table_name = get_str(m, "target_table", &format!("mappings[{i}]"))?.to_owned();
            let column = get_str(m, "target_column", &format!("mappings[{i}]"))?.to_owned();
            let ctx = format!("mappings[{i}] ({table_name}.{column})");
            let length = match m.get("data_length") {
                None | Some(Json::Null) => None,
                Some(l) => Some(
                    l.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| contract_err(format!("{ctx}: bad data_length")))?,
                ),
            };
            let type_name = get_str(m, "data_type", &ctx)?.to_owned();
            let dtype = parse_dtype(&type_name, length, &ctx)?;
            let mut transforms = Vec::new();
            match m.get("mapping_type") {
                None | Some(Json::Null) => {}
                Some(Json::String(s)) => transforms.extend(parse_transform(s, &ctx)?),
                Some(Json::Array(list)) => {
                    for t in list {
                        let s = t.as_str().ok_or_else(|| {
                            contract_err(format!("{ctx}: mapping_type entries must be strings"))
                        })?;
                        transforms.extend(parse_transform(s, &ctx)?);
                    }
                }
                Some(_) => {
                    return Err(contract_err(format!(
                        "{ctx}: mapping_type must be a string or a list"
                    )))
                }
            }
            for t in &transforms {
                match t {
                    Transform::Enum if !enums.contains_key(&column) => {
                        return Err(contract_err(format!(
                            "{ctx}: no enum_mappings entry for {column}"
                        )))
                    }
                    Transform::CharToBit if !bits.contains_key("char_to_bit") => {
                        return Err(contract_err(format!(
                            "{ctx}: bit_conversions.char_to_bit missing"
                        )))
                    }
                    Transform::BoolToBit if !bits.contains_key("boolean_to_bit") => {
                        return Err(contract_err(format!(
                            "{ctx}: bit_conversions.boolean_to_bit missing"
                        )))
                    }
                    _ => {}
                }
            }
            let calculated = transforms.contains(&Transform::Calculated);
            let expr = if calculated {
                let text = get_str(m, "expression", &ctx)?;
                Some(
                    parse_expr(text)
                        .map_err(|e| contract_err(format!("{ctx}: bad expression: {e}")))?,
                )
            } else {
                None
            };
            let attr = m
                .get("xml_attribute")
                .and_then(Json::as_str)
                .map(str::to_owned);
            let abs_path = m.get("xml_path").and_then(Json::as_str).map(split_path);
            if !calculated && (attr.is_none() || abs_path.is_none()) {
                return Err(contract_err(format!(
                    "{ctx}: xml_path and xml_attribute are required"
                )));
            }
            let table = tables
                .iter_mut()
                .find(|t| t.name == table_name)
                .ok_or_else(|| {
                    contract_err(format!("{ctx}: table is not in table_insertion_order"))
                })?;
            if table.columns.contains(&column) {
                return Err(contract_err(format!(
                    "{ctx}: column mapped twice (or is the foreign key column)"
                )));
            }
            let path = match abs_path {
                None => Vec::new(),
                Some(p) if table.parent.is_some() => {
                    if !p.starts_with(&table.row_path) {
                        return Err(contract_err(format!(
                            "{ctx}: xml_path is not at or below the row element"
                        )));
                    }
                    p[table.row_path.len()..].to_vec()
                }
                Some(p) => p,
            };
            let nullable = m.get("nullable").and_then(Json::as_bool).unwrap_or(true);
            let required = m.get("required").and_then(Json::as_bool).unwrap_or(false);
            let default = match m.get("default_value") {
                None | Some(Json::Null) => None,
                Some(Json::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
            };
            table.columns.push(column.clone());
            table.mappings.push(ColMapping {
                column,
                path,
                attr,
                dtype,
                type_name,
                transforms,
                nullable,
                required,
                default,
                expr,
            });
        }

        // Expressions may only read the row's non-calculated columns (and the foreign key).
        for t in &tables {
            if t.mappings.is_empty() {
                return Err(contract_err(format!("table {} has no mappings", t.name)));
            }
            for m in &t.mappings {
                if let Some(e) = &m.expr {
                    let mut cols = Vec::new();
                    e.columns(&mut cols);
                    for c in cols {
                        let ok = t.parent.as_ref().is_some_and(|p| p.fk_column == c)
                            || t.mappings.iter().any(|o| o.column == c && o.expr.is_none());
                        if !ok {
                            return Err(contract_err(format!(
                                "{}.{}: expression reads unknown or calculated column {c}",
                                t.name, m.column
                            )));
                        }
                    }
                }
            }
            for k in &t.key {
                if !t.columns.contains(k) {
                    return Err(contract_err(format!(
                        "table_keys.{}: {k} is not a column",
                        t.name
                    )));
                }
            }
            if let Some(p) = &t.parent {
                let parent_has = tables
                    .iter()
                    .any(|pt| pt.name == p.table && pt.columns.contains(&p.fk_column));
                if !parent_has {
                    return Err(contract_err(format!(
                        "{}: parent {} has no column {}",
                        t.name, p.table, p.fk_column
                    )));
                }
            }
        }

        let app = tables
            .iter()
            .find(|t| t.parent.is_none())
            .ok_or_else(|| contract_err("no application-level table".into()))?;
        if app.key.len() != 1 {
            return Err(contract_err(format!(
                "application table {} must have a one-column key",
                app.name
            )));
        }
        let app_table = app.name.clone();
        let app_key = app.key[0].clone();
        for t in &mut tables {
            t.shared = t.parent.is_some() && !t.key.contains(&app_key);
        }
        Ok(RefContract {
            root,
            app_path,
            source_table,
            source_column,
            target_schema,
            tables,
            app_table,
            app_key,
            filters,
            enums,
            bits,
            rejection: None,
        })
    }

    pub fn table(&self, name: &str) -> Option<&RefTable> {
        self.tables.iter().find(|t| t.name == name)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Document walking

type Node<'a, 'i> = roxmltree::Node<'a, 'i>;

struct Walker<'c> {
    filters: &'c [FilterRule],
}

impl Walker<'_> {
    fn passes(&self, node: Node<'_, '_>, abs: &[&str]) -> bool {
        self.filters
            .iter()
            .filter(|r| r.path.len() == abs.len() && r.path.iter().zip(abs).all(|(a, b)| a == b))
            .all(|r| {
                r.attrs
                    .iter()
                    .all(|(a, allowed)| match (node.attribute(a.as_str()), allowed) {
                        (Some(v), None) => !v.is_empty(),
                        (Some(v), Some(list)) => list.iter().any(|x| x == v),
                        (None, _) => false,
                    })
            })
    }

    /// Every element at `rel` below `start` (whose absolute path is `start_abs`), in document order, skipping
    /// elements that fail a filter rule together with everything below them.
    fn find_all<'a, 'i>(
        &self,
        start: Node<'a, 'i>,
        start_abs: &[String],
        rel: &[String],
    ) -> Vec<Node<'a, 'i>> {
        let mut out = Vec::new();
        let mut abs: Vec<&str> = start_abs.iter().map(String::as_str).collect();
        self.walk(start, &mut abs, rel, &mut out);
        out
    }

    fn walk<'a, 'i, 'p>(
        &self,
        node: Node<'a, 'i>,
        abs: &mut Vec<&'p str>,
        rel: &'p [String],
        out: &mut Vec<Node<'a, 'i>>,
    ) {
        let Some((first, rest)) = rel.split_first() else {
            out.push(node);
            return;
        };
        for child in node
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == first)
        {
            abs.push(first.as_str());
            if self.passes(child, abs) {
                self.walk(child, abs, rest, out);
            }
            abs.pop();
        }
    }

    /// Elements at an absolute path from the document root.
    fn find_abs<'a, 'i>(&self, root: Node<'a, 'i>, path: &[String]) -> Vec<Node<'a, 'i>> {
        match path.split_first() {
            Some((first, rest)) if root.tag_name().name() == first => {
                if !self.passes(root, &[first.as_str()]) {
                    return Vec::new();
                }
                self.find_all(root, &path[..1], rest)
            }
            _ => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Mapping

/// A typed value as expressions see it.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    Num(f64),
    Str(String),
}

struct Fail(String, String);

/// Elements found per (start element, path below it; `None`: an absolute path from the root) within one
/// document: several columns read attributes of the same element, and walking the tree again for each was a
/// measured share of the reference's time. The result depends only on the element and the path (filter rules
/// are a function of both), so a cached walk is the same walk.
type FindCache<'a, 'i, 'c> = HashMap<(Option<roxmltree::NodeId>, &'c [String]), Vec<Node<'a, 'i>>>;

fn map_fail(msg: String) -> Fail {
    Fail("map".into(), msg)
}

/// Maps one document. Never panics; every problem is a `Failed` outcome.
pub fn reference_map(contract: &RefContract, app_id: i64, xml: &str) -> RefOutcome {
    match map_doc(contract, app_id, xml) {
        Ok(rows) => match &contract.rejection {
            Some(r) if r.refuses(app_id, &rows) => RefOutcome::Failed {
                stage: "write".into(),
                message: format!(
                    "the fixture's constraint refuses rows of {} for app_id a multiple of {}",
                    r.table, r.every
                ),
            },
            _ => RefOutcome::Success(rows),
        },
        Err(Fail(stage, message)) => RefOutcome::Failed { stage, message },
    }
}

fn map_doc(c: &RefContract, app_id: i64, xml: &str) -> Result<BTreeMap<String, Vec<RefRow>>, Fail> {
    let text = xml.strip_prefix('\u{feff}').unwrap_or(xml);
    // DTDs are tolerated (the processor's pull reader skips them); entity expansion stays bounded by roxmltree.
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, opts)
        .map_err(|e| Fail("parse".into(), e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != c.root {
        return Err(Fail(
            "parse".into(),
            format!(
                "root element is <{}>, expected <{}>",
                root.tag_name().name(),
                c.root
            ),
        ));
    }
    let walker = Walker {
        filters: &c.filters,
    };
    // The application element must exist, whether or not a column reads it.
    first_plain(root, &c.app_path).ok_or_else(|| {
        map_fail(format!(
            "application element /{} not found",
            c.app_path.join("/")
        ))
    })?;

    // Per table: (row element, its absolute path, typed values by column, canonical row).
    struct Built<'a, 'i, 'c> {
        elem: Option<Node<'a, 'i>>,
        typed: BTreeMap<&'c str, Val>,
    }
    let mut built: BTreeMap<String, Vec<Built<'_, '_, '_>>> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<RefRow>> = BTreeMap::new();
    let mut found: FindCache<'_, '_, '_> = HashMap::new();

    for t in &c.tables {
        let mut rows_for_table = Vec::new();
        let mut rows_out = Vec::new();
        // (row element, parent's typed value and canonical text of the foreign key column) for each row of this
        // table: only the foreign key is inherited from the parent row.
        type Inherited = Option<(Val, Option<String>)>;
        let mut sources: Vec<(Option<Node<'_, '_>>, Inherited)> = Vec::new();
        match &t.parent {
            None => sources.push((None, None)),
            Some(link) => {
                let parent_rows = built.get(&link.table).map(Vec::as_slice).unwrap_or(&[]);
                let parent_canon = out.get(&link.table).map(Vec::as_slice).unwrap_or(&[]);
                let parent_is_app_level = c.table(&link.table).is_some_and(|p| p.parent.is_none());
                for (pi, prow) in parent_rows.iter().enumerate() {
                    let (pelem, pabs) = if parent_is_app_level {
                        // An application-level parent's element is the first element at xml_parent_path.
                        let pabs: Vec<String> =
                            t.row_path[..t.row_path.len() - link.rel_path.len()].to_vec();
                        (walker.find_abs(root, &pabs).into_iter().next(), pabs)
                    } else {
                        let ptable = c.table(&link.table);
                        (
                            prow.elem,
                            ptable.map(|p| p.row_path.clone()).unwrap_or_default(),
                        )
                    };
                    let Some(pelem) = pelem else { continue };
                    let tv = prow
                        .typed
                        .get(link.fk_column.as_str())
                        .cloned()
                        .unwrap_or(Val::Null);
                    let v = parent_canon
                        .get(pi)
                        .and_then(|r| r.values.get(&link.fk_column).cloned())
                        .flatten();
                    for e in walker.find_all(pelem, &pabs, &link.rel_path) {
                        sources.push((Some(e), Some((tv.clone(), v.clone()))));
                    }
                }
            }
        }
        let mut seen: HashSet<Vec<Option<String>>> = HashSet::new();
        for (elem, inherited) in sources {
            let mut typed: BTreeMap<&str, Val> = BTreeMap::new();
            let mut canon: BTreeMap<String, Option<String>> = BTreeMap::new();
            if let Some(link) = &t.parent {
                let (tv, v) = inherited.unwrap_or((Val::Null, None));
                canon.insert(link.fk_column.clone(), v);
                typed.insert(link.fk_column.as_str(), tv);
            }
            for m in t.mappings.iter().filter(|m| m.expr.is_none()) {
                let (text, val) = map_column(c, &walker, t, m, root, elem, &mut found)?;
                canon.insert(m.column.clone(), text);
                typed.insert(m.column.as_str(), val);
            }
            for m in t.mappings.iter() {
                let Some(expr) = &m.expr else { continue };
                let result = expr.eval(&typed);
                let raw = match result {
                    Val::Null => None,
                    Val::Str(s) => Some(s),
                    Val::Num(n) => Some(render_num(n, &m.dtype)),
                };
                let after = m
                    .transforms
                    .iter()
                    .skip_while(|t| **t != Transform::Calculated)
                    .skip(1);
                let raw = apply_transforms(c, m, raw, after.copied());
                let (text, _) = finish(t, m, raw)?;
                canon.insert(m.column.clone(), text);
            }
            let key: Vec<Option<String>> = t
                .key
                .iter()
                .map(|k| canon.get(k).cloned().flatten())
                .collect();
            if !seen.insert(key.clone()) {
                let vals: Vec<String> = key
                    .iter()
                    .map(|v| v.clone().unwrap_or_else(|| "NULL".into()))
                    .collect();
                return Err(map_fail(format!(
                    "duplicate key ({}) = ({}) in {}",
                    t.key.join(", "),
                    vals.join(", "),
                    t.name
                )));
            }
            if t.name == c.app_table {
                check_app_id(c, t, &canon, app_id)?;
            }
            rows_for_table.push(Built { elem, typed });
            rows_out.push(RefRow { key, values: canon });
        }
        built.insert(t.name.clone(), rows_for_table);
        out.insert(t.name.clone(), rows_out);
    }
    Ok(out)
}

/// The first element at an absolute path, ignoring filter rules (the application element).
fn first_plain<'a, 'i>(root: Node<'a, 'i>, path: &[String]) -> Option<Node<'a, 'i>> {
    let (first, rest) = path.split_first()?;
    if root.tag_name().name() != first {
        return None;
    }
    let mut cur = root;
    for seg in rest {
        cur = cur
            .children()
            .find(|c| c.is_element() && c.tag_name().name() == seg)?;
    }
    Some(cur)
}

fn check_app_id(
    c: &RefContract,
    t: &RefTable,
    canon: &BTreeMap<String, Option<String>>,
    app_id: i64,
) -> Result<(), Fail> {
    let Some(m) = t
        .mappings
        .iter()
        .find(|m| m.column == c.app_key && m.transforms.contains(&Transform::Identity))
    else {
        return Ok(());
    };
    let got = canon.get(&c.app_key).cloned().flatten();
    if got.as_deref() != Some(app_id.to_string().as_str()) {
        let who = format!(
            "{}@{}",
            m.path.last().map(String::as_str).unwrap_or(""),
            m.attr.as_deref().unwrap_or("")
        );
        return Err(map_fail(format!(
            "{who} {} does not match app_id {app_id}",
            got.unwrap_or_else(|| "NULL".into())
        )));
    }
    Ok(())
}

/// Steps 1–6 of "A column's value" for a non-calculated column.
fn map_column<'a, 'i, 'c>(
    c: &RefContract,
    walker: &Walker<'_>,
    t: &'c RefTable,
    m: &'c ColMapping,
    root: Node<'a, 'i>,
    row_elem: Option<Node<'a, 'i>>,
    found: &mut FindCache<'a, 'i, 'c>,
) -> Result<(Option<String>, Val), Fail> {
    let curr_only = m.transforms.contains(&Transform::CurrAddressOnly);
    let candidates: &[Node<'a, 'i>] = match (&t.parent, row_elem) {
        (None, _) => found
            .entry((None, m.path.as_slice()))
            .or_insert_with(|| walker.find_abs(root, &m.path)),
        (Some(_), Some(e)) => found
            .entry((Some(e.id()), m.path.as_slice()))
            .or_insert_with(|| walker.find_all(e, &t.row_path, &m.path)),
        (Some(_), None) => &[],
    };
    let candidates = candidates.iter().copied();
    let source = if curr_only {
        candidates
            .into_iter()
            .find(|n| n.attribute("address_tp_c") == Some("CURR"))
    } else {
        candidates.into_iter().next()
    };
    let attr = m.attr.as_deref().unwrap_or("");
    let raw = source
        .and_then(|n| n.attribute(attr))
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let raw = match raw {
        Some(r) => Some(r),
        None => match &m.default {
            Some(d) => Some(d.clone()),
            None if m.required => {
                return Err(map_fail(format!(
                    "missing required attribute {attr} for {}.{}",
                    t.name, m.column
                )))
            }
            None => None,
        },
    };
    let raw = apply_transforms(c, m, raw, m.transforms.iter().copied());
    finish(t, m, raw)
}

fn apply_transforms(
    c: &RefContract,
    m: &ColMapping,
    raw: Option<String>,
    ts: impl Iterator<Item = Transform>,
) -> Option<String> {
    let mut v = raw;
    for t in ts {
        let cur = v?;
        v = match t {
            Transform::Identity | Transform::CurrAddressOnly | Transform::Calculated => Some(cur),
            Transform::Enum => c
                .enums
                .get(&m.column)
                .and_then(|e| e.get(&cur))
                .map(i64::to_string),
            Transform::CharToBit => c
                .bits
                .get("char_to_bit")
                .and_then(|e| e.get(&cur))
                .map(i64::to_string),
            Transform::BoolToBit => c
                .bits
                .get("boolean_to_bit")
                .and_then(|e| e.get(&cur))
                .map(i64::to_string),
            Transform::NumbersOnly => {
                let d: String = cur.chars().filter(char::is_ascii_digit).collect();
                (!d.is_empty()).then_some(d)
            }
            Transform::ExtractNumeric => extract_numeric(&cur),
        };
    }
    v
}

/// Steps 5 and 6: type conversion, then the NOT NULL check.
fn finish(
    t: &RefTable,
    m: &ColMapping,
    raw: Option<String>,
) -> Result<(Option<String>, Val), Fail> {
    let out = match raw {
        None => (None, Val::Null),
        Some(r) => {
            let (text, val) = convert(&m.dtype, &r).map_err(|too_long| match too_long {
                Some((len, n)) => map_fail(format!(
                    "value too long for {}.{} ({len} > {n})",
                    t.name, m.column
                )),
                None => map_fail(format!(
                    "'{r}' is not a valid {} for {}.{}",
                    m.type_name, t.name, m.column
                )),
            })?;
            (Some(text), val)
        }
    };
    if out.0.is_none() && !m.nullable {
        return Err(map_fail(format!(
            "{}.{} must not be null",
            t.name, m.column
        )));
    }
    Ok(out)
}

/// `-?[0-9][0-9,]*(\.[0-9]+)?`, leftmost match, commas removed.
pub(crate) fn extract_numeric(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let start = (0..b.len()).find(|&i| {
        b[i].is_ascii_digit() || (b[i] == b'-' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
    })?;
    let mut out = String::new();
    let mut i = start;
    if b[i] == b'-' {
        out.push('-');
        i += 1;
    }
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b',') {
        if b[i] != b',' {
            out.push(b[i] as char);
        }
        i += 1;
    }
    if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
        out.push('.');
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            out.push(b[i] as char);
            i += 1;
        }
    }
    Some(out)
}

/// A calculated number as text: no exponent; integers rounded half away from zero.
fn render_num(n: f64, dt: &DataType) -> String {
    match dt {
        DataType::Int { .. } | DataType::Bit => format!("{}", n.round()),
        _ => format!("{n}"),
    }
}

/// Err(Some((len, max))) for an over-long string, Err(None) for any other invalid value.
type ConvResult = Result<(String, Val), Option<(usize, usize)>>;

fn convert(dt: &DataType, raw: &str) -> ConvResult {
    match dt {
        DataType::Int { min, max } => {
            let (neg, digits) = split_sign(raw.trim()).ok_or(None)?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(None);
            }
            let trimmed = digits.trim_start_matches('0');
            if trimmed.len() > 20 {
                return Err(None);
            }
            let mag: i128 = if trimmed.is_empty() {
                0
            } else {
                trimmed.parse().map_err(|_| None)?
            };
            let v = if neg { -mag } else { mag };
            if v < *min || v > *max {
                return Err(None);
            }
            Ok((v.to_string(), Val::Num(v as f64)))
        }
        DataType::Decimal { p, s } => {
            let text = decimal_canon(raw.trim(), *p, *s).ok_or(None)?;
            let n: f64 = text.parse().map_err(|_| None)?;
            Ok((text, Val::Num(n)))
        }
        DataType::Text { max_chars } => {
            let len = raw.chars().count();
            if let Some(n) = max_chars {
                if len > *n {
                    return Err(Some((len, *n)));
                }
            }
            Ok((raw.to_owned(), Val::Str(raw.to_owned())))
        }
        DataType::Date => {
            let d = parse_date(raw).ok_or(None)?;
            Ok((d.clone(), Val::Str(d)))
        }
        DataType::DateTime => {
            let d = parse_datetime(raw).ok_or(None)?;
            Ok((d.clone(), Val::Str(d)))
        }
        DataType::Bit => match raw {
            "0" => Ok(("0".into(), Val::Num(0.0))),
            "1" => Ok(("1".into(), Val::Num(1.0))),
            _ => Err(None),
        },
    }
}

fn split_sign(s: &str) -> Option<(bool, &str)> {
    if let Some(r) = s.strip_prefix('-') {
        Some((true, r))
    } else if let Some(r) = s.strip_prefix('+') {
        Some((false, r))
    } else {
        Some((false, s))
    }
}

/// Canonical fixed-scale text, rounded half away from zero; `None` if invalid or too many integer digits.
pub(crate) fn decimal_canon(s: &str, p: u32, scale: u32) -> Option<String> {
    let (neg, rest) = split_sign(s)?;
    let (int_part, frac) = match rest.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (rest, None),
    };
    if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac = frac.unwrap_or("");
    if rest.contains('.') && frac.is_empty() {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let scale = scale as usize;
    // All kept digits as one string; rounding carries through it.
    let mut digits: Vec<u8> = int_part.bytes().collect();
    let fb = frac.as_bytes();
    for i in 0..scale {
        digits.push(*fb.get(i).unwrap_or(&b'0'));
    }
    if fb.get(scale).is_some_and(|d| *d >= b'5') {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let split = digits.len() - scale;
    let int_digits: String = String::from_utf8_lossy(&digits[..split])
        .trim_start_matches('0')
        .to_owned();
    let frac_digits = String::from_utf8_lossy(&digits[split..]).into_owned();
    if int_digits.len() > (p as usize).saturating_sub(scale) {
        return None;
    }
    let int_digits = if int_digits.is_empty() {
        "0".to_owned()
    } else {
        int_digits
    };
    let is_zero = int_digits == "0" && frac_digits.bytes().all(|b| b == b'0');
    let sign = if neg && !is_zero { "-" } else { "" };
    Some(if scale == 0 {
        format!("{sign}{int_digits}")
    } else {
        format!("{sign}{int_digits}.{frac_digits}")
    })
}

fn digits_n(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn ymd(y: u32, m: u32, d: u32) -> Option<String> {
    if y == 0 {
        return None;
    }
    chrono::NaiveDate::from_ymd_opt(i32::try_from(y).ok()?, m, d)?;
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

fn parse_iso_date(s: &str) -> Option<String> {
    let mut it = s.split('-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    ymd(digits_n(y, 4)?, digits_n(m, 2)?, digits_n(d, 2)?)
}

pub(crate) fn parse_date(s: &str) -> Option<String> {
    if s.contains('/') {
        let mut it = s.split('/');
        let (m, d, y) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        return ymd(digits_n(y, 4)?, digits_n(m, 2)?, digits_n(d, 2)?);
    }
    parse_iso_date(s)
}

pub(crate) fn parse_datetime(s: &str) -> Option<String> {
    if s.len() == 10 {
        return parse_iso_date(s).map(|d| format!("{d} 00:00:00"));
    }
    if s.len() != 19 || !s.is_char_boundary(10) || !s.is_char_boundary(11) {
        return None;
    }
    let (date, sep, time) = (&s[..10], &s[10..11], &s[11..]);
    if sep != "T" && sep != " " {
        return None;
    }
    let d = parse_iso_date(date)?;
    let mut it = time.split(':');
    let (h, mi, se) = (
        digits_n(it.next()?, 2)?,
        digits_n(it.next()?, 2)?,
        digits_n(it.next()?, 2)?,
    );
    if it.next().is_some() || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    Some(format!("{d} {h:02}:{mi:02}:{se:02}"))
}

// ---------------------------------------------------------------------------------------------------------------
// Expressions: a small recursive-descent parser of the README grammar, independent of the processor's.

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Num(f64),
    Str(String),
    Null,
    Col(String),
    Neg(Box<Expr>),
    Bin(Box<Expr>, char, Box<Expr>),
    Case(Vec<(Cond, Expr)>, Option<Box<Expr>>),
}

#[derive(Debug, Clone, PartialEq)]
enum Cond {
    Cmp(Expr, &'static str, Expr),
    IsNull(Expr, bool),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Word(String),
    Sym(&'static str),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < cs.len() {
        let ch = cs[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch.is_ascii_digit()
            || (ch == '.' && cs.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let st = i;
            while i < cs.len() && (cs[i].is_ascii_digit() || cs[i] == '.') {
                i += 1;
            }
            let t: String = cs[st..i].iter().collect();
            out.push(Tok::Num(
                t.parse().map_err(|_| format!("bad number '{t}'"))?,
            ));
        } else if ch == '\'' {
            let mut t = String::new();
            i += 1;
            loop {
                match cs.get(i) {
                    None => return Err("unterminated string".into()),
                    // SQL style: '' inside a string is one quote.
                    Some('\'') if cs.get(i + 1) == Some(&'\'') => {
                        t.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        t.push(*c);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(t));
        } else if ch.is_alphabetic() || ch == '_' {
            let st = i;
            while i < cs.len() && (cs[i].is_alphanumeric() || cs[i] == '_') {
                i += 1;
            }
            out.push(Tok::Word(cs[st..i].iter().collect()));
        } else {
            let two: String = cs[i..(i + 2).min(cs.len())].iter().collect();
            let sym = match two.as_str() {
                "<=" => Some("<="),
                ">=" => Some(">="),
                "<>" => Some("<>"),
                "!=" => Some("!="),
                _ => None,
            };
            if let Some(s) = sym {
                out.push(Tok::Sym(s));
                i += 2;
                continue;
            }
            let one = match ch {
                '+' => "+",
                '-' => "-",
                '*' => "*",
                '/' => "/",
                '(' => "(",
                ')' => ")",
                '=' => "=",
                '<' => "<",
                '>' => ">",
                other => return Err(format!("unexpected character '{other}'")),
            };
            out.push(Tok::Sym(one));
            i += 1;
        }
    }
    Ok(out)
}

const KEYWORDS: [&str; 10] = [
    "case", "when", "then", "else", "end", "and", "or", "is", "not", "null",
];

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }
    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Sym(x)) if *x == s)
    }
    fn expect_kw(&mut self, kw: &str) -> Result<(), String> {
        if self.is_kw(kw) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!(
                "expected {} at token {}",
                kw.to_uppercase(),
                self.pos
            ))
        }
    }
    fn expect_sym(&mut self, s: &str) -> Result<(), String> {
        if self.is_sym(s) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected '{s}' at token {}", self.pos))
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        if self.is_kw("case") {
            self.pos += 1;
            let mut arms = Vec::new();
            while self.is_kw("when") {
                self.pos += 1;
                let c = self.cond()?;
                self.expect_kw("then")?;
                let e = self.expr()?;
                arms.push((c, e));
            }
            if arms.is_empty() {
                return Err("CASE without WHEN".into());
            }
            let els = if self.is_kw("else") {
                self.pos += 1;
                Some(Box::new(self.expr()?))
            } else {
                None
            };
            self.expect_kw("end")?;
            return Ok(Expr::Case(arms, els));
        }
        self.arith()
    }

    fn cond(&mut self) -> Result<Cond, String> {
        let mut left = self.and_cond()?;
        while self.is_kw("or") {
            self.pos += 1;
            let right = self.and_cond()?;
            left = Cond::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_cond(&mut self) -> Result<Cond, String> {
        let mut left = self.pred()?;
        while self.is_kw("and") {
            self.pos += 1;
            let right = self.pred()?;
            left = Cond::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn pred(&mut self) -> Result<Cond, String> {
        if self.is_sym("(") {
            // `( cond )` and an arithmetic operand starting with `(` look alike: try the condition first and keep
            // it only if what follows cannot continue an arithmetic comparison.
            let save = self.pos;
            self.pos += 1;
            if let Ok(c) = self.cond() {
                if self.is_sym(")") {
                    self.pos += 1;
                    let continues =
                        matches!(self.peek(), Some(Tok::Sym(s)) if *s != ")") || self.is_kw("is");
                    if !continues {
                        return Ok(c);
                    }
                }
            }
            self.pos = save;
        }
        let left = self.arith()?;
        if self.is_kw("is") {
            self.pos += 1;
            let negated = if self.is_kw("not") {
                self.pos += 1;
                true
            } else {
                false
            };
            self.expect_kw("null")?;
            return Ok(Cond::IsNull(left, negated));
        }
        let op = match self.peek() {
            Some(Tok::Sym(s)) if ["=", "<>", "!=", "<", "<=", ">", ">="].contains(s) => *s,
            _ => return Err(format!("expected a comparison at token {}", self.pos)),
        };
        self.pos += 1;
        let right = self.arith()?;
        Ok(Cond::Cmp(left, op, right))
    }

    fn arith(&mut self) -> Result<Expr, String> {
        let mut left = self.term()?;
        while self.is_sym("+") || self.is_sym("-") {
            let op = if self.is_sym("+") { '+' } else { '-' };
            self.pos += 1;
            let right = self.term()?;
            left = Expr::Bin(Box::new(left), op, Box::new(right));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut left = self.factor()?;
        while self.is_sym("*") || self.is_sym("/") {
            let op = if self.is_sym("*") { '*' } else { '/' };
            self.pos += 1;
            let right = self.factor()?;
            left = Expr::Bin(Box::new(left), op, Box::new(right));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Expr, String> {
        let tok = self.peek().cloned().ok_or("unexpected end of expression")?;
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(Expr::Num(n)),
            Tok::Str(s) => Ok(Expr::Str(s)),
            Tok::Sym("-") => Ok(Expr::Neg(Box::new(self.factor()?))),
            Tok::Sym("(") => {
                let e = self.expr()?;
                self.expect_sym(")")?;
                Ok(e)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("null") => Ok(Expr::Null),
            Tok::Word(w) if w.eq_ignore_ascii_case("case") => {
                self.pos -= 1;
                self.expr()
            }
            Tok::Word(w) if !KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k)) => Ok(Expr::Col(w)),
            other => Err(format!("unexpected {other:?} at token {}", self.pos - 1)),
        }
    }
}

fn parse_expr(s: &str) -> Result<Expr, String> {
    let mut p = Parser {
        toks: tokenize(s)?,
        pos: 0,
    };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(format!("trailing input at token {}", p.pos));
    }
    Ok(e)
}

fn as_num(v: &Val) -> Option<f64> {
    match v {
        Val::Num(n) => Some(*n),
        Val::Str(s) => s.trim().parse().ok(),
        Val::Null => None,
    }
}

impl Expr {
    fn columns(&self, out: &mut Vec<String>) {
        match self {
            Expr::Col(c) => out.push(c.clone()),
            Expr::Neg(e) => e.columns(out),
            Expr::Bin(a, _, b) => {
                a.columns(out);
                b.columns(out);
            }
            Expr::Case(arms, els) => {
                for (c, e) in arms {
                    c.columns(out);
                    e.columns(out);
                }
                if let Some(e) = els {
                    e.columns(out);
                }
            }
            Expr::Num(_) | Expr::Str(_) | Expr::Null => {}
        }
    }

    fn eval(&self, row: &BTreeMap<&str, Val>) -> Val {
        match self {
            Expr::Num(n) => Val::Num(*n),
            Expr::Str(s) => Val::Str(s.clone()),
            Expr::Null => Val::Null,
            Expr::Col(c) => row.get(c.as_str()).cloned().unwrap_or(Val::Null),
            Expr::Neg(e) => match as_num(&e.eval(row)) {
                Some(n) => Val::Num(-n),
                None => Val::Null,
            },
            Expr::Bin(a, op, b) => {
                let (Some(x), Some(y)) = (as_num(&a.eval(row)), as_num(&b.eval(row))) else {
                    return Val::Null;
                };
                let r = match op {
                    '+' => x + y,
                    '-' => x - y,
                    '*' => x * y,
                    _ if y == 0.0 => return Val::Null,
                    _ => x / y,
                };
                if r.is_finite() {
                    Val::Num(r)
                } else {
                    Val::Null
                }
            }
            Expr::Case(arms, els) => {
                for (c, e) in arms {
                    if c.eval(row) {
                        return e.eval(row);
                    }
                }
                els.as_ref().map_or(Val::Null, |e| e.eval(row))
            }
        }
    }
}

impl Cond {
    fn columns(&self, out: &mut Vec<String>) {
        match self {
            Cond::Cmp(a, _, b) => {
                a.columns(out);
                b.columns(out);
            }
            Cond::IsNull(a, _) => a.columns(out),
            Cond::And(a, b) | Cond::Or(a, b) => {
                a.columns(out);
                b.columns(out);
            }
        }
    }

    fn eval(&self, row: &BTreeMap<&str, Val>) -> bool {
        match self {
            Cond::And(a, b) => a.eval(row) && b.eval(row),
            Cond::Or(a, b) => a.eval(row) || b.eval(row),
            Cond::IsNull(e, negated) => (e.eval(row) == Val::Null) != *negated,
            Cond::Cmp(a, op, b) => {
                let (x, y) = (a.eval(row), b.eval(row));
                let ord = match (&x, &y) {
                    (Val::Null, _) | (_, Val::Null) => return false,
                    (Val::Str(s), Val::Str(t)) => s.as_str().partial_cmp(t.as_str()),
                    _ => match (as_num(&x), as_num(&y)) {
                        (Some(m), Some(n)) => m.partial_cmp(&n),
                        _ => return false,
                    },
                };
                let Some(ord) = ord else { return false };
                use std::cmp::Ordering::*;
                match *op {
                    "=" => ord == Equal,
                    "<>" | "!=" => ord != Equal,
                    "<" => ord == Less,
                    "<=" => ord != Greater,
                    ">" => ord == Greater,
                    _ => ord != Less,
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "reference_tests.rs"]
mod tests;
