//! MariaDB maintenance against one real throwaway server (performance_schema on, the
//! metadata_lock_info plugin installed), each scenario in a database of its own and
//! one after the other: sessions, locks and activity are server-wide, so scenarios
//! running at once would see each other's sessions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

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

async fn root(server: &EphemeralMariaDb, db: &str) -> mysql_async::Conn {
    common::connect(server, db).await
}

async fn user_conn(server: &EphemeralMariaDb, user: &str, password: &str) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(server.port())
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false);
    mysql_async::Conn::new(opts).await.expect("connect")
}

fn table(name: &str) -> MaintainOptions {
    MaintainOptions::default().with_tables(vec![name.to_owned()])
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
    metadata_locks(&server).await;
    privileges(&server).await;
    archive(&server).await;
    eprintln!("all scenarios: {:.1} s", started.elapsed().as_secs_f64());
}

async fn conformance(server: &EphemeralMariaDb) {
    let t = Instant::now();
    server.create_database("conf").await.unwrap();
    let db = engine(server, "conf");
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
    // A timeout ends a long query with an error, not with zero rows.
    let slow = db
        .query_rows("SELECT SLEEP(5)", Duration::from_millis(300), 1)
        .await;
    assert!(slow.is_err(), "{slow:?}");
    // Only one statement runs.
    let two = db
        .query_rows("SELECT 1; DROP DATABASE conf", Duration::from_secs(5), 1)
        .await;
    assert!(two.is_err(), "{two:?}");
    eprintln!("conformance: {:.1} s", t.elapsed().as_secs_f64());
}

/// performance_schema off (the server default): the reports that need it say how to
/// turn it on instead of coming back empty.
async fn without_performance_schema(server: &EphemeralMariaDb) {
    server.create_database("plain").await.unwrap();
    server
        .execute(
            "plain",
            "CREATE TABLE t (id INT PRIMARY KEY, v INT, KEY v (v))",
        )
        .await
        .unwrap();
    let db = engine(server, "plain");
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
    server.create_database("chk").await.unwrap();
    server
        .execute(
            "chk",
            "CREATE TABLE m (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=MyISAM; \
             INSERT INTO m SELECT seq, REPEAT('x', 80) FROM seq_1_to_2000; \
             CREATE TABLE i (id INT PRIMARY KEY, v INT) ENGINE=InnoDB; \
             INSERT INTO i VALUES (1, 1); \
             FLUSH TABLES",
        )
        .await
        .unwrap();
    let db = engine(server, "chk");
    let healthy = db.maintain(Action::Check, &table("m")).await.unwrap();
    assert!(healthy.ok(), "{healthy:?}");

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
    let message = step.message.clone().unwrap_or_default();
    assert!(message.contains("error"), "{message}");

    let innodb = db.maintain(Action::Repair, &table("i")).await.unwrap();
    assert_eq!(innodb.steps[0].outcome, StepOutcome::NotSupported);
    assert!(!innodb.ok(), "REPAIR on InnoDB is never OK");
    assert!(
        innodb.steps[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("OPTIMIZE"),
        "{innodb:?}"
    );

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
    // Every table of the database, both engines: analyze runs on each.
    let all = db
        .maintain(Action::Analyze, &MaintainOptions::default())
        .await
        .unwrap();
    assert_eq!(all.steps.len(), 2, "{all:?}");
    assert!(all.ok(), "{all:?}");
    let unknown = db
        .maintain(Action::Check, &table("nope"))
        .await
        .unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::NotFound, "{unknown}");
    eprintln!("check and repair: {:.1} s", t.elapsed().as_secs_f64());
}

