//! Scenario files (`scenarios/*.toml`): a serde model with unknown keys rejected, validated into a `Plan` before
//! anything starts. Random parts of a schedule are drawn here, from the run seed, so one seed is one schedule.

use processor::crash::CrashPoint;
use processor::engine::{CommitMode, Mode};
use processor::events::EventKind;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario {path}: {source}")]
    Toml {
        path: String,
        source: toml::de::Error,
    },
    #[error("scenario {name}: {problem}")]
    Invalid { name: String, problem: String },
    #[error("no scenario files (*.toml) in {0}")]
    Empty(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The run seed `harness run` uses for this file when not given `--seed` (default 1): explore writes the seed
    /// it drew with, so a corpus entry replays the same fixtures and schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default)]
    pub fixture: FixtureSpec,
    #[serde(default)]
    pub run: RunSpec,
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Restart an instance after a fault killed or stopped it.
    #[serde(default = "yes")]
    pub restarts: bool,
    /// Run the same configuration without faults first; a failing baseline makes the scenario invalid.
    #[serde(default = "yes")]
    pub baseline: bool,
    #[serde(default)]
    pub expect: ExpectSpec,
    /// Backends this scenario applies to (empty: every backend). `harness run` on another backend skips it with
    /// the reason printed. Connection faults and `restart-db` need a server: such scenarios must name `postgres`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<crate::db::Backend>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureSpec {
    #[serde(default = "default_apps")]
    pub apps: u64,
    /// Fixture seed; defaults to the run seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default = "default_malformed")]
    pub malformed_fraction: f64,
    /// Also load the hand-written edge-case documents.
    #[serde(default = "yes")]
    pub edge_cases: bool,
    /// The mapping contract the processors run with and the checker judges by (default: the project's). A path
    /// relative to the scenario file, or `seed:REST` for `REST` inside the replaced system's seed folder
    /// (`SHREDPROOF_SEED`, else `shared/seed/original` beside the scenario's repository or its parent folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// Also load every `*.xml` of this folder (same path rules as `contract`), bytes unchanged. Each document's
    /// application id is its `Request@ID` (or the file name's last digits); see `runner::stage_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Only the first N documents of `dir`, in file-name order (keeps a scenario on a large folder small).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub take: Option<usize>,
    /// Also load N documents shaped like the replaced system's samples for the contract's product line
    /// (`fixtures::realshape`, 2 KB to 2 MB, drawn from the fixture seed; app_ids from 800000001). Needs a
    /// `contract` the real-shaped generator has a shape for (the replaced system's `cc` or `rl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<usize>,
    /// Also load the stress documents (`fixtures::stress_docs`: huge, pathological, broken bytes), the
    /// many-contacts one with this many contacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stress_docs: Option<u32>,
    /// Also load N documents whose `Request@ID` differs from their source row's `app_id` (each a clean document
    /// drawn for id 600000001 + i, stored as app 610000001 + i), so a processor that keys rows by the document's id
    /// instead of the row's is seen: the contract makes each a `map:` failure. Under `contract`, needs `generate`
    /// (the documents are drawn in that shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatched_ids: Option<u32>,
    /// A constraint the contract does not know, added to this target table once the schema exists: the database
    /// refuses its rows whose `app_id` is a multiple of 7 (a trigger on SQLite, a CHECK on PostgreSQL). Such an
    /// application maps cleanly and fails in a later table than its first insert, so the write path must roll its
    /// savepoint back (it ends `failed`, `write:`, no rows). Judged through `check::Rejection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_rows_in: Option<String>,
}

fn default_apps() -> u64 {
    300
}
fn default_malformed() -> f64 {
    0.05
}

impl Default for FixtureSpec {
    fn default() -> Self {
        FixtureSpec {
            apps: default_apps(),
            seed: None,
            malformed_fraction: default_malformed(),
            edge_cases: true,
            contract: None,
            dir: None,
            take: None,
            generate: None,
            stress_docs: None,
            mismatched_ids: None,
            reject_rows_in: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    #[serde(default = "one")]
    pub instances: u32,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    #[serde(default = "one_usize")]
    pub workers: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_commit")]
    pub commit_mode: CommitMode,
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Start the instances one after another: instance k+1 once instance k has written its first `claimed` or
    /// `committed` event (or ended). For scenarios whose fault needs instance 0 to get work before the others take
    /// it all — synchronised on that event, not on a start delay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub staggered: bool,
}

fn one() -> u32 {
    1
}
fn one_usize() -> usize {
    1
}
fn default_mode() -> Mode {
    Mode::Uncoordinated
}
fn default_batch() -> usize {
    20
}
fn default_commit() -> CommitMode {
    CommitMode::Atomic
}
fn default_lease() -> u64 {
    2
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            instances: 1,
            mode: default_mode(),
            workers: 1,
            batch_size: default_batch(),
            commit_mode: default_commit(),
            lease_secs: default_lease(),
            staggered: false,
        }
    }
}

