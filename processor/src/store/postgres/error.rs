//! PostgreSQL error mapping: SQLSTATE classes to the small `ErrorKind` set the retry policy understands.

use crate::store::{ErrorKind, StoreError};

pub fn classify(op: &'static str, e: postgres::Error) -> StoreError {
    let kind = match e.code() {
        Some(code) => {
            let c = code.code();
            if c.starts_with("23") || c.starts_with("22") {
                // Integrity constraint violation, data exception: the document's rows are at fault.
                ErrorKind::Constraint
            } else if c == "40001" || c == "40P01" || c == "55P03" {
                // Serialization failure, deadlock victim, lock not available.
                ErrorKind::Conflict
            } else if c == "42P01" || c == "3F000" {
                // Undefined table, undefined schema: never initialised.
                ErrorKind::Missing
            } else if c.starts_with("08") || c.starts_with("57P") || c == "53300" {
                // Connection exception, operator intervention (shutdown, restart), too many connections.
                ErrorKind::Transient
            } else {
                ErrorKind::Fatal
            }
        }
        // No SQLSTATE: the connection itself failed (reset, closed, I/O).
        None => ErrorKind::Transient,
    };
    // The Display of a db error is terse; the detail names the key that collided, which is what a user needs.
    let message = match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_owned(),
        },
        // The driver's own text is terse ("error connecting to server"); the cause ("Connection refused") is in
        // its source chain.
        None => with_causes(&e),
    };
    StoreError::new(kind, op, message).with_cause(e)
}

/// An error's message followed by each of its causes: `a: b: c`, a cause repeating its parent's text omitted.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !out.ends_with(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = c.source();
    }
    out
}

pub fn err(op: &'static str) -> impl Fn(postgres::Error) -> StoreError {
    move |e| classify(op, e)
}
