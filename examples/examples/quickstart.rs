//! Quickstart: the whole job on an embedded default, with nothing to set up.
//!
//! Starts a throwaway PostgreSQL server, fills a demo `shop` database, backs it up into
//! an encrypted repository in a temporary directory, lists it, verifies it by restoring
//! into a scratch database and comparing every table, restores it as `shop_restore`,
//! and prints the table-by-table comparison. Everything is removed at the end.
//!
//! ```sh
//! cargo run --release --example quickstart
//! ```

use ops_core::digest::compare_tables;
use ops_core::repo::{BackupOptions, Encryption, InitOptions, Repository};
use ops_core::testkit::engine::table_digests;
use ops_core::{DatabaseEngine, DumpOptions, RestoreOptions, Secret};
use ops_postgres::ephemeral::EphemeralPostgres;
use ops_storage::{TargetOptions, open_target};

const DEMO: &str = "
CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL, email text UNIQUE, created timestamptz DEFAULT now());
CREATE TABLE products (id serial PRIMARY KEY, title text NOT NULL, price numeric(10,2) CHECK (price >= 0), tags text[], attrs jsonb);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers, placed date NOT NULL, note text);
CREATE TABLE order_lines (order_id bigint REFERENCES orders ON DELETE CASCADE, product_id int REFERENCES products, qty int NOT NULL, PRIMARY KEY (order_id, product_id));
CREATE INDEX ON orders (placed);
CREATE VIEW revenue AS SELECT o.placed, sum(l.qty * p.price) AS total FROM orders o JOIN order_lines l ON l.order_id = o.id JOIN products p ON p.id = l.product_id GROUP BY o.placed;
INSERT INTO customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 5000) g;
INSERT INTO products (title, price, tags, attrs) SELECT 'product ' || g, (g % 500) + 0.99, ARRAY['tag' || (g % 7), 'x\ty'], jsonb_build_object('weight', g % 13, 'note', E'line\\nbreak') FROM generate_series(1, 800) g;
INSERT INTO orders (customer_id, placed, note) SELECT 1 + g % 5000, date '2026-01-01' + (g % 300), CASE WHEN g % 10 = 0 THEN NULL ELSE 'order ' || g END FROM generate_series(1, 40000) g;
INSERT INTO order_lines SELECT o, 1 + (o * 7 + k) % 800, 1 + k FROM generate_series(1, 40000) o, generate_series(0, 2) k;
";

fn step(text: &str) {
    println!("\n==> {text}");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    step("starting a throwaway PostgreSQL server");
    let pg = EphemeralPostgres::start().await?;
    pg.create_database("shop").await?;
    pg.execute("shop", DEMO).await?;
    let source = pg.engine_for("shop")?;
    println!("    {}", source.location());

    step("creating an encrypted repository");
    let dir = tempfile::tempdir()?;
    let repo_url = dir.path().join("repo").display().to_string();
    let target = open_target(&repo_url, &TargetOptions::default())?;
    let repo = Repository::init(
        target,
        InitOptions::new(Encryption::Password(Secret::new("quickstart"))),
    )
    .await?;
    println!("    {repo_url}");

    step("backing up `shop` with 2 parallel connections on one snapshot");
    let manifest = repo
        .backup(
            &source,
            &BackupOptions::default().with_dump(DumpOptions::default().with_jobs(2)),
        )
        .await?;
    println!(
        "    backup {}: {} bytes in {} streams, {} stored after compression and encryption",
        manifest.id,
        manifest.stats.bytes,
        manifest.streams.len(),
        manifest.stats.stored_bytes
    );

    step("listing the repository");
    for m in repo.list_backups().await? {
        println!(
            "    {}  {}  {}  {} tables",
            m.id,
            m.engine,
            m.database,
            m.tables().len()
        );
    }

    step("verifying every byte, then by restoring into a scratch database");
    let report = repo
        .verify(
            std::slice::from_ref(&manifest),
            &ops_core::repo::VerifyOptions::new(true),
        )
        .await?;
    println!(
        "    read-data: {} streams, {} bytes, {} problems",
        report.streams,
        report.bytes_read,
        report.problems.len()
    );
    let scratch = pg.engine_for("shop_verify")?;
    let check = repo
        .verify_restore(
            &manifest,
            &scratch,
            &RestoreOptions::default().with_create(true).with_jobs(2),
        )
        .await?;
    scratch.drop_database().await?;
    println!(
        "    restore check: {}",
        if check.ok() {
            "every table matches"
        } else {
            "MISMATCH"
        }
    );

    step("restoring as `shop_restore`");
    let restored = pg.engine_for("shop_restore")?;
    repo.restore(
        &manifest,
        &restored,
        &RestoreOptions::default().with_create(true).with_jobs(2),
    )
    .await?;

    step("comparing source and restored database, table by table");
    let a = table_digests(&source, 2).await?;
    let b = table_digests(&restored, 2).await?;
    let comparison = compare_tables(&a, &b);
    for c in &comparison {
        println!(
            "    {:<6} {:<28} {:>8} rows source, {:>8} rows restored",
            if c.matches { "same" } else { "DIFFER" },
            c.table,
            c.expected_rows.unwrap_or(0),
            c.actual_rows.unwrap_or(0)
        );
    }
    let all_same = comparison.iter().all(|c| c.matches) && check.ok() && report.ok();
    println!(
        "\n{}",
        if all_same {
            "OK: the restored database is identical to the source."
        } else {
            "FAILED: differences found."
        }
    );
    if all_same {
        Ok(())
    } else {
        Err("differences found".into())
    }
}
