//! SQL Server launchers: an existing server (`SHREDPROOF_MSSQL_URL` / `--db-url`), a private Babelfish when the
//! prebuilt install is in /opt/babelfish, or, built with the `testcontainers` feature, a
//! `mcr.microsoft.com/mssql/server` container started when a Docker engine answers.
//! Each run gets a fresh database created through the processor's own admin functions.
//! Must not print or log a password: whatever is shown goes through `MssqlConfig::redacted`; the full URL goes
//! only to the processor child processes (`--db`).

use super::{db_name, Backend, Capabilities, DbError, Launcher};
use processor::store::mssql::{self, config::MssqlConfig};
use processor::store::DbUrl;
use std::time::{Duration, Instant};

/// The environment variable naming an existing SQL Server (a `mssql://…` URL or an ADO.NET string whose login may
/// create and drop databases).
pub const ENV_URL: &str = "SHREDPROOF_MSSQL_URL";

/// A SQL Server (or Babelfish) server: connection and server faults through the proxy, restarts where the harness
/// started the server itself; no cut-reply (TDS is TLS-encrypted after login, the proxy cannot spot a COMMIT).
pub const CAPABILITIES: Capabilities = Capabilities {
    server: true,
    commit_cut: false,
    restart: true,
    reject_rows: true,
    lose_unsynced: false,
};

/// How `harness bench` loads the storage limit's rows into SQL Server.
pub const BULK_METHOD: &str =
    "SQL Server multi-row INSERT … VALUES (sp_executesql), one transaction";

/// The server `db_url` names, else `SHREDPROOF_MSSQL_URL`, else a private Babelfish or a container.
pub(super) fn launch(db_url: Option<&str>) -> Result<Box<dyn Launcher>, DbError> {
    let url = db_url
        .map(str::to_owned)
        .or_else(|| std::env::var(ENV_URL).ok().filter(|s| !s.is_empty()));
    match url {
        Some(u) => Ok(Box::new(ExternalMssql::new(&u)?)),
        None => without_url(),
    }
}

/// Which server answers: Babelfish or SQL Server.
pub(super) fn server_version(
    cfg: &MssqlConfig,
    contract: &processor::contract::Contract,
) -> anyhow::Result<String> {
    let s = mssql::MssqlStore::open(cfg, contract.clone())?;
    Ok(engine_label(s.server_kind()).into())
}

/// How reports and `harness bench` name the engine: Babelfish is never labelled SQL Server.
fn engine_label(kind: mssql::ServerKind) -> &'static str {
    match kind {
        mssql::ServerKind::Babelfish => {
            "Babelfish 4.2.0, not SQL Server (Babelfish for PostgreSQL, a TDS endpoint)"
        }
        mssql::ServerKind::SqlServer => "SQL Server",
    }
}

/// Copies `from`'s source documents into `to` (both on one server; `to` initialised, empty) in one statement.
pub(super) fn copy_source(
    from: &MssqlConfig,
    to: &MssqlConfig,
    contract: &processor::contract::Contract,
) -> Result<u64, DbError> {
    let fail = |e: &dyn std::fmt::Display| {
        DbError::Other(format!(
            "cannot copy the source documents on {}: {e}",
            to.redacted()
        ))
    };
    if (&from.host, from.port, &from.instance) != (&to.host, to.port, &to.instance) {
        return Err(fail(&"the two databases are on different servers"));
    }
    let db = from
        .database
        .as_deref()
        .ok_or_else(|| fail(&"no source database"))?;
    mssql::copy_source(to, db, contract).map_err(|e| fail(&e))
}

/// Database names are `shredproof_<run>`: [a-z0-9_], at most 63 characters (the processor's identifier rule).
pub fn database_name(run: &str) -> String {
    let mut s = format!("shredproof_{}", db_name(run).trim_start_matches('_'));
    s.truncate(63);
    s
}

