//! The rows one application maps to: what the mappers produce and the store writes. A neutral type, so the store
//! layer does not depend on the mapping code.

use crate::value::Value;

/// One application's rows: `rows[table][row][column]`, tables and columns in contract order.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedApp {
    pub app_id: i64,
    pub rows: Vec<Vec<Vec<Value>>>,
    /// Values the mapping truncated or coerced (dropped an unconvertible value, fell back to an enum default)
    /// rather than failing the document: the XmlConversion semantics do this; nothing is silently lost, this
    /// count is reported per application. Always 0 for Shredproof's own contract format, which fails instead.
    pub coerced: u32,
}

impl MappedApp {
    pub fn row_count(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }
}
