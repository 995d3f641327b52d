//! The checker's SQL Server reader: the connection string parsed by the processor's one parser, plain
//! read-only queries, and every value rendered as canonical text from the type the server sends with it.
//! Must not write (each statement runs in an implicit transaction that is always rolled back), must not use
//! processor code, and must never put a password into a message.

use super::{Dialect, Reader, SqlDialect};
use crate::check::CheckError;
use processor::store::mssql::config::{self, MssqlConfig};
use std::time::Duration;
use tiberius::{Client, ColumnData, Config, FromSql, SqlBrowser};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

type Conn = Client<Compat<TcpStream>>;

/// Per-round-trip deadline when none is named: the checker reads whole tables in one statement.
const DEFAULT_COMMAND_TIMEOUT_SECS: u64 = 300;
const APP_NAME: &str = "shredproof-checker";

/// Session settings. `IMPLICIT_TRANSACTIONS ON` opens a transaction with the first statement, and
/// [`ROLLBACK`] ends it after every query, so nothing a query might change can outlive it. `LOCK_TIMEOUT` turns
/// a lock left by a killed processor (before the server notices the dead session) into an error, not a hang.
const SESSION_SETUP: &str = "SET NOCOUNT ON; SET IMPLICIT_TRANSACTIONS ON; SET XACT_ABORT ON; \
     SET TRANSACTION ISOLATION LEVEL READ COMMITTED; SET LOCK_TIMEOUT 60000; SET DEADLOCK_PRIORITY LOW; \
     SET ANSI_NULLS ON; SET QUOTED_IDENTIFIER ON; SET ARITHABORT ON;";
const ROLLBACK: &str = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;";

/// Whether `url` names a SQL Server: `mssql://`, `sqlserver://`, or an ADO.NET string with a server key.
pub(crate) fn is_mssql_url(url: &str) -> bool {
    let lower: String = url
        .trim()
        .to_ascii_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    lower.starts_with("mssql://")
        || lower.starts_with("sqlserver://")
        || (!lower.contains("://")
            && ["server=", "datasource=", "address=", "addr="]
                .iter()
                .any(|k| lower.starts_with(k) || lower.contains(&format!(";{k}"))))
}

/// Where and how to connect. `shown` names the server without credentials, for messages.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) config: Config,
    pub(crate) connect_timeout: Duration,
    pub(crate) shown: String,
}

fn bad(msg: impl std::fmt::Display) -> CheckError {
    CheckError::Db(format!("invalid SQL Server connection string: {msg}"))
}

impl Target {
    /// Parsed by the processor's one connection-string parser (`MssqlConfig::parse`: `mssql://`/`sqlserver://`
    /// URLs and ADO.NET strings, errors that never quote a value), then given the checker's own application name and
    /// a longer per-round-trip deadline when the string names the processor's default: the checker reads whole tables
    /// in one statement. Parsing a connection string is not what the checker must do independently (that is the
    /// mapping and the queries); two parsers of one format were two places to get it wrong.
    pub(crate) fn parse(url: &str) -> Result<Self, CheckError> {
        let cfg = MssqlConfig::parse(url).map_err(bad)?;
        let mut config = cfg.tiberius();
        config.application_name(APP_NAME);
        if cfg.command_timeout == Duration::from_secs(config::DEFAULT_COMMAND_TIMEOUT_SECS) {
            config.command_timeout(Some(Duration::from_secs(DEFAULT_COMMAND_TIMEOUT_SECS)));
        }
        let mut shown = cfg.host.clone();
        if shown.contains(':') {
            shown = format!("[{shown}]");
        }
        match (cfg.port, &cfg.instance) {
            (Some(p), _) => shown.push_str(&format!(":{p}")),
            (None, Some(i)) => shown.push_str(&format!("\\{i}")),
            (None, None) => {}
        }
        if let Some(db) = &cfg.database {
            shown.push_str(&format!("/{db}"));
        }
        Ok(Target {
            config,
            connect_timeout: cfg.connect_timeout,
            shown,
        })
    }
}

/// SQL Server over TDS. The store's `Store` trait is not used: the checker has its own connection and queries.
pub struct MssqlReader {
    rt: Runtime,
    client: Conn,
    shown: String,
}

impl std::fmt::Debug for MssqlReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MssqlReader")
            .field("server", &self.shown)
            .finish()
    }
}

