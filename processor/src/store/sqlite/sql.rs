//! Every SQL statement the SQLite backend runs, as constants or builders over validated identifiers.

use crate::contract::{Contract, Table};
use crate::value::ColType;

pub const PRAGMAS: &str =
    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;";
/// The planted `no-sync` bug's setting, run after [`PRAGMAS`]: a COMMIT no longer waits for the WAL to be fsynced.
pub const NO_SYNC_PRAGMA: &str = "PRAGMA synchronous=OFF;";
pub const BEGIN: &str = "BEGIN IMMEDIATE";
pub const COMMIT: &str = "COMMIT";
pub const ROLLBACK: &str = "ROLLBACK";
pub const SAVEPOINT: &str = "SAVEPOINT app";
pub const RELEASE: &str = "RELEASE SAVEPOINT app";
pub const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT app";

pub const CREATE_LOG: &str = "CREATE TABLE IF NOT EXISTS processing_log (
    app_id INTEGER PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('success','failed')),
    failure_reason TEXT,
    attempts INTEGER NOT NULL,
    instance_id INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    fence INTEGER,
    processed_at TEXT NOT NULL,
    coerced INTEGER NOT NULL DEFAULT 0)";
/// Databases created before `processing_log.coerced` existed: whether to migrate, and the migration.
pub const HAS_COERCED: &str =
    "SELECT COUNT(*) FROM pragma_table_info('processing_log') WHERE name = 'coerced'";
pub const ADD_COERCED: &str =
    "ALTER TABLE processing_log ADD COLUMN coerced INTEGER NOT NULL DEFAULT 0";
pub const CREATE_CLAIM: &str = "CREATE TABLE IF NOT EXISTS processing_claim (
    app_id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    fence INTEGER NOT NULL)";

pub const INSERT_LOG: &str = "INSERT INTO processing_log
    (app_id, status, failure_reason, attempts, instance_id, session_id, fence, coerced, processed_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, strftime('%Y-%m-%d %H:%M:%f', 'now'))";

pub const CLAIM_UPSERT: &str = "INSERT INTO processing_claim (app_id, owner, lease_expires_at, fence)
    VALUES (?1, ?2, ?3, 1)
    ON CONFLICT (app_id) DO UPDATE SET owner = excluded.owner, lease_expires_at = excluded.lease_expires_at,
        fence = processing_claim.fence + 1
    WHERE processing_claim.lease_expires_at <= ?4
    RETURNING fence";
pub const COMPLETE_CLAIM: &str =
    "UPDATE processing_claim SET lease_expires_at = ?4 WHERE app_id = ?1 AND owner = ?2 AND fence = ?3";
/// The planted `complete-by-owner` bug (harness tests only): `COMPLETE_CLAIM` without its fence (`?3` unused).
pub const COMPLETE_CLAIM_BY_OWNER: &str =
    "UPDATE processing_claim SET lease_expires_at = ?4 WHERE app_id = ?1 AND owner = ?2 AND ?3 IS NOT NULL";
/// `?5` now: only a live lease is extended (or released).
pub const RENEW_CLAIM: &str = "UPDATE processing_claim SET lease_expires_at = ?3
    WHERE app_id = ?1 AND owner = ?2 AND lease_expires_at < ?4 AND lease_expires_at > ?5";
/// The database's clock (the host's: SQLite runs in this process, so it is the clock of the machine every
/// instance sharing the file runs on, untouched by the processor's test skew), in ms since the Unix epoch.
pub const CLOCK_MS: &str = "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
pub const LOGGED: &str = "SELECT app_id, session_id FROM processing_log WHERE app_id = ?1";

pub const STATUS_COUNTS: &str = "SELECT
    (SELECT COUNT(*) FROM {src}),
    (SELECT COUNT(*) FROM processing_log WHERE status = 'success'),
    (SELECT COUNT(*) FROM processing_log WHERE status = 'failed'),
    (SELECT COUNT(*) FROM processing_log WHERE coerced > 0),
    (SELECT COALESCE(SUM(coerced), 0) FROM processing_log)";
pub const STATUS_INSTANCES: &str = "SELECT instance_id, COUNT(DISTINCT session_id),
    SUM(status = 'success'), SUM(status = 'failed'), MAX(processed_at)
    FROM processing_log GROUP BY instance_id ORDER BY instance_id";
pub const STATUS_CLAIMS: &str =
    "SELECT owner, SUM(lease_expires_at > ?1 AND lease_expires_at < ?2),
    SUM(lease_expires_at <= ?1), MIN(CASE WHEN lease_expires_at < ?2 THEN lease_expires_at END)
    FROM processing_claim c
    WHERE NOT EXISTS (SELECT 1 FROM processing_log l WHERE l.app_id = c.app_id)
    GROUP BY owner ORDER BY owner";

fn col_type(t: ColType) -> &'static str {
    match t {
        ColType::SmallInt | ColType::Int | ColType::BigInt | ColType::Bit => "INTEGER",
        // Decimals are stored as their canonical fixed-scale text: exact, and what CAST(.. AS TEXT) returns.
        ColType::Decimal { .. } | ColType::Text { .. } | ColType::Date | ColType::DateTime => {
            "TEXT"
        }
    }
}

