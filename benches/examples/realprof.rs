//! Profiling driver for the real contracts (not a benchmark: criterion's `real_docs` is the measurement of record).
//! Maps documents repeatedly so `perf record -g` sees the hot path, and prints MB per wall- and CPU-second.
//!
//! `cargo run --release -p benches --example realprof -- <cc|rl> samples <passes>`
//! `cargo run --release -p benches --example realprof -- <cc|rl> size <bytes> <passes>`
//! `cargo run --release -p benches --example realprof -- <cc|rl> gen <count> <passes>`
//! (`REALPROF_WRITE=FILE` also writes the first document to FILE.)

use processor::contract::Contract;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// CPU time of this thread, from /proc (nanoseconds of on-CPU time).
fn cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: realprof <cc|rl> <samples|size BYTES|gen COUNT> PASSES";
    let (cname, mode) = (args.first().expect(usage), args.get(1).expect(usage));
    let dir = fixtures::samples::samples_dir().expect("samples");
    let file = if cname == "rl" {
        "mapping_contract_rl.json"
    } else {
        "mapping_contract.json"
    };
    let contract = Contract::from_file(&dir.join("../contracts").join(file)).expect("contract");
    let samples: Vec<fixtures::samples::Sample> = fixtures::samples::read_samples(&dir)
        .into_iter()
        .filter(|s| s.name.starts_with("reclending") == (cname == "rl"))
        .map(|s| fixtures::samples::Sample {
            xml: fixtures::samples::as_application(&s.xml, 1),
            name: s.name,
        })
        .filter(|s| processor::mapping::map_document(&contract, 1, &s.xml).is_ok())
        .collect();
    let (docs, passes): (Vec<String>, usize) = match mode.as_str() {
        "samples" => (
            samples.iter().map(|s| s.xml.clone()).collect(),
            args.get(2).and_then(|v| v.parse().ok()).unwrap_or(5),
        ),
        "size" => {
            let bytes: usize = args.get(2).and_then(|v| v.parse().ok()).expect(usage);
            let (xml, n) = fixtures::samples::of_size(&samples, bytes).expect("a sample");
            eprintln!("{} bytes, {n} contacts", xml.len());
            (
                vec![xml],
                args.get(3).and_then(|v| v.parse().ok()).unwrap_or(3),
            )
        }
        "gen" => {
            let count: usize = args.get(2).and_then(|v| v.parse().ok()).expect(usage);
            let shape = fixtures::realshape::Shape::parse(cname).expect("cc or rl");
            let cfg = fixtures::realshape::RealConfig::new(shape, count, 1);
            (
                // Each generated document carries its own app id; re-number it 1 like the others.
                fixtures::realshape::real_generate_iter(&cfg)
                    .map(|d| fixtures::samples::as_application(&d.xml, 1))
                    .collect(),
                args.get(3).and_then(|v| v.parse().ok()).unwrap_or(3),
            )
        }
        _ => panic!("{usage}"),
    };
    // `REALPROF_WRITE=FILE`: also write the first document (for `/usr/bin/time -v processor load/run` on it).
    if let (Ok(out), Some(d)) = (std::env::var("REALPROF_WRITE"), docs.first()) {
        std::fs::write(&out, d).expect("REALPROF_WRITE");
    }
    let bytes: usize = docs.iter().map(String::len).sum();
    let (w0, c0) = (Instant::now(), cpu());
    let mut rows = 0;
    let mut failed: Vec<String> = Vec::new();
    for _ in 0..passes {
        for d in &docs {
            let text = processor::decode::stored_document(d).expect("valid bytes");
            match black_box(processor::mapping::map_document(&contract, 1, &text)) {
                Ok(m) => rows += m.row_count(),
                // A figure over failed documents would measure the failure path: say so.
                Err(e) => failed.push(format!("{e:?}")),
            }
        }
    }
    let (w, c) = (w0.elapsed(), cpu() - c0);
    if let Some(first) = failed.first() {
        eprintln!("{} mappings failed; the first: {first}", failed.len());
    }
    let mb = (bytes * passes) as f64 / 1e6;
    println!(
        "{cname} {mode}: {} docs, {:.1} MB x {passes} passes, {rows} rows; wall {:.3}s ({:.1} MB/s), cpu {:.3}s ({:.1} MB/cpu-s, {:.0} docs/cpu-s)",
        docs.len(),
        bytes as f64 / 1e6,
        w.as_secs_f64(),
        mb / w.as_secs_f64(),
        c.as_secs_f64(),
        mb / c.as_secs_f64(),
        (docs.len() * passes) as f64 / c.as_secs_f64()
    );
}
