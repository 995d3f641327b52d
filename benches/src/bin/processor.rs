//! The processor CLI, built inside the `benches` package so the end-to-end bench finds it through Cargo's
//! `CARGO_BIN_EXE_…` (always built, in the bench's own profile, before the bench runs). No logic of its own.

fn main() -> std::process::ExitCode {
    processor::cli::main_with(std::env::args_os())
}
