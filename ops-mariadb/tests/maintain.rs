//! MariaDB maintenance against one real throwaway server (performance_schema on, the
//! metadata_lock_info plugin installed), each scenario in a database of its own and
//! one after the other: sessions, locks and activity are server-wide, so scenarios
//! running at once would see each other's sessions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use ops_core::ErrorKind;
use ops_core::maintain::{
    Action, ArchiveSpec, EndMode, EndOptions, Ended, Inspect, InspectOptions, Inspection,
    LockSteps, MaintainOptions, Maintenance, SessionFilter, SessionKind, StepOutcome, StepProgress,
};
use ops_mariadb::MariaDbEngine;
use ops_mariadb::ephemeral::EphemeralMariaDb;
use tokio::task::JoinHandle;

const WATCHER_PASSWORD: &str = "W4tcher-Maint-Pw";

/// How long an archive batch waits for a lock (the archiver's setting).
const BATCH_LOCK_WAIT: Duration = Duration::from_secs(2);

fn engine(server: &EphemeralMariaDb, db: &str) -> MariaDbEngine {
    MariaDbEngine::new(&server.url_for(db)).unwrap()
}

fn user_engine(server: &EphemeralMariaDb, user: &str, password: &str, db: &str) -> MariaDbEngine {
    MariaDbEngine::new(&format!(
        "mariadb://{user}:{password}@127.0.0.1:{}/{db}?ssl-mode=disable",
        server.port()
    ))
    .unwrap()
}

/// A database of its own for one scenario, set up by `setup` (statements separated
/// by `;`, none when empty), and an engine on it.
async fn scenario(server: &EphemeralMariaDb, db: &str, setup: &str) -> MariaDbEngine {
    server.create_database(db).await.unwrap();
    if !setup.is_empty() {
        server.execute(db, setup).await.unwrap();
    }
    engine(server, db)
}

async fn root(server: &EphemeralMariaDb, db: &str) -> mysql_async::Conn {
    common::connect(server, db).await
}

/// A root connection and its id.
async fn root_with_id(server: &EphemeralMariaDb, db: &str) -> (mysql_async::Conn, i64) {
    let c = root(server, db).await;
    let id = i64::from(c.id());
    (c, id)
}

/// A connection that has read `table` in a transaction it keeps open: it holds the
/// table's metadata lock until it commits.
async fn reader_in_transaction(
    server: &EphemeralMariaDb,
    db: &str,
    table: &str,
) -> (mysql_async::Conn, i64) {
    let (mut c, id) = root_with_id(server, db).await;
    c.query_drop("START TRANSACTION").await.unwrap();
    c.query_drop(format!("SELECT COUNT(*) FROM {table}"))
        .await
        .unwrap();
    (c, id)
}

async fn user_conn(
    server: &EphemeralMariaDb,
    user: &str,
    password: &str,
    db: Option<&str>,
) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(server.port())
        .user(Some(user))
        .pass(Some(password))
        .db_name(db)
        .prefer_socket(false);
    mysql_async::Conn::new(opts).await.expect("connect")
}

/// The first column of the first row of `sql` in `db`, as a number.
async fn scalar(server: &EphemeralMariaDb, db: &str, sql: &str) -> u64 {
    let mut c = root(server, db).await;
    c.query_first::<u64, _>(sql).await.unwrap().unwrap()
}

fn table(name: &str) -> MaintainOptions {
    MaintainOptions::default().with_tables(vec![name.to_owned()])
}

fn message(step: &ops_core::maintain::MaintainStep) -> &str {
    step.message.as_deref().unwrap_or_default()
}

/// Polls `f` until it gives `Some` (at most 15 s).
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `sqls` on `c` in the background, gives the connection back.
fn background(
    mut c: mysql_async::Conn,
    sqls: &'static [&'static str],
) -> JoinHandle<mysql_async::Result<mysql_async::Conn>> {
    tokio::spawn(async move {
        for sql in sqls {
            c.query_drop(*sql).await?;
        }
        Ok(c)
    })
}

/// The `p`-th fraction of `samples` (sorted in place).
fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_on_a_real_server() {
    let started = Instant::now();
    let (server, plain) = tokio::join!(
        EphemeralMariaDb::builder()
            .with_arg("--performance-schema=ON")
            .start(),
        EphemeralMariaDb::start()
    );
    let server = server.expect("starting MariaDB");
    let plain = plain.expect("starting MariaDB without performance_schema");
    server
        .execute("", "INSTALL SONAME 'metadata_lock_info'")
        .await
        .expect("installing metadata_lock_info");
    eprintln!("server up in {:.1} s", started.elapsed().as_secs_f64());

    conformance(&server).await;
    without_performance_schema(&plain).await;
    drop(plain);
    check_and_repair(&server).await;
    optimize(&server).await;
    activity_locks_and_ending(&server).await;
    ending_records_sessions_that_went_away(&server).await;
    metadata_locks(&server).await;
    optimize_does_not_redo_a_rebuild(&server).await;
    privileges(&server).await;
    archive_refusals(&server).await;
    archive(&server).await;
    archive_beside_an_updater(&server).await;
    archive_lock_waits(&server).await;
    eprintln!("all scenarios: {:.1} s", started.elapsed().as_secs_f64());
}

async fn conformance(server: &EphemeralMariaDb) {
    let t = Instant::now();
    let db = scenario(server, "conf", "").await;
    ops_core::testkit::maintain::conformance(&db).await;
    let vacuum = db
        .inspect(Inspect::Vacuum, &InspectOptions::default())
        .await
        .unwrap_err();
    assert_eq!(vacuum.kind(), ErrorKind::InvalidInput);
    assert!(vacuum.to_string().contains("optimize"), "{vacuum}");
    for action in [
        Action::Vacuum {
            full: true,
            analyze: false,
        },
        Action::Reindex {
            concurrently: false,
        },
    ] {
        let e = db
            .maintain(action, &MaintainOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("optimize"), "{e}");
    }
    let t5 = Duration::from_secs(5);
    // A timeout ends a long query with an error, not with zero rows.
    let slow = db
        .query_rows("SELECT SLEEP(5)", Duration::from_millis(300), 1)
        .await;
    assert!(slow.is_err(), "{slow:?}");
    // One read query, and nothing else, runs; the refusals come before the server
    // sees anything (InvalidInput, not the server's syntax error).
    let one = db.query_rows("  SELECT 1 AS one ;\n", t5, 1).await.unwrap();
    assert_eq!(one.count, 1);
    for refused in [
        "SELECT 1; DROP DATABASE conf",
        "CALL dbops_no_such_procedure()",
        "/*! DROP DATABASE conf */ SELECT 1",
        "SELECT 1 INTO OUTFILE '/tmp/dbops-conformance'",
        "DO SLEEP(0)",
    ] {
        let e = db.query_rows(refused, t5, 1).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{refused}: {e}");
    }
    assert_eq!(
        scalar(
            server,
            "",
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'conf'"
        )
        .await,
        1
    );
    eprintln!("conformance: {:.1} s", t.elapsed().as_secs_f64());
}

