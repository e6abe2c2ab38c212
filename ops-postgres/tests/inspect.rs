//! The PostgreSQL inspection reports, sessions and session ending against one real
//! throwaway server (started with `shared_preload_libraries = pg_stat_statements`
//! and room for prepared transactions):
//! the shared maintenance conformance suite; heap bloat of a half-deleted table
//! against pgstattuple's exact figure, with the extension (pgstattuple_approx) and
//! without (statistics), and a deduplicated B-tree flagged rather than estimated;
//! sizes, unused, duplicate and invalid indexes, vacuum state; a long query and an
//! idle transaction in the activity report; a chain of three blocked sessions as one
//! tree, ended at its root; a prepared transaction as the root of a tree, which no
//! one ends; what a `pg_monitor` role may see and a role without it may not; a
//! signal that fails for one session (its role dropped) recorded while the others
//! are ended; pg_stat_statements present and absent.
//!
//! The scenarios run one after another on one server (the session reports see the
//! whole server), each on a database of its own.

use std::time::{Duration, Instant};

use ops_core::ErrorKind;
use ops_core::maintain::{
    Bloat, Confidence, EndMode, EndOptions, Ended, Inspect, InspectOptions, Inspection,
    Maintenance, ObjectKind, SessionFilter, SessionKind,
};
use ops_postgres::PostgresEngine;
use ops_postgres::ephemeral::{EphemeralOptions, EphemeralPostgres};
use tokio_postgres::Client;

mod common;
use common::{end_sessions_named, session, session_with_id, timed, wait_for_lock_wait};

/// The `application_name` of the sessions the tests open to create load.
const LOAD: &str = "inspect-test";

/// An engine on database `db` as `user` with password `pw`.
fn engine_as(server: &EphemeralPostgres, db: &str, user: &str, pw: &str) -> PostgresEngine {
    PostgresEngine::new(&format!(
        "postgres://{user}:{pw}@127.0.0.1:{}/{db}?sslmode=disable",
        server.port()
    ))
    .expect("engine")
}

async fn report(db: &dyn Maintenance, what: Inspect, options: &InspectOptions) -> Inspection {
    db.inspect(what, options)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The `$report` report of `$db`, taken out of its [`Inspection`] variant.
macro_rules! report_of {
    ($db:expr, $report:ident, $options:expr) => {
        match report($db, Inspect::$report, $options).await {
            Inspection::$report(r) => r,
            other => panic!("not a {} report: {other:?}", stringify!($report)),
        }
    };
}

async fn bloat_of(db: &dyn Maintenance) -> Vec<Bloat> {
    let b = report_of!(db, Bloat, &InspectOptions::default());
    for o in &b.objects {
        eprintln!(
            "  {:?} {}: size {} wasted {:?} ({:?} %) {} {:?} {}",
            o.kind,
            o.name,
            o.size_bytes,
            o.wasted_bytes,
            o.wasted_percent.map(|p| (p * 10.0).round() / 10.0),
            o.method,
            o.confidence,
            o.note.as_deref().unwrap_or("")
        );
    }
    eprintln!("  notes: {:?}", b.notes);
    b.objects
}

fn find<'a>(objects: &'a [Bloat], name: &str) -> &'a Bloat {
    objects
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("no {name} in {objects:?}"))
}

