//! Invariants over the history: the event streams of every instance of a run, checked as one history together
//! with how each process ended and the final `processing_log`. A processor can leave a correct-looking database
//! and still have done the wrong thing (redone logged work and rolled it back as collisions, committed without
//! reporting it, drained with claims still held); these checks see it.
//!
//! Clock: every process writes `ts_us` from the same host clock, and an event is written after the step it reports
//! (a `committed` event after its COMMIT returned, `started` before any work). Each rule compares timestamps only
//! in that safe direction.
//!
//! Must not call processor code other than the event types, and must never write.

use super::baseline::Layout;
use super::reader::Sql;
use super::{CheckError, Invariant, Reader, Violation};
use processor::events::{Body, CommitOutcome, CrashEffect, Event, EventKind, FinishReason};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How one processor process (one start of one instance) ended, as the runner saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessEnd {
    pub instance: u32,
    /// 1 for the first start of the instance.
    pub start: u32,
    pub pid: u32,
    /// `exit code N` / `killed by signal N`.
    pub status: String,
    /// The harness itself SIGKILLed it (a `kill` fault, or the liveness deadline): it may have died between a
    /// COMMIT and the event reporting it.
    pub killed_by_harness: bool,
    /// When the runner saw it end (µs since the epoch, the events' clock).
    pub ended_us: i64,
    /// The process-fate invariant its ending broke (`crash-kills`, `clean-drain`), if any.
    pub violation: Option<Invariant>,
}

/// What the runner knows when a process ends: the input of the process-fate invariants.
pub struct Fate<'a> {
    pub end: &'a ProcessEnd,
    /// It died by SIGKILL (from anyone).
    pub sigkilled: bool,
    /// It exited with code 0.
    pub exited_ok: bool,
    /// The crash point (`point:nth`) it fired with action `kill`, if any.
    pub crash_fired: Option<&'a str>,
    /// The harness sent it SIGTERM (a `stop` fault).
    pub sigterm_sent: bool,
    /// The reason of its session's `finished` event, if it wrote one.
    pub finished: Option<FinishReason>,
    /// Its log file, for the message.
    pub log: &'a str,
}

/// The process-fate invariants of one ended process: `crash-kills` (a process that fired a crash point with
/// action `kill` dies by SIGKILL) and `clean-drain` (a SIGTERM'd process writes `finished` with reason `drained`
/// and exits 0).
pub fn process_fate(f: &Fate<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some(point) = f.crash_fired {
        if !f.sigkilled {
            out.push(Violation {
                invariant: Invariant::CrashKills,
                app_ids: vec![],
                message: format!(
                    "instance {} start {} fired crash point {point} (action kill) but did not die by SIGKILL: \
                     it ended with {} (log {})",
                    f.end.instance, f.end.start, f.end.status, f.log
                ),
            });
        }
    }
    if f.sigterm_sent && (!f.exited_ok || f.finished != Some(FinishReason::Drained)) {
        out.push(Violation {
            invariant: Invariant::CleanDrain,
            app_ids: vec![],
            message: format!(
                "instance {} start {} was sent SIGTERM and ended with {} and {}: a drain must write \
                 `finished` with reason `drained` and exit 0 (log {})",
                f.end.instance,
                f.end.start,
                f.end.status,
                match f.finished {
                    Some(r) => format!("a `finished` event with reason `{}`", r.as_str()),
                    None => "no `finished` event".to_owned(),
                },
                f.log
            ),
        });
    }
    out
}

/// What the runner saw of a whole run, for the runner-level invariants.
pub struct RunFacts<'a> {
    /// Faults that never fired (their descriptions).
    pub unfired: &'a [String],
    /// Event-resumed parks whose event never came.
    pub unmet_resumes: &'a [String],
    /// The processors had not converged this many seconds after the last fault.
    pub timed_out_after_secs: Option<u64>,
    /// Processes that exited without a fault explaining it.
    pub unexpected_exits: &'a [String],
}

