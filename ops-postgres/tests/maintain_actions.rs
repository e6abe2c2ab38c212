//! PostgreSQL maintenance actions and archiving against a real throwaway server:
//! VACUUM FULL refusing (after its lock steps) to wait behind an open transaction
//! while a reader measures how long its queries queue, a concurrent reindex that
//! fails and leaves `_ccnew` indexes which are dropped between its tries and after
//! it, a concurrent reindex stopped after its swap that does not rebuild again,
//! partitions worked on once each (an ANALYZE of a partitioned table that takes its
//! locks before any work), dry runs, analyze, amcheck (and without it), a missing
//! privilege, archives refused for cascading foreign keys and for a monitoring role
//! that does not inherit its rights, and an archive of a million rows killed ten
//! times (task aborted, backend terminated) under a concurrent updater, after which
//! no row is lost or doubled.
//!
//! One server for the whole binary (one test, scenarios one after another), each
//! scenario in its own database.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ops_core::ErrorKind;
use ops_core::maintain::{
    Action, ArchiveSpec, LockSteps, MaintainOptions, Maintenance, StepOutcome, StepProgress,
};
use ops_postgres::ephemeral::EphemeralPostgres;
use tokio_postgres::{Client, NoTls};

mod common;
use common::{session, timed};

async fn scalar_i64(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

fn steps(total_ms: u64, max_ms: u64) -> LockSteps {
    LockSteps::default()
        .with_total(Duration::from_millis(total_ms))
        .with_max_step(Duration::from_millis(max_ms))
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i.min(samples.len() - 1)]
}

/// A small xorshift generator: random kill points without a dependency; the seed is
/// printed so a failing run can be repeated.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_and_archiving_on_one_server() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    timed(
        "vacuum full under lock steps",
        vacuum_full_gives_way(&server),
    )
    .await;
    timed(
        "failed concurrent reindex",
        reindex_leftovers_are_dropped(&server),
    )
    .await;
    timed(
        "concurrent reindex stopped after its swap",
        reindex_after_the_swap_is_not_redone(&server),
    )
    .await;
    timed("partitions once each", partitions_once_each(&server)).await;
    timed("dry run, analyze, check", dry_run_analyze_check(&server)).await;
    timed("missing privilege", missing_privilege(&server)).await;
    timed("archive table shape", archive_shapes(&server)).await;
    timed("archive refusals", archive_refusals(&server)).await;
    timed("archive killed ten times", archive_survives_kills(&server)).await;
}

/// VACUUM FULL on a table a long open transaction reads: each try queues the readers
/// behind it for at most one lock step, and after 3 s it gives up naming the blocker.
async fn vacuum_full_gives_way(server: &EphemeralPostgres) {
    server.create_database("vac").await.expect("create db");
    let engine = server.engine_for("vac").expect("engine");
    let (admin, _) = session(server, "vac", None, "test-admin").await;
    admin
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, pad text NOT NULL);
             INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 50000) g;
             DELETE FROM t WHERE id % 10 <> 0;",
        )
        .await
        .expect("table t");
    let (blocker, blocker_pid) = session(server, "vac", None, "test-blocker").await;
    blocker
        .batch_execute("BEGIN; SELECT count(*) FROM t;")
        .await
        .expect("blocker reads t");

    let stop = Arc::new(AtomicBool::new(false));
    let (reader, _) = session(server, "vac", None, "test-reader").await;
    let reading = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                reader
                    .query_one("SELECT count(*) FROM t", &[])
                    .await
                    .expect("reader's query");
                latencies.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            latencies
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let full = Action::Vacuum {
        full: true,
        analyze: false,
    };
    let options = MaintainOptions::default()
        .with_tables(vec!["t".into()])
        .with_lock(steps(3000, 500));
    let started = Instant::now();
    let report = engine
        .maintain(full, &options)
        .await
        .expect("maintain runs");
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = reading.await.expect("reader task");
    eprintln!("{report:#?}");
    assert_eq!(report.steps.len(), 1);
    let step = &report.steps[0];
    assert_eq!(step.outcome, StepOutcome::LockTimeout, "{step:?}");
    assert!(!report.ok());
    let message = step.message.as_deref().unwrap_or_default();
    assert!(
        message.contains(&format!("pid {blocker_pid} ")),
        "the blocker {blocker_pid} is not named: {message}"
    );
    assert!(message.contains("test-blocker"), "{message}");
    assert!(step.lock_tries >= 4, "{step:?}");
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(6),
        "gave up after {took:?}, not about 3 s"
    );
    let worst = percentile(&mut latencies, 1.0);
    eprintln!(
        "MEASURED reader during lock-stepped VACUUM FULL (max step 500 ms): {} queries, worst {} ms, p50 {} ms",
        latencies.len(),
        worst.as_millis(),
        percentile(&mut latencies, 0.5).as_millis()
    );
    assert!(latencies.len() > 20, "the reader hardly ran");
    assert!(
        worst < Duration::from_millis(1500),
        "a reader waited {worst:?} behind the vacuum"
    );

    blocker.batch_execute("COMMIT").await.expect("commit");
    let report = engine
        .maintain(full, &options)
        .await
        .expect("maintain runs");
    let step = &report.steps[0];
    assert_eq!(step.outcome, StepOutcome::Done, "{step:?}");
    assert_eq!(step.lock_tries, 1);
    let (before, after) = (
        step.size_before.expect("size before"),
        step.size_after.expect("size after"),
    );
    assert!(after < before / 2, "VACUUM FULL: {before} -> {after} bytes");
    assert_eq!(step.sql, "VACUUM (FULL) \"public\".\"t\"");
}

