//! Backup health, per backup job: how old the newest successful backup is, whether the
//! last attempt failed, whether its size jumped against the usual, whether a table
//! lost more than half its rows, and how long ago a backup was last proven by a real
//! restore.
//!
//! The judgements are pure functions of (runs, manifests, now, limits), tested without
//! a clock; the `HealthCheck`s read the run history (and, for row counts, two
//! manifests from the repository's cache) and call them at the current time. Nothing
//! here lists the whole store.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use ops_core::jobs::{JobKind, RunRecord, RunStatus};
use ops_core::repo::Manifest;
use ops_core::{HealthCheck, HealthReport, HealthStatus, Limits, Result, Thresholds};

use crate::config::{Config, Work};
use crate::history::RunHistory;

/// Default limits: the newest good backup under 6 h old, critical at 8 h.
pub const BACKUP_AGE: Limits = Limits::new(6.0 * 3600.0, 8.0 * 3600.0);
/// Size change against the median of the last 7, as a fraction: ±50 % warns; an empty
/// backup is critical whatever the limits.
pub const BACKUP_SIZE: Limits = Limits::new(0.5, 10.0);
/// Share of a table's rows gone since the previous backup: half warns, 90 % is critical.
pub const TABLE_ROWS: Limits = Limits::new(0.5, 0.9);
/// The newest restore proof under 7 days old, critical at 30.
pub const RESTORE_PROOF_AGE: Limits = Limits::new(7.0 * 86_400.0, 30.0 * 86_400.0);

fn secs_since(t: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    (now - t).num_milliseconds().max(0) as f64 / 1000.0
}

fn hours(s: f64) -> String {
    if s >= 2.0 * 86_400.0 {
        format!("{:.1} days", s / 86_400.0)
    } else if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.0} min", s / 60.0)
    }
}

/// `backup_age`: seconds since the newest successful run of the job (`runs` newest
/// first). No successful run at all is critical: "no backup" is the alert that must
/// fire even when the job never ran.
pub fn backup_age(
    job: &str,
    runs: &[RunRecord],
    now: DateTime<Utc>,
    limits: Limits,
) -> HealthReport {
    let newest = runs
        .iter()
        .filter(|r| r.status == RunStatus::Success)
        .filter_map(|r| r.ended.map(|e| (e, r)))
        .max_by_key(|(e, _)| *e);
    match newest {
        None => HealthReport::new(
            "backup_age",
            HealthStatus::Unhealthy,
            -1.0,
            "seconds",
            format!("job {job} has no successful backup recorded"),
        )
        .with_limits(limits),
        Some((ended, r)) => {
            let age = secs_since(ended, now);
            let judged = limits.judge("backup_age", age, "seconds");
            let reason = format!(
                "the newest backup of job {job} ({}) finished {} ago; {}",
                r.backup_id.as_deref().unwrap_or("?"),
                hours(age),
                judged.reason
            );
            judged.with_reason(reason)
        }
    }
}

/// `backup_last_attempt`: 1 when the job's newest finished run failed (after its
/// retries), else 0. A failure is critical.
pub fn last_attempt(job: &str, runs: &[RunRecord]) -> HealthReport {
    let last = runs.iter().find(|r| r.status.is_outcome());
    let limits = Limits::new(1.0, 1.0);
    match last {
        Some(r) if r.status == RunStatus::Failure => HealthReport::new(
            "backup_last_attempt",
            HealthStatus::Unhealthy,
            1.0,
            "failed",
            format!(
                "the last run of job {job} failed after {} attempt(s): {}",
                r.attempts,
                r.error.as_deref().unwrap_or("no reason recorded")
            ),
        )
        .with_limits(limits),
        Some(_) => HealthReport::new(
            "backup_last_attempt",
            HealthStatus::Healthy,
            0.0,
            "failed",
            format!("the last run of job {job} succeeded"),
        )
        .with_limits(limits),
        None => HealthReport::new(
            "backup_last_attempt",
            HealthStatus::Healthy,
            0.0,
            "failed",
            format!("job {job} has not run yet"),
        )
        .with_limits(limits),
    }
}

