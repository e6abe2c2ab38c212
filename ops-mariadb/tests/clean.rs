//! Restore with clean into a database that holds more than the backup: the target
//! ends up holding exactly what the backup held and the report names what was
//! dropped; without clean the target is refused with its objects named; a busy table
//! or a foreign key from another database stops the clean with nothing dropped.
//! Checked through information_schema, independently of dbops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use ops_core::testkit::engine::dump_to_memory;
use ops_core::{DatabaseEngine, DumpOptions, ErrorKind, RestoreOptions, TableRef};
use ops_mariadb::MariaDbEngine;
use ops_mariadb::ephemeral::EphemeralMariaDb;

/// Tables a, b (b references a), a view over both, a procedure; 100 and 50 rows.
const SOURCE: &str = "
    CREATE TABLE a (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB;
    CREATE TABLE b (id INT PRIMARY KEY, a_id INT, FOREIGN KEY (a_id) REFERENCES a (id)) ENGINE=InnoDB;
    CREATE VIEW ab AS SELECT a.id, a.v, b.id AS b_id FROM a JOIN b ON b.a_id = a.id;
    CREATE PROCEDURE kept_proc() SELECT 1;
    INSERT INTO a (v) SELECT CONCAT('row ', seq) FROM seq_1_to_100;
    INSERT INTO b SELECT seq, seq FROM seq_1_to_50;";

/// Every object of `db`, one line each.
async fn objects(server: &EphemeralMariaDb, db: &str) -> Vec<String> {
    let mut c = common::connect(server, db).await;
    let rows: Vec<String> = c
        .query(format!(
            "SELECT CONCAT(TABLE_TYPE, ' ', TABLE_NAME) FROM information_schema.TABLES \
              WHERE TABLE_SCHEMA = '{db}' \
             UNION ALL SELECT CONCAT(ROUTINE_TYPE, ' ', ROUTINE_NAME) \
               FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = '{db}' \
             UNION ALL SELECT CONCAT('TRIGGER ', TRIGGER_NAME, ' ON ', EVENT_OBJECT_TABLE) \
               FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{db}' \
             UNION ALL SELECT CONCAT('EVENT ', EVENT_NAME) \
               FROM information_schema.EVENTS WHERE EVENT_SCHEMA = '{db}' \
             ORDER BY 1"
        ))
        .await
        .expect("objects");
    c.disconnect().await.ok();
    rows
}

async fn count(server: &EphemeralMariaDb, db: &str, table: &str) -> u64 {
    let mut c = common::connect(server, db).await;
    let n: Option<u64> = c
        .query_first(format!("SELECT COUNT(*) FROM `{table}`"))
        .await
        .expect("count");
    c.disconnect().await.ok();
    n.expect("a row")
}

async fn source_and_dump(server: &EphemeralMariaDb) -> std::sync::Arc<dyn ops_core::StreamSource> {
    server.execute("", "CREATE DATABASE src").await.unwrap();
    common::exec(server, "src", SOURCE).await;
    let source = MariaDbEngine::new(&server.url_for("src")).unwrap();
    let (dump, _) = dump_to_memory(&source, &DumpOptions::default()).await;
    dump.into_source()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_leaves_exactly_what_the_backup_holds() {
    let server = common::server().await;
    let dump = source_and_dump(&server).await;

    // The target: a table of the backup's name but another shape, and objects of
    // every kind the backup lacks; extra tables with foreign keys between them and to
    // a table of the backup's name; a trigger on that table.
    server.execute("", "CREATE DATABASE tgt").await.unwrap();
    common::exec(
        &server,
        "tgt",
        "CREATE TABLE a (id INT PRIMARY KEY, other TEXT) ENGINE=InnoDB;
         INSERT INTO a VALUES (1, 'x'), (2, 'y');
         CREATE TABLE c (id INT PRIMARY KEY, a_id INT, FOREIGN KEY (a_id) REFERENCES a (id)) ENGINE=InnoDB;
         CREATE TABLE d (id INT PRIMARY KEY, c_id INT, FOREIGN KEY (c_id) REFERENCES c (id)) ENGINE=InnoDB;
         INSERT INTO c VALUES (1, 1); INSERT INTO d VALUES (1, 1);
         CREATE VIEW extra_view AS SELECT * FROM c;
         CREATE SEQUENCE extra_seq;
         CREATE PROCEDURE kept_proc() SELECT 2;
         CREATE PROCEDURE extra_proc() SELECT 3;
         CREATE FUNCTION extra_fn(n INT) RETURNS INT DETERMINISTIC RETURN n + 1;
         CREATE TRIGGER extra_trg BEFORE INSERT ON a FOR EACH ROW SET NEW.other = 'trg';
         CREATE EVENT extra_ev ON SCHEDULE EVERY 1 DAY DISABLE DO SELECT 1;",
    )
    .await;
    let target = MariaDbEngine::new(&server.url_for("tgt")).unwrap();

    // Without clean: refused, naming what the target holds.
    let err = target
        .restore(dump.clone(), &RestoreOptions::default())
        .await
        .expect_err("a non-empty target");
    assert_eq!(err.kind(), ErrorKind::TargetNotEmpty, "{err}");
    for name in [
        "table `a`",
        "table `c`",
        "view `extra_view`",
        "event `extra_ev`",
    ] {
        assert!(err.message().contains(name), "{name} not named: {err}");
    }
    assert!(!err.message().contains("--"), "{err}");
    assert_eq!(count(&server, "tgt", "d").await, 1);

    let report = target
        .restore(
            dump.clone(),
            &RestoreOptions::default().with_clean(true).with_jobs(2),
        )
        .await
        .expect("clean restore");

    let src_objects = objects(&server, "src").await;
    assert_eq!(
        src_objects,
        [
            "BASE TABLE a",
            "BASE TABLE b",
            "PROCEDURE kept_proc",
            "VIEW ab"
        ]
    );
    assert_eq!(
        objects(&server, "tgt").await,
        src_objects,
        "the target holds other objects than the backup"
    );
    common::assert_same_text(
        "schema",
        &common::schema_dump(&server, "src"),
        &common::schema_dump(&server, "tgt"),
    );
    let hashes = common::content_hashes(&server, "src").await;
    assert_eq!(hashes["a"].0, 100);
    assert_eq!(hashes["b"].0, 50);
    assert_eq!(common::content_hashes(&server, "tgt").await, hashes);

    // The report names each object the backup did not hold, and none it did.
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    let (head, names) = report.warnings[0]
        .split_once(": ")
        .expect("a list of names");
    let mut extras = vec![
        "table `c`",
        "table `d`",
        "view `extra_view`",
        "sequence `extra_seq`",
        "procedure `extra_proc`",
        "function `extra_fn`",
        "trigger `extra_trg` on `a`",
        "event `extra_ev`",
    ];
    assert_eq!(
        head,
        format!(
            "restore with clean dropped {} object(s) the backup does not hold",
            extras.len()
        )
    );
    let mut named: Vec<&str> = names.split(", ").collect();
    named.sort_unstable();
    extras.sort_unstable();
    assert_eq!(named, extras);

    // Again over the restored copy: nothing is extra, nothing is named.
    let report = target
        .restore(dump, &RestoreOptions::default().with_clean(true))
        .await
        .expect("clean restore over an exact copy");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(objects(&server, "tgt").await, src_objects);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_stops_with_nothing_dropped() {
    let server = common::server().await;
    let dump = source_and_dump(&server).await;
    server.execute("", "CREATE DATABASE tgt").await.unwrap();
    common::exec(
        &server,
        "tgt",
        "CREATE TABLE a (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO a VALUES (1);
         CREATE TABLE busy (x INT) ENGINE=InnoDB; INSERT INTO busy VALUES (1), (2);
         CREATE PROCEDURE extra_proc() SELECT 3;",
    )
    .await;
    let before = objects(&server, "tgt").await;
    let target = MariaDbEngine::new(&server.url_for("tgt")).unwrap();
    let clean = RestoreOptions::default().with_clean(true);

    // A table of another database references one of the target's.
    server.execute("", "CREATE DATABASE other").await.unwrap();
    common::exec(
        &server,
        "other",
        "CREATE TABLE child (id INT PRIMARY KEY, a_id INT, \
         FOREIGN KEY (a_id) REFERENCES tgt.a (id)) ENGINE=InnoDB",
    )
    .await;
    let err = target
        .restore(dump.clone(), &clean)
        .await
        .expect_err("a foreign key from another database");
    assert_eq!(err.kind(), ErrorKind::TargetNotEmpty, "{err}");
    assert!(
        err.message().contains("other.child") && err.message().contains("nothing was dropped"),
        "{err}"
    );
    assert_eq!(
        objects(&server, "tgt").await,
        before,
        "something was dropped"
    );
    server.execute("", "DROP DATABASE other").await.unwrap();

    // An application reads the extra table in an open transaction.
    let mut app = common::connect(&server, "tgt").await;
    app.query_drop("START TRANSACTION").await.unwrap();
    let _: Vec<u64> = app.query("SELECT x FROM busy").await.unwrap();
    let started = Instant::now();
    let err = target
        .restore(dump.clone(), &clean)
        .await
        .expect_err("the extra table is in use");
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert!(
        err.message().contains("table `busy`") && err.message().contains("nothing was dropped"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        objects(&server, "tgt").await,
        before,
        "something was dropped"
    );
    assert_eq!(count(&server, "tgt", "busy").await, 2);

    // The application is done: the clean goes through.
    app.query_drop("COMMIT").await.unwrap();
    app.disconnect().await.ok();
    let report = target.restore(dump, &clean).await.expect("clean restore");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("table `busy`") && w.contains("procedure `extra_proc`")),
        "{:?}",
        report.warnings
    );
    assert_eq!(objects(&server, "tgt").await, objects(&server, "src").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_clean_keeps_unrelated_objects() {
    let server = common::server().await;
    let dump = source_and_dump(&server).await;
    server.execute("", "CREATE DATABASE tgt").await.unwrap();
    common::exec(
        &server,
        "tgt",
        "CREATE TABLE a (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO a VALUES (1);
         CREATE TABLE c (x INT) ENGINE=InnoDB; INSERT INTO c VALUES (1);
         CREATE VIEW extra_view AS SELECT * FROM c;
         CREATE PROCEDURE extra_proc() SELECT 3;",
    )
    .await;
    let target = MariaDbEngine::new(&server.url_for("tgt")).unwrap();
    // Without clean the chosen table collides; nothing else does.
    let err = target
        .restore(
            dump.clone(),
            &RestoreOptions::default().with_tables(vec![TableRef::new("src", "a")]),
        )
        .await
        .expect_err("table a exists");
    assert_eq!(err.kind(), ErrorKind::TargetNotEmpty, "{err}");
    assert!(
        err.message().contains("holds table `a`)"),
        "only table a is named: {err}"
    );
    let report = target
        .restore(
            dump,
            &RestoreOptions::default()
                .with_clean(true)
                .with_tables(vec![TableRef::new("src", "a")]),
        )
        .await
        .expect("table restore with clean");
    assert_eq!(report.tables.get("tgt.a"), Some(&100));
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(
        objects(&server, "tgt").await,
        [
            "BASE TABLE a",
            "BASE TABLE c",
            "PROCEDURE extra_proc",
            "VIEW extra_view"
        ]
    );
    assert_eq!(count(&server, "tgt", "a").await, 100);
}
