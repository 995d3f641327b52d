//! The JSON mapping contract (SPEC §3, fixtures/contract/README.md): parsed and validated once into a typed
//! `Contract`. Every error names the entry and the problem. Nothing downstream re-validates; nothing here does I/O
//! beyond reading the file.

use crate::expr::{self, Expr};
use crate::failure::{Failure, Stage};
use crate::ident::Ident;
use crate::value::{ColType, Value};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// The XmlConversion contract format: its plan (built at load, held by [`Contract::real`]) and its mapper. A child
/// of this module, so `contract` and `real` are one unit and no sibling module imports back into it.
pub mod real;

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("cannot read contract {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("contract is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{entry}: {problem}")]
    Invalid { entry: String, problem: String },
}

fn invalid(entry: impl Into<String>, problem: impl Into<String>) -> ContractError {
    ContractError::Invalid {
        entry: entry.into(),
        problem: problem.into(),
    }
}

// ---- The JSON shape (unknown keys tolerated at the top level for compatibility; strict inside entries). ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawContract {
    /// Free text for readers; not interpreted.
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) description: Option<String>,
    pub(crate) xml_root_element: String,
    pub(crate) xml_application_path: String,
    #[serde(default = "default_source_table")]
    pub(crate) source_table: String,
    #[serde(default = "default_source_column")]
    pub(crate) source_column: String,
    /// XmlConversion format: the application element's name (its presence selects that format's semantics).
    #[serde(default)]
    pub(crate) source_application_table: Option<String>,
    #[serde(default)]
    pub(crate) target_schema: Option<String>,
    pub(crate) table_insertion_order: Vec<String>,
    #[serde(default)]
    pub(crate) element_filtering: Option<RawFiltering>,
    pub(crate) mappings: Vec<RawMapping>,
    #[serde(default)]
    pub(crate) relationships: Vec<RawRelationship>,
    /// Name → { source value → integer (or, in the XmlConversion format, a string) }.
    #[serde(default)]
    pub(crate) enum_mappings: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub(crate) bit_conversions: BTreeMap<String, BTreeMap<String, i64>>,
    #[serde(default)]
    pub(crate) table_keys: BTreeMap<String, Vec<String>>,
}

