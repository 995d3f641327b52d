//! Greedy, proptest-style shrinking of a failing scenario: fewer faults, fewer instances, smaller trigger counts
//! and durations, simpler crash points, fewer applications. Pure logic over the scenario model — running a
//! candidate is the caller's predicate — so it is property-testable. It must never propose a candidate that is
//! invalid or not strictly smaller than the scenario it came from.

use crate::scenario::{FaultSpec, Scenario};
use processor::crash::CrashPoint;
use processor::engine::Mode;

/// Crash points from simplest (earliest, least state) to latest; shrinking moves a crash point left.
const POINT_ORDER: [CrashPoint; 6] = [
    CrashPoint::BeforeWrite,
    CrashPoint::MidWrite,
    CrashPoint::AfterData,
    CrashPoint::BeforeCommit,
    CrashPoint::AfterCommit,
    CrashPoint::AfterClaim,
];

fn point_rank(name: &str) -> u64 {
    POINT_ORDER
        .iter()
        .position(|p| p.name() == name)
        .map_or(POINT_ORDER.len() as u64, |i| i as u64)
}

/// The size a shrink step must strictly decrease, compared lexicographically: fault count, instances, the sum of
/// every number in the faults (counts, nth, commits, milliseconds), crash-point ranks, applications, then the
/// fixture's and run's extras (edge cases, malformed documents, a coordination mode, several workers).
pub type Size = (u64, u64, u64, u64, u64, u64);

pub fn size(s: &Scenario) -> Size {
    let mut magnitude = 0u64;
    let mut ranks = 0u64;
    for f in &s.faults {
        let nums: Vec<u64> = match f {
            FaultSpec::CrashPoint { nth, point, .. } => {
                ranks += point_rank(point);
                vec![*nth]
            }
            FaultSpec::Kill {
                at_ms,
                after_commits,
                ..
            }
            | FaultSpec::Stop {
                at_ms,
                after_commits,
                ..
            }
            | FaultSpec::DropConnections {
                at_ms,
                after_commits,
            }
            | FaultSpec::CutReply {
                at_ms,
                after_commits,
            }
            | FaultSpec::RestartDb {
                at_ms,
                after_commits,
            } => vec![at_ms.unwrap_or(0), after_commits.unwrap_or(0)],
            FaultSpec::RandomKill {
                count,
                within_commits,
            } => vec![u64::from(*count), *within_commits],
            FaultSpec::Pause {
                duration_ms,
                at_ms,
                after_commits,
                ..
            }
            | FaultSpec::Blackhole {
                duration_ms,
                at_ms,
                after_commits,
            } => vec![*duration_ms, at_ms.unwrap_or(0), after_commits.unwrap_or(0)],
            FaultSpec::Latency {
                ms,
                duration_ms,
                at_ms,
                after_commits,
            } => vec![
                *ms,
                *duration_ms,
                at_ms.unwrap_or(0),
                after_commits.unwrap_or(0),
            ],
        };
        magnitude = nums.into_iter().fold(magnitude, u64::saturating_add);
    }
    let extras = u64::from(s.fixture.edge_cases) * 4
        + u64::from(s.fixture.malformed_fraction > 0.0) * 2
        + u64::from(s.run.mode != Mode::Uncoordinated)
        + u64::from(s.run.workers > 1);
    (
        s.faults.len() as u64,
        u64::from(s.run.instances),
        magnitude,
        ranks,
        s.fixture.apps,
        extras,
    )
}