async fn optimize(server: &EphemeralMariaDb) {
    let t = Instant::now();
    server.create_database("opt").await.unwrap();
    server
        .execute(
            "opt",
            "CREATE TABLE big (id INT PRIMARY KEY, k INT, pad VARCHAR(200), KEY k (k), \
             KEY k2 (k), KEY kp (k, pad)) ENGINE=InnoDB; \
             INSERT INTO big SELECT seq, seq % 1000, REPEAT(CHAR(65 + seq % 26), 150) \
             FROM seq_1_to_60000; \
             ANALYZE TABLE big; \
             DELETE FROM big WHERE id % 10 <> 0",
        )
        .await
        .unwrap();
    let db = engine(server, "opt");
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
    assert!(
        step.message
            .as_deref()
            .unwrap_or_default()
            .contains("rebuilt"),
        "{report:?}"
    );
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

/// Runs `sql` on `c` in the background, gives the connection back.
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

async fn activity_locks_and_ending(server: &EphemeralMariaDb) {
    let t = Instant::now();
    server.create_database("act").await.unwrap();
    server
        .execute(
            "act",
            "CREATE TABLE t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB; \
             INSERT INTO t VALUES (1, 0), (2, 0), (3, 0)",
        )
        .await
        .unwrap();
    // A server thread to mark: the event scheduler.
    server
        .execute("", "SET GLOBAL event_scheduler = ON")
        .await
        .unwrap();
    let db = engine(server, "act");

    let sleeper = root(server, "act").await;
    let sleeper_id = i64::from(sleeper.id());
    let sleeping = background(sleeper, &["SELECT SLEEP(30)"]);
    let mut idle = root(server, "act").await;
    let idle_id = i64::from(idle.id());
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
    let mut a = root(server, "act").await;
    let mut b = root(server, "act").await;
    let mut c = root(server, "act").await;
    let (a_id, b_id, c_id) = (i64::from(a.id()), i64::from(b.id()), i64::from(c.id()));
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
            &SessionFilter::default(),
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
    server.create_database("mdl").await.unwrap();
    server
        .execute(
            "mdl",
            "CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO t VALUES (1)",
        )
        .await
        .unwrap();
    let db = engine(server, "mdl");
    let mut holder = root(server, "mdl").await;
    let holder_id = i64::from(holder.id());
    holder.query_drop("START TRANSACTION").await.unwrap();
    holder.query_drop("SELECT * FROM t").await.unwrap();

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
    let message = step.message.as_deref().unwrap_or_default();
    assert!(
        message.contains(&format!("connection {holder_id}")),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));

    let alter = root(server, "mdl").await;
    let alter_id = i64::from(alter.id());
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
    let message = step.message.as_deref().unwrap_or_default();
    assert!(
        message.contains(&format!("connection {holder_id}")) && message.contains("INSTALL SONAME"),
        "{message}"
    );
    let alter = root(server, "mdl").await;
    let alter_id = i64::from(alter.id());
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

async fn privileges(server: &EphemeralMariaDb) {
    let t = Instant::now();
    server.create_database("priv").await.unwrap();
    server
        .execute(
            "priv",
            &format!(
                "CREATE TABLE t (id INT PRIMARY KEY, v INT, KEY v (v)) ENGINE=InnoDB; \
                 INSERT INTO t VALUES (1, 1); \
                 CREATE USER watcher@'%' IDENTIFIED BY '{WATCHER_PASSWORD}'; \
                 GRANT PROCESS, SLAVE MONITOR ON *.* TO watcher@'%'; \
                 GRANT SELECT ON priv.* TO watcher@'%'; \
                 CREATE USER nopriv@'%' IDENTIFIED BY 'np'; \
                 GRANT SELECT ON priv.* TO nopriv@'%'; \
                 CREATE USER victim@'%' IDENTIFIED BY 'v'"
            ),
        )
        .await
        .unwrap();
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

    let victim = user_conn(server, "victim", "v").await;
    let e = watcher
        .end_sessions(
            &SessionFilter {
                user: Some("victim".into()),
                ..SessionFilter::default()
            },
            &EndOptions::new(EndMode::Terminate).with_grace(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("CONNECTION ADMIN"), "{e}");
    assert!(!format!("{e} {e:?}").contains(WATCHER_PASSWORD));
    drop(victim);
    eprintln!("privileges: {:.1} s", t.elapsed().as_secs_f64());
}

/// Rows and an order-independent digest of `db`'s `src` and `arch` together.
async fn digest(server: &EphemeralMariaDb, tables: &[&str]) -> (u64, u64) {
    let mut c = root(server, "arc").await;
    let union = tables
        .iter()
        .map(|t| format!("SELECT id, k, created, note FROM {t}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let (n, sum): (u64, Option<u64>) = c
        .query_first(format!(
            "SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', id, k, created, COALESCE(note, 'NULL')))) \
             FROM ({union}) x"
        ))
        .await
        .unwrap()
        .unwrap();
    (n, sum.unwrap_or(0))
}

async fn count(server: &EphemeralMariaDb, sql: &str) -> u64 {
    let mut c = root(server, "arc").await;
    c.query_first::<u64, _>(sql).await.unwrap().unwrap()
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

async fn archive(server: &EphemeralMariaDb) {
    let t = Instant::now();
    server.create_database("arc").await.unwrap();
    server
        .execute(
            "arc",
            "CREATE TABLE src (id INT PRIMARY KEY, k INT NOT NULL, created DATE NOT NULL, \
             note VARCHAR(40), KEY created (created)) ENGINE=InnoDB; \
             INSERT INTO src SELECT seq, seq % 97, '2015-01-01' + INTERVAL (seq % 3650) DAY, \
             IF(seq % 11 = 0, NULL, CONCAT('row ', seq)) FROM seq_1_to_100000; \
             CREATE TABLE nopk (a INT) ENGINE=InnoDB; \
             CREATE TABLE wrong (id INT PRIMARY KEY) ENGINE=InnoDB",
        )
        .await
        .unwrap();
    let db = engine(server, "arc");
    let original = digest(server, &["src"]).await;
    assert_eq!(original.0, 100_000);
    let predicate = "created < '2021-01-01'";
    let matching = count(
        server,
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
        let (n, _) = digest(server, &["src", "arch"]).await;
        assert_eq!(n, 100_000, "round {round}: no row lost or doubled");
    }
    drop(watch);
    let rest = db.archive(&spec).await.unwrap();
    assert_eq!(rest.remaining, 0, "{rest:?}");
    assert!(!rest.created_archive);
    assert_eq!(
        count(server, "SELECT COUNT(*) FROM arch").await,
        matching,
        "every matching row is in the archive"
    );
    assert_eq!(
        count(
            server,
            &format!("SELECT COUNT(*) FROM src WHERE {predicate}")
        )
        .await,
        0
    );
    assert_eq!(digest(server, &["src", "arch"]).await, original);
    let done = db
        .archive(&ArchiveSpec::new("src", predicate, "arch").with_dry_run(true))
        .await
        .unwrap();
    assert_eq!((done.rows, done.remaining), (0, 0));

    // A transaction open longer than the limit holds archiving back, up to max_wait.
    let mut old = root(server, "arc").await;
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
        e.to_string().contains(&format!("connection {}", old.id())),
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
        count(server, "SELECT COUNT(*) FROM pair_archive WHERE v < 3").await,
        180
    );
    assert_eq!(count(server, "SELECT COUNT(*) FROM pair").await, 120);
    eprintln!("archive: {:.1} s", t.elapsed().as_secs_f64());
}
