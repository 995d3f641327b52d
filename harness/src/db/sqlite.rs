//! SQLite "launcher": one database file per run in a temporary directory. There is no server, so no server
//! faults, no proxy and no restart.

use super::{Backend, Capabilities, DbError, Launcher};
use std::path::PathBuf;

/// What the harness can do to a SQLite database: nothing beyond killing the processors.
pub const CAPABILITIES: Capabilities = Capabilities {
    server: false,
    commit_cut: false,
    restart: false,
    reject_rows: true,
    lose_unsynced: false,
};

/// How `harness bench` loads the storage limit's rows into SQLite.
pub const BULK_METHOD: &str = "SQLite prepared inserts, one transaction";

/// A temporary directory, or the directory `db_url` (`sqlite:DIR` or `DIR`) names, kept after exit.
pub(super) fn launch(db_url: Option<&str>) -> Result<Box<dyn Launcher>, DbError> {
    let Some(u) = db_url else {
        return Ok(Box::new(SqliteDir::new()?));
    };
    let dir = u.strip_prefix("sqlite:").unwrap_or(u);
    let path = PathBuf::from(dir);
    std::fs::create_dir_all(&path)?;
    Ok(Box::new(SqliteDir {
        _tmp: None,
        dir: path,
        keep: true,
    }))
}

/// The linked SQLite library's version.
pub(super) fn server_version() -> String {
    format!("SQLite {}", rusqlite::version())
}

/// `fixture.reject_rows_in`: a trigger (SQLite cannot add a CHECK to an existing table). It fires before the
/// insert is attempted, so an insert-if-absent row that already exists is refused too; `RAISE(ABORT)` is a
/// constraint error (`SQLITE_CONSTRAINT_TRIGGER`).
pub(super) fn add_rejection(path: &std::path::Path, table: &str, every: i64) -> anyhow::Result<()> {
    let c = rusqlite::Connection::open(path)?;
    c.execute_batch(&format!(
        "CREATE TRIGGER IF NOT EXISTS \"fixture_reject_{table}\" BEFORE INSERT ON \"{table}\" \
         WHEN NEW.app_id % {every} = 0 \
         BEGIN SELECT RAISE(ABORT, 'fixture: {table} refuses rows of an app_id that is a multiple of {every}'); END"
    ))?;
    Ok(())
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
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }
    fn describe(&self) -> String {
        format!(
            "SQLite files in {}{}",
            self.dir.display(),
            if self.keep { " (kept)" } else { "" }
        )
    }
}
