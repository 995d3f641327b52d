//! `report.html`: one self-contained page per scenario run (inline CSS and SVG, no script, nothing fetched), so a
//! failure can be read at a glance: the verdict and every violation, the faults, and a timeline with one lane per
//! instance showing each process start (session) with its claims, commits, collisions, lost leases, abandoned
//! batches, crash points, faults and how it ended. Events that touch an application named by a violation, and
//! process ends that broke a process-fate invariant, are ringed in red. Anchors: Jepsen's timeline, etcd's history
//! view. Formatting only; no decisions are made here.

use crate::check::history::ProcessEnd;
use crate::runner::{PhaseOutcome, ScenarioOutcome};
use processor::events::{Body, Event, EventKind, FinishReason};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

const LANE_H: f64 = 46.0;
const LEFT: f64 = 120.0;
const WIDTH: f64 = 1100.0;
const TOP: f64 = 24.0;

/// The one XML/HTML escaper of the harness (JUnit XML is escaped by `quick-junit`); drops control characters.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

fn apps_sample(apps: &[i64]) -> String {
    let v: Vec<String> = apps.iter().take(12).map(i64::to_string).collect();
    let more = if apps.len() > 12 {
        format!(", … ({} in all)", apps.len())
    } else {
        String::new()
    };
    format!("[{}{more}]", v.join(", "))
}

/// Writes `report.html` into the scenario's directory, from its outcome and the `events.jsonl` the runner wrote.
pub fn write(o: &ScenarioOutcome, backend: &str) -> std::io::Result<()> {
    let events = processor::events::read_file(&o.dir.join("events.jsonl")).unwrap_or_default();
    std::fs::write(o.dir.join("report.html"), render(o, backend, &events))
}

/// The whole page.
pub fn render(o: &ScenarioOutcome, backend: &str, events: &[Event]) -> String {
    let m = &o.main;
    let mut s = String::new();
    let verdict = crate::report::verdict_word(o.verdict);
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{verdict} {name} ({backend})</title>\n\
         <style>{CSS}</style></head><body>\n<h1><span class=\"v {cls}\">{verdict}</span> {name} <small>{backend}</small></h1>\n\
         <p>{reason}</p><p class=\"mono\">{repro}</p>\n",
        name = esc(&o.plan.name),
        cls = verdict.to_lowercase(),
        reason = esc(&o.reason),
        repro = esc(&crate::report::repro_command(o, backend)),
    );
    let _ = writeln!(
        s,
        "<p>{} instances, mode {}, commit mode {}; {} process starts; {} applications committed, {} collisions, \
         {} lost leases; {} events; {:.1} s.</p>",
        o.plan.instances,
        o.plan.mode.as_str(),
        o.plan.commit_mode.as_str(),
        m.stats.process_starts,
        m.stats.committed_apps,
        m.stats.collisions,
        m.stats.lease_lost,
        m.events,
        o.wall_secs
    );
    violations_table(&mut s, "Violations", m);
    if let Some(b) = &o.baseline {
        if !b.violations.is_empty() {
            violations_table(&mut s, "Violations of the no-fault baseline", b);
        }
    }
    s.push_str(
        "<h2>Faults</h2>\n<table><tr><th>fault</th><th>fired</th><th>at</th><th>note</th></tr>\n",
    );
    for f in &m.faults {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.fault),
            if f.fired { "ok" } else { "bad" },
            if f.fired { "yes" } else { "NO" },
            f.at_ms.map_or(String::new(), |t| format!("{t} ms")),
            esc(&f.note)
        );
    }
    s.push_str("</table>\n<h2>Timeline</h2>\n");
    s.push_str(&timeline(o, events));
    s.push_str(LEGEND);
    s.push_str("<h2>Processes</h2>\n<table><tr><th>instance</th><th>start</th><th>pid</th><th>ended</th><th>killed by the harness</th><th>violation</th></tr>\n");
    for p in &m.processes {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"bad\">{}</td></tr>",
            p.instance,
            p.start,
            p.pid,
            esc(&p.status),
            if p.killed_by_harness { "yes" } else { "" },
            p.violation.map_or("", |v| v.name())
        );
    }
    s.push_str("</table>\n</body></html>\n");
    s
}

