//! Shredproof processor: shreds credit-application XML stored in a table into relational tables, driven by a
//! JSON mapping contract; resumable after a crash and safe with several instances at once.
//!
//! The binary (`main.rs`) only parses arguments and calls [`cli::main_with`]; everything else is library code.

pub mod backoff;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod contract;
pub mod crash;
pub mod decode;
pub mod engine;
pub mod events;
pub mod exit;
pub mod expr;
pub mod failure;
pub mod ident;
pub mod mapping;
pub mod retry;
pub mod rows;
pub mod store;
pub mod value;
pub mod xml;

#[cfg(test)]
mod tests {
    /// The production binary links `docgen` (generators, default contract), never the test-fixture crate
    /// (ARCHITECTURE.md, "Crates"): `cargo tree -p processor -e normal` must not list `fixtures`.
    #[test]
    fn production_dependencies_exclude_fixtures() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let out = std::process::Command::new(cargo)
            .args(["tree", "--offline", "-p", "processor", "-e", "normal"])
            .args(["--prefix", "none", "--manifest-path", manifest])
            .output()
            .expect("run cargo tree");
        assert!(
            out.status.success(),
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8_lossy(&out.stdout);
        assert!(
            tree.lines().any(|l| l.starts_with("docgen ")),
            "docgen missing:\n{tree}"
        );
        let linked: Vec<&str> = tree
            .lines()
            .filter(|l| l.starts_with("fixtures "))
            .collect();
        assert!(
            linked.is_empty(),
            "processor links the test fixtures: {linked:?}"
        );
    }
}
