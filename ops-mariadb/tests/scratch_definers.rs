//! A scratch restore (the proof on a throwaway server) creates the definers of views,
//! routines, triggers and events that the target lacks, and names them in the
//! report; a plain restore does not. One server: the definers exist on none.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use ops_core::testkit::engine::dump_to_memory;
use ops_core::{DatabaseEngine, DumpOptions, ErrorKind, RestoreOptions, StreamSource};
use ops_mariadb::MariaDbEngine;

/// Objects whose definers do not exist, as in a database copied from another
/// server: the accounts are made for the objects to be created, then dropped. The
/// role's view is printed `DEFINER=`reporting`` (a role has no host).
const SCHEMA: &str = "
CREATE USER 'app'@'%';
CREATE USER 'ops'@'localhost';
CREATE ROLE reporting;
GRANT ALL ON shop.* TO 'app'@'%';
CREATE TABLE items (id int PRIMARY KEY, n int);
INSERT INTO items VALUES (1, 10), (2, 20);
CREATE TABLE audit (id int);
CREATE DEFINER='app'@'%' SQL SECURITY DEFINER VIEW v_items AS SELECT id, n FROM items;
CREATE DEFINER='app'@'%' VIEW v_big AS SELECT id FROM v_items WHERE n > 10;
CREATE DEFINER='app'@'%' PROCEDURE count_items() SELECT COUNT(*) FROM items;
CREATE DEFINER='app'@'%' FUNCTION double_it(x int) RETURNS int DETERMINISTIC RETURN 2 * x;
CREATE DEFINER='ops'@'localhost' TRIGGER items_ai AFTER INSERT ON items
  FOR EACH ROW INSERT INTO audit VALUES (NEW.id);
CREATE DEFINER='ops'@'localhost' EVENT nightly ON SCHEDULE EVERY 1 DAY DISABLE
  DO DELETE FROM audit;
CREATE DEFINER='root'@'localhost' VIEW v_root AS SELECT 1 AS one;
CREATE DEFINER=reporting VIEW v_report AS SELECT COUNT(*) AS c FROM items;
DROP USER 'app'@'%', 'ops'@'localhost';
DROP ROLE reporting;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_restores_create_missing_definers() {
    let server = common::server().await;
    server.execute("", "CREATE DATABASE shop").await.unwrap();
    common::exec(&server, "shop", SCHEMA).await;
    let source = MariaDbEngine::new(&server.url_for("shop")).unwrap();
    let (dump, _) = dump_to_memory(&source, &DumpOptions::default()).await;
    let src = dump.into_source() as Arc<dyn StreamSource>;

    // Without scratch nothing changes: no account is made, and the view over a view
    // whose definer is missing cannot be created.
    let plain = source.with_database("shop_plain");
    let err = plain
        .restore(src.clone(), &RestoreOptions::default().with_create(true))
        .await
        .expect_err("definers missing");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("'app'@'%'"), "{err}");
    let mut c = common::connect(&server, "shop").await;
    let users: Vec<String> = c
        .query(
            "SELECT CONCAT(User, '@', Host) FROM mysql.user \
             WHERE User IN ('app', 'ops', 'reporting')",
        )
        .await
        .unwrap();
    assert!(users.is_empty(), "{users:?}");
    c.disconnect().await.ok();

    // A scratch restore makes them, each named once with what it defines.
    let scratch = source.with_database("shop_scratch");
    let report = scratch
        .restore(
            src.clone(),
            &RestoreOptions::default()
                .with_create(true)
                .with_scratch(true),
        )
        .await
        .expect("scratch restore");
    assert_eq!(
        report.prepared,
        vec![
            "user 'app'@'%' (definer of 2 views, 2 routines)".to_owned(),
            "role 'reporting' (definer of 1 view)".to_owned(),
            "user 'ops'@'localhost' (definer of 1 trigger, 1 event)".to_owned(),
        ],
        "{report:?}"
    );
    assert_eq!(report.tables["shop_scratch.items"], 2);

    // The objects are the source's, definers included, and they work.
    let schema = |db: &str| {
        common::schema_dump(&server, db)
            .lines()
            .filter(|l| l.contains("DEFINER"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(schema("shop"), schema("shop_scratch"));
    let mut c = common::connect(&server, "shop_scratch").await;
    let big: Vec<u32> = c.query("SELECT id FROM v_big").await.unwrap();
    assert_eq!(big, vec![2]);
    let counted: Option<u64> = c.query_first("CALL count_items()").await.unwrap();
    assert_eq!(counted, Some(2));
    let reported: Option<u64> = c.query_first("SELECT c FROM v_report").await.unwrap();
    assert_eq!(reported, Some(2));
    c.query_drop("INSERT INTO items VALUES (3, 30)")
        .await
        .expect("the trigger runs as its definer");
    let audited: Option<u64> = c.query_first("SELECT COUNT(*) FROM audit").await.unwrap();
    assert_eq!(audited, Some(1));
    // They cannot log in.
    let locked: Vec<(String, String)> = c
        .query(
            "SELECT CONCAT(User, '@', Host), JSON_VALUE(Priv, '$.account_locked') \
             FROM mysql.global_priv WHERE User IN ('app', 'ops') ORDER BY 1",
        )
        .await
        .unwrap();
    assert_eq!(
        locked,
        vec![
            ("app@%".to_owned(), "1".to_owned()),
            ("ops@localhost".to_owned(), "1".to_owned())
        ]
    );
    c.disconnect().await.ok();

    // Accounts that exist are not made again; they get the new database.
    let again = source.with_database("shop_again");
    let report = again
        .restore(
            src,
            &RestoreOptions::default()
                .with_create(true)
                .with_scratch(true),
        )
        .await
        .expect("second scratch restore");
    assert_eq!(
        report.prepared,
        vec![
            "user 'app'@'%' existed: all privileges on `shop_again` granted (definer of 2 \
             views, 2 routines)"
                .to_owned(),
            "role 'reporting' existed: all privileges on `shop_again` granted (definer of 1 \
             view)"
                .to_owned(),
            "user 'ops'@'localhost' existed: all privileges on `shop_again` granted (definer \
             of 1 trigger, 1 event)"
                .to_owned(),
        ],
        "{report:?}"
    );
    let mut c = common::connect(&server, "shop_again").await;
    let big: Vec<u32> = c.query("SELECT id FROM v_big").await.unwrap();
    assert_eq!(big, vec![2]);
    c.disconnect().await.ok();
}
