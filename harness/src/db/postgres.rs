//! PostgreSQL launchers: a private cluster started from the installed server binaries (`fixtures::pg::PgCluster`,
//! restartable), or an existing server given by `--db-url`; and the storage limit's bulk load (`COPY … FROM STDIN`)
//! used by `harness bench`. All of the harness's PostgreSQL-only SQL is in this file.

use super::{db_name, Backend, BulkLoad, Capabilities, DbError, Launcher};
use fixtures::pg::PgCluster;
use processor::contract::Contract;
use processor::store::url::PgUrl;
use processor::store::LogRow;
use processor::value::Value;
use std::io::Write as _;
use std::time::{Duration, Instant};

/// A private cluster: server faults, the proxy's cut-reply (it reads PostgreSQL's wire protocol) and restarts.
pub const CAPABILITIES: Capabilities = Capabilities {
    server: true,
    commit_cut: true,
    restart: true,
    reject_rows: true,
    lose_unsynced: true,
};

/// A private cluster, or the existing server `db_url` names.
pub(super) fn launch(db_url: Option<&str>) -> Result<Box<dyn Launcher>, DbError> {
    Ok(match db_url {
        None => Box::new(PgLauncher::new(PgCluster::start()?)),
        Some(u) => Box::new(ExternalPg { url: u.to_owned() }),
    })
}

/// The server's version and the settings that decide its commit cost.
pub(super) fn server_version(conn: &PgUrl) -> anyhow::Result<String> {
    let mut c = conn.connect()?;
    let v: String = c.query_one("SHOW server_version", &[])?.get(0);
    let fsync: String = c.query_one("SHOW fsync", &[])?.get(0);
    let sc: String = c.query_one("SHOW synchronous_commit", &[])?.get(0);
    Ok(format!(
        "PostgreSQL {v} (fsync={fsync}, synchronous_commit={sc})"
    ))
}

/// `fixture.reject_rows_in`: a CHECK constraint (checked before `ON CONFLICT`, so an insert-if-absent row that
/// already exists is refused too; SQLSTATE 23514).
pub(super) fn add_rejection(
    conn: &PgUrl,
    schema: &str,
    table: &str,
    every: i64,
) -> anyhow::Result<()> {
    let mut c = conn.connect()?;
    c.batch_execute(&format!(
        "ALTER TABLE \"{schema}\".\"{table}\" ADD CONSTRAINT \"fixture_reject_{table}\" \
         CHECK (app_id % {every} <> 0)"
    ))?;
    Ok(())
}

/// The storage limit's bulk load: `COPY … FROM STDIN` (text format) per table and for the log, in one
/// transaction on a connection of its own. Like the checker's queries these are the bench's own statements, an
/// independent baseline, not the processor's write path; identifiers come from the validated contract, quoted.
pub struct CopyLoad {
    client: postgres::Client,
    table_sql: Vec<String>,
    log_sql: String,
}

impl CopyLoad {
    pub(super) fn begin(conn: &PgUrl, contract: &Contract) -> anyhow::Result<Self> {
        let schema = contract
            .schema
            .as_ref()
            .map_or_else(|| "public".into(), |s| s.ansi());
        let table_sql = contract
            .tables
            .iter()
            .map(|table| {
                let cols: Vec<String> = table.columns.iter().map(|c| c.name.ansi()).collect();
                format!(
                    "COPY {schema}.{} ({}) FROM STDIN",
                    table.name.ansi(),
                    cols.join(", ")
                )
            })
            .collect();
        let log_sql = format!(
            "COPY {schema}.\"processing_log\" (app_id, status, failure_reason, attempts, instance_id, session_id, \
             fence, coerced, processed_at) FROM STDIN"
        );
        let mut client = conn.connect()?;
        client.batch_execute("BEGIN")?;
        Ok(CopyLoad {
            client,
            table_sql,
            log_sql,
        })
    }

    fn copy_in(&mut self, sql: &str, buf: &[u8]) -> anyhow::Result<()> {
        let mut w = self.client.copy_in(sql)?;
        w.write_all(buf)?;
        w.finish()?;
        Ok(())
    }
}