fn default_source_table() -> String {
    "app_xml".into()
}
fn default_source_column() -> String {
    "xml".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFiltering {
    #[serde(default)]
    pub(crate) filter_rules: Vec<RawFilterRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFilterRule {
    #[serde(default)]
    pub(crate) element_type: Option<String>,
    /// Shredproof format: the filtered element's path.
    #[serde(default)]
    pub(crate) xml_path: Option<String>,
    /// XmlConversion format: the parent and the filtered element's paths.
    #[serde(default)]
    pub(crate) xml_parent_path: Option<String>,
    #[serde(default)]
    pub(crate) xml_child_path: Option<String>,
    #[serde(default)]
    pub(crate) required_attributes: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub(crate) description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawMappingType {
    One(String),
    Chain(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMapping {
    #[serde(default)]
    pub(crate) xml_path: Option<String>,
    #[serde(default)]
    pub(crate) xml_attribute: Option<String>,
    pub(crate) target_table: String,
    pub(crate) target_column: String,
    pub(crate) data_type: String,
    /// Characters (strings) or decimal places (decimals); -1: unlimited.
    #[serde(default)]
    pub(crate) data_length: Option<i64>,
    #[serde(default)]
    pub(crate) mapping_type: Option<RawMappingType>,
    #[serde(default)]
    pub(crate) nullable: Option<bool>,
    #[serde(default)]
    pub(crate) required: Option<bool>,
    /// A string, or a number in the XmlConversion format.
    #[serde(default)]
    pub(crate) default_value: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) expression: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) enum_name: Option<String>,
    #[serde(default)]
    pub(crate) exclude_default_when_record_empty: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRelationship {
    pub(crate) parent_table: String,
    pub(crate) child_table: String,
    pub(crate) foreign_key_column: String,
    pub(crate) xml_parent_path: String,
    pub(crate) xml_child_path: String,
}

/// A JSON scalar as contract text: strings as they are, numbers in their JSON spelling.
pub(crate) fn scalar_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

// ---- The typed, validated model. ----

/// A value transform (contract README step 4).
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    IdentityInsert,
    Enum(HashMap<String, i64>),
    Bit(HashMap<String, i64>),
    NumbersOnly,
    ExtractNumeric,
    CurrAddressOnly,
}

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// An attribute of an element: `path` is the trie node of the element.
    Attr { node: usize, attr: String },
    /// `curr_address_only`: the first child element at `node` whose `address_tp_c` is `CURR`.
    CurrAddress { node: usize, attr: String },
    /// `calculated_field` over the row's other columns.
    Calculated(Expr),
    /// The parent row's value of column `parent_col` (relationship foreign key).
    ForeignKey { parent_col: usize },
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: Ident,
    pub ty: ColType,
    pub nullable: bool,
    pub required: bool,
    pub default: Option<String>,
    pub source: Source,
    pub transforms: Vec<Transform>,
    /// True for the application key taken from the document (`identity_insert`).
    pub identity: bool,
}

#[derive(Debug, Clone)]
pub struct Table {
    pub name: Ident,
    pub columns: Vec<Column>,
    /// Natural key column indexes.
    pub key: Vec<usize>,
    /// Trie node of the repeating row element; `None` for an application-level table (one row per document).
    pub row_node: Option<usize>,
    /// Parent table index (relationship).
    pub parent: Option<usize>,
    /// True when no key column derives from the application key: rows are shared entities, written insert-if-absent.
    pub shared: bool,
}

/// One element path the reader must collect, with the attributes needed there.
#[derive(Debug, Clone)]
pub struct PathNode {
    pub name: String,
    pub parent: Option<usize>,
    pub children: Vec<usize>,
    pub attrs: Vec<String>,
    /// Filter rules on this element: attribute → allowed values (`None`: present and non-empty).
    pub filters: Vec<(String, Option<Vec<String>>)>,
}

#[derive(Debug, Clone)]
pub struct Contract {
    pub root_element: String,
    pub source_table: Ident,
    pub source_column: Ident,
    pub schema: Option<Ident>,
    /// Tables in insertion order (parents first).
    pub tables: Vec<Table>,
    /// Element path trie; node 0 is the root element.
    pub nodes: Vec<PathNode>,
    /// Trie node of the application element.
    pub app_node: usize,
    /// (table, column) of the application key mapped with `identity_insert`.
    pub app_key: (usize, usize),
    /// The raw JSON text, for reports.
    pub json: String,
    /// XmlConversion-format contracts map with that system's semantics (`real`); `None` for Shredproof's own.
    pub real: Option<std::sync::Arc<real::Plan>>,
}

impl Contract {
    pub fn from_file(path: &Path) -> Result<Self, ContractError> {
        let text = std::fs::read_to_string(path).map_err(|source| ContractError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<Self, ContractError> {
        let raw: RawContract = serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                // Valid JSON of the wrong shape (unknown key, wrong type): name the entry, not "invalid JSON".
                invalid(
                    format!("contract (line {}, column {})", e.line(), e.column()),
                    e.to_string(),
                )
            } else {
                ContractError::Json(e)
            }
        })?;
        if raw.source_application_table.is_some() {
            return real::build(raw, text);
        }
        build(raw, text)
    }

    pub fn table_index(&self, name: &str) -> Option<usize> {
        self.tables.iter().position(|t| t.name.as_str() == name)
    }

    pub fn node_path(&self, node: usize) -> String {
        let mut parts = Vec::new();
        let mut cur = Some(node);
        while let Some(n) = cur {
            parts.push(self.nodes[n].name.as_str());
            cur = self.nodes[n].parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }
}

fn split_path(entry: &str, p: &str) -> Result<Vec<String>, ContractError> {
    let parts: Vec<String> = p
        .trim()
        .trim_matches('/')
        .split('/')
        .map(|s| s.trim().to_owned())
        .collect();
    if !p.trim().starts_with('/') || parts.iter().any(|s| s.is_empty()) {
        return Err(invalid(
            entry,
            format!("xml path '{p}' must be absolute, like /Root/Child"),
        ));
    }
    Ok(parts)
}

struct Trie {
    nodes: Vec<PathNode>,
}

impl Trie {
    fn insert(
        &mut self,
        entry: &str,
        parts: &[String],
        root: &str,
    ) -> Result<usize, ContractError> {
        if parts[0] != root {
            return Err(invalid(
                entry,
                format!(
                    "xml path /{} does not start at the root element <{root}>",
                    parts.join("/")
                ),
            ));
        }
        let mut cur = 0;
        for name in &parts[1..] {
            cur = match self.nodes[cur]
                .children
                .iter()
                .copied()
                .find(|&c| &self.nodes[c].name == name)
            {
                Some(c) => c,
                None => {
                    let id = self.nodes.len();
                    self.nodes.push(PathNode {
                        name: name.clone(),
                        parent: Some(cur),
                        children: Vec::new(),
                        attrs: Vec::new(),
                        filters: Vec::new(),
                    });
                    self.nodes[cur].children.push(id);
                    id
                }
            };
        }
        Ok(cur)
    }
    fn need_attr(&mut self, node: usize, attr: &str) {
        if !self.nodes[node].attrs.iter().any(|a| a == attr) {
            self.nodes[node].attrs.push(attr.to_owned());
        }
    }
    fn is_ancestor(&self, anc: usize, mut node: usize) -> bool {
        loop {
            if node == anc {
                return true;
            }
            match self.nodes[node].parent {
                Some(p) => node = p,
                None => return false,
            }
        }
    }
}

const KNOWN_TYPES: &str = "identity_insert, enum, char_to_bit, boolean_to_bit, numbers_only, extract_numeric, curr_address_only, calculated_field";

/// The paths a contract names, as one element trie, with its root name and the application element.
struct Tree<'a> {
    trie: &'a mut Trie,
    root: &'a str,
    app_node: usize,
}

/// Validates `raw` into a [`Contract`], one function per phase: tables, relationships, filter rules, mappings,
/// foreign keys, calculated fields, natural keys, shared tables.
fn build(raw: RawContract, text: &str) -> Result<Contract, ContractError> {
    let root = raw.xml_root_element.trim().to_owned();
    if root.is_empty() {
        return Err(invalid("xml_root_element", "must not be empty"));
    }
    let mut trie = Trie {
        nodes: vec![PathNode {
            name: root.clone(),
            parent: None,
            children: vec![],
            attrs: vec![],
            filters: vec![],
        }],
    };
    let app_parts = split_path("xml_application_path", &raw.xml_application_path)?;
    let app_node = trie.insert("xml_application_path", &app_parts, &root)?;
    let (source_table, source_column, schema) = source_and_schema(&raw)?;

    let mut tables = build_tables(&raw)?;
    let mut tree = Tree {
        trie: &mut trie,
        root: &root,
        app_node,
    };
    let fk_of = build_relationships(&raw, &mut tree, &mut tables)?;
    build_filters(&raw, &mut tree)?;
    let (app_key, calc) = build_mappings(&raw, &mut tree, &mut tables)?;
    append_foreign_keys(&mut tables, &fk_of)?;
    check_calculated(&tables, &calc)?;
    apply_natural_keys(&raw, &mut tables)?;
    mark_shared(&mut tables, app_key)?;
    // The Request@ID-style key must be readable.
    Ok(Contract {
        root_element: root.clone(),
        source_table,
        source_column,
        schema,
        tables,
        nodes: trie.nodes,
        app_node,
        app_key,
        json: text.to_owned(),
        real: None,
    })
}

fn table_idx(entry: &str, name: &str, tables: &[Table]) -> Result<usize, ContractError> {
    tables
        .iter()
        .position(|t| t.name.as_str() == name)
        .ok_or_else(|| {
            invalid(
                entry,
                format!("unknown table '{name}' (not in table_insertion_order)"),
            )
        })
}

/// The source table and column and the target schema, as identifiers: the same three keys in both contract formats.
pub(crate) fn source_and_schema(
    raw: &RawContract,
) -> Result<(Ident, Ident, Option<Ident>), ContractError> {
    let source_table =
        Ident::new(&raw.source_table).map_err(|e| invalid("source_table", e.to_string()))?;
    let source_column =
        Ident::new(&raw.source_column).map_err(|e| invalid("source_column", e.to_string()))?;
    let schema = match raw.target_schema.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(Ident::new(s).map_err(|e| invalid("target_schema", e.to_string()))?),
    };
    Ok((source_table, source_column, schema))
}

