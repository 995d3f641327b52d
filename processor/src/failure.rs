//! Why a document was not written: a [`Stage`] and a message, rendered as `processing_log.failure_reason`. Shared
//! by the parser (`xml`), the mappers (`mapping`, `contract::real`) and the write algorithm (`store::write`), so none of
//! them imports another for it.

use crate::budget::Interrupted;
use std::fmt;

/// Where processing failed; the first word of `processing_log.failure_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Parse,
    Map,
    Write,
    /// A per-document limit (size or mapping time) was exceeded: `"limit: …"`.
    Limit,
    /// The process was asked to stop while this document was being parsed or mapped. Never logged: the caller
    /// abandons the batch (nothing of it was written) and the next run redoes it.
    Cancelled,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Map => "map",
            Stage::Write => "write",
            Stage::Limit => "limit",
            Stage::Cancelled => "cancelled",
        }
    }
}

/// Longest `failure_reason` stored (SPEC §2).
pub const MAX_REASON_CHARS: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    pub message: String,
}

impl Failure {
    pub fn new(stage: Stage, message: impl Into<String>) -> Self {
        Failure {
            stage,
            message: message.into(),
        }
    }

    /// The failure for a document that `budget` stopped.
    pub fn interrupted(why: Interrupted) -> Self {
        match why {
            Interrupted::Deadline(d) => Failure::new(
                Stage::Limit,
                format!(
                    "mapping took longer than the {} ms per-document limit",
                    d.as_millis()
                ),
            ),
            Interrupted::Cancelled => Failure::new(Stage::Cancelled, "stop requested"),
        }
    }

    /// `"<stage>: <message>"`, truncated to 500 characters.
    pub fn reason(&self) -> String {
        let full = format!("{}: {}", self.stage.as_str(), self.message);
        match full.char_indices().nth(MAX_REASON_CHARS) {
            Some((cut, _)) => full[..cut].to_owned(),
            None => full,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason())
    }
}
