//! Verified TLS against a real server with certificates made here (`openssl`): one
//! ephemeral MariaDB with TLS, `require_secure_transport=ON` (so that anything that
//! connected at all used TLS) and client certificates checked against the test CA.
//!
//! The server's certificate names `127.0.0.1` only: `localhost` is a wrong host name.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use ops_core::chrono::{DurationRound as _, TimeDelta, Utc};
use ops_core::health::{ProbeBudget, Thresholds};
use ops_core::repo::{BackupOptions, Encryption, InitOptions, Repository};
use ops_core::testkit::certs::{TestPki, make_test_pki};
use ops_core::{DatabaseEngine, ErrorKind, HealthStatus, RestoreOptions};
use ops_mariadb::MariaDbEngine;
use ops_mariadb::binlog::{
    ArchiveOptions, BinlogArchiver, BinlogPosition, archive_reach, binlog_series, replay_to_time,
};
use ops_mariadb::ephemeral::{EphemeralMariaDb, EphemeralOptions};
use ops_storage::{TargetOptions, open_target};

/// The server's URL for `db` reached as `host`, with the TLS parameters `tls`.
fn url(server: &EphemeralMariaDb, host: &str, db: &str, tls: &str) -> String {
    server
        .url_for(db)
        .replace("@127.0.0.1:", &format!("@{host}:"))
        + "&"
        + tls
}

fn engine(server: &EphemeralMariaDb, host: &str, db: &str, tls: &str) -> MariaDbEngine {
    MariaDbEngine::new(&url(server, host, db, tls)).expect("a valid URL")
}

fn verify_identity(pki: &TestPki) -> String {
    // MySQL's spelling, in its case: accepted as verify-full.
    format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", pki.ca.display())
}

/// A root connection over TLS, unverified: test set-up and checks.
async fn admin(server: &EphemeralMariaDb) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(server.port())
        .user(Some("root"))
        .prefer_socket(false)
        .ssl_opts(Some(
            mysql_async::SslOpts::default().with_danger_accept_invalid_certs(true),
        ));
    mysql_async::Conn::new(opts).await.expect("connect")
}

