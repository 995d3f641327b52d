//! Row-for-row equality with the replaced system (issue 10, item 4): every sample document of
//! `../shared/seed/original` under both of its contracts, mapped by `processor::mapping::map_document`, must give the
//! verdict and the rows (every table, every column, canonical text) of the golden files in `fixtures/golden/`, which
//! `tools/golden/generate.py` produced once from the replaced system's own mapper. The only accepted differences are
//! the listed departures (`support::golden::DEPARTURES`, fixtures/golden/README.md).
//!
//! The seed is not part of the project: where it is absent the test is reported as skipped (`harness = false`,
//! `fixtures::trial`), and under `SHREDPROOF_REQUIRE_SEED=1` (CI) as a failure.
//! `cargo run -p processor --example golden_diff -- <sample>` shows one document's differences in full.

#[path = "support/golden.rs"]
mod golden;

use std::collections::BTreeMap;

use golden::{golden_files, run_one, seed_dir, seed_samples, Contracts, Golden, DEPARTURES};

/// Differences printed in full before the summary; the counts cover all of them.
const SHOW: usize = 40;

fn main() {
    use fixtures::trial::{self, Need};
    fixtures::trial::run(vec![
        trial::gated(
            "golden_rows_equal_replaced_system",
            Need::Seed.require_env(),
            seed_dir().err(),
            golden_rows_equal_replaced_system,
        ),
        trial::trial(
            "golden_comparison_reports_every_kind_of_difference",
            &[],
            golden_comparison_reports_every_kind_of_difference,
        ),
    ])
}

