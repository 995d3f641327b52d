//! `--db` values: `sqlite:PATH`, `postgres://…`, `mssql://…` or an ADO.NET connection string. Parsing only;
//! the redacted form is the only one that may be printed or logged.

use super::mssql::config::{MssqlConfig, MssqlConfigError};
use std::fmt;
use std::path::PathBuf;

/// The default `--db`: a SQLite file in the working directory.
pub const DEFAULT_DB: &str = "sqlite:shredproof.db";

#[derive(Debug, Clone)]
pub enum DbUrl {
    Sqlite(PathBuf),
    /// A libpq-style URL, passed to the driver as is.
    Postgres(String),
    Mssql(MssqlConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("database url is empty")]
    Empty,
    #[error("unrecognised database url '{0}' (expected sqlite:PATH, postgres://…, mssql://… or an ADO.NET string like Server=…;Database=…)")]
    Unknown(String),
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
                return Err(UrlError::Unknown(s.to_owned()));
            }
            return Ok(DbUrl::Sqlite(PathBuf::from(rest)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(DbUrl::Postgres(s.to_owned()));
        }
        if s.starts_with("mssql://") || s.starts_with("sqlserver://") || looks_like_ado(s) {
            return Ok(DbUrl::Mssql(MssqlConfig::parse(s)?));
        }
        Err(UrlError::Unknown(redact_url(s)))
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
            DbUrl::Postgres(u) => redact_url(u),
            DbUrl::Mssql(c) => c.redacted(),
        }
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn looks_like_ado(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    s.contains('=') && (lower.contains("server=") || lower.contains("data source="))
}

/// Replaces the password of `scheme://user:password@host…` (and `password=` query parameters) with `***`.
pub fn redact_url(u: &str) -> String {
    let mut out = u.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let auth_end = out[rest_start..].find('@').map(|i| rest_start + i);
        if let Some(at) = auth_end {
            if let Some(colon) = out[rest_start..at].find(':') {
                out.replace_range(rest_start + colon + 1..at, "***");
            }
        }
    }
    // key=value forms (query string or libpq keywords)
    let lower = out.to_ascii_lowercase();
    if let Some(i) = lower.find("password=") {
        let start = i + "password=".len();
        let end = out[start..]
            .find(['&', ';', ' '])
            .map_or(out.len(), |j| start + j);
        out.replace_range(start..end, "***");
    }
    out
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
        assert_eq!(
            redact_url("postgres://h/db?password=zz&x=1"),
            "postgres://h/db?password=***&x=1"
        );
        assert!(matches!(
            DbUrl::parse("mysql://x"),
            Err(UrlError::Unknown(_))
        ));
        assert!(matches!(DbUrl::parse("  "), Err(UrlError::Empty)));
    }
}
