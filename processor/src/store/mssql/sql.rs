//! Every T-SQL statement the SQL Server backend runs, as constants or builders over validated identifiers
//! (`[name]`, schema-qualified with the contract's `target_schema`, default `dbo`). Values are always bound as
//! `@Pn` parameters (tiberius numbers them from 1); multi-row statements are chunked by [`chunk_rows`] under
//! SQL Server's 2,100-parameter and 1,000-row `VALUES` limits.
//!
//! Session settings, and why `XACT_ABORT` is OFF: with `SET XACT_ABORT ON` any run-time error, a duplicate key
//! included, rolls back the *whole* transaction, so `ROLLBACK TRANSACTION app` after a constraint error would
//! find no savepoint and the write algorithm (`write.rs`) could not keep the other applications of a batch. With
//! `XACT_ABORT OFF` a constraint, NOT NULL, truncation or conversion error ends only the failing statement
//! (each of our calls is its own request), the transaction stays open and the savepoint usable. The price — a
//! failed statement does not roll back by itself — is paid by the callers: `write.rs` rolls back explicitly on
//! every error that is not handled through a savepoint, `BEGIN` first rolls back anything left open, and a
//! dropped connection is rolled back by the server. The one self-contained multi-statement batch, the queue
//! claim, turns `XACT_ABORT ON` for its own scope so it is all-or-nothing.
//!
//! Application key column (`Column::identity`): declared as its plain contract type (`BIGINT`/`INT`), *not*
//! `IDENTITY(1,1)`. Its value always comes from the document, so an identity generator would never be used, and
//! inserting explicit values would need `SET IDENTITY_INSERT … ON`, which is session-scoped, allowed for one table
//! at a time and needs ALTER permission on the table.

use crate::contract::{Contract, Table};
use crate::ident::Ident;
use crate::value::ColType;
use std::ops::Range;

/// SQL Server accepts at most 2,100 parameters per request; stay well below to leave room for fixed parameters.
pub const MAX_PARAMS: usize = 2000;
/// A table value constructor (`VALUES (…), (…)`) takes at most 1,000 rows.
pub const MAX_VALUES_ROWS: usize = 1000;

/// Per-session settings, sent once after login. `ANSI_WARNINGS ON` makes an over-long string an error (8152 /
/// 2628) instead of silent truncation. `{lock_timeout_ms}` is replaced by the caller.
pub const SESSION_SETUP: &str = "SET NOCOUNT OFF; SET XACT_ABORT OFF; SET ANSI_NULLS ON; SET ANSI_WARNINGS ON; \
     SET ANSI_PADDING ON; SET ARITHABORT ON; SET CONCAT_NULL_YIELDS_NULL ON; SET QUOTED_IDENTIFIER ON; \
     SET TRANSACTION ISOLATION LEVEL READ COMMITTED; SET LOCK_TIMEOUT {lock_timeout_ms};";

/// Sent after the session setup: 1 on Babelfish, NULL on SQL Server (see `ServerKind`).
pub const SERVER_KIND: &str = "SELECT CAST(SERVERPROPERTY('Babelfish') AS INT);";

/// Rolls back anything a failed earlier call left open (XACT_ABORT is OFF), so COMMIT never just decrements a
/// nested `@@TRANCOUNT`. Re-asserts `XACT_ABORT OFF` in case a batch's scoped setting ever leaked.
pub const BEGIN: &str =
    "SET XACT_ABORT OFF; IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION; BEGIN TRANSACTION;";
pub const COMMIT: &str = "COMMIT TRANSACTION;";
/// No error when the server already rolled back (deadlock victim, severe error).
pub const ROLLBACK: &str = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;";
/// After a batch that may have ended early: nothing left open, `XACT_ABORT` back OFF.
pub const ROLLBACK_AND_RESET: &str = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION; SET XACT_ABORT OFF;";
pub const SAVEPOINT: &str = "SAVE TRANSACTION app;";
/// SQL Server has no `RELEASE SAVEPOINT`: a savepoint simply stays until the transaction ends, and re-saving the
/// same name moves it. `release_savepoint` is a no-op.
pub const RELEASE: &str = "";
/// Refuses clearly (error 50000, fatal) if the transaction is gone or doomed instead of failing with 6401/3931.
pub const ROLLBACK_TO: &str = "IF XACT_STATE() = 1 ROLLBACK TRANSACTION app; \
     ELSE RAISERROR(N'cannot roll back to savepoint: the server already ended or doomed the transaction', 16, 1);";
/// Serialises concurrent `init` runs (IF OBJECT_ID … CREATE races otherwise).
/// `sp_getapplock` reports a timeout through its return value, not an error: turn it into one.
pub const INIT_LOCK: &str =
    "DECLARE @r INT; EXEC @r = sp_getapplock @Resource = N'shredproof_init', \
     @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = 60000; \
     IF @r < 0 RAISERROR(N'timed out waiting for another init to finish', 16, 1);";

/// Row ranges for multi-row statements with `ncols` parameters per row: each chunk stays under [`MAX_PARAMS`]
/// parameters and [`MAX_VALUES_ROWS`] rows.
pub fn chunk_rows(ncols: usize, nrows: usize) -> Vec<Range<usize>> {
    let per = (MAX_PARAMS / ncols.max(1)).clamp(1, MAX_VALUES_ROWS);
    (0..nrows)
        .step_by(per)
        .map(|start| start..(start + per).min(nrows))
        .collect()
}