/// A fault as written in a scenario file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FaultSpec {
    /// Arm `PROCESSOR_CRASH_AT=<point>:<nth>` on the instance's first start. With `pause_ms` the process parks
    /// itself (SIGSTOP) exactly at the point instead of dying, and the harness resumes it after `pause_ms`; with
    /// `resume_on` it parks the same way and is resumed by an event instead of a clock (deterministic under load).
    CrashPoint {
        instance: u32,
        point: CrashPoint,
        #[serde(default = "one_u64")]
        nth: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pause_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_on: Option<ResumeOnSpec>,
        /// Instead of dying or parking, the hitting thread sleeps `stall_ms` and the run goes on, the process (its
        /// lease heartbeat) alive: a batch slower than its lease (queue mode), which must keep its claims.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stall_ms: Option<u64>,
    },
    /// SIGKILL the instance's process group at a time or after N committed transactions.
    Kill {
        instance: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_commits: Option<u64>,
    },
    /// `count` SIGKILLs, the instances in turn from a random one, each after a random number (1..=`within_commits`)
    /// of that instance's committed transactions, drawn from the run seed. Progress-based, so the schedule fires at any speed.
    RandomKill { count: u32, within_commits: u64 },
    /// SIGSTOP the instance for `duration_ms`, then SIGCONT.
    Pause {
        instance: u32,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_commits: Option<u64>,
    },
    /// SIGTERM (scenario C): the instance must drain and exit 0; it is then restarted.
    Stop {
        instance: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_commits: Option<u64>,
    },
    /// Reset every processor connection at the fault proxy. Instance-agnostic: `after_commits` counts the commits
    /// of all instances together.
    DropConnections {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_commits: Option<u64>,
    },
    /// The proxy forwards nothing (and connects nothing new) for `duration_ms`.
    Blackhole {
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_commits: Option<u64>,
    },
    /// The proxy delays every chunk by `ms` for `duration_ms`.
    Latency {
        ms: u64,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_commits: Option<u64>,
    },
    /// The next COMMIT reaches the server but its reply is dropped and the connection reset: the client cannot
    /// know whether it committed. Fires when a COMMIT passes after the trigger.
    CutReply {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_commits: Option<u64>,
    },
    /// The next COMMIT never reaches the server: the proxy swallows it and resets the connection, so the client
    /// cannot know the outcome and the server rolls the transaction back. Fires when a COMMIT passes after the
    /// trigger. The twin of `cut-reply`: a processor that guesses either outcome is wrong under one of them.
    DropCommit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_commits: Option<u64>,
    },
    /// SIGKILL the PostgreSQL postmaster and start it again on the same data directory and port.
    RestartDb {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_commits: Option<u64>,
    },
    /// Lose `percent` % of one instance's packets (`direction`: to-server, from-server or both) for
    /// `duration_ms`: nftables on `lo` in the run's own network namespace (`netfault.rs`). PostgreSQL only.
    NetLoss {
        instance: u32,
        percent: u8,
        #[serde(default)]
        direction: crate::netfault::Direction,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_commits: Option<u64>,
    },
    /// Hold every packet of one instance's connections in `direction` for `ms` before it goes on (NFQUEUE: the
    /// harness accepts each packet `ms` after it came), for `duration_ms`. PostgreSQL only.
    NetDelay {
        instance: u32,
        ms: u64,
        #[serde(default)]
        direction: crate::netfault::Direction,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_commits: Option<u64>,
    },
    /// Drop every packet of one instance's connections in `direction` (a one-way partition, or both ways) for
    /// `duration_ms`, the same way as `net-loss`. PostgreSQL only.
    NetPartition {
        instance: u32,
        #[serde(default)]
        direction: crate::netfault::Direction,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_commits: Option<u64>,
    },
    /// A power cut under the database: the server's data directory lives on the harness's LazyFS-style layer
    /// (`lazyfs`), and at the trigger the server is SIGKILLed, every write not fsynced is dropped, and the server
    /// is started again. A commit acknowledged before it was durable is lost.
    LoseUnsynced {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_commits: Option<u64>,
    },
    /// The instance's processor runs on a clock `skew_ms` (±) off the host's, on every start
    /// (`PROCESSOR_CLOCK_SKEW_MS`: the harness processor's test clock). Leases are judged on the database's clock,
    /// so a skewed instance must neither take a live lease over (clock ahead) nor lose or keep its own (clock behind
    /// or ahead). Fires when the instance's `started` event reports the skew.
    ClockSkew { instance: u32, skew_ms: i64 },
}

/// The planned `clock-skew` fault: a non-zero skew within a day, one per instance (one environment variable).
fn clock_skew_fault(planned: &[Fault], instance: u32, skew_ms: i64) -> Result<Fault, String> {
    if skew_ms == 0 || skew_ms.unsigned_abs() > 86_400_000 {
        return Err("skew_ms must be non-zero and at most a day (±86400000)".into());
    }
    if planned
        .iter()
        .any(|f| f.instance == instance && matches!(f.action, Action::ClockSkew { .. }))
    {
        return Err("one clock-skew per instance".into());
    }
    Ok(Fault {
        instance,
        action: Action::ClockSkew { skew_ms },
        trigger: Trigger::CrashEnv,
    })
}

/// The clock skew a plan gives `instance` (its processor's `PROCESSOR_CLOCK_SKEW_MS`), if any.
pub fn clock_skew_of(faults: &[Fault], instance: u32) -> Option<i64> {
    faults.iter().find_map(|f| match f.action {
        Action::ClockSkew { skew_ms } if f.instance == instance => Some(skew_ms),
        _ => None,
    })
}

/// When a fault fires, as written: `at_ms` after the run starts, or after `after_commits` committed transactions
/// (exactly one of them; `plan` says so). Every kind but `crash-point` (armed in the environment, fired by its hit
/// count) and `random-kill` (drawn from the seed) has one; this is the one place that knows which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TriggerSpec {
    pub at_ms: Option<u64>,
    pub after_commits: Option<u64>,
}

impl FaultSpec {
    /// The fault's trigger, for the kinds that have one.
    pub fn trigger(&self) -> Option<TriggerSpec> {
        self.clone()
            .trigger_fields()
            .map(|(at_ms, after_commits)| TriggerSpec {
                at_ms: *at_ms,
                after_commits: *after_commits,
            })
    }

    /// The same fault with trigger `t` (unchanged for a kind without a trigger).
    pub fn with_trigger(&self, t: TriggerSpec) -> FaultSpec {
        let mut f = self.clone();
        if let Some((at_ms, after_commits)) = f.trigger_fields() {
            *at_ms = t.at_ms;
            *after_commits = t.after_commits;
        }
        f
    }

    /// The one place that knows which kinds have a trigger (`at_ms` / `after_commits`).
    fn trigger_fields(&mut self) -> Option<(&mut Option<u64>, &mut Option<u64>)> {
        match self {
            FaultSpec::Kill {
                at_ms,
                after_commits,
                ..
            }
            | FaultSpec::Pause {
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
            | FaultSpec::Blackhole {
                at_ms,
                after_commits,
                ..
            }
            | FaultSpec::Latency {
                at_ms,
                after_commits,
                ..
            }
            | FaultSpec::CutReply {
                at_ms,
                after_commits,
            }
            | FaultSpec::DropCommit {
                at_ms,
                after_commits,
            }
            | FaultSpec::RestartDb {
                at_ms,
                after_commits,
            }
            | FaultSpec::NetLoss {
                at_ms,
                after_commits,
                ..
            }
            | FaultSpec::NetPartition {
                at_ms,
                after_commits,
                ..
            }
            | FaultSpec::NetDelay {
                at_ms,
                after_commits,
                ..
            }
            | FaultSpec::LoseUnsynced {
                at_ms,
                after_commits,
            } => Some((at_ms, after_commits)),
            FaultSpec::CrashPoint { .. }
            | FaultSpec::RandomKill { .. }
            | FaultSpec::ClockSkew { .. } => None,
        }
    }

    /// The kebab-case `kind` as written in files.
    pub fn kind(&self) -> &'static str {
        match self {
            FaultSpec::CrashPoint { .. } => "crash-point",
            FaultSpec::Kill { .. } => "kill",
            FaultSpec::RandomKill { .. } => "random-kill",
            FaultSpec::Pause { .. } => "pause",
            FaultSpec::Stop { .. } => "stop",
            FaultSpec::DropConnections { .. } => "drop-connections",
            FaultSpec::Blackhole { .. } => "blackhole",
            FaultSpec::Latency { .. } => "latency",
            FaultSpec::CutReply { .. } => "cut-reply",
            FaultSpec::DropCommit { .. } => "drop-commit",
            FaultSpec::RestartDb { .. } => "restart-db",
            FaultSpec::NetLoss { .. } => "net-loss",
            FaultSpec::NetPartition { .. } => "net-partition",
            FaultSpec::NetDelay { .. } => "net-delay",
            FaultSpec::LoseUnsynced { .. } => "lose-unsynced",
            FaultSpec::ClockSkew { .. } => "clock-skew",
        }
    }

