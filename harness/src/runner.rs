//! Runs one scenario plan: a fresh database, fixtures, N processor child processes (each in its own process
//! group), the scheduled faults, restarts, a convergence phase with a deadline, then the checker. Everything waits
//! on conditions (events, exits, clocks) with deadlines; nothing sleeps in place of waiting.

use crate::check::{self, CheckReport, Invariant, Violation};
use crate::db::Launcher;
use crate::proxy::{CutMode, FaultProxy, ProxyStats};
use crate::scenario::{Action, Expectation, Fault, Plan, ResumeOn, Trigger};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use processor::events::{Body, Event, EventKind, FinishReason};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How the harness starts a processor: by default itself (`harness processor …`, the only processor with crash points),
/// or any binary speaking the processor CLI (`--processor-bin`, `SHREDPROOF_PROCESSOR_BIN`).
#[derive(Debug, Clone)]
pub struct ProcessorCmd {
    pub program: PathBuf,
    pub prefix: Vec<String>,
}

impl ProcessorCmd {
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(ProcessorCmd {
            program: std::env::current_exe()?,
            prefix: vec!["processor".into()],
        })
    }
    pub fn external(path: PathBuf) -> Self {
        ProcessorCmd {
            program: path,
            prefix: vec![],
        }
    }
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.prefix);
        c
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("database: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Setup(String),
    #[error("checker: {0}")]
    Check(#[from] check::CheckError),
    #[error("fault proxy: {0}")]
    Proxy(#[from] crate::proxy::ProxyError),
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out_dir: PathBuf,
    pub processor: ProcessorCmd,
    /// Print progress lines while running.
    pub verbose: bool,
}

/// What happened to one scheduled fault.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub fault: String,
    pub fired: bool,
    pub at_ms: Option<u64>,
    pub note: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseStats {
    /// From the first processor's start to the last one's end.
    pub wall_secs: f64,
    /// Before that: creating the phase's database; loading (or copying) its documents.
    pub database_secs: f64,
    pub fixtures_secs: f64,
    /// After it: the final check.
    pub check_secs: f64,
    pub process_starts: u32,
    pub committed_apps: u64,
    pub collisions: u64,
    pub lease_lost: u64,
    /// Applications whose work was done more than once (collisions, lost leases, uncommitted batches of killed
    /// processes are not visible here; this counts what the events show).
    pub redone: u64,
    pub apps_per_sec: f64,
    pub unexpected_exits: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseOutcome {
    pub url_redacted: String,
    pub stats: PhaseStats,
    pub faults: Vec<FaultRecord>,
    pub check: Option<CheckReport>,
    pub violations: Vec<Violation>,
    pub liveness_timeout: bool,
    pub events: usize,
    /// What the fault proxy saw, when the processors went through it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStats>,
    /// How each processor process ended, in the order the runner saw them end.
    pub processes: Vec<check::history::ProcessEnd>,
    /// The phase's time zero (fault `at_ms` counts from here) on the events' clock, µs since the epoch.
    pub t0_us: i64,
}

impl PhaseOutcome {
    pub fn violated(&self) -> BTreeSet<Invariant> {
        self.violations.iter().map(|v| v.invariant).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The expectation was met (no violations, or exactly the expected ones).
    Pass,
    /// An invariant was violated that the scenario did not expect (or an expected one was not).
    Fail,
    /// The run did not converge before its deadline.
    Liveness,
    /// A scheduled fault did not fire, or the no-fault baseline failed: the run proves nothing.
    Invalid,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioOutcome {
    pub plan: Plan,
    pub verdict: Verdict,
    pub reason: String,
    pub baseline: Option<PhaseOutcome>,
    pub main: PhaseOutcome,
    pub dir: PathBuf,
    pub wall_secs: f64,
}

/// Runs a plan: baseline (no faults) when asked, then the faulted run, then the verdict. A plan with network
/// faults runs in a network namespace of its own, on a private PostgreSQL cluster started there
/// (`netfault::run_isolated`) instead of `launcher`'s server.
pub fn run_plan(
    plan: &Plan,
    launcher: &mut dyn Launcher,
    opts: &RunOptions,
) -> Result<ScenarioOutcome, RunnerError> {
    if !plan.needs_netns() {
        return run_plan_on(plan, launcher, opts);
    }
    if launcher.backend() != crate::db::Backend::Postgres {
        return Err(RunnerError::Setup(format!(
            "scenario {}: network faults need PostgreSQL (running on {})",
            plan.name,
            launcher.backend().as_str()
        )));
    }
    crate::netfault::run_isolated(plan.instances, |l| {
        run_plan_on(plan, l, opts).map_err(|e| e.to_string())
    })
    .map_err(RunnerError::Setup)
}

fn run_plan_on(
    plan: &Plan,
    launcher: &mut dyn Launcher,
    opts: &RunOptions,
) -> Result<ScenarioOutcome, RunnerError> {
    let start = Instant::now();
    if plan.needs_restart() && !launcher.capabilities().restart {
        return Err(RunnerError::Setup(format!(
            "scenario {}: restart-db needs a database server the harness started itself (not SQLite, not --db-url); \
             {} cannot be restarted",
            plan.name,
            launcher.describe()
        )));
    }
    if plan.needs_lazyfs() && !launcher.capabilities().lose_unsynced {
        return Err(RunnerError::Setup(format!(
            "scenario {}: lose-unsynced needs a private PostgreSQL cluster the harness starts on its lazyfs layer \
             (root and /dev/fuse); {} cannot lose unsynced writes",
            plan.name,
            launcher.describe()
        )));
    }
    let dir = opts.out_dir.join(&plan.name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let contract = match &plan.contract {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            RunnerError::Setup(format!("cannot read contract {}: {e}", p.display()))
        })?,
        None => fixtures::CONTRACT_JSON.to_owned(),
    };
    let baseline = if plan.baseline {
        let bdir = dir.join("baseline");
        std::fs::create_dir_all(&bdir)?;
        let db_t0 = Instant::now();
        let url = launcher.fresh_database(&format!("{}_baseline", plan.name))?;
        let database_secs = db_t0.elapsed().as_secs_f64();
        let mut ph = run_phase(
            plan,
            &url,
            &[],
            &bdir,
            opts,
            launcher,
            &contract,
            None,
            None,
        )?;
        ph.stats.database_secs = database_secs;
        Some((ph, url))
    } else {
        None
    };
    let (baseline, baseline_url) = match baseline {
        Some((ph, url)) => (Some(ph), Some(url)),
        None => (None, None),
    };
    let db_t0 = Instant::now();
    let url = if plan.needs_lazyfs() {
        launcher.fresh_database_lazy(&plan.name)?
    } else {
        launcher.fresh_database(&plan.name)?
    };
    let database_secs = db_t0.elapsed().as_secs_f64();
    // Under a contract outside the reference mapping's format, content is judged against the baseline's rows.
    let base_snap = baseline
        .as_ref()
        .and_then(|b| b.check.as_ref())
        .and_then(|c| c.snapshot.as_ref());
    let mut main = run_phase(
        plan,
        &url,
        &plan.faults,
        &dir,
        opts,
        launcher,
        &contract,
        base_snap,
        baseline_url.as_deref(),
    )?;
    main.stats.database_secs = database_secs;
    let (verdict, reason) = verdict(plan, baseline.as_ref(), &main);
    Ok(ScenarioOutcome {
        plan: plan.clone(),
        verdict,
        reason,
        baseline,
        main,
        dir,
        wall_secs: start.elapsed().as_secs_f64(),
    })
}

fn verdict(plan: &Plan, baseline: Option<&PhaseOutcome>, main: &PhaseOutcome) -> (Verdict, String) {
    if let Some(b) = baseline {
        if !b.violations.is_empty() {
            let names: Vec<&str> = b.violated().iter().map(|i| i.name()).collect();
            return (
                Verdict::Invalid,
                format!("no-fault baseline violated {}", names.join(", ")),
            );
        }
    }
    let violated = main.violated();
    if violated.contains(&Invariant::FaultsFired) {
        // Say exactly which fault and why: an INVALID run must be actionable without opening its files.
        let why: Vec<&str> = main
            .violations
            .iter()
            .filter(|v| v.invariant == Invariant::FaultsFired)
            .map(|v| v.message.as_str())
            .collect();
        return (
            Verdict::Invalid,
            format!("a scheduled fault did not fire: {}", why.join("; ")),
        );
    }
    match plan.expectation {
        Expectation::Pass if violated.is_empty() => (Verdict::Pass, "no violations".into()),
        Expectation::Pass if main.liveness_timeout => (
            Verdict::Liveness,
            "did not converge before the deadline".into(),
        ),
        Expectation::Pass => {
            let names: Vec<&str> = violated.iter().map(|i| i.name()).collect();
            (Verdict::Fail, format!("violated {}", names.join(", ")))
        }
        Expectation::Violations => {
            let want: BTreeSet<Invariant> = plan.expected_violations.iter().copied().collect();
            let names =
                |s: &BTreeSet<Invariant>| s.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ");
            if want == violated {
                (
                    Verdict::Pass,
                    format!("caught the expected violations: {}", names(&violated)),
                )
            } else {
                (
                    Verdict::Fail,
                    format!(
                        "expected violations [{}], got [{}]",
                        names(&want),
                        names(&violated)
                    ),
                )
            }
        }
    }
}

/// One running (or finished) processor instance.
struct Inst {
    id: u32,
    child: Option<Child>,
    starts: u32,
    events: Vec<(PathBuf, u64)>,
    commits: u64,
    /// Set while we expect the process to die or exit because of a fault.
    expecting: Option<Action>,
    paused_until: Option<Instant>,
    /// Parked at a crash point until an event resumes it: the fault index, the condition, when it parked (the
    /// `crash_point` event's `ts_us`) and the applications it had claimed last.
    parked_on: Option<(usize, ResumeOn, i64, BTreeSet<i64>)>,
    /// The applications of this instance's latest `claimed` event.
    last_claim: BTreeSet<i64>,
    finished: bool,
    crash_armed: bool,
    /// An exit we did not expect was seen once: judge it on the next pass, after its last events were read (a
    /// process writes its `crash_point` event and dies between two of our reads).
    exit_seen: bool,
    /// This start fired a crash point whose action is `kill`: it must now die by SIGKILL, nothing else.
    crash_fired: Option<String>,
    /// A `clock-skew` fault: every start of this instance runs with `PROCESSOR_CLOCK_SKEW_MS` set to it.
    clock_skew_ms: Option<i64>,
}

struct Phase<'a> {
    plan: &'a Plan,
    url: &'a str,
    dir: &'a Path,
    opts: &'a RunOptions,
    t0: Instant,
    all_events: Vec<Event>,
    stats: PhaseStats,
    /// How every process ended (history invariants, report timeline).
    ends: Vec<check::history::ProcessEnd>,
    /// Process-fate violations found as processes end (`crash-kills`, `clean-drain`).
    fate: Vec<Violation>,
}

impl FaultRecord {
    fn new(f: &Fault) -> Self {
        FaultRecord {
            fault: f.describe(),
            fired: false,
            at_ms: None,
            note: String::new(),
        }
    }
}

/// The open state of the global (proxy and server) faults: a blackhole or latency window still open, an armed
/// cut-reply waiting for its COMMIT (fault index and the proxy's cut count when armed), faults that could not be
/// carried out.
#[derive(Default)]
struct GlobalFaults {
    busy_until: Option<Instant>,
    cut_waiting: Option<(usize, usize)>,
    abandoned: BTreeSet<usize>,
    /// Open `net-loss` / `net-partition` windows (nftables rule sets to remove when they end).
    net: crate::netfault::Windows,
}

/// An armed cut-reply / drop-commit fault fires when the proxy has cut a COMMIT since it was armed: recorded with
/// what the server said (or that it never saw the COMMIT).
fn note_commit_cut(
    globals: &mut GlobalFaults,
    proxy: Option<&FaultProxy>,
    records: &mut [FaultRecord],
    last_fault: &mut Instant,
) {
    let (Some((fi, base)), Some(p)) = (globals.cut_waiting, proxy) else {
        return;
    };
    let cuts = p.cuts();
    if cuts.len() <= base {
        return;
    }
    records[fi].fired = true;
    records[fi].note = match cuts[base].server_said.as_str() {
        "never sent" => format!(
            "{}; the COMMIT was swallowed before the server, the client saw a reset",
            records[fi].note
        ),
        said => format!(
            "{}; the server answered {said} to the COMMIT, the client saw a reset",
            records[fi].note
        ),
    };
    globals.cut_waiting = None;
    *last_fault = Instant::now();
}

/// The fault scheduler's step: fires every pending fault that is due. Instance faults (signals to a process
/// group) first: they are instant, while a server restart blocks until the server is back, and an instance fault
/// due at the same moment must not miss its chance while the run races on. A fault fired is recorded in
/// `records`, and `last_fault` is set to now.
#[allow(clippy::too_many_arguments)]
fn fire_due_faults(
    ph: &Phase<'_>,
    faults: &[Fault],
    insts: &mut [Inst],
    pending: &[usize],
    records: &mut [FaultRecord],
    proxy: Option<&FaultProxy>,
    launcher: &mut dyn Launcher,
    globals: &mut GlobalFaults,
    last_fault: &mut Instant,
) {
    let now_ms = ph.t0.elapsed().as_millis() as u64;
    let total_commits: u64 = insts.iter().map(|i| i.commits).sum();
    let any_running = insts.iter().any(|i| i.child.is_some());
    // Instance faults first: they are instant, while a server restart blocks this loop until the server is back,
    // and an instance fault due at the same moment must not miss its chance while the run races on.
    let mut order = pending.to_vec();
    order.sort_by_key(|&fi| faults[fi].action.is_global());
    for &fi in &order {
        let f = faults[fi];
        if f.action.is_global() {
            let due = match f.trigger {
                Trigger::CrashEnv => false,
                Trigger::AtMs(ms) => now_ms >= ms,
                Trigger::AfterCommits(n) => total_commits >= n,
            };
            if !due || !any_running || globals.cut_waiting.is_some_and(|(w, _)| w == fi) {
                continue;
            }
            let rec = &mut records[fi];
            let after = format!("after {total_commits} commits");
            match (f.action, proxy) {
                (Action::RestartDb | Action::LoseUnsynced, _) => {
                    if !crash_server(launcher, f.action, &after, rec) {
                        globals.abandoned.insert(fi);
                    }
                }
                (Action::DropConnections, Some(p)) => {
                    // With no connection open there is nothing to drop yet: try again on the next poll.
                    let n = p.reset_all();
                    if n == 0 {
                        continue;
                    }
                    rec.fired = true;
                    rec.note = format!("reset {n} connection(s) {after}");
                }
                (Action::Blackhole { duration_ms }, Some(p)) => {
                    let d = Duration::from_millis(duration_ms);
                    p.blackhole(d);
                    rec.fired = true;
                    rec.note = format!("blackholed {} connection(s) {after}", p.open_connections());
                    globals.busy_until = globals.busy_until.max(Some(Instant::now() + d));
                }
                (Action::Latency { ms, duration_ms }, Some(p)) => {
                    let d = Duration::from_millis(duration_ms);
                    p.latency(Duration::from_millis(ms), d);
                    rec.fired = true;
                    rec.note = format!("latency on {} connection(s) {after}", p.open_connections());
                    globals.busy_until = globals.busy_until.max(Some(Instant::now() + d));
                }
                (Action::CutReply | Action::DropCommit, Some(p)) => {
                    // One armed cut at a time, so each cut proves exactly one fault.
                    if globals.cut_waiting.is_some() {
                        continue;
                    }
                    p.arm_cut(if f.action == Action::DropCommit {
                        CutMode::Commit
                    } else {
                        CutMode::Reply
                    });
                    globals.cut_waiting = Some((fi, p.cuts().len()));
                    rec.note = format!("armed {after}");
                }
                _ => {
                    rec.note = "no fault proxy in the path".into();
                    globals.abandoned.insert(fi);
                    continue;
                }
            }
            rec.at_ms = Some(now_ms);
            *last_fault = Instant::now();
            if ph.opts.verbose {
                eprintln!("  [{:>6}ms] {}", now_ms, f.describe());
            }
            continue;
        }
        let inst = &mut insts[f.instance as usize];
        let due = match f.trigger {
            Trigger::CrashEnv => false,
            Trigger::AtMs(ms) => now_ms >= ms,
            Trigger::AfterCommits(n) => inst.commits >= n,
        };
        let running = inst.child.is_some()
            && inst.paused_until.is_none()
            && inst.parked_on.is_none()
            && inst.expecting.is_none();
        if !due || !running {
            continue;
        }
        if let Action::Net(n) = f.action {
            fire_net_fault(ph, fi, &f, &n, inst.commits, records, globals);
            *last_fault = Instant::now();
            continue;
        }
        let pid = Pid::from_raw(inst.child.as_ref().map_or(0, |c| c.id() as i32));
        let sig = match f.action {
            Action::Kill => Signal::SIGKILL,
            Action::Pause { .. } => Signal::SIGSTOP,
            Action::Stop => Signal::SIGTERM,
            _ => continue,
        };
        if killpg(pid, sig).is_ok() {
            records[fi].fired = !matches!(f.action, Action::Stop); // a stop counts once the drain exits 0
            records[fi].at_ms = Some(now_ms);
            records[fi].note = format!(
                "{sig} to process group {pid} after {} commits",
                inst.commits
            );
            match f.action {
                Action::Pause { duration_ms } => {
                    inst.paused_until = Some(Instant::now() + Duration::from_millis(duration_ms))
                }
                a => inst.expecting = Some(a),
            }
            *last_fault = Instant::now();
            if ph.opts.verbose {
                eprintln!("  [{:>6}ms] {}", now_ms, f.describe());
            }
        }
    }
}

/// `restart-db` / `lose-unsynced`: the server SIGKILLed (for `lose-unsynced` its unsynced writes dropped too) and
/// started again; the record says how. Returns whether it fired (a failure abandons the fault).
fn crash_server(
    launcher: &mut dyn Launcher,
    action: Action,
    after: &str,
    rec: &mut FaultRecord,
) -> bool {
    let t = Instant::now();
    let done = if action == Action::LoseUnsynced {
        launcher
            .lose_unsynced()
            .map(|note| format!("{note} ({after})"))
    } else {
        launcher.restart().map(|()| {
            format!(
                "postmaster SIGKILLed {after}, back up in {} ms",
                t.elapsed().as_millis()
            )
        })
    };
    match done {
        Ok(note) => {
            rec.fired = true;
            rec.note = note;
            true
        }
        Err(e) => {
            rec.note = format!(
                "{} failed: {e}",
                if action == Action::LoseUnsynced {
                    "lose-unsynced"
                } else {
                    "restart"
                }
            );
            false
        }
    }
}

/// Applies a network fault's rules (`netfault::Windows::open`); a failure abandons it (never fired: `faults-fired`).
fn fire_net_fault(
    ph: &Phase<'_>,
    fi: usize,
    f: &Fault,
    n: &crate::netfault::NetFault,
    commits: u64,
    records: &mut [FaultRecord],
    globals: &mut GlobalFaults,
) {
    let now_ms = ph.t0.elapsed().as_millis() as u64;
    match globals.net.open(fi, f.instance, ph.url, n) {
        Ok(note) => {
            records[fi].fired = true;
            records[fi].at_ms = Some(now_ms);
            records[fi].note = format!("{note} after {commits} commits");
            if ph.opts.verbose {
                eprintln!("  [{:>6}ms] {}", now_ms, f.describe());
            }
        }
        Err(e) => {
            records[fi].note = format!("could not apply: {e}");
            globals.abandoned.insert(fi);
        }
    }
}

/// Ends the network-fault windows that are over (all of them with `all`), noting what each dropped.
fn close_net_windows(
    globals: &mut GlobalFaults,
    records: &mut [FaultRecord],
    last_fault: &mut Instant,
    all: bool,
) {
    for (fi, note) in globals.net.close_due(all) {
        records[fi].note = format!("{}; {note}", records[fi].note);
        *last_fault = Instant::now();
    }
}

/// The instance supervisor's step for one instance: when its process has ended (seen on the pass after the exit,
/// so its last events are read), records how (`ProcessEnd`, the process-fate invariants from `check::history`),
/// credits a `stop` fault whose drain ended, and restarts the instance when the plan says so.
fn supervise_exit(
    ph: &mut Phase<'_>,
    inst: &mut Inst,
    records: &mut [FaultRecord],
    faults: &[Fault],
) -> Result<(), RunnerError> {
    let status = match inst.child.as_mut().map(Child::try_wait) {
        Some(Ok(Some(s))) => s,
        _ => return Ok(()),
    };
    if !inst.exit_seen {
        // Judge every exit on the next pass, after its last events were read (`try_wait` keeps returning
        // the reaped status, so the child stays in place until then).
        inst.exit_seen = true;
        return Ok(());
    }
    inst.exit_seen = false;
    let pid = inst.child.as_ref().map_or(0, Child::id);
    inst.child = None;
    let expecting = inst.expecting.take();
    let killed = status.signal() == Some(Signal::SIGKILL as i32);
    let crash_fired = inst.crash_fired.take();
    ph.ends.push(check::history::ProcessEnd {
        instance: inst.id,
        start: inst.starts,
        pid,
        status: describe_status(status),
        killed_by_harness: killed && crash_fired.is_none() && expecting == Some(Action::Kill),
        ended_us: chrono::Utc::now().timestamp_micros(),
        violation: None,
    });
    let log = ph.log_path(inst.id, inst.starts).display().to_string();
    let fate = match ph.ends.last() {
        Some(end) => check::history::process_fate(&check::history::Fate {
            end,
            sigkilled: killed,
            exited_ok: status.success(),
            crash_fired: crash_fired.as_deref(),
            sigterm_sent: expecting == Some(Action::Stop),
            finished: drain_finish(&ph.all_events, pid),
            log: &log,
        }),
        None => Vec::new(),
    };
    if let (Some(v), Some(end)) = (fate.last(), ph.ends.last_mut()) {
        end.violation = Some(v.invariant);
    }
    ph.fate.extend(fate);
    match expecting {
        Some(Action::Stop) if status.success() && drain_finish(&ph.all_events, pid).is_some() => {
            // Scenario C: the drain finished cleanly. The stop fault has now fired.
            if let Some((r, _)) = records
                .iter_mut()
                .zip(faults)
                .find(|(r, f)| !r.fired && f.instance == inst.id && f.action == Action::Stop)
            {
                r.fired = true;
                r.note.push_str("; drained and exited 0");
            }
            if ph.plan.restarts {
                ph.spawn(inst, None)?;
            } else {
                inst.finished = true;
            }
        }
        Some(Action::Stop) => {
            // Reported as `clean-drain` above. The stop fault did fire (the signal was delivered).
            if let Some((r, _)) = records
                .iter_mut()
                .zip(faults)
                .find(|(r, f)| !r.fired && f.instance == inst.id && f.action == Action::Stop)
            {
                r.fired = true;
                r.note.push_str(&format!(
                    "; ended with {} without draining",
                    describe_status(status)
                ));
            }
            if ph.plan.restarts {
                ph.spawn(inst, None)?;
            } else {
                inst.finished = true;
            }
        }
        Some(_) if killed => {
            if ph.plan.restarts {
                ph.spawn(inst, None)?;
            } else {
                inst.finished = true;
            }
        }
        _ if status.success() => inst.finished = true,
        _ => {
            let log = ph.log_path(inst.id, inst.starts);
            ph.stats.unexpected_exits.push(format!(
                "instance {} start {} exited unexpectedly: {}{} (log {})",
                inst.id,
                inst.starts,
                describe_status(status),
                last_error_line(&log)
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default(),
                log.display()
            ));
            inst.finished = true;
        }
    }
    Ok(())
}

/// The last line of an instance's log that says why it failed (`error: …`, or an ERROR log line), so an unexpected
/// exit is explained in the report itself: the log lives in the run's directory, which a test removes.
fn last_error_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| l.starts_with("error:") || l.contains("ERROR"))
        .map(|l| l.trim().chars().take(400).collect())
}

/// The fault proxy when the plan's faults need it in the path (the baseline of such a plan goes through it too, as
/// a control), and the URL the processors use. Fixtures and the checker talk to the server directly.
fn start_proxy(plan: &Plan, url: &str) -> Result<(Option<FaultProxy>, String), RunnerError> {
    let proxy = if plan.needs_proxy() {
        let (upstream, _) =
            crate::proxy::route_url(url, std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
        Some(FaultProxy::start(&upstream)?)
    } else {
        None
    };
    let proc_url = match &proxy {
        Some(p) => crate::proxy::route_url(url, p.addr())?.1,
        None => url.to_owned(),
    };
    Ok((proxy, proc_url))
}

/// The checker on the final database, then the history invariants: every instance's events as one history, with
/// how each process ended and the final processing_log (check/history.rs). Violations go to `violations`.
fn check_final(
    url: &str,
    plan: &Plan,
    contract_json: &str,
    ph: &Phase<'_>,
    baseline: Option<&check::baseline::Snapshot>,
    violations: &mut Vec<Violation>,
) -> Result<check::CheckReport, RunnerError> {
    let mut reader = open_reader_patiently(url, plan.needs_restart())?;
    let report = check::check_database_rejecting(
        reader.as_mut(),
        contract_json,
        &ph.all_events,
        baseline,
        plan.rejection.as_ref(),
    )?;
    violations.extend(report.violations.iter().cloned());
    let log = check::history::read_log(reader.as_mut(), contract_json)?;
    violations.extend(check::history::check(&ph.all_events, &ph.ends, Some(&log)));
    // Only kills, stops and stalls: nothing but the processor itself could keep a stalled session's heartbeat
    // from renewing.
    let quiet = plan.faults.iter().all(|f| match f.action {
        Action::CrashPoint {
            pause_ms,
            resume_on,
            ..
        } => pause_ms.is_none() && resume_on.is_none(),
        // A skewed clock keeps no heartbeat from the database: leases are on the database's clock.
        Action::Kill | Action::Stop | Action::ClockSkew { .. } => true,
        _ => false,
    });
    violations.extend(check::history::leases_kept(&ph.all_events, quiet));
    Ok(report)
}

/// The phase's counts from its events: applications committed, collisions, leases lost, throughput.
fn count_events(stats: &mut PhaseStats, events: &[Event]) {
    let (committed_apps, collisions, lease_lost) = event_counts(events);
    stats.committed_apps = committed_apps;
    stats.collisions = collisions;
    stats.lease_lost = lease_lost;
    stats.redone = collisions + lease_lost;
    stats.apps_per_sec = stats.committed_apps as f64 / stats.wall_secs.max(1e-9);
}

/// (applications committed at least once, applications in `collision` events, in `lease_lost` events).
fn event_counts(events: &[Event]) -> (u64, u64, u64) {
    let mut committed_by: HashMap<i64, u32> = HashMap::new();
    let mut collisions = 0;
    let mut lease_lost = 0;
    for e in events {
        match e.kind() {
            EventKind::Committed => {
                for a in &e.app_ids {
                    *committed_by.entry(*a).or_default() += 1;
                }
            }
            EventKind::Collision => collisions += e.app_ids.len() as u64,
            EventKind::LeaseLost => lease_lost += e.app_ids.len() as u64,
            _ => {}
        }
    }
    (committed_by.len() as u64, collisions, lease_lost)
}

/// The fault scheduler's first step: reads every instance's new events, counts commits and claims, and records
/// crash-point faults as fired from their `crash_point` event (they fire inside the process), parking or
/// expecting the kill as the fault says.
fn read_events(
    ph: &mut Phase<'_>,
    insts: &mut [Inst],
    faults: &[Fault],
    pending: &[usize],
    records: &mut [FaultRecord],
) -> Result<(), RunnerError> {
    for inst in insts.iter_mut() {
        for ev in read_new_events(inst)? {
            if ev.kind() == EventKind::Committed {
                inst.commits += 1;
            }
            if ev.kind() == EventKind::Claimed {
                inst.last_claim = ev.app_ids.iter().copied().collect();
            }
            if let Body::Started { detail } = &ev.body {
                note_clock_skew(ph, inst.id, detail.clock_skew_ms, faults, pending, records);
            }
            if let Body::CrashPoint { point, nth, .. } = &ev.body {
                // Crash-point faults fire inside the process; the event is the proof.
                let mut park_ms = None;
                let mut park_on = None;
                let mut stalls = false;
                for &fi in pending {
                    if faults[fi].instance == inst.id {
                        match faults[fi].action {
                            Action::CrashPoint {
                                stall_ms: Some(_), ..
                            } => stalls = true,
                            Action::CrashPoint {
                                resume_on: Some(r), ..
                            } => park_on = Some((fi, r)),
                            Action::CrashPoint {
                                pause_ms: Some(ms), ..
                            } => park_ms = Some(ms),
                            _ => {}
                        }
                    }
                    if faults[fi].instance == inst.id
                        && matches!(faults[fi].action, Action::CrashPoint { .. })
                    {
                        records[fi].fired = true;
                        records[fi].at_ms = Some(ph.t0.elapsed().as_millis() as u64);
                        records[fi].note = format!("crash_point {point} nth {nth}");
                    }
                }
                match (park_on, park_ms) {
                    // A stall: the process sleeps at the point on its own and goes on; nothing to do or expect.
                    _ if stalls => {}
                    // Parked until another instance's event says the moment has come (see step 3b).
                    (Some((fi, r)), _) => {
                        inst.parked_on = Some((fi, r, ev.ts_us, inst.last_claim.clone()))
                    }
                    // The process stopped itself at the point; resume it when the pause is over.
                    (None, Some(ms)) => {
                        inst.paused_until = Some(Instant::now() + Duration::from_millis(ms))
                    }
                    (None, None) => {
                        inst.expecting = Some(Action::Kill);
                        inst.crash_fired = Some(format!("{point}:{nth}"));
                    }
                }
            }
            ph.all_events.push(ev);
        }
    }
    Ok(())
}

/// A `clock-skew` fault fires when its instance's processor reports the skew in its `started` event (the
/// processor honoured `PROCESSOR_CLOCK_SKEW_MS`; one that ignored it leaves the fault unfired: `faults-fired`).
fn note_clock_skew(
    ph: &Phase<'_>,
    instance: u32,
    reported: Option<i64>,
    faults: &[Fault],
    pending: &[usize],
    records: &mut [FaultRecord],
) {
    for &fi in pending {
        if let Action::ClockSkew { skew_ms } = faults[fi].action {
            if faults[fi].instance == instance && reported == Some(skew_ms) {
                records[fi].fired = true;
                records[fi].at_ms = Some(ph.t0.elapsed().as_millis() as u64);
                records[fi].note = format!("started with its clock {skew_ms:+} ms off");
            }
        }
    }
}

/// Resumes (SIGCONT) every instance parked at a crash point whose resume event has come, or can no longer come
/// (the awaited instance ended: then the run proves nothing, noted in `unmet`).
fn resume_parked(
    ph: &Phase<'_>,
    insts: &mut [Inst],
    faults: &[Fault],
    records: &mut [FaultRecord],
    unmet: &mut Vec<String>,
    last_fault: &mut Instant,
) {
    for i in 0..insts.len() {
        let Some((fi, r, since, claim)) = insts[i].parked_on.clone() else {
            continue;
        };
        let hit = ph.all_events.iter().find(|e| {
            e.instance_id == r.instance
                && e.ts_us >= since
                && r.matches(e.kind())
                && (e.app_ids.is_empty() || e.app_ids.iter().any(|a| claim.contains(a)))
        });
        let awaited = &insts[r.instance as usize];
        let note = match hit {
            Some(e) => format!(
                "; resumed when instance {} wrote {}",
                r.instance,
                e.kind().as_str()
            ),
            None if awaited.finished && awaited.child.is_none() => {
                // It will never come: resume so the run can end, and say why the run proves nothing.
                unmet.push(format!(
                    "{}: instance {} ended without writing the event that resumes instance {}",
                    faults[fi].describe(),
                    r.instance,
                    insts[i].id
                ));
                format!("; instance {} ended first, resumed anyway", r.instance)
            }
            None => continue,
        };
        records[fi].note.push_str(&note);
        let inst = &mut insts[i];
        if let Some(c) = &inst.child {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
        }
        inst.parked_on = None;
        *last_fault = Instant::now();
    }
}

/// One not-yet-started instance per `plan.instances`, each knowing whether a crash point is armed on it.
fn new_instances(plan: &Plan, faults: &[Fault]) -> Vec<Inst> {
    (0..plan.instances)
        .map(|id| Inst {
            id,
            child: None,
            starts: 0,
            events: vec![],
            commits: 0,
            expecting: None,
            paused_until: None,
            parked_on: None,
            last_claim: BTreeSet::new(),
            finished: false,
            exit_seen: false,
            crash_fired: None,
            clock_skew_ms: crate::scenario::clock_skew_of(faults, id),
            crash_armed: faults
                .iter()
                .any(|f| f.instance == id && matches!(f.action, Action::CrashPoint { .. })),
        })
        .collect()
}

/// SIGCONT to every paused instance whose pause is over.
fn end_pauses(insts: &mut [Inst], last_fault: &mut Instant) {
    for inst in insts.iter_mut() {
        if inst
            .paused_until
            .is_some_and(|until| Instant::now() >= until)
        {
            if let Some(c) = &inst.child {
                let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            }
            inst.paused_until = None;
            *last_fault = Instant::now();
        }
    }
}

/// The liveness deadline passed: SIGKILL every process still running (resumed first if stopped) and record how
/// it ended.
fn kill_all_for_liveness(ph: &mut Phase<'_>, insts: &mut [Inst]) {
    for inst in insts.iter_mut() {
        if let Some(c) = inst.child.as_mut() {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let status = c.wait().map(describe_status).unwrap_or_default();
            ph.ends.push(check::history::ProcessEnd {
                instance: inst.id,
                start: inst.starts,
                pid: c.id(),
                status,
                killed_by_harness: true,
                ended_us: chrono::Utc::now().timestamp_micros(),
                violation: None,
            });
        }
    }
}

/// The crash point armed on `instance`'s first start, if its plan has one.
fn armed_crash(faults: &[Fault], instance: u32) -> Option<Fault> {
    faults
        .iter()
        .find(|f| f.instance == instance && matches!(f.action, Action::CrashPoint { .. }))
        .copied()
}

/// `run.staggered`: starts the next held-back instance once the one before it has written a `claimed` or
/// `committed` event, or has ended (so a predecessor with nothing to do cannot hold the rest back forever).
fn start_staggered(
    ph: &mut Phase<'_>,
    insts: &mut [Inst],
    faults: &[Fault],
    unstarted: &mut Vec<u32>,
) -> Result<(), RunnerError> {
    let Some(&next) = unstarted.first() else {
        return Ok(());
    };
    let before = next - 1;
    let got_work = ph.all_events.iter().any(|e| {
        e.instance_id == before && matches!(e.kind(), EventKind::Claimed | EventKind::Committed)
    });
    let ended = insts[before as usize].finished;
    if got_work || ended {
        unstarted.remove(0);
        ph.spawn(&mut insts[next as usize], armed_crash(faults, next))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_phase(
    plan: &Plan,
    url: &str,
    faults: &[Fault],
    dir: &Path,
    opts: &RunOptions,
    launcher: &mut dyn Launcher,
    contract_json: &str,
    baseline: Option<&check::baseline::Snapshot>,
    copy_from: Option<&str>,
) -> Result<PhaseOutcome, RunnerError> {
    let fixtures_t0 = fill_database(plan, copy_from, url, dir, opts, contract_json)?;
    add_rejection(plan, url, contract_json)?;
    // Connection faults need the proxy in the path; the baseline of such a plan goes through it too (as a control).
    // Fixtures and the checker talk to the server directly.
    let (proxy, proc_url) = start_proxy(plan, url)?;
    let mut ph = Phase {
        plan,
        url: &proc_url,
        dir,
        opts,
        t0: Instant::now(),
        all_events: Vec::new(),
        stats: PhaseStats::default(),
        ends: Vec::new(),
        fate: Vec::new(),
    };
    let mut insts = new_instances(plan, faults);
    let mut records: Vec<FaultRecord> = faults.iter().map(FaultRecord::new).collect();
    let mut pending: Vec<usize> = (0..faults.len()).collect();
    ph.t0 = Instant::now();
    let t0_us = chrono::Utc::now().timestamp_micros();
    // `run.staggered`: only instance 0 now, the others by `start_staggered` as their predecessors get work.
    let mut unstarted: Vec<u32> = Vec::new();
    for inst in insts.iter_mut() {
        if plan.staggered && inst.id > 0 {
            unstarted.push(inst.id);
        } else {
            ph.spawn(inst, armed_crash(faults, inst.id))?;
        }
    }
    let deadline = Duration::from_secs(plan.deadline_secs);
    let mut last_fault = Instant::now();
    let mut liveness_timeout = false;
    let poll = Duration::from_millis(5);
    // Global faults: a blackhole or latency window still open, an armed cut-reply waiting for its COMMIT (fault
    // index and the proxy's cut count when armed), faults that could not be carried out.
    let mut globals = GlobalFaults::default();
    // Event-resumed parks whose event never came: the run cannot prove what its scenario says.
    let mut unmet: Vec<String> = Vec::new();
    loop {
        // 1. Events.
        read_events(&mut ph, &mut insts, faults, &pending, &mut records)?;
        start_staggered(&mut ph, &mut insts, faults, &mut unstarted)?;
        // 1b. Parked instances whose resume event has come (or can no longer come).
        resume_parked(
            &ph,
            &mut insts,
            faults,
            &mut records,
            &mut unmet,
            &mut last_fault,
        );
        note_commit_cut(&mut globals, proxy.as_ref(), &mut records, &mut last_fault);
        if globals.busy_until.is_some_and(|t| Instant::now() >= t) {
            globals.busy_until = None;
            last_fault = Instant::now();
        }
        close_net_windows(&mut globals, &mut records, &mut last_fault, false);
        pending.retain(|&fi| !records[fi].fired && !globals.abandoned.contains(&fi));
        // 2. Due faults.
        fire_due_faults(
            &ph,
            faults,
            &mut insts,
            &pending,
            &mut records,
            proxy.as_ref(),
            launcher,
            &mut globals,
            &mut last_fault,
        );
        // 3. Pauses that are over.
        end_pauses(&mut insts, &mut last_fault);
        // 4. Exits and restarts.
        for inst in insts.iter_mut() {
            supervise_exit(&mut ph, inst, &mut records, faults)?;
        }
        // 5. Done, or out of time.
        let all_done = insts.iter().all(|i| i.finished && i.child.is_none());
        if all_done {
            break;
        }
        if last_fault.elapsed() > deadline {
            liveness_timeout = true;
            kill_all_for_liveness(&mut ph, &mut insts);
            break;
        }
        std::thread::sleep(poll);
    }
    close_net_windows(&mut globals, &mut records, &mut last_fault, true);
    // Final drain of event files (lines written just before exit).
    for inst in insts.iter_mut() {
        ph.all_events.extend(read_new_events(inst)?);
    }
    ph.stats.wall_secs = ph.t0.elapsed().as_secs_f64();
    let proxy_stats = proxy.as_ref().map(FaultProxy::stats);
    drop(proxy);
    let mut violations = Vec::new();
    // Runner-level invariants (check/history.rs), from what the fault scheduler and the supervisor saw.
    let unfired: Vec<String> = records
        .iter()
        .zip(faults)
        .filter(|(r, _)| !r.fired)
        .map(|(_, f)| f.describe())
        .collect();
    violations.extend(check::history::run_invariants(&check::history::RunFacts {
        unfired: &unfired,
        unmet_resumes: &unmet,
        timed_out_after_secs: liveness_timeout.then_some(plan.deadline_secs),
        unexpected_exits: &ph.stats.unexpected_exits,
    }));
    violations.append(&mut ph.fate);
    count_events(&mut ph.stats, &ph.all_events);
    // The checker, on the final database.
    ph.all_events.sort_by_key(|e| e.ts_us);
    write_events(&dir.join("events.jsonl"), &ph.all_events)?;
    let check_t0 = Instant::now();
    let report = check_final(url, plan, contract_json, &ph, baseline, &mut violations)
        .map_err(|e| with_unfired_notes(e, &records))?;
    ph.stats.check_secs = check_t0.elapsed().as_secs_f64();
    ph.stats.fixtures_secs = (ph.t0 - fixtures_t0).as_secs_f64();
    Ok(PhaseOutcome {
        url_redacted: processor::store::url::redact_url(url),
        stats: ph.stats,
        faults: records,
        check: Some(report),
        violations,
        liveness_timeout,
        events: ph.all_events.len(),
        proxy: proxy_stats,
        processes: ph.ends,
        t0_us,
    })
}

/// A setup error (the checker could not connect) names why each fault that did not fire failed: a server restart
/// that never came back is the usual cause, and the error alone would hide it.
fn with_unfired_notes(e: RunnerError, records: &[FaultRecord]) -> RunnerError {
    let notes: Vec<String> = records
        .iter()
        .filter(|r| !r.fired && !r.note.is_empty())
        .map(|r| format!("{}: {}", r.fault, r.note))
        .collect();
    match e {
        RunnerError::Setup(msg) if !notes.is_empty() => RunnerError::Setup(format!(
            "{msg} (faults that did not fire: {})",
            notes.join("; ")
        )),
        e => e,
    }
}

/// Opens the checker's reader. After a server restart the server may still be in crash recovery when the last
/// processor exits (it accepts TCP but refuses logins until recovery ends): retry until a deadline instead of
/// failing the scenario, and name the last error if it never comes back.
fn open_reader_patiently(
    url: &str,
    after_restart: bool,
) -> Result<Box<dyn check::Reader>, RunnerError> {
    let deadline = Instant::now() + Duration::from_secs(if after_restart { 60 } else { 10 });
    loop {
        match check::open_reader(url) {
            Ok(r) => return Ok(r),
            Err(e) if Instant::now() < deadline && !url.starts_with("sqlite:") => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(RunnerError::Setup(format!(
                    "the checker could not connect to {}: {e}",
                    processor::store::url::redact_url(url)
                )))
            }
        }
    }
}

/// The `finished` reason of the session whose `started` event names `pid`, if it wrote one.
fn drain_finish(events: &[Event], pid: u32) -> Option<FinishReason> {
    let session = events
        .iter()
        .rev()
        .find(|e| e.started().is_some_and(|s| s.pid == pid))?
        .session_id
        .as_str();
    events
        .iter()
        .rev()
        .filter(|e| e.session_id == session)
        .find_map(Event::finish_reason)
}

fn describe_status(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".into(),
    }
}

impl Phase<'_> {
    fn log_path(&self, id: u32, start: u32) -> PathBuf {
        self.dir.join(format!("instance-{id}-{start}.log"))
    }

    fn spawn(&mut self, inst: &mut Inst, crash: Option<Fault>) -> Result<(), RunnerError> {
        inst.starts += 1;
        let p = self.plan;
        let events = self
            .dir
            .join(format!("events-{}-{}.jsonl", inst.id, inst.starts));
        let log = File::create(self.log_path(inst.id, inst.starts))?;
        let mut cmd = self.opts.processor.command();
        // The URL (and its password) in the environment, not on the command line: see `DB_ENV`. Under network
        // faults each instance reaches the server at an address of its own (`netfault::instance_url`).
        if p.needs_netns() {
            let url =
                crate::netfault::instance_url(self.url, inst.id).map_err(RunnerError::Setup)?;
            cmd.env(processor::store::url::DB_ENV, url);
        } else {
            cmd.env(processor::store::url::DB_ENV, self.url);
        }
        cmd.args(["run", "--log-format", "pretty", "--log-level", "info"])
            .args([
                "--mode",
                p.mode.as_str(),
                "--commit-mode",
                p.commit_mode.as_str(),
            ])
            .args([
                "--workers",
                &p.workers.to_string(),
                "--batch-size",
                &p.batch_size.to_string(),
            ])
            .args([
                "--instance-id",
                &inst.id.to_string(),
                "--instance-count",
                &p.instances.to_string(),
            ])
            .args([
                "--lease-secs",
                &p.lease_secs.to_string(),
                "--retry-give-up-secs",
                &p.deadline_secs.to_string(),
            ])
            .args(contract_args(p))
            .arg("--events")
            .arg(&events)
            .env_remove(processor::crash::CRASH_ENV)
            .env_remove(processor::clock::SKEW_ENV)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Own process group: faults signal the whole group, and the harness's terminal signals do not.
            .process_group(0);
        if let Some(Fault {
            action:
                Action::CrashPoint {
                    point,
                    nth,
                    pause_ms,
                    resume_on,
                    stall_ms,
                },
            ..
        }) = crash
        {
            if inst.crash_armed {
                let parks = pause_ms.is_some() || resume_on.is_some();
                let action = match stall_ms {
                    Some(ms) => format!(":stall={ms}"),
                    None if parks => ":pause".to_owned(),
                    None => String::new(),
                };
                cmd.env(
                    processor::crash::CRASH_ENV,
                    format!("{point}:{nth}{action}"),
                );
                inst.crash_armed = false;
            }
        }
        if let Some(ms) = inst.clock_skew_ms {
            cmd.env(processor::clock::SKEW_ENV, ms.to_string());
        }
        let child = cmd.spawn().map_err(|e| {
            RunnerError::Setup(format!(
                "cannot start processor {}: {e}",
                self.opts.processor.program.display()
            ))
        })?;
        inst.child = Some(child);
        inst.events.push((events, 0));
        self.stats.process_starts += 1;
        Ok(())
    }
}

/// Reads complete new lines from the instance's current events file.
fn read_new_events(inst: &mut Inst) -> Result<Vec<Event>, RunnerError> {
    let mut out = Vec::new();
    for (path, offset) in inst.events.iter_mut() {
        let Ok(mut f) = File::open(&*path) else {
            continue;
        };
        let len = f.metadata()?.len();
        if len <= *offset {
            continue;
        }
        f.seek(SeekFrom::Start(*offset))?;
        let mut buf = String::new();
        f.read_to_string(&mut buf)?;
        // Only whole lines: a line still being written is read next time.
        let complete = buf.rfind('\n').map_or(0, |i| i + 1);
        for line in buf[..complete].lines().filter(|l| !l.trim().is_empty()) {
            if let Ok(e) = processor::events::parse_line(line) {
                out.push(e);
            }
        }
        *offset += complete as u64;
    }
    Ok(out)
}

fn write_events(path: &Path, events: &[Event]) -> Result<(), RunnerError> {
    let mut s = String::new();
    for e in events {
        if let Ok(line) = serde_json::to_string(e) {
            s.push_str(&line);
            s.push('\n');
        }
    }
    std::fs::write(path, s)?;
    Ok(())
}

/// `fixture.reject_rows_in`: the constraint, once the schema exists (every load runs the idempotent schema step).
fn add_rejection(plan: &Plan, url: &str, contract_json: &str) -> Result<(), RunnerError> {
    let Some(r) = &plan.rejection else {
        return Ok(());
    };
    let schema = check::baseline::Layout::parse(contract_json)?.target_schema;
    crate::db::add_rejection(url, &schema, &r.table, r.every)
        .map_err(|e| RunnerError::Setup(format!("fixture.reject_rows_in = \"{}\": {e:#}", r.table)))
}

/// The phase's documents: the baseline's, copied server-side where the backend can (SQL Server), else loaded
/// again. Returns when it started (the phase's `fixtures_secs` run from there to the first processor's start).
fn fill_database(
    plan: &Plan,
    copy_from: Option<&str>,
    url: &str,
    dir: &Path,
    opts: &RunOptions,
    contract_json: &str,
) -> Result<Instant, RunnerError> {
    let t0 = Instant::now();
    if !copy_fixtures(plan, copy_from, url, opts, contract_json)? {
        load_fixtures(plan, url, dir, opts)?;
    }
    Ok(t0)
}

/// Fills the fresh database `url` with the documents the database `from` was loaded with (the same plan's
/// baseline): `processor init` for the schema, then one server-side copy (`db::copy_source`). Loading the same
/// documents again costs two `processor load` runs, each a new connection (on Babelfish its first statements are
/// parsed slowly). `false`: nothing to copy from, or this backend cannot copy, and the caller loads the fixtures.
fn copy_fixtures(
    plan: &Plan,
    from: Option<&str>,
    url: &str,
    opts: &RunOptions,
    contract_json: &str,
) -> Result<bool, RunnerError> {
    let Some(from) = from else {
        return Ok(false);
    };
    let contract = processor::contract::Contract::from_json(contract_json)
        .map_err(|e| RunnerError::Setup(format!("contract: {e}")))?;
    if !crate::db::can_copy_source(from) {
        return Ok(false);
    }
    let mut args = vec!["init".to_owned(), "--log-level".into(), "warn".into()];
    args.extend(contract_args(plan));
    run_setup(opts, url, &args, "processor init")?;
    match crate::db::copy_source(from, url, &contract) {
        Some(Ok(_)) => Ok(true),
        Some(Err(e)) => Err(RunnerError::Setup(e.to_string())),
        None => Ok(false),
    }
}

/// Runs one set-up command of the processor under test (`init`, `load`) against `url`; its failure names `what`
/// and the processor's own message.
fn run_setup<S: AsRef<std::ffi::OsStr>>(
    opts: &RunOptions,
    url: &str,
    args: &[S],
    what: &str,
) -> Result<(), RunnerError> {
    let out = opts
        .processor
        .command()
        .env(processor::store::url::DB_ENV, url)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(RunnerError::Setup(format!(
            "{what} failed ({}): {}",
            describe_status(out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Loads the plan's fixtures through `processor load` (and the edge cases through `processor load --dir`).
fn load_fixtures(plan: &Plan, url: &str, dir: &Path, opts: &RunOptions) -> Result<(), RunnerError> {
    let run = |args: &[&str], what: &str| run_setup(opts, url, args, what);
    let (n, seed, frac) = (
        plan.apps.to_string(),
        plan.fixture_seed.to_string(),
        plan.malformed_fraction.to_string(),
    );
    let contract = contract_args(plan);
    let with_contract = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| (*a).to_owned())
            .chain(contract.iter().cloned())
            .collect()
    };
    let as_strs = |v: &[String]| -> Vec<String> { v.to_vec() };
    let run = |args: Vec<String>, what: &str| -> Result<(), RunnerError> {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&refs, what)
    };
    // Generated documents come first so their ids (1..=apps) are known before a folder is staged around them.
    if plan.apps > 0 {
        run(
            as_strs(&with_contract(&[
                "load",
                "--generate",
                &n,
                "--seed",
                &seed,
                "--malformed-fraction",
                &frac,
                "--log-level",
                "warn",
            ])),
            "loading fixtures",
        )?;
    }
    let mut taken: std::collections::BTreeSet<i64> = (1..=plan.apps as i64).collect();
    if plan.edge_cases {
        taken.extend(fixtures::edge_cases().iter().map(|d| d.app_id));
    }
    if let Some((n, shape)) = &plan.real_generate {
        let shape = fixtures::realshape::Shape::parse(shape)
            .ok_or_else(|| RunnerError::Setup(format!("unknown document shape '{shape}'")))?;
        let cfg = fixtures::realshape::RealConfig {
            first_app_id: REAL_FIRST_APP_ID,
            malformed_fraction: plan.malformed_fraction,
            ..fixtures::realshape::RealConfig::new(shape, *n, plan.fixture_seed)
        };
        let gen = dir.join("generated");
        std::fs::create_dir_all(&gen)?;
        for d in fixtures::realshape::real_generate_iter(&cfg) {
            std::fs::write(gen.join(format!("{}.xml", d.app_id)), d.xml)?;
            taken.insert(d.app_id);
        }
        let e = gen.display().to_string();
        run(
            with_contract(&["load", "--dir", &e, "--log-level", "warn"]),
            "loading fixture.generate documents",
        )?;
    }
    if let Some(src) = &plan.docs_dir {
        let staged = dir.join("documents");
        let n = stage_dir(src, &staged, &taken, plan.docs_take)?;
        if n == 0 {
            return Err(RunnerError::Setup(format!(
                "fixture.dir {} holds no *.xml documents",
                src.display()
            )));
        }
        let e = staged.display().to_string();
        run(
            with_contract(&["load", "--dir", &e, "--log-level", "warn"]),
            "loading fixture.dir documents",
        )?;
    }
    if plan.edge_cases {
        let edge = dir.join("edge-cases");
        std::fs::create_dir_all(&edge)?;
        for d in fixtures::edge_cases() {
            std::fs::write(edge.join(format!("{}.xml", d.app_id)), d.xml)?;
        }
        let e = edge.display().to_string();
        run(
            with_contract(&["load", "--dir", &e, "--log-level", "warn"]),
            "loading edge cases",
        )?;
    }
    if plan.mismatched_ids > 0 {
        let mis = dir.join("mismatched-ids");
        std::fs::create_dir_all(&mis)?;
        for (app_id, xml) in mismatched_documents(plan)? {
            std::fs::write(mis.join(format!("{app_id}.xml")), xml)?;
        }
        let e = mis.display().to_string();
        run(
            with_contract(&["load", "--dir", &e, "--log-level", "warn"]),
            "loading fixture.mismatched_ids documents",
        )?;
    }
    if let Some(contacts) = plan.stress_docs {
        let stress = dir.join("stress-docs");
        std::fs::create_dir_all(&stress)?;
        for d in fixtures::stress_docs(contacts as usize) {
            std::fs::write(stress.join(format!("{}.xml", d.app_id)), &d.bytes)?;
        }
        let e = stress.display().to_string();
        run(
            with_contract(&["load", "--dir", &e, "--log-level", "error"]),
            "loading stress documents",
        )?;
    }
    Ok(())
}

/// First app_id of `fixture.generate` documents: clear of generated project documents, edge cases and samples.
const REAL_FIRST_APP_ID: i64 = 800_000_001;

/// `fixture.mismatched_ids`: document i carries `Request@ID` `MISMATCH_REQUEST_ID + i` and is stored as app
/// `MISMATCH_APP_ID + i`; neither range meets another fixture's ids, so rows keyed by the document's id name no
/// source application at all.
const MISMATCH_REQUEST_ID: i64 = 600_000_001;
const MISMATCH_APP_ID: i64 = 610_000_001;

/// `(stored app_id, document)` for `fixture.mismatched_ids`: clean documents (nothing malformed on purpose) in the
/// contract's shape, the project's generator without `fixture.contract`, the real-shaped one with it.
fn mismatched_documents(plan: &Plan) -> Result<Vec<(i64, String)>, RunnerError> {
    let n = plan.mismatched_ids as usize;
    let docs: Vec<(i64, String)> = match &plan.real_generate {
        None => (0..n as i64)
            .map(|i| {
                let id = MISMATCH_REQUEST_ID + i;
                (
                    id,
                    fixtures::generate_one(plan.fixture_seed, id, 0.0, 0.0, 0.0).xml,
                )
            })
            .collect(),
        Some((_, shape)) => {
            let shape = fixtures::realshape::Shape::parse(shape)
                .ok_or_else(|| RunnerError::Setup(format!("unknown document shape '{shape}'")))?;
            let cfg = fixtures::realshape::RealConfig {
                first_app_id: MISMATCH_REQUEST_ID,
                malformed_fraction: 0.0,
                ..fixtures::realshape::RealConfig::new(shape, n, plan.fixture_seed)
            };
            fixtures::realshape::real_generate_iter(&cfg)
                .map(|d| (d.app_id, d.xml))
                .collect()
        }
    };
    Ok(docs
        .into_iter()
        .map(|(id, xml)| (id - MISMATCH_REQUEST_ID + MISMATCH_APP_ID, xml))
        .collect())
}

/// `--contract FILE` when the plan names one.
fn contract_args(plan: &Plan) -> Vec<String> {
    match &plan.contract {
        Some(p) => vec!["--contract".into(), p.display().to_string()],
        None => vec![],
    }
}

/// Copies every `*.xml` of `src` (bytes unchanged) into `out` as `<app_id>.xml`, the names `processor load --dir`
/// reads. The id is the document's `Request@ID` when it is an integer (the replaced system's application id), else
/// the file name's last digits; a document without either, or whose id is already taken (by generated or edge-case
/// documents, or an earlier file), gets the next free id from 990000001 on, so no document is left out. The
/// assignment is written to `out/ids.tsv`. Returns the number of documents.
pub fn stage_dir(
    src: &Path,
    out: &Path,
    taken: &std::collections::BTreeSet<i64>,
    take: Option<usize>,
) -> Result<usize, RunnerError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(src)
        .map_err(|e| RunnerError::Setup(format!("cannot read fixture.dir {}: {e}", src.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().and_then(|e| e.to_str()) == Some("xml"))
        .collect();
    files.sort();
    files.truncate(take.unwrap_or(usize::MAX));
    std::fs::create_dir_all(out)?;
    let mut used = taken.clone();
    let mut next = 990_000_001_i64;
    let mut tsv = String::from("app_id\tfile\n");
    for f in &files {
        let bytes = std::fs::read(f)?;
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let id = request_id(&bytes)
            .or_else(|| trailing_digits(stem))
            .filter(|id| *id > 0 && !used.contains(id))
            .unwrap_or_else(|| {
                while used.contains(&next) {
                    next += 1;
                }
                next
            });
        used.insert(id);
        std::fs::write(out.join(format!("{id}.xml")), &bytes)?;
        tsv.push_str(&format!("{id}\t{}\n", f.display()));
    }
    std::fs::write(out.join("ids.tsv"), tsv)?;
    Ok(files.len())
}

fn trailing_digits(s: &str) -> Option<i64> {
    let start = s.len() - s.bytes().rev().take_while(u8::is_ascii_digit).count();
    s[start..].parse().ok()
}

/// The integer `ID` attribute of the first `<Request` start tag (one reader for the processor's `load --dir` and
/// the harness's fixtures).
fn request_id(bytes: &[u8]) -> Option<i64> {
    processor::xml::request_id(bytes)
}

#[cfg(test)]
mod stage_tests {
    use super::*;

    #[test]
    fn request_ids_are_read_from_raw_bytes() {
        assert_eq!(
            request_id(b"\xef\xbb\xbf<Provenir><Request ID=\"127582\" x='1'>"),
            Some(127582)
        );
        assert_eq!(
            request_id(b"<Provenir><Request AppID=\"5\" ID = '77'>"),
            Some(77)
        );
        assert_eq!(request_id(b"<Provenir><Request AppID=\"5\">"), None);
        assert_eq!(request_id(b"<Provenir><RequestX ID=\"5\">"), None);
        assert_eq!(request_id(b"<Provenir><Request ID=\"abc\">"), None);
        assert_eq!(trailing_digits("sample--127582"), Some(127582));
        assert_eq!(trailing_digits("sample-rl-recent"), None);
    }

    #[test]
    fn every_file_is_staged_once_with_a_free_id() {
        let src = tempfile::tempdir().expect("tmp");
        let out = tempfile::tempdir().expect("tmp");
        std::fs::write(
            src.path().join("a-5.xml"),
            "<Provenir><Request ID=\"7\"/></Provenir>",
        )
        .expect("w");
        std::fs::write(
            src.path().join("b-7.xml"),
            "<Provenir><Request ID=\"7\"/></Provenir>",
        )
        .expect("w");
        std::fs::write(src.path().join("c-3.xml"), b"\xff\xfe not xml").expect("w");
        std::fs::write(src.path().join("d.xml"), "<x/>").expect("w");
        std::fs::write(src.path().join("notes.txt"), "skip me").expect("w");
        let taken = [3_i64].into_iter().collect();
        let n = stage_dir(src.path(), out.path(), &taken, None).expect("staged");
        assert_eq!(n, 4);
        let mut names: Vec<String> = std::fs::read_dir(out.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "7.xml",
                "990000001.xml",
                "990000002.xml",
                "990000003.xml",
                "ids.tsv"
            ]
        );
        // Bytes are copied unchanged.
        let ids = std::fs::read_to_string(out.path().join("ids.tsv")).expect("tsv");
        let c_id = ids
            .lines()
            .find(|l| l.ends_with("c-3.xml"))
            .and_then(|l| l.split('\t').next())
            .expect("c");
        assert_eq!(
            std::fs::read(out.path().join(format!("{c_id}.xml"))).expect("r"),
            b"\xff\xfe not xml"
        );
        let out2 = tempfile::tempdir().expect("tmp");
        let n = stage_dir(src.path(), out2.path(), &taken, Some(2)).expect("staged");
        assert_eq!(n, 2);
    }
}
