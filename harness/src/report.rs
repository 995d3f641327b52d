//! Reports: one terminal line per scenario with the command that reproduces it, `summary.json` per run, and a
//! JUnit XML file for CI. Formatting only; no decisions are made here.

use crate::runner::{ScenarioOutcome, Verdict};
use std::fmt::Write as _;
use std::path::Path;

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

/// Writes the scenario's `summary.json` and its HTML timeline `report.html` (see [`crate::report_html`]).
pub fn write_summary(o: &ScenarioOutcome, backend: &str) -> std::io::Result<()> {
    crate::report_html::write(o, backend)?;
    let mut v = serde_json::to_value(o).map_err(std::io::Error::other)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("backend".into(), backend.into());
        obj.insert("repro".into(), repro_command(o, backend).into());
    }
    let text = serde_json::to_string_pretty(&v).map_err(std::io::Error::other)?;
    std::fs::write(o.dir.join("summary.json"), text)
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// One `<testcase>` per scenario; failures carry every violation.
pub fn junit(outcomes: &[ScenarioOutcome], backend: &str) -> String {
    let failures = outcomes
        .iter()
        .filter(|o| o.verdict != Verdict::Pass)
        .count();
    let total: f64 = outcomes.iter().map(|o| o.wall_secs).sum();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"shredproof\" tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">",
        outcomes.len()
    );
    let _ = writeln!(
        s,
        "  <testsuite name=\"harness.{backend}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{total:.3}\">",
        outcomes.len()
    );
    for o in outcomes {
        let _ = write!(
            s,
            "    <testcase classname=\"harness.{backend}\" name=\"{}\" time=\"{:.3}\"",
            xml_escape(&o.plan.name),
            o.wall_secs
        );
        if o.verdict == Verdict::Pass {
            s.push_str("/>\n");
            continue;
        }
        s.push_str(">\n");
        let mut body = format!("{}\nreproduce: {}\n", o.reason, repro_command(o, backend));
        for v in &o.main.violations {
            let _ = writeln!(body, "{}: {}", v.invariant, v.message);
        }
        let _ = writeln!(
            s,
            "      <failure type=\"{}\" message=\"{}\">{}</failure>",
            verdict_word(o.verdict),
            xml_escape(&o.reason),
            xml_escape(&body)
        );
        s.push_str("    </testcase>\n");
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_xml() {
        assert_eq!(xml_escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
    }
}
