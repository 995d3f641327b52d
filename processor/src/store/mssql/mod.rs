//! SQL Server backend (tiberius). The `Store` trait is synchronous, so the store owns a private current-thread
//! tokio runtime and blocks on each call. Multi-row writes are chunked under SQL Server's parameter limit; queue
//! claims use `UPDATE TOP (n) … WITH (ROWLOCK, READPAST, UPDLOCK) OUTPUT`; completion is fenced inside the write
//! transaction. `XACT_ABORT` is OFF for the session so savepoints survive a constraint error (see `sql.rs`).

pub mod config;
pub mod error;
pub mod sql;

use super::dropped::{Dropped, Session, SETTLE_DEADLINE};
use super::{
    ClaimSummary, ErrorKind, InstanceProgress, LogCounts, LogRow, Selection, SourceDoc,
    StatusReport, Store, StoreError, StoreResult, LEASE_DONE,
};
use crate::contract::Contract;
use crate::ident::Ident;
use crate::value::Value;
use config::MssqlConfig;
use error::{classify, err};
use sql::{chunk_rows, Carrier, Names};
use std::collections::HashSet;
use tiberius::{Client, Query, Row, SqlBrowser};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

type Conn = Client<Compat<TcpStream>>;
type TResult<T> = Result<T, tiberius::error::Error>;

/// How often a shared-entity insert is re-run after losing a race on the natural key.
const SHARED_RETRIES: u32 = 5;

/// At most this many bytes of XML per `load_source` request.
const LOAD_CHUNK_BYTES: usize = 8 << 20;

pub struct MssqlStore {
    cfg: MssqlConfig,
    kind: ServerKind,
    rt: Runtime,
    client: Conn,
    contract: Contract,
    names: Names,
    /// Set by `prepare_claims`: this connection claims, so a reconnect warms the claim statement again.
    claims: bool,
    /// This connection's server session `(session id, login time)`, read at connect; `None` if that read failed
    /// or the login cannot see other sessions (`sql::SESSION_OF`).
    session: Option<Session>,
    /// The server sessions of connections dropped by `reconnect`, not yet known to have ended (`settle_dropped`).
    dropped: Dropped,
}

/// `sql::SESSION_OF` on a fresh connection. Without `VIEW SERVER STATE` the answer is `None` (logged once per
/// connect at debug level): the dropped session could not be seen, and the read-back relies on
/// `READCOMMITTEDLOCK` alone (it waits for the dead session's locks on SQL Server, not on Babelfish).
async fn session_of(c: &mut Conn) -> Option<Session> {
    let rows = c
        .simple_query(sql::SESSION_OF)
        .await
        .ok()?
        .into_first_result()
        .await
        .ok()?;
    let r = rows.first()?;
    let id = r.try_get::<i32, _>(0).ok()??;
    let login = r.try_get::<&str, _>(1).ok()??.to_owned();
    if r.try_get::<i32, _>(2).ok()?? != 1 {
        tracing::debug!(
            "no VIEW SERVER STATE: a dropped connection's session cannot be ended before a read-back"
        );
        return None;
    }
    Some((id, login))
}

fn runtime() -> StoreResult<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| StoreError::new(ErrorKind::Fatal, "connect", format!("tokio runtime: {e}")))
}

/// Lock waits end (error 1222, a conflict) before the client-side command timeout would tear the connection down.
fn lock_timeout_ms(cfg: &MssqlConfig) -> u128 {
    (cfg.command_timeout.as_millis() * 3 / 4).max(1000)
}

/// TCP (through the SQL Browser for a named instance), TLS and login within the connect timeout, then the
/// session settings. Follows one server redirect (Azure gateway).
async fn connect(cfg: &MssqlConfig) -> StoreResult<(Conn, ServerKind)> {
    match tokio::time::timeout(cfg.connect_timeout, connect_inner(cfg)).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::new(
            ErrorKind::Transient,
            "connect",
            format!(
                "no connection to {} within {} s",
                cfg.redacted(),
                cfg.connect_timeout.as_secs()
            ),
        )),
    }
}

