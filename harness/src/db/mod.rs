//! Database launchers, one file per backend (`sqlite.rs`, `postgres.rs`, `mssql.rs`) behind one trait: a fresh
//! database per run, a crash-restart for the restart fault, stop on drop. Readiness is probed, never slept for. A
//! backend that cannot start is an environment error (exit 3), never a pass.
//!
//! What a backend can carry out is stated once, as its [`Capabilities`]; the rest of the harness asks those instead
//! of naming backends. This file is the one registration point: [`Backend`], [`launch`], [`server_version`],
//! [`copy_source`] and [`bulk_loader`] dispatch to the backend files, which hold all of the harness's backend-specific SQL outside the
//! checker's readers (`check/reader/<backend>.rs`).

pub mod lazy_pg;
pub mod mssql;
pub mod postgres;
pub mod sqlite;

pub use postgres::{ExternalPg, PgLauncher};
pub use sqlite::SqliteDir;

use processor::contract::Contract;
use processor::store::{DbUrl, LogRow, Store};
use processor::value::Value;
use std::time::{Duration, Instant};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Sqlite,
    Postgres,
    Mssql,
}

/// What the harness can do to a database of one backend (or, from [`Launcher::capabilities`], to this one server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// A database server the processors reach over TCP: the fault proxy can reset, blackhole or delay their
    /// connections, and server-only (global) faults apply.
    pub server: bool,
    /// The fault proxy can spot a COMMIT in the bytes it forwards and cut its reply (`cut-reply`): PostgreSQL's
    /// wire protocol is plain; SQL Server's TDS is TLS-encrypted after login.
    pub commit_cut: bool,
    /// The server can be SIGKILLed and restarted on the same data (`restart-db`).
    pub restart: bool,
    /// The harness can add a constraint the contract does not know to a target table (`[fixture]
    /// reject_rows_in`, `add_rejection`).
    pub reject_rows: bool,
    /// The harness can put the server's data directory on its LazyFS-style layer and cut the power under it
    /// (`lose-unsynced`: SIGKILL, drop every unsynced write, restart). A private PostgreSQL cluster, as root.
    pub lose_unsynced: bool,
}

impl Backend {
    /// Every backend, in the order reports list them.
    pub const ALL: [Backend; 3] = [Backend::Sqlite, Backend::Postgres, Backend::Mssql];
    /// The `--backend` default: commands that replay a run name the backend only when it is another one.
    pub const DEFAULT: Backend = Backend::Sqlite;

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mssql => "mssql",
        }
    }

    /// The backend's capabilities with the launcher the harness starts itself (an external server given by
    /// `--db-url` may not restart: ask [`Launcher::capabilities`] for the one in use).
    pub fn capabilities(self) -> Capabilities {
        match self {
            Backend::Sqlite => sqlite::CAPABILITIES,
            Backend::Postgres => postgres::CAPABILITIES,
            Backend::Mssql => mssql::CAPABILITIES,
        }
    }

    /// The backends that have every capability `want` asks for (`want` returns true for a backend that fits).
    pub fn all_with(want: impl Fn(Capabilities) -> bool) -> Vec<Backend> {
        Backend::ALL
            .into_iter()
            .filter(|b| want(b.capabilities()))
            .collect()
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
    /// What this launcher's server can be made to do (a server given by URL cannot be restarted).
    fn capabilities(&self) -> Capabilities;
    /// A fresh, empty database for one run; returns the URL the processors use.
    fn fresh_database(&mut self, name: &str) -> Result<String, DbError>;
    /// Crash the server (SIGKILL) and start it again on the same data, waiting until it accepts connections.
    fn restart(&mut self) -> Result<(), DbError>;
    /// One line for the terminal, without credentials.
    fn describe(&self) -> String;
    /// Like [`Launcher::fresh_database`], on a server whose data directory sits on the LazyFS-style layer
    /// (`lose-unsynced`); later [`Launcher::restart`]s restart that server, until the next `fresh_database`.
    fn fresh_database_lazy(&mut self, _name: &str) -> Result<String, DbError> {
        Err(DbError::Other(format!(
            "lose-unsynced needs a private PostgreSQL cluster started by the harness; {} cannot lose unsynced writes",
            self.describe()
        )))
    }
    /// The power cut (`lose-unsynced`): SIGKILL the server on the layer, drop every write it did not fsync, start
    /// it again and wait until it accepts connections. Returns what was dropped, for the fault's note.
    fn lose_unsynced(&mut self) -> Result<String, DbError> {
        Err(DbError::Other(format!(
            "{} cannot lose unsynced writes",
            self.describe()
        )))
    }
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
    match backend {
        Backend::Sqlite => sqlite::launch(db_url),
        Backend::Postgres => postgres::launch(db_url),
        Backend::Mssql => mssql::launch(db_url),
    }
}

/// One line naming the database server behind `url` and its version (`harness bench`'s machine description).
pub fn server_version(url: &str, contract: &Contract) -> anyhow::Result<String> {
    Ok(match DbUrl::parse(url)? {
        DbUrl::Postgres(conn) => postgres::server_version(&conn)?,
        DbUrl::Sqlite(_) => sqlite::server_version(),
        DbUrl::Mssql(cfg) => mssql::server_version(&cfg, contract)?,
    })
}