fn golden_rows_equal_replaced_system() {
    let seed = seed_dir().unwrap_or_else(|why| panic!("listed as runnable, yet {why}"));

    let files = golden_files();
    let goldens: Vec<Golden> = files
        .iter()
        .map(|f| Golden::load(f).unwrap_or_else(|e| panic!("bad golden file: {e}")))
        .collect();

    // Every sample has a golden under each contract, and every golden names a sample that exists: a new or
    // renamed sample cannot slip past the comparison.
    let samples = seed_samples(&seed);
    let mut problems = Vec::new();
    for contract in [
        "contracts/mapping_contract.json",
        "contracts/mapping_contract_rl.json",
    ] {
        for s in &samples {
            if !goldens
                .iter()
                .any(|g| &g.source == s && g.contract == contract)
            {
                problems.push(format!(
                    "no golden for {s} under {contract} (rerun tools/golden/generate.py)"
                ));
            }
        }
    }
    for g in goldens
        .iter()
        .filter(|g| !g.source.starts_with("generated:"))
    {
        if !samples.contains(&g.source) {
            problems.push(format!(
                "{}: sample {} is not in the seed",
                g.file.display(),
                g.source
            ));
        }
    }

    let mut contracts = Contracts::default();
    let mut shown = 0usize;
    let mut docs_differing = 0usize;
    let mut per_table: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut per_column: BTreeMap<String, usize> = BTreeMap::new();
    let mut verdicts = 0usize;
    let mut verdict_kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut departures = vec![0usize; DEPARTURES.len()];
    let mut out = String::new();
    let mut compared = 0usize;
    for g in &goldens {
        let d = match run_one(&seed, &mut contracts, g) {
            Ok(d) => {
                compared += 1;
                d
            }
            Err(e) => {
                problems.push(format!("{}: {e}", g.source));
                continue;
            }
        };
        for (i, n) in d.departures.iter().enumerate() {
            departures[i] += n;
        }
        if d.is_empty() {
            continue;
        }
        docs_differing += 1;
        let name = g
            .file
            .strip_prefix(golden::repo_dir())
            .unwrap_or(&g.file)
            .display()
            .to_string();
        if let Some(v) = &d.verdict {
            verdicts += 1;
            // Grouped by the golden's reason (up to its first 100 characters), so 193 alike lines read as one.
            let kind: String = v.chars().take(100).collect();
            *verdict_kinds.entry(kind).or_default() += 1;
            if shown < SHOW {
                out.push_str(&format!("{name}: {v}\n"));
                shown += 1;
            }
        }
        for (t, td) in &d.tables {
            let e = per_table.entry(t.clone()).or_default();
            e.0 += td.missing;
            e.1 += td.extra;
            for l in &td.lines {
                if shown < SHOW {
                    out.push_str(&format!("{name}: {t}: {l}\n"));
                    shown += 1;
                }
            }
        }
        for (c, n) in &d.columns {
            *per_column.entry(c.clone()).or_default() += n;
        }
    }

    eprintln!(
        "golden: {} files, {} compared, {} documents differ ({} verdicts); departures applied: {}",
        goldens.len(),
        compared,
        docs_differing,
        verdicts,
        DEPARTURES
            .iter()
            .zip(&departures)
            .map(|((name, _), n)| format!("{name} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Problems that stop documents from being compared at all (a contract that does not load) are printed once
    // per distinct message, not once per document.
    let mut distinct: BTreeMap<String, usize> = BTreeMap::new();
    for p in &problems {
        let key = p.split_once(": ").map_or(p.as_str(), |(_, m)| m).to_owned();
        *distinct.entry(key).or_default() += 1;
    }
    let mut summary = String::new();
    for (p, n) in &distinct {
        summary.push_str(&format!("  {n} × {p}\n"));
    }
    for (k, n) in &verdict_kinds {
        summary.push_str(&format!("  {n} × {k}…\n"));
    }
    for (t, (missing, extra)) in &per_table {
        summary.push_str(&format!(
            "  {t}: {missing} golden rows unmatched, {extra} Shredproof rows unmatched\n"
        ));
    }
    let mut cols: Vec<_> = per_column.into_iter().collect();
    cols.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (c, n) in cols.iter().take(30) {
        summary.push_str(&format!("  column {c}: {n} cells differ\n"));
    }
    assert!(
        problems.is_empty() && docs_differing == 0,
        "Shredproof's rows differ from the replaced system's:\n{out}summary:\n{summary}"
    );
}

/// The comparison itself can fail: a changed cell, a missing row, an extra row and a changed verdict are each
/// reported, and the two departures apply only where they are defined. Needs no seed.
fn golden_comparison_reports_every_kind_of_difference() {
    use golden::{compare, Actual, Row};
    let row = |cells: &[(&str, Option<&str>)]| -> Row {
        cells
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
            .collect()
    };
    let g = Golden {
        file: "x.json".into(),
        source: "samples/x.xml".into(),
        contract: "contracts/c.json".into(),
        app_id: Some(1),
        success: true,
        reason: None,
        xml_check: None,
        tables: vec![(
            "t".into(),
            vec![
                row(&[("a", Some("1")), ("d", Some("2015-11-05 09:02:34.69"))]),
                row(&[("a", Some("2")), ("d", Some("<GETUTCDATE>"))]),
                row(&[("a", Some("3")), ("d", None)]),
            ],
        )],
    };
    let ok = |rows: Vec<Row>| Actual::of(Ok(vec![("t".into(), rows)]));

    // Equal, with D1 and D2 each applied once; a column absent on one side is NULL.
    let same = compare(
        &g,
        &ok(vec![
            row(&[("a", Some("3"))]),
            row(&[("a", Some("1")), ("d", Some("2015-11-05 09:02:34"))]),
            row(&[("a", Some("2")), ("d", Some("2026-01-01 00:00:00"))]),
        ]),
    );
    assert!(same.is_empty(), "{same:?}");
    assert_eq!(same.departures, vec![1, 1, 0, 0]);

    // D1 does not excuse a different second; D2 excuses NULL (the replaced DDL's defaults are not applied).
    let d = compare(
        &g,
        &ok(vec![
            row(&[("a", Some("1")), ("d", Some("2015-11-05 09:02:35"))]),
            row(&[("a", Some("2")), ("d", None)]),
            row(&[("a", Some("3")), ("d", None)]),
        ]),
    );
    assert_eq!(d.tables["t"].missing, 1);
    assert_eq!(d.columns.get("t.d"), Some(&1));

    // A missing row and an extra row.
    let d = compare(
        &g,
        &ok(vec![
            row(&[("a", Some("1")), ("d", Some("2015-11-05 09:02:34.69"))]),
            row(&[("a", Some("2")), ("d", Some("x"))]),
        ]),
    );
    assert_eq!((d.tables["t"].missing, d.tables["t"].extra), (1, 0));
    let d = compare(
        &g,
        &ok(vec![
            row(&[("a", Some("1")), ("d", Some("2015-11-05 09:02:34.69"))]),
            row(&[("a", Some("2")), ("d", Some("x"))]),
            row(&[("a", Some("3"))]),
            row(&[("a", Some("4"))]),
        ]),
    );
    assert_eq!((d.tables["t"].missing, d.tables["t"].extra), (0, 1));

    // D3 only on data_length -1 columns and only for the one lost character; D4 only at midnight.
    let g3 = Golden {
        tables: vec![(
            "t".into(),
            vec![row(&[
                ("s", Some("hello lovel")),
                ("b", Some("1994-08-06")),
            ])],
        )],
        ..Golden::load_fields_for_test()
    };
    let mut act = ok(vec![row(&[
        ("s", Some("hello lovely")),
        ("b", Some("1994-08-06 00:00:00")),
    ])]);
    let d = compare(&g3, &act);
    assert_eq!(
        d.columns.get("t.s"),
        Some(&1),
        "D3 must not apply to a bounded column"
    );
    act.unbounded.insert("t.s".into());
    let d = compare(&g3, &act);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(d.departures, vec![0, 0, 1, 1]);
    let mut act = ok(vec![row(&[
        ("s", Some("hello lovelyy")),
        ("b", Some("1994-08-06 00:00:01")),
    ])]);
    act.unbounded.insert("t.s".into());
    let d = compare(&g3, &act);
    assert_eq!(d.columns.len(), 2);

    // Verdicts.
    let d = compare(&g, &Actual::of(Err("map: no".into())));
    assert!(d.verdict.is_some());
    let failed = Golden {
        success: false,
        tables: Vec::new(),
        ..g
    };
    assert!(compare(&failed, &Actual::of(Err("map: no".into()))).is_empty());
    assert!(compare(&failed, &ok(Vec::new())).verdict.is_some());
}
