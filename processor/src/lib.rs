//! Shredproof processor: shreds credit-application XML stored in a table into relational tables, driven by a
//! JSON mapping contract; resumable after a crash and safe with several instances at once.
//!
//! The binary (`main.rs`) only parses arguments and calls [`cli::main_with`]; everything else is library code.

pub mod budget;
pub mod cli;
pub mod contract;
pub mod crash;
pub mod decode;
pub mod engine;
pub mod events;
pub mod expr;
pub mod ident;
pub mod mapping;
pub mod realmap;
pub mod retry;
pub mod store;
pub mod value;
pub mod xml;
