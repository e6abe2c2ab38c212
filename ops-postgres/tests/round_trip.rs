//! Engine conformance on ephemeral servers: the kitchen-sink fixture and pagila.

mod common;

use std::sync::Arc;

use ops_core::testkit::engine::round_trip;
use ops_core::{DatabaseEngine, DumpOptions, RestoreOptions, StreamRole};
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
