//! The checker under any contract the processor accepts. The reference mapping (`reference.rs`) re-implements only
//! the project's own contract format; for every other contract (the replaced system's, with mapping types no second
//! implementation here covers) the `content` invariant is judged by comparison with the no-fault baseline run of the
//! same documents: table by table, every column's canonical text, as a multiset of rows per owning application, and
//! every application's verdict. Why that keeps its independence is argued in ARCHITECTURE.md ("content under any
//! contract"). The structural invariants (coverage, log rows per app, rows owned by an application not logged
//! success, fencing, file integrity) need no mapping at all and are checked on the run alone.
//!
//! Only the contract's layout is read (source table and column, target schema, tables, parent links), never its
//! mapping entries, so nothing here depends on what a mapping type means. Columns come from the database catalog.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value as Json;

use super::reader::{exists, Reader, Sql, LOG_TABLE};
use super::{id_list, show, CheckError, Invariant, Violation};

/// The application key: the source table's, the log's, and the column that names a row's owner (ARCHITECTURE.md,
/// "Database conventions").
const APP_KEY: &str = "app_id";

/// What the comparison needs of a contract: where documents are and which tables rows go to.
#[derive(Debug, Clone)]
pub struct Layout {
    pub source_table: String,
    pub source_column: String,
    pub target_schema: String,
    /// Target tables, parents before children (`table_insertion_order`, then any other mapped table).
    pub tables: Vec<String>,
    /// Child table → (parent table, foreign-key column), from `relationships`.
    parents: BTreeMap<String, (String, String)>,
}

impl Layout {
    pub fn parse(json: &str) -> Result<Layout, CheckError> {
        let err = |m: String| CheckError::Contract(m);
        let v: Json = serde_json::from_str(json).map_err(|e| err(format!("not JSON: {e}")))?;
        let s = |k: &str| -> Result<String, CheckError> {
            v.get(k)
                .and_then(Json::as_str)
                .map(str::to_owned)
                .ok_or_else(|| err(format!("missing or non-string field '{k}'")))
        };
        let mut tables: Vec<String> = Vec::new();
        let mut add = |t: &str| {
            if t != LOG_TABLE && !t.is_empty() && !tables.iter().any(|x| x == t) {
                tables.push(t.to_owned());
            }
        };
        for t in v
            .get("table_insertion_order")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            add(t
                .as_str()
                .ok_or_else(|| err("table_insertion_order: expected strings".into()))?);
        }
        for m in v
            .get("mappings")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(t) = m.get("target_table").and_then(Json::as_str) {
                add(t);
            }
        }
        if tables.is_empty() {
            return Err(err(
                "no target tables (table_insertion_order, mappings)".into()
            ));
        }
        let mut parents = BTreeMap::new();
        for r in v
            .get("relationships")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            let f = |k: &str| r.get(k).and_then(Json::as_str).map(str::to_owned);
            if let (Some(c), Some(p), Some(fk)) =
                (f("child_table"), f("parent_table"), f("foreign_key_column"))
            {
                if c != p {
                    parents.entry(c).or_insert((p, fk));
                }
            }
        }
        Ok(Layout {
            source_table: s("source_table")?,
            source_column: s("source_column")?,
            target_schema: s("target_schema")?,
            tables,
            parents,
        })
    }
}

type Row = Vec<Option<String>>;

/// One application's first log row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: Option<String>,
    pub reason: Option<String>,
}

impl Verdict {
    /// `parse`, `map`, `write`, `limit`: the failure reason's stage, which a rerun must reproduce.
    fn stage(&self) -> Option<&str> {
        self.reason.as_deref().and_then(|r| r.split(':').next())
    }
}

#[derive(Debug, Clone, Default)]
struct TableRows {
    columns: Vec<String>,
    /// Owner (`None`: no single owning application found) → row → how many times it is stored.
    by_owner: BTreeMap<Option<i64>, BTreeMap<Row, u32>>,
    total: u64,
}