fn violations_table(s: &mut String, title: &str, phase: &PhaseOutcome) {
    let _ = writeln!(s, "<h2>{}</h2>", esc(title));
    if phase.violations.is_empty() {
        s.push_str("<p class=\"ok\">none</p>\n");
        return;
    }
    s.push_str("<table><tr><th>invariant</th><th>applications</th><th>what</th></tr>\n");
    for v in &phase.violations {
        let _ = writeln!(
            s,
            "<tr class=\"viol\"><td>{}</td><td class=\"mono\">{}</td><td>{}</td></tr>",
            v.invariant,
            esc(&apps_sample(&v.app_ids)),
            esc(&v.message)
        );
    }
    s.push_str("</table>\n");
}

/// One process start on a lane: from its `started` event to its end.
struct Segment<'e> {
    session: &'e str,
    from: i64,
    to: i64,
    end: Option<&'e ProcessEnd>,
    finished: Option<FinishReason>,
}

// tidy:long-fn one SVG drawing whose lanes, marks and legend share one coordinate system; not yet split (issue 14)
fn timeline(o: &ScenarioOutcome, events: &[Event]) -> String {
    let m = &o.main;
    let t_min = events
        .iter()
        .map(|e| e.ts_us)
        .chain([m.t0_us])
        .min()
        .unwrap_or(0);
    let t_max = events
        .iter()
        .map(|e| e.ts_us)
        .chain(m.processes.iter().map(|p| p.ended_us))
        .chain(
            m.faults
                .iter()
                .filter_map(|f| f.at_ms)
                .map(|ms| m.t0_us + ms as i64 * 1000),
        )
        .max()
        .unwrap_or(t_min)
        .max(t_min + 1);
    let x = |t: i64| LEFT + (t - t_min) as f64 / (t_max - t_min) as f64 * WIDTH;
    let lanes = o.plan.instances.max(1);
    let height = TOP + f64::from(lanes) * LANE_H + 30.0;
    let violated: BTreeSet<i64> = m
        .violations
        .iter()
        .flat_map(|v| v.app_ids.iter().copied())
        .collect();
    let by_pid: HashMap<u32, &ProcessEnd> = m.processes.iter().map(|p| (p.pid, p)).collect();
    // Sessions per instance, in start order.
    let mut segs: BTreeMap<u32, Vec<Segment<'_>>> = BTreeMap::new();
    let mut last_ts: HashMap<&str, i64> = HashMap::new();
    let mut fin: HashMap<&str, (FinishReason, i64)> = HashMap::new();
    for e in events {
        last_ts.insert(&e.session_id, e.ts_us);
        if let Some(r) = e.finish_reason() {
            fin.insert(&e.session_id, (r, e.ts_us));
        }
    }
    for (e, started) in events.iter().filter_map(|e| Some((e, e.started()?))) {
        let end = by_pid.get(&started.pid).copied();
        let to = end
            .map(|p| p.ended_us)
            .or_else(|| fin.get(e.session_id.as_str()).map(|f| f.1))
            .or_else(|| last_ts.get(e.session_id.as_str()).copied())
            .unwrap_or(e.ts_us);
        segs.entry(e.instance_id).or_default().push(Segment {
            session: &e.session_id,
            from: e.ts_us,
            to,
            end,
            finished: fin.get(e.session_id.as_str()).map(|f| f.0),
        });
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" viewBox=\"0 0 {w} {height}\" \
         font-family=\"sans-serif\" font-size=\"11\">",
        w = LEFT + WIDTH + 20.0
    );
    // Time axis: ten ticks, in ms from time zero.
    for i in 0..=10 {
        let t = t_min + (t_max - t_min) * i / 10;
        let xx = x(t);
        let _ = writeln!(
            s,
            "<line x1=\"{xx:.1}\" y1=\"{TOP}\" x2=\"{xx:.1}\" y2=\"{:.1}\" class=\"grid\"/>\
             <text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" class=\"axis\">{} ms</text>",
            height - 22.0,
            height - 8.0,
            (t - m.t0_us) / 1000
        );
    }
    for lane in 0..lanes {
        let y = TOP + f64::from(lane) * LANE_H;
        let _ = writeln!(
            s,
            "<text x=\"8\" y=\"{:.1}\" class=\"lane\">instance {lane}</text>",
            y + LANE_H / 2.0 + 4.0
        );
        for (k, seg) in segs
            .get(&lane)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let (x1, x2) = (x(seg.from), x(seg.to).max(x(seg.from) + 2.0));
            let ended = seg
                .end
                .map_or("still running when the run ended".to_owned(), |p| {
                    p.status.clone()
                });
            let _ = writeln!(
                s,
                "<rect x=\"{x1:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" class=\"seg{}\"><title>start {} \
                 session {}: {}; finished {}</title></rect>",
                y + 8.0,
                x2 - x1,
                LANE_H - 16.0,
                k % 2,
                k + 1,
                esc(seg.session),
                esc(&ended),
                seg.finished.map_or("(no finished event)", FinishReason::as_str)
            );
            // The end of the process: a bar, red when its ending broke a process-fate invariant.
            let bad = seg.end.and_then(|p| p.violation);
            let _ = writeln!(
                s,
                "<line x1=\"{x2:.1}\" y1=\"{:.1}\" x2=\"{x2:.1}\" y2=\"{:.1}\" class=\"{}\"><title>{}{}</title></line>",
                y + 4.0,
                y + LANE_H - 4.0,
                if bad.is_some() { "endbad" } else { "end" },
                esc(&ended),
                bad.map_or(String::new(), |v| format!(" — violates {v}"))
            );
        }
    }
    // Faults: a dashed line on the instance's lane (or across all lanes for server and network faults).
    for (f, plan_fault) in m.faults.iter().zip(&o.plan.faults) {
        let Some(ms) = f.at_ms else { continue };
        let xx = x(m.t0_us + ms as i64 * 1000);
        let (y1, y2) = if plan_fault.action.is_global() {
            (TOP, TOP + f64::from(lanes) * LANE_H)
        } else {
            let y = TOP + f64::from(plan_fault.instance) * LANE_H;
            (y, y + LANE_H)
        };
        let _ = writeln!(
            s,
            "<line x1=\"{xx:.1}\" y1=\"{y1:.1}\" x2=\"{xx:.1}\" y2=\"{y2:.1}\" class=\"fault\"><title>fault at {ms} ms: {} — {}</title></line>",
            esc(&f.fault),
            esc(&f.note)
        );
    }
    for e in events {
        let y = TOP + f64::from(e.instance_id.min(lanes - 1)) * LANE_H;
        let xx = x(e.ts_us);
        let apps = esc(&apps_sample(&e.app_ids));
        let title = format!(
            "{} at {} ms, session {}{} {apps}",
            e.kind().as_str(),
            (e.ts_us - m.t0_us) / 1000,
            esc(&e.session_id),
            match &e.body {
                Body::CrashPoint { point, .. } => format!(", point {}", esc(point)),
                Body::Failed { reason } | Body::Abandoned { reason } =>
                    format!(", {}", esc(reason)),
                Body::Finished { reason, .. } => format!(", {}", reason.as_str()),
                Body::CommitResolved { reason } => format!(", {}", reason.as_str()),
                Body::Retrying {
                    op,
                    attempt,
                    wait_ms,
                    error,
                } => format!(
                    ", {} attempt {attempt} after {wait_ms} ms{}{}",
                    esc(op),
                    if error.is_empty() { "" } else { ": " },
                    esc(error)
                ),
                _ => String::new(),
            },
        );
        let (cy, shape) = match e.kind() {
            EventKind::Claimed => (
                y + 12.0,
                format!(
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"2\" height=\"8\" class=\"claimed\">",
                    xx - 1.0,
                    y + 8.0
                ),
            ),
            EventKind::Committed => (
                y + 23.0,
                format!(
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"2\" height=\"12\" class=\"committed\">",
                    xx - 1.0,
                    y + 17.0
                ),
            ),
            EventKind::Failed => (
                y + 34.0,
                format!(
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"2\" height=\"6\" class=\"failed\">",
                    xx - 1.0,
                    y + 31.0
                ),
            ),
            EventKind::Collision => (
                y + 23.0,
                format!(
                    "<circle cx=\"{xx:.1}\" cy=\"{:.1}\" r=\"4\" class=\"collision\">",
                    y + 23.0
                ),
            ),
            EventKind::LeaseLost => (
                y + 23.0,
                format!(
                    "<path d=\"M{:.1},{:.1} l5,9 l-10,0 z\" class=\"leaselost\">",
                    xx,
                    y + 18.0
                ),
            ),
            EventKind::Abandoned => (
                y + 23.0,
                format!(
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"7\" height=\"7\" class=\"abandoned\">",
                    xx - 3.5,
                    y + 19.5
                ),
            ),
            EventKind::CommitResolved => (
                y + 23.0,
                format!(
                    "<path d=\"M{:.1},{:.1} l5,5 l-5,5 l-5,-5 z\" class=\"resolved\">",
                    xx,
                    y + 18.0
                ),
            ),
            EventKind::CrashPoint => (
                y + 23.0,
                format!(
                    "<path d=\"M{:.1},{:.1} l10,10 m0,-10 l-10,10\" class=\"crash\">",
                    xx - 5.0,
                    y + 18.0
                ),
            ),
            EventKind::Started => (
                y + 23.0,
                format!(
                    "<path d=\"M{:.1},{:.1} l7,5 l-7,5 z\" class=\"started\">",
                    xx,
                    y + 18.0
                ),
            ),
            EventKind::Retrying => (
                y + 34.0,
                format!(
                    "<circle cx=\"{xx:.1}\" cy=\"{:.1}\" r=\"2\" class=\"retrying\">",
                    y + 34.0
                ),
            ),
            EventKind::Finished => (
                y + 23.0,
                format!(
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"3\" height=\"16\" class=\"finished\">",
                    xx - 1.5,
                    y + 15.0
                ),
            ),
        };
        let close = if shape.starts_with("<rect") {
            "</rect>"
        } else if shape.starts_with("<circle") {
            "</circle>"
        } else {
            "</path>"
        };
        let _ = writeln!(s, "{shape}<title>{title}</title>{close}");
        if e.app_ids.iter().any(|a| violated.contains(a)) {
            let _ = writeln!(
                s,
                "<circle cx=\"{xx:.1}\" cy=\"{cy:.1}\" r=\"7\" class=\"ring\"><title>touches an application named by a violation: {title}</title></circle>"
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

const CSS: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}h1 small{color:#777;font-weight:normal}\
.v{padding:0 .4em;border-radius:3px;color:#fff}.v.pass{background:#2a7}.v.fail{background:#c33}\
.v.liveness{background:#c80}.v.invalid{background:#888}table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top;font-size:13px}\
tr.viol td{background:#fee}.ok{color:#2a7}.bad{color:#c33;font-weight:bold}.mono{font-family:monospace}\
.grid{stroke:#eee}.axis{fill:#777}.lane{fill:#333;font-weight:bold}.seg0{fill:#e8eef8}.seg1{fill:#dde6f3}\
.end{stroke:#333;stroke-width:2}.endbad{stroke:#e00;stroke-width:4}.fault{stroke:#e70;stroke-width:2;stroke-dasharray:4 3}\
.claimed{fill:#36c}.committed{fill:#2a7}.failed{fill:#933}.collision{fill:#f90}.leaselost{fill:#d22}\
.abandoned{fill:#999}.retrying{fill:#e90}.resolved{fill:#93c}.crash{stroke:#d00;stroke-width:2.5;fill:none}.started{fill:#333}\
.finished{fill:#111}.ring{fill:none;stroke:#e00;stroke-width:2}.legend span{margin-right:1.2em}";

const LEGEND: &str = "<p class=\"legend\"><span style=\"color:#36c\">▮ claimed</span><span style=\"color:#2a7\">▮ committed</span>\
<span style=\"color:#933\">▮ failed</span><span style=\"color:#f90\">● collision</span><span style=\"color:#d22\">▲ lease lost</span>\
<span style=\"color:#999\">■ abandoned</span><span style=\"color:#93c\">◆ commit resolved</span><span style=\"color:#e90\">• retrying</span><span style=\"color:#d00\">✕ crash point</span>\
<span>▶ started</span><span>▮ finished</span><span style=\"color:#e70\">┆ fault</span><span style=\"color:#e00\">○ touches a violated application</span>\
<span style=\"color:#e00\">┃ a process end that broke an invariant</span>. Hover for details.</p>\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(esc("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
    }
}
