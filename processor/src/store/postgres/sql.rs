//! Every SQL statement the PostgreSQL backend runs, as constants or builders over validated identifiers.
//! Bulk writes bind one array per column and `unnest` them: one prepared statement per table, any row count.

use crate::contract::{Contract, Table};
use crate::ident::Ident;
use crate::value::ColType;

pub const BEGIN: &str = "BEGIN";
pub const COMMIT: &str = "COMMIT";
pub const ROLLBACK: &str = "ROLLBACK";
pub const SAVEPOINT: &str = "SAVEPOINT app";
pub const RELEASE: &str = "RELEASE SAVEPOINT app";
pub const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT app";
/// Serialises concurrent `init` runs (CREATE … IF NOT EXISTS races on the catalog otherwise).
pub const INIT_LOCK: &str = "SELECT pg_advisory_xact_lock(7152604119)";

/// The schema every table lives in.
pub struct Names {
    pub schema: String,
    pub src: String,
    pub src_col: String,
    pub log: String,
    pub claim: String,
}

impl Names {
    pub fn new(c: &Contract) -> Self {
        let schema = c
            .schema
            .clone()
            .unwrap_or_else(|| Ident::new("public").expect("valid identifier"));
        let q = |t: &str| format!("{}.\"{t}\"", schema.ansi());
        Names {
            src: format!("{}.{}", schema.ansi(), c.source_table.ansi()),
            src_col: c.source_column.ansi(),
            log: q("processing_log"),
            claim: q("processing_claim"),
            schema: schema.ansi(),
        }
    }
    pub fn table(&self, t: &Table) -> String {
        format!("{}.{}", self.schema, t.name.ansi())
    }
}

pub fn create_all(c: &Contract, n: &Names) -> Vec<String> {
    let mut v = vec![
        format!("CREATE SCHEMA IF NOT EXISTS {}", n.schema),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (app_id BIGINT PRIMARY KEY, {} TEXT NOT NULL)",
            n.src, n.src_col
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (
                app_id BIGINT PRIMARY KEY,
                status VARCHAR(10) NOT NULL CHECK (status IN ('success','failed')),
                failure_reason VARCHAR(500),
                attempts INT NOT NULL,
                instance_id INT NOT NULL,
                session_id VARCHAR(64) NOT NULL,
                fence BIGINT,
                processed_at TIMESTAMP NOT NULL,
                coerced INT NOT NULL DEFAULT 0)",
            n.log
        ),
        // A database created before `processing_log.coerced` existed gains it (0 for the rows already logged).
        // Looked up first, not `ADD COLUMN IF NOT EXISTS`: that takes the table's exclusive lock on every start,
        // queueing behind (and then blocking) the running instances' writes. Names are validated identifiers.
        format!(
            "DO $$ BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_attribute
                               WHERE attrelid = to_regclass('{log}') AND attname = 'coerced' AND NOT attisdropped)
                THEN ALTER TABLE {log} ADD COLUMN coerced INT NOT NULL DEFAULT 0;
                END IF;
             END $$",
            log = n.log
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (
                app_id BIGINT PRIMARY KEY,
                owner VARCHAR(64) NOT NULL,
                lease_expires_at BIGINT NOT NULL,
                fence BIGINT NOT NULL)",
            n.claim
        ),
    ];
    for t in &c.tables {
        let cols: Vec<String> = t
            .columns
            .iter()
            .map(|col| {
                format!(
                    "{} {}{}",
                    col.name.ansi(),
                    col_type(col.ty),
                    if col.nullable { "" } else { " NOT NULL" }
                )
            })
            .collect();
        let key: Vec<String> = t.key.iter().map(|&k| t.columns[k].name.ansi()).collect();
        v.push(format!(
            "CREATE TABLE IF NOT EXISTS {} ({}, CONSTRAINT \"uq_{}\" UNIQUE ({}))",
            n.table(t),
            cols.join(", "),
            t.name,
            key.join(", ")
        ));
    }
    v
}

pub fn col_type(t: ColType) -> String {
    match t {
        ColType::SmallInt => "SMALLINT".into(),
        ColType::Int => "INTEGER".into(),
        ColType::BigInt => "BIGINT".into(),
        ColType::Bit => "SMALLINT".into(),
        ColType::Decimal { precision, scale } => format!("NUMERIC({precision},{scale})"),
        ColType::Text { max_chars: Some(n) } => format!("VARCHAR({n})"),
        ColType::Text { max_chars: None } => "TEXT".into(),
        ColType::Date => "DATE".into(),
        ColType::DateTime => "TIMESTAMP(0)".into(),
    }
}

/// How a column's values travel: as an int8 array or a text array, cast to the column type in SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Int,
    Text,
}