/// Waits until `ok` holds for a report of `what`, for at most 5 s.
async fn wait_report(
    db: &dyn Maintenance,
    what: Inspect,
    options: &InspectOptions,
    ok: impl Fn(&Inspection) -> bool,
) -> Inspection {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = report(db, what, options).await;
        if ok(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: still {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const PW: &str = "inspect-test-pw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_sessions_and_ending_them_on_a_real_server() {
    let started = Instant::now();
    let server = EphemeralPostgres::start_with(
        EphemeralOptions::default()
            .with_setting("shared_preload_libraries", "pg_stat_statements")
            // For a prepared transaction that blocks a session.
            .with_setting("max_prepared_transactions", "2"),
    )
    .await
    .expect("server starts");
    eprintln!("server start: {:.2} s", started.elapsed().as_secs_f64());
    let (admin, _) = session(&server, "postgres", None, "inspect-admin").await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE app LOGIN PASSWORD '{PW}';
             CREATE ROLE mon LOGIN PASSWORD '{PW}' IN ROLE pg_monitor;
             CREATE ROLE nomon LOGIN PASSWORD '{PW}';"
        ))
        .await
        .expect("roles");

    timed("conformance", async {
        server.create_database("conf").await.expect("conf");
        let engine = server.engine_for("conf").expect("engine");
        ops_core::testkit::maintain::conformance(&engine).await;
        // The same, as a role with pg_monitor only.
        let mon = engine_as(&server, "conf", "mon", PW);
        ops_core::testkit::maintain::conformance(&mon).await;

        // Several statements in one string cannot leave the read-only transaction.
        let t = Duration::from_secs(10);
        let escape = engine
            .query_rows("SELECT 1; COMMIT; CREATE TABLE escaped (a int)", t, 10)
            .await;
        assert!(escape.is_err(), "{escape:?}");
        let created = engine
            .query_rows("SELECT 1 FROM pg_class WHERE relname = 'escaped'", t, 10)
            .await
            .expect("look");
        assert_eq!(created.count, 0);
        // Every row is counted, a few kept, NULLs are None, values are text.
        let many = engine
            .query_rows(
                "SELECT g, CASE WHEN g % 2 = 0 THEN 'even' END AS e, now()::date AS d
                   FROM generate_series(1, 300000) g",
                t,
                3,
            )
            .await
            .expect("many");
        assert_eq!(many.count, 300_000);
        assert_eq!(many.columns, vec!["g", "e", "d"]);
        assert_eq!(many.sample.len(), 3);
        assert_eq!(
            many.sample[1][..2],
            [Some("2".to_owned()), Some("even".to_owned())]
        );
        assert_eq!(many.sample[0][1], None);
        // The statement timeout holds, and says so.
        let slow = engine
            .query_rows("SELECT pg_sleep(5)", Duration::from_millis(200), 1)
            .await
            .expect_err("times out");
        assert_eq!(slow.kind(), ErrorKind::Interrupted, "{slow}");
        assert!(slow.to_string().contains("statement timeout"), "{slow}");
    })
    .await;

    timed("bloat, sizes, indexes, vacuum", bloat_and_friends(&server)).await;
    timed("activity", activity(&server, &admin)).await;
    timed("locks and ending the root blocker", locks(&server, &admin)).await;
    timed(
        "a prepared transaction in the lock tree",
        prepared_transaction(&server, &admin),
    )
    .await;
    timed("privileges", privileges(&server, &admin)).await;
    timed(
        "a signal that fails mid-way",
        a_failed_signal_is_recorded(&server, &admin),
    )
    .await;
    timed("pg_stat_statements", statements(&server)).await;
    eprintln!("total: {:.2} s", started.elapsed().as_secs_f64());
}

