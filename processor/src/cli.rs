//! Command-line interface: arguments parsed raw by clap, validated once into typed settings, then handed to the
//! library. Exit codes: 0 done, 1 runtime failure, 2 usage/contract/argument error, 3 database unreachable.

use crate::contract::Contract;
use crate::crash::Crasher;
use crate::engine::{self, CommitMode, Mode, RunConfig, RunContext};
use crate::events::EventSink;
use crate::retry::RetryPolicy;
use crate::store::{self, DbUrl, OpenError, Store};
use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(
    name = "processor",
    version,
    about = "Shreds credit-application XML into relational tables, resumably and safely in parallel"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create every missing table (source, log, claims, targets from the contract).
    Init(Common),
    /// Load source documents from a directory of <app_id>.xml files, or generate them.
    Load(LoadArgs),
    /// Process every eligible application; rerun to resume after a crash.
    Run(RunArgs),
    /// Show totals, per-instance progress and live claims.
    Status(StatusArgs),
}

#[derive(Args, Clone)]
pub struct Common {
    /// sqlite:PATH, postgres://…, mssql://… or an ADO.NET connection string. Prefer SHREDPROOF_DB for one with
    /// a password: other users can read command lines.
    #[arg(long, env = store::url::DB_ENV, hide_env_values = true)]
    pub db: Option<String>,
    /// Mapping contract (JSON). Default: the project's built-in contract.
    #[arg(long)]
    pub contract: Option<PathBuf>,
    /// SQL Server host, `host\INSTANCE` for a named instance (replaced tool's flags).
    #[arg(long)]
    pub server: Option<String>,
    /// SQL Server database (with --server).
    #[arg(long)]
    pub database: Option<String>,
    /// SQL Server login (with --server); integrated security otherwise is not supported.
    #[arg(long)]
    pub username: Option<String>,
    /// SQL Server password (with --server). Prefer SHREDPROOF_MSSQL_PASSWORD; never logged.
    #[arg(long, env = "SHREDPROOF_MSSQL_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Least severe log level shown.
    #[arg(long, default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: String,
    /// Human log lines (pretty) or JSON lines (json; also writes events to stdout).
    #[arg(long, value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

/// Passwords shown as `***`: `--db` through the one redactor, `--password` never.
impl std::fmt::Debug for Common {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Common")
            .field("db", &self.db.as_deref().map(store::url::redact_url))
            .field("contract", &self.contract)
            .field("server", &self.server)
            .field("database", &self.database)
            .field("username", &self.username)
            .field(
                "password",
                &self.password.as_ref().map(|_| store::url::MASK),
            )
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines on stderr; results on stdout.
    Pretty,
    /// JSON lines on stderr (results logged there too); stdout carries only JSON.
    Json,
}

/// Prints a command's one-line result: on stdout for people, as a structured log line in JSON mode (where stdout
/// must hold JSON only).
fn report(format: LogFormat, line: &str) {
    match format {
        // A closed stdout (EPIPE) is not an error of the command: its work is done.
        LogFormat::Pretty => drop(write_stdout(&format!("{line}\n"))),
        LogFormat::Json => tracing::info!(result = line, "done"),
    }
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub common: Common,
    /// Directory of `<app_id>.xml` files.
    #[arg(
        long,
        conflicts_with = "generate",
        required_unless_present = "generate"
    )]
    pub dir: Option<PathBuf>,
    /// Generate N documents with the seeded fixture generator.
    #[arg(long)]
    pub generate: Option<u64>,
    /// Seed of the generator: the same seed gives the same documents.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// First app_id of generated documents.
    #[arg(long, default_value_t = 1)]
    pub first_app_id: i64,
    /// Fraction of generated documents that are malformed (0..1).
    #[arg(long, default_value_t = 0.05)]
    pub malformed_fraction: f64,
    /// Shape of generated documents: `cc` or `rl` (the replaced system's credit-card or recreational-lending
    /// documents, `docgen::realshape`), `classic` (the project's own generator), or `auto`: the real shape the
    /// contract reads (`IL_application` → rl; `application` with `app_product`/`rmts_info` → cc), else classic.
    #[arg(long, default_value = "auto", requires = "generate")]
    pub shape: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: Common,
    /// Parse/map threads.
    #[arg(long, default_value_t = default_workers())]
    pub workers: usize,
    /// Applications per transaction.
    #[arg(long, default_value_t = 200)]
    pub batch_size: usize,
    /// Stop after this many applications.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Only applications with app_id >= this (with --app-id-end).
    #[arg(long, requires = "app_id_end")]
    pub app_id_start: Option<i64>,
    /// Only applications with app_id <= this (with --app-id-start).
    #[arg(long, requires = "app_id_start")]
    pub app_id_end: Option<i64>,
    /// How instances share the work: uncoordinated (one instance), partitioned (app_id mod --instance-count) or
    /// queue (leased claims).
    #[arg(long, value_enum, default_value = "uncoordinated")]
    pub mode: Mode,
    /// This instance's number, 0 .. --instance-count - 1.
    #[arg(long, default_value_t = 0)]
    pub instance_id: u32,
    /// How many instances run side by side.
    #[arg(long, default_value_t = 1)]
    pub instance_count: u32,
    /// Queue mode: lease length in seconds.
    #[arg(long, default_value_t = 30)]
    pub lease_secs: u64,
    /// atomic (default) or split (UNSAFE: reproduces the replaced system, for demonstrations only).
    #[arg(long, value_enum, default_value = "atomic")]
    pub commit_mode: CommitMode,
    /// Write JSON-lines events here.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Give up on a database that stays unreachable this long.
    #[arg(long, default_value_t = 120)]
    pub retry_give_up_secs: u64,
    /// A stored document larger than this many bytes is logged failed (`limit: …`) without being parsed.
    #[arg(long, default_value_t = engine::DocLimits::DEFAULT_MAX_DOC_BYTES)]
    pub max_doc_bytes: usize,
    /// A document whose parse + map takes longer than this many milliseconds is logged failed (`limit: …`).
    #[arg(long, default_value_t = engine::DocLimits::DEFAULT_MAX_MAP_MS)]
    pub max_map_ms: u64,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: Common,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

