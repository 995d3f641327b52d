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

/// SQLite's own check of the file's structure: one row `ok`, or one row per problem.
pub const SQLITE_INTEGRITY_CHECK: &str = "PRAGMA integrity_check";

/// A read-only connection that returns every value as canonical text (`None` for SQL NULL).
pub trait Reader {
    fn dialect(&self) -> Dialect;
    fn query_text(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, CheckError>;
}

/// Opens `sqlite:PATH` read-only, or connects to `postgres://…`, `mssql://…` / `sqlserver://…` or an ADO.NET
/// connection string (`Server=…;Database=…;User Id=…;Password=…`).
pub fn open_reader(url: &str) -> Result<Box<dyn Reader>, CheckError> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        return Ok(Box::new(SqliteReader::open(std::path::Path::new(path))?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(PgReader::connect(url)?));
    }
    if mssql::is_mssql_url(url) {
        return Ok(Box::new(MssqlReader::connect(url)?));
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

pub use mssql::MssqlReader;

mod mssql;

// ---------------------------------------------------------------------------------------------------------------
// SQL text. Identifiers come from the contract: validated, then quoted per dialect (`"x"`, SQL Server `[x]`).
//
// SQL Server values are selected as they are, not CAST to text: `MssqlReader` renders each value from the type the
// server sends with it (DECIMAL at its scale, DATE/DATETIME2 in ISO form, BIT as 0/1). A server-side
// `CAST(… AS NVARCHAR)` would give canonical text for the types the processor creates, but a locale style
// (`Jan  1 2024 12:00AM`) for a legacy DATETIME column of a replaced schema; the wire type is exact for both.

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

    /// A validated identifier, quoted for this dialect.
    fn quote(&self, s: &str) -> Result<String, CheckError> {
        let q = ident(s)?;
        Ok(match self.dialect {
            Dialect::Sqlite | Dialect::Postgres => q,
            Dialect::Mssql => format!("[{s}]"),
        })
    }

    /// A string literal holding a validated identifier (no quotes inside, so nothing to escape).
    fn name_literal(&self, s: &str) -> Result<String, CheckError> {
        ident(s)?;
        Ok(match self.dialect {
            Dialect::Sqlite | Dialect::Postgres => format!("'{s}'"),
            Dialect::Mssql => format!("N'{s}'"),
        })
    }

    /// A table name, schema-qualified where the backend has schemas.
    pub fn table(&self, name: &str) -> Result<String, CheckError> {
        let t = self.quote(name)?;
        Ok(match self.dialect {
            Dialect::Sqlite => t,
            Dialect::Postgres | Dialect::Mssql => format!("{}.{t}", self.quote(&self.schema)?),
        })
    }

    /// A column read as canonical text.
    pub fn text(&self, col: &str) -> Result<String, CheckError> {
        let c = self.quote(col)?;
        Ok(self.cast(&c))
    }

    fn cast(&self, expr: &str) -> String {
        match self.dialect {
            Dialect::Sqlite => format!("CAST({expr} AS TEXT)"),
            Dialect::Postgres => format!("{expr}::text"),
            // Typed on the wire, rendered canonically by `MssqlReader` (see the note above).
            Dialect::Mssql => expr.to_owned(),
        }
    }

    /// `COUNT(*)`; `COUNT_BIG(*)` on SQL Server, whose `COUNT` is a 32-bit INT.
    fn count_all(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite | Dialect::Postgres => "COUNT(*)",
            Dialect::Mssql => "COUNT_BIG(*)",
        }
    }

    /// `SELECT app_id, xml FROM source ORDER BY app_id`.
    pub fn source(&self, table: &str, column: &str) -> Result<String, CheckError> {
        Ok(format!(
            "SELECT {}, {} FROM {} ORDER BY {}",
            self.text("app_id")?,
            self.text(column)?,
            self.table(table)?,
            self.quote("app_id")?
        ))
    }

    /// `SELECT app_id FROM source ORDER BY app_id`: the applications, without their documents.
    pub fn source_ids(&self, table: &str) -> Result<String, CheckError> {
        Ok(format!(
            "SELECT {} FROM {} ORDER BY {}",
            self.text("app_id")?,
            self.table(table)?,
            self.quote("app_id")?
        ))
    }

