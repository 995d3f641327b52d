//! Shredproof harness: starts a database, runs processor instances as child processes, injects faults, and checks
//! invariants on the final state. The binary (`main.rs`) only calls [`cli::main_with`].

pub mod bench;
pub mod check;
pub mod cli;
pub mod crash_hook;
pub mod db;
pub mod exit;
pub mod explore;
pub mod netfault;
pub mod proxy;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod shrink;