/// The median of `values` (none when empty).
pub fn median(values: &mut [u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        values[n / 2 - 1] / 2 + values[n / 2] / 2
    })
}

/// `backup_size`: the newest successful backup's size against the median of the 7
/// before it, as the fraction it differs by (0.6 = 60 % bigger or smaller). An empty
/// backup (0 bytes) is critical.
pub fn backup_size(job: &str, runs: &[RunRecord], limits: Limits) -> HealthReport {
    let sizes: Vec<u64> = runs
        .iter()
        .filter(|r| r.status == RunStatus::Success)
        .filter_map(|r| r.bytes)
        .take(8)
        .collect();
    let Some((&newest, before)) = sizes.split_first() else {
        return HealthReport::new(
            "backup_size",
            HealthStatus::Healthy,
            0.0,
            "ratio",
            format!("job {job} has no successful backup to compare"),
        )
        .with_limits(limits);
    };
    if newest == 0 {
        return HealthReport::new(
            "backup_size",
            HealthStatus::Unhealthy,
            1.0,
            "ratio",
            format!(
                "the newest backup of job {job} is empty (0 bytes): the database or its dump is"
            ),
        )
        .with_limits(limits);
    }
    let mut before = before.to_vec();
    let Some(med) = median(&mut before).filter(|m| *m > 0) else {
        return HealthReport::new(
            "backup_size",
            HealthStatus::Healthy,
            0.0,
            "ratio",
            format!("job {job} has one backup: nothing to compare yet"),
        )
        .with_limits(limits);
    };
    let change = (newest as f64 - med as f64).abs() / med as f64;
    let judged = limits.judge("backup_size", change, "ratio");
    let reason = format!(
        "the newest backup of job {job} is {newest} bytes, {:+.0} % against the median {med} of the {} before it; {}",
        (newest as f64 / med as f64 - 1.0) * 100.0,
        before.len(),
        judged.reason
    );
    judged.with_reason(reason)
}

/// `backup_tables`: the largest share of rows a table lost between the two newest
/// backups (0 when none shrank). A backup with no tables at all is critical.
pub fn table_rows(
    job: &str,
    newest: &Manifest,
    previous: Option<&Manifest>,
    limits: Limits,
) -> HealthReport {
    let now_tables = newest.tables();
    if now_tables.is_empty() {
        return HealthReport::new(
            "backup_tables",
            HealthStatus::Unhealthy,
            1.0,
            "ratio",
            format!("backup {} of job {job} holds no tables", newest.id),
        )
        .with_limits(limits);
    }
    let Some(previous) = previous else {
        return HealthReport::new(
            "backup_tables",
            HealthStatus::Healthy,
            0.0,
            "ratio",
            format!(
                "backup {} of job {job} has {} tables; no earlier backup to compare",
                newest.id,
                now_tables.len()
            ),
        )
        .with_limits(limits);
    };
    let mut worst: Option<(f64, String, u64, u64)> = None;
    for (table, before) in previous.tables() {
        if before == 0 {
            continue;
        }
        let after = now_tables.get(&table).copied().unwrap_or(0);
        if after >= before {
            continue;
        }
        let lost = (before - after) as f64 / before as f64;
        if worst.as_ref().is_none_or(|w| lost > w.0) {
            worst = Some((lost, table.to_string(), before, after));
        }
    }
    match worst {
        None => HealthReport::new(
            "backup_tables",
            HealthStatus::Healthy,
            0.0,
            "ratio",
            format!("no table of job {job} lost rows between its two newest backups"),
        )
        .with_limits(limits),
        Some((lost, table, before, after)) => {
            let judged = limits.judge("backup_tables", lost, "ratio");
            let reason = format!(
                "table {table} went from {before} to {after} rows between backups {} and {}; {}",
                previous.id, newest.id, judged.reason
            );
            judged.with_reason(reason)
        }
    }
}

