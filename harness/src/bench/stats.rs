//! `harness bench`'s statistics from the processors' events: latencies, percentiles, throughput windows.

use super::*;

pub(super) struct EventStats {
    pub(super) apps: u64,
    /// Of `apps`, those logged `failed` (a `failed` event): cheaper than a success, so shown next to apps/s.
    pub(super) failed: u64,
    pub(super) collisions: u64,
    pub(super) commit_interval: Latency,
    pub(super) claim_to_commit: Option<Latency>,
    pub(super) first_10: f64,
    pub(super) last_10: f64,
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(super) fn latency(mut v: Vec<f64>) -> Latency {
    v.sort_by(f64::total_cmp);
    Latency {
        p50_ms: percentile(&v, 50.0),
        p99_ms: percentile(&v, 99.0),
    }
}

/// Latencies and windowed throughput from the instances' events (sorted by time).
pub(super) fn event_stats(events: &[Event]) -> Result<EventStats> {
    let mut last_by_session: HashMap<&str, i64> = HashMap::new();
    let mut claimed_at: HashMap<i64, i64> = HashMap::new();
    let mut interval = Vec::new();
    let mut c2c = Vec::new();
    let mut commits: Vec<(i64, u64)> = Vec::new();
    let mut collisions = 0u64;
    let mut failed = 0u64;
    if !events.iter().any(|e| e.kind() == EventKind::Started) {
        bail!("no started event: did the processor write its events?");
    }
    for e in events {
        match e.kind() {
            EventKind::Started => {
                last_by_session.insert(&e.session_id, e.ts_us);
            }
            EventKind::Claimed => {
                for a in &e.app_ids {
                    claimed_at.insert(*a, e.ts_us);
                }
            }
            EventKind::Committed => {
                let prev = last_by_session.insert(&e.session_id, e.ts_us);
                let ms = prev.map_or(0.0, |p| (e.ts_us - p) as f64 / 1000.0);
                interval.extend(std::iter::repeat_n(ms, e.app_ids.len()));
                for a in &e.app_ids {
                    if let Some(c) = claimed_at.get(a) {
                        c2c.push((e.ts_us - c) as f64 / 1000.0);
                    }
                }
                commits.push((e.ts_us, e.app_ids.len() as u64));
            }
            EventKind::Collision => collisions += e.app_ids.len() as u64,
            EventKind::Failed => failed += e.app_ids.len() as u64,
            _ => {}
        }
    }
    let apps: u64 = commits.iter().map(|c| c.1).sum();
    let tenth = (apps / 10).max(1);
    // First window: from the first commit (so process start and connect do not count against it) to the commit
    // that reaches 10 % more; last: from the commit before the last 10 % began to the final commit.
    let rate = |n: u64, t0: i64, t1: i64| n as f64 / ((t1 - t0) as f64 / 1e6).max(1e-6);
    let (first_10, last_10) = match (commits.first(), commits.last()) {
        (Some(&(t0, n0)), Some(&(t_end, _))) => {
            // Cumulative applications committed at each commit.
            let cum: Vec<u64> = commits
                .iter()
                .scan(0u64, |c, &(_, n)| {
                    *c += n;
                    Some(*c)
                })
                .collect();
            let i10 = cum
                .iter()
                .position(|&c| c >= n0 + tenth)
                .unwrap_or(cum.len() - 1);
            let i90 = cum
                .iter()
                .rposition(|&c| c <= apps.saturating_sub(tenth))
                .unwrap_or(0);
            (
                rate(cum[i10] - n0, t0, commits[i10].0),
                rate(apps - cum[i90], commits[i90].0, t_end),
            )
        }
        _ => (0.0, 0.0),
    };
    Ok(EventStats {
        apps,
        failed,
        collisions,
        commit_interval: latency(interval),
        claim_to_commit: (!c2c.is_empty()).then(|| latency(c2c)),
        first_10,
        last_10,
    })
}