/// performance_schema off (the server default): the reports that need it say how to
/// turn it on instead of coming back empty.
async fn without_performance_schema(server: &EphemeralMariaDb) {
    let db = scenario(
        server,
        "plain",
        "CREATE TABLE t (id INT PRIMARY KEY, v INT, KEY v (v))",
    )
    .await;
    let Inspection::Queries(q) = db
        .inspect(Inspect::Queries, &InspectOptions::default())
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(!q.available && q.statements.is_empty(), "{q:?}");
    assert!(
        q.message
            .as_deref()
            .unwrap_or_default()
            .contains("performance_schema=ON"),
        "{q:?}"
    );
    let Inspection::Indexes(i) = db
        .inspect(Inspect::Indexes, &InspectOptions::default())
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(i.unused.is_empty() && i.stats_since.is_none(), "{i:?}");
    assert!(
        i.notes.iter().any(|n| n.contains("performance_schema=ON")),
        "{i:?}"
    );
    assert!(i.notes.iter().any(|n| n.contains("invalid")), "{i:?}");
}

async fn check_and_repair(server: &EphemeralMariaDb) {
    let t = Instant::now();
    let db = scenario(
        server,
        "chk",
        "CREATE TABLE m (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=MyISAM; \
         INSERT INTO m SELECT seq, REPEAT('x', 80) FROM seq_1_to_2000; \
         CREATE TABLE i (id INT PRIMARY KEY, v INT) ENGINE=InnoDB; \
         INSERT INTO i VALUES (1, 1); \
         CREATE TABLE mem (id INT PRIMARY KEY) ENGINE=MEMORY; \
         INSERT INTO mem VALUES (1); \
         FLUSH TABLES",
    )
    .await;
    let healthy = db.maintain(Action::Check, &table("m")).await.unwrap();
    assert!(healthy.ok(), "{healthy:?}");

    // An engine without the operation: not supported, never damage (Failed is what
    // the command line reports as damage found) and never OK.
    for action in [
        Action::Check,
        Action::Optimize,
        Action::Repair,
        Action::Analyze,
    ] {
        let r = db.maintain(action, &table("mem")).await.unwrap();
        let step = &r.steps[0];
        eprintln!("{action} of a MEMORY table: {:?}", step.message);
        assert_eq!(step.outcome, StepOutcome::NotSupported, "{r:?}");
        assert!(message(step).contains("doesn't support"), "{r:?}");
    }

    // Cut the data file in half behind the server's back.
    let myd = server.dir().join("data/chk/m.MYD");
    let len = std::fs::metadata(&myd).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&myd).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);

    let checked = db.maintain(Action::Check, &table("m")).await.unwrap();
    let step = &checked.steps[0];
    eprintln!("CHECK of the damaged MyISAM table: {:?}", step.message);
    assert_eq!(step.outcome, StepOutcome::Failed, "{checked:?}");
    assert!(!checked.ok());
    assert!(message(step).contains("error"), "{checked:?}");

    let innodb = db.maintain(Action::Repair, &table("i")).await.unwrap();
    assert_eq!(innodb.steps[0].outcome, StepOutcome::NotSupported);
    assert!(!innodb.ok(), "REPAIR on InnoDB is never OK");
    assert!(message(&innodb.steps[0]).contains("OPTIMIZE"), "{innodb:?}");

    let planned = db
        .maintain(Action::Repair, &table("m").with_dry_run(true))
        .await
        .unwrap();
    assert_eq!(planned.steps[0].outcome, StepOutcome::Planned);
    assert_eq!(planned.steps[0].sql, "REPAIR TABLE `chk`.`m`");

    let repaired = db.maintain(Action::Repair, &table("m")).await.unwrap();
    eprintln!("REPAIR: {:?}", repaired.steps[0].message);
    assert_eq!(repaired.steps[0].outcome, StepOutcome::Done, "{repaired:?}");
    let again = db.maintain(Action::Check, &table("m")).await.unwrap();
    assert!(again.ok(), "{again:?}");
    // Every table of the database, every engine: ANALYZE with engine-independent
    // statistics answers "Engine-independent statistics collected" (and on MEMORY
    // also that the engine has no ANALYZE of its own): all success.
    server
        .execute("", "SET GLOBAL use_stat_tables = 'PREFERABLY'")
        .await
        .unwrap();
    let all = db
        .maintain(Action::Analyze, &MaintainOptions::default())
        .await
        .unwrap();
    server
        .execute("", "SET GLOBAL use_stat_tables = DEFAULT")
        .await
        .unwrap();
    eprintln!(
        "ANALYZE with engine-independent statistics: {:?}",
        all.steps.iter().map(|s| &s.message).collect::<Vec<_>>()
    );
    assert_eq!(all.steps.len(), 3, "{all:?}");
    assert!(all.ok(), "{all:?}");
    assert!(
        all.steps
            .iter()
            .all(|s| message(s).contains("Engine-independent statistics collected")),
        "{all:?}"
    );
    let unknown = db
        .maintain(Action::Check, &table("nope"))
        .await
        .unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::NotFound, "{unknown}");
    eprintln!("check and repair: {:.1} s", t.elapsed().as_secs_f64());
}
async fn optimize(server: &EphemeralMariaDb) {
    let t = Instant::now();
    let db = scenario(
        server,
        "opt",
        "CREATE TABLE big (id INT PRIMARY KEY, k INT, pad VARCHAR(200), KEY k (k), \
         KEY k2 (k), KEY kp (k, pad)) ENGINE=InnoDB; \
         INSERT INTO big SELECT seq, seq % 1000, REPEAT(CHAR(65 + seq % 26), 150) \
         FROM seq_1_to_60000; \
         ANALYZE TABLE big; \
         DELETE FROM big WHERE id % 10 <> 0",
    )
    .await;
    let sizes = db
        .inspect(Inspect::Sizes, &InspectOptions::default())
        .await
        .unwrap();
    let Inspection::Sizes(sizes) = sizes else {
        panic!("{sizes:?}")
    };
    assert_eq!(sizes.tables.len(), 1);
    assert!(sizes.tables[0].heap_bytes > 0);
    assert!(
        sizes.tables[0].rows_method.contains("estimate"),
        "{sizes:?}"
    );
    let indexes = db
        .inspect(Inspect::Indexes, &InspectOptions::default())
        .await
        .unwrap();
    let Inspection::Indexes(indexes) = indexes else {
        panic!()
    };
    let dups: Vec<&str> = indexes.duplicate.iter().map(|i| i.index.as_str()).collect();
    eprintln!("duplicate indexes: {:?}", indexes.duplicate);
    assert!(dups.contains(&"k2") || dups.contains(&"k"), "{indexes:?}");
    assert_eq!(
        dups.len(),
        2,
        "k2 (or k) duplicate, k (or k2) prefix of kp: {indexes:?}"
    );
    // performance_schema is on: nothing read through k2, so it is unused; the
    // primary key never counts.
    let unused: Vec<&str> = indexes.unused.iter().map(|i| i.index.as_str()).collect();
    assert!(unused.contains(&"k2"), "{indexes:?}");
    assert!(!unused.contains(&"PRIMARY"), "{indexes:?}");
    assert!(indexes.stats_since.is_some(), "{indexes:?}");
    let Inspection::Queries(q) = db
        .inspect(Inspect::Queries, &InspectOptions::default().with_limit(5))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(q.available, "{q:?}");
    assert!(!q.statements.is_empty() && q.statements.len() <= 5, "{q:?}");
    assert!(q.statements[0].total_ms >= q.statements[q.statements.len() - 1].total_ms);

    let report = db.maintain(Action::Optimize, &table("big")).await.unwrap();
    let step = &report.steps[0];
    eprintln!(
        "OPTIMIZE of InnoDB after deleting 90 % of 60,000 rows: size before {:?} bytes, \
         after {:?} bytes; {:?}",
        step.size_before, step.size_after, step.message
    );
    assert_eq!(step.outcome, StepOutcome::Done, "{report:?}");
    assert!(message(step).contains("rebuilt"), "{report:?}");
    let (before, after) = (step.size_before.unwrap(), step.size_after.unwrap());
    assert!(after < before, "{before} -> {after}");
    let bloat = db
        .inspect(Inspect::Bloat, &InspectOptions::default())
        .await
        .unwrap();
    let Inspection::Bloat(bloat) = bloat else {
        panic!()
    };
    assert_eq!(
        bloat.objects[0].method,
        "information_schema.TABLES.DATA_FREE"
    );
    assert!(!bloat.notes.is_empty());
    eprintln!("optimize: {:.1} s", t.elapsed().as_secs_f64());
}

