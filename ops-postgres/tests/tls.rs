//! Verified TLS against a real server with certificates made here (`openssl`): one
//! ephemeral PostgreSQL with `ssl=on` whose pg_hba.conf admits TCP only over TLS
//! (`hostssl`), so that anything that connected at all (our drivers and the pg_dump /
//! pg_restore that a backup and a restore start) used TLS.
//!
//! The server's certificate names `127.0.0.1` only: `localhost` is a wrong host name.

use ops_core::health::{ProbeBudget, Thresholds};
use ops_core::testkit::certs::{TestPki, make_test_pki};
use ops_core::testkit::engine::dump_to_memory;
use ops_core::{
    DatabaseEngine, DumpOptions, ErrorKind, HealthStatus, RestoreOptions, StreamSource,
};
use ops_postgres::PostgresEngine;
use ops_postgres::ephemeral::{EphemeralOptions, EphemeralPostgres};

/// The server's URL for `db` with `host` and TLS parameters `tls` instead of
/// `sslmode=disable`.
fn url(server: &EphemeralPostgres, host: &str, db: &str, tls: &str) -> String {
    server
        .url_for(db)
        .replace("@127.0.0.1:", &format!("@{host}:"))
        .replace("sslmode=disable", tls)
}

fn engine(server: &EphemeralPostgres, host: &str, db: &str, tls: &str) -> PostgresEngine {
    PostgresEngine::new(&url(server, host, db, tls))
        .expect("a valid URL")
        .with_bin_dir(server.bin_dir().to_path_buf())
}

fn verify_full(pki: &TestPki) -> String {
    format!("sslmode=verify-full&sslrootcert={}", pki.ca.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_tls_end_to_end_and_no_fallback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_test_pki(dir.path());
    let server = EphemeralPostgres::start_with(
        EphemeralOptions::default()
            .with_tls(&pki.server_cert, &pki.server_key)
            .with_tls_required()
            .with_setting("log_connections", "on"),
    )
    .await
    .expect("a PostgreSQL server with TLS starts");
    for db in ["shop", "shop_restored"] {
        server.create_database(db).await.expect("create a database");
    }
    server
        .execute(
            "shop",
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g;
             CREATE INDEX items_name ON items (name);",
        )
        .await
        .expect("seed");

    // verify-full with the right CA: describe, a backup (pg_dump for the schema) and a
    // restore (pg_restore for what follows the data), and a health probe (sqlx).
    let source = engine(&server, "127.0.0.1", "shop", &verify_full(&pki));
    let info = source
        .describe()
        .await
        .expect("verify-full with the right CA");
    assert!(
        info.tables.iter().any(|t| t.table.name == "items"),
        "{info:?}"
    );
    let (dump, _) = dump_to_memory(&source, &DumpOptions::default().with_jobs(2)).await;
    let target = engine(&server, "127.0.0.1", "shop_restored", &verify_full(&pki));
    let restored = target
        .restore(dump.into_source(), &RestoreOptions::default())
        .await
        .expect("restore over verify-full");
    assert_eq!(restored.tables.values().sum::<u64>(), 500, "{restored:?}");
    let probes =
        ops_postgres::health::probes(&source, &Thresholds::default(), ProbeBudget::default());
    let login = probes
        .iter()
        .find(|p| p.name() == "database_login")
        .expect("the login probe");
    let report = login
        .check()
        .await
        .expect("the login probe runs over verify-full");
    assert_eq!(report.status, HealthStatus::Healthy, "{report:?}");
    // Every connection the server accepted was encrypted (pg_hba.conf has hostssl
    // lines only, and the log says so): pg_dump's and pg_restore's too.
    let log = std::fs::read_to_string(server.log_path()).expect("server log");
    // `[pid]` of each connection received over TCP (not the Unix socket the test's
    // own set-up uses), then the authorization line of each.
    let pid = |line: &str| {
        line.split(" [")
            .nth(1)
            .and_then(|r| r.split(']').next())
            .map(str::to_owned)
    };
    let tcp: Vec<String> = log
        .lines()
        .filter(|l| l.contains("connection received: host=127.0.0.1"))
        .filter_map(pid)
        .collect();
    let authorized: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection authorized") && pid(l).is_some_and(|p| tcp.contains(&p)))
        .collect();
    assert!(authorized.len() >= 4, "{log}");
    for line in &authorized {
        assert!(line.contains("SSL enabled"), "a plain connection: {line}");
    }

    // A wrong CA: refused, saying what to do, before anything is read.
    let wrong_ca = format!("sslmode=verify-full&sslrootcert={}", pki.other_ca.display());
    for mode in [
        wrong_ca.clone(),
        wrong_ca.replace("verify-full", "verify-ca"),
    ] {
        let err = engine(&server, "127.0.0.1", "shop", &mode)
            .describe()
            .await
            .expect_err("a certificate from another CA must be refused");
        assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
        assert!(err.to_string().contains("not signed by the CA"), "{err}");
        assert!(err.to_string().contains("sslrootcert"), "{err}");
    }
    // require with a root certificate checks the chain, as libpq does (sqlx too).
    let err = engine(
        &server,
        "127.0.0.1",
        "shop",
        &wrong_ca.replace("verify-full", "require"),
    )
    .describe()
    .await
    .expect_err("require with a root certificate verifies it");
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    let probes = ops_postgres::health::probes(
        &engine(&server, "127.0.0.1", "shop", &wrong_ca),
        &Thresholds::default(),
        ProbeBudget::default(),
    );
    let report = probes
        .iter()
        .find(|p| p.name() == "database_login")
        .expect("the login probe")
        .check()
        .await
        .expect("the login probe reports a refused connection");
    assert_eq!(report.status, HealthStatus::Unhealthy, "{report:?}");
    assert!(report.reason.contains("not signed by the CA"), "{report:?}");

    // A wrong host name: the certificate names 127.0.0.1, not localhost.
    let err = engine(&server, "localhost", "shop", &verify_full(&pki))
        .describe()
        .await
        .expect_err("verify-full checks the host name");
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    assert!(err.to_string().contains("does not name the host"), "{err}");
    let verify_ca = format!("sslmode=verify-ca&sslrootcert={}", pki.ca.display());
    engine(&server, "localhost", "shop", &verify_ca)
        .describe()
        .await
        .expect("verify-ca checks the chain only");
    let (dump, _) = dump_to_memory(
        &engine(&server, "localhost", "shop", &verify_ca),
        &DumpOptions::default(),
    )
    .await;
    assert!(!dump.into_source().streams().is_empty());

    // A server that requires TLS refuses sslmode=disable: no plaintext.
    let err = engine(&server, "127.0.0.1", "shop", "sslmode=disable")
        .describe()
        .await
        .expect_err("pg_hba.conf has no line for a plain connection");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Authentication | ErrorKind::PermissionDenied
        ),
        "{err}"
    );

    // TLS off on the server: verify-full fails rather than talk in plain text.
    for sql in ["ALTER SYSTEM SET ssl = off", "SELECT pg_reload_conf()"] {
        server.execute("postgres", sql).await.expect("turn TLS off");
    }
    let plain_deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let err = loop {
        // The reload is asynchronous: until it lands the old settings answer.
        match engine(&server, "127.0.0.1", "shop", &verify_full(&pki))
            .describe()
            .await
        {
            Err(err) if err.to_string().contains("does not offer TLS") => break err,
            other if std::time::Instant::now() > plain_deadline => {
                panic!("verify-full against a server without TLS: {other:?}")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    };
    assert!(err.to_string().contains("does not offer TLS"), "{err}");
    assert!(!err.is_temporary(), "{err:?}");
}
