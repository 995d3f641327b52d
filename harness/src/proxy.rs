//! A TCP fault proxy between the processors and a database server: it forwards bytes both ways and, on command,
//! resets every connection, blackholes traffic for a while, adds latency, lets one COMMIT through while cutting
//! its reply, or swallows one COMMIT before the server sees it (either way the client cannot know whether it
//! committed; the first did, the second did not). Plain std threads; it binds 127.0.0.1 only and
//! must never interpret or rewrite the bytes it forwards beyond spotting a PostgreSQL `COMMIT` query.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the proxy waits for the upstream server to accept a connection.
const UPSTREAM_CONNECT_TIMEOUT_SECS: u64 = 5;
/// How often a blocked accept loop or a held (blackholed) chunk looks at the clock and the stop flag.
const POLL_MS: u64 = 2;
/// How long a cut connection waits for the server's reply to the COMMIT before resetting anyway.
const CUT_REPLY_WAIT_MS: u64 = 5_000;
/// A PostgreSQL simple-protocol Query message carrying exactly `COMMIT`: 'Q', int32 length 11, "COMMIT\0".
/// The processor's store sends its COMMIT this way (`batch_execute`).
const PG_COMMIT_QUERY: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
const READ_BUF: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot bind the fault proxy on 127.0.0.1: {0}")]
    Bind(std::io::Error),
    #[error("cannot resolve upstream {addr}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("cannot start the proxy's accept thread: {0}")]
    Thread(std::io::Error),
    #[error("url {0}: expected postgres://[user[:password]@]host[:port][/db][?params]")]
    Url(String),
}

/// What happened to one COMMIT whose reply was cut, or which was dropped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CutRecord {
    /// The command tag the server sent (and the client never saw): `COMMIT`, `ROLLBACK`, or `none` when the
    /// server did not answer before the wait ran out; `never sent` for a dropped COMMIT.
    pub server_said: String,
}

/// What an armed cut does to the next COMMIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// Forward the COMMIT, swallow its reply, reset the connection: the transaction committed, the client
    /// does not know.
    Reply,
    /// Forward what precedes the COMMIT, swallow the COMMIT itself, reset the connection: the server rolls the
    /// transaction back when the connection goes, the client does not know.
    Commit,
}

/// `cut_armed` values.
const ARMED_NONE: u8 = 0;
const ARMED_REPLY: u8 = 1;
const ARMED_COMMIT: u8 = 2;

/// Counters for the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProxyStats {
    pub accepted: u64,
    pub upstream_failures: u64,
    pub resets: u64,
    pub cuts: Vec<CutRecord>,
}

#[derive(Default)]
struct Faults {
    blackhole_until: Option<Instant>,
    latency: Option<(Duration, Instant)>,
}

struct Conn {
    id: u64,
    client: TcpStream,
    server: TcpStream,
}

struct Shared {
    stop: AtomicBool,
    faults: Mutex<Faults>,
    conns: Mutex<Vec<Conn>>,
    cut_armed: AtomicU8,
    cuts: Mutex<Vec<CutRecord>>,
    accepted: AtomicU64,
    upstream_failures: AtomicU64,
    resets: AtomicU64,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a pump thread panicked; the data (flags, lists) is still meaningful.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Holds the caller while a blackhole is active, then applies latency. Returns false when the proxy stops.
    fn wait_turn(&self) -> bool {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            let (hole, lat) = {
                let f = lock(&self.faults);
                (f.blackhole_until, f.latency)
            };
            let now = Instant::now();
            if hole.is_some_and(|until| now < until) {
                std::thread::sleep(Duration::from_millis(POLL_MS));
                continue;
            }
            if let Some((delay, until)) = lat {
                if now < until {
                    std::thread::sleep(delay);
                }
            }
            return true;
        }
    }

    fn forget(&self, id: u64) {
        lock(&self.conns).retain(|c| c.id != id);
    }
}

/// Closes a socket with an RST rather than a FIN (SO_LINGER with a zero timeout), then wakes its readers.
fn abort(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // Best effort: without the option the peer sees a FIN, which a client mid-protocol treats as a lost
    // connection all the same.
    let _ = nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::Linger, &linger);
    let _ = s.shutdown(Shutdown::Both);
}

