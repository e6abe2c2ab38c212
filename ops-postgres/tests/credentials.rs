//! Our own connections (sqlx, tokio-postgres) and pg_dump find the password in a
//! password file when the URL has none; without one, or with a wrong one, the error
//! is `Authentication` and says where the password came from. The file is named with
//! `passfile=` here: tests cannot set environment variables safely.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use ops_core::testkit::engine::{MemoryDump, MemorySink, dump_to_memory};
use ops_core::{DatabaseEngine, DumpOptions, ErrorKind};
use ops_postgres::PostgresEngine;
use ops_postgres::ephemeral::{EphemeralOptions, EphemeralPostgres};

fn passfile(dir: &std::path::Path, name: &str, text: &str, mode: u32) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the password file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_for_both_drivers_and_pg_dump() {
    let password = "file-Pa55:w\\rd";
    let server =
        EphemeralPostgres::start_with(EphemeralOptions::default().with_password_auth(password))
            .await
            .expect("ephemeral server");
    server.create_database("shop").await.expect("create shop");
    server
        .execute(
            "shop",
            "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)",
        )
        .await
        .expect("fill");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = server.port();
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    let url = |file: &str| {
        format!("postgres://postgres@127.0.0.1:{port}/shop?sslmode=disable&passfile={file}")
    };

    // The right line is the second: the first is for another database.
    let good = passfile(
        dir.path(),
        "good",
        &format!(
            "127.0.0.1:{port}:other:postgres:nope\n127.0.0.1:{port}:shop:postgres:{escaped}\n"
        ),
        0o600,
    );
    let engine = PostgresEngine::new(&url(&good)).expect("valid URL");
    assert!(
        !engine.location().contains("******"),
        "{}",
        engine.location()
    );
    engine
        .describe()
        .await
        .expect("sqlx with the file's password");
    let (dump, _) = dump_to_memory(&engine, &DumpOptions::default()).await;
    assert!(
        dump.content("schema").is_some_and(|s| !s.is_empty()),
        "pg_dump ran"
    );
    assert_eq!(
        dump.content("data/public.t/0").as_deref(),
        Some(&b"1\n2\n"[..]),
        "tokio-postgres copied"
    );

    // A wrong password: Authentication, naming the file and line, not the password.
    let wrong = passfile(dir.path(), "wrong", "*:*:*:postgres:wr0ng-XYZZY\n", 0o600);
    let engine = PostgresEngine::new(&url(&wrong)).expect("valid URL");
    let described = engine.describe().await.expect_err("wrong password (sqlx)");
    let dumped = engine
        .dump(
            &DumpOptions::default(),
            Arc::new(MemorySink(MemoryDump::new())),
        )
        .await
        .expect_err("wrong password (tokio-postgres)");
    for err in [described, dumped] {
        assert_eq!(err.kind(), ErrorKind::Authentication, "{err:?}");
        assert!(
            err.message()
                .contains(&format!("line 1 of the password file {wrong}")),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains("wr0ng-XYZZY"), "{err:?}");
    }

    // No password anywhere (the file is open to others, so it is ignored):
    // Authentication, never Unreachable, saying what was tried.
    let open = passfile(
        dir.path(),
        "open",
        &format!("*:*:*:postgres:{escaped}\n"),
        0o644,
    );
    let engine = PostgresEngine::new(&url(&open)).expect("valid URL");
    let described = engine.describe().await.expect_err("no password (sqlx)");
    let dumped = engine
        .dump(
            &DumpOptions::default(),
            Arc::new(MemorySink(MemoryDump::new())),
        )
        .await
        .expect_err("no password (tokio-postgres)");
    for err in [described, dumped] {
        assert_eq!(err.kind(), ErrorKind::Authentication, "{err:?}");
        for part in [
            "no password was found",
            "mode 0644",
            "PGPASSFILE",
            "PGPASSWORD",
        ] {
            assert!(err.message().contains(part), "{part}: {err}");
        }
        assert!(!format!("{err} {err:?}").contains(password), "{err:?}");
    }
}

#[tokio::test]
async fn a_backup_needs_a_database_name() {
    for url in [
        "postgres://postgres:pw@127.0.0.1:1",
        "postgres://postgres:pw@127.0.0.1:1/",
    ] {
        let engine = PostgresEngine::new(url).expect("valid URL");
        let err = engine
            .dump(
                &DumpOptions::default(),
                Arc::new(MemorySink(MemoryDump::new())),
            )
            .await
            .expect_err("no database named");
        // Refused before connecting: nothing listens on port 1.
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err:?}");
        assert!(err.message().contains("names none"), "{err}");
        let err = engine
            .restore(
                MemoryDump::new().into_source(),
                &ops_core::RestoreOptions::default(),
            )
            .await
            .expect_err("no database named");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_given_to_the_engine_wins_and_never_shows() {
    let password = "given-Pa55word";
    let server =
        EphemeralPostgres::start_with(EphemeralOptions::default().with_password_auth(password))
            .await
            .expect("ephemeral server");
    server.create_database("shop").await.expect("create shop");
    server
        .execute("shop", "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .expect("fill");
    // The URL's own password is wrong: the given one must win over it.
    let url = format!(
        "postgres://postgres:wrong@127.0.0.1:{}/shop?sslmode=disable",
        server.port()
    );
    let engine = PostgresEngine::new(&url)
        .expect("valid URL")
        .with_password(ops_core::Secret::new(password));
    assert!(!format!("{engine:?}").contains(password));
    assert!(!engine.location().contains(password));
    engine.describe().await.expect("our connection uses it");
    let (dump, _) = dump_to_memory(&engine, &DumpOptions::default()).await;
    assert_eq!(
        dump.table_digests()["public.t"].rows,
        1,
        "pg_dump and COPY use it"
    );
    let wrong = PostgresEngine::new(&url)
        .expect("valid URL")
        .with_password(ops_core::Secret::new("not-it"));
    let err = wrong.describe().await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err:?}");
    assert!(err.to_string().contains("given to the engine"), "{err}");
    assert!(!err.to_string().contains("not-it"), "{err}");
}
