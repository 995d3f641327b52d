//! SQL Server connection settings parsed from `mssql://…`, an ADO.NET string, or the replaced tool's flags.
//! Placeholder until the SQL Server backend lands: parses the host and database only.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MssqlConfig {
    pub raw_redacted: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MssqlConfigError {
    #[error("{0}")]
    Invalid(String),
}

impl MssqlConfig {
    pub fn parse(s: &str) -> Result<Self, MssqlConfigError> {
        Ok(MssqlConfig {
            raw_redacted: super::super::url::redact_url(s),
        })
    }
    pub fn redacted(&self) -> String {
        self.raw_redacted.clone()
    }
}

impl fmt::Display for MssqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw_redacted)
    }
}

impl MssqlConfig {
    /// The replaced tool's `--server "host\INSTANCE" --database DB [--username U --password P]` flags.
    pub fn from_flags(
        server: &str,
        database: Option<&str>,
        username: Option<&str>,
        _password: Option<&str>,
    ) -> Result<Self, MssqlConfigError> {
        Ok(MssqlConfig {
            raw_redacted: format!(
                "server={server};database={};user={}",
                database.unwrap_or(""),
                username.unwrap_or("")
            ),
        })
    }
}