async fn invalid_indexes(c: &Client, table: &str) -> Vec<String> {
    c.query(
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE NOT i.indisvalid AND (i.indrelid = $1::text::regclass
             OR i.indrelid = (SELECT reltoastrelid FROM pg_class WHERE oid = $1::text::regclass))
          ORDER BY 1",
        &[&table],
    )
    .await
    .expect("invalid indexes")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// REINDEX CONCURRENTLY waits for writers after it has created its new indexes: an
/// open writing transaction makes every try fail, each leaving invalid `_ccnew`
/// indexes. They cannot go while the writer is there; the next run drops them. And
/// when the writer goes during the lock steps, the leftovers of the failed tries go
/// in the same run.
async fn reindex_leftovers_are_dropped(server: &EphemeralPostgres) {
    server.create_database("reidx").await.expect("create db");
    let engine = server.engine_for("reidx").expect("engine");
    let (admin, _) = session(server, "reidx", None, "test-admin").await;
    admin
        .batch_execute(
            "CREATE TABLE u (id int PRIMARY KEY, email text NOT NULL UNIQUE);
             INSERT INTO u SELECT g, 'user' || g || '@example.org' FROM generate_series(1, 2000) g;",
        )
        .await
        .expect("table u");
    let concurrently = Action::Reindex { concurrently: true };
    let (writer, writer_pid) = session(server, "reidx", None, "test-writer").await;
    writer
        .batch_execute("BEGIN; INSERT INTO u VALUES (1000000, 'writer@example.org');")
        .await
        .expect("writer");
    let options = MaintainOptions::default()
        .with_tables(vec!["u".into()])
        .with_lock(steps(1500, 500));
    let started = Instant::now();
    let report = engine
        .maintain(concurrently, &options)
        .await
        .expect("maintain runs");
    let took = started.elapsed();
    eprintln!("{report:#?}");
    let step = report.steps.last().expect("a step");
    assert_eq!(step.outcome, StepOutcome::LockTimeout, "{step:?}");
    // The lock wait's total, one short try at the leftovers, and the bookkeeping.
    assert!(took < Duration::from_millis(1500 + 1500), "{took:?}");
    assert!(step.lock_tries > 1, "{step:?}");
    let message = step.message.as_deref().unwrap_or_default();
    assert!(message.contains(&format!("pid {writer_pid} ")), "{message}");
    let left = invalid_indexes(&admin, "u").await;
    assert!(
        left.iter().any(|i| i.ends_with("_ccnew")),
        "no leftover: {left:?}"
    );
    assert!(message.contains("_ccnew"), "leftovers not named: {message}");

    writer.batch_execute("ROLLBACK").await.expect("rollback");
    let options = options.with_lock(steps(10_000, 500));
    let report = engine
        .maintain(concurrently, &options)
        .await
        .expect("maintain runs");
    eprintln!("{report:#?}");
    assert!(report.ok(), "{report:#?}");
    assert_eq!(
        report.dropped_leftovers.len(),
        left.len(),
        "{:?} vs {left:?}",
        report.dropped_leftovers
    );
    assert!(
        report.steps[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("_ccnew"),
        "{report:#?}"
    );
    assert_eq!(invalid_indexes(&admin, "u").await, Vec::<String>::new());

    // The writer goes while the reindex tries: the leftovers of the failed tries go
    // before the next try (dropping them is the cheap test of whether the writer is
    // still there), all within the lock wait's total.
    writer
        .batch_execute("BEGIN; INSERT INTO u VALUES (1000000, 'writer@example.org');")
        .await
        .expect("writer");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        writer.batch_execute("ROLLBACK").await.expect("rollback");
        writer
    });
    let options = options.with_lock(steps(3000, 500));
    let started = Instant::now();
    let report = engine
        .maintain(concurrently, &options)
        .await
        .expect("maintain runs");
    let took = started.elapsed();
    let _writer = release.await.expect("release task");
    eprintln!("{report:#?}");
    let step = report.steps.last().expect("a step");
    assert_eq!(step.outcome, StepOutcome::Done, "{step:?}");
    assert!(step.lock_tries > 1, "{step:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        !report.dropped_leftovers.is_empty()
            && step
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("_ccnew"),
        "{report:#?}"
    );
    assert_eq!(invalid_indexes(&admin, "u").await, Vec::<String>::new());
    let dup = admin
        .execute("INSERT INTO u VALUES (3000, 'user1@example.org')", &[])
        .await;
    assert!(dup.is_err(), "the rebuilt unique index lets a duplicate in");
}