    /// Faults that act on the database connection or server rather than on one processor instance.
    pub fn is_global(&self) -> bool {
        matches!(
            self,
            FaultSpec::DropConnections { .. }
                | FaultSpec::Blackhole { .. }
                | FaultSpec::Latency { .. }
                | FaultSpec::CutReply { .. }
                | FaultSpec::DropCommit { .. }
                | FaultSpec::RestartDb { .. }
                | FaultSpec::LoseUnsynced { .. }
        )
    }

    /// The server crashes (`restart-db`, `lose-unsynced`): the supervisor blocks until it is back.
    pub fn crashes_server(&self) -> bool {
        matches!(
            self,
            FaultSpec::RestartDb { .. } | FaultSpec::LoseUnsynced { .. }
        )
    }
}

fn one_u64() -> u64 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    /// `pass` or `violations`.
    #[serde(default = "default_result")]
    pub result: String,
    /// With `violations`: exactly these invariants must be violated.
    #[serde(default)]
    pub violations: Vec<String>,
    /// Convergence deadline after the last fault.
    #[serde(default = "default_deadline")]
    pub deadline_secs: u64,
}

fn default_result() -> String {
    "pass".into()
}
fn default_deadline() -> u64 {
    120
}

impl Default for ExpectSpec {
    fn default() -> Self {
        ExpectSpec {
            result: default_result(),
            violations: vec![],
            deadline_secs: default_deadline(),
        }
    }
}

/// `resume_on = { instance = 1, events = ["crash_point"] }`: a parked instance is resumed when `instance` writes one
/// of `events` after the park. An event that names applications counts only if it names one the parked instance
/// claimed last (so "wake me when instance 0 has dealt with my batch" means exactly that batch).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResumeOnSpec {
    pub instance: u32,
    pub events: Vec<EventKind>,
}

/// The validated form of [`ResumeOnSpec`] (copyable, events as a set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResumeOn {
    pub instance: u32,
    /// Bit `k` set: the `k`-th kind of [`EventKind::ALL`] resumes.
    #[serde(skip)]
    mask: u32,
}

impl ResumeOn {
    pub fn new(instance: u32, events: &[EventKind]) -> Self {
        let mask = events.iter().fold(0, |m, e| m | Self::bit(*e));
        ResumeOn { instance, mask }
    }
    fn bit(e: EventKind) -> u32 {
        1 << EventKind::ALL.iter().position(|k| *k == e).unwrap_or(0)
    }
    pub fn matches(&self, e: EventKind) -> bool {
        self.mask & Self::bit(e) != 0
    }
    pub fn events(&self) -> Vec<EventKind> {
        EventKind::ALL
            .into_iter()
            .filter(|e| self.matches(*e))
            .collect()
    }
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.events().iter().map(|e| e.as_str()).collect();
        format!(
            "until instance {} writes {}",
            self.instance,
            names.join(" or ")
        )
    }
}

/// When a fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// Armed in the environment at first start; fires inside the process.
    CrashEnv,
    AtMs(u64),
    AfterCommits(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    CrashPoint {
        point: &'static str,
        nth: u64,
        pause_ms: Option<u64>,
        resume_on: Option<ResumeOn>,
        stall_ms: Option<u64>,
    },
    Kill,
    Pause {
        duration_ms: u64,
    },
    Stop,
    DropConnections,
    Blackhole {
        duration_ms: u64,
    },
    Latency {
        ms: u64,
        duration_ms: u64,
    },
    CutReply,
    DropCommit,
    RestartDb,
    /// `net-loss` / `net-partition` on the fault's instance (`netfault.rs`).
    Net(crate::netfault::NetFault),
    LoseUnsynced,
    ClockSkew {
        skew_ms: i64,
    },
}

impl Action {
    /// Acts on the connections (through the fault proxy) or the database server, not on one instance; its
    /// `Fault::instance` is 0 and meaningless, and `AfterCommits` counts the commits of all instances.
    pub fn is_global(self) -> bool {
        matches!(
            self,
            Action::DropConnections
                | Action::Blackhole { .. }
                | Action::Latency { .. }
                | Action::CutReply
                | Action::DropCommit
                | Action::RestartDb
                | Action::LoseUnsynced
        )
    }

    /// Needs the fault proxy between the processors and the server.
    pub fn needs_proxy(self) -> bool {
        self.is_global() && !matches!(self, Action::RestartDb | Action::LoseUnsynced)
    }
}

/// One concrete, scheduled fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub instance: u32,
    pub action: Action,
    pub trigger: Trigger,
}

impl Fault {
    pub fn describe(&self) -> String {
        let what = match self.action {
            Action::CrashPoint {
                point,
                nth,
                stall_ms: Some(ms),
                ..
            } => format!("crash-point {point}:{nth} (stall {ms}ms, process alive)"),
            Action::CrashPoint {
                point,
                nth,
                resume_on: Some(r),
                ..
            } => format!("crash-point {point}:{nth} (park {})", r.describe()),
            Action::CrashPoint {
                point,
                nth,
                pause_ms: None,
                ..
            } => format!("crash-point {point}:{nth}"),
            Action::CrashPoint {
                point,
                nth,
                pause_ms: Some(ms),
                ..
            } => {
                format!("crash-point {point}:{nth} (park {ms}ms)")
            }
            Action::Kill => "kill".into(),
            Action::Pause { duration_ms } => format!("pause {duration_ms}ms"),
            Action::Stop => "stop".into(),
            Action::DropConnections => "drop-connections".into(),
            Action::Blackhole { duration_ms } => format!("blackhole {duration_ms}ms"),
            Action::Latency { ms, duration_ms } => format!("latency {ms}ms for {duration_ms}ms"),
            Action::CutReply => "cut-reply of a COMMIT".into(),
            Action::DropCommit => "drop-commit (a COMMIT swallowed before the server)".into(),
            Action::RestartDb => "restart-db (kill -9 and restart)".into(),
            Action::Net(n) => n.describe(),
            Action::LoseUnsynced => {
                "lose-unsynced (kill -9, unsynced writes dropped, restart)".into()
            }
            Action::ClockSkew { skew_ms } => format!("clock-skew {skew_ms:+}ms"),
        };
        let when = match self.trigger {
            Trigger::CrashEnv => String::new(),
            Trigger::AtMs(ms) => format!(" at {ms}ms"),
            Trigger::AfterCommits(n) if self.action.is_global() => {
                format!(" after {n} commits (all instances)")
            }
            Trigger::AfterCommits(n) => format!(" after {n} commits"),
        };
        if self.action.is_global() {
            return format!("{what}{when}");
        }
        format!("{what} on instance {}{when}", self.instance)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expectation {
    Pass,
    Violations,
}

/// `fixture.reject_rows_in`: the database refuses that table's rows of every application whose id is a multiple.
pub const REJECT_EVERY: i64 = 7;

/// A validated scenario with its schedule drawn from the seed.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    pub source: Option<PathBuf>,
    pub seed: u64,
    pub fixture_seed: u64,
    pub apps: u64,
    pub malformed_fraction: f64,
    pub edge_cases: bool,
    /// `fixture.contract`, resolved (`None`: the project's contract).
    pub contract: Option<PathBuf>,
    /// `fixture.dir`, resolved.
    pub docs_dir: Option<PathBuf>,
    /// `fixture.take`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docs_take: Option<usize>,
    /// `fixture.generate`: how many real-shaped documents, and of which shape (`cc`, `rl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_generate: Option<(usize, String)>,
    /// Why this plan cannot run here (its contract or document folder is absent): it is skipped, never passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    pub stress_docs: Option<u32>,
    /// `fixture.mismatched_ids` (0: none).
    pub mismatched_ids: u32,
    /// `fixture.reject_rows_in`, as the checker applies it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejection: Option<crate::check::Rejection>,
    pub instances: u32,
    pub mode: Mode,
    pub workers: usize,
    pub batch_size: usize,
    pub commit_mode: CommitMode,
    pub lease_secs: u64,
    /// `run.staggered`: instance k+1 starts once instance k has claimed or committed (or ended).
    pub staggered: bool,
    pub faults: Vec<Fault>,
    pub restarts: bool,
    pub baseline: bool,
    pub expectation: Expectation,
    pub expected_violations: Vec<crate::check::Invariant>,
    pub deadline_secs: u64,
    /// Backends the scenario applies to (empty: all).
    pub backends: Vec<crate::db::Backend>,
}

impl Plan {
    /// The faults need the TCP fault proxy between processors and server.
    pub fn needs_proxy(&self) -> bool {
        self.faults.iter().any(|f| f.action.needs_proxy())
    }

