//! Database launchers, one per backend behind one trait: a fresh database per run, a crash-restart for the
//! restart fault, stop on drop. Readiness is probed, never slept for. A backend that cannot start is an
//! environment error (exit 3), never a pass.

use fixtures::pg::PgCluster;
use std::path::PathBuf;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Sqlite,
    Postgres,
    Mssql,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mssql => "mssql",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot start PostgreSQL: {0}")]
    Postgres(#[from] fixtures::pg::PgError),
    #[error("no SQL Server available: set SHREDPROOF_MSSQL_URL (e.g. mssql://sa:Passw0rd!@127.0.0.1:1433/master?trust_server_certificate=true), pass --db-url, install the prebuilt Babelfish into /opt/babelfish (bash ../shared/tools/babelfish/install.sh; the harness then starts a private one), or build with --features testcontainers on a machine with a Docker engine")]
    NoMssql,
    #[error("{0}")]
    Other(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Starts, hands out and restarts one database server (or file directory) for a whole harness invocation.
pub trait Launcher {
    fn backend(&self) -> Backend;
    /// A fresh, empty database for one run; returns the URL the processors use.
    fn fresh_database(&mut self, name: &str) -> Result<String, DbError>;
    /// Crash the server (SIGKILL) and start it again on the same data, waiting until it accepts connections.
    fn restart(&mut self) -> Result<(), DbError>;
    /// Whether `restart` is meaningful (SQLite has no server).
    fn can_restart(&self) -> bool;
    /// One line for the terminal, without credentials.
    fn describe(&self) -> String;
    /// Keeps the databases after the harness exits (`--keep`); says where they are.
    fn keep(&mut self) -> String {
        format!(
            "{} (an external server keeps its databases anyway)",
            self.describe()
        )
    }
}

/// Builds the launcher for `backend`. `db_url` points at an existing server instead of starting one.
pub fn launch(backend: Backend, db_url: Option<&str>) -> Result<Box<dyn Launcher>, DbError> {
    match (backend, db_url) {
        (Backend::Sqlite, None) => Ok(Box::new(SqliteDir::new()?)),
        (Backend::Sqlite, Some(u)) => {
            let dir = u.strip_prefix("sqlite:").unwrap_or(u);
            let path = PathBuf::from(dir);
            std::fs::create_dir_all(&path)?;
            Ok(Box::new(SqliteDir {
                _tmp: None,
                dir: path,
                keep: true,
            }))
        }
        (Backend::Postgres, None) => Ok(Box::new(PgLauncher {
            cluster: PgCluster::start()?,
        })),
        (Backend::Postgres, Some(u)) => Ok(Box::new(ExternalPg { url: u.to_owned() })),
        (Backend::Mssql, url) => {
            let url = url.map(str::to_owned).or_else(|| {
                std::env::var("SHREDPROOF_MSSQL_URL")
                    .ok()
                    .filter(|s| !s.is_empty())
            });
            match url {
                Some(u) => Ok(Box::new(crate::db_mssql::ExternalMssql::new(&u)?)),
                None => crate::db_mssql::without_url(),
            }
        }
    }
}

/// SQLite: one file per run in a temporary directory.
pub struct SqliteDir {
    _tmp: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    keep: bool,
}

impl SqliteDir {
    pub fn new() -> Result<Self, DbError> {
        let tmp = tempfile::Builder::new()
            .prefix("shredproof-sqlite-")
            .tempdir()?;
        let dir = tmp.path().to_owned();
        Ok(SqliteDir {
            _tmp: Some(tmp),
            dir,
            keep: false,
        })
    }

    /// Keep the directory after exit (`--keep`).
    pub fn keep_dir(&mut self) -> PathBuf {
        if let Some(t) = self._tmp.take() {
            let _ = t.keep();
        }
        self.keep = true;
        self.dir.clone()
    }
}

impl Launcher for SqliteDir {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }
    fn keep(&mut self) -> String {
        format!("SQLite files in {}", self.keep_dir().display())
    }
    fn fresh_database(&mut self, name: &str) -> Result<String, DbError> {
        let path = self.dir.join(format!("{name}.db"));
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", path.display()));
            if p.exists() {
                std::fs::remove_file(&p)?;
            }
        }
        Ok(format!("sqlite:{}", path.display()))
    }
    fn restart(&mut self) -> Result<(), DbError> {
        Err(DbError::Other("SQLite has no server to restart".into()))
    }
    fn can_restart(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        format!(
            "SQLite files in {}{}",
            self.dir.display(),
            if self.keep { " (kept)" } else { "" }
        )
    }
}