/// Parses a SQL Server connection for a launcher. The error never repeats the input (it may hold a password).
pub fn server_config(url: &str) -> Result<MssqlConfig, DbError> {
    match DbUrl::parse(url) {
        Ok(DbUrl::Mssql(cfg)) => Ok(cfg),
        Ok(other) => Err(DbError::Other(format!(
            "--backend mssql needs a SQL Server url (mssql://… or Server=…;…), got a {} url",
            other.backend()
        ))),
        Err(e) => Err(DbError::Other(format!("invalid SQL Server url: {e}"))),
    }
}

/// An existing SQL Server: each run gets a database `shredproof_<run>`, dropped first if a previous run left it.
/// Databases are left in place after the run (for inspection), like `--db-url` for PostgreSQL.
pub struct ExternalMssql {
    server: MssqlConfig,
    /// The engine's label, detected by one login the first time the launcher is described.
    engine: std::sync::OnceLock<String>,
}

impl ExternalMssql {
    pub fn new(url: &str) -> Result<Self, DbError> {
        Ok(ExternalMssql {
            server: server_config(url)?,
            engine: std::sync::OnceLock::new(),
        })
    }

    /// Babelfish or SQL Server, from `SERVERPROPERTY('Babelfish')` at login (`MssqlStore::server_kind`); a server
    /// that does not let the login in yet is named by what was asked for, with the reason.
    fn engine(&self) -> &str {
        self.engine.get_or_init(|| {
            let mut probe = self.server.clone();
            probe.connect_timeout = Duration::from_secs(5);
            let opened = processor::contract::Contract::from_json(fixtures::CONTRACT_JSON)
                .map_err(|e| e.to_string())
                .and_then(|c| mssql::MssqlStore::open(&probe, c).map_err(|e| e.to_string()));
            match opened {
                Ok(s) => engine_label(s.server_kind()).to_owned(),
                Err(e) => format!("SQL Server (engine not detected: {e})"),
            }
        })
    }

    /// The URL a child process connects to database `db` with. Contains the password: never print it.
    pub fn url_for(&self, db: &str) -> String {
        self.server.with_database(db).connection_url()
    }

    fn create_fresh(&self, name: &str) -> Result<String, DbError> {
        let db = database_name(name);
        let fail = |what: &str, e: processor::store::StoreError| {
            DbError::Other(format!(
                "cannot {what} database {db} on {}: {e}",
                self.server.redacted()
            ))
        };
        mssql::recreate_database(&self.server, &db).map_err(|e| fail("drop and create", e))?;
        Ok(db)
    }
}

impl Launcher for ExternalMssql {
    fn backend(&self) -> Backend {
        Backend::Mssql
    }
    fn fresh_database(&mut self, name: &str) -> Result<String, DbError> {
        let db = self.create_fresh(name)?;
        Ok(self.url_for(&db))
    }
    fn restart(&mut self) -> Result<(), DbError> {
        Err(DbError::Other(format!(
            "cannot restart a SQL Server given by {ENV_URL} or --db-url (restart faults need the testcontainers launcher)"
        )))
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            restart: false,
            ..CAPABILITIES
        }
    }
    fn describe(&self) -> String {
        format!("{} at {}", self.engine(), self.server.redacted())
    }
}

/// The launcher used when no URL is given: a private Babelfish when one is installed, else a container where
/// this build can start one, otherwise an environment error (exit 3) that says what to provide.
pub fn without_url() -> Result<Box<dyn Launcher>, DbError> {
    if fixtures::babelfish::installed() {
        return Ok(Box::new(BabelfishLauncher::start()?));
    }
    from_container()
}

/// Login must work within this long after the server (re)starts.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Between readiness probes (each probe is a real login).
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Logs in until it works or `timeout` passes: readiness by probing.
fn wait_ready(cfg: &MssqlConfig, timeout: Duration) -> Result<(), DbError> {
    let contract = processor::contract::Contract::from_json(fixtures::CONTRACT_JSON)
        .map_err(|e| DbError::Other(format!("built-in contract: {e}")))?;
    let mut probe = cfg.clone();
    probe.connect_timeout = Duration::from_secs(5);
    let deadline = Instant::now() + timeout;
    loop {
        match mssql::MssqlStore::open(&probe, contract.clone()) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(DbError::Other(format!(
                    "SQL Server at {} did not accept a login within {} s: {e}",
                    cfg.redacted(),
                    timeout.as_secs()
                )))
            }
            Err(_) => std::thread::sleep(PROBE_INTERVAL),
        }
    }
}

