//! Test helpers that judge a restore independently of dbops: the `mariadb` and
//! `mariadb-dump` command-line tools, and per-table content hashes computed in SQL.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mysql_async::prelude::Queryable;
use ops_mariadb::ephemeral::EphemeralMariaDb;

pub async fn server() -> EphemeralMariaDb {
    EphemeralMariaDb::start()
        .await
        .unwrap_or_else(|e| panic!("starting an ephemeral MariaDB failed: {e}"))
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Runs the `mariadb` client with `input` on stdin.
pub fn mariadb_cli(server: &EphemeralMariaDb, db: Option<&str>, input: &Path) {
    let mut cmd = Command::new("mariadb");
    cmd.args(["-h127.0.0.1", "-uroot", "--default-character-set=utf8mb4"])
        .arg(format!("-P{}", server.port()));
    if let Some(db) = db {
        cmd.arg(db);
    }
    let file = std::fs::File::open(input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    let out = cmd.stdin(file).output().expect("running mariadb");
    assert!(
        out.status.success(),
        "mariadb < {} failed: {}",
        input.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mariadb-dump --no-data` of `db` with the database name replaced by `DB`.
pub fn schema_dump(server: &EphemeralMariaDb, db: &str) -> String {
    let out = Command::new("mariadb-dump")
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
        .arg(format!("-P{}", server.port()))
        .arg(db)
        .stderr(Stdio::piped())
        .output()
        .expect("running mariadb-dump");
    assert!(
        out.status.success(),
        "mariadb-dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).replace(&format!("`{db}`"), "`DB`")
}

pub async fn connect(server: &EphemeralMariaDb, db: &str) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(server.port())
        .user(Some("root"))
        .db_name(Some(db))
        .prefer_socket(false);
    let mut c = mysql_async::Conn::new(opts).await.expect("connect");
    c.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
        .await
        .expect("session");
    c
}

pub async fn exec(server: &EphemeralMariaDb, db: &str, sql: &str) {
    let mut c = connect(server, db).await;
    c.query_drop(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    c.disconnect().await.ok();
}

fn q(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Per table: (rows, order-independent hash of every column's value, history
/// included), computed by the server.
pub async fn content_hashes(
    server: &EphemeralMariaDb,
    db: &str,
) -> BTreeMap<String, (u64, String)> {
    let mut c = connect(server, db).await;
    let tables: Vec<(String, String)> = c
        .query(format!(
            "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = '{db}' AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') \
             ORDER BY TABLE_NAME"
        ))
        .await
        .expect("tables");
    let mut out = BTreeMap::new();
    for (table, kind) in tables {
        let cols: Vec<(String, String)> = c
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (db, &table),
            )
            .await
            .expect("columns");
        let mut exprs: Vec<String> = cols
            .iter()
            .map(|(name, ty)| {
                let n = q(name);
                match ty.as_str() {
                    "float" => format!("CAST(CAST({n} AS DOUBLE) AS CHAR)"),
                    "double" | "decimal" | "tinyint" | "smallint" | "mediumint" | "int"
                    | "bigint" | "year" => format!("CAST({n} AS CHAR)"),
                    "bit" => format!("CAST({n} AS UNSIGNED)"),
                    _ => format!("HEX({n})"),
                }
            })
            .map(|e| format!("COALESCE({e}, '<NULL>')"))
            .collect();
        let mut from = q(&table);
        if kind == "SYSTEM VERSIONED" {
            let create: (String, String) = c
                .query_first(format!("SHOW CREATE TABLE {}", q(&table)))
                .await
                .expect("show create")
                .expect("a row");
            if !create.1.contains("PERIOD FOR SYSTEM_TIME") {
                exprs.push("row_start".into());
                exprs.push("row_end".into());
            }
            from.push_str(" FOR SYSTEM_TIME ALL");
        }
        let row_hash = format!("MD5(CONCAT_WS('|', {}))", exprs.join(", "));
        let sql = format!(
            "SELECT COUNT(*), COALESCE(SUM(CAST(CONV(SUBSTR({row_hash}, 1, 15), 16, 10) AS UNSIGNED)), 0), \
             COALESCE(SUM(CAST(CONV(SUBSTR({row_hash}, 16, 15), 16, 10) AS UNSIGNED)), 0) FROM {from}"
        );
        let (n, a, b): (u64, String, String) = c
            .query_first(sql.clone())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .expect("a row");
        out.insert(table, (n, format!("{a}/{b}")));
    }
    c.disconnect().await.ok();
    out
}

/// `CHECKSUM TABLE` of every base table without generated columns.
pub async fn checksums(server: &EphemeralMariaDb, db: &str) -> BTreeMap<String, Option<u64>> {
    let mut c = connect(server, db).await;
    let tables: Vec<String> = c
        .query(format!(
            "SELECT TABLE_NAME FROM information_schema.TABLES t \
             WHERE TABLE_SCHEMA = '{db}' AND TABLE_TYPE = 'BASE TABLE' AND NOT EXISTS \
             (SELECT 1 FROM information_schema.COLUMNS c WHERE c.TABLE_SCHEMA = t.TABLE_SCHEMA \
              AND c.TABLE_NAME = t.TABLE_NAME AND c.IS_GENERATED = 'ALWAYS') ORDER BY TABLE_NAME"
        ))
        .await
        .expect("tables");
    let mut out = BTreeMap::new();
    for t in tables {
        let row: Option<(String, Option<u64>)> = c
            .query_first(format!("CHECKSUM TABLE {}", q(&t)))
            .await
            .expect("checksum");
        out.insert(t, row.and_then(|r| r.1));
    }
    c.disconnect().await.ok();
    out
}

/// Fails with both texts' first differing lines.
pub fn assert_same_text(what: &str, expected: &str, actual: &str) {
    if expected == actual {
        return;
    }
    let diffs: Vec<String> = expected
        .lines()
        .zip(actual.lines())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .take(10)
        .map(|(i, (a, b))| format!("line {}:\n  source:   {a}\n  restored: {b}", i + 1))
        .collect();
    panic!(
        "{what} differs ({} vs {} lines):\n{}",
        expected.lines().count(),
        actual.lines().count(),
        diffs.join("\n")
    );
}
