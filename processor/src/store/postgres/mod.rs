//! PostgreSQL backend (the sync `postgres` client over tokio-postgres). Bulk writes bind one array per column;
//! queue claims use `FOR UPDATE SKIP LOCKED` in a CTE; completion is fenced inside the write transaction.

pub mod error;
pub mod sql;

use super::dropped::{Dropped, Session, SETTLE_DEADLINE};
use super::url::PgUrl;
use super::{
    ClaimSummary, ErrorKind, InstanceProgress, LogCounts, LogRow, Selection, SourceDoc,
    StatusReport, Store, StoreError, StoreResult, LEASE_DONE,
};
use crate::contract::Contract;
use crate::value::Value;
use error::err;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Statement};
use sql::{Carrier, Names};
use std::collections::HashMap;
use std::time::Duration;

/// How long a connection attempt may take before it counts as failed (and is retried by the caller).
pub const CONNECT_TIMEOUT_SECS: u64 = 10;

pub struct PgStore {
    url: PgUrl,
    client: Client,
    contract: Contract,
    names: Names,
    insert_sql: Vec<String>,
    stmts: HashMap<String, Statement>,
    /// Queue mode: where the next claim starts scanning (one past the last claimed application). Claims move
    /// forward through the source table and wrap to the start once the rest is empty, which is when expired leases
    /// behind the cursor are taken over.
    claim_cursor: i64,
    /// This connection's server session: `(pid, backend_start)`, read at connect (`None` if that read failed).
    session: Option<Session>,
    /// The server sessions of connections dropped by `reconnect` and not yet known to have ended (`settle_dropped`).
    dropped: Dropped,
}