/// The running proxy. Dropping it stops accepting and resets every open connection.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port and forwards every accepted connection to `upstream`.
    pub fn start(upstream: &str) -> Result<Self, ProxyError> {
        let up = upstream
            .to_socket_addrs()
            .map_err(|e| ProxyError::Resolve {
                addr: upstream.to_owned(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| ProxyError::Resolve {
                addr: upstream.to_owned(),
                reason: "no address".into(),
            })?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(ProxyError::Bind)?;
        // Non-blocking accept, so the loop can notice the stop flag without a wake-up connection.
        listener.set_nonblocking(true).map_err(ProxyError::Bind)?;
        let addr = listener.local_addr().map_err(ProxyError::Bind)?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            faults: Mutex::default(),
            conns: Mutex::default(),
            cut_armed: AtomicU8::new(ARMED_NONE),
            cuts: Mutex::default(),
            accepted: AtomicU64::new(0),
            upstream_failures: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
        });
        let sh = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(&listener, up, &sh))
            .map_err(ProxyError::Thread)?;
        Ok(FaultProxy {
            addr,
            upstream: up,
            shared,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Connections currently forwarded.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Resets (RST) every open connection on both sides; returns how many there were.
    pub fn reset_all(&self) -> usize {
        let conns: Vec<Conn> = std::mem::take(&mut *lock(&self.shared.conns));
        for c in &conns {
            abort(&c.client);
            abort(&c.server);
        }
        self.shared
            .resets
            .fetch_add(conns.len() as u64, Ordering::SeqCst);
        conns.len()
    }

    /// Forwards nothing, in either direction and for new connections, until `duration` has passed. Held bytes
    /// are delivered afterwards, as TCP would after a healed partition.
    pub fn blackhole(&self, duration: Duration) {
        lock(&self.shared.faults).blackhole_until = Some(Instant::now() + duration);
    }

    /// Delays every forwarded chunk by `delay` until `duration` has passed.
    pub fn latency(&self, delay: Duration, duration: Duration) {
        lock(&self.shared.faults).latency = Some((delay, Instant::now() + duration));
    }

    /// The next PostgreSQL COMMIT to pass is forwarded, its reply dropped, and its connection then reset.
    pub fn arm_cut_reply(&self) {
        self.arm_cut(CutMode::Reply);
    }

    /// Arms a cut of the next PostgreSQL COMMIT to pass: its reply ([`CutMode::Reply`]) or the COMMIT itself
    /// ([`CutMode::Commit`]).
    pub fn arm_cut(&self, mode: CutMode) {
        let v = match mode {
            CutMode::Reply => ARMED_REPLY,
            CutMode::Commit => ARMED_COMMIT,
        };
        self.shared.cut_armed.store(v, Ordering::SeqCst);
    }

    /// Whether an armed cut is still waiting for a COMMIT.
    pub fn cut_pending(&self) -> bool {
        self.shared.cut_armed.load(Ordering::SeqCst) != ARMED_NONE
    }

    /// COMMITs whose reply was cut, or which were dropped, so far.
    pub fn cuts(&self) -> Vec<CutRecord> {
        lock(&self.shared.cuts).clone()
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.shared.accepted.load(Ordering::SeqCst),
            upstream_failures: self.shared.upstream_failures.load(Ordering::SeqCst),
            resets: self.shared.resets.load(Ordering::SeqCst),
            cuts: self.cuts(),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.reset_all();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, sh: &Arc<Shared>) {
    while !sh.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                sh.accepted.fetch_add(1, Ordering::SeqCst);
                let sh2 = Arc::clone(sh);
                let spawned = std::thread::Builder::new()
                    .name("proxy-conn".into())
                    .spawn(move || serve(client, upstream, &sh2));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "proxy cannot start a connection thread");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(POLL_MS));
            }
            Err(e) => {
                tracing::warn!(error = %e, "proxy accept failed");
                std::thread::sleep(Duration::from_millis(POLL_MS));
            }
        }
    }
}

