//! End-to-end scaling: 1, 2 and 3 processor instances (child processes of the `processor` binary built in this
//! package) per coordination mode, timed with `iter_custom` from spawn to the last exit. Every sample gets a fresh
//! database loaded before the clock starts. SQLite always; PostgreSQL on a private cluster when available.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MODES: [&str; 3] = ["uncoordinated", "partitioned", "queue"];

/// Runs `n` instances to completion on `url`; returns the wall time.
fn run_instances(url: &str, mode: &str, n: u32) -> Duration {
    let t0 = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_shredproof-bench-processor"))
                .args(["run", "--db", url, "--mode", mode, "--log-level", "warn"])
                .args(["--instance-id", &i.to_string()])
                .args(["--instance-count", &n.to_string()])
                .stdout(Stdio::null())
                .spawn()
                .expect("processor starts")
        })
        .collect();
    for mut c in children {
        let st = c.wait().expect("processor exits");
        assert!(st.success(), "processor failed: {st}");
    }
    t0.elapsed()
}

fn bench_backend(
    c: &mut Criterion,
    backend: &str,
    docs: &[fixtures::Doc],
    fresh_url: &mut dyn FnMut() -> String,
) {
    let mut g = c.benchmark_group(format!("scaling_{backend}"));
    g.throughput(Throughput::Elements(docs.len() as u64));
    g.sample_size(10);
    for mode in MODES {
        for n in 1..=3u32 {
            g.bench_with_input(BenchmarkId::new(mode, n), &n, |b, &n| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let url = fresh_url();
                        drop(benches::prepared_store(&url, docs));
                        total += run_instances(&url, mode, n);
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

fn scaling(c: &mut Criterion) {
    let docs = benches::docs(benches::size(5000, 300));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut k = 0u32;
    bench_backend(c, "sqlite", &docs, &mut || {
        k += 1;
        format!("sqlite:{}", dir.path().join(format!("s{k}.db")).display())
    });
    if let Some(cluster) = benches::pg_cluster() {
        let mut k = 0u32;
        bench_backend(c, "postgres", &docs, &mut || {
            k += 1;
            cluster
                .create_database(&format!("scale_{k}"))
                .expect("database is created")
        });
    }
}

criterion_group!(benches, scaling);
criterion_main!(benches);
