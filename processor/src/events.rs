//! The versioned event contract (SPEC §7): one JSON object per line, written by the processor, read by the harness.
//! Must not carry human log text; the harness never parses anything else.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

/// Version of the event format; bumped on any incompatible change.
pub const EVENT_VERSION: u32 = 1;

/// What happened: the kind of an [`Event`], without its payload. Serialized as the lowercase `event` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Started,
    Claimed,
    Committed,
    Collision,
    Failed,
    LeaseLost,
    CrashPoint,
    Abandoned,
    Finished,
    CommitResolved,
    Retrying,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Claimed => "claimed",
            EventKind::Committed => "committed",
            EventKind::Collision => "collision",
            EventKind::Failed => "failed",
            EventKind::LeaseLost => "lease_lost",
            EventKind::CrashPoint => "crash_point",
            EventKind::Abandoned => "abandoned",
            EventKind::Finished => "finished",
            EventKind::CommitResolved => "commit_resolved",
            EventKind::Retrying => "retrying",
        }
    }

    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 11] = [
        EventKind::Started,
        EventKind::Claimed,
        EventKind::Committed,
        EventKind::Collision,
        EventKind::Failed,
        EventKind::LeaseLost,
        EventKind::CrashPoint,
        EventKind::Abandoned,
        EventKind::Finished,
        EventKind::CommitResolved,
        EventKind::Retrying,
    ];
}

/// What happened, with the fields that kind carries (each kind's own payload, so a reader cannot ask a `claimed`
/// event for a crash point). On the wire the variant is the `event` field and its fields sit beside the common ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Body {
    /// The process started.
    Started { detail: Started },
    /// Queue mode: a batch was claimed; `fences` parallel to `app_ids`.
    Claimed { fences: Vec<i64> },
    /// A transaction committed the log rows of `app_ids` (success or failed outcome). Queue mode: `fences` parallel
    /// to `app_ids`.
    Committed {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        fences: Vec<i64>,
        /// Present when any value was truncated or coerced to fit the contract.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<Coerced>,
    },
    /// Another instance finished these applications first; this instance rolled its work back.
    Collision,
    /// These applications were logged `failed`; `reason` is the first one's failure reason.
    Failed { reason: String },
    /// Queue mode: the fenced completion found another owner or fence; nothing was committed for `app_ids`.
    LeaseLost { fences: Vec<i64> },
    /// A crash point fired (`point`, which hit `nth`); with `kill`, the process dies right after writing this line.
    CrashPoint {
        point: String,
        nth: u64,
        detail: CrashDetail,
    },
    /// SIGTERM/SIGINT arrived while `app_ids` were being mapped: nothing of them was written or logged (queue
    /// claims released); a later run does them.
    Abandoned { reason: String },
    /// The run ended: why, and its counts.
    Finished {
        reason: FinishReason,
        detail: RunSummary,
    },
    /// A COMMIT whose outcome was unknown (the connection broke while it was in flight) was resolved by reading the
    /// log back (`app_ids`: the applications it did commit, or the batch's, which will be retried).
    CommitResolved { reason: CommitOutcome },
    /// A database operation (`op`: connect, claim, write, …) failed with a transient or conflict error; attempt
    /// `attempt` follows after `wait_ms` (the processor is alive and backing off, not stuck). `app_ids`: the batch
    /// being written, if any.
    Retrying {
        op: String,
        attempt: u32,
        wait_ms: u64,
        /// Why the attempt failed: the store error's text (never a password: store errors carry redacted URLs).
        /// After a failed reconnect it is the reconnect's error ("Connection refused"), not the dead client's
        /// "connection closed". Empty in lines written before the field existed.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        error: String,
    },
}

impl Body {
    /// A payload of `kind` with empty or default fields (a started pid of 0, a `done` finish, no fences): for tests
    /// and tools that build a history by hand and then set the fields they care about.
    pub fn bare(kind: EventKind) -> Body {
        match kind {
            EventKind::Started => Body::Started {
                detail: Started {
                    mode: String::new(),
                    commit_mode: String::new(),
                    pid: 0,
                    backend: String::new(),
                    batch_size: 0,
                    workers: 0,
                    instance_count: 0,
                    lease_secs: 0,
                    crash_at: None,
                    clock_skew_ms: None,
                },
            },
            EventKind::Claimed => Body::Claimed { fences: Vec::new() },
            EventKind::Committed => Body::Committed {
                fences: Vec::new(),
                detail: None,
            },
            EventKind::Collision => Body::Collision,
            EventKind::Failed => Body::Failed {
                reason: String::new(),
            },
            EventKind::LeaseLost => Body::LeaseLost { fences: Vec::new() },
            EventKind::CrashPoint => Body::CrashPoint {
                point: String::new(),
                nth: 0,
                detail: CrashDetail {
                    action: CrashEffect::Kill,
                },
            },
            EventKind::Abandoned => Body::Abandoned {
                reason: String::new(),
            },
            EventKind::Finished => Body::Finished {
                reason: FinishReason::Done,
                detail: RunSummary::default(),
            },
            EventKind::CommitResolved => Body::CommitResolved {
                reason: CommitOutcome::Committed,
            },
            EventKind::Retrying => Body::Retrying {
                op: String::new(),
                attempt: 0,
                wait_ms: 0,
                error: String::new(),
            },
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            Body::Started { .. } => EventKind::Started,
            Body::Claimed { .. } => EventKind::Claimed,
            Body::Committed { .. } => EventKind::Committed,
            Body::Collision => EventKind::Collision,
            Body::Failed { .. } => EventKind::Failed,
            Body::LeaseLost { .. } => EventKind::LeaseLost,
            Body::CrashPoint { .. } => EventKind::CrashPoint,
            Body::Abandoned { .. } => EventKind::Abandoned,
            Body::Finished { .. } => EventKind::Finished,
            Body::CommitResolved { .. } => EventKind::CommitResolved,
            Body::Retrying { .. } => EventKind::Retrying,
        }
    }
}

