//! SQL Server launchers: an external server (`SHREDPROOF_MSSQL_URL` / `--db-url`), or a container started through
//! testcontainers when built with the `testcontainers` feature and a Docker engine answers.

use crate::db::{Backend, DbError, Launcher};

pub struct ExternalMssql {
    url: String,
}

impl ExternalMssql {
    pub fn new(url: &str) -> Result<Self, DbError> {
        processor::store::DbUrl::parse(url)
            .map_err(|e| DbError::Other(format!("invalid SQL Server url: {e}")))?;
        Ok(ExternalMssql {
            url: url.to_owned(),
        })
    }
}

impl Launcher for ExternalMssql {
    fn backend(&self) -> Backend {
        Backend::Mssql
    }
    fn fresh_database(&mut self, _name: &str) -> Result<String, DbError> {
        Err(DbError::Other(
            "the SQL Server launcher is not built yet".into(),
        ))
    }
    fn restart(&mut self) -> Result<(), DbError> {
        Err(DbError::Other(
            "cannot restart a server given by url".into(),
        ))
    }
    fn can_restart(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        format!(
            "SQL Server at {}",
            processor::store::url::redact_url(&self.url)
        )
    }
}

pub fn from_container() -> Result<Box<dyn Launcher>, DbError> {
    Err(DbError::NoMssql)
}
