//! Passwords from outside the URL (password files, option files) on a real server,
//! and what a refused login says: the sources tried, never the password.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use ops_core::testkit::engine::dump_to_memory;
use ops_core::{DatabaseEngine, DumpOptions, ErrorKind};
use ops_mariadb::MariaDbEngine;

fn private_file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_from_files_and_refusals() {
    let server = common::server().await;
    server
        .execute(
            "",
            "CREATE DATABASE shop; CREATE TABLE shop.items (id int PRIMARY KEY); \
             INSERT INTO shop.items VALUES (1), (2); \
             CREATE USER 'app'@'%' IDENTIFIED BY 'Right#Pass word'; \
             GRANT ALL ON shop.* TO 'app'@'%'; \
             CREATE USER 'sock'@'%' IDENTIFIED VIA unix_socket",
        )
        .await
        .unwrap();
    let port = server.port();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("mariadb://app@127.0.0.1:{port}/shop");

    // A password file: its first line, which may hold anything.
    let pw = private_file(dir.path(), "pw", "Right#Pass word\nnot this\n");
    let engine = MariaDbEngine::new(&format!("{base}?password_file={pw}")).unwrap();
    let info = engine.describe().await.expect("password from the file");
    assert_eq!(info.tables.len(), 1);

    // An option file, quoted because of the '#', with the user in it too.
    let cnf = private_file(
        dir.path(),
        "client.cnf",
        "[mysqld]\nuser = mysql\n[client]\nuser = app\npassword = \"Right#Pass word\" # quoted\n",
    );
    let engine = MariaDbEngine::new(&format!(
        "mariadb://127.0.0.1:{port}/shop?defaults_file={cnf}&ssl-mode=disable"
    ))
    .unwrap();
    let (dump, _) = dump_to_memory(&engine, &DumpOptions::default().with_jobs(2)).await;
    assert_eq!(dump.table_digests()["shop.items"].rows, 2);

    // A wrong password: Authentication, naming where it came from and what to do,
    // never the password.
    let wrong = private_file(dir.path(), "wrong", "Wr0ng-Secret-XYZ\n");
    let engine = MariaDbEngine::new(&format!("{base}?password_file={wrong}")).unwrap();
    let err = engine.describe().await.expect_err("wrong password");
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("Wr0ng-Secret-XYZ"), "{text}");
    assert!(
        text.contains(&format!("password_file {wrong}")) && text.contains("MYSQL_PWD"),
        "{text}"
    );
    assert!(text.contains("correct the password"), "{text}");

    // Explicitly none: refused, and the message says so.
    let engine = MariaDbEngine::new(&format!("{base}?password=")).unwrap();
    let err = engine.describe().await.expect_err("no password");
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    assert!(
        err.to_string().contains("empty password from the URL"),
        "{err}"
    );

    // An account that logs in another way (unix_socket) over TCP: 1698, also
    // Authentication, never Unreachable.
    let engine =
        MariaDbEngine::new(&format!("mariadb://sock@127.0.0.1:{port}/shop?password=")).unwrap();
    let err = engine.describe().await.expect_err("unix_socket over TCP");
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err:?}");
    assert!(err.to_string().contains("logs in another way"), "{err}");

    // A password file that is not there is a credentials problem too.
    let err = MariaDbEngine::new(&format!("{base}?password_file=/nonexistent/pw"))
        .expect_err("missing file");
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_given_to_the_engine_wins() {
    let server = ops_mariadb::ephemeral::EphemeralMariaDb::start()
        .await
        .expect("start mariadb");
    ops_core::EphemeralServer::execute(
        &server,
        "",
        "CREATE DATABASE shop; CREATE USER 'app'@'%' IDENTIFIED BY 'given-Pa55'; \
         GRANT ALL ON shop.* TO 'app'@'%';",
    )
    .await
    .expect("create user");
    let url = format!(
        "mariadb://app:wrong@127.0.0.1:{}/shop?ssl-mode=disabled",
        server.port()
    );
    let engine = ops_mariadb::MariaDbEngine::new(&url)
        .expect("valid URL")
        .with_password(ops_core::Secret::new("given-Pa55"));
    assert!(!format!("{engine:?}").contains("given-Pa55"));
    ops_core::DatabaseEngine::describe(&engine)
        .await
        .expect("the given password wins over the URL's");
    let err = ops_core::DatabaseEngine::describe(
        &ops_mariadb::MariaDbEngine::new(&url)
            .expect("valid URL")
            .with_password(ops_core::Secret::new("not-it")),
    )
    .await
    .expect_err("refused");
    assert_eq!(err.kind(), ops_core::ErrorKind::Authentication, "{err:?}");
    assert!(!err.to_string().contains("not-it"), "{err}");
}
