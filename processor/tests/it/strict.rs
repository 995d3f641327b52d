//! Strict bytes, per-document limits and SIGTERM in the middle of a huge document, on the real binary: broken
//! bytes become `parse:` rows naming the byte offset (nothing replaced, nothing stored silently), a NUL file on
//! PostgreSQL is named by `load` while the others load, oversized or slow documents become `limit:` rows, and a
//! SIGTERM while a huge document maps ends the process within a deadline with nothing half-written.

use crate::wait_until;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn processor(db: &str, sub: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_processor"));
    c.env_remove("PROCESSOR_CRASH_AT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.args([sub, "--db", db, "--log-level", "warn"]);
    c
}

/// Runs to completion; returns (success, stdout + stderr).
fn output(mut c: Command) -> (bool, String) {
    let out = c.output().expect("spawn processor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A document of the project's contract with `contacts` contacts (each with an address and an employment).
fn document(app_id: i64, contacts: usize, first_name: &[u8]) -> Vec<u8> {
    let mut x = format!(
        "<Provenir><Request ID=\"{app_id}\"><CustData><application app_receive_date=\"2024-01-15T10:30:00\" decision_tp_c=\"APPRV\">"
    )
    .into_bytes();
    for i in 0..contacts {
        let con = app_id * 1_000_000 + i as i64;
        x.extend_from_slice(
            format!(
                "<contact con_id=\"{con}\" ac_role_tp_c=\"{}\" first_name=\"",
                if i == 0 { "PR" } else { "AUTHU" }
            )
            .as_bytes(),
        );
        x.extend_from_slice(first_name);
        x.extend_from_slice(
            ("\" last_name=\"Long\" birth_date=\"1980-12-31\"><contact_address address_tp_c=\"CURR\" street=\"3 Lake View Rd\" city=\"Franklin\" state=\"TN\" zip=\"37067\"/><contact_employment employment_tp_c=\"CURR\" employer_name=\"Umbrella\" monthly_salary=\"$6,100.25\"/></contact>")
                .as_bytes(),
        );
    }
    x.extend_from_slice(b"</application></CustData></Request></Provenir>");
    x
}

/// Offset of `needle` in `hay` (the byte a refusal must name).
fn offset_of(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}

/// The broken-bytes fixture: (file name, bytes, expected reason prefix or None for success).
fn broken_files() -> Vec<(i64, Vec<u8>, Option<String>)> {
    let ok = document(1, 2, b"Ann");
    let bad_utf8 = document(2, 2, b"Bad\xff\xfeName\xc3");
    let at = offset_of(&bad_utf8, b"\xff");
    let ctrl = document(3, 1, b"A\x01nn");
    let ctrl_at = offset_of(&ctrl, b"\x01");
    let nul = document(4, 1, b"A\0nn");
    let nul_at = offset_of(&nul, b"\0");
    let text = String::from_utf8(document(5, 2, "Zoë".as_bytes())).expect("utf-8");
    let mut utf16 = vec![0xFF, 0xFE];
    for u in text.encode_utf16() {
        utf16.extend_from_slice(&u.to_le_bytes());
    }
    let mut cp1252 = b"<?xml version=\"1.0\" encoding=\"windows-1252\"?>".to_vec();
    cp1252.extend_from_slice(&document(6, 1, b"Zo\xeb"));
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(&document(7, 1, b"Bo\xc3\xabm"));
    vec![
        (1, ok, None),
        (
            2,
            bad_utf8,
            Some(format!("parse: invalid UTF-8 (byte 0xFF) at byte {at}")),
        ),
        (
            3,
            ctrl,
            Some(format!(
                "parse: character U+0001 is not allowed in XML 1.0 at byte {ctrl_at}"
            )),
        ),
        (
            4,
            nul,
            Some(format!(
                "parse: character U+0000 is not allowed in XML 1.0 at byte {nul_at}"
            )),
        ),
        (5, utf16, None),
        (
            6,
            cp1252,
            Some("parse: declared encoding \"windows-1252\" is not supported".into()),
        ),
        (7, bom, None),
    ]
}

fn write_files(dir: &Path, files: &[(i64, Vec<u8>, Option<String>)]) {
    std::fs::create_dir_all(dir).expect("dir");
    for (id, bytes, _) in files {
        std::fs::write(dir.join(format!("{id}.xml")), bytes).expect("write");
    }
}

/// `load` named file `<id>.xml` on one line together with `reason` (the refusal and its cause, whatever the log
/// format puts between them).
fn names_refused(text: &str, id: i64, reason: &str) -> bool {
    let file = format!("/{id}.xml");
    text.lines()
        .any(|l| l.contains(&file) && l.contains(reason))
}

/// Each expected reason is the logged one (or a prefix of it); success rows have rows, failed ones none.
fn check_log(log: &[(i64, String, Option<String>)], files: &[(i64, Vec<u8>, Option<String>)]) {
    assert_eq!(log.len(), files.len(), "one log row per file: {log:?}");
    for ((id, status, reason), (fid, _, want)) in log.iter().zip(files) {
        assert_eq!(id, fid);
        match want {
            None => assert_eq!(status, "success", "app {id}: {reason:?}"),
            Some(w) => {
                assert_eq!(status, "failed", "app {id}");
                let r = reason.as_deref().unwrap_or_default();
                assert!(
                    r.starts_with(w.as_str()),
                    "app {id}: {r:?} should start with {w:?}"
                );
            }
        }
    }
}

pub fn broken_bytes_become_parse_rows_with_offsets_on_sqlite() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = tmp.path().join("bytes.db");
    let db = format!("sqlite:{}", path.display());
    let files = broken_files();
    write_files(&tmp.path().join("docs"), &files);
    let mut load = processor(&db, "load");
    load.arg("--dir").arg(tmp.path().join("docs"));
    let (ok, text) = output(load);
    assert!(ok, "{text}");
    for id in [2, 3, 4, 6] {
        assert!(
            names_refused(&text, id, "at byte"),
            "load names {id}.xml: {text}"
        );
    }
    assert!(
        text.contains("4 refused by the strict-bytes check"),
        "{text}"
    );
    let (ok, text) = output(processor(&db, "run"));
    assert!(ok, "{text}");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let log: Vec<(i64, String, Option<String>)> = conn
        .prepare("SELECT app_id, status, failure_reason FROM processing_log ORDER BY app_id")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    check_log(&log, &files);
    // Nothing replaced: the UTF-16 and BOM names arrive as written, and nothing holds U+FFFD.
    let names: Vec<String> = conn
        .prepare("SELECT first_name FROM app_contact_base ORDER BY con_id")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(
        names.contains(&"Zoë".to_owned()) && names.contains(&"Boëm".to_owned()),
        "{names:?}"
    );
    assert!(names.iter().all(|n| !n.contains('\u{FFFD}')), "{names:?}");
    let orphans: i64 = conn
        .query_row("SELECT COUNT(*) FROM app_base b JOIN processing_log l USING (app_id) WHERE l.status = 'failed'", [], |r| r.get(0))
        .expect("count");
    assert_eq!(orphans, 0, "failed ⇒ no rows");
}

pub fn nul_file_on_postgres_is_named_and_the_others_load() {
    let cluster = fixtures::pg::PgCluster::start().expect("start a private PostgreSQL cluster");
    let tmp = tempfile::tempdir().expect("temp dir");
    let db = cluster.create_database("bytes").expect("db");
    let files = broken_files();
    write_files(&tmp.path().join("docs"), &files);
    let mut load = processor(&db, "load");
    load.arg("--dir").arg(tmp.path().join("docs"));
    let (ok, text) = output(load);
    assert!(ok, "{text}");
    assert!(
        names_refused(&text, 4, "character U+0000"),
        "the NUL file is named: {text}"
    );
    assert!(text.contains("loaded 7 new documents"), "{text}");
    let (ok, text) = output(processor(&db, "run"));
    assert!(ok, "{text}");
    let mut c = postgres::Client::connect(&db, postgres::NoTls).expect("connect");
    let log: Vec<(i64, String, Option<String>)> = c
        .query(
            "SELECT app_id, status, failure_reason FROM shredproof.processing_log ORDER BY app_id",
            &[],
        )
        .expect("log")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    check_log(&log, &files);
}

pub fn oversized_and_slow_documents_become_limit_rows() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = tmp.path().join("limits.db");
    let db = format!("sqlite:{}", path.display());
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).expect("dir");
    let small = document(1, 2, b"Ann");
    let big = document(2, 5_000, b"Ann");
    std::fs::write(docs.join("1.xml"), &small).expect("write");
    std::fs::write(docs.join("2.xml"), &big).expect("write");
    let mut load = processor(&db, "load");
    load.arg("--dir").arg(&docs);
    let (ok, text) = output(load);
    assert!(ok, "{text}");
    let limit = (small.len() * 10).to_string();
    let mut run = processor(&db, "run");
    run.args(["--max-doc-bytes", &limit]);
    let (ok, text) = output(run);
    assert!(ok, "{text}");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let reason = |id: i64| -> (String, Option<String>) {
        conn.query_row(
            "SELECT status, failure_reason FROM processing_log WHERE app_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("log row")
    };
    assert_eq!(reason(1).0, "success");
    let (status, why) = reason(2);
    assert_eq!(status, "failed");
    let want = format!(
        "limit: document is {} bytes, over the {limit}-byte per-document limit (--max-doc-bytes)",
        big.len()
    );
    assert_eq!(why.as_deref(), Some(want.as_str()));

    // The same document under a 1 ms mapping limit (it takes far longer than that to parse 1.5 MB).
    let path2 = tmp.path().join("slow.db");
    let db2 = format!("sqlite:{}", path2.display());
    let mut load = processor(&db2, "load");
    load.arg("--dir").arg(&docs);
    assert!(output(load).0);
    std::fs::remove_file(docs.join("1.xml")).expect("rm");
    let mut run = processor(&db2, "run");
    run.args(["--max-map-ms", "1"]);
    let (ok, text) = output(run);
    assert!(ok, "{text}");
    let conn = rusqlite::Connection::open(&path2).expect("open");
    let why: Option<String> = conn
        .query_row(
            "SELECT failure_reason FROM processing_log WHERE app_id = 2",
            [],
            |r| r.get(0),
        )
        .expect("log row");
    assert_eq!(
        why.as_deref(),
        Some("limit: mapping took longer than the 1 ms per-document limit (--max-map-ms)")
    );
    let rows: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM app_contact_base WHERE app_id = 2",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(rows, 0);
}

/// CPU time (user + system) a process has used, in milliseconds, from `/proc/<pid>/stat`.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // Clock ticks are 100 per second on Linux.
    f.iter().sum::<u64>() * 10
}

