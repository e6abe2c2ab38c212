//! The binlog archive and point-in-time replay on one ephemeral server: a logical
//! backup, rows written at known times while the archiver runs, is killed and is
//! started again; the archive rebuilds the server's own binlog files byte for byte,
//! and a restore of the backup rolled forward to a time holds exactly the rows
//! written before it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use ops_core::chrono::{DateTime, DurationRound as _, TimeDelta, Utc};
use ops_core::repo::{BackupOptions, Encryption, InitOptions, LogKind, Repository};
use ops_core::{DatabaseEngine, ErrorKind, RestoreOptions};
use ops_mariadb::MariaDbEngine;
use ops_mariadb::binlog::{
    ArchiveOptions, ArchiveReport, BINLOG_MAGIC, BinlogArchiver, BinlogPosition, archive_reach,
    binlog_series, parse_piece_name, record_archive_keys, replay_to_time,
};
use ops_mariadb::ephemeral::EphemeralMariaDb;
use ops_storage::{TargetOptions, open_target};
use tokio::sync::oneshot;

/// An archiver running in a task: cut pieces small and often, so that a few rows
/// make several pieces and a kill lands between pushes.
struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<ops_core::Result<ArchiveReport>>,
}

fn start_archiver(engine: &MariaDbEngine, repo: &Arc<Repository>) -> Running {
    let archiver = BinlogArchiver::new(engine, Arc::clone(repo)).with_options(
        ArchiveOptions::default()
            .with_piece_bytes(600)
            .with_piece_interval(Duration::from_millis(300))
            .with_heartbeat(Duration::from_secs(1)),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        archiver
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    Running { stop, task }
}

async fn rows(server: &EphemeralMariaDb, db: &str) -> Vec<(i64, i64, String)> {
    let mut c = common::connect(server, db).await;
    let out = c
        .query("SELECT id, step, note FROM t ORDER BY id")
        .await
        .expect("rows");
    c.disconnect().await.ok();
    out
}

/// The server's binlog files (name, size), and where it writes now.
async fn binary_logs(server: &EphemeralMariaDb) -> (Vec<(String, u64)>, BinlogPosition) {
    let mut c = common::connect(server, "mysql").await;
    let files: Vec<(String, u64)> = c.query("SHOW BINARY LOGS").await.expect("binary logs");
    let status: mysql_async::Row = c
        .query_first("SHOW MASTER STATUS")
        .await
        .expect("master status")
        .expect("the binlog is on");
    let file: String = status.get(0).expect("File");
    let position: u64 = status.get(1).expect("Position");
    c.disconnect().await.ok();
    (files, BinlogPosition::new(file, position))
}

/// Waits until the archive reaches the server's current binlog position.
async fn caught_up(server: &EphemeralMariaDb, repo: &Repository, series: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, now) = binary_logs(server).await;
        let reach = archive_reach(repo, series).await.expect("reach");
        if reach.as_ref().is_some_and(|r| r.end >= now) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the archive did not catch up with {now}: {reach:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn step(server: &EphemeralMariaDb, n: i64) -> DateTime<Utc> {
    tokio::time::sleep(Duration::from_millis(1200)).await;
    common::exec(
        server,
        "shop",
        &format!(
            "INSERT INTO t VALUES ({a}, {n}, 'step {n}'), ({b}, {n}, 'step {n} again'); \
             UPDATE t SET note = CONCAT(note, ' +{n}') WHERE id = 1",
            a = n * 10,
            b = n * 10 + 1
        ),
    )
    .await;
    Utc::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_survives_kills_and_replays_to_a_time() {
    let server = common::server().await;
    server.create_database("shop").await.expect("create");
    common::exec(
        &server,
        "shop",
        "CREATE TABLE t (id BIGINT PRIMARY KEY, step INT NOT NULL, note VARCHAR(200)); \
         INSERT INTO t VALUES (1, 0, 'before the backup'), (2, 0, 'before the backup')",
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let target = open_target(
        &dir.path().join("repo").display().to_string(),
        &TargetOptions::default(),
    )
    .expect("target");
    let repo = Arc::new(
        Repository::init(target, InitOptions::new(Encryption::None))
            .await
            .expect("init"),
    );
    let source = MariaDbEngine::new(&server.url_for("shop")).expect("engine");
    let series = binlog_series(&source).await.expect("series");
    assert!(
        series.starts_with("mariadb-1-") && series.ends_with(&format!("-{}", server.port())),
        "{series}"
    );

    // The archiver starts with nothing archived: at the server's oldest binlog.
    let first = start_archiver(&source, &repo);
    let manifest = repo
        .backup(&source, &BackupOptions::default())
        .await
        .expect("backup");
    let from = BinlogPosition::from_snapshot(&manifest.snapshot).expect("binlog position");
    let mut snapshot = manifest.snapshot.clone();
    assert!(record_archive_keys(&mut snapshot, &series));

    let t1 = step(&server, 1).await;
    caught_up(&server, &repo, &series).await;
    // Killed: the task is dropped wherever it is, without pushing what it holds.
    common::exec(
        &server,
        "shop",
        "INSERT INTO t VALUES (15, 1, 'just before the kill')",
    )
    .await;
    first.task.abort();
    assert!(first.task.await.expect_err("aborted").is_cancelled());
    drop(first.stop);

    // Written while no archiver runs, across a rotation.
    let t2 = step(&server, 2).await;
    common::exec(&server, "mysql", "FLUSH BINARY LOGS").await;
    common::exec(
        &server,
        "shop",
        "INSERT INTO t VALUES (25, 2, 'after the rotation')",
    )
    .await;
    let t2 = t2.max(Utc::now());

    // Restarted: it continues after the last piece.
    let second = start_archiver(&source, &repo);
    let t3 = step(&server, 3).await;
    common::exec(&server, "shop", "DELETE FROM t WHERE id = 2").await;
    caught_up(&server, &repo, &series).await;
    // Stopped cleanly this time, then started once more with nothing new to read.
    second.stop.send(()).expect("still running");
    let report = second.task.await.expect("joined").expect("archiver");
    assert!(report.pieces > 0 && report.events > 0, "{report:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let end = Utc::now();
    let third = start_archiver(&source, &repo);
    common::exec(&server, "mysql", "FLUSH BINARY LOGS").await;
    caught_up(&server, &repo, &series).await;
    third.stop.send(()).expect("still running");
    let again = third.task.await.expect("joined").expect("archiver");
    assert_eq!(again.started_at, report.archived_to, "{again:?}");

    // Every closed binlog file of the server, rebuilt from its pieces, byte for byte.
    let (files, _) = binary_logs(&server).await;
    let pieces = repo
        .list_logs(LogKind::Binlog, Some(&series))
        .await
        .expect("list");
    assert!(files.len() >= 3, "{files:?}");
    assert!(pieces.len() > files.len(), "{} pieces", pieces.len());
    eprintln!(
        "{} pieces for {} binlog files; runs: killed, then {report:?}, then {again:?}",
        pieces.len(),
        files.len()
    );
    for (name, size) in &files[..files.len() - 1] {
        let mut rebuilt = BINLOG_MAGIC.to_vec();
        for piece in &pieces {
            let at = parse_piece_name(&piece.name).expect("piece name");
            if at.file == *name {
                assert_eq!(at.position, rebuilt.len() as u64, "{}", piece.name);
                let bytes = repo
                    .fetch_log(LogKind::Binlog, &series, &piece.name)
                    .await
                    .expect("fetch")
                    .expect("present");
                rebuilt.extend_from_slice(&bytes);
            }
        }
        let original = std::fs::read(server.dir().join(name)).expect("server's binlog");
        assert_eq!(original.len() as u64, *size);
        assert!(
            rebuilt == original,
            "{name}: rebuilt {} bytes, the server has {}",
            rebuilt.len(),
            original.len()
        );
    }

    // Retention by the backup's keys keeps the piece covering its position.
    let mut kept = manifest.clone();
    kept.snapshot = snapshot;
    let expiry = repo.expire_logs(&[kept], true).await.expect("expiry");
    let covering = pieces
        .iter()
        .rfind(|p| {
            parse_piece_name(&p.name)
                .is_some_and(|at| at.file == from.file && at.position <= from.position)
        })
        .expect("a piece covers the backup's position");
    let removed = expiry.iter().map(|e| e.removed).sum::<u64>();
    let before = pieces.iter().filter(|p| p.name < covering.name).count() as u64;
    assert!(removed <= before, "{expiry:?}");

    // Restored and rolled forward to a time between steps 2 and 3.
    let until = (t2 + TimeDelta::milliseconds(1))
        .duration_trunc(TimeDelta::seconds(1))
        .expect("whole second")
        + TimeDelta::seconds(1);
    assert!(
        until <= t3 - TimeDelta::milliseconds(200),
        "{until} vs {t3}"
    );
    let pitr = source.with_database("pitr");
    repo.restore(
        &manifest,
        &pitr,
        &RestoreOptions::default().with_create(true),
    )
    .await
    .expect("restore");
    let replayed = replay_to_time(&repo, &series, &from, until, "shop", &pitr)
        .await
        .expect("replay to a time");
    assert!(replayed.events > 0, "{replayed:?}");
    eprintln!("replayed until {until}: {replayed:?}");
    assert!(replayed.files.len() >= 2, "{replayed:?}");
    let expected: Vec<(i64, i64, String)> = vec![
        (1, 0, "before the backup +1 +2".into()),
        (2, 0, "before the backup".into()),
        (10, 1, "step 1".into()),
        (11, 1, "step 1 again".into()),
        (15, 1, "just before the kill".into()),
        (20, 2, "step 2".into()),
        (21, 2, "step 2 again".into()),
        (25, 2, "after the rotation".into()),
    ];
    assert_eq!(
        rows(&server, "pitr").await,
        expected,
        "replayed until {until} (step 2 ended {t2}, step 3 {t3}, step 1 {t1})"
    );

    // Rolled forward to the end: the source's rows exactly.
    let full = source.with_database("full");
    repo.restore(
        &manifest,
        &full,
        &RestoreOptions::default().with_create(true),
    )
    .await
    .expect("restore");
    replay_to_time(&repo, &series, &from, end, "shop", &full)
        .await
        .expect("replay to the end");
    assert_eq!(rows(&server, "full").await, rows(&server, "shop").await);
    assert_eq!(rows(&server, "full").await.len(), 9);

    // A time the archive does not reach fails before touching the target.
    let later = source.with_database("later");
    let err = replay_to_time(
        &repo,
        &series,
        &from,
        Utc::now() + TimeDelta::hours(1),
        "shop",
        &later,
    )
    .await
    .expect_err("beyond the archive");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("does not reach"), "{err}");
    let databases = source.databases().await.expect("databases");
    assert!(!databases.contains(&"later".to_owned()), "{databases:?}");
}