impl BulkLoad for CopyLoad {
    fn method(&self) -> &'static str {
        "PostgreSQL COPY … FROM STDIN (text), one transaction"
    }
    fn load(&mut self, per_table: &[Vec<Vec<Value>>], logs: &[LogRow]) -> anyhow::Result<Duration> {
        let bufs: Vec<Vec<u8>> = per_table
            .iter()
            .map(|t| copy_text(t.iter().map(|r| r.iter().map(Value::canonical))))
            .collect();
        let log_buf = copy_text(logs.iter().map(|l| {
            [
                Some(l.app_id.to_string()),
                Some(l.status.as_str().to_owned()),
                l.reason.clone(),
                Some(l.attempts.to_string()),
                Some(l.instance_id.to_string()),
                Some(l.session_id.clone()),
                None,
                Some(l.coerced.to_string()),
                Some(chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()),
            ]
            .into_iter()
        }));
        let t0 = Instant::now();
        for (t, buf) in bufs.iter().enumerate() {
            if buf.is_empty() {
                continue;
            }
            let sql = self.table_sql[t].clone();
            self.copy_in(&sql, buf)?;
        }
        let sql = self.log_sql.clone();
        self.copy_in(&sql, &log_buf)?;
        Ok(t0.elapsed())
    }
    fn commit(mut self: Box<Self>) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        self.client.batch_execute("COMMIT")?;
        Ok(t0.elapsed())
    }
}

/// COPY text format: tab-separated, `\N` for NULL, backslash escapes.
pub fn copy_text<R, F>(rows: R) -> Vec<u8>
where
    R: Iterator<Item = F>,
    F: Iterator<Item = Option<String>>,
{
    let mut out = Vec::new();
    for row in rows {
        for (i, v) in row.enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            match v {
                None => out.extend_from_slice(b"\\N"),
                Some(s) => {
                    for b in s.bytes() {
                        match b {
                            b'\\' => out.extend_from_slice(b"\\\\"),
                            b'\t' => out.extend_from_slice(b"\\t"),
                            b'\n' => out.extend_from_slice(b"\\n"),
                            b'\r' => out.extend_from_slice(b"\\r"),
                            _ => out.push(b),
                        }
                    }
                }
            }
        }
        out.push(b'\n');
    }
    out
}

/// A private PostgreSQL cluster started from the installed server binaries, removed on drop.
pub struct PgLauncher {
    pub cluster: PgCluster,
    /// The cluster on the lazyfs layer (`lose-unsynced`), started the first time a scenario needs it.
    pub lazy: Option<super::lazy_pg::LazyPg>,
    /// The last database was made on `lazy`: `restart` restarts that cluster.
    pub on_lazy: bool,
}

impl PgLauncher {
    /// A launcher on `cluster`; the lazyfs cluster is started when a scenario first needs it.
    pub fn new(cluster: PgCluster) -> PgLauncher {
        PgLauncher {
            cluster,
            lazy: None,
            on_lazy: false,
        }
    }
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
    /// Isolation: a server that an earlier scenario left broken (a restart that did not come back, a crash) is
    /// restarted, or replaced by a new cluster, before this scenario gets its database; a failure says why.
    fn fresh_database(&mut self, name: &str) -> Result<String, DbError> {
        self.on_lazy = false;
        let db = db_name(name);
        let first = match self.cluster.create_database(&db) {
            Ok(url) => return Ok(url),
            Err(e) => e,
        };
        if self.cluster.connect("postgres").is_ok() {
            // The server answers: the failure is about this database, not the server.
            return Err(first.into());
        }
        eprintln!(
            "PostgreSQL on 127.0.0.1:{} is not usable ({first}); restarting it for {name}",
            self.cluster.port()
        );
        let restarted = self.cluster.restart();
        if restarted.is_ok() {
            if let Ok(url) = self.cluster.create_database(&db) {
                return Ok(url);
            }
        }
        eprintln!(
            "PostgreSQL on 127.0.0.1:{} did not come back ({}); starting a new cluster for {name}",
            self.cluster.port(),
            restarted.err().map_or_else(
                || "it does not accept CREATE DATABASE".into(),
                |e| e.to_string()
            )
        );
        let fresh = PgCluster::start().map_err(|e| {
            DbError::Other(format!(
                "the PostgreSQL server broke ({first}) and a replacement could not be started: {e}"
            ))
        })?;
        self.cluster = fresh;
        Ok(self.cluster.create_database(&db)?)
    }
    fn fresh_database_lazy(&mut self, name: &str) -> Result<String, DbError> {
        let lazy = match self.lazy.take() {
            Some(l) => l,
            None => super::lazy_pg::LazyPg::start()?,
        };
        let lazy = self.lazy.insert(lazy);
        self.on_lazy = true;
        lazy.create_database(&db_name(name))
    }
    fn lose_unsynced(&mut self) -> Result<String, DbError> {
        match self.lazy.as_mut() {
            Some(l) if self.on_lazy => l.lose_unsynced(),
            _ => Err(DbError::Other(
                "lose-unsynced: the run's database is not on the lazyfs layer".into(),
            )),
        }
    }
    fn restart(&mut self) -> Result<(), DbError> {
        if let (true, Some(l)) = (self.on_lazy, self.lazy.as_mut()) {
            return l.restart();
        }
        self.cluster.kill9()?;
        self.cluster.restart()?;
        Ok(())
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            lose_unsynced: super::lazy_pg::available(),
            ..CAPABILITIES
        }
    }
    fn describe(&self) -> String {
        match &self.lazy {
            Some(l) => format!(
                "private PostgreSQL clusters on 127.0.0.1:{} and (data directory on lazyfs) 127.0.0.1:{}",
                self.cluster.port(),
                l.port()
            ),
            None => format!(
                "private PostgreSQL cluster on 127.0.0.1:{}",
                self.cluster.port()
            ),
        }
    }
}

