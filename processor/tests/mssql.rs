//! SQL Server integration tests. They need a server: set `SHREDPROOF_MSSQL_URL` (any `mssql://…` URL or ADO.NET
//! string whose login may create databases), e.g.
//! `SHREDPROOF_MSSQL_URL='mssql://sa:Passw0rd!@localhost:1433/master?trust_server_certificate=true'`.
//! Without it every test is reported as skipped (`harness = false`, `fixtures::trial`), a failure under
//! SHREDPROOF_REQUIRE_MSSQL=1. Each test creates its own `shredproof_test_<random>`
//! database and drops it at the end.

use processor::contract::Contract;
use processor::mapping::map_document;
use processor::store::mssql::config::MssqlConfig;
use processor::store::mssql::{self, MssqlStore};
use processor::store::write::{write_atomic, AppWork, NoHooks, WriteCtx};
use processor::store::{Selection, SourceDoc, Store};

use fixtures::trial::{self, Need};

const ENV: &str = trial::MSSQL_URL_ENV;

fn main() {
    let mut t = fixtures::trials!([Need::Mssql] =>
        mssql_loads_writes_and_resumes,
        mssql_claims_are_fenced,
        mssql_init_adds_the_coerced_column_to_an_old_log,
        mssql_copy_source_copies_another_databases_documents,
    );
    let name = "mssql_replaced_tools_flags_and_ado_strings_reach_the_same_server";
    let url = std::env::var(ENV).ok().filter(|u| !u.trim().is_empty());
    t.push(match url {
        // The server is there, but this test needs the password out of a `mssql://` URL.
        Some(u) if url_password(&u).is_none() => {
            trial::skipped(name, format!("{ENV} is not a mssql://user:password@… URL"))
        }
        _ => trial::trial(
            name,
            &[Need::Mssql],
            mssql_replaced_tools_flags_and_ado_strings_reach_the_same_server,
        ),
    });
    trial::run(t)
}

/// The server at `SHREDPROOF_MSSQL_URL` (the tests are listed as runnable only when it is set: `Need::Mssql`).
fn server() -> MssqlConfig {
    let url = std::env::var(ENV).expect("SHREDPROOF_MSSQL_URL is set");
    MssqlConfig::parse(&url)
        .unwrap_or_else(|e| panic!("{ENV} is not a valid SQL Server connection: {e}"))
}

/// A scratch database, dropped when the test ends (also on panic).
struct ScratchDb {
    server: MssqlConfig,
    name: String,
}

impl ScratchDb {
    fn create(server: &MssqlConfig) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "shredproof_test_{}_{}_{}",
            std::process::id(),
            nanos,
            rand::random::<u32>()
        );
        mssql::create_database(server, &name).expect("create database");
        ScratchDb {
            server: server.clone(),
            name,
        }
    }

    fn open(&self) -> MssqlStore {
        let contract = Contract::from_json(fixtures::CONTRACT_JSON).expect("contract");
        MssqlStore::open(&self.server.with_database(&self.name), contract).expect("open store")
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if let Err(e) = mssql::drop_database(&self.server, &self.name) {
            eprintln!("could not drop {}: {e}", self.name);
        }
    }
}

fn docs(count: usize, seed: u64, first: i64) -> Vec<(i64, String)> {
    let cfg = fixtures::GenConfig {
        count,
        seed,
        first_app_id: first,
        ..Default::default()
    };
    fixtures::generate(&cfg)
        .into_iter()
        .map(|d| (d.app_id, d.xml))
        .collect()
}

fn work(store: &dyn Store, batch: &[SourceDoc]) -> Vec<AppWork> {
    batch
        .iter()
        .map(|d| AppWork {
            app_id: d.app_id,
            fence: d.fence,
            outcome: map_document(store.contract(), d.app_id, &d.xml),
        })
        .collect()
}

fn ctx<'a>(session: &'a str, fenced: bool) -> WriteCtx<'a> {
    WriteCtx {
        session_id: session,
        instance_id: 0,
        fenced,
        hooks: &NoHooks,
    }
}