/// `restore_proof_age`: seconds since the newest successful verify run that proved a
/// backup by a real restore (any of `runs`). None ever is degraded, with the remedy.
pub fn restore_proof_age(
    repository: &str,
    runs: &[RunRecord],
    now: DateTime<Utc>,
    limits: Limits,
) -> HealthReport {
    let newest = runs
        .iter()
        .filter(|r| r.kind == JobKind::Verify && r.status == RunStatus::Success)
        .filter(|r| r.verified.as_deref() == Some("restore"))
        .filter_map(|r| r.ended.map(|e| (e, r)))
        .max_by_key(|(e, _)| *e);
    match newest {
        None => HealthReport::new(
            "restore_proof_age",
            HealthStatus::Degraded,
            -1.0,
            "seconds",
            format!(
                "no backup in repository {repository} was ever proven by a restore: add a verify job with restore = true"
            ),
        )
        .with_limits(limits),
        Some((ended, r)) => {
            let age = secs_since(ended, now);
            let judged = limits.judge("restore_proof_age", age, "seconds");
            let reason = format!(
                "backup {} of repository {repository} was proven by a restore {} ago (job {}); {}",
                r.backup_id.as_deref().unwrap_or("?"),
                hours(age),
                r.job,
                judged.reason
            );
            judged.with_reason(reason)
        }
    }
}

/// The history's job name for restore proofs made outside any job (a one-shot
/// `verify` with a restore) on repository `repository` of the config: `@` cannot
/// start a job's name, so it never meets a configured job.
pub fn one_shot_proof_job(repository: &str) -> String {
    format!("@verify:{repository}")
}

/// How many runs of a job the size and last-attempt checks read.
const RUNS_READ: usize = 50;

/// Which backup check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Age,
    LastAttempt,
    Size,
    Tables,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Age => "backup_age",
            Kind::LastAttempt => "backup_last_attempt",
            Kind::Size => "backup_size",
            Kind::Tables => "backup_tables",
        }
    }
}

/// One backup check of one job, reading the run history (and, where the history
/// cannot tell, the repository: the repository is the truth about backups).
#[derive(Debug)]
pub struct BackupCheck {
    kind: Kind,
    job: String,
    history: RunHistory,
    limits: Limits,
    config: Arc<Config>,
    repositories: crate::runner::OpenRepositories,
    repository: String,
    database: String,
}

impl BackupCheck {
    /// The job's backups in its repository, newest first (from the repository's cache).
    async fn backups(&self) -> Result<Vec<Manifest>> {
        let repo = self
            .repositories
            .get(&self.config, &self.repository)
            .await?;
        let filter = self
            .config
            .databases
            .get(&self.database)
            .map(crate::config::DatabaseConfig::filter)
            .unwrap_or_default();
        let mut list = repo.list_backups_matching(&filter).await?;
        // Safety backups (taken before in-place restores) are not the backup jobs'
        // work: a fresh one must not hide a backup job that stopped.
        list.retain(|m| !m.tags.contains(ops_core::repo::SAFETY_TAG));
        list.sort_by_key(|m| std::cmp::Reverse(m.finished));
        Ok(list)
    }
}

#[async_trait]
impl HealthCheck for BackupCheck {
    fn name(&self) -> &str {
        self.kind.name()
    }