/// One client connection: connect upstream (after any blackhole), then pump both directions.
fn serve(client: TcpStream, upstream: SocketAddr, sh: &Arc<Shared>) {
    if client.set_nonblocking(false).is_err() || !sh.wait_turn() {
        return;
    }
    let server = match TcpStream::connect_timeout(
        &upstream,
        Duration::from_secs(UPSTREAM_CONNECT_TIMEOUT_SECS),
    ) {
        Ok(s) => s,
        Err(_) => {
            // The server is down (a restart fault): the client sees its connection reset and retries.
            sh.upstream_failures.fetch_add(1, Ordering::SeqCst);
            abort(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let id = sh.next_id.fetch_add(1, Ordering::SeqCst);
    let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    ) else {
        abort(&client);
        abort(&server);
        return;
    };
    lock(&sh.conns).push(Conn {
        id,
        client: c3,
        server: s3,
    });
    // Set while this connection's reply to a COMMIT is being swallowed.
    let cutting = Arc::new(AtomicBool::new(false));
    let (sh_up, cut_up) = (Arc::clone(sh), Arc::clone(&cutting));
    let up = std::thread::Builder::new()
        .name("proxy-up".into())
        .spawn(move || pump_up(client, s2, &sh_up, &cut_up));
    pump_down(server, c2, sh, &cutting, id);
    if let Ok(h) = up {
        let _ = h.join();
    }
    sh.forget(id);
}

/// Client → server. Spots the COMMIT to cut when a cut is armed: a reply cut forwards it and lets `pump_down`
/// swallow the reply; a commit drop forwards only what precedes it and resets both sides at once.
fn pump_up(mut client: TcpStream, mut server: TcpStream, sh: &Shared, cutting: &AtomicBool) {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !sh.wait_turn() {
            break;
        }
        let chunk = &buf[..n];
        let armed = sh.cut_armed.load(Ordering::SeqCst);
        let at = if armed == ARMED_NONE {
            None
        } else {
            find(chunk, PG_COMMIT_QUERY)
        };
        if let Some(at) = at {
            if sh
                .cut_armed
                .compare_exchange(armed, ARMED_NONE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                if armed == ARMED_COMMIT {
                    // The server never sees the COMMIT: it sees the connection go, mid-transaction, and rolls
                    // back. Recorded before the reset, so the runner's wait on the record cannot miss it.
                    let _ = server.write_all(&chunk[..at]);
                    lock(&sh.cuts).push(CutRecord {
                        server_said: "never sent".to_owned(),
                    });
                    sh.resets.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                // Set before forwarding, so the reply cannot slip through ahead of the flag.
                cutting.store(true, Ordering::SeqCst);
                let _ = server.set_read_timeout(Some(Duration::from_millis(CUT_REPLY_WAIT_MS)));
            }
        }
        if server.write_all(chunk).is_err() {
            break;
        }
    }
    abort(&client);
    abort(&server);
}

/// Server → client. While cutting, swallows the server's reply, records what it said, then resets both sides.
fn pump_down(
    mut server: TcpStream,
    mut client: TcpStream,
    sh: &Shared,
    cutting: &AtomicBool,
    id: u64,
) {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let read = server.read(&mut buf);
        if cutting.load(Ordering::SeqCst) {
            let said = match &read {
                Ok(n) if contains(&buf[..*n], b"COMMIT\0") => "COMMIT",
                Ok(n) if contains(&buf[..*n], b"ROLLBACK\0") => "ROLLBACK",
                Ok(_) => "other",
                Err(_) => "none",
            };
            lock(&sh.cuts).push(CutRecord {
                server_said: said.to_owned(),
            });
            sh.resets.fetch_add(1, Ordering::SeqCst);
            sh.forget(id);
            break;
        }
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !sh.wait_turn() {
            break;
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    abort(&client);
    abort(&server);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits a `postgres://` or SQL Server URL into (upstream `host:port`, the same URL pointed at `proxy`), through
/// the processor's own URL parser, so the proxy and the processor agree on where the password ends.
pub fn route_url(url: &str, proxy: SocketAddr) -> Result<(String, String), ProxyError> {
    use processor::store::url::DbUrl;
    let pg = match DbUrl::parse(url) {
        Ok(DbUrl::Postgres(pg)) => pg,
        Ok(DbUrl::Mssql(cfg)) => {
            // A named instance without a port would ask the SQL Browser for one: the proxy needs a fixed port.
            let port = cfg
                .port
                .ok_or_else(|| ProxyError::Url(format!("{} has no TCP port", cfg.redacted())))?;
            let upstream = format!("{}:{port}", cfg.host);
            let mut routed = cfg.clone();
            routed.host = proxy.ip().to_string();
            routed.port = Some(proxy.port());
            routed.instance = None;
            return Ok((upstream, routed.connection_url()));
        }
        Ok(other) => return Err(ProxyError::Url(format!("{other} is not a PostgreSQL url"))),
        Err(e) => return Err(ProxyError::Url(e.to_string())),
    };
    let (host, port) = pg
        .host_port()
        .ok_or_else(|| ProxyError::Url(format!("{pg} has no TCP host")))?;
    let upstream = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let routed = pg
        .with_host_port(&proxy.ip().to_string(), proxy.port())
        .map_err(|e| ProxyError::Url(e.to_string()))?;
    Ok((upstream, routed.connection_url()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn routes_urls() {
        let p: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let (up, routed) =
            route_url("postgres://postgres@127.0.0.1:5433/db_1?sslmode=disable", p).expect("ok");
        assert_eq!(up, "127.0.0.1:5433");
        assert_eq!(
            routed,
            "postgres://postgres@127.0.0.1:7000/db_1?sslmode=disable"
        );
        // The last '@' ends the user info; the routed URL escapes the one in the password.
        let (up, routed) = route_url("postgres://u:p@w@localhost/x", p).expect("ok");
        assert_eq!(up, "localhost:5432");
        assert_eq!(routed, "postgres://u:p%40w@127.0.0.1:7000/x");
        assert!(route_url("host=/tmp dbname=x", p).is_err());
        // SQL Server: the same login and database, pointed at the proxy; a named instance needs a port here.
        let (up, routed) = route_url(
            "mssql://sa:pw@127.0.0.1:1433/db_2?trust_server_certificate=true",
            p,
        )
        .expect("ok");
        assert_eq!(up, "127.0.0.1:1433");
        assert!(
            routed.starts_with("mssql://sa:pw@127.0.0.1:7000/db_2?"),
            "{routed}"
        );
        assert!(route_url("Server=host\\INST;Database=x;User Id=u;Password=p", p).is_err());
    }

    /// An echo server standing in for the database.
    fn echo() -> (SocketAddr, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = l.local_addr().expect("addr");
        let h = std::thread::spawn(move || {
            for s in l.incoming().take(4) {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut b = [0u8; 256];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 || s.write_all(&b[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (a, h)
    }

    fn connect(p: &FaultProxy) -> TcpStream {
        let s = TcpStream::connect(p.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    }

    #[test]
    fn forwards_resets_and_cuts() {
        let (up, _h) = echo();
        let p = FaultProxy::start(&up.to_string()).expect("start");
        assert!(p.addr().ip().is_loopback());
        let mut c = connect(&p);
        c.write_all(b"hello").expect("write");
        let mut b = [0u8; 5];
        c.read_exact(&mut b).expect("echo");
        assert_eq!(&b, b"hello");
        assert_eq!(p.reset_all(), 1);
        let mut rest = [0u8; 8];
        // After a reset the client sees EOF or an error, never data.
        assert!(matches!(c.read(&mut rest), Ok(0) | Err(_)));

        // Cut-reply: the COMMIT reaches the server (the echo answers), the client gets nothing back.
        let mut c = connect(&p);
        c.write_all(b"x").expect("write");
        c.read_exact(&mut [0u8; 1]).expect("echo");
        p.arm_cut_reply();
        assert!(p.cut_pending());
        c.write_all(PG_COMMIT_QUERY).expect("write");
        assert!(matches!(c.read(&mut rest), Ok(0) | Err(_)));
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.cuts().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(p.cuts()[0].server_said, "COMMIT");
        assert!(!p.cut_pending());

        // Drop-commit: what precedes the COMMIT reaches the server, the COMMIT does not, the client sees a reset.
        let mut c = connect(&p);
        c.write_all(b"y").expect("write");
        c.read_exact(&mut [0u8; 1]).expect("echo");
        p.arm_cut(CutMode::Commit);
        assert!(p.cut_pending());
        let mut msg = b"z".to_vec();
        msg.extend_from_slice(PG_COMMIT_QUERY);
        c.write_all(&msg).expect("write");
        // The echo of "z" may or may not arrive before the reset; the COMMIT's echo never does.
        let mut got = Vec::new();
        let mut b = [0u8; 64];
        while let Ok(n) = c.read(&mut b) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        assert!(!contains(&got, b"COMMIT"), "the COMMIT reached the server");
        assert_eq!(p.cuts().len(), 2);
        assert_eq!(p.cuts()[1].server_said, "never sent");
        assert!(!p.cut_pending());
    }

    #[test]
    fn blackhole_holds_bytes_until_it_ends() {
        let (up, _h) = echo();
        let p = FaultProxy::start(&up.to_string()).expect("start");
        let mut c = connect(&p);
        c.write_all(b"a").expect("write");
        c.read_exact(&mut [0u8; 1]).expect("echo");
        let t = Instant::now();
        p.blackhole(Duration::from_millis(300));
        c.write_all(b"b").expect("write");
        let mut b = [0u8; 1];
        c.read_exact(&mut b).expect("delivered after the blackhole");
        assert_eq!(&b, b"b");
        assert!(t.elapsed() >= Duration::from_millis(300));
    }
}
