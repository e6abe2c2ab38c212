//! Conformance round trip on the kitchen-sink fixture, then a comparison of source and
//! restored database with MariaDB's own tools: `mariadb-dump --no-data` for the
//! schema, SQL content hashes and `CHECKSUM TABLE` for the data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use ops_core::testkit::engine::round_trip;
use ops_core::{DatabaseEngine, DumpOptions, RestoreOptions, StreamRole};
use ops_mariadb::{DefinerPolicy, MariaDbEngine};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kitchen_sink_round_trip() {
    let server = common::server().await;
    server
        .execute(
            "",
            "CREATE DATABASE kitchen CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
        )
        .await
        .expect("create db");
    common::mariadb_cli(
        &server,
        Some("kitchen"),
        &common::fixture("kitchen_sink.sql"),
    );

    // The conformance suite compares tables by `database.table`, so its target is a
    // database of the same name on a second server; restoring under another name is
    // checked below.
    let other = common::server().await;
    let source = MariaDbEngine::new(&server.url_for("kitchen")).expect("url");
    let conformance_target = MariaDbEngine::new(&other.url_for("kitchen")).expect("url");
    let dump = round_trip(
        &source,
        &conformance_target,
        &DumpOptions::default()
            .with_jobs(2)
            .with_split_bytes(16 * 1024),
        &RestoreOptions::default().with_jobs(2).with_create(true),
    )
    .await;

    // The big table was split into several streams, by primary-key range.
    let summaries = dump.summaries();
    let big_parts = summaries
        .iter()
        .filter(|(s, _)| {
            s.role == StreamRole::TableData && s.table.as_ref().is_some_and(|t| t.name == "big")
        })
        .count();
    assert!(
        big_parts > 1,
        "table big was not split: {big_parts} stream(s)"
    );
    // Every data stream is records of the documented format.
    for (spec, summary) in &summaries {
        if spec.role == StreamRole::TableData {
            assert_eq!(
                spec.meta.get("format").map(String::as_str),
                Some("dbops-mariadb-tsv-1")
            );
            let content = dump.content(&spec.name).expect("content");
            assert_eq!(
                summary.rows as usize,
                content.iter().filter(|&&b| b == b'\n').count()
            );
        }
    }
    // Non-transactional tables are reported.
    let warnings = dump.warnings();
    for t in ["legacy_myisam", "legacy_aria"] {
        assert!(
            warnings.iter().any(|w| w.contains(t)),
            "no warning about {t}: {warnings:?}"
        );
    }

    let schema_src = common::schema_dump(&server, "kitchen");
    let hashes_src = common::content_hashes(&server, "kitchen").await;
    let checksums_src = common::checksums(&server, "kitchen").await;
    assert!(hashes_src.len() > 20, "{hashes_src:?}");
    let schema_other = common::schema_dump(&other, "kitchen");
    common::assert_same_text(
        "mariadb-dump --no-data (second server)",
        &schema_src,
        &schema_other,
    );
    assert_eq!(hashes_src, common::content_hashes(&other, "kitchen").await);
    assert_eq!(checksums_src, common::checksums(&other, "kitchen").await);
    drop(other);

    // The same dump restored under another name on the source server.
    let src = Arc::clone(&dump).into_source();
    let target = source.with_database("kitchen_restored");
    target
        .restore(
            src.clone(),
            &RestoreOptions::default().with_create(true).with_jobs(2),
        )
        .await
        .expect("restore under another name");
    let schema_dst = common::schema_dump(&server, "kitchen_restored");
    common::assert_same_text("mariadb-dump --no-data", &schema_src, &schema_dst);
    let hashes_dst = common::content_hashes(&server, "kitchen_restored").await;
    assert_eq!(hashes_src, hashes_dst, "content hashes differ");
    assert_eq!(
        checksums_src,
        common::checksums(&server, "kitchen_restored").await,
        "CHECKSUM TABLE differs"
    );

    // Database defaults, the sequence position and triggers that did not fire on load.
    let mut c = common::connect(&server, "kitchen_restored").await;
    use mysql_async::prelude::Queryable;
    let (cs, coll): (String, String) = c
        .query_first(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA \
             WHERE SCHEMA_NAME = 'kitchen_restored'",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cs.as_str(), coll.as_str()),
        ("utf8mb4", "utf8mb4_unicode_ci")
    );
    let next: Option<u64> = c.query_first("SELECT NEXTVAL(order_seq)").await.unwrap();
    // Like mariadb-dump, the position restored is the first value not cached by the
    // source (as after a server restart): 100 + 3 used, cache of 10 * 5.
    assert_eq!(next, Some(150), "sequence position not restored");
    let fired: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM audit_log")
        .await
        .unwrap();
    assert_eq!(fired, Some(4), "triggers fired during the load");
    c.disconnect().await.ok();

    // Restoring again with clean replaces the content.
    target
        .restore(
            src.clone(),
            &RestoreOptions::default().with_clean(true).with_jobs(2),
        )
        .await
        .expect("clean restore");
    assert_eq!(
        hashes_src,
        common::content_hashes(&server, "kitchen_restored").await
    );

    // A table filter restores just that table (with its triggers) into another database.
    server
        .execute("", "CREATE DATABASE only_audited")
        .await
        .unwrap();
    let only = source
        .with_database("only_audited")
        .with_definer(DefinerPolicy::Drop);
    let report = only
        .restore(
            src.clone(),
            &RestoreOptions::default()
                .with_tables(vec![ops_core::TableRef::new("kitchen", "audited")]),
        )
        .await
        .expect("filtered restore");
    assert_eq!(report.tables.len(), 1, "{report:?}");
    let mut c = common::connect(&server, "only_audited").await;
    let names: Vec<String> = c
        .query(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'only_audited'",
        )
        .await
        .unwrap();
    assert_eq!(names, vec!["audited".to_owned()]);
    let triggers: Vec<(String, String)> = c
        .query("SELECT TRIGGER_NAME, DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = 'only_audited'")
        .await
        .unwrap();
    assert_eq!(triggers.len(), 3, "{triggers:?}");
    c.disconnect().await.ok();

    // create refuses an existing database.
    let err = target
        .restore(src, &RestoreOptions::default().with_create(true))
        .await
        .expect_err("create over an existing database");
    assert_eq!(err.kind(), ops_core::ErrorKind::AlreadyExists, "{err}");
    target.drop_database().await.expect("drop");
}
