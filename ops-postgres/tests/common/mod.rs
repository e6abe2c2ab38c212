//! Helpers shared by the integration tests: loading SQL with psql, comparing schemas
//! with pg_dump and tables with SQL checksums — all independent of dbops.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ops_postgres::ephemeral::EphemeralPostgres;

/// `${DBOPS_FIXTURES_DIR:-<repo>/../shared/fixtures}`.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("DBOPS_FIXTURES_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"),
    }
}

/// The kitchen-sink fixture shipped with this crate.
pub fn kitchen_sink() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kitchen_sink.sql")
}

fn tool(server: &EphemeralPostgres, name: &str) -> PathBuf {
    server.bin_dir().join(name)
}

/// Runs a SQL file with psql (ON_ERROR_STOP) in `db`.
pub fn psql_file(server: &EphemeralPostgres, db: &str, file: &Path) {
    let out = Command::new(tool(server, "psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
        .arg("-h")
        .arg(server.socket_dir())
        .arg("-p")
        .arg(server.port().to_string())
        .arg("-d")
        .arg(db)
        .arg("-f")
        .arg(file)
        .env_remove("PGPASSWORD")
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql -f {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pg_dump --schema-only` without comment lines and `\restrict` lines.
pub fn schema_of(server: &EphemeralPostgres, db: &str) -> String {
    let out = Command::new(tool(server, "pg_dump"))
        .args(["--schema-only", "-U", "postgres"])
        .arg("-h")
        .arg(server.socket_dir())
        .arg("-p")
        .arg(server.port().to_string())
        .arg("-d")
        .arg(db)
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "pg_dump --schema-only {db} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("--"))
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts equal schemas, showing the first differing lines.
pub fn assert_same_schema(server: &EphemeralPostgres, source: &str, restored: &str) {
    let a = schema_of(server, source);
    let b = schema_of(server, restored);
    assert!(
        a.lines().count() > 50,
        "suspiciously small schema of {source}:\n{a}"
    );
    if a != b {
        let al: Vec<&str> = a.lines().collect();
        let bl: Vec<&str> = b.lines().collect();
        let first = al
            .iter()
            .zip(bl.iter())
            .position(|(x, y)| x != y)
            .unwrap_or(al.len().min(bl.len()));
        let from = first.saturating_sub(3);
        panic!(
            "schemas differ at line {first} ({} vs {} lines)\n--- {source}\n{}\n--- {restored}\n{}",
            al.len(),
            bl.len(),
            al[from..(first + 8).min(al.len())].join("\n"),
            bl[from..(first + 8).min(bl.len())].join("\n"),
        );
    }
}

/// A tokio-postgres client for `db`, for checks independent of dbops.
pub async fn client(server: &EphemeralPostgres, db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=postgres dbname='{db}'",
            server.socket_dir().display(),
            server.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("test connection");
    tokio::spawn(conn);
    client
}

/// Rows of one query as text, for comparisons.
pub async fn rows_text(server: &EphemeralPostgres, db: &str, sql: &str) -> Vec<String> {
    let c = client(server, db).await;
    c.simple_query(sql)
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

/// Per table: `schema.table|rows|md5 of sorted row md5s` over `FROM ONLY` each table.
pub async fn table_checksums(server: &EphemeralPostgres, db: &str) -> Vec<String> {
    let tables = rows_text(
        server,
        db,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE (c.relkind = 'r' OR (c.relkind = 'm' AND c.relispopulated)) AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            AND n.nspname !~ '^pg_' ORDER BY 1",
    )
    .await;
    let mut out = Vec::new();
    for t in tables {
        let r = rows_text(
            server,
            db,
            &format!(
                "SELECT count(*), md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))) FROM ONLY {t} t"
            ),
        )
        .await;
        out.push(format!("{t}|{}", r.join(";")));
    }
    out
}

/// Sequence values and large objects, which table checksums do not cover.
pub async fn non_table_state(server: &EphemeralPostgres, db: &str) -> Vec<String> {
    let mut out = rows_text(
        server,
        db,
        "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2",
    )
    .await;
    out.extend(
        rows_text(
            server,
            db,
            "SELECT relname, relispopulated FROM pg_class WHERE relkind = 'm' ORDER BY 1",
        )
        .await,
    );
    out.extend(
        rows_text(
            server,
            db,
            "SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1",
        )
        .await,
    );
    out
}

/// Prints a message that cannot be missed in test output.
pub fn loud(message: &str) {
    let bar = "!".repeat(78);
    eprintln!("\n{bar}\n!!! {message}\n{bar}\n");
}
