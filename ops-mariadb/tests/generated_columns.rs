//! Generated columns on the round trip: tables whose every column is generated (rows
//! that store nothing still exist), and virtual columns whose computed value does not
//! fit their type (the server warns while loading; that must not fail the restore,
//! while a warning about stored data still must). One server for the whole file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, stream};
use mysql_async::prelude::Queryable;
use ops_core::testkit::engine::{MemoryDump, round_trip};
use ops_core::{
    ByteStream, DatabaseEngine, DumpOptions, ErrorKind, RestoreOptions, Result, StreamSource,
    StreamSpec,
};
use ops_mariadb::MariaDbEngine;

/// Every table here has generated columns; rows go in under `sql_mode=''`, as an
/// application with a permissive mode would have put them, so that virtual values that
/// do not fit are warnings on the source too.
const SCHEMA: &str = "
SET SESSION sql_mode = '';
CREATE TABLE all_virtual (a int GENERATED ALWAYS AS (1 + 1) VIRTUAL,
                          b int GENERATED ALWAYS AS (a IS NULL) VIRTUAL);
INSERT INTO all_virtual () VALUES (), (), (), (), ();
CREATE TABLE all_virtual_empty (a int GENERATED ALWAYS AS (1) VIRTUAL);
CREATE TABLE all_generated_indexed (a tinyint GENERATED ALWAYS AS (1000) VIRTUAL,
                                    s int GENERATED ALWAYS AS (7) STORED, KEY (a));
INSERT INTO all_generated_indexed () VALUES (), (), ();
CREATE TABLE wide_bits (pk bigint AUTO_INCREMENT PRIMARY KEY, b bit(15),
                        v bit(10) GENERATED ALWAYS AS (b) VIRTUAL, UNIQUE KEY v (v));
INSERT INTO wide_bits (b) VALUES (b'111111111111111'), (b'101'), (NULL), (b'1111111110');
CREATE TABLE wide_bits_no_pk (b bit(15), v bit(10) GENERATED ALWAYS AS (b) VIRTUAL,
                              UNIQUE KEY v (v));
INSERT INTO wide_bits_no_pk (b) VALUES (b'111111111111111'), (b'11');
CREATE TABLE narrow_int (id int PRIMARY KEY, i int,
                         t tinyint GENERATED ALWAYS AS (i) VIRTUAL, KEY (t));
INSERT INTO narrow_int (id, i) VALUES (1, 1000), (2, -1000), (3, 5);
CREATE TABLE short_text (id int PRIMARY KEY, s varchar(20),
                         vs varchar(3) GENERATED ALWAYS AS (s) VIRTUAL, KEY (vs));
INSERT INTO short_text (id, s) VALUES (1, 'abcdef'), (2, 'ab');
CREATE TABLE many_virtual (a int GENERATED ALWAYS AS (1) VIRTUAL);
INSERT INTO many_virtual SELECT NULL FROM seq_1_to_300000;
CREATE TABLE many_narrow (id int PRIMARY KEY, i int,
                          t tinyint GENERATED ALWAYS AS (i) VIRTUAL, KEY (t));
INSERT INTO many_narrow (id, i) SELECT seq, 1000 + seq FROM seq_1_to_70000;
";

/// A source whose `wide_bits` data stream carries a `b` too wide for `bit(15)` in
/// place of `5` (b'101'): a value that would be stored wrong.
#[derive(Debug)]
struct Tampered(Arc<MemoryDump>);

