//! Failures an operator will meet, and what they are told.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream;
use mysql_async::prelude::Queryable;
use ops_core::testkit::engine::{MemoryDump, dump_to_memory};
use ops_core::{
    ByteStream, DatabaseEngine, DumpOptions, DumpSink, Error, ErrorKind, RestoreOptions, Result,
    StreamRole, StreamSource, StreamSpec, StreamSummary, StreamWriter,
};
use ops_mariadb::MariaDbEngine;
use ops_mariadb::ephemeral::EphemeralMariaDb;

async fn server_with_data(rows: u64) -> EphemeralMariaDb {
    let server = common::server().await;
    server.execute("", "CREATE DATABASE shop").await.unwrap();
    common::exec(
        &server,
        "shop",
        &format!(
            "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(200)); \
             INSERT INTO items SELECT seq, REPEAT('n', 150) FROM seq_1_to_{rows}; \
             CREATE TABLE notes (id INT PRIMARY KEY, body TEXT); \
             INSERT INTO notes VALUES (1, 'hello'), (2, 'world')"
        ),
    )
    .await;
    server
}

#[tokio::test]
async fn unreachable_server_is_reported_as_such() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let engine = MariaDbEngine::new(&format!("mariadb://root:pw@127.0.0.1:{port}/db")).unwrap();
    let err = engine.describe().await.expect_err("nothing listens there");
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    assert!(!format!("{err} {err:?}").contains(":pw@"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileges_passwords_and_targets() {
    let server = server_with_data(100).await;
    server
        .execute(
            "",
            "CREATE USER 'reader'@'%' IDENTIFIED BY 'right-password'; \
             GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON shop.* TO 'reader'@'%'; \
             CREATE USER 'nobody_here'@'%' IDENTIFIED BY 'pw2';",
        )
        .await
        .unwrap();
    let port = server.port();

    // A server without TLS: verify-full fails rather than talk in plain text (the
    // TLS successes and failures are in tests/tls.rs, on a server with TLS).
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = ops_core::testkit::certs::make_test_pki(pki_dir.path());
    let err = MariaDbEngine::new(&format!(
        "mariadb://reader:right-password@127.0.0.1:{port}/shop?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
        pki.ca.display()
    ))
    .unwrap()
    .describe()
    .await
    .expect_err("verify-full against a server without TLS");
    assert!(err.to_string().contains("does not offer TLS"), "{err}");
    assert!(!err.is_temporary(), "{err:?}");

    // Wrong password: Authentication, and the password appears nowhere.
    let wrong = MariaDbEngine::new(&format!(
        "mariadb://reader:Wr0ngSecretXYZ@127.0.0.1:{port}/shop?ssl-mode=disable"
    ))
    .unwrap();
    let err = wrong.describe().await.expect_err("wrong password");
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    let shown = format!("{err} {err:?} {} {wrong:?}", wrong.location());
    assert!(!shown.contains("Wr0ngSecretXYZ"), "{shown}");

    // No RELOAD: one connection with a consistent snapshot, and a warning saying so.
    let reader = MariaDbEngine::new(&format!(
        "mariadb://reader:right-password@127.0.0.1:{port}/shop"
    ))
    .unwrap();
    let (dump, report) = dump_to_memory(&reader, &DumpOptions::default().with_jobs(2)).await;
    assert_eq!(
        report.snapshot.get("method").map(String::as_str),
        Some("consistent_snapshot_single_connection"),
        "{report:?}"
    );
    assert!(
        dump.warnings()
            .iter()
            .any(|w| w.contains("FLUSH TABLES WITH READ LOCK") && w.contains("RELOAD")),
        "{:?}",
        dump.warnings()
    );
    assert_eq!(dump.table_digests()["shop.items"].rows, 100);

    // No SELECT: a clear permission error.
    let outsider =
        MariaDbEngine::new(&format!("mariadb://nobody_here:pw2@127.0.0.1:{port}/shop")).unwrap();
    let sink = MemoryDump::new();
    let err = outsider
        .dump(
            &DumpOptions::default(),
            Arc::new(ops_core::testkit::engine::MemorySink(sink)),
        )
        .await
        .expect_err("no privileges");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("shop"), "{err}");

    // Non-empty target without clean.
    let root = MariaDbEngine::new(&server.url_for("shop")).unwrap();
    let src = dump.into_source();
    let err = root
        .restore(src.clone(), &RestoreOptions::default())
        .await
        .expect_err("shop is not empty");
    assert_eq!(err.kind(), ErrorKind::TargetNotEmpty, "{err}");
    // Without create, a missing database is NotFound.
    let err = root
        .with_database("missing_db")
        .restore(src, &RestoreOptions::default())
        .await
        .expect_err("no such database");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

/// A sink that kills the server when the first table data arrives.
struct KillingSink {
    server: Arc<Mutex<EphemeralMariaDb>>,
    killed: Arc<AtomicBool>,
}

struct KillingWriter {
    data: bool,
    server: Arc<Mutex<EphemeralMariaDb>>,
    killed: Arc<AtomicBool>,
}

#[async_trait]
impl DumpSink for KillingSink {
    async fn open_stream(&self, spec: StreamSpec) -> Result<Box<dyn StreamWriter>> {
        Ok(Box::new(KillingWriter {
            data: spec.role == StreamRole::TableData,
            server: Arc::clone(&self.server),
            killed: Arc::clone(&self.killed),
        }))
    }
    fn warn(&self, _message: String) {}
}

#[async_trait]
impl StreamWriter for KillingWriter {
    async fn write(&mut self, _data: Bytes) -> Result<()> {
        if self.data && !self.killed.swap(true, Ordering::SeqCst) {
            self.server.lock().unwrap().kill();
        }
        Ok(())
    }
    async fn finish(self: Box<Self>) -> Result<StreamSummary> {
        Ok(StreamSummary::default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_dump_fails_the_dump() {
    let server = server_with_data(100_000).await;
    let engine = MariaDbEngine::new(&server.url_for("shop")).unwrap();
    let server = Arc::new(Mutex::new(server));
    let killed = Arc::new(AtomicBool::new(false));
    let sink = KillingSink {
        server: Arc::clone(&server),
        killed: Arc::clone(&killed),
    };
    let err = engine
        .dump(&DumpOptions::default(), Arc::new(sink))
        .await
        .expect_err("the server died mid-dump");
    assert!(killed.load(Ordering::SeqCst));
    assert!(
        matches!(err.kind(), ErrorKind::Interrupted | ErrorKind::Unreachable),
        "{err:?}"
    );
}

/// A source whose table data streams fail after their first piece.
#[derive(Debug)]
struct DamagedSource(Arc<MemoryDump>);

#[async_trait]
impl StreamSource for DamagedSource {
    fn streams(&self) -> &[StreamSpec] {
        self.0.streams()
    }
    async fn open(&self, name: &str) -> Result<ByteStream> {
        let mut inner = self.0.open(name).await?;
        if !name.contains("items") {
            return Ok(inner);
        }
        use futures::StreamExt;
        let first = inner.next().await.unwrap_or_else(|| Ok(Bytes::new()));
        let damaged = Error::corrupt("chunk 4f3a is damaged (authentication failed)")
            .with_context("chunk", "4f3a");
        Ok(Box::pin(stream::iter(vec![first, Err(damaged)])))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_stream_and_disabled_local_infile() {
    let server = server_with_data(5_000).await;
    let source = MariaDbEngine::new(&server.url_for("shop")).unwrap();
    let (dump, _) = dump_to_memory(&source, &DumpOptions::default()).await;
    let dump = dump.into_source();

    // The source's error is the restore's error, and the created database is removed.
    let copy = source.with_database("shop_damaged");
    let err = copy
        .restore(
            Arc::new(DamagedSource(Arc::clone(&dump))),
            &RestoreOptions::default().with_create(true).with_jobs(2),
        )
        .await
        .expect_err("damaged chunk");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("4f3a"), "{err}");
    let mut c = common::connect(&server, "shop").await;
    let left: Option<String> = c
        .query_first("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'shop_damaged'")
        .await
        .unwrap();
    assert_eq!(left, None, "the failed restore's database was not dropped");

    // keep_failed keeps it, and nothing of the damaged table was committed.
    let err = copy
        .restore(
            Arc::new(DamagedSource(Arc::clone(&dump))),
            &RestoreOptions::default()
                .with_create(true)
                .with_keep_failed(true),
        )
        .await
        .expect_err("damaged chunk");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let n: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM shop_damaged.items")
        .await
        .unwrap();
    assert_eq!(n, Some(0), "a partial load was committed");
    c.disconnect().await.ok();
    copy.drop_database().await.unwrap();

    // A target server without local_infile: a clear error saying how to enable it.
    let strict = EphemeralMariaDb::builder()
        .with_local_infile(false)
        .start()
        .await
        .unwrap();
    let target = MariaDbEngine::new(&strict.url_for("shop")).unwrap();
    let err = target
        .restore(
            dump as Arc<dyn StreamSource>,
            &RestoreOptions::default().with_create(true),
        )
        .await
        .expect_err("local_infile is off");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("SET GLOBAL local_infile=1") && text.contains("--local-infile=1"),
        "{text}"
    );
}