pub use crate::exit::{Exit, ExitStatus};

fn usage(e: impl Into<anyhow::Error>) -> Exit {
    Exit::usage(e)
}
fn runtime(e: impl Into<anyhow::Error>) -> Exit {
    Exit::runtime(e)
}

/// Parses `args` (including argv[0]) and runs the command. Installs the tracing subscriber.
pub fn main_with<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // clap's own errors are usage errors; `--help`/`--version` end as done.
            let status = if e.use_stderr() {
                ExitStatus::Usage
            } else {
                ExitStatus::Done
            };
            return status.into();
        }
    };
    let common = match &cli.command {
        Command::Init(c) => c,
        Command::Load(a) => &a.common,
        Command::Run(a) => &a.common,
        Command::Status(a) => &a.common,
    };
    init_tracing(&common.log_level, common.log_format);
    let common = common.clone();
    match dispatch(cli) {
        Ok(()) => ExitStatus::Done.into(),
        Err(Exit { status, error }) => {
            let code = status.process_exit_code();
            // Once: as a log line in JSON mode (stderr stays JSON), as plain text otherwise.
            match common.log_format {
                LogFormat::Json => {
                    tracing::error!(
                        error = format!("{error:#}"),
                        exit_code = code,
                        "processor failed"
                    )
                }
                LogFormat::Pretty => eprintln!("error: {error:#}"),
            }
            status.into()
        }
    }
}

