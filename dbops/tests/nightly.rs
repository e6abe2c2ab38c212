//! The scheduler-loop example, its step driven by a simulated clock: three days of
//! hourly steps in seconds, two databases in one repository.

#[path = "../../examples/examples/nightly.rs"]
#[allow(dead_code)] // its `main` is for `cargo run --example nightly`
mod nightly;

use std::sync::Arc;

use dbops::chrono::{DateTime, TimeDelta, Utc};
use dbops::{Encryption, InitOptions, KdfParams, KeepRules, Repository, Secret};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_simulated_days_of_the_nightly_loop() {
    let server = dbops::scratch_server("postgresql")
        .await
        .expect("throwaway server");
    let mut databases = Vec::new();
    for db in ["erp", "portal"] {
        server.create_database(db).await.expect("create database");
        server
            .execute(
                db,
                "CREATE TABLE t (id int PRIMARY KEY, v text); \
                 INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
            )
            .await
            .expect("fill");
        databases.push(server.url_for(db));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let target =
        dbops::target(dir.path().to_str().expect("utf8"), &Default::default()).expect("target");
    let password = Secret::new("nightly");
    Repository::init(
        Arc::clone(&target),
        InitOptions::new(Encryption::Password(password.clone())).with_kdf(KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        }),
    )
    .await
    .expect("init");
    let repo = Repository::open(target, Some(&password))
        .await
        .expect("open");
    let rules = KeepRules::default().with_last(1);

    // Friday 00:00 to Monday 00:00, one step an hour.
    let start: DateTime<Utc> = "2026-11-27T00:00:00Z".parse().expect("time");
    let (mut backups, mut weekly) = (0, 0);
    let timing = nightly::nightly().expect("schedule");
    let mut state = dbops::schedule::JobState::new(start);
    for hour in 0..72 {
        let now = start + TimeDelta::hours(hour);
        let Some(slot) = nightly::due(&timing, &mut state, now) else {
            continue;
        };
        let step = nightly::step(&repo, &databases, &rules, slot)
            .await
            .unwrap_or_else(|e| panic!("step at hour {hour}: {e}"));
        backups += step.backups.len();
        weekly += usize::from(step.weekly);
    }
    assert_eq!(backups, 6, "two databases, three nights");
    assert_eq!(weekly, 1, "one Sunday");
    let left = repo.list_backups().await.expect("list");
    let mut per_db: Vec<&str> = left.iter().map(|m| m.database.as_str()).collect();
    per_db.sort();
    assert_eq!(
        per_db,
        ["erp", "portal"],
        "retention per database: the newest of each"
    );
}