/// A final database as the comparison sees it: source apps, verdicts, and every target row by owner.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub sources: BTreeSet<i64>,
    pub verdicts: BTreeMap<i64, Verdict>,
    /// Apps with more than one log row.
    pub log_multiples: BTreeMap<i64, u64>,
    /// `None`: the table does not exist.
    tables: BTreeMap<String, Option<TableRows>>,
}

impl Snapshot {
    fn success(&self, app: i64) -> bool {
        self.verdicts
            .get(&app)
            .is_some_and(|v| v.status.as_deref() == Some("success"))
    }

    /// Row count per existing table.
    pub fn row_counts(&self) -> BTreeMap<String, u64> {
        self.tables
            .iter()
            .filter_map(|(t, r)| r.as_ref().map(|r| (t.clone(), r.total)))
            .collect()
    }
}

fn parse_id(v: &Option<String>, what: &str) -> Result<i64, CheckError> {
    v.as_deref()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| CheckError::Db(format!("{what}: app_id {} is not an integer", show(v))))
}

/// Reads everything the comparison and the structural checks need, with the checker's own read-only queries.
pub fn snapshot(reader: &mut dyn Reader, layout: &Layout) -> Result<Snapshot, CheckError> {
    let sql = Sql::new(reader.dialect(), &layout.target_schema)?;
    let mut snap = Snapshot::default();
    for r in reader.query_text(&sql.source_ids(&layout.source_table)?)? {
        snap.sources.insert(parse_id(&r[0], "source")?);
    }
    for r in reader.query_text(&sql.log_rows(false)?)? {
        let app = parse_id(&r[0], LOG_TABLE)?;
        let n = snap.log_multiples.entry(app).or_insert(0);
        *n += 1;
        snap.verdicts.entry(app).or_insert(Verdict {
            status: r[1].clone(),
            reason: r[2].clone(),
        });
    }
    snap.log_multiples.retain(|_, n| *n > 1);
    // Parent table → foreign-key column → value → owners, built from tables already read (parents come first).
    let mut fk_owners: HashMap<(String, String), HashMap<Option<String>, BTreeSet<i64>>> =
        HashMap::new();
    for t in &layout.tables {
        if !exists(reader, &sql.table_exists(t)?)? {
            snap.tables.insert(t.clone(), None);
            continue;
        }
        let columns: Vec<String> = reader
            .query_text(&sql.compared_columns(t)?)?
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        let rows = reader.query_text(&sql.all_rows(t, &columns)?)?;
        let app_col = columns.iter().position(|c| c == APP_KEY);
        let link = layout.parents.get(t);
        let fk_col = link.and_then(|(_, fk)| columns.iter().position(|c| c == fk));
        let parent_map = link.and_then(|(p, fk)| fk_owners.get(&(p.clone(), fk.clone())));
        let mut tr = TableRows {
            columns: columns.clone(),
            ..TableRows::default()
        };
        let mut owners = Vec::with_capacity(rows.len());
        for row in rows {
            let owner = match (app_col, fk_col, parent_map) {
                (Some(i), _, _) => row[i].as_deref().and_then(|v| v.trim().parse().ok()),
                (None, Some(i), Some(m)) => m
                    .get(&row[i])
                    .filter(|s| s.len() == 1)
                    .and_then(|s| s.first().copied()),
                _ => None,
            };
            owners.push(owner);
            tr.total += 1;
            *tr.by_owner
                .entry(owner)
                .or_default()
                .entry(row)
                .or_insert(0) += 1;
        }
        // Children of this table find their owner through these columns.
        for (p, fk) in layout.parents.values() {
            if p != t {
                continue;
            }
            let Some(pos) = columns.iter().position(|c| c == fk) else {
                continue;
            };
            let m = fk_owners.entry((t.clone(), fk.clone())).or_default();
            for (owner, rows) in &tr.by_owner {
                let Some(o) = owner else { continue };
                for row in rows.keys() {
                    m.entry(row[pos].clone()).or_default().insert(*o);
                }
            }
        }
        snap.tables.insert(t.clone(), Some(tr));
    }
    Ok(snap)
}