fn init_tracing(level: &str, format: LogFormat) {
    // The PostgreSQL driver reports server NOTICEs ("relation already exists, skipping") at info: not news.
    let directives = format!("{level},postgres=warn,tokio_postgres=warn,tiberius=warn");
    let filter = tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

fn dispatch(cli: Cli) -> Result<(), Exit> {
    match cli.command {
        Command::Init(c) => {
            let mut s = open_store(&c)?;
            s.init_schema()
                .context("failed to create the schema")
                .map_err(runtime)?;
            report(
                c.log_format,
                &format!("schema ready on {}", db_url(&c)?.redacted()),
            );
            Ok(())
        }
        Command::Load(a) => load(a),
        Command::Run(a) => run(a),
        Command::Status(a) => status(a),
    }
}

pub fn load_contract(c: &Common) -> Result<Contract, Exit> {
    match &c.contract {
        // `--contract cc|rl` (a document shape, not a file): say where the shape is chosen instead.
        Some(p) if !p.exists() && matches!(p.to_str(), Some("cc" | "rl")) => Err(usage(anyhow!(
            "--contract takes a contract file, and there is no file '{0}': the replaced system's contracts are \
             contracts/mapping_contract.json (cc) and mapping_contract_rl.json (rl); `load --generate` takes the \
             document shape from the contract, or from `--shape {0}`",
            p.display()
        ))),
        Some(p) => Contract::from_file(p)
            .with_context(|| format!("invalid contract {}", p.display()))
            .map_err(usage),
        None => Contract::from_json(docgen::CONTRACT_JSON)
            .context("invalid built-in contract")
            .map_err(usage),
    }
}

pub fn db_url(c: &Common) -> Result<DbUrl, Exit> {
    if let Some(server) = &c.server {
        if c.db.is_some() {
            return Err(usage(anyhow!("--db and --server are mutually exclusive")));
        }
        let cfg = store::mssql::config::MssqlConfig::from_flags(
            server,
            c.database.as_deref(),
            c.username.as_deref(),
            c.password.as_deref(),
        )
        .map_err(usage)?;
        return Ok(DbUrl::Mssql(cfg));
    }
    if c.database.is_some() || c.username.is_some() {
        return Err(usage(anyhow!("--database and --username need --server")));
    }
    DbUrl::parse(c.db.as_deref().unwrap_or(store::url::DEFAULT_DB)).map_err(usage)
}

fn open_store(c: &Common) -> Result<Box<dyn Store>, Exit> {
    let contract = load_contract(c)?;
    let url = db_url(c)?;
    Ok(store::open(&url, contract)?)
}

/// A `load` batch is written once it holds this many documents…
const LOAD_BATCH_DOCS: usize = 1000;
/// …or this many bytes, so `load`'s memory stays near this plus the largest single document, whatever the number
/// and sizes of the files.
const LOAD_BATCH_BYTES: usize = 16 << 20;

/// Streams documents into the source table in bounded batches. Each document passes the strict-bytes check first
/// ([`crate::decode`]): a refused one is stored byte-exact in its undecodable form (so `run` logs it `failed` with
/// the offset) and named here. A document the database still refuses is named too, and the others load.
struct Loader<'s> {
    store: &'s mut dyn Store,
    batch: Vec<(i64, String)>,
    names: Vec<String>,
    bytes: usize,
    total: u64,
    new: u64,
    refused: u64,
    unstored: Vec<String>,
}

impl<'s> Loader<'s> {
    fn new(store: &'s mut dyn Store) -> Self {
        Loader {
            store,
            batch: Vec::new(),
            names: Vec::new(),
            bytes: 0,
            total: 0,
            new: 0,
            refused: 0,
            unstored: Vec::new(),
        }
    }

    fn push(&mut self, app_id: i64, name: String, bytes: Vec<u8>) -> Result<(), Exit> {
        let (text, why) = crate::decode::stored_form(bytes);
        if let Some(e) = why {
            self.refused += 1;
            tracing::warn!(file = %name, app_id, reason = %e, "document refused by the strict-bytes check; stored byte-exact, `run` will log it failed");
        }
        self.push_text(app_id, name, text)
    }

    /// Queues text as it will be stored (already through the strict-bytes check).
    fn push_text(&mut self, app_id: i64, name: String, text: String) -> Result<(), Exit> {
        self.bytes += text.len();
        self.batch.push((app_id, text));
        self.names.push(name);
        if self.batch.len() >= LOAD_BATCH_DOCS || self.bytes >= LOAD_BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Exit> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.total += self.batch.len() as u64;
        match self.store.load_source(&self.batch) {
            Ok(n) => self.new += n,
            Err(e) if e.is_retryable() => {
                return Err(runtime(
                    anyhow::Error::new(e).context("failed to load documents"),
                ))
            }
            Err(_) => {
                // Some document of the batch cannot be stored: store them one by one to name it and keep the rest
                // (rows already stored are skipped as present, so the counts stay right).
                for (doc, name) in self.batch.iter().zip(&self.names) {
                    match self.store.load_source(std::slice::from_ref(doc)) {
                        Ok(n) => self.new += n,
                        Err(e) if e.is_retryable() => {
                            return Err(runtime(
                                anyhow::Error::new(e).context("failed to load documents"),
                            ))
                        }
                        Err(e) => {
                            tracing::error!(file = %name, app_id = doc.0, error = %e, "the database refused this document");
                            self.unstored.push(name.clone());
                        }
                    }
                }
            }
        }
        self.batch.clear();
        self.names.clear();
        self.bytes = 0;
        Ok(())
    }
}

