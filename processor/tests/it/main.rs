//! Processor integration tests, one binary: the store conformance suite (every backend available), the CLI's
//! argument and contract errors, and end-to-end SIGKILL-and-resume runs of the real binary. `harness = false`: the
//! tests are `fixtures::trial`s, so one whose server is absent is reported as skipped, never as passed.

mod cli;
mod coerced;
mod conformance;
mod e2e;
mod stop;
mod strict;

use fixtures::trial::Need;
use fixtures::trials;
use std::time::{Duration, Instant};

fn main() {
    let mut t = conformance::trials();
    t.extend(trials!([] =>
        cli::bad_instance_arguments_exit_2,
        cli::a_bad_contract_names_the_entry,
        cli::an_unknown_crash_point_is_a_start_up_error,
        cli::the_shipped_binary_refuses_crash_points,
        cli::passwords_are_never_printed,
        cli::load_generates_real_shaped_documents_on_request,
        cli::the_shipped_binary_refuses_planted_bugs,
        cli::the_shipped_binary_refuses_a_clock_skew,
        cli::a_shape_given_as_contract_is_refused_with_the_way_to_say_it,
        cli::status_into_a_closed_pipe_exits_quietly,
        coerced::init_adds_the_coerced_column_to_an_old_sqlite_log,
        e2e::sigkill_at_random_moments_then_resume_on_sqlite,
        e2e::three_uncoordinated_instances_with_kills_on_sqlite,
        strict::broken_bytes_become_parse_rows_with_offsets_on_sqlite,
        strict::oversized_and_slow_documents_become_limit_rows,
        strict::sigterm_in_the_middle_of_a_huge_document_exits_promptly,
        stop::sigterm_while_the_database_is_unreachable_drains_at_once,
    ));
    t.extend(trials!([Need::Postgres] =>
        e2e::sigkill_and_resume_on_postgres,
        stop::sigterm_while_writes_are_failing_drains_at_once_on_postgres,
        strict::nul_file_on_postgres_is_named_and_the_others_load,
        coerced::init_adds_the_coerced_column_to_an_old_postgres_log,
    ));
    t.extend(trials!([Need::Seed] =>
        coerced::coercions_are_counted_in_the_log_and_status_on_sqlite,
    ));
    t.extend(trials!([Need::Seed, Need::Postgres] =>
        coerced::coercions_are_counted_in_the_log_and_status_on_postgres,
    ));
    fixtures::trial::run(t)
}

/// Polls `cond` until it holds or `deadline` passes; returns whether it held. Tests wait on conditions, never sleep
/// in place of one.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// Sends SIGTERM to `child` and waits up to `bound` for it to exit: its status and how long it took. A child still
/// running at the bound is killed and the test fails with `what`.
pub fn sigterm_and_wait(
    child: &mut std::process::Child,
    bound: Duration,
    what: &str,
) -> (std::process::ExitStatus, Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let sent = Instant::now();
    let mut status = None;
    wait_until(bound, || {
        status = child.try_wait().expect("wait");
        status.is_some()
    });
    let took = sent.elapsed();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("still running {took:?} after SIGTERM{what}");
    };
    (status, took)
}
