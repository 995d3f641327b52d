//! Named crash points (SPEC §6): a closed set shared by processor and harness, armed by `PROCESSOR_CRASH_AT`.
//! Must not accept unknown names: a typo would turn a crash test into a silent pass.
//!
//! This library cannot kill or stop its own process: what a fired point does is a [`CrashHook`] that only the
//! harness's entry point (`harness processor …`) installs. A cargo feature would not do: cargo unifies features
//! across a workspace build, so `cargo build --release` armed the shipped `processor` binary too. The shipped
//! binary never installs a hook, so it refuses `PROCESSOR_CRASH_AT` with a usage error (exit 2).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a crash point: `<name>[:<nth>]`.
pub const CRASH_ENV: &str = "PROCESSOR_CRASH_AT";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CrashPoint {
    /// Parsed and mapped, nothing written.
    BeforeWrite,
    /// Some target tables written, not all.
    MidWrite,
    /// All target rows written, log row not yet written (scenario A).
    AfterData,
    /// Rows and log row written, transaction not committed.
    BeforeCommit,
    /// Committed, before the next application or batch (scenario B).
    AfterCommit,
    /// Queue mode: batch claimed, nothing processed.
    AfterClaim,
    /// Queue mode: a claimed batch includes a takeover (an expired lease of another instance, fence > 1).
    AfterTakeover,
}

impl CrashPoint {
    /// Every crash point, in the order a write reaches them (earliest, least state first): shrinking moves a
    /// crash point left in this order, so the order is stated here and nowhere else.
    pub const ALL: [CrashPoint; 7] = [
        CrashPoint::BeforeWrite,
        CrashPoint::MidWrite,
        CrashPoint::AfterData,
        CrashPoint::BeforeCommit,
        CrashPoint::AfterCommit,
        CrashPoint::AfterClaim,
        CrashPoint::AfterTakeover,
    ];

    /// Its position in [`CrashPoint::ALL`] (0 = simplest).
    pub fn rank(self) -> usize {
        CrashPoint::ALL
            .iter()
            .position(|p| *p == self)
            .unwrap_or(CrashPoint::ALL.len())
    }

    /// The point exists only in queue mode (it is about claims).
    pub fn queue_only(self) -> bool {
        matches!(self, CrashPoint::AfterClaim | CrashPoint::AfterTakeover)
    }

    /// The point fires whenever its mode does work; `after-takeover` needs an expired lease of another instance,
    /// which a random schedule cannot promise (so `harness explore` does not draw it).
    pub fn fires_unprovoked(self) -> bool {
        self != CrashPoint::AfterTakeover
    }

    /// The points that exist in a run: all of them in queue mode, else those not [`CrashPoint::queue_only`].
    pub fn in_mode(queue: bool) -> impl Iterator<Item = CrashPoint> {
        CrashPoint::ALL
            .into_iter()
            .filter(move |p| queue || !p.queue_only())
    }

    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::BeforeWrite => "before-write",
            CrashPoint::MidWrite => "mid-write",
            CrashPoint::AfterData => "after-data",
            CrashPoint::BeforeCommit => "before-commit",
            CrashPoint::AfterCommit => "after-commit",
            CrashPoint::AfterClaim => "after-claim",
            CrashPoint::AfterTakeover => "after-takeover",
        }
    }
}

/// Written as its name (`"after-data"`), read strictly through [`FromStr`]: scenario files name points this way.
impl serde::Serialize for CrashPoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for CrashPoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CrashSpecError {
    #[error("unknown crash point '{0}' (known: {known})", known = known_points())]
    UnknownPoint(String),
    #[error("unknown crash point action '{0}' (known: kill, pause, stall=<ms> with ms ≥ 1)")]
    UnknownAction(String),
    #[error("crash point hit count '{0}' is not a whole number of at least 1")]
    BadNth(String),
    #[error(
        "crash points are only available in the harness's processor (`harness processor run …`); \
         this binary does not have them: unset PROCESSOR_CRASH_AT"
    )]
    NoHook,
}

/// The names of [`CrashPoint::ALL`], for error messages.
fn known_points() -> String {
    CrashPoint::ALL.map(CrashPoint::name).join(", ")
}

impl FromStr for CrashPoint {
    type Err = CrashSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CrashPoint::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| CrashSpecError::UnknownPoint(s.to_owned()))
    }
}