/// Tables in insertion order.
fn build_tables(raw: &RawContract) -> Result<Vec<Table>, ContractError> {
    if raw.table_insertion_order.is_empty() {
        return Err(invalid(
            "table_insertion_order",
            "must list at least one table",
        ));
    }
    let mut tables: Vec<Table> = Vec::new();
    for (i, t) in raw.table_insertion_order.iter().enumerate() {
        let entry = format!("table_insertion_order[{i}]");
        let name = Ident::new(t).map_err(|e| invalid(&entry, e.to_string()))?;
        if tables.iter().any(|x| x.name == name) {
            return Err(invalid(entry, format!("table '{t}' is listed twice")));
        }
        tables.push(Table {
            name,
            columns: vec![],
            key: vec![],
            row_node: None,
            parent: None,
            shared: false,
        });
    }
    Ok(tables)
}

/// Relationships give repeating tables their row element and parent; returns each child's foreign key column and
/// the relationship's index.
fn build_relationships(
    raw: &RawContract,
    tree: &mut Tree<'_>,
    tables: &mut [Table],
) -> Result<Vec<Option<(String, usize)>>, ContractError> {
    let (trie, root, app_node) = (&mut *tree.trie, tree.root, tree.app_node);
    let mut fk_of: Vec<Option<(String, usize)>> = vec![None; tables.len()];
    for (i, r) in raw.relationships.iter().enumerate() {
        let entry = format!("relationships[{i}]");
        let parent = table_idx(&entry, &r.parent_table, tables)?;
        let child = table_idx(&entry, &r.child_table, tables)?;
        if parent >= child {
            return Err(invalid(
                &entry,
                "parent_table must come before child_table in table_insertion_order",
            ));
        }
        if tables[child].parent.is_some() {
            return Err(invalid(
                &entry,
                format!("table '{}' has two parents", r.child_table),
            ));
        }
        let pp = split_path(&entry, &r.xml_parent_path)?;
        let cp = split_path(&entry, &r.xml_child_path)?;
        let pnode = trie.insert(&entry, &pp, root)?;
        let cnode = trie.insert(&entry, &cp, root)?;
        if cnode == pnode || !trie.is_ancestor(pnode, cnode) {
            return Err(invalid(
                &entry,
                "xml_child_path must lie below xml_parent_path",
            ));
        }
        let parent_row = tables[parent].row_node.unwrap_or(app_node);
        if parent_row != pnode {
            return Err(invalid(
                &entry,
                format!(
                    "xml_parent_path is not the row element of table '{}'",
                    r.parent_table
                ),
            ));
        }
        Ident::new(&r.foreign_key_column).map_err(|e| invalid(&entry, e.to_string()))?;
        tables[child].row_node = Some(cnode);
        tables[child].parent = Some(parent);
        fk_of[child] = Some((r.foreign_key_column.clone(), i));
    }

    Ok(fk_of)
}

