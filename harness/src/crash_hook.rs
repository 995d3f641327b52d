//! The crash hook of the processor under test: what a fired crash point does (SIGKILL or SIGSTOP itself). Only
//! `harness processor …` installs it, so crash points exist in the harness's built-in processor and nowhere else
//! (the shipped `processor` binary has no way to kill itself at a crash point, whatever cargo features unify).

use nix::sys::signal::{raise, Signal};

fn park() {
    let _ = raise(Signal::SIGSTOP);
}

fn die() -> ! {
    let _ = raise(Signal::SIGKILL);
    // SIGKILL cannot be caught; if raise somehow failed, abort is the next closest thing.
    std::process::abort()
}

/// Arms crash points for this process. Called by the harness's entry point before it runs the processor CLI.
pub fn install() {
    processor::crash::install_hook(processor::crash::CrashHook { park, die });
}