/// `col = 'stored' (baseline 'expected')` for every column where two rows differ.
fn column_diff(columns: &[String], got: &Row, want: &Row) -> String {
    let d: Vec<String> = columns
        .iter()
        .zip(got.iter().zip(want))
        .filter(|(_, (g, w))| g != w)
        .map(|(c, (g, w))| format!("{c} = {} (baseline {})", show(g), show(w)))
        .collect();
    d.join(", ")
}

fn row_text(columns: &[String], row: &Row) -> String {
    // Non-NULL columns only, and a few of them: real tables have a hundred columns, a message names the row.
    const SHOWN: usize = 8;
    let set: Vec<String> = columns
        .iter()
        .zip(row)
        .filter_map(|(c, v)| v.as_ref().map(|v| format!("{c}='{v}'")))
        .collect();
    let more = set.len().saturating_sub(SHOWN);
    let mut parts: Vec<String> = set.into_iter().take(SHOWN).collect();
    if more > 0 {
        parts.push(format!("… {more} more"));
    }
    format!("({})", parts.join(", "))
}

/// Coverage, log rows per app, and rows owned by an application that is not logged success: the invariants that
/// need no mapping, on one database.
pub fn structural(snap: &Snapshot) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    let mut bad_status = Vec::new();
    for app in &snap.sources {
        match snap.verdicts.get(app) {
            None => missing.push(*app),
            Some(v) if !matches!(v.status.as_deref(), Some("success" | "failed")) => {
                bad_status.push(*app)
            }
            Some(_) => {}
        }
    }
    let unknown: Vec<i64> = snap
        .verdicts
        .keys()
        .filter(|a| !snap.sources.contains(a))
        .copied()
        .collect();
    let mut push = |inv: Invariant, apps: Vec<i64>, what: &str| {
        if !apps.is_empty() {
            let msg = format!("{} {what}: {}", apps.len(), id_list(&apps));
            out.push(Violation::new(inv, apps, msg));
        }
    };
    push(
        Invariant::Coverage,
        missing,
        "source applications have no log row",
    );
    push(
        Invariant::Coverage,
        snap.log_multiples.keys().copied().collect(),
        "source applications have more than one log row",
    );
    push(
        Invariant::Coverage,
        bad_status,
        "source applications have a log status other than success or failed",
    );
    push(
        Invariant::Coverage,
        unknown,
        "log rows name applications that are not in the source table",
    );
    // Every contract gives a successful application at least its application-level row: one that owns no row in
    // any table had its rows written under another key (e.g. the document's own id instead of the source row's).
    let owners: BTreeSet<i64> = snap
        .tables
        .values()
        .flatten()
        .flat_map(|tr| tr.by_owner.keys().flatten().copied())
        .collect();
    let rowless: Vec<i64> = snap
        .sources
        .iter()
        .filter(|a| snap.success(**a) && !owners.contains(a))
        .copied()
        .collect();
    push(
        Invariant::LogMatchesData,
        rowless,
        "applications logged success own no row in any target table",
    );
    for (app, n) in &snap.log_multiples {
        out.push(Violation::new(
            Invariant::NoDuplicates,
            [*app],
            format!("{LOG_TABLE}: app {app} has {n} log rows"),
        ));
    }
    for (t, tr) in &snap.tables {
        let Some(tr) = tr else { continue };
        for (owner, rows) in &tr.by_owner {
            let n: u32 = rows.values().sum();
            let first = rows
                .keys()
                .next()
                .map(|r| row_text(&tr.columns, r))
                .unwrap_or_default();
            let state = match owner {
                Some(o) if snap.success(*o) => continue,
                Some(o) => match snap.verdicts.get(o) {
                    None => format!("app {o}, which has no log row"),
                    Some(_) => format!("app {o}, which is not logged success"),
                },
                // Rows of no single application are judged against the baseline, if there is one.
                None => continue,
            };
            out.push(Violation::new(
                Invariant::LogMatchesData,
                *owner,
                format!("{n} {t} rows owned by {state}, first {first}"),
            ));
        }
    }
    out
}

