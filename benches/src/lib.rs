//! Helpers shared by the criterion benchmarks in `benches/benches`: the fixture set, test-mode sizing and fresh
//! databases. Measurement code lives in the bench files; nothing here is timed.

use processor::contract::Contract;
use processor::store::{DbUrl, Store};

/// Whether criterion runs as a benchmark (`cargo bench`) rather than in test mode (`cargo bench -- --test`,
/// `cargo test --benches`), where every bench runs once on a small input so CI stays fast.
pub fn full_run() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

/// `full` in a real benchmark run, `test` in test mode.
pub fn size(full: usize, test: usize) -> usize {
    if full_run() {
        full
    } else {
        test
    }
}

/// The project's contract.
pub fn contract() -> Contract {
    Contract::from_json(fixtures::CONTRACT_JSON).expect("the built-in contract is valid")
}

/// The standard fixture set: `count` seeded documents (5 % malformed, 1 % large, 5 % with a BOM).
pub fn docs(count: usize) -> Vec<fixtures::Doc> {
    fixtures::generate(&fixtures::GenConfig {
        count,
        seed: 1,
        ..Default::default()
    })
}

/// Opens `url`, creates the schema and loads `docs` into the source table.
pub fn prepared_store(url: &str, docs: &[fixtures::Doc]) -> Box<dyn Store> {
    let u = DbUrl::parse(url).expect("valid database url");
    let mut s = processor::store::open(&u, contract()).expect("database opens");
    s.init_schema().expect("schema is created");
    let rows: Vec<(i64, String)> = docs.iter().map(|d| (d.app_id, d.xml.clone())).collect();
    for chunk in rows.chunks(2000) {
        s.load_source(chunk).expect("source rows load");
    }
    s
}

/// A private PostgreSQL cluster when the server binaries exist; otherwise says why the PostgreSQL benches are
/// skipped and returns None.
pub fn pg_cluster() -> Option<fixtures::pg::PgCluster> {
    if fixtures::pg::PgCluster::bin_dir().is_none() {
        eprintln!(
            "skipping PostgreSQL benches: server binaries not found (install postgresql-15 or set SHREDPROOF_PG_BIN)"
        );
        return None;
    }
    match fixtures::pg::PgCluster::start() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("skipping PostgreSQL benches: cannot start a private cluster: {e}");
            None
        }
    }
}
