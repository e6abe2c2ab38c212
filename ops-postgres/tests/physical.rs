//! Physical base backups and point-in-time recovery on a real server: one ephemeral
//! PostgreSQL with archiving into a local directory (a plain copy), whose files a
//! background task pushes into the repository's WAL archive as an archive command
//! writing there would. Everything shares that server: the suite runs in CI.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ops_core::repo::{
    BackupOptions, LOG_KIND_KEY, LOG_SERIES_KEY, LOG_START_KEY, LOG_STOP_KEY, LogKind, Repository,
};
use ops_core::{DatabaseEngine, ErrorKind, RestoreOptions, StreamSource};
use ops_postgres::PostgresEngine;
use ops_postgres::ephemeral::{EphemeralOptions, EphemeralPostgres};
use ops_postgres::physical::{
    self, PhysicalEngine, ProofOptions, RecoverySettings, RecoveryTarget, StartOptions,
    TargetAction,
};
use ops_postgres::wal;

use common::*;

/// Rows of one query as text, through a Unix socket, for comparisons.
async fn rows_at(socket: &Path, port: u16, db: &str, sql: &str) -> Vec<String> {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={port} user=postgres dbname='{db}'",
            socket.display()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("test connection");
    tokio::spawn(conn);
    client
        .simple_query(sql)
        .await
        .expect("query")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("<null>").to_owned())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

async fn one(server: &EphemeralPostgres, db: &str, sql: &str) -> String {
    rows_text(server, db, sql)
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{sql} returned no row"))
}

/// Gives `path` to the user the server runs as (the owner of its socket directory),
/// so that the archive command can write there and the server can reach a
/// tablespace directory.
fn give_to_server(server: &EphemeralPostgres, path: &Path) {
    let meta = std::fs::metadata(server.socket_dir()).expect("socket dir");
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid())).expect("chown");
}

