//! The `harness` binary: a thin wrapper over `harness::cli`, with mimalloc as its allocator (the checker's
//! many small strings made glibc's malloc and free a third of its profile; BENCHMARKS.md, "harness check").

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    harness::cli::main_with(std::env::args_os().collect())
}