/// The ids of the indexes `pg_stat_progress_create_index` shows being built by a
/// REINDEX CONCURRENTLY, polled every 10 ms until `stop`: each build of a new index
/// has an id of its own.
fn watch_builds(observer: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<u32>> {
    tokio::spawn(async move {
        let mut seen = std::collections::BTreeSet::new();
        while !stop.load(Ordering::Relaxed) {
            for row in observer
                .query(
                    "SELECT index_relid FROM pg_stat_progress_create_index
                      WHERE command = 'REINDEX CONCURRENTLY'
                        AND phase LIKE 'building index%' AND index_relid <> 0",
                    &[],
                )
                .await
                .expect("progress")
            {
                seen.insert(row.get::<_, u32>(0));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen.into_iter().collect()
    })
}

/// A reader's open transaction lets REINDEX CONCURRENTLY build, validate and swap in
/// its new indexes, then stops it where it waits for every session holding a lock
/// before it drops the old ones. The rebuild is done: no try builds again; the old
/// copies (`_ccold`) are dropped once the reader has gone, within the lock wait's
/// total, and no invalid index is left. A snapshot held open stops a try after its
/// build: the next tries wait for it without building again, and the run ends
/// within the lock wait's total and one build, naming it.
async fn reindex_after_the_swap_is_not_redone(server: &EphemeralPostgres) {
    server.create_database("swap").await.expect("create db");
    let engine = server.engine_for("swap").expect("engine");
    let (admin, _) = session(server, "swap", None, "test-admin").await;
    // Integers only: no TOAST table, so exactly two indexes are rebuilt.
    admin
        .batch_execute(
            "CREATE TABLE r (id int PRIMARY KEY, v int NOT NULL);
             CREATE INDEX r_v ON r (v);
             INSERT INTO r SELECT g, g % 1000 FROM generate_series(1, 300000) g;",
        )
        .await
        .expect("table r");
    let (reader, reader_pid) = session(server, "swap", None, "test-reader").await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM r;")
        .await
        .expect("reader");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        reader.batch_execute("COMMIT").await.expect("commit");
        reader
    });
    let stop = Arc::new(AtomicBool::new(false));
    let builds = watch_builds(
        session(server, "swap", None, "test-observer").await.0,
        stop.clone(),
    );
    let options = MaintainOptions::default()
        .with_tables(vec!["r".into()])
        .with_lock(steps(3000, 500));
    let started = Instant::now();
    let report = engine
        .maintain(Action::Reindex { concurrently: true }, &options)
        .await
        .expect("maintain runs");
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let builds = builds.await.expect("observer");
    let _reader = release.await.expect("release");
    eprintln!("{report:#?}\nbuilt: {builds:?} in {took:?} (reader {reader_pid})");
    let step = report.steps.last().expect("a step");
    assert_eq!(step.outcome, StepOutcome::Done, "{step:?}");
    let message = step.message.as_deref().unwrap_or_default();
    assert!(message.contains("rebuilt"), "{message}");
    assert!(
        !builds.is_empty() && builds.len() <= 2,
        "each of the 2 indexes is built once, not once per try: {builds:?}"
    );
    assert!(
        report.dropped_leftovers.len() == 2
            && report
                .dropped_leftovers
                .iter()
                .all(|i| i.ends_with("_ccold")),
        "{report:#?}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(invalid_indexes(&admin, "r").await, Vec::<String>::new());
    assert_eq!(
        scalar_i64(&admin, "SELECT count(*) FROM r WHERE v = 7").await,
        300,
        "the rebuilt index answers"
    );

    // A transaction holding an old snapshot stops every try after its build and
    // validation. How long one rebuild takes here, with no one in the way:
    let report = engine
        .maintain(Action::Reindex { concurrently: true }, &options)
        .await
        .expect("maintain runs");
    assert!(report.ok(), "{report:#?}");
    let rebuild = Duration::from_secs_f64(report.steps[0].seconds);
    let (snapshot, snapshot_pid) = session(server, "swap", None, "test-snapshot").await;
    snapshot
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1;")
        .await
        .expect("snapshot");
    let stop = Arc::new(AtomicBool::new(false));
    let builds = watch_builds(
        session(server, "swap", None, "test-observer").await.0,
        stop.clone(),
    );
    let total = Duration::from_secs(2);
    let started = Instant::now();
    let report = engine
        .maintain(
            Action::Reindex { concurrently: true },
            &options.with_lock(steps(2000, 500)),
        )
        .await
        .expect("maintain runs");
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let builds = builds.await.expect("observer");
    snapshot.batch_execute("COMMIT").await.expect("commit");
    eprintln!("{report:#?}\nbuilt: {builds:?} in {took:?}, one rebuild {rebuild:?}");
    let step = report.steps.last().expect("a step");
    assert_eq!(step.outcome, StepOutcome::LockTimeout, "{step:?}");
    assert!(step.lock_tries > 1, "{step:?}");
    let message = step.message.as_deref().unwrap_or_default();
    assert!(
        message.contains(&format!("pid {snapshot_pid} ")),
        "{message}"
    );
    assert!(
        !builds.is_empty() && builds.len() <= 2,
        "built once, then waited for the snapshot to go: {builds:?}"
    );
    assert!(
        took < total + rebuild + Duration::from_secs(1),
        "{took:?}: the lock wait's total is {total:?}, one rebuild {rebuild:?}"
    );
    assert_eq!(invalid_indexes(&admin, "r").await, Vec::<String>::new());
}

/// Per-table counters of the statistics views.
async fn counts(c: &Client, column: &str) -> Vec<(String, i64)> {
    c.query(
        &format!(
            "SELECT relname::text, {column} FROM pg_stat_user_tables
              WHERE relname IN ('m1', 'm2', 'solo') ORDER BY 1"
        ),
        &[],
    )
    .await
    .expect("counters")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// A partitioned table and its partitions, named together or reached through it:
/// each partition is vacuumed and analyzed once; the partitioned table itself only
/// by ANALYZE (it gets statistics of its own). Its ANALYZE takes the lock on every
/// partition before any work: a lock held on the second partition makes tries fail
/// before the first partition is analyzed, never after.
async fn partitions_once_each(server: &EphemeralPostgres) {
    server.create_database("parts").await.expect("create db");
    let engine = server.engine_for("parts").expect("engine");
    let (admin, _) = session(server, "parts", None, "test-admin").await;
    admin
        .batch_execute(
            "CREATE TABLE m (id int, k int) PARTITION BY RANGE (id);
             CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (1000)
               WITH (autovacuum_enabled = off);
             CREATE TABLE m2 PARTITION OF m FOR VALUES FROM (1000) TO (2000)
               WITH (autovacuum_enabled = off);
             CREATE TABLE solo (id int PRIMARY KEY) WITH (autovacuum_enabled = off);
             INSERT INTO m SELECT g, g % 7 FROM generate_series(0, 1999) g;
             INSERT INTO solo SELECT generate_series(1, 10);",
        )
        .await
        .expect("tables");
    let objects = |r: &ops_core::maintain::MaintainReport| -> Vec<String> {
        r.steps.iter().map(|s| s.object.clone()).collect()
    };

    // Every table of the database: the partitions and the plain table, once each.
    let dry = engine
        .maintain(
            Action::Vacuum {
                full: false,
                analyze: false,
            },
            &MaintainOptions::default().with_dry_run(true),
        )
        .await
        .expect("dry run");
    assert_eq!(objects(&dry), ["public.m1", "public.m2", "public.solo"]);

    let both = MaintainOptions::default().with_tables(vec!["m".into(), "public.m1".into()]);
    let vacuum = Action::Vacuum {
        full: false,
        analyze: false,
    };
    let report = engine.maintain(vacuum, &both).await.expect("vacuum");
    assert!(report.ok(), "{report:#?}");
    assert_eq!(objects(&report), ["public.m1", "public.m2"]);
    assert_eq!(
        counts(&admin, "vacuum_count").await,
        [
            ("m1".to_owned(), 1),
            ("m2".to_owned(), 1),
            ("solo".to_owned(), 0)
        ]
    );

    // ANALYZE of the partitioned table covers its partitions, named or not.
    let report = engine
        .maintain(
            Action::Analyze,
            &MaintainOptions::default().with_tables(vec!["m".into(), "m2".into()]),
        )
        .await
        .expect("analyze");
    assert!(report.ok(), "{report:#?}");
    assert_eq!(objects(&report), ["public.m"]);
    assert_eq!(
        counts(&admin, "analyze_count").await,
        [
            ("m1".to_owned(), 1),
            ("m2".to_owned(), 1),
            ("solo".to_owned(), 0)
        ]
    );
    let parent_stats = "SELECT count(*) FROM pg_stats WHERE tablename = 'm' AND inherited";
    assert!(scalar_i64(&admin, parent_stats).await > 0);

    // VACUUM ANALYZE: each partition vacuumed once, analyzed once (with the
    // partitioned table).
    let report = engine
        .maintain(
            Action::Vacuum {
                full: false,
                analyze: true,
            },
            &both,
        )
        .await
        .expect("vacuum analyze");
    assert!(report.ok(), "{report:#?}");
    assert_eq!(objects(&report), ["public.m1", "public.m2", "public.m"]);
    assert_eq!(report.steps[0].sql, "VACUUM \"public\".\"m1\"");
    assert_eq!(
        counts(&admin, "vacuum_count").await,
        [
            ("m1".to_owned(), 2),
            ("m2".to_owned(), 2),
            ("solo".to_owned(), 0)
        ]
    );
    assert_eq!(
        counts(&admin, "analyze_count").await,
        [
            ("m1".to_owned(), 2),
            ("m2".to_owned(), 2),
            ("solo".to_owned(), 0)
        ]
    );

    // A session holds a lock on m2 that ANALYZE conflicts with: every try fails on
    // the LOCK, naming it, and m1 is not analyzed by a try that failed later.
    let (blocker, blocker_pid) = session(server, "parts", None, "test-blocker").await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE m2 IN SHARE UPDATE EXCLUSIVE MODE")
        .await
        .expect("blocker");
    let only_m = MaintainOptions::default().with_tables(vec!["m".into()]);
    let report = engine
        .maintain(Action::Analyze, &only_m.clone().with_lock(steps(600, 200)))
        .await
        .expect("analyze");
    let step = &report.steps[0];
    assert_eq!(step.outcome, StepOutcome::LockTimeout, "{step:?}");
    assert!(step.lock_tries > 1, "{step:?}");
    let message = step.message.as_deref().unwrap_or_default();
    assert!(
        message.contains(&format!("pid {blocker_pid} ")),
        "{message}"
    );
    assert!(message.contains("test-blocker"), "{message}");
    assert_eq!(
        counts(&admin, "analyze_count").await,
        [
            ("m1".to_owned(), 2),
            ("m2".to_owned(), 2),
            ("solo".to_owned(), 0)
        ]
    );
    // It lets go while the tries go on: one ANALYZE of each, in the end.
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        blocker.batch_execute("COMMIT").await.expect("commit");
        blocker
    });
    let report = engine
        .maintain(Action::Analyze, &only_m.with_lock(steps(3000, 500)))
        .await
        .expect("analyze");
    let _blocker = release.await.expect("release");
    let step = &report.steps[0];
    assert_eq!(step.outcome, StepOutcome::Done, "{step:?}");
    assert!(step.lock_tries > 1, "{step:?}");
    assert_eq!(
        counts(&admin, "analyze_count").await,
        [
            ("m1".to_owned(), 3),
            ("m2".to_owned(), 3),
            ("solo".to_owned(), 0)
        ]
    );
}

/// A dry run plans and changes nothing; analyze records itself; amcheck checks each
/// B-tree index, and says how to install it when it is missing.
async fn dry_run_analyze_check(server: &EphemeralPostgres) {
    server.create_database("plain").await.expect("create db");
    let engine = server.engine_for("plain").expect("engine");
    let (admin, _) = session(server, "plain", None, "test-admin").await;
    admin
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY, v text);
             CREATE INDEX a_v ON a (v);
             CREATE TABLE b (id int PRIMARY KEY);
             CREATE INDEX \"b.odd'name\" ON b (id);
             INSERT INTO a SELECT g, g::text FROM generate_series(1, 5000) g;
             INSERT INTO b SELECT generate_series(1, 100);",
        )
        .await
        .expect("tables");
    let node = "SELECT pg_relation_filenode('a')::int8";
    let before = scalar_i64(&admin, node).await;
    for action in [
        Action::Vacuum {
            full: true,
            analyze: true,
        },
        Action::Reindex {
            concurrently: false,
        },
        Action::Analyze,
    ] {
        let report = engine
            .maintain(action, &MaintainOptions::default().with_dry_run(true))
            .await
            .expect("dry run");
        assert!(report.dry_run);
        assert_eq!(report.steps.len(), 2, "{report:#?}");
        assert!(
            report
                .steps
                .iter()
                .all(|s| s.outcome == StepOutcome::Planned && s.seconds == 0.0),
            "{report:#?}"
        );
    }
    assert_eq!(
        scalar_i64(&admin, node).await,
        before,
        "a dry run rewrote a"
    );
    let analyzed =
        "SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'a' AND last_analyze IS NOT NULL";
    assert_eq!(
        scalar_i64(&admin, analyzed).await,
        0,
        "a dry run analyzed a"
    );

    let report = engine
        .maintain(
            Action::Analyze,
            &MaintainOptions::default().with_tables(vec!["public.a".into()]),
        )
        .await
        .expect("analyze");
    assert!(report.ok(), "{report:#?}");
    assert_eq!(report.steps[0].sql, "ANALYZE \"public\".\"a\"");
    let deadline = Instant::now() + Duration::from_secs(5);
    while scalar_i64(&admin, analyzed).await == 0 {
        assert!(Instant::now() < deadline, "last_analyze not set");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let report = engine
        .maintain(Action::Check, &MaintainOptions::default())
        .await
        .expect("check runs");
    assert!(!report.ok(), "an unchecked table passed: {report:#?}");
    // Not a verdict on the data (which would read as damage found): not supported
    // here, saying how to make it so.
    assert!(
        report
            .steps
            .iter()
            .all(|s| s.outcome == StepOutcome::NotSupported
                && s.message
                    .as_deref()
                    .unwrap_or_default()
                    .contains("CREATE EXTENSION amcheck")),
        "{report:#?}"
    );
    admin
        .batch_execute("CREATE EXTENSION amcheck")
        .await
        .expect("amcheck");
    let report = engine
        .maintain(Action::Check, &MaintainOptions::default())
        .await
        .expect("check runs");
    eprintln!("{report:#?}");
    assert!(report.ok(), "{report:#?}");
    let objects: Vec<&str> = report.steps.iter().map(|s| s.object.as_str()).collect();
    assert_eq!(
        objects,
        [
            "public.a_pkey",
            "public.a_v",
            "public.\"b.odd'name\"",
            "public.b_pkey"
        ]
    );
    assert!(report.steps.iter().all(|s| s.outcome == StepOutcome::Done));
    // The index's name reaches the server as a parameter, not inside the SQL text.
    assert!(
        report
            .steps
            .iter()
            .all(|s| s.sql.contains("bt_index_check($1::text::regclass, true)")),
        "{report:#?}"
    );

    for action in [Action::Optimize, Action::Repair] {
        let err = engine
            .maintain(action, &MaintainOptions::default())
            .await
            .expect_err("not on PostgreSQL");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("reindex"), "{err}");
    }
}