    /// A table's column names in declaration order, without the columns the database fills in itself (identity,
    /// serial): their values differ between two runs of the same documents and are no mapping's output.
    pub fn compared_columns(&self, table: &str) -> Result<String, CheckError> {
        ident(table)?;
        Ok(match self.dialect {
            Dialect::Sqlite => format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
            Dialect::Postgres => format!(
                "SELECT column_name::text FROM information_schema.columns WHERE table_schema = '{}' \
                 AND table_name = '{table}' AND is_identity = 'NO' AND COALESCE(column_default, '') NOT LIKE 'nextval(%' \
                 ORDER BY ordinal_position",
                self.schema
            ),
            Dialect::Mssql => format!(
                "SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = {s} AND TABLE_NAME = {t} \
                 AND COLUMNPROPERTY(OBJECT_ID(QUOTENAME({s}) + '.' + QUOTENAME({t})), COLUMN_NAME, 'IsIdentity') = 0 \
                 ORDER BY ORDINAL_POSITION",
                s = self.name_literal(&self.schema)?,
                t = self.name_literal(table)?
            ),
        })
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
        let id = self.quote("app_id")?;
        let n = self.count_all();
        Ok(format!(
            "SELECT {}, {} FROM {} GROUP BY {id} HAVING {n} > 1",
            self.cast(&id),
            self.cast(n),
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
            .map(|c| self.quote(c))
            .collect::<Result<Vec<_>, _>>()?;
        let cols: Vec<String> = raw.iter().map(|c| self.cast(c)).collect();
        let n = self.count_all();
        Ok(format!(
            "SELECT {}, {} FROM {} GROUP BY {} HAVING {n} > 1",
            cols.join(", "),
            self.cast(n),
            self.table(table)?,
            raw.join(", ")
        ))
    }

    /// Row count of a table.
    pub fn count(&self, table: &str) -> Result<String, CheckError> {
        Ok(format!(
            "SELECT {} FROM {}",
            self.cast(self.count_all()),
            self.table(table)?
        ))
    }

    /// Log rows with a fence, joined to their claim: app_id, session_id, log fence, claim owner, claim fence.
    pub fn fenced_log_vs_claim(&self) -> Result<String, CheckError> {
        Ok(format!(
            "SELECT {}, {}, {}, {}, {} FROM {} l LEFT JOIN {} c ON c.{id} = l.{id} WHERE l.{fence} IS NOT NULL",
            self.cast(&format!("l.{}", self.quote("app_id")?)),
            self.cast(&format!("l.{}", self.quote("session_id")?)),
            self.cast(&format!("l.{}", self.quote("fence")?)),
            self.cast(&format!("c.{}", self.quote("owner")?)),
            self.cast(&format!("c.{}", self.quote("fence")?)),
            self.table(LOG_TABLE)?,
            self.table(CLAIM_TABLE)?,
            id = self.quote("app_id")?,
            fence = self.quote("fence")?,
        ))
    }

    /// One row with a count > 0 when the table exists. Names are validated identifiers, safe as literals.
    pub fn table_exists(&self, table: &str) -> Result<String, CheckError> {
        ident(table)?;
        Ok(match self.dialect {
            Dialect::Sqlite => format!("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'"),
            Dialect::Postgres => format!(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{}' AND table_name = '{table}'",
                self.schema
            ),
            // Upper-case view names: they resolve under a case-sensitive server collation too.
            Dialect::Mssql => format!(
                "SELECT COUNT(*) FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
                self.name_literal(&self.schema)?,
                self.name_literal(table)?
            ),
        })
    }

    /// One row with a count > 0 when the column exists.
    pub fn column_exists(&self, table: &str, column: &str) -> Result<String, CheckError> {
        ident(table)?;
        ident(column)?;
        Ok(match self.dialect {
            Dialect::Sqlite => format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = '{column}'"),
            Dialect::Postgres => format!(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = '{}' AND table_name = '{table}' \
                 AND column_name = '{column}'",
                self.schema
            ),
            Dialect::Mssql => format!(
                "SELECT COUNT(*) FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} \
                 AND COLUMN_NAME = {}",
                self.name_literal(&self.schema)?,
                self.name_literal(table)?,
                self.name_literal(column)?
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
    fn unknown_schemes_are_refused_without_the_password() {
        let msg = open_reader("mysql://u:secret@h/db")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("unknown database url scheme"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");
    }

    #[test]
    fn sql_server_urls_are_recognised_and_fail_cleanly_without_a_server() {
        // Port 1 on loopback refuses at once: a Db error, no password in it, never Unsupported.
        for url in [
            "mssql://sa:TopSecret9@127.0.0.1:1/db?connect_timeout_secs=3",
            "Server=tcp:127.0.0.1,1;Database=db;User Id=sa;Password=TopSecret9;Connect Timeout=3",
        ] {
            match open_reader(url) {
                Ok(_) => panic!("connected to port 1"),
                Err(CheckError::Db(m)) => {
                    assert!(!m.contains("TopSecret9"), "{m}");
                    assert!(m.contains("127.0.0.1"), "{m}");
                }
                Err(e) => panic!("expected a database error, got {e}"),
            }
        }
    }

    /// The exact T-SQL the checker sends to SQL Server: bracket quoting, schema-qualified names, N'' literals,
    /// COUNT_BIG, and values selected bare (typed on the wire, rendered canonically by `MssqlReader`).
    #[test]
    fn mssql_statements() {
        let ms = Sql::new(Dialect::Mssql, "shredproof").expect("schema ok");
        assert_eq!(ms.table("app_base").expect("ok"), "[shredproof].[app_base]");
        assert_eq!(ms.text("risk_band").expect("ok"), "[risk_band]");
        assert!(ms.table("x]; DROP TABLE y; --").is_err());
        assert!(Sql::new(Dialect::Mssql, "dbo]").is_err());
        assert_eq!(
            ms.source("app_xml", "xml").expect("ok"),
            "SELECT [app_id], [xml] FROM [shredproof].[app_xml] ORDER BY [app_id]"
        );
        assert_eq!(
            ms.log_rows(true).expect("ok"),
            "SELECT [app_id], [status], [failure_reason], [session_id], [fence] FROM [shredproof].[processing_log]"
        );
        assert_eq!(
            ms.log_rows(false).expect("ok"),
            "SELECT [app_id], [status], [failure_reason], [session_id], NULL FROM [shredproof].[processing_log]"
        );
        assert_eq!(
            ms.log_duplicates().expect("ok"),
            "SELECT [app_id], COUNT_BIG(*) FROM [shredproof].[processing_log] GROUP BY [app_id] HAVING COUNT_BIG(*) > 1"
        );
        let cols = vec![
            "con_id".to_owned(),
            "birth_date".to_owned(),
            "income".to_owned(),
        ];
        assert_eq!(
            ms.all_rows("app_contact_base", &cols).expect("ok"),
            "SELECT [con_id], [birth_date], [income] FROM [shredproof].[app_contact_base]"
        );
        assert_eq!(
            ms.key_duplicates("app_contact_address", &["con_id".to_owned(), "address_tp_c".to_owned()])
                .expect("ok"),
            "SELECT [con_id], [address_tp_c], COUNT_BIG(*) FROM [shredproof].[app_contact_address] \
             GROUP BY [con_id], [address_tp_c] HAVING COUNT_BIG(*) > 1"
        );
        assert_eq!(
            ms.count("app_base").expect("ok"),
            "SELECT COUNT_BIG(*) FROM [shredproof].[app_base]"
        );
        assert_eq!(
            ms.fenced_log_vs_claim().expect("ok"),
            "SELECT l.[app_id], l.[session_id], l.[fence], c.[owner], c.[fence] FROM [shredproof].[processing_log] l \
             LEFT JOIN [shredproof].[processing_claim] c ON c.[app_id] = l.[app_id] WHERE l.[fence] IS NOT NULL"
        );
        assert_eq!(
            ms.table_exists("processing_claim").expect("ok"),
            "SELECT COUNT(*) FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = N'shredproof' \
             AND TABLE_NAME = N'processing_claim'"
        );
        assert_eq!(
            ms.column_exists("processing_log", "fence").expect("ok"),
            "SELECT COUNT(*) FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = N'shredproof' \
             AND TABLE_NAME = N'processing_log' AND COLUMN_NAME = N'fence'"
        );
        assert!(ms.column_exists("processing_log", "fence'--").is_err());
        // No ANSI double quotes anywhere in T-SQL: they depend on QUOTED_IDENTIFIER.
        for q in [
            ms.source("app_xml", "xml").expect("ok"),
            ms.fenced_log_vs_claim().expect("ok"),
            ms.key_duplicates("t", &["a".to_owned()]).expect("ok"),
        ] {
            assert!(!q.contains('"'), "{q}");
        }
        // The other dialects are unchanged.
        let pg = Sql::new(Dialect::Postgres, "shredproof").expect("schema ok");
        assert_eq!(
            pg.fenced_log_vs_claim().expect("ok"),
            "SELECT l.\"app_id\"::text, l.\"session_id\"::text, l.\"fence\"::text, c.\"owner\"::text, \
             c.\"fence\"::text FROM \"shredproof\".\"processing_log\" l LEFT JOIN \"shredproof\".\"processing_claim\" c \
             ON c.\"app_id\" = l.\"app_id\" WHERE l.\"fence\" IS NOT NULL"
        );
        assert_eq!(
            pg.count("app_base").expect("ok"),
            "SELECT COUNT(*)::text FROM \"shredproof\".\"app_base\""
        );
    }
}