fn load(a: LoadArgs) -> Result<(), Exit> {
    if !(0.0..=1.0).contains(&a.malformed_fraction) {
        return Err(usage(anyhow!(
            "--malformed-fraction must be between 0 and 1"
        )));
    }
    let mut s = open_store(&a.common)?;
    s.init_schema()
        .context("failed to create the schema")
        .map_err(runtime)?;
    let mut loader = Loader::new(s.as_mut());
    // Files that never reached the database (no app_id): in `unstored` for the final report, not in `total`.
    let mut unnamed = 0;
    let progress = progress_line(&a.common);
    if let Some(dir) = &a.dir {
        // One file in memory at a time besides the bounded batch.
        let listing = list_xml_files(dir).map_err(usage)?;
        for (path, why) in &listing.unnamed {
            // Not loadable under any app_id: named and counted, and the others still load.
            tracing::error!(file = %path.display(), reason = %why, "document not loaded");
            loader.unstored.push(format!("{} ({why})", path.display()));
            unnamed += 1;
        }
        for (id, path) in listing.files {
            let bytes = std::fs::read(&path)
                .with_context(|| format!("cannot read {}", path.display()))
                .map_err(runtime)?;
            loader.push(id, path.display().to_string(), bytes)?;
        }
    } else if let Some(n) = a.generate {
        let cfg = docgen::GenConfig {
            count: usize::try_from(n).map_err(usage)?,
            seed: a.seed,
            first_app_id: a.first_app_id,
            malformed_fraction: a.malformed_fraction,
            ..docgen::GenConfig::default()
        };
        for doc in generated_docs(&a, &cfg)? {
            let before = loader.total;
            loader.push(
                doc.app_id,
                format!("generated app_id {}", doc.app_id),
                doc.xml.into_bytes(),
            )?;
            if loader.total != before && progress {
                eprint!("\rloaded {}/{n}", loader.total);
            }
        }
    }
    loader.flush()?;
    if progress && a.generate.is_some() {
        eprintln!();
    }
    let refused = if loader.refused > 0 {
        format!(
            "; {} refused by the strict-bytes check, stored byte-exact to be logged failed",
            loader.refused
        )
    } else {
        String::new()
    };
    let stored = loader.total + unnamed - loader.unstored.len() as u64;
    report(
        a.common.log_format,
        &format!(
            "loaded {} new documents ({} already present{refused})",
            loader.new,
            stored - loader.new
        ),
    );
    if !loader.unstored.is_empty() {
        return Err(runtime(anyhow!(
            "{} document(s) could not be stored (the others loaded): {}",
            loader.unstored.len(),
            loader.unstored.join(", ")
        )));
    }
    Ok(())
}

/// The documents `load --generate` writes: the real-shaped generator or the classic one (`--shape`).
fn generated_docs(
    a: &LoadArgs,
    cfg: &docgen::GenConfig,
) -> Result<Box<dyn Iterator<Item = docgen::Doc>>, Exit> {
    use docgen::realshape::{real_generate_iter, RealConfig, Shape};
    let shape = match a.shape.to_ascii_lowercase().as_str() {
        "classic" => None,
        "auto" => {
            // From the contract's own JSON (application path and mapped element names), which every contract
            // loader keeps, rather than from one loader's internal element tree.
            let c = load_contract(&a.common)?;
            let v: serde_json::Value = serde_json::from_str(&c.json).unwrap_or_default();
            let app = v["xml_application_path"].as_str().unwrap_or("");
            let app = app.rsplit('/').next().unwrap_or("");
            let names: Vec<&str> = v["mappings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["xml_path"].as_str())
                .flat_map(|p| p.split('/'))
                .collect();
            Shape::for_contract(app, &names)
        }
        other => Some(Shape::parse(other).ok_or_else(|| {
            usage(anyhow!(
                "--shape must be cc, rl, classic or auto, not '{other}'"
            ))
        })?),
    };
    Ok(match shape {
        None => Box::new(docgen::generate_iter(cfg)),
        Some(shape) => Box::new(real_generate_iter(&RealConfig {
            first_app_id: cfg.first_app_id,
            malformed_fraction: cfg.malformed_fraction,
            ..RealConfig::new(shape, cfg.count, cfg.seed)
        })),
    })
}

/// The integer `ID` attribute of the first `<Request` start tag within the file's first 64 KiB, read as raw bytes
/// (a BOM, a declaration or a broken document elsewhere do not matter).
fn request_id(path: &Path) -> anyhow::Result<Option<i64>> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(request_id_in(&head))
}

