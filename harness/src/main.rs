//! The `harness` binary: a thin wrapper over `harness::cli`.

fn main() -> std::process::ExitCode {
    harness::cli::main_with(std::env::args_os().collect())
}
