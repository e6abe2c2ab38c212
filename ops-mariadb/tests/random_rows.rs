//! Property test: random rows (arbitrary bytes in BLOB, VARBINARY and TEXT, NULLs,
//! edge numbers and dates) survive dump → restore exactly, judged by SQL hashes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use mysql_async::Value;
use mysql_async::prelude::Queryable;
use ops_core::testkit::engine::dump_to_memory;
use ops_core::{DatabaseEngine, DumpOptions, RestoreOptions, StreamSource};
use ops_mariadb::MariaDbEngine;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[derive(Debug, Clone)]
struct RandomRow {
    blob: Option<Vec<u8>>,
    varbinary: Option<Vec<u8>>,
    text: Option<String>,
    double: Option<f64>,
    float: Option<f32>,
    big: Option<i64>,
    decimal: Option<String>,
    datetime: Option<String>,
}

fn special_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        Just("NULL".to_owned()),
        Just("\\N".to_owned()),
        Just(String::new()),
        "[\\t\\n\\r\\\\\u{0}a😀é]{0,12}",
    ]
}

fn finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        Just(f64::MAX),
        Just(f64::MIN),
        Just(f64::MIN_POSITIVE),
        Just(5e-324),
        Just(0.1),
    ]
}

fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<f32>().prop_filter("finite", |f| f.is_finite()),
        Just(f32::MIN_POSITIVE),
        Just(1.4e-45),
        Just(16_777_217.0),
    ]
}

fn datetime() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0000-00-00 00:00:00.000000".to_owned()),
        Just("9999-12-31 23:59:59.999999".to_owned()),
        (
            1000u32..9999,
            1u32..13,
            1u32..29,
            0u32..24,
            0u32..60,
            0u32..1_000_000
        )
            .prop_map(|(y, mo, d, h, mi, us)| format!(
                "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:07.{us:06}"
            )),
    ]
}

fn row() -> impl Strategy<Value = RandomRow> {
    (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        proptest::option::of(special_text()),
        proptest::option::of(finite_f64()),
        proptest::option::of(finite_f32()),
        proptest::option::of(prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX)]),
        proptest::option::of(
            (any::<i64>(), 0u32..1_000_000).prop_map(|(a, b)| format!("{a}.{b:06}")),
        ),
        proptest::option::of(datetime()),
    )
        .prop_map(
            |(blob, varbinary, text, double, float, big, decimal, datetime)| RandomRow {
                blob,
                varbinary,
                text,
                double,
                float,
                big,
                decimal,
                datetime,
            },
        )
}

fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map_or(Value::NULL, Into::into)
}

#[test]
fn random_rows_survive_the_round_trip() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt.block_on(common::server());
    let engine = MariaDbEngine::new(&server.url()).expect("url");
    let mut runner = TestRunner::new(Config {
        cases: 50,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&proptest::collection::vec(row(), 0..12), |rows| {
            let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rt.block_on(async {
                let src = format!("prop_src_{case}");
                let dst = format!("prop_dst_{case}");
                server
                    .execute("", &format!("CREATE DATABASE {src}"))
                    .await
                    .unwrap();
                let mut c = common::connect(&server, &src).await;
                c.query_drop("SET sql_mode = ''").await.unwrap();
                c.query_drop(
                    "CREATE TABLE t (id INT PRIMARY KEY, bl BLOB, vb VARBINARY(64), \
                     tx TEXT CHARACTER SET utf8mb4, dbl DOUBLE, fl FLOAT, big BIGINT, \
                     dec_ DECIMAL(30,6), dt DATETIME(6))",
                )
                .await
                .unwrap();
                for (i, r) in rows.iter().enumerate() {
                    c.exec_drop(
                        "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        vec![
                            Value::from(i as i64),
                            opt(r.blob.clone()),
                            opt(r.varbinary.clone()),
                            opt(r.text.clone()),
                            opt(r.double),
                            opt(r.float),
                            opt(r.big),
                            opt(r.decimal.clone()),
                            opt(r.datetime.clone()),
                        ],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("insert {r:?}: {e}"));
                }
                c.disconnect().await.ok();
                let source = engine.with_database(&src);
                let (dump, _) =
                    dump_to_memory(&source, &DumpOptions::default().with_split_bytes(1)).await;
                engine
                    .with_database(&dst)
                    .restore(
                        dump.into_source() as Arc<dyn StreamSource>,
                        &RestoreOptions::default().with_create(true),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("restore: {e}"));
                let a = common::content_hashes(&server, &src).await;
                let b = common::content_hashes(&server, &dst).await;
                assert_eq!(a, b, "rows differ after the round trip: {rows:?}");
                assert_eq!(a["t"].0, rows.len() as u64);
                server
                    .execute("", &format!("DROP DATABASE {src}; DROP DATABASE {dst}"))
                    .await
                    .unwrap();
            });
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