/// The faulted run against the no-fault baseline: the same verdicts, and for every application logged success in
/// both, the same rows in every table (canonical text of every column, counted). Extra copies of a baseline row are
/// `no-duplicates`; baseline rows missing from a successful application are `log-matches-data`; anything else
/// that differs is `content`.
pub fn compare(base: &Snapshot, run: &Snapshot) -> Vec<Violation> {
    let mut out = Vec::new();
    if base.sources != run.sources {
        let diff: Vec<i64> = base
            .sources
            .symmetric_difference(&run.sources)
            .copied()
            .collect();
        out.push(Violation::new(
            Invariant::Content,
            diff.clone(),
            format!(
                "the baseline's source table holds different applications ({} differ: {}); the runs are not comparable",
                diff.len(),
                id_list(&diff)
            ),
        ));
        return out;
    }
    for app in &run.sources {
        let (Some(b), Some(r)) = (base.verdicts.get(app), run.verdicts.get(app)) else {
            continue; // a missing log row is coverage's finding
        };
        if b.status != r.status {
            out.push(Violation::new(
                Invariant::Content,
                [*app],
                format!(
                    "app {app}: logged {} ({}), but the no-fault baseline logged {} ({})",
                    show(&r.status),
                    show(&r.reason),
                    show(&b.status),
                    show(&b.reason)
                ),
            ));
        } else if b.status.as_deref() == Some("failed") && b.stage() != r.stage() {
            out.push(Violation::new(
                Invariant::Content,
                [*app],
                format!(
                    "app {app}: failed with {}, but the no-fault baseline failed with {}",
                    show(&r.reason),
                    show(&b.reason)
                ),
            ));
        }
    }
    for (t, rt) in &run.tables {
        let bt = base.tables.get(t).and_then(Option::as_ref);
        let (rt, bt) = match (rt, bt) {
            (Some(r), Some(b)) => (r, b),
            (None, None) => continue,
            (r, _) => {
                out.push(Violation::new(
                    Invariant::Content,
                    Vec::<i64>::new(),
                    format!(
                        "table {t} {} in this run but {} in the baseline",
                        if r.is_some() { "exists" } else { "is missing" },
                        if r.is_some() { "not" } else { "it exists" }
                    ),
                ));
                continue;
            }
        };
        if rt.columns != bt.columns {
            out.push(Violation::new(
                Invariant::Content,
                Vec::<i64>::new(),
                format!(
                    "table {t} has columns ({}) but ({}) in the baseline",
                    rt.columns.join(", "),
                    bt.columns.join(", ")
                ),
            ));
            continue;
        }
        out.extend(compare_table(t, rt, bt, base, run));
    }
    out
}

/// One masked row's copies in one database: how many, their owners, one original row to show.
#[derive(Default)]
struct Copies {
    n: u32,
    owners: Vec<Option<i64>>,
    example: Row,
}

#[derive(Default)]
struct Diff<'a> {
    dups: Vec<(&'a Row, u32, u32)>,
    new: Vec<&'a Row>,
    missing: Vec<&'a Row>,
}

