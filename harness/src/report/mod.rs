//! Reports: one terminal line per scenario with the command that reproduces it, `summary.json` per run, and a
//! JUnit XML file for CI. Formatting only; no decisions are made here.

/// `report.html`: the timeline view of one scenario (a child of `report`, which writes it next to `summary.json`).
pub mod html;

use crate::runner::{ScenarioOutcome, Verdict};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// The command that replays this exact run.
pub fn repro_command(o: &ScenarioOutcome, backend: &str) -> String {
    let file = o.plan.source.as_ref().map_or_else(
        || format!("scenarios/{}.toml", o.plan.name),
        |p| p.display().to_string(),
    );
    replay_command(&file, o.plan.seed, backend)
}

/// The one spelling of a replay: `harness run FILE --seed N`, naming the backend unless it is the default.
pub fn replay_command(file: &str, seed: u64, backend: &str) -> String {
    let b = if backend == crate::db::Backend::DEFAULT.as_str() {
        String::new()
    } else {
        format!(" --backend {backend}")
    };
    format!("harness run {file} --seed {seed}{b}")
}

pub fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Liveness => "LIVENESS",
        Verdict::Invalid => "INVALID",
    }
}

/// `PASS crash-a  faults 1/1  apps 311 (295 ok, 16 failed)  redone 0  collisions 0  1234 apps/s  2.3s`
pub fn terminal_line(o: &ScenarioOutcome, backend: &str) -> String {
    let m = &o.main;
    let fired = m.faults.iter().filter(|f| f.fired).count();
    let (ok, failed, apps) = m.check.as_ref().map_or((0, 0, 0), |c| {
        (c.stats.success, c.stats.failed, c.stats.apps)
    });
    let mut s = format!(
        "{:<8} {:<34} faults {}/{}  apps {} ({} ok, {} failed)  redone {}  collisions {}  {:.0} apps/s  {:.1}s",
        verdict_word(o.verdict),
        o.plan.name,
        fired,
        m.faults.len(),
        apps,
        ok,
        failed,
        m.stats.redone,
        m.stats.collisions,
        m.stats.apps_per_sec,
        o.wall_secs
    );
    let _ = write!(
        s,
        "\n         {}  — {}",
        o.reason,
        repro_command(o, backend)
    );
    if o.verdict != Verdict::Pass {
        for v in m
            .violations
            .iter()
            .chain(o.baseline.iter().flat_map(|b| b.violations.iter()))
            .take(8)
        {
            let _ = write!(s, "\n         ✗ {}: {}", v.invariant, v.message);
        }
        let _ = write!(s, "\n         logs and events: {}", o.dir.display());
    }
    s
}

/// Writes the scenario's `summary.json` and its HTML timeline `report.html` (see [`html`]).
pub fn write_summary(o: &ScenarioOutcome, backend: &str) -> std::io::Result<()> {
    html::write(o, backend)?;
    let mut v = serde_json::to_value(o).map_err(std::io::Error::other)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("backend".into(), backend.into());
        obj.insert("repro".into(), repro_command(o, backend).into());
    }
    let text = serde_json::to_string_pretty(&v).map_err(std::io::Error::other)?;
    std::fs::write(o.dir.join("summary.json"), text)
}

/// One `<testcase>` per scenario; failures carry every violation. Written by `quick-junit` (what nextest uses),
/// which does the XML escaping.
pub fn junit(outcomes: &[ScenarioOutcome], backend: &str) -> String {
    let total = Duration::from_secs_f64(outcomes.iter().map(|o| o.wall_secs).sum());
    let mut suite = TestSuite::new(format!("harness.{backend}"));
    suite.set_time(total);
    for o in outcomes {
        let status = if o.verdict == Verdict::Pass {
            TestCaseStatus::success()
        } else {
            let mut body = format!("{}\nreproduce: {}\n", o.reason, repro_command(o, backend));
            for v in &o.main.violations {
                let _ = writeln!(body, "{}: {}", v.invariant, v.message);
            }
            let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
            st.set_type(verdict_word(o.verdict))
                .set_message(o.reason.as_str())
                .set_description(body);
            st
        };
        let mut case = TestCase::new(o.plan.name.as_str(), status);
        case.set_classname(format!("harness.{backend}"))
            .set_time(Duration::from_secs_f64(o.wall_secs));
        suite.add_test_case(case);
    }
    let mut report = Report::new("shredproof");
    report.set_time(total).add_test_suite(suite);
    report
        .to_string()
        .unwrap_or_else(|e| format!("<!-- cannot write JUnit XML: {e} -->\n"))
}

pub fn write_junit(
    path: &Path,
    outcomes: &[ScenarioOutcome],
    backend: &str,
) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, junit(outcomes, backend))
}