pub fn carrier(t: ColType) -> Carrier {
    match t {
        ColType::SmallInt | ColType::Int | ColType::BigInt | ColType::Bit => Carrier::Int,
        _ => Carrier::Text,
    }
}

/// `INSERT … SELECT … FROM unnest($1::int8[], $2::text[], …)`, insert-if-absent for shared tables.
pub fn insert_rows(t: &Table, n: &Names) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| c.name.ansi()).collect();
    let arrays: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| match carrier(c.ty) {
            Carrier::Int => format!("${}::int8[]", i + 1),
            Carrier::Text => format!("${}::text[]", i + 1),
        })
        .collect();
    let aliases: Vec<String> = (0..t.columns.len()).map(|i| format!("c{i}")).collect();
    let select: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("c{i}::{}", cast_type(c.ty)))
        .collect();
    let conflict = if t.shared {
        let key: Vec<String> = t.key.iter().map(|&k| t.columns[k].name.ansi()).collect();
        format!(" ON CONFLICT ({}) DO NOTHING", key.join(", "))
    } else {
        String::new()
    };
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM unnest({}) AS u({}){conflict}",
        n.table(t),
        cols.join(", "),
        select.join(", "),
        arrays.join(", "),
        aliases.join(", ")
    )
}

fn cast_type(t: ColType) -> String {
    match t {
        ColType::Bit => "SMALLINT".into(),
        other => col_type(other),
    }
}

pub fn insert_logs(n: &Names) -> String {
    format!(
        "INSERT INTO {} (app_id, status, failure_reason, attempts, instance_id, session_id, fence, coerced,
                         processed_at)
         SELECT a, s, r, at, i, sid, f, co, clock_timestamp()
         FROM unnest($1::int8[], $2::text[], $3::text[], $4::int4[], $5::int4[], $6::text[], $7::int8[],
                     $8::int4[])
              AS u(a, s, r, at, i, sid, f, co)",
        n.log
    )
}

pub fn insert_source(n: &Names) -> String {
    format!(
        "INSERT INTO {} (app_id, {}) SELECT * FROM unnest($1::int8[], $2::text[]) ON CONFLICT (app_id) DO NOTHING",
        n.src, n.src_col
    )
}

const SEL: &str = "($3::int8 IS NULL OR s.app_id >= $3) AND ($4::int8 IS NULL OR s.app_id <= $4)
           AND ($5::int8 IS NULL OR mod(mod(s.app_id, $5) + $5, $5) = $6::int8)";

/// `$1` from, `$2` limit, `$3`..`$6` selection.
///
/// The redundant `l.app_id >= $1` bounds the log side of the anti-join too: without it the planner's merge anti
/// join reads the log index from its start on every fetch, so each batch cost grows with the log (O(n²) per run).
pub fn fetch_pending(n: &Names) -> String {
    format!(
        "SELECT s.app_id, s.{col} FROM {src} s
         WHERE s.app_id >= $1 AND {SEL}
           AND NOT EXISTS (SELECT 1 FROM {log} l WHERE l.app_id = s.app_id AND l.app_id >= $1)
         ORDER BY s.app_id LIMIT $2",
        col = n.src_col,
        src = n.src,
        log = n.log
    )
}

/// Claims a batch in one statement. Candidates lock their source rows with `SKIP LOCKED`, so concurrent claimers
/// take disjoint batches; the upsert takes over only expired leases and bumps the fence.
/// `$1` now, `$2` limit, `$3`..`$6` selection, `$7` owner, `$8` lease expiry, `$9` scan from this app_id.
///
/// `$9` is the claimer's cursor (see `PgStore::claim`): the candidates scan starts there instead of at the first
/// application, so a claim does not re-read every finished application before it (O(n²) over a long run). The
/// redundant `>= $9` bounds on the log and claim sides keep those anti-joins from reading their indexes from the
/// start too. The document travels in `cand` (joining `up` back to the source table made the planner hash the whole
/// source table on every claim).
pub fn claim(n: &Names) -> String {
    format!(
        "WITH cand AS (
            SELECT s.app_id, s.{col} AS doc FROM {src} s
            WHERE s.app_id >= $9 AND {SEL}
              AND NOT EXISTS (SELECT 1 FROM {log} l WHERE l.app_id = s.app_id AND l.app_id >= $9)
              AND NOT EXISTS (SELECT 1 FROM {claim} c
                              WHERE c.app_id = s.app_id AND c.app_id >= $9 AND c.lease_expires_at > $1)
            ORDER BY s.app_id LIMIT $2
            FOR UPDATE OF s SKIP LOCKED
         ), up AS (
            INSERT INTO {claim} (app_id, owner, lease_expires_at, fence)
            SELECT app_id, $7, $8, 1 FROM cand
            ON CONFLICT (app_id) DO UPDATE
               SET owner = EXCLUDED.owner, lease_expires_at = EXCLUDED.lease_expires_at, fence = {claim}.fence + 1
               WHERE {claim}.lease_expires_at <= $1
            RETURNING app_id, fence
         )
         SELECT up.app_id, up.fence, cand.doc FROM up JOIN cand ON cand.app_id = up.app_id ORDER BY up.app_id",
        src = n.src,
        log = n.log,
        claim = n.claim,
        col = n.src_col
    )
}