async fn connect_inner(cfg: &MssqlConfig) -> StoreResult<(Conn, ServerKind)> {
    let mut cfg = cfg.clone();
    let mut redirects = 0;
    loop {
        let tc = cfg.tiberius();
        // Connects directly when no instance name is set; otherwise asks the SQL Browser for the port first.
        let tcp = TcpStream::connect_named(&tc)
            .await
            .map_err(err("connect"))?;
        tcp.set_nodelay(true)
            .map_err(|e| StoreError::new(ErrorKind::Transient, "connect", e.to_string()))?;
        match Client::connect(tc, tcp.compat_write()).await {
            Ok(mut client) => {
                let setup = sql::SESSION_SETUP
                    .replace("{lock_timeout_ms}", &lock_timeout_ms(&cfg).to_string());
                batch(&mut client, &setup)
                    .await
                    .map_err(err("session setup"))?;
                let kind = server_kind(&mut client)
                    .await
                    .map_err(err("session setup"))?;
                return Ok((client, kind));
            }
            Err(tiberius::error::Error::Routing { host, port }) if redirects < 2 => {
                redirects += 1;
                cfg = cfg.redirected(&host, port);
            }
            Err(e) => return Err(classify("connect", e)),
        }
    }
}

/// Which engine answers the TDS login. The T-SQL is one text for both; the kind is detected once per connection
/// for what differs in behaviour, not in syntax (Babelfish ignores locking hints: docs/sqlserver.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    SqlServer,
    /// Babelfish for PostgreSQL (`SERVERPROPERTY('Babelfish') = 1`).
    Babelfish,
}

impl ServerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerKind::SqlServer => "SQL Server",
            ServerKind::Babelfish => "Babelfish",
        }
    }
}

/// `SERVERPROPERTY('Babelfish')` is 1 on Babelfish and NULL on SQL Server (an unknown property name).
async fn server_kind(c: &mut Conn) -> TResult<ServerKind> {
    let rows = c
        .simple_query(sql::SERVER_KIND)
        .await?
        .into_first_result()
        .await?;
    let babelfish = rows
        .first()
        .and_then(|r| r.try_get::<i32, _>(0).ok().flatten())
        == Some(1);
    Ok(if babelfish {
        ServerKind::Babelfish
    } else {
        ServerKind::SqlServer
    })
}

/// A plain SQL batch (not `sp_executesql`): session `SET`s and transaction statements must run at the session's
/// top level, or they would be undone when a dynamic-SQL scope ends.
async fn batch(c: &mut Conn, sql: &str) -> TResult<()> {
    c.simple_query(sql).await?.into_results().await?;
    Ok(())
}

async fn exec(c: &mut Conn, q: Query<'_>) -> TResult<u64> {
    Ok(q.execute(c).await?.total())
}

async fn fetch(c: &mut Conn, q: Query<'_>) -> TResult<Vec<Row>> {
    Ok(q.query(c)
        .await?
        .into_results()
        .await?
        .into_iter()
        .flatten()
        .collect())
}

fn get_i64(op: &'static str, r: &Row, i: usize) -> StoreResult<Option<i64>> {
    r.try_get::<i64, _>(i).map_err(err(op))
}

fn need_i64(op: &'static str, r: &Row, i: usize) -> StoreResult<i64> {
    get_i64(op, r, i)?
        .ok_or_else(|| StoreError::new(ErrorKind::Fatal, op, format!("column {i} is NULL")))
}

fn get_str(op: &'static str, r: &Row, i: usize) -> StoreResult<Option<String>> {
    Ok(r.try_get::<&str, _>(i).map_err(err(op))?.map(str::to_owned))
}

fn need_str(op: &'static str, r: &Row, i: usize) -> StoreResult<String> {
    get_str(op, r, i)?
        .ok_or_else(|| StoreError::new(ErrorKind::Fatal, op, format!("column {i} is NULL")))
}

fn bind_sel(q: &mut Query<'_>, sel: &Selection) {
    q.bind(sel.range.map(|r| r.0));
    q.bind(sel.range.map(|r| r.1));
    q.bind(sel.partition.map(|p| i64::from(p.0)));
    q.bind(sel.partition.map(|p| i64::from(p.1)));
}