fn mssql_loads_writes_and_resumes() {
    let server = server();
    let db = ScratchDb::create(&server);
    let mut store = db.open();
    store.init_schema().expect("init");
    store.init_schema().expect("init is idempotent");

    let source = docs(200, 7, 1);
    assert_eq!(store.load_source(&source).expect("load"), 200);
    assert_eq!(store.load_source(&source).expect("reload"), 0);

    let sel = Selection::default();
    assert_eq!(store.pending_count(&sel).expect("count"), 200);
    assert_eq!(store.pending_at(&sel, 0).expect("at"), Some(1));
    assert_eq!(store.pending_at(&sel, 199).expect("at"), Some(200));
    assert_eq!(store.pending_at(&sel, 200).expect("at"), None);
    let odd = Selection {
        range: Some((1, 100)),
        partition: Some((2, 1)),
    };
    assert_eq!(store.pending_count(&odd).expect("count"), 50);
    assert_eq!(store.pending_at(&odd, 1).expect("at"), Some(3));
    let ntables = store.contract().tables.len();
    let mut expected_rows = vec![0u64; ntables];
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut from = i64::MIN;
    loop {
        let batch = store.fetch_pending(&sel, from, 50).expect("fetch");
        let Some(last) = batch.last() else { break };
        from = last.app_id + 1;
        let w = work(&store, &batch);
        for a in &w {
            if let Ok(m) = &a.outcome {
                for (t, rows) in m.rows.iter().enumerate() {
                    expected_rows[t] += rows.len() as u64;
                }
            }
        }
        let r = write_atomic(&mut store, &w, &ctx("session-a", false)).expect("write");
        assert!(r.collisions.is_empty(), "{r:?}");
        ok += r.succeeded.len() as u64;
        failed += r.failed.len() as u64;
    }
    assert_eq!(ok + failed, 200);
    let status = store.status(processor::store::now_ms()).expect("status");
    assert_eq!(
        (status.total, status.success, status.failed, status.pending),
        (200, ok, failed, 0)
    );
    assert!(store
        .fetch_pending(&sel, i64::MIN, 10)
        .expect("fetch")
        .is_empty());
    assert_eq!(store.pending_count(&sel).expect("count"), 0);
    assert_eq!(store.pending_at(&sel, 0).expect("at"), None);
    for (t, &expected) in expected_rows.iter().enumerate() {
        let got = store.table_row_count(t).expect("count");
        let table = &store.contract().tables[t];
        if table.shared {
            // Shared entities are written once per natural key.
            assert!(got <= expected, "{}", table.name);
        } else {
            assert_eq!(got, expected, "{}", table.name);
        }
    }

    // Writing the same applications again: every one is a collision, resolved through savepoints (which needs
    // the transaction to survive the duplicate-key errors), and nothing changes.
    let all: Vec<SourceDoc> = source
        .iter()
        .take(20)
        .map(|(id, xml)| SourceDoc {
            app_id: *id,
            xml: xml.clone(),
            fence: None,
        })
        .collect();
    let w = work(&store, &all);
    let r = write_atomic(&mut store, &w, &ctx("session-b", false)).expect("rewrite");
    assert!(r.slow_path);
    assert_eq!(r.collisions.len(), 20, "{r:?}");
    assert!(r.committed.is_empty());
    let logged = store.logged(&[1, 2, 3, 999_999]).expect("logged");
    assert_eq!(logged.len(), 3);
    assert!(logged.iter().all(|(_, s)| s == "session-a"));
    let status = store.status(processor::store::now_ms()).expect("status");
    assert_eq!(status.success + status.failed, 200);

    store.reconnect().expect("reconnect");
    assert_eq!(
        store
            .status(processor::store::now_ms())
            .expect("status")
            .total,
        200
    );
}

/// The harness's second scenario phase: one database's documents copied server-side into a fresh one.
fn mssql_copy_source_copies_another_databases_documents() {
    let server = server();
    let (from, to) = (ScratchDb::create(&server), ScratchDb::create(&server));
    let mut a = from.open();
    a.init_schema().expect("init from");
    let loaded = docs(25, 7, 500);
    a.load_source(&loaded).expect("load");
    let mut b = to.open();
    b.init_schema().expect("init to");
    let contract = Contract::from_json(fixtures::CONTRACT_JSON).expect("contract");
    let n = mssql::copy_source(&server.with_database(&to.name), &from.name, &contract)
        .expect("copy source");
    assert_eq!(n, 25);
    let sel = Selection::default();
    let got = b.fetch_pending(&sel, i64::MIN, 100).expect("fetch");
    let got: Vec<(i64, String)> = got.into_iter().map(|d| (d.app_id, d.xml)).collect();
    let mut want = loaded.clone();
    want.sort();
    assert_eq!(
        got, want,
        "the copy holds the same documents, byte for byte"
    );
    // A database that does not exist is a clear error, not a silent empty copy.
    let e = mssql::copy_source(
        &server.with_database(&to.name),
        "shredproof_no_such_db",
        &contract,
    )
    .expect_err("copy from a missing database");
    assert!(!e.message.is_empty());
}

