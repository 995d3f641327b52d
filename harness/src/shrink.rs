//! Greedy, proptest-style shrinking of a failing scenario: fewer faults, fewer instances, smaller trigger counts
//! and durations, simpler crash points, fewer applications. Pure logic over the scenario model — running a
//! candidate is the caller's predicate — so it is property-testable. It must never propose a candidate that is
//! invalid or not strictly smaller than the scenario it came from.

use crate::scenario::{FaultSpec, Scenario, TriggerSpec};
use processor::crash::CrashPoint;
use processor::engine::Mode;

/// The size a shrink step must strictly decrease, compared lexicographically: fault count, instances, the sum of
/// every number in the faults (counts, nth, commits, milliseconds), crash-point ranks, applications, then the
/// fixture's and run's extras (edge cases, malformed documents, a coordination mode, several workers).
pub type Size = (u64, u64, u64, u64, u64, u64);

pub fn size(s: &Scenario) -> Size {
    let mut magnitude = 0u64;
    let mut ranks = 0u64;
    for f in &s.faults {
        if let FaultSpec::CrashPoint { point, .. } = f {
            ranks += point.rank() as u64;
        }
        let trigger = f.trigger().unwrap_or_default();
        magnitude = own_numbers(f)
            .into_iter()
            .chain([
                trigger.at_ms.unwrap_or(0),
                trigger.after_commits.unwrap_or(0),
            ])
            .fold(magnitude, u64::saturating_add);
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

/// A fault's numbers besides its trigger (hit counts, kill counts, durations).
fn own_numbers(f: &FaultSpec) -> Vec<u64> {
    match f {
        FaultSpec::CrashPoint { nth, .. } => vec![*nth],
        FaultSpec::RandomKill {
            count,
            within_commits,
        } => vec![u64::from(*count), *within_commits],
        FaultSpec::Pause { duration_ms, .. } | FaultSpec::Blackhole { duration_ms, .. } => {
            vec![*duration_ms]
        }
        FaultSpec::Latency {
            ms, duration_ms, ..
        } => vec![*ms, *duration_ms],
        FaultSpec::NetLoss {
            percent,
            duration_ms,
            ..
        } => vec![u64::from(*percent), *duration_ms],
        FaultSpec::NetPartition { duration_ms, .. } => vec![*duration_ms],
        FaultSpec::NetDelay {
            ms, duration_ms, ..
        } => vec![*ms, *duration_ms],
        FaultSpec::ClockSkew { skew_ms, .. } => vec![skew_ms.unsigned_abs()],
        FaultSpec::Kill { .. }
        | FaultSpec::Stop { .. }
        | FaultSpec::DropConnections { .. }
        | FaultSpec::CutReply { .. }
        | FaultSpec::DropCommit { .. }
        | FaultSpec::RestartDb { .. }
        | FaultSpec::LoseUnsynced { .. } => vec![],
    }
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

/// Every number field of one fault that can shrink, as candidates: its own numbers first, then its trigger
/// (the same for every kind that has one).
fn fault_variants(f: &FaultSpec, mode: Mode) -> Vec<FaultSpec> {
    let mut out = own_variants(f, mode);
    if let Some(t) = f.trigger() {
        let opt = |v: Option<u64>, floor: u64| -> Vec<Option<u64>> {
            v.map_or_else(Vec::new, |n| {
                smaller(n, floor).into_iter().map(Some).collect()
            })
        };
        for a in opt(t.at_ms, 0) {
            out.push(f.with_trigger(TriggerSpec { at_ms: a, ..t }));
        }
        for c in opt(t.after_commits, 1) {
            out.push(f.with_trigger(TriggerSpec {
                after_commits: c,
                ..t
            }));
        }
    }
    out
}

/// Smaller values of a fault's own numbers, and simpler crash points (earlier in `CrashPoint::ALL`, existing in
/// `mode`).
fn own_variants(f: &FaultSpec, mode: Mode) -> Vec<FaultSpec> {
    let mut out = Vec::new();
    let mut with = |g: &dyn Fn(&mut FaultSpec)| {
        let mut v = f.clone();
        g(&mut v);
        out.push(v);
    };
    match f {
        FaultSpec::CrashPoint { nth, point, .. } => {
            for n in smaller(*nth, 1) {
                with(&|v| set_crash(v, None, Some(n)));
            }
            for p in CrashPoint::in_mode(mode == Mode::Queue).take_while(|p| p < point) {
                with(&|v| set_crash(v, Some(p), None));
            }
        }
        FaultSpec::RandomKill {
            count,
            within_commits,
        } => {
            for c in smaller(u64::from(*count), 1) {
                let c = u32::try_from(c).unwrap_or(*count);
                with(&|v| {
                    if let FaultSpec::RandomKill { count, .. } = v {
                        *count = c;
                    }
                });
            }
            for w in smaller(*within_commits, 1) {
                with(&|v| {
                    if let FaultSpec::RandomKill { within_commits, .. } = v {
                        *within_commits = w;
                    }
                });
            }
        }
        FaultSpec::ClockSkew { skew_ms, .. } => {
            // A smaller skew of the same sign, down to 1 ms.
            for m in smaller(skew_ms.unsigned_abs(), 1) {
                let m = i64::try_from(m).unwrap_or(1) * skew_ms.signum();
                with(&|v| {
                    if let FaultSpec::ClockSkew { skew_ms, .. } = v {
                        *skew_ms = m;
                    }
                });
            }
        }
        FaultSpec::Latency { ms, .. } => {
            for m in smaller(*ms, 1) {
                with(&|v| {
                    if let FaultSpec::Latency { ms, .. } = v {
                        *ms = m;
                    }
                });
            }
        }
        FaultSpec::NetDelay { ms, .. } => {
            for m in smaller(*ms, 1) {
                with(&|v| {
                    if let FaultSpec::NetDelay { ms, .. } = v {
                        *ms = m;
                    }
                });
            }
        }
        FaultSpec::NetLoss { percent, .. } => {
            for p in smaller(u64::from(*percent), 1) {
                let p = u8::try_from(p).unwrap_or(*percent);
                with(&|v| {
                    if let FaultSpec::NetLoss { percent, .. } = v {
                        *percent = p;
                    }
                });
            }
        }
        _ => {}
    }
    if let FaultSpec::Pause { duration_ms, .. }
    | FaultSpec::Blackhole { duration_ms, .. }
    | FaultSpec::Latency { duration_ms, .. }
    | FaultSpec::NetLoss { duration_ms, .. }
    | FaultSpec::NetPartition { duration_ms, .. }
    | FaultSpec::NetDelay { duration_ms, .. } = f
    {
        for d in smaller(*duration_ms, 1) {
            with(&|v| {
                if let FaultSpec::Pause { duration_ms, .. }
                | FaultSpec::Blackhole { duration_ms, .. }
                | FaultSpec::Latency { duration_ms, .. }
                | FaultSpec::NetLoss { duration_ms, .. }
                | FaultSpec::NetPartition { duration_ms, .. }
                | FaultSpec::NetDelay { duration_ms, .. } = v
                {
                    *duration_ms = d;
                }
            });
        }
    }
    out
}

fn set_crash(v: &mut FaultSpec, p: Option<CrashPoint>, n: Option<u64>) {
    if let FaultSpec::CrashPoint { point, nth, .. } = v {
        if let Some(p) = p {
            *point = p;
        }
        if let Some(n) = n {
            *nth = n;
        }
    }
}

/// The instance a fault is pinned to, if any.
fn instance_of(f: &FaultSpec) -> Option<u32> {
    match f {
        FaultSpec::CrashPoint { instance, .. }
        | FaultSpec::Kill { instance, .. }
        | FaultSpec::Pause { instance, .. }
        | FaultSpec::Stop { instance, .. }
        | FaultSpec::NetLoss { instance, .. }
        | FaultSpec::NetPartition { instance, .. }
        | FaultSpec::NetDelay { instance, .. }
        | FaultSpec::ClockSkew { instance, .. } => Some(*instance),
        _ => None,
    }
}

fn with_instance(f: &FaultSpec, to: u32) -> FaultSpec {
    let mut f = f.clone();
    match &mut f {
        FaultSpec::CrashPoint { instance, .. }
        | FaultSpec::Kill { instance, .. }
        | FaultSpec::Pause { instance, .. }
        | FaultSpec::Stop { instance, .. }
        | FaultSpec::NetLoss { instance, .. }
        | FaultSpec::NetPartition { instance, .. }
        | FaultSpec::NetDelay { instance, .. }
        | FaultSpec::ClockSkew { instance, .. } => *instance = to,
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
            matches!(f, FaultSpec::CrashPoint { point, .. } if matches!(point, CrashPoint::AfterData | CrashPoint::BeforeCommit))
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
                point: CrashPoint::AfterData,
                nth: 1,
                pause_ms: None,
                resume_on: None,
                stall_ms: None,
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

    /// Every kind with a trigger shrinks both halves of it (issue 14: `at_ms` was shrunk for four kinds only).
    #[test]
    fn network_faults_shrink_their_numbers() {
        let f = FaultSpec::NetDelay {
            instance: 1,
            ms: 80,
            direction: crate::netfault::Direction::Both,
            duration_ms: 1000,
            at_ms: None,
            after_commits: Some(3),
        };
        let vs = own_variants(&f, Mode::Queue);
        assert!(vs
            .iter()
            .any(|v| matches!(v, FaultSpec::NetDelay { ms: 1, .. })));
        assert!(vs
            .iter()
            .any(|v| matches!(v, FaultSpec::NetDelay { duration_ms: 1, .. })));
        let l = FaultSpec::NetLoss {
            instance: 0,
            percent: 30,
            direction: crate::netfault::Direction::Both,
            duration_ms: 10,
            at_ms: None,
            after_commits: Some(3),
        };
        assert!(own_variants(&l, Mode::Queue)
            .iter()
            .any(|v| matches!(v, FaultSpec::NetLoss { percent: 1, .. })));
        assert_eq!(instance_of(&l), Some(0));
    }

    #[test]
    fn every_kind_shrinks_its_trigger() {
        let kinds = [
            FaultSpec::Kill {
                instance: 0,
                at_ms: None,
                after_commits: None,
            },
            FaultSpec::Pause {
                instance: 0,
                duration_ms: 1,
                at_ms: None,
                after_commits: None,
            },
            FaultSpec::Stop {
                instance: 0,
                at_ms: None,
                after_commits: None,
            },
            FaultSpec::DropConnections {
                at_ms: None,
                after_commits: None,
            },
            FaultSpec::Blackhole {
                duration_ms: 1,
                at_ms: None,
                after_commits: None,
            },
            FaultSpec::Latency {
                ms: 1,
                duration_ms: 1,
                at_ms: None,
                after_commits: None,
            },
            FaultSpec::CutReply {
                at_ms: None,
                after_commits: None,
            },
            FaultSpec::DropCommit {
                at_ms: None,
                after_commits: None,
            },
            FaultSpec::RestartDb {
                at_ms: None,
                after_commits: None,
            },
            FaultSpec::NetLoss {
                instance: 0,
                percent: 1,
                direction: crate::netfault::Direction::Both,
                duration_ms: 1,
                at_ms: None,
                after_commits: None,
            },
            FaultSpec::NetPartition {
                instance: 0,
                direction: crate::netfault::Direction::ToServer,
                duration_ms: 1,
                at_ms: None,
                after_commits: None,
            },
            FaultSpec::NetDelay {
                instance: 0,
                ms: 1,
                direction: crate::netfault::Direction::FromServer,
                duration_ms: 1,
                at_ms: None,
                after_commits: None,
            },
            FaultSpec::LoseUnsynced {
                at_ms: None,
                after_commits: None,
            },
        ];
        for k in kinds {
            for t in [
                TriggerSpec {
                    at_ms: Some(400),
                    after_commits: None,
                },
                TriggerSpec {
                    at_ms: None,
                    after_commits: Some(7),
                },
            ] {
                let f = k.with_trigger(t);
                assert_eq!(f.trigger(), Some(t), "{}", f.kind());
                let vs = fault_variants(&f, Mode::Queue);
                assert!(!vs.is_empty(), "{} with {t:?} does not shrink", f.kind());
                for v in vs {
                    let (a, b) = (v.trigger().unwrap_or_default(), t);
                    let smaller = (a.at_ms.unwrap_or(0), a.after_commits.unwrap_or(0))
                        < (b.at_ms.unwrap_or(0), b.after_commits.unwrap_or(0));
                    assert!(smaller, "{}: {a:?} is not smaller than {b:?}", f.kind());
                    assert_eq!(v.with_trigger(t), f, "only the trigger changed");
                }
            }
        }
    }

    #[test]
    fn crash_points_shrink_in_their_one_order() {
        let f = FaultSpec::CrashPoint {
            instance: 0,
            point: CrashPoint::AfterTakeover,
            nth: 1,
            pause_ms: None,
            resume_on: None,
            stall_ms: None,
        };
        let points = |mode| -> Vec<CrashPoint> {
            fault_variants(&f, mode)
                .into_iter()
                .filter_map(|v| match v {
                    FaultSpec::CrashPoint { point, .. } => Some(point),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(points(Mode::Queue), CrashPoint::ALL[..6].to_vec());
        assert!(points(Mode::Uncoordinated).iter().all(|p| !p.queue_only()));
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
            seed: None,
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