/// Filter rules: required attributes (and their allowed values) on elements.
fn build_filters(raw: &RawContract, tree: &mut Tree<'_>) -> Result<(), ContractError> {
    let (trie, root) = (&mut *tree.trie, tree.root);
    if let Some(f) = &raw.element_filtering {
        for (i, rule) in f.filter_rules.iter().enumerate() {
            let entry = format!("element_filtering.filter_rules[{i}]");
            let _ = (&rule.element_type, &rule.description);
            if rule.xml_parent_path.is_some() || rule.xml_child_path.is_some() {
                return Err(invalid(&entry, "xml_parent_path/xml_child_path belong to the XmlConversion format (a contract with source_application_table); this format names the element with xml_path"));
            }
            let xml_path = rule
                .xml_path
                .as_deref()
                .ok_or_else(|| invalid(&entry, "xml_path is required"))?;
            let parts = split_path(&entry, xml_path)?;
            let node = trie.insert(&entry, &parts, root)?;
            for (attr, v) in &rule.required_attributes {
                let allowed = match v {
                    serde_json::Value::Bool(true) => None,
                    serde_json::Value::Array(items) => Some(
                        items
                            .iter()
                            .map(|x| {
                                x.as_str().map(str::to_owned).ok_or_else(|| {
                                    invalid(
                                        &entry,
                                        format!("allowed values of '{attr}' must be strings"),
                                    )
                                })
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                    ),
                    _ => {
                        return Err(invalid(
                            &entry,
                            format!(
                            "required_attributes.{attr} must be true or a list of allowed values"
                        ),
                        ))
                    }
                };
                trie.need_attr(node, attr);
                trie.nodes[node].filters.push((attr.clone(), allowed));
            }
        }
    }

    Ok(())
}

/// A calculated column: table, column index, column name (checked once every column is known).
type CalcColumn = (usize, usize, String);

/// Mappings: every mapped column; returns the application key (table, column) and the calculated columns.
fn build_mappings(
    raw: &RawContract,
    tree: &mut Tree<'_>,
    tables: &mut [Table],
) -> Result<((usize, usize), Vec<CalcColumn>), ContractError> {
    let mut app_key: Option<(usize, usize)> = None;
    let mut calc: Vec<CalcColumn> = Vec::new();
    for (i, m) in raw.mappings.iter().enumerate() {
        let entry = format!("mappings[{i}] ({}.{})", m.target_table, m.target_column);
        let _ = &m.description;
        if m.enum_name.is_some() || m.exclude_default_when_record_empty.is_some() {
            return Err(invalid(&entry, "enum_name and exclude_default_when_record_empty belong to the XmlConversion format (a contract with source_application_table)"));
        }
        let t = table_idx(&entry, &m.target_table, tables)?;
        let name = Ident::new(&m.target_column).map_err(|e| invalid(&entry, e.to_string()))?;
        if tables[t].columns.iter().any(|c| c.name == name) {
            return Err(invalid(&entry, "column is mapped twice"));
        }
        let data_length = match m.data_length {
            None => None,
            Some(n) => Some(u32::try_from(n).map_err(|_| {
                invalid(&entry, format!("data_length {n} must be a positive number"))
            })?),
        };
        let ty = ColType::parse(&m.data_type, data_length).map_err(|p| invalid(&entry, p))?;
        let names = mapping_type_names(m);
        let kinds = mapping_kinds(raw, m, &entry, &names)?;
        let source = mapping_source(m, &entry, &kinds, names.len(), tree, tables[t].row_node)?;
        if matches!(source, Source::Calculated(_)) {
            calc.push((t, tables[t].columns.len(), m.target_column.clone()));
        }
        let Kinds {
            transforms,
            identity,
            ..
        } = kinds;
        if identity {
            if tables[t].row_node.is_some() {
                return Err(invalid(
                    &entry,
                    "identity_insert is only supported on the application-level table",
                ));
            }
            if !matches!(ty, ColType::BigInt | ColType::Int) {
                return Err(invalid(
                    &entry,
                    "identity_insert needs an int or bigint column",
                ));
            }
            if app_key.is_some() {
                return Err(invalid(
                    &entry,
                    "only one identity_insert mapping (the application key) is supported",
                ));
            }
            app_key = Some((t, tables[t].columns.len()));
        }
        tables[t].columns.push(Column {
            name,
            ty,
            nullable: m.nullable.unwrap_or(true),
            required: m.required.unwrap_or(false),
            default: match &m.default_value {
                None => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    return Err(invalid(&entry, "default_value must be a string"));
                }
            },
            source,
            transforms,
            identity,
        });
    }
    let app_key = app_key.ok_or_else(|| invalid("mappings", "no identity_insert mapping: one column must take the application key from the document (e.g. Request@ID)"))?;
    Ok((app_key, calc))
}

/// A mapping's `mapping_type`, as a list of names (`none`/`direct`/empty: none).
fn mapping_type_names(m: &RawMapping) -> Vec<String> {
    match &m.mapping_type {
        None => vec![],
        Some(RawMappingType::One(s)) if s.trim().is_empty() || s == "none" || s == "direct" => {
            vec![]
        }
        Some(RawMappingType::One(s)) => vec![s.trim().to_owned()],
        Some(RawMappingType::Chain(v)) => v.iter().map(|s| s.trim().to_owned()).collect(),
    }
}

/// What a mapping's types ask for.
struct Kinds {
    transforms: Vec<Transform>,
    calculated: bool,
    curr_only: bool,
    identity: bool,
}

/// A mapping's transforms, checked against the contract's enum and bit tables.
fn mapping_kinds(
    raw: &RawContract,
    m: &RawMapping,
    entry: &str,
    names: &[String],
) -> Result<Kinds, ContractError> {
    let mut transforms = Vec::new();
    let mut calculated = false;
    let mut curr_only = false;
    let mut identity = false;
    for n in names {
        match n.as_str() {
            "identity_insert" => {
                identity = true;
                transforms.push(Transform::IdentityInsert)
            }
            "enum" => {
                let map = raw
                    .enum_mappings
                    .get(m.target_column.as_str())
                    .ok_or_else(|| {
                        invalid(
                            entry,
                            format!("mapping_type enum needs enum_mappings.{}", m.target_column),
                        )
                    })?;
                let mut ints = HashMap::new();
                for (k, v) in map {
                    let n = v.as_i64().ok_or_else(|| {
                        invalid(
                            entry,
                            format!("enum_mappings.{}.{k} must be an integer", m.target_column),
                        )
                    })?;
                    ints.insert(k.clone(), n);
                }
                transforms.push(Transform::Enum(ints));
            }
            "char_to_bit" | "boolean_to_bit" => {
                let map = raw.bit_conversions.get(n.as_str()).ok_or_else(|| {
                    invalid(entry, format!("mapping_type {n} needs bit_conversions.{n}"))
                })?;
                if let Some((k, v)) = map.iter().find(|(_, v)| **v != 0 && **v != 1) {
                    return Err(invalid(
                        entry,
                        format!("bit_conversions.{n}.{k} is {v}, must be 0 or 1"),
                    ));
                }
                transforms.push(Transform::Bit(
                    map.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                ));
            }
            "numbers_only" => transforms.push(Transform::NumbersOnly),
            "extract_numeric" => transforms.push(Transform::ExtractNumeric),
            "curr_address_only" => {
                curr_only = true;
                transforms.push(Transform::CurrAddressOnly)
            }
            "calculated_field" => calculated = true,
            other => {
                return Err(invalid(
                    entry,
                    format!("unsupported mapping_type '{other}' (supported: {KNOWN_TYPES})"),
                ))
            }
        }
    }
    Ok(Kinds {
        transforms,
        calculated,
        curr_only,
        identity,
    })
}

/// Where a mapped column's value comes from: an expression, or an attribute of an element (checked against the
/// table's row element).
fn mapping_source(
    m: &RawMapping,
    entry: &str,
    kinds: &Kinds,
    n_names: usize,
    tree: &mut Tree<'_>,
    row_node: Option<usize>,
) -> Result<Source, ContractError> {
    let (trie, root, app_node) = (&mut *tree.trie, tree.root, tree.app_node);
    Ok(if kinds.calculated {
        if n_names != 1 {
            return Err(invalid(
                entry,
                "calculated_field cannot be chained with other mapping types",
            ));
        }
        let src = m
            .expression
            .as_deref()
            .ok_or_else(|| invalid(entry, "calculated_field needs an expression"))?;
        let e = expr::parse(src).map_err(|p| invalid(entry, format!("bad expression: {p}")))?;
        Source::Calculated(e)
    } else {
        let path = m
            .xml_path
            .as_deref()
            .ok_or_else(|| invalid(entry, "xml_path is required"))?;
        let attr = m
            .xml_attribute
            .as_deref()
            .ok_or_else(|| invalid(entry, "xml_attribute is required (values are attributes)"))?;
        if attr.trim().is_empty() {
            return Err(invalid(entry, "xml_attribute must not be empty"));
        }
        let parts = split_path(entry, path)?;
        let node = trie.insert(entry, &parts, root)?;
        trie.need_attr(node, attr);
        let row = row_node.unwrap_or(app_node);
        if kinds.curr_only {
            if trie.nodes[node].parent != Some(row) {
                return Err(invalid(
                    entry,
                    "curr_address_only needs an xml_path one element below the table's row element",
                ));
            }
            trie.need_attr(node, "address_tp_c");
            Source::CurrAddress {
                node,
                attr: attr.to_owned(),
            }
        } else {
            match row_node {
                Some(r) if r != node => {
                    return Err(invalid(entry, format!("xml_path must be the row element {} of a repeating table", path_of(trie, r))))
                }
                Some(_) => {}
                None if trie.is_ancestor(app_node, node) && node != app_node => {
                    return Err(invalid(entry, "an application-level table cannot map an element below the application element"))
                }
                None => {}
            }
            Source::Attr {
                node,
                attr: attr.to_owned(),
            }
        }
    })
}

/// Foreign key columns, appended to the child table with the parent's type.
fn append_foreign_keys(
    tables: &mut [Table],
    fk_of: &[Option<(String, usize)>],
) -> Result<(), ContractError> {
    for child in 0..tables.len() {
        if let Some((fk, ri)) = fk_of[child].clone() {
            let entry = format!("relationships[{ri}]");
            let parent = tables[child].parent.expect("set together with fk_of");
            let pcol = tables[parent]
                .columns
                .iter()
                .position(|c| c.name.as_str() == fk)
                .ok_or_else(|| {
                    invalid(
                        &entry,
                        format!(
                            "foreign_key_column '{fk}' is not a column of parent table '{}'",
                            tables[parent].name
                        ),
                    )
                })?;
            if tables[child].columns.iter().any(|c| c.name.as_str() == fk) {
                return Err(invalid(
                    &entry,
                    format!(
                        "foreign_key_column '{fk}' is also mapped on '{}'",
                        tables[child].name
                    ),
                ));
            }
            let ty = tables[parent].columns[pcol].ty;
            tables[child].columns.push(Column {
                name: Ident::new(&fk).map_err(|e| invalid(&entry, e.to_string()))?,
                ty,
                nullable: false,
                required: true,
                default: None,
                source: Source::ForeignKey { parent_col: pcol },
                transforms: vec![],
                identity: false,
            });
        }
    }

    Ok(())
}

/// Calculated fields may only read non-calculated columns of their own row.
fn check_calculated(tables: &[Table], calc: &[CalcColumn]) -> Result<(), ContractError> {
    for (t, c, name) in calc {
        if let Source::Calculated(e) = &tables[*t].columns[*c].source {
            let mut cols = Vec::new();
            e.columns(&mut cols);
            for col in cols {
                let target = tables[*t].columns.iter().find(|x| x.name.as_str() == col);
                match target {
                    None => {
                        return Err(invalid(
                            format!("{}.{name}", tables[*t].name),
                            format!("expression reads unknown column '{col}'"),
                        ))
                    }
                    Some(x) if matches!(x.source, Source::Calculated(_)) => {
                        return Err(invalid(
                            format!("{}.{name}", tables[*t].name),
                            format!("expression reads calculated column '{col}'"),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
    }

    Ok(())
}

/// Natural keys: every table names one, from its own columns.
fn apply_natural_keys(raw: &RawContract, tables: &mut [Table]) -> Result<(), ContractError> {
    for (name, _) in raw.table_keys.iter() {
        table_idx(&format!("table_keys.{name}"), name, tables)?;
    }
    for t in tables.iter_mut() {
        let entry = format!("table_keys.{}", t.name);
        let cols = raw
            .table_keys
            .get(t.name.as_str())
            .ok_or_else(|| invalid(&entry, "every target table needs a natural key"))?;
        if cols.is_empty() {
            return Err(invalid(&entry, "natural key must name at least one column"));
        }
        for c in cols {
            let idx = t
                .columns
                .iter()
                .position(|x| x.name.as_str() == c)
                .ok_or_else(|| invalid(&entry, format!("unknown column '{c}'")))?;
            if t.key.contains(&idx) {
                return Err(invalid(&entry, format!("column '{c}' listed twice")));
            }
            t.key.push(idx);
        }
        if t.columns.is_empty() {
            return Err(invalid(
                format!("table {}", t.name),
                "has no mapped columns",
            ));
        }
    }
    Ok(())
}

/// A table is shared (rows not per application) unless its natural key derives from the application key: the key
/// itself or a foreign key to such a column.
fn mark_shared(tables: &mut [Table], app_key: (usize, usize)) -> Result<(), ContractError> {
    let mut derived: Vec<Vec<bool>> = tables
        .iter()
        .map(|t| vec![false; t.columns.len()])
        .collect();
    derived[app_key.0][app_key.1] = true;
    for ti in 0..tables.len() {
        for ci in 0..tables[ti].columns.len() {
            if let (Source::ForeignKey { parent_col }, Some(p)) =
                (&tables[ti].columns[ci].source, tables[ti].parent)
            {
                if derived[p][*parent_col] {
                    derived[ti][ci] = true;
                }
            }
        }
    }
    for (ti, t) in tables.iter_mut().enumerate() {
        t.shared = !t.key.iter().any(|&k| derived[ti][k]);
    }
    if tables[app_key.0].shared {
        return Err(invalid(
            format!("table_keys.{}", tables[app_key.0].name),
            "the application table's natural key must contain the identity_insert column",
        ));
    }
    Ok(())
}

fn path_of(trie: &Trie, node: usize) -> String {
    let mut parts = Vec::new();
    let mut cur = Some(node);
    while let Some(n) = cur {
        parts.push(trie.nodes[n].name.clone());
        cur = trie.nodes[n].parent;
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

/// The natural keys the contract declares, checked on one document's rows by both mappers (a contract fact, so it
/// lives with the contract). Every table's natural key: no NULL in a key column, no two rows of one document with the same key.
pub(crate) fn check_keys(contract: &Contract, rows: &[Vec<Vec<Value>>]) -> Result<(), Failure> {
    for (ti, t_rows) in rows.iter().enumerate() {
        let table = &contract.tables[ti];
        for r in t_rows {
            if let Some(&k) = table.key.iter().find(|&&k| r[k].is_null()) {
                return Err(Failure::new(
                    Stage::Map,
                    format!(
                        "{}.{} (natural key) has no value",
                        table.name, table.columns[k].name
                    ),
                ));
            }
        }
        check_unique_keys(contract, ti, t_rows)?;
    }
    Ok(())
}

/// No two rows of one table (one document) with the same natural key.
pub(crate) fn check_unique_keys(
    contract: &Contract,
    ti: usize,
    rows: &[Vec<Value>],
) -> Result<(), Failure> {
    let table = &contract.tables[ti];
    if rows.len() < 2 {
        return Ok(());
    }
    let mut seen = HashSet::with_capacity(rows.len());
    for r in rows {
        let key: Vec<&Value> = table.key.iter().map(|&k| &r[k]).collect();
        if !seen.insert(key.clone()) {
            let cols: Vec<&str> = table
                .key
                .iter()
                .map(|&k| table.columns[k].name.as_str())
                .collect();
            let vals: Vec<String> = key.iter().map(|v| v.to_string()).collect();
            return Err(Failure::new(
                Stage::Map,
                format!(
                    "duplicate key ({}) = ({}) in {}",
                    cols.join(", "),
                    vals.join(", "),
                    table.name
                ),
            ));
        }
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_contract_loads() {
        let c = Contract::from_json(fixtures::CONTRACT_JSON).expect("project contract is valid");
        assert_eq!(c.tables.len(), 4);
        let names: Vec<_> = c
            .tables
            .iter()
            .map(|t| (t.name.as_str(), t.shared))
            .collect();
        assert_eq!(
            names,
            vec![
                ("app_base", false),
                ("app_contact_base", true),
                ("app_contact_address", true),
                ("app_contact_employment", true)
            ]
        );
        assert_eq!(
            c.node_path(c.app_node),
            "/Provenir/Request/CustData/application"
        );
    }

    fn with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<Contract, ContractError> {
        let mut v: serde_json::Value = serde_json::from_str(fixtures::CONTRACT_JSON).expect("json");
        edit(&mut v);
        Contract::from_json(&v.to_string())
    }

    #[test]
    fn refuses_bad_contracts_naming_the_entry() {
        let e = with(|v| v["mappings"][3]["mapping_type"] = "rot13".into())
            .expect_err("unsupported type");
        let msg = e.to_string();
        assert!(
            msg.contains("mappings[3]") && msg.contains("rot13"),
            "{msg}"
        );
        let e =
            with(|v| v["mappings"][0]["target_table"] = "nope".into()).expect_err("unknown table");
        assert!(e.to_string().contains("unknown table 'nope'"), "{e}");
        let e = with(|v| v["mappings"][1]["data_type"] = "blob".into()).expect_err("bad type");
        assert!(e.to_string().contains("mappings[1]"), "{e}");
        let e = with(|v| v["mappings"][2]["bogus"] = 1.into()).expect_err("unknown field");
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = with(|v| {
            v["table_keys"]
                .as_object_mut()
                .expect("obj")
                .remove("app_contact_address")
                .map(|_| ())
                .unwrap_or(())
        })
        .expect_err("missing key");
        assert!(
            e.to_string().contains("table_keys.app_contact_address"),
            "{e}"
        );
        let e = with(|v| v["mappings"][10]["expression"] = "CASE WHEN x > 1 THEN 'A' END".into())
            .expect_err("unknown column");
        assert!(e.to_string().contains("unknown column 'x'"), "{e}");
        let e =
            with(|v| v["mappings"][0]["target_column"] = "app id".into()).expect_err("bad ident");
        assert!(e.to_string().contains("not a valid identifier"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_at_every_level_and_only_bad_json_is_called_bad_json() {
        let e = with(|v| v["element_filtrering"] = serde_json::json!({})).expect_err("top level");
        assert!(
            matches!(e, ContractError::Invalid { .. })
                && e.to_string().contains("element_filtrering"),
            "{e}"
        );
        let e = with(|v| v["element_filtering"]["filter_rules"][0]["bogus"] = 1.into())
            .expect_err("filter rule");
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Contract::from_json("{ not json").expect_err("syntax");
        assert!(
            e.to_string().starts_with("contract is not valid JSON"),
            "{e}"
        );
    }

    /// The replaced system's two contracts, unmodified (../shared/seed/original; skipped with a reason where absent).
    #[test]
    fn xmlconversion_contracts_load_unmodified() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/seed/original/contracts");
        let dir = if dir.exists() {
            dir
        } else {
            std::path::Path::new("/work/shared/seed/original/contracts").to_path_buf()
        };
        if !dir.exists() {
            eprintln!("skipped: {} is absent (the replaced system's contracts are not part of the project)", dir.display());
            return;
        }
        for (file, tables) in [
            ("mapping_contract.json", 12),
            ("mapping_contract_rl.json", 16),
        ] {
            let c = Contract::from_file(&dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(c.real.is_some(), "{file}: XmlConversion semantics");
            assert_eq!(
                c.tables.len(),
                tables,
                "{file}: processing_log is not a target table"
            );
            assert!(
                c.tables.iter().all(|t| !t.key.is_empty()),
                "{file}: derived keys"
            );
        }
        let text = std::fs::read_to_string(dir.join("mapping_contract.json")).expect("readable");
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["mappings"][3]["mapping_type"] = serde_json::json!(["rot13"]);
        let e = Contract::from_json(&v.to_string()).expect_err("unsupported type");
        assert!(
            e.to_string().contains("mappings[3]") && e.to_string().contains("rot13"),
            "{e}"
        );
        v["mappings"][3]["mapping_type"] = serde_json::json!(["calculated_field"]);
        v["mappings"][3]["expression"] = "CASE WHEN a > 1 THEN LOWER(a) END".into();
        let e = Contract::from_json(&v.to_string()).expect_err("unsupported function");
        assert!(e.to_string().contains("LOWER"), "{e}");
    }
}