/// What happens when an armed crash point fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrashAction {
    /// SIGKILL itself: no cleanup, no rollback (the default).
    #[default]
    Kill,
    /// SIGSTOP itself, parked at exactly this point until the harness sends SIGCONT (e.g. to hold a claim past its
    /// lease deterministically).
    Pause,
    /// The hitting thread sleeps this many milliseconds and carries on; every other thread (the lease heartbeat)
    /// keeps running: a batch slower than its lease, with the process alive.
    Stall(u64),
}

/// A parsed `PROCESSOR_CRASH_AT` value, `<point>[:<nth>[:kill|pause|stall=<ms>]]`: act on the `nth` hit of `point`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashSpec {
    pub point: CrashPoint,
    pub nth: u64,
    pub action: CrashAction,
}

impl FromStr for CrashSpec {
    type Err = CrashSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        let nth = match parts.next() {
            Some(k) => match k.parse::<u64>() {
                Ok(n) if n >= 1 => n,
                _ => return Err(CrashSpecError::BadNth(k.to_owned())),
            },
            None => 1,
        };
        let action = match parts.next() {
            None | Some("kill") => CrashAction::Kill,
            Some("pause") => CrashAction::Pause,
            Some(other) => match other.strip_prefix("stall=").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => CrashAction::Stall(ms),
                _ => return Err(CrashSpecError::UnknownAction(other.to_owned())),
            },
        };
        if let Some(extra) = parts.next() {
            return Err(CrashSpecError::UnknownAction(extra.to_owned()));
        }
        Ok(CrashSpec {
            point: name.parse()?,
            nth,
            action,
        })
    }
}

impl fmt::Display for CrashSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.action {
            CrashAction::Kill => write!(f, "{}:{}", self.point, self.nth),
            CrashAction::Pause => write!(f, "{}:{}:pause", self.point, self.nth),
            CrashAction::Stall(ms) => write!(f, "{}:{}:stall={ms}", self.point, self.nth),
        }
    }
}

/// An armed crash point with its hit counter. Cheap to call when disarmed.
#[derive(Debug, Default)]
pub struct Crasher {
    spec: Option<CrashSpec>,
    hits: AtomicU64,
}

impl Crasher {
    /// Reads `PROCESSOR_CRASH_AT`. Unset or empty: disarmed. Anything else must parse, and needs an installed hook.
    pub fn from_env() -> Result<Self, CrashSpecError> {
        match std::env::var(CRASH_ENV) {
            Ok(v) if !v.trim().is_empty() => Self::armed(v.trim().parse()?),
            _ => Ok(Crasher::default()),
        }
    }

    /// Arms `spec`; refused unless this process installed a [`CrashHook`] (the harness's processor did).
    pub fn armed(spec: CrashSpec) -> Result<Self, CrashSpecError> {
        if HOOK.get().is_none() {
            return Err(CrashSpecError::NoHook);
        }
        Ok(Self::counting(spec))
    }

    fn counting(spec: CrashSpec) -> Self {
        Crasher {
            spec: Some(spec),
            hits: AtomicU64::new(0),
        }
    }

    pub fn spec(&self) -> Option<CrashSpec> {
        self.spec
    }

    /// Counts a hit of `point`; returns true when this hit is the one that must kill the process.
    /// The caller emits the `crash_point` event and then calls [`die`].
    pub fn should_fire(&self, point: CrashPoint) -> Option<u64> {
        let spec = self.spec?;
        if spec.point != point {
            return None;
        }
        let n = self.hits.fetch_add(1, Ordering::SeqCst) + 1;
        (n == spec.nth).then_some(n)
    }
}

/// What a fired crash point does to the process. Installed once, by the harness's entry point only.
#[derive(Debug, Clone, Copy)]
pub struct CrashHook {
    /// Stops the whole process (every thread, the lease heartbeat included) until SIGCONT.
    pub park: fn(),
    /// Dies at once without cleanup, exactly as `kill -9` would: no destructors, no rollback, no flush.
    pub die: fn() -> !,
}

static HOOK: OnceLock<CrashHook> = OnceLock::new();

/// Installs the crash hook for this process (first call wins). Only `harness processor …` calls this.
pub fn install_hook(hook: CrashHook) {
    let _ = HOOK.set(hook);
}

/// Whether this process can fire crash points at all.
pub fn hook_installed() -> bool {
    HOOK.get().is_some()
}