/// Where the server writes its binlog now.
async fn binlog_now(server: &EphemeralMariaDb) -> BinlogPosition {
    let mut c = admin(server).await;
    let row: mysql_async::Row = c
        .query_first("SHOW MASTER STATUS")
        .await
        .expect("master status")
        .expect("the binlog is on");
    c.disconnect().await.ok();
    BinlogPosition::new(
        row.get::<String, _>(0).expect("File"),
        row.get::<u64, _>(1).expect("Position"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_tls_end_to_end_and_no_fallback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_test_pki(dir.path());
    let server = EphemeralOptions::default()
        .with_tls(&pki.server_cert, &pki.server_key)
        .with_tls_client_ca(&pki.ca)
        .with_tls_required()
        .start()
        .await
        .expect("a MariaDB server with TLS starts");
    server.create_database("shop").await.expect("create");
    server
        .execute(
            "shop",
            "CREATE TABLE t (id INT PRIMARY KEY, note VARCHAR(50) NOT NULL); \
             INSERT INTO t SELECT seq, CONCAT('row ', seq) FROM seq_1_to_300; \
             CREATE USER certified@'%' IDENTIFIED BY 'cert-pw' REQUIRE X509; \
             GRANT SELECT ON shop.* TO certified@'%'",
        )
        .await
        .expect("seed");

    // VERIFY_IDENTITY with the right CA: a backup into a repository, the binlog
    // archived over the replication protocol, a restore, and a replay to a time by the
    // mariadb client (given the same CA through its option file: the server takes no
    // plain connection, so it used TLS, and it verified the certificate).
    let source = engine(&server, "127.0.0.1", "shop", &verify_identity(&pki));
    let info = source
        .describe()
        .await
        .expect("verify-full with the right CA");
    assert!(info.tables.iter().any(|t| t.table.name == "t"), "{info:?}");
    let repo_dir = tempfile::tempdir().expect("tempdir");
    let target = open_target(
        &repo_dir.path().display().to_string(),
        &TargetOptions::default(),
    )
    .expect("target");
    let repo = Arc::new(
        Repository::init(target, InitOptions::new(Encryption::None))
            .await
            .expect("init"),
    );
    let series = binlog_series(&source).await.expect("series over TLS");
    let archiver = BinlogArchiver::new(&source, Arc::clone(&repo)).with_options(
        ArchiveOptions::default()
            .with_piece_bytes(600)
            .with_piece_interval(Duration::from_millis(300))
            .with_heartbeat(Duration::from_secs(1)),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let archiving = tokio::spawn(async move {
        archiver
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    let manifest = repo
        .backup(&source, &BackupOptions::default())
        .await
        .expect("backup over verify-full");
    let from = BinlogPosition::from_snapshot(&manifest.snapshot).expect("binlog position");
    server
        .execute("shop", "INSERT INTO t VALUES (1000, 'after the backup')")
        .await
        .expect("insert");
    let until = Utc::now()
        .duration_trunc(TimeDelta::seconds(1))
        .expect("whole second")
        + TimeDelta::seconds(1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    server
        .execute("shop", "INSERT INTO t VALUES (1001, 'after the stop time')")
        .await
        .expect("insert");
    let now = binlog_now(&server).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !archive_reach(&repo, &series)
        .await
        .expect("reach")
        .is_some_and(|r| r.end >= now)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the archive did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(()).expect("the archiver runs");
    archiving.await.expect("joined").expect("archiver over TLS");
    let pitr = source.with_database("pitr");
    repo.restore(
        &manifest,
        &pitr,
        &RestoreOptions::default().with_create(true),
    )
    .await
    .expect("restore over verify-full");
    let replayed = replay_to_time(&repo, &series, &from, until, "shop", &pitr)
        .await
        .expect("replay by the mariadb client over verified TLS");
    assert!(replayed.events > 0, "{replayed:?}");
    let mut c = admin(&server).await;
    let ids: Vec<i64> = c
        .query("SELECT id FROM pitr.t WHERE id >= 300 ORDER BY id")
        .await
        .expect("rows of the copy");
    c.disconnect().await.ok();
    assert_eq!(
        ids,
        [300, 1000],
        "the copy holds what was written before the time"
    );
    let probes =
        ops_mariadb::health::probes(&source, &Thresholds::default(), ProbeBudget::default());
    let login = probes
        .iter()
        .find(|p| p.name() == "database_login")
        .expect("the login probe");
    let report = login.check().await.expect("the login probe runs");
    assert_eq!(report.status, HealthStatus::Healthy, "{report:?}");

    // A wrong CA: refused under verify-full and verify-ca, saying what to do.
    let wrong_ca = format!("ssl-mode=verify-full&ssl-ca={}", pki.other_ca.display());
    for mode in [
        wrong_ca.clone(),
        wrong_ca.replace("verify-full", "VERIFY_CA"),
    ] {
        let err = engine(&server, "127.0.0.1", "shop", &mode)
            .describe()
            .await
            .expect_err("a certificate from another CA must be refused");
        assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
        assert!(err.to_string().contains("not signed by the CA"), "{err}");
        assert!(err.to_string().contains("ssl-ca"), "{err}");
    }

    // A wrong host name: the certificate names 127.0.0.1, not localhost.
    let err = engine(&server, "localhost", "shop", &verify_identity(&pki))
        .describe()
        .await
        .expect_err("verify-full checks the host name");
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    assert!(err.to_string().contains("does not name the host"), "{err}");
    let verify_ca = format!("ssl-mode=verify-ca&ssl-ca={}", pki.ca.display());
    engine(&server, "localhost", "shop", &verify_ca)
        .describe()
        .await
        .expect("verify-ca checks the chain only");
    // ... but still the chain: another CA's certificate fails under that name too.
    let err = engine(
        &server,
        "localhost",
        "shop",
        &verify_ca.replace(
            &pki.ca.display().to_string(),
            &pki.other_ca.display().to_string(),
        ),
    )
    .describe()
    .await
    .expect_err("verify-ca checks the CA");
    assert!(err.to_string().contains("not signed by the CA"), "{err}");

    // A server that requires TLS refuses ssl-mode=disable (MariaDB 10.11 says "access
    // denied" to a plain login under require_secure_transport), while the same
    // account, URL and password over TLS get in: no plaintext.
    engine(&server, "127.0.0.1", "shop", "ssl-mode=require")
        .describe()
        .await
        .expect("the same account over TLS");
    let err = engine(&server, "127.0.0.1", "shop", "ssl-mode=disable")
        .describe()
        .await
        .expect_err("require_secure_transport refuses a plain connection");
    assert!(
        matches!(err.kind(), ErrorKind::Authentication | ErrorKind::Database),
        "{err}"
    );

    // Client certificates: an account that REQUIREs X509 gets in with ssl-cert and
    // ssl-key, and not without.
    let certified = |tls: &str| {
        MariaDbEngine::new(&format!(
            "mariadb://certified:cert-pw@127.0.0.1:{}/shop?{tls}",
            server.port()
        ))
        .expect("a valid URL")
    };
    let with_cert = format!(
        "{}&ssl-cert={}&ssl-key={}",
        verify_identity(&pki),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    certified(&with_cert)
        .describe()
        .await
        .expect("a client certificate signed by the server's CA");
    let err = certified(&verify_identity(&pki))
        .describe()
        .await
        .expect_err("REQUIRE X509 without a client certificate");
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    let err = MariaDbEngine::new(&format!(
        "mariadb://certified:cert-pw@127.0.0.1:{}/shop?ssl-mode=verify-full&ssl-cert={}",
        server.port(),
        pki.client_cert.display()
    ))
    .expect_err("a certificate without its key");
    assert!(err.to_string().contains("ssl-key"), "{err}");
}
