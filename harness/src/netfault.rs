//! Network faults in a private network namespace, with netfilter (`net-loss`, `net-partition`): issue 15's
//! "`ip netns` + `tc netem`" item. This kernel has no traffic-control qdiscs at all (`tc qdisc add … netem` answers
//! "Specified qdisc kind is unknown"), so packets are dropped by nftables rules on `lo` instead.
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
                after_initdb: &|_| Ok(()),
            })
            .map_err(|e| format!("cannot start PostgreSQL in the network namespace: {e}"))?;
            let mut launcher = PgLauncher { cluster };
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

/// The ruleset of one fault: an `output` chain on which every packet of the instance's direction(s) is dropped
/// (partition) or dropped at random (loss), with a counter so the fault can report what it dropped. On `lo`
/// every packet passes `output` once, so one hook sees both directions.
fn ruleset(fi: usize, instance: u32, port: u16, f: &NetFault) -> String {
    let addr = instance_addr(instance);
    let verdict = match f.effect {
        NetEffect::Loss { percent } => format!("numgen random mod 100 < {percent} counter drop"),
        NetEffect::Partition => "counter drop".into(),
    };
    let to = format!("ip daddr {addr} tcp dport {port} {verdict}");
    let from = format!("ip saddr {addr} tcp sport {port} {verdict}");
    let rules = match f.direction {
        Direction::ToServer => to,
        Direction::FromServer => from,
        Direction::Both => format!("{to}\n    {from}"),
    };
    format!(
        "table inet {t} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    {rules}\n  }}\n}}\n",
        t = table(fi)
    )
}

/// The open network-fault windows of one phase: each applied rule set and when it is to be removed.
#[derive(Default)]
pub struct Windows {
    open: Vec<(usize, Instant)>,
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
        run("nft", &["-f", "-"], Some(&ruleset(fi, instance, port, f)))?;
        self.open
            .push((fi, Instant::now() + Duration::from_millis(f.duration_ms)));
        Ok(format!(
            "nftables rules on lo for {}:{port}",
            instance_addr(instance)
        ))
    }

    /// Removes the rule sets whose window is over (all of them with `all`); returns each closed fault's index and
    /// what its counters dropped (or why it could not be removed).
    pub fn close_due(&mut self, all: bool) -> Vec<(usize, String)> {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) =
            self.open.drain(..).partition(|(_, t)| all || now >= *t);
        self.open = keep;
        due.into_iter()
            .map(|(fi, _)| {
                let dropped = run("nft", &["list", "table", "inet", &table(fi)], None)
                    .map(|t| dropped_packets(&t));
                let removed = run("nft", &["delete", "table", "inet", &table(fi)], None);
                let note = match (dropped, removed) {
                    (Ok(n), Ok(_)) => format!("dropped {n} packet(s), rules removed"),
                    (_, Err(e)) | (Err(e), _) => format!("could not read or remove the rules: {e}"),
                };
                (fi, note)
            })
            .collect()
    }

    /// Whether a window is still open.
    pub fn busy(&self) -> bool {
        !self.open.is_empty()
    }
}

/// The sum of `counter packets N` in an `nft list table` output.
fn dropped_packets(listing: &str) -> u64 {
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
        let r = ruleset(2, 1, 5432, &f);
        assert!(r.contains(
            "ip daddr 127.0.0.12 tcp dport 5432 numgen random mod 100 < 30 counter drop"
        ));
        assert!(!r.contains("saddr"));
        let both = ruleset(
            0,
            0,
            7,
            &NetFault {
                effect: NetEffect::Partition,
                direction: Direction::Both,
                ..f
            },
        );
        assert!(both.contains("ip saddr 127.0.0.11 tcp sport 7 counter drop"));
        assert!(both.contains("ip daddr 127.0.0.11 tcp dport 7 counter drop"));
    }

    #[test]
    fn counters_are_summed() {
        let t = "table inet x {\n chain out {\n ip daddr 127.0.0.11 tcp dport 1 counter packets 12 bytes 800 drop\n \
                 ip saddr 127.0.0.11 tcp sport 1 counter packets 3 bytes 10 drop\n }\n}";
        assert_eq!(dropped_packets(t), 15);
    }

    #[test]
    fn instance_urls_change_only_the_host() {
        let u = instance_url("postgres://postgres@127.0.0.1:5000/db", 2).expect("url");
        assert!(u.contains("127.0.0.13:5000"), "{u}");
        assert!(u.ends_with("/db"), "{u}");
    }
}