/// Pushes every complete file of the local archive into the repository's WAL archive,
/// as an archive command pushing there would; runs until aborted.
async fn mirror_archive(repo: Repository, dir: PathBuf, series: String) {
    let mut pushed = BTreeSet::new();
    loop {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("archive dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| wal::is_wal_file_name(n) && !pushed.contains(n))
            .collect();
        names.sort();
        for name in names {
            let bytes = std::fs::read(dir.join(&name)).expect("archived file");
            repo.push_log(LogKind::Wal, &series, &name, &bytes)
                .await
                .expect("push into the repository's archive");
            pushed.insert(name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the local archive holds `name`.
async fn wait_archived(dir: &Path, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join(name).is_file() {
        assert!(Instant::now() < deadline, "{name} was not archived in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints how long the section since the last lap took.
fn lap(clock: &mut Instant, what: &str) {
    eprintln!("--- {what}: {:.2} s", clock.elapsed().as_secs_f64());
    *clock = Instant::now();
}

const ROWS: &str = "SELECT step, n, at FROM t ORDER BY step, n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_backup_and_point_in_time_recovery() {
    let mut clock = Instant::now();
    let work = tempfile::tempdir().expect("tempdir");
    // The server's user (nobody, when the tests run as root) reads the archive and
    // the restored directories below this one.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let archive = work.path().join("archive");
    std::fs::create_dir(&archive).expect("archive dir");
    let a = archive.display().to_string();
    let server = EphemeralPostgres::start_with(
        EphemeralOptions::default()
            .with_setting("wal_level", "replica")
            .with_setting("archive_mode", "on")
            .with_setting(
                "archive_command",
                format!("cp %p {a}/%f.part && mv {a}/%f.part {a}/%f"),
            ),
    )
    .await
    .expect("ephemeral server with archiving");
    give_to_server(&server, &archive);
    let restore_command = format!("cp {a}/%f %p");

    let sysid = one(
        &server,
        "postgres",
        "SELECT system_identifier FROM pg_control_system()",
    )
    .await;
    let series = wal::series_name(sysid.parse().expect("system identifier"));
    let repo = repository(&work.path().join("r")).await;
    let mirror = tokio::spawn(mirror_archive(
        repo.clone(),
        archive.clone(),
        series.clone(),
    ));

    server.create_database("shop").await.expect("create shop");
    server
        .execute(
            "shop",
            "CREATE TABLE t (step int, n int, at timestamptz NOT NULL DEFAULT clock_timestamp(),
                             PRIMARY KEY (step, n));
             INSERT INTO t (step, n) SELECT 0, g FROM generate_series(1, 2000) g;",
        )
        .await
        .expect("table");

    let physical = PhysicalEngine::new(server.engine_for("postgres").expect("engine"));
    let options = BackupOptions::default().with_log_wait(Duration::from_secs(60));
    lap(&mut clock, "server and data");

    // 1. A base backup: one stream per file, the WAL range in the manifest, recorded
    // once its stop segment is in the repository's archive.
    let started = Instant::now();
    let first = repo.backup(&physical, &options).await.expect("base backup");
    let first_time = started.elapsed();
    assert_eq!(first.engine, physical::ENGINE_NAME);
    assert_eq!(first.database, physical::CLUSTER);
    assert_eq!(
        first.server_id.as_deref(),
        Some(format!("pg:{sysid}").as_str())
    );
    let snap = &first.snapshot;
    for key in [
        physical::START_LSN_KEY,
        physical::STOP_LSN_KEY,
        physical::TIMELINE_KEY,
        physical::SEGMENT_SIZE_KEY,
        physical::WAL_START_KEY,
        physical::WAL_STOP_KEY,
    ] {
        assert!(snap.contains_key(key), "{key} missing: {snap:?}");
    }
    assert_eq!(snap[physical::SYSTEM_IDENTIFIER_KEY], sysid);
    assert_eq!(snap[LOG_KIND_KEY], "wal");
    assert_eq!(snap[LOG_SERIES_KEY], series);
    assert_eq!(snap[LOG_START_KEY], snap[physical::WAL_START_KEY]);
    assert_eq!(snap[LOG_STOP_KEY], snap[physical::WAL_STOP_KEY]);
    let start = wal::Lsn::parse(&snap[physical::START_LSN_KEY]).expect("start");
    let stop = wal::Lsn::parse(&snap[physical::STOP_LSN_KEY]).expect("stop");
    assert!(start <= stop, "{start} .. {stop}");
    assert!(
        repo.fetch_log(LogKind::Wal, &series, &snap[LOG_STOP_KEY])
            .await
            .expect("fetch")
            .is_some(),
        "a recorded backup's stop segment is archived"
    );
    let names: BTreeSet<&str> = first.streams.iter().map(|s| s.spec.name.as_str()).collect();
    for needed in [
        "pgdata/PG_VERSION",
        "pgdata/global/pg_control",
        "pgdata/backup_label",
        "pgdata/base",
        physical::MANIFEST_STREAM,
    ] {
        assert!(names.contains(needed), "{needed} is not a stream");
    }
    let control = first
        .streams
        .iter()
        .find(|s| s.spec.name == "pgdata/global/pg_control")
        .expect("pg_control");
    assert_eq!(control.spec.meta[physical::META_SIZE], "8192");
    assert_eq!(control.spec.meta[physical::META_MODE], "0600");

    // 2. The same cluster again: only what a checkpoint and the label change is new.
    let second = repo.backup(&physical, &options).await.expect("second");
    let ratio = second.stats.stored_bytes as f64 / first.stats.stored_bytes as f64;
    eprintln!(
        "--- base backup: {:.2} s, {} files, {} bytes read, {} stored; second: {} new bytes, \
         {} stored ({:.3} % of the first)",
        first_time.as_secs_f64(),
        first.streams.len(),
        first.stats.bytes,
        first.stats.stored_bytes,
        second.stats.new_bytes,
        second.stats.stored_bytes,
        ratio * 100.0
    );
    assert!(
        ratio < 0.01,
        "the second base backup of an unchanged cluster stored {:.3} % of the first",
        ratio * 100.0
    );

    lap(&mut clock, "second base backup");

    // 3. Three steps of writes, each in its own WAL segment; the moment and the
    // position between steps 2 and 3 are the targets.
    let step =
        |n: u32| format!("INSERT INTO t (step, n) SELECT {n}, g FROM generate_series(1, 10) g");
    server.execute("shop", &step(1)).await.expect("step 1");
    server
        .execute("shop", "SELECT pg_switch_wal()")
        .await
        .expect("switch");
    server.execute("shop", &step(2)).await.expect("step 2");
    let between = rows_text(
        &server,
        "shop",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                pg_current_wal_insert_lsn()",
    )
    .await;
    let (target_time, target_lsn) = between[0].split_once('|').expect("time|lsn");
    let (target_time, target_lsn) = (target_time.to_owned(), target_lsn.to_owned());
    server
        .execute("shop", "SELECT pg_switch_wal()")
        .await
        .expect("switch");
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.execute("shop", &step(3)).await.expect("step 3");
    let last = one(&server, "shop", "SELECT pg_walfile_name(pg_switch_wal())").await;
    wait_archived(&archive, &last).await;
    let expected = rows_text(
        &server,
        "shop",
        "SELECT step, n, at FROM t WHERE step <= 2 ORDER BY step, n",
    )
    .await;
    assert_eq!(expected.len(), 2020);
    lap(&mut clock, "steps archived");

    // 4. Restore to the time between steps 2 and 3, promote.
    let to_time = work.path().join("to-time");
    let settings = RecoverySettings::new(restore_command.clone())
        .with_target(RecoveryTarget::time(&target_time).expect("time"))
        .with_action(TargetAction::Promote);
    let report = repo
        .restore(
            &first,
            &PhysicalEngine::restore_to(&to_time, settings),
            &RestoreOptions::default(),
        )
        .await
        .expect("restore to a time");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert!(to_time.join("recovery.signal").is_file());
    let mode = std::fs::metadata(&to_time)
        .expect("dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    let recovered = physical::start_recovered(
        &to_time,
        &StartOptions::default().with_wait(Duration::from_secs(120)),
    )
    .await
    .expect("recovered to the time");
    let rows = rows_at(&recovered.socket_dir(), recovered.port(), "shop", ROWS).await;
    assert_eq!(rows, expected, "restored to {target_time}");
    eprintln!(
        "--- recovery to {target_time}: {:?}",
        recovered.recovery_summary()
    );
    // The handle's URL reaches it through the library's own connection path.
    let info = PostgresEngine::new(&recovered.url_for("shop"))
        .expect("url")
        .describe()
        .await
        .expect("describe the recovered server");
    assert!(info.tables.iter().any(|t| t.table.name == "t"), "{info:?}");
    recovered.stop().await.expect("stop");
    lap(&mut clock, "restore to a time, recover, promote");

    // A directory that holds anything is refused before a byte is written.
    let err = repo
        .restore(
            &first,
            &PhysicalEngine::restore_to(&to_time, RecoverySettings::new(restore_command.clone())),
            &RestoreOptions::default(),
        )
        .await
        .expect_err("non-empty directory");
    assert_eq!(err.kind(), ErrorKind::TargetNotEmpty, "{err}");

    // 5. Restore to the position between steps 2 and 3, pause there.
    let to_lsn = work.path().join("to-lsn");
    let settings = RecoverySettings::new(restore_command.clone())
        .with_target(RecoveryTarget::lsn(&target_lsn).expect("lsn"))
        .with_action(TargetAction::Pause);
    repo.restore(
        &first,
        &PhysicalEngine::restore_to(&to_lsn, settings),
        &RestoreOptions::default(),
    )
    .await
    .expect("restore to an LSN");
    let paused = physical::start_recovered(
        &to_lsn,
        &StartOptions::default().with_wait(Duration::from_secs(120)),
    )
    .await
    .expect("recovered to the LSN");
    let rows = rows_at(&paused.socket_dir(), paused.port(), "shop", ROWS).await;
    assert_eq!(rows, expected, "restored to {target_lsn}");
    let state = rows_at(
        &paused.socket_dir(),
        paused.port(),
        "postgres",
        "SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state()",
    )
    .await;
    assert_eq!(state, vec!["t|paused".to_owned()]);
    paused.stop().await.expect("stop");
    lap(&mut clock, "restore to an LSN, recover, pause");

    // 6. A target past the end of the archive: the server's own FATAL line.
    let too_far = work.path().join("too-far");
    let settings = RecoverySettings::new(restore_command.clone())
        .with_target(RecoveryTarget::time("2999-01-01 00:00:00+00").expect("time"));
    repo.restore(
        &first,
        &PhysicalEngine::restore_to(&too_far, settings),
        &RestoreOptions::default(),
    )
    .await
    .expect("restore");
    let err = physical::start_recovered(
        &too_far,
        &StartOptions::default().with_wait(Duration::from_secs(120)),
    )
    .await
    .expect_err("the target is never reached");
    assert!(
        err.message()
            .contains("recovery ended before configured recovery target was reached"),
        "{err}"
    );

    lap(&mut clock, "restore past the archive's end");

    // 7. The proof of the base backup: consistent, every file as PostgreSQL listed
    // it, every relation checked by pg_amcheck.
    let source: Arc<dyn StreamSource> = Arc::new(repo.source(&first, false).await.expect("source"));
    let started = Instant::now();
    let proof = physical::prove_restore(
        source,
        &ProofOptions::new(restore_command.clone())
            .with_work_dir(work.path())
            .with_start(StartOptions::default().with_wait(Duration::from_secs(120))),
    )
    .await
    .expect("the proof passes");
    eprintln!(
        "--- proof: {:.2} s, {} files, databases {:?}",
        started.elapsed().as_secs_f64(),
        proof.files,
        proof.databases
    );
    clock = Instant::now();
    assert!(proof.manifest_verified);
    assert!(proof.databases.iter().any(|d| d == "shop"), "{proof:?}");

    // 8. Refusals: a role without REPLICATION, and a tablespace outside the data
    // directory, each named with what to do.
    server
        .execute(
            "postgres",
            "CREATE ROLE plain LOGIN PASSWORD 'plain-secret-9'",
        )
        .await
        .expect("role");
    let plain = PhysicalEngine::new(
        PostgresEngine::new(&format!(
            "postgres://plain:plain-secret-9@127.0.0.1:{}/postgres?sslmode=disable",
            server.port()
        ))
        .expect("url")
        .with_bin_dir(server.bin_dir()),
    );
    assert!(!format!("{plain:?}").contains("plain-secret-9"));
    let err = repo
        .backup(&plain, &options)
        .await
        .expect_err("no REPLICATION");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.message().contains("WITH REPLICATION"), "{err}");
    assert!(!err.to_string().contains("plain-secret-9"), "{err}");

    let space = work.path().join("space");
    std::fs::create_dir(&space).expect("tablespace dir");
    give_to_server(&server, &space);
    server
        .execute(
            "postgres",
            &format!("CREATE TABLESPACE elsewhere LOCATION '{}'", space.display()),
        )
        .await
        .expect("tablespace");
    let err = repo
        .backup(&physical, &options)
        .await
        .expect_err("a tablespace");
    assert!(err.message().contains("'elsewhere'"), "{err}");
    server
        .execute("postgres", "DROP TABLESPACE elsewhere")
        .await
        .expect("drop tablespace");

    lap(&mut clock, "refusals");
    mirror.abort();
    server.stop().await.expect("stop the server");
}
