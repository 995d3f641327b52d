//! `harness explore`: draws random fault schedules from one seed, runs each as an ordinary scenario written to a
//! file (so `harness run FILE --seed N` replays it with no hidden state), and shrinks any run that violates an
//! invariant to a minimal scenario. Schedule generation is a pure function of (seed, target); it must not draw
//! faults the target cannot carry out (connection and server faults only where a PostgreSQL server is in use).

use crate::check::Invariant;
use crate::db::{Backend, Launcher};
use crate::report;
use crate::runner::{self, RunOptions, RunnerError, ScenarioOutcome, Verdict};
use crate::scenario::{ExpectSpec, FaultSpec, FixtureSpec, RunSpec, Scenario, TriggerSpec};
use crate::shrink;
use processor::crash::CrashPoint;
use processor::engine::{CommitMode, Mode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What a schedule may contain on this target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub backend: Backend,
    /// The server can be SIGKILLed and restarted (a cluster the harness started itself).
    pub can_restart: bool,
    /// The launcher can put the server on the lazyfs layer: `lose-unsynced` is drawn as well as `restart-db`.
    pub can_lose_unsynced: bool,
    pub commit_mode: CommitMode,
}

impl Target {
    /// Every proxy fault (cut-reply and drop-commit included) can be drawn.
    fn proxy_faults(&self) -> bool {
        let c = self.backend.capabilities();
        c.server && c.commit_cut
    }
}

/// The seed of run `i` of an exploration with base seed `base` (SplitMix64 of both, so neighbouring runs differ
/// in every bit).
pub fn run_seed(base: u64, i: u32) -> u64 {
    let mut z = base
        .wrapping_add(u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Crash points a random schedule can use in `mode` (every one that exists there and fires unprovoked).
fn points(mode: Mode) -> Vec<CrashPoint> {
    CrashPoint::in_mode(mode == Mode::Queue)
        .filter(|p| p.fires_unprovoked())
        .collect()
}

/// Queue mode: sometimes one instance's clock is skewed by up to ±30 s (`clock-skew`), so the lease clock is
/// explored too. Drawn from a stream of its own, after everything else: every other draw of a seed, and so every
/// schedule explored before this kind existed, stays as it was.
fn draw_clock_skew(seed: u64, instances: u32) -> Option<FaultSpec> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x636c_6f63_6b73_6b77);
    if !rng.random_bool(0.3) {
        return None;
    }
    let magnitude: i64 = rng.random_range(1_000..=30_000);
    Some(FaultSpec::ClockSkew {
        instance: rng.random_range(0..instances),
        skew_ms: if rng.random_bool(0.5) {
            magnitude
        } else {
            -magnitude
        },
    })
}