/// SIGTERM once the huge document is claimed (its mapping is then in flight): the process exits 0 within the
/// deadline, and the huge document is either completely written and logged or not at all.
pub fn sigterm_in_the_middle_of_a_huge_document_exits_promptly() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = tmp.path().join("huge.db");
    let db = format!("sqlite:{}", path.display());
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).expect("dir");
    // ~25 MB with 60,000 contacts: seconds to map even with a linear mapper, minutes with a quadratic one.
    let huge = document(1, 60_000, b"Ann");
    std::fs::write(docs.join("1.xml"), &huge).expect("write");
    for id in 2..=5 {
        std::fs::write(docs.join(format!("{id}.xml")), document(id, 2, b"Bo")).expect("write");
    }
    let mut load = processor(&db, "load");
    load.arg("--dir").arg(&docs);
    let (ok, text) = output(load);
    assert!(ok, "{text}");
    let events = tmp.path().join("events.jsonl");
    let mut child = processor(&db, "run")
        .args(["--mode", "queue", "--batch-size", "1", "--events"])
        .arg(&events)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let claimed_huge = || {
        processor::events::read_file(&events).is_ok_and(|e| {
            e.iter().any(|e| {
                e.kind() == processor::events::EventKind::Claimed && e.app_ids.contains(&1)
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(120), claimed_huge),
        "the huge document was never claimed"
    );
    // Then until it has spent 300 ms of CPU since: the huge document is being parsed and mapped, not just queued.
    let cpu0 = cpu_ms(child.id());
    assert!(
        wait_until(Duration::from_secs(120), || cpu_ms(child.id())
            >= cpu0 + 300
            || matches!(child.try_wait(), Ok(Some(_)))),
        "the processor never got to work"
    );
    let (status, took) = crate::sigterm_and_wait(&mut child, Duration::from_secs(30), "");
    eprintln!("exit {took:?} after SIGTERM");
    assert!(status.success(), "{status:?}");
    // 1 s is the promise; the margin is for a loaded 2-core CI machine, and stays far below any mapping time.
    assert!(
        took < Duration::from_secs(3),
        "exit took {took:?} after SIGTERM"
    );
    let all = processor::events::read_file(&events).expect("events");
    let abandoned = all
        .iter()
        .any(|e| e.kind() == processor::events::EventKind::Abandoned && e.app_ids.contains(&1));
    let conn = rusqlite::Connection::open(&path).expect("open");
    let q = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect(sql) };
    let logged = q("SELECT COUNT(*) FROM processing_log WHERE app_id = 1");
    let rows = q("SELECT COUNT(*) FROM app_contact_base WHERE app_id = 1");
    assert!(
        (logged == 0 && rows == 0 && abandoned) || (logged == 1 && !abandoned),
        "half-written: logged {logged}, contact rows {rows}, abandoned {abandoned}"
    );
    if abandoned {
        // The abandoned claim was released (its lease ends now), not left to block others until it expires.
        let lease = q("SELECT lease_expires_at FROM processing_claim WHERE app_id = 1");
        assert!(
            lease <= processor::store::now_ms(),
            "claim still leased until {lease}"
        );
    }
}
