//! The processor binary's exit codes, stated once (README, "Exit codes"): every way the binary ends maps to one
//! [`ExitStatus`], and typed errors map to a status only here ([`Exit::from`]).

use crate::store::OpenError;

/// How the processor ended. The numbers are the contract with scripts and the harness; never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Done: no eligible work left, the limit reached, or drained after SIGTERM/SIGINT.
    Done,
    /// A runtime failure (a database error the retry policy gave up on, a document that cannot be stored, …).
    Runtime,
    /// Bad arguments, contract, URL, crash point or planted bug: nothing was attempted.
    Usage,
    /// The database could not be reached (after retries, for `run`).
    Unreachable,
}

impl ExitStatus {
    /// The process exit code.
    pub const fn process_exit_code(self) -> u8 {
        match self {
            ExitStatus::Done => 0,
            ExitStatus::Runtime => 1,
            ExitStatus::Usage => 2,
            ExitStatus::Unreachable => 3,
        }
    }

    /// Ends the process now with this status (for the few exits that cannot return through `main`).
    pub fn exit_now(self) -> ! {
        std::process::exit(i32::from(self.process_exit_code()))
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(s: ExitStatus) -> Self {
        std::process::ExitCode::from(s.process_exit_code())
    }
}

/// A failure with its exit status.
#[derive(Debug)]
pub struct Exit {
    pub status: ExitStatus,
    pub error: anyhow::Error,
}

impl Exit {
    pub fn new(status: ExitStatus, e: impl Into<anyhow::Error>) -> Self {
        Exit {
            status,
            error: e.into(),
        }
    }

    /// Bad arguments or contract: exit 2.
    pub fn usage(e: impl Into<anyhow::Error>) -> Self {
        Exit::new(ExitStatus::Usage, e)
    }

    /// A runtime failure: exit 1.
    pub fn runtime(e: impl Into<anyhow::Error>) -> Self {
        Exit::new(ExitStatus::Runtime, e)
    }
}

/// A store that cannot be opened: a bad URL is a usage error, an unreachable server is exit 3.
impl From<OpenError> for Exit {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Url(_) => Exit::usage(e),
            OpenError::Connect { .. } => Exit::new(ExitStatus::Unreachable, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ExitStatus;

    #[test]
    fn codes_are_the_documented_ones() {
        let all = [
            ExitStatus::Done,
            ExitStatus::Runtime,
            ExitStatus::Usage,
            ExitStatus::Unreachable,
        ];
        let codes: Vec<u8> = all.iter().map(|s| s.process_exit_code()).collect();
        assert_eq!(codes, [0, 1, 2, 3]);
    }
}
