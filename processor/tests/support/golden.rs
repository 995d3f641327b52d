//! Row-for-row comparison of Shredproof's mapping with the replaced system's golden rows (`fixtures/golden/`, format
//! and canonical text in its README). Shared by the `golden` test and the `golden_diff` example, so what the test
//! fails on is exactly what the example shows.

#![allow(dead_code)] // each includer uses a different part

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use processor::contract::Contract;
use processor::mapping::map_document;

/// A row: column → canonical text (`None` = NULL). A column a row does not name is NULL.
pub type Row = BTreeMap<String, Option<String>>;

/// The deliberate departures from the replaced system (fixtures/golden/README.md "Known departures"), applied cell by
/// cell and counted. Nothing else may differ.
pub const DEPARTURES: &[(&str, &str)] = &[
    (
        "D1 datetime-subsecond",
        "golden datetime has a fraction; Shredproof's whole-second text equals it cut at the seconds",
    ),
    (
        "D2 getutcdate-default",
        "golden \"<GETUTCDATE>\" (database clock) matches any non-NULL value",
    ),
];

/// One golden file.
#[derive(Debug)]
pub struct Golden {
    pub file: PathBuf,
    pub source: String,
    pub contract: String,
    pub app_id: Option<i64>,
    pub success: bool,
    pub reason: Option<String>,
    /// For a generated document: its length and FNV-1a 64 hash, to tell a changed generator from a mapping diff.
    pub xml_check: Option<(u64, String)>,
    /// Table → rows, in file order.
    pub tables: Vec<(String, Vec<Row>)>,
}

impl Golden {
    pub fn load(file: &Path) -> Result<Golden, String> {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_owned)
                .ok_or_else(|| format!("{}: no string field '{k}'", file.display()))
        };
        let verdict = field("verdict")?;
        let success = match verdict.as_str() {
            "success" => true,
            "failed" => false,
            other => return Err(format!("{}: verdict '{other}'", file.display())),
        };
        let mut tables = Vec::new();
        if let Some(obj) = v.get("tables").and_then(|t| t.as_object()) {
            for (name, rows) in obj {
                let rows = rows
                    .as_array()
                    .ok_or_else(|| format!("{}: table {name} is not a list", file.display()))?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let r = r.as_object().ok_or_else(|| {
                        format!("{}: a row of {name} is not an object", file.display())
                    })?;
                    let mut row = Row::new();
                    for (c, val) in r {
                        let cell = match val {
                            serde_json::Value::Null => None,
                            serde_json::Value::String(s) => Some(s.clone()),
                            other => {
                                return Err(format!(
                                    "{}: {name}.{c} is {other}, not text or null",
                                    file.display()
                                ))
                            }
                        };
                        row.insert(c.clone(), cell);
                    }
                    out.push(row);
                }
                tables.push((name.clone(), out));
            }
        }
        Ok(Golden {
            file: file.to_path_buf(),
            source: field("source")?,
            contract: field("contract")?,
            app_id: v.get("app_id").and_then(|x| x.as_i64()),
            success,
            reason: v.get("reason").and_then(|x| x.as_str()).map(str::to_owned),
            xml_check: match (
                v.get("xml_bytes").and_then(|x| x.as_u64()),
                v.get("xml_fnv1a64").and_then(|x| x.as_str()),
            ) {
                (Some(n), Some(h)) => Some((n, h.to_owned())),
                _ => None,
            },
            tables,
        })
    }
}

/// The replaced system's seed folder (`contracts/`, `samples/`): `SHREDPROOF_SEED` if set, else
/// `shared/seed/original` next to the repository or next to the worktree folder holding it. `Err` says why not.
pub fn seed_dir() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("SHREDPROOF_SEED") {
        let p = PathBuf::from(p);
        return if p.join("contracts").is_dir() {
            Ok(p)
        } else {
            Err(format!(
                "SHREDPROOF_SEED={} has no contracts/ folder",
                p.display()
            ))
        };
    }
    let repo = repo_dir();
    for up in ["..", "../.."] {
        let p = repo.join(up).join("shared/seed/original");
        if p.join("contracts").is_dir() && p.join("samples").is_dir() {
            return Ok(p);
        }
    }
    Err(format!(
        "the replaced system's seed (../shared/seed/original with contracts/ and samples/) is absent next to {} and \
         SHREDPROOF_SEED is unset",
        repo.display()
    ))
}

pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every golden file, sorted: `fixtures/golden/{cc,rl,gen-cc,gen-rl}/*.json`.
pub fn golden_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["cc", "rl", "gen-cc", "gen-rl"] {
        let dir = repo_dir().join("fixtures/golden").join(sub);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "json") {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

/// Every sample document of the seed: `samples/*.xml` and `samples/reclending/*.xml`, relative to the seed.
pub fn seed_samples(seed: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["samples", "samples/reclending"] {
        if let Ok(rd) = std::fs::read_dir(seed.join(sub)) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_file() && p.extension().is_some_and(|x| x == "xml") {
                    out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
    }
    out.sort();
    out
}

/// A contract, loaded once per path.
#[derive(Default)]
pub struct Contracts {
    loaded: BTreeMap<String, Result<Contract, String>>,
}

impl Contracts {
    pub fn get(&mut self, seed: &Path, rel: &str) -> &Result<Contract, String> {
        self.loaded.entry(rel.to_owned()).or_insert_with(|| {
            Contract::from_file(&seed.join(rel)).map_err(|e| format!("{rel} does not load: {e}"))
        })
    }
}

/// Shredproof's verdict and rows for one document, as canonical text, tables keyed by name.
pub struct Actual {
    pub result: Result<Vec<(String, Vec<Row>)>, String>,
}

/// Reads a sample as the processor's `load` does for UTF-8 text: the byte-order mark is not part of the document.
pub fn read_sample(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    String::from_utf8(bytes.to_vec()).map_err(|e| format!("{}: not UTF-8: {e}", path.display()))
}

/// The application key the test hands the mapper: the golden's `Request@ID`, else the file name's last digits
/// (the key a `load` of the file would give it), else 0.
pub fn app_id_for(g: &Golden) -> i64 {
    if let Some(id) = g.app_id {
        return id;
    }
    let name = g.source.rsplit('/').next().unwrap_or("");
    let digits: String = name
        .chars()
        .rev()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

pub fn map_actual(contract: &Contract, app_id: i64, xml: &str) -> Actual {
    match map_document(contract, app_id, xml) {
        Err(f) => Actual {
            result: Err(f.reason()),
        },
        Ok(app) => {
            let mut tables = Vec::new();
            for (t, rows) in contract.tables.iter().zip(app.rows.iter()) {
                if rows.is_empty() {
                    continue;
                }
                let rendered = rows
                    .iter()
                    .map(|r| {
                        t.columns
                            .iter()
                            .zip(r.iter())
                            .map(|(c, v)| (c.name.as_str().to_owned(), v.canonical()))
                            .collect::<Row>()
                    })
                    .collect();
                tables.push((t.name.as_str().to_owned(), rendered));
            }
            Actual { result: Ok(tables) }
        }
    }
}

/// How one cell compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    Equal,
    /// Equal under `DEPARTURES[i]`.
    Departure(usize),
    Differs,
}

fn cell(golden: Option<&str>, actual: Option<&str>) -> Cell {
    if golden == actual {
        return Cell::Equal;
    }
    match (golden, actual) {
        (Some("<GETUTCDATE>"), Some(_)) => Cell::Departure(1),
        (Some(g), Some(a))
            if g.len() > 20
                && g.as_bytes()[19] == b'.'
                && a.len() == 19
                && g.as_bytes()[10] == b' '
                && &g[..19] == a =>
        {
            Cell::Departure(0)
        }
        _ => Cell::Differs,
    }
}

fn columns_of<'a>(a: &'a Row, b: &'a Row) -> Vec<&'a str> {
    let mut cols: Vec<&str> = a.keys().map(String::as_str).collect();
    for k in b.keys() {
        if !a.contains_key(k) {
            cols.push(k);
        }
    }
    cols
}

/// `None` when the rows are equal (counting departures into `used`), else the differing columns.
fn row_diff(golden: &Row, actual: &Row, used: &mut [usize]) -> Option<Vec<String>> {
    let mut diffs = Vec::new();
    let mut deps = Vec::new();
    for c in columns_of(golden, actual) {
        let g = golden.get(c).cloned().flatten();
        let a = actual.get(c).cloned().flatten();
        match cell(g.as_deref(), a.as_deref()) {
            Cell::Equal => {}
            Cell::Departure(i) => deps.push(i),
            Cell::Differs => diffs.push(c.to_owned()),
        }
    }
    if diffs.is_empty() {
        for i in deps {
            used[i] += 1;
        }
        None
    } else {
        Some(diffs)
    }
}

fn show(v: Option<&Option<String>>) -> String {
    match v.cloned().flatten() {
        None => "NULL".into(),
        Some(s) => format!("{s:?}"),
    }
}

/// The differences of one document, by table.
#[derive(Debug, Default)]
pub struct DocDiff {
    /// `Some(text)` when the verdicts differ.
    pub verdict: Option<String>,
    /// Table → (missing rows, extra rows, lines describing them).
    pub tables: BTreeMap<String, TableDiff>,
    /// Departure uses, per `DEPARTURES` index.
    pub departures: Vec<usize>,
    /// Column → cells that differ, over the whole document (`table.column`).
    pub columns: BTreeMap<String, usize>,
}

#[derive(Debug, Default)]
pub struct TableDiff {
    pub golden_rows: usize,
    pub actual_rows: usize,
    /// Golden rows with no equal Shredproof row.
    pub missing: usize,
    /// Shredproof rows with no equal golden row.
    pub extra: usize,
    pub lines: Vec<String>,
}

impl DocDiff {
    pub fn is_empty(&self) -> bool {
        self.verdict.is_none() && self.tables.is_empty()
    }

    pub fn count(&self) -> usize {
        usize::from(self.verdict.is_some())
            + self
                .tables
                .values()
                .map(|t| t.missing.max(t.extra))
                .sum::<usize>()
    }
}

/// Compares one golden file with Shredproof's result. Each table is compared as a multiset: a golden row is matched
/// with an equal Shredproof row; unmatched rows are paired by most equal cells to show which columns differ.
pub fn compare(g: &Golden, actual: &Actual) -> DocDiff {
    let mut d = DocDiff {
        departures: vec![0; DEPARTURES.len()],
        ..DocDiff::default()
    };
    let tables = match (&actual.result, g.success) {
        (Ok(t), true) => t,
        (Err(_), false) => return d,
        (Ok(t), false) => {
            d.verdict = Some(format!(
                "verdict: golden failed ({}), Shredproof mapped {} rows",
                g.reason.as_deref().unwrap_or("?"),
                t.iter().map(|(_, r)| r.len()).sum::<usize>()
            ));
            return d;
        }
        (Err(why), true) => {
            d.verdict = Some(format!(
                "verdict: golden success ({} rows), Shredproof failed: {why}",
                g.tables.iter().map(|(_, r)| r.len()).sum::<usize>()
            ));
            return d;
        }
    };
    let empty = Vec::new();
    let mut names: Vec<&str> = g.tables.iter().map(|(n, _)| n.as_str()).collect();
    for (n, _) in tables {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    for name in names {
        let golden = g
            .tables
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&empty, |(_, r)| r);
        let act = tables
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&empty, |(_, r)| r);
        let mut taken = vec![false; act.len()];
        let mut unmatched = Vec::new();
        for gr in golden {
            let mut found = false;
            for (i, ar) in act.iter().enumerate() {
                if !taken[i] && row_diff(gr, ar, &mut d.departures).is_none() {
                    taken[i] = true;
                    found = true;
                    break;
                }
            }
            if !found {
                unmatched.push(gr);
            }
        }
        let mut extra: Vec<usize> = (0..act.len()).filter(|i| !taken[*i]).collect();
        if unmatched.is_empty() && extra.is_empty() {
            continue;
        }
        let mut td = TableDiff {
            golden_rows: golden.len(),
            actual_rows: act.len(),
            missing: unmatched.len(),
            extra: extra.len(),
            lines: Vec::new(),
        };
        let mut scratch = vec![0; DEPARTURES.len()];
        for gr in unmatched {
            // The closest unmatched Shredproof row: fewest differing columns.
            let best = extra
                .iter()
                .enumerate()
                .filter_map(|(k, &i)| row_diff(gr, &act[i], &mut scratch).map(|c| (k, i, c)))
                .min_by_key(|(_, _, c)| c.len());
            match best {
                Some((k, i, cols)) => {
                    let mut line = String::new();
                    for c in &cols {
                        *d.columns.entry(format!("{name}.{c}")).or_insert(0) += 1;
                        let _ = write!(
                            line,
                            " {c}: golden {} / shredproof {};",
                            show(gr.get(c.as_str())),
                            show(act[i].get(c.as_str()))
                        );
                    }
                    td.lines.push(format!("row {}:{line}", key_hint(gr)));
                    extra.remove(k);
                }
                None => td.lines.push(format!("missing row {}", brief(gr))),
            }
        }
        for i in extra {
            td.lines.push(format!("extra row {}", brief(&act[i])));
        }
        d.tables.insert(name.to_owned(), td);
    }
    d
}

/// A few identifying cells of a row (keys first), for diff lines.
fn key_hint(r: &Row) -> String {
    let mut parts = Vec::new();
    for k in [
        "app_id",
        "con_id",
        "name",
        "score_identifier",
        "indicator",
        "address_type_enum",
        "employment_type_enum",
        "collateral_type_enum",
        "sort_order",
        "warranty_type_enum",
        "policy_exception_type_enum",
    ] {
        if let Some(Some(v)) = r.get(k) {
            parts.push(format!("{k}={v}"));
        }
    }
    format!("[{}]", parts.join(" "))
}

fn brief(r: &Row) -> String {
    let cells: Vec<String> = r
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v:?}")))
        .collect();
    let mut s = cells.join(" ");
    if s.len() > 400 {
        let mut cut = 400;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    format!("{{{s}}}")
}

/// FNV-1a 64 of `bytes`, as lower-case hex (what tools/golden/generate.py records for generated documents).
pub fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01B3);
    }
    format!("{h:016x}")
}