/// Parks the process through the hook. Unreachable without one: a [`Crasher`] cannot be armed then.
pub fn park() {
    if let Some(h) = HOOK.get() {
        (h.park)()
    }
}

/// Kills the process through the hook.
pub fn die() -> ! {
    match HOOK.get() {
        Some(h) => (h.die)(),
        // A Crasher cannot be armed without a hook; if it somehow was, abort rather than carry on.
        None => std::process::abort(),
    }
}

/// The environment variable that plants a known bug in the harness's processor: `PROCESSOR_PLANT_BUG=<name>`.
/// Exists so each of the harness's history invariants has a test that plants the bug it exists for and sees it
/// caught. Like crash points it needs the [`CrashHook`] only `harness processor …` installs: the shipped binary
/// refuses the variable with exit 2, so no user build can carry a planted bug.
pub const PLANT_ENV: &str = "PROCESSOR_PLANT_BUG";

/// A deliberately wrong behaviour the harness must catch (see ARCHITECTURE.md, "Architecture invariants").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlantedBug {
    /// Work is selected without looking at `processing_log` (uncoordinated/partitioned fetch): logged applications
    /// are done again, and every redo ends as a rolled-back collision, so the final database is still correct.
    IgnoreLog,
    /// A fired crash point writes its `crash_point` event and carries on instead of dying.
    NoKillAtCrash,
    /// On SIGTERM the process exits 0 at once, with a batch in flight and no `finished` event.
    ExitMidDrain,
    /// Commits are not reported: no `committed` event (the database is right, the history is not).
    SilentCommit,
    /// A COMMIT whose outcome is unknown (connection lost) is taken as committed without reading the log: right
    /// when only its reply was lost, wrong when the COMMIT never reached the server.
    AssumeCommitted,
    /// Queue mode: the lease heartbeat never renews, so a batch slower than its lease loses it to a takeover
    /// while its process is alive and well.
    NoRenew,
    /// Rows are keyed by the document's `Request@ID` instead of the source row's `app_id` (the mapper's
    /// "does not match app_id" refusal is bypassed); the log row still names the source row.
    WrongId,
    /// A constraint error in the per-application write path is not rolled back to the application's savepoint: its
    /// rows written before the failing statement stay, next to a `failed` log row (on SQLite; PostgreSQL refuses
    /// every later statement of the aborted transaction instead).
    NoSavepointRollback,
    /// COMMIT is acknowledged before it is durable (SQLite `synchronous=OFF`, PostgreSQL `synchronous_commit=off`
    /// in the session): a database crash that loses unsynced writes (`lose-unsynced`) loses reported commits.
    NoSync,
    /// Queue mode: lease arithmetic (claim, takeover, renewal) on the processor's own clock instead of the
    /// database's: a processor whose clock runs ahead takes live leases over, one whose clock runs behind renews
    /// its own into the past (`PROCESSOR_CLOCK_SKEW_MS`, `clock-skew` faults).
    LocalLeaseClock,
    /// Queue mode: the fenced completion compares the claim's owner only, not its fence: a session that re-claimed
    /// its own expired claim (a new fence) while the old batch was in flight commits that old batch too.
    CompleteByOwner,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 11] = [
        PlantedBug::IgnoreLog,
        PlantedBug::NoKillAtCrash,
        PlantedBug::ExitMidDrain,
        PlantedBug::SilentCommit,
        PlantedBug::AssumeCommitted,
        PlantedBug::NoRenew,
        PlantedBug::WrongId,
        PlantedBug::NoSavepointRollback,
        PlantedBug::NoSync,
        PlantedBug::LocalLeaseClock,
        PlantedBug::CompleteByOwner,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::IgnoreLog => "ignore-log",
            PlantedBug::NoKillAtCrash => "no-kill-at-crash",
            PlantedBug::ExitMidDrain => "exit-mid-drain",
            PlantedBug::SilentCommit => "silent-commit",
            PlantedBug::AssumeCommitted => "assume-committed",
            PlantedBug::NoRenew => "no-renew",
            PlantedBug::WrongId => "wrong-id",
            PlantedBug::NoSavepointRollback => "no-savepoint-rollback",
            PlantedBug::NoSync => "no-sync",
            PlantedBug::LocalLeaseClock => "local-lease-clock",
            PlantedBug::CompleteByOwner => "complete-by-owner",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlantError {
    #[error("unknown planted bug '{0}' (known: {known})", known = PlantedBug::ALL.map(PlantedBug::name).join(", "))]
    Unknown(String),
    #[error(
        "planted bugs exist only in the harness's processor (`harness processor run …`); \
         this binary does not have them: unset PROCESSOR_PLANT_BUG"
    )]
    NoHook,
}