/// A table the user does not own fails with the grant to ask for; the user's own
/// table is still vacuumed.
async fn missing_privilege(server: &EphemeralPostgres) {
    server.create_database("priv").await.expect("create db");
    let (admin, _) = session(server, "priv", None, "test-admin").await;
    admin
        .batch_execute(
            "CREATE ROLE maint LOGIN PASSWORD 'maint-pw';
             GRANT CREATE ON SCHEMA public TO maint;
             CREATE TABLE theirs (id int PRIMARY KEY);
             GRANT SELECT ON theirs TO maint;",
        )
        .await
        .expect("role");
    let url = format!(
        "postgres://maint:maint-pw@127.0.0.1:{}/priv?sslmode=disable",
        server.port()
    );
    let (own, conn) = tokio_postgres::connect(&url, NoTls).await.expect("maint");
    tokio::spawn(conn);
    own.batch_execute("CREATE TABLE mine (id int PRIMARY KEY)")
        .await
        .expect("mine");
    let engine = ops_postgres::PostgresEngine::new(&url).expect("url");
    let report = engine
        .maintain(
            Action::Vacuum {
                full: false,
                analyze: true,
            },
            &MaintainOptions::default(),
        )
        .await
        .expect("vacuum runs");
    eprintln!("{report:#?}");
    let by = |name: &str| {
        report
            .steps
            .iter()
            .find(|s| s.object.contains(name))
            .unwrap_or_else(|| panic!("no step on {name}: {report:#?}"))
    };
    assert_eq!(by("mine").outcome, StepOutcome::Done);
    let theirs = by("theirs");
    assert_eq!(theirs.outcome, StepOutcome::Failed);
    let message = theirs.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("owner") && message.contains("postgres"),
        "{message}"
    );
}