/// The document a golden names: a sample file of the seed, or `generated:realshape:<cc|rl>:seed=S:app_id=N`
/// regenerated by `fixtures::realshape` and checked against the golden's recorded length and hash.
pub fn document(seed: &Path, g: &Golden) -> Result<String, String> {
    let Some(spec) = g.source.strip_prefix("generated:realshape:") else {
        return read_sample(&seed.join(&g.source));
    };
    let bad = || format!("{}: bad generated source '{}'", g.file.display(), g.source);
    let mut parts = spec.split(':');
    let shape = parts
        .next()
        .and_then(fixtures::realshape::Shape::parse)
        .ok_or_else(bad)?;
    let gen_seed: u64 = parts
        .next()
        .and_then(|p| p.strip_prefix("seed="))
        .and_then(|p| p.parse().ok())
        .ok_or_else(bad)?;
    let app_id: i64 = parts
        .next()
        .and_then(|p| p.strip_prefix("app_id="))
        .and_then(|p| p.parse().ok())
        .ok_or_else(bad)?;
    let cfg = fixtures::realshape::RealConfig::new(shape, 1, gen_seed);
    let doc = fixtures::realshape::real_generate_one(&cfg, app_id);
    if let Some((len, hash)) = &g.xml_check {
        let got = (doc.xml.len() as u64, fnv1a64(doc.xml.as_bytes()));
        if got != (*len, hash.clone()) {
            return Err(format!(
                "the real-shape generator no longer gives the document this golden was made from ({len} bytes \
                 {hash}, now {} bytes {}): rerun tools/golden/generate.py --generated (tools/golden/README.md)",
                got.0, got.1
            ));
        }
    }
    Ok(doc
        .xml
        .strip_prefix('\u{FEFF}')
        .unwrap_or(&doc.xml)
        .to_owned())
}

/// Runs one golden file end to end. `Err` when the document or contract cannot even be tried.
pub fn run_one(seed: &Path, contracts: &mut Contracts, g: &Golden) -> Result<DocDiff, String> {
    let xml = document(seed, g)?;
    let contract = match contracts.get(seed, &g.contract) {
        Ok(c) => c,
        Err(e) => return Err(e.clone()),
    };
    Ok(compare(g, &map_actual(contract, app_id_for(g), &xml)))
}