    async fn check(&self) -> Result<HealthReport> {
        let now = Utc::now();
        match self.kind {
            Kind::Age => {
                let last: Vec<RunRecord> = self
                    .history
                    .last_success(&self.job)
                    .await?
                    .into_iter()
                    .collect();
                let from_history = backup_age(&self.job, &last, now, self.limits);
                if from_history.status == HealthStatus::Healthy {
                    return Ok(from_history);
                }
                // The history says "old" or "none": another host sharing the repository
                // (which took the slot), or a new state directory, may know better.
                let newest = self.backups().await?.into_iter().next();
                match newest {
                    Some(m)
                        if last
                            .first()
                            .and_then(|r| r.ended)
                            .is_none_or(|e| m.finished > e) =>
                    {
                        let age = secs_since(m.finished, now);
                        let judged = self.limits.judge("backup_age", age, "seconds");
                        let reason = format!(
                            "the newest backup of job {}'s database in repository {} ({}) finished {} ago; {}",
                            self.job,
                            self.repository,
                            m.id,
                            hours(age),
                            judged.reason
                        );
                        Ok(judged.with_reason(reason))
                    }
                    Some(_) => Ok(from_history),
                    None => Ok(HealthReport::new(
                        "backup_age",
                        HealthStatus::Unhealthy,
                        -1.0,
                        "seconds",
                        format!(
                            "there is no backup of job {}'s database in repository {}",
                            self.job, self.repository
                        ),
                    )
                    .with_limits(self.limits)),
                }
            }
            Kind::LastAttempt => {
                let runs = self.history.runs(Some(&self.job), RUNS_READ).await?;
                Ok(last_attempt(&self.job, &runs))
            }
            Kind::Size => {
                let runs = self.history.runs(Some(&self.job), RUNS_READ).await?;
                Ok(backup_size(&self.job, &runs, self.limits))
            }
            Kind::Tables => {
                // The two newest backups that still exist (retention may have removed
                // the one the history remembers).
                let backups = self.backups().await?;
                let Some(newest) = backups.first() else {
                    return Ok(HealthReport::new(
                        "backup_tables",
                        HealthStatus::Healthy,
                        0.0,
                        "ratio",
                        format!("job {} has no backup to look into", self.job),
                    )
                    .with_limits(self.limits));
                };
                Ok(table_rows(&self.job, newest, backups.get(1), self.limits))
            }
        }
    }
}

/// `restore_proof_age` of one repository, over every verify job that works on it.
#[derive(Debug)]
pub struct RestoreProofCheck {
    repository: String,
    jobs: Vec<String>,
    history: RunHistory,
    limits: Limits,
}

#[async_trait]
impl HealthCheck for RestoreProofCheck {
    fn name(&self) -> &str {
        "restore_proof_age"
    }

    async fn check(&self) -> Result<HealthReport> {
        let mut runs = Vec::new();
        for job in &self.jobs {
            runs.extend(self.history.runs(Some(job), RUNS_READ).await?);
        }
        Ok(restore_proof_age(
            &self.repository,
            &runs,
            Utc::now(),
            self.limits,
        ))
    }
}