/// Whether [`copy_source`] can copy out of the database `url` (a SQL Server one).
pub fn can_copy_source(url: &str) -> bool {
    matches!(DbUrl::parse(url), Ok(DbUrl::Mssql(_)))
}

/// Copies the source documents of database `from_url` into database `to_url` (same server; `to_url` has the
/// contract's schema and no documents) by the server itself, when the backend can read one database from another
/// (SQL Server's three-part names): `None` where it cannot (SQLite files, PostgreSQL databases), and the runner
/// loads the documents again. A scenario's two phases (no-fault baseline, faulted run) load the same documents.
pub fn copy_source(
    from_url: &str,
    to_url: &str,
    contract: &Contract,
) -> Option<Result<u64, DbError>> {
    match (DbUrl::parse(from_url), DbUrl::parse(to_url)) {
        (Ok(DbUrl::Mssql(from)), Ok(DbUrl::Mssql(to))) => {
            Some(mssql::copy_source(&from, &to, contract))
        }
        _ => None,
    }
}

/// `[fixture] reject_rows_in`: makes the database behind `url` refuse every row of `table` (in `schema`) whose
/// `app_id` is a multiple of `every` — a constraint the contract does not know, added once the schema exists.
pub fn add_rejection(url: &str, schema: &str, table: &str, every: i64) -> anyhow::Result<()> {
    for id in [schema, table] {
        anyhow::ensure!(
            crate::check::reader::valid_ident(id),
            "not an identifier: {id:?}"
        );
    }
    match DbUrl::parse(url)? {
        DbUrl::Sqlite(path) => sqlite::add_rejection(&path, table, every),
        DbUrl::Postgres(conn) => postgres::add_rejection(&conn, schema, table, every),
        DbUrl::Mssql(cfg) => Ok(processor::store::mssql::add_rejection(
            &cfg, schema, table, every,
        )?),
    }
}

/// The storage limit's bulk load (`harness bench`): the mapped rows and log rows of many applications in one
/// transaction, by the fastest path the backend offers, independent of the processor's write path.
pub trait BulkLoad {
    /// How the rows are loaded, for the report.
    fn method(&self) -> &'static str;
    /// Loads one chunk (rows per contract table, log rows); returns the time spent in database calls only.
    fn load(&mut self, per_table: &[Vec<Vec<Value>>], logs: &[LogRow]) -> anyhow::Result<Duration>;
    /// Commits the transaction; returns the time it took.
    fn commit(self: Box<Self>) -> anyhow::Result<Duration>;
}

/// The bulk loader for `url`, its transaction begun, the schema created.
pub fn bulk_loader(url: &str, contract: &Contract) -> anyhow::Result<Box<dyn BulkLoad>> {
    let u = DbUrl::parse(url)?;
    let mut store = processor::store::open(&u, contract.clone())?;
    store.init_schema()?;
    Ok(match u {
        DbUrl::Postgres(conn) => Box::new(postgres::CopyLoad::begin(&conn, contract)?),
        DbUrl::Sqlite(_) => Box::new(StoreLoad::begin(store, sqlite::BULK_METHOD)?),
        DbUrl::Mssql(_) => Box::new(StoreLoad::begin(store, mssql::BULK_METHOD)?),
    })
}

/// A bulk load through the store's own multi-row inserts, for backends without a faster path.
struct StoreLoad {
    store: Box<dyn Store>,
    method: &'static str,
}

impl StoreLoad {
    fn begin(mut store: Box<dyn Store>, method: &'static str) -> anyhow::Result<Self> {
        store.begin()?;
        Ok(StoreLoad { store, method })
    }
}

impl BulkLoad for StoreLoad {
    fn method(&self) -> &'static str {
        self.method
    }
    fn load(&mut self, per_table: &[Vec<Vec<Value>>], logs: &[LogRow]) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        for (t, trows) in per_table.iter().enumerate() {
            let refs: Vec<&[Value]> = trows.iter().map(Vec::as_slice).collect();
            if !refs.is_empty() {
                self.store.insert_rows(t, &refs)?;
            }
        }
        self.store.insert_logs(logs)?;
        Ok(t0.elapsed())
    }
    fn commit(mut self: Box<Self>) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        self.store.commit()?;
        Ok(t0.elapsed())
    }
}

/// Database names for every server backend: lowercase letters, digits and underscores, at most 60 characters.
pub fn db_name(name: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names() {
        assert_eq!(db_name("crash-a-Queue"), "crash_a_queue");
        assert_eq!(db_name("9x"), "_9x");
    }

    #[test]
    fn capabilities_are_stated_once_per_backend() {
        assert!(!Backend::Sqlite.capabilities().server);
        assert_eq!(Backend::all_with(|c| c.commit_cut), vec![Backend::Postgres]);
        assert_eq!(
            Backend::all_with(|c| c.server),
            vec![Backend::Postgres, Backend::Mssql]
        );
    }
}
