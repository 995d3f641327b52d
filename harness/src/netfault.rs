//! Network faults in a private network namespace, with netfilter (`net-loss`, `net-partition`, `net-delay`):
//! issue 15's "`ip netns` + `tc netem`" item. This kernel has no traffic-control qdiscs at all (`tc qdisc add …
//! netem` answers "Specified qdisc kind is unknown"), so packets are dropped by nftables rules on `lo` instead, and
//! delayed by queueing them to the harness (NFQUEUE, the `nfq` crate), which accepts each one `ms` after it came.
//!
//! A plan with such a fault runs on a thread of its own that first leaves the harness's network namespace
//! (`unshare(CLONE_NEWNET)`: a fresh namespace with only `lo`, which it brings up). Everything that thread starts
//! lives in that namespace: a private PostgreSQL cluster listening on 127.0.0.1 (fixtures, checker) and on
//! 127.0.0.`NET_BASE + i` (processor instance `i`), the processors, and the `nft` commands. A rule matches one
//! instance's address and the server's port, so it loses or drops one direction of exactly one instance's traffic
//! while the others and the checker stay clean. Only loopback addresses are ever used; the namespace disappears
//! when the thread and its children are gone (nothing to clean up after a crash of the harness).

use crate::db::{Launcher, PgLauncher};
use serde::{Deserialize, Serialize};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Instance `i` reaches the server at 127.0.0.`NET_BASE + i` (so at most 16 instances stay below 127.0.0.27).
pub const NET_BASE: u8 = 11;

/// Which packets of the instance's connections a rule drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Processor → server (queries, COMMITs; TCP acks of the replies): a one-way partition.
    ToServer,
    /// Server → processor (replies): the other one-way partition.
    FromServer,
    #[default]
    Both,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToServer => "to-server",
            Direction::FromServer => "from-server",
            Direction::Both => "both",
        }
    }
}

/// What a scheduled network fault does for its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetEffect {
    /// Drop each matching packet with probability `percent`/100 (nftables `numgen random`).
    Loss { percent: u8 },
    /// Drop every matching packet.
    Partition,
    /// Hold every matching packet `ms` before letting it through (NFQUEUE to a harness thread).
    Delay { ms: u64 },
}

/// A validated network fault: effect, direction, window length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NetFault {
    pub effect: NetEffect,
    pub direction: Direction,
    pub duration_ms: u64,
}

impl NetFault {
    pub fn describe(&self) -> String {
        let what = match self.effect {
            NetEffect::Loss { percent } => format!("net-loss {percent}%"),
            NetEffect::Partition => "net-partition".into(),
            NetEffect::Delay { ms } => format!("net-delay {ms}ms"),
        };
        format!(
            "{what} {} for {}ms",
            self.direction.as_str(),
            self.duration_ms
        )
    }
}

/// The loopback address instance `i` connects to.
pub fn instance_addr(instance: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, NET_BASE + instance as u8)
}

/// The processor URL of instance `i`: the server URL with its host replaced by the instance's address.
pub fn instance_url(url: &str, instance: u32) -> Result<String, String> {
    let port = server_port(url)?;
    let addr = std::net::SocketAddr::from((instance_addr(instance), port));
    crate::proxy::route_url(url, addr)
        .map(|(_, u)| u)
        .map_err(|e| e.to_string())
}

fn server_port(url: &str) -> Result<u16, String> {
    use processor::store::url::DbUrl;
    match DbUrl::parse(url) {
        Ok(DbUrl::Postgres(pg)) => pg
            .host_port()
            .map(|(_, p)| p)
            .ok_or_else(|| format!("{pg} has no TCP port")),
        _ => Err("network faults need a PostgreSQL url".into()),
    }
}