async fn bloat_and_friends(server: &EphemeralPostgres) {
    server.create_database("bloat").await.expect("bloat db");
    let t = Instant::now();
    // autovacuum stays off for these tables: the test decides when they are vacuumed
    // and analyzed.
    // Each its own statement: VACUUM cannot run in the implicit transaction of a
    // multi-statement string.
    for sql in [
        "CREATE EXTENSION pgstattuple",
        "CREATE TABLE t (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = off)",
        "INSERT INTO t SELECT g, md5(g::text)::char(20) FROM generate_series(1, 2000000) g",
        "DELETE FROM t WHERE id % 2 = 0",
        "VACUUM t",
        "ANALYZE t",
        "CREATE TABLE d (k int, v int) WITH (autovacuum_enabled = off)",
        "INSERT INTO d SELECT g % 10, g FROM generate_series(1, 200000) g",
        "CREATE INDEX d_k ON d (k)",
        "CREATE INDEX d_k_again ON d (k)",
        "CREATE INDEX d_v ON d (v)",
        "ANALYZE d",
        "CREATE TABLE never (a int, b text) WITH (autovacuum_enabled = off)",
        "INSERT INTO never SELECT g, 'x' FROM generate_series(1, 1000) g",
    ] {
        server
            .execute("bloat", sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // A unique index that cannot be built leaves an invalid one behind.
    let failed = server
        .execute(
            "bloat",
            "CREATE UNIQUE INDEX CONCURRENTLY d_k_unique ON d (k)",
        )
        .await;
    assert!(failed.is_err(), "the unique index must fail");
    eprintln!("data: {:.2} s", t.elapsed().as_secs_f64());

    let truth_row = {
        let c = session(server, "bloat", None, "inspect-truth").await.0;
        c.query_one(
            "SELECT (dead_tuple_percent + free_percent)::float8, table_len::int8
               FROM pgstattuple('t')",
            &[],
        )
        .await
        .expect("pgstattuple")
    };
    let truth: f64 = truth_row.get(0);
    let engine = server.engine_for("bloat").expect("engine");

    eprintln!("with pgstattuple:");
    let with = bloat_of(&engine).await;
    let approx = find(&with, "t");
    assert_eq!(approx.method, "pgstattuple_approx");
    assert_eq!(approx.confidence, Confidence::Approximate);
    let approx_pct = approx.wasted_percent.expect("a figure");
    let pk = find(&with, "t_pkey");
    assert_eq!(
        (pk.method.as_str(), pk.confidence),
        ("pgstatindex", Confidence::Exact)
    );
    assert!(pk.wasted_bytes.is_some());
    let dedup = find(&with, "d_k");
    assert_eq!(dedup.confidence, Confidence::Exact, "{dedup:?}");

    server
        .execute("bloat", "DROP EXTENSION pgstattuple")
        .await
        .expect("drop pgstattuple");
    eprintln!("without pgstattuple:");
    let without = bloat_of(&engine).await;
    let estimate = find(&without, "t");
    assert_eq!(estimate.method, "statistics");
    assert_eq!(estimate.confidence, Confidence::Estimate);
    let estimate_pct = estimate.wasted_percent.expect("a figure");
    eprintln!(
        "HEAP BLOAT of t (2,000,000 rows, every other deleted, VACUUM, ANALYZE): \
         pgstattuple exact {truth:.2} %, pgstattuple_approx {approx_pct:.2} %, \
         statistics {estimate_pct:.2} %"
    );
    assert!((approx_pct - truth).abs() <= 5.0, "{approx_pct} vs {truth}");
    assert!(
        (estimate_pct - truth).abs() <= 5.0,
        "{estimate_pct} vs {truth}"
    );
    // A deduplicated B-tree is flagged, not given a number.
    let dedup = find(&without, "d_k");
    assert_eq!(dedup.kind, ObjectKind::Index);
    assert_eq!(
        (dedup.wasted_bytes, dedup.confidence),
        (None, Confidence::Withheld)
    );
    assert!(
        dedup
            .note
            .as_deref()
            .is_some_and(|n| n.contains("deduplicated B-tree") && n.contains("pgstattuple")),
        "{dedup:?}"
    );
    // A unique-valued key is estimated.
    let dv = find(&without, "d_v");
    assert_eq!(dv.confidence, Confidence::Estimate, "{dv:?}");
    let pk = find(&without, "t_pkey");
    assert_eq!(pk.confidence, Confidence::Estimate, "{pk:?}");
    // Never analyzed: withheld, saying what to do.
    let never = find(&without, "never");
    assert_eq!(
        (never.wasted_bytes, never.confidence),
        (None, Confidence::Withheld)
    );
    assert!(
        never
            .note
            .as_deref()
            .is_some_and(|n| n.contains("ANALYZE the table"))
    );
    // Stale statistics: withheld too.
    server
        .execute("bloat", "UPDATE d SET v = v + 1 WHERE k < 5")
        .await
        .expect("update");
    let stale = bloat_of(&engine).await;
    let d = find(&stale, "d");
    assert_eq!(d.confidence, Confidence::Withheld, "{d:?}");
    assert!(
        d.note.as_deref().is_some_and(|n| n.contains("stale")),
        "{d:?}"
    );

    // Only the tables asked for.
    let only = InspectOptions::default().with_tables(vec!["public.never".into()]);
    let sizes = report_of!(&engine, Sizes, &only);
    assert_eq!(sizes.tables.len(), 1);
    assert_eq!(
        (sizes.tables[0].rows, sizes.tables[0].rows_method.as_str()),
        (None, "never analyzed")
    );
    let sizes = report_of!(&engine, Sizes, &InspectOptions::default());
    let t = &sizes.tables[0];
    assert_eq!(t.name, "t", "largest first: {sizes:?}");
    assert!(sizes.database_bytes > t.total_bytes);
    assert!(t.total_bytes >= t.heap_bytes + t.index_bytes + t.toast_bytes.unwrap_or(0));
    assert!(
        t.heap_bytes > 100 * 1024 * 1024 && t.index_bytes > 0,
        "{t:?}"
    );
    let rows = t.rows.expect("analyzed") as f64;
    assert!((rows - 1_000_000.0).abs() < 20_000.0, "{rows}");
    assert_eq!(t.rows_method, "pg_class.reltuples");
    let missing = engine
        .inspect(
            Inspect::Sizes,
            &InspectOptions::default().with_tables(vec!["nope".into()]),
        )
        .await
        .expect_err("no such table");
    assert_eq!(missing.kind(), ErrorKind::NotFound, "{missing}");

    let ix = report_of!(&engine, Indexes, &InspectOptions::default());
    let names = |l: &[ops_core::maintain::IndexIssue]| {
        l.iter().map(|i| i.index.clone()).collect::<Vec<_>>()
    };
    eprintln!("indexes: {ix:?}");
    assert!(names(&ix.unused).contains(&"d_k".to_owned()), "{ix:?}");
    assert!(!names(&ix.unused).contains(&"t_pkey".to_owned()), "{ix:?}");
    assert_eq!(names(&ix.duplicate), vec!["d_k_again".to_owned()]);
    assert_eq!(ix.duplicate[0].detail, "duplicate of d_k");
    assert_eq!(names(&ix.invalid), vec!["d_k_unique".to_owned()]);
    assert!(ix.invalid[0].detail.contains("CREATE INDEX CONCURRENTLY"));
    assert!(ix.stats_since.is_some() || !ix.notes.is_empty());

    let v = report_of!(&engine, Vacuum, &InspectOptions::default());
    eprintln!("vacuum: {v:?}");
    assert!(v.database_xid_age.is_some() && v.freeze_max_age == Some(200_000_000));
    let d = v.tables.iter().find(|t| t.name == "d").expect("d");
    assert_eq!(d.dead_rows, 100_000, "{d:?}");
    assert!(d.autovacuum_due, "{d:?}");
    assert_eq!(d.autovacuum_at_dead_rows, Some(50 + 40_000));
    let t = v.tables.iter().find(|t| t.name == "t").expect("t");
    assert!(t.last_vacuum.is_some() && t.last_analyze.is_some() && !t.autovacuum_due);
    assert!(t.xid_age.is_some());
    assert_eq!(v.tables[0].name, "d", "most dead rows first");
    let one = InspectOptions::default().with_limit(1);
    let v = report_of!(&engine, Vacuum, &one);
    assert_eq!(v.tables.len(), 1);
}

async fn activity(server: &EphemeralPostgres, admin: &Client) {
    server.create_database("act").await.expect("act db");
    let engine = server.engine_for("act").expect("engine");
    let (sleeper, sleeper_pid) = session(server, "act", None, LOAD).await;
    let sleeping = tokio::spawn(async move {
        let done = sleeper
            .simple_query("SELECT pg_sleep(30)")
            .await
            .map(|_| ());
        // The session must outlive its cancelled query.
        (sleeper, done)
    });
    let (idle, idle_pid) = session(server, "act", None, LOAD).await;
    idle.batch_execute("BEGIN; SELECT 1").await.expect("begin");
    let options = InspectOptions::default().with_longer_than(Duration::from_secs(1));
    let r = wait_report(&engine, Inspect::Activity, &options, |r| {
        matches!(r, Inspection::Activity(a)
            if session_with_id(&a.long_running, sleeper_pid).is_some())
    })
    .await;
    let Inspection::Activity(a) = r else {
        unreachable!()
    };
    let long = session_with_id(&a.long_running, sleeper_pid).expect("sleeper");
    assert!(long.query_seconds.is_some_and(|q| q >= 1.0), "{long:?}");
    assert_eq!(long.query.as_deref(), Some("SELECT pg_sleep(30)"));
    assert_eq!(long.application.as_deref(), Some(LOAD));
    assert!(
        session_with_id(&a.idle_in_transaction, idle_pid).is_some(),
        "{:?}",
        a.idle_in_transaction
    );
    assert!(session_with_id(&a.long_running, idle_pid).is_none());
    assert!(a.by_state.get("active").is_some_and(|n| *n >= 1), "{a:?}");
    assert!(
        a.by_state
            .get("idle in transaction")
            .is_some_and(|n| *n >= 1)
    );
    assert!(a.by_application.get(LOAD).is_some_and(|n| *n >= 2));
    assert_eq!(
        a.sessions
            .iter()
            .filter(|s| s.kind == SessionKind::Own)
            .count(),
        1
    );
    assert!(
        a.sessions.iter().any(|s| s.kind == SessionKind::System),
        "{a:?}"
    );
    // The session filter of the same.
    let filter = SessionFilter {
        state: Some("idle in transaction".into()),
        ..SessionFilter::default()
    };
    let found = engine.sessions(&filter).await.expect("sessions");
    assert_eq!(
        found.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![idle_pid]
    );
    // Cancelling the long query ends the query, not the session.
    let running = SessionFilter {
        application: Some(LOAD.into()),
        state: Some("active".into()),
        ..SessionFilter::default()
    };
    let cancelled = engine
        .end_sessions(&running, &EndOptions::new(EndMode::Cancel))
        .await
        .expect("cancel");
    assert_eq!(cancelled.sessions.len(), 1, "{cancelled:?}");
    assert_eq!(
        (
            cancelled.sessions[0].session.id,
            cancelled.sessions[0].outcome
        ),
        (sleeper_pid, Ended::Cancelled)
    );
    let (_sleeper, done) = tokio::time::timeout(Duration::from_secs(5), sleeping)
        .await
        .expect("the query ends")
        .expect("sleeper task");
    let err = done.expect_err("cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err:?}"
    );
    let after = engine
        .sessions(&SessionFilter::default())
        .await
        .expect("sessions");
    assert!(
        session_with_id(&after, sleeper_pid).is_some(),
        "the session stays"
    );
    drop(idle);
    end_sessions_named(admin, LOAD).await;
}

async fn locks(server: &EphemeralPostgres, admin: &Client) {
    server.create_database("locks").await.expect("locks db");
    server
        .execute(
            "locks",
            "CREATE TABLE a (id int PRIMARY KEY, n int); INSERT INTO a VALUES (1, 0);
             CREATE TABLE b (id int PRIMARY KEY, n int); INSERT INTO b VALUES (1, 0);
             GRANT ALL ON a, b TO app;",
        )
        .await
        .expect("lock tables");
    let engine = server.engine_for("locks").expect("engine");
    let app = Some(("app", PW));
    let (holder, a_pid) = session(server, "locks", app, LOAD).await;
    holder
        .batch_execute("BEGIN; UPDATE a SET n = n + 1 WHERE id = 1")
        .await
        .expect("A holds a row of a");
    let (b, b_pid) = session(server, "locks", app, LOAD).await;
    let b_task = tokio::spawn(async move {
        b.batch_execute(
            "BEGIN; UPDATE b SET n = n + 1 WHERE id = 1; UPDATE a SET n = n + 1 WHERE id = 1;
             COMMIT",
        )
        .await
    });
    let (c, c_pid) = session(server, "locks", app, LOAD).await;
    // C starts once B holds its row of b.
    wait_for_lock_wait(admin, b_pid).await;
    let c_task =
        tokio::spawn(async move { c.batch_execute("UPDATE b SET n = n + 1 WHERE id = 1").await });

    let r = wait_report(
        &engine,
        Inspect::Locks,
        &InspectOptions::default(),
        |r| matches!(r, Inspection::Locks(l) if l.trees.first().is_some_and(|t| t.count() == 3)),
    )
    .await;
    let Inspection::Locks(l) = r else {
        unreachable!()
    };
    eprintln!(
        "lock tree: {} -> {:?}",
        l.trees[0].session.id,
        l.trees[0]
            .blocks
            .iter()
            .map(|n| n.session.id)
            .collect::<Vec<_>>()
    );
    assert_eq!(l.trees.len(), 1, "{l:?}");
    let root = &l.trees[0];
    assert_eq!(root.session.id, a_pid);
    assert_eq!(root.blocks.len(), 1);
    assert_eq!(root.blocks[0].session.id, b_pid);
    assert_eq!(root.blocks[0].session.blocked_by, vec![a_pid]);
    assert_eq!(root.blocks[0].blocks[0].session.id, c_pid);
    assert!(l.cycles.is_empty());

    let roots = SessionFilter {
        root_blockers: true,
        ..SessionFilter::default()
    };
    let terminate = EndOptions::new(EndMode::Terminate).with_grace(Duration::from_secs(1));
    let dry = engine
        .end_sessions(&roots, &terminate.with_dry_run(true))
        .await
        .expect("dry run");
    assert_eq!(dry.sessions.len(), 1, "{dry:?}");
    assert_eq!(
        (dry.sessions[0].session.id, dry.sessions[0].outcome),
        (a_pid, Ended::WouldTerminate)
    );
    let still = engine
        .sessions(&SessionFilter::default())
        .await
        .expect("sessions");
    for pid in [a_pid, b_pid, c_pid] {
        assert!(
            session_with_id(&still, pid).is_some(),
            "a dry run ended {pid}"
        );
    }
    assert!(!b_task.is_finished() && !c_task.is_finished());

    let t = Instant::now();
    let done = engine.end_sessions(&roots, &terminate).await.expect("end");
    eprintln!(
        "ended the root blocker in {:.2} s: {done:?}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(done.sessions.len(), 1, "{done:?}");
    assert_eq!(
        (done.sessions[0].session.id, done.sessions[0].outcome),
        (a_pid, Ended::Terminated)
    );
    // The chain drains: B gets its row, commits, and C gets its own.
    let b_done = tokio::time::timeout(Duration::from_secs(5), b_task)
        .await
        .expect("B finishes")
        .expect("B task");
    b_done.expect("B commits");
    let c_done = tokio::time::timeout(Duration::from_secs(5), c_task)
        .await
        .expect("C finishes")
        .expect("C task");
    c_done.expect("C commits");
    assert!(holder.is_closed() || holder.simple_query("SELECT 1").await.is_err());
    let left = engine
        .sessions(&SessionFilter::default())
        .await
        .expect("sessions");
    assert!(session_with_id(&left, a_pid).is_none());
    let n: i32 = admin_query(server, "locks", "SELECT n FROM a").await;
    assert_eq!(n, 1, "only B's update of a is there: A's was rolled back");
    end_sessions_named(admin, LOAD).await;
}

/// A prepared transaction holds a row another session waits for: PostgreSQL names
/// the blocker pid 0, since no session stands behind it. The lock tree shows it as
/// the root (not as a cycle through a session that does not exist), and ending the
/// root blockers leaves it alone, naming what ends it.
async fn prepared_transaction(server: &EphemeralPostgres, admin: &Client) {
    server.create_database("prep").await.expect("prep db");
    server
        .execute(
            "prep",
            "CREATE TABLE pt (id int PRIMARY KEY, n int); INSERT INTO pt VALUES (1, 0);",
        )
        .await
        .expect("table");
    let engine = server.engine_for("prep").expect("engine");
    let (preparer, _) = session(server, "prep", None, LOAD).await;
    preparer
        .batch_execute(
            "BEGIN; UPDATE pt SET n = n + 1 WHERE id = 1; PREPARE TRANSACTION 'dbops-test-px'",
        )
        .await
        .expect("prepared");
    let (waiter, waiter_pid) = session(server, "prep", None, LOAD).await;
    let waiting = tokio::spawn(async move {
        waiter
            .batch_execute("UPDATE pt SET n = n + 1 WHERE id = 1")
            .await
    });
    wait_for_lock_wait(admin, waiter_pid).await;

    let l = report_of!(&engine, Locks, &InspectOptions::default());
    eprintln!("lock report with a prepared transaction: {l:?}");
    assert!(l.cycles.is_empty(), "{l:?}");
    assert_eq!(l.trees.len(), 1, "{l:?}");
    let root = &l.trees[0];
    assert_eq!(
        (
            root.session.id,
            root.session.kind,
            root.session.state.as_str()
        ),
        (0, SessionKind::System, "prepared transaction")
    );
    assert!(
        root.session
            .query
            .as_deref()
            .is_some_and(|q| q.contains("'dbops-test-px'") && q.contains("ROLLBACK PREPARED")),
        "{root:?}"
    );
    assert_eq!(root.blocks.len(), 1);
    assert_eq!(root.blocks[0].session.id, waiter_pid);
    assert_eq!(root.blocks[0].session.blocked_by, vec![0]);

    let roots = SessionFilter {
        root_blockers: true,
        ..SessionFilter::default()
    };
    let ended = engine
        .end_sessions(&roots, &EndOptions::new(EndMode::Terminate))
        .await
        .expect("end the root blockers");
    assert_eq!(ended.sessions.len(), 1, "{ended:?}");
    assert_eq!(
        (ended.sessions[0].session.id, ended.sessions[0].outcome),
        (0, Ended::Refused)
    );
    assert!(!waiting.is_finished(), "the waiter was not touched");

    let (prep_admin, _) = session(server, "prep", None, "inspect-admin").await;
    prep_admin
        .batch_execute("ROLLBACK PREPARED 'dbops-test-px'")
        .await
        .expect("rollback prepared");
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter goes on")
        .expect("waiter task")
        .expect("its update");
    end_sessions_named(admin, LOAD).await;
}

/// One of the sessions to end belongs to a role dropped while it stayed connected:
/// no user to judge the right by, and signalling it fails. That session is left
/// (refused) and recorded; the others are still ended.
async fn a_failed_signal_is_recorded(server: &EphemeralPostgres, admin: &Client) {
    admin
        .batch_execute(&format!(
            "CREATE ROLE ender LOGIN PASSWORD '{PW}' IN ROLE pg_monitor, app;
             CREATE ROLE ghost LOGIN PASSWORD '{PW}';"
        ))
        .await
        .expect("roles");
    let app = "inspect-end-test";
    let (ghost, ghost_pid) = session(server, "priv", Some(("ghost", PW)), app).await;
    let (mine, mine_pid) = session(server, "priv", Some(("app", PW)), app).await;
    admin
        .batch_execute("DROP ROLE ghost")
        .await
        .expect("drop ghost");
    let ender = engine_as(server, "priv", "ender", PW);
    let filter = SessionFilter {
        application: Some(app.into()),
        ..SessionFilter::default()
    };
    let report = ender
        .end_sessions(&filter, &EndOptions::new(EndMode::Cancel))
        .await
        .expect("a report, not an error");
    eprintln!("{report:?}");
    let outcome = |pid: i64| {
        report
            .sessions
            .iter()
            .find(|s| s.session.id == pid)
            .map(|s| s.outcome)
    };
    assert_eq!(outcome(ghost_pid), Some(Ended::Refused), "{report:?}");
    assert_eq!(outcome(mine_pid), Some(Ended::Cancelled), "{report:?}");
    drop((ghost, mine));
    end_sessions_named(admin, app).await;
}

async fn admin_query(server: &EphemeralPostgres, db: &str, sql: &str) -> i32 {
    let (c, _) = session(server, db, None, "inspect-admin").await;
    c.query_one(sql, &[]).await.expect("query").get(0)
}

async fn privileges(server: &EphemeralPostgres, admin: &Client) {
    server.create_database("priv").await.expect("priv db");
    server
        .execute(
            "priv",
            "CREATE TABLE p (id int PRIMARY KEY, v text); INSERT INTO p SELECT g, 'v'
               FROM generate_series(1, 1000) g; ANALYZE p;",
        )
        .await
        .expect("priv table");
    let mon = engine_as(server, "priv", "mon", PW);
    for what in Inspect::ALL {
        let r = mon.inspect(what, &InspectOptions::default()).await;
        assert!(r.is_ok(), "{what} as a pg_monitor role: {r:?}");
    }
    // pg_stats shows mon nothing of a table it may not read: withheld, saying why.
    let objects = bloat_of(&mon).await;
    let p = find(&objects, "p");
    assert_eq!(p.confidence, Confidence::Withheld);
    assert!(
        p.note.as_deref().is_some_and(|n| n.contains("may SELECT")),
        "{p:?}"
    );

    // A session of another (non-superuser) user for mon to try to end.
    let (victim, victim_pid) = session(server, "priv", Some(("app", PW)), LOAD).await;
    victim
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("begin");
    let sessions = mon
        .sessions(&SessionFilter::default())
        .await
        .expect("sessions");
    let seen = session_with_id(&sessions, victim_pid).expect("victim seen");
    assert_eq!(seen.state, "idle in transaction", "{seen:?}");
    let filter = SessionFilter {
        user: Some("app".into()),
        ..SessionFilter::default()
    };
    let err = mon
        .end_sessions(&filter, &EndOptions::new(EndMode::Cancel))
        .await
        .expect_err("mon may not end app's sessions");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.to_string().contains("GRANT pg_signal_backend TO mon"),
        "{err}"
    );
    // A dry run needs no right to signal.
    let dry = mon
        .end_sessions(
            &filter,
            &EndOptions::new(EndMode::Cancel).with_dry_run(true),
        )
        .await
        .expect("dry run");
    assert_eq!(dry.sessions.len(), 1);
    assert_eq!(dry.sessions[0].outcome, Ended::WouldCancel);

    let nomon = engine_as(server, "priv", "nomon", PW);
    for what in [Inspect::Activity, Inspect::Locks, Inspect::Queries] {
        let err = nomon
            .inspect(what, &InspectOptions::default())
            .await
            .expect_err("no pg_monitor, no session report");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{what}: {err}");
        assert!(
            err.to_string().contains("GRANT pg_monitor TO nomon"),
            "{err}"
        );
    }
    let err = nomon
        .sessions(&SessionFilter::default())
        .await
        .expect_err("no pg_monitor, no sessions");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("pg_monitor"), "{err}");
    // Reports on its own database's tables need no grant.
    for what in [Inspect::Sizes, Inspect::Vacuum, Inspect::Indexes] {
        assert!(
            nomon
                .inspect(what, &InspectOptions::default())
                .await
                .is_ok()
        );
    }
    drop(victim);
    end_sessions_named(admin, LOAD).await;
}

async fn statements(server: &EphemeralPostgres) {
    // conf has no pg_stat_statements extension.
    let conf = server.engine_for("conf").expect("engine");
    let q = report_of!(&conf, Queries, &InspectOptions::default());
    assert!(!q.available && q.statements.is_empty(), "{q:?}");
    let message = q.message.expect("how to enable it");
    eprintln!("queries without the extension: {message}");
    assert!(message.contains("shared_preload_libraries"), "{message}");
    assert!(
        message.contains("CREATE EXTENSION pg_stat_statements"),
        "{message}"
    );

    server.create_database("stmts").await.expect("stmts db");
    server
        .execute(
            "stmts",
            "CREATE EXTENSION pg_stat_statements;
             CREATE TABLE s (id int); INSERT INTO s SELECT generate_series(1, 1000);",
        )
        .await
        .expect("stmts");
    let (c, _) = session(server, "stmts", None, "inspect-statements").await;
    for _ in 0..5 {
        c.query("SELECT count(*) FROM s WHERE id > $1", &[&10])
            .await
            .expect("query");
    }
    let engine = server.engine_for("stmts").expect("engine");
    let q = report_of!(&engine, Queries, &InspectOptions::default());
    assert!(q.available && q.message.is_none(), "{q:?}");
    let s = q
        .statements
        .iter()
        .find(|s| s.query.contains("FROM s WHERE id >"))
        .unwrap_or_else(|| panic!("{q:?}"));
    assert_eq!(s.calls, 5);
    assert!(s.total_ms >= s.mean_ms && s.rows == 5, "{s:?}");
    assert!(
        q.statements
            .windows(2)
            .all(|w| w[0].total_ms >= w[1].total_ms)
    );
}