async fn connect(target: &Target) -> Result<Conn, String> {
    let mut config = target.config.clone();
    // One server redirect (Azure SQL gateway) is followed; a second one is an error.
    for _ in 0..2 {
        // Connects directly without an instance name; otherwise asks the SQL Browser for the port first.
        let tcp = TcpStream::connect_named(&config)
            .await
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        match Client::connect(config.clone(), tcp.compat_write()).await {
            Ok(c) => return Ok(c),
            Err(tiberius::error::Error::Routing { host, port }) => {
                config.host(host);
                config.port(port);
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("redirected more than once".to_owned())
}

impl MssqlReader {
    pub fn connect(url: &str) -> Result<Self, CheckError> {
        let target = Target::parse(url)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| CheckError::Db(format!("cannot start a tokio runtime: {e}")))?;
        let fail = |m: String| {
            CheckError::Db(format!(
                "cannot connect to SQL Server at {}: {m}",
                target.shown
            ))
        };
        let mut client = rt
            .block_on(async {
                match tokio::time::timeout(target.connect_timeout, connect(&target)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "no connection within {} s",
                        target.connect_timeout.as_secs()
                    )),
                }
            })
            .map_err(fail)?;
        rt.block_on(async {
            client
                .simple_query(SESSION_SETUP)
                .await?
                .into_results()
                .await
        })
        .map_err(|e| fail(format!("session setup failed: {e}")))?;
        Ok(MssqlReader {
            rt,
            client,
            shown: target.shown,
        })
    }
}

impl Reader for MssqlReader {
    fn dialect(&self) -> Dialect {
        Dialect::Mssql
    }

    fn query_text(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, CheckError> {
        let client = &mut self.client;
        let result = self.rt.block_on(async {
            let rows = client.simple_query(sql).await?.into_first_result().await;
            // Always end the implicit transaction, also after an error: nothing survives a query.
            let end = async { client.simple_query(ROLLBACK).await?.into_results().await };
            let end = end.await;
            let rows = rows?;
            end?;
            Ok::<_, tiberius::error::Error>(rows)
        });
        let rows = result.map_err(|e| CheckError::Db(format!("query failed: {e}: {sql}")))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let vals = row
                .into_iter()
                .map(|v| canonical(&v))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| CheckError::Db(format!("{m}: {sql}")))?;
            out.push(vals);
        }
        Ok(out)
    }
}

