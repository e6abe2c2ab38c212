//! A scheduler loop of one's own: back up several databases into one repository on a
//! schedule, apply retention per database (one group each), prune once a week, and
//! prove the newest backup of each by a restore once a week. When to run is the
//! library's planner (`dbops::schedule`: a cron expression in a time zone, catch-up
//! after downtime, never two runs of one slot); time is an argument of both the
//! planner and the step, so the loop is tested with a simulated clock
//! (`dbops/tests/nightly.rs` runs three simulated days in seconds). A deployment that
//! wants hooks, retries, notifications and a run history uses `ops-agent` (the
//! `dbops daemon` command) instead.
//!
//! ```sh
//! DBOPS_PASSWORD=… cargo run --release --example nightly -- REPO_DIR postgres://…/erp postgres://…/portal
//! ```

use std::sync::Arc;
use std::time::Duration;

use dbops::chrono::{DateTime, Datelike as _, Utc, Weekday};
use dbops::schedule::{Action, JobState, Schedule, Timing, plan};
use dbops::{BackupOptions, ForgetOptions, KeepRules, PruneOptions, Repository, RestoreOptions};

/// Every night at 02:00 UTC.
pub fn nightly() -> dbops::Result<Timing> {
    Ok(Timing::new(Schedule::cron("0 2 * * *", "UTC")?))
}

/// The slot to run at `now`, if one is due (the planner's answer, taken as handled).
pub fn due(timing: &Timing, state: &mut JobState, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let p = plan(timing, "nightly", state, now);
    state.apply(&p);
    p.actions.iter().find_map(|a| match a {
        Action::Start { slot, .. } => Some(*slot),
        _ => None,
    })
}

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

/// Runs the nightly work for the slot `now`: a backup of every database, retention
/// after them, and on Sundays a prune and a restore proof of each database's newest
/// backup.
pub async fn step(
    repo: &Repository,
    databases: &[String],
    rules: &KeepRules,
    now: DateTime<Utc>,
) -> dbops::Result<Step> {
    let mut done = Step::default();
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
    let timing = nightly()?;
    let mut state = JobState::new(Utc::now());
    loop {
        let now = Utc::now();
        if let Some(slot) = due(&timing, &mut state, now) {
            // A failed step is logged and the loop goes on: the next slot may succeed.
            match step(&repo, &databases, &rules, slot).await {
                Ok(s) => println!("{now}: {s:?}"),
                Err(e) => eprintln!("{now}: {e}"),
            }
        }
        let wake = plan(&timing, "nightly", &state, Utc::now()).wake;
        let wait = wake
            .and_then(|w| (w - Utc::now()).to_std().ok())
            .unwrap_or(Duration::from_secs(60));
        tokio::time::sleep(wait.min(Duration::from_secs(300))).await;
    }
}
