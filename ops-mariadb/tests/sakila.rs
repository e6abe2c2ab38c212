//! The sakila sample database (loaded as its README says) restored into
//! `sakila_copy`: same `mariadb-dump --no-data` output with the database name
//! normalised, same row counts and per-table content hashes computed in SQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use ops_core::testkit::engine::dump_to_memory;
use ops_core::{DatabaseEngine, DumpOptions, RestoreOptions, StreamSource};
use ops_mariadb::MariaDbEngine;

fn sakila_dir() -> PathBuf {
    match std::env::var_os("DBOPS_FIXTURES_DIR") {
        Some(dir) => PathBuf::from(dir).join("sakila"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/sakila"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sakila_restores_into_another_database() {
    let dir = sakila_dir();
    let (schema, data) = (dir.join("sakila-schema.sql"), dir.join("sakila-data.sql"));
    if !schema.is_file() || !data.is_file() {
        eprintln!(
            "\n\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! SAKILA FIXTURE NOT FOUND at {}\n\
             !!! set DBOPS_FIXTURES_DIR to the fixtures directory; this test checked NOTHING\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
            dir.display()
        );
        return;
    }
    let server = common::server().await;
    common::mariadb_cli(&server, None, &schema);
    common::mariadb_cli(&server, None, &data);

    let source = MariaDbEngine::new(&server.url_for("sakila")).expect("url");
    let (dump, report) = dump_to_memory(
        &source,
        &DumpOptions::default()
            .with_jobs(2)
            .with_split_bytes(256 * 1024),
    )
    .await;
    assert_eq!(
        report.snapshot.get("method").map(String::as_str),
        Some("flush_tables_with_read_lock"),
        "{report:?}"
    );
    assert!(
        report.snapshot.contains_key("gtid_binlog_pos"),
        "{report:?}"
    );
    assert!(
        report.snapshot.contains_key("binlog_position"),
        "{report:?}"
    );

    let copy = source.with_database("sakila_copy");
    let restored = copy
        .restore(
            dump.into_source() as Arc<dyn StreamSource>,
            &RestoreOptions::default().with_create(true).with_jobs(2),
        )
        .await
        .expect("restore into sakila_copy");
    assert_eq!(restored.tables.len(), 16, "{restored:?}");

    common::assert_same_text(
        "mariadb-dump --no-data",
        &common::schema_dump(&server, "sakila"),
        &common::schema_dump(&server, "sakila_copy"),
    );
    let src = common::content_hashes(&server, "sakila").await;
    let dst = common::content_hashes(&server, "sakila_copy").await;
    assert_eq!(src.len(), 16);
    assert!(src.values().map(|(n, _)| n).sum::<u64>() > 40_000);
    assert_eq!(src, dst, "table contents differ");
    assert_eq!(
        common::checksums(&server, "sakila").await,
        common::checksums(&server, "sakila_copy").await
    );
}
