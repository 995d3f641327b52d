//! Store write throughput per backend: already-mapped applications written with the processor's atomic batch write
//! (one transaction per batch, bulk inserts, log rows) into a fresh database per sample. SQLite always; PostgreSQL
//! on a private cluster when the server binaries exist. Only the writes are timed.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use processor::store::write::{write_atomic, AppWork, NoHooks, WriteCtx};
use processor::store::Store;
use std::time::{Duration, Instant};

const BATCH: usize = 200;

fn mapped(docs: &[fixtures::Doc]) -> Vec<AppWork> {
    let contract = benches::contract();
    docs.iter()
        .map(|d| AppWork {
            app_id: d.app_id,
            fence: None,
            outcome: processor::mapping::map_document(&contract, d.app_id, &d.xml),
        })
        .collect()
}

/// Writes every batch of `work` into `store`; returns the time spent.
fn write_all(store: &mut dyn Store, work: &[AppWork]) -> Duration {
    let ctx = WriteCtx {
        session_id: "bench",
        instance_id: 0,
        fenced: false,
        hooks: &NoHooks,
    };
    let t0 = Instant::now();
    for batch in work.chunks(BATCH) {
        write_atomic(store, batch, &ctx).expect("batch writes");
    }
    t0.elapsed()
}

fn store_write(c: &mut Criterion) {
    let docs = benches::docs(benches::size(2000, 200));
    let work = mapped(&docs);
    let mut g = c.benchmark_group("store_write");
    g.throughput(Throughput::Elements(work.len() as u64));
    g.sample_size(10);

    g.bench_function("sqlite", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite:{}", dir.path().join("w.db").display());
                let mut s = benches::prepared_store(&url, &[]);
                total += write_all(s.as_mut(), &work);
            }
            total
        })
    });

    if let Some(cluster) = benches::pg_cluster() {
        let mut n = 0u32;
        g.bench_function("postgres", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let url = cluster
                        .create_database(&format!("write_{n}"))
                        .expect("database is created");
                    let mut s = benches::prepared_store(&url, &[]);
                    total += write_all(s.as_mut(), &work);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, store_write);
criterion_main!(benches);