    /// The faults restart the database server.
    pub fn needs_restart(&self) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(f.action, Action::RestartDb | Action::LoseUnsynced))
    }

    /// A `lose-unsynced` fault: the database must run on the LazyFS-style layer.
    pub fn needs_lazyfs(&self) -> bool {
        self.faults.iter().any(|f| f.action == Action::LoseUnsynced)
    }

    /// The faults act on packets: the plan runs in a network namespace of its own (`netfault::run_isolated`).
    pub fn needs_netns(&self) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(f.action, Action::Net(_)))
    }
}

impl Scenario {
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ScenarioError::Toml {
            path: path.display().to_string(),
            source,
        })
    }

    // tidy:long-fn validation of every section in the order the file is read (name, run, fixture, faults, expect), each check a few lines
    /// Validates and draws the schedule. Nothing has started yet when this fails.
    pub fn plan(&self, seed: u64, source: Option<PathBuf>) -> Result<Plan, ScenarioError> {
        let bad = |p: String| ScenarioError::Invalid {
            name: self.name.clone(),
            problem: p,
        };
        if self.name.trim().is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(format!(
                "name '{}' must be non-empty letters, digits, '-' or '_'",
                self.name
            )));
        }
        let r = &self.run;
        if r.instances == 0 || r.instances > 16 {
            return Err(bad(format!(
                "run.instances must be 1..=16 (got {})",
                r.instances
            )));
        }
        if r.workers == 0 || r.workers > 64 {
            return Err(bad(format!(
                "run.workers must be 1..=64 (got {})",
                r.workers
            )));
        }
        if r.batch_size == 0 || r.batch_size > 10_000 {
            return Err(bad(format!(
                "run.batch_size must be 1..=10000 (got {})",
                r.batch_size
            )));
        }
        if r.lease_secs == 0 {
            return Err(bad("run.lease_secs must be at least 1".into()));
        }
        let f = &self.fixture;
        if f.apps > 5_000_000
            || (f.apps == 0 && !f.edge_cases && f.dir.is_none() && f.generate.is_none())
        {
            return Err(bad(format!(
                "fixture.apps must be 1..=5000000, or 0 when fixture.dir or fixture.edge_cases gives documents (got {})",
                f.apps
            )));
        }
        let base = source
            .as_deref()
            .and_then(Path::parent)
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let mut unavailable = None;
        let mut resolve = |key: &str,
                           v: &Option<String>,
                           want_dir: bool|
         -> Result<Option<PathBuf>, ScenarioError> {
            let Some(v) = v else { return Ok(None) };
            match resolve_path(&base, v, want_dir) {
                Ok(p) => Ok(Some(p)),
                Err(Missing::Bad(why)) => Err(bad(format!("fixture.{key} = \"{v}\": {why}"))),
                Err(Missing::Absent(why)) => {
                    if std::env::var("SHREDPROOF_REQUIRE_SEED").is_ok_and(|x| x == "1")
                        && v.starts_with(SEED_PREFIX)
                    {
                        return Err(bad(format!(
                            "fixture.{key} = \"{v}\": {why}, and SHREDPROOF_REQUIRE_SEED=1"
                        )));
                    }
                    unavailable.get_or_insert(format!("fixture.{key} = \"{v}\": {why}"));
                    Ok(None)
                }
            }
        };
        match (f.take, &f.dir) {
            (Some(0), _) => return Err(bad("fixture.take must be at least 1".into())),
            (Some(_), None) => return Err(bad("fixture.take needs fixture.dir".into())),
            _ => {}
        }
        // `cc` and `rl` name the replaced system's two contracts in its seed folder.
        let named = f.contract.as_deref().map(|c| match c {
            "cc" => format!("{SEED_PREFIX}contracts/mapping_contract.json"),
            "rl" => format!("{SEED_PREFIX}contracts/mapping_contract_rl.json"),
            other => other.to_owned(),
        });
        // Bounds first: a bad value is refused the same way whether or not the seed folder is on this machine.
        if f.generate == Some(0) {
            return Err(bad("fixture.generate must be at least 1".into()));
        }
        let contract = resolve("contract", &named, false)?;
        let mut real_generate = None;
        match (f.generate, &f.contract) {
            (Some(0), _) => return Err(bad("fixture.generate must be at least 1".into())),
            (Some(n), _) if n > 100_000 => {
                return Err(bad(format!("fixture.generate must be at most 100000 (got {n})")))
            }
            (Some(_), None) => {
                return Err(bad(
                    "fixture.generate needs fixture.contract (\"cc\", \"rl\" or a file of either): the \
                     project's own documents are fixture.apps"
                        .into(),
                ))
            }
            _ => {}
        }
        if let (Some(n), Some(c)) = (f.generate, &contract) {
            let text = std::fs::read_to_string(c).map_err(|e| {
                bad(format!(
                    "fixture.contract: cannot read {}: {e}",
                    c.display()
                ))
            })?;
            let shape = real_shape(&text).ok_or_else(|| {
                bad(format!(
                    "fixture.generate: the real-shaped generator has no document shape for {} (it has the replaced \
                     system's cc and rl)",
                    c.display()
                ))
            })?;
            real_generate = Some((n, shape.name().to_owned()));
        }
        match f.mismatched_ids {
            Some(0) => return Err(bad("fixture.mismatched_ids must be at least 1".into())),
            Some(n) if n > 10_000 => {
                return Err(bad(format!(
                    "fixture.mismatched_ids must be at most 10000 (got {n})"
                )))
            }
            Some(_) if f.contract.is_some() && f.generate.is_none() => {
                return Err(bad(
                    "fixture.mismatched_ids under fixture.contract needs fixture.generate (the documents are drawn \
                     in the real-shaped generator's shape for that contract)"
                        .into(),
                ))
            }
            _ => {}
        }
        if let Some(t) = &f.reject_rows_in {
            if !crate::check::reader::valid_ident(t) {
                return Err(bad(format!(
                    "fixture.reject_rows_in = \"{t}\": not a table name (letters, digits, _)"
                )));
            }
        }
        let docs_dir = resolve("dir", &f.dir, true)?;
        if let Some(c) = &contract {
            let text = std::fs::read_to_string(c).map_err(|e| {
                bad(format!(
                    "fixture.contract: cannot read {}: {e}",
                    c.display()
                ))
            })?;
            // The processors must accept it (they are started with it); refused here, before anything starts.
            processor::contract::Contract::from_json(&text).map_err(|e| {
                bad(format!(
                    "fixture.contract: the processor refuses {}: {e:#}",
                    c.display()
                ))
            })?;
            if !self.baseline && crate::check::content_needs_baseline(&text) {
                return Err(bad(format!(
                    "baseline = false, but under fixture.contract {} the content invariant is judged against the \
                     no-fault baseline (the checker's reference mapping covers only the project's contract format)",
                    c.display()
                )));
            }
        }
        if f.stress_docs
            .is_some_and(|n| n as usize > fixtures::STRESS_CONTACTS_MAX)
        {
            return Err(bad(format!(
                "fixture.stress_docs must be at most {} contacts",
                fixtures::STRESS_CONTACTS_MAX
            )));
        }
        if !(0.0..=1.0).contains(&f.malformed_fraction) {
            return Err(bad(
                "fixture.malformed_fraction must be between 0 and 1".into()
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_fa17);
        let faults = self.plan_faults(&mut rng)?;
        let (expectation, expected_violations) = self.plan_expectation()?;
        if self.expect.deadline_secs == 0 {
            return Err(bad("expect.deadline_secs must be positive".into()));
        }
        Ok(Plan {
            name: self.name.clone(),
            source,
            seed,
            fixture_seed: f.seed.unwrap_or(seed),
            apps: f.apps,
            malformed_fraction: f.malformed_fraction,
            edge_cases: f.edge_cases,
            contract,
            docs_dir,
            docs_take: f.take,
            real_generate,
            unavailable,
            stress_docs: f.stress_docs,
            mismatched_ids: f.mismatched_ids.unwrap_or(0),
            rejection: f
                .reject_rows_in
                .clone()
                .map(|table| crate::check::Rejection {
                    table,
                    every: REJECT_EVERY,
                }),
            instances: r.instances,
            mode: r.mode,
            workers: r.workers,
            batch_size: r.batch_size,
            commit_mode: r.commit_mode,
            lease_secs: r.lease_secs,
            staggered: r.staggered,
            faults,
            restarts: self.restarts,
            baseline: self.baseline,
            expectation,
            expected_violations,
            deadline_secs: self.expect.deadline_secs,
            backends: self.backends.clone(),
        })
    }

    // tidy:long-fn one match arm per fault kind, each with its own checks
    /// The run-time faults of a validated scenario (random kills drawn from `rng`); each problem names its fault.
    fn plan_faults(&self, rng: &mut ChaCha8Rng) -> Result<Vec<Fault>, ScenarioError> {
        let bad = |p: String| ScenarioError::Invalid {
            name: self.name.clone(),
            problem: p,
        };
        let r = &self.run;
        let mut faults = Vec::new();
        let trig = |t: Option<TriggerSpec>, what: &str| -> Result<Trigger, ScenarioError> {
            let t = t.unwrap_or_default();
            match (t.at_ms, t.after_commits) {
                (Some(ms), None) => Ok(Trigger::AtMs(ms)),
                (None, Some(n)) if n >= 1 => Ok(Trigger::AfterCommits(n)),
                (None, Some(_)) => Err(bad(format!("{what}: after_commits must be at least 1"))),
                _ => Err(bad(format!(
                    "{what}: give exactly one of at_ms or after_commits"
                ))),
            }
        };
        for (i, fs) in self.faults.iter().enumerate() {
            let what = format!("faults[{i}]");
            let check_inst = |inst: u32| {
                if inst >= r.instances {
                    Err(bad(format!(
                        "{what}: instance {inst} does not exist (run.instances = {})",
                        r.instances
                    )))
                } else {
                    Ok(())
                }
            };
            match fs {
                FaultSpec::CrashPoint {
                    instance,
                    point,
                    nth,
                    pause_ms,
                    resume_on,
                    stall_ms,
                } => {
                    if *pause_ms == Some(0) || *stall_ms == Some(0) {
                        return Err(bad(format!(
                            "{what}: pause_ms and stall_ms must be positive"
                        )));
                    }
                    if stall_ms.is_some() && (pause_ms.is_some() || resume_on.is_some()) {
                        return Err(bad(format!(
                            "{what}: stall_ms excludes pause_ms and resume_on (a stalled process is not parked)"
                        )));
                    }
                    check_inst(*instance)?;
                    if let Some(r) = resume_on {
                        if pause_ms.is_some() {
                            return Err(bad(format!(
                                "{what}: pause_ms and resume_on are exclusive (a clock or an event resumes it)"
                            )));
                        }
                        check_inst(r.instance)?;
                        if r.instance == *instance || r.events.is_empty() {
                            return Err(bad(format!(
                                "{what}: resume_on needs another instance and at least one event"
                            )));
                        }
                    }
                    let p = *point;
                    if *nth == 0 {
                        return Err(bad(format!("{what}: nth must be at least 1")));
                    }
                    if p.queue_only() && r.mode != Mode::Queue {
                        return Err(bad(format!(
                            "{what}: {} only exists in queue mode",
                            p.name()
                        )));
                    }
                    if faults.iter().any(|f: &Fault| {
                        f.instance == *instance && matches!(f.action, Action::CrashPoint { .. })
                    }) {
                        return Err(bad(format!("{what}: one crash point per instance (it is armed through one environment variable)")));
                    }
                    faults.push(Fault {
                        instance: *instance,
                        action: Action::CrashPoint {
                            point: p.name(),
                            nth: *nth,
                            pause_ms: *pause_ms,
                            resume_on: resume_on
                                .as_ref()
                                .map(|r| ResumeOn::new(r.instance, &r.events)),
                            stall_ms: *stall_ms,
                        },
                        trigger: Trigger::CrashEnv,
                    });
                }
                FaultSpec::Kill { instance, .. } => {
                    check_inst(*instance)?;
                    faults.push(Fault {
                        instance: *instance,
                        action: Action::Kill,
                        trigger: trig(fs.trigger(), &what)?,
                    });
                }
                FaultSpec::RandomKill {
                    count,
                    within_commits,
                } => {
                    if *count == 0 || *within_commits == 0 {
                        return Err(bad(format!(
                            "{what}: count and within_commits must be positive"
                        )));
                    }
                    // Instances in turn from a random one, so no instance takes more than its share of the kills:
                    // kills of one instance chain (each is due after its n-th commit, counted across restarts), and
                    // three or four on one instance could outlast the work (a fault that cannot fire: INVALID).
                    let first = rng.random_range(0..r.instances);
                    let mut draws: Vec<(u32, u64)> = (0..*count)
                        .map(|k| {
                            (
                                (first + k) % r.instances,
                                rng.random_range(1..=*within_commits),
                            )
                        })
                        .collect();
                    draws.sort();
                    // Two kills of one instance at the same count would be one kill: spread them.
                    for w in 1..draws.len() {
                        if draws[w].0 == draws[w - 1].0 && draws[w].1 <= draws[w - 1].1 {
                            draws[w].1 = draws[w - 1].1 + 1;
                        }
                    }
                    for (inst, n) in draws {
                        faults.push(Fault {
                            instance: inst,
                            action: Action::Kill,
                            trigger: Trigger::AfterCommits(n),
                        });
                    }
                }
                FaultSpec::Pause {
                    instance,
                    duration_ms,
                    ..
                } => {
                    check_inst(*instance)?;
                    if *duration_ms == 0 {
                        return Err(bad(format!("{what}: duration_ms must be positive")));
                    }
                    faults.push(Fault {
                        instance: *instance,
                        action: Action::Pause {
                            duration_ms: *duration_ms,
                        },
                        trigger: trig(fs.trigger(), &what)?,
                    });
                }
                FaultSpec::Stop { instance, .. } => {
                    check_inst(*instance)?;
                    faults.push(Fault {
                        instance: *instance,
                        action: Action::Stop,
                        trigger: trig(fs.trigger(), &what)?,
                    });
                }
                FaultSpec::ClockSkew { instance, skew_ms } => {
                    check_inst(*instance)?;
                    faults.push(
                        clock_skew_fault(&faults, *instance, *skew_ms)
                            .map_err(|p| bad(format!("{what}: {p}")))?,
                    );
                }
                FaultSpec::DropConnections { .. }
                | FaultSpec::CutReply { .. }
                | FaultSpec::DropCommit { .. }
                | FaultSpec::RestartDb { .. }
                | FaultSpec::LoseUnsynced { .. } => {
                    let action = match fs {
                        FaultSpec::DropConnections { .. } => Action::DropConnections,
                        FaultSpec::CutReply { .. } => Action::CutReply,
                        FaultSpec::DropCommit { .. } => Action::DropCommit,
                        FaultSpec::LoseUnsynced { .. } => Action::LoseUnsynced,
                        _ => Action::RestartDb,
                    };
                    faults.push(Fault {
                        instance: 0,
                        action,
                        trigger: trig(fs.trigger(), &what)?,
                    });
                }
                FaultSpec::Blackhole { duration_ms, .. } => {
                    if *duration_ms == 0 {
                        return Err(bad(format!("{what}: duration_ms must be positive")));
                    }
                    faults.push(Fault {
                        instance: 0,
                        action: Action::Blackhole {
                            duration_ms: *duration_ms,
                        },
                        trigger: trig(fs.trigger(), &what)?,
                    });
                }
                FaultSpec::Latency {
                    ms, duration_ms, ..
                } => {
                    if *duration_ms == 0 || *ms == 0 {
                        return Err(bad(format!("{what}: ms and duration_ms must be positive")));
                    }
                    faults.push(Fault {
                        instance: 0,
                        action: Action::Latency {
                            ms: *ms,
                            duration_ms: *duration_ms,
                        },
                        trigger: trig(fs.trigger(), &what)?,
                    });
                }
                FaultSpec::NetLoss { instance, .. }
                | FaultSpec::NetPartition { instance, .. }
                | FaultSpec::NetDelay { instance, .. } => {
                    check_inst(*instance)?;
                    faults.push(Fault {
                        instance: *instance,
                        action: Action::Net(self.net_fault(fs, &what)?),
                        trigger: trig(fs.trigger(), &what)?,
                    });
                }
            }
            // cut-reply spots a PostgreSQL COMMIT in the bytes it forwards (TDS traffic is TLS-encrypted after
            // login, so it cannot spot a SQL Server one); the other global faults need any database server.
            let allowed = |b: &crate::db::Backend| {
                let c = b.capabilities();
                match fs {
                    FaultSpec::CutReply { .. } | FaultSpec::DropCommit { .. } => c.commit_cut,
                    FaultSpec::LoseUnsynced { .. } => c.lose_unsynced,
                    _ => c.server,
                }
            };
            if fs.is_global() && (self.backends.is_empty() || !self.backends.iter().all(allowed)) {
                let (server, list) = match fs {
                    FaultSpec::CutReply { .. } | FaultSpec::DropCommit { .. } => {
                        ("a PostgreSQL server", "[\"postgres\"]")
                    }
                    FaultSpec::LoseUnsynced { .. } => (
                        "a PostgreSQL server the harness starts on its lazyfs layer",
                        "[\"postgres\"]",
                    ),
                    _ => (
                        "a database server",
                        "[\"postgres\"] or [\"postgres\", \"mssql\"]",
                    ),
                };
                return Err(bad(format!(
                    "{what}: {} needs {server} (the fault proxy speaks to it, restart-db restarts it); \
                     declare backends = {list} so other backends skip this scenario",
                    fs.kind()
                )));
            }
        }
        Ok(faults)
    }

    /// A `net-loss` / `net-partition` / `net-delay` fault, validated: a positive window, a loss of 1..=99 %, and a scenario that
    /// runs on PostgreSQL only (the network namespace holds a private PostgreSQL cluster; SQLite has no network).
    fn net_fault(
        &self,
        fs: &FaultSpec,
        what: &str,
    ) -> Result<crate::netfault::NetFault, ScenarioError> {
        use crate::netfault::{NetEffect, NetFault};
        let bad = |p: String| ScenarioError::Invalid {
            name: self.name.clone(),
            problem: format!("{what}: {p}"),
        };
        let (effect, direction, duration_ms) = match fs {
            FaultSpec::NetLoss {
                percent,
                direction,
                duration_ms,
                ..
            } => {
                if !(1..=99).contains(percent) {
                    return Err(bad(format!("percent must be 1..=99 (got {percent})")));
                }
                (
                    NetEffect::Loss { percent: *percent },
                    *direction,
                    *duration_ms,
                )
            }
            FaultSpec::NetPartition {
                direction,
                duration_ms,
                ..
            } => (NetEffect::Partition, *direction, *duration_ms),
            FaultSpec::NetDelay {
                ms,
                direction,
                duration_ms,
                ..
            } => {
                if *ms == 0 || *ms > 60_000 {
                    return Err(bad(format!("ms must be 1..=60000 (got {ms})")));
                }
                (NetEffect::Delay { ms: *ms }, *direction, *duration_ms)
            }
            _ => return Err(bad("not a network fault".into())),
        };
        if duration_ms == 0 {
            return Err(bad("duration_ms must be positive".into()));
        }
        if self.backends != [crate::db::Backend::Postgres] {
            return Err(bad(format!(
                "{} runs a private PostgreSQL server in the run's network namespace: declare backends = \
                 [\"postgres\"] so other backends skip this scenario",
                fs.kind()
            )));
        }
        Ok(NetFault {
            effect,
            direction,
            duration_ms,
        })
    }

    /// `expect.result` and `expect.violations`, checked against each other.
    fn plan_expectation(
        &self,
    ) -> Result<(Expectation, Vec<crate::check::Invariant>), ScenarioError> {
        let bad = |p: String| ScenarioError::Invalid {
            name: self.name.clone(),
            problem: p,
        };
        let expectation = match self.expect.result.as_str() {
            "pass" => Expectation::Pass,
            "violations" => Expectation::Violations,
            other => {
                return Err(bad(format!(
                    "expect.result must be 'pass' or 'violations' (got '{other}')"
                )))
            }
        };
        let mut expected_violations = Vec::new();
        for v in &self.expect.violations {
            expected_violations.push(
                v.parse()
                    .map_err(|_| bad(format!("expect.violations: unknown invariant '{v}'")))?,
            );
        }
        match expectation {
            Expectation::Pass if !expected_violations.is_empty() => {
                return Err(bad(
                    "expect.violations given but expect.result is 'pass'".into()
                ))
            }
            Expectation::Violations if expected_violations.is_empty() => {
                return Err(bad(
                    "expect.result is 'violations' but expect.violations is empty".into(),
                ))
            }
            _ => {}
        }
        Ok((expectation, expected_violations))
    }
}