/// A private PostgreSQL cluster started from the installed server binaries, removed on drop.
pub struct PgLauncher {
    pub cluster: PgCluster,
}

impl Launcher for PgLauncher {
    fn keep(&mut self) -> String {
        let dir = self.cluster.keep();
        format!(
            "PostgreSQL data directory {} (stopped; start it with pg_ctl -D {} start as the postgres user)",
            dir.display(),
            dir.display()
        )
    }

    fn backend(&self) -> Backend {
        Backend::Postgres
    }
    fn fresh_database(&mut self, name: &str) -> Result<String, DbError> {
        Ok(self.cluster.create_database(&pg_name(name))?)
    }
    fn restart(&mut self) -> Result<(), DbError> {
        self.cluster.kill9()?;
        self.cluster.restart()?;
        Ok(())
    }
    fn can_restart(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!(
            "private PostgreSQL cluster on 127.0.0.1:{}",
            self.cluster.port()
        )
    }
}

/// Database names: lowercase letters, digits and underscores.
pub fn pg_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        s.insert(0, '_');
    }
    s.truncate(60);
    s
}

/// An existing PostgreSQL server (`--db-url`): each run gets a new database created through that URL.
pub struct ExternalPg {
    url: String,
}

impl ExternalPg {
    fn url_for(&self, db: &str) -> String {
        // postgres://user@host:port/dbname?params → replace dbname.
        let (base, query) = match self.url.split_once('?') {
            Some((b, q)) => (b.to_owned(), format!("?{q}")),
            None => (self.url.clone(), String::new()),
        };
        let after_scheme = base.find("://").map_or(0, |i| i + 3);
        let host_end = base[after_scheme..]
            .find('/')
            .map_or(base.len(), |i| after_scheme + i);
        format!("{}/{db}{query}", &base[..host_end])
    }
}

impl Launcher for ExternalPg {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }
    fn fresh_database(&mut self, name: &str) -> Result<String, DbError> {
        let db = pg_name(name);
        let mut client = postgres::Client::connect(&self.url, postgres::NoTls)
            .map_err(|e| DbError::Other(format!("cannot connect to --db-url: {e}")))?;
        // Identifiers cannot be bound; `pg_name` leaves only [a-z0-9_].
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE); CREATE DATABASE \"{db}\""
            ))
            .map_err(|e| DbError::Other(format!("cannot create database {db}: {e}")))?;
        Ok(self.url_for(&db))
    }
    fn restart(&mut self) -> Result<(), DbError> {
        Err(DbError::Other(
            "cannot restart a server given by --db-url".into(),
        ))
    }
    fn can_restart(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        format!(
            "PostgreSQL at {}",
            processor::store::url::redact_url(&self.url)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls() {
        assert_eq!(pg_name("crash-a-Queue"), "crash_a_queue");
        assert_eq!(pg_name("9x"), "_9x");
        let e = ExternalPg {
            url: "postgres://u:p@127.0.0.1:5432/postgres?sslmode=disable".into(),
        };
        assert_eq!(
            e.url_for("run_1"),
            "postgres://u:p@127.0.0.1:5432/run_1?sslmode=disable"
        );
        let e = ExternalPg {
            url: "postgres://127.0.0.1".into(),
        };
        assert_eq!(e.url_for("d"), "postgres://127.0.0.1/d");
    }
}
