//! One store conformance suite, run against SQLite always, a private PostgreSQL cluster (listed as skipped when the
//! server binaries are absent, a failure under SHREDPROOF_REQUIRE_PG=1) and the SQL Server at
//! `SHREDPROOF_MSSQL_URL` (real SQL Server or Babelfish; skipped when unset, a failure under
//! SHREDPROOF_REQUIRE_MSSQL=1), each test on its own fresh database.

use fixtures::trial::{trial, Need, Trial, MSSQL_URL_ENV};
use processor::contract::Contract;
use processor::mapping::map_document;
use processor::store::mssql::config::MssqlConfig;
use processor::store::write::{write_atomic, write_split, AppWork, NoHooks, WriteCtx};
use processor::store::{self, DbUrl, Selection, Store};

fn contract() -> Contract {
    Contract::from_json(fixtures::CONTRACT_JSON).expect("project contract")
}

fn docs(n: usize, seed: u64) -> Vec<(i64, String)> {
    let cfg = fixtures::GenConfig {
        count: n,
        seed,
        malformed_fraction: 0.1,
        ..Default::default()
    };
    fixtures::generate(&cfg)
        .into_iter()
        .map(|d| (d.app_id, d.xml))
        .collect()
}

fn work(c: &Contract, docs: &[(i64, String)], fence: Option<i64>) -> Vec<AppWork> {
    docs.iter()
        .map(|(id, xml)| AppWork {
            app_id: *id,
            fence,
            outcome: map_document(c, *id, xml),
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

/// A backend the suite runs on; each (test, backend) pair is a trial of its own, so a backend that is absent shows
/// as skipped for each test, never as a pass.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mssql,
}

impl Backend {
    const ALL: [Backend; 3] = [Backend::Sqlite, Backend::Postgres, Backend::Mssql];

    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mssql => "mssql",
        }
    }

    fn needs(self) -> &'static [Need] {
        match self {
            Backend::Sqlite => &[],
            Backend::Postgres => &[Need::Postgres],
            Backend::Mssql => &[Need::Mssql],
        }
    }
}

/// Every conformance test on every backend: `conformance::<backend>::<test>`.
pub fn trials() -> Vec<Trial> {
    Backend::ALL
        .iter()
        .flat_map(|&b| {
            TESTS.iter().map(move |&(name, f)| {
                trial(
                    format!("conformance::{}::{name}", b.name()),
                    b.needs(),
                    move || f(b),
                )
            })
        })
        .collect()
}

/// Runs `test` against `backend`, on a fresh database of its own.
fn on_backend(backend: Backend, test: impl Fn(&mut dyn FnMut() -> Box<dyn Store>)) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = DbUrl::Sqlite(dir.path().join("conformance.db"));
            test(&mut || store::open(&url, contract()).expect("open sqlite"));
        }
        Backend::Postgres => {
            let cluster =
                fixtures::pg::PgCluster::start().expect("start a private PostgreSQL cluster");
            let url = DbUrl::parse(&cluster.create_database("conformance").expect("create db"))
                .expect("url");
            test(&mut || store::open(&url, contract()).expect("open postgres"));
        }
        Backend::Mssql => {
            let server = mssql_server();
            let db = MssqlScratch::create(&server);
            let url = DbUrl::Mssql(server.with_database(&db.name));
            test(&mut || store::open(&url, contract()).expect("open mssql"));
        }
    }
}

/// The SQL Server named by `SHREDPROOF_MSSQL_URL` (listed as runnable only when it is set: `Need::Mssql`).
fn mssql_server() -> MssqlConfig {
    let url = std::env::var(MSSQL_URL_ENV).expect("SHREDPROOF_MSSQL_URL is set");
    match DbUrl::parse(&url) {
        Ok(DbUrl::Mssql(cfg)) => cfg,
        Ok(_) => panic!("{MSSQL_URL_ENV} is not a SQL Server connection"),
        Err(e) => panic!("{MSSQL_URL_ENV} is not a valid SQL Server connection: {e}"),
    }
}

/// A `shredproof_conf_…` database on the SQL Server, dropped when the test ends (also on panic).
struct MssqlScratch {
    server: MssqlConfig,
    name: String,
}

impl MssqlScratch {
    fn create(server: &MssqlConfig) -> Self {
        let name = format!(
            "shredproof_conf_{}_{}",
            std::process::id(),
            rand::random::<u32>()
        );
        processor::store::mssql::create_database(server, &name).expect("create mssql database");
        MssqlScratch {
            server: server.clone(),
            name,
        }
    }
}

impl Drop for MssqlScratch {
    fn drop(&mut self) {
        if let Err(e) = processor::store::mssql::drop_database(&self.server, &self.name) {
            eprintln!("could not drop {}: {e}", self.name);
        }
    }
}