fn mssql_claims_are_fenced() {
    let server = server();
    let db = ScratchDb::create(&server);
    let mut a = db.open();
    let mut b = db.open();
    a.init_schema().expect("init");
    a.load_source(&docs(30, 11, 1000)).expect("load");
    let sel = Selection::default();

    // A claims 10 with a short lease.
    let t0 = 1_000_000;
    let mine = a.claim(&sel, "owner-a", t0, 100, 10).expect("claim a");
    assert_eq!(mine.len(), 10);
    assert!(mine.iter().all(|d| d.fence == Some(1)));
    let ids: Vec<i64> = mine.iter().map(|d| d.app_id).collect();
    assert_eq!(a.live_claims(&sel, t0 + 50).expect("live"), 10);
    // While the lease is live, B gets other applications.
    let other = b.claim(&sel, "owner-b", t0 + 50, 100, 10).expect("claim b");
    assert_eq!(other.len(), 10);
    assert!(other.iter().all(|d| !ids.contains(&d.app_id)));
    assert_eq!(
        a.renew("owner-a", &ids, t0 + 50, t0 + 150).expect("renew"),
        10
    );

    // The lease expires; B takes A's applications over with a higher fence.
    let taken = b
        .claim(&sel, "owner-b", t0 + 200, 10_000, 30)
        .expect("takeover");
    let taken_ids: Vec<i64> = taken.iter().map(|d| d.app_id).collect();
    for id in &ids {
        assert!(taken_ids.contains(id), "{id} not taken over");
    }
    assert!(taken
        .iter()
        .filter(|d| ids.contains(&d.app_id))
        .all(|d| d.fence == Some(2)));

    // A wakes up and tries to commit its stale claims: nothing is committed.
    let w = work(&a, &mine);
    let r = write_atomic(&mut a, &w, &ctx("owner-a", true)).expect("stale write");
    assert_eq!(r.lease_lost.len(), 10, "{r:?}");
    assert!(r.committed.is_empty());
    assert!(a.logged(&ids).expect("logged").is_empty());
    // A cannot renew what it lost.
    assert_eq!(
        a.renew("owner-a", &ids, t0 + 300, t0 + 99_999)
            .expect("renew"),
        0
    );

    // B completes them under its own fence.
    let mine_b: Vec<SourceDoc> = taken
        .iter()
        .filter(|d| ids.contains(&d.app_id))
        .cloned()
        .collect();
    let w = work(&b, &mine_b);
    let r = write_atomic(&mut b, &w, &ctx("owner-b", true)).expect("write b");
    assert!(r.lease_lost.is_empty(), "{r:?}");
    assert_eq!(r.committed.len(), 10);
    assert!(r.committed_fences.iter().all(|&f| f == 2));
    let logged = b.logged(&ids).expect("logged");
    assert_eq!(logged.len(), 10);
    assert!(logged.iter().all(|(_, s)| s == "owner-b"));
    // Completed claims are never claimed again, not even after every lease expired.
    let again = a
        .claim(&sel, "owner-a", t0 + 1_000_000, 1_000, 100)
        .expect("claim rest");
    assert!(again.iter().all(|d| !ids.contains(&d.app_id)));
    assert_eq!(again.len(), 20);
    let status = a.status(t0).expect("status");
    assert_eq!(status.success + status.failed, 10);
    drop((a, b));
}

