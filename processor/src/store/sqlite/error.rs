//! SQLite error mapping: driver errors to the small `ErrorKind` set the retry policy understands.

use crate::store::{ErrorKind, StoreError};
use rusqlite::ErrorCode;

pub fn classify(op: &'static str, e: rusqlite::Error) -> StoreError {
    let kind = match &e {
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
    StoreError::new(kind, op, e.to_string()).with_cause(e)
}

/// `map_err` helper: `.map_err(err("insert rows"))`.
pub fn err(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| classify(op, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_classified_error_keeps_its_driver_error_and_prints_it_once() {
        let db = rusqlite::Connection::open_in_memory().expect("in-memory sqlite");
        db.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
            .expect("setup");
        let e = db
            .execute("INSERT INTO t VALUES (1)", [])
            .map_err(err("insert rows"))
            .expect_err("a duplicate key");
        assert_eq!(e.kind, ErrorKind::Constraint);
        let driver = e
            .cause()
            .and_then(|c| c.downcast_ref::<rusqlite::Error>())
            .expect("the rusqlite error is kept");
        assert_eq!(
            driver.sqlite_error_code(),
            Some(ErrorCode::ConstraintViolation)
        );
        // The chain printer shows the driver's text once: it is in the message, and not a `source` as well.
        let shown = format!("{:#}", anyhow::Error::from(e.clone()));
        let text = driver.to_string();
        assert_eq!(shown.matches(&text).count(), 1, "{shown}");
        assert_eq!(shown, format!("insert rows: {text}"));
    }
}
