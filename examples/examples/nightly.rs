//! A scheduler loop of one's own: back up several databases into one repository on a
//! schedule, apply retention per database (one group each), prune once a week, and
//! prove the newest backup of each by a restore once a week. Time is an argument of
//! the loop's step, so the step is tested with a simulated clock
//! (`dbops/tests/nightly.rs` runs three simulated days in seconds).
//!
//! ```sh
//! DBOPS_PASSWORD=… cargo run --release --example nightly -- REPO_DIR postgres://…/erp postgres://…/portal
//! ```

use std::sync::Arc;
use std::time::Duration;

use dbops::chrono::{DateTime, Datelike as _, Timelike as _, Utc, Weekday};
use dbops::{BackupOptions, ForgetOptions, KeepRules, PruneOptions, Repository, RestoreOptions};

/// What one step did, for the log (or a test).
#[derive(Debug, Default)]
pub struct Step {
    /// Backups taken (ids).
    pub backups: Vec<String>,
    /// Backups forgotten.
    pub forgotten: usize,
    /// True when the weekly prune and restore proofs ran.
    pub weekly: bool,
}

/// Runs what is due at `now`: a backup of every database at 02:00, retention after
/// them, and on Sundays a prune and a restore proof of each database's newest backup.
pub async fn step(
    repo: &Repository,
    databases: &[String],
    rules: &KeepRules,
    now: DateTime<Utc>,
) -> dbops::Result<Step> {
    let mut done = Step::default();
    if now.hour() != 2 {
        return Ok(done);
    }
    for url in databases {
        let engine = dbops::engine(url)?;
        let manifest = repo
            .backup(
                engine.as_ref(),
                &BackupOptions::default().with_tags(["nightly".to_owned()]),
            )
            .await?;
        done.backups.push(manifest.id);
    }
    let report = repo.forget(rules, now, &ForgetOptions::default()).await?;
    done.forgotten = report.removed.len();
    if now.weekday() == Weekday::Sun {
        repo.prune(&PruneOptions::default()).await?;
        for url in databases {
            let db = dbops::engine(url)?.database();
            let newest = repo
                .select(&format!("latest:{db}"), &Default::default())
                .await?;
            let check =
                dbops::prove_restore(repo, &newest, None, &RestoreOptions::default()).await?;
            if !check.ok() {
                return Err(dbops::Error::new(
                    dbops::ErrorKind::Mismatch,
                    format!(
                        "the restore proof of {} failed: {:?}",
                        newest.id, check.problems
                    ),
                ));
            }
        }
        done.weekly = true;
    }
    Ok(done)
}

#[tokio::main]
async fn main() -> dbops::Result<()> {
    let mut args = std::env::args().skip(1);
    let repo_dir = args
        .next()
        .ok_or_else(|| dbops::Error::invalid("usage: nightly REPO_DIR DB_URL…"))?;
    let databases: Vec<String> = args.collect();
    let password = std::env::var("DBOPS_PASSWORD").ok().map(dbops::Secret::new);
    let target = dbops::target(&repo_dir, &Default::default())?;
    let repo = Repository::open(Arc::clone(&target), password.as_ref())
        .await?
        .with_lock_wait(Duration::from_secs(600));
    let rules = KeepRules::default()
        .with_daily(7)
        .with_weekly(4)
        .with_monthly(12);
    loop {
        let now = Utc::now();
        // A failed step is logged and the loop goes on: the next slot may succeed.
        match step(&repo, &databases, &rules, now).await {
            Ok(s) if !s.backups.is_empty() => println!("{now}: {s:?}"),
            Ok(_) => {}
            Err(e) => eprintln!("{now}: {e}"),
        }
        let next_hour = (now + dbops::chrono::TimeDelta::hours(1))
            .with_minute(0)
            .and_then(|t| t.with_second(0))
            .unwrap_or(now + dbops::chrono::TimeDelta::hours(1));
        tokio::time::sleep(
            (next_hour - now)
                .to_std()
                .unwrap_or(Duration::from_secs(60)),
        )
        .await;
    }
}