/// A private Babelfish for PostgreSQL 4.2 (a SQL Server TDS endpoint, not SQL Server) from the prebuilt install
/// in /opt/babelfish: free loopback ports, a fresh sysadmin password, removed when dropped. It can be crashed and
/// restarted on the same data and ports, so `restart-db` runs on the SQL Server backend too.
pub struct BabelfishLauncher {
    server: fixtures::babelfish::Babelfish,
    inner: ExternalMssql,
    /// The database of the current run: after a restart, readiness means *it* accepts logins again.
    last_db: Option<String>,
}

impl BabelfishLauncher {
    pub fn start() -> Result<Self, DbError> {
        let server = fixtures::babelfish::Babelfish::start()
            .map_err(|e| DbError::Other(format!("cannot start a private Babelfish: {e}")))?;
        let inner = ExternalMssql::new(&server.url("master"))?;
        wait_ready(&inner.server, READY_TIMEOUT)?;
        Ok(BabelfishLauncher {
            server,
            inner,
            last_db: None,
        })
    }
}

impl Launcher for BabelfishLauncher {
    fn backend(&self) -> Backend {
        Backend::Mssql
    }
    fn fresh_database(&mut self, name: &str) -> Result<String, DbError> {
        let db = self.inner.create_fresh(name)?;
        self.last_db = Some(db.clone());
        Ok(self.inner.url_for(&db))
    }
    /// SIGKILL to the whole server (no shutdown, like a power cut), then a start on the same data and ports;
    /// returns once the current run's database accepts logins again.
    fn restart(&mut self) -> Result<(), DbError> {
        let fail = |what: &str, e: fixtures::pg::PgError| {
            DbError::Other(format!("cannot {what} the private Babelfish: {e}"))
        };
        self.server.kill9().map_err(|e| fail("kill", e))?;
        self.server.restart().map_err(|e| fail("restart", e))?;
        let cfg = match &self.last_db {
            Some(db) => self.inner.server.with_database(db),
            None => self.inner.server.clone(),
        };
        wait_ready(&cfg, READY_TIMEOUT)
    }
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }
    fn describe(&self) -> String {
        format!(
            "Babelfish 4.2.0, not SQL Server (a private Babelfish for PostgreSQL, TDS on 127.0.0.1:{})",
            self.server.tds_port()
        )
    }
    fn keep(&mut self) -> String {
        let dir = self.server.keep();
        format!(
            "Babelfish data directory {} (stopped; start it with {}/bin/pg_ctl -D {} start as the postgres user)",
            dir.display(),
            fixtures::babelfish::prefix().display(),
            dir.display()
        )
    }
}

/// The container launcher, or the error saying what to provide.
pub fn from_container() -> Result<Box<dyn Launcher>, DbError> {
    #[cfg(feature = "testcontainers")]
    {
        Ok(Box::new(container::ContainerMssql::start()?))
    }
    #[cfg(not(feature = "testcontainers"))]
    {
        Err(DbError::NoMssql)
    }
}

/// Where the Docker engine listens: `DOCKER_HOST` (`unix://PATH` or `tcp://HOST:PORT`), else the default socket.
#[cfg(any(feature = "testcontainers", test))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerEndpoint {
    Unix(std::path::PathBuf),
    Tcp(String),
}