async fn activity_locks_and_ending(server: &EphemeralMariaDb) {
    let t = Instant::now();
    let db = scenario(
        server,
        "act",
        "CREATE TABLE t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB; \
         INSERT INTO t VALUES (1, 0), (2, 0), (3, 0)",
    )
    .await;
    // A server thread to mark: the event scheduler.
    server
        .execute("", "SET GLOBAL event_scheduler = ON")
        .await
        .unwrap();

    let (sleeper, sleeper_id) = root_with_id(server, "act").await;
    let sleeping = background(sleeper, &["SELECT SLEEP(30)"]);
    let (mut idle, idle_id) = root_with_id(server, "act").await;
    idle.query_drop("START TRANSACTION").await.unwrap();
    idle.query_drop("UPDATE t SET v = 1 WHERE id = 3")
        .await
        .unwrap();
    let options = InspectOptions::default().with_longer_than(Duration::from_secs(1));
    let report = until("a long query and an idle transaction", || async {
        let Ok(Inspection::Activity(a)) = db.inspect(Inspect::Activity, &options).await else {
            return None;
        };
        (a.long_running.iter().any(|s| s.id == sleeper_id)
            && a.idle_in_transaction.iter().any(|s| s.id == idle_id))
        .then_some(a)
    })
    .await;
    assert!(
        report.by_state.contains_key("idle in transaction"),
        "{report:?}"
    );
    assert!(
        report
            .sessions
            .iter()
            .any(|s| s.kind == SessionKind::System && s.user.as_deref() == Some("event_scheduler")),
        "server threads are marked: {:?}",
        report.sessions
    );
    // Cancel the sleep; its session stays.
    let cancelled = db
        .end_sessions(
            &SessionFilter {
                state: Some("query".into()),
                longer_than: Some(Duration::from_secs(1)),
                ..SessionFilter::default()
            },
            &EndOptions::new(EndMode::Cancel),
        )
        .await
        .unwrap();
    assert_eq!(cancelled.sessions.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled.sessions[0].session.id, sleeper_id);
    assert_eq!(cancelled.sessions[0].outcome, Ended::Cancelled);
    let outcome = tokio::time::timeout(Duration::from_secs(5), sleeping)
        .await
        .expect("the sleep ends when cancelled")
        .unwrap();
    // The query was interrupted (1317), the connection was not closed.
    match outcome {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1317, "{e:?}"),
        other => panic!("the cancelled SLEEP: {other:?}"),
    }
    idle.query_drop("ROLLBACK").await.unwrap();
    drop(idle);

    // A blocks B, B blocks C.
    let (mut a, a_id) = root_with_id(server, "act").await;
    let (mut b, b_id) = root_with_id(server, "act").await;
    let (mut c, c_id) = root_with_id(server, "act").await;
    a.query_drop("START TRANSACTION").await.unwrap();
    a.query_drop("SELECT * FROM t WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    b.query_drop("START TRANSACTION").await.unwrap();
    b.query_drop("SELECT * FROM t WHERE id = 2 FOR UPDATE")
        .await
        .unwrap();
    let b_task = background(b, &["SELECT * FROM t WHERE id = 1 FOR UPDATE", "COMMIT"]);
    c.query_drop("START TRANSACTION").await.unwrap();
    let c_task = background(c, &["SELECT * FROM t WHERE id = 2 FOR UPDATE", "COMMIT"]);
    let tree = until("one tree A -> B -> C", || async {
        let Ok(Inspection::Locks(l)) = db.inspect(Inspect::Locks, &options).await else {
            return None;
        };
        let t = l.trees.first()?;
        (l.trees.len() == 1 && t.count() == 3).then(|| t.clone())
    })
    .await;
    assert_eq!(tree.session.id, a_id);
    assert_eq!(tree.blocks[0].session.id, b_id);
    assert_eq!(tree.blocks[0].blocks[0].session.id, c_id);
    assert_eq!(tree.session.state, "idle in transaction");

    let roots = SessionFilter {
        root_blockers: true,
        ..SessionFilter::default()
    };
    let terminate = EndOptions::new(EndMode::Terminate).with_grace(Duration::from_secs(1));
    let dry = db
        .end_sessions(&roots, &terminate.with_dry_run(true))
        .await
        .unwrap();
    assert_eq!(dry.sessions.len(), 1, "{dry:?}");
    assert_eq!(dry.sessions[0].outcome, Ended::WouldTerminate);
    let still = db.sessions(&SessionFilter::default()).await.unwrap();
    for id in [a_id, b_id, c_id] {
        assert!(still.iter().any(|s| s.id == id), "a dry run ended {id}");
    }
    let ended = db.end_sessions(&roots, &terminate).await.unwrap();
    assert_eq!(ended.sessions.len(), 1, "{ended:?}");
    assert_eq!(ended.sessions[0].session.id, a_id);
    assert_eq!(ended.sessions[0].outcome, Ended::Terminated);
    for task in [b_task, c_task] {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the chain drains")
            .unwrap()
            .expect("B and C were not ended");
    }
    let Inspection::Locks(l) = db.inspect(Inspect::Locks, &options).await.unwrap() else {
        panic!()
    };
    assert!(l.trees.is_empty(), "{l:?}");
    let own = db
        .end_sessions(
            &SessionFilter {
                all: true,
                ..SessionFilter::default()
            },
            &EndOptions::new(EndMode::Cancel).with_dry_run(true),
        )
        .await
        .unwrap();
    for s in &own.sessions {
        if s.session.kind != SessionKind::Client {
            assert_eq!(s.outcome, Ended::Refused, "{s:?}");
        }
    }
    assert!(
        own.sessions
            .iter()
            .any(|s| s.session.kind == SessionKind::Own && s.outcome == Ended::Refused)
    );
    drop(a);
    eprintln!(
        "activity, locks, ending: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// An open transaction holds a table's metadata lock: an ALTER waits behind it and
/// the lock tree says so; OPTIMIZE gives up after its lock tries and names the
/// holder.
async fn metadata_locks(server: &EphemeralMariaDb) {
    let t = Instant::now();
    let db = scenario(
        server,
        "mdl",
        "CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO t VALUES (1)",
    )
    .await;
    let (mut holder, holder_id) = reader_in_transaction(server, "mdl", "t").await;

    let started = Instant::now();
    let seen: Arc<Mutex<Vec<StepProgress>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let report = db
        .maintain(
            Action::Optimize,
            &table("t")
                .with_lock(LockSteps::default().with_total(Duration::from_secs(3)))
                .with_progress(Arc::new(move |p: &StepProgress| {
                    sink.lock().unwrap().push(p.clone());
                })),
        )
        .await
        .unwrap();
    // The waiting step reported its progress (about once a second).
    let seen = seen.lock().unwrap().clone();
    eprintln!("progress while waiting: {seen:?}");
    assert!(
        seen.iter()
            .any(|p| p.object == "mdl.t" && p.phase.contains("metadata lock")),
        "{seen:?}"
    );
    let step = &report.steps[0];
    eprintln!(
        "OPTIMIZE behind an open transaction, after {:.1} s: {:?}",
        started.elapsed().as_secs_f64(),
        step.message
    );
    assert_eq!(step.outcome, StepOutcome::LockTimeout, "{report:?}");
    assert!(step.lock_tries >= 2, "{report:?}");
    let text = message(step);
    assert!(text.contains(&format!("connection {holder_id}")), "{text}");
    assert!(text.contains("the limit is 3.0 s"), "{text}");
    // No try starts once the total has passed: the step ends within it (plus naming
    // the holder).
    assert!(
        started.elapsed() < Duration::from_secs(3) + Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    let (alter, alter_id) = root_with_id(server, "mdl").await;
    let altering = background(alter, &["ALTER TABLE t ADD COLUMN v INT"]);
    let options = InspectOptions::default();
    let tree = until("the ALTER waits for the holder", || async {
        let Ok(Inspection::Locks(l)) = db.inspect(Inspect::Locks, &options).await else {
            return None;
        };
        l.trees.into_iter().find(|t| t.session.id == holder_id)
    })
    .await;
    assert_eq!(tree.blocks[0].session.id, alter_id, "{tree:?}");
    assert!(
        tree.blocks[0]
            .session
            .wait
            .as_deref()
            .unwrap_or_default()
            .contains("metadata lock"),
        "{tree:?}"
    );
    holder.query_drop("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), altering)
        .await
        .expect("the ALTER runs once the holder commits")
        .unwrap()
        .unwrap();

    // Without the plugin: the sessions with an open transaction are named as likely
    // holders, and the waiter says how to see for sure.
    server
        .execute("", "UNINSTALL SONAME 'metadata_lock_info'")
        .await
        .unwrap();
    holder.query_drop("START TRANSACTION").await.unwrap();
    holder.query_drop("SELECT * FROM t").await.unwrap();
    let report = db
        .maintain(
            Action::Optimize,
            &table("t").with_lock(LockSteps::default().with_total(Duration::from_secs(1))),
        )
        .await
        .unwrap();
    let step = &report.steps[0];
    eprintln!("OPTIMIZE without metadata_lock_info: {:?}", step.message);
    assert_eq!(step.outcome, StepOutcome::LockTimeout, "{report:?}");
    let text = message(step);
    assert!(
        text.contains(&format!("connection {holder_id}")) && text.contains("INSTALL SONAME"),
        "{text}"
    );
    let (alter, alter_id) = root_with_id(server, "mdl").await;
    let altering = background(alter, &["ALTER TABLE t ADD COLUMN w INT"]);
    let waiting = until("the ALTER waits", || async {
        let all = db.sessions(&SessionFilter::default()).await.ok()?;
        all.into_iter()
            .find(|s| s.id == alter_id && s.wait.as_deref().is_some_and(|w| w.contains("metadata")))
    })
    .await;
    assert!(
        waiting
            .wait
            .as_deref()
            .unwrap_or_default()
            .contains("INSTALL SONAME"),
        "{waiting:?}"
    );
    holder.query_drop("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), altering)
        .await
        .expect("the ALTER runs once the holder commits")
        .unwrap()
        .unwrap();
    eprintln!("metadata locks: {:.1} s", t.elapsed().as_secs_f64());
}

/// Terminating two sessions: one goes away by itself once its query is cancelled, the
/// other stays and is ended. The report keeps both, each with what happened to it.
async fn ending_records_sessions_that_went_away(server: &EphemeralMariaDb) {
    let t = Instant::now();
    let db = scenario(
        server,
        "endgone",
        "CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO t VALUES (1)",
    )
    .await;
    let (mut quitter, quitter_id) = root_with_id(server, "endgone").await;
    let quitting = tokio::spawn(async move {
        let e = quitter.query_drop("SELECT SLEEP(30)").await.unwrap_err();
        // Cancelled: this client gives up and leaves at once.
        quitter.disconnect().await.unwrap();
        e
    });
    let (stayer, stayer_id) = reader_in_transaction(server, "endgone", "t").await;
    until("the sleep runs", || async {
        let all = db.sessions(&SessionFilter::default()).await.ok()?;
        all.iter()
            .any(|s| s.id == quitter_id && s.state == "query")
            .then_some(())
    })
    .await;
    let ended = db
        .end_sessions(
            &SessionFilter {
                database: Some("endgone".into()),
                ..SessionFilter::default()
            },
            &EndOptions::new(EndMode::Terminate).with_grace(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let outcome = |id: i64| {
        ended
            .sessions
            .iter()
            .find(|s| s.session.id == id)
            .map(|s| s.outcome)
    };
    eprintln!("ending a leaving and a staying session: {ended:?}");
    assert_eq!(outcome(quitter_id), Some(Ended::Gone), "{ended:?}");
    assert_eq!(outcome(stayer_id), Some(Ended::Terminated), "{ended:?}");
    let cancelled = quitting.await.unwrap();
    assert!(cancelled.to_string().contains("interrupted"), "{cancelled}");
    drop(stayer);
    eprintln!(
        "ending sessions that go away: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// OPTIMIZE of an InnoDB table rebuilds it online and needs the exclusive metadata
/// lock again at the end. A reader that comes in during the rebuild and keeps its
/// transaction open makes that last lock time out: the whole rebuild is lost. It is
/// not run again by itself; the step says so, names the reader, and says whether an
/// intermediate table was left behind.
async fn optimize_does_not_redo_a_rebuild(server: &EphemeralMariaDb) {
    let t = Instant::now();
    let db = scenario(
        server,
        "rebuild",
        "CREATE TABLE big (id INT PRIMARY KEY, pad VARCHAR(200)) ENGINE=InnoDB; \
         INSERT INTO big SELECT seq, REPEAT('r', 150) FROM seq_1_to_250000",
    )
    .await;
    let mut watch = root(server, "").await;
    // The rebuild may finish before the reader gets in (a busy machine is slow to
    // poll): try a few times.
    for attempt in 1..=3 {
        let options =
            table("big").with_lock(LockSteps::default().with_total(Duration::from_secs(3)));
        let e = db.clone();
        let started = Instant::now();
        let optimizing = tokio::spawn(async move { e.maintain(Action::Optimize, &options).await });
        let mut reader = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !optimizing.is_finished() && Instant::now() < deadline {
            let state: Option<String> = watch
                .query_first(
                    "SELECT STATE FROM information_schema.PROCESSLIST \
                     WHERE INFO LIKE 'OPTIMIZE TABLE `rebuild`.`big`%'",
                )
                .await
                .unwrap();
            if state.as_deref() == Some("altering table") {
                reader = Some(reader_in_transaction(server, "rebuild", "big").await);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let report = optimizing.await.unwrap().unwrap();
        let took = started.elapsed();
        let step = &report.steps[0];
        eprintln!(
            "OPTIMIZE with a reader arriving mid-rebuild (attempt {attempt}), {:.1} s: {:?} {:?}",
            took.as_secs_f64(),
            step.outcome,
            step.message
        );
        let Some((mut reader, reader_id)) = reader else {
            continue;
        };
        if step.outcome == StepOutcome::Done {
            reader.query_drop("COMMIT").await.unwrap();
            continue;
        }
        assert_eq!(step.outcome, StepOutcome::LockTimeout, "{report:?}");
        assert_eq!(step.lock_tries, 1, "the rebuild ran once: {report:?}");
        let text = message(step);
        assert!(text.contains("work is lost"), "{text}");
        assert!(text.contains("not tried again"), "{text}");
        assert!(text.contains(&format!("connection {reader_id}")), "{text}");
        assert!(
            text.contains("no intermediate #sql table was left behind"),
            "{text}"
        );
        reader.query_drop("COMMIT").await.unwrap();
        assert_eq!(
            scalar(server, "rebuild", "SELECT COUNT(*) FROM big").await,
            250_000
        );
        eprintln!(
            "optimize lost a rebuild: {:.1} s",
            t.elapsed().as_secs_f64()
        );
        return;
    }
    panic!("the reader never got in during the rebuild");
}

async fn privileges(server: &EphemeralMariaDb) {
    let t = Instant::now();
    scenario(
        server,
        "priv",
        &format!(
            "CREATE TABLE t (id INT PRIMARY KEY, v INT, KEY v (v)) ENGINE=InnoDB; \
             INSERT INTO t VALUES (1, 1); \
             CREATE USER watcher@'%' IDENTIFIED BY '{WATCHER_PASSWORD}'; \
             GRANT PROCESS, SLAVE MONITOR ON *.* TO watcher@'%'; \
             GRANT SELECT ON priv.* TO watcher@'%'; \
             CREATE USER nopriv@'%' IDENTIFIED BY 'np'; \
             GRANT SELECT ON priv.* TO nopriv@'%'; \
             CREATE USER victim@'%' IDENTIFIED BY 'v'; \
             GRANT SELECT ON priv.* TO victim@'%'"
        ),
    )
    .await;
    let watcher = user_engine(server, "watcher", WATCHER_PASSWORD, "priv");
    for what in Inspect::ALL {
        match watcher.inspect(what, &InspectOptions::default()).await {
            Ok(report) => {
                let text = serde_json::to_string(&report).unwrap();
                assert!(!text.contains(WATCHER_PASSWORD));
                // performance_schema needs its own grant: said, not hidden.
                if let Inspection::Queries(q) = &report {
                    let m = q.message.as_deref().unwrap_or_default();
                    assert!(!q.available && m.contains("GRANT SELECT ON performance_schema"));
                }
                if let Inspection::Indexes(i) = &report {
                    assert!(i.notes.iter().any(|n| n.contains("NOT checked")), "{i:?}");
                }
            }
            Err(e) => {
                assert_eq!(what, Inspect::Vacuum, "{what}: {e}");
                assert_eq!(e.kind(), ErrorKind::InvalidInput);
            }
        }
    }
    let sessions = watcher.sessions(&SessionFilter::default()).await.unwrap();
    assert!(
        sessions
            .iter()
            .any(|s| s.user.as_deref() == Some("root") || s.kind == SessionKind::System),
        "PROCESS shows other accounts' sessions: {sessions:?}"
    );

    let nopriv = user_engine(server, "nopriv", "np", "priv");
    for what in [Inspect::Activity, Inspect::Locks] {
        let e = nopriv
            .inspect(what, &InspectOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        assert!(e.to_string().contains("GRANT PROCESS"), "{e}");
    }
    let e = nopriv
        .sessions(&SessionFilter::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");

    // Ending: without CONNECTION ADMIN the account may end only its own sessions,
    // and that is checked before any KILL. Its own sleeping session comes first (the
    // lower id) and is left alone, as is the other account's.
    let own = user_conn(server, "watcher", WATCHER_PASSWORD, Some("priv")).await;
    let own_id = i64::from(own.id());
    let own_sleeping = background(own, &["SELECT SLEEP(20)"]);
    let mut victim = user_conn(server, "victim", "v", Some("priv")).await;
    let victim_id = i64::from(victim.id());
    until("the own session sleeps", || async {
        let all = watcher.sessions(&SessionFilter::default()).await.ok()?;
        all.iter()
            .any(|s| s.id == own_id && s.state == "query")
            .then_some(())
    })
    .await;
    let in_priv = SessionFilter {
        database: Some("priv".into()),
        ..SessionFilter::default()
    };
    let e = watcher
        .end_sessions(
            &in_priv,
            &EndOptions::new(EndMode::Terminate).with_grace(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    eprintln!("ending another account's session without the grant: {e}");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let text = e.to_string();
    assert!(text.contains("CONNECTION ADMIN"), "{e}");
    assert!(text.contains("nothing was ended"), "{e}");
    assert!(text.contains(&format!("{victim_id} (user victim)")), "{e}");
    assert!(!format!("{e} {e:?}").contains(WATCHER_PASSWORD));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!own_sleeping.is_finished(), "the own session was cancelled");
    victim.query_drop("SELECT 1").await.unwrap();

    // With CONNECTION ADMIN through its default role, it may.
    server
        .execute(
            "",
            "CREATE ROLE killer; GRANT CONNECTION ADMIN ON *.* TO killer; \
             GRANT killer TO watcher@'%'; SET DEFAULT ROLE killer FOR watcher@'%'",
        )
        .await
        .unwrap();
    let ended = watcher
        .end_sessions(&in_priv, &EndOptions::new(EndMode::Cancel))
        .await
        .unwrap();
    for id in [own_id, victim_id] {
        assert!(
            ended
                .sessions
                .iter()
                .any(|s| s.session.id == id && s.outcome == Ended::Cancelled),
            "{id}: {ended:?}"
        );
    }
    let slept = tokio::time::timeout(Duration::from_secs(5), own_sleeping)
        .await
        .expect("the cancelled sleep ends")
        .unwrap();
    assert!(slept.is_err(), "{slept:?}");
    drop(victim);
    eprintln!("privileges: {:.1} s", t.elapsed().as_secs_f64());
}

/// Rows and an order-independent digest of the columns `cols` of `tables` in `db`
/// together.
async fn digest(server: &EphemeralMariaDb, db: &str, cols: &[&str], tables: &[&str]) -> (u64, u64) {
    let mut c = root(server, db).await;
    let list = cols.join(", ");
    let union = tables
        .iter()
        .map(|t| format!("SELECT {list} FROM {t}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let each = cols
        .iter()
        .map(|c| format!("COALESCE({c}, 'NULL')"))
        .collect::<Vec<_>>()
        .join(", ");
    let (n, sum): (u64, Option<u64>) = c
        .query_first(format!(
            "SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', {each}))) FROM ({union}) x"
        ))
        .await
        .unwrap()
        .unwrap();
    (n, sum.unwrap_or(0))
}

/// A small, seedless pseudo-random number (no rand crate in this package's tests).
fn jitter(i: u64, range: u64) -> u64 {
    let nanos = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
    );
    (nanos ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % range
}

/// Refused before anything moves, dry runs included: a source whose rows other tables
/// reference with ON DELETE CASCADE or SET NULL (deleting them would change those
/// tables), and tables without transactions (a batch would not be atomic).
async fn archive_refusals(server: &EphemeralMariaDb) {
    let t = Instant::now();
    let db = scenario(
        server,
        "arcref",
        "CREATE TABLE parent (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB; \
         INSERT INTO parent SELECT seq, seq FROM seq_1_to_100; \
         CREATE TABLE kept (id INT PRIMARY KEY, p INT, CONSTRAINT kept_p FOREIGN KEY (p) \
           REFERENCES parent (id) ON DELETE RESTRICT) ENGINE=InnoDB; \
         CREATE TABLE gone (id INT PRIMARY KEY, p INT, CONSTRAINT gone_p FOREIGN KEY (p) \
           REFERENCES parent (id) ON DELETE CASCADE) ENGINE=InnoDB; \
         CREATE TABLE orphan (id INT PRIMARY KEY, p INT, CONSTRAINT orphan_p FOREIGN KEY (p) \
           REFERENCES parent (id) ON DELETE SET NULL) ENGINE=InnoDB; \
         INSERT INTO kept VALUES (1, 1); INSERT INTO gone VALUES (1, 60); \
         INSERT INTO orphan VALUES (1, 70); \
         CREATE TABLE plain (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB; \
         INSERT INTO plain SELECT seq, seq FROM seq_1_to_100; \
         CREATE TABLE mine (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=MyISAM; \
         INSERT INTO mine SELECT seq, seq FROM seq_1_to_100; \
         CREATE TABLE aria_archive (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=Aria",
    )
    .await;
    let tables = |name: &'static str| async move {
        scalar(
            server,
            "arcref",
            &format!(
                "SELECT COUNT(*) FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = 'arcref' AND TABLE_NAME = '{name}'"
            ),
        )
        .await
    };
    for dry_run in [true, false] {
        let e = db
            .archive(&ArchiveSpec::new("parent", "id > 50", "parent_archive").with_dry_run(dry_run))
            .await
            .unwrap_err();
        eprintln!("archiving a table referenced with ON DELETE CASCADE: {e}");
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let text = e.to_string();
        assert!(
            text.contains("gone_p of arcref.gone (ON DELETE CASCADE)"),
            "{text}"
        );
        assert!(
            text.contains("orphan_p of arcref.orphan (ON DELETE SET NULL)"),
            "{text}"
        );
        assert!(!text.contains("kept_p"), "RESTRICT is fine: {text}");

        let e = db
            .archive(&ArchiveSpec::new("mine", "TRUE", "mine_archive").with_dry_run(dry_run))
            .await
            .unwrap_err();
        eprintln!("archiving a MyISAM table: {e}");
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let text = e.to_string();
        assert!(
            text.contains("arcref.mine") && text.contains("MyISAM"),
            "{text}"
        );
        assert!(
            text.contains("ALTER TABLE `arcref`.`mine` ENGINE=InnoDB"),
            "{text}"
        );

        let e = db
            .archive(&ArchiveSpec::new("plain", "TRUE", "aria_archive").with_dry_run(dry_run))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let text = e.to_string();
        assert!(
            text.contains("arcref.aria_archive") && text.contains("Aria"),
            "{text}"
        );
    }
    assert_eq!(tables("parent_archive").await, 0);
    assert_eq!(tables("mine_archive").await, 0);
    for (table, rows) in [("parent", 100), ("gone", 1), ("mine", 100), ("plain", 100)] {
        let n = scalar(server, "arcref", &format!("SELECT COUNT(*) FROM {table}")).await;
        assert_eq!(n, rows, "{table}");
    }
    let orphaned = scalar(server, "arcref", "SELECT COUNT(p) FROM orphan").await;
    assert_eq!(orphaned, 1);

    // Only RESTRICT left: the rows nobody references move, and the archive the run
    // creates is InnoDB.
    server
        .execute("arcref", "DROP TABLE gone, orphan")
        .await
        .unwrap();
    let moved = db
        .archive(&ArchiveSpec::new("parent", "id > 50", "parent_archive"))
        .await
        .unwrap();
    assert_eq!((moved.rows, moved.remaining), (50, 0), "{moved:?}");
    assert_eq!(
        scalar(
            server,
            "arcref",
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'arcref' \
             AND TABLE_NAME = 'parent_archive' AND ENGINE = 'InnoDB'"
        )
        .await,
        1
    );
    eprintln!("archive refusals: {:.1} s", t.elapsed().as_secs_f64());
}
/// The columns of `arc.src` that archiving must keep as they are.
const ARC_COLUMNS: &[&str] = &["id", "k", "created", "note"];

async fn archive(server: &EphemeralMariaDb) {
    let t = Instant::now();
    let db = scenario(
        server,
        "arc",
        "CREATE TABLE src (id INT PRIMARY KEY, k INT NOT NULL, created DATE NOT NULL, \
         note VARCHAR(40), KEY created (created)) ENGINE=InnoDB; \
         INSERT INTO src SELECT seq, seq % 97, '2015-01-01' + INTERVAL (seq % 3650) DAY, \
         IF(seq % 11 = 0, NULL, CONCAT('row ', seq)) FROM seq_1_to_100000; \
         CREATE TABLE nopk (a INT) ENGINE=InnoDB; \
         CREATE TABLE wrong (id INT PRIMARY KEY) ENGINE=InnoDB",
    )
    .await;
    let original = digest(server, "arc", ARC_COLUMNS, &["src"]).await;
    assert_eq!(original.0, 100_000);
    let predicate = "created < '2021-01-01'";
    let matching = scalar(
        server,
        "arc",
        &format!("SELECT COUNT(*) FROM src WHERE {predicate}"),
    )
    .await;
    assert!(matching > 50_000 && matching < 100_000, "{matching}");

    let e = db
        .archive(&ArchiveSpec::new("nopk", "TRUE", "nopk_archive"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("primary key"), "{e}");
    let e = db
        .archive(&ArchiveSpec::new("src", predicate, "wrong"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Mismatch, "{e}");

    let dry = db
        .archive(&ArchiveSpec::new("src", predicate, "arch").with_dry_run(true))
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!((dry.rows, dry.remaining), (matching, 0));
    assert!(!dry.created_archive);
    let first = db
        .archive(
            &ArchiveSpec::new("src", predicate, "arch")
                .with_batch(700)
                .with_max_rows(Some(1000)),
        )
        .await
        .unwrap();
    assert!(first.created_archive);
    assert_eq!(first.rows, 1000);
    assert_eq!(first.batches, 2);
    assert_eq!(first.remaining, matching - 1000);

    // Killed mid-run, at a random point after it has moved some rows: the task
    // dropped (its connection goes away with it), or its connection killed from
    // another session.
    let spec = ArchiveSpec::new("src", predicate, "arch").with_batch(200);
    let mut watch = common::connect(server, "").await;
    for round in 0..6u64 {
        let before: u64 = watch
            .query_first("SELECT COUNT(*) FROM arc.arch")
            .await
            .unwrap()
            .unwrap();
        let target = before + 1000 + jitter(round, 4000);
        let e = db.clone();
        let s = spec.clone();
        let task = tokio::spawn(async move { e.archive(&s).await });
        loop {
            let now: u64 = watch
                .query_first("SELECT COUNT(*) FROM arc.arch")
                .await
                .unwrap()
                .unwrap();
            if now >= target || task.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(
            !task.is_finished(),
            "round {round}: the archive ended before the kill"
        );
        if round % 2 == 0 {
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
            eprintln!(
                "archive round {round}: task dropped after about {} rows",
                target - before
            );
        } else {
            let ids: Vec<u64> = watch
                .query(
                    "SELECT ID FROM information_schema.PROCESSLIST \
                     WHERE DB = 'arc' AND ID <> CONNECTION_ID()",
                )
                .await
                .unwrap();
            for id in &ids {
                let _ = watch.query_drop(format!("KILL CONNECTION {id}")).await;
            }
            let outcome = task.await.unwrap();
            eprintln!(
                "archive round {round}: connection {ids:?} killed after about {} rows: {:?}",
                target - before,
                outcome.as_ref().map(|r| r.rows)
            );
            let e = outcome.unwrap_err();
            assert!(e.to_string().contains("resume"), "round {round}: {e}");
        }
        // Wait for the server to roll back the interrupted batch, then count.
        until("the killed archiver's connection is gone", || async {
            let mut w = common::connect(server, "").await;
            let n: u64 = w
                .query_first(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                     WHERE DB = 'arc' AND ID <> CONNECTION_ID()",
                )
                .await
                .unwrap()
                .unwrap();
            (n == 0).then_some(())
        })
        .await;
        let (n, _) = digest(server, "arc", ARC_COLUMNS, &["src", "arch"]).await;
        assert_eq!(n, 100_000, "round {round}: no row lost or doubled");
    }
    drop(watch);
    let rest = db.archive(&spec).await.unwrap();
    assert_eq!(rest.remaining, 0, "{rest:?}");
    assert!(!rest.created_archive);
    assert_eq!(
        scalar(server, "arc", "SELECT COUNT(*) FROM arch").await,
        matching,
        "every matching row is in the archive"
    );
    assert_eq!(
        scalar(
            server,
            "arc",
            &format!("SELECT COUNT(*) FROM src WHERE {predicate}")
        )
        .await,
        0
    );
    assert_eq!(
        digest(server, "arc", ARC_COLUMNS, &["src", "arch"]).await,
        original
    );
    let done = db
        .archive(&ArchiveSpec::new("src", predicate, "arch").with_dry_run(true))
        .await
        .unwrap();
    assert_eq!((done.rows, done.remaining), (0, 0));

    // A transaction open longer than the limit holds archiving back, up to max_wait.
    let (mut old, old_id) = root_with_id(server, "arc").await;
    old.query_drop("START TRANSACTION").await.unwrap();
    old.query_drop("SELECT * FROM nopk FOR UPDATE")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let waited = Instant::now();
    let e = db
        .archive(
            &ArchiveSpec::new("src", "TRUE", "arch")
                .with_limits(Duration::from_secs(10), Duration::from_secs(1))
                .with_max_wait(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    assert!(
        e.to_string().contains(&format!("connection {old_id}")),
        "{e}"
    );
    assert!(waited.elapsed() >= Duration::from_secs(2));
    old.query_drop("ROLLBACK").await.unwrap();
    drop(old);

    // A composite primary key, string and number, in small batches.
    server
        .execute(
            "arc",
            "CREATE TABLE pair (region VARCHAR(10), n INT, v INT, PRIMARY KEY (region, n)); \
             INSERT INTO pair SELECT ELT(1 + seq % 3, 'eu', 'us', 'Asia'), seq, seq % 5 \
             FROM seq_1_to_300",
        )
        .await
        .unwrap();
    let moved = db
        .archive(&ArchiveSpec::new("pair", "v < 3", "pair_archive").with_batch(7))
        .await
        .unwrap();
    assert_eq!(moved.rows, 180);
    assert_eq!(moved.batches, 180_u64.div_ceil(7));
    assert_eq!(moved.remaining, 0);
    assert_eq!(
        scalar(
            server,
            "arc",
            "SELECT COUNT(*) FROM pair_archive WHERE v < 3"
        )
        .await,
        180
    );
    assert_eq!(
        scalar(server, "arc", "SELECT COUNT(*) FROM pair").await,
        120
    );
    eprintln!("archive: {:.1} s", t.elapsed().as_secs_f64());
}

/// Archiving beside an application that keeps updating random rows of the source,
/// each update its own transaction: no update waits on the archiver for longer than
/// its short lock wait (plus a margin), every matching row moves exactly once, and
/// every committed update is in the row wherever it ended up.
async fn archive_beside_an_updater(server: &EphemeralMariaDb) {
    const ROWS: u64 = 30_000;
    let db = scenario(
        server,
        "hot",
        &format!(
            "CREATE TABLE t (id INT PRIMARY KEY, payload VARCHAR(40) NOT NULL, \
             touched INT NOT NULL DEFAULT 0) ENGINE=InnoDB; \
             INSERT INTO t (id, payload) SELECT seq, MD5(seq) FROM seq_1_to_{ROWS}"
        ),
    )
    .await;
    let kept = &["id", "payload"];
    let before = digest(server, "hot", kept, &["t"]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let archiving = Arc::new(AtomicBool::new(false));
    let applied = Arc::new(AtomicU64::new(0));
    let samples: Arc<Mutex<(Vec<Duration>, Vec<Duration>)>> = Arc::default();
    let mut updater = root(server, "hot").await;
    let updating = {
        let (stop, archiving, applied, samples) = (
            Arc::clone(&stop),
            Arc::clone(&archiving),
            Arc::clone(&applied),
            Arc::clone(&samples),
        );
        tokio::spawn(async move {
            let update = updater
                .prep("UPDATE t SET touched = touched + 1 WHERE id = ?")
                .await
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = 1 + jitter(i, ROWS);
                let during = archiving.load(Ordering::Relaxed);
                let started = Instant::now();
                updater.exec_drop(&update, (id,)).await.unwrap();
                let took = started.elapsed();
                applied.fetch_add(updater.affected_rows(), Ordering::Relaxed);
                {
                    let mut s = samples.lock().unwrap();
                    if during {
                        s.1.push(took)
                    } else {
                        s.0.push(took)
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    archiving.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let report = db
        .archive(&ArchiveSpec::new("t", "id % 10 <> 0", "t_archive").with_batch(500))
        .await
        .unwrap();
    let took = started.elapsed();
    archiving.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    updating.await.unwrap();
    eprintln!("archive beside an updater: {report:?}");
    assert_eq!(report.rows, ROWS / 10 * 9, "{report:?}");
    assert_eq!(report.remaining, 0, "{report:?}");

    assert_eq!(
        digest(server, "hot", kept, &["t", "t_archive"]).await,
        before,
        "every row is in exactly one table, unchanged"
    );
    assert_eq!(
        scalar(
            server,
            "hot",
            "SELECT COUNT(DISTINCT id) FROM (SELECT id FROM t UNION ALL SELECT id FROM t_archive) x"
        )
        .await,
        ROWS
    );
    assert_eq!(
        scalar(server, "hot", "SELECT COUNT(*) FROM t WHERE id % 10 <> 0").await,
        0
    );
    let touched = scalar(
        server,
        "hot",
        "SELECT (SELECT SUM(touched) FROM t) + (SELECT SUM(touched) FROM t_archive)",
    )
    .await;
    assert_eq!(
        touched,
        applied.load(Ordering::Relaxed),
        "an update that committed is missing"
    );

    let (mut without, mut with) = std::mem::take(&mut *samples.lock().unwrap());
    let worst = percentile(&mut with, 1.0);
    eprintln!(
        "MEASURED archive of {} rows beside an updater in {:.1} s: updater p99 without the \
         archiver {:.1} ms ({} updates), with it {:.1} ms ({} updates), max with {:.1} ms",
        report.rows,
        took.as_secs_f64(),
        percentile(&mut without, 0.99).as_secs_f64() * 1e3,
        without.len(),
        percentile(&mut with, 0.99).as_secs_f64() * 1e3,
        with.len(),
        worst.as_secs_f64() * 1e3,
    );
    assert!(with.len() > 10, "the updater ran during the archive");
    assert!(
        worst < BATCH_LOCK_WAIT + Duration::from_secs(3),
        "an update waited {worst:?}"
    );
}

/// A batch that cannot get a lock waits the short lock wait, is rolled back and tried
/// again; it goes through once the lock is free, and after a few tries the run stops
/// saying which rows waited for what, that nothing of the batch moved and that
/// running again resumes.
async fn archive_lock_waits(server: &EphemeralMariaDb) {
    let t = Instant::now();
    let db = scenario(
        server,
        "arcwait",
        "CREATE TABLE src (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB; \
         INSERT INTO src SELECT seq, seq FROM seq_1_to_1000; \
         CREATE TABLE arch LIKE src",
    )
    .await;
    let spec = ArchiveSpec::new("src", "v <= 500", "arch").with_batch(100);
    // A transaction that locked the whole (empty) archive table: every copy waits.
    let (mut holder, _) = root_with_id(server, "arcwait").await;
    holder.query_drop("START TRANSACTION").await.unwrap();
    holder
        .query_drop("SELECT * FROM arch FOR UPDATE")
        .await
        .unwrap();
    let started = Instant::now();
    let e = db.archive(&spec).await.unwrap_err();
    let took = started.elapsed();
    eprintln!(
        "archive batch behind a lock, after {:.1} s: {e}",
        took.as_secs_f64()
    );
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    let text = e.to_string();
    for part in [
        "arcwait.src (the rows with keys '1' to '100')",
        "waited 2 s for a lock on arcwait.arch that another session holds while copying",
        "3 times",
        "nothing of it moved",
        "resumes",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    assert!(took >= BATCH_LOCK_WAIT * 3, "{took:?}");
    assert!(
        took < BATCH_LOCK_WAIT * 3 + Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(
        scalar(server, "arcwait", "SELECT COUNT(*) FROM src").await,
        1000
    );
    assert_eq!(
        scalar(server, "arcwait", "SELECT COUNT(*) FROM arch").await,
        0
    );

    // The lock goes away while the first batch waits: its next try goes through.
    let releasing = tokio::spawn(async move {
        tokio::time::sleep(BATCH_LOCK_WAIT + Duration::from_millis(500)).await;
        holder.query_drop("COMMIT").await.unwrap();
        holder
    });
    let started = Instant::now();
    let report = db.archive(&spec).await.unwrap();
    eprintln!(
        "archive batch tried again after a lock wait, {:.1} s: {report:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        started.elapsed() >= BATCH_LOCK_WAIT,
        "it waited and tried again"
    );
    assert_eq!((report.rows, report.remaining), (500, 0), "{report:?}");
    drop(releasing.await.unwrap());

    // A server that logs statements (binlog_format STATEMENT) refuses READ COMMITTED
    // writes: the archiver reads REPEATABLE READ there.
    server
        .execute("", "SET GLOBAL binlog_format = 'STATEMENT'")
        .await
        .unwrap();
    let statement = db
        .archive(&ArchiveSpec::new("src", "v <= 600", "arch").with_batch(30))
        .await;
    server
        .execute("", "SET GLOBAL binlog_format = DEFAULT")
        .await
        .unwrap();
    let statement = statement.unwrap();
    assert_eq!(
        (statement.rows, statement.remaining),
        (100, 0),
        "{statement:?}"
    );
    assert_eq!(
        digest(server, "arcwait", &["id", "v"], &["src", "arch"])
            .await
            .0,
        1000
    );
    eprintln!("archive lock waits: {:.1} s", t.elapsed().as_secs_f64());
}