/// `(pg_backend_pid(), backend_start)`: identifies the server session even after its pid is reused.
fn session_of(client: &mut Client) -> Option<Session> {
    let row = client
        .query_opt(
            "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .ok()??;
    Some((row.try_get(0).ok()?, row.try_get(1).ok()?))
}

fn connect(url: &PgUrl) -> StoreResult<Client> {
    // Parsed and validated once, by `DbUrl::parse`: a malformed URL never gets this far.
    let mut cfg = url.driver_config().clone();
    cfg.connect_timeout(Duration::from_secs(CONNECT_TIMEOUT_SECS));
    cfg.keepalives(true);
    cfg.application_name("shredproof-processor");
    if super::no_sync() {
        // The planted `no-sync` bug: COMMIT returns before its WAL record is flushed.
        cfg.options("-c synchronous_commit=off");
    }
    cfg.connect(NoTls).map_err(err("connect"))
}

impl PgStore {
    pub fn open(url: &PgUrl, contract: Contract) -> StoreResult<Self> {
        let mut client = connect(url)?;
        let session = session_of(&mut client);
        let names = Names::new(&contract);
        let insert_sql = contract
            .tables
            .iter()
            .map(|t| sql::insert_rows(t, &names))
            .collect();
        Ok(PgStore {
            url: url.clone(),
            client,
            contract,
            names,
            insert_sql,
            stmts: HashMap::new(),
            claim_cursor: i64::MIN,
            session,
            dropped: Dropped::default(),
        })
    }

    fn stmt(&mut self, op: &'static str, q: &str) -> StoreResult<Statement> {
        if let Some(s) = self.stmts.get(q) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(q).map_err(err(op))?;
        self.stmts.insert(q.to_owned(), s.clone());
        Ok(s)
    }
}

/// Column `i` of `row` as `T`. A type the schema should not have (a table created by hand, a changed column) is a
/// fatal error naming the column, never a panic.
fn col<'a, T: postgres::types::FromSql<'a>>(
    row: &'a postgres::Row,
    i: usize,
    op: &'static str,
) -> StoreResult<T> {
    row.try_get(i).map_err(|e| {
        let name = row.columns().get(i).map_or("?", |c| c.name());
        let ty = row
            .columns()
            .get(i)
            .map_or_else(String::new, |c| format!(" of type {}", c.type_()));
        StoreError::new(
            ErrorKind::Fatal,
            op,
            format!("unexpected value in column {name}{ty}: {e}"),
        )
    })
}

fn sel_params(sel: &Selection) -> [Option<i64>; 4] {
    [
        sel.range.map(|r| r.0),
        sel.range.map(|r| r.1),
        sel.partition.map(|p| i64::from(p.0)),
        sel.partition.map(|p| i64::from(p.1)),
    ]
}

impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn contract(&self) -> &Contract {
        &self.contract
    }

    fn init_schema(&mut self) -> StoreResult<()> {
        let ddl = sql::create_all(&self.contract, &self.names);
        let mut tx = self.client.transaction().map_err(err("init schema"))?;
        tx.batch_execute(sql::INIT_LOCK)
            .map_err(err("init schema"))?;
        for stmt in ddl {
            tx.batch_execute(&stmt).map_err(err("init schema"))?;
        }
        tx.commit().map_err(err("init schema"))
    }

    fn load_source(&mut self, docs: &[(i64, String)]) -> StoreResult<u64> {
        let q = sql::insert_source(&self.names);
        let st = self.stmt("load source", &q)?;
        let mut n = 0;
        for chunk in docs.chunks(2000) {
            let ids: Vec<i64> = chunk.iter().map(|d| d.0).collect();
            let xmls: Vec<&str> = chunk.iter().map(|d| d.1.as_str()).collect();
            n += self
                .client
                .execute(&st, &[&ids, &xmls])
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
        let q = super::fetch_sql(sql::fetch_pending(&self.names));
        let st = self.stmt("fetch pending", &q)?;
        let [lo, hi, n, i] = sel_params(sel);
        let rows = self
            .client
            .query(&st, &[&from, &(limit as i64), &lo, &hi, &n, &i])
            .map_err(err("fetch pending"))?;
        rows.iter()
            .map(|r| {
                Ok(SourceDoc {
                    app_id: col(r, 0, "fetch pending")?,
                    xml: col(r, 1, "fetch pending")?,
                    fence: None,
                })
            })
            .collect()
    }

    fn pending_count(&mut self, sel: &Selection) -> StoreResult<u64> {
        let q = sql::pending_count(&self.names);
        let st = self.stmt("pending count", &q)?;
        let [lo, hi, n, i] = sel_params(sel);
        let row = self
            .client
            .query_one(&st, &[&lo, &hi, &n, &i])
            .map_err(err("pending count"))?;
        Ok(col::<i64>(&row, 0, "pending count")? as u64)
    }

    fn pending_at(&mut self, sel: &Selection, offset: u64) -> StoreResult<Option<i64>> {
        let q = sql::pending_at(&self.names);
        let st = self.stmt("pending at", &q)?;
        let [lo, hi, n, i] = sel_params(sel);
        let rows = self
            .client
            .query(&st, &[&lo, &hi, &n, &i, &(offset as i64)])
            .map_err(err("pending at"))?;
        rows.first().map(|r| col(r, 0, "pending at")).transpose()
    }

    fn claim(
        &mut self,
        sel: &Selection,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<SourceDoc>> {
        let q = sql::claim(&self.names);
        let st = self.stmt("claim", &q)?;
        let [lo, hi, n, i] = sel_params(sel);
        let until = super::lease_until(now_ms, lease_ms);
        let mut rows = Vec::new();
        // From the cursor first; if nothing is left after it, once more from the start (takeovers, wrap-around).
        for from in [self.claim_cursor, i64::MIN] {
            rows = self
                .client
                .query(
                    &st,
                    &[
                        &now_ms,
                        &(limit as i64),
                        &lo,
                        &hi,
                        &n,
                        &i,
                        &owner,
                        &until,
                        &from,
                    ],
                )
                .map_err(err("claim"))?;
            if !rows.is_empty() || from == i64::MIN {
                break;
            }
        }
        self.claim_cursor = match rows.last() {
            Some(r) => col::<i64>(r, 0, "claim")?.saturating_add(1),
            None => i64::MIN,
        };
        rows.iter()
            .map(|r| {
                Ok(SourceDoc {
                    app_id: col(r, 0, "claim")?,
                    fence: Some(col(r, 1, "claim")?),
                    xml: col(r, 2, "claim")?,
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
        let q = sql::renew(&self.names);
        let st = self.stmt("renew", &q)?;
        self.client
            .execute(&st, &[&owner, &app_ids, &until_ms, &LEASE_DONE, &now_ms])
            .map_err(err("renew"))
    }

    fn clock_ms(&mut self) -> StoreResult<i64> {
        let st = self.stmt("clock", sql::CLOCK_MS)?;
        let row = self.client.query_one(&st, &[]).map_err(err("clock"))?;
        col(&row, 0, "clock")
    }

    fn live_claims(&mut self, sel: &Selection, now_ms: i64) -> StoreResult<u64> {
        let q = sql::live_claims(&self.names);
        let st = self.stmt("live claims", &q)?;
        let [lo, hi, n, i] = sel_params(sel);
        let row = self
            .client
            .query_one(&st, &[&now_ms, &LEASE_DONE, &lo, &hi, &n, &i])
            .map_err(err("live claims"))?;
        Ok(col::<i64>(&row, 0, "live claims")? as u64)
    }

    fn begin(&mut self) -> StoreResult<()> {
        self.client.batch_execute(sql::BEGIN).map_err(err("begin"))
    }
    fn commit(&mut self) -> StoreResult<()> {
        self.client
            .batch_execute(sql::COMMIT)
            .map_err(err(super::op::COMMIT))
    }
    fn rollback(&mut self) -> StoreResult<()> {
        self.client
            .batch_execute(sql::ROLLBACK)
            .map_err(err("rollback"))
    }
    fn savepoint(&mut self) -> StoreResult<()> {
        self.client
            .batch_execute(sql::SAVEPOINT)
            .map_err(err("savepoint"))
    }
    fn release_savepoint(&mut self) -> StoreResult<()> {
        self.client
            .batch_execute(sql::RELEASE)
            .map_err(err("release savepoint"))
    }
    fn rollback_to_savepoint(&mut self) -> StoreResult<()> {
        self.client
            .batch_execute(sql::ROLLBACK_TO)
            .map_err(err("rollback to savepoint"))
    }

    fn insert_rows(&mut self, table: usize, rows: &[&[Value]]) -> StoreResult<()> {
        let q = self.insert_sql[table].clone();
        let st = self.stmt("insert rows", &q)?;
        let cols = &self.contract.tables[table].columns;
        let mut ints: Vec<Vec<Option<i64>>> = Vec::new();
        let mut texts: Vec<Vec<Option<&str>>> = Vec::new();
        let mut slots: Vec<(Carrier, usize)> = Vec::with_capacity(cols.len());
        for (ci, c) in cols.iter().enumerate() {
            match sql::carrier(c.ty) {
                Carrier::Int => {
                    ints.push(rows.iter().map(|r| r[ci].as_i64()).collect());
                    slots.push((Carrier::Int, ints.len() - 1));
                }
                Carrier::Text => {
                    texts.push(rows.iter().map(|r| r[ci].as_text()).collect());
                    slots.push((Carrier::Text, texts.len() - 1));
                }
            }
        }
        let params: Vec<&(dyn ToSql + Sync)> = slots
            .iter()
            .map(|(c, i)| match c {
                Carrier::Int => &ints[*i] as &(dyn ToSql + Sync),
                Carrier::Text => &texts[*i] as &(dyn ToSql + Sync),
            })
            .collect();
        self.client
            .execute(&st, &params)
            .map_err(err("insert rows"))?;
        Ok(())
    }

    fn insert_logs(&mut self, rows: &[LogRow]) -> StoreResult<()> {
        let q = sql::insert_logs(&self.names);
        let st = self.stmt("insert log", &q)?;
        let ids: Vec<i64> = rows.iter().map(|r| r.app_id).collect();
        let status: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
        let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
        let inst: Vec<i32> = rows.iter().map(|r| r.instance_id).collect();
        let sess: Vec<&str> = rows.iter().map(|r| r.session_id.as_str()).collect();
        let fences: Vec<Option<i64>> = rows.iter().map(|r| r.fence).collect();
        let coerced: Vec<i32> = rows.iter().map(|r| r.coerced).collect();
        self.client
            .execute(
                &st,
                &[
                    &ids, &status, &reasons, &attempts, &inst, &sess, &fences, &coerced,
                ],
            )
            .map_err(err("insert log"))?;
        Ok(())
    }

    fn complete_claims(&mut self, owner: &str, claims: &[(i64, i64)]) -> StoreResult<Vec<i64>> {
        let q = sql::complete_claims(&self.names, super::complete_by_owner());
        let st = self.stmt("complete claims", &q)?;
        let ids: Vec<i64> = claims.iter().map(|c| c.0).collect();
        let fences: Vec<i64> = claims.iter().map(|c| c.1).collect();
        let rows = self
            .client
            .query(&st, &[&ids, &fences, &owner, &LEASE_DONE])
            .map_err(err("complete claims"))?;
        rows.iter().map(|r| col(r, 0, "complete claims")).collect()
    }

    fn logged(&mut self, app_ids: &[i64]) -> StoreResult<Vec<(i64, String)>> {
        let q = sql::logged(&self.names);
        let st = self.stmt("read log", &q)?;
        let rows = self
            .client
            .query(&st, &[&app_ids])
            .map_err(err("read log"))?;
        rows.iter()
            .map(|r| Ok((col(r, 0, "read log")?, col(r, 1, "read log")?)))
            .collect()
    }

    fn status(&mut self, now_ms: i64) -> StoreResult<StatusReport> {
        let row = self
            .client
            .query_one(&sql::status_counts(&self.names), &[])
            .map_err(err("status"))?;
        let op = "status";
        let counts = LogCounts {
            total: col(&row, 0, op)?,
            success: col(&row, 1, op)?,
            failed: col(&row, 2, op)?,
            coerced_apps: col(&row, 3, op)?,
            coerced_values: col(&row, 4, op)?,
        };
        let instances = self
            .client
            .query(&sql::status_instances(&self.names), &[])
            .map_err(err(op))?
            .iter()
            .map(|r| {
                Ok(InstanceProgress {
                    instance_id: col(r, 0, op)?,
                    sessions: col::<i64>(r, 1, op)? as u64,
                    success: col::<i64>(r, 2, op)? as u64,
                    failed: col::<i64>(r, 3, op)? as u64,
                    last_processed_at: col(r, 4, op)?,
                })
            })
            .collect::<StoreResult<_>>()?;
        let claims = self
            .client
            .query(&sql::status_claims(&self.names), &[&now_ms, &LEASE_DONE])
            .map_err(err(op))?
            .iter()
            .map(|r| {
                Ok(ClaimSummary {
                    owner: col(r, 0, op)?,
                    live: col::<i64>(r, 1, op)? as u64,
                    expired: col::<i64>(r, 2, op)? as u64,
                    earliest_expiry_ms: col(r, 3, op)?,
                })
            })
            .collect::<StoreResult<_>>()?;
        Ok(StatusReport::from_counts(counts, instances, claims))
    }

    fn reconnect(&mut self) -> StoreResult<()> {
        self.dropped.push(self.session.take());
        self.stmts.clear();
        self.client = connect(&self.url)?;
        self.session = session_of(&mut self.client);
        Ok(())
    }

    /// Ends each dropped connection's server session (`pg_terminate_backend`: a COMMIT already executing
    /// finishes first, an open transaction rolls back) and waits until it is gone from `pg_stat_activity`, which a
    /// backend leaves only after its transaction has ended. Each poll is its own transaction (activity is read
    /// once per transaction).
    fn settle_dropped(&mut self) -> StoreResult<()> {
        const OP: &str = "settle dropped session";
        let client = &mut self.client;
        self.dropped.settle(
            OP,
            |(pid, start)| {
                let alive = client
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE pid = $1 AND backend_start::text = $2",
                        &[pid, start],
                    )
                    .map_err(err(OP))?;
                Ok(!alive.is_empty())
            },
            |(pid, _)| {
                format!(
                    "the server session (pid {pid}) of a dropped connection is still running after \
                     {SETTLE_DEADLINE:?}"
                )
            },
        )
    }
}