#[cfg(any(feature = "testcontainers", test))]
impl DockerEndpoint {
    pub fn from_docker_host(docker_host: Option<&str>) -> Result<Self, String> {
        match docker_host.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(DockerEndpoint::Unix("/var/run/docker.sock".into())),
            Some(h) => {
                if let Some(p) = h.strip_prefix("unix://") {
                    Ok(DockerEndpoint::Unix(p.into()))
                } else if let Some(a) = h.strip_prefix("tcp://") {
                    Ok(DockerEndpoint::Tcp(a.trim_end_matches('/').to_owned()))
                } else {
                    Err(format!(
                        "DOCKER_HOST={h} is not supported (use unix://PATH or tcp://HOST:PORT)"
                    ))
                }
            }
        }
    }

    /// Asks the engine `GET /_ping` and expects `200 OK`, within a few seconds: a socket file alone does not mean
    /// an engine answers. With `tls`, only the TCP connection is checked (the ping would need the client certs).
    pub fn probe(&self, tls: bool) -> Result<(), String> {
        use std::io::{Read, Write};
        use std::time::Duration;
        const WAIT: Duration = Duration::from_secs(3);
        fn ping(mut s: impl Read + Write) -> std::io::Result<String> {
            s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
            let mut buf = Vec::new();
            s.take(4096).read_to_end(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        let answer = match self {
            DockerEndpoint::Unix(path) => {
                let s = std::os::unix::net::UnixStream::connect(path)
                    .map_err(|e| format!("no Docker engine at unix://{}: {e}", path.display()))?;
                s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
                s.set_write_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
                ping(s)
            }
            DockerEndpoint::Tcp(addr) => {
                use std::net::ToSocketAddrs;
                let sa = addr
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve DOCKER_HOST tcp://{addr}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("cannot resolve DOCKER_HOST tcp://{addr}"))?;
                let s = std::net::TcpStream::connect_timeout(&sa, WAIT)
                    .map_err(|e| format!("no Docker engine at tcp://{addr}: {e}"))?;
                if tls {
                    return Ok(());
                }
                s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
                s.set_write_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
                ping(s)
            }
        }
        .map_err(|e| format!("the Docker engine at {self} did not answer a ping: {e}"))?;
        let status = answer.lines().next().unwrap_or_default();
        if status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200") {
            Ok(())
        } else {
            Err(format!(
                "the Docker engine at {self} answered '{status}' to a ping"
            ))
        }
    }
}

#[cfg(any(feature = "testcontainers", test))]
impl std::fmt::Display for DockerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DockerEndpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            DockerEndpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

#[cfg(feature = "testcontainers")]
mod container {
    use super::{db_name, Backend, Capabilities, DbError, Launcher};
    use super::{DockerEndpoint, ExternalMssql};
    use std::time::Duration;
    use testcontainers_modules::mssql_server::MssqlServer;
    use testcontainers_modules::testcontainers::core::IntoContainerPort;
    use testcontainers_modules::testcontainers::runners::SyncRunner;
    use testcontainers_modules::testcontainers::{Container, ImageExt};

    /// The image tag CI and docs/sqlserver.md use too.
    const IMAGE_TAG: &str = "2022-latest";
    /// First start may include pulling the image (~1.5 GB).
    const STARTUP_TIMEOUT_SECS: u64 = 600;
    /// Meets SQL Server's password policy (upper, lower, digit, symbol, 8+) and needs no quoting in ADO strings.
    fn fresh_password() -> String {
        let n: u64 = rand::random();
        format!("Sp{n:016x}#9a")
    }

    fn free_port() -> Result<u16, DbError> {
        // The kernel picks an unused port; the tiny window before Docker binds it is acceptable for a test run.
        let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        Ok(l.local_addr()?.port())
    }

    fn docker_err(password: &str, what: &str, e: impl std::fmt::Display) -> DbError {
        // Docker errors may echo the container's environment; never let the SA password through.
        DbError::Other(format!(
            "{what}: {}",
            e.to_string().replace(password, "***")
        ))
    }

    impl ContainerMssql {
        pub fn start() -> Result<Self, DbError> {
            let docker_host = std::env::var("DOCKER_HOST").ok();
            let tls = std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty() && v != "0");
            let endpoint =
                DockerEndpoint::from_docker_host(docker_host.as_deref()).map_err(no_docker)?;
            endpoint.probe(tls).map_err(no_docker)?;