fn request_id_in(bytes: &[u8]) -> Option<i64> {
    crate::xml::request_id(bytes)
}

/// The `.xml` files of a directory: those with an app_id, and those without one (with the reason).
struct Listing {
    files: Vec<(i64, PathBuf)>,
    unnamed: Vec<(PathBuf, String)>,
}

/// `<app_id>.xml` files of `dir` (else the document's `Request@ID`), sorted by app_id; a file with neither is
/// listed apart so `load` can name it and still load the rest.
fn list_xml_files(dir: &Path) -> anyhow::Result<Listing> {
    let mut out = Vec::new();
    let mut unnamed = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
    {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("xml") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let digits: String = stem
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        // The name's last digits, else (the replaced system's `sample-…--132838-rl.xml`) the document's own
        // `<Request ID="…">`.
        let id: i64 = match digits.parse() {
            Ok(id) => id,
            Err(_) => match request_id(&path)? {
                Some(id) => id,
                None => {
                    unnamed.push((
                        path,
                        "no app_id in its name (expected <app_id>.xml) nor a <Request ID=\"…\"> near its start"
                            .to_owned(),
                    ));
                    continue;
                }
            },
        };
        out.push((id, path));
    }
    out.sort();
    unnamed.sort();
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!(
            "{} and {} have the same app_id {}",
            w[0].1.display(),
            w[1].1.display(),
            w[0].0
        );
    }
    Ok(Listing {
        files: out,
        unnamed,
    })
}

/// Validates `run` arguments into a `RunConfig` (exit 2 on any problem).
pub fn run_config(a: &RunArgs) -> Result<RunConfig, Exit> {
    let fail = |m: String| Err(usage(anyhow!(m)));
    if a.workers == 0 || a.workers > 256 {
        return fail(format!(
            "--workers must be between 1 and 256 (got {})",
            a.workers
        ));
    }
    if a.batch_size == 0 || a.batch_size > 10_000 {
        return fail(format!(
            "--batch-size must be between 1 and 10000 (got {})",
            a.batch_size
        ));
    }
    if a.instance_count == 0 {
        return fail("--instance-count must be at least 1".into());
    }
    if a.instance_id >= a.instance_count {
        return fail(format!(
            "--instance-id {} is out of range for --instance-count {} (ids are 0..{})",
            a.instance_id,
            a.instance_count,
            a.instance_count - 1
        ));
    }
    if a.mode == Mode::Queue && (a.lease_secs == 0 || a.lease_secs > 86_400) {
        return fail(format!(
            "--lease-secs must be between 1 and 86400 (got {})",
            a.lease_secs
        ));
    }
    if a.limit == Some(0) {
        return fail("--limit must be at least 1".into());
    }
    if a.max_doc_bytes == 0 {
        return fail("--max-doc-bytes must be at least 1".into());
    }
    if a.max_map_ms == 0 || a.max_map_ms > 86_400_000 {
        return fail(format!(
            "--max-map-ms must be between 1 and 86400000 (got {})",
            a.max_map_ms
        ));
    }
    let range = match (a.app_id_start, a.app_id_end) {
        (Some(s), Some(e)) if s > e => {
            return fail(format!("--app-id-start {s} is after --app-id-end {e}"))
        }
        (Some(s), Some(e)) => Some((s, e)),
        _ => None,
    };
    Ok(RunConfig {
        mode: a.mode,
        commit_mode: a.commit_mode,
        workers: a.workers,
        batch_size: a.batch_size,
        limit: a.limit,
        range,
        instance_id: a.instance_id,
        instance_count: a.instance_count,
        lease_secs: a.lease_secs,
        retry: RetryPolicy {
            give_up_after_secs: a.retry_give_up_secs,
            ..RetryPolicy::default()
        },
        progress: progress_line(&a.common),
        limits: engine::DocLimits {
            max_doc_bytes: a.max_doc_bytes,
            max_map: std::time::Duration::from_millis(a.max_map_ms),
        },
    })
}