// tidy:long-fn one stream of draws from one RNG: splitting it must keep the order of every draw, or every explored seed changes its schedule
/// Draws one scenario. Triggers are progress-based (commit counts, hit counts) and kept within the first third of
/// the work an instance can expect, so they fire at any machine speed; each instance gets at most one process
/// fault, because a kill before an armed crash point fires would disarm it (it is armed on the first start only).
pub fn generate(name: &str, seed: u64, t: &Target) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let instances: u32 = rng.random_range(1..=3);
    let mode = [Mode::Uncoordinated, Mode::Partitioned, Mode::Queue][rng.random_range(0..3usize)];
    let batch_size: usize = [5, 10, 20][rng.random_range(0..3usize)];
    let apps: u64 = rng.random_range(100..=300);
    let workers: usize = rng.random_range(1..=2);
    let total = apps + fixtures::edge_cases().len() as u64;
    // Split mode hits its crash points per application, atomic mode per batch; commits are per batch in both.
    let batches = (total / batch_size as u64).max(1);
    let per_instance = (batches / u64::from(instances)).max(1);
    let hi = (per_instance / 3).max(1);
    let hi_total = (batches / 3).max(1);
    let mut faults = Vec::new();
    for instance in 0..instances {
        if !rng.random_bool(0.7) {
            continue;
        }
        let after_commits = Some(rng.random_range(1..=hi));
        let f = match rng.random_range(0..4u32) {
            0 => {
                let ps = points(mode);
                FaultSpec::CrashPoint {
                    instance,
                    point: ps[rng.random_range(0..ps.len())],
                    nth: rng.random_range(1..=hi),
                    pause_ms: None,
                    resume_on: None,
                    // Queue mode: sometimes a stall instead of a kill (a batch slower than the lease, process
                    // alive), so `lease-kept` is explored too.
                    // Not on SQL Server: slow-batch-queue's unmodified heartbeat lost a lease there once.
                    stall_ms: (mode == Mode::Queue
                        && t.backend != Backend::Mssql
                        && rng.random_bool(0.3))
                    .then(|| rng.random_range(500..=4000)),
                }
            }
            1 => FaultSpec::Kill {
                instance,
                at_ms: None,
                after_commits,
            },
            2 => FaultSpec::Pause {
                instance,
                duration_ms: rng.random_range(200..=1500),
                at_ms: None,
                after_commits,
            },
            _ => FaultSpec::Stop {
                instance,
                at_ms: None,
                after_commits,
            },
        };
        faults.push(f);
    }
    if t.proxy_faults() {
        let n = rng.random_range(0..=2u32);
        for _ in 0..n {
            let after_commits = Some(rng.random_range(1..=hi_total));
            let kinds = if t.can_restart { 6 } else { 5 };
            let f = match rng.random_range(0..kinds) {
                0 => FaultSpec::DropConnections {
                    at_ms: None,
                    after_commits,
                },
                1 => FaultSpec::Blackhole {
                    duration_ms: rng.random_range(200..=2000),
                    at_ms: None,
                    after_commits,
                },
                2 => FaultSpec::Latency {
                    ms: rng.random_range(1..=20),
                    duration_ms: rng.random_range(200..=2000),
                    at_ms: None,
                    after_commits,
                },
                3 => FaultSpec::CutReply {
                    at_ms: None,
                    after_commits,
                },
                4 => FaultSpec::DropCommit {
                    at_ms: None,
                    after_commits,
                },
                // The power-cut flavour of a server crash, where the server can be put on the lazyfs layer.
                _ if t.can_lose_unsynced && rng.random_bool(0.5) => FaultSpec::LoseUnsynced {
                    at_ms: None,
                    after_commits,
                },
                _ => FaultSpec::RestartDb {
                    at_ms: None,
                    after_commits,
                },
            };
            faults.push(f);
        }
    }
    // A server restart blocks the supervisor until the server is back, and the processors may finish everything
    // meanwhile: at most one per schedule, and after every other fault, so nothing is left waiting for work that is
    // already done.
    let mut restarts = faults.iter().filter(|f| f.crashes_server()).count();
    faults.retain(|f| {
        let keep = !f.crashes_server() || restarts == 1;
        if !keep {
            restarts -= 1;
        }
        keep
    });
    if let Some(pos) = faults.iter().position(FaultSpec::crashes_server) {
        let last = faults
            .iter()
            .filter_map(|f| match f {
                FaultSpec::CrashPoint { nth, .. } => Some(*nth),
                _ if f.crashes_server() => None,
                _ => f.trigger().and_then(|t| t.after_commits),
            })
            .max()
            .unwrap_or(0);
        let f = faults.remove(pos);
        // Commits of all instances count for a global fault; every instance fault above is due by then.
        let at_ms = f.trigger().and_then(|t| t.at_ms);
        faults.push(f.with_trigger(TriggerSpec {
            at_ms,
            after_commits: Some(last.saturating_mul(u64::from(instances)) + 1),
        }));
    }
    if faults.is_empty() {
        faults.push(FaultSpec::Kill {
            instance: 0,
            at_ms: None,
            after_commits: Some(rng.random_range(1..=hi)),
        });
    }
    // Drawn last, so every schedule drawn before network faults existed keeps its faults.
    let net = draw_net_fault(&mut rng, t, instances, hi, &faults);
    let networked = net.is_some();
    faults.extend(net);
    if mode == Mode::Queue {
        faults.extend(draw_clock_skew(seed, instances));
    }
    let global = faults.iter().any(FaultSpec::is_global);
    Scenario {
        name: name.to_owned(),
        seed: Some(seed),
        description: format!(
            "drawn by harness explore from seed {seed} ({} backend, {} commit)",
            t.backend.as_str(),
            t.commit_mode.as_str()
        ),
        fixture: FixtureSpec {
            apps,
            seed: None,
            malformed_fraction: 0.05,
            edge_cases: true,
            ..FixtureSpec::default()
        },
        run: RunSpec {
            instances,
            mode,
            workers,
            batch_size,
            commit_mode: t.commit_mode,
            lease_secs: 2,
            staggered: false,
        },
        faults,
        restarts: true,
        // The explored runs are many and short; a failing baseline would show up as a violation in every run.
        baseline: false,
        expect: ExpectSpec {
            deadline_secs: 60,
            ..ExpectSpec::default()
        },
        backends: if networked {
            vec![Backend::Postgres]
        } else if global {
            Backend::all_with(|c| c.server && c.commit_cut)
        } else {
            vec![]
        },
    }
}

