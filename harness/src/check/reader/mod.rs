//! Read-only database access for the checker: one small `Reader` trait returning every value as text, one
//! folder file per backend (`sqlite.rs`, `postgres.rs`, `mssql.rs`: its reader and its spelling of the SQL, a
//! `SqlDialect`), and every SQL statement the checker runs, built here by `Sql` from those spellings.
//! Must not write to the database or use processor code (except its connection-string parser and redactor, which
//! are not under judgement); identifiers are validated here, nowhere else, then quoted by the backend.
//! Adding a backend: a new file here with its `Reader` and `SqlDialect`, a `Dialect` variant, one arm in
//! `Dialect::sql` and one in `open_reader`.

use super::CheckError;

/// Which SQL dialect a reader speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    Mssql,
}

pub use mssql::MssqlReader;
pub use postgres::PgReader;
pub use sqlite::SqliteReader;

mod mssql;
mod postgres;
mod sqlite;

impl Dialect {
    /// The backend's spelling of the checker's SQL: the one place a dialect is dispatched on.
    fn sql(self) -> &'static dyn SqlDialect {
        match self {
            Dialect::Sqlite => &sqlite::SqliteSql,
            Dialect::Postgres => &postgres::PgSql,
            Dialect::Mssql => &mssql::MssqlSql,
        }
    }
}

/// What differs between backends in the checker's SQL. Identifiers passed in are already validated
/// (`valid_ident`), so they need quoting but no escaping.
trait SqlDialect: Sync {
    /// A validated identifier, quoted.
    fn quote(&self, ident: &str) -> String;
    /// A string literal holding a validated identifier (nothing to escape).
    fn name_literal(&self, ident: &str) -> String;
    /// A table name, schema-qualified where the backend has schemas.
    fn qualify(&self, schema: &str, table: &str) -> String;
    /// An expression read as canonical text.
    fn cast_text(&self, expr: &str) -> String;
    /// A row count expression.
    fn count_all(&self) -> &'static str {
        "COUNT(*)"
    }
    /// `SELECT cols FROM rest` limited to the first `limit` rows (`rest` ends with its ORDER BY).
    fn first_rows(&self, limit: usize, cols: &str, rest: &str) -> String {
        format!("SELECT {cols} FROM {rest} LIMIT {limit}")
    }
    /// A table's column names in declaration order, without identity/serial columns.
    fn compared_columns(&self, schema: &str, table: &str) -> String;
    /// One row with a count > 0 when the table exists.
    fn table_exists(&self, schema: &str, table: &str) -> String;
    /// One row with a count > 0 when the column exists.
    fn column_exists(&self, schema: &str, table: &str, column: &str) -> String;
}

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
    /// Damage to the storage itself after processes were killed mid-write, one message per problem. Only a backend
    /// whose database is a file the processes write directly can have it (SQLite: `PRAGMA integrity_check`); a
    /// server keeps its own storage consistent, so the default finds nothing.
    fn storage_problems(&mut self) -> Result<Vec<String>, CheckError> {
        Ok(Vec::new())
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

// ---------------------------------------------------------------------------------------------------------------
// SQL text. Identifiers come from the contract: validated here, then quoted by the backend's `SqlDialect`.

/// `^[A-Za-z_][A-Za-z0-9_]{0,62}$`.
pub fn valid_ident(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Refuses an identifier that is not `valid_ident`.
fn ident(s: &str) -> Result<(), CheckError> {
    if valid_ident(s) {
        Ok(())
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
        ident(s)?;
        Ok(self.d().quote(s))
    }

    fn d(&self) -> &'static dyn SqlDialect {
        self.dialect.sql()
    }

    /// A string literal holding a validated identifier (no quotes inside, so nothing to escape).
    /// A table name, schema-qualified where the backend has schemas.
    pub fn table(&self, name: &str) -> Result<String, CheckError> {
        ident(name)?;
        Ok(self.d().qualify(&self.schema, name))
    }

    /// A column read as canonical text.
    pub fn text(&self, col: &str) -> Result<String, CheckError> {
        let c = self.quote(col)?;
        Ok(self.cast(&c))
    }

    fn cast(&self, expr: &str) -> String {
        self.d().cast_text(expr)
    }

    /// `COUNT(*)`; `COUNT_BIG(*)` on SQL Server, whose `COUNT` is a 32-bit INT.
    fn count_all(&self) -> &'static str {
        self.d().count_all()
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
        Ok(self
            .d()
            .first_rows(limit, &cols, &format!("{from}{filter} ORDER BY {id}")))
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

    /// Every row of a table (its columns as text), then its owner: its app key column, or the smallest app key of
    /// the parent rows its foreign key names, up the chain. The chain is a derived table per level (foreign-key
    /// value → smallest owner, grouped once) joined by hash, not a correlated subquery per row: one pass over each
    /// table instead of one index lookup per row and level.
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
        let (owner, join) = if t.columns.contains(&contract.app_key) {
            (
                format!("t0.{}", self.quote(&contract.app_key)?),
                String::new(),
            )
        } else {
            let parent = t
                .parent
                .as_ref()
                .and_then(|l| Some((l, contract.table(&l.table)?)));
            match parent {
                Some((link, p)) => match self.owner_map(contract, p, &link.fk_column, 1)? {
                    Some(m) => (
                        "p0.o".to_owned(),
                        format!(
                            " LEFT JOIN {m} p0 ON p0.k = t0.{}",
                            self.quote(&link.fk_column)?
                        ),
                    ),
                    None => ("NULL".to_owned(), String::new()),
                },
                None => ("NULL".to_owned(), String::new()),
            }
        };
        Ok(format!(
            "SELECT {}, {} FROM {} t0{join}",
            cols.join(", "),
            self.cast(&owner),
            self.table(&t.name)?
        ))
    }

    /// A derived table `(k, o)`: per value `k` of `t`'s column `fk`, the smallest owner `o` of `t`'s rows with it
    /// (their app key, or their own parents' owner, up to 8 levels). `None`: `t` has no way to an owner.
    fn owner_map(
        &self,
        contract: &super::RefContract,
        t: &super::RefTable,
        fk: &str,
        depth: usize,
    ) -> Result<Option<String>, CheckError> {
        let a = format!("m{depth}");
        let key = format!("{a}.{}", self.quote(fk)?);
        let from = format!("{} {a}", self.table(&t.name)?);
        if t.columns.contains(&contract.app_key) {
            let app = self.quote(&contract.app_key)?;
            return Ok(Some(format!(
                "(SELECT {key} AS k, MIN({a}.{app}) AS o FROM {from} GROUP BY {key})"
            )));
        }
        let (Some(link), true) = (&t.parent, depth < 8) else {
            return Ok(None);
        };
        let Some(parent) = contract.table(&link.table) else {
            return Ok(None);
        };
        let Some(inner) = self.owner_map(contract, parent, &link.fk_column, depth + 1)? else {
            return Ok(None);
        };
        let j = format!("j{depth}");
        Ok(Some(format!(
            "(SELECT {key} AS k, MIN({j}.o) AS o FROM {from} LEFT JOIN {inner} {j} ON {j}.k = {a}.{} GROUP BY {key})",
            self.quote(&link.fk_column)?
        )))
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
        Ok(self.d().compared_columns(&self.schema, table))
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
        Ok(self.d().table_exists(&self.schema, table))
    }

    /// One row with a count > 0 when the column exists.
    pub fn column_exists(&self, table: &str, column: &str) -> Result<String, CheckError> {
        ident(table)?;
        ident(column)?;
        Ok(self.d().column_exists(&self.schema, table, column))
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