impl FromStr for PlantedBug {
    type Err = PlantError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PlantedBug::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| PlantError::Unknown(s.to_owned()))
    }
}

static PLANTED: OnceLock<Option<PlantedBug>> = OnceLock::new();

/// Reads `PROCESSOR_PLANT_BUG` once, at start-up. Unset or empty: no bug. A name needs an installed hook.
pub fn plant_from_env() -> Result<Option<PlantedBug>, PlantError> {
    let bug = match std::env::var(PLANT_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            let bug: PlantedBug = v.trim().parse()?;
            if !hook_installed() {
                return Err(PlantError::NoHook);
            }
            Some(bug)
        }
        _ => None,
    };
    let _ = PLANTED.set(bug);
    Ok(bug)
}

/// Whether `bug` was planted in this process. Always false unless [`plant_from_env`] accepted it.
pub fn planted(bug: PlantedBug) -> bool {
    PLANTED.get().copied().flatten() == Some(bug)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_counts() {
        assert_eq!(
            "after-data:3".parse::<CrashSpec>(),
            Ok(CrashSpec {
                point: CrashPoint::AfterData,
                nth: 3,
                action: CrashAction::Kill
            })
        );
        assert_eq!(
            "after-takeover:1:pause"
                .parse::<CrashSpec>()
                .map(|s| s.action),
            Ok(CrashAction::Pause)
        );
        let stall: CrashSpec = "before-write:2:stall=4000".parse().expect("stall parses");
        assert_eq!(stall.action, CrashAction::Stall(4000));
        assert_eq!(stall.to_string(), "before-write:2:stall=4000");
        for bad in [
            "before-write:1:stall=0",
            "before-write:1:stall=x",
            "before-write:1:stall",
        ] {
            assert!(bad.parse::<CrashSpec>().is_err(), "{bad}");
        }
        assert!(matches!(
            "after-claim:1:nap".parse::<CrashSpec>(),
            Err(CrashSpecError::UnknownAction(_))
        ));
        assert!(matches!(
            "after-claim:1:pause:x".parse::<CrashSpec>(),
            Err(CrashSpecError::UnknownAction(_))
        ));
        assert_eq!("mid-write".parse::<CrashSpec>().map(|s| s.nth), Ok(1));
        assert!(matches!(
            "after_data".parse::<CrashSpec>(),
            Err(CrashSpecError::UnknownPoint(_))
        ));
        assert!(matches!(
            "after-data:0".parse::<CrashSpec>(),
            Err(CrashSpecError::BadNth(_))
        ));
        assert!(matches!(
            "after-data:x".parse::<CrashSpec>(),
            Err(CrashSpecError::BadNth(_))
        ));
        for p in CrashPoint::ALL {
            assert_eq!(p.name().parse::<CrashPoint>(), Ok(p));
        }
    }

    #[test]
    fn planted_bugs_parse_strictly() {
        for b in PlantedBug::ALL {
            assert_eq!(b.name().parse::<PlantedBug>(), Ok(b));
        }
        assert!(matches!(
            "ignore_log".parse::<PlantedBug>(),
            Err(PlantError::Unknown(_))
        ));
        assert!(!planted(PlantedBug::IgnoreLog));
    }

    #[test]
    fn refused_without_a_hook() {
        // The library's own tests never install a hook, exactly like the shipped binary.
        assert!(!hook_installed());
        assert_eq!(
            Crasher::armed("after-data".parse().expect("valid")).err(),
            Some(CrashSpecError::NoHook)
        );
    }

    #[test]
    fn fires_on_nth_hit_only() {
        let c = Crasher::counting("after-commit:2".parse().expect("valid"));
        assert_eq!(c.should_fire(CrashPoint::AfterData), None);
        assert_eq!(c.should_fire(CrashPoint::AfterCommit), None);
        assert_eq!(c.should_fire(CrashPoint::AfterCommit), Some(2));
        assert_eq!(c.should_fire(CrashPoint::AfterCommit), None);
    }
}