/// `$1` owner, `$2` app ids, `$3` expiry, `$4` done marker, `$5` now (only a live lease is extended or released).
pub fn renew(n: &Names) -> String {
    format!(
        "UPDATE {} SET lease_expires_at = $3
         WHERE owner = $1 AND app_id = ANY($2) AND lease_expires_at < $4 AND lease_expires_at > $5",
        n.claim
    )
}

/// The server's clock in ms since the Unix epoch: `clock_timestamp()`, the time of this statement (`now()` is the
/// start of the transaction).
pub const CLOCK_MS: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8";

/// `$1` app ids, `$2` fences, `$3` owner, `$4` done marker. Returns the claims still ours, now marked done.
/// `by_owner`: the planted `complete-by-owner` bug (harness tests only), the fence not compared.
pub fn complete_claims(n: &Names, by_owner: bool) -> String {
    format!(
        "UPDATE {claim} c SET lease_expires_at = $4
         FROM unnest($1::int8[], $2::int8[]) AS f(app_id, fence)
         WHERE c.app_id = f.app_id AND {fence} AND c.owner = $3
         RETURNING c.app_id",
        claim = n.claim,
        fence = if by_owner {
            "f.fence IS NOT NULL"
        } else {
            "c.fence = f.fence"
        }
    )
}

/// `$1` now, `$2` done marker, `$3`..`$6` selection.
pub fn live_claims(n: &Names) -> String {
    format!(
        "SELECT COUNT(*) FROM {claim} c JOIN {src} s ON s.app_id = c.app_id
         WHERE c.lease_expires_at > $1 AND c.lease_expires_at < $2 AND {SEL}
           AND NOT EXISTS (SELECT 1 FROM {log} l WHERE l.app_id = c.app_id)",
        claim = n.claim,
        src = n.src,
        log = n.log
    )
}

pub fn logged(n: &Names) -> String {
    format!(
        "SELECT app_id, session_id FROM {} WHERE app_id = ANY($1)",
        n.log
    )
}

pub fn status_counts(n: &Names) -> String {
    format!(
        "SELECT (SELECT COUNT(*) FROM {src}),
                (SELECT COUNT(*) FROM {log} WHERE status = 'success'),
                (SELECT COUNT(*) FROM {log} WHERE status = 'failed'),
                (SELECT COUNT(*) FROM {log} WHERE coerced > 0),
                (SELECT COALESCE(SUM(coerced), 0)::int8 FROM {log})",
        src = n.src,
        log = n.log
    )
}

pub fn status_instances(n: &Names) -> String {
    format!(
        "SELECT instance_id::int8, COUNT(DISTINCT session_id), COUNT(*) FILTER (WHERE status = 'success'),
                COUNT(*) FILTER (WHERE status = 'failed'), MAX(processed_at)::text
         FROM {} GROUP BY instance_id ORDER BY instance_id",
        n.log
    )
}

/// `$1` now, `$2` done marker.
pub fn status_claims(n: &Names) -> String {
    format!(
        "SELECT owner::text, COUNT(*) FILTER (WHERE lease_expires_at > $1 AND lease_expires_at < $2),
                COUNT(*) FILTER (WHERE lease_expires_at <= $1),
                MIN(lease_expires_at) FILTER (WHERE lease_expires_at < $2)
         FROM {claim} c WHERE NOT EXISTS (SELECT 1 FROM {log} l WHERE l.app_id = c.app_id)
         GROUP BY owner ORDER BY owner",
        claim = n.claim,
        log = n.log
    )
}

/// `$1`..`$4` selection.
pub fn pending_count(n: &Names) -> String {
    pending_where(n, "COUNT(*)", "")
}

/// `$1`..`$4` selection, `$5` offset.
pub fn pending_at(n: &Names) -> String {
    pending_where(n, "s.app_id", " ORDER BY s.app_id LIMIT 1 OFFSET $5")
}

fn pending_where(n: &Names, what: &str, tail: &str) -> String {
    let sel = SEL
        .replace("$3", "$1")
        .replace("$4", "$2")
        .replace("$5", "$3")
        .replace("$6", "$4");
    format!(
        "SELECT {what} FROM {src} s
         WHERE {sel} AND NOT EXISTS (SELECT 1 FROM {log} l WHERE l.app_id = s.app_id){tail}",
        src = n.src,
        log = n.log
    )
}
