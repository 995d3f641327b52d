//! Document generation the production `processor` binary needs (`load --generate`, the default `--contract`): the
//! seeded generator, the real-shaped generator and the project's mapping contract text. It is split from `fixtures`
//! so the binary does not link test infrastructure (PostgreSQL clusters, trials, samples); `fixtures` re-exports
//! everything here, so tests keep their `fixtures::…` paths. Depends on nothing of the workspace.

mod generator;
pub mod realshape;

use std::path::PathBuf;

pub use generator::{
    generate, generate_iter, generate_one, Doc, Expect, GenConfig, Malformation,
    SHARED_CONTACT_FRACTION, SHARED_POOL_SIZE,
};

/// The project's mapping contract, compiled in so the processor's default needs no file access. The file stays at
/// `fixtures/contract/contract.json` (next to its README, where the scenarios, docs and tests point).
pub const CONTRACT_JSON: &str = include_str!("../../fixtures/contract/contract.json");

/// Absolute path of the contract file, for programs that take `--contract <path>`.
pub fn contract_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .join("contract")
        .join("contract.json")
}