fn init_is_idempotent_and_load_skips_existing(b: Backend) {
    on_backend(b, |open| {
        let mut s = open();
        s.init_schema().expect("init");
        s.init_schema().expect("init twice");
        let d = docs(50, 1);
        assert_eq!(s.load_source(&d).expect("load"), 50);
        assert_eq!(
            s.load_source(&d[..10]).expect("reload"),
            0,
            "{}",
            s.backend()
        );
        let st = s.status(store::now_ms()).expect("status");
        assert_eq!((st.total, st.pending, st.success), (50, 50, 0));
    });
}

fn fetch_pending_respects_cursor_range_and_partition(b: Backend) {
    on_backend(b, |open| {
        let mut s = open();
        s.init_schema().expect("init");
        s.load_source(&docs(30, 2)).expect("load");
        let all = s
            .fetch_pending(&Selection::default(), i64::MIN, 100)
            .expect("fetch");
        let ids: Vec<i64> = all.iter().map(|d| d.app_id).collect();
        assert_eq!(ids, (1..=30).collect::<Vec<_>>(), "{}", s.backend());
        let from = s
            .fetch_pending(&Selection::default(), 25, 3)
            .expect("fetch");
        assert_eq!(
            from.iter().map(|d| d.app_id).collect::<Vec<_>>(),
            vec![25, 26, 27]
        );
        let part = Selection {
            range: Some((5, 20)),
            partition: Some((3, 1)),
        };
        let got: Vec<i64> = s
            .fetch_pending(&part, i64::MIN, 100)
            .expect("fetch")
            .iter()
            .map(|d| d.app_id)
            .collect();
        assert_eq!(got, vec![7, 10, 13, 16, 19]);
        assert_eq!(s.pending_count(&part).expect("count"), 5);
        assert_eq!(s.pending_at(&part, 2).expect("at"), Some(13));
        assert_eq!(s.pending_at(&part, 5).expect("at"), None);
    });
}

fn atomic_write_commits_rows_and_log_together_and_resumes(b: Backend) {
    on_backend(b, |open| {
        let c = contract();
        let mut s = open();
        s.init_schema().expect("init");
        let d = docs(60, 3);
        s.load_source(&d).expect("load");
        let w = work(&c, &d[..40], None);
        let expected_failed = w.iter().filter(|a| a.outcome.is_err()).count();
        let r = write_atomic(s.as_mut(), &w, &ctx("sess-a", false)).expect("write");
        assert_eq!(r.failed.len(), expected_failed);
        assert_eq!(r.succeeded.len() + r.failed.len(), 40);
        assert!(
            !r.slow_path,
            "clean batch takes the fast path on {}",
            s.backend()
        );
        // Resume: only the 20 unlogged applications are pending.
        let pending = s
            .fetch_pending(&Selection::default(), i64::MIN, 1000)
            .expect("fetch");
        assert_eq!(
            pending.iter().map(|p| p.app_id).collect::<Vec<_>>(),
            (41..=60).collect::<Vec<_>>()
        );
        let logged = s.logged(&[1, 2, 41]).expect("logged");
        assert_eq!(logged.len(), 2);
        assert!(logged.iter().all(|(_, sess)| sess == "sess-a"));
    });
}

fn a_collision_rolls_back_only_the_loser(b: Backend) {
    on_backend(b, |open| {
        let c = contract();
        let mut s = open();
        s.init_schema().expect("init");
        let d = docs(20, 4);
        s.load_source(&d).expect("load");
        write_atomic(s.as_mut(), &work(&c, &d[..5], None), &ctx("winner", false)).expect("first");
        // A second instance that fetched the same applications before the first committed.
        let r = write_atomic(s.as_mut(), &work(&c, &d[..10], None), &ctx("loser", false))
            .expect("second");
        assert!(r.slow_path);
        assert_eq!(r.collisions, vec![1, 2, 3, 4, 5], "{}", s.backend());
        assert_eq!(r.succeeded.len() + r.failed.len(), 5);
        let logged = s.logged(&[1, 6]).expect("logged");
        assert_eq!(
            logged,
            vec![(1, "winner".to_owned()), (6, "loser".to_owned())]
        );
        let st = s.status(store::now_ms()).expect("status");
        assert_eq!(st.success + st.failed, 10);
    });
}