/// `faults-fired` (every fault fired, every park was resumed by its event) and `liveness` (the run converged in
/// time, no process exited unexpectedly).
pub fn run_invariants(f: &RunFacts<'_>) -> Vec<Violation> {
    let v = |invariant, message| Violation {
        invariant,
        app_ids: vec![],
        message,
    };
    let mut out: Vec<Violation> = f
        .unfired
        .iter()
        .map(|d| {
            v(
                Invariant::FaultsFired,
                format!("fault did not fire: {d} (the run finished or the instance was not running when it was due)"),
            )
        })
        .collect();
    out.extend(
        f.unmet_resumes
            .iter()
            .map(|u| v(Invariant::FaultsFired, u.clone())),
    );
    if let Some(secs) = f.timed_out_after_secs {
        out.push(v(
            Invariant::Liveness,
            format!("processors had not converged {secs}s after the last fault"),
        ));
    }
    out.extend(
        f.unexpected_exits
            .iter()
            .map(|u| v(Invariant::Liveness, u.clone())),
    );
    out
}

/// One session as the history shows it.
#[derive(Debug, Clone, Default)]
struct Session {
    instance: u32,
    started_us: Option<i64>,
    pid: Option<u32>,
    finished: Option<FinishReason>,
    /// `--commit-mode split`: one transaction per application, one `committed` event per batch.
    split: bool,
    /// It fired a crash point whose action is `kill`.
    crashed: bool,
}

fn sessions(events: &[Event]) -> HashMap<&str, Session> {
    let mut out: HashMap<&str, Session> = HashMap::new();
    for e in events {
        let s = out.entry(e.session_id.as_str()).or_default();
        s.instance = e.instance_id;
        match &e.body {
            Body::Started { detail } => {
                s.started_us = Some(e.ts_us);
                s.pid = Some(detail.pid);
                s.split = detail.commit_mode == "split";
            }
            Body::CrashPoint { detail, .. } => {
                s.crashed = detail.action == CrashEffect::Kill;
            }
            Body::Finished { reason, .. } => s.finished = Some(*reason),
            _ => {}
        }
    }
    out
}

fn sample(apps: &BTreeSet<i64>) -> String {
    let v: Vec<String> = apps.iter().take(10).map(i64::to_string).collect();
    let more = if apps.len() > 10 { ", …" } else { "" };
    format!("[{}{more}]", v.join(", "))
}

/// Every history invariant over `events` (all instances, any order) and `ends`; `log` is the final
/// `processing_log` as (app_id, session_id), or `None` when it could not be read (then the join is skipped).
pub fn check(
    events: &[Event],
    ends: &[ProcessEnd],
    log: Option<&[(i64, String)]>,
) -> Vec<Violation> {
    let mut events: Vec<&Event> = events.iter().collect();
    events.sort_by_key(|e| e.ts_us);
    let owned: Vec<Event> = events.iter().map(|e| (*e).clone()).collect();
    let sess = sessions(&owned);
    let mut out = Vec::new();
    out.extend(committed_once(&owned));
    out.extend(no_redo(&owned, &sess));
    out.extend(fences_increase(&owned));
    out.extend(drained_holds_nothing(&owned, &sess));
    if let Some(log) = log {
        out.extend(log_rows_reported(&owned, &sess, ends, log));
    }
    out
}

/// No application is committed by two transactions (two `committed` events), whatever the database shows now.
fn committed_once(events: &[Event]) -> Vec<Violation> {
    let mut by: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind() == EventKind::Committed) {
        for a in &e.app_ids {
            by.entry(*a).or_default().push(&e.session_id);
        }
    }
    let twice: BTreeSet<i64> = by
        .iter()
        .filter(|(_, s)| s.len() > 1)
        .map(|(a, _)| *a)
        .collect();
    if twice.is_empty() {
        return vec![];
    }
    let first = twice.iter().next().copied().unwrap_or_default();
    vec![Violation::new(
        Invariant::NoDuplicates,
        twice.iter().copied(),
        format!(
            "{} applications were committed by more than one transaction (events), e.g. {} (app {first} by {})",
            twice.len(),
            sample(&twice),
            by[&first].join(", ")
        ),
    )]
}