/// The password inside a `mssql://user:password@…` URL, %-decoded (`MssqlConfig` keeps its own private).
fn url_password(url: &str) -> Option<String> {
    let rest = url.strip_prefix("mssql://")?;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let raw = userinfo.split_once(':')?.1.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The replaced tool's connection forms reach the same server and database as the URL: `--server
/// "host\INSTANCE,port" --database DB` (an explicit port skips the SQL Browser, as in ADO.NET; Babelfish has no
/// Browser, whose path keeps its unit tests in config.rs), `--server host,port`, and an ADO.NET string, both
/// through the store and through the processor CLI.
fn mssql_replaced_tools_flags_and_ado_strings_reach_the_same_server() {
    let server = server();
    let url = std::env::var(ENV).expect("set");
    let password = url_password(&url).expect("listed only for a mssql://user:password@… URL");
    let db = ScratchDb::create(&server);
    let mut store = db.open();
    store.init_schema().expect("init");
    store.load_source(&docs(7, 3, 500)).expect("load");
    let host = server.host.clone();
    let port = server.port.unwrap_or(1433);
    let contract = || Contract::from_json(fixtures::CONTRACT_JSON).expect("contract");
    for srv in [
        format!("{host}\\SQLEXPRESS,{port}"),
        format!("{host},{port}"),
    ] {
        let cfg =
            MssqlConfig::from_flags(&srv, Some(&db.name), Some(&server.user), Some(&password))
                .expect("flags");
        assert!(!cfg.uses_browser(), "{srv}");
        let mut s = MssqlStore::open(&cfg, contract()).unwrap_or_else(|e| panic!("{srv}: {e}"));
        assert_eq!(s.status(0).expect("status").total, 7, "{srv}");
    }
    let ado = format!(
        "Server=tcp:{host},{port};Database={};User Id={};Password={password};TrustServerCertificate=true",
        db.name, server.user
    );
    let cfg = MssqlConfig::parse(&ado).expect("ado");
    let mut s = MssqlStore::open(&cfg, contract()).expect("ado open");
    assert_eq!(s.status(0).expect("status").total, 7);
    drop(s);

    // The CLI with the replaced tool's flags, the password from the environment (never on the command line).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_processor"))
        .args(["status", "--server", &format!("{host}\\SQLEXPRESS,{port}")])
        .args(["--database", &db.name, "--username", &server.user])
        .env("SHREDPROOF_MSSQL_PASSWORD", &password)
        .env_remove("SHREDPROOF_DB")
        .output()
        .expect("run processor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("total 7"), "{stdout}");
    assert!(!stdout.contains(&password) && !stderr.contains(&password));
    drop(store);
}

/// Runs `sql` on the scratch database through the driver itself (the store has no verb for an old schema).
fn raw_batch(server: &MssqlConfig, db: &str, sql: &str) {
    use tokio_util::compat::TokioAsyncWriteCompatExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tc = server.with_database(db).tiberius();
        let tcp = tokio::net::TcpStream::connect(tc.get_addr())
            .await
            .expect("tcp");
        let mut client = tiberius::Client::connect(tc, tcp.compat_write())
            .await
            .expect("login");
        client
            .simple_query(sql)
            .await
            .expect(sql)
            .into_results()
            .await
            .expect(sql);
    });
}

/// A database whose `processing_log` predates the `coerced` column gains it on `init` (0 for the old rows); a
/// second `init` finds it and changes nothing; new log rows then store their figure and `status` sums it.
fn mssql_init_adds_the_coerced_column_to_an_old_log() {
    let server = server();
    let db = ScratchDb::create(&server);
    raw_batch(
        &server,
        &db.name,
        "EXEC(N'CREATE SCHEMA [shredproof]');
         CREATE TABLE [shredproof].[processing_log] (app_id BIGINT NOT NULL PRIMARY KEY,
           status VARCHAR(10) NOT NULL, failure_reason NVARCHAR(500) NULL, attempts INT NOT NULL,
           instance_id INT NOT NULL, session_id VARCHAR(64) NOT NULL, fence BIGINT NULL,
           processed_at DATETIME2(3) NOT NULL);
         INSERT INTO [shredproof].[processing_log] VALUES (7, 'success', NULL, 1, 0, 's-old', NULL, SYSUTCDATETIME());",
    );
    let mut store = db.open();
    store.init_schema().expect("init migrates");
    store.init_schema().expect("init twice");
    let st = store.status(processor::store::now_ms()).expect("status");
    assert_eq!((st.success, st.coerced_values, st.coerced_apps), (1, 0, 0));
    store.begin().expect("begin");
    store
        .insert_logs(&[processor::store::LogRow {
            app_id: 8,
            status: processor::store::LogStatus::Success,
            reason: None,
            attempts: 1,
            instance_id: 0,
            session_id: "s-new".into(),
            fence: None,
            coerced: 3,
        }])
        .expect("insert log");
    store.commit().expect("commit");
    let st = store.status(processor::store::now_ms()).expect("status");
    assert_eq!((st.success, st.coerced_values, st.coerced_apps), (2, 3, 1));
}
