//! `--db` values: `sqlite:PATH`, `postgres://…`, `mssql://…` or an ADO.NET connection string, each parsed once
//! here into a typed value that both connects and renders itself back. The redacted rendering (`***` for the
//! password) is the only form that may be printed or logged; `Debug` and `Display` show it too.
//!
//! PostgreSQL URLs are parsed by the `url` crate (WHATWG rules: the *last* `@` ends the user info, so an unescaped
//! `@` in a password stays in the password), validated by the driver's own parser at parse time (so a malformed
//! URL is a usage error, never a connection failure to retry), and handed to the driver in the `url` crate's
//! normalised, percent-encoded serialisation, so the driver and the redactor always agree on what the password is.
//! Parse errors never quote the input: a fragment of a malformed URL may be a fragment of its password.

use super::mssql::config::{MssqlConfig, MssqlConfigError};
use std::fmt;
use std::path::PathBuf;

/// The default `--db`: a SQLite file in the working directory.
pub const DEFAULT_DB: &str = "sqlite:shredproof.db";

/// The environment variable `--db` defaults to: how a parent hands a connection string (and its password) to a
/// child process without putting it on the child's command line, which every local user can read.
pub const DB_ENV: &str = "SHREDPROOF_DB";

/// What replaces a password in every printable form.
pub const MASK: &str = "***";

#[derive(Clone)]
pub enum DbUrl {
    Sqlite(PathBuf),
    Postgres(PgUrl),
    Mssql(MssqlConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("database url is empty")]
    Empty,
    #[error("unrecognised database url (expected sqlite:PATH, postgres://…, mssql://… or an ADO.NET string like Server=…;Database=…)")]
    Unknown,
    #[error("sqlite: url has no path (expected sqlite:PATH)")]
    SqliteNoPath,
    #[error("invalid PostgreSQL url: {0}")]
    Postgres(String),
    #[error("invalid SQL Server connection: {0}")]
    Mssql(#[from] MssqlConfigError),
}

impl DbUrl {
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(UrlError::Empty);
        }
        if let Some(rest) = s
            .strip_prefix("sqlite://")
            .or_else(|| s.strip_prefix("sqlite:"))
        {
            if rest.is_empty() {
                return Err(UrlError::SqliteNoPath);
            }
            return Ok(DbUrl::Sqlite(PathBuf::from(rest)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(DbUrl::Postgres(PgUrl::parse(s)?));
        }
        if s.starts_with("mssql://") || s.starts_with("sqlserver://") || looks_like_ado(s) {
            return Ok(DbUrl::Mssql(MssqlConfig::parse(s)?));
        }
        Err(UrlError::Unknown)
    }

    pub fn backend(&self) -> &'static str {
        match self {
            DbUrl::Sqlite(_) => "sqlite",
            DbUrl::Postgres(_) => "postgres",
            DbUrl::Mssql(_) => "mssql",
        }
    }

    /// The URL with any password replaced by `***`: safe to print.
    pub fn redacted(&self) -> String {
        match self {
            DbUrl::Sqlite(p) => format!("sqlite:{}", p.display()),
            DbUrl::Postgres(u) => u.redacted(),
            DbUrl::Mssql(c) => c.redacted(),
        }
    }

    /// A URL that connects with these settings, password included: for handing to a child process in its
    /// environment (`SHREDPROOF_DB`), never for printing.
    pub fn connection_url(&self) -> String {
        match self {
            DbUrl::Sqlite(p) => format!("sqlite:{}", p.display()),
            DbUrl::Postgres(u) => u.connection_url(),
            DbUrl::Mssql(c) => c.connection_url(),
        }
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({})", self.redacted())
    }
}

fn looks_like_ado(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    s.contains('=') && (lower.contains("server=") || lower.contains("data source="))
}

/// The connection options the driver understands (tokio-postgres); any other query key is refused before the
/// driver sees it, because the driver's message would quote the key, and a stray key may be a fragment of a
/// password that contained `&`.
const PG_OPTIONS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// A validated `postgres://` URL with the driver configuration parsed from it. The password is inside; every
/// printable form masks it.
#[derive(Clone)]
pub struct PgUrl {
    url: url::Url,
    /// Boxed: the driver's configuration is large, and `DbUrl` is passed around by value.
    config: Box<postgres::Config>,
}

impl PartialEq for PgUrl {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
    }
}

impl Eq for PgUrl {}

fn pg_err(m: impl Into<String>) -> UrlError {
    UrlError::Postgres(m.into())
}

impl PgUrl {
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        // The url crate's messages are fixed texts ("invalid port number") that never quote the input.
        let url = url::Url::parse(s.trim()).map_err(|e| pg_err(e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(pg_err("the scheme must be postgres:// or postgresql://"));
        }
        Self::from_url(url)
    }

    fn from_url(url: url::Url) -> Result<Self, UrlError> {
        if url.host_str().is_some_and(|h| h.contains(',')) {
            return Err(pg_err("several hosts in one url are not supported"));
        }
        for (i, (k, _)) in url.query_pairs().enumerate() {
            if !PG_OPTIONS.contains(&k.as_ref()) {
                return Err(pg_err(format!(
                    "query option number {} is not a connection option (known: {})",
                    i + 1,
                    PG_OPTIONS.join(", ")
                )));
            }
        }
        // The driver's own checks of the option values, run now so that a bad value is a usage error at start-up.
        // Its messages name a known option, never a value.
        let config = url
            .as_str()
            .parse::<postgres::Config>()
            .map_err(|e| pg_err(e.to_string()))?;
        Ok(PgUrl {
            url,
            config: Box::new(config),
        })
    }