/// Schema-qualified, bracket-quoted names.
pub struct Names {
    /// `[dbo]`
    pub schema: String,
    /// The schema's bare name, for `SCHEMA_ID(N'…')`.
    pub schema_name: String,
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
            .unwrap_or_else(|| Ident::new("dbo").expect("valid identifier"));
        let q = |t: &str| format!("{}.[{t}]", schema.bracket());
        Names {
            src: format!("{}.{}", schema.bracket(), c.source_table.bracket()),
            src_col: c.source_column.bracket(),
            log: q("processing_log"),
            claim: q("processing_claim"),
            schema_name: schema.as_str().to_owned(),
            schema: schema.bracket(),
        }
    }

    pub fn table(&self, t: &Table) -> String {
        format!("{}.{}", self.schema, t.name.bracket())
    }
}

/// `IF OBJECT_ID(N'[s].[t]', N'U') IS NULL CREATE TABLE [s].[t] (…)`. Names are validated identifiers (no quotes
/// or brackets), so embedding them in the N'…' literal is safe.
fn create_if_missing(qualified: &str, body: &str) -> String {
    format!("IF OBJECT_ID(N'{qualified}', N'U') IS NULL CREATE TABLE {qualified} ({body});")
}

pub fn create_all(c: &Contract, n: &Names) -> Vec<String> {
    let mut v = vec![
        format!(
            "IF SCHEMA_ID(N'{s}') IS NULL EXEC(N'CREATE SCHEMA {b}');",
            s = n.schema_name,
            b = n.schema
        ),
        create_if_missing(
            &n.src,
            &format!(
                "app_id BIGINT NOT NULL PRIMARY KEY, {} NVARCHAR(MAX) NOT NULL",
                n.src_col
            ),
        ),
        create_if_missing(
            &n.log,
            "app_id BIGINT NOT NULL PRIMARY KEY,
             status VARCHAR(10) NOT NULL CHECK (status IN ('success','failed')),
             failure_reason NVARCHAR(500) NULL,
             attempts INT NOT NULL,
             instance_id INT NOT NULL,
             session_id VARCHAR(64) NOT NULL,
             fence BIGINT NULL,
             processed_at DATETIME2(3) NOT NULL,
             coerced INT NOT NULL CONSTRAINT [df_processing_log_coerced] DEFAULT 0",
        ),
        // A database created before `processing_log.coerced` existed gains it (0 for the rows already logged).
        format!(
            "IF NOT EXISTS (SELECT 1 FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = N'{s}' \
               AND TABLE_NAME = N'processing_log' AND COLUMN_NAME = N'coerced') \
             ALTER TABLE {log} ADD coerced INT NOT NULL CONSTRAINT [df_processing_log_coerced] DEFAULT 0;",
            s = n.schema_name,
            log = n.log
        ),
        // No IGNORE_DUP_KEY (Babelfish refuses it, or ignores it behind an escape hatch): the claim's placeholder
        // insert catches a racing claimer's duplicate itself (see `claim`).
        create_if_missing(
            &n.claim,
            "app_id BIGINT NOT NULL,
             owner VARCHAR(64) NOT NULL,
             lease_expires_at BIGINT NOT NULL,
             fence BIGINT NOT NULL,
             CONSTRAINT [pk_processing_claim] PRIMARY KEY CLUSTERED (app_id)",
        ),
    ];
    for t in &c.tables {
        v.push(create_target(t, n));
    }
    v
}

pub fn create_target(t: &Table, n: &Names) -> String {
    let mut cols: Vec<String> = t
        .columns
        .iter()
        .map(|col| {
            format!(
                "{} {} {}",
                col.name.bracket(),
                col_type(col.ty),
                if col.nullable { "NULL" } else { "NOT NULL" }
            )
        })
        .collect();
    let key: Vec<String> = t.key.iter().map(|&k| t.columns[k].name.bracket()).collect();
    cols.push(format!(
        "CONSTRAINT [uq_{}] UNIQUE ({})",
        t.name,
        key.join(", ")
    ));
    create_if_missing(&n.table(t), &cols.join(", "))
}

pub fn col_type(t: ColType) -> String {
    match t {
        ColType::SmallInt => "SMALLINT".into(),
        ColType::Int => "INT".into(),
        ColType::BigInt => "BIGINT".into(),
        ColType::Bit => "BIT".into(),
        ColType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
        ColType::Text { max_chars: Some(n) } if (1..=4000).contains(&n) => {
            format!("NVARCHAR({n})")
        }
        ColType::Text { .. } => "NVARCHAR(MAX)".into(),
        ColType::Date => "DATE".into(),
        ColType::DateTime => "DATETIME2(0)".into(),
    }
}

/// How a column's values travel: integers as `i64`, everything else as its canonical text.
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

/// A text-carried parameter as `NVARCHAR(MAX)`. A NULL text value travels as a typed *integer* NULL
/// ([`bind_text`](super::bind_text)), because tiberius sends a NULL string with the TDS NULLTYPE (0x1F), which
/// Babelfish refuses (error 8009). The explicit cast keeps the expression text-typed either way: without it, one
/// bigint NULL in a multi-row `VALUES` list would make the whole column bigint (data type precedence) and every
/// text value in it a conversion error; and `CONVERT(DATE, <bigint>, 23)` does not compile at all.
fn text_param(p: usize) -> String {
    format!("CAST(@P{p} AS NVARCHAR(MAX))")
}

