//! `dbops` end to end on a throwaway MariaDB server: backup, verify (read-data and by
//! restoring into another throwaway server), restore under another name, compared with
//! mariadb-dump and CHECKSUM TABLE, independently of dbops.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{Ctx, fixtures};
use ops_mariadb::ephemeral::EphemeralMariaDb;

fn client(port: u16, db: Option<&str>) -> Command {
    let mut c = Command::new("mariadb");
    c.args([
        "-h127.0.0.1",
        "-uroot",
        "--default-character-set=utf8mb4",
        "-N",
        "-B",
    ])
    .arg(format!("-P{port}"));
    if let Some(db) = db {
        c.arg(db);
    }
    c
}

fn load(port: u16, db: Option<&str>, file: &Path) {
    let o = client(port, db)
        .stdin(std::fs::File::open(file).expect("open fixture"))
        .output()
        .expect("mariadb");
    assert!(
        o.status.success(),
        "loading {}: {}",
        file.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn query(port: u16, db: &str, sql: &str) -> String {
    let o = client(port, Some(db))
        .args(["-e", sql])
        .output()
        .expect("mariadb");
    assert!(
        o.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn schema(port: u16, db: &str) -> String {
    let o = Command::new("mariadb-dump")
        .args([
            "-h127.0.0.1",
            "-uroot",
            "--no-data",
            "--routines",
            "--triggers",
            "--events",
            "--skip-dump-date",
            "--skip-comments",
        ])
        .arg(format!("-P{port}"))
        .arg(db)
        .output()
        .expect("mariadb-dump");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).replace(&format!("`{db}`"), "`DB`")
}

fn tables(port: u16, db: &str) -> BTreeMap<String, String> {
    let names = query(
        port,
        db,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY 1",
    );
    names
        .lines()
        .map(|t| {
            let count = query(port, db, &format!("SELECT COUNT(*) FROM `{t}`"));
            let sum = query(port, db, &format!("CHECKSUM TABLE `{t}`"));
            let sum = sum.split_whitespace().last().unwrap_or_default().to_owned();
            (t.to_owned(), format!("{} {sum}", count.trim()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_backup_verifies_by_restore_and_restores_under_another_name() {
    let server = EphemeralMariaDb::start().await.expect("start mariadb");
    let port = server.port();
    let db = match fixtures("sakila") {
        Some(dir) => {
            load(port, None, &dir.join("sakila-schema.sql"));
            load(port, None, &dir.join("sakila-data.sql"));
            "sakila"
        }
        None => {
            query(port, "mysql", "CREATE DATABASE kitchen");
            let file = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../ops-mariadb/tests/fixtures/kitchen_sink.sql");
            load(port, Some("kitchen"), &file);
            "kitchen"
        }
    };
    let ctx = Ctx::new();
    ctx.init();
    let url = server.url_for(db);
    let b = ctx
        .run(&["--json", "backup", &url, "--jobs", "2"])
        .ok()
        .json();
    assert_eq!(b["engine"], "mariadb");
    let id = b["id"].as_str().expect("id").to_owned();
    assert!(
        b["snapshot"].as_object().is_some_and(|s| !s.is_empty()),
        "binlog/GTID position recorded: {b}"
    );

    ctx.run(&["verify", &id, "--read-data"]).ok();
    let v = ctx.run(&["--json", "verify", &id, "--restore"]);
    assert_eq!(v.code, 0, "{}", v.all());
    let checks = v.json();
    let t = checks["restores"][0]["check"]["tables"]
        .as_array()
        .expect("tables")
        .clone();
    assert!(t.len() >= 5, "{t:?}");
    assert!(t.iter().all(|t| t["matches"] == true), "{t:?}");

    let copy = format!("{db}_copy");
    ctx.run(&[
        "restore",
        &id,
        &server.url_for(&copy),
        "--create",
        "--jobs",
        "2",
    ])
    .ok();
    assert_eq!(schema(port, db), schema(port, &copy), "schema differs");
    assert_eq!(
        tables(port, db),
        tables(port, &copy),
        "table contents differ"
    );

    let refused = ctx.run(&["restore", &id, &server.url_for(&copy)]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("not empty") && refused.stderr.contains("clean"),
        "{}",
        refused.stderr
    );
}
