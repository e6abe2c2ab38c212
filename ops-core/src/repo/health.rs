//! Health of a repository as an operator monitors it: how old is the newest backup.

use async_trait::async_trait;
use chrono::Utc;

use crate::Result;
use crate::health::{HealthCheck, HealthReport, HealthStatus};

use super::Repository;

/// `last_backup_age`: seconds since the newest backup (of one database, or of any)
/// finished, judged against a warning and a critical age. No backup at all is
/// unhealthy, with value −1.
#[derive(Debug, Clone)]
pub struct LastBackupAge {
    repo: Repository,
    database: Option<String>,
    warn_secs: f64,
    critical_secs: f64,
}

impl LastBackupAge {
    /// Warn after 26 hours, critical after 50: one missed nightly backup warns, two
    /// are critical.
    pub fn new(repo: Repository) -> Self {
        Self {
            repo,
            database: None,
            warn_secs: 26.0 * 3600.0,
            critical_secs: 50.0 * 3600.0,
        }
    }

    /// Only backups of this database count.
    #[must_use]
    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// Sets the warning and critical ages in seconds.
    #[must_use]
    pub fn with_limits(mut self, warn_secs: f64, critical_secs: f64) -> Self {
        self.warn_secs = warn_secs;
        self.critical_secs = critical_secs;
        self
    }
}

#[async_trait]
impl HealthCheck for LastBackupAge {
    fn name(&self) -> &str {
        "last_backup_age"
    }

    async fn check(&self) -> Result<HealthReport> {
        let backups = self.repo.list_backups().await?;
        let newest = backups
            .iter()
            .filter(|m| self.database.as_ref().is_none_or(|d| *d == m.database))
            // A safety backup is the state before a restore, not the schedule's work.
            .filter(|m| !m.tags.contains(super::SAFETY_TAG))
            .max_by_key(|m| m.finished);
        let Some(newest) = newest else {
            return Ok(HealthReport::new(
                self.name(),
                HealthStatus::Unhealthy,
                -1.0,
                "seconds",
                match &self.database {
                    Some(d) => format!(
                        "there is no backup of {d} in {}",
                        self.repo.target().location()
                    ),
                    None => format!("there is no backup in {}", self.repo.target().location()),
                },
            ));
        };
        let age = Utc::now()
            .signed_duration_since(newest.finished)
            .num_milliseconds()
            .max(0) as f64
            / 1000.0;
        let mut report = HealthReport::judge(
            self.name(),
            age,
            "seconds",
            self.warn_secs,
            self.critical_secs,
        );
        report.reason = format!(
            "newest backup {} of {}: {}",
            newest.id, newest.database, report.reason
        );
        Ok(report)
    }
}