/// The archive table is created like the source (its primary key, no tie to the
/// source's sequence); an archive of another shape and a source without a primary key
/// are refused; a dry run counts and changes nothing.
async fn archive_shapes(server: &EphemeralPostgres) {
    server.create_database("shapes").await.expect("create db");
    let engine = server.engine_for("shapes").expect("engine");
    let (admin, _) = session(server, "shapes", None, "test-admin").await;
    admin
        .batch_execute(
            "CREATE TABLE orders (id serial PRIMARY KEY, placed date NOT NULL,
                                  amount numeric(10,2) CHECK (amount >= 0), note text DEFAULT 'n/a');
             INSERT INTO orders (placed, amount)
               SELECT date '2020-01-01' + g, g FROM generate_series(1, 1000) g;
             CREATE TABLE wrong (id int PRIMARY KEY, placed date, amount int, note text);
             CREATE TABLE nokey (id int, placed date);",
        )
        .await
        .expect("tables");
    let old = "placed < date '2021-01-01'";
    let spec = ArchiveSpec::new("orders", old, "orders_archive").with_batch(100);
    let dry = engine
        .archive(&spec.clone().with_dry_run(true))
        .await
        .expect("dry run");
    assert!(dry.dry_run && !dry.created_archive);
    // Remaining: what a real run would leave matching.
    assert_eq!((dry.rows, dry.batches, dry.remaining), (365, 0, 0));
    let careful = engine
        .archive(&spec.clone().with_dry_run(true).with_max_rows(Some(100)))
        .await
        .expect("dry run");
    assert_eq!(
        (careful.rows, careful.batches, careful.remaining),
        (100, 0, 265)
    );
    assert_eq!(
        scalar_i64(
            &admin,
            "SELECT count(*) FROM pg_class WHERE relname = 'orders_archive'"
        )
        .await,
        0
    );
    assert_eq!(
        scalar_i64(&admin, "SELECT count(*) FROM orders").await,
        1000
    );

    let report = engine.archive(&spec).await.expect("archive");
    assert!(report.created_archive);
    assert_eq!((report.rows, report.batches, report.remaining), (365, 4, 0));
    let shape = |t: &str| {
        format!(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || ' ' || attnotnull, ', ' ORDER BY attnum)
               FROM pg_attribute WHERE attrelid = '{t}'::regclass AND attnum > 0 AND NOT attisdropped"
        )
    };
    let text = |sql: String| {
        let admin = &admin;
        async move {
            admin
                .query_one(&sql, &[])
                .await
                .expect("query")
                .get::<_, Option<String>>(0)
        }
    };
    assert_eq!(
        text(shape("orders")).await,
        text(shape("orders_archive")).await
    );
    assert_eq!(
        text("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'orders_archive'::regclass AND contype = 'p'".into()).await.as_deref(),
        Some("PRIMARY KEY (id)")
    );
    assert_eq!(
        text("SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'orders_archive'::regclass ORDER BY adnum".into()).await.as_deref(),
        Some("'n/a'::text"),
        "the archive keeps plain defaults and none that draws from the source's sequence"
    );
    assert_eq!(
        scalar_i64(
            &admin,
            "SELECT count(*) FROM orders_archive WHERE placed < date '2021-01-01'"
        )
        .await,
        365
    );
    // Running again finds nothing more.
    let again = engine.archive(&spec).await.expect("again");
    assert_eq!(
        (again.rows, again.remaining, again.created_archive),
        (0, 0, false)
    );

    let err = engine
        .archive(&ArchiveSpec::new("orders", "true", "wrong"))
        .await
        .expect_err("another shape");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("amount"), "{err}");
    let err = engine
        .archive(&ArchiveSpec::new("nokey", "true", "nokey_archive"))
        .await
        .expect_err("no primary key");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.message().contains("nokey") && err.message().contains("primary key"),
        "{err}"
    );
    assert_eq!(scalar_i64(&admin, "SELECT count(*) FROM orders").await, 635);

    // An old transaction of another session holds the archiver back: it waits, and
    // gives up after max_wait naming the session; when the transaction ends within
    // max_wait, the wait is counted and the rows move.
    let (old, old_pid) = session(server, "shapes", None, "test-old-transaction").await;
    old.batch_execute("BEGIN; SELECT 1")
        .await
        .expect("old transaction");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let spec = ArchiveSpec::new("orders", "placed < date '2021-07-01'", "orders_archive")
        .with_limits(Duration::from_secs(10), Duration::from_secs(1))
        .with_max_wait(Duration::from_millis(1500));
    let started = Instant::now();
    let err = engine.archive(&spec).await.expect_err("held back");
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert!(err.message().contains(&format!("pid {old_pid} ")), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        old.batch_execute("COMMIT").await.expect("commit");
        old
    });
    let report = engine
        .archive(&spec.with_max_wait(Duration::from_secs(20)))
        .await
        .expect("archive after the wait");
    let _old = release.await.expect("release");
    assert!(report.throttled_seconds >= 0.5, "{report:?}");
    assert_eq!((report.rows, report.remaining), (181, 0), "{report:?}");

    // max_rows stops early and says what is left.
    let report = engine
        .archive(
            &ArchiveSpec::new("orders", "true", "orders_archive")
                .with_batch(20)
                .with_max_rows(Some(50)),
        )
        .await
        .expect("a first, careful run");
    assert_eq!(
        (report.rows, report.batches, report.remaining),
        (50, 3, 404),
        "{report:?}"
    );
}

