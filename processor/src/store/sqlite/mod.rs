//! SQLite backend (rusqlite, bundled): the embedded default. One writer at a time (`BEGIN IMMEDIATE`), WAL so
//! readers never block, `synchronous=FULL` so a committed application survives a crash of the machine too.

pub mod error;
pub mod sql;

use super::{
    ClaimSummary, InstanceProgress, LogCounts, LogRow, Selection, SourceDoc, StatusReport, Store,
    StoreResult, LEASE_DONE,
};
use crate::contract::Contract;
use crate::value::Value;
use error::err;
use rusqlite::types::ToSqlOutput;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a writer waits for the database lock before the attempt counts as transient.
pub const BUSY_TIMEOUT_SECS: u64 = 60;

pub struct SqliteStore {
    path: PathBuf,
    conn: Connection,
    contract: Contract,
    insert_sql: Vec<String>,
    /// Queue mode: claims scan from here (just after this connection's last claim) and wrap to the start when
    /// nothing is left after it, which is also when expired leases behind the cursor are taken over.
    claim_cursor: i64,
}

impl SqliteStore {
    pub fn open(path: &Path, contract: Contract) -> StoreResult<Self> {
        let conn = connect(path)?;
        let insert_sql = contract.tables.iter().map(sql::insert_row).collect();
        Ok(SqliteStore {
            path: path.to_owned(),
            conn,
            contract,
            insert_sql,
            claim_cursor: i64::MIN,
        })
    }
}

fn connect(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(err("open"))?;
    // SQLite's default busy handler sleeps up to 100 ms between tries, so a process that just committed wins the
    // lock again and again while the others sleep: instances starve. Short, jittered waits keep it fair.
    conn.busy_handler(Some(busy_wait)).map_err(err("open"))?;
    conn.execute_batch(sql::PRAGMAS).map_err(err("open"))?;
    if super::no_sync() {
        conn.execute_batch(sql::NO_SYNC_PRAGMA)
            .map_err(err("open"))?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Mean wait between two tries for the write lock.
const BUSY_POLL_MICROS: u64 = 150;

/// Waits about `BUSY_POLL_MICROS` per try, up to `BUSY_TIMEOUT_SECS`. The holder of the lock gives it up only for the
/// moment between its COMMIT and its next BEGIN (tens of microseconds): a waiter that polls rarely almost never
/// sees it free, and one instance ends up doing all the work.
fn busy_wait(tries: i32) -> bool {
    if u64::try_from(tries).unwrap_or(0) > BUSY_TIMEOUT_SECS * 1_000_000 / BUSY_POLL_MICROS {
        return false;
    }
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()) % BUSY_POLL_MICROS);
    std::thread::sleep(Duration::from_micros(BUSY_POLL_MICROS / 2 + jitter));
    true
}

fn sel_params(sel: &Selection) -> (Option<i64>, Option<i64>, Option<i64>, Option<i64>) {
    (
        sel.range.map(|r| r.0),
        sel.range.map(|r| r.1),
        sel.partition.map(|p| i64::from(p.0)),
        sel.partition.map(|p| i64::from(p.1)),
    )
}

