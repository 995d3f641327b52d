//! A stop signal honoured while the database is unreachable (issue #11 item 4): the connect loop's backoff wait is
//! cut short by SIGTERM, and the process ends as a clean drain (exit 0, `finished` with reason `drained`).

use crate::wait_until;
use processor::events::{EventKind, FinishReason};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn sigterm_while_the_database_is_unreachable_drains_at_once() {
    // A port nothing listens on: every connect is refused, which the retry policy treats as transient.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let events = dir.path().join("events.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_processor"))
        .current_dir(dir.path())
        .args([
            "run",
            "--db",
            &format!("postgres://shredproof@127.0.0.1:{port}/none"),
        ])
        .arg("--events")
        .arg(&events)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn processor");
    let log = Arc::new(Mutex::new(String::new()));
    let reader = {
        let log = Arc::clone(&log);
        let stderr = child.stderr.take().expect("stderr piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        })
    };
    // Synchronise on the process itself: it has failed to connect and is in a backoff wait.
    let retrying = wait_until(Duration::from_secs(60), || {
        log.lock()
            .is_ok_and(|l| l.contains("database unreachable; retrying"))
    });
    if !retrying {
        let _ = child.kill();
        panic!(
            "the processor never reported the unreachable database: {}",
            log.lock().map(|l| l.clone()).unwrap_or_default()
        );
    }
    // The contract is "within 1 s"; the bound is generous (5 s) so a loaded machine does not fail it, while a
    // process that ignored the signal would retry for the policy's 120 s.
    let (status, _) =
        crate::sigterm_and_wait(&mut child, Duration::from_secs(5), " while backing off");
    let _ = reader.join();
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "a stop during backoff is a clean drain: {status:?}\n{log}"
    );
    let all = processor::events::read_file(&events).expect("events");
    let fin = all
        .iter()
        .find(|e| e.kind() == EventKind::Finished)
        .unwrap_or_else(|| panic!("no finished event: {all:?}"));
    assert_eq!(fin.finish_reason(), Some(FinishReason::Drained), "{all:?}");
    assert!(
        all.iter().any(|e| e.kind() == EventKind::Started),
        "a drain's session starts with `started` (the harness finds it by pid): {all:?}"
    );
}