/// `started`: how the process was configured (never credentials).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    /// `uncoordinated`, `partitioned` or `queue`.
    pub mode: String,
    /// `atomic` or `split`.
    pub commit_mode: String,
    pub pid: u32,
    pub backend: String,
    pub batch_size: usize,
    pub workers: usize,
    pub instance_count: u32,
    pub lease_secs: u64,
    /// The armed crash point (`PROCESSOR_CRASH_AT`), if any.
    pub crash_at: Option<String>,
    /// The test clock skew in force (`PROCESSOR_CLOCK_SKEW_MS`, harness processor only), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_ms: Option<i64>,
}

/// `committed`: values truncated or coerced per committed application, parallel to `app_ids`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coerced {
    pub coerced: Vec<u32>,
}

/// `crash_point`: what the fired point does to the process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashDetail {
    pub action: CrashEffect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashEffect {
    /// SIGKILLs itself right after the event.
    Kill,
    /// Parks every thread until SIGCONT, then goes on.
    Pause,
    /// The hitting thread sleeps a while, every other thread (the lease heartbeat) runs on, then it goes on.
    Stall,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// No eligible work left.
    Done,
    /// `--limit` applications taken.
    Limit,
    /// SIGTERM/SIGINT: the batch in flight finished or was abandoned, nothing half-written.
    Drained,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Done => "done",
            FinishReason::Limit => "limit",
            FinishReason::Drained => "drained",
        }
    }
}

/// How an unknown COMMIT outcome was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitOutcome {
    Committed,
    NotCommitted,
    /// Still unknown when the process was told to stop (SIGTERM/SIGINT during the retry wait, and the one last
    /// read of the log failed too): the log row, if there is one, is the truth; a later run resumes either way.
    Unknown,
}

impl CommitOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitOutcome::Committed => "committed",
            CommitOutcome::NotCommitted => "not_committed",
            CommitOutcome::Unknown => "unknown",
        }
    }
}

/// What a run did (the `finished` event's `detail`, and what `processor run` prints).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub succeeded: u64,
    pub failed: u64,
    pub collisions: u64,
    pub lease_lost: u64,
    pub batches: u64,
    pub slow_batches: u64,
    pub retries: u64,
    pub elapsed_secs: f64,
    /// `done` (no eligible work left), `limit` or `drained` (SIGTERM/SIGINT).
    pub reason: String,
}

/// One line of the event stream: the fields every event has, and its kind's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub v: u32,
    /// RFC 3339 UTC timestamp with microseconds.
    pub ts: String,
    /// The same instant as microseconds since the Unix epoch, for ordering across processes on one host.
    pub ts_us: i64,
    pub instance_id: u32,
    pub session_id: String,
    #[serde(default)]
    pub app_ids: Vec<i64>,
    #[serde(flatten)]
    pub body: Body,
}

impl Event {
    pub fn new(body: Body, instance_id: u32, session_id: &str, app_ids: Vec<i64>) -> Self {
        let now = chrono::Utc::now();
        Event {
            v: EVENT_VERSION,
            ts: now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ts_us: now.timestamp_micros(),
            instance_id,
            session_id: session_id.to_owned(),
            app_ids,
            body,
        }
    }

    pub fn kind(&self) -> EventKind {
        self.body.kind()
    }

    /// Queue mode: the fence of each entry in `app_ids` (`claimed`, `committed`, `lease_lost`; empty otherwise).
    pub fn fences(&self) -> &[i64] {
        match &self.body {
            Body::Claimed { fences }
            | Body::Committed { fences, .. }
            | Body::LeaseLost { fences } => fences,
            _ => &[],
        }
    }

