//! Snapshot consistency: transfers between accounts (the total never changes) run
//! while a two-connection dump, split into many ranges, reads the table; the restored
//! total must equal the constant.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mysql_async::prelude::Queryable;
use ops_core::testkit::engine::dump_to_memory;
use ops_core::{DatabaseEngine, DumpOptions, RestoreOptions, StreamSource};
use ops_mariadb::MariaDbEngine;

const ACCOUNTS: u64 = 20_000;
const START_BALANCE: u64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_under_concurrent_transfers_is_consistent() {
    let server = common::server().await;
    server.execute("", "CREATE DATABASE bank").await.unwrap();
    common::exec(
        &server,
        "bank",
        &format!(
            "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL, pad CHAR(100)) ENGINE=InnoDB; \
             INSERT INTO accounts SELECT seq, {START_BALANCE}, 'x' FROM seq_1_to_{ACCOUNTS}; \
             ANALYZE TABLE accounts"
        ),
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let transfers = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..3u64 {
        let mut c = common::connect(&server, "bank").await;
        let stop = Arc::clone(&stop);
        let transfers = Arc::clone(&transfers);
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += 7919;
                // From the low half to the high half and back: a dump that read the two
                // halves at different moments would see money appear or vanish.
                let from = 1 + (i * 31) % (ACCOUNTS / 2);
                let to = ACCOUNTS / 2 + 1 + (i * 17) % (ACCOUNTS / 2);
                let (from, to) = if i % 2 == 0 { (from, to) } else { (to, from) };
                let amount = 1 + i % 50;
                let r = async {
                    c.query_drop("START TRANSACTION").await?;
                    c.exec_drop(
                        "UPDATE accounts SET balance = balance - ? WHERE id = ?",
                        (amount, from),
                    )
                    .await?;
                    c.exec_drop(
                        "UPDATE accounts SET balance = balance + ? WHERE id = ?",
                        (amount, to),
                    )
                    .await?;
                    c.query_drop("COMMIT").await
                }
                .await;
                if r.is_err() {
                    let _ = c.query_drop("ROLLBACK").await;
                } else {
                    transfers.fetch_add(1, Ordering::Relaxed);
                }
            }
            c.disconnect().await.ok();
        }));
    }
    // Let the workload get going.
    while transfers.load(Ordering::Relaxed) < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let source = MariaDbEngine::new(&server.url_for("bank")).expect("url");
    let before = transfers.load(Ordering::Relaxed);
    let (dump, report) = dump_to_memory(
        &source,
        &DumpOptions::default()
            .with_jobs(2)
            .with_split_bytes(64 * 1024),
    )
    .await;
    let during = transfers.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        report.snapshot.get("connections").map(String::as_str),
        Some("2")
    );
    let parts = dump
        .summaries()
        .iter()
        .filter(|(s, _)| s.name.starts_with("data/"))
        .count();
    assert!(parts > 4, "accounts was not split: {parts}");
    assert!(during > 0, "no transfer committed while the dump ran");

    let copy = source.with_database("bank_copy");
    copy.restore(
        dump.into_source() as Arc<dyn StreamSource>,
        &RestoreOptions::default().with_create(true).with_jobs(2),
    )
    .await
    .expect("restore");
    let mut c = common::connect(&server, "bank_copy").await;
    let (n, sum): (u64, u64) = c
        .query_first("SELECT COUNT(*), CAST(SUM(balance) AS UNSIGNED) FROM accounts")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, ACCOUNTS);
    assert_eq!(
        sum,
        ACCOUNTS * START_BALANCE,
        "the dump saw a torn state ({during} transfers during the dump)"
    );
    c.disconnect().await.ok();
}