fn coerced_counts_are_logged_and_summed_by_status(b: Backend) {
    on_backend(b, |open| {
        let c = contract();
        let mut s = open();
        s.init_schema().expect("init");
        let d = docs(30, 6);
        s.load_source(&d).expect("load");
        // The project's own contract never coerces a value; these counts stand for what a real contract's mapping
        // reports (`MappedApp::coerced`), so every write path is seen storing its own figure per application.
        let figure = |app_id: i64| (app_id % 4) as u32;
        let mark = |mut w: Vec<AppWork>| {
            for a in &mut w {
                if let Ok(m) = &mut a.outcome {
                    m.coerced = figure(a.app_id);
                }
            }
            w
        };
        let mut succeeded = Vec::new();
        let fast = write_atomic(
            s.as_mut(),
            &mark(work(&c, &d[..10], None)),
            &ctx("a", false),
        )
        .expect("fast path");
        assert!(!fast.slow_path);
        let split = write_split(
            s.as_mut(),
            &mark(work(&c, &d[10..20], None)),
            &ctx("b", false),
        )
        .expect("split");
        // 1..5 again (collisions) force the per-application savepoint path for 21..25.
        let again: Vec<(i64, String)> = d[..5].iter().chain(&d[20..25]).cloned().collect();
        let slow = write_atomic(s.as_mut(), &mark(work(&c, &again, None)), &ctx("c", false))
            .expect("slow path");
        assert!(slow.slow_path, "{}", s.backend());
        for r in [&fast, &split, &slow] {
            succeeded.extend(r.succeeded.iter().copied());
            // The committed event's figures: the mapped count for a success, 0 for a failure.
            for (id, n) in r.committed.iter().zip(&r.committed_coerced) {
                let want = if r.succeeded.contains(id) {
                    figure(*id)
                } else {
                    0
                };
                assert_eq!(*n, want, "app {id} on {}", s.backend());
            }
        }
        let values: u64 = succeeded.iter().map(|&id| u64::from(figure(id))).sum();
        let apps = succeeded.iter().filter(|&&id| figure(id) > 0).count() as u64;
        assert!(values > 0 && apps > 0);
        let st = s.status(store::now_ms()).expect("status");
        assert_eq!(
            (st.coerced_values, st.coerced_apps),
            (values, apps),
            "{}",
            s.backend()
        );
    });
}

fn queue_claims_are_exclusive_renewable_and_fenced(b: Backend) {
    on_backend(b, |open| {
        let c = contract();
        // One connection per owner, as separate instances would have.
        let (mut s, mut sb, mut sc, mut sd) = (open(), open(), open(), open());
        s.init_schema().expect("init");
        let d = docs(30, 5);
        s.load_source(&d).expect("load");
        let sel = Selection::default();
        let now = store::now_ms();
        let a = s.claim(&sel, "A", now, 1_000, 10).expect("claim A");
        let b = sb.claim(&sel, "B", now, 1_000, 10).expect("claim B");
        let ids_a: Vec<i64> = a.iter().map(|d| d.app_id).collect();
        let ids_b: Vec<i64> = b.iter().map(|d| d.app_id).collect();
        assert_eq!(ids_a, (1..=10).collect::<Vec<_>>(), "{}", s.backend());
        assert_eq!(ids_b, (11..=20).collect::<Vec<_>>());
        assert!(a.iter().all(|d| d.fence == Some(1)));
        assert_eq!(s.live_claims(&sel, now).expect("live"), 20);
        assert_eq!(s.renew("A", &ids_a, now, now + 5_000).expect("renew"), 10);
        assert_eq!(
            s.renew("B", &ids_a, now, now + 5_000)
                .expect("renew other's"),
            0
        );
        // B's lease expires; a new instance C takes B's work over with a higher fence.
        let later = now + 2_000;
        let c_claim = sc.claim(&sel, "C", later, 1_000, 10).expect("claim C");
        let ids_c: Vec<i64> = c_claim.iter().map(|d| d.app_id).collect();
        assert_eq!(
            ids_c,
            (11..=20).collect::<Vec<_>>(),
            "expired leases are taken over first on {}",
            s.backend()
        );
        assert!(c_claim.iter().all(|d| d.fence == Some(2)));
        // B wakes up and tries to commit: fenced, nothing committed.
        let wb: Vec<AppWork> = work(&c, &d[10..20], Some(1));
        let rb = write_atomic(sb.as_mut(), &wb, &ctx("B", true)).expect("stale write");
        assert_eq!(rb.lease_lost, ids_b);
        assert!(rb.committed.is_empty());
        assert!(s.logged(&ids_b).expect("logged").is_empty());
        // C commits them.
        let rc = write_atomic(sc.as_mut(), &work(&c, &d[10..20], Some(2)), &ctx("C", true))
            .expect("write C");
        assert_eq!(rc.committed.len(), 10);
        assert!(rc.lease_lost.is_empty());
        // Completed claims never expire, so nobody takes them over again.
        let far = now + 1_000_000;
        let next = sd.claim(&sel, "D", far, 1_000, 100).expect("claim D");
        let ids_d: Vec<i64> = next.iter().map(|d| d.app_id).collect();
        assert!(ids_d.iter().all(|id| !ids_c.contains(id)), "{ids_d:?}");
        assert_eq!(ids_d.len(), 20, "A's expired claims and the unclaimed rest");
    });
}

