//! The harness binary's exit codes: the one table, and the one mapping from verdicts to a code (README "Exit
//! codes"). Commands return an [`Exit`]; only `cli::main_with` turns it into a process exit code.

use crate::runner::Verdict;

/// How a harness command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every scenario passed (or the command did what it was asked).
    Ok = 0,
    /// An invariant was violated, or a scenario was invalid (its no-fault baseline failed).
    Violation = 1,
    /// Bad usage: arguments, scenario files, contracts.
    Usage = 2,
    /// The environment failed: a database or the processor could not be started or reached.
    Environment = 3,
    /// Nothing was violated, but the work did not converge before the deadline.
    Liveness = 4,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The exit for a set of verdicts, after an environment error if there was one: an environment error wins,
    /// then a violation (FAIL or INVALID), then liveness.
    pub fn of_verdicts(verdicts: impl IntoIterator<Item = Verdict>, env_error: bool) -> Exit {
        if env_error {
            return Exit::Environment;
        }
        let mut exit = Exit::Ok;
        for v in verdicts {
            match v {
                Verdict::Fail | Verdict::Invalid => return Exit::Violation,
                Verdict::Liveness => exit = Exit::Liveness,
                Verdict::Pass => {}
            }
        }
        exit
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_and_its_precedence() {
        use Verdict::*;
        assert_eq!(Exit::of_verdicts([Pass, Pass], false), Exit::Ok);
        assert_eq!(Exit::of_verdicts([Liveness, Pass], false), Exit::Liveness);
        assert_eq!(
            Exit::of_verdicts([Liveness, Invalid], false),
            Exit::Violation
        );
        assert_eq!(Exit::of_verdicts([Fail], true), Exit::Environment);
        assert_eq!(
            [
                Exit::Ok,
                Exit::Violation,
                Exit::Usage,
                Exit::Environment,
                Exit::Liveness
            ]
            .map(Exit::code),
            [0, 1, 2, 3, 4]
        );
    }
}