/// `value / 10^scale` with exactly `scale` fraction digits: `450000, 2` → `4500.00`, `-5, 2` → `-0.05`.
fn numeric_text(value: i128, scale: u8) -> String {
    let scale = usize::from(scale);
    let digits = format!("{:0>width$}", value.unsigned_abs(), width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    let sign = if value < 0 { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// `HH:MM:SS`, then the fraction without trailing zeros when there is one (DATETIME2(0) has none).
fn time_text(t: chrono::NaiveTime) -> String {
    use chrono::Timelike;
    let mut s = t.format("%H:%M:%S").to_string();
    let nanos = t.nanosecond() % 1_000_000_000;
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s
}

fn conv<'a, T: FromSql<'a>>(v: &'a ColumnData<'static>) -> Result<Option<T>, String> {
    T::from_sql(v).map_err(|e| format!("cannot read a value: {e}"))
}

/// The canonical text of one value (ARCHITECTURE.md "Canonical text"): integers in decimal, DECIMAL/NUMERIC at
/// their declared scale, DATE `YYYY-MM-DD`, DATETIME/DATETIME2/SMALLDATETIME `YYYY-MM-DD HH:MM:SS`, BIT `0`/`1`,
/// strings as stored. `None` is SQL NULL.
pub(crate) fn canonical(v: &ColumnData<'static>) -> Result<Option<String>, String> {
    Ok(match v {
        ColumnData::U8(x) => x.map(|x| x.to_string()),
        ColumnData::I16(x) => x.map(|x| x.to_string()),
        ColumnData::I32(x) => x.map(|x| x.to_string()),
        ColumnData::I64(x) => x.map(|x| x.to_string()),
        ColumnData::F32(x) => x.map(|x| x.to_string()),
        ColumnData::F64(x) => x.map(|x| x.to_string()),
        ColumnData::Bit(x) => x.map(|b| if b { "1" } else { "0" }.to_owned()),
        ColumnData::String(x) => x.as_ref().map(|s| s.to_string()),
        // As SQL Server itself prints a uniqueidentifier.
        ColumnData::Guid(x) => x.map(|g| g.to_string().to_uppercase()),
        ColumnData::Binary(x) => x.as_ref().map(|b| {
            let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
            format!("0x{hex}")
        }),
        ColumnData::Numeric(x) => x.map(|n| numeric_text(n.value(), n.scale())),
        ColumnData::Xml(x) => x.as_ref().map(|x| x.to_string()),
        ColumnData::DateTime(_) | ColumnData::SmallDateTime(_) | ColumnData::DateTime2(_) => {
            conv::<chrono::NaiveDateTime>(v)?
                .map(|d| format!("{} {}", d.format("%Y-%m-%d"), time_text(d.time())))
        }
        ColumnData::Date(_) => {
            conv::<chrono::NaiveDate>(v)?.map(|d| d.format("%Y-%m-%d").to_string())
        }
        ColumnData::Time(_) => conv::<chrono::NaiveTime>(v)?.map(time_text),
        ColumnData::DateTimeOffset(_) => {
            conv::<chrono::DateTime<chrono::FixedOffset>>(v)?.map(|d| {
                format!(
                    "{} {} {}",
                    d.format("%Y-%m-%d"),
                    time_text(d.time()),
                    d.format("%:z")
                )
            })
        }
    })
}

/// SQL Server's T-SQL: bracket quoting (never ANSI double quotes, which depend on QUOTED_IDENTIFIER), `N'…'`
/// literals, `COUNT_BIG`, `TOP (n)`, and values selected as they are, not CAST to text: `MssqlReader` renders each
/// value from the type the server sends with it (DECIMAL at its scale, DATE/DATETIME2 in ISO form, BIT as 0/1). A
/// server-side `CAST(… AS NVARCHAR)` would give canonical text for the types the processor creates, but a locale
/// style (`Jan  1 2024 12:00AM`) for a legacy DATETIME column of a replaced schema; the wire type is exact for both.
pub(super) struct MssqlSql;

impl SqlDialect for MssqlSql {
    fn quote(&self, ident: &str) -> String {
        format!("[{ident}]")
    }
    fn name_literal(&self, ident: &str) -> String {
        format!("N'{ident}'")
    }
    fn qualify(&self, schema: &str, table: &str) -> String {
        format!("{}.{}", self.quote(schema), self.quote(table))
    }
    fn cast_text(&self, expr: &str) -> String {
        expr.to_owned()
    }
    fn count_all(&self) -> &'static str {
        // `COUNT` is a 32-bit INT on SQL Server.
        "COUNT_BIG(*)"
    }
    fn first_rows(&self, limit: usize, cols: &str, rest: &str) -> String {
        format!("SELECT TOP ({limit}) {cols} FROM {rest}")
    }
    fn compared_columns(&self, schema: &str, table: &str) -> String {
        format!(
            "SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = {s} AND TABLE_NAME = {t} \
             AND COLUMNPROPERTY(OBJECT_ID(QUOTENAME({s}) + '.' + QUOTENAME({t})), COLUMN_NAME, 'IsIdentity') = 0 \
             ORDER BY ORDINAL_POSITION",
            s = self.name_literal(schema),
            t = self.name_literal(table)
        )
    }
    // Upper-case view names: they resolve under a case-sensitive server collation too.
    fn table_exists(&self, schema: &str, table: &str) -> String {
        format!(
            "SELECT COUNT(*) FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
            self.name_literal(schema),
            self.name_literal(table)
        )
    }
    fn column_exists(&self, schema: &str, table: &str, column: &str) -> String {
        format!(
            "SELECT COUNT(*) FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} \
             AND COLUMN_NAME = {}",
            self.name_literal(schema),
            self.name_literal(table),
            self.name_literal(column)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;
    use tiberius::numeric::Numeric;

    fn text(v: ColumnData<'static>) -> Option<String> {
        canonical(&v).expect("renders")
    }

    #[test]
    fn values_render_in_the_canonical_forms() {
        let dec = |v: i128, s: u8| text(ColumnData::Numeric(Some(Numeric::new_with_scale(v, s))));
        assert_eq!(dec(450_000, 2).as_deref(), Some("4500.00"));
        assert_eq!(dec(5, 2).as_deref(), Some("0.05"));
        assert_eq!(dec(-5, 2).as_deref(), Some("-0.05"));
        assert_eq!(dec(-123_456, 3).as_deref(), Some("-123.456"));
        assert_eq!(dec(0, 2).as_deref(), Some("0.00"));
        assert_eq!(dec(42, 0).as_deref(), Some("42"));
        assert_eq!(text(ColumnData::Bit(Some(true))).as_deref(), Some("1"));
        assert_eq!(text(ColumnData::Bit(Some(false))).as_deref(), Some("0"));
        assert_eq!(text(ColumnData::Bit(None)), None);
        assert_eq!(
            text(ColumnData::I64(Some(-9_000_000_001))).as_deref(),
            Some("-9000000001")
        );
        assert_eq!(text(ColumnData::I16(Some(7))).as_deref(), Some("7"));
        assert_eq!(text(ColumnData::U8(Some(255))).as_deref(), Some("255"));
        assert_eq!(
            text(ColumnData::String(Some(Cow::Borrowed("Ann O'Neil")))).as_deref(),
            Some("Ann O'Neil")
        );
        assert_eq!(text(ColumnData::String(None)), None);
        assert_eq!(text(ColumnData::Numeric(None)), None);

        // DATE (days since 0001-01-01) and DATETIME2(scale) (time in 10^-scale s increments), as on the wire.
        use tiberius::time::{Date, DateTime2, Time};
        let epoch = chrono::NaiveDate::from_ymd_opt(1, 1, 1).expect("date");
        let d = chrono::NaiveDate::from_ymd_opt(2024, 2, 29).expect("date");
        let days = u32::try_from(d.signed_duration_since(epoch).num_days()).expect("days");
        assert_eq!(
            text(ColumnData::Date(Some(Date::new(days)))).as_deref(),
            Some("2024-02-29")
        );
        let secs = 13 * 3600 + 5 * 60 + 9;
        let dt0 = DateTime2::new(Date::new(days), Time::new(secs, 0));
        assert_eq!(
            text(ColumnData::DateTime2(Some(dt0))).as_deref(),
            Some("2024-02-29 13:05:09")
        );
        let dt3 = DateTime2::new(Date::new(days), Time::new(1250, 3));
        assert_eq!(
            text(ColumnData::DateTime2(Some(dt3))).as_deref(),
            Some("2024-02-29 00:00:01.25")
        );
        assert_eq!(text(ColumnData::Date(None)), None);
        // Legacy DATETIME (days since 1900, 1/300 s ticks): what a replaced system's schema may hold.
        let legacy = ColumnData::DateTime(Some(tiberius::time::DateTime::new(45_350, 300 * 3600)));
        assert_eq!(text(legacy).as_deref(), Some("2024-03-01 01:00:00"));
    }

    #[test]
    fn url_targets() {
        let t = Target::parse(
            "mssql://sa:p%40ss%3Aw%2Frd@db.example:1444/shred_run?encrypt=false&trust_server_certificate=true&connect_timeout_secs=5&command_timeout_secs=90",
        )
        .expect("parses");
        assert_eq!(t.config.get_addr(), "db.example:1444");
        assert_eq!(t.connect_timeout, Duration::from_secs(5));
        assert_eq!(
            t.config.get_command_timeout(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(t.shown, "db.example:1444/shred_run");
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("p@ss"), "{dbg}");

        let t = Target::parse(r"sqlserver://app:pw@sqlhost\SQLEXPRESS/appdb").expect("parses");
        assert_eq!(t.config.get_addr(), "sqlhost:1434"); // the SQL Browser
        assert_eq!(t.shown, r"sqlhost\SQLEXPRESS/appdb");
        let t = Target::parse("mssql://app:pw@h%5CINST/appdb").expect("parses");
        assert_eq!(t.shown, r"h\INST/appdb");
        let t = Target::parse("mssql://u:a@b/c@h:1433/db").expect("parses");
        assert_eq!(t.shown, "h:1433/db");
        let t = Target::parse("mssql://u:p@[::1]:1500/db").expect("parses");
        assert_eq!(t.config.get_addr(), "::1:1500");
        assert_eq!(
            Target::parse("mssql://u:p@localhost")
                .expect("parses")
                .config
                .get_addr(),
            "localhost:1433"
        );

        for bad in [
            "mssql://h/db",
            "mssql://u:p@/db",
            "mssql://u:p@h:99999/db",
            "mssql://u:p@h/db?colour=blue",
            "mssql://u:p@h/db?encrypt=maybe",
            "mssql://u:Secret7@h/db?connect_timeout_secs=0",
        ] {
            match Target::parse(bad) {
                Ok(_) => panic!("accepted {bad}"),
                Err(e) => assert!(!e.to_string().contains("Secret7"), "{e}"),
            }
        }
    }

    #[test]
    fn ado_targets_and_detection() {
        let t = Target::parse(
            "Server=tcp:sqlhost,1500;Database=shred;User Id=loader;Password='p;w';TrustServerCertificate=true",
        )
        .expect("parses");
        assert_eq!(t.config.get_addr(), "sqlhost:1500");
        assert_eq!(t.shown, "sqlhost:1500/shred"); // one rendering for URL and ADO.NET forms: server and database
        assert!(is_mssql_url("mssql://sa:pw@h/db"));
        assert!(is_mssql_url("SQLSERVER://sa:pw@h/db"));
        assert!(is_mssql_url("Server=h;Database=d;User Id=u;Password=p"));
        assert!(is_mssql_url("Database=d; Data Source = h\\I;User Id=u"));
        assert!(!is_mssql_url("postgres://u@h/db?options=server=x"));
        assert!(!is_mssql_url("sqlite:server=1.db"));
        assert!(!is_mssql_url("Database=d;User Id=u"));
    }
}