/// The lease clock is the database's, close to the host's; an expired lease is not renewed (nor released), and its
/// owner's own next claim takes it again with a new fence, so the old batch's fenced completion commits nothing.
fn an_expired_lease_is_not_renewed_and_its_own_reclaim_is_fenced(b: Backend) {
    on_backend(b, |open| {
        let c = contract();
        let mut s = open();
        s.init_schema().expect("init");
        let d = docs(10, 7);
        s.load_source(&d).expect("load");
        let sel = Selection::default();
        let db_now = s.clock_ms().expect("clock");
        assert!(
            (db_now - store::now_ms()).abs() < 60_000,
            "{}: the database clock is {} ms off the host's",
            s.backend(),
            db_now - store::now_ms()
        );
        let t0 = db_now;
        let first = s.claim(&sel, "A", t0, 1_000, 10).expect("claim");
        let ids: Vec<i64> = first.iter().map(|d| d.app_id).collect();
        assert_eq!(ids.len(), 10);
        // Expired at t0 + 1000: neither extended nor released any more.
        assert_eq!(
            s.renew("A", &ids, t0 + 1_000, t0 + 9_000).expect("renew"),
            0
        );
        assert_eq!(
            s.renew("A", &ids, t0 + 2_000, t0 + 2_000).expect("release"),
            0
        );
        let again = s.claim(&sel, "A", t0 + 2_000, 1_000, 10).expect("re-claim");
        assert_eq!(again.iter().map(|d| d.app_id).collect::<Vec<_>>(), ids);
        assert!(again.iter().all(|d| d.fence == Some(2)), "{}", s.backend());
        // The old batch (fence 1) commits nothing; the re-claimed one (fence 2) commits.
        let old = write_atomic(s.as_mut(), &work(&c, &d, Some(1)), &ctx("A", true)).expect("old");
        assert_eq!(old.lease_lost, ids);
        assert!(old.committed.is_empty());
        let new = write_atomic(s.as_mut(), &work(&c, &d, Some(2)), &ctx("A", true)).expect("new");
        assert!(new.lease_lost.is_empty());
        assert_eq!(new.committed.len(), 10, "{new:?}");
    });
}

fn split_mode_reproduces_the_replaced_systems_failure(b: Backend) {
    on_backend(b, |open| {
        let c = contract();
        let mut s = open();
        s.init_schema().expect("init");
        let d = docs(5, 6);
        s.load_source(&d).expect("load");
        let valid: Vec<(i64, String)> = d
            .iter()
            .filter(|(id, x)| map_document(&c, *id, x).is_ok())
            .take(1)
            .cloned()
            .collect();
        let w = work(&c, &valid, None);
        // Data committed, then the process "dies" before the log row: emulate by writing data only.
        s.begin().expect("begin");
        for (t, rows) in w[0]
            .outcome
            .as_ref()
            .expect("valid")
            .rows
            .iter()
            .enumerate()
        {
            let refs: Vec<&[processor::value::Value]> = rows.iter().map(Vec::as_slice).collect();
            if !refs.is_empty() {
                s.insert_rows(t, &refs).expect("rows");
            }
        }
        s.commit().expect("commit");
        // The retry in split mode hits its own duplicate key and logs the application failed.
        let r = write_split(s.as_mut(), &w, &ctx("retry", false)).expect("split retry");
        assert_eq!(r.failed.len(), 1, "{}", s.backend());
        assert!(r.failed[0].1.starts_with("write: "), "{}", r.failed[0].1);
    });
}

/// A conformance test by name, run once per backend.
type Named = (&'static str, fn(Backend));

const TESTS: &[Named] = &[
    (
        "init_is_idempotent_and_load_skips_existing",
        init_is_idempotent_and_load_skips_existing,
    ),
    (
        "fetch_pending_respects_cursor_range_and_partition",
        fetch_pending_respects_cursor_range_and_partition,
    ),
    (
        "atomic_write_commits_rows_and_log_together_and_resumes",
        atomic_write_commits_rows_and_log_together_and_resumes,
    ),
    (
        "a_collision_rolls_back_only_the_loser",
        a_collision_rolls_back_only_the_loser,
    ),
    (
        "coerced_counts_are_logged_and_summed_by_status",
        coerced_counts_are_logged_and_summed_by_status,
    ),
    (
        "queue_claims_are_exclusive_renewable_and_fenced",
        queue_claims_are_exclusive_renewable_and_fenced,
    ),
    (
        "split_mode_reproduces_the_replaced_systems_failure",
        split_mode_reproduces_the_replaced_systems_failure,
    ),
    (
        "an_expired_lease_is_not_renewed_and_its_own_reclaim_is_fenced",
        an_expired_lease_is_not_renewed_and_its_own_reclaim_is_fenced,
    ),
];