/// The backup probes of a config: four per backup job (service `backups:JOB`), and a
/// restore-proof age per repository that backup jobs write to (service
/// `repository:NAME`). The checks that read the repository open it through
/// `repositories`, once.
pub fn probes(
    config: &Arc<Config>,
    history: &RunHistory,
    thresholds: &Thresholds,
    repositories: &crate::runner::OpenRepositories,
) -> Vec<ops_core::Probe> {
    let mut out = Vec::new();
    let mut backed_up = std::collections::BTreeSet::new();
    for job in config.jobs.values() {
        let Work::Backup {
            repository,
            database,
            ..
        } = &job.work
        else {
            continue;
        };
        backed_up.insert(repository.clone());
        let service = format!("backups:{}", job.name);
        for (kind, default) in [
            (Kind::Age, BACKUP_AGE),
            (Kind::LastAttempt, Limits::new(1.0, 1.0)),
            (Kind::Size, BACKUP_SIZE),
            (Kind::Tables, TABLE_ROWS),
        ] {
            out.push(ops_core::Probe::new(
                service.clone(),
                Arc::new(BackupCheck {
                    kind,
                    job: job.name.clone(),
                    history: history.clone(),
                    limits: thresholds.limits(kind.name(), default),
                    config: Arc::clone(config),
                    repositories: repositories.clone(),
                    repository: repository.clone(),
                    database: database.clone(),
                }),
            ));
        }
    }
    for repository in backed_up {
        let jobs = config
            .jobs
            .values()
            .filter(|j| matches!(&j.work, Work::Verify { repository: r, .. } if *r == repository))
            .map(|j| j.name.clone())
            .chain([one_shot_proof_job(&repository)])
            .collect();
        out.push(ops_core::Probe::new(
            format!("repository:{repository}"),
            Arc::new(RestoreProofCheck {
                repository: repository.clone(),
                jobs,
                history: history.clone(),
                limits: thresholds.limits("restore_proof_age", RESTORE_PROOF_AGE),
            }),
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ops_core::jobs::Trigger;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn run(kind: JobKind, status: RunStatus, ended: &str, bytes: Option<u64>) -> RunRecord {
        let ended = t(ended);
        let mut r =
            RunRecord::start("erp-backup", kind, Trigger::Schedule, ended).with_slot(Some(ended));
        r.finish(status, None, ended);
        r.bytes = bytes;
        r.backup_id = Some(format!("b-{}", ended.timestamp()));
        r
    }

    #[test]
    fn age_warns_at_6_hours_and_is_critical_at_8_and_without_any_backup() {
        let now = t("2026-03-02T12:00:00Z");
        let runs = vec![
            run(
                JobKind::Backup,
                RunStatus::Failure,
                "2026-03-02T11:00:00Z",
                None,
            ),
            run(
                JobKind::Backup,
                RunStatus::Success,
                "2026-03-02T05:00:00Z",
                Some(10),
            ),
        ];
        let r = backup_age("erp-backup", &runs, now, BACKUP_AGE);
        assert_eq!(r.status, HealthStatus::Degraded, "{}", r.reason);
        assert_eq!(r.value, 7.0 * 3600.0);
        let r = backup_age("erp-backup", &runs, t("2026-03-02T13:30:00Z"), BACKUP_AGE);
        assert_eq!(r.status, HealthStatus::Unhealthy);
        let r = backup_age("erp-backup", &runs, t("2026-03-02T06:00:00Z"), BACKUP_AGE);
        assert_eq!(r.status, HealthStatus::Healthy);
        let r = backup_age("erp-backup", &[], now, BACKUP_AGE);
        assert_eq!(
            r.status,
            HealthStatus::Unhealthy,
            "no backup ever: {}",
            r.reason
        );
        let r = last_attempt("erp-backup", &runs);
        assert_eq!(r.status, HealthStatus::Unhealthy);
    }

    #[test]
    fn size_against_the_median_and_empty_backups() {
        let mut runs: Vec<RunRecord> = (0..8)
            .map(|i| {
                run(
                    JobKind::Backup,
                    RunStatus::Success,
                    &format!("2026-03-0{}T02:00:00Z", 9 - i),
                    Some(1000 + i),
                )
            })
            .collect();
        assert_eq!(
            backup_size("j", &runs, BACKUP_SIZE).status,
            HealthStatus::Healthy
        );
        runs[0].bytes = Some(1600);
        assert_eq!(
            backup_size("j", &runs, BACKUP_SIZE).status,
            HealthStatus::Degraded
        );
        runs[0].bytes = Some(400);
        let r = backup_size("j", &runs, BACKUP_SIZE);
        assert_eq!(
            r.status,
            HealthStatus::Degraded,
            "a drop counts too: {}",
            r.reason
        );
        runs[0].bytes = Some(0);
        assert_eq!(
            backup_size("j", &runs, BACKUP_SIZE).status,
            HealthStatus::Unhealthy
        );
        assert_eq!(median(&mut [3, 1, 2]), Some(2));
        assert_eq!(median(&mut [4, 1, 2, 3]), Some(2));
    }

    #[test]
    fn restore_proof_age_counts_only_restores() {
        let now = t("2026-03-20T00:00:00Z");
        let mut read = run(
            JobKind::Verify,
            RunStatus::Success,
            "2026-03-19T00:00:00Z",
            None,
        );
        read.verified = Some("read_data".into());
        let mut proof = run(
            JobKind::Verify,
            RunStatus::Success,
            "2026-03-10T00:00:00Z",
            None,
        );
        proof.verified = Some("restore".into());
        let r = restore_proof_age("main", &[read.clone()], now, RESTORE_PROOF_AGE);
        assert_eq!(r.status, HealthStatus::Degraded);
        assert!(r.reason.contains("restore = true"));
        let r = restore_proof_age("main", &[read, proof], now, RESTORE_PROOF_AGE);
        assert_eq!(r.status, HealthStatus::Degraded, "10 days: {}", r.reason);
        assert_eq!(r.value, 10.0 * 86_400.0);
    }
}