fn value_sql(v: &Value) -> ToSqlOutput<'_> {
    use rusqlite::types::{Null, ValueRef};
    match v {
        Value::Null => ToSqlOutput::from(Null),
        Value::Int(i) => ToSqlOutput::from(*i),
        Value::Bit(b) => ToSqlOutput::from(i64::from(*b)),
        Value::Decimal(s) | Value::Text(s) | Value::Date(s) | Value::DateTime(s) => {
            ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
        }
    }
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn contract(&self) -> &Contract {
        &self.contract
    }

    fn init_schema(&mut self) -> StoreResult<()> {
        let c = &self.contract;
        let mut ddl = vec![
            sql::create_source(c),
            sql::CREATE_LOG.to_owned(),
            sql::CREATE_CLAIM.to_owned(),
        ];
        ddl.extend(c.tables.iter().map(sql::create_target));
        // IMMEDIATE: the column check and its migration below must not race another instance's `init`.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err("init schema"))?;
        for stmt in ddl {
            tx.execute_batch(&stmt).map_err(err("init schema"))?;
        }
        // A database created before `processing_log.coerced` existed gains it (0 for the rows already logged).
        let has: i64 = tx
            .query_row(sql::HAS_COERCED, [], |r| r.get(0))
            .map_err(err("init schema"))?;
        if has == 0 {
            tx.execute_batch(sql::ADD_COERCED)
                .map_err(err("init schema"))?;
        }
        tx.commit().map_err(err("init schema"))
    }

    fn load_source(&mut self, docs: &[(i64, String)]) -> StoreResult<u64> {
        let insert = sql::insert_source(&self.contract);
        let tx = self.conn.transaction().map_err(err("load source"))?;
        let mut n = 0;
        {
            let mut stmt = tx.prepare_cached(&insert).map_err(err("load source"))?;
            for (id, xml) in docs {
                n += stmt.execute(params![id, xml]).map_err(err("load source"))? as u64;
            }
        }
        tx.commit().map_err(err("load source"))?;
        Ok(n)
    }

    fn fetch_pending(
        &mut self,
        sel: &Selection,
        from: i64,
        limit: usize,
    ) -> StoreResult<Vec<SourceDoc>> {
        let q = super::fetch_sql(sql::fetch_pending(&self.contract));
        let (lo, hi, n, i) = sel_params(sel);
        let mut stmt = self.conn.prepare_cached(&q).map_err(err("fetch pending"))?;
        let rows = stmt
            .query_map(params![from, limit as i64, lo, hi, n, i], |r| {
                Ok(SourceDoc {
                    app_id: r.get(0)?,
                    xml: r.get(1)?,
                    fence: None,
                })
            })
            .map_err(err("fetch pending"))?;
        rows.collect::<Result<_, _>>().map_err(err("fetch pending"))
    }

    fn pending_count(&mut self, sel: &Selection) -> StoreResult<u64> {
        let q = sql::pending_count(&self.contract);
        let (lo, hi, n, i) = sel_params(sel);
        let none: Option<i64> = None;
        let mut stmt = self.conn.prepare_cached(&q).map_err(err("pending count"))?;
        let c: i64 = stmt
            .query_row(params![none, none, lo, hi, n, i], |r| r.get(0))
            .map_err(err("pending count"))?;
        Ok(c as u64)
    }

    fn pending_at(&mut self, sel: &Selection, offset: u64) -> StoreResult<Option<i64>> {
        let q = sql::pending_at(&self.contract);
        let (lo, hi, n, i) = sel_params(sel);
        let none: Option<i64> = None;
        let mut stmt = self.conn.prepare_cached(&q).map_err(err("pending at"))?;
        stmt.query_row(params![offset as i64, none, lo, hi, n, i], |r| r.get(0))
            .optional()
            .map_err(err("pending at"))
    }

    fn claim(
        &mut self,
        sel: &Selection,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<SourceDoc>> {
        let q = sql::claim_candidates(&self.contract);
        let (lo, hi, n, i) = sel_params(sel);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err("claim"))?;
        let mut out = Vec::new();
        {
            let mut cand = tx.prepare_cached(&q).map_err(err("claim"))?;
            let mut docs: Vec<(i64, String)> = Vec::new();
            for from in [self.claim_cursor, i64::MIN] {
                docs = cand
                    .query_map(params![now_ms, limit as i64, lo, hi, n, i, from], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .map_err(err("claim"))?
                    .collect::<Result<_, _>>()
                    .map_err(err("claim"))?;
                if !docs.is_empty() || from == i64::MIN {
                    break;
                }
            }
            self.claim_cursor = docs.last().map_or(i64::MIN, |d| d.0.saturating_add(1));
            let mut up = tx.prepare_cached(sql::CLAIM_UPSERT).map_err(err("claim"))?;
            for (app_id, xml) in docs {
                let fence: Option<i64> = up
                    .query_row(
                        params![app_id, owner, super::lease_until(now_ms, lease_ms), now_ms],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(err("claim"))?;
                if let Some(fence) = fence {
                    out.push(SourceDoc {
                        app_id,
                        xml,
                        fence: Some(fence),
                    });
                }
            }
        }
        tx.commit().map_err(err("claim"))?;
        Ok(out)
    }

    fn renew(
        &mut self,
        owner: &str,
        app_ids: &[i64],
        now_ms: i64,
        until_ms: i64,
    ) -> StoreResult<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err("renew"))?;
        let mut n = 0;
        {
            let mut stmt = tx.prepare_cached(sql::RENEW_CLAIM).map_err(err("renew"))?;
            for id in app_ids {
                n += stmt
                    .execute(params![id, owner, until_ms, LEASE_DONE, now_ms])
                    .map_err(err("renew"))? as u64;
            }
        }
        tx.commit().map_err(err("renew"))?;
        Ok(n)
    }

    fn clock_ms(&mut self) -> StoreResult<i64> {
        self.conn
            .prepare_cached(sql::CLOCK_MS)
            .and_then(|mut st| st.query_row([], |r| r.get(0)))
            .map_err(err("clock"))
    }

    fn live_claims(&mut self, sel: &Selection, now_ms: i64) -> StoreResult<u64> {
        let q = sql::live_claims(&self.contract);
        let (lo, hi, n, i) = sel_params(sel);
        let mut stmt = self.conn.prepare_cached(&q).map_err(err("live claims"))?;
        let count: i64 = stmt
            .query_row(params![now_ms, LEASE_DONE, lo, hi, n, i], |r| r.get(0))
            .map_err(err("live claims"))?;
        Ok(count as u64)
    }

    fn begin(&mut self) -> StoreResult<()> {
        self.conn.execute_batch(sql::BEGIN).map_err(err("begin"))
    }
    fn commit(&mut self) -> StoreResult<()> {
        self.conn
            .execute_batch(sql::COMMIT)
            .map_err(err(super::op::COMMIT))
    }
    fn rollback(&mut self) -> StoreResult<()> {
        if self.conn.is_autocommit() {
            return Ok(());
        }
        self.conn
            .execute_batch(sql::ROLLBACK)
            .map_err(err("rollback"))
    }
    fn savepoint(&mut self) -> StoreResult<()> {
        self.conn
            .execute_batch(sql::SAVEPOINT)
            .map_err(err("savepoint"))
    }
    fn release_savepoint(&mut self) -> StoreResult<()> {
        self.conn
            .execute_batch(sql::RELEASE)
            .map_err(err("release savepoint"))
    }
    fn rollback_to_savepoint(&mut self) -> StoreResult<()> {
        self.conn
            .execute_batch(sql::ROLLBACK_TO)
            .map_err(err("rollback to savepoint"))
    }

    fn insert_rows(&mut self, table: usize, rows: &[&[Value]]) -> StoreResult<()> {
        let mut stmt = self
            .conn
            .prepare_cached(&self.insert_sql[table])
            .map_err(err("insert rows"))?;
        for row in rows {
            stmt.execute(rusqlite::params_from_iter(row.iter().map(value_sql)))
                .map_err(err("insert rows"))?;
        }
        Ok(())
    }

    fn insert_logs(&mut self, rows: &[LogRow]) -> StoreResult<()> {
        let mut stmt = self
            .conn
            .prepare_cached(sql::INSERT_LOG)
            .map_err(err("insert log"))?;
        for r in rows {
            stmt.execute(params![
                r.app_id,
                r.status.as_str(),
                r.reason,
                r.attempts,
                r.instance_id,
                r.session_id,
                r.fence,
                r.coerced
            ])
            .map_err(err("insert log"))?;
        }
        Ok(())
    }

    fn complete_claims(&mut self, owner: &str, claims: &[(i64, i64)]) -> StoreResult<Vec<i64>> {
        let mut stmt = self
            .conn
            .prepare_cached(if super::complete_by_owner() {
                sql::COMPLETE_CLAIM_BY_OWNER
            } else {
                sql::COMPLETE_CLAIM
            })
            .map_err(err("complete claims"))?;
        let mut kept = Vec::with_capacity(claims.len());
        for (app_id, fence) in claims {
            if stmt
                .execute(params![app_id, owner, fence, LEASE_DONE])
                .map_err(err("complete claims"))?
                == 1
            {
                kept.push(*app_id);
            }
        }
        Ok(kept)
    }

    fn logged(&mut self, app_ids: &[i64]) -> StoreResult<Vec<(i64, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached(sql::LOGGED)
            .map_err(err("read log"))?;
        let mut out = Vec::new();
        for id in app_ids {
            if let Some(row) = stmt
                .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(err("read log"))?
            {
                out.push(row);
            }
        }
        Ok(out)
    }

    fn status(&mut self, now_ms: i64) -> StoreResult<StatusReport> {
        let counts = sql::STATUS_COUNTS.replace("{src}", &sql::src(&self.contract));
        let counts = self
            .conn
            .query_row(&counts, [], |r| {
                Ok(LogCounts {
                    total: r.get(0)?,
                    success: r.get(1)?,
                    failed: r.get(2)?,
                    coerced_apps: r.get(3)?,
                    coerced_values: r.get(4)?,
                })
            })
            .map_err(err("status"))?;
        let mut stmt = self
            .conn
            .prepare(sql::STATUS_INSTANCES)
            .map_err(err("status"))?;
        let instances = stmt
            .query_map([], |r| {
                Ok(InstanceProgress {
                    instance_id: r.get(0)?,
                    sessions: r.get::<_, i64>(1)? as u64,
                    success: r.get::<_, i64>(2)? as u64,
                    failed: r.get::<_, i64>(3)? as u64,
                    last_processed_at: r.get(4)?,
                })
            })
            .map_err(err("status"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err("status"))?;
        let mut stmt = self
            .conn
            .prepare(sql::STATUS_CLAIMS)
            .map_err(err("status"))?;
        let claims = stmt
            .query_map(params![now_ms, LEASE_DONE], |r| {
                Ok(ClaimSummary {
                    owner: r.get(0)?,
                    live: r.get::<_, Option<i64>>(1)?.unwrap_or(0) as u64,
                    expired: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                    earliest_expiry_ms: r.get(3)?,
                })
            })
            .map_err(err("status"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err("status"))?;
        Ok(StatusReport::from_counts(counts, instances, claims))
    }

    fn reconnect(&mut self) -> StoreResult<()> {
        self.conn = connect(&self.path)?;
        Ok(())
    }
}