    /// `claimed`, `committed`, `lease_lost`: sets the fences (no effect on other kinds).
    pub fn with_fences(mut self, new: Vec<i64>) -> Self {
        if let Body::Claimed { fences }
        | Body::Committed { fences, .. }
        | Body::LeaseLost { fences } = &mut self.body
        {
            *fences = new;
        }
        self
    }

    /// `started`: its configuration (the process id, the commit mode, …).
    pub fn started(&self) -> Option<&Started> {
        match &self.body {
            Body::Started { detail } => Some(detail),
            _ => None,
        }
    }

    /// `finished`: why the run ended.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        match &self.body {
            Body::Finished { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// A COMMIT this session made durable for `app_ids`: `committed`, or `commit_resolved` as `committed`.
    pub fn is_commit(&self) -> bool {
        matches!(
            self.body,
            Body::Committed { .. }
                | Body::CommitResolved {
                    reason: CommitOutcome::Committed
                }
        )
    }
}

/// Parses one line of an events file.
pub fn parse_line(line: &str) -> Result<Event, serde_json::Error> {
    serde_json::from_str(line)
}

/// Reads a whole events file, skipping a torn last line (a process killed mid-write).
pub fn read_file(path: &Path) -> io::Result<Vec<Event>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| parse_line(l).ok())
        .collect())
}

/// Appends events to a file, one flushed line each, so a SIGKILL right after `emit` loses nothing.
pub struct EventSink {
    file: Option<Mutex<File>>,
    also_stdout: bool,
}

impl EventSink {
    pub fn disabled() -> Self {
        EventSink {
            file: None,
            also_stdout: false,
        }
    }

    pub fn open(path: Option<&Path>, also_stdout: bool) -> io::Result<Self> {
        let file = match path {
            Some(p) => Some(Mutex::new(
                OpenOptions::new().create(true).append(true).open(p)?,
            )),
            None => None,
        };
        Ok(EventSink { file, also_stdout })
    }

    pub fn emit(&self, event: &Event) {
        let Ok(mut line) = serde_json::to_string(event) else {
            return;
        };
        line.push('\n');
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                // One write call per line keeps lines whole when several threads emit.
                let _ = f.write_all(line.as_bytes());
                let _ = f.flush();
            }
        }
        if self.also_stdout {
            let mut out = io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: Body) -> Event {
        Event::new(body, 2, "s-1", vec![5, 6])
    }

    #[test]
    fn every_kind_round_trips_with_snake_case_names() {
        let bodies = [
            Body::Started {
                detail: Started {
                    mode: "queue".into(),
                    commit_mode: "atomic".into(),
                    pid: 7,
                    backend: "sqlite".into(),
                    batch_size: 10,
                    workers: 2,
                    instance_count: 3,
                    lease_secs: 30,
                    crash_at: None,
                    clock_skew_ms: None,
                },
            },
            Body::Claimed { fences: vec![1, 2] },
            Body::Committed {
                fences: vec![],
                detail: Some(Coerced {
                    coerced: vec![0, 3],
                }),
            },
            Body::Collision,
            Body::Failed {
                reason: "parse: x".into(),
            },
            Body::LeaseLost { fences: vec![1, 2] },
            Body::CrashPoint {
                point: "after-data".into(),
                nth: 1,
                detail: CrashDetail {
                    action: CrashEffect::Kill,
                },
            },
            Body::Abandoned {
                reason: "stop requested while mapping".into(),
            },
            Body::Finished {
                reason: FinishReason::Drained,
                detail: RunSummary::default(),
            },
            Body::CommitResolved {
                reason: CommitOutcome::NotCommitted,
            },
        ];
        for (body, kind) in bodies.into_iter().zip(EventKind::ALL) {
            let e = sample(body);
            assert_eq!(e.kind(), kind);
            let line = serde_json::to_string(&e).expect("serializable");
            assert!(
                line.contains(&format!("\"event\":\"{}\"", kind.as_str())),
                "{line}"
            );
            assert!(line.contains("\"v\":1"), "{line}");
            assert_eq!(parse_line(&line).expect("parses"), e, "{line}");
        }
    }

    #[test]
    fn the_wire_format_is_the_flat_one_readers_already_parse() {
        let line = r#"{"v":1,"event":"lease_lost","ts":"2026-01-01T00:00:00.000000Z","ts_us":1,"instance_id":2,"session_id":"s","app_ids":[5],"fences":[3]}"#;
        let e = parse_line(line).expect("parses");
        assert_eq!(e.fences(), &[3]);
        let line = r#"{"v":1,"event":"commit_resolved","ts":"t","ts_us":1,"instance_id":0,"session_id":"s","app_ids":[5],"reason":"committed"}"#;
        assert!(parse_line(line).expect("parses").is_commit());
        // A kind without its payload is not an event of that kind.
        let line =
            r#"{"v":1,"event":"crash_point","ts":"t","ts_us":1,"instance_id":0,"session_id":"s"}"#;
        assert!(parse_line(line).is_err());
    }
}