/// Why `plan` cannot run on `backend` (printed, and the scenario skipped), or `None` when it can.
pub fn skip_reason(plan: &Plan, backend: crate::db::Backend) -> Option<String> {
    if let Some(why) = &plan.unavailable {
        return Some(why.clone());
    }
    if plan.rejection.is_some() && !backend.capabilities().reject_rows {
        return Some(format!(
            "fixture.reject_rows_in: the harness cannot add a constraint on {} yet",
            backend.as_str()
        ));
    }
    if plan.backends.is_empty() || plan.backends.contains(&backend) {
        return None;
    }
    let names: Vec<&str> = plan.backends.iter().map(|b| b.as_str()).collect();
    let why = if plan.needs_netns() {
        " (its network faults need a PostgreSQL server in the run's network namespace)"
    } else if plan.needs_proxy() || plan.needs_restart() {
        " (its connection or server faults need a database server)"
    } else {
        ""
    };
    Some(format!(
        "needs backend {}{why}; running on {}",
        names.join(" or "),
        backend.as_str()
    ))
}

/// The real-shaped generator's shape for a contract: from its application element and the element names its
/// mappings read (`fixtures::realshape::Shape::for_contract`).
pub fn real_shape(contract_json: &str) -> Option<fixtures::realshape::Shape> {
    let v: serde_json::Value = serde_json::from_str(contract_json).ok()?;
    let app = v
        .get("xml_application_path")?
        .as_str()?
        .rsplit('/')
        .next()?
        .to_owned();
    let names: Vec<String> = v
        .get("mappings")?
        .as_array()?
        .iter()
        .filter_map(|m| m.get("xml_path").and_then(|p| p.as_str()))
        .flat_map(|p| p.split('/').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    fixtures::realshape::Shape::for_contract(&app, &refs)
}

/// `fixture.contract = "seed:…"`: inside the replaced system's seed folder, wherever it is on this machine.
pub const SEED_PREFIX: &str = "seed:";

enum Missing {
    /// The value is wrong wherever it runs (exit 2).
    Bad(String),
    /// The file or folder is not on this machine (the scenario is skipped, saying why).
    Absent(String),
}

/// The replaced system's seed folder: `SHREDPROOF_SEED`, else `shared/seed/original` beside `base`'s repository
/// (`base` is the scenario's folder; its parent, grandparent and great-grandparent are tried, so a clone at
/// `X/repo` and a worktree at `X/wt/repo` both find `X/shared`).
pub fn seed_root(base: &Path) -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("SHREDPROOF_SEED") {
        let p = PathBuf::from(p);
        return if p.is_dir() {
            Ok(p)
        } else {
            Err(format!("SHREDPROOF_SEED={} is not a folder", p.display()))
        };
    }
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    for up in base.ancestors().skip(1).take(3) {
        let p = up.join("shared/seed/original");
        if p.is_dir() {
            return Ok(p);
        }
    }
    Err(format!(
        "the replaced system's seed folder (shared/seed/original) is not beside {} and SHREDPROOF_SEED is unset",
        base.display()
    ))
}

