//! Read-only database access for the checker: one small `Reader` trait returning every value as text, one
//! implementation per backend, and every SQL statement the checker runs (named consts and format fns).
//! Must not write to the database or use processor code; identifiers are validated and quoted here, nowhere else.

use super::CheckError;

/// Which SQL dialect a reader speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    Mssql,
}

/// A read-only connection that returns every value as canonical text (`None` for SQL NULL).
pub trait Reader {
    fn dialect(&self) -> Dialect;
    fn query_text(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, CheckError>;
}

/// Opens `sqlite:PATH` read-only or connects to `postgres://…`.
pub fn open_reader(url: &str) -> Result<Box<dyn Reader>, CheckError> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        return Ok(Box::new(SqliteReader::open(std::path::Path::new(path))?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(PgReader::connect(url)?));
    }
    if url.starts_with("mssql://") || url.to_ascii_lowercase().contains("server=") {
        return Err(CheckError::Unsupported(
            "the checker cannot read sql server databases yet".into(),
        ));
    }
    Err(CheckError::Unsupported(format!(
        "unknown database url scheme in '{}'",
        redact(url)
    )))
}

/// Hides a password in a URL before it goes into an error message.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

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
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn query_text(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, CheckError> {
        use rusqlite::types::ValueRef;
        let err = |e: rusqlite::Error| CheckError::Db(format!("query failed: {e}: {sql}"));
        let mut stmt = self.conn.prepare(sql).map_err(err)?;
        let n = stmt.column_count();
        let mut rows = stmt.query([]).map_err(err)?;
        let mut out = Vec::new();
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
            out.push(vals);
        }
        Ok(out)
    }
}

/// PostgreSQL over the simple-query protocol, which returns every value in its text form.
pub struct PgReader {
    client: postgres::Client,
}

impl PgReader {
    pub fn connect(url: &str) -> Result<Self, CheckError> {
        let mut client = postgres::Client::connect(url, postgres::NoTls)
            .map_err(|e| CheckError::Db(format!("cannot connect to {}: {e}", redact(url))))?;
        // Read-only at the session level: a bug here cannot change the database under judgement.
        client
            .batch_execute(PG_READ_ONLY)
            .map_err(|e| CheckError::Db(format!("cannot make the session read-only: {e}")))?;
        Ok(PgReader { client })
    }
}

impl Reader for PgReader {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn query_text(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, CheckError> {
        let msgs = self
            .client
            .simple_query(sql)
            .map_err(|e| CheckError::Db(format!("query failed: {e}: {sql}")))?;
        let mut out = Vec::new();
        for m in msgs {
            if let postgres::SimpleQueryMessage::Row(r) = m {
                out.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect());
            }
        }
        Ok(out)
    }
}

const PG_READ_ONLY: &str = "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY";

// ---------------------------------------------------------------------------------------------------------------
// SQL text. Identifiers come from the contract: validated, then double-quoted.