/// Archives that must not start: foreign keys that point at the source with an
/// action on delete (the archiver's deletes would delete or change other tables'
/// rows), named, whether a dry run or not; a plain reference is fine, and the batch
/// that would break it fails and moves nothing. And a member of pg_monitor that does
/// not inherit its rights cannot see what the archiver waits for.
async fn archive_refusals(server: &EphemeralPostgres) {
    server.create_database("refs").await.expect("create db");
    let engine = server.engine_for("refs").expect("engine");
    let (admin, _) = session(server, "refs", None, "test-admin").await;
    admin
        .batch_execute(
            "CREATE TABLE customers (id int PRIMARY KEY, since date NOT NULL);
             INSERT INTO customers SELECT g, date '2010-01-01' + g FROM generate_series(1, 100) g;
             CREATE TABLE orders (id int PRIMARY KEY,
               customer int REFERENCES customers ON DELETE CASCADE);
             CREATE TABLE notes (id int PRIMARY KEY,
               customer int CONSTRAINT notes_of REFERENCES customers ON DELETE SET NULL);
             CREATE TABLE invoices (id int PRIMARY KEY, customer int REFERENCES customers);
             INSERT INTO orders VALUES (1, 1), (2, 50);
             INSERT INTO notes VALUES (1, 2);
             INSERT INTO invoices VALUES (1, 90);",
        )
        .await
        .expect("tables");
    let spec = ArchiveSpec::new("customers", "id <= 80", "customers_archive");
    for dry_run in [true, false] {
        let err = engine
            .archive(&spec.clone().with_dry_run(dry_run))
            .await
            .expect_err("cascading references");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        let message = err.message();
        for part in [
            "orders_customer_fkey on public.orders (ON DELETE CASCADE)",
            "notes_of on public.notes (ON DELETE SET NULL)",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        assert!(!message.contains("invoices"), "{message}");
    }
    assert_eq!(
        scalar_i64(
            &admin,
            "SELECT (SELECT count(*) FROM customers) + (SELECT count(*) FROM orders)
                    + (SELECT count(*) FROM notes WHERE customer IS NOT NULL)"
        )
        .await,
        100 + 2 + 1,
        "nothing moved, nothing cascaded"
    );
    assert_eq!(
        scalar_i64(
            &admin,
            "SELECT count(*) FROM pg_class WHERE relname = 'customers_archive'"
        )
        .await,
        0
    );

    // A plain reference: the rows no one refers to move; a batch with a row that
    // is referred to fails and moves nothing.
    admin
        .batch_execute(
            "ALTER TABLE orders DROP CONSTRAINT orders_customer_fkey;
             ALTER TABLE notes DROP CONSTRAINT notes_of;",
        )
        .await
        .expect("drop the cascading keys");
    let report = engine.archive(&spec).await.expect("archive");
    assert_eq!((report.rows, report.remaining), (80, 0), "{report:?}");
    let err = engine
        .archive(&ArchiveSpec::new("customers", "id > 85", "customers_archive").with_batch(100))
        .await
        .expect_err("invoice 1 refers to customer 90");
    assert!(err.to_string().contains("invoices"), "{err}");
    assert_eq!(
        scalar_i64(&admin, "SELECT count(*) FROM customers").await,
        20
    );

    // pg_monitor without its rights (NOINHERIT) is as blind as no pg_monitor.
    admin
        .batch_execute(
            "CREATE ROLE archer LOGIN PASSWORD 'archer-pw' NOINHERIT IN ROLE pg_monitor;
             GRANT SELECT, INSERT, UPDATE, DELETE ON customers, customers_archive TO archer;",
        )
        .await
        .expect("role");
    let archer = ops_postgres::PostgresEngine::new(&format!(
        "postgres://archer:archer-pw@127.0.0.1:{}/refs?sslmode=disable",
        server.port()
    ))
    .expect("url");
    let some = ArchiveSpec::new("customers", "id BETWEEN 81 AND 82", "customers_archive");
    let err = archer.archive(&some).await.expect_err("blind");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.message().contains("GRANT pg_monitor TO archer"),
        "{err}"
    );
    admin
        .batch_execute("ALTER ROLE archer INHERIT")
        .await
        .expect("inherit");
    let report = archer.archive(&some).await.expect("sees now");
    assert_eq!(report.rows, 2, "{report:?}");
}

