//! SQL Server connection settings parsed from `mssql://…` (or `sqlserver://…`), an ADO.NET connection string, or
//! the replaced tool's `--server/--database/--username/--password` flags, and turned into a tiberius `Config`.
//!
//! The password is held privately and never printed: `Debug`, `Display` and [`MssqlConfig::redacted`] all show
//! `***` in its place.

use crate::store::url::MASK;
use std::fmt;
use std::time::Duration;
use tiberius::{AuthMethod, EncryptionLevel};

/// Default TCP + TLS + login deadline (ADO.NET's `Connect Timeout`).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 15;
/// Default per-round-trip deadline for a command.
pub const DEFAULT_COMMAND_TIMEOUT_SECS: u64 = 60;
/// The SQL Server default port (when neither a port nor a named instance is given).
pub const DEFAULT_PORT: u16 = 1433;
const APP_NAME: &str = "shredproof-processor";

/// How the connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encrypt {
    /// `encrypt=false`: only the login packet is encrypted (and, as in ADO.NET, the certificate is not validated).
    Off,
    /// `encrypt=true` (default): everything is encrypted; the certificate is validated unless
    /// `trust_server_certificate=true`.
    On,
    /// `encrypt=strict`: TDS 8.0, TLS before the prelogin.
    Strict,
    /// `encrypt=danger_plaintext`: no TLS at all (servers configured without a certificate).
    Plaintext,
}

/// The settings listed in an unknown-setting error (aliases accepted too: see `parse_ado`).
const KNOWN_KEYS: &str = "Server, Database, User Id, Password, Encrypt, TrustServerCertificate, Connect Timeout, \
                          Command Timeout (URLs: encrypt, trust_server_certificate, connect_timeout_secs, \
                          command_timeout_secs, instance)";

impl Encrypt {
    fn parse(key: &'static str, v: &str) -> Result<Self, MssqlConfigError> {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "mandatory" | "required" => Ok(Encrypt::On),
            "false" | "no" | "off" | "optional" => Ok(Encrypt::Off),
            "strict" => Ok(Encrypt::Strict),
            "danger_plaintext" | "plaintext" => Ok(Encrypt::Plaintext),
            _ => Err(MssqlConfigError::BadValue {
                key,
                expected: "true, false, strict or danger_plaintext",
            }),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Encrypt::Off => "false",
            Encrypt::On => "true",
            Encrypt::Strict => "strict",
            Encrypt::Plaintext => "danger_plaintext",
        }
    }

    pub fn level(self) -> EncryptionLevel {
        match self {
            Encrypt::Off => EncryptionLevel::Off,
            Encrypt::On => EncryptionLevel::Required,
            Encrypt::Strict => EncryptionLevel::Strict,
            Encrypt::Plaintext => EncryptionLevel::NotSupported,
        }
    }
}

/// Everything needed to open a connection. Cloneable and comparable; the password is private.
#[derive(Clone, PartialEq, Eq)]
pub struct MssqlConfig {
    pub host: String,
    /// An explicit TCP port. When set, a named instance is ignored (as in ADO.NET).
    pub port: Option<u16>,
    /// Named instance (`host\INSTANCE`), resolved through the SQL Browser service when no port is given.
    pub instance: Option<String>,
    pub database: Option<String>,
    pub user: String,
    password: String,
    pub encrypt: Encrypt,
    pub trust_server_certificate: bool,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MssqlConfigError {
    #[error("no server host given")]
    MissingHost,
    #[error("no user name given: SQL Server authentication needs a user and a password (integrated Windows authentication is not available in this build)")]
    MissingUser,
    #[error("integrated (Windows) authentication is not supported by this build; use a SQL login (User Id / Password)")]
    IntegratedAuth,
    #[error("invalid port (expected a number from 1 to 65535)")]
    BadPort,
    /// The setting's position: its name is not quoted, since an unknown "key" may be a fragment of a password
    /// that held an unquoted `;` or `&`.
    #[error("connection setting number {0} is not a known setting (known: {KNOWN_KEYS})")]
    UnknownKey(usize),
    #[error("invalid value for '{key}' (expected {expected})")]
    BadValue {
        key: &'static str,
        expected: &'static str,
    },
    #[error("malformed connection string: {0}")]
    Malformed(String),
}

impl fmt::Debug for MssqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MssqlConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("instance", &self.instance)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &MASK)
            .field("encrypt", &self.encrypt)
            .field("trust_server_certificate", &self.trust_server_certificate)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

