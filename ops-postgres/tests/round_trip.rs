//! Engine conformance on ephemeral servers: the kitchen-sink fixture and pagila.

mod common;

use std::sync::Arc;

use ops_core::testkit::engine::{MemoryDump, MemorySink, dump_to_memory, round_trip};
use ops_core::{DatabaseEngine, DumpOptions, RestoreOptions, StreamRole, TableRef};
use ops_postgres::ephemeral::EphemeralPostgres;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kitchen_sink_round_trip_with_jobs_and_splits() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    server.create_database("sink").await.expect("create sink");
    psql_file(&server, "sink", &kitchen_sink());
    server
        .create_database("sink copy")
        .await
        .expect("create target");
    let source = server.engine_for("sink").expect("engine");
    let target = server.engine_for("sink copy").expect("engine");

    let dump = round_trip(
        &source,
        &target,
        &DumpOptions::default()
            .with_jobs(2)
            .with_split_bytes(16 * 1024),
        &RestoreOptions::default().with_jobs(2),
    )
    .await;

    let summaries = dump.summaries();
    let big_parts = summaries
        .iter()
        .filter(|(s, _)| s.name.starts_with("data/public.big/"))
        .count();
    assert!(
        big_parts >= 3,
        "public.big was not split: {big_parts} stream(s)"
    );
    let names: Vec<&str> = summaries.iter().map(|(s, _)| s.name.as_str()).collect();
    assert!(
        names.contains(&"data/Other Schema.Mixed Case.Table/0"),
        "{names:?}"
    );
    assert!(names.contains(&"data/public.no_columns/0"), "{names:?}");
    assert!(
        names.contains(&"data/public.scratch/0"),
        "unlogged table data: {names:?}"
    );
    assert!(
        names.contains(&"data/public.cars/0"),
        "inheritance child: {names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("data/public.measurements/")),
        "partitioned parent has no data stream"
    );
    assert!(
        !names.iter().any(|n| n.contains("employee_names")),
        "views have no data"
    );
    let schema_streams = summaries
        .iter()
        .filter(|(s, _)| s.role == StreamRole::Schema)
        .count();
    assert_eq!(schema_streams, 1);
    let no_columns = summaries
        .iter()
        .find(|(s, _)| s.name == "data/public.no_columns/0")
        .map(|(_, m)| m.rows);
    assert_eq!(no_columns, Some(3), "rows of a table without columns");

    assert_same_schema(&server, "sink", "sink copy");
    assert_eq!(
        table_checksums(&server, "sink").await,
        table_checksums(&server, "sink copy").await,
        "table checksums (incl. materialized views)"
    );
    assert_eq!(
        non_table_state(&server, "sink").await,
        non_table_state(&server, "sink copy").await,
        "sequences and large objects"
    );

    // --clean over the changed copy (partitions, inheritance, views, large objects)
    // gives back the source again.
    server
        .execute(
            "sink copy",
            "DELETE FROM big WHERE id % 2 = 0; ALTER TABLE big ADD COLUMN junk int;
             SELECT lo_unlink(424242);",
        )
        .await
        .expect("change the copy");
    let report = target
        .restore(
            Arc::clone(&dump).into_source(),
            &RestoreOptions::default().with_clean(true).with_jobs(2),
        )
        .await
        .expect("clean restore over the copy");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_same_schema(&server, "sink", "sink copy");
    assert_eq!(
        table_checksums(&server, "sink").await,
        table_checksums(&server, "sink copy").await,
        "table checksums after --clean"
    );
    assert_eq!(
        non_table_state(&server, "sink").await,
        non_table_state(&server, "sink copy").await,
        "sequences and large objects after --clean"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagila_round_trip_into_created_database() {
    let pagila = fixtures_dir().join("pagila");
    if !pagila.join("pagila-schema.sql").is_file() {
        loud(&format!(
            "pagila fixture not found at {}: set DBOPS_FIXTURES_DIR. Running the kitchen-sink \
             fixture instead — pagila is NOT tested in this run",
            pagila.display()
        ));
    }
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    server
        .create_database("pagila")
        .await
        .expect("create pagila");
    if pagila.join("pagila-schema.sql").is_file() {
        psql_file(&server, "pagila", &pagila.join("pagila-schema.sql"));
        psql_file(&server, "pagila", &pagila.join("pagila-data.sql"));
    } else {
        psql_file(&server, "pagila", &kitchen_sink());
    }
    let source = server.engine_for("pagila").expect("engine");
    let target = server.engine_for("pagila_restored").expect("engine");

    round_trip(
        &source,
        &target,
        &DumpOptions::default().with_jobs(2),
        &RestoreOptions::default().with_jobs(2).with_create(true),
    )
    .await;

    assert_same_schema(&server, "pagila", "pagila_restored");
    let a = table_checksums(&server, "pagila").await;
    assert!(a.len() >= 15, "too few tables checked: {a:?}");
    assert_eq!(a, table_checksums(&server, "pagila_restored").await);
    assert_eq!(
        non_table_state(&server, "pagila").await,
        non_table_state(&server, "pagila_restored").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_tables() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    server.create_database("parts").await.expect("create");
    server
        .execute(
            "parts",
            "CREATE TABLE p (id int, at date) PARTITION BY RANGE (at);
             CREATE TABLE p_2023 PARTITION OF p FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
             CREATE TABLE p_2024 PARTITION OF p FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')
                 PARTITION BY LIST (id);
             CREATE TABLE p_2024_rest PARTITION OF p_2024 DEFAULT;
             INSERT INTO p SELECT g, date '2023-06-01' + g FROM generate_series(1, 400) g;
             CREATE TABLE other (x int); INSERT INTO other VALUES (1);
             CREATE TYPE colour AS ENUM ('c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7', 'c8', 'c9');
             CREATE TABLE h (c colour, n int) PARTITION BY HASH (c);
             CREATE TABLE h0 PARTITION OF h FOR VALUES WITH (MODULUS 4, REMAINDER 0);
             CREATE TABLE h1 PARTITION OF h FOR VALUES WITH (MODULUS 4, REMAINDER 1);
             CREATE TABLE h2 PARTITION OF h FOR VALUES WITH (MODULUS 4, REMAINDER 2);
             CREATE TABLE h3 PARTITION OF h FOR VALUES WITH (MODULUS 4, REMAINDER 3);
             INSERT INTO h SELECT ('c' || g % 10)::colour, g FROM generate_series(1, 1000) g;",
        )
        .await
        .expect("fill");
    let source = server.engine_for("parts").expect("engine");

    // A partitioned table stands for its leaves.
    let dump = MemoryDump::new();
    source
        .dump(
            &DumpOptions::default().with_tables(vec![TableRef::new("public", "p")]),
            Arc::new(MemorySink(Arc::clone(&dump))),
        )
        .await
        .expect("dump of a partitioned table");
    let mut names: Vec<String> = dump
        .summaries()
        .into_iter()
        .map(|(s, m)| format!("{}={}", s.name, m.rows))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["data/public.p_2023/0=213", "data/public.p_2024_rest/0=187"]
    );

    // Hash partitions keyed on an enum: the enum's oids differ in the target, so rows
    // hash to other partitions there; they are loaded through the root.
    let (dump, _) = dump_to_memory(&source, &DumpOptions::default().with_jobs(2)).await;
    let target = server.engine_for("parts_restored").expect("engine");
    target
        .restore(
            dump.into_source(),
            &RestoreOptions::default().with_create(true).with_jobs(2),
        )
        .await
        .expect("restore of hash partitions on an enum");
    let sql = "SELECT count(*), md5(string_agg(c::text || n, ',' ORDER BY n)) FROM h
               UNION ALL SELECT count(*), md5(string_agg(id || '@' || at, ',' ORDER BY id)) FROM p";
    let restored = rows_text(&server, "parts_restored", sql).await;
    assert_eq!(rows_text(&server, "parts", sql).await, restored);
    assert!(restored[0].starts_with("1000|"), "{restored:?}");
}