/// Rows compared table-wide with the owner column masked, so a row shared by several applications (stored once,
/// naming whichever wrote it first, which differs from run to run) is one row in both databases; each difference
/// is then reported against the application that owns the extra or the missing copy. Rows of an application
/// that is not logged success in both runs are left to the structural check and the verdict comparison.
fn compare_table(
    t: &str,
    rt: &TableRows,
    bt: &TableRows,
    base: &Snapshot,
    run: &Snapshot,
) -> Vec<Violation> {
    let app_pos = rt.columns.iter().position(|c| c == APP_KEY);
    let comparable = |o: &Option<i64>| o.is_none_or(|o| run.success(o) && base.success(o));
    let collect = |tr: &TableRows| {
        let mut m: BTreeMap<Row, Copies> = BTreeMap::new();
        for (owner, rows) in tr.by_owner.iter().filter(|(o, _)| comparable(o)) {
            for (row, n) in rows {
                let mut masked = row.clone();
                if let Some(p) = app_pos {
                    masked[p] = None;
                }
                let c = m.entry(masked).or_default();
                if c.n == 0 {
                    c.example = row.clone();
                }
                c.n += n;
                c.owners.push(*owner);
            }
        }
        m
    };
    let (rm, bm) = (collect(rt), collect(bt));
    let none = Copies::default();
    let pick = |mine: &Copies, theirs: &Copies| {
        mine.owners
            .iter()
            .find(|o| !theirs.owners.contains(o))
            .or(mine.owners.first())
            .copied()
            .flatten()
    };
    let mut per: BTreeMap<Option<i64>, Diff<'_>> = BTreeMap::new();
    for key in rm.keys().chain(bm.keys().filter(|k| !rm.contains_key(*k))) {
        let r = rm.get(key).unwrap_or(&none);
        let b = bm.get(key).unwrap_or(&none);
        if r.n > b.n {
            let d = per.entry(pick(r, b)).or_default();
            if b.n > 0 {
                d.dups.push((&r.example, r.n, b.n));
            } else {
                d.new.push(&r.example);
            }
        } else if b.n > r.n {
            per.entry(pick(b, r)).or_default().missing.push(&b.example);
        }
    }
    let mut out = Vec::new();
    for (owner, d) in per {
        let who = owner.map_or_else(
            || "rows of no single application".to_owned(),
            |o| format!("app {o}"),
        );
        if let Some((row, n, m)) = d.dups.first() {
            out.push(Violation::new(
                Invariant::NoDuplicates,
                owner,
                format!(
                    "{who}: {} {t} rows stored more often than in the baseline, first {} stored {n} times, {m} in the baseline",
                    d.dups.len(),
                    row_text(&rt.columns, row),
                ),
            ));
        }
        match (d.new.first(), d.missing.first()) {
            // Rows whose owner is ambiguous (a child of a key several applications share, such as the seed's
            // recreational-lending samples' con_id 24065 in 15 documents) are stored in the version of whichever
            // application committed first, which is the commit order's choice, not the processor's: as many rows as
            // the baseline, in other versions, is not a difference. A row more or fewer still is.
            (Some(_), Some(_)) if owner.is_none() && d.new.len() == d.missing.len() => {}
            (Some(got), Some(want)) => out.push(Violation::new(
                Invariant::Content,
                owner,
                format!(
                    "{who}: {} {t} rows differ from the baseline, e.g. {} in the row {}",
                    d.new.len().max(d.missing.len()),
                    column_diff(&rt.columns, got, want),
                    row_text(&bt.columns, want)
                ),
            )),
            (Some(got), None) => out.push(Violation::new(
                if owner.is_some() {
                    Invariant::Content
                } else {
                    Invariant::LogMatchesData
                },
                owner,
                format!(
                    "{who}: {} {t} rows the baseline does not have, first {}",
                    d.new.len(),
                    row_text(&rt.columns, got)
                ),
            )),
            (None, Some(want)) => out.push(Violation::new(
                if owner.is_some() {
                    Invariant::LogMatchesData
                } else {
                    Invariant::Content
                },
                owner,
                format!(
                    "{who}: {} {t} rows of the baseline are missing{}, first {}",
                    d.missing.len(),
                    if owner.is_some() {
                        " though it is logged success"
                    } else {
                        ""
                    },
                    row_text(&bt.columns, want)
                ),
            )),
            (None, None) => {}
        }
    }
    out
}