#[async_trait]
impl StreamSource for Tampered {
    fn streams(&self) -> &[StreamSpec] {
        self.0.streams()
    }
    async fn open(&self, name: &str) -> Result<ByteStream> {
        let mut inner = self.0.open(name).await?;
        if !name.contains(".wide_bits/") {
            return Ok(inner);
        }
        let mut all = Vec::new();
        while let Some(piece) = inner.next().await {
            all.extend_from_slice(&piece?);
        }
        let text = String::from_utf8(all).expect("ascii records");
        assert!(text.contains("\t5\n"), "{text:?}");
        let changed = text.replace("\t5\n", "\t99999\n");
        Ok(Box::pin(stream::iter(vec![Ok(Bytes::from(changed))])))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_columns_round_trip() {
    let server = common::server().await;
    server.execute("", "CREATE DATABASE gen").await.unwrap();
    common::exec(&server, "gen", SCHEMA).await;
    let source = MariaDbEngine::new(&server.url_for("gen")).unwrap();

    // The conformance round trip: dump, restore under another name, re-dump both and
    // compare digests table by table (what verify does).
    let target = source.with_database("gen_copy");
    let dump = round_trip(
        &source,
        &target,
        &DumpOptions::default().with_jobs(2),
        &RestoreOptions::default().with_create(true).with_jobs(2),
    )
    .await;
    // A row with no stored column is an empty record.
    let all_virtual = dump
        .summaries()
        .into_iter()
        .find(|(s, _)| s.name.starts_with("data/gen.all_virtual/"))
        .expect("a stream for all_virtual");
    assert_eq!(all_virtual.1.rows, 5);
    assert_eq!(dump.content(&all_virtual.0.name).unwrap(), b"\n\n\n\n\n");
    assert_eq!(dump.table_digests()["gen.all_virtual_empty"].rows, 0);

    // Independently of dbops: row counts and every column's value, virtual ones
    // (computed again on the target) included.
    let expected = common::content_hashes(&server, "gen").await;
    assert_eq!(expected["all_virtual"].0, 5);
    assert_eq!(expected["all_generated_indexed"].0, 3);
    assert_eq!(expected["wide_bits"].0, 4);
    assert_eq!(expected["many_virtual"].0, 300_000);
    assert_eq!(expected, common::content_hashes(&server, "gen_copy").await);
    common::assert_same_text(
        "mariadb-dump --no-data",
        &common::schema_dump(&server, "gen"),
        &common::schema_dump(&server, "gen_copy"),
    );

    // The report counts the rows and says which virtual columns warned.
    let src = Arc::clone(&dump).into_source();
    let report = source
        .with_database("gen_report")
        .restore(
            src.clone() as Arc<dyn StreamSource>,
            &RestoreOptions::default().with_create(true),
        )
        .await
        .expect("restore");
    assert_eq!(report.tables["gen_report.all_virtual"], 5, "{report:?}");
    assert_eq!(report.tables["gen_report.all_generated_indexed"], 3);
    assert_eq!(report.tables["gen_report.many_virtual"], 300_000);
    assert_eq!(report.tables["gen_report.many_narrow"], 70_000);
    // More warnings than the server lists at once: the load is cut so that each is
    // seen.
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("gen_report.many_narrow: 70000 warning(s)")),
        "{:?}",
        report.warnings
    );
    for (table, column) in [
        ("all_generated_indexed", "`a`"),
        ("wide_bits", "`v`"),
        ("wide_bits_no_pk", "`v`"),
        ("narrow_int", "`t`"),
        ("short_text", "`vs`"),
    ] {
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains(&format!("gen_report.{table}:")) && w.contains(column)),
            "no warning about {table}.{column}: {:?}",
            report.warnings
        );
    }
    let mut c = common::connect(&server, "gen_report").await;
    let v: Vec<(u64, Option<u64>)> = c
        .query("SELECT pk, v + 0 FROM wide_bits ORDER BY pk")
        .await
        .unwrap();
    assert_eq!(
        v,
        vec![(1, Some(1023)), (2, Some(5)), (3, None), (4, Some(1022))]
    );
    c.disconnect().await.ok();

    // A warning about a stored column still fails the restore, even next to warnings
    // about virtual ones, and the database it created is dropped.
    let err = source
        .with_database("gen_tampered")
        .restore(
            Arc::new(Tampered(Arc::clone(&src))),
            &RestoreOptions::default().with_create(true),
        )
        .await
        .expect_err("a value that does not fit a stored column");
    assert_eq!(err.kind(), ErrorKind::Mismatch, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("column 'b'") && text.contains("wide_bits"),
        "{text}"
    );
    let mut c = common::connect(&server, "gen").await;
    let left: Option<String> = c
        .query_first(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'gen_tampered'",
        )
        .await
        .unwrap();
    assert_eq!(left, None);
    c.disconnect().await.ok();
}