/// Runs `body` on a thread inside a fresh network namespace with `lo` up and a private PostgreSQL cluster
/// listening on 127.0.0.1 and on every instance's address; returns what `body` returns.
pub fn run_isolated<T: Send>(
    instances: u32,
    body: impl FnOnce(&mut dyn Launcher) -> Result<T, String> + Send,
) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(move || {
            enter_fresh_namespace()?;
            let bin = fixtures::pg::PgCluster::bin_dir()
                .ok_or("network faults need the PostgreSQL server binaries")?;
            let mut addrs = vec!["127.0.0.1".to_owned()];
            addrs.extend((0..instances).map(|i| instance_addr(i).to_string()));
            let cluster = fixtures::pg::PgCluster::start_with(fixtures::pg::Flavor {
                bin,
                settings: vec![format!("listen_addresses={}", addrs.join(","))],
                before_initdb: &|_| Ok(()),
                after_initdb: &|_| Ok(()),
            })
            .map_err(|e| format!("cannot start PostgreSQL in the network namespace: {e}"))?;
            let mut launcher = PgLauncher::new(cluster);
            body(&mut launcher)
        })
        .join()
        .unwrap_or_else(|_| Err("the network namespace's thread panicked".into()))
    })
}

/// Moves the calling thread into a new network namespace and brings its `lo` up; checks that `nft` runs there.
fn enter_fresh_namespace() -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        format!("cannot create a network namespace (unshare CLONE_NEWNET; network faults need root): {e}")
    })?;
    run("ip", &["link", "set", "lo", "up"], None)?;
    run("nft", &["list", "ruleset"], None)
        .map_err(|e| format!("{e} (network faults need nftables: apt-get install -y nftables)"))?;
    Ok(())
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes())
            .map_err(|e| format!("cannot write to {program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nftables table of fault `fi` (one table per fault: removing the fault is deleting its table).
fn table(fi: usize) -> String {
    format!("shredproof_fault_{fi}")
}

/// The ruleset of one loss or partition fault: an `output` chain on which every packet of the instance's
/// direction(s) gets `verdict`, with a counter so the fault can report what it dropped. On `lo` every packet
/// passes `output` once, so one hook sees both directions.
fn ruleset(fi: usize, instance: u32, port: u16, direction: Direction, verdict: &str) -> String {
    let addr = instance_addr(instance);
    let to = format!("ip daddr {addr} tcp dport {port} {verdict}");
    let from = format!("ip saddr {addr} tcp sport {port} {verdict}");
    let rules = match direction {
        Direction::ToServer => to,
        Direction::FromServer => from,
        Direction::Both => format!("{to}\n    {from}"),
    };
    format!(
        "table inet {t} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    {rules}\n  }}\n}}\n",
        t = table(fi)
    )
}

/// The nftables verdict of a loss or partition (`None` for a delay: this kernel lacks nftables' own `queue`
/// expression, CONFIG_NFT_QUEUE, so a delay queues through the xtables NFQUEUE target, `iptables_specs`).
fn nft_verdict(effect: NetEffect) -> Option<String> {
    match effect {
        NetEffect::Loss { percent } => {
            Some(format!("numgen random mod 100 < {percent} counter drop"))
        }
        NetEffect::Partition => Some("counter drop".into()),
        NetEffect::Delay { .. } => None,
    }
}

/// The `iptables` rule specifications (chain OUTPUT) that queue the instance's packets to NFQUEUE `num`;
/// `--queue-bypass`: should the harness's queue reader be gone, packets pass rather than vanish.
fn iptables_specs(num: u16, instance: u32, port: u16, direction: Direction) -> Vec<Vec<String>> {
    let addr = instance_addr(instance).to_string();
    let spec = |side: &str, ports: &str| -> Vec<String> {
        [
            side,
            &addr,
            "-p",
            "tcp",
            ports,
            &port.to_string(),
            "-j",
            "NFQUEUE",
            "--queue-num",
            &num.to_string(),
            "--queue-bypass",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let to = spec("-d", "--dport");
    let from = spec("-s", "--sport");
    match direction {
        Direction::ToServer => vec![to],
        Direction::FromServer => vec![from],
        Direction::Both => vec![to, from],
    }
}

fn iptables(op: &str, spec: &[String]) -> Result<String, String> {
    let mut args = vec![op, "OUTPUT"];
    args.extend(spec.iter().map(String::as_str));
    run("iptables", &args, None).map_err(|e| {
        format!(
            "{e} (net-delay needs iptables with the NFQUEUE target: apt-get install -y iptables)"
        )
    })
}

/// The NFQUEUE number of fault `fi`'s delay.
fn queue_num(fi: usize) -> u16 {
    u16::try_from(fi).unwrap_or(u16::MAX)
}

/// A thread that reads one NFQUEUE and accepts each packet `delay` after it arrived (in arrival order, so TCP
/// sees a longer path, not reordering). Started from the namespace's thread, so its netlink socket is in it.
struct Delayer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<u64, String>>,
}

impl Delayer {
    fn start(num: u16, delay: Duration) -> Result<Delayer, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let opened = nfq::Queue::open().and_then(|mut q| {
                q.bind(num)?;
                q.set_copy_range(num, 0)?;
                q.set_nonblocking(true);
                Ok(q)
            });
            let mut q = match opened {
                Ok(q) => {
                    let _ = ready_tx.send(Ok(()));
                    q
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot read NFQUEUE {num}: {e}")));
                    return Ok(0);
                }
            };
            hold_and_release(&mut q, delay, &flag)
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Delayer { stop, handle }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the NFQUEUE reader ended before it was ready".into()),
        }
    }

    /// Call after the rules that queue to it are gone: releases what it holds, then ends; returns the count.
    fn finish(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .unwrap_or_else(|_| Err("the NFQUEUE reader panicked".into()))
    }
}

/// The delay loop: queue each packet with its release time, accept those due, poll every millisecond. Once
/// `stop` is set (no rule queues to it any more, and the kernel delivered every queued packet to the socket when
/// it queued it) it drains the socket and releases everything held before ending.
fn hold_and_release(q: &mut nfq::Queue, delay: Duration, stop: &AtomicBool) -> Result<u64, String> {
    let mut held: std::collections::VecDeque<(Instant, nfq::Message)> = Default::default();
    let mut count = 0;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        match q.recv() {
            Ok(m) => {
                held.push_back((Instant::now() + delay, m));
                count += 1;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("NFQUEUE read: {e}")),
        }
        let now = Instant::now();
        while held.front().is_some_and(|(t, _)| stopping || now >= *t) {
            if let Some((_, mut m)) = held.pop_front() {
                m.set_verdict(nfq::Verdict::Accept);
                q.verdict(m).map_err(|e| format!("NFQUEUE verdict: {e}"))?;
            }
        }
        if stopping && held.is_empty() {
            return Ok(count);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The open network-fault windows of one phase: each applied rule set, when it is to be removed, and the delay
/// thread of a `net-delay`.
#[derive(Default)]
pub struct Windows {
    open: Vec<(usize, Instant, Option<Delay>)>,
}

/// An open `net-delay`: its queue reader and the iptables rules that feed it.
struct Delay {
    reader: Delayer,
    specs: Vec<Vec<String>>,
}

impl Windows {
    /// Applies fault `fi` on `instance` (the server at `url`); returns the note for the fault record.
    pub fn open(
        &mut self,
        fi: usize,
        instance: u32,
        url: &str,
        f: &NetFault,
    ) -> Result<String, String> {
        let port = server_port(url)?;
        let until = Instant::now() + Duration::from_millis(f.duration_ms);
        let addr = instance_addr(instance);
        let Some(verdict) = nft_verdict(f.effect) else {
            let NetEffect::Delay { ms } = f.effect else {
                return Err("no rule for this network fault".into());
            };
            // The reader first: rules queueing to nobody would let packets pass (bypass) and prove nothing.
            let reader = Delayer::start(queue_num(fi), Duration::from_millis(ms))?;
            let specs = iptables_specs(queue_num(fi), instance, port, f.direction);
            let mut added: Vec<&Vec<String>> = Vec::new();
            for spec in &specs {
                if let Err(e) = iptables("-A", spec) {
                    for s in &added {
                        let _ = iptables("-D", s);
                    }
                    let _ = reader.finish();
                    return Err(e);
                }
                added.push(spec);
            }
            self.open.push((fi, until, Some(Delay { reader, specs })));
            return Ok(format!("iptables NFQUEUE rules on lo for {addr}:{port}"));
        };
        let rules = ruleset(fi, instance, port, f.direction, &verdict);
        run("nft", &["-f", "-"], Some(&rules))?;
        self.open.push((fi, until, None));
        Ok(format!("nftables rules on lo for {addr}:{port}"))
    }

    /// Removes the rule sets whose window is over (all of them with `all`); returns each closed fault's index and
    /// what its counters dropped (or why it could not be removed).
    pub fn close_due(&mut self, all: bool) -> Vec<(usize, String)> {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) =
            self.open.drain(..).partition(|(_, t, _)| all || now >= *t);
        self.open = keep;
        due.into_iter()
            .map(|(fi, _, delay)| (fi, close(fi, delay)))
            .collect()
    }

    /// Whether a window is still open.
    pub fn busy(&self) -> bool {
        !self.open.is_empty()
    }
}

/// Removes one fault's rules; says what they did.
fn close(fi: usize, delay: Option<Delay>) -> String {
    if let Some(d) = delay {
        let removed: Result<Vec<String>, String> =
            d.specs.iter().map(|s| iptables("-D", s)).collect();
        // Removed first: the reader then releases what it still holds and ends.
        let held = d.reader.finish();
        return match (removed, held) {
            (Ok(_), Ok(n)) => format!("delayed {n} packet(s), rules removed"),
            (Err(e), _) | (_, Err(e)) => {
                format!("could not remove the rules or read the queue: {e}")
            }
        };
    }
    let matched =
        run("nft", &["list", "table", "inet", &table(fi)], None).map(|t| counted_packets(&t));
    let removed = run("nft", &["delete", "table", "inet", &table(fi)], None);
    match (matched, removed) {
        (Ok(n), Ok(_)) => format!("dropped {n} packet(s), rules removed"),
        (_, Err(e)) | (Err(e), _) => format!("could not read or remove the rules: {e}"),
    }
}

/// The sum of `counter packets N` in an `nft list table` output.
fn counted_packets(listing: &str) -> u64 {
    let words: Vec<&str> = listing.split_whitespace().collect();
    words
        .windows(3)
        .filter(|w| w[0] == "counter" && w[1] == "packets")
        .filter_map(|w| w[2].parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_one_instance_and_direction() {
        let f = NetFault {
            effect: NetEffect::Loss { percent: 30 },
            direction: Direction::ToServer,
            duration_ms: 100,
        };
        let r = ruleset(
            2,
            1,
            5432,
            f.direction,
            &nft_verdict(f.effect).expect("nft"),
        );
        assert!(r.contains(
            "ip daddr 127.0.0.12 tcp dport 5432 numgen random mod 100 < 30 counter drop"
        ));
        assert!(!r.contains("saddr"));
        let both = ruleset(0, 0, 7, Direction::Both, "counter drop");
        let q = iptables_specs(4, 0, 7, Direction::FromServer);
        assert_eq!(
            q[0].join(" "),
            "-s 127.0.0.11 -p tcp --sport 7 -j NFQUEUE --queue-num 4 --queue-bypass"
        );
        assert!(nft_verdict(NetEffect::Delay { ms: 5 }).is_none());
        assert!(both.contains("ip saddr 127.0.0.11 tcp sport 7 counter drop"));
        assert!(both.contains("ip daddr 127.0.0.11 tcp dport 7 counter drop"));
    }

    #[test]
    fn counters_are_summed() {
        let t = "table inet x {\n chain out {\n ip daddr 127.0.0.11 tcp dport 1 counter packets 12 bytes 800 drop\n \
                 ip saddr 127.0.0.11 tcp sport 1 counter packets 3 bytes 10 drop\n }\n}";
        assert_eq!(counted_packets(t), 15);
    }

    #[test]
    fn instance_urls_change_only_the_host() {
        let u = instance_url("postgres://postgres@127.0.0.1:5000/db", 2).expect("url");
        assert!(u.contains("127.0.0.13:5000"), "{u}");
        assert!(u.ends_with("/db"), "{u}");
    }
}