    /// `postgres://user:***@host:port/db?…` (also `password=` query options masked).
    pub fn redacted(&self) -> String {
        let mut u = self.url.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some(MASK));
        }
        if u.query_pairs().any(|(k, _)| k == "password") {
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" {
                        MASK.to_owned()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        u.to_string()
    }

    /// The normalised URL, password included and percent-encoded (so its first `@` ends the user info, which is
    /// where the driver's parser looks). A secret: never print it.
    pub fn connection_url(&self) -> String {
        self.url.to_string()
    }

    /// The driver configuration, parsed once from this URL. Contains the password.
    pub fn driver_config(&self) -> &postgres::Config {
        &self.config
    }

    /// `host:port` (port 5432 when none is given); `None` without a TCP host (a Unix socket via `?host=`).
    pub fn host_port(&self) -> Option<(String, u16)> {
        let host = self.url.host_str().filter(|h| !h.is_empty())?;
        Some((host.to_owned(), self.url.port().unwrap_or(5432)))
    }

    /// The same URL sent to another host and port (the harness's fault proxy).
    pub fn with_host_port(&self, host: &str, port: u16) -> Result<Self, UrlError> {
        let mut url = self.url.clone();
        url.set_host(Some(host))
            .map_err(|e| pg_err(e.to_string()))?;
        url.set_port(Some(port))
            .map_err(|()| pg_err("this url cannot have a port"))?;
        Self::from_url(url)
    }

    /// The same URL naming another database.
    pub fn with_database(&self, db: &str) -> Result<Self, UrlError> {
        let mut url = self.url.clone();
        url.set_path(&format!("/{db}"));
        Self::from_url(url)
    }

    /// The database name, when the URL has one.
    pub fn database(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    /// A synchronous client connected with this URL (no TLS, as everywhere in the project).
    pub fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        self.config.connect(postgres::NoTls)
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({})", self.redacted())
    }
}

/// Any `--db` value rendered with its password masked, by the same parsers that connect with it. A string that
/// does not parse is not shown at all (a fragment of it may be a fragment of a password).
pub fn redact_url(u: &str) -> String {
    match DbUrl::parse(u) {
        Ok(d) => d.redacted(),
        Err(_) => "<unparsable database url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        assert!(
            matches!(DbUrl::parse("sqlite:x.db"), Ok(DbUrl::Sqlite(p)) if p == std::path::Path::new("x.db"))
        );
        let pg = DbUrl::parse("postgres://bob:s3cret@127.0.0.1:5432/db").expect("pg");
        assert_eq!(pg.redacted(), "postgres://bob:***@127.0.0.1:5432/db");
        assert!(!pg.to_string().contains("s3cret"));
        assert!(!format!("{pg:?}").contains("s3cret"));
        assert_eq!(
            redact_url("postgres://h/db?password=zz&application_name=x"),
            "postgres://h/db?password=***&application_name=x"
        );
        assert!(matches!(DbUrl::parse("mysql://x"), Err(UrlError::Unknown)));
        assert!(matches!(DbUrl::parse("  "), Err(UrlError::Empty)));
    }

    /// The last `@` ends the user info, for the redactor and the driver alike.
    #[test]
    fn an_at_sign_in_the_password_stays_in_the_password() {
        let DbUrl::Postgres(pg) = DbUrl::parse("postgres://u:p@w@db.example:5433/x").expect("pg")
        else {
            panic!("not postgres")
        };
        assert_eq!(pg.redacted(), "postgres://u:***@db.example:5433/x");
        let cfg = pg.driver_config();
        assert_eq!(cfg.get_password(), Some(&b"p@w"[..]));
        assert_eq!(cfg.get_user(), Some("u"));
        assert_eq!(cfg.get_ports(), &[5433]);
        assert_eq!(pg.host_port(), Some(("db.example".to_owned(), 5433)));
        let moved = pg.with_host_port("127.0.0.1", 9).expect("moved");
        assert_eq!(moved.redacted(), "postgres://u:***@127.0.0.1:9/x");
        assert_eq!(moved.driver_config().get_password(), Some(&b"p@w"[..]));
        assert_eq!(
            pg.with_database("run_1").expect("renamed").redacted(),
            "postgres://u:***@db.example:5433/run_1"
        );
        assert_eq!(pg.database(), Some("x"));
    }

    /// Malformed URLs are refused at parse time, and the message quotes nothing of them.
    #[test]
    fn malformed_urls_fail_without_quoting_the_input() {
        for bad in [
            "postgres://h:notaport/db",
            "postgres://u:S3cretPw@h:99999/db",
            "postgres://u:S3cretPw@h/db?sslmode=S3cretPw",
            "postgres://u:S3cretPw@h/db?S3cretPw=1",
            "postgres://u:S3cretPw@[::1/db",
            "postgres://u:S3cretPw@h1,h2/db",
        ] {
            let e = DbUrl::parse(bad).expect_err(bad);
            assert!(matches!(e, UrlError::Postgres(_)), "{bad}: {e}");
            let m = e.to_string();
            assert!(!m.contains("S3cretPw") && !m.contains("notaport"), "{m}");
            assert_eq!(redact_url(bad), "<unparsable database url>");
        }
    }
}