/// On PostgreSQL, sometimes one network fault (`net-loss`, `net-partition` or `net-delay`, `netfault.rs`) on a
/// random instance, within the first third of its work. Not with `restart-db`, which must stay the schedule's
/// last fault (and the network-fault run has a cluster of its own).
fn draw_net_fault(
    rng: &mut ChaCha8Rng,
    t: &Target,
    instances: u32,
    hi: u64,
    faults: &[FaultSpec],
) -> Option<FaultSpec> {
    use crate::netfault::Direction;
    if t.backend != Backend::Postgres
        || faults
            .iter()
            .any(|f| matches!(f, FaultSpec::RestartDb { .. }))
        || !rng.random_bool(0.3)
    {
        return None;
    }
    let instance = rng.random_range(0..instances);
    let direction =
        [Direction::ToServer, Direction::FromServer, Direction::Both][rng.random_range(0..3usize)];
    let duration_ms = rng.random_range(300..=2000);
    let after_commits = Some(rng.random_range(1..=hi));
    Some(match rng.random_range(0..3u32) {
        0 => FaultSpec::NetLoss {
            instance,
            percent: rng.random_range(5..=40),
            direction,
            duration_ms,
            at_ms: None,
            after_commits,
        },
        1 => FaultSpec::NetPartition {
            instance,
            direction,
            duration_ms,
            at_ms: None,
            after_commits,
        },
        _ => FaultSpec::NetDelay {
            instance,
            ms: rng.random_range(5..=100),
            direction,
            duration_ms,
            at_ms: None,
            after_commits,
        },
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ExploreError {
    #[error("{0}")]
    Runner(#[from] RunnerError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot serialise scenario {name}: {source}")]
    Toml {
        name: String,
        source: toml::ser::Error,
    },
    /// A drawn or shrunk scenario that does not plan: a generator or shrinker bug, reported with its problem.
    #[error("drawn scenario is invalid (a generator bug): {0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
pub struct ExploreOptions {
    pub runs: u32,
    pub seed: u64,
    pub target: Target,
    /// Candidate runs allowed while shrinking one failure.
    pub shrink_attempts: usize,
    /// Where failing runs are kept as replayable scenario files (`None`: nowhere but `<out>/explore/`).
    pub corpus: Option<PathBuf>,
    pub run: RunOptions,
}

/// One shrunk failure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShrinkReport {
    pub from: String,
    pub file: PathBuf,
    pub seed: u64,
    pub attempts: usize,
    pub exhausted: bool,
    pub violated: Vec<Invariant>,
    /// The shrunk scenario was run once more and failed the same way.
    pub replayed: bool,
    pub replay: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunLine {
    pub name: String,
    pub seed: u64,
    pub file: PathBuf,
    pub verdict: Verdict,
    pub reason: String,
    pub faults: usize,
    pub faults_fired: usize,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExploreSummary {
    pub seed: u64,
    pub runs: Vec<RunLine>,
    pub shrunk: Vec<ShrinkReport>,
    /// Files written into the corpus.
    pub corpus: Vec<PathBuf>,
    pub errors: Vec<String>,
}

impl ExploreSummary {
    pub fn count(&self, v: Verdict) -> usize {
        self.runs.iter().filter(|r| r.verdict == v).count()
    }

    /// The exit code, as `harness run` maps it (an error of any run is an environment error).
    pub fn exit(&self) -> crate::exit::Exit {
        crate::exit::Exit::of_verdicts(self.runs.iter().map(|r| r.verdict), !self.errors.is_empty())
    }

    /// [`ExploreSummary::exit`] as the process's number.
    pub fn exit_code(&self) -> u8 {
        self.exit().code()
    }
}

fn write_scenario(s: &Scenario, path: &Path) -> Result<(), ExploreError> {
    let text = toml::to_string(s).map_err(|source| ExploreError::Toml {
        name: s.name.clone(),
        source,
    })?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ExploreError::Write {
            path: parent.display().to_string(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| ExploreError::Write {
        path: path.display().to_string(),
        source,
    })
}

fn run_scenario(
    s: &Scenario,
    seed: u64,
    file: Option<PathBuf>,
    launcher: &mut dyn Launcher,
    opts: &RunOptions,
) -> Result<ScenarioOutcome, ExploreError> {
    let plan = s
        .plan(seed, file)
        .map_err(|e| ExploreError::Invalid(e.to_string()))?;
    Ok(runner::run_plan(&plan, launcher, opts)?)
}

/// The invariants a failing run broke, without the ones that only say the run proves nothing.
fn real_violations(o: &ScenarioOutcome) -> BTreeSet<Invariant> {
    let mut v = o.main.violated();
    v.remove(&Invariant::FaultsFired);
    v
}

/// Runs the exploration. Progress and results go to the terminal; files under `<out>/explore/`.
pub fn explore(
    launcher: &mut dyn Launcher,
    o: &ExploreOptions,
) -> Result<ExploreSummary, ExploreError> {
    let dir = o.run.out_dir.join("explore");
    let backend = o.target.backend.as_str();
    let mut summary = ExploreSummary {
        seed: o.seed,
        ..ExploreSummary::default()
    };
    for i in 0..o.runs {
        let seed = run_seed(o.seed, i);
        let name = format!("explore-{}-{i}", o.seed);
        let sc = generate(&name, seed, &o.target);
        let file = dir.join(format!("{name}.toml"));
        write_scenario(&sc, &file)?;
        let outcome = match run_scenario(&sc, seed, Some(file.clone()), launcher, &o.run) {
            Ok(out) => out,
            Err(ExploreError::Runner(e)) => {
                eprintln!("ERROR    {name}: {e}");
                summary.errors.push(format!("{name}: {e}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        println!("{}", report::terminal_line(&outcome, backend));
        if let Err(e) = report::write_summary(&outcome, backend) {
            eprintln!("warning: cannot write summary for {name}: {e}");
        }
        summary.runs.push(RunLine {
            name: name.clone(),
            seed,
            file: file.clone(),
            verdict: outcome.verdict,
            reason: outcome.reason.clone(),
            faults: outcome.main.faults.len(),
            faults_fired: outcome.main.faults.iter().filter(|f| f.fired).count(),
        });
        let broke = real_violations(&outcome);
        let mut keep = sc.clone();
        if outcome.verdict == Verdict::Fail && !broke.is_empty() {
            let r = shrink_failure(&sc, seed, &broke, launcher, o)?;
            if r.replayed {
                if let Ok(min) = Scenario::from_file(&r.file) {
                    keep = min;
                }
            }
            summary.shrunk.push(r);
        }
        if let (Some(corpus), true) = (&o.corpus, outcome.verdict != Verdict::Pass) {
            summary.corpus.push(keep_in_corpus(corpus, keep, seed)?);
        }
    }
    let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
    let path = dir.join("summary.json");
    std::fs::write(&path, text).map_err(|source| ExploreError::Write {
        path: path.display().to_string(),
        source,
    })?;
    Ok(summary)
}

/// Writes a failing scenario into the corpus as `<corpus>/<name>.toml`, its seed recorded in the file so
/// `harness run <corpus>` replays the same fixtures and schedule. Returns the path.
pub fn keep_in_corpus(corpus: &Path, mut s: Scenario, seed: u64) -> Result<PathBuf, ExploreError> {
    s.seed = Some(seed);
    s.expect = ExpectSpec {
        deadline_secs: s.expect.deadline_secs,
        ..ExpectSpec::default()
    };
    let file = corpus.join(format!("{}.toml", s.name));
    write_scenario(&s, &file)?;
    Ok(file)
}

/// Shrinks a failing scenario: a candidate "still fails" when its run violates at least one of the invariants the
/// original broke. Writes the minimum to `<out>/explore/<name>-min.toml` and replays it once to confirm.
pub fn shrink_failure(
    original: &Scenario,
    seed: u64,
    broke: &BTreeSet<Invariant>,
    launcher: &mut dyn Launcher,
    o: &ExploreOptions,
) -> Result<ShrinkReport, ExploreError> {
    let names = |s: &BTreeSet<Invariant>| s.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ");
    eprintln!(
        "shrinking {} (violated {}; at most {} attempts)",
        original.name,
        names(broke),
        o.shrink_attempts
    );
    let min_name = format!("{}-min", original.name);
    let mut k = 0u32;
    let mut env_error: Option<ExploreError> = None;
    let shrunk = shrink::shrink(original, o.shrink_attempts, |c| {
        if env_error.is_some() {
            return false;
        }
        k += 1;
        let mut c = c.clone();
        c.name = format!("{}-shrink-{k}", original.name);
        c.baseline = false;
        match run_scenario(&c, seed, None, launcher, &o.run) {
            Ok(out) => {
                let fails = out.verdict == Verdict::Fail
                    && real_violations(&out).intersection(broke).next().is_some();
                eprintln!(
                    "  attempt {k:>3}: {} fault(s), {} instance(s), {} apps → {}",
                    c.faults.len(),
                    c.run.instances,
                    c.fixture.apps,
                    if fails { "still fails" } else { "passes" }
                );
                fails
            }
            Err(e) => {
                env_error = Some(e);
                false
            }
        }
    });
    if let Some(e) = env_error {
        return Err(e);
    }
    let mut minimal = shrunk.minimal;
    minimal.name = min_name.clone();
    minimal.baseline = false;
    minimal.description = format!(
        "shrunk by harness explore from {} (seed {seed}) in {} attempts; violated {}",
        original.name,
        shrunk.attempts,
        names(broke)
    );
    let file = o
        .run
        .out_dir
        .join("explore")
        .join(format!("{min_name}.toml"));
    write_scenario(&minimal, &file)?;
    let replay_outcome = run_scenario(&minimal, seed, Some(file.clone()), launcher, &o.run)?;
    let replayed = replay_outcome.verdict == Verdict::Fail
        && real_violations(&replay_outcome)
            .intersection(broke)
            .next()
            .is_some();
    let backend = o.target.backend;
    let replay = report::replay_command(&file.display().to_string(), seed, backend.as_str());
    let faults: Vec<String> = minimal
        .faults
        .iter()
        .map(|f| {
            toml::to_string(f)
                .unwrap_or_default()
                .replace('\n', " ")
                .trim()
                .to_owned()
        })
        .collect();
    println!(
        "SHRUNK   {} → {} instance(s), {} apps, faults [{}]{}\n         replay: {replay}{}",
        original.name,
        minimal.run.instances,
        minimal.fixture.apps,
        faults.join("; "),
        if shrunk.exhausted {
            " (attempt budget ran out)"
        } else {
            ""
        },
        if replayed {
            ""
        } else {
            "\n         warning: the replay did not fail the same way (flaky failure)"
        }
    );
    Ok(ShrinkReport {
        from: original.name.clone(),
        file,
        seed,
        attempts: shrunk.attempts,
        exhausted: shrunk.exhausted,
        violated: broke.iter().copied().collect(),
        replayed,
        replay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn target(backend: Backend, commit_mode: CommitMode) -> Target {
        Target {
            backend,
            can_restart: true,
            can_lose_unsynced: false,
            commit_mode,
        }
    }

    #[test]
    fn run_seeds_differ() {
        let s: BTreeSet<u64> = (0..100).map(|i| run_seed(7, i)).collect();
        assert_eq!(s.len(), 100);
        assert_ne!(run_seed(7, 0), run_seed(8, 0));
    }

    #[test]
    fn drawn_scenarios_round_trip_through_toml() {
        for i in 0..50 {
            let t = target(Backend::Postgres, CommitMode::Atomic);
            let s = generate("rt", run_seed(1, i), &t);
            let text = toml::to_string(&s).expect("serialise");
            let back: Scenario = toml::from_str(&text).expect("parse back");
            assert_eq!(back.faults, s.faults, "{text}");
            assert_eq!(toml::to_string(&back).expect("again"), text);
        }
    }

    #[test]
    fn network_faults_are_drawn_on_postgres_only() {
        let net = |f: &FaultSpec| f.kind().starts_with("net-");
        let pg: Vec<Scenario> = (0..200)
            .map(|i| {
                generate(
                    "n",
                    run_seed(3, i),
                    &target(Backend::Postgres, CommitMode::Atomic),
                )
            })
            .collect();
        let kinds: BTreeSet<&str> = pg
            .iter()
            .flat_map(|s| s.faults.iter().filter(|f| net(f)).map(FaultSpec::kind))
            .collect();
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["net-delay", "net-loss", "net-partition"]
        );
        for s in pg.iter().filter(|s| s.faults.iter().any(net)) {
            assert_eq!(s.backends, [Backend::Postgres]);
            assert!(s.plan(1, None).is_ok_and(|p| p.needs_netns()));
        }
        for i in 0..200 {
            let s = generate(
                "n",
                run_seed(3, i),
                &target(Backend::Sqlite, CommitMode::Atomic),
            );
            assert!(!s.faults.iter().any(net));
        }
    }

    proptest! {
        #[test]
        fn schedules_are_valid_and_reproducible(seed in any::<u64>(), pg in any::<bool>(), split in any::<bool>()) {
            let t = target(
                if pg { Backend::Postgres } else { Backend::Sqlite },
                if split { CommitMode::Split } else { CommitMode::Atomic },
            );
            let a = generate("p", seed, &t);
            let b = generate("p", seed, &t);
            prop_assert_eq!(toml::to_string(&a).expect("ser"), toml::to_string(&b).expect("ser"));
            let plan = a.plan(seed, None);
            prop_assert!(plan.is_ok(), "{:?}", plan.err());
            let plan = plan.expect("checked");
            prop_assert!(!plan.faults.is_empty());
            prop_assert!((1..=3).contains(&plan.instances));
            prop_assert_eq!(plan.commit_mode, t.commit_mode);
            // Connection and server faults only where a PostgreSQL server is in use.
            prop_assert!(pg || !a.faults.iter().any(FaultSpec::is_global));
            prop_assert!(crate::scenario::skip_reason(&plan, t.backend).is_none());
        }

        #[test]
        fn shrinking_never_grows_and_stays_valid(seed in any::<u64>(), keep in 0usize..4, budget in 1usize..60) {
            let t = target(Backend::Postgres, CommitMode::Split);
            let s = generate("p", seed, &t);
            // A synthetic failure: "fails" while it still has at least `keep` faults' worth of size left.
            let r = shrink::shrink(&s, budget, |c| c.faults.len() >= keep.min(s.faults.len()));
            prop_assert!(r.attempts <= budget);
            prop_assert!(shrink::size(&r.minimal) <= shrink::size(&s));
            prop_assert!(r.minimal.plan(seed, None).is_ok());
            let mut prev = shrink::size(&s);
            for step in &r.steps {
                let now = shrink::size(step);
                prop_assert!(now < prev, "a step grew: {:?} -> {:?}", prev, now);
                prev = now;
            }
            for c in shrink::candidates(&s) {
                prop_assert!(shrink::size(&c) < shrink::size(&s));
                prop_assert!(c.plan(seed, None).is_ok());
            }
        }
    }
}