/// A `\r` progress line only for a person at a terminal reading pretty logs; otherwise progress is logged.
fn progress_line(c: &Common) -> bool {
    c.log_format == LogFormat::Pretty && std::io::stderr().is_terminal()
}

/// Unique per process start: instance, pid and random bits.
pub fn new_session_id(instance_id: u32) -> String {
    format!(
        "i{instance_id}-p{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

fn run(a: RunArgs) -> Result<(), Exit> {
    let cfg = run_config(&a)?;
    let crasher = Crasher::from_env().map_err(usage)?;
    let skew = crate::clock::skew_from_env().map_err(usage)?;
    if skew != 0 {
        tracing::warn!(
            skew_ms = skew,
            "this processor's clock is skewed (harness test)"
        );
    }
    if let Some(bug) = crate::crash::plant_from_env().map_err(usage)? {
        crate::store::plant_ignore_log(bug == crate::crash::PlantedBug::IgnoreLog);
        crate::store::plant_no_savepoint_rollback(
            bug == crate::crash::PlantedBug::NoSavepointRollback,
        );
        crate::store::plant_no_sync(bug == crate::crash::PlantedBug::NoSync);
        tracing::warn!(
            bug = bug.name(),
            "a bug is planted in this processor (harness test)"
        );
    }
    let contract = load_contract(&a.common)?;
    let url = db_url(&a.common)?;
    if cfg.commit_mode == CommitMode::Split {
        tracing::warn!("--commit-mode split is UNSAFE: data and log commit separately (the replaced system's bug)");
    }
    let events = EventSink::open(a.events.as_deref(), a.common.log_format == LogFormat::Json)
        .with_context(|| format!("cannot open events file {:?}", a.events))
        .map_err(usage)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&shutdown))
            .context("cannot install signal handler")
            .map_err(runtime)?;
    }
    let session_id = new_session_id(cfg.instance_id);
    // The lease heartbeat's own connection, retried like the main one (the server may be restarting right now).
    let open_hb = || -> store::StoreResult<Box<dyn Store>> {
        match connect_with_retry(&url, &contract, &cfg.retry, None, &mut |_, _, _| {}) {
            Ok(Some(s)) => Ok(s),
            // Without a stop flag the loop never returns early; answer as an error rather than panic.
            Ok(None) => Err(store::StoreError::new(
                store::ErrorKind::Fatal,
                "connect heartbeat",
                "stopped",
            )),
            Err(e) => Err(store::StoreError::new(
                store::ErrorKind::Fatal,
                "connect heartbeat",
                format!("{:#}", e.error),
            )),
        }
    };
    let ctx = RunContext {
        session_id: &session_id,
        events: &events,
        crasher: &crasher,
        shutdown: &shutdown,
        open_heartbeat_store: Some(&open_hb),
    };
    // The database may be restarting right now: connecting is retried like any transient error.
    // Each wait is an event too, so a reader sees a process backing off, not a silent one.
    let mut report = |attempt: u32, wait: std::time::Duration, error: String| {
        let body = crate::events::Body::Retrying {
            op: "connect".to_owned(),
            attempt,
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            error,
        };
        let event = crate::events::Event::new(body, cfg.instance_id, &session_id, vec![]);
        events.emit(&event);
    };
    let connected = connect_with_retry(&url, &contract, &cfg.retry, Some(&shutdown), &mut report)?;
    let Some(mut store) = connected else {
        // Stopped while the database was unreachable: nothing was claimed or written, so this is a clean drain.
        engine::drained_before_start(url.backend(), &cfg, &ctx);
        return Ok(());
    };
    // Idempotent DDL, so a connection lost in the middle (or at its COMMIT) is simply retried.
    crate::retry::with_retry(
        store.as_mut(),
        &cfg.retry,
        |e, attempt, wait| {
            tracing::warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "schema check failed; retrying");
        },
        |s| s.init_schema(),
    )
    .context("failed to create the schema")
    .map_err(runtime)?;
    if cfg.mode == Mode::Queue {
        store.prepare_claims();
    }
    let summary = engine::run(store.as_mut(), &cfg, &ctx)
        .context("run failed")
        .map_err(runtime)?;
    let line = format!(
        "{}: {} succeeded, {} failed, {} collisions, {} lease lost in {:.1}s ({:.0} applications/s)",
        summary.reason,
        summary.succeeded,
        summary.failed,
        summary.collisions,
        summary.lease_lost,
        summary.elapsed_secs,
        (summary.succeeded + summary.failed) as f64 / summary.elapsed_secs.max(1e-9)
    );
    // JSON mode: stdout holds only events (the `finished` event carries the same summary).
    if a.common.log_format == LogFormat::Pretty {
        write_stdout(&format!("{line}\n"))?;
    }
    Ok(())
}

