//! PostgreSQL error mapping: SQLSTATE classes to the small `ErrorKind` set the retry policy understands.

use crate::store::{ErrorKind, StoreError};

pub fn classify(op: &'static str, e: &postgres::Error) -> StoreError {
    let kind = match e.code() {
        Some(code) => {
            let c = code.code();
            if c.starts_with("23") || c.starts_with("22") {
                // Integrity constraint violation, data exception: the document's rows are at fault.
                ErrorKind::Constraint
            } else if c == "40001" || c == "40P01" || c == "55P03" {
                // Serialization failure, deadlock victim, lock not available.
                ErrorKind::Conflict
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
        None => e.to_string(),
    };
    StoreError::new(kind, op, message)
}

pub fn err(op: &'static str) -> impl Fn(postgres::Error) -> StoreError {
    move |e| classify(op, &e)
}