/// Nothing is redone that was durably logged before the redoing session started: a `collision` or `lease_lost` of X
/// by session S, when X's `committed` event (by any session, S included) was written before S's `started` event —
/// or before this very collision, by S itself. Such a commit was visible to every selection S ever made, so S
/// selected logged work (e.g. it ignored `processing_log`). Legitimate collisions are races between sessions that
/// were both running before the commit.
fn no_redo(events: &[Event], sess: &HashMap<&str, Session>) -> Vec<Violation> {
    // app → (ts, session) of its first commit.
    let mut first_commit: HashMap<i64, (i64, &str)> = HashMap::new();
    let mut redone: BTreeSet<i64> = BTreeSet::new();
    let mut example: Option<String> = None;
    let mut redoers: BTreeSet<&str> = BTreeSet::new();
    for e in events {
        match e.kind() {
            EventKind::Committed => {
                for a in &e.app_ids {
                    first_commit.entry(*a).or_insert((e.ts_us, &e.session_id));
                }
            }
            EventKind::Collision | EventKind::LeaseLost => {
                let started = sess
                    .get(e.session_id.as_str())
                    .and_then(|s| s.started_us)
                    .unwrap_or(i64::MIN);
                for a in &e.app_ids {
                    let Some((ct, by)) = first_commit.get(a) else {
                        continue;
                    };
                    let own = *by == e.session_id;
                    if *ct < started || own {
                        redone.insert(*a);
                        redoers.insert(&e.session_id);
                        if example.is_none() {
                            example = Some(format!(
                                "app {a} was committed by session {by}{}, and session {} then redid it ({})",
                                if own { "" } else { " before the redoing session started" },
                                e.session_id,
                                e.kind().as_str()
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    match example {
        None => vec![],
        Some(ex) => vec![Violation::new(
            Invariant::NoRedo,
            redone.iter().copied(),
            format!(
                "{} applications were redone after they were durably logged ({} session(s)), e.g. {ex}: work was \
                 selected without regard to processing_log; {}",
                redone.len(),
                redoers.len(),
                sample(&redone)
            ),
        )],
    }
}

/// Queue mode: every claim of one application has a fence of its own (a takeover or a re-claim of one's own expired
/// claim must bump the fence, else fencing cannot tell the claims apart). The claims' order is the fences' own: the
/// events' order is not the database's, because an instance paused between its claim and its `claimed` event writes
/// that event after a later takeover's (pause-past-lease), so "a lower fence after a higher one" would cry wolf.
fn fences_increase(events: &[Event]) -> Vec<Violation> {
    let mut seen: HashMap<(i64, i64), &str> = HashMap::new();
    let mut bad: BTreeSet<i64> = BTreeSet::new();
    let mut example = None;
    for e in events.iter().filter(|e| e.kind() == EventKind::Claimed) {
        for (i, a) in e.app_ids.iter().enumerate() {
            let Some(f) = e.fences().get(i).copied() else {
                continue;
            };
            if let Some(ps) = seen.insert((*a, f), &e.session_id) {
                bad.insert(*a);
                example.get_or_insert_with(|| {
                    format!(
                        "app {a}: claimed with fence {f} by {ps}, then again with fence {f} by {}",
                        e.session_id
                    )
                });
            }
        }
    }
    match example {
        None => vec![],
        Some(ex) => vec![Violation::new(
            Invariant::Fencing,
            bad.iter().copied(),
            format!(
                "{} applications were claimed twice with the same fence, e.g. {ex}",
                bad.len()
            ),
        )],
    }
}

/// A session that finished `drained` holds no claim: everything it claimed was written (committed, collision,
/// lease lost) or released (`abandoned`) by itself before it finished.
fn drained_holds_nothing(events: &[Event], sess: &HashMap<&str, Session>) -> Vec<Violation> {
    let mut held: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for e in events {
        if sess.get(e.session_id.as_str()).and_then(|s| s.finished) != Some(FinishReason::Drained) {
            continue;
        }
        let h = held.entry(&e.session_id).or_default();
        match e.kind() {
            EventKind::Claimed => h.extend(e.app_ids.iter().copied()),
            EventKind::Committed
            | EventKind::Collision
            | EventKind::LeaseLost
            | EventKind::Abandoned
            | EventKind::Failed => {
                for a in &e.app_ids {
                    h.remove(a);
                }
            }
            // Reported either way: committed, or still unknown when the stop came (the log row decides).
            EventKind::CommitResolved if e.is_commit() || unknown_outcome(e) => {
                for a in &e.app_ids {
                    h.remove(a);
                }
            }
            _ => {}
        }
    }
    held.into_iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(s, h)| {
            Violation::new(
                Invariant::CleanDrain,
                h.iter().copied(),
                format!(
                    "session {s} finished `drained` still holding {} claimed applications it neither wrote nor \
                     released: {}",
                    h.len(),
                    sample(&h)
                ),
            )
        })
        .collect()
}

/// Every `processing_log` row's session reported it: a `committed` event (or `commit_resolved` `committed`) for that
/// application. Excused only when the session was SIGKILLed by the harness (it may have died between the COMMIT and
/// its event), or killed itself at a crash point in split mode. A row of a session with no events at all is
/// reported too.
fn log_rows_reported(
    events: &[Event],
    sess: &HashMap<&str, Session>,
    ends: &[ProcessEnd],
    log: &[(i64, String)],
) -> Vec<Violation> {
    let mut reported: HashMap<&str, BTreeSet<i64>> = HashMap::new();
    // Applications a session said it could not resolve when told to stop (`commit_resolved` `unknown`, then a
    // `drained` finish): it reported them honestly, so a log row of its own is no silent commit.
    let mut unknown: HashMap<&str, BTreeSet<i64>> = HashMap::new();
    for e in events {
        let drained =
            sess.get(e.session_id.as_str()).and_then(|s| s.finished) == Some(FinishReason::Drained);
        if unknown_outcome(e) && drained {
            unknown
                .entry(&e.session_id)
                .or_default()
                .extend(e.app_ids.iter().copied());
        }
        if e.is_commit() {
            reported
                .entry(&e.session_id)
                .or_default()
                .extend(e.app_ids.iter().copied());
        }
    }
    let killed: BTreeSet<u32> = ends
        .iter()
        .filter(|p| p.killed_by_harness)
        .map(|p| p.pid)
        .collect();
    let mut silent: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    let logged: HashMap<i64, &str> = log.iter().map(|(a, s)| (*a, s.as_str())).collect();
    let mut out = unlogged_commits(&reported, &logged);
    for (app, session) in log {
        let s = sess.get(session.as_str());
        // Split mode commits each application on its own and reports the batch after its last one, so a crash point
        // that kills it mid-batch leaves earlier commits of that batch unreported, by design.
        let excused = s.is_some_and(|s| {
            s.pid.is_some_and(|pid| killed.contains(&pid)) || (s.split && s.crashed)
        });
        let unsure = unknown
            .get(session.as_str())
            .is_some_and(|u| u.contains(app));
        if excused || unsure {
            continue;
        }
        if !reported
            .get(session.as_str())
            .is_some_and(|r| r.contains(app))
        {
            silent.entry(session).or_default().insert(*app);
        }
    }
    out.extend(silent.into_iter().map(|(s, apps)| {
            let why = match sess.get(s) {
                None => "a session that wrote no events at all".to_owned(),
                Some(x) => format!("session {s} (instance {})", x.instance),
            };
            Violation::new(
                Invariant::CommitEvents,
                apps.iter().copied(),
                format!(
                    "{} processing_log rows were written by {why} without a `committed` event for them: {}",
                    apps.len(),
                    sample(&apps)
                ),
            )
    }));
    out
}

/// `commit_resolved` `unknown`: a stop came while a COMMIT's outcome was unknown and the log could not be read.
fn unknown_outcome(e: &Event) -> bool {
    matches!(
        e.body,
        Body::CommitResolved {
            reason: CommitOutcome::Unknown
        }
    )
}

/// The other direction: every application a session reported committed (`committed`, or `commit_resolved`
/// `committed`) has its final `processing_log` row written by that session. A log row is never rewritten, so a
/// report without one is a commit that never happened, e.g. an unknown COMMIT outcome guessed as "committed" when
/// the COMMIT had not reached the server (`drop-commit`). No excuse applies: a kill cannot undo a COMMIT.
fn unlogged_commits(
    reported: &HashMap<&str, BTreeSet<i64>>,
    logged: &HashMap<i64, &str>,
) -> Vec<Violation> {
    let mut by: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for (s, apps) in reported {
        for a in apps {
            if logged.get(a) != Some(s) {
                by.entry(s).or_default().insert(*a);
            }
        }
    }
    by.into_iter()
        .map(|(s, apps)| {
            let first = apps.iter().next().copied().unwrap_or_default();
            Violation::new(
                Invariant::CommitEvents,
                apps.iter().copied(),
                format!(
                    "session {s} reported {} applications committed whose processing_log row is not its own: {} \
                     (app {first}: {}); a commit reported that did not happen",
                    apps.len(),
                    sample(&apps),
                    match logged.get(&first) {
                        Some(o) => format!("logged by session {o}"),
                        None => "not logged at all".to_owned(),
                    }
                ),
            )
        })
        .collect()
}

/// `lease-kept`: a session that stalled at a crash point (action `stall`: one thread asleep, the process and its
/// lease heartbeat alive) loses no lease afterwards: its heartbeat renews what it holds, however slow the batch.
/// Judged only when `quiet` (the run's other faults are kills and stops: no pause, no park, no connection or server
/// fault could have kept the heartbeat from the database); else a lost lease is the fencing working as meant.
pub fn leases_kept(events: &[Event], quiet: bool) -> Vec<Violation> {
    if !quiet {
        return vec![];
    }
    let mut stalled: HashMap<&str, i64> = HashMap::new();
    let mut lost: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    let mut events: Vec<&Event> = events.iter().collect();
    events.sort_by_key(|e| e.ts_us);
    for e in events {
        match &e.body {
            Body::CrashPoint { detail, .. } if detail.action == CrashEffect::Stall => {
                stalled.entry(&e.session_id).or_insert(e.ts_us);
            }
            Body::LeaseLost { .. } if stalled.contains_key(e.session_id.as_str()) => {
                lost.entry(&e.session_id)
                    .or_default()
                    .extend(e.app_ids.iter().copied());
            }
            _ => {}
        }
    }
    lost.into_iter()
        .map(|(s, apps)| {
            Violation::new(
                Invariant::LeaseKept,
                apps.iter().copied(),
                format!(
                    "session {s} stalled (alive) at a crash point and then lost the lease of {} applications it \
                     held: {}; nothing but its own heartbeat kept them, so it did not renew",
                    apps.len(),
                    sample(&apps)
                ),
            )
        })
        .collect()
}

/// The final `processing_log` as (app_id, session_id), read with the checker's own query.
pub fn read_log(
    reader: &mut dyn Reader,
    contract_json: &str,
) -> Result<Vec<(i64, String)>, CheckError> {
    let layout = Layout::parse(contract_json)?;
    let sql = Sql::new(reader.dialect(), &layout.target_schema)?;
    let mut out = Vec::new();
    reader.query_each(&sql.log_rows(false)?, &mut |r| {
        let app = super::parse_id(&r[0], "processing_log")?;
        out.push((app, r[3].clone().unwrap_or_default()));
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, ts: i64, session: &str, apps: &[i64]) -> Event {
        let mut e = Event::new(Body::bare(kind), 0, session, apps.to_vec());
        e.ts_us = ts;
        e
    }

    fn started(ts: i64, session: &str, pid: u32) -> Event {
        let mut e = ev(EventKind::Started, ts, session, &[]);
        if let Body::Started { detail } = &mut e.body {
            detail.pid = pid;
        }
        e
    }

    #[test]
    fn redo_after_a_durable_commit_is_caught_and_a_race_is_not() {
        let race = [
            started(1, "a", 1),
            started(2, "b", 2),
            ev(EventKind::Committed, 10, "a", &[5]),
            ev(EventKind::Collision, 11, "b", &[5]),
        ];
        assert!(check(&race, &[], None).is_empty());
        let redo = [
            started(1, "a", 1),
            ev(EventKind::Committed, 10, "a", &[5]),
            started(20, "b", 2),
            ev(EventKind::Collision, 21, "b", &[5]),
        ];
        let v = check(&redo, &[], None);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].invariant, Invariant::NoRedo);
        assert_eq!(v[0].app_ids, vec![5]);
    }

    #[test]
    fn fences_must_increase_and_drains_must_release() {
        let c1 = ev(EventKind::Claimed, 1, "a", &[7]).with_fences(vec![2]);
        let c2 = ev(EventKind::Claimed, 5, "b", &[7]).with_fences(vec![2]);
        let v = check(&[c1.clone(), c2], &[], None);
        assert!(v.iter().any(|v| v.invariant == Invariant::Fencing), "{v:?}");
        // Pause-past-lease: the paused instance's fence-1 `claimed` event is written after the takeover's fence-2
        // one (it was stopped between its claim and the event). Distinct fences: no violation.
        let late = ev(EventKind::Claimed, 6, "b", &[7]).with_fences(vec![1]);
        let v = check(&[c1.clone(), late], &[], None);
        assert!(
            !v.iter().any(|v| v.invariant == Invariant::Fencing),
            "{v:?}"
        );
        let mut fin = ev(EventKind::Finished, 9, "a", &[]);
        fin.body = Body::Finished {
            reason: FinishReason::Drained,
            detail: Default::default(),
        };
        let v = check(&[c1.clone(), fin.clone()], &[], None);
        assert!(
            v.iter().any(|v| v.invariant == Invariant::CleanDrain),
            "{v:?}"
        );
        let ab = ev(EventKind::Abandoned, 8, "a", &[7]);
        assert!(check(&[c1, ab, fin], &[], None).is_empty());
    }

    #[test]
    fn log_rows_need_their_commit_event_unless_the_harness_killed_the_session() {
        let evs = [started(1, "a", 41)];
        let log = vec![(3, "a".to_owned())];
        let v = check(&evs, &[], Some(&log));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].invariant, Invariant::CommitEvents);
        let end = ProcessEnd {
            instance: 0,
            start: 1,
            pid: 41,
            status: "killed by signal 9".into(),
            killed_by_harness: true,
            ended_us: 5,
            violation: None,
        };
        assert!(check(&evs, &[end], Some(&log)).is_empty());
    }

    #[test]
    fn an_unknown_outcome_excuses_its_log_row_only_in_a_drained_session() {
        let mut unknown = ev(EventKind::CommitResolved, 3, "a", &[3]);
        unknown.body = Body::CommitResolved {
            reason: CommitOutcome::Unknown,
        };
        let mut drained = ev(EventKind::Finished, 4, "a", &[]);
        if let Body::Finished { reason, .. } = &mut drained.body {
            *reason = FinishReason::Drained;
        }
        let log = vec![(3, "a".to_owned())];
        let ok = [started(1, "a", 41), unknown.clone(), drained];
        assert!(check(&ok, &[], Some(&log)).is_empty());
        // The same claim without the stop: "unknown" is no excuse, the row is a silent commit.
        let not_drained = [
            started(1, "a", 41),
            unknown,
            ev(EventKind::Finished, 4, "a", &[]),
        ];
        let v = check(&not_drained, &[], Some(&log));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].invariant, Invariant::CommitEvents);
    }

    #[test]
    fn a_stalled_session_keeps_its_leases_when_nothing_else_interferes() {
        let mut stall = ev(EventKind::CrashPoint, 2, "a", &[]);
        if let Body::CrashPoint { detail, .. } = &mut stall.body {
            detail.action = CrashEffect::Stall;
        }
        let lost = ev(EventKind::LeaseLost, 9, "a", &[5]);
        let other = ev(EventKind::LeaseLost, 9, "b", &[6]);
        let v = leases_kept(&[stall.clone(), lost.clone(), other.clone()], true);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].invariant, Invariant::LeaseKept);
        assert_eq!(v[0].app_ids, vec![5]);
        // A pause or a connection fault in the run: a lost lease proves nothing.
        assert!(leases_kept(&[stall, lost.clone()], false).is_empty());
        // No stall: not this invariant's business.
        assert!(leases_kept(&[lost, other], true).is_empty());
    }

    #[test]
    fn a_reported_commit_needs_its_own_log_row() {
        let evs = [
            started(1, "a", 41),
            ev(EventKind::Committed, 2, "a", &[3]),
            ev(EventKind::Committed, 3, "a", &[4]),
        ];
        let log = vec![(3, "a".to_owned()), (4, "b".to_owned())];
        let v = check(&evs, &[], Some(&log));
        // 4: reported by a but logged by b (b's row is also unreported: the other direction).
        assert!(
            v.iter().any(|v| v.invariant == Invariant::CommitEvents
                && v.app_ids == vec![4]
                && v.message.contains("session a reported")),
            "{v:?}"
        );
        let log = vec![(3, "a".to_owned())];
        let v = check(&evs, &[], Some(&log));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("not logged at all"), "{v:?}");
        let log = vec![(3, "a".to_owned()), (4, "a".to_owned())];
        assert!(check(&evs, &[], Some(&log)).is_empty());
    }
}