/// The SQL expression for parameter `@P{p}` of a column of type `t`. Dates and datetimes use explicit ISO
/// styles (23: `yyyy-mm-dd`, 120: `yyyy-mm-dd hh:mi:ss`) so no language or DATEFORMAT setting can reinterpret them.
pub fn param_expr(t: ColType, p: usize) -> String {
    match t {
        ColType::SmallInt | ColType::Int | ColType::BigInt => format!("@P{p}"),
        ColType::Bit => format!("CAST(@P{p} AS BIT)"),
        ColType::Decimal { precision, scale } => {
            format!("CAST({} AS DECIMAL({precision},{scale}))", text_param(p))
        }
        ColType::Text { .. } => text_param(p),
        ColType::Date => format!("CONVERT(DATE, {}, 23)", text_param(p)),
        ColType::DateTime => format!("CONVERT(DATETIME2(0), {}, 120)", text_param(p)),
    }
}

/// `(…), (…)`: `nrows` rows, row `r` rendered by `row(r)`.
fn values_rows(nrows: usize, row: impl Fn(usize) -> String) -> String {
    (0..nrows)
        .map(|r| format!("({})", row(r)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Multi-row insert of `nrows` rows into target table `t`; row `r`, column `c` is `@P{r * ncols + c + 1}`.
/// Shared-entity tables insert only rows whose natural key is absent (`UPDLOCK, HOLDLOCK` hold the key range
/// until commit, so two writers cannot both see it absent).
pub fn insert_rows(t: &Table, n: &Names, nrows: usize) -> String {
    let ncols = t.columns.len();
    let cols: Vec<String> = t.columns.iter().map(|c| c.name.bracket()).collect();
    let values = values_rows(nrows, |r| {
        t.columns
            .iter()
            .enumerate()
            .map(|(ci, c)| param_expr(c.ty, r * ncols + ci + 1))
            .collect::<Vec<_>>()
            .join(", ")
    });
    if !t.shared {
        return format!(
            "INSERT INTO {} ({}) VALUES {values};",
            n.table(t),
            cols.join(", ")
        );
    }
    let vcols: Vec<String> = cols.iter().map(|c| format!("v.{c}")).collect();
    let key: Vec<String> = t
        .key
        .iter()
        .map(|&k| {
            let c = t.columns[k].name.bracket();
            format!("x.{c} = v.{c}")
        })
        .collect();
    format!(
        "INSERT INTO {tbl} ({cols}) SELECT {vcols} FROM (VALUES {values}) AS v ({cols})
         WHERE NOT EXISTS (SELECT 1 FROM {tbl} AS x WITH (UPDLOCK, HOLDLOCK) WHERE {key});",
        tbl = n.table(t),
        cols = cols.join(", "),
        vcols = vcols.join(", "),
        key = key.join(" AND ")
    )
}

/// Parameters per log row.
pub const LOG_COLS: usize = 8;

/// `nrows` log rows: `@P(8r+1)` app_id, `+2` status, `+3` reason, `+4` attempts, `+5` instance, `+6` session,
/// `+7` fence, `+8` coerced.
pub fn insert_logs(n: &Names, nrows: usize) -> String {
    let values = values_rows(nrows, |r| {
        let b = r * LOG_COLS;
        format!(
            "@P{}, @P{}, LEFT({}, 500), @P{}, @P{}, @P{}, @P{}, @P{}, SYSUTCDATETIME()",
            b + 1,
            b + 2,
            text_param(b + 3),
            b + 4,
            b + 5,
            b + 6,
            b + 7,
            b + 8
        )
    });
    format!(
        "INSERT INTO {} (app_id, status, failure_reason, attempts, instance_id, session_id, fence, coerced,
                         processed_at)
         VALUES {values};",
        n.log
    )
}

/// Copies every source document of database `from` (same server, same contract) into this database's source
/// table in one statement: the second phase of a harness scenario loads the same documents as the first.
pub fn copy_source(n: &Names, from: &Ident) -> String {
    format!(
        "INSERT INTO {src} (app_id, {col}) SELECT app_id, {col} FROM {db}.{src};",
        src = n.src,
        col = n.src_col,
        db = from.bracket()
    )
}

/// `nrows` documents, `@P(2r+1)` app_id, `@P(2r+2)` xml; app_ids already present are skipped.
pub fn insert_source(n: &Names, nrows: usize) -> String {
    let values = values_rows(nrows, |r| format!("@P{}, @P{}", 2 * r + 1, 2 * r + 2));
    format!(
        "INSERT INTO {src} (app_id, {col}) SELECT v.app_id, v.doc FROM (VALUES {values}) AS v (app_id, doc)
         WHERE NOT EXISTS (SELECT 1 FROM {src} AS s WITH (UPDLOCK, HOLDLOCK) WHERE s.app_id = v.app_id);",
        src = n.src,
        col = n.src_col
    )
}

/// The selection filter on `{alias}.app_id` with parameters `@P{first}`..`@P{first+3}`: range low, range high,
/// partition count, partition id (NULL = no restriction).
pub fn sel(alias: &str, first: usize) -> String {
    let (lo, hi, cnt, id) = (first, first + 1, first + 2, first + 3);
    format!(
        "(@P{lo} IS NULL OR {alias}.app_id >= @P{lo}) AND (@P{hi} IS NULL OR {alias}.app_id <= @P{hi})
           AND (@P{cnt} IS NULL OR (({alias}.app_id % @P{cnt}) + @P{cnt}) % @P{cnt} = @P{id})"
    )
}

/// `@P1` from, `@P2` limit, `@P3`..`@P6` selection. `READPAST` on the log: a log row another instance has not yet
/// committed is not waited for; the application looks pending, and if both write it the loser's duplicate key is
/// counted as a collision (the uncoordinated mode's documented behaviour), as under PostgreSQL's MVCC.
pub fn fetch_pending(n: &Names) -> String {
    format!(
        "SELECT TOP (@P2) s.app_id, CAST(s.{col} AS NVARCHAR(MAX)) FROM {src} AS s
         WHERE s.app_id >= @P1 AND {sel}
           AND NOT EXISTS (SELECT 1 FROM {log} AS l WITH (READPAST) WHERE l.app_id = s.app_id)
         ORDER BY s.app_id;",
        col = n.src_col,
        src = n.src,
        log = n.log,
        sel = sel("s", 3)
    )
}

/// `@P1`..`@P4` selection: how many applications have no log row.
pub fn pending_count(n: &Names) -> String {
    format!(
        "SELECT COUNT_BIG(*) FROM {src} AS s
         WHERE {sel} AND NOT EXISTS (SELECT 1 FROM {log} AS l WITH (READPAST) WHERE l.app_id = s.app_id);",
        src = n.src,
        log = n.log,
        sel = sel("s", 1)
    )
}

/// `@P1`..`@P4` selection, `@P5` offset: the offset-th (0-based, ascending) unlogged app_id.
pub fn pending_at(n: &Names) -> String {
    format!(
        "SELECT s.app_id FROM {src} AS s
         WHERE {sel} AND NOT EXISTS (SELECT 1 FROM {log} AS l WITH (READPAST) WHERE l.app_id = s.app_id)
         ORDER BY s.app_id OFFSET @P5 ROWS FETCH NEXT 1 ROWS ONLY;",
        src = n.src,
        log = n.log,
        sel = sel("s", 1)
    )
}

/// Claims a batch in one request. `@P1` now, `@P2` limit, `@P3`..`@P6` selection, `@P7` owner, `@P8` lease
/// expiry.
///
/// 1. Candidates that never had a claim row get an expired placeholder (`owner ''`, lease 0, fence 0), in their
///    own autocommitted statement before the claim transaction (a placeholder is nobody's claim, so committing it
///    early changes nothing). The existence probes read uncommitted data so they never wait on SQL Server; when
///    two claimers still race on an app_id the loser's statement fails with a duplicate key (2627/2601), which
///    the `CATCH` swallows: the winner's rows exist, and this claimer's other new candidates get their
///    placeholders on its next claim. (No `IGNORE_DUP_KEY`: Babelfish refuses or ignores it.)
/// 2. In an all-or-nothing transaction (`XACT_ABORT ON`): `SELECT TOP (n) … WITH (ROWLOCK, READPAST, UPDLOCK)`
///    picks unlogged rows whose lease expired (placeholders included) into `@pick`, skipping and locking rows
///    so concurrent claimers get disjoint batches without waiting on SQL Server; then a plain `UPDATE … JOIN
///    @pick` re-checks the lease and the log, bumps the fence and records the winners with `OUTPUT`. The claim
///    does not rest on `UPDATE TOP` with a correlated `NOT EXISTS`, which Babelfish 4.2 evaluates wrongly (it
///    updated 1 row of 10). On Babelfish the hints are ignored: a concurrent claimer picks the same rows, waits
///    on the row locks of the `UPDATE`, and the re-check then drops the rows the first claimer took, so its
///    batch may come back smaller or empty (the engine waits and claims again); it never double-claims.
/// 3. The documents of the winners are returned in app_id order.
///
/// No `SET NOCOUNT ON` here: SQL Server undoes a `SET` when the `sp_executesql` scope ends, Babelfish keeps it
/// for the session, and every later row count (`renew`, the write path) would read 0. `XACT_ABORT` is turned
/// off again at the end, and `BEGIN` re-asserts it in case an error ended the batch early.
pub fn claim(n: &Names) -> String {
    format!(
        "DECLARE @pick TABLE (app_id BIGINT PRIMARY KEY);
         DECLARE @won TABLE (app_id BIGINT PRIMARY KEY, fence BIGINT NOT NULL);
         BEGIN TRY
           INSERT INTO {claim} (app_id, owner, lease_expires_at, fence)
           SELECT TOP (@P2) s.app_id, '', 0, 0 FROM {src} AS s
           WHERE {sel_s}
             AND NOT EXISTS (SELECT 1 FROM {claim} AS c WITH (READUNCOMMITTED) WHERE c.app_id = s.app_id)
             AND NOT EXISTS (SELECT 1 FROM {log} AS l WITH (READUNCOMMITTED) WHERE l.app_id = s.app_id)
           ORDER BY s.app_id;
         END TRY
         BEGIN CATCH
           IF ERROR_NUMBER() NOT IN (2601, 2627) THROW;
         END CATCH;
         SET XACT_ABORT ON;
         BEGIN TRANSACTION;
         INSERT INTO @pick (app_id)
         SELECT TOP (@P2) c.app_id FROM {claim} AS c WITH (ROWLOCK, READPAST, UPDLOCK)
         WHERE c.lease_expires_at <= @P1 AND {sel_c}
           AND NOT EXISTS (SELECT 1 FROM {log} AS l WITH (READPAST) WHERE l.app_id = c.app_id)
         ORDER BY c.app_id;
         UPDATE c SET c.owner = @P7, c.lease_expires_at = @P8, c.fence = c.fence + 1
         OUTPUT inserted.app_id, inserted.fence INTO @won (app_id, fence)
         FROM {claim} AS c WITH (ROWLOCK) JOIN @pick AS p ON p.app_id = c.app_id
         WHERE c.lease_expires_at <= @P1
           AND NOT EXISTS (SELECT 1 FROM {log} AS l WHERE l.app_id = c.app_id);
         COMMIT TRANSACTION;
         SET XACT_ABORT OFF;
         SELECT w.app_id, w.fence, CAST(s.{col} AS NVARCHAR(MAX))
         FROM @won AS w JOIN {src} AS s ON s.app_id = w.app_id ORDER BY w.app_id;",
        claim = n.claim,
        src = n.src,
        log = n.log,
        col = n.src_col,
        sel_s = sel("s", 3),
        sel_c = sel("c", 3)
    )
}

/// `@P1` owner, `@P2` expiry, `@P3` done marker, `@P4` now (only a live lease is extended or released), `@P5`..
/// the `nids` app ids.
pub fn renew(n: &Names, nids: usize) -> String {
    let ids: Vec<String> = (0..nids).map(|i| format!("@P{}", i + 5)).collect();
    format!(
        "UPDATE {} SET lease_expires_at = @P2
         WHERE owner = @P1 AND lease_expires_at < @P3 AND lease_expires_at > @P4 AND app_id IN ({});",
        n.claim,
        ids.join(", ")
    )
}

/// The server's clock in ms since the Unix epoch (`SYSUTCDATETIME()`, the time of this statement).
pub const CLOCK_MS: &str =
    "SELECT DATEDIFF_BIG(millisecond, CAST('1970-01-01T00:00:00' AS DATETIME2), SYSUTCDATETIME());";

/// Fenced completion, inside the write transaction. `@P1` owner, `@P2` done marker, then `(@P(2i+3) app_id,
/// @P(2i+4) fence)` pairs. Marks this owner's claims with a matching fence done and returns their app_ids; the
/// row locks it takes make a takeover wait for our commit or rollback.
/// `by_owner`: the planted `complete-by-owner` bug (harness tests only), the fence not compared.
pub fn complete_claims(n: &Names, npairs: usize, by_owner: bool) -> String {
    let values = values_rows(npairs, |i| format!("@P{}, @P{}", 2 * i + 3, 2 * i + 4));
    format!(
        "UPDATE c SET c.lease_expires_at = @P2
         OUTPUT inserted.app_id
         FROM {claim} AS c WITH (ROWLOCK)
         JOIN (VALUES {values}) AS f (app_id, fence) ON c.app_id = f.app_id AND {fence}
         WHERE c.owner = @P1;",
        claim = n.claim,
        fence = if by_owner {
            "f.fence IS NOT NULL"
        } else {
            "c.fence = f.fence"
        }
    )
}

/// `@P1` now, `@P2` done marker, `@P3`..`@P6` selection. Reads without skipping: a claim being completed by an
/// open transaction is waited for, so a queue is never reported drained while a commit could still roll back.
pub fn live_claims(n: &Names) -> String {
    format!(
        "SELECT COUNT_BIG(*) FROM {claim} AS c
         WHERE c.lease_expires_at > @P1 AND c.lease_expires_at < @P2 AND {sel}
           AND NOT EXISTS (SELECT 1 FROM {log} AS l WHERE l.app_id = c.app_id);",
        claim = n.claim,
        log = n.log,
        sel = sel("c", 3)
    )
}

/// `@P1`.. the `nids` app ids.
/// `READCOMMITTEDLOCK`: the read waits for an uncommitted log row (a dead connection's COMMIT still executing)
/// even where the database has READ_COMMITTED_SNAPSHOT on (Azure SQL's default), which would otherwise answer
/// "not committed" from the row's last committed version. Babelfish accepts the hint and ignores it.
pub fn logged(n: &Names, nids: usize) -> String {
    let ids: Vec<String> = (0..nids).map(|i| format!("@P{}", i + 1)).collect();
    format!(
        "SELECT app_id, session_id FROM {} WITH (READCOMMITTEDLOCK) WHERE app_id IN ({});",
        n.log,
        ids.join(", ")
    )
}

pub fn status_counts(n: &Names) -> String {
    format!(
        "SELECT (SELECT COUNT_BIG(*) FROM {src}),
                (SELECT COUNT_BIG(*) FROM {log} WHERE status = 'success'),
                (SELECT COUNT_BIG(*) FROM {log} WHERE status = 'failed'),
                (SELECT COUNT_BIG(*) FROM {log} WHERE coerced > 0),
                (SELECT ISNULL(SUM(CAST(coerced AS BIGINT)), 0) FROM {log});",
        src = n.src,
        log = n.log
    )
}

pub fn status_instances(n: &Names) -> String {
    format!(
        "SELECT CAST(instance_id AS BIGINT), COUNT_BIG(DISTINCT session_id),
                COUNT_BIG(CASE WHEN status = 'success' THEN 1 END),
                COUNT_BIG(CASE WHEN status = 'failed' THEN 1 END),
                CONVERT(NVARCHAR(23), MAX(processed_at), 121)
         FROM {} GROUP BY instance_id ORDER BY instance_id;",
        n.log
    )
}

/// `@P1` now, `@P2` done marker. Placeholder rows (owner `''`, never claimed) are not anyone's claims.
pub fn status_claims(n: &Names) -> String {
    format!(
        "SELECT CAST(owner AS NVARCHAR(64)),
                COUNT_BIG(CASE WHEN lease_expires_at > @P1 AND lease_expires_at < @P2 THEN 1 END),
                COUNT_BIG(CASE WHEN lease_expires_at <= @P1 THEN 1 END),
                MIN(CASE WHEN lease_expires_at < @P2 THEN lease_expires_at END)
         FROM {claim} AS c
         WHERE owner <> '' AND NOT EXISTS (SELECT 1 FROM {log} AS l WHERE l.app_id = c.app_id)
         GROUP BY owner ORDER BY owner;",
        claim = n.claim,
        log = n.log
    )
}

/// Row count of a target table (tests and diagnostics).
pub fn count_rows(t: &Table, n: &Names) -> String {
    format!("SELECT COUNT_BIG(*) FROM {};", n.table(t))
}

/// `CREATE DATABASE [name]` / drop, for scratch databases (run on a `master` connection, outside a transaction).
pub fn create_database(name: &Ident) -> String {
    format!(
        "IF DB_ID(N'{n}') IS NULL CREATE DATABASE {b};",
        n = name.as_str(),
        b = name.bracket()
    )
}

/// This connection's server session: `(session id, login time)`, a pair that names it even after the id is
/// reused, and whether the login may see other sessions (`VIEW SERVER STATE`; without it `sys.dm_exec_sessions`
/// lists only the caller's own, so a dropped session would look gone). `@@SPID` is cast: Babelfish's ids (its
/// PostgreSQL backend pids) exceed SQL Server's `smallint`.
pub const SESSION_OF: &str = "SELECT CAST(@@SPID AS INT), CONVERT(NVARCHAR(30), login_time, 126), \
     CAST(ISNULL(HAS_PERMS_BY_NAME(NULL, NULL, 'VIEW SERVER STATE'), 0) AS INT) \
     FROM sys.dm_exec_sessions WHERE session_id = @@SPID;";

/// `@P1` session id, `@P2` its login time (as [`SESSION_OF`] read it): `KILL`s that session if it still exists
/// (a COMMIT already executing finishes first, an open transaction rolls back) and returns 1 while it is listed
/// (a killed session stays until its rollback is done), 0 once it is gone. A `KILL` that fails (the session
/// ended in between, or the login lacks `ALTER ANY CONNECTION`) is ignored: the caller polls until the deadline.
pub const SETTLE: &str = "DECLARE @s INT = @P1; \
     IF EXISTS (SELECT 1 FROM sys.dm_exec_sessions \
                WHERE session_id = @s AND CONVERT(NVARCHAR(30), login_time, 126) = @P2) \
     BEGIN \
       DECLARE @k NVARCHAR(40) = N'KILL ' + CAST(@s AS NVARCHAR(10)); \
       BEGIN TRY EXEC(@k); END TRY BEGIN CATCH END CATCH; \
       SELECT CAST(1 AS INT); \
     END \
     ELSE SELECT CAST(0 AS INT);";

/// Ends the database's other sessions with `KILL` (their open transactions roll back), then drops it. Not
/// `ALTER DATABASE … SET SINGLE_USER WITH ROLLBACK IMMEDIATE`: Babelfish refuses `ALTER DATABASE` when it parses
/// the batch, even inside an `IF` branch that would not run. A session that logs in between the `KILL` and the
/// `DROP` makes the drop fail (3702, database in use) with a clear error; the harness and tests drop only
/// databases whose processors have exited.
pub fn drop_database(name: &Ident) -> String {
    format!(
        "IF DB_ID(N'{n}') IS NOT NULL BEGIN \
           DECLARE @kill NVARCHAR(MAX) = N''; \
           SELECT @kill = @kill + N'KILL ' + CAST(session_id AS NVARCHAR(10)) + N'; ' \
           FROM sys.dm_exec_sessions WHERE database_id = DB_ID(N'{n}') AND session_id <> @@SPID; \
           IF @kill <> N'' EXEC(@kill); \
           DROP DATABASE {b}; \
         END;",
        n = name.as_str(),
        b = name.bracket()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> Contract {
        Contract::from_json(fixtures::CONTRACT_JSON).expect("built-in contract")
    }

    #[test]
    fn chunks_stay_under_the_parameter_and_row_limits() {
        assert!(chunk_rows(5, 0).is_empty());
        assert_eq!(chunk_rows(5, 3), vec![0..3]);
        // 2000 / 7 = 285 rows per chunk.
        assert_eq!(chunk_rows(7, 600), vec![0..285, 285..570, 570..600]);
        // Log rows (8 parameters each): 2000 / 8 = 250 rows per chunk.
        assert_eq!(LOG_COLS, 8);
        assert_eq!(chunk_rows(LOG_COLS, 600), vec![0..250, 250..500, 500..600]);
        // Narrow rows are capped by the 1,000-row VALUES limit.
        assert_eq!(chunk_rows(1, 2500), vec![0..1000, 1000..2000, 2000..2500]);
        assert_eq!(chunk_rows(2, 1000), vec![0..1000]);
        // Absurdly wide rows still make progress, one row at a time.
        assert_eq!(chunk_rows(5000, 2), vec![0..1, 1..2]);
        for ncols in [1, 2, 3, 7, 13, 40, 299, 2001] {
            for nrows in [0, 1, 999, 1000, 1001, 4321] {
                let chunks = chunk_rows(ncols, nrows);
                let covered: usize = chunks.iter().map(|r| r.len()).sum();
                assert_eq!(covered, nrows);
                let mut next = 0;
                for r in &chunks {
                    assert_eq!(r.start, next);
                    next = r.end;
                    assert!(!r.is_empty());
                    assert!(r.len() <= MAX_VALUES_ROWS);
                    assert!(r.len() * ncols <= MAX_PARAMS || r.len() == 1);
                }
            }
        }
    }

    #[test]
    fn ddl_follows_the_database_conventions() {
        let c = contract();
        let n = Names::new(&c);
        let ddl = create_all(&c, &n);
        let all = ddl.join("\n");
        let schema = c.schema.as_ref().map_or("dbo", |s| s.as_str()).to_owned();
        assert!(ddl[0].starts_with(&format!(
            "IF SCHEMA_ID(N'{schema}') IS NULL EXEC(N'CREATE SCHEMA [{schema}]')"
        )));
        assert!(all.contains(&format!(
            "IF OBJECT_ID(N'[{schema}].[processing_log]', N'U') IS NULL CREATE TABLE [{schema}].[processing_log]"
        )));
        assert!(all.contains("status VARCHAR(10) NOT NULL CHECK (status IN ('success','failed'))"));
        assert!(all.contains("session_id VARCHAR(64) NOT NULL"));
        assert!(all.contains("fence BIGINT NULL"));
        assert!(
            all.contains("coerced INT NOT NULL CONSTRAINT [df_processing_log_coerced] DEFAULT 0")
        );
        assert!(all.contains(&format!(
            "ALTER TABLE [{schema}].[processing_log] ADD coerced INT NOT NULL"
        )));
        assert!(all.contains("PRIMARY KEY CLUSTERED (app_id)"));
        assert!(
            !all.contains("IGNORE_DUP_KEY"),
            "Babelfish refuses it: {all}"
        );
        assert!(all.contains(&format!(
            "{} NVARCHAR(MAX) NOT NULL",
            c.source_column.bracket()
        )));
        // One CREATE per target table, each with its natural key.
        for t in &c.tables {
            let stmt = ddl
                .iter()
                .find(|s| s.contains(&format!("CREATE TABLE [{schema}].{}", t.name.bracket())))
                .unwrap_or_else(|| panic!("no DDL for {}", t.name));
            assert!(stmt.contains(&format!("CONSTRAINT [uq_{}] UNIQUE (", t.name)));
            assert!(!stmt.contains("IDENTITY"), "{stmt}");
        }
        assert!(!all.contains('"'), "ANSI quotes in T-SQL: {all}");
    }

    #[test]
    fn column_types() {
        assert_eq!(
            col_type(ColType::Decimal {
                precision: 12,
                scale: 2
            }),
            "DECIMAL(12,2)"
        );
        assert_eq!(col_type(ColType::Date), "DATE");
        assert_eq!(col_type(ColType::DateTime), "DATETIME2(0)");
        assert_eq!(col_type(ColType::Bit), "BIT");
        assert_eq!(
            col_type(ColType::Text {
                max_chars: Some(50)
            }),
            "NVARCHAR(50)"
        );
        assert_eq!(
            col_type(ColType::Text {
                max_chars: Some(5000)
            }),
            "NVARCHAR(MAX)"
        );
        assert_eq!(col_type(ColType::Text { max_chars: None }), "NVARCHAR(MAX)");
        assert_eq!(col_type(ColType::Int), "INT");
        assert_eq!(
            param_expr(
                ColType::Decimal {
                    precision: 12,
                    scale: 2
                },
                4
            ),
            "CAST(CAST(@P4 AS NVARCHAR(MAX)) AS DECIMAL(12,2))"
        );
        assert_eq!(param_expr(ColType::Bit, 1), "CAST(@P1 AS BIT)");
        assert_eq!(
            param_expr(ColType::Date, 2),
            "CONVERT(DATE, CAST(@P2 AS NVARCHAR(MAX)), 23)"
        );
        assert_eq!(
            param_expr(ColType::DateTime, 3),
            "CONVERT(DATETIME2(0), CAST(@P3 AS NVARCHAR(MAX)), 120)"
        );
        assert_eq!(
            param_expr(ColType::Text { max_chars: None }, 5),
            "CAST(@P5 AS NVARCHAR(MAX))"
        );
        assert_eq!(param_expr(ColType::BigInt, 9), "@P9");
    }

    #[test]
    fn inserts_number_parameters_row_major() {
        let c = contract();
        let n = Names::new(&c);
        let plain = c.tables.iter().find(|t| !t.shared).expect("a plain table");
        let ncols = plain.columns.len();
        let q = insert_rows(plain, &n, 3);
        assert!(q.starts_with(&format!("INSERT INTO {} (", n.table(plain))));
        assert!(q.contains(&format!("@P{}", 3 * ncols)));
        assert!(!q.contains(&format!("@P{}", 3 * ncols + 1)));
        assert_eq!(q.matches("), (").count(), 2);
        assert!(!q.contains("NOT EXISTS"));

        let shared = c.tables.iter().find(|t| t.shared).expect("a shared table");
        let q = insert_rows(shared, &n, 2);
        assert!(q.contains("FROM (VALUES ("), "{q}");
        assert!(q.contains("WITH (UPDLOCK, HOLDLOCK)"), "{q}");
        for &k in &shared.key {
            let col = shared.columns[k].name.bracket();
            assert!(q.contains(&format!("x.{col} = v.{col}")), "{q}");
        }

        let q = insert_logs(&n, 2);
        assert!(q.contains("fence, coerced,"), "{q}");
        assert!(
            q.contains(
                "@P8, SYSUTCDATETIME()), (@P9, @P10, LEFT(CAST(@P11 AS NVARCHAR(MAX)), 500)"
            ),
            "{q}"
        );
        assert!(q.contains("@P15, @P16, SYSUTCDATETIME()"), "{q}");
        assert!(!q.contains("@P17"), "{q}");
        let q = insert_source(&n, 2);
        assert!(q.contains("(@P1, @P2), (@P3, @P4)"), "{q}");
        assert!(q.contains("WHERE NOT EXISTS"), "{q}");
    }

    #[test]
    fn claim_and_completion_statements() {
        let c = contract();
        let n = Names::new(&c);
        let q = claim(&n);
        assert!(q.contains("SET XACT_ABORT ON"));
        // Babelfish 4.2 evaluates UPDATE TOP with a correlated NOT EXISTS wrongly: pick first, then update.
        assert!(!q.contains("UPDATE TOP"), "{q}");
        assert!(q.contains("SELECT TOP (@P2) c.app_id FROM"));
        assert!(q.contains("JOIN @pick AS p ON p.app_id = c.app_id"));
        assert!(q.contains("WITH (ROWLOCK, READPAST, UPDLOCK)"));
        assert!(q.contains("OUTPUT inserted.app_id, inserted.fence INTO @won"));
        assert!(q.contains("c.fence = c.fence + 1"));
        assert!(q.contains("c.lease_expires_at <= @P1"));
        assert!(q.contains("c.owner = @P7, c.lease_expires_at = @P8"));
        // Placeholder claim rows before the transaction, a racing duplicate swallowed (no IGNORE_DUP_KEY).
        let ins = q.find("INSERT INTO").expect("insert");
        let begin = q.find("BEGIN TRANSACTION").expect("begin");
        let upd = q.find("UPDATE c SET").expect("update");
        assert!(ins < begin && begin < upd);
        assert!(q.contains("IF ERROR_NUMBER() NOT IN (2601, 2627) THROW;"));
        assert!(q.contains("((c.app_id % @P5) + @P5) % @P5 = @P6"));

        let q = complete_claims(&n, 2, false);
        assert!(q.contains("SET c.lease_expires_at = @P2"));
        assert!(q.contains("OUTPUT inserted.app_id"));
        assert!(q.contains("(@P3, @P4), (@P5, @P6)"));
        assert!(q.contains("c.fence = f.fence"));
        assert!(q.contains("WHERE c.owner = @P1"));

        let q = renew(&n, 3);
        assert!(q.contains("app_id IN (@P5, @P6, @P7)"));
        assert!(q.contains("lease_expires_at < @P3 AND lease_expires_at > @P4"));
        assert!(complete_claims(&n, 1, true).contains("f.fence IS NOT NULL"));
        assert!(logged(&n, 2).contains("IN (@P1, @P2)"));
        assert!(fetch_pending(&n).contains("SELECT TOP (@P2)"));
        assert!(fetch_pending(&n).contains("s.app_id >= @P1"));
        assert!(pending_count(&n).contains("@P1 IS NULL OR s.app_id >= @P1"));
        assert!(pending_at(&n).contains("ORDER BY s.app_id OFFSET @P5 ROWS FETCH NEXT 1 ROWS ONLY"));
    }

    #[test]
    fn transaction_verbs() {
        assert!(BEGIN.contains("SET XACT_ABORT OFF"));
        assert!(BEGIN.ends_with("BEGIN TRANSACTION;"));
        assert_eq!(SAVEPOINT, "SAVE TRANSACTION app;");
        assert!(ROLLBACK_TO.contains("ROLLBACK TRANSACTION app"));
        assert!(SESSION_SETUP.contains("SET XACT_ABORT OFF"));
        assert!(SESSION_SETUP.contains("SET ANSI_WARNINGS ON"));
    }

    #[test]
    fn database_admin() {
        let name = Ident::new("shredproof_test_1").expect("ident");
        assert_eq!(
            create_database(&name),
            "IF DB_ID(N'shredproof_test_1') IS NULL CREATE DATABASE [shredproof_test_1];"
        );
        let drop = drop_database(&name);
        assert!(drop.contains("DROP DATABASE [shredproof_test_1]"));
        assert!(drop
            .contains("FROM sys.dm_exec_sessions WHERE database_id = DB_ID(N'shredproof_test_1')"));
        // Babelfish refuses ALTER DATABASE at parse time, even in a branch that would not run.
        assert!(!drop.contains("ALTER DATABASE"), "{drop}");
    }
}