/// Row count, distinct ids, and an order-independent digest of the columns the
/// updater does not touch.
const DIGEST: &str = "SELECT count(*)::int8, count(DISTINCT id)::int8,
        sum(hashtext(id::text || ':' || payload)::int8)::int8, sum(touched)::int8
   FROM (SELECT id, payload, touched FROM big UNION ALL
         SELECT id, payload, touched FROM big_archive) AS both_tables";

/// A million rows, 90 % of them archived in batches of 5000 while another session
/// updates random rows; the archiver is aborted at random points and its backend
/// terminated, ten times, and resumed. At the end every row is in exactly one of the
/// tables, unchanged, and every committed update is in it.
async fn archive_survives_kills(server: &EphemeralPostgres) {
    const ROWS: i64 = 1_000_000;
    server.create_database("arch").await.expect("create db");
    let engine = server.engine_for("arch").expect("engine");
    let (admin, _) = session(server, "arch", None, "test-admin").await;
    let started = Instant::now();
    admin
        .batch_execute(&format!(
            "CREATE TABLE big (id int8 PRIMARY KEY, payload text NOT NULL, touched int NOT NULL DEFAULT 0);
             INSERT INTO big SELECT g, md5(g::text), 0 FROM generate_series(1, {ROWS}) g;"
        ))
        .await
        .expect("big");
    admin
        .batch_execute("VACUUM ANALYZE big")
        .await
        .expect("vacuum big");
    eprintln!(
        "loaded {ROWS} rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let digest_before: i64 = admin
        .query_one(
            "SELECT sum(hashtext(id::text || ':' || payload)::int8)::int8 FROM big",
            &[],
        )
        .await
        .expect("digest")
        .get(0);

    // The updater: random rows, each update its own transaction.
    let stop = Arc::new(AtomicBool::new(false));
    let archiving = Arc::new(AtomicBool::new(false));
    let applied = Arc::new(AtomicU64::new(0));
    let samples: Arc<Mutex<(Vec<Duration>, Vec<Duration>)>> = Arc::default();
    let (updater, _) = session(server, "arch", None, "test-updater").await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("kill schedule seed {seed}");
    let updating = {
        let (stop, archiving, applied, samples) = (
            stop.clone(),
            archiving.clone(),
            applied.clone(),
            samples.clone(),
        );
        tokio::spawn(async move {
            let mut rng = Rng(seed.rotate_left(17) | 1);
            let update = updater
                .prepare("UPDATE big SET touched = touched + 1 WHERE id = $1")
                .await
                .expect("prepare");
            while !stop.load(Ordering::Relaxed) {
                let id = rng.range(1, ROWS as u64 + 1) as i64;
                let during = archiving.load(Ordering::Relaxed);
                let t = Instant::now();
                let n = updater.execute(&update, &[&id]).await.expect("update");
                let took = t.elapsed();
                applied.fetch_add(n, Ordering::Relaxed);
                {
                    let mut s = samples.lock().expect("samples");
                    if during {
                        s.1.push(took)
                    } else {
                        s.0.push(took)
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    archiving.store(true, Ordering::Relaxed);
    let spec = ArchiveSpec::new("big", "id % 10 <> 0", "big_archive").with_batch(5000);
    let mut rng = Rng(seed);
    let archive_started = Instant::now();
    let mut kills = 0;
    let mut terminated = 0;
    for round in 0..10 {
        let spawned: String = admin
            .query_one("SELECT clock_timestamp()::text", &[])
            .await
            .expect("clock")
            .get(0);
        let task = {
            let (engine, spec) = (engine.clone(), spec.clone());
            tokio::spawn(async move { engine.archive(&spec).await })
        };
        let delay = Duration::from_millis(rng.range(150, 1800));
        tokio::time::sleep(delay).await;
        if round % 3 == 1 {
            // Terminate this round's archiver backend from another session (an
            // earlier, aborted one may still be finishing its statement).
            let n: i64 = admin
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                      WHERE application_name = 'dbops-maintain' AND datname = 'arch'
                        AND backend_start >= $1::text::timestamptz",
                    &[&spawned],
                )
                .await
                .expect("terminate")
                .get(0);
            if n == 0 {
                task.abort();
            }
            let outcome = task
                .await
                .map_err(|_| "aborted")
                .map(|r| r.map(|r| r.rows).map_err(|e| e.kind()));
            eprintln!("round {round}: terminated {n} backend(s) after {delay:?}: {outcome:?}");
            if n > 0 {
                terminated += 1;
                kills += 1;
            }
        } else {
            task.abort();
            let outcome = task.await;
            eprintln!(
                "round {round}: aborted after {delay:?} (finished first: {})",
                outcome.is_ok()
            );
            if outcome.is_err() {
                kills += 1;
            }
        }
    }
    let report = engine.archive(&spec).await.expect("the last run finishes");
    let archive_time = archive_started.elapsed();
    archiving.store(false, Ordering::Relaxed);
    eprintln!("{report:#?}");
    assert_eq!(report.remaining, 0);
    stop.store(true, Ordering::Relaxed);
    updating.await.expect("updater");

    let row = admin.query_one(DIGEST, &[]).await.expect("digest");
    let (count, distinct, digest, touched): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(count, ROWS, "rows lost or doubled");
    assert_eq!(distinct, ROWS, "a row is in both tables");
    assert_eq!(digest, digest_before, "a row's content changed");
    let applied = applied.load(Ordering::Relaxed) as i64;
    assert_eq!(touched, applied, "an update that committed is missing");
    assert_eq!(
        scalar_i64(&admin, "SELECT count(*) FROM big WHERE id % 10 <> 0").await,
        0
    );
    assert_eq!(
        scalar_i64(&admin, "SELECT count(*) FROM big").await,
        ROWS / 10
    );
    assert!(kills >= 8, "only {kills} kills landed");
    assert!(terminated >= 3, "only {terminated} backends terminated");

    let (mut without, mut with) = std::mem::take(&mut *samples.lock().expect("samples"));
    eprintln!(
        "MEASURED archive: {} rows moved of {ROWS}, {kills} kills ({terminated} backend terminations), {:.1} s; \
         updater p99 without archiver {:.1} ms ({} updates), with archiver {:.1} ms ({} updates), max with {:.1} ms",
        scalar_i64(&admin, "SELECT count(*) FROM big_archive").await,
        archive_time.as_secs_f64(),
        percentile(&mut without, 0.99).as_secs_f64() * 1e3,
        without.len(),
        percentile(&mut with, 0.99).as_secs_f64() * 1e3,
        with.len(),
        percentile(&mut with, 1.0).as_secs_f64() * 1e3,
    );

    // Progress of a longer step: rebuilding the archive's indexes.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let progress = {
        let seen = seen.clone();
        Arc::new(move |p: &StepProgress| {
            seen.lock().expect("progress").push(format!(
                "{} {} {:?}/{:?}",
                p.object, p.phase, p.done, p.total
            ));
        })
    };
    let report = engine
        .maintain(
            Action::Vacuum {
                full: true,
                analyze: false,
            },
            &MaintainOptions::default()
                .with_tables(vec!["big_archive".into()])
                .with_progress(progress),
        )
        .await
        .expect("vacuum full");
    let seen = seen.lock().expect("progress").clone();
    eprintln!(
        "progress of {:.1} s VACUUM FULL: {seen:?}",
        report.steps[0].seconds
    );
    assert!(report.ok(), "{report:#?}");
    // The first look comes after half a second.
    if report.steps[0].seconds > 1.0 {
        assert!(
            !seen.is_empty(),
            "no progress in {:.1} s",
            report.steps[0].seconds
        );
    }
}
