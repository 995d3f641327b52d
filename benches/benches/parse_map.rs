//! Parse+map throughput over the standard fixture set, in bytes/s and applications/s. Pure CPU: no database.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn parse_map(c: &mut Criterion) {
    let contract = benches::contract();
    let docs = benches::docs(benches::size(1000, 50));
    let bytes: u64 = docs.iter().map(|d| d.xml.len() as u64).sum();
    let run = |docs: &[fixtures::Doc]| {
        for d in docs {
            let _ = black_box(processor::mapping::map_document(
                &contract, d.app_id, &d.xml,
            ));
        }
    };
    let mut g = c.benchmark_group("parse_map");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("bytes", |b| b.iter(|| run(&docs)));
    g.throughput(Throughput::Elements(docs.len() as u64));
    g.bench_function("applications", |b| b.iter(|| run(&docs)));
    g.finish();

    // The engine's multi-threaded batch mapping (what a processor instance does per batch).
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let source: Vec<processor::store::SourceDoc> = docs
        .iter()
        .map(|d| processor::store::SourceDoc {
            app_id: d.app_id,
            xml: d.xml.clone(),
            fence: None,
        })
        .collect();
    let mut g = c.benchmark_group("map_batch");
    g.throughput(Throughput::Elements(source.len() as u64));
    g.bench_function(format!("{workers}_workers"), |b| {
        b.iter_batched(
            || source.clone(),
            |s| black_box(processor::engine::map_batch(&contract, s, workers)),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, parse_map);
criterion_main!(benches);