/// Opens the store, retrying an unreachable server under the retry policy's backoff. `None`: `stop` (the
/// SIGTERM/SIGINT flag) was set during a backoff wait, which it cuts short (issue #11: a stop is honoured within a
/// second even while the database is down).
fn connect_with_retry(
    url: &DbUrl,
    contract: &Contract,
    policy: &RetryPolicy,
    stop: Option<&AtomicBool>,
    on_retry: &mut dyn FnMut(u32, std::time::Duration, String),
) -> Result<Option<Box<dyn Store>>, Exit> {
    let mut backoff = policy.backoff();
    let mut attempt = 0u32;
    loop {
        match store::open(url, contract.clone()) {
            Ok(s) => return Ok(Some(s)),
            Err(OpenError::Connect { cause, url: shown }) if cause.is_retryable() => {
                let Some(wait) = backoff.next_wait() else {
                    return Err(OpenError::Connect { cause, url: shown }.into());
                };
                tracing::warn!(error = %cause, url = %url.redacted(), "database unreachable; retrying");
                attempt += 1;
                on_retry(attempt, wait, cause.to_string());
                if crate::retry::sleep_unless_stopped(wait, stop) {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn status(a: StatusArgs) -> Result<(), Exit> {
    // Opening a SQLite file that does not exist would create it: say what is wrong instead.
    if let DbUrl::Sqlite(p) = db_url(&a.common)? {
        if !p.exists() {
            return Err(usage(anyhow!(
                "{} does not exist: the database is not initialised (run `processor init` or `processor load` first)",
                p.display()
            )));
        }
    }
    let mut s = open_store(&a.common)?;
    // Live and expired on the lease clock (the database's), as the processors judge them.
    let now = store::lease_now(s.as_mut()).unwrap_or_else(|_| store::now_ms());
    let r = match s.status(now) {
        Ok(r) => r,
        Err(e) if e.kind == store::ErrorKind::Missing => {
            return Err(usage(anyhow!(
            "the database is not initialised for this contract ({e}): run `processor init` or `processor load` first, or pass the `--contract` it was loaded with"
        )))
        }
        Err(e) => {
            return Err(runtime(
                anyhow::Error::new(e).context("failed to read status"),
            ))
        }
    };
    if a.json {
        let json = serde_json::to_string_pretty(&r).map_err(runtime)?;
        return write_stdout(&format!("{json}\n"));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "total {}  success {}  failed {}  pending {}",
        r.total, r.success, r.failed, r.pending
    );
    // Nothing is changed silently: values truncated or converted to fit the contract, from `processing_log.coerced`.
    let _ = writeln!(
        out,
        "coerced {} values in {} applications (truncated or converted to fit the contract)",
        r.coerced_values, r.coerced_apps
    );
    if !r.instances.is_empty() {
        let _ = writeln!(
            out,
            "{:>8} {:>9} {:>9} {:>8}  last processed",
            "instance", "success", "failed", "sessions"
        );
        for i in &r.instances {
            let _ = writeln!(
                out,
                "{:>8} {:>9} {:>9} {:>8}  {}",
                i.instance_id,
                i.success,
                i.failed,
                i.sessions,
                i.last_processed_at.as_deref().unwrap_or("-")
            );
        }
    }
    if !r.claims.is_empty() {
        let _ = writeln!(out, "open claims (unfinished applications):");
        for c in &r.claims {
            let expiry = c
                .earliest_expiry_ms
                .map(|ms| format!("{:+.1}s", (ms - store::now_ms()) as f64 / 1000.0))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "  {}  live {}  expired {}  next expiry {}",
                c.owner, c.live, c.expired, expiry
            );
        }
    }
    write_stdout(&out)
}

/// Writes a command's output to stdout. A reader that went away (`processor status | head`: EPIPE) ends the
/// output quietly, as a Unix filter would, instead of panicking the way `println!` does; any other write error is
/// a runtime error.
fn write_stdout(text: &str) -> Result<(), Exit> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(runtime(
            anyhow::Error::new(e).context("failed to write to stdout"),
        )),
    }
}

#[cfg(test)]
mod loader_tests {
    use super::*;

    /// `load --dir` names: the file name's last digits, else the document's own `Request@ID`; neither is an error
    /// naming the file.
    #[test]
    fn app_ids_come_from_the_name_else_the_request_id() {
        assert_eq!(
            request_id_in(
                b"\xEF\xBB\xBF<?xml version='1.0'?><Provenir><Request  ID = '132838' x=\"1\">"
            ),
            Some(132838)
        );
        assert_eq!(
            request_id_in(b"<Provenir><Request XID=\"5\" ID=\"7\">"),
            Some(7)
        );
        assert_eq!(request_id_in(b"<Requests ID=\"7\">"), None);
        assert_eq!(request_id_in(b"<Journal ID=\"MSADD\"/>"), None);
        assert_eq!(request_id_in(b"<Request ID=\"abc\">"), None);

        let dir = tempfile::tempdir().expect("temp dir");
        let w =
            |name: &str, body: &str| std::fs::write(dir.path().join(name), body).expect("write");
        w("17.xml", "<Provenir><Request ID=\"99\"/></Provenir>");
        w(
            "sample-source-xml--132838-rl.xml",
            "<Provenir><Request ID=\"132838\"/></Provenir>",
        );
        w("notes.txt", "not a document");
        let listing = list_xml_files(dir.path()).expect("list");
        let got: Vec<i64> = listing.files.iter().map(|(id, _)| *id).collect();
        assert_eq!(got, vec![17, 132838]);
        assert!(listing.unnamed.is_empty());
        // A file with no id anywhere is listed apart, with its reason, and the others are still listed.
        w("bloat.xml", "<Journals><Journal ID=\"MSADD\"/></Journals>");
        let listing = list_xml_files(dir.path()).expect("list");
        assert_eq!(listing.files.len(), 2);
        assert_eq!(listing.unnamed.len(), 1);
        assert!(listing.unnamed[0].0.ends_with("bloat.xml"));
        assert!(listing.unnamed[0].1.contains("no app_id in its name"));
    }

    /// A document the database itself refuses (here a trigger on SQLite's source table; on PostgreSQL text with NUL
    /// would do, had the strict-bytes check let it through) is named, and every other document of its batch still
    /// loads.
    #[test]
    fn a_document_the_database_refuses_is_named_and_the_rest_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("loader.db");
        let url = format!("sqlite:{}", path.display());
        let contract = Contract::from_json(fixtures::CONTRACT_JSON).expect("contract");
        let mut store =
            store::open(&DbUrl::parse(&url).expect("url"), contract).expect("store opens");
        store.init_schema().expect("schema");
        rusqlite::Connection::open(&path)
            .expect("open")
            .execute_batch(
                "CREATE TRIGGER refuse_3 BEFORE INSERT ON app_xml WHEN NEW.app_id = 3
                 BEGIN SELECT RAISE(ABORT, 'document 3 refused'); END;",
            )
            .expect("trigger");
        let mut loader = Loader::new(store.as_mut());
        for id in 1..=5 {
            let text = "<a/>";
            loader
                .push_text(id, format!("{id}.xml"), text.to_owned())
                .expect("queued");
        }
        loader
            .flush()
            .expect("flush goes on past the refused document");
        assert_eq!(loader.unstored, vec!["3.xml".to_owned()]);
        assert_eq!((loader.total, loader.new), (5, 4));
        let r = store.status(store::now_ms()).expect("status");
        assert_eq!(r.total, 4);
    }
}