pub fn src(c: &Contract) -> String {
    c.source_table.ansi()
}

pub fn create_source(c: &Contract) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (app_id INTEGER PRIMARY KEY, {} TEXT NOT NULL)",
        c.source_table.ansi(),
        c.source_column.ansi()
    )
}

pub fn create_target(t: &Table) -> String {
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            format!(
                "{} {}{}",
                c.name.ansi(),
                col_type(c.ty),
                if c.nullable { "" } else { " NOT NULL" }
            )
        })
        .collect();
    let key: Vec<String> = t.key.iter().map(|&k| t.columns[k].name.ansi()).collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({}, CONSTRAINT {} UNIQUE ({}))",
        t.name.ansi(),
        cols.join(", "),
        format_args!("\"uq_{}\"", t.name),
        key.join(", ")
    )
}

pub fn insert_source(c: &Contract) -> String {
    format!(
        "INSERT INTO {} (app_id, {}) VALUES (?1, ?2) ON CONFLICT (app_id) DO NOTHING",
        c.source_table.ansi(),
        c.source_column.ansi()
    )
}

pub fn insert_row(t: &Table) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| c.name.ansi()).collect();
    let params: Vec<String> = (1..=t.columns.len()).map(|i| format!("?{i}")).collect();
    let conflict = if t.shared {
        let key: Vec<String> = t.key.iter().map(|&k| t.columns[k].name.ansi()).collect();
        format!(" ON CONFLICT ({}) DO NOTHING", key.join(", "))
    } else {
        String::new()
    };
    format!(
        "INSERT INTO {} ({}) VALUES ({}){conflict}",
        t.name.ansi(),
        cols.join(", "),
        params.join(", ")
    )
}

/// `?1` from, `?2` limit, `?3`/`?4` range (NULL = open), `?5`/`?6` partition count/id (NULL = none).
pub fn fetch_pending(c: &Contract) -> String {
    format!(
        "SELECT s.app_id, s.{col} FROM {src} s
         WHERE s.app_id >= ?1
           AND (?3 IS NULL OR s.app_id >= ?3) AND (?4 IS NULL OR s.app_id <= ?4)
           AND (?5 IS NULL OR ((s.app_id % ?5) + ?5) % ?5 = ?6)
           AND NOT EXISTS (SELECT 1 FROM processing_log l WHERE l.app_id = s.app_id)
         ORDER BY s.app_id LIMIT ?2",
        col = c.source_column.ansi(),
        src = c.source_table.ansi()
    )
}

/// `?1` now, `?2` limit, `?3`..`?6` as in `fetch_pending`, `?7` the claim cursor (scan from here: finished
/// applications behind it are not rescanned on every claim).
pub fn claim_candidates(c: &Contract) -> String {
    format!(
        "SELECT s.app_id, s.{col} FROM {src} s
         LEFT JOIN processing_claim c ON c.app_id = s.app_id
         WHERE s.app_id >= ?7 AND (c.app_id IS NULL OR c.lease_expires_at <= ?1)
           AND (?3 IS NULL OR s.app_id >= ?3) AND (?4 IS NULL OR s.app_id <= ?4)
           AND (?5 IS NULL OR ((s.app_id % ?5) + ?5) % ?5 = ?6)
           AND NOT EXISTS (SELECT 1 FROM processing_log l WHERE l.app_id = s.app_id)
         ORDER BY s.app_id LIMIT ?2",
        col = c.source_column.ansi(),
        src = c.source_table.ansi()
    )
}

/// `?1` now, `?2` done marker, `?3`..`?6` selection.
pub fn live_claims(c: &Contract) -> String {
    format!(
        "SELECT COUNT(*) FROM processing_claim c JOIN {src} s ON s.app_id = c.app_id
         WHERE c.lease_expires_at > ?1 AND c.lease_expires_at < ?2
           AND (?3 IS NULL OR s.app_id >= ?3) AND (?4 IS NULL OR s.app_id <= ?4)
           AND (?5 IS NULL OR ((s.app_id % ?5) + ?5) % ?5 = ?6)
           AND NOT EXISTS (SELECT 1 FROM processing_log l WHERE l.app_id = c.app_id)",
        src = c.source_table.ansi()
    )
}

/// `?1` offset (NULL: count instead), `?2` unused, `?3`..`?6` selection.
pub fn pending_count(c: &Contract) -> String {
    pending_where(c, "COUNT(*)", "")
}

/// `?1` offset, `?2` unused, `?3`..`?6` selection.
pub fn pending_at(c: &Contract) -> String {
    pending_where(c, "s.app_id", " ORDER BY s.app_id LIMIT 1 OFFSET ?1")
}

fn pending_where(c: &Contract, what: &str, tail: &str) -> String {
    format!(
        "SELECT {what} FROM {src} s
         WHERE (?1 IS NULL OR ?1 IS NOT NULL) AND ?2 IS NULL
           AND (?3 IS NULL OR s.app_id >= ?3) AND (?4 IS NULL OR s.app_id <= ?4)
           AND (?5 IS NULL OR ((s.app_id % ?5) + ?5) % ?5 = ?6)
           AND NOT EXISTS (SELECT 1 FROM processing_log l WHERE l.app_id = s.app_id){tail}",
        src = c.source_table.ansi()
    )
}
