//! The checker's SQLite reader, opened read-only, and the SQLite spelling of the checker's SQL (`SqliteSql`):
//! `"x"` quoting, no schemas, `CAST(… AS TEXT)`, `pragma_table_info` for the catalogue.

use super::{Dialect, Reader, SqlDialect};
use crate::check::CheckError;

/// SQLite's own check of the file's structure: one row `ok`, or one row per problem.
pub const SQLITE_INTEGRITY_CHECK: &str = "PRAGMA integrity_check";

/// SQLite, opened read-only so the checker cannot disturb the run it judges.
pub struct SqliteReader {
    conn: rusqlite::Connection,
}

impl SqliteReader {
    pub fn open(path: &std::path::Path) -> Result<Self, CheckError> {
        use rusqlite::OpenFlags;
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| {
            CheckError::Db(format!(
                "cannot open sqlite database {}: {e}",
                path.display()
            ))
        })?;
        // A processor may still hold a write lock for a moment after it is killed; wait instead of failing.
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| CheckError::Db(format!("cannot set busy timeout: {e}")))?;
        Ok(SqliteReader { conn })
    }
}

impl Reader for SqliteReader {
    fn storage_problems(&mut self) -> Result<Vec<String>, CheckError> {
        let rows = self.query_text(SQLITE_INTEGRITY_CHECK)?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .filter(|m| m != "ok")
            .collect())
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn query_text(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, CheckError> {
        let mut out = Vec::new();
        self.query_each(sql, &mut |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    fn query_each(
        &mut self,
        sql: &str,
        each: &mut dyn FnMut(Vec<Option<String>>) -> Result<(), CheckError>,
    ) -> Result<(), CheckError> {
        use rusqlite::types::ValueRef;
        let err = |e: rusqlite::Error| CheckError::Db(format!("query failed: {e}: {sql}"));
        let mut stmt = self.conn.prepare(sql).map_err(err)?;
        let n = stmt.column_count();
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            let mut vals = Vec::with_capacity(n);
            for i in 0..n {
                let v = match row.get_ref(i).map_err(err)? {
                    ValueRef::Null => None,
                    ValueRef::Integer(x) => Some(x.to_string()),
                    ValueRef::Real(x) => Some(x.to_string()),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        Some(String::from_utf8_lossy(t).into_owned())
                    }
                };
                vals.push(v);
            }
            each(vals)?;
        }
        Ok(())
    }
}

/// SQLite's SQL: ANSI quoting, one namespace (the schema is ignored), text by `CAST`.
pub(super) struct SqliteSql;

impl SqlDialect for SqliteSql {
    fn quote(&self, ident: &str) -> String {
        format!("\"{ident}\"")
    }
    fn name_literal(&self, ident: &str) -> String {
        format!("'{ident}'")
    }
    fn qualify(&self, _schema: &str, table: &str) -> String {
        self.quote(table)
    }
    fn cast_text(&self, expr: &str) -> String {
        format!("CAST({expr} AS TEXT)")
    }
    fn compared_columns(&self, _schema: &str, table: &str) -> String {
        format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid")
    }
    fn table_exists(&self, _schema: &str, table: &str) -> String {
        format!("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'")
    }
    fn column_exists(&self, _schema: &str, table: &str, column: &str) -> String {
        format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = '{column}'")
    }
}