fn resolve_path(base: &Path, v: &str, want_dir: bool) -> Result<PathBuf, Missing> {
    if v.trim().is_empty() {
        return Err(Missing::Bad("empty path".into()));
    }
    let p = match v.strip_prefix(SEED_PREFIX) {
        Some(rest) => {
            if rest.is_empty() || Path::new(rest).is_absolute() {
                return Err(Missing::Bad(format!(
                    "'{SEED_PREFIX}' must be followed by a relative path inside the seed folder"
                )));
            }
            seed_root(base).map_err(Missing::Absent)?.join(rest)
        }
        None => base.join(v),
    };
    match std::fs::metadata(&p) {
        Ok(m) if m.is_dir() == want_dir => Ok(p),
        Ok(_) => Err(Missing::Bad(format!(
            "{} is not a {}",
            p.display(),
            if want_dir { "folder" } else { "file" }
        ))),
        Err(_) => Err(Missing::Absent(format!(
            "{} does not exist here",
            p.display()
        ))),
    }
}

/// Scenario files named by the arguments: files as is, directories expanded to their `*.toml`, sorted.
pub fn collect_files(args: &[PathBuf]) -> Result<Vec<PathBuf>, ScenarioError> {
    let mut out = Vec::new();
    for a in args {
        if a.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(a)
                .map_err(|source| ScenarioError::Read {
                    path: a.display().to_string(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("toml"))
                .collect();
            if found.is_empty() {
                return Err(ScenarioError::Empty(a.display().to_string()));
            }
            found.sort();
            out.extend(found);
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Plan, ScenarioError> {
        let sc: Scenario = toml::from_str(s).map_err(|source| ScenarioError::Toml {
            path: "t".into(),
            source,
        })?;
        sc.plan(7, None)
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(matches!(
            parse("name = \"x\"\nbogus = 1"),
            Err(ScenarioError::Toml { .. })
        ));
        assert!(matches!(
            parse("name = \"x\"\n[run]\ninstances = 2\nmodee = \"queue\""),
            Err(ScenarioError::Toml { .. })
        ));
        let e = parse("name = \"x\"\n[[faults]]\nkind = \"crash-point\"\ninstance = 0\npoint = \"after_data\"").expect_err("typo");
        assert!(
            e.to_string().contains("unknown crash point 'after_data'"),
            "{e}"
        );
        let e = parse("name = \"x\"\n[[faults]]\nkind = \"kill\"\ninstance = 3")
            .expect_err("no such instance");
        assert!(e.to_string().contains("instance 3 does not exist"), "{e}");
        let e =
            parse("name = \"x\"\n[expect]\nresult = \"violations\"\nviolations = [\"no-such\"]")
                .expect_err("bad invariant");
        assert!(e.to_string().contains("unknown invariant"), "{e}");
        assert!(parse("name = \"x\"\n[[faults]]\nkind = \"crash-point\"\ninstance = 0\npoint = \"after-claim\"").is_err());
    }

    #[test]
    fn clock_skew_is_per_instance_non_zero_and_set_on_every_start() {
        let skew = |body: &str| {
            parse(&format!(
                "name = \"x\"\n[run]\ninstances = 2\nmode = \"queue\"\n{body}"
            ))
        };
        let p = skew("[[faults]]\nkind = \"clock-skew\"\ninstance = 1\nskew_ms = -2500")
            .expect("valid");
        assert_eq!(clock_skew_of(&p.faults, 1), Some(-2500));
        assert_eq!(clock_skew_of(&p.faults, 0), None);
        assert_eq!(p.faults[0].trigger, Trigger::CrashEnv);
        assert_eq!(p.faults[0].describe(), "clock-skew -2500ms on instance 1");
        for bad in [
            "[[faults]]\nkind = \"clock-skew\"\ninstance = 0\nskew_ms = 0",
            "[[faults]]\nkind = \"clock-skew\"\ninstance = 0\nskew_ms = 86400001",
            "[[faults]]\nkind = \"clock-skew\"\ninstance = 2\nskew_ms = 5",
            "[[faults]]\nkind = \"clock-skew\"\ninstance = 0\nskew_ms = 5\nat_ms = 1",
            "[[faults]]\nkind = \"clock-skew\"\ninstance = 0\nskew_ms = 5\n[[faults]]\nkind = \"clock-skew\"\ninstance = 0\nskew_ms = 6",
        ] {
            assert!(skew(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fixture_contract_and_dir_resolve_skip_or_refuse() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("s.toml");
        let plan = |body: &str| {
            let sc: Scenario = toml::from_str(&format!("name = \"x\"\n[fixture]\n{body}"))
                .map_err(|e| e.to_string())?;
            sc.plan(1, Some(file.clone())).map_err(|e| e.to_string())
        };
        std::fs::create_dir(dir.path().join("docs")).expect("mkdir");
        std::fs::write(
            dir.path().join("c.json"),
            fixtures::CONTRACT_JSON.replace("\"varchar\"", "\"string\""),
        )
        .expect("write");
        std::fs::write(dir.path().join("bad.json"), "{\"source_table\": 1}").expect("write");
        // Relative to the scenario file; the processor accepts the contract; content then needs the baseline.
        let p = plan("apps = 0\nedge_cases = false\ncontract = \"c.json\"\ndir = \"docs\"")
            .expect("valid");
        assert_eq!(
            p.contract.as_deref(),
            Some(dir.path().join("c.json").as_path())
        );
        assert_eq!(
            p.docs_dir.as_deref(),
            Some(dir.path().join("docs").as_path())
        );
        assert!(p.unavailable.is_none());
        let e = plan("contract = \"c.json\"").map(|_| ()).and_then(|()| {
            let sc: Scenario =
                toml::from_str("name = \"x\"\nbaseline = false\n[fixture]\ncontract = \"c.json\"")
                    .map_err(|e| e.to_string())?;
            sc.plan(1, Some(file.clone()))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        assert!(
            e.as_ref().is_err_and(|m| m.contains("baseline = false")),
            "{e:?}"
        );
        // Absent here: skipped with the reason, never run (and so never passed).
        let p = plan("dir = \"no-such-folder\"").expect("absent is not an error");
        let why = skip_reason(&p, crate::db::Backend::Sqlite).expect("skipped");
        assert!(
            why.contains("fixture.dir = \"no-such-folder\"") && why.contains("does not exist"),
            "{why}"
        );
        let p = plan("contract = \"gone.json\"").expect("absent is not an error");
        assert!(skip_reason(&p, crate::db::Backend::Postgres)
            .is_some_and(|w| w.contains("fixture.contract")));
        // Wrong wherever it runs: exit 2, naming the key.
        for (body, want) in [
            ("contract = \"docs\"", "fixture.contract = \"docs\""),
            ("dir = \"c.json\"", "fixture.dir = \"c.json\""),
            ("contract = \"\"", "fixture.contract"),
            (
                "contract = \"bad.json\"",
                "fixture.contract: the processor refuses",
            ),
            ("dir = \"seed:\"", "fixture.dir = \"seed:\""),
            ("apps = 0\nedge_cases = false", "fixture.apps"),
            ("take = 3", "fixture.take needs fixture.dir"),
            (
                "mismatched_ids = 0",
                "fixture.mismatched_ids must be at least 1",
            ),
            (
                "contract = \"c.json\"\nmismatched_ids = 2",
                "fixture.mismatched_ids under fixture.contract needs fixture.generate",
            ),
            ("generate = 3", "fixture.generate needs fixture.contract"),
            ("contract = \"c.json\"\ngenerate = 3", "no document shape"),
            (
                "contract = \"cc\"\ngenerate = 0",
                "fixture.generate must be at least 1",
            ),
            (
                "dir = \"docs\"\ntake = 0",
                "fixture.take must be at least 1",
            ),
        ] {
            let e = plan(body).expect_err(body);
            assert!(e.contains(want), "{body}: {e}");
        }
        // Unknown keys are still refused.
        assert!(plan("contrakt = \"c.json\"").is_err_and(|e| e.contains("unknown field")));
    }

    #[test]
    fn same_seed_same_schedule() {
        let s = "name = \"rk\"\n[run]\ninstances = 3\n[[faults]]\nkind = \"random-kill\"\ncount = 4\nwithin_commits = 20";
        let sc: Scenario = toml::from_str(s).expect("valid");
        let a = sc.plan(42, None).expect("plan");
        let b = sc.plan(42, None).expect("plan");
        let c = sc.plan(43, None).expect("plan");
        assert_eq!(a.faults, b.faults);
        assert_ne!(a.faults, c.faults);
        assert_eq!(a.faults.len(), 4);
    }

    #[test]
    fn every_shipped_scenario_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        for f in collect_files(&[dir]).expect("scenarios exist") {
            Scenario::from_file(&f)
                .and_then(|s| s.plan(1, Some(f.clone())))
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        }
    }
}
