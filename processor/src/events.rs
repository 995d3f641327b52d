//! The versioned event contract (SPEC §7): one JSON object per line, written by the processor, read by the harness.
//! Must not carry human log text; the harness never parses anything else.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

/// Version of the event format; bumped on any incompatible change.
pub const EVENT_VERSION: u32 = 1;

/// What happened. Serialized as the lowercase `event` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The process started: `mode`, `commit_mode`, `pid` in `detail`.
    Started,
    /// Queue mode: a batch was claimed; `fences` parallel to `app_ids`.
    Claimed,
    /// A transaction committed the log rows of `app_ids` (success or failed outcome).
    Committed,
    /// Another instance finished these applications first; this instance rolled its work back.
    Collision,
    /// These applications were logged `failed`; `reason` holds the first failure reason.
    Failed,
    /// Queue mode: the fenced completion found another owner or fence; nothing was committed for `app_ids`.
    LeaseLost,
    /// A crash point fired (`point`, `nth`); the process dies right after writing this line.
    CrashPoint,
    /// SIGTERM/SIGINT arrived while `app_ids` were being mapped: nothing of them was written or logged (queue
    /// claims released); a later run does them.
    Abandoned,
    /// The run ended: counts in `detail`, `reason` is `done` or `drained`.
    Finished,
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
        }
    }
}

/// One line of the event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub v: u32,
    pub event: EventKind,
    /// RFC 3339 UTC timestamp with microseconds.
    pub ts: String,
    /// The same instant as microseconds since the Unix epoch, for ordering across processes on one host.
    pub ts_us: i64,
    pub instance_id: u32,
    pub session_id: String,
    #[serde(default)]
    pub app_ids: Vec<i64>,
    /// Queue mode: the fence of each entry in `app_ids` (claimed, committed, lease_lost).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fences: Vec<i64>,
    /// `crash_point`: the crash point's kebab-case name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
    /// `crash_point`: which hit fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nth: Option<u64>,
    /// `failed`: the first failure reason; `finished`: `done` or `drained`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Free-form structured details (counts, mode names). Never credentials.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl Event {
    pub fn new(event: EventKind, instance_id: u32, session_id: &str, app_ids: Vec<i64>) -> Self {
        let now = chrono::Utc::now();
        Event {
            v: EVENT_VERSION,
            event,
            ts: now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ts_us: now.timestamp_micros(),
            instance_id,
            session_id: session_id.to_owned(),
            app_ids,
            fences: Vec::new(),
            point: None,
            nth: None,
            reason: None,
            detail: serde_json::Value::Null,
        }
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

    #[test]
    fn event_round_trips_with_kebab_names() {
        let mut e = Event::new(EventKind::LeaseLost, 2, "s-1", vec![5, 6]);
        e.fences = vec![1, 2];
        let line = serde_json::to_string(&e).expect("serializable");
        assert!(line.contains("\"event\":\"lease_lost\""), "{line}");
        assert!(line.contains("\"v\":1"), "{line}");
        assert_eq!(parse_line(&line).expect("parses"), e);
    }
}
