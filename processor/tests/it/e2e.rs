//! End to end: the real `processor` binary, SIGKILLed at arbitrary moments while it runs, rerun until done; then
//! the database is read directly: one log row per application, failed ones with no rows, success ones with all
//! their rows, no row duplicated by natural key.

use crate::wait_until;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `processor <sub> --db <db>`.
fn processor(db: &str, sub: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_processor"));
    c.env_remove("PROCESSOR_CRASH_AT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c.args([sub, "--db", db]);
    c
}

fn committed_batches(events: &Path) -> usize {
    processor::events::read_file(events).map_or(0, |e| {
        e.iter()
            .filter(|e| e.kind() == processor::events::EventKind::Committed)
            .count()
    })
}

/// Kills a run after it has committed `after` more batches, `rounds` times, then lets a final run finish.
fn kill_and_resume(db: &str, dir: &Path, extra: &[&str], rounds: usize) {
    for round in 0..rounds {
        let events = dir.join(format!("events-{round}.jsonl"));
        let mut child = processor(db, "run")
            .args(["--batch-size", "7", "--workers", "2", "--events"])
            .arg(&events)
            .args(extra)
            .spawn()
            .expect("spawn");
        let pid = Pid::from_raw(child.id() as i32);
        let target = 2 + round % 3;
        let progressed = wait_until(Duration::from_secs(60), || {
            committed_batches(&events) >= target || matches!(child.try_wait(), Ok(Some(_)))
        });
        assert!(progressed, "processor made no progress in round {round}");
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
    }
    let status = processor(db, "run")
        .args(["--batch-size", "7"])
        .args(extra)
        .status()
        .expect("final run");
    assert!(status.success());
}

fn check_sqlite(path: &Path, apps: i64) {
    let conn = rusqlite::Connection::open(path).expect("open");
    let q = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect(sql) };
    assert_eq!(
        q("SELECT COUNT(*) FROM processing_log"),
        apps,
        "one log row per application"
    );
    assert_eq!(q("SELECT COUNT(*) FROM app_xml x WHERE NOT EXISTS (SELECT 1 FROM processing_log l WHERE l.app_id = x.app_id)"), 0);
    assert_eq!(q("SELECT COUNT(*) FROM app_base b JOIN processing_log l USING (app_id) WHERE l.status = 'failed'"), 0, "failed ⇒ no rows");
    assert_eq!(q("SELECT COUNT(*) FROM processing_log l WHERE l.status = 'success' AND NOT EXISTS (SELECT 1 FROM app_base b WHERE b.app_id = l.app_id)"), 0, "success ⇒ rows");
    assert_eq!(q("SELECT COUNT(*) FROM app_contact_base c WHERE NOT EXISTS (SELECT 1 FROM processing_log l WHERE l.app_id = c.app_id AND l.status = 'success')"), 0, "no orphan contacts");
    for (t, key) in [
        ("app_base", "app_id"),
        ("app_contact_base", "con_id"),
        ("app_contact_address", "con_id, address_type_enum"),
        ("app_contact_employment", "con_id, employment_type_enum"),
    ] {
        let dups = q(&format!(
            "SELECT COUNT(*) FROM (SELECT {key} FROM {t} GROUP BY {key} HAVING COUNT(*) > 1)"
        ));
        assert_eq!(dups, 0, "duplicates in {t}");
    }
    assert!(
        q("SELECT COUNT(*) FROM processing_log WHERE status = 'failed'") > 0,
        "the fixture has malformed documents"
    );
}

pub fn sigkill_at_random_moments_then_resume_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("e2e.db");
    let db = format!("sqlite:{}", path.display());
    assert!(processor(&db, "load")
        .args(["--generate", "400", "--seed", "9"])
        .status()
        .expect("load")
        .success());
    kill_and_resume(&db, dir.path(), &[], 4);
    check_sqlite(&path, 400);
}

pub fn three_uncoordinated_instances_with_kills_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("multi.db");
    let db = format!("sqlite:{}", path.display());
    assert!(processor(&db, "load")
        .args(["--generate", "600", "--seed", "10"])
        .status()
        .expect("load")
        .success());
    std::thread::scope(|s| {
        for i in 0..3u32 {
            let (db, dir) = (db.clone(), dir.path().join(format!("i{i}")));
            std::fs::create_dir_all(&dir).expect("dir");
            s.spawn(move || {
                let id = i.to_string();
                kill_and_resume(
                    &db,
                    &dir,
                    &["--instance-id", &id, "--instance-count", "3"],
                    2,
                );
            });
        }
    });
    check_sqlite(&path, 600);
}

pub fn sigkill_and_resume_on_postgres() {
    let cluster = fixtures::pg::PgCluster::start().expect("start a private PostgreSQL cluster");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = cluster.create_database("e2e").expect("db");
    let out = processor(&db, "load")
        .args(["--generate", "400", "--seed", "11"])
        .stderr(Stdio::piped())
        .output()
        .expect("load");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kill_and_resume(
        &db,
        dir.path(),
        &["--mode", "queue", "--lease-secs", "1"],
        3,
    );
    let mut c = postgres::Client::connect(&db, postgres::NoTls).expect("connect");
    let q =
        |c: &mut postgres::Client, sql: &str| -> i64 { c.query_one(sql, &[]).expect(sql).get(0) };
    assert_eq!(
        q(&mut c, "SELECT COUNT(*) FROM shredproof.processing_log"),
        400
    );
    assert_eq!(q(&mut c, "SELECT COUNT(*) FROM shredproof.app_base b JOIN shredproof.processing_log l USING (app_id) WHERE l.status = 'failed'"), 0);
    assert_eq!(q(&mut c, "SELECT COUNT(*) FROM shredproof.processing_log l WHERE status = 'success' AND NOT EXISTS (SELECT 1 FROM shredproof.app_base b WHERE b.app_id = l.app_id)"), 0);
    assert_eq!(q(&mut c, "SELECT COUNT(*) FROM (SELECT con_id FROM shredproof.app_contact_base GROUP BY con_id HAVING COUNT(*) > 1) d"), 0);
}
