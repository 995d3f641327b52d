//! The `processor` binary: a thin wrapper over `processor::cli`.

fn main() -> std::process::ExitCode {
    processor::cli::main_with(std::env::args_os())
}
