//! Strict-bytes check + parse + map throughput on real-shaped documents from 2 KB to 50 MB, in MB/s per size (criterion
//! `Throughput::Bytes`): the replaced system's samples (skipped, saying why, when absent) and documents grown from
//! them by repeating their contacts (50 MB ≈ 28,000 contacts). Every contract that loads is measured: the
//! project's, and the replaced system's credit-card (`mapping_contract.json`) and recreational-lending
//! (`mapping_contract_rl.json`) contracts once the contract loader accepts them. Test mode (CI) maps the two
//! smallest sizes once; the large documents are only built in a real `cargo bench` run.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use processor::budget::Budget;
use processor::contract::Contract;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Target sizes: 2 KB … 50 MB.
const SIZES: [(&str, usize); 7] = [
    ("2KB", 2_000),
    ("16KB", 16_000),
    ("115KB", 115_000),
    ("400KB", 400_000),
    ("2MB", 2_000_000),
    ("10MB", 10_000_000),
    ("50MB", 50_000_000),
];

/// A document whose first mapping takes longer than this is reported and skipped instead of benchmarked (a
/// mapping that grows faster than linearly would otherwise stall the whole bench).
const FIRST_MAP_LIMIT: Duration = Duration::from_secs(20);

/// A contract, and how a sample is made into a document for it.
type Prepared = (String, Contract, fn(&str) -> String);

fn contracts() -> Vec<Prepared> {
    let mut out: Vec<Prepared> = vec![(
        "project".to_owned(),
        benches::contract(),
        fixtures::samples::fit_project_contract,
    )];
    let Ok(samples) = fixtures::samples::samples_dir() else {
        return out;
    };
    let dir = samples.join("../contracts");
    for (name, file) in [
        ("cc", "mapping_contract.json"),
        ("rl", "mapping_contract_rl.json"),
    ] {
        match Contract::from_file(&dir.join(file)) {
            Ok(c) => out.push((name.to_owned(), c, str::to_owned)),
            Err(e) => eprintln!("real_docs: skipping the {name} contract ({file}): {e:#}"),
        }
    }
    out
}

fn real_docs(c: &mut Criterion) {
    let dir = match fixtures::samples::samples_dir() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("real_docs: skipped: {why}");
            return;
        }
    };
    let samples = fixtures::samples::read_samples(&dir);
    if samples.is_empty() {
        eprintln!("real_docs: skipped: no usable sample in {}", dir.display());
        return;
    }
    let sizes: &[(&str, usize)] = if benches::full_run() {
        &SIZES
    } else {
        &SIZES[..2]
    };
    for (cname, contract, prepare) in contracts() {
        // Only samples that map under this contract: a document failing on its first table measures nothing.
        // (Test mode looks only at the small ones, so CI stays fast in a debug build.)
        // The recreational-lending contract gets the recreational-lending samples, the others the credit-card ones.
        let usable: Vec<fixtures::samples::Sample> = samples
            .iter()
            .filter(|s| s.name.starts_with("reclending") == (cname == "rl"))
            .filter(|s| benches::full_run() || s.xml.len() < 64_000)
            .map(|s| fixtures::samples::Sample {
                name: s.name.clone(),
                xml: fixtures::samples::as_application(&prepare(&s.xml), 1),
            })
            .filter(|s| processor::mapping::map_document(&contract, 1, &s.xml).is_ok())
            .collect();
        eprintln!(
            "real_docs_{cname}: {} of {} samples map under this contract",
            usable.len(),
            samples.len()
        );
        let docs: Vec<(&str, String, usize)> = sizes
            .iter()
            .filter_map(|&(label, bytes)| {
                let (xml, contacts) = fixtures::samples::of_size(&usable, bytes)?;
                Some((label, xml, contacts))
            })
            .collect();
        let mut g = c.benchmark_group(format!("real_docs_{cname}"));
        g.sample_size(10);
        for (label, xml, contacts) in &docs {
            let t0 = Instant::now();
            let first = processor::mapping::map_document_within(
                &contract,
                1,
                xml,
                &Budget::new(Some(FIRST_MAP_LIMIT), None),
            );
            let took = t0.elapsed();
            let outcome = match &first {
                Ok(m) => format!("{} rows", m.row_count()),
                Err(f) if f.stage == processor::mapping::Stage::Limit => {
                    eprintln!(
                        "real_docs_{cname}/{label}: {} bytes, {contacts} contacts: skipped, the first mapping took over {FIRST_MAP_LIMIT:?}",
                        xml.len()
                    );
                    continue;
                }
                Err(f) => format!("fails: {}", f.reason()),
            };
            eprintln!(
                "real_docs_{cname}/{label}: {} bytes, {contacts} contacts, {outcome}, first map {took:?}",
                xml.len()
            );
            g.throughput(Throughput::Bytes(xml.len() as u64));
            if xml.len() >= 10_000_000 {
                g.measurement_time(Duration::from_secs(20));
            }
            g.bench_with_input(BenchmarkId::from_parameter(label), xml, |b, xml| {
                // What the engine does per document: the strict-bytes check, then parse + map.
                b.iter(|| {
                    let text = processor::decode::stored_document(xml).expect("valid bytes");
                    black_box(processor::mapping::map_document(&contract, 1, &text))
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, real_docs);
criterion_main!(benches);
