//! Read-only database access for the checker: one small `Reader` trait returning every value as text, one
//! implementation per backend, and every SQL statement the checker runs (named consts and format fns).
//! Must not write to the database or use processor code (except its connection-string parser and redactor, which
//! are not under judgement); identifiers are validated and quoted here, nowhere else.

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
    /// Hands each row of `sql` to `row` as it arrives, so a query over a whole table needs memory for one row, not
    /// for the table. Every selected column must be text (the `Sql` builders cast them). The default reads the
    /// whole result first: correct, but not bounded; readers override it to stream.
    fn query_each(
        &mut self,
        sql: &str,
        row: &mut dyn FnMut(Vec<Option<String>>) -> Result<(), CheckError>,
    ) -> Result<(), CheckError> {
        for r in self.query_text(sql)? {
            row(r)?;
        }
        Ok(())
    }
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

/// Hides a password in a URL before it goes into an error message: the processor's one redactor, so that every
/// program masks the same part (connection-string parsing is not part of what the checker judges).
fn redact(url: &str) -> String {
    processor::store::url::redact_url(url)
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

/// PostgreSQL over the simple-query protocol, which returns every value in its text form.
pub struct PgReader {
    client: postgres::Client,
}

impl PgReader {
    pub fn connect(url: &str) -> Result<Self, CheckError> {
        let pg =
            processor::store::url::PgUrl::parse(url).map_err(|e| CheckError::Db(e.to_string()))?;
        let mut client = pg.connect().map_err(|e| {
            CheckError::Db(format!(
                "cannot connect to {pg}: {}",
                processor::store::postgres::error::with_causes(&e)
            ))
        })?;
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

    /// The extended protocol's row stream (rows are read off the socket as they are handed on); the columns are
    /// `::text` casts, so each arrives as text.
    fn query_each(
        &mut self,
        sql: &str,
        each: &mut dyn FnMut(Vec<Option<String>>) -> Result<(), CheckError>,
    ) -> Result<(), CheckError> {
        use postgres::fallible_iterator::FallibleIterator;
        let err = |e: postgres::Error| {
            CheckError::Db(format!(
                "query failed: {}: {sql}",
                processor::store::postgres::error::with_causes(&e)
            ))
        };
        let none: [&(dyn postgres::types::ToSql + Sync); 0] = [];
        let mut rows = self.client.query_raw(sql, none).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let mut vals = Vec::with_capacity(r.len());
            for i in 0..r.len() {
                vals.push(
                    r.try_get::<_, Option<&str>>(i)
                        .map_err(err)?
                        .map(str::to_owned),
                );
            }
            each(vals)?;
        }
        Ok(())
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

    /// One keyset page of the source: `app_id > after`, ascending, at most `limit` rows.
    pub fn source_page(
        &self,
        table: &str,
        column: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<String, CheckError> {
        // Qualified names throughout: PostgreSQL resolves a bare `ORDER BY app_id` to the output column of the same
        // name, which is the *text* cast, and pages ordered as text skip and repeat applications.
        let id = format!("s.{}", self.quote("app_id")?);
        let filter = match after {
            Some(a) => format!(" WHERE {id} > {a}"),
            None => String::new(),
        };
        let cols = format!(
            "{}, {}",
            self.cast(&id),
            self.cast(&format!("s.{}", self.quote(column)?))
        );
        let from = format!("{} s", self.table(table)?);
        Ok(match self.dialect {
            Dialect::Sqlite | Dialect::Postgres => {
                format!("SELECT {cols} FROM {from}{filter} ORDER BY {id} LIMIT {limit}")
            }
            Dialect::Mssql => {
                format!("SELECT TOP ({limit}) {cols} FROM {from}{filter} ORDER BY {id}")
            }
        })
    }

    /// `WHERE col > lo AND col <= hi`, each bound only when given.
    fn range_filter(
        &self,
        col: &str,
        (lo, hi): (Option<i64>, Option<i64>),
    ) -> Result<String, CheckError> {
        let c = self.quote(col)?;
        let mut parts = Vec::new();
        if let Some(l) = lo {
            parts.push(format!("{c} > {l}"));
        }
        if let Some(h) = hi {
            parts.push(format!("{c} <= {h}"));
        }
        Ok(if parts.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", parts.join(" AND "))
        })
    }

    /// The log rows of an app_id range (see `log_rows`).
    pub fn log_rows_in(
        &self,
        with_fence: bool,
        range: (Option<i64>, Option<i64>),
    ) -> Result<String, CheckError> {
        Ok(format!(
            "{}{}",
            self.log_rows(with_fence)?,
            self.range_filter("app_id", range)?
        ))
    }

    /// The rows of a target table whose app key column lies in an app_id range.
    pub fn rows_in(
        &self,
        table: &str,
        columns: &[String],
        app_key: &str,
        range: (Option<i64>, Option<i64>),
    ) -> Result<String, CheckError> {
        Ok(format!(
            "{}{}",
            self.all_rows(table, columns)?,
            self.range_filter(app_key, range)?
        ))
    }

    /// A value read from the database, as a string literal (`'` doubled; `N'…'` on SQL Server). The server
    /// converts it to the column's type, so the comparison can use the column's index.
    fn literal(&self, v: &str) -> String {
        let q = v.replace('\'', "''");
        match self.dialect {
            Dialect::Sqlite | Dialect::Postgres => format!("'{q}'"),
            Dialect::Mssql => format!("N'{q}'"),
        }
    }

    /// The rows of a target table whose `column` is one of `values` (values as read back from the database).
    pub fn rows_with(
        &self,
        table: &str,
        columns: &[String],
        column: &str,
        values: &[String],
    ) -> Result<String, CheckError> {
        let list: Vec<String> = values.iter().map(|v| self.literal(v)).collect();
        Ok(format!(
            "{} WHERE {} IN ({})",
            self.all_rows(table, columns)?,
            self.quote(column)?,
            list.join(", ")
        ))
    }

    /// Every row of a table (its columns as text), then its owner: its app key column, or the smallest app key of
    /// the parent rows its foreign key names, up the chain (correlated subqueries, each an index lookup on the
    /// parent's natural key).
    pub fn rows_with_owner(
        &self,
        contract: &super::RefContract,
        t: &super::RefTable,
    ) -> Result<String, CheckError> {
        let cols = t
            .columns
            .iter()
            .map(|c| Ok(self.cast(&format!("t0.{}", self.quote(c)?))))
            .collect::<Result<Vec<_>, CheckError>>()?;
        let owner = self.owner_expr(contract, t, "t0", 1)?;
        Ok(format!(
            "SELECT {}, {} FROM {} t0",
            cols.join(", "),
            self.cast(&owner),
            self.table(&t.name)?
        ))
    }

    fn owner_expr(
        &self,
        contract: &super::RefContract,
        t: &super::RefTable,
        alias: &str,
        depth: usize,
    ) -> Result<String, CheckError> {
        if t.columns.contains(&contract.app_key) {
            return Ok(format!("{alias}.{}", self.quote(&contract.app_key)?));
        }
        let (Some(link), true) = (&t.parent, depth < 8) else {
            return Ok("NULL".to_owned());
        };
        let Some(parent) = contract.table(&link.table) else {
            return Ok("NULL".to_owned());
        };
        let pa = format!("t{depth}");
        let fk = self.quote(&link.fk_column)?;
        let inner = self.owner_expr(contract, parent, &pa, depth + 1)?;
        let from = format!(
            "{} {pa} WHERE {pa}.{fk} = {alias}.{fk}",
            self.table(&parent.name)?
        );
        Ok(if parent.columns.contains(&contract.app_key) {
            format!("(SELECT MIN({inner}) FROM {from})")
        } else {
            // An aggregate over a subquery is refused by SQL Server: aggregate a derived table instead.
            format!("(SELECT MIN(s{depth}.o) FROM (SELECT {inner} AS o FROM {from}) s{depth})")
        })
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