impl fmt::Display for MssqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Builder state shared by the three input forms.
struct Draft {
    host: Option<String>,
    port: Option<u16>,
    instance: Option<String>,
    database: Option<String>,
    user: Option<String>,
    password: Option<String>,
    encrypt: Encrypt,
    trust: bool,
    connect_timeout: u64,
    command_timeout: u64,
}

impl Default for Draft {
    fn default() -> Self {
        Draft {
            host: None,
            port: None,
            instance: None,
            database: None,
            user: None,
            password: None,
            encrypt: Encrypt::On,
            trust: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT_SECS,
            command_timeout: DEFAULT_COMMAND_TIMEOUT_SECS,
        }
    }
}

impl Draft {
    fn finish(self) -> Result<MssqlConfig, MssqlConfigError> {
        let host = self
            .host
            .filter(|h| !h.trim().is_empty())
            .ok_or(MssqlConfigError::MissingHost)?;
        let user = self
            .user
            .filter(|u| !u.is_empty())
            .ok_or(MssqlConfigError::MissingUser)?;
        Ok(MssqlConfig {
            host,
            // An explicit port wins over the instance name, which would otherwise need the SQL Browser.
            instance: if self.port.is_some() {
                None
            } else {
                self.instance
            },
            port: self.port,
            database: self.database.filter(|d| !d.is_empty()),
            user,
            password: self.password.unwrap_or_default(),
            encrypt: self.encrypt,
            trust_server_certificate: self.trust,
            connect_timeout: Duration::from_secs(self.connect_timeout),
            command_timeout: Duration::from_secs(self.command_timeout),
        })
    }

    /// `host`, `host\INSTANCE`, `host,port`, `host\INSTANCE,port`, `tcp:` prefix, `host:port`, `[v6]:port`.
    fn server(&mut self, s: &str) -> Result<(), MssqlConfigError> {
        let s = s.trim();
        let s = s
            .strip_prefix("tcp:")
            .or_else(|| s.strip_prefix("TCP:"))
            .unwrap_or(s);
        let (rest, port) = match s.rsplit_once(',') {
            Some((h, p)) => (h, Some(parse_port(p)?)),
            None => (s, None),
        };
        let (host, instance) = match rest.split_once('\\') {
            Some((h, i)) => (h, Some(i)),
            None => (rest, None),
        };
        let (host, port) = match (host.strip_prefix('['), port) {
            // [::1]:1433 or [::1]
            (Some(v6), _) => {
                let (addr, tail) = v6.split_once(']').ok_or_else(|| {
                    MssqlConfigError::Malformed("unclosed '[' in the server address".to_owned())
                })?;
                let port = match tail.strip_prefix(':') {
                    Some(p) => Some(parse_port(p)?),
                    None if tail.is_empty() => port,
                    None => {
                        return Err(MssqlConfigError::Malformed(
                            "unexpected text after the IPv6 address".to_owned(),
                        ))
                    }
                };
                (addr.to_owned(), port)
            }
            (None, None) if host.matches(':').count() == 1 => {
                let (h, p) = host.split_once(':').unwrap_or((host, ""));
                (h.to_owned(), Some(parse_port(p)?))
            }
            (None, port) => (host.to_owned(), port),
        };
        let host = match host.as_str() {
            "." | "(local)" | "(localdb)" => "localhost".to_owned(),
            _ => host,
        };
        if host.is_empty() {
            return Err(MssqlConfigError::MissingHost);
        }
        if let Some(i) = instance {
            if i.is_empty() {
                return Err(MssqlConfigError::Malformed(
                    "empty instance name in the server address".to_owned(),
                ));
            }
            self.instance = Some(i.to_owned());
        }
        self.host = Some(host);
        if port.is_some() {
            self.port = port;
        }
        Ok(())
    }
}

fn parse_port(p: &str) -> Result<u16, MssqlConfigError> {
    match p.trim().parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(MssqlConfigError::BadPort),
    }
}

fn parse_bool(key: &'static str, v: &str) -> Result<bool, MssqlConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        _ => Err(MssqlConfigError::BadValue {
            key,
            expected: "true or false",
        }),
    }
}