/// Binds a text value whose SQL expression is `CAST(@Pn AS NVARCHAR(MAX))` (`sql::param_expr`). NULL goes as a
/// typed integer NULL (INTN, length 0): tiberius 0.13 sends `Option<&str>::None` (and every other NULL string or
/// binary form) with the TDS NULLTYPE 0x1F, which SQL Server accepts and Babelfish refuses ("Data type 0x1F is
/// unknown", 8009). The cast makes both servers see an NVARCHAR NULL.
fn bind_text<'a>(q: &mut Query<'a>, v: Option<&'a str>) {
    match v {
        Some(s) => q.bind(s),
        None => q.bind(Option::<i64>::None),
    }
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Groups documents into requests under the parameter limit and [`LOAD_CHUNK_BYTES`].
fn load_chunks(docs: &[(i64, &str)]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    for r in chunk_rows(2, docs.len()) {
        let mut start = r.start;
        let mut bytes = 0;
        for i in r.clone() {
            let len = docs[i].1.len();
            if i > start && bytes + len > LOAD_CHUNK_BYTES {
                out.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += len;
        }
        out.push(start..r.end);
    }
    out
}

impl MssqlStore {
    pub fn open(cfg: &MssqlConfig, contract: Contract) -> StoreResult<Self> {
        let rt = runtime()?;
        let (mut client, kind) = rt.block_on(connect(cfg))?;
        let session = rt.block_on(session_of(&mut client));
        let names = Names::new(&contract);
        Ok(MssqlStore {
            cfg: cfg.clone(),
            kind,
            rt,
            client,
            contract,
            names,
            claims: false,
            session,
            dropped: Dropped::default(),
        })
    }

    /// Babelfish parses each new statement shape slowly the first time on a connection (its ANTLR parser warms up
    /// per server process; measured with tsql on a loaded 2-core machine: 2-8 s for a first parse, then 2-20 ms
    /// for the same shape). The engine takes `now_ms` just before it claims, so a first claim slower than the
    /// lease came back already expired and was taken over at once, even by the same instance's next claim
    /// (`fencing-takeover-queue` with its 1 s lease). So on Babelfish a new connection runs the claim's text once
    /// with `TOP (0)`: it inserts no placeholder, picks and updates nothing, and returns no row. Any error (the
    /// tables do not exist before `init`) is ignored: the parse, which is what is being warmed, happened anyway.
    /// SQL Server is not touched. Only connections that claim (`Store::prepare_claims`) pay for it: the warm-up
    /// alone took 2.9 s on `processor status` here (2-core machine, load 1), once per connection.
    fn warm_claim(&mut self) {
        if self.kind != ServerKind::Babelfish {
            return;
        }
        let t0 = std::time::Instant::now();
        let mut q = Query::new(sql::claim(&self.names));
        q.bind(0i64);
        q.bind(0i64);
        bind_sel(&mut q, &Selection::default());
        q.bind("");
        q.bind(0i64);
        let r = self.rt.block_on(fetch(&mut self.client, q));
        // An error can end the batch between its `SET XACT_ABORT ON` and `OFF`: restore the session's settings.
        let reset = self.run_batch("warm up", sql::ROLLBACK_AND_RESET);
        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            ok = r.is_ok() && reset.is_ok(),
            "babelfish: claim statement warmed"
        );
    }

    /// The engine behind the connection, detected at login.
    pub fn server_kind(&self) -> ServerKind {
        self.kind
    }

    /// Row count of contract table `table` (tests and diagnostics).
    pub fn table_row_count(&mut self, table: usize) -> StoreResult<u64> {
        let q = Query::new(sql::count_rows(&self.contract.tables[table], &self.names));
        let rows = self
            .rt
            .block_on(fetch(&mut self.client, q))
            .map_err(err("count rows"))?;
        let n = rows
            .first()
            .map(|r| need_i64("count rows", r, 0))
            .transpose()?;
        Ok(n.unwrap_or(0) as u64)
    }

    fn run_batch(&mut self, op: &'static str, sql: &str) -> StoreResult<()> {
        self.rt
            .block_on(batch(&mut self.client, sql))
            .map_err(err(op))
    }
}

/// Runs `sql` as a plain batch on a fresh connection to `cfg` (no transaction): `CREATE/DROP DATABASE` and other
/// administration that cannot run inside a transaction.
fn admin(cfg: &MssqlConfig, op: &'static str, sql: &str) -> StoreResult<()> {
    admin_batches(cfg, &[(op, sql)])
}

