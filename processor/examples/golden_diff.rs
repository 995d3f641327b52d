//! Shows how Shredproof's mapping of sample documents differs from the replaced system's golden rows, in full.
//! `cargo run -p processor --example golden_diff -- [--contract cc|rl] [--all] [TEXT…]`: every golden file whose
//! sample name contains one of the TEXTs (all files when none is given); `--all` also lists equal documents.

#[path = "../tests/support/golden.rs"]
mod golden;

use golden::{golden_files, run_one, seed_dir, Contracts, Golden, DEPARTURES};

fn main() {
    let mut contract: Option<String> = None;
    let mut all = false;
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--contract" => contract = args.next(),
            "--all" => all = true,
            "-h" | "--help" => {
                eprintln!("usage: golden_diff [--contract cc|rl] [--all] [TEXT…]");
                return;
            }
            _ => filters.push(a),
        }
    }
    let seed = match seed_dir() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("golden_diff: {why}");
            std::process::exit(2);
        }
    };
    let mut contracts = Contracts::default();
    let (mut equal, mut differ, mut errors) = (0, 0, 0);
    let mut departures = vec![0usize; DEPARTURES.len()];
    for f in golden_files() {
        let sub = f
            .parent()
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().into_owned());
        if contract
            .as_deref()
            .is_some_and(|c| sub.as_deref() != Some(c))
        {
            continue;
        }
        let name = f
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !filters.is_empty() && !filters.iter().any(|t| name.contains(t.as_str())) {
            continue;
        }
        let label = format!(
            "{}/{}",
            sub.unwrap_or_default(),
            name.trim_end_matches(".json")
        );
        let g = match Golden::load(&f) {
            Ok(g) => g,
            Err(e) => {
                println!("{label}: bad golden: {e}");
                errors += 1;
                continue;
            }
        };
        match run_one(&seed, &mut contracts, &g) {
            Err(e) => {
                println!("{label}: not compared: {e}");
                errors += 1;
            }
            Ok(d) => {
                for (i, n) in d.departures.iter().enumerate() {
                    departures[i] += n;
                }
                if d.is_empty() {
                    equal += 1;
                    if all {
                        println!("{label}: equal");
                    }
                    continue;
                }
                differ += 1;
                println!("{label}: {} differences", d.count());
                if let Some(v) = &d.verdict {
                    println!("  {v}");
                }
                for (t, td) in &d.tables {
                    println!(
                        "  {t}: golden {} rows, shredproof {} rows, {} unmatched / {} unmatched",
                        td.golden_rows, td.actual_rows, td.missing, td.extra
                    );
                    for l in &td.lines {
                        println!("    {l}");
                    }
                }
            }
        }
    }
    println!(
        "equal {equal}, differ {differ}, not compared {errors}; departures: {}",
        DEPARTURES
            .iter()
            .zip(&departures)
            .map(|((n, _), k)| format!("{n} ×{k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if differ + errors > 0 {
        std::process::exit(1);
    }
}