fn parse_secs(key: &'static str, v: &str) -> Result<u64, MssqlConfigError> {
    match v.trim().parse::<u64>() {
        Ok(n) if (1..=86_400).contains(&n) => Ok(n),
        _ => Err(MssqlConfigError::BadValue {
            key,
            expected: "a number of seconds from 1 to 86400",
        }),
    }
}

/// `%XX` decoding for the user, password and database of a URL. A `%` not followed by two hex digits stays as it
/// is (as in browsers); the result must be UTF-8.
fn percent_decode(s: &str) -> Result<String, MssqlConfigError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| MssqlConfigError::Malformed("%-escapes are not UTF-8".to_owned()))
}

/// Everything but RFC 3986's unreserved characters is escaped, so the rendering parses back unambiguously.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

/// Lower-cased key with spaces and underscores removed: `User Id` = `userid` = `USER_ID`.
fn norm_key(k: &str) -> String {
    k.chars()
        .filter(|c| !c.is_whitespace() && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Splits an ADO.NET string into `(key, value)` pairs. Values may be quoted with `'…'`, `"…"` (doubling the quote
/// escapes it) or `{…}`, so a password may contain `;`.
fn ado_pairs(s: &str) -> Result<Vec<(String, String)>, MssqlConfigError> {
    let mut pairs = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        // key
        let start = i;
        while i < chars.len() && chars[i] != '=' && chars[i] != ';' {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        let key = key.trim().to_owned();
        if i >= chars.len() || chars[i] == ';' {
            if !key.is_empty() {
                // Not quoted: text without '=' is most likely the tail of a value that held an unquoted ';'.
                return Err(MssqlConfigError::Malformed(format!(
                    "setting number {} has no '=' (a value containing ';' must be quoted: Password='a;b')",
                    pairs.len() + 1
                )));
            }
            i += 1;
            continue;
        }
        i += 1; // '='
        while i < chars.len() && chars[i] == ' ' {
            i += 1;
        }
        let mut value = String::new();
        match chars.get(i) {
            Some(&q) if q == '\'' || q == '"' || q == '{' => {
                let close = if q == '{' { '}' } else { q };
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(MssqlConfigError::Malformed(format!(
                                "unterminated quoted value in setting number {}",
                                pairs.len() + 1
                            )))
                        }
                        Some(&c) if c == close => {
                            if q != '{' && chars.get(i + 1) == Some(&close) {
                                value.push(c);
                                i += 2;
                            } else {
                                i += 1;
                                break;
                            }
                        }
                        Some(&c) => {
                            value.push(c);
                            i += 1;
                        }
                    }
                }
                while i < chars.len() && chars[i] != ';' {
                    if !chars[i].is_whitespace() {
                        return Err(MssqlConfigError::Malformed(format!(
                            "text after the quoted value of setting number {}",
                            pairs.len() + 1
                        )));
                    }
                    i += 1;
                }
            }
            _ => {
                while i < chars.len() && chars[i] != ';' {
                    value.push(chars[i]);
                    i += 1;
                }
                value = value.trim().to_owned();
            }
        }
        i += 1; // ';'
        if key.is_empty() {
            return Err(MssqlConfigError::Malformed(
                "a value without a key".to_owned(),
            ));
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

impl MssqlConfig {
    /// Parses `mssql://…`, `sqlserver://…` or an ADO.NET connection string.
    pub fn parse(s: &str) -> Result<Self, MssqlConfigError> {
        let s = s.trim();
        if let Some(rest) = s
            .strip_prefix("mssql://")
            .or_else(|| s.strip_prefix("sqlserver://"))
        {
            Self::parse_url(rest)
        } else {
            Self::parse_ado(s)
        }
    }

    /// `user:pass@host[:port|\INSTANCE]/database?encrypt=…&trust_server_certificate=…&connect_timeout_secs=N&
    /// command_timeout_secs=N` (the part after the scheme). User, password and database are %-decoded.
    fn parse_url(rest: &str) -> Result<Self, MssqlConfigError> {
        let mut d = Draft::default();
        // The last '@' of the whole string ends the credentials, so an unescaped '@', '/' or '?' in a password
        // still parses (none of the query options takes a value with an '@').
        let (userinfo, after) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (hostpath, query) = match after.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (after, None),
        };
        if let Some(ui) = userinfo {
            let (u, p) = match ui.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (ui, None),
            };
            d.user = Some(percent_decode(u)?);
            d.password = p.map(percent_decode).transpose()?;
        }
        let (hostport, db) = match hostpath.split_once('/') {
            Some((h, db)) => (h, Some(db.trim_end_matches('/'))),
            None => (hostpath, None),
        };
        let hostport = hostport.replace("%5C", "\\").replace("%5c", "\\");
        if hostport.is_empty() {
            return Err(MssqlConfigError::MissingHost);
        }
        d.server(&hostport)?;
        if let Some(db) = db {
            d.database = Some(percent_decode(db)?);
        }
        for (i, kv) in query.into_iter().flat_map(|q| q.split('&')).enumerate() {
            if kv.is_empty() {
                continue;
            }
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = percent_decode(v)?;
            match norm_key(k).as_str() {
                "encrypt" => d.encrypt = Encrypt::parse("encrypt", &v)?,
                "trustservercertificate" => d.trust = parse_bool("trust_server_certificate", &v)?,
                "connecttimeoutsecs" | "connecttimeout" => {
                    d.connect_timeout = parse_secs("connect_timeout_secs", &v)?
                }
                "commandtimeoutsecs" | "commandtimeout" => {
                    d.command_timeout = parse_secs("command_timeout_secs", &v)?
                }
                "instance" | "instancename" => {
                    if v.is_empty() {
                        return Err(MssqlConfigError::Malformed(
                            "empty instance name".to_owned(),
                        ));
                    }
                    d.instance = Some(v);
                }
                "database" => d.database = Some(v),
                _ => return Err(MssqlConfigError::UnknownKey(i + 1)),
            }
        }
        d.finish()
    }

    /// `Server=host\INST,port;Database=…;User Id=…;Password=…;Encrypt=…;TrustServerCertificate=…;
    /// Connect Timeout=…;Command Timeout=…` with the common aliases; keys are case-insensitive.
    fn parse_ado(s: &str) -> Result<Self, MssqlConfigError> {
        let mut d = Draft::default();
        for (i, (k, v)) in ado_pairs(s)?.into_iter().enumerate() {
            match norm_key(&k).as_str() {
                "server" | "datasource" | "address" | "addr" | "networkaddress" => d.server(&v)?,
                "database" | "initialcatalog" => d.database = Some(v),
                "userid" | "uid" | "user" | "username" => d.user = Some(v),
                "password" | "pwd" => d.password = Some(v),
                "encrypt" => d.encrypt = Encrypt::parse("Encrypt", &v)?,
                "trustservercertificate" => d.trust = parse_bool("TrustServerCertificate", &v)?,
                "connecttimeout" | "connectiontimeout" | "timeout" => {
                    d.connect_timeout = parse_secs("Connect Timeout", &v)?
                }
                "commandtimeout" => d.command_timeout = parse_secs("Command Timeout", &v)?,
                "integratedsecurity" | "trustedconnection" => {
                    let on =
                        v.eq_ignore_ascii_case("sspi") || parse_bool("Integrated Security", &v)?;
                    if on {
                        return Err(MssqlConfigError::IntegratedAuth);
                    }
                }
                // Client-side pooling knobs of other drivers: meaningless for one long-lived connection.
                "persistsecurityinfo"
                | "pooling"
                | "maxpoolsize"
                | "minpoolsize"
                | "multipleactiveresultsets"
                | "applicationname"
                | "workstationid" => {}
                _ => return Err(MssqlConfigError::UnknownKey(i + 1)),
            }
        }
        d.finish()
    }

    /// The replaced tool's flags: `--server "host\INSTANCE" --database DB [--username U --password P]`.
    /// Mirrors a legacy on-premises setup: login-only encryption, certificate not validated (as ADO.NET does with
    /// `Encrypt=false`). Use a URL or ADO.NET string for full TLS.
    pub fn from_flags(
        server: &str,
        database: Option<&str>,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Self, MssqlConfigError> {
        let mut d = Draft {
            encrypt: Encrypt::Off,
            trust: true,
            ..Draft::default()
        };
        if server.trim().is_empty() {
            return Err(MssqlConfigError::MissingHost);
        }
        d.server(server)?;
        d.database = database.map(str::to_owned);
        d.user = username.map(str::to_owned);
        d.password = password.map(str::to_owned);
        d.finish()
    }

    /// A `mssql://` URL with the password replaced by [`MASK`]: the only form that may be printed or logged. Reached
    /// through `DbUrl::redacted`, the one redaction entry (`store::url::redact_url` for a string).
    pub fn redacted(&self) -> String {
        self.url_with_password(if self.password.is_empty() {
            None
        } else {
            Some(MASK)
        })
    }

    /// A `mssql://` URL that connects with these settings, password included (%-encoded). For handing a fresh
    /// database to a child process (`--db`); it is a secret: never print or log it, print [`Self::redacted`].
    pub fn connection_url(&self) -> String {
        let encoded = percent_encode(&self.password);
        self.url_with_password(if self.password.is_empty() {
            None
        } else {
            Some(&encoded)
        })
    }

    fn url_with_password(&self, password: Option<&str>) -> String {
        let mut s = format!("mssql://{}", percent_encode(&self.user));
        if let Some(p) = password {
            s.push(':');
            s.push_str(p);
        }
        s.push('@');
        if self.host.contains(':') {
            s.push_str(&format!("[{}]", self.host));
        } else {
            s.push_str(&self.host);
        }
        if let Some(i) = &self.instance {
            s.push('\\');
            s.push_str(i);
        }
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s.push('/');
        if let Some(db) = &self.database {
            s.push_str(&percent_encode(db));
        }
        s.push_str(&format!(
            "?encrypt={}&trust_server_certificate={}&connect_timeout_secs={}&command_timeout_secs={}",
            self.encrypt.as_str(),
            self.trust_server_certificate,
            self.connect_timeout.as_secs(),
            self.command_timeout.as_secs()
        ));
        s
    }

    /// This configuration pointed at another database (tests create and drop scratch databases via `master`).
    pub fn with_database(&self, database: &str) -> Self {
        MssqlConfig {
            database: Some(database.to_owned()),
            ..self.clone()
        }
    }

    /// This configuration sent to `host:port` (a server-side redirect), with no instance lookup.
    pub fn redirected(&self, host: &str, port: u16) -> Self {
        MssqlConfig {
            host: host.to_owned(),
            port: Some(port),
            instance: None,
            ..self.clone()
        }
    }

    /// Whether the port must be found through the SQL Browser service.
    pub fn uses_browser(&self) -> bool {
        self.instance.is_some() && self.port.is_none()
    }

    /// The tiberius configuration. Contains the password: pass it to the driver, never print it.
    pub fn tiberius(&self) -> tiberius::Config {
        let mut c = tiberius::Config::new();
        c.host(&self.host);
        match (self.port, &self.instance) {
            (Some(p), _) => c.port(p),
            (None, Some(i)) => c.instance_name(i),
            (None, None) => c.port(DEFAULT_PORT),
        }
        if let Some(db) = &self.database {
            c.database(db);
        }
        c.application_name(APP_NAME);
        c.authentication(AuthMethod::sql_server(&self.user, &self.password));
        c.encryption(self.encrypt.level());
        // ADO.NET does not validate the certificate used for login-only encryption (`Encrypt=false`).
        if self.trust_server_certificate || self.encrypt == Encrypt::Off {
            c.trust_cert();
        }
        c.handshake_timeout(Some(self.connect_timeout));
        c.command_timeout(Some(self.command_timeout));
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> MssqlConfig {
        match MssqlConfig::parse(s) {
            Ok(c) => c,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn url_form_with_every_option() {
        let c = p("mssql://sa:S3cr%40t@db.example:1444/shred?encrypt=false&trust_server_certificate=true&connect_timeout_secs=5&command_timeout_secs=90");
        assert_eq!(c.host, "db.example");
        assert_eq!(c.port, Some(1444));
        assert_eq!(c.instance, None);
        assert_eq!(c.database.as_deref(), Some("shred"));
        assert_eq!(c.user, "sa");
        assert_eq!(c.password, "S3cr@t");
        assert_eq!(c.encrypt, Encrypt::Off);
        assert!(c.trust_server_certificate);
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.command_timeout, Duration::from_secs(90));
        let t = c.tiberius();
        assert_eq!(t.get_addr(), "db.example:1444");
        assert_eq!(t.get_command_timeout(), Some(Duration::from_secs(90)));
        assert_eq!(t.get_handshake_timeout(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn url_defaults_instance_and_scheme_alias() {
        let c = p(r"sqlserver://app:pw@sqlhost\SQLEXPRESS/appdb");
        assert_eq!(c.host, "sqlhost");
        assert_eq!(c.instance.as_deref(), Some("SQLEXPRESS"));
        assert_eq!(c.port, None);
        assert!(c.uses_browser());
        assert_eq!(c.encrypt, Encrypt::On);
        assert!(!c.trust_server_certificate);
        assert_eq!(
            c.connect_timeout,
            Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS)
        );
        assert_eq!(
            c.command_timeout,
            Duration::from_secs(DEFAULT_COMMAND_TIMEOUT_SECS)
        );
        // SQL Browser listens on UDP 1434.
        assert_eq!(c.tiberius().get_addr(), "sqlhost:1434");
        let c = p("mssql://app:pw@h%5CINST/appdb?encrypt=strict");
        assert_eq!(c.instance.as_deref(), Some("INST"));
        assert_eq!(c.encrypt, Encrypt::Strict);
        let c = p("mssql://app:pw@localhost");
        assert_eq!(c.port, None);
        assert_eq!(c.database, None);
        assert_eq!(c.tiberius().get_addr(), "localhost:1433");
        // An unescaped '@' or '/' in the password: the last '@' ends the credentials.
        let c = p("mssql://u:a@b/c@h:1433/db");
        assert_eq!(c.password, "a@b/c");
        assert_eq!(c.host, "h");
        assert_eq!(c.database.as_deref(), Some("db"));
        let c = p("mssql://u:p@[::1]:1500/db");
        assert_eq!(c.host, "::1");
        assert_eq!(c.port, Some(1500));
    }

    #[test]
    fn ado_form_with_aliases_and_quotes() {
        let c = p(
            r"Server=tcp:sqlhost\INST,1500;Initial Catalog=shred;UID=loader;PWD='p;w''d';Encrypt=yes;TrustServerCertificate=True;Connect Timeout=7;Command Timeout=30",
        );
        assert_eq!(c.host, "sqlhost");
        // An explicit port wins over the instance name.
        assert_eq!(c.port, Some(1500));
        assert_eq!(c.instance, None);
        assert_eq!(c.database.as_deref(), Some("shred"));
        assert_eq!(c.user, "loader");
        assert_eq!(c.password, "p;w'd");
        assert_eq!(c.encrypt, Encrypt::On);
        assert!(c.trust_server_certificate);
        assert_eq!(c.connect_timeout, Duration::from_secs(7));
        assert_eq!(c.command_timeout, Duration::from_secs(30));

        let c = p(r"data source=.\SQLEXPRESS;DATABASE=x;user id=u;password={a;b=c};encrypt=false");
        assert_eq!(c.host, "localhost");
        assert_eq!(c.instance.as_deref(), Some("SQLEXPRESS"));
        assert_eq!(c.password, "a;b=c");
        assert_eq!(c.encrypt, Encrypt::Off);
        let c = p("Server=h,1433;User Id=u;Password=p;Pooling=false;");
        assert_eq!(c.port, Some(1433));
        assert_eq!(c.database, None);
    }

    #[test]
    fn flags_form() {
        let c =
            MssqlConfig::from_flags(r"PRODSQL\SQLEXPRESS", Some("Apps"), Some("etl"), Some("pw"))
                .expect("flags");
        assert_eq!(c.host, "PRODSQL");
        assert_eq!(c.instance.as_deref(), Some("SQLEXPRESS"));
        assert_eq!(c.database.as_deref(), Some("Apps"));
        assert_eq!(c.user, "etl");
        assert_eq!(c.encrypt, Encrypt::Off);
        assert!(c.trust_server_certificate);
        let c = MssqlConfig::from_flags("db1,1501", None, Some("etl"), None).expect("flags");
        assert_eq!((c.host.as_str(), c.port), ("db1", Some(1501)));
        assert_eq!(c.password, "");
        assert_eq!(
            MssqlConfig::from_flags("", Some("d"), Some("u"), None),
            Err(MssqlConfigError::MissingHost)
        );
        assert_eq!(
            MssqlConfig::from_flags("h", Some("d"), None, None),
            Err(MssqlConfigError::MissingUser)
        );
    }

    #[test]
    fn password_is_never_shown() {
        let forms = [
            p("mssql://sa:Sup3rS3cret@h:1433/db"),
            p("Server=h;Database=db;User Id=sa;Password=Sup3rS3cret"),
            MssqlConfig::from_flags(r"h\I", Some("db"), Some("sa"), Some("Sup3rS3cret"))
                .expect("flags"),
        ];
        for c in forms {
            for shown in [c.redacted(), c.to_string(), format!("{c:?}")] {
                assert!(!shown.contains("Sup3rS3cret"), "{shown}");
                assert!(shown.contains("***"), "{shown}");
            }
        }
        let c = p("mssql://sa:pw@h:1433/db?encrypt=false");
        assert_eq!(
            c.redacted(),
            "mssql://sa:***@h:1433/db?encrypt=false&trust_server_certificate=false&connect_timeout_secs=15&command_timeout_secs=60"
        );
        // The connection URL round-trips, password included.
        let c = p("Server=h\\I;Database=d b;User Id=sa;Password='p@ss;w/rd:%'");
        assert_eq!(p(&c.connection_url()), c);
        // The redacted form parses back to the same settings (with a dummy password).
        let back = p(&c.redacted());
        assert_eq!(
            (back.host, back.port, back.database),
            (c.host, c.port, c.database)
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |s: &str| MssqlConfig::parse(s).expect_err(s);
        assert_eq!(err("mssql://sa:pw@/db"), MssqlConfigError::MissingHost);
        assert_eq!(err("mssql://sa:pw@:1433/db"), MssqlConfigError::MissingHost);
        assert_eq!(
            err("Database=x;User Id=u;Password=p;Server="),
            MssqlConfigError::MissingHost
        );
        assert_eq!(err("Database=x;User Id=u"), MssqlConfigError::MissingHost);
        assert_eq!(err("mssql://sa:pw@h:99999/db"), MssqlConfigError::BadPort);
        assert_eq!(err("Server=h,abc;User Id=u"), MssqlConfigError::BadPort);
        let e = err("Server=h;User Id=u;Colour=blue");
        assert_eq!(e, MssqlConfigError::UnknownKey(3));
        assert!(e.to_string().contains("number 3"), "{e}");
        assert!(!e.to_string().contains("Colour"), "{e}");
        assert_eq!(
            err("mssql://u:p@h/db?colour=blue"),
            MssqlConfigError::UnknownKey(1)
        );
        assert!(matches!(
            err("mssql://u:p@h/db?encrypt=maybe"),
            MssqlConfigError::BadValue { .. }
        ));
        assert!(matches!(
            err("mssql://u:p@h/db?connect_timeout_secs=0"),
            MssqlConfigError::BadValue { .. }
        ));
        assert_eq!(err("mssql://h/db"), MssqlConfigError::MissingUser);
        assert_eq!(
            err("Server=h;Integrated Security=SSPI"),
            MssqlConfigError::IntegratedAuth
        );
        assert!(matches!(
            err("Server=h;User Id=u;Password='abc"),
            MssqlConfigError::Malformed(_)
        ));
        // Errors never echo a password, nor a fragment of one.
        for bad in [
            "Server=h;User Id=u;Password=hunter2;Bogus=1",
            "Server=h;User Id=u;Password=hunter2;PwXyz",
            "Server=h;User Id=u;Password=hunter2;PwXyz=1",
            "Server=h;User Id=u;Password='hunter2;PwXyz",
            "Server=h;User Id=u;Password='hunter2'PwXyz",
            "Server=h;User Id=u;Password=hunter2;Encrypt=PwXyz",
            "Server=[PwXyz;User Id=u;Password=hunter2",
        ] {
            let e = err(bad).to_string();
            assert!(!e.contains("hunter2") && !e.contains("PwXyz"), "{bad}: {e}");
        }
        // A '?' or '@' in an unescaped URL password stays in the password.
        let c = p("mssql://sa:S3cret?PwXyz@h:1433/db?encrypt=false");
        assert_eq!(c.password, "S3cret?PwXyz");
        assert_eq!((c.host.as_str(), c.port), ("h", Some(1433)));
        assert_eq!(c.encrypt, Encrypt::Off);
        for bad in [
            "mssql://sa:S3cret?PwXyz@h:99999/db",
            "mssql://sa:S3cret@PwXyz:notaport/db",
            "mssql://sa:S3cret@h/db?encrypt=PwXyz",
            "mssql://sa:S3cret@h/db?PwXyz=1",
            "mssql://sa:S3cret@h/db?PwXyz",
        ] {
            let e = err(bad).to_string();
            assert!(!e.contains("S3cret") && !e.contains("PwXyz"), "{bad}: {e}");
        }
    }
}