/// Smaller values to try for a positive number, most aggressive first (proptest's binary search toward 1).
fn smaller(n: u64, floor: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for c in [floor, n / 2, n.saturating_sub(1)] {
        if c >= floor && c < n && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// Every number field of one fault that can shrink, as (setter) candidates.
fn fault_variants(f: &FaultSpec, mode: Mode) -> Vec<FaultSpec> {
    let mut out = Vec::new();
    let opt = |v: &Option<u64>, floor: u64| -> Vec<Option<u64>> {
        v.map_or_else(Vec::new, |n| {
            smaller(n, floor).into_iter().map(Some).collect()
        })
    };
    match f.clone() {
        FaultSpec::CrashPoint {
            instance,
            point,
            nth,
            pause_ms,
            resume_on,
        } => {
            for n in smaller(nth, 1) {
                out.push(FaultSpec::CrashPoint {
                    instance,
                    point: point.clone(),
                    nth: n,
                    pause_ms,
                    resume_on: resume_on.clone(),
                });
            }
            let rank = point_rank(&point) as usize;
            for p in POINT_ORDER.iter().take(rank) {
                if *p == CrashPoint::AfterClaim && mode != Mode::Queue {
                    continue;
                }
                out.push(FaultSpec::CrashPoint {
                    instance,
                    point: p.name().to_owned(),
                    nth,
                    pause_ms,
                    resume_on: resume_on.clone(),
                });
            }
        }
        FaultSpec::Kill {
            instance,
            at_ms,
            after_commits,
        } => {
            for a in opt(&at_ms, 0) {
                out.push(FaultSpec::Kill {
                    instance,
                    at_ms: a,
                    after_commits,
                });
            }
            for c in opt(&after_commits, 1) {
                out.push(FaultSpec::Kill {
                    instance,
                    at_ms,
                    after_commits: c,
                });
            }
        }
        FaultSpec::Stop {
            instance,
            at_ms,
            after_commits,
        } => {
            for a in opt(&at_ms, 0) {
                out.push(FaultSpec::Stop {
                    instance,
                    at_ms: a,
                    after_commits,
                });
            }
            for c in opt(&after_commits, 1) {
                out.push(FaultSpec::Stop {
                    instance,
                    at_ms,
                    after_commits: c,
                });
            }
        }
        FaultSpec::RandomKill {
            count,
            within_commits,
        } => {
            for c in smaller(u64::from(count), 1) {
                out.push(FaultSpec::RandomKill {
                    count: u32::try_from(c).unwrap_or(count),
                    within_commits,
                });
            }
            for w in smaller(within_commits, 1) {
                out.push(FaultSpec::RandomKill {
                    count,
                    within_commits: w,
                });
            }
        }
        FaultSpec::Pause {
            instance,
            duration_ms,
            at_ms,
            after_commits,
        } => {
            for d in smaller(duration_ms, 1) {
                out.push(FaultSpec::Pause {
                    instance,
                    duration_ms: d,
                    at_ms,
                    after_commits,
                });
            }
            for a in opt(&at_ms, 0) {
                out.push(FaultSpec::Pause {
                    instance,
                    duration_ms,
                    at_ms: a,
                    after_commits,
                });
            }
            for c in opt(&after_commits, 1) {
                out.push(FaultSpec::Pause {
                    instance,
                    duration_ms,
                    at_ms,
                    after_commits: c,
                });
            }
        }
        FaultSpec::Blackhole {
            duration_ms,
            at_ms,
            after_commits,
        } => {
            for d in smaller(duration_ms, 1) {
                out.push(FaultSpec::Blackhole {
                    duration_ms: d,
                    at_ms,
                    after_commits,
                });
            }
            for a in opt(&at_ms, 0) {
                out.push(FaultSpec::Blackhole {
                    duration_ms,
                    at_ms: a,
                    after_commits,
                });
            }
            for c in opt(&after_commits, 1) {
                out.push(FaultSpec::Blackhole {
                    duration_ms,
                    at_ms,
                    after_commits: c,
                });
            }
        }
        FaultSpec::Latency {
            ms,
            duration_ms,
            at_ms,
            after_commits,
        } => {
            for m in smaller(ms, 1) {
                out.push(FaultSpec::Latency {
                    ms: m,
                    duration_ms,
                    at_ms,
                    after_commits,
                });
            }
            for d in smaller(duration_ms, 1) {
                out.push(FaultSpec::Latency {
                    ms,
                    duration_ms: d,
                    at_ms,
                    after_commits,
                });
            }
            for c in opt(&after_commits, 1) {
                out.push(FaultSpec::Latency {
                    ms,
                    duration_ms,
                    at_ms,
                    after_commits: c,
                });
            }
        }
        FaultSpec::DropConnections {
            at_ms,
            after_commits,
        } => {
            for c in opt(&after_commits, 1) {
                out.push(FaultSpec::DropConnections {
                    at_ms,
                    after_commits: c,
                });
            }
        }
        FaultSpec::CutReply {
            at_ms,
            after_commits,
        } => {
            for c in opt(&after_commits, 1) {
                out.push(FaultSpec::CutReply {
                    at_ms,
                    after_commits: c,
                });
            }
        }
        FaultSpec::RestartDb {
            at_ms,
            after_commits,
        } => {
            for c in opt(&after_commits, 1) {
                out.push(FaultSpec::RestartDb {
                    at_ms,
                    after_commits: c,
                });
            }
        }
    }
    out
}

/// The instance a fault is pinned to, if any.
fn instance_of(f: &FaultSpec) -> Option<u32> {
    match f {
        FaultSpec::CrashPoint { instance, .. }
        | FaultSpec::Kill { instance, .. }
        | FaultSpec::Pause { instance, .. }
        | FaultSpec::Stop { instance, .. } => Some(*instance),
        _ => None,
    }
}

fn with_instance(f: &FaultSpec, to: u32) -> FaultSpec {
    let mut f = f.clone();
    match &mut f {
        FaultSpec::CrashPoint { instance, .. }
        | FaultSpec::Kill { instance, .. }
        | FaultSpec::Pause { instance, .. }
        | FaultSpec::Stop { instance, .. } => *instance = to,
        _ => {}
    }
    f
}

/// One-step simplifications of `s`, most aggressive first. Every candidate is valid (it plans) and strictly
/// smaller by [`size`].
pub fn candidates(s: &Scenario) -> Vec<Scenario> {
    let mut out: Vec<Scenario> = Vec::new();
    let mode = s.run.mode;
    // 1. Drop one fault.
    for i in 0..s.faults.len() {
        let mut c = s.clone();
        c.faults.remove(i);
        out.push(c);
    }
    // 2. One instance: every pinned fault moves to instance 0 (keeping the first crash point only, as one process
    //    arms one), then fewer instances with the faults of the removed ones dropped.
    if s.run.instances > 1 {
        let mut c = s.clone();
        c.run.instances = 1;
        let mut seen_crash = false;
        c.faults = s
            .faults
            .iter()
            .filter(|f| {
                if matches!(f, FaultSpec::CrashPoint { .. }) {
                    let keep = !seen_crash;
                    seen_crash = true;
                    keep
                } else {
                    true
                }
            })
            .map(|f| with_instance(f, 0))
            .collect();
        out.push(c);
        for k in (1..s.run.instances).rev() {
            let mut c = s.clone();
            c.run.instances = k;
            c.faults.retain(|f| instance_of(f).is_none_or(|i| i < k));
            out.push(c);
        }
    }
    // 3. Smaller numbers and earlier crash points, one fault at a time.
    for (i, f) in s.faults.iter().enumerate() {
        for v in fault_variants(f, mode) {
            let mut c = s.clone();
            c.faults[i] = v;
            out.push(c);
        }
    }
    // 4. A smaller fixture.
    for n in smaller(s.fixture.apps, 1) {
        let mut c = s.clone();
        c.fixture.apps = n;
        out.push(c);
    }
    if s.fixture.edge_cases {
        let mut c = s.clone();
        c.fixture.edge_cases = false;
        out.push(c);
    }
    if s.fixture.malformed_fraction > 0.0 {
        let mut c = s.clone();
        c.fixture.malformed_fraction = 0.0;
        out.push(c);
    }
    // 5. A plainer run: one worker, no coordination (only meaningful, and only kept, if it still fails).
    if s.run.workers > 1 {
        let mut c = s.clone();
        c.run.workers = 1;
        out.push(c);
    }
    if s.run.mode != Mode::Uncoordinated {
        let mut c = s.clone();
        c.run.mode = Mode::Uncoordinated;
        out.push(c);
    }
    let here = size(s);
    out.retain(|c| size(c) < here && c.plan(0, None).is_ok());
    out
}

/// What shrinking found.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The smallest scenario that still failed (the input itself when nothing smaller did).
    pub minimal: Scenario,
    /// Candidates run.
    pub attempts: usize,
    /// Accepted steps, each strictly smaller than the one before.
    pub steps: Vec<Scenario>,
    /// The attempt budget ran out before a local minimum was reached.
    pub exhausted: bool,
}

/// Greedy shrinking: take the first candidate that `still_fails`, repeat from it, stop at a local minimum or after
/// `max_attempts` candidate runs.
pub fn shrink(
    input: &Scenario,
    max_attempts: usize,
    mut still_fails: impl FnMut(&Scenario) -> bool,
) -> Shrunk {
    let mut current = input.clone();
    let mut attempts = 0;
    let mut steps = Vec::new();
    'outer: loop {
        for c in candidates(&current) {
            if attempts >= max_attempts {
                return Shrunk {
                    minimal: current,
                    attempts,
                    steps,
                    exhausted: true,
                };
            }
            attempts += 1;
            if still_fails(&c) {
                steps.push(c.clone());
                current = c;
                continue 'outer;
            }
        }
        return Shrunk {
            minimal: current,
            attempts,
            steps,
            exhausted: false,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{FixtureSpec, RunSpec};

    fn split_scenario() -> Scenario {
        toml::from_str(
            r#"
name = "s"
[fixture]
apps = 200
[run]
instances = 3
commit_mode = "split"
[[faults]]
kind = "kill"
instance = 0
after_commits = 7
[[faults]]
kind = "crash-point"
instance = 2
point = "before-commit"
nth = 9
[[faults]]
kind = "pause"
instance = 1
duration_ms = 800
after_commits = 3
"#,
        )
        .expect("valid")
    }

    fn is_after_data_crash(s: &Scenario) -> bool {
        s.faults.iter().any(|f| {
            matches!(f, FaultSpec::CrashPoint { point, .. } if point == "after-data" || point == "before-commit")
        }) && s.fixture.apps >= 3
    }

    #[test]
    fn shrinks_a_split_failure_to_one_crash_at_after_data() {
        let r = shrink(&split_scenario(), 500, is_after_data_crash);
        assert!(!r.exhausted);
        let m = &r.minimal;
        assert_eq!(m.run.instances, 1);
        assert_eq!(
            m.faults,
            vec![FaultSpec::CrashPoint {
                instance: 0,
                point: "after-data".into(),
                nth: 1,
                pause_ms: None,
                resume_on: None,
            }]
        );
        assert_eq!(m.fixture.apps, 3);
        assert!(!m.fixture.edge_cases);
    }

    #[test]
    fn nothing_smaller_fails_keeps_the_input() {
        let s = split_scenario();
        let r = shrink(&s, 50, |_| false);
        assert_eq!(size(&r.minimal), size(&s));
        assert!(r.steps.is_empty());
        assert_eq!(r.attempts, candidates(&s).len().min(50));
    }

    #[test]
    fn budget_is_respected() {
        let r = shrink(&split_scenario(), 3, |_| true);
        assert_eq!(r.attempts, 3);
        assert!(r.exhausted);
    }

    #[test]
    fn minimal_scenario_has_no_candidates() {
        let s = Scenario {
            name: "m".into(),
            description: String::new(),
            fixture: FixtureSpec {
                apps: 1,
                seed: None,
                malformed_fraction: 0.0,
                edge_cases: false,
                ..FixtureSpec::default()
            },
            run: RunSpec::default(),
            faults: vec![],
            restarts: true,
            baseline: false,
            expect: Default::default(),
            backends: vec![],
        };
        assert!(candidates(&s).is_empty());
    }
}
