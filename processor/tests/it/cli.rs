//! The processor binary's start-up errors: bad arguments, contracts and crash points stop with exit code 2 and a
//! message naming the problem, before touching any database.

use std::process::Command;

fn processor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_processor"))
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = processor()
        .current_dir(dir.path())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("spawn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn bad_instance_arguments_exit_2() {
    let (code, err) = run(
        &[
            "run",
            "--mode",
            "partitioned",
            "--instance-id",
            "3",
            "--instance-count",
            "3",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--instance-id 3 is out of range for --instance-count 3"),
        "{err}"
    );
    let (code, err) = run(&["run", "--batch-size", "0"], &[]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = run(&["run", "--mode", "sideways"], &[]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = run(&["run", "--db", "mysql://x"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unrecognised database url"), "{err}");
}

pub fn a_bad_contract_names_the_entry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut v: serde_json::Value = serde_json::from_str(fixtures::CONTRACT_JSON).expect("json");
    v["mappings"][4]["mapping_type"] = "rot13".into();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, v.to_string()).expect("write");
    let (code, err) = run(&["init", "--contract", path.to_str().expect("utf8")], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("mappings[4]") && err.contains("unsupported mapping_type 'rot13'"),
        "{err}"
    );
}

pub fn an_unknown_crash_point_is_a_start_up_error() {
    let (code, err) = run(&["run"], &[("PROCESSOR_CRASH_AT", "after_data")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown crash point 'after_data'"), "{err}");
}

/// Planted bugs (`PROCESSOR_PLANT_BUG`, the harness's own tests of its invariants) exist only in the harness's
/// processor: the shipped binary refuses the variable at start-up, before touching the database.
pub fn the_shipped_binary_refuses_planted_bugs() {
    for bug in [
        "ignore-log",
        "no-kill-at-crash",
        "exit-mid-drain",
        "nonsense",
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = format!("sqlite:{}", dir.path().join("x.db").display());
        let out = processor()
            .args(["run", "--db", &db])
            .env("PROCESSOR_PLANT_BUG", bug)
            .env_remove("PROCESSOR_CRASH_AT")
            .output()
            .expect("spawn");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bug}: {:?} {err}", out.status);
        assert!(
            err.contains("PROCESSOR_PLANT_BUG") || err.contains("unknown planted bug"),
            "{bug}: {err}"
        );
        assert!(
            !dir.path().join("x.db").exists(),
            "{bug}: touched the database"
        );
    }
}

/// The test clock skew (`PROCESSOR_CLOCK_SKEW_MS`, the harness's `clock-skew` fault) exists only in the harness's
/// processor: the shipped binary refuses it at start-up, before touching the database; a malformed value too.
pub fn the_shipped_binary_refuses_a_clock_skew() {
    for skew in ["60000", "-1", "soon"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = format!("sqlite:{}", dir.path().join("x.db").display());
        let out = processor()
            .args(["run", "--db", &db])
            .env("PROCESSOR_CLOCK_SKEW_MS", skew)
            .env_remove("PROCESSOR_CRASH_AT")
            .env_remove("PROCESSOR_PLANT_BUG")
            .output()
            .expect("spawn");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{skew}: {:?} {err}", out.status);
        assert!(err.contains("PROCESSOR_CLOCK_SKEW_MS"), "{skew}: {err}");
        assert!(
            !dir.path().join("x.db").exists(),
            "{skew}: touched the database"
        );
    }
}

/// The shipped binary has no crash points (only `harness processor …` installs the hook that fires them): a valid
/// crash point is refused loudly, before any database is touched, instead of killing the user's run.
pub fn the_shipped_binary_refuses_crash_points() {
    for spec in ["after-data", "after-commit:2", "after-claim:1:pause"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("x.db");
        let db = format!("sqlite:{}", db.display());
        let out = processor()
            .args(["run", "--db", &db])
            .env("PROCESSOR_CRASH_AT", spec)
            .output()
            .expect("spawn");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{spec}: {:?} {err}", out.status);
        assert!(
            err.contains("crash points are only available in the harness's processor"),
            "{spec}: {err}"
        );
        assert!(
            !dir.path().join("x.db").exists(),
            "{spec}: touched the database"
        );
    }
}

pub fn passwords_are_never_printed() {
    let (code, err) = run(
        &[
            "status",
            "--db",
            "postgres://bob:hunter2@127.0.0.1:1/db?connect_timeout=1",
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(!err.contains("hunter2"), "{err}");
}

pub fn load_generates_real_shaped_documents_on_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("shape.db");
    let url = format!("sqlite:{}", db.display());
    let (code, err) = run(
        &[
            "load",
            "--db",
            &url,
            "--generate",
            "4",
            "--shape",
            "rl",
            "--malformed-fraction",
            "0",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let conn = rusqlite::Connection::open(&db).expect("open");
    let xml: Vec<String> = conn
        .prepare("SELECT xml FROM app_xml ORDER BY app_id")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("read app_xml");
    assert_eq!(xml.len(), 4);
    assert!(
        xml.iter().all(|x| x.contains("<IL_application ")),
        "not RL-shaped"
    );
    // The project's own contract, shape auto: the classic generator.
    let (code, err) = run(
        &[
            "load",
            "--db",
            &url,
            "--generate",
            "2",
            "--first-app-id",
            "10",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let classic: String = conn
        .query_row("SELECT xml FROM app_xml WHERE app_id = 10", [], |r| {
            r.get(0)
        })
        .expect("row 10");
    assert!(!classic.contains("<IL_application"), "{classic:.200}");
    let (code, err) = run(
        &["load", "--db", &url, "--generate", "1", "--shape", "xx"],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--shape must be cc, rl, classic or auto"),
        "{err}"
    );
}

/// `load --generate N --contract cc|rl` (a shape where a file is expected) exits 2 pointing at `--shape` and at the
/// replaced system's contract files, before touching a database.
pub fn a_shape_given_as_contract_is_refused_with_the_way_to_say_it() {
    for shape in ["cc", "rl"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("x.db");
        let (code, err) = run(
            &[
                "load",
                "--db",
                &format!("sqlite:{}", db.display()),
                "--generate",
                "3",
                "--contract",
                shape,
            ],
            &[],
        );
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&format!("--shape {shape}")), "{err}");
        assert!(err.contains("mapping_contract.json"), "{err}");
        assert!(!db.exists(), "touched the database");
    }
}

/// `processor status | head -1`: a reader that has gone away ends the output quietly (exit 0, no panic). The pipe's
/// read end is closed before the process starts, so every write meets EPIPE, whatever the scheduling.
pub fn status_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("s.db").display());
    let (code, err) = run(&["load", "--db", &db, "--generate", "20"], &[]);
    assert_eq!(code, 0, "{err}");
    for json in [false, true] {
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        drop(read_end);
        let mut cmd = processor();
        cmd.args(["status", "--db", &db]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd
            .stdout(std::process::Stdio::from(write_end))
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("spawn");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "json={json}: {err}");
        assert!(!err.contains("panicked"), "json={json}: {err}");
    }
}