            let password = fresh_password();
            let port = free_port()?;
            let container = MssqlServer::default()
                .with_accept_eula()
                .with_sa_password(password.clone())
                .with_tag(IMAGE_TAG)
                .with_mapped_port(port, 1433.tcp())
                .with_startup_timeout(Duration::from_secs(STARTUP_TIMEOUT_SECS))
                .start()
                .map_err(|e| docker_err(&password, "cannot start the SQL Server container", e))?;
            let host = container
                .get_host()
                .map_err(|e| docker_err(&password, "cannot read the container host", e))?
                .to_string();
            // The container's certificate is self-signed: trust it, as every local SQL Server setup does.
            let ado = format!(
                "Server=tcp:{host},{port};Database=master;User Id=sa;Password={password};TrustServerCertificate=true"
            );
            let server = super::server_config(&ado)?;
            super::wait_ready(&server, super::READY_TIMEOUT)?;
            Ok(ContainerMssql {
                container,
                inner: ExternalMssql {
                    server,
                    engine: std::sync::OnceLock::new(),
                },
                port,
                last_db: None,
                password,
            })
        }
    }

    fn no_docker(why: String) -> DbError {
        DbError::Other(format!(
            "no SQL Server available: this harness starts one in Docker (--features testcontainers), but {why}; \
             start a Docker engine (or point DOCKER_HOST at one), or set {} / pass --db-url",
            super::ENV_URL
        ))
    }

    impl Launcher for ContainerMssql {
        fn backend(&self) -> Backend {
            Backend::Mssql
        }
        fn fresh_database(&mut self, name: &str) -> Result<String, DbError> {
            let db = self.inner.create_fresh(name)?;
            self.last_db = Some(db.clone());
            Ok(self.inner.url_for(&db))
        }
        /// Kills the server (no shutdown grace, like a power cut) and starts the same container, same data, same
        /// host port; returns once the current run's database accepts logins again.
        fn restart(&mut self) -> Result<(), DbError> {
            let pw = self.password.clone();
            self.container
                .stop_with_timeout(Some(0))
                .map_err(|e| docker_err(&pw, "cannot kill the SQL Server container", e))?;
            self.container
                .start()
                .map_err(|e| docker_err(&pw, "cannot restart the SQL Server container", e))?;
            let cfg = match &self.last_db {
                Some(db) => self.inner.server.with_database(db),
                None => self.inner.server.clone(),
            };
            super::wait_ready(&cfg, super::READY_TIMEOUT)
        }
        fn capabilities(&self) -> Capabilities {
            super::CAPABILITIES
        }
        fn describe(&self) -> String {
            let id: String = self.container.id().chars().take(12).collect();
            format!(
                "SQL Server in Docker container {id} (mcr.microsoft.com/mssql/server:{IMAGE_TAG}) on port {}, {}",
                self.port,
                self.inner.server.redacted()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_valid_identifiers() {
        assert_eq!(database_name("crash-a-queue"), "shredproof_crash_a_queue");
        assert_eq!(
            database_name("split-crash-a_baseline"),
            "shredproof_split_crash_a_baseline"
        );
        assert_eq!(database_name("9lives"), "shredproof_9lives");
        let long = database_name(&"x".repeat(200));
        assert_eq!(long.len(), 63);
        for n in ["crash-a-queue", "9lives", "Ünïcode name", &"y".repeat(90)] {
            assert!(
                processor::ident::Ident::new(&database_name(n)).is_ok(),
                "{n}"
            );
        }
    }

    #[test]
    fn child_urls_carry_the_password_and_descriptions_do_not() {
        let e = ExternalMssql::new(
            "mssql://sa:P%40ss;w0rd!@127.0.0.1:1433/master?trust_server_certificate=true",
        )
        .expect("valid url");
        let url = e.url_for("shredproof_crash_a_queue");
        // The child's URL names the run's database and round-trips to the same settings, password included.
        let back = MssqlConfig::parse(&url).expect("round-trips");
        assert_eq!(back.database.as_deref(), Some("shredproof_crash_a_queue"));
        assert_eq!(back, e.server.with_database("shredproof_crash_a_queue"));
        assert!(back.trust_server_certificate);
        assert_eq!((back.host.as_str(), back.port), ("127.0.0.1", Some(1433)));
        // What is shown, and what the runner records, never has it.
        assert!(!e.describe().contains("P@ss"), "{}", e.describe());
        assert!(!e.describe().contains("P%40ss"), "{}", e.describe());
        assert!(e.describe().contains("***"));
        let recorded = processor::store::url::redact_url(&url);
        assert!(!recorded.contains("P%40ss"), "{recorded}");
        assert!(!e.capabilities().restart);
        assert!(matches!(
            ExternalMssql::new("mssql://sa:pw@h/master")
                .expect("url")
                .restart(),
            Err(DbError::Other(_))
        ));
    }

    #[test]
    fn ado_strings_and_bad_urls() {
        let e = ExternalMssql::new(
            "Server=tcp:db.local,1533;Database=master;User Id=sa;Password={x;y};TrustServerCertificate=true",
        )
        .expect("ado");
        let back = MssqlConfig::parse(&e.url_for("d")).expect("round-trips");
        assert_eq!((back.host.as_str(), back.port), ("db.local", Some(1533)));
        for bad in [
            "postgres://u:Secret1@h/db",
            "mssql://sa:Secret1@h:0/db",
            "Server=h;User Id=sa;Password=Secret1;Colour=blue",
        ] {
            match ExternalMssql::new(bad) {
                Ok(_) => panic!("accepted {bad}"),
                Err(err) => assert!(!err.to_string().contains("Secret1"), "{err}"),
            }
        }
    }

    #[test]
    fn without_a_url_or_container_the_error_says_what_to_provide() {
        if cfg!(feature = "testcontainers") {
            return; // this build would try Docker instead
        }
        let msg = from_container()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains(ENV_URL), "{msg}");
        assert!(msg.contains("--db-url"), "{msg}");
        assert!(msg.contains("--features testcontainers"), "{msg}");
    }

    #[test]
    fn docker_endpoints_and_probe() {
        assert_eq!(
            DockerEndpoint::from_docker_host(None),
            Ok(DockerEndpoint::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            DockerEndpoint::from_docker_host(Some("unix:///run/user/1000/docker.sock")),
            Ok(DockerEndpoint::Unix("/run/user/1000/docker.sock".into()))
        );
        assert_eq!(
            DockerEndpoint::from_docker_host(Some("tcp://10.0.0.5:2375/")),
            Ok(DockerEndpoint::Tcp("10.0.0.5:2375".into()))
        );
        assert!(DockerEndpoint::from_docker_host(Some("npipe:////./pipe/docker")).is_err());

        let dir = tempfile::tempdir().expect("tempdir");
        // No socket: a clear "no engine" message naming where it looked.
        let missing = DockerEndpoint::Unix(dir.path().join("none.sock"));
        let msg = missing.probe(false).expect_err("no engine");
        assert!(msg.contains("no Docker engine at unix://"), "{msg}");

        // A socket that answers the ping like an engine, and one that answers like something else.
        for (reply, ok) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK", true),
            ("HTTP/1.1 500 Internal Server Error\r\n\r\n", false),
        ] {
            let path = dir.path().join(format!("d{}.sock", u8::from(ok)));
            let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
            let server = std::thread::spawn(move || {
                use std::io::{Read, Write};
                let (mut s, _) = listener.accept().expect("accept");
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).expect("read");
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /_ping "));
                s.write_all(reply.as_bytes()).expect("write");
            });
            let got = DockerEndpoint::Unix(path).probe(false);
            server.join().expect("fake engine");
            assert_eq!(got.is_ok(), ok, "{got:?}");
        }
    }
}
