//! A dump taken while pgbench writes is one consistent snapshot.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use ops_core::testkit::engine::dump_to_memory;
use ops_core::{DatabaseEngine, DumpOptions, RestoreOptions};
use ops_postgres::ephemeral::EphemeralPostgres;

use common::*;

/// pgbench of the server's own version, else the one on PATH.
fn pgbench(server: &EphemeralPostgres) -> PathBuf {
    let local = server.bin_dir().join("pgbench");
    if local.is_file() {
        return local;
    }
    PathBuf::from("pgbench")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_under_pgbench_load_is_consistent() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    server.create_database("bench").await.expect("create");
    let port = server.port().to_string();
    let socket = server.socket_dir().display().to_string();
    let init = Command::new(pgbench(&server))
        .args([
            "-i", "-s", "2", "-q", "-h", &socket, "-U", "postgres", "-p", &port, "bench",
        ])
        .output()
        .expect("pgbench -i runs (install postgresql-contrib)");
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );

    let mut load = std::process::Command::new(pgbench(&server))
        .args([
            "-c", "4", "-T", "30", "-n", "-h", &socket, "-U", "postgres", "-p", &port, "bench",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pgbench runs");
    // Let the load start before the snapshot: wait (bounded) for its first commits.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n = rows_text(&server, "bench", "SELECT count(*) FROM pgbench_history").await;
        if n.first().is_some_and(|n| n != "0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pgbench committed nothing within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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

/// A TRUNCATE committed while pg_dump is being found and version-checked must not
/// empty a table in a snapshot that predates it: tool checks come before the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_during_tool_checks_does_not_tear_the_snapshot() {
    use std::os::unix::fs::PermissionsExt;

    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    server
        .execute(
            "postgres",
            "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100);
             CREATE TABLE marker (id int);",
        )
        .await
        .expect("fill");
    // A pg_dump whose `--version` announces itself and then takes a second.
    let dir = tempfile::tempdir().expect("tempdir");
    let started = dir.path().join("started");
    let real = server.bin_dir().join("pg_dump");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then touch '{}'; sleep 1; fi\nexec '{}' \"$@\"\n",
        started.display(),
        real.display()
    );
    let fake = dir.path().join("pg_dump");
    std::fs::write(&fake, script).expect("write script");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let engine = server
        .engine_for("postgres")
        .expect("engine")
        .with_bin_dir(dir.path());
    let dump = tokio::spawn(async move { dump_to_memory(&engine, &DumpOptions::default()).await });
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while !started.exists() {
        assert!(Instant::now() < deadline, "pg_dump --version never ran");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    server
        .execute(
            "postgres",
            "BEGIN; TRUNCATE t; INSERT INTO marker VALUES (1); COMMIT;",
        )
        .await
        .expect("truncate");
    let (dump, _) = dump.await.expect("dump task");
    let rows = |name: &str| {
        dump.summaries()
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(_, m)| m.rows)
    };
    // Either both changes are in the snapshot or neither is.
    assert_eq!(
        (rows("data/public.t/0"), rows("data/public.marker/0")),
        (Some(0), Some(1)),
        "the dump saw the TRUNCATE but not the row committed with it"
    );
}