/// An existing PostgreSQL server (`--db-url`): each run gets a new database created through that URL.
pub struct ExternalPg {
    url: String,
}

impl ExternalPg {
    fn url_for(&self, db: &str) -> Result<String, DbError> {
        Ok(self
            .parsed()?
            .with_database(db)
            .map_err(|e| DbError::Other(e.to_string()))?
            .connection_url())
    }

    fn parsed(&self) -> Result<processor::store::url::PgUrl, DbError> {
        use processor::store::url::DbUrl;
        match DbUrl::parse(&self.url) {
            Ok(DbUrl::Postgres(pg)) => Ok(pg),
            Ok(other) => Err(DbError::Other(format!(
                "--db-url {other} is not a PostgreSQL url"
            ))),
            Err(e) => Err(DbError::Other(format!("--db-url: {e}"))),
        }
    }
}

impl Launcher for ExternalPg {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }
    fn fresh_database(&mut self, name: &str) -> Result<String, DbError> {
        let db = db_name(name);
        let mut client = self.parsed()?.connect().map_err(|e| {
            DbError::Other(format!(
                "cannot connect to --db-url: {}",
                processor::store::postgres::error::with_causes(&e)
            ))
        })?;
        // Identifiers cannot be bound; `db_name` leaves only [a-z0-9_].
        // Two statements: several in one simple query form one implicit transaction, which these refuse.
        for sql in [
            format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{db}\""),
        ] {
            client.batch_execute(&sql).map_err(|e| {
                DbError::Other(format!(
                    "cannot create database {db}: {}",
                    processor::store::postgres::error::with_causes(&e)
                ))
            })?;
        }
        self.url_for(&db)
    }
    fn restart(&mut self) -> Result<(), DbError> {
        Err(DbError::Other(
            "cannot restart a server given by --db-url".into(),
        ))
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            restart: false,
            lose_unsynced: false,
            ..CAPABILITIES
        }
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
        let e = ExternalPg {
            url: "postgres://u:p@127.0.0.1:5432/postgres?sslmode=disable".into(),
        };
        assert_eq!(
            e.url_for("run_1").expect("ok"),
            "postgres://u:p@127.0.0.1:5432/run_1?sslmode=disable"
        );
        let e = ExternalPg {
            url: "postgres://127.0.0.1".into(),
        };
        assert_eq!(e.url_for("d").expect("ok"), "postgres://127.0.0.1/d");
        // An '@' in the password stays in the password.
        let e = ExternalPg {
            url: "postgres://u:a@b@h:5/postgres".into(),
        };
        assert_eq!(e.url_for("d").expect("ok"), "postgres://u:a%40b@h:5/d");
    }
}