/// Runs each `(op, sql)` as a plain batch, in order, on one fresh connection to `cfg`: on Babelfish every new
/// connection costs a login plus slow first parses, so related administration shares one.
fn admin_batches(cfg: &MssqlConfig, batches: &[(&'static str, &str)]) -> StoreResult<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let (mut c, _) = connect(cfg).await?;
        for (op, sql) in batches {
            batch(&mut c, sql).await.map_err(err(op))?;
        }
        let _ = c.close().await;
        Ok(())
    })
}

/// The harness's `[fixture] reject_rows_in`: a CHECK constraint on `schema.table` of the database `cfg` names that
/// refuses every row whose `app_id` is a multiple of `every` (error 547, a constraint error the processor logs as
/// the application's failure), added once the schema exists. A constraint the contract does not know of.
pub fn add_rejection(cfg: &MssqlConfig, schema: &str, table: &str, every: i64) -> StoreResult<()> {
    const OP: &str = "add the fixture's rejecting constraint";
    let s = db_ident(OP, schema)?;
    let t = db_ident(OP, table)?;
    let c = db_ident(OP, &format!("fixture_reject_{table}"))?;
    admin(
        cfg,
        OP,
        &format!(
            "ALTER TABLE {}.{} ADD CONSTRAINT {} CHECK (app_id % {every} <> 0);",
            s.bracket(),
            t.bracket(),
            c.bracket()
        ),
    )
}

fn db_ident(op: &'static str, name: &str) -> StoreResult<Ident> {
    Ident::new(name).map_err(|e| StoreError::new(ErrorKind::Fatal, op, e.to_string()))
}

/// Creates database `name` (if missing) through `server`'s `master` database. For the harness and tests, which
/// give every run a fresh database.
pub fn create_database(server: &MssqlConfig, name: &str) -> StoreResult<()> {
    let id = db_ident("create database", name)?;
    let create = sql::create_database(&id);
    retry_catalog_race(|| admin(&server.with_database("master"), "create database", &create))
}

/// Drops database `name` if present (as [`drop_database`]) and creates it empty, on one connection: a fresh
/// database for a run whose name a previous run may have left.
pub fn recreate_database(server: &MssqlConfig, name: &str) -> StoreResult<()> {
    let id = db_ident("recreate database", name)?;
    let (drop, create) = (sql::drop_database(&id), sql::create_database(&id));
    retry_catalog_race(|| {
        admin_batches(
            &server.with_database("master"),
            &[("drop database", &drop), ("create database", &create)],
        )
    })
}

/// Babelfish: two CREATE DATABASE at once race on PostgreSQL's catalog ("tuple concurrently updated",
/// 33557097); the loser's statement did nothing and can simply run again (seen in CI, tests in parallel). Five
/// retries, 100 ms doubling (the one backoff schedule, `backoff::Backoff`).
fn retry_catalog_race(mut f: impl FnMut() -> StoreResult<()>) -> StoreResult<()> {
    let mut backoff = crate::backoff::RetryPolicy {
        first_delay_ms: 100,
        max_delay_ms: 1_600,
        give_up_after_secs: 60,
    }
    .backoff();
    let mut attempt = 0;
    loop {
        match f() {
            Err(e) if attempt < 5 && e.message.contains("concurrently updated") => {
                attempt += 1;
                match backoff.next_wait() {
                    Some(wait) => std::thread::sleep(wait),
                    None => return Err(e),
                }
            }
            other => return other,
        }
    }
}

/// Copies the source documents of database `from` into `to`'s database (same server; `to` already has the
/// contract's schema and no documents), in one statement on one connection: the harness loads a scenario's
/// documents once and copies them to its second database instead of loading them again. Returns the rows copied.
pub fn copy_source(to: &MssqlConfig, from: &str, contract: &Contract) -> StoreResult<u64> {
    let from = db_ident("copy source", from)?;
    let sql = sql::copy_source(&Names::new(contract), &from);
    let rt = runtime()?;
    rt.block_on(async {
        let (mut c, _) = connect(to).await?;
        let n = exec(&mut c, Query::new(sql))
            .await
            .map_err(err("copy source"))?;
        let _ = c.close().await;
        Ok(n)
    })
}

