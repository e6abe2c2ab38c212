//! A dump taken while pgbench writes is one consistent snapshot.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use ops_core::testkit::engine::dump_to_memory;
use ops_core::{DatabaseEngine, DumpOptions, RestoreOptions};
use ops_postgres::ephemeral::EphemeralPostgres;

use common::*;

fn pgbench(server: &EphemeralPostgres) -> PathBuf {
    let local = server.bin_dir().join("pgbench");
    if local.is_file() {
        return local;
    }
    let fixed = PathBuf::from("/usr/lib/postgresql/15/bin/pgbench");
    if fixed.is_file() {
        return fixed;
    }
    PathBuf::from("pgbench")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_under_pgbench_load_is_consistent() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    server.create_database("bench").await.expect("create");
    let port = server.port().to_string();
    let init = Command::new(pgbench(&server))
        .args([
            "-i",
            "-s",
            "2",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &port,
            "bench",
        ])
        .output()
        .expect("pgbench -i runs (install postgresql-contrib / postgresql-15)");
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );

    let mut load = std::process::Command::new(pgbench(&server))
        .args([
            "-c",
            "4",
            "-T",
            "30",
            "-n",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &port,
            "bench",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pgbench runs");
    // Let the load start before the snapshot.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let source = server.engine_for("bench").expect("engine");
    let started = Instant::now();
    let (dump, report) = dump_to_memory(
        &source,
        &DumpOptions::default()
            .with_jobs(2)
            .with_split_bytes(4 * 1024 * 1024),
    )
    .await;
    let took = started.elapsed();
    let _ = load.kill();
    let _ = load.wait();
    eprintln!("dump under load: {took:?}, snapshot {:?}", report.snapshot);
    assert!(report.snapshot.contains_key("snapshot") && report.snapshot.contains_key("wal_lsn"));
    let parts = dump
        .summaries()
        .iter()
        .filter(|(s, _)| s.name.starts_with("data/public.pgbench_accounts/"))
        .count();
    assert!(parts > 1, "pgbench_accounts should have been split");

    let target = server.engine_for("bench_restored").expect("engine");
    target
        .restore(
            dump.into_source(),
            &RestoreOptions::default().with_create(true).with_jobs(2),
        )
        .await
        .expect("restore");
    let sums = rows_text(
        &server,
        "bench_restored",
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts),
                (SELECT sum(bbalance) FROM pgbench_branches),
                (SELECT sum(tbalance) FROM pgbench_tellers),
                (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
                (SELECT count(*) FROM pgbench_history)",
    )
    .await;
    let fields: Vec<&str> = sums[0].split('|').collect();
    eprintln!(
        "restored sums (accounts|branches|tellers|history|history rows): {}",
        sums[0]
    );
    assert!(
        fields[4] != "0",
        "pgbench wrote nothing before the snapshot; the test proves nothing"
    );
    assert!(
        fields[0] == fields[1] && fields[1] == fields[2] && fields[2] == fields[3],
        "inconsistent snapshot: {}",
        sums[0]
    );
}

/// Not a test: times a dump into memory and a restore from it, for the report.
/// `DBOPS_MEASURE_URL=postgres://… cargo nextest run -p ops-postgres --run-ignored only`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; needs DBOPS_MEASURE_URL"]
async fn measure_dump_and_restore() {
    let Ok(url) = std::env::var("DBOPS_MEASURE_URL") else {
        loud("DBOPS_MEASURE_URL not set: nothing measured");
        return;
    };
    let source = ops_postgres::PostgresEngine::new(&url).expect("url");
    for jobs in [1, 2] {
        let t = Instant::now();
        let (dump, _) = dump_to_memory(&source, &DumpOptions::default().with_jobs(jobs)).await;
        let bytes: u64 = dump.summaries().iter().map(|(_, s)| s.bytes).sum();
        eprintln!("dump jobs={jobs}: {:?}, {bytes} bytes", t.elapsed());
        let target = source.with_database(&format!("measure_restore_{jobs}"));
        let _ = target.drop_database().await;
        let t = Instant::now();
        target
            .restore(
                dump.into_source(),
                &RestoreOptions::default().with_create(true).with_jobs(jobs),
            )
            .await
            .expect("restore");
        eprintln!("restore jobs={jobs}: {:?}", t.elapsed());
        target.drop_database().await.expect("drop");
    }
}
