//! SQLite error mapping: driver errors to the small `ErrorKind` set the retry policy understands.

use crate::store::{ErrorKind, StoreError};
use rusqlite::ErrorCode;

pub fn classify(op: &'static str, e: &rusqlite::Error) -> StoreError {
    let kind = match e {
        rusqlite::Error::SqliteFailure(_, Some(m)) if m.starts_with("no such table") => {
            ErrorKind::Missing
        }
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::ConstraintViolation => ErrorKind::Constraint,
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => ErrorKind::Transient,
            ErrorCode::SystemIoFailure | ErrorCode::CannotOpen | ErrorCode::OutOfMemory => {
                ErrorKind::Transient
            }
            _ => ErrorKind::Fatal,
        },
        _ => ErrorKind::Fatal,
    };
    StoreError::new(kind, op, e.to_string())
}

/// `map_err` helper: `.map_err(err("insert rows"))`.
pub fn err(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| classify(op, &e)
}