/// Drops database `name` (if present), disconnecting its sessions first.
pub fn drop_database(server: &MssqlConfig, name: &str) -> StoreResult<()> {
    let id = db_ident("drop database", name)?;
    admin(
        &server.with_database("master"),
        "drop database",
        &sql::drop_database(&id),
    )
}

impl Store for MssqlStore {
    fn backend(&self) -> &'static str {
        "mssql"
    }

    fn contract(&self) -> &Contract {
        &self.contract
    }

    fn init_schema(&mut self) -> StoreResult<()> {
        let ddl = sql::create_all(&self.contract, &self.names);
        let result = (|| {
            self.run_batch("init schema", sql::BEGIN)?;
            self.run_batch("init schema", sql::INIT_LOCK)?;
            for stmt in &ddl {
                self.run_batch("init schema", stmt)?;
            }
            self.run_batch("init schema", sql::COMMIT)
        })();
        if result.is_err() {
            let _ = self.run_batch("init schema", sql::ROLLBACK);
        }
        result
    }

    fn load_source(&mut self, docs: &[(i64, String)]) -> StoreResult<u64> {
        // A duplicate app_id inside one VALUES list would break the primary key; the first occurrence wins.
        let mut seen = HashSet::with_capacity(docs.len());
        let docs: Vec<(i64, &str)> = docs
            .iter()
            .filter(|d| seen.insert(d.0))
            .map(|d| (d.0, d.1.as_str()))
            .collect();
        let mut n = 0;
        for r in load_chunks(&docs) {
            let mut q = Query::new(sql::insert_source(&self.names, r.len()));
            for &(id, xml) in &docs[r] {
                q.bind(id);
                q.bind(xml);
            }
            n += self
                .rt
                .block_on(exec(&mut self.client, q))
                .map_err(err("load source"))?;
        }
        Ok(n)
    }

    fn fetch_pending(
        &mut self,
        sel: &Selection,
        from: i64,
        limit: usize,
    ) -> StoreResult<Vec<SourceDoc>> {
        const OP: &str = "fetch pending";
        let mut q = Query::new(sql::fetch_pending(&self.names));
        q.bind(from);
        q.bind(limit_i64(limit));
        bind_sel(&mut q, sel);
        let rows = self
            .rt
            .block_on(fetch(&mut self.client, q))
            .map_err(err(OP))?;
        rows.iter()
            .map(|r| {
                Ok(SourceDoc {
                    app_id: need_i64(OP, r, 0)?,
                    xml: need_str(OP, r, 1)?,
                    fence: None,
                })
            })
            .collect()
    }

    fn pending_count(&mut self, sel: &Selection) -> StoreResult<u64> {
        const OP: &str = "pending count";
        let mut q = Query::new(sql::pending_count(&self.names));
        bind_sel(&mut q, sel);
        let rows = self
            .rt
            .block_on(fetch(&mut self.client, q))
            .map_err(err(OP))?;
        let n = rows.first().map(|r| need_i64(OP, r, 0)).transpose()?;
        Ok(n.unwrap_or(0) as u64)
    }

    fn pending_at(&mut self, sel: &Selection, offset: u64) -> StoreResult<Option<i64>> {
        const OP: &str = "pending at";
        let mut q = Query::new(sql::pending_at(&self.names));
        bind_sel(&mut q, sel);
        q.bind(i64::try_from(offset).unwrap_or(i64::MAX));
        let rows = self
            .rt
            .block_on(fetch(&mut self.client, q))
            .map_err(err(OP))?;
        match rows.first() {
            Some(r) => get_i64(OP, r, 0),
            None => Ok(None),
        }
    }

    fn claim(
        &mut self,
        sel: &Selection,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<SourceDoc>> {
        const OP: &str = "claim";
        let mut q = Query::new(sql::claim(&self.names));
        q.bind(now_ms);
        q.bind(limit_i64(limit));
        bind_sel(&mut q, sel);
        q.bind(owner);
        q.bind(now_ms.saturating_add(lease_ms));
        let rows = self
            .rt
            .block_on(fetch(&mut self.client, q))
            .map_err(err(OP))?;
        rows.iter()
            .map(|r| {
                Ok(SourceDoc {
                    app_id: need_i64(OP, r, 0)?,
                    fence: Some(need_i64(OP, r, 1)?),
                    xml: need_str(OP, r, 2)?,
                })
            })
            .collect()
    }

    fn renew(
        &mut self,
        owner: &str,
        app_ids: &[i64],
        now_ms: i64,
        until_ms: i64,
    ) -> StoreResult<u64> {
        let mut n = 0;
        for r in chunk_rows(1, app_ids.len()) {
            let mut q = Query::new(sql::renew(&self.names, r.len()));
            q.bind(owner);
            q.bind(until_ms);
            q.bind(LEASE_DONE);
            q.bind(now_ms);
            for &id in &app_ids[r] {
                q.bind(id);
            }
            n += self
                .rt
                .block_on(exec(&mut self.client, q))
                .map_err(err("renew"))?;
        }
        Ok(n)
    }

    fn clock_ms(&mut self) -> StoreResult<i64> {
        const OP: &str = "clock";
        let q = Query::new(sql::CLOCK_MS);
        let rows = self
            .rt
            .block_on(fetch(&mut self.client, q))
            .map_err(err(OP))?;
        match rows.first() {
            Some(r) => need_i64(OP, r, 0),
            None => Err(StoreError::new(ErrorKind::Fatal, OP, "no row".to_owned())),
        }
    }

    fn live_claims(&mut self, sel: &Selection, now_ms: i64) -> StoreResult<u64> {
        const OP: &str = "live claims";
        let mut q = Query::new(sql::live_claims(&self.names));
        q.bind(now_ms);
        q.bind(LEASE_DONE);
        bind_sel(&mut q, sel);
        let rows = self
            .rt
            .block_on(fetch(&mut self.client, q))
            .map_err(err(OP))?;
        let n = rows.first().map(|r| need_i64(OP, r, 0)).transpose()?;
        Ok(n.unwrap_or(0) as u64)
    }

    fn begin(&mut self) -> StoreResult<()> {
        self.run_batch("begin", sql::BEGIN)
    }
    fn commit(&mut self) -> StoreResult<()> {
        self.run_batch(super::op::COMMIT, sql::COMMIT)
    }
    fn rollback(&mut self) -> StoreResult<()> {
        self.run_batch("rollback", sql::ROLLBACK)
    }
    fn savepoint(&mut self) -> StoreResult<()> {
        self.run_batch("savepoint", sql::SAVEPOINT)
    }
    /// SQL Server has no `RELEASE SAVEPOINT`; the next `SAVE TRANSACTION app` simply moves the name.
    fn release_savepoint(&mut self) -> StoreResult<()> {
        debug_assert!(sql::RELEASE.is_empty());
        Ok(())
    }
    fn rollback_to_savepoint(&mut self) -> StoreResult<()> {
        self.run_batch("rollback to savepoint", sql::ROLLBACK_TO)
    }

    fn insert_rows(&mut self, table: usize, rows: &[&[Value]]) -> StoreResult<()> {
        let t = &self.contract.tables[table];
        // Shared entities: one row per natural key within the call, the first one wins (a later duplicate in
        // the same VALUES list would pass NOT EXISTS and break the UNIQUE constraint).
        let rows: Vec<&[Value]> = if t.shared {
            let mut seen = HashSet::with_capacity(rows.len());
            rows.iter()
                .copied()
                .filter(|r| seen.insert(t.key.iter().map(|&k| r[k].clone()).collect::<Vec<_>>()))
                .collect()
        } else {
            rows.to_vec()
        };
        let carriers: Vec<Carrier> = t.columns.iter().map(|c| sql::carrier(c.ty)).collect();
        for r in chunk_rows(t.columns.len(), rows.len()) {
            let mut retries = 0;
            loop {
                let mut q = Query::new(sql::insert_rows(t, &self.names, r.len()));
                for row in &rows[r.clone()] {
                    for (v, c) in row.iter().zip(&carriers) {
                        match c {
                            Carrier::Int => q.bind(v.as_i64()),
                            Carrier::Text => bind_text(&mut q, v.as_text()),
                        }
                    }
                }
                match self.rt.block_on(exec(&mut self.client, q)) {
                    Ok(_) => break,
                    // A shared entity another writer inserted after our NOT EXISTS looked: possible where the
                    // `UPDLOCK, HOLDLOCK` hints are ignored (Babelfish). Only the statement failed (XACT_ABORT
                    // is OFF); run it again and NOT EXISTS now sees the committed row.
                    Err(e) if t.shared && retries < SHARED_RETRIES && error::is_duplicate(&e) => {
                        retries += 1;
                    }
                    Err(e) => return Err(classify("insert rows", e)),
                }
            }
        }
        Ok(())
    }

    fn insert_logs(&mut self, rows: &[LogRow]) -> StoreResult<()> {
        for r in chunk_rows(sql::LOG_COLS, rows.len()) {
            let mut q = Query::new(sql::insert_logs(&self.names, r.len()));
            for l in &rows[r] {
                q.bind(l.app_id);
                q.bind(l.status.as_str());
                bind_text(&mut q, l.reason.as_deref());
                q.bind(l.attempts);
                q.bind(l.instance_id);
                q.bind(l.session_id.as_str());
                q.bind(l.fence);
                q.bind(l.coerced);
            }
            self.rt
                .block_on(exec(&mut self.client, q))
                .map_err(err("insert log"))?;
        }
        Ok(())
    }

    fn complete_claims(&mut self, owner: &str, claims: &[(i64, i64)]) -> StoreResult<Vec<i64>> {
        const OP: &str = "complete claims";
        let mut kept = Vec::with_capacity(claims.len());
        for r in chunk_rows(2, claims.len()) {
            let mut q = Query::new(sql::complete_claims(
                &self.names,
                r.len(),
                super::complete_by_owner(),
            ));
            q.bind(owner);
            q.bind(LEASE_DONE);
            for &(id, fence) in &claims[r] {
                q.bind(id);
                q.bind(fence);
            }
            let rows = self
                .rt
                .block_on(fetch(&mut self.client, q))
                .map_err(err(OP))?;
            for row in &rows {
                kept.push(need_i64(OP, row, 0)?);
            }
        }
        Ok(kept)
    }

    fn logged(&mut self, app_ids: &[i64]) -> StoreResult<Vec<(i64, String)>> {
        const OP: &str = "read log";
        let mut out = Vec::new();
        for r in chunk_rows(1, app_ids.len()) {
            let mut q = Query::new(sql::logged(&self.names, r.len()));
            for &id in &app_ids[r] {
                q.bind(id);
            }
            let rows = self
                .rt
                .block_on(fetch(&mut self.client, q))
                .map_err(err(OP))?;
            for row in &rows {
                out.push((need_i64(OP, row, 0)?, need_str(OP, row, 1)?));
            }
        }
        Ok(out)
    }

    fn status(&mut self, now_ms: i64) -> StoreResult<StatusReport> {
        const OP: &str = "status";
        let q = Query::new(sql::status_counts(&self.names));
        let rows = self
            .rt
            .block_on(fetch(&mut self.client, q))
            .map_err(err(OP))?;
        let counts = match rows.first() {
            Some(r) => LogCounts {
                total: need_i64(OP, r, 0)?,
                success: need_i64(OP, r, 1)?,
                failed: need_i64(OP, r, 2)?,
                coerced_apps: need_i64(OP, r, 3)?,
                coerced_values: need_i64(OP, r, 4)?,
            },
            None => LogCounts::default(),
        };
        let q = Query::new(sql::status_instances(&self.names));
        let rows = self
            .rt
            .block_on(fetch(&mut self.client, q))
            .map_err(err(OP))?;
        let instances = rows
            .iter()
            .map(|r| {
                Ok(InstanceProgress {
                    instance_id: need_i64(OP, r, 0)?,
                    sessions: need_i64(OP, r, 1)? as u64,
                    success: need_i64(OP, r, 2)? as u64,
                    failed: need_i64(OP, r, 3)? as u64,
                    last_processed_at: get_str(OP, r, 4)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let mut q = Query::new(sql::status_claims(&self.names));
        q.bind(now_ms);
        q.bind(LEASE_DONE);
        let rows = self
            .rt
            .block_on(fetch(&mut self.client, q))
            .map_err(err(OP))?;
        let claims = rows
            .iter()
            .map(|r| {
                Ok(ClaimSummary {
                    owner: need_str(OP, r, 0)?,
                    live: need_i64(OP, r, 1)? as u64,
                    expired: need_i64(OP, r, 2)? as u64,
                    earliest_expiry_ms: get_i64(OP, r, 3)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(StatusReport::from_counts(counts, instances, claims))
    }

    fn reconnect(&mut self) -> StoreResult<()> {
        // The old connection is dropped on success; the server ends its session when it notices, which only
        // `settle_dropped` waits for.
        self.dropped.push(self.session.take());
        (self.client, self.kind) = self.rt.block_on(connect(&self.cfg))?;
        self.session = self.rt.block_on(session_of(&mut self.client));
        if self.claims {
            self.warm_claim();
        }
        Ok(())
    }

    /// Ends each dropped connection's server session (`KILL`) and waits until it is gone from
    /// `sys.dm_exec_sessions`, where a killed session stays until its rollback is done: the same contract as the
    /// PostgreSQL store's. On SQL Server the read-back's `READCOMMITTEDLOCK` would wait for the session's locks
    /// anyway; on Babelfish (PostgreSQL MVCC underneath) nothing else makes the read wait (docs/sqlserver.md).
    fn settle_dropped(&mut self) -> StoreResult<()> {
        const OP: &str = "settle dropped session";
        let (rt, client) = (&self.rt, &mut self.client);
        self.dropped.settle(
            OP,
            |(id, login)| {
                let mut q = Query::new(sql::SETTLE);
                q.bind(*id);
                q.bind(login.as_str());
                let rows = rt.block_on(fetch(client, q)).map_err(err(OP))?;
                Ok(match rows.first() {
                    Some(r) => r.try_get::<i32, _>(0).map_err(err(OP))? == Some(1),
                    None => false,
                })
            },
            |(id, _)| {
                format!(
                    "the server session {id} of a dropped connection is still there after \
                     {SETTLE_DEADLINE:?} (KILL needs ALTER ANY CONNECTION)"
                )
            },
        )
    }

    fn prepare_claims(&mut self) {
        self.claims = true;
        self.warm_claim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_chunks_respect_rows_and_bytes() {
        let big = "x".repeat(3 << 20);
        let docs: Vec<(i64, &str)> = (0..5).map(|i| (i, big.as_str())).collect();
        // 3 MiB each, 8 MiB per request: two per chunk.
        assert_eq!(load_chunks(&docs), vec![0..2, 2..4, 4..5]);
        let small: Vec<(i64, &str)> = (0..2500).map(|i| (i, "<a/>")).collect();
        assert_eq!(load_chunks(&small), vec![0..1000, 1000..2000, 2000..2500]);
        assert!(load_chunks(&[]).is_empty());
        // A single oversized document still goes, alone.
        let huge = "y".repeat(9 << 20);
        assert_eq!(
            load_chunks(&[(1, huge.as_str()), (2, "<a/>")]),
            vec![0..1, 1..2]
        );
    }

    #[test]
    fn lock_timeout_is_below_the_command_timeout() {
        let cfg = MssqlConfig::parse("mssql://u:p@h/db?command_timeout_secs=60").expect("cfg");
        assert_eq!(lock_timeout_ms(&cfg), 45_000);
        let cfg = MssqlConfig::parse("mssql://u:p@h/db?command_timeout_secs=1").expect("cfg");
        assert_eq!(lock_timeout_ms(&cfg), 1000);
    }

    #[test]
    fn connecting_to_nothing_is_a_transient_error_without_the_password() {
        // Port 1 on localhost: refused at once (or timed out), never a hang, never a panic.
        let cfg = MssqlConfig::parse("mssql://sa:TopSecret9@127.0.0.1:1/db?connect_timeout_secs=3")
            .expect("cfg");
        let contract = Contract::from_json(fixtures::CONTRACT_JSON).expect("built-in contract");
        match MssqlStore::open(&cfg, contract) {
            Ok(_) => panic!("connected to port 1"),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::Transient, "{e}");
                assert!(!e.to_string().contains("TopSecret9"), "{e}");
            }
        }
    }
}