/// `^[A-Za-z_][A-Za-z0-9_]{0,62}$`.
pub fn valid_ident(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn ident(s: &str) -> Result<String, CheckError> {
    if valid_ident(s) {
        Ok(format!("\"{s}\""))
    } else {
        Err(CheckError::Contract(format!("invalid identifier '{s}'")))
    }
}

/// Table and schema names for one database.
#[derive(Debug, Clone)]
pub struct Sql {
    dialect: Dialect,
    schema: String,
}

impl Sql {
    pub fn new(dialect: Dialect, schema: &str) -> Result<Self, CheckError> {
        ident(schema)?;
        Ok(Sql {
            dialect,
            schema: schema.to_owned(),
        })
    }

    /// A table name, schema-qualified where the backend has schemas.
    pub fn table(&self, name: &str) -> Result<String, CheckError> {
        let t = ident(name)?;
        Ok(match self.dialect {
            Dialect::Sqlite => t,
            Dialect::Postgres | Dialect::Mssql => format!("\"{}\".{t}", self.schema),
        })
    }

    /// A column read as canonical text.
    pub fn text(&self, col: &str) -> Result<String, CheckError> {
        let c = ident(col)?;
        Ok(self.cast(&c))
    }

    fn cast(&self, expr: &str) -> String {
        match self.dialect {
            Dialect::Sqlite => format!("CAST({expr} AS TEXT)"),
            Dialect::Postgres => format!("{expr}::text"),
            Dialect::Mssql => format!("CAST({expr} AS NVARCHAR(MAX))"),
        }
    }

    /// `SELECT app_id, xml FROM source ORDER BY app_id`.
    pub fn source(&self, table: &str, column: &str) -> Result<String, CheckError> {
        Ok(format!(
            "SELECT {}, {} FROM {} ORDER BY {}",
            self.text("app_id")?,
            self.text(column)?,
            self.table(table)?,
            ident("app_id")?
        ))
    }

    /// Every processing_log row: app_id, status, failure_reason, session_id, fence.
    pub fn log_rows(&self, with_fence: bool) -> Result<String, CheckError> {
        let fence = if with_fence {
            self.text("fence")?
        } else {
            "NULL".to_owned()
        };
        Ok(format!(
            "SELECT {}, {}, {}, {}, {fence} FROM {}",
            self.text("app_id")?,
            self.text("status")?,
            self.text("failure_reason")?,
            self.text("session_id")?,
            self.table(LOG_TABLE)?
        ))
    }

    /// Applications with more than one log row, counted by content (no reliance on constraints).
    pub fn log_duplicates(&self) -> Result<String, CheckError> {
        let id = ident("app_id")?;
        Ok(format!(
            "SELECT {}, {} FROM {} GROUP BY {id} HAVING COUNT(*) > 1",
            self.cast(&id),
            self.cast("COUNT(*)"),
            self.table(LOG_TABLE)?
        ))
    }

    /// Every row of a target table, the given columns as text, in the given order.
    pub fn all_rows(&self, table: &str, columns: &[String]) -> Result<String, CheckError> {
        let cols = columns
            .iter()
            .map(|c| self.text(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(format!(
            "SELECT {} FROM {}",
            cols.join(", "),
            self.table(table)?
        ))
    }

    /// Natural keys occurring more than once: key columns as text, then the count.
    pub fn key_duplicates(&self, table: &str, key: &[String]) -> Result<String, CheckError> {
        let raw = key
            .iter()
            .map(|c| ident(c))
            .collect::<Result<Vec<_>, _>>()?;
        let cols: Vec<String> = raw.iter().map(|c| self.cast(c)).collect();
        Ok(format!(
            "SELECT {}, {} FROM {} GROUP BY {} HAVING COUNT(*) > 1",
            cols.join(", "),
            self.cast("COUNT(*)"),
            self.table(table)?,
            raw.join(", ")
        ))
    }

    /// Row count of a table.
    pub fn count(&self, table: &str) -> Result<String, CheckError> {
        Ok(format!(
            "SELECT {} FROM {}",
            self.cast("COUNT(*)"),
            self.table(table)?
        ))
    }

    /// Log rows with a fence, joined to their claim: app_id, session_id, log fence, claim owner, claim fence.
    pub fn fenced_log_vs_claim(&self) -> Result<String, CheckError> {
        Ok(format!(
            "SELECT {}, {}, {}, {}, {} FROM {} l LEFT JOIN {} c ON c.{id} = l.{id} WHERE l.{fence} IS NOT NULL",
            self.cast("l.\"app_id\""),
            self.cast("l.\"session_id\""),
            self.cast("l.\"fence\""),
            self.cast("c.\"owner\""),
            self.cast("c.\"fence\""),
            self.table(LOG_TABLE)?,
            self.table(CLAIM_TABLE)?,
            id = ident("app_id")?,
            fence = ident("fence")?,
        ))
    }

    /// One row with a count > 0 when the table exists. Names are validated identifiers, safe as literals.
    pub fn table_exists(&self, table: &str) -> Result<String, CheckError> {
        ident(table)?;
        Ok(match self.dialect {
            Dialect::Sqlite => format!("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'"),
            Dialect::Postgres | Dialect::Mssql => format!(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{}' AND table_name = '{table}'",
                self.schema
            ),
        })
    }

    /// One row with a count > 0 when the column exists.
    pub fn column_exists(&self, table: &str, column: &str) -> Result<String, CheckError> {
        ident(table)?;
        ident(column)?;
        Ok(match self.dialect {
            Dialect::Sqlite => format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = '{column}'"),
            Dialect::Postgres | Dialect::Mssql => format!(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = '{}' AND table_name = '{table}' \
                 AND column_name = '{column}'",
                self.schema
            ),
        })
    }
}

pub const LOG_TABLE: &str = "processing_log";
pub const CLAIM_TABLE: &str = "processing_claim";

/// Runs a `*_exists` query and reads its count.
pub fn exists(reader: &mut dyn Reader, sql: &str) -> Result<bool, CheckError> {
    let rows = reader.query_text(sql)?;
    Ok(rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0)
        > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_validated_and_quoted() {
        assert!(valid_ident("app_base"));
        assert!(valid_ident("_x9"));
        assert!(!valid_ident("9x"));
        assert!(!valid_ident("a-b"));
        assert!(!valid_ident("a\"b"));
        assert!(!valid_ident(""));
        assert!(!valid_ident(&"a".repeat(64)));
        let pg = Sql::new(Dialect::Postgres, "shredproof").expect("schema ok");
        assert_eq!(
            pg.table("app_base").expect("ok"),
            "\"shredproof\".\"app_base\""
        );
        assert_eq!(pg.text("risk_band").expect("ok"), "\"risk_band\"::text");
        let lite = Sql::new(Dialect::Sqlite, "shredproof").expect("schema ok");
        assert_eq!(lite.table("app_base").expect("ok"), "\"app_base\"");
        assert!(lite.table("x; DROP TABLE y").is_err());
    }

    #[test]
    fn mssql_is_unsupported_for_now() {
        assert!(matches!(
            open_reader("mssql://sa:pw@localhost/db"),
            Err(CheckError::Unsupported(_))
        ));
        let msg = open_reader("mysql://u:secret@h/db")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!msg.contains("secret"), "{msg}");
    }
}
